//! A node core (`core::node::NodeCore`) driven by a sequence of operations
//! decoded from the input: participants joining, resuming, publishing,
//! leaving and dropping their sessions; peers saying hello, sending relay
//! frames (event batches with grants, heartbeats with membership, skips,
//! never-held marks; built from fuzzed values or decoded from fuzzed bytes
//! through the servers' codec), acknowledging, linking and unlinking;
//! membership merges, admissions, a graceful flush; and ticks that move time
//! forward (the core never reads a clock: `now` is a start instant plus
//! fuzzed offsets). The core runs as a node with a live peer, or as one that
//! joined the cluster from a fuzzed snapshot. What must hold: nothing
//! panics, and after every step the node's Lamport clock has not gone back,
//! the events it delivers to its sessions come in increasing gate order,
//! none twice, each of a known kind with a valid name, publish id and text,
//! and every answer is to a request that was made and not yet answered.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;

use chitty::codec::decode;
use chitty::core::chat::CoreLimits;
use chitty::core::membership::member;
use chitty::core::node::{Joiner, NodeCore, Output, Timing};
use chitty::core::tokens::grant_of;
use chitty::core::validate;
use chitty::proto::{
    Event, EventId, Gap, GapRange, Heartbeat, JoinRequest, LeaveRequest, Member, MemberState,
    NeverHeld, NodeId, Participant, PublishRequest, Rejoin, RelayBatch, RelayFrame, Resume,
    SeqMark, ServerJoinReply, relay_frame,
};

const NAMES: [&str; 4] = ["Ann", "Bo", "Cy", "Zoë 🦀"];
const TEXTS: [&str; 4] = ["hi", "hello there", "😀", " padded "];
const PUBLISH_IDS: [&str; 3] = [
    "9f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
    "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b",
    "67e55044-10b1-426f-9247-bb680e5fe0c8",
];
/// Participants of other nodes, with their tokens.
const REMOTE: [(&str, &str); 3] = [
    ("id-r1", "tok-r1"),
    ("id-r2", "tok-r2"),
    ("id-r3", "tok-r3"),
];

/// One of a few node ids and generations (`n1`, generation 1, is this node),
/// so that fuzzed values name the same nodes often.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Node {
    id: u8,
    generation: u8,
}

