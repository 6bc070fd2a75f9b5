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
//! events has the same roster. Names are unique as far as a node can know; a
//! clash between two nodes is resolved by one rule applied everywhere (see
//! `core/roster.rs`).
//!
//! [`ChatCore`] composes parts that each hold one concern: the roster
//! (`core/roster.rs`), the session tokens (`core/tokens.rs`), publish dedupe
//! (`core/dedupe.rs`), causal delivery ([`crate::core::causal`]) and history
//! ([`crate::core::history`]).
//!
//! Randomness (participant ids, session tokens) is passed in, so the core is
//! deterministic under test.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::FastMap;
use crate::core::causal::{self, HoldBack, Offer, OriginKey};
use crate::core::clock::LamportClock;
use crate::core::dedupe::{PublishDedupe, PublishKey};
use crate::core::error::{Error, Result};
use crate::core::event::visible;
use crate::core::history::{Audience, History};
use crate::core::roster::Roster;
use crate::core::tokens::SessionTokens;
use crate::core::validate;
use crate::proto::{
    Event, EventId, EventKind, GapRange, NodeId, Participant, SeqMark, SessionGrant,
};

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
    /// How long a participant whose session ended without a Leave may resume
    /// before it is announced as left.
    pub grace: Duration,
}

impl Default for CoreLimits {
    fn default() -> Self {
        Self {
            history_events: 10_000,
            history_bytes: 8 << 20,
            dedupe_ids: 100_000,
            holdback_events: 100_000,
            grace: Duration::from_secs(10),
        }
    }
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
    /// Local sessions ended by a relayed event: the participant resumed on
    /// another node (`Moved`), or was announced as left there (`Left`).
    pub ended: Vec<(String, EventKind)>,
    /// Events refused because the hold-back queue was full.
    pub refused: usize,
    /// Local participants announced as left elsewhere who are still here
    /// (a split or a race with a resume): announced back with a new
    /// "joined" event, which is among `events`.
    pub back: Vec<String>,
    /// Each relayed event released here, with this node's clock before and
    /// after its receive rule (gathered only when the diagram records are
    /// logged: see [`crate::diagram`]).
    pub clocked: Vec<(Arc<Event>, u64, u64)>,
}

/// What a joining node needs to serve at once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub participants: Vec<Participant>,
    pub delivered: Vec<SeqMark>,
    pub lamport: u64,
    pub grants: Vec<SessionGrant>,
    /// Each live participant's latest message, as
    /// [`PublishDedupe::latest_per_participant`] gives it.
    pub last_messages: Vec<Event>,
}

/// Result of a successful resume.
#[derive(Debug)]
pub struct Resumed {
    pub name: String,
    pub session: u64,
    /// Events to deliver: the internal "moved" event, for peers.
    pub events: Vec<Arc<Event>>,
}

#[derive(Debug)]
pub struct ChatCore {
    me: NodeId,
    clock: LamportClock,
    next_seq: u64,
    next_session: u64,
    roster: Roster,
    /// Session tokens, cluster-wide.
    tokens: SessionTokens,
    holdback: HoldBack,
    history: History,
    dedupe: PublishDedupe,
    /// Participants announced as left, most recent last (bounded like the
    /// dedupe ids): a resume of one of them is refused at once, while one
    /// never heard of may simply not have arrived yet. With the mark of its
    /// "joined" event, if this node knew it: a participant announced back
    /// (the other side of a split gave up on it) is still the participant
    /// that joined then, not one that joined when it was announced back.
    departed: FastMap<String, Option<SeqMark>>,
    departed_order: VecDeque<String>,
    /// "Left" events delivered for a participant that had already left (two
    /// sides of a split each announced it): kept for peers, shown to
    /// nobody, so no departure is announced twice. Bounded like `departed`.
    hidden: FastMap<(String, u64, u64), ()>,
    hidden_order: VecDeque<(String, u64, u64)>,
    /// The id of each live participant's "joined" event, as a mark: where
    /// what it may be replayed starts.
    join_marks: FastMap<String, SeqMark>,
    /// What was delivered when this node joined the cluster (its history
    /// holds nothing from before).
    joined_at: Vec<SeqMark>,
    /// Per origin, the first sequence number ever skipped (lost): a
    /// participant's "joined" may be among them.
    skipped_from: FastMap<OriginKey, u64>,
    /// Per origin, the highest sequence number skipped: counted as
    /// delivered without ever being held here.
    skipped_to: FastMap<OriginKey, u64>,
    limits: CoreLimits,
}

