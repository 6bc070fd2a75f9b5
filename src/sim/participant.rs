//! Simulated participants: the failover client's behaviour
//! ([`crate::failover`]) against simulated nodes.
//!
//! A participant publishes numbered messages, one in flight at a time, each
//! with a publish id that stays the same across retries. When its
//! connection breaks (its node crashed, stopped answering, or was removed;
//! the session was ended; a publish failed for a reason a retry may cure) it
//! reconnects to another node and resumes, handing over what it has seen;
//! a resume the cluster no longer accepts makes it join again as new. Events
//! seen twice, and a message seen under a second id, are dropped, as the
//! real client does. Everything it receives is recorded for [`super::check`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::core::LamportClock;
use crate::core::error::Error;
use crate::core::node::{EndReason, Opened, Reply, RequestId};
use crate::proto::{Event, EventKind, Gap, Resume, SeqMark};

use super::{Action, Sim};

/// An event's identity: (origin id, origin generation, sequence number).
pub type EventKey = (String, u64, u64);

/// What a participant received, as it showed it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub at: Duration,
    /// Which of the participant's identities (joins as new) received it.
    pub identity: usize,
    pub id: EventKey,
    pub lamport: u64,
    pub kind: EventKind,
    pub participant_id: String,
    pub participant_name: String,
    pub text: String,
    pub publish_id: String,
}

/// One message a participant published (or tried to).
#[derive(Debug, Clone)]
pub struct PublishRecord {
    pub identity: usize,
    pub text: String,
    pub publish_id: String,
    /// The message's number among its sender's, from 0.
    pub number: u64,
    /// When it was first sent, and how many events its sender had received
    /// by then (its causal past).
    pub first_sent: Option<(Duration, usize)>,
    /// The acknowledged event: (id, Lamport time).
    pub acked: Option<(EventKey, u64)>,
    /// Refused for good (not a transport problem).
    pub refused: bool,
}

/// One identity of a participant: a join as new, and how it ended.
#[derive(Debug, Clone)]
pub struct Identity {
    pub participant_id: String,
    pub joined_at: Duration,
    /// Set when the participant itself ended it (left or vanished), or the
    /// cluster did (it had to join again as new, or lost a name clash).
    pub ended: Option<(Duration, &'static str)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not joined yet.
    Idle,
    /// Waiting for the answer to a Join (new or resumed) at a node.
    Opening {
        node: usize,
        generation: u64,
        request: RequestId,
    },
    Connected {
        node: usize,
        generation: u64,
        session: u64,
    },
    /// Between attempts.
    Reconnecting,
    Left,
    Vanished,
    Failed(String),
}

/// A request from a participant to a node, in flight.
#[derive(Debug, Clone)]
pub(super) enum Request {
    Join {
        name: String,
        lamport: u64,
        participant_id: String,
        token: String,
        rejoin: Option<crate::proto::Rejoin>,
    },
    Resume {
        resume: Resume,
        lamport: u64,
    },
    Publish {
        token: String,
        text: String,
        lamport: u64,
        publish_id: String,
    },
    Leave {
        token: String,
        lamport: u64,
    },
    /// The participant's connection closed (the node's end of the stream
    /// sees it).
    Dropped {
        participant_id: String,
        session: u64,
    },
}

/// Something a participant does or notices.
#[derive(Debug, Clone)]
pub(super) enum ClientAction {
    /// A request arrives at its node.
    Arrive {
        node: usize,
        generation: u64,
        request: RequestId,
        what: Request,
    },
    /// Tries to (re)connect now.
    Reconnect,
    /// Gives up waiting for the answer to a Join.
    OpenTimeout { request: RequestId },
    /// Notices that the node it is connected to has not answered for a
    /// while (HTTP/2 keepalive), if it is still paused.
    StallCheck { node: usize, generation: u64 },
    /// Notices that its connection to the node reset.
    ConnectionLost { node: usize, generation: u64 },
}

/// A simulated participant. See the module docs.
#[derive(Debug)]
pub struct Participant {
    pub name: String,
    pub identities: Vec<Identity>,
    state: State,
    token: String,
    clock: LamportClock,
    seen: BTreeMap<(String, u64), u64>,
    publish_ids: BTreeSet<String>,
    /// Participants shown as left and not back since, as the failover
    /// client keeps them.
    departed: BTreeSet<String>,
    pub received: Vec<Observed>,
    pub gaps: Vec<Gap>,
    /// "Still here" notices (from a `Room`), as the client prints them:
    /// (how many events it had received then, its identity, the ids of the
    /// participants it had been told left).
    pub still_here: Vec<(usize, usize, Vec<String>)>,
    /// How many times its node said that late events follow.
    pub late_runs: usize,
    /// What the node sent in the current session, before the client's own
    /// dedupe: per origin, the last sequence number. Within one session a
    /// node sends each origin's events once and in order.
    session_last: BTreeMap<(String, u64), u64>,
    /// Where the node broke that, described.
    pub session_faults: Vec<String>,
    /// Whether it sent a Leave (the node may take it even if the answer is
    /// lost with the connection).
    leave_sent: bool,
    pub published: Vec<PublishRecord>,
    /// Indices into `published` not yet answered, in order.
    queue: VecDeque<usize>,
    /// The publish in flight: (node, generation, request).
    in_flight: Option<(usize, u64, RequestId)>,
    /// The nodes the oldest unanswered publish was sent to, for a resume.
    unanswered_at: Vec<crate::proto::NodeId>,
    /// The nodes of the server lists it received, for a resume (as the
    /// client keeps them).
    known_nodes: Vec<crate::proto::NodeId>,
    leave_requested: bool,
    leaving: Option<RequestId>,
    /// Whether the next attempt resumes (false: joins as new).
    resume: bool,
    /// The node it lost last (tried last).
    lost: Option<usize>,
    backoff: Duration,
    next_id: u64,
}

impl Participant {
    /// Whether it is connected now.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// Whether it is still taking part (not left, vanished or failed).
    pub fn is_active(&self) -> bool {
        !matches!(self.state, State::Left | State::Vanished | State::Failed(_))
    }

