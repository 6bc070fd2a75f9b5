//! The chat state machine of one node: the node's Lamport clock, the events it
//! stamps, the cluster-wide roster of participants, causal delivery of events
//! relayed from other nodes, recent history and publish dedupe.
//!
//! Every mutating method takes the caller's Lamport time, applies the node's
//! receive rule, and returns the events that must be delivered, already
//! stamped, in delivery order. The caller (the node shell) hands them to local
//! sessions (and relays the node's own ones to peers) while still holding the
//! lock it called under, so every local participant sees events in the order
//! the node delivered them.
//!
//! The roster is derived from delivered events only (joined adds, left
//! removes, whatever node stamped them), so every node that delivered the same
//! events has the same roster.
//!
//! Names are unique as far as a node can know. Two nodes admitting the same
//! name at the same moment is resolved by one rule applied everywhere: the
//! participant whose "joined" event has the smaller (Lamport time, origin node
//! id, participant id) keeps the name; the other one's home node ends its
//! session and announces it as left.
//!
//! Randomness (participant ids, session tokens) is passed in, so the core is
//! deterministic under test.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::core::causal::{HoldBack, Offer, OriginKey};
use crate::core::clock::LamportClock;
use crate::core::history::History;
use crate::core::validate;
use crate::error::{Error, Result};
use crate::proto::{Event, EventId, EventKind, GapRange, NodeId, Participant, SeqMark};

/// Limits of one node's core. Every bound of the core is here.
#[derive(Debug, Clone)]
pub struct CoreLimits {
    /// Events kept for replay, by count.
    pub history_events: usize,
    /// Events kept for replay, by encoded bytes.
    pub history_bytes: usize,
    /// Publish ids remembered for dedupe (oldest forgotten first).
    pub dedupe_ids: usize,
    /// Relayed events held back waiting for their causal predecessors.
    pub holdback_events: usize,
}

impl Default for CoreLimits {
    fn default() -> Self {
        Self {
            history_events: 10_000,
            history_bytes: 8 << 20,
            dedupe_ids: 100_000,
            holdback_events: 100_000,
        }
    }
}

/// A participant known to this node.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    home: NodeId,
    /// (Lamport time, origin id) of the "joined" event: the name tie-break.
    joined: (u64, String),
    /// The session secret, known for local participants only.
    token: Option<String>,
    /// The local session currently attached, if any (a counter value, so a
    /// stale session that closes late cannot end a newer one).
    session: Option<u64>,
}

/// Result of a successful join.
#[derive(Debug)]
pub struct Joined {
    pub participant_id: String,
    pub session: u64,
    /// Events to deliver: the "joined" event.
    pub events: Vec<Arc<Event>>,
}

/// Result of a successful publish.
#[derive(Debug)]
pub struct Published {
    /// The message event (the original one for a duplicate).
    pub event: Arc<Event>,
    pub duplicate: bool,
    /// Events to deliver: empty for a duplicate.
    pub events: Vec<Arc<Event>>,
}

/// What relayed events caused.
#[derive(Debug, Default)]
pub struct Received {
    /// Events now deliverable, in order (relayed ones, then any this node
    /// stamped in consequence).
    pub events: Vec<Arc<Event>>,
    /// Local sessions that lost a name clash and must be ended.
    pub kicked: Vec<(String, u64)>,
    /// Events refused because the hold-back queue was full.
    pub refused: usize,
}

/// What a joining node needs to serve at once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub participants: Vec<Participant>,
    pub delivered: Vec<SeqMark>,
    pub lamport: u64,
}

#[derive(Debug)]
pub struct ChatCore {
    me: NodeId,
    clock: LamportClock,
    next_seq: u64,
    next_session: u64,
    members: HashMap<String, Member>,
    by_name: HashMap<String, String>,
    by_token: HashMap<String, String>,
    holdback: HoldBack,
    history: History,
    published: HashMap<String, Arc<Event>>,
    published_order: VecDeque<String>,
    limits: CoreLimits,
}