impl ChatCore {
    pub fn new(me: NodeId, limits: CoreLimits) -> Self {
        Self {
            me,
            clock: LamportClock::new(),
            next_seq: 1,
            next_session: 1,
            roster: Roster::default(),
            tokens: SessionTokens::default(),
            holdback: HoldBack::new(limits.holdback_events),
            history: History::new(limits.history_events, limits.history_bytes),
            dedupe: PublishDedupe::new(limits.dedupe_ids),
            departed: FastMap::default(),
            departed_order: VecDeque::new(),
            hidden: FastMap::default(),
            hidden_order: VecDeque::new(),
            joined_at: Vec::new(),
            skipped_from: FastMap::default(),
            skipped_to: FastMap::default(),
            join_marks: FastMap::default(),
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
        self.roster.get(participant_id).map(|m| &m.home)
    }

    /// The home node of the live participant holding `name` (or a
    /// look-alike of it).
    pub fn home_of_name(&self, name: &str) -> Option<&NodeId> {
        self.home_of(self.roster.holder_of(name)?)
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
        if let Some(taken) = self.roster.resembles(name) {
            return Err(Error::NameTaken {
                name: name.to_string(),
                taken: taken.to_string(),
            });
        }
        let time = self.clock.observe(lamport);
        let session = self.next_session;
        self.next_session += 1;
        let text = format!("Participant {name} joined Chitty-Chat at Lamport time {time}");
        let event = self.stamp(time, EventKind::Joined, &participant_id, name, text, "");
        self.apply(&event);
        let member = self
            .roster
            .get_mut(&participant_id)
            .expect("apply added the joiner");
        member.session = Some(session);
        self.grant(crate::core::tokens::grant_of(&participant_id, &token));
        Ok(Joined {
            participant_id,
            session,
            events: vec![event],
        })
    }

    /// For a name that is taken: how long until it is freed, when its holder
    /// lost its session here and may still resume (`None` otherwise).
    pub fn name_frees_in(&self, name: &str, now: Instant) -> Option<Duration> {
        let since = self.roster.name_detached_at(name)?;
        Some(
            self.limits
                .grace
                .saturating_sub(now.saturating_duration_since(since)),
        )
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
        let pid = self.local_owner(token)?;
        // Its original reached this node from another and waits for events
        // it depends on: stamping the retry would make one message two
        // events, and answering with the original would let the sender's
        // next messages overtake it here. It is answered once delivered.
        if !publish_id.is_empty() && self.holdback.held_publish(publish_id).is_some() {
            return Err(Error::Unavailable(
                "this message reached this node through another node and waits here for \
                 events it depends on (a network split?); retry"
                    .into(),
            ));
        }
        let key = (!publish_id.is_empty()).then(|| PublishKey::new(publish_id));
        if let Some(original) = key.as_ref().and_then(|key| self.dedupe.original(key)) {
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
        let name = self.roster.get(&pid).expect("a local owner").name.clone();
        // The owner's id and name are this event's: moved into it.
        let event = self.stamp(
            time,
            EventKind::Message,
            pid,
            name,
            text.to_string(),
            publish_id,
        );
        self.apply(&event);
        if let Some(key) = key {
            self.dedupe.remember(key, event.clone());
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
        let pid = self.local_owner(token)?;
        let time = self.clock.observe(lamport);
        let event = self.stamp_left(&pid, time);
        Ok((pid, event))
    }

    /// Whether `session` is the current local session of `participant_id`
    /// (not ended by a Leave, a takeover or a disconnect).
    pub fn is_current_session(&self, participant_id: &str, session: u64) -> bool {
        self.roster
            .get(participant_id)
            .is_some_and(|m| m.session == Some(session))
    }

    /// The local session `session` of `participant_id` ended without a Leave
    /// (its stream broke, or it was disconnected for reading too slowly).
    /// Returns the "left" event, or `None` if that session was already gone.
    /// With a grace period the participant is only detached: it may resume
    /// (here or on another node) until [`ChatCore::expire`] announces it.
    pub fn session_lost(
        &mut self,
        participant_id: &str,
        session: u64,
        now: Instant,
    ) -> Option<Arc<Event>> {
        let grace = self.limits.grace;
        let member = self.roster.get_mut(participant_id)?;
        if member.session != Some(session) {
            return None;
        }
        member.session = None;
        if !grace.is_zero() {
            member.detached = Some(now);
            return None;
        }
        let time = self.clock.tick();
        Some(self.stamp_left(participant_id, time))
    }

    /// Ends a local session at once, whatever the grace period (the
    /// participant read too slowly, or lost a name clash).
    pub fn disconnect(&mut self, participant_id: &str) -> Option<Arc<Event>> {
        self.roster.get(participant_id)?;
        let time = self.clock.tick();
        Some(self.stamp_left(participant_id, time))
    }

    /// Announces as left the detached participants whose grace has run out.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<Event>> {
        let grace = self.limits.grace;
        let due = self.roster.detached_for(grace, now);
        due.into_iter()
            .map(|pid| {
                let time = self.clock.tick();
                self.stamp_left(&pid, time)
            })
            .collect()
    }

    /// Reattaches participant `participant_id` to a new local session, on
    /// proof of ownership (`token`). Stamps an internal "moved" event so
    /// every node knows the participant's new home.
    pub fn resume(&mut self, participant_id: &str, token: &str, lamport: u64) -> Result<Resumed> {
        if !self.can_resume(participant_id, token) {
            return Err(Error::UnknownSession);
        }
        let time = self.clock.observe(lamport);
        let session = self.next_session;
        self.next_session += 1;
        let name = self
            .roster
            .get(participant_id)
            .expect("checked above")
            .name
            .clone();
        let text = String::new();
        let event = self.stamp(time, EventKind::Moved, participant_id, &name, text, "");
        self.apply(&event);
        let member = self.roster.get_mut(participant_id).expect("checked above");
        member.session = Some(session);
        member.detached = None;
        Ok(Resumed {
            name,
            session,
            events: vec![event],
        })
    }

    /// Whether this node has delivered everything in `seen`.
    pub fn covers(&self, seen: &[SeqMark]) -> bool {
        seen.iter().all(|m| {
            m.origin
                .as_ref()
                .is_none_or(|o| self.holdback.delivered_of(o) >= m.seq)
        })
    }

    /// Whether some of `seen` never reached this node and never will: not
    /// delivered, or skipped as lost.
    pub fn lost_some_of(&self, seen: &[SeqMark]) -> bool {
        !self.covers(seen)
            || seen.iter().any(|m| {
                m.origin.as_ref().is_some_and(|o| {
                    self.skipped_from
                        .get(&OriginKey::from(o))
                        .is_some_and(|&from| from <= m.seq)
                })
            })
    }

    /// Records a participant's session token (from the mesh).
    pub fn grant(&mut self, grant: SessionGrant) {
        self.tokens.grant(grant);
    }

    /// The session tokens of the participants that `events` announce joined.
    pub fn grants_for<'a>(&self, events: impl IntoIterator<Item = &'a Event>) -> Vec<SessionGrant> {
        self.tokens.grants_for(events)
    }

    /// Announces as left a participant whose home node is gone. Returns
    /// `None` if it already left.
    pub fn announce_left(&mut self, participant_id: &str) -> Option<Arc<Event>> {
        self.roster.get(participant_id)?;
        let time = self.clock.tick();
        Some(self.stamp_left(participant_id, time))
    }

    /// Participants whose home node is not in `alive` (node ids), sorted.
    pub fn orphans(&self, alive: &[NodeId]) -> Vec<String> {
        self.roster.orphans(alive)
    }

    /// Takes in events relayed by a peer and returns what became deliverable.
    pub fn receive(&mut self, events: Vec<Event>) -> Received {
        let mut out = Received::default();
        for event in events {
            if let Offer::Full = self.holdback.offer(Arc::new(event)) {
                out.refused += 1;
            }
        }
        let record = crate::diagram::info_enabled();
        while let Some(event) = self.holdback.pop_ready() {
            let before = self.clock.now();
            let after = self.clock.observe(event.lamport);
            if record {
                out.clocked.push((event.clone(), before, after));
            }
            if !self.dedupe.first_delivery(&event) {
                // The same publish, stamped again by another node after a
                // failover: delivered once already, so not again.
                continue;
            }
            self.history.push(event.clone());
            let pid = &event.participant_id;
            let local_before = self.roster.has_local_session(pid);
            if event.kind() == EventKind::Left && !self.roster.contains(pid) {
                self.hide(&event);
            }
            // Announced as left by another node while its session is here
            // (the other side of a split gave up on it): it is back.
            let back = (event.kind() == EventKind::Left && local_before)
                .then(|| {
                    let session = self.roster.get(pid)?.session?;
                    let digest = self.tokens.digest_of(pid)?;
                    Some((session, digest))
                })
                .flatten();
            // Announced as left elsewhere while its connection here was
            // lost and it could still resume: the departure stands, and
            // this node, its home, stamps it too. Nodes that took this
            // node's earlier "joined" announcing it back after the other
            // node's "left" end with that one; for the others it repeats a
            // departure and is not shown.
            let confirm = event.kind() == EventKind::Left
                && !local_before
                && self.roster.get(pid).is_some_and(|m| m.detached.is_some());
            let loser = self.apply(&event);
            if confirm {
                out.events.push(event.clone());
                let time = self.clock.tick();
                let left = self.stamp_left_as(pid, &event.participant_name, time);
                self.hide(&left);
                out.events.push(left);
                continue;
            }
            if let Some((session, digest)) = back {
                out.events.push(event.clone());
                let rejoined = self.rejoin(pid, &event.participant_name, digest);
                let loser = self.apply(&rejoined);
                self.departed.remove(pid);
                if let Some(member) = self.roster.get_mut(pid) {
                    member.session = Some(session);
                }
                out.events.push(rejoined);
                // Someone else may have taken the name meanwhile: the same
                // tie-break as for two joins decides.
                let loser = loser
                    .or_else(|| (!self.roster.holds_name(pid)).then(|| (pid.clone(), session)));
                match loser {
                    Some(loser) => {
                        if loser.0 != *pid {
                            out.back.push(pid.clone());
                        }
                        if let Some(left) = self.disconnect(&loser.0) {
                            out.events.push(left);
                        }
                        out.kicked.push(loser);
                    }
                    None => out.back.push(pid.clone()),
                }
                continue;
            }
            if local_before && !self.roster.has_local_session(&event.participant_id) {
                // Another node took over this local participant's session
                // (moved), or announced it as left (its grace ran out there
                // at the moment it resumed here): its local stream ends.
                out.ended.push((event.participant_id.clone(), event.kind()));
            }
            out.events.push(event);
            if let Some(loser) = loser {
                out.kicked.push(loser.clone());
                if let Some(left) = self.disconnect(&loser.0) {
                    out.events.push(left);
                }
            }
        }
        out
    }

    /// Whether participants are shown `event`: not internal ones, and not a
    /// second "left" of one departure.
    pub fn shown(&self, event: &Event) -> bool {
        visible(event)
            && (event.kind() != EventKind::Left || self.hidden.is_empty() || {
                let key = event_key(event);
                !self.hidden.contains_key(&key)
            })
    }

    fn hide(&mut self, event: &Event) {
        let key = event_key(event);
        if self.hidden.insert(key.clone(), ()).is_none() {
            self.hidden_order.push_back(key);
            if self.hidden_order.len() > self.limits.dedupe_ids
                && let Some(old) = self.hidden_order.pop_front()
            {
                self.hidden.remove(&old);
            }
        }
    }

    /// Stamps a "joined" for `participant_id`, whose session `session` is
    /// still attached here though another node announced it as left; it
    /// keeps its id and token. Not yet applied to the roster.
    fn rejoin(
        &mut self,
        participant_id: &str,
        name: &str,
        digest: crate::core::tokens::TokenDigest,
    ) -> Arc<Event> {
        let time = self.clock.tick();
        let text = format!("Participant {name} joined Chitty-Chat at Lamport time {time}");
        let event = self.stamp(time, EventKind::Joined, participant_id, name, text, "");
        self.grant(crate::core::tokens::grant_of_digest(
            participant_id,
            &digest,
        ));
        event
    }

    /// Everything history holds after `seen`, and what it no longer holds.
    pub fn replay_after(
        &self,
        seen: &[SeqMark],
        audience: Audience,
    ) -> (Vec<Arc<Event>>, Vec<GapRange>) {
        let seen: HashMap<OriginKey, u64> = seen
            .iter()
            .filter_map(|m| Some((OriginKey::from(m.origin.as_ref()?), m.seq)))
            .collect();
        self.history.after(&seen, audience)
    }

    /// Drops from `replay`, what a resuming session that has seen `seen` is
    /// about to be replayed, every "left" it already saw answered: history
    /// holds, delivered after that "left", a "joined" of the same
    /// participant (announced back) that the session has seen. The node it
    /// was on showed it that "joined" but not the "left" (a second
    /// announcement of one departure, shown to nobody there); shown now, it
    /// would be the last news of a participant that is still here.
    pub fn drop_answered_lefts(&self, replay: &mut Vec<Arc<Event>>, seen: &[SeqMark]) {
        let lefts: std::collections::HashSet<(String, u64, u64)> = replay
            .iter()
            .filter(|e| e.kind() == EventKind::Left)
            .map(|e| event_key(e))
            .collect();
        if lefts.is_empty() {
            return;
        }
        let seen: HashMap<OriginKey, u64> = seen
            .iter()
            .filter_map(|m| Some((OriginKey::from(m.origin.as_ref()?), m.seq)))
            .collect();
        let covered = |event: &Event| {
            event.id.as_ref().is_some_and(|id| {
                id.origin.as_ref().is_some_and(|origin| {
                    seen.get(&OriginKey::from(origin))
                        .is_some_and(|&upto| id.seq <= upto)
                })
            })
        };
        let mut pending: HashMap<&str, Vec<(String, u64, u64)>> = HashMap::new();
        let mut answered = std::collections::HashSet::new();
        for event in self.history.iter() {
            match event.kind() {
                EventKind::Left => {
                    let key = event_key(event);
                    if lefts.contains(&key) {
                        pending
                            .entry(event.participant_id.as_str())
                            .or_default()
                            .push(key);
                    }
                }
                EventKind::Joined if covered(event) => {
                    if let Some(keys) = pending.remove(event.participant_id.as_str()) {
                        answered.extend(keys);
                    }
                }
                _ => {}
            }
        }
        if !answered.is_empty() {
            replay.retain(|e| e.kind() != EventKind::Left || !answered.contains(&event_key(e)));
        }
    }

    /// Treats events up to `marks` as delivered without having them (a gap
    /// reported by a peer).
    /// What the events it releases cause is returned as for relayed ones
    /// (a released "joined" may win a name clash against a local session).
    pub fn skip_to(&mut self, marks: &[SeqMark]) -> Received {
        for mark in marks {
            let Some(origin) = mark.origin.as_ref() else {
                continue;
            };
            let key = OriginKey::from(origin);
            let from = self.holdback.delivered_of(&key) + 1;
            if mark.seq >= from {
                let last = self.skipped_to.entry(key.clone()).or_insert(mark.seq);
                *last = (*last).max(mark.seq);
                let first = self.skipped_from.entry(key).or_insert(from);
                *first = (*first).min(from);
            }
        }
        self.holdback.set_delivered(marks);
        self.receive(Vec::new())
    }

    /// Where the run of `origin`'s events that held-back events wait for
    /// ends (see [`HoldBack::gap_end`]).
    pub fn gap_end(&self, origin: &NodeId) -> Option<u64> {
        self.holdback.gap_end(&OriginKey::from(origin))
    }

    /// Releases events held back for events of the departed node `gone` that
    /// no survivor could provide: skips them and reports the gap.
    pub fn release_gone(&mut self, gone: &NodeId) -> Option<(GapRange, Received)> {
        let key = OriginKey::from(gone);
        let need = self.holdback.gap_end(&key)?;
        let gap = GapRange {
            origin: Some(gone.clone()),
            from_seq: self.holdback.delivered_of(&key) + 1,
            to_seq: need + 1,
        };
        let received = self.skip_to(&[SeqMark {
            origin: Some(gone.clone()),
            seq: need,
        }]);
        Some((gap, received))
    }

    /// State for a node joining the cluster through this one.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            participants: self.participants(),
            delivered: self.holdback.delivered(),
            lamport: self.clock.now(),
            grants: self.tokens.grants(),
            last_messages: self
                .dedupe
                .latest_per_participant(|pid| self.roster.contains(pid), self.roster.len()),
        }
    }

    /// Starts from a peer's snapshot (a freshly joined node).
    pub fn load(&mut self, snapshot: Snapshot) {
        self.clock.observe(snapshot.lamport);
        self.holdback.set_delivered(&snapshot.delivered);
        for mark in &snapshot.delivered {
            if let Some(origin) = &mark.origin {
                self.history.never_kept(origin, mark.seq);
            }
        }
        self.joined_at = snapshot.delivered;
        for grant in snapshot.grants {
            self.grant(grant);
        }
        for p in snapshot.participants {
            self.roster.load(p);
        }
        // A participant whose last publish got no answer retries it here
        // with the same publish id: the id must be known, or the retry
        // would become a second event (events before the snapshot never
        // reach this node, so nor do their ids).
        for mut event in snapshot.last_messages.into_iter().take(self.roster.len()) {
            let Some(member) = self.roster.get(&event.participant_id) else {
                continue;
            };
            if event.kind() != EventKind::Message
                || event.publish_id.is_empty()
                || validate::publish_id(&event.publish_id).is_err()
                || event.id.as_ref().is_none_or(|id| id.origin.is_none())
            {
                continue;
            }
            event.participant_name = member.name.clone();
            event.text.clear();
            event.deps.clear();
            // Remembered unless this node already knows the publish id.
            self.dedupe.first_delivery(&Arc::new(event));
        }
    }

    /// Live participants, sorted by name.
    pub fn participants(&self) -> Vec<Participant> {
        self.roster.participants()
    }

    /// See [`super::roster::Roster::names_by_home`].
    pub fn names_by_home(
        &self,
        cap: usize,
    ) -> std::collections::HashMap<(String, u64), (Vec<String>, usize)> {
        self.roster.names_by_home(cap)
    }

    /// Updates the roster for a delivered event. Returns a local participant
    /// (id, session) that lost a name clash to it.
    fn apply(&mut self, event: &Arc<Event>) -> Option<(String, u64)> {
        let pid = &event.participant_id;
        match event.kind() {
            EventKind::Joined => {
                let origin = event
                    .id
                    .as_ref()
                    .and_then(|i| i.origin.clone())
                    .unwrap_or_default();
                let seq = event.id.as_ref().map_or(0, |i| i.seq);
                // Announced back after a "left": its session went on, so
                // what it may be replayed still starts at its first join (a
                // resume must not skip what came between the two).
                let mark = self
                    .departed
                    .get(pid)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| SeqMark {
                        origin: Some(origin.clone()),
                        seq,
                    });
                // Announced again while on the roster: its first join
                // still marks where its replay starts.
                self.join_marks.entry(pid.clone()).or_insert(mark);
                self.roster
                    .joined(pid, &event.participant_name, origin, event.lamport)
            }
            EventKind::Left => {
                self.roster.left(pid);
                let mark = self.join_marks.remove(pid);
                self.tokens.forget(pid);
                match self.departed.get_mut(pid) {
                    Some(kept) => {
                        if mark.is_some() {
                            *kept = mark;
                        }
                    }
                    None => {
                        self.departed.insert(pid.clone(), mark);
                        self.departed_order.push_back(pid.clone());
                        if self.departed_order.len() > self.limits.dedupe_ids
                            && let Some(old) = self.departed_order.pop_front()
                        {
                            self.departed.remove(&old);
                        }
                    }
                }
                None
            }
            EventKind::Moved => {
                let origin = event.id.as_ref().and_then(|i| i.origin.clone());
                if let Some(member) = self.roster.get_mut(pid)
                    && let Some(origin) = origin
                {
                    // Two nodes may resume the participant at nearly the
                    // same moment and deliver each other's move after their
                    // own: the later move by (Lamport time, origin) wins
                    // everywhere, so every node names the same home.
                    let homed = (event.lamport, origin.id.clone());
                    if homed > member.homed {
                        if origin != self.me {
                            member.session = None;
                        }
                        member.home = origin;
                        member.homed = homed;
                        member.detached = None;
                    }
                } else if let Some(origin) = origin
                    && !self.skipped_from.is_empty()
                    && !self.departed.contains_key(pid)
                {
                    // This node skipped lost events (with a node that
                    // stopped before a split healed), its "joined" perhaps
                    // among them: the move says it is here, so every roster
                    // lists it. (Otherwise it left before this node joined,
                    // and the move is older than that.)
                    return self
                        .roster
                        .joined(pid, &event.participant_name, origin, event.lamport);
                }
                None
            }
            // A message's publish id is remembered where it is stamped or
            // received (`publish`, `receive`).
            EventKind::Message | EventKind::Unspecified => None,
        }
    }

    /// `seen` of a resuming participant, raised to just before its own
    /// "joined" event: nothing from before its join is replayed to it, even
    /// if it lost its connection before it saw the join.
    pub fn since_join(&self, participant_id: &str, seen: &[SeqMark]) -> Vec<SeqMark> {
        let mut seen = seen.to_vec();
        let Some(join) = self.join_marks.get(participant_id) else {
            return seen;
        };
        let floor = join.seq.saturating_sub(1);
        match seen.iter_mut().find(|m| m.origin == join.origin) {
            Some(mark) => mark.seq = mark.seq.max(floor),
            None => seen.push(SeqMark {
                origin: join.origin.clone(),
                seq: floor,
            }),
        }
        seen
    }

    /// Whether a participant that has seen `seen` missed events that were
    /// delivered before this node joined the cluster: this node cannot
    /// replay them (a node that was there can).
    pub fn missed_before_joining(&self, seen: &[SeqMark]) -> bool {
        self.joined_at.iter().any(|floor| {
            let had = seen
                .iter()
                .find(|m| m.origin == floor.origin)
                .map_or(0, |m| m.seq);
            had < floor.seq
        })
    }

    /// Whether this node saw `participant_id` announced as left (recently:
    /// it remembers as many as it remembers publish ids).
    pub fn has_departed(&self, participant_id: &str) -> bool {
        self.departed.contains_key(participant_id)
    }

    /// Whether `token` proves ownership of live participant `participant_id`.
    pub fn can_resume(&self, participant_id: &str, token: &str) -> bool {
        self.tokens.owner(token) == Some(participant_id) && self.roster.contains(participant_id)
    }

    /// The participant owning `token`, if its session is attached here.
    pub fn local_participant(&self, token: &str) -> Option<String> {
        self.local_owner(token).ok()
    }

    /// Highest sequence number of `origin` delivered here (0 for none).
    pub fn delivered_of(&self, origin: &NodeId) -> u64 {
        self.holdback.delivered_of(origin)
    }

    /// Per origin with events held back (waiting for what they depend on),
    /// the highest of them.
    pub fn held_back(&self) -> Vec<SeqMark> {
        self.holdback.held_back()
    }

    /// Highest sequence number of `origin` this node has: delivered, or
    /// held back until what it depends on arrives (0 for none).
    pub fn received_of(&self, origin: &NodeId) -> u64 {
        self.holdback.received_of(origin)
    }

    /// Per origin, up to where this node counts events as delivered without
    /// having held them all: those older than its join to the cluster, and
    /// those it skipped as lost. A peer waiting for such events must not
    /// wait for this node to bring them. Sorted by origin.
    pub fn never_held(&self) -> Vec<SeqMark> {
        let mut marks = self.joined_at.clone();
        for (origin, &seq) in &self.skipped_to {
            let origin = origin.to_node_id();
            match marks
                .iter_mut()
                .find(|m| m.origin.as_ref() == Some(&origin))
            {
                Some(mark) => mark.seq = mark.seq.max(seq),
                None => marks.push(SeqMark {
                    origin: Some(origin),
                    seq,
                }),
            }
        }
        causal::sort_by_origin(&mut marks);
        marks
    }

    /// Whether history holds event `seq` of `origin`.
    pub fn holds(&self, origin: &NodeId, seq: u64) -> bool {
        self.history.iter().rev().any(|e| {
            e.id.as_ref()
                .is_some_and(|id| id.seq == seq && id.origin.as_ref() == Some(origin))
        })
    }

    /// Whether `token` is the session token of a participant of this node.
    pub fn is_local_session(&self, token: &str) -> bool {
        self.tokens
            .owner(token)
            .is_some_and(|pid| self.roster.has_local_session(pid))
    }

    fn local_owner(&self, token: &str) -> Result<String> {
        self.tokens
            .owner(token)
            .filter(|pid| self.roster.has_local_session(pid))
            .map(str::to_string)
            .ok_or(Error::UnknownSession)
    }

    fn stamp_left(&mut self, pid: &str, time: u64) -> Arc<Event> {
        let name = self
            .roster
            .get(pid)
            .expect("a known participant")
            .name
            .clone();
        self.stamp_left_as(pid, &name, time)
    }

    /// Stamps and applies a "left" of `pid`, named `name`, at `time`.
    fn stamp_left_as(&mut self, pid: &str, name: &str, time: u64) -> Arc<Event> {
        let text = format!("Participant {name} left Chitty-Chat at Lamport time {time}");
        let event = self.stamp(time, EventKind::Left, pid, name, text, "");
        self.apply(&event);
        event
    }

    fn stamp(
        &mut self,
        lamport: u64,
        kind: EventKind,
        participant_id: impl Into<String>,
        name: impl Into<String>,
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
            participant_name: name.into(),
            participant_id: participant_id.into(),
            text,
            publish_id: publish_id.to_string(),
            deps: self.holdback.deps(&self.me),
        });
        self.holdback.record_own(&self.me, seq);
        self.history.push(event.clone());
        event
    }
}