    /// Why it failed for good, if it did.
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// The node it is connected to.
    pub fn node(&self) -> Option<usize> {
        match self.state {
            State::Connected { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Messages not yet acknowledged or refused.
    pub fn unanswered(&self) -> usize {
        self.queue.len()
    }

    /// The current identity's participant id.
    pub fn participant_id(&self) -> Option<&str> {
        self.identities.last().map(|i| i.participant_id.as_str())
    }

    /// It is done: left, vanished or failed, with why its identity ended.
    fn end(&mut self, state: State, now: Duration, why: &'static str) {
        self.state = state;
        self.leaving = None;
        if let Some(identity) = self.identities.last_mut() {
            identity.ended.get_or_insert((now, why));
        }
    }

    /// Takes the nodes of a server list its node sent, as the client does.
    pub(crate) fn learn_servers(&mut self, list: &crate::proto::ServerList) {
        self.known_nodes = crate::core::membership::learn_nodes(&self.known_nodes, list);
    }

    fn current(&self) -> usize {
        self.identities.len().saturating_sub(1)
    }

    /// The node it is talking to or waiting for.
    fn involved(&self) -> Option<(usize, u64)> {
        match self.state {
            State::Opening {
                node, generation, ..
            }
            | State::Connected {
                node, generation, ..
            } => Some((node, generation)),
            _ => None,
        }
    }
}

impl Sim {
    /// Adds a participant (not joined yet); returns its index.
    pub fn add_participant(&mut self, name: &str) -> usize {
        self.participants.push(Participant {
            name: name.to_string(),
            identities: Vec::new(),
            state: State::Idle,
            token: String::new(),
            clock: LamportClock::new(),
            seen: BTreeMap::new(),
            publish_ids: BTreeSet::new(),
            departed: BTreeSet::new(),
            received: Vec::new(),
            gaps: Vec::new(),
            still_here: Vec::new(),
            late_runs: 0,
            session_last: BTreeMap::new(),
            session_faults: Vec::new(),
            leave_sent: false,
            published: Vec::new(),
            queue: VecDeque::new(),
            in_flight: None,
            unanswered_at: Vec::new(),
            known_nodes: Vec::new(),
            leave_requested: false,
            leaving: None,
            resume: false,
            lost: None,
            backoff: Duration::from_millis(50),
            next_id: 0,
        });
        self.participants.len() - 1
    }

    /// Participant `p` joins through node `node`.
    pub fn join(&mut self, p: usize, node: usize) {
        assert_eq!(self.participants[p].state, State::Idle, "joins once");
        self.participants[p].resume = false;
        self.open(p, node);
    }

    /// Participant `p` publishes its next numbered message (queued behind
    /// any in flight).
    pub fn publish(&mut self, p: usize) {
        let part = &mut self.participants[p];
        if !part.is_active() || part.leave_requested {
            return;
        }
        let number = part.published.len() as u64;
        let text = format!("{} #{number}", part.name);
        // A UUID, as nodes require: unique per seed, participant and number.
        let publish_id =
            uuid::Uuid::from_u64_pair(self.seed, ((p as u64) << 32) | number).to_string();
        part.published.push(PublishRecord {
            identity: part.current(),
            text,
            publish_id,
            number,
            first_sent: None,
            acked: None,
            refused: false,
        });
        part.queue.push_back(part.published.len() - 1);
        self.send_next_publish(p);
    }

    /// Participant `p` leaves, once its queued messages are answered.
    pub fn leave(&mut self, p: usize) {
        let part = &mut self.participants[p];
        if !part.is_active() {
            return;
        }
        part.leave_requested = true;
        self.maybe_leave(p);
    }

    /// Participant `p`'s process dies: its connection closes and it never
    /// comes back (the cluster announces it after the grace period).
    pub fn vanish(&mut self, p: usize) {
        self.note(|| format!("P{p} vanishes"));
        self.close_connection(p);
        let now = self.now;
        self.participants[p].end(State::Vanished, now, "vanished");
    }

    /// Participant `p`'s connection breaks; it reconnects and resumes.
    pub fn drop_connection(&mut self, p: usize) {
        if !self.participants[p].is_connected() {
            return;
        }
        self.note(|| format!("P{p} loses its connection"));
        self.close_connection(p);
        self.reconnect(p);
    }

    /// Closes `p`'s connection: its node sees the stream end.
    fn close_connection(&mut self, p: usize) {
        if let State::Connected {
            node,
            generation,
            session,
        } = self.participants[p].state
        {
            let participant_id = self.participants[p]
                .participant_id()
                .unwrap_or("")
                .to_string();
            self.send_request(
                p,
                node,
                generation,
                0,
                Request::Dropped {
                    participant_id,
                    session,
                },
            );
        }
        let part = &mut self.participants[p];
        part.in_flight = None;
        part.leaving = None;
    }

    /// Sends a request to a node; it arrives after a short delay (or is lost
    /// with the node).
    fn send_request(
        &mut self,
        p: usize,
        node: usize,
        generation: u64,
        request: RequestId,
        what: Request,
    ) {
        let after = self.latency() / 4;
        self.schedule(
            after,
            Action::Client {
                participant: p,
                what: ClientAction::Arrive {
                    node,
                    generation,
                    request,
                    what,
                },
            },
        );
    }

    fn new_request(&mut self, node: usize, p: usize) -> RequestId {
        let n = &mut self.nodes[node];
        let id = n.next_request;
        n.next_request += 1;
        let _ = p;
        id
    }

    /// Asks `node` for a session: resumed, or new.
    fn open(&mut self, p: usize, node: usize) {
        let generation = self.nodes[node].generation;
        let request = self.new_request(node, p);
        let part = &mut self.participants[p];
        let lamport = part.clock.tick();
        let seen: Vec<SeqMark> = part
            .seen
            .iter()
            .map(|((id, generation), &seq)| SeqMark {
                origin: Some(crate::proto::NodeId {
                    id: id.clone(),
                    generation: *generation,
                }),
                seq,
            })
            .collect();
        let what = if part.resume && !part.identities.is_empty() {
            Request::Resume {
                resume: Resume {
                    participant_id: part.participant_id().unwrap_or("").to_string(),
                    session_token: part.token.clone(),
                    seen,
                    unanswered_at: part.unanswered_at.clone(),
                    known_nodes: part.known_nodes.clone(),
                },
                lamport,
            }
        } else {
            part.next_id += 1;
            let rejoin = (!part.identities.is_empty()).then(|| crate::proto::Rejoin {
                seen,
                unanswered_at: part.unanswered_at.clone(),
                known_nodes: part.known_nodes.clone(),
            });
            Request::Join {
                rejoin,
                name: part.name.clone(),
                lamport,
                participant_id: format!("{}-{}-{}", self.seed, p, part.next_id),
                token: format!("token-{}-{}-{}", self.seed, p, part.next_id),
            }
        };
        part.state = State::Opening {
            node,
            generation,
            request,
        };
        let kind = if matches!(what, Request::Resume { .. }) {
            "resume"
        } else {
            "join"
        };
        self.note(|| format!("P{p} {kind} at n{node}"));
        self.send_request(p, node, generation, request, what);
        // A Join call gives up after the client's Join timeout.
        self.schedule(
            crate::failover::JOIN_TIMEOUT,
            Action::Client {
                participant: p,
                what: ClientAction::OpenTimeout { request },
            },
        );
    }

    /// Finds a node to reconnect to, after a backoff.
    fn reconnect(&mut self, p: usize) {
        let part = &mut self.participants[p];
        if !part.is_active() {
            return;
        }
        if let Some((node, _)) = part.involved() {
            part.lost = Some(node);
        }
        part.state = State::Reconnecting;
        part.in_flight = None;
        part.leaving = None;
        let backoff = part.backoff;
        part.backoff = (part.backoff * 2).min(Duration::from_secs(2));
        let jitter = Duration::from_millis(self.rng.below(100) as u64);
        self.schedule(
            backoff + jitter,
            Action::Client {
                participant: p,
                what: ClientAction::Reconnect,
            },
        );
    }

    /// Tries the nodes in turn, the one it lost last.
    fn attempt(&mut self, p: usize) {
        if self.participants[p].state != State::Reconnecting {
            return;
        }
        let n = self.nodes.len();
        let lost = self.participants[p].lost;
        let start = lost.map_or(0, |l| l + 1);
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        if let Some(l) = lost {
            order.retain(|&i| i != l);
            order.push(l);
        }
        // A node that is down refuses at once; the first that listens gets
        // the Join (a paused one never answers: the call times out).
        match order.into_iter().find(|&i| self.nodes[i].core.is_some()) {
            Some(node) => self.open(p, node),
            None => self.reconnect(p),
        }
    }

    pub(super) fn client_action(&mut self, p: usize, what: ClientAction) {
        match what {
            ClientAction::Arrive {
                node,
                generation,
                request,
                what,
            } => {
                let action = Action::Client {
                    participant: p,
                    what: ClientAction::Arrive {
                        node,
                        generation,
                        request,
                        what: what.clone(),
                    },
                };
                if !self.deliverable(node, generation, &action) {
                    return;
                }
                self.arrive(p, node, request, what);
            }
            ClientAction::Reconnect => self.attempt(p),
            ClientAction::OpenTimeout { request } => {
                if let State::Opening { request: r, .. } = self.participants[p].state
                    && r == request
                {
                    self.note(|| format!("P{p} gives up waiting for its Join"));
                    self.reconnect(p);
                }
            }
            ClientAction::StallCheck { node, generation } => {
                let stalled = self.nodes[node].paused && self.nodes[node].generation == generation;
                if stalled && self.participants[p].involved() == Some((node, generation)) {
                    self.note(|| format!("P{p} notices n{node} stopped answering"));
                    self.close_connection(p);
                    self.reconnect(p);
                }
            }
            ClientAction::ConnectionLost { node, generation } => {
                if self.participants[p].involved() == Some((node, generation)) {
                    self.note(|| format!("P{p} lost its connection to n{node}"));
                    self.participants[p].in_flight = None;
                    self.reconnect(p);
                }
            }
        }
    }

    /// A participant's request reaches its node.
    fn arrive(&mut self, p: usize, node: usize, request: RequestId, what: Request) {
        let now = self.instant();
        if request != 0 {
            self.nodes[node].requests.insert(request, p);
        }
        let core = self.nodes[node].core.as_mut().expect("deliverable");
        match what {
            Request::Join {
                name,
                lamport,
                participant_id,
                token,
                rejoin,
            } => {
                let joiner = crate::core::node::Joiner {
                    name: &name,
                    participant_id,
                    token,
                    rejoin,
                    recent: 0,
                };
                core.join(now, request, joiner, lamport)
            }
            Request::Resume { resume, lamport } => core.resume(now, request, resume, lamport),
            Request::Publish {
                token,
                text,
                lamport,
                publish_id,
            } => core.publish(now, request, &token, &text, lamport, &publish_id),
            Request::Leave { token, lamport } => core.leave(now, request, &token, lamport),
            Request::Dropped {
                participant_id,
                session,
            } => {
                if self.nodes[node]
                    .sinks
                    .get(&participant_id)
                    .is_some_and(|s| s.0 == session)
                {
                    self.nodes[node].sinks.remove(&participant_id);
                }
                let core = self.nodes[node].core.as_mut().expect("deliverable");
                core.session_dropped(now, &participant_id, session);
            }
        }
        self.carry_out(node);
    }

    /// A node stopped: the participants talking to it notice.
    pub(super) fn client_lost_connection(&mut self, p: usize, node: usize, after: Duration) {
        let generation = self.nodes[node].generation;
        self.schedule(
            after,
            Action::Client {
                participant: p,
                what: ClientAction::ConnectionLost { node, generation },
            },
        );
    }

    /// Every participant talking to node `i` (about to stop) notices.
    pub(super) fn clients_of(&self, i: usize) -> Vec<usize> {
        let generation = self.nodes[i].generation;
        (0..self.participants.len())
            .filter(|&p| self.participants[p].involved() == Some((i, generation)))
            .collect()
    }

    pub(super) fn participant_opened(
        &mut self,
        p: usize,
        node: usize,
        generation: u64,
        opened: Opened,
    ) -> bool {
        let waiting = matches!(self.participants[p].state,
            State::Opening { node: n, generation: g, request } if n == node && g == generation && request == opened.request);
        if !waiting {
            return false;
        }
        let now = self.now;
        let part = &mut self.participants[p];
        let welcome = opened.welcome;
        if !welcome.resumed {
            // Joined as new: a new identity. What it saw under the old one
            // stays seen: it is not shown twice, and wherever the new
            // session resumes, its publishes wait for it (causal order).
            if let Some(old) = part.identities.last_mut() {
                old.ended.get_or_insert((now, "joined again as new"));
            }
            part.identities.push(Identity {
                participant_id: welcome.participant_id.clone(),
                joined_at: now,
                ended: None,
            });
        }
        for mark in &welcome.seen {
            if let Some(origin) = &mark.origin {
                let seen = part
                    .seen
                    .entry((origin.id.clone(), origin.generation))
                    .or_default();
                *seen = (*seen).max(mark.seq);
            }
        }
        if let Some(list) = &welcome.servers {
            part.learn_servers(list);
        }
        part.token = welcome.session_token;
        part.session_last.clear();
        part.state = State::Connected {
            node,
            generation,
            session: opened.session,
        };
        part.resume = true;
        part.backoff = Duration::from_millis(50);
        if !opened.gaps.is_empty() {
            part.gaps.push(Gap {
                reason: "replay gap".into(),
                ranges: opened.gaps,
            });
        }
        self.note(|| format!("P{p} connected to n{node} (replay {})", opened.replay.len()));
        for event in &opened.replay {
            self.receive(p, event);
        }
        self.send_next_publish(p);
        self.maybe_leave(p);
        true
    }

    /// Who is in the room, told to participant `p` by `node`: those it was
    /// told left are here after all (the failover client's reading).
    pub(super) fn participant_told_room(
        &mut self,
        p: usize,
        node: usize,
        room: &[crate::proto::Participant],
    ) {
        if self.participants[p].node() != Some(node) {
            return;
        }
        let part = &mut self.participants[p];
        let back: Vec<String> = room
            .iter()
            .filter(|r| part.departed.remove(&r.id))
            .map(|r| r.id.clone())
            .collect();
        if !back.is_empty() {
            let identity = part.identities.len().saturating_sub(1);
            part.still_here.push((part.received.len(), identity, back));
        }
    }

    pub(super) fn participant_receives(&mut self, p: usize, node: usize, event: &Arc<Event>) {
        if self.participants[p].node() != Some(node) {
            return;
        }
        self.receive(p, event);
    }

    fn receive(&mut self, p: usize, event: &Event) {
        let now = self.now;
        let part = &mut self.participants[p];
        let Some(id) = &event.id else { return };
        let Some(origin) = &id.origin else { return };
        let seen = part
            .seen
            .entry((origin.id.clone(), origin.generation))
            .or_default();
        if id.seq <= *seen {
            return; // already delivered before a failover
        }
        *seen = id.seq;
        if event.kind() == EventKind::Message
            && !event.publish_id.is_empty()
            && !part.publish_ids.insert(event.publish_id.clone())
        {
            return; // the same message under a second id
        }
        match event.kind() {
            EventKind::Joined => {
                part.departed.remove(&event.participant_id);
            }
            EventKind::Left if !part.departed.insert(event.participant_id.clone()) => {
                return; // one departure announced by both sides of a split
            }
            _ => {}
        }
        part.clock.observe(event.lamport);
        let identity = part.current();
        if self.config.trace {
            let line = format!(
                "P{p} shows {}:{} {:?} [{}]",
                origin.id, id.seq, event.text, event.participant_id
            );
            self.trace
                .push(format!("{:>8.3}   {line}", now.as_secs_f64()));
        }
        let part = &mut self.participants[p];
        part.received.push(Observed {
            at: now,
            identity,
            id: (origin.id.clone(), origin.generation, id.seq),
            lamport: event.lamport,
            kind: event.kind(),
            participant_id: event.participant_id.clone(),
            participant_name: event.participant_name.clone(),
            text: event.text.clone(),
            publish_id: event.publish_id.clone(),
        });
    }

    pub(super) fn participant_session_ended(&mut self, p: usize, node: usize, reason: EndReason) {
        if self.participants[p].node() != Some(node) {
            return;
        }
        self.note(|| format!("P{p} session ended: {reason:?}"));
        match reason {
            EndReason::Left => {
                // A Leave it sent was taken (maybe one an earlier session
                // sent, carried over by the handoff): it has left.
                let now = self.now;
                let part = &mut self.participants[p];
                if part.leave_sent {
                    part.end(State::Left, now, "left");
                }
            }
            EndReason::NameClash => {
                let now = self.now;
                self.participants[p].end(
                    State::Failed("lost a name clash".into()),
                    now,
                    "lost a name clash",
                );
            }
            _ => self.reconnect(p),
        }
    }

    pub(super) fn participant_reply(
        &mut self,
        p: usize,
        node: usize,
        request: RequestId,
        reply: Reply,
    ) {
        let part = &self.participants[p];
        let generation = self.nodes[node].generation;
        let current = part.in_flight == Some((node, generation, request))
            || part.leaving == Some(request) && part.node() == Some(node)
            || matches!(part.state, State::Opening { node: n, generation: g, request: r }
                if (n, g, r) == (node, generation, request));
        if !current {
            return; // an answer nobody waits for any more
        }
        match reply {
            Reply::Published(reply) => {
                let part = &mut self.participants[p];
                part.in_flight = None;
                part.unanswered_at.clear();
                if let Some(i) = part.queue.pop_front() {
                    let id = reply.id.clone().unwrap_or_default();
                    let origin = id.origin.unwrap_or_default();
                    part.published[i].acked =
                        Some(((origin.id, origin.generation, id.seq), reply.lamport));
                }
                part.clock.observe(reply.lamport);
                self.note(|| {
                    format!(
                        "P{p} acked {:?} L{}",
                        reply
                            .id
                            .as_ref()
                            .map(|i| (i.origin.as_ref().map(|o| o.id.clone()), i.seq)),
                        reply.lamport
                    )
                });
                self.send_next_publish(p);
                self.maybe_leave(p);
            }
            Reply::Left(lamport) => {
                let now = self.now;
                let part = &mut self.participants[p];
                part.clock.observe(lamport);
                part.end(State::Left, now, "left");
                self.note(|| format!("P{p} left"));
            }
            Reply::Flushed => {}
            Reply::Refused(error) => self.participant_refused(p, node, error),
        }
    }

    fn participant_refused(&mut self, p: usize, node: usize, error: Error) {
        self.note(|| format!("P{p} refused at n{node}: {error}"));
        let part = &mut self.participants[p];
        match (&part.state, error) {
            (State::Opening { .. }, Error::UnknownSession) if part.leave_sent => {
                // Its Leave was taken before the connection broke.
                let now = self.now;
                part.end(State::Left, now, "left");
                self.note(|| format!("P{p} finds its Leave was taken"));
            }
            (State::Opening { .. }, Error::UnknownSession) => {
                // The session is gone (announced as left): join again as new.
                part.resume = false;
                part.state = State::Reconnecting;
                self.attempt(p);
            }
            (State::Opening { .. }, _) => self.reconnect(p),
            (State::Connected { .. }, Error::InvalidMessage(_)) => {
                part.in_flight = None;
                part.unanswered_at.clear();
                if let Some(i) = part.queue.pop_front() {
                    part.published[i].refused = true;
                }
                self.send_next_publish(p);
            }
            // A retry may cure the rest: reconnect, then send it again.
            (State::Connected { .. }, _) => {
                self.close_connection(p);
                self.reconnect(p);
            }
            _ => {}
        }
    }

    fn send_next_publish(&mut self, p: usize) {
        let now = self.now;
        let part = &mut self.participants[p];
        let State::Connected {
            node, generation, ..
        } = part.state
        else {
            return;
        };
        if part.in_flight.is_some() {
            return;
        }
        let Some(&i) = part.queue.front() else { return };
        let received = part
            .received
            .iter()
            .filter(|o| o.identity == part.identities.len() - 1)
            .count();
        let record = &mut part.published[i];
        record.first_sent.get_or_insert((now, received));
        let what = Request::Publish {
            token: part.token.clone(),
            text: record.text.clone(),
            lamport: part.clock.tick(),
            publish_id: record.publish_id.clone(),
        };
        let request = self.new_request(node, p);
        let sent_to = crate::proto::NodeId {
            id: format!("n{node}"),
            generation,
        };
        let part = &mut self.participants[p];
        if !part.unanswered_at.contains(&sent_to) {
            part.unanswered_at.push(sent_to);
        }
        part.in_flight = Some((node, generation, request));
        if let Request::Publish { text, .. } = &what {
            let text = text.clone();
            self.note(|| format!("P{p} publishes {text:?} at n{node}"));
        }
        self.send_request(p, node, generation, request, what);
    }

    fn maybe_leave(&mut self, p: usize) {
        let part = &mut self.participants[p];
        let State::Connected {
            node, generation, ..
        } = part.state
        else {
            return;
        };
        if !part.leave_requested || !part.queue.is_empty() || part.leaving.is_some() {
            return;
        }
        let what = Request::Leave {
            token: part.token.clone(),
            lamport: part.clock.tick(),
        };
        let request = self.new_request(node, p);
        self.participants[p].leaving = Some(request);
        self.participants[p].leave_sent = true;
        self.note(|| format!("P{p} leaves at n{node}"));
        self.send_request(p, node, generation, request, what);
    }
}