impl Node {
    fn get(self) -> NodeId {
        NodeId {
            id: format!("n{}", 1 + self.id % 4),
            generation: 1 + u64::from(self.generation % 3),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Mark {
    node: Node,
    seq: u16,
}

fn marks(ms: &[Mark]) -> Vec<SeqMark> {
    ms.iter()
        .map(|m| SeqMark {
            origin: Some(m.node.get()),
            seq: u64::from(m.seq),
        })
        .collect()
}

/// A Lamport clock: near the node's, or anything.
#[derive(Arbitrary, Debug)]
enum Clock {
    Near(i8),
    Any(u64),
}

impl Clock {
    fn get(&self, core: &NodeCore) -> u64 {
        match *self {
            Clock::Near(d) => core.lamport().saturating_add_signed(i64::from(d)),
            Clock::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Any(String),
}

impl Text {
    fn get(&self, known: &[&str]) -> String {
        match self {
            Text::Known(i) => known[usize::from(*i) % known.len()].to_string(),
            Text::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum PublishId {
    Empty,
    Known(u8),
    Any(String),
}

impl PublishId {
    fn get(&self) -> String {
        match self {
            PublishId::Empty => String::new(),
            PublishId::Known(i) => PUBLISH_IDS[usize::from(*i) % PUBLISH_IDS.len()].into(),
            PublishId::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ArbMember {
    node: Node,
    state: u8,
    version: u16,
}

impl ArbMember {
    fn get(&self) -> Member {
        let node = self.node.get();
        let addr = format!("{}:1", node.id);
        let mut m = member(node, &addr, MemberState::Alive, u64::from(self.version));
        m.state = i32::from(self.state % 6);
        m
    }
}

fn members(ms: &[ArbMember]) -> Vec<Member> {
    ms.iter().map(ArbMember::get).collect()
}

#[derive(Arbitrary, Debug)]
struct ArbEvent {
    origin: Node,
    seq: u16,
    lamport: Clock,
    kind: u8,
    /// Index into the participants (remote ones, then those joined here).
    who: u8,
    name: Text,
    text: Text,
    publish_id: PublishId,
    deps: Vec<Mark>,
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Batch {
        events: Vec<ArbEvent>,
        /// Grants of these participants' tokens.
        grants: Vec<u8>,
        late: bool,
    },
    Heartbeat {
        lamport: u64,
        members: Vec<ArbMember>,
    },
    Skip {
        ranges: Vec<(Node, u16, u16)>,
    },
    NeverHeld(Vec<Mark>),
    Hello(ArbMember),
    Empty,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Join {
        name: Text,
        lamport: Clock,
        rejoin: Option<(Vec<Mark>, Vec<Node>, Vec<Node>)>,
        /// Earlier messages asked for.
        recent: u8,
    },
    Resume {
        who: u8,
        wrong_token: bool,
        seen: Vec<Mark>,
        unanswered_at: Vec<Node>,
        known_nodes: Vec<Node>,
        lamport: Clock,
    },
    Publish {
        who: u8,
        text: Text,
        lamport: Clock,
        publish_id: PublishId,
    },
    Leave {
        who: u8,
        lamport: Clock,
    },
    SessionDropped(u8),
    SessionOverflowed(u8),
    Relay {
        peer: Node,
        frame: Frame,
    },
    /// Bytes decoded as a `RelayFrame` (0), `JoinRequest` (1),
    /// `PublishRequest` (2) or `LeaveRequest` (3), as the servers decode them.
    Bytes {
        kind: u8,
        peer: Node,
        bytes: Vec<u8>,
    },
    Hello(ArbMember),
    InboundClosed(u8),
    LinkUp {
        peer: Node,
        held: Vec<Mark>,
    },
    LinkDown(Node),
    LinkOverflowed(Node),
    ConnectRefused(Node),
    LinkRefused(Node),
    ReplayFor(Node),
    Ack {
        peer: Node,
        held: Vec<Mark>,
    },
    Merge(Vec<ArbMember>),
    Admit(ArbMember),
    Flush,
    StopSessions,
    Tick(u16),
}

#[derive(Arbitrary, Debug)]
struct Snapshot {
    members: Vec<ArbMember>,
    participants: Vec<(u8, u8, Node)>,
    lamport: u64,
    delivered: Vec<Mark>,
    grants: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Small history, dedupe and hold-back limits, to reach their edges.
    small_limits: bool,
    /// Start as a node that joined the cluster from this snapshot, rather
    /// than one with a live, linked peer `n2`.
    joined: Option<Snapshot>,
    ops: Vec<Op>,
}

/// The state of the run: the core and what the checks need.
struct Run {
    core: NodeCore,
    now: Instant,
    next_request: u64,
    /// Participants: remote ones, then those joined here (id, token).
    people: Vec<(String, String)>,
    /// Sessions the core opened, by participant id.
    sessions: HashMap<String, u64>,
    /// Requests made and not answered yet.
    pending: HashSet<u64>,
    lamport: u64,
    last_gate: Option<u64>,
    delivered: HashSet<(String, u64, u64)>,
}

impl Run {
    fn person(&self, who: u8) -> (String, String) {
        self.people[usize::from(who) % self.people.len()].clone()
    }

    fn request(&mut self) -> u64 {
        self.next_request += 1;
        self.pending.insert(self.next_request);
        self.next_request
    }

    fn event(&self, e: &ArbEvent) -> Event {
        let (participant_id, _) = self.person(e.who);
        Event {
            id: Some(EventId {
                origin: Some(e.origin.get()),
                seq: u64::from(e.seq),
            }),
            lamport: e.lamport.get(&self.core),
            kind: i32::from(e.kind % 6),
            participant_name: e.name.get(&NAMES),
            participant_id,
            text: e.text.get(&TEXTS),
            publish_id: e.publish_id.get(),
            deps: marks(&e.deps),
        }
    }

    fn frame(&self, frame: &Frame) -> RelayFrame {
        let frame = match frame {
            Frame::Batch {
                events,
                grants,
                late,
            } => relay_frame::Frame::Batch(RelayBatch {
                events: events.iter().map(|e| self.event(e)).collect(),
                grants: grants
                    .iter()
                    .map(|&w| {
                        let (id, token) = self.person(w);
                        grant_of(&id, &token)
                    })
                    .collect(),
                late: *late,
            }),
            Frame::Heartbeat {
                lamport,
                members: m,
            } => relay_frame::Frame::Heartbeat(Heartbeat {
                lamport: *lamport,
                members: members(m),
            }),
            Frame::Skip { ranges } => relay_frame::Frame::Skip(Gap {
                reason: "lost".into(),
                ranges: ranges
                    .iter()
                    .map(|&(node, from, to)| GapRange {
                        origin: Some(node.get()),
                        from_seq: u64::from(from),
                        to_seq: u64::from(to),
                    })
                    .collect(),
            }),
            Frame::NeverHeld(upto) => {
                relay_frame::Frame::NeverHeld(NeverHeld { upto: marks(upto) })
            }
            Frame::Hello(m) => relay_frame::Frame::Hello(m.get()),
            Frame::Empty => return RelayFrame { frame: None },
        };
        RelayFrame { frame: Some(frame) }
    }

    fn join(&mut self, name: &str, lamport: u64, rejoin: Option<Rejoin>, recent: usize) {
        let request = self.request();
        let participant_id = format!("id-{request}");
        let token = format!("tok-{request}");
        self.people.push((participant_id.clone(), token.clone()));
        let joiner = Joiner {
            name,
            participant_id,
            token,
            rejoin,
            recent,
        };
        self.core.join(self.now, request, joiner, lamport);
    }

    fn publish(&mut self, token: &str, text: &str, lamport: u64, publish_id: &str) {
        let request = self.request();
        self.core
            .publish(self.now, request, token, text, lamport, publish_id);
    }

    fn leave(&mut self, token: &str, lamport: u64) {
        let request = self.request();
        self.core.leave(self.now, request, token, lamport);
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match op {
            Op::Join {
                name,
                lamport,
                rejoin,
                recent,
            } => {
                let rejoin = rejoin.as_ref().map(|(seen, unanswered, known)| Rejoin {
                    seen: marks(seen),
                    unanswered_at: unanswered.iter().map(|n| n.get()).collect(),
                    known_nodes: known.iter().map(|n| n.get()).collect(),
                });
                let lamport = lamport.get(&self.core);
                self.join(&name.get(&NAMES), lamport, rejoin, usize::from(*recent));
            }
            Op::Resume {
                who,
                wrong_token,
                seen,
                unanswered_at,
                known_nodes,
                lamport,
            } => {
                let (participant_id, token) = self.person(*who);
                let resume = Resume {
                    participant_id,
                    session_token: if *wrong_token { "forged".into() } else { token },
                    seen: marks(seen),
                    unanswered_at: unanswered_at.iter().map(|n| n.get()).collect(),
                    known_nodes: known_nodes.iter().map(|n| n.get()).collect(),
                };
                let lamport = lamport.get(&self.core);
                let request = self.request();
                self.core.resume(now, request, resume, lamport);
            }
            Op::Publish {
                who,
                text,
                lamport,
                publish_id,
            } => {
                let (_, token) = self.person(*who);
                let lamport = lamport.get(&self.core);
                self.publish(&token, &text.get(&TEXTS), lamport, &publish_id.get());
            }
            Op::Leave { who, lamport } => {
                let (_, token) = self.person(*who);
                let lamport = lamport.get(&self.core);
                self.leave(&token, lamport);
            }
            Op::SessionDropped(who) => {
                let (participant_id, _) = self.person(*who);
                if let Some(&session) = self.sessions.get(&participant_id) {
                    self.core.session_dropped(now, &participant_id, session);
                }
            }
            Op::SessionOverflowed(who) => {
                let (participant_id, _) = self.person(*who);
                if self.sessions.contains_key(&participant_id) {
                    self.core.session_overflowed(&participant_id, 16, 4096);
                }
            }
            Op::Relay { peer, frame } => {
                let frame = self.frame(frame);
                let _ = self.core.on_relay(now, &peer.get(), frame);
            }
            Op::Bytes { kind, peer, bytes } => match kind % 4 {
                0 => {
                    if let Ok(frame) = decode::<RelayFrame>(bytes.as_slice()) {
                        let _ = self.core.on_relay(now, &peer.get(), frame);
                    }
                }
                1 => {
                    if let Ok(req) = decode::<JoinRequest>(bytes.as_slice()) {
                        match req.resume {
                            Some(resume) => {
                                let request = self.request();
                                self.core.resume(now, request, resume, req.lamport);
                            }
                            None => {
                                let recent = req.recent as usize;
                                self.join(&req.name, req.lamport, req.rejoin, recent)
                            }
                        }
                    }
                }
                2 => {
                    if let Ok(req) = decode::<PublishRequest>(bytes.as_slice()) {
                        self.publish(&req.session_token, &req.text, req.lamport, &req.publish_id);
                    }
                }
                _ => {
                    if let Ok(req) = decode::<LeaveRequest>(bytes.as_slice()) {
                        self.leave(&req.session_token, req.lamport);
                    }
                }
            },
            Op::Hello(m) => {
                let _ = self.core.on_hello(now, m.get());
            }
            Op::InboundClosed(link) => self.core.inbound_closed(u64::from(*link)),
            Op::LinkUp { peer, held } => {
                let _ = self.core.link_up(now, &peer.get(), marks(held));
            }
            Op::LinkDown(peer) => self.core.link_down(&peer.get()),
            Op::LinkOverflowed(peer) => self.core.link_overflowed(&peer.get()),
            Op::ConnectRefused(peer) => self.core.connect_refused(now, &peer.get()),
            Op::LinkRefused(peer) => self.core.link_refused(&peer.get()),
            Op::ReplayFor(peer) => {
                let _ = self.core.replay_for(&peer.get());
            }
            Op::Ack { peer, held } => self.core.on_ack(now, &peer.get(), marks(held)),
            Op::Merge(m) => {
                let _ = self.core.merge_members(now, &members(m));
            }
            Op::Admit(m) => {
                let _ = self.core.admit(now, m.get());
            }
            Op::Flush => {
                let request = self.request();
                self.core.flush(now, request);
            }
            Op::StopSessions => self.core.stop_sessions(),
            Op::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.core.tick(self.now);
            }
        }
        self.check();
    }

    /// The invariants, on what the step did.
    fn check(&mut self) {
        let lamport = self.core.lamport();
        assert!(
            lamport >= self.lamport,
            "the clock went back from {} to {lamport}",
            self.lamport
        );
        self.lamport = lamport;
        for output in self.core.take_outputs() {
            match output {
                Output::Deliver { gate, event } => {
                    assert!(
                        self.last_gate.is_none_or(|last| gate > last),
                        "gate {gate} after {:?}",
                        self.last_gate
                    );
                    self.last_gate = Some(gate);
                    let id = event.id.clone().unwrap_or_default();
                    let origin = id.origin.unwrap_or_default();
                    assert!(
                        self.delivered
                            .insert((origin.id, origin.generation, id.seq)),
                        "delivered twice: {event:?}"
                    );
                    // What an honest node stamps, but for the Lamport time
                    // (a peer's absurd clock moves this node's too).
                    let shown = Event {
                        lamport: 0,
                        deps: Vec::new(),
                        ..(*event).clone()
                    };
                    if let Err(why) = validate::relayed_event(&shown) {
                        panic!("delivered {event:?}: {why}");
                    }
                }
                Output::Opened(opened) => {
                    assert!(
                        self.pending.remove(&opened.request),
                        "a session opened for request {} not pending",
                        opened.request
                    );
                    self.sessions
                        .insert(opened.participant_id.clone(), opened.session);
                }
                Output::Reply { request, reply } => {
                    assert!(
                        self.pending.remove(&request),
                        "an answer to request {request} not pending: {reply:?}"
                    );
                }
                Output::EndSession { participant_id, .. } => {
                    self.sessions.remove(&participant_id);
                }
                _ => {}
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let start = Instant::now();
    let limits = if input.small_limits {
        CoreLimits {
            history_events: 8,
            history_bytes: 2048,
            dedupe_ids: 4,
            holdback_events: 8,
            ..CoreLimits::default()
        }
    } else {
        CoreLimits::default()
    };
    let me = NodeId {
        id: "n1".into(),
        generation: 1,
    };
    let mut core = NodeCore::new(start, me.clone(), "n1:1".into(), Timing::default(), limits);
    core.never_reuse_ids();
    let people: Vec<(String, String)> = REMOTE
        .iter()
        .map(|&(id, token)| (id.to_string(), token.to_string()))
        .collect();
    match &input.joined {
        Some(snapshot) => {
            let mut ms = members(&snapshot.members);
            ms.push(member(me, "n1:1", MemberState::Alive, 1));
            let reply = ServerJoinReply {
                members: ms,
                participants: snapshot
                    .participants
                    .iter()
                    .map(|&(who, name, node)| Participant {
                        id: people[usize::from(who) % people.len()].0.clone(),
                        name: NAMES[usize::from(name) % NAMES.len()].into(),
                        node: Some(node.get()),
                    })
                    .collect(),
                lamport: snapshot.lamport,
                delivered: marks(&snapshot.delivered),
                grants: snapshot
                    .grants
                    .iter()
                    .map(|&w| {
                        let (id, token) = &people[usize::from(w) % people.len()];
                        grant_of(id, token)
                    })
                    .collect(),
            };
            core.joined_cluster(start, reply);
        }
        None => {
            let n2 = NodeId {
                id: "n2".into(),
                generation: 1,
            };
            core.merge_members(start, &[member(n2.clone(), "n2:1", MemberState::Alive, 1)]);
            core.link_up(start, &n2, Vec::new());
        }
    }
    let mut run = Run {
        lamport: core.lamport(),
        core,
        now: start,
        next_request: 0,
        people,
        sessions: HashMap::new(),
        pending: HashSet::new(),
        last_gate: None,
        delivered: HashSet::new(),
    };
    run.check();
    for op in &input.ops {
        run.apply(op);
    }
});