/// (origin id, generation, seq) of an event.
fn event_key(event: &Event) -> (String, u64, u64) {
    let id = event.id.as_ref();
    let origin = id.and_then(|i| i.origin.as_ref());
    (
        origin.map_or(String::new(), |o| o.id.clone()),
        origin.map_or(0, |o| o.generation),
        id.map_or(0, |i| i.seq),
    )
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
            CoreLimits {
                grace: Duration::ZERO,
                ..CoreLimits::default()
            },
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
            Err(Error::NameTaken { .. })
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

    /// A participant's publish reached another node, which crashed before
    /// answering; the original reached this node too but waits for what it
    /// depends on. The retry here is refused until it is delivered, then
    /// answered with it: never a second event.
    #[test]
    fn a_retry_whose_original_is_held_back_is_not_stamped_again() {
        let mut c = core();
        join(&mut c, "E", 1);
        let n2 = NodeId {
            id: "n2".into(),
            generation: 1,
        };
        let original = Event {
            id: Some(crate::proto::EventId {
                origin: Some(n2.clone()),
                seq: 1,
            }),
            lamport: 9,
            kind: EventKind::Message as i32,
            participant_name: "E".into(),
            participant_id: "id-E".into(),
            text: "once".into(),
            publish_id: "p1".into(),
            // It depends on an event of n3 that this node lacks.
            deps: vec![SeqMark {
                origin: Some(NodeId {
                    id: "n3".into(),
                    generation: 1,
                }),
                seq: 4,
            }],
        };
        let received = c.receive(vec![original]);
        assert!(received.events.is_empty(), "held back");
        let before = c.history().len();
        // Refused while it waits: answering with it would let the sender's
        // next messages overtake it here.
        assert!(matches!(
            c.publish("tok-E", "once", 10, "p1"),
            Err(Error::Unavailable(_))
        ));
        assert_eq!(c.history().len(), before, "nothing stamped");
        // Once its dependency arrives, the retry is the original.
        let dependency = |seq| Event {
            id: Some(crate::proto::EventId {
                origin: Some(NodeId {
                    id: "n3".into(),
                    generation: 1,
                }),
                seq,
            }),
            lamport: 5,
            kind: EventKind::Message as i32,
            participant_name: "F".into(),
            participant_id: "id-F".into(),
            text: "before".into(),
            ..Default::default()
        };
        c.receive((1..=4).map(dependency).collect());
        let retry = c.publish("tok-E", "once", 10, "p1").unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            retry.event.id.as_ref().and_then(|id| id.origin.as_ref()),
            Some(&n2)
        );
        assert_eq!(retry.event.lamport, 9);
    }

    #[test]
    fn a_node_that_joins_knows_the_publish_id_of_each_participants_latest_message() {
        let mut a = core();
        let j = join(&mut a, "J", 1);
        let first = "00000000-0000-4000-8000-000000000001";
        let latest = "00000000-0000-4000-8000-000000000002";
        a.publish("tok-J", "one", 2, first).unwrap();
        let original = a.publish("tok-J", "two", 3, latest).unwrap().event;
        let mut snapshot = a.snapshot();
        // What no honest node sends is dropped: an entry for a participant
        // not in the snapshot, one that is not a message.
        let forged = "00000000-0000-4000-8000-000000000003";
        let mut stranger = snapshot.last_messages[0].clone();
        stranger.participant_id = "id-nobody".into();
        stranger.publish_id = forged.into();
        let mut joined = snapshot.last_messages[0].clone();
        joined.kind = EventKind::Joined as i32;
        joined.publish_id = forged.into();
        snapshot.last_messages.extend([stranger, joined]);
        let mut b = ChatCore::new(
            NodeId {
                id: "n2".into(),
                generation: 1,
            },
            CoreLimits::default(),
        );
        b.load(snapshot);
        assert!(b.dedupe.original(&PublishKey::new(forged)).is_none());
        b.resume(&j.participant_id, "tok-J", 4).unwrap();
        let retry = b.publish("tok-J", "two", 5, latest).unwrap();
        assert!(
            retry.duplicate,
            "the retry is the original, not a second event"
        );
        assert_eq!(retry.event.id, original.id);
        assert_eq!(retry.event.lamport, original.lamport);
        assert_eq!(retry.event.participant_name, "J");
        // Only the latest message is carried: a client sends one publish at
        // a time, so only that one can be unanswered.
        assert!(!b.publish("tok-J", "one", 6, first).unwrap().duplicate);
    }

    #[test]
    fn a_stale_session_cannot_end_a_newer_one() {
        let mut c = core();
        let j = join(&mut c, "F", 1);
        assert!(
            c.session_lost(&j.participant_id, j.session + 1, Instant::now())
                .is_none()
        );
        let left = c
            .session_lost(&j.participant_id, j.session, Instant::now())
            .unwrap();
        assert_eq!(left.kind, EventKind::Left as i32);
        assert!(
            c.session_lost(&j.participant_id, j.session, Instant::now())
                .is_none(),
            "once"
        );
    }

    #[test]
    fn a_lost_session_may_resume_within_the_grace_period() {
        let mut c = core();
        c.limits.grace = Duration::from_secs(10);
        let j = join(&mut c, "G", 1);
        let t0 = Instant::now();
        assert!(
            c.session_lost(&j.participant_id, j.session, t0).is_none(),
            "detached, not left"
        );
        assert!(c.expire(t0 + Duration::from_secs(5)).is_empty());
        assert!(matches!(
            c.resume(&j.participant_id, "wrong", 5),
            Err(Error::UnknownSession)
        ));
        let r = c.resume(&j.participant_id, "tok-G", 5).unwrap();
        assert_eq!(r.events[0].kind(), EventKind::Moved);
        assert!(
            c.expire(t0 + Duration::from_secs(60)).is_empty(),
            "resumed: never expires"
        );
        assert!(c.publish("tok-G", "back", 9, "").is_ok());
    }

    #[test]
    fn a_detached_participant_is_announced_once_after_the_grace_period() {
        let mut c = core();
        c.limits.grace = Duration::from_secs(10);
        let j = join(&mut c, "H", 1);
        let t0 = Instant::now();
        c.session_lost(&j.participant_id, j.session, t0);
        let left = c.expire(t0 + Duration::from_secs(10));
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].kind(), EventKind::Left);
        assert!(c.expire(t0 + Duration::from_secs(20)).is_empty());
        assert!(c.resume(&j.participant_id, "tok-H", 30).is_err());
    }

    #[test]
    fn publish_and_leave_need_a_session_attached_to_this_node() {
        let mut a = core();
        let mut b = ChatCore::new(
            NodeId {
                id: "n2".into(),
                generation: 1,
            },
            CoreLimits::default(),
        );
        let j = join(&mut a, "I", 1);
        let events: Vec<Event> = j.events.iter().map(|e| Event::clone(e)).collect();
        b.grant(crate::core::tokens::grant_of(&j.participant_id, "tok-I"));
        b.receive(events);
        assert!(matches!(
            b.publish("tok-I", "x", 3, ""),
            Err(Error::UnknownSession)
        ));
        assert!(
            b.resume(&j.participant_id, "tok-I", 3).is_ok(),
            "the token works on every node"
        );
        assert!(b.publish("tok-I", "x", 4, "").is_ok());
    }

    #[test]
    fn a_look_alike_of_a_live_name_is_refused_naming_its_holder() {
        let mut c = core();
        join(&mut c, "Alice", 1);
        join(&mut c, "Jos\u{e9}", 1);
        for (like, holder) in [
            ("alice", "Alice"),
            ("ALICE", "Alice"),
            ("\u{410}lice", "Alice"),  // Cyrillic capital A
            ("Ali\u{441}e", "Alice"),  // Cyrillic small es
            ("\u{ff21}lice", "Alice"), // fullwidth A
            ("Jose\u{301}", "Jos\u{e9}"),
            ("JOS\u{c9}", "Jos\u{e9}"),
        ] {
            match c.join(like, 1, "x".into(), "y".into()) {
                Err(e @ Error::NameTaken { .. }) => {
                    assert_eq!(
                        e,
                        Error::NameTaken {
                            name: like.into(),
                            taken: holder.into()
                        }
                    );
                    assert!(e.to_string().contains(holder), "{e}");
                }
                other => panic!("{like:?} was not refused: {other:?}"),
            }
        }
        // Kept as typed; a different name is fine; a freed one is free.
        let names: Vec<String> = c.participants().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["Alice", "Jos\u{e9}"]);
        assert!(c.join("Alicia", 1, "z".into(), "w".into()).is_ok());
        c.leave("tok-Alice", 5).unwrap();
        assert!(c.join("\u{410}LICE", 6, "v".into(), "u".into()).is_ok());
    }

    /// The race of two look-alikes joining at the same Lamport time on two
    /// nodes: the tie-break of two same-name joins decides, on the skeleton.
    #[test]
    fn concurrent_joins_of_look_alikes_keep_the_earlier_everywhere() {
        for (on_n1, on_n2) in [
            ("Alice", "\u{410}lice"),
            ("Jose\u{301}", "Jos\u{e9}"),
            ("\u{ff33}am", "sAM"),
        ] {
            let mut a = core();
            let mut b = node_core("n2");
            let ja = a.join(on_n1, 1, "pa".into(), "ta".into()).unwrap();
            let jb = b.join(on_n2, 1, "pb".into(), "tb".into()).unwrap();
            assert_eq!(
                ja.events[0].lamport, jb.events[0].lamport,
                "the same moment"
            );
            let at_b = b.receive(ja.events.iter().map(|e| Event::clone(e)).collect());
            let at_a = a.receive(jb.events.iter().map(|e| Event::clone(e)).collect());
            assert!(at_a.kicked.is_empty(), "n1 < n2: n1's {on_n1:?} keeps it");
            assert_eq!(at_b.kicked, vec![("pb".to_string(), jb.session)]);
            a.receive(vec![Event::clone(at_b.events.last().unwrap())]);
            for c in [&a, &b] {
                let live: Vec<(String, String)> = c
                    .participants()
                    .into_iter()
                    .map(|p| (p.id, p.name))
                    .collect();
                assert_eq!(live, [("pa".to_string(), on_n1.to_string())]);
            }
        }
    }

    #[test]
    fn concurrent_joins_of_one_name_keep_the_earlier_everywhere() {
        let mut a = core();
        let mut b = ChatCore::new(
            NodeId {
                id: "n2".into(),
                generation: 1,
            },
            CoreLimits {
                grace: Duration::ZERO,
                ..CoreLimits::default()
            },
        );
        let ja = a.join("Sam", 1, "pa".into(), "ta".into()).unwrap();
        let jb = b.join("Sam", 5, "pb".into(), "tb".into()).unwrap();
        let to_b: Vec<Event> = ja.events.iter().map(|e| Event::clone(e)).collect();
        let to_a: Vec<Event> = jb.events.iter().map(|e| Event::clone(e)).collect();
        let at_b = b.receive(to_b);
        let at_a = a.receive(to_a);
        assert!(
            at_a.kicked.is_empty(),
            "n1's Sam joined earlier and keeps the name"
        );
        assert_eq!(at_b.kicked, vec![("pb".to_string(), jb.session)]);
        let left = at_b.events.last().unwrap();
        assert_eq!(
            (left.kind(), left.participant_id.as_str()),
            (EventKind::Left, "pb")
        );
        a.receive(vec![Event::clone(left)]);
        let names = |c: &ChatCore| {
            c.participants()
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&a), ["pa"]);
        assert_eq!(names(&b), ["pa"]);
    }

    fn node_core(id: &str) -> ChatCore {
        ChatCore::new(
            NodeId {
                id: id.into(),
                generation: 1,
            },
            CoreLimits::default(),
        )
    }

    fn copies(events: &[Arc<Event>]) -> Vec<Event> {
        events.iter().map(|e| Event::clone(e)).collect()
    }

    fn mark_of(marks: &[SeqMark], origin: &str) -> Option<u64> {
        marks
            .iter()
            .find(|m| m.origin.as_ref().is_some_and(|o| o.id == origin))
            .map(|m| m.seq)
    }

    #[test]
    fn a_participant_announced_back_is_replayed_from_its_first_join() {
        // n1: Ann joins (n1:1), Bob joins (n1:2). n2, cut off, announces Ann
        // as left; n1 announces her back (n1:3). What a resume of Ann may
        // skip still ends before her first join: Bob's join is not skipped.
        let mut n1 = core();
        let ann = join(&mut n1, "Ann", 1);
        let bob = join(&mut n1, "Bob", 1);
        let mut n2 = node_core("n2");
        n2.grant(crate::core::tokens::grant_of(
            &ann.participant_id,
            "tok-Ann",
        ));
        n2.receive(copies(&ann.events));
        n2.receive(copies(&bob.events));
        let left = n2.announce_left(&ann.participant_id).unwrap();
        let back = n1.receive(vec![Event::clone(&left)]);
        assert_eq!(back.back, vec![ann.participant_id.clone()]);
        assert_eq!(
            mark_of(&n1.since_join(&ann.participant_id, &[]), "n1"),
            Some(0),
            "her join is n1:1, not the announcement back"
        );
        n2.receive(copies(&back.events[1..]));
        assert_eq!(
            mark_of(&n2.since_join(&ann.participant_id, &[]), "n1"),
            Some(0),
            "the same on a node that saw her announced as left"
        );
    }

    #[test]
    fn a_participant_detached_here_and_announced_left_elsewhere_is_gone_everywhere() {
        // Ann is on n1. n2, cut off, announces her as left; n1 announces her
        // back. Then her connection to n1 breaks, and n3's "left", stamped
        // before n1's announcement reached it, comes to n1. Her departure
        // stands: n1 stamps it too, unseen by its own participants, and a
        // node that took n1's announcement back after n3's "left" ends with
        // n1's: nobody lists her.
        let mut n1 = core();
        n1.limits.grace = Duration::from_secs(10);
        let ann = join(&mut n1, "Ann", 1);
        let announce_left = |name: &str| {
            let mut other = node_core(name);
            other.grant(crate::core::tokens::grant_of(
                &ann.participant_id,
                "tok-Ann",
            ));
            other.receive(copies(&ann.events));
            let left = other.announce_left(&ann.participant_id).unwrap();
            (other, left)
        };
        let (_, left_by_n2) = announce_left("n2");
        let (mut n3, left_by_n3) = announce_left("n3");
        let back = n1.receive(vec![Event::clone(&left_by_n2)]);
        assert_eq!(back.back, vec![ann.participant_id.clone()]);
        let back_joined = copies(&back.events[1..]);
        n1.session_lost(&ann.participant_id, ann.session, Instant::now());
        let confirmed = n1.receive(vec![Event::clone(&left_by_n3)]);
        assert!(confirmed.back.is_empty() && confirmed.ended.is_empty());
        assert!(!n1.roster.contains(&ann.participant_id));
        let [shown, own] = &confirmed.events[..] else {
            panic!("n3's left and n1's own: {:?}", confirmed.events);
        };
        assert!(n1.shown(shown) && !n1.shown(own), "one left shown on n1");
        assert_eq!(own.kind(), EventKind::Left);
        assert!(own.lamport > back.events[1].lamport);
        // n3 took its own "left" first, then n1's "joined": n1's "left"
        // ends it there too, and is shown there.
        n3.receive(vec![Event::clone(&left_by_n2)]);
        n3.receive(back_joined);
        assert!(n3.roster.contains(&ann.participant_id));
        n3.receive(vec![Event::clone(own)]);
        assert!(!n3.roster.contains(&ann.participant_id));
        assert!(n3.shown(own));
        assert!(
            n1.expire(Instant::now() + Duration::from_secs(60))
                .is_empty()
        );
    }

    #[test]
    fn a_left_the_session_saw_answered_is_not_replayed() {
        // Ann is on n1; n2 announces her as left (n2:1), n1 announces her
        // back (n1:2). n3 delivers all three. A session that saw n1:2 (its
        // node hid n2:1 from it) is not replayed n2:1 by n3; one that did
        // not see n1:2 is replayed both, in order.
        let mut n1 = core();
        let ann = join(&mut n1, "Ann", 1);
        let mut n2 = node_core("n2");
        n2.grant(crate::core::tokens::grant_of(
            &ann.participant_id,
            "tok-Ann",
        ));
        n2.receive(copies(&ann.events));
        let left = n2.announce_left(&ann.participant_id).unwrap();
        let back = n1.receive(vec![Event::clone(&left)]);
        let mut n3 = node_core("n3");
        n3.receive(copies(&ann.events));
        n3.receive(vec![Event::clone(&left)]);
        n3.receive(copies(&back.events[1..]));
        let seen = |seq| {
            vec![SeqMark {
                origin: Some(NodeId {
                    id: "n1".into(),
                    generation: 1,
                }),
                seq,
            }]
        };
        let (mut replay, _) = n3.replay_after(&seen(2), Audience::Participant);
        assert_eq!(replay.len(), 1, "n2's left");
        n3.drop_answered_lefts(&mut replay, &seen(2));
        assert!(replay.is_empty(), "it saw her announced back after that");
        let (mut replay, _) = n3.replay_after(&seen(1), Audience::Participant);
        n3.drop_answered_lefts(&mut replay, &seen(1));
        let kinds: Vec<_> = replay.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, [EventKind::Left, EventKind::Joined]);
    }

    #[test]
    fn a_join_released_past_lost_events_still_decides_a_name_clash() {
        // n2's Sam joined (Lamport 3) after n0:1, which n1 never gets (n0 is
        // gone); n1's own Sam joined later (Lamport 6). When n1 gives up on
        // n0:1 and delivers n2's join, its own Sam lost the name: its
        // session must be ended, as for a join relayed normally.
        let mut n0 = node_core("n0");
        let zed = join(&mut n0, "Zed", 1);
        let mut n2 = node_core("n2");
        n2.receive(copies(&zed.events));
        let sam_a = n2.join("Sam", 1, "pa".into(), "ta".into()).unwrap();
        let mut n1 = core();
        let sam_b = n1.join("Sam", 5, "pb".into(), "tb".into()).unwrap();
        let held = n1.receive(copies(&sam_a.events));
        assert!(held.events.is_empty(), "waits for n0:1");
        let gone = NodeId {
            id: "n0".into(),
            generation: 1,
        };
        let (_, released) = n1.release_gone(&gone).unwrap();
        assert_eq!(released.kicked, vec![("pb".to_string(), sam_b.session)]);
        let last = released.events.last().unwrap();
        assert_eq!(
            (last.kind(), last.participant_id.as_str()),
            (EventKind::Left, "pb")
        );
    }
}