impl ChatCore {
    pub fn new(me: NodeId, limits: CoreLimits) -> Self {
        Self {
            me,
            clock: LamportClock::new(),
            next_seq: 1,
            next_session: 1,
            members: HashMap::new(),
            by_name: HashMap::new(),
            by_token: HashMap::new(),
            holdback: HoldBack::new(limits.holdback_events),
            history: History::new(limits.history_events, limits.history_bytes),
            published: HashMap::new(),
            published_order: VecDeque::new(),
            limits,
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.me
    }

    pub fn lamport(&self) -> u64 {
        self.clock.now()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Per origin, the highest sequence number delivered here.
    pub fn delivered(&self) -> Vec<SeqMark> {
        self.holdback.delivered()
    }

    /// The sequence number of the last event this node stamped.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The node a live participant's session is on.
    pub fn home_of(&self, participant_id: &str) -> Option<&NodeId> {
        self.members.get(participant_id).map(|m| &m.home)
    }

    /// Relayed events waiting for their causal predecessors.
    pub fn held(&self) -> usize {
        self.holdback.held()
    }

    /// Opens a new session for `name`. `participant_id` and `token` are fresh
    /// random values chosen by the caller.
    pub fn join(
        &mut self,
        name: &str,
        lamport: u64,
        participant_id: String,
        token: String,
    ) -> Result<Joined> {
        validate::name(name)?;
        if self.by_name.contains_key(name) {
            return Err(Error::NameTaken(name.to_string()));
        }
        let time = self.clock.observe(lamport);
        let session = self.next_session;
        self.next_session += 1;
        let text = format!("Participant {name} joined Chitty-Chat at Lamport time {time}");
        let event = self.stamp(time, EventKind::Joined, &participant_id, name, text, "");
        self.apply(&event);
        let member = self
            .members
            .get_mut(&participant_id)
            .expect("apply added the joiner");
        member.token = Some(token.clone());
        member.session = Some(session);
        self.by_token.insert(token, participant_id.clone());
        Ok(Joined {
            participant_id,
            session,
            events: vec![event],
        })
    }

    /// Publishes `text` for the session that owns `token`. A `publish_id`
    /// seen before is answered with the original event and delivers nothing.
    pub fn publish(
        &mut self,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) -> Result<Published> {
        let pid = self
            .by_token
            .get(token)
            .ok_or(Error::UnknownSession)?
            .clone();
        if !publish_id.is_empty()
            && let Some(original) = self.published.get(publish_id)
        {
            // A retry: still a request received, so the clock moves on.
            self.clock.observe(lamport);
            return Ok(Published {
                event: original.clone(),
                duplicate: true,
                events: Vec::new(),
            });
        }
        validate::message(text)?;
        let time = self.clock.observe(lamport);
        let name = self.members[&pid].name.clone();
        let event = self.stamp(
            time,
            EventKind::Message,
            &pid,
            &name,
            text.to_string(),
            publish_id,
        );
        self.apply(&event);
        Ok(Published {
            event: event.clone(),
            duplicate: false,
            events: vec![event],
        })
    }

    /// Ends the session that owns `token` at the participant's request.
    /// Returns the participant id and the "left" event.
    pub fn leave(&mut self, token: &str, lamport: u64) -> Result<(String, Arc<Event>)> {
        let pid = self
            .by_token
            .get(token)
            .ok_or(Error::UnknownSession)?
            .clone();
        let time = self.clock.observe(lamport);
        let event = self.stamp_left(&pid, time);
        Ok((pid, event))
    }

    /// The local session `session` of `participant_id` ended without a Leave
    /// (its stream broke, or it was disconnected for reading too slowly).
    /// Returns the "left" event, or `None` if that session was already gone.
    pub fn session_lost(&mut self, participant_id: &str, session: u64) -> Option<Arc<Event>> {
        let member = self.members.get(participant_id)?;
        if member.session != Some(session) {
            return None;
        }
        let time = self.clock.tick();
        Some(self.stamp_left(participant_id, time))
    }

    /// Announces as left a participant whose home node is gone. Returns
    /// `None` if it already left.
    pub fn announce_left(&mut self, participant_id: &str) -> Option<Arc<Event>> {
        self.members.get(participant_id)?;
        let time = self.clock.tick();
        Some(self.stamp_left(participant_id, time))
    }

    /// Participants whose home node is not in `alive` (node ids), sorted.
    pub fn orphans(&self, alive: &[NodeId]) -> Vec<String> {
        let mut list: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !alive.contains(&m.home))
            .map(|(id, _)| id.clone())
            .collect();
        list.sort();
        list
    }

    /// Takes in events relayed by a peer and returns what became deliverable.
    pub fn receive(&mut self, events: Vec<Event>) -> Received {
        let mut out = Received::default();
        for event in events {
            if let Offer::Full = self.holdback.offer(Arc::new(event)) {
                out.refused += 1;
            }
        }
        while let Some(event) = self.holdback.pop_ready() {
            self.clock.observe(event.lamport);
            self.history.push(event.clone());
            if let Some(loser) = self.apply(&event) {
                out.kicked.push(loser.clone());
                out.events.push(event);
                let time = self.clock.tick();
                out.events.push(self.stamp_left(&loser.0, time));
            } else {
                out.events.push(event);
            }
        }
        out
    }

    /// Everything history holds after `seen`, and what it no longer holds.
    pub fn replay_after(&self, seen: &[SeqMark]) -> (Vec<Arc<Event>>, Vec<GapRange>) {
        let seen: HashMap<OriginKey, u64> = seen
            .iter()
            .filter_map(|m| Some((OriginKey::from(m.origin.as_ref()?), m.seq)))
            .collect();
        self.history.after(&seen)
    }

    /// Treats events up to `marks` as delivered without having them (a gap
    /// reported by a peer).
    pub fn skip_to(&mut self, marks: &[SeqMark]) -> Vec<Arc<Event>> {
        self.holdback.set_delivered(marks);
        self.receive(Vec::new()).events
    }

    /// State for a node joining the cluster through this one.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            participants: self.participants(),
            delivered: self.holdback.delivered(),
            lamport: self.clock.now(),
        }
    }

    /// Starts from a peer's snapshot (a freshly joined node).
    pub fn load(&mut self, snapshot: Snapshot) {
        self.clock.observe(snapshot.lamport);
        self.holdback.set_delivered(&snapshot.delivered);
        for p in snapshot.participants {
            let home = p.node.unwrap_or_default();
            self.by_name.entry(p.name.clone()).or_insert(p.id.clone());
            self.members.insert(
                p.id,
                Member {
                    name: p.name,
                    joined: (0, home.id.clone()),
                    home,
                    token: None,
                    session: None,
                },
            );
        }
    }

    /// Live participants, sorted by name.
    pub fn participants(&self) -> Vec<Participant> {
        let mut list: Vec<_> = self
            .members
            .iter()
            .map(|(id, m)| Participant {
                id: id.clone(),
                name: m.name.clone(),
                node: Some(m.home.clone()),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        list
    }

    /// The participant id owning `token`, if its session is live.
    pub fn owner_of(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }

    /// Updates the roster for a delivered event. Returns a local participant
    /// (id, session) that lost a name clash to it.
    fn apply(&mut self, event: &Event) -> Option<(String, u64)> {
        let pid = &event.participant_id;
        match event.kind() {
            EventKind::Joined => {
                let origin = event
                    .id
                    .as_ref()
                    .and_then(|i| i.origin.clone())
                    .unwrap_or_default();
                let joined = (event.lamport, origin.id.clone());
                self.members.insert(
                    pid.clone(),
                    Member {
                        name: event.participant_name.clone(),
                        home: origin,
                        joined: joined.clone(),
                        token: None,
                        session: None,
                    },
                );
                let name = &event.participant_name;
                let Some(holder) = self.by_name.get(name).cloned() else {
                    self.by_name.insert(name.clone(), pid.clone());
                    return None;
                };
                if &holder == pid {
                    return None;
                }
                let theirs = self
                    .members
                    .get(&holder)
                    .map(|m| (m.joined.clone(), holder.clone()));
                let ours = (joined, pid.clone());
                let (winner, loser) = match theirs {
                    Some(theirs) if theirs <= ours => (holder, pid.clone()),
                    _ => (pid.clone(), holder),
                };
                self.by_name.insert(name.clone(), winner);
                let member = self.members.get(&loser)?;
                Some((loser.clone(), member.session?))
            }
            EventKind::Left => {
                if let Some(member) = self.members.remove(pid) {
                    if self.by_name.get(&member.name) == Some(pid) {
                        self.by_name.remove(&member.name);
                    }
                    if let Some(token) = member.token {
                        self.by_token.remove(&token);
                    }
                }
                None
            }
            EventKind::Message => {
                if !event.publish_id.is_empty() {
                    self.remember_publish(&event.publish_id, Arc::new(event.clone()));
                }
                None
            }
            EventKind::Unspecified => None,
        }
    }

    fn stamp_left(&mut self, pid: &str, time: u64) -> Arc<Event> {
        let name = self.members[pid].name.clone();
        let text = format!("Participant {name} left Chitty-Chat at Lamport time {time}");
        let event = self.stamp(time, EventKind::Left, pid, &name, text, "");
        self.apply(&event);
        event
    }

    fn stamp(
        &mut self,
        lamport: u64,
        kind: EventKind,
        participant_id: &str,
        name: &str,
        text: String,
        publish_id: &str,
    ) -> Arc<Event> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let event = Arc::new(Event {
            id: Some(EventId {
                origin: Some(self.me.clone()),
                seq,
            }),
            lamport,
            kind: kind as i32,
            participant_name: name.to_string(),
            participant_id: participant_id.to_string(),
            text,
            publish_id: publish_id.to_string(),
            deps: self.holdback.deps(&self.me),
        });
        self.holdback.record_own(&self.me, seq);
        self.history.push(event.clone());
        event
    }

    fn remember_publish(&mut self, publish_id: &str, event: Arc<Event>) {
        if self
            .published
            .insert(publish_id.to_string(), event)
            .is_some()
        {
            return;
        }
        self.published_order.push_back(publish_id.to_string());
        while self.published_order.len() > self.limits.dedupe_ids {
            if let Some(old) = self.published_order.pop_front() {
                self.published.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> ChatCore {
        ChatCore::new(
            NodeId {
                id: "n1".into(),
                generation: 1,
            },
            CoreLimits::default(),
        )
    }

    fn join(c: &mut ChatCore, name: &str, lamport: u64) -> Joined {
        c.join(name, lamport, format!("id-{name}"), format!("tok-{name}"))
            .unwrap()
    }

    #[test]
    fn join_publish_leave_texts_and_timestamps() {
        let mut c = core();
        let j = join(&mut c, "Alice", 1);
        assert_eq!(j.events[0].lamport, 2, "max(0, 1) + 1");
        assert_eq!(
            j.events[0].text,
            "Participant Alice joined Chitty-Chat at Lamport time 2"
        );
        let p = c.publish("tok-Alice", "hi", 7, "").unwrap();
        assert_eq!(p.event.lamport, 8);
        assert_eq!(p.event.kind, EventKind::Message as i32);
        let (_, left) = c.leave("tok-Alice", 3).unwrap();
        assert_eq!(left.lamport, 9, "max(8, 3) + 1");
        assert_eq!(
            left.text,
            "Participant Alice left Chitty-Chat at Lamport time 9"
        );
        assert!(c.participants().is_empty());
    }

    #[test]
    fn sequence_numbers_increase_without_gaps() {
        let mut c = core();
        join(&mut c, "A", 1);
        c.publish("tok-A", "x", 2, "").unwrap();
        let seqs: Vec<u64> = c
            .history()
            .iter()
            .map(|e| e.id.as_ref().unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn names_are_unique_among_live_participants_only() {
        let mut c = core();
        join(&mut c, "Bob", 1);
        assert!(matches!(
            c.join("Bob", 1, "x".into(), "y".into()),
            Err(Error::NameTaken(_))
        ));
        c.leave("tok-Bob", 5).unwrap();
        assert!(c.join("Bob", 1, "x".into(), "y".into()).is_ok());
    }

    #[test]
    fn unknown_or_ended_sessions_are_refused() {
        let mut c = core();
        assert!(matches!(
            c.publish("nope", "hi", 1, ""),
            Err(Error::UnknownSession)
        ));
        join(&mut c, "C", 1);
        c.leave("tok-C", 2).unwrap();
        assert!(matches!(
            c.publish("tok-C", "hi", 3, ""),
            Err(Error::UnknownSession)
        ));
        assert!(matches!(c.leave("tok-C", 3), Err(Error::UnknownSession)));
    }

    #[test]
    fn invalid_messages_stamp_nothing() {
        let mut c = core();
        join(&mut c, "D", 1);
        let before = c.history().len();
        assert!(c.publish("tok-D", "", 2, "").is_err());
        assert!(c.publish("tok-D", &"a".repeat(129), 2, "").is_err());
        assert_eq!(c.history().len(), before);
    }

    #[test]
    fn a_retried_publish_id_is_applied_once() {
        let mut c = core();
        join(&mut c, "E", 1);
        let first = c.publish("tok-E", "once", 2, "p1").unwrap();
        let again = c.publish("tok-E", "once", 3, "p1").unwrap();
        assert!(again.duplicate);
        assert!(again.events.is_empty());
        assert_eq!(again.event.lamport, first.event.lamport);
        assert_eq!(again.event.id, first.event.id);
    }

    #[test]
    fn a_stale_session_cannot_end_a_newer_one() {
        let mut c = core();
        let j = join(&mut c, "F", 1);
        assert!(c.session_lost(&j.participant_id, j.session + 1).is_none());
        let left = c.session_lost(&j.participant_id, j.session).unwrap();
        assert_eq!(left.kind, EventKind::Left as i32);
        assert!(
            c.session_lost(&j.participant_id, j.session).is_none(),
            "once"
        );
    }
}
