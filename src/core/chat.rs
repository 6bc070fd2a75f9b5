//! The chat state machine of one node: who is in the room, the node's Lamport
//! clock, the events it stamps, recent history and publish dedupe.
//!
//! Every mutating method takes the caller's Lamport time, applies the node's
//! receive rule, and returns the events that must be broadcast, already
//! stamped. The caller (the node shell) delivers them in the order returned
//! while still holding the lock it called under, so every participant sees
//! events in stamping order, which is increasing Lamport order.
//!
//! Randomness (participant ids, session tokens) is passed in, so the core is
//! deterministic under test.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::core::clock::LamportClock;
use crate::core::history::History;
use crate::core::validate;
use crate::error::{Error, Result};
use crate::proto::{Event, EventId, EventKind, NodeId, Participant};

/// Limits of one node's core. Every bound of the core is here.
#[derive(Debug, Clone)]
pub struct CoreLimits {
    /// Events kept for replay, by count.
    pub history_events: usize,
    /// Events kept for replay, by encoded bytes.
    pub history_bytes: usize,
    /// Publish ids remembered for dedupe (oldest forgotten first).
    pub dedupe_ids: usize,
}

impl Default for CoreLimits {
    fn default() -> Self {
        Self {
            history_events: 10_000,
            history_bytes: 8 << 20,
            dedupe_ids: 100_000,
        }
    }
}

/// A participant known to this node.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    token: String,
    home: NodeId,
    /// The local session currently attached, if any (a counter value, so a
    /// stale session that closes late cannot end a newer one).
    session: Option<u64>,
}

/// Result of a successful join.
#[derive(Debug)]
pub struct Joined {
    pub participant_id: String,
    pub session: u64,
    /// Events to broadcast: the "joined" event.
    pub events: Vec<Arc<Event>>,
}

/// Result of a successful publish.
#[derive(Debug)]
pub struct Published {
    /// The message event (the original one for a duplicate).
    pub event: Arc<Event>,
    pub duplicate: bool,
    /// Events to broadcast: empty for a duplicate.
    pub events: Vec<Arc<Event>>,
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
        self.by_name.insert(name.to_string(), participant_id.clone());
        self.by_token.insert(token.clone(), participant_id.clone());
        self.members.insert(
            participant_id.clone(),
            Member {
                name: name.to_string(),
                token,
                home: self.me.clone(),
                session: Some(session),
            },
        );
        let text = format!("Participant {name} joined Chitty-Chat at Lamport time {time}");
        let event = self.stamp(time, EventKind::Joined, &participant_id, name, text, "");
        Ok(Joined {
            participant_id,
            session,
            events: vec![event],
        })
    }

    /// Publishes `text` for the session that owns `token`. A `publish_id`
    /// seen before is answered with the original event and broadcasts nothing.
    pub fn publish(
        &mut self,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) -> Result<Published> {
        let pid = self.by_token.get(token).ok_or(Error::UnknownSession)?.clone();
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
        if !publish_id.is_empty() {
            self.remember_publish(publish_id, event.clone());
        }
        Ok(Published {
            event: event.clone(),
            duplicate: false,
            events: vec![event],
        })
    }

    /// Ends the session that owns `token` at the participant's request.
    /// Returns the participant id and the "left" event.
    pub fn leave(&mut self, token: &str, lamport: u64) -> Result<(String, Arc<Event>)> {
        let pid = self.by_token.get(token).ok_or(Error::UnknownSession)?.clone();
        let time = self.clock.observe(lamport);
        let event = self.remove(&pid, time);
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
        Some(self.remove(participant_id, time))
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
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The participant id owning `token`, if its session is live.
    pub fn owner_of(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }

    /// The name of a live participant.
    pub fn name_of(&self, participant_id: &str) -> Option<&str> {
        self.members.get(participant_id).map(|m| m.name.as_str())
    }

    fn remove(&mut self, pid: &str, time: u64) -> Arc<Event> {
        let member = self
            .members
            .remove(pid)
            .expect("callers look the participant up first");
        self.by_name.remove(&member.name);
        self.by_token.remove(&member.token);
        let name = member.name;
        let text = format!("Participant {name} left Chitty-Chat at Lamport time {time}");
        self.stamp(time, EventKind::Left, pid, &name, text, "")
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
            deps: Vec::new(),
        });
        self.history.push(event.clone());
        event
    }

    fn remember_publish(&mut self, publish_id: &str, event: Arc<Event>) {
        self.published.insert(publish_id.to_string(), event);
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
        assert_eq!(left.text, "Participant Alice left Chitty-Chat at Lamport time 9");
        assert!(c.participants().is_empty());
    }

    #[test]
    fn sequence_numbers_increase_without_gaps() {
        let mut c = core();
        join(&mut c, "A", 1);
        c.publish("tok-A", "x", 2, "").unwrap();
        let seqs: Vec<u64> = c.history().iter().map(|e| e.id.as_ref().unwrap().seq).collect();
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
        assert!(matches!(c.publish("tok-C", "hi", 3, ""), Err(Error::UnknownSession)));
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
        assert!(c.session_lost(&j.participant_id, j.session).is_none(), "once");
    }
}
