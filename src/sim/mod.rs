//! A deterministic cluster simulator: N [`NodeCore`]s and simulated
//! participants in virtual time, with a seeded scheduler that controls every
//! delivery.
//!
//! Nothing here touches a socket, a thread or a clock. The simulator plays
//! the part of the shell ([`crate::node`], [`crate::mesh`]) and of the
//! failover client ([`crate::failover`]):
//! * every node is a [`NodeCore`], fed its inputs and carried out as the
//!   real executor does: outputs in order, sessions registered before
//!   events are handed out, a link that comes up replays from history;
//! * peer links are connections with a FIFO stream each way: a frame's
//!   delay is random, but never lets it overtake an earlier frame of the
//!   same connection (reordering happens only across links, as with TCP);
//! * faults are actions like any other: a link cut (one direction or both:
//!   the connections over it break and what was in flight is lost; new ones
//!   cannot be made until it heals), a crash (state lost; peers see the
//!   connections reset), a pause (state kept; everything sent to the node
//!   waits, and time jumps when it resumes), a restart with a new
//!   generation, and participants that join, publish, leave, vanish, or lose
//!   their connection and resume elsewhere;
//! * participants behave like [`crate::failover`]: one publish in flight,
//!   retried with the same publish id after a reconnect, a resume that hands
//!   over what was seen, events seen twice dropped.
//!
//! Every choice comes from one seeded [`Rng`] and every queue is ordered, so
//! a seed replays bit for bit: [`Sim::trace`] records each step, and two
//! runs of one seed give the same trace. [`check`] holds the invariants that
//! [`Sim::check`] applies to what every participant received.

pub mod check;
mod participant;
pub mod schedule;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::chat::CoreLimits;
use crate::core::node::{MeshRefusal, NodeCore, Output, PeerItem, Replay, RequestId, Timing};
use crate::core::rng::Rng;
use crate::proto::{Event, Member, NodeId, RelayAck, RelayBatch, RelayFrame, relay_frame};

pub use participant::{EventKey, Observed, Participant, PublishRecord};

/// Settings of a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub timing: Timing,
    pub limits: CoreLimits,
    /// One-way delay of a frame between nodes: uniform in this range.
    pub latency: (Duration, Duration),
    /// How long a client takes to notice that its node stopped answering
    /// (HTTP/2 keepalive: a ping every 2 s, 3 s to answer).
    pub client_stall_detect: Duration,
    /// Record every step in [`Sim::trace`].
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            timing: Timing::default(),
            limits: CoreLimits::default(),
            latency: (Duration::from_micros(200), Duration::from_millis(5)),
            client_stall_detect: Duration::from_secs(5),
            trace: false,
        }
    }
}

/// How long a connection survives a cut link: a node's HTTP/2 keepalive
/// (a ping every 10 s, 10 s to answer) drops it after that.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(20);

/// What happens at one instant of virtual time.
#[derive(Debug, Clone)]
enum Action {
    Tick {
        node: usize,
        generation: u64,
    },
    /// The link task of `node` tries to connect to `peer`.
    Connect {
        node: usize,
        generation: u64,
        peer: NodeId,
    },
    /// The first frame of connection `conn`, at the callee.
    Hello {
        conn: u64,
        member: Member,
    },
    /// The callee's answer to a hello, at the caller.
    HelloAnswer {
        conn: u64,
        answer: Result<RelayAck, MeshRefusal>,
    },
    /// The caller gives up waiting for the first acknowledgement.
    HelloTimeout {
        conn: u64,
    },
    /// A relay frame of connection `conn`, at the callee.
    Frame {
        conn: u64,
        frame: RelayFrame,
    },
    /// An acknowledgement on connection `conn`, at the caller.
    Ack {
        conn: u64,
        ack: RelayAck,
    },
    /// The caller of `conn` notices it broke.
    CallerNotices {
        conn: u64,
    },
    /// The callee of `conn` notices it broke.
    CalleeNotices {
        conn: u64,
    },
    /// A membership push, at `to`; answered with `to`'s view.
    Gossip {
        from: usize,
        from_generation: u64,
        to: usize,
        to_generation: u64,
        members: Vec<Member>,
    },
    /// The answer to a push, back at `to`.
    GossipAnswer {
        to: usize,
        generation: u64,
        members: Vec<Member>,
    },
    /// A paused node runs again.
    Unpause {
        node: usize,
    },
    /// A node is asked to stop gracefully (SIGTERM).
    Stop {
        node: usize,
        generation: u64,
    },
    /// A cut has lasted [`LINK_TIMEOUT`]: its connections break.
    CutTimeout {
        from: usize,
        to: usize,
        cut: u64,
    },
    /// Something a participant does or notices (see [`participant`]).
    Client {
        participant: usize,
        what: participant::ClientAction,
    },
}

/// A frame waiting behind a cut: on connection `conn`, caller to callee
/// (`forward`) or back.
#[derive(Debug)]
struct Stalled {
    conn: u64,
    forward: bool,
    action: Action,
}

/// A connection from a caller's link to a callee, and both its streams.
#[derive(Debug)]
struct Conn {
    caller: usize,
    caller_generation: u64,
    callee: usize,
    callee_generation: u64,
    /// The callee's peer id for the caller, and the inbound link number.
    inbound: Option<(NodeId, u64)>,
    alive: bool,
    up: bool,
    /// Arrival time of the last frame each way, so neither stream reorders.
    last_forward: Duration,
    last_back: Duration,
}

/// One simulated node slot: its incarnations come and go.
#[derive(Debug)]
struct SimNode {
    addr: String,
    generation: u64,
    core: Option<NodeCore>,
    paused: bool,
    /// Actions for this node that arrived while it was paused, in order.
    deferred: Vec<Action>,
    /// Local sessions: participant id to (session, from_gate, participant).
    sinks: BTreeMap<String, (u64, u64, usize)>,
    /// Outgoing links: peer id to the live connection, if any.
    links: BTreeMap<String, (NodeId, Option<u64>, Duration)>,
    /// Inbound connections, by the core's link number.
    inbound: BTreeMap<u64, u64>,
    /// Requests waiting for an answer: id to participant.
    requests: BTreeMap<RequestId, usize>,
    /// The flush of a graceful stop under way.
    stopping: Option<RequestId>,
    next_request: RequestId,
}

/// A simulated cluster. See the module docs.
pub struct Sim {
    pub config: SimConfig,
    pub seed: u64,
    rng: Rng,
    start: Instant,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Action>,
    next_seq: u64,
    nodes: Vec<SimNode>,
    participants: Vec<Participant>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Cut directions (from, to), with the cut's number: frames that way
    /// wait (TCP retransmits) until the cut heals, or are lost with their
    /// connection if it lasts past [`LINK_TIMEOUT`].
    cuts: BTreeMap<(usize, usize), u64>,
    next_cut: u64,
    /// Frames waiting behind a cut, in order.
    stalled: BTreeMap<(usize, usize), Vec<Stalled>>,
    /// Extra one-way delay of frames from one node to another.
    slow: BTreeMap<(usize, usize), Duration>,
    trace: Vec<String>,
    /// A hash of every step, kept even when the trace is not.
    digest: u64,
    steps: u64,
}

impl Sim {
    /// A cluster of `config.nodes` nodes: the first starts it, the others
    /// join through it, all at time zero.
    pub fn new(config: SimConfig, seed: u64) -> Self {
        let mut sim = Self {
            rng: Rng::new(seed),
            seed,
            start: Instant::now(),
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            next_seq: 0,
            nodes: Vec::new(),
            participants: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            cuts: BTreeMap::new(),
            next_cut: 1,
            stalled: BTreeMap::new(),
            slow: BTreeMap::new(),
            trace: Vec::new(),
            digest: 0xcbf2_9ce4_8422_2325,
            steps: 0,
            config,
        };
        for i in 0..sim.config.nodes {
            sim.nodes.push(SimNode {
                addr: format!("sim-n{i}"),
                generation: 0,
                core: None,
                paused: false,
                deferred: Vec::new(),
                sinks: BTreeMap::new(),
                links: BTreeMap::new(),
                inbound: BTreeMap::new(),
                requests: BTreeMap::new(),
                stopping: None,
                next_request: 1,
            });
        }
        for i in 0..sim.config.nodes {
            sim.start_node(i);
        }
        sim
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    /// Every step so far, one line each (with [`SimConfig::trace`]).
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// A digest of every step so far: equal for two runs of one seed.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Whether node `i` runs (it may be paused).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// The core of node `i`, if it runs.
    pub fn core(&self, i: usize) -> Option<&NodeCore> {
        self.nodes[i].core.as_ref()
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        self.steps += 1;
        if self.config.trace {
            let line = format!("{:>8.3} {}", self.now.as_secs_f64(), line());
            for b in line.bytes() {
                self.digest = (self.digest ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            self.trace.push(line);
        } else {
            // Which step happened when: any divergence in timing shows.
            let mark = self.steps ^ (self.now.as_nanos() as u64).rotate_left(17);
            self.digest = (self.digest ^ mark).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn schedule(&mut self, after: Duration, action: Action) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((self.now + after, seq), action);
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.config.latency;
        let span = hi.saturating_sub(lo).as_micros() as usize + 1;
        lo + Duration::from_micros(self.rng.below(span) as u64)
    }

    /// A random number below `n`, from the simulation's generator.
    pub fn random(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }

    /// Runs every action due up to `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), action) = entry.remove_entry();
            self.now = at;
            self.run(action);
        }
        self.now = until;
    }

    // ---- Nodes -------------------------------------------------------------

    fn node_id(&self, i: usize) -> NodeId {
        NodeId {
            id: format!("n{i}"),
            generation: self.nodes[i].generation,
        }
    }

    fn index_of(&self, node: &NodeId) -> Option<usize> {
        let i: usize = node.id.strip_prefix('n')?.parse().ok()?;
        (i < self.nodes.len()).then_some(i)
    }

    /// Starts node `i` as a new incarnation; it joins through the first
    /// other running node (none: it starts the cluster).
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].core.is_none(), "node {i} already runs");
        self.nodes[i].generation += 1;
        let me = self.node_id(i);
        let now = self.instant();
        let mut core = NodeCore::new(
            now,
            me.clone(),
            self.nodes[i].addr.clone(),
            self.config.timing.clone(),
            self.config.limits.clone(),
        );
        let boot = self.boot_for(i);
        if let Some(j) = boot {
            let member = core.own_member();
            let reply = self.nodes[j]
                .core
                .as_mut()
                .expect("boot runs")
                .admit(now, member);
            self.carry_out(j);
            match reply {
                Ok(reply) => core.joined_cluster(now, reply),
                Err(e) => panic!("boot refused a fresh node: {e}"),
            }
        }
        let node = &mut self.nodes[i];
        node.core = Some(core);
        node.paused = false;
        let generation = node.generation;
        self.note(|| format!("start n{i} gen {generation} boot {boot:?}"));
        self.carry_out(i);
        let tick = self.config.timing.tick_interval();
        self.schedule(
            tick,
            Action::Tick {
                node: i,
                generation,
            },
        );
    }

    /// A running node that node `i` can join through: not paused, and
    /// reachable both ways (the join's answer must come back).
    pub fn boot_for(&self, i: usize) -> Option<usize> {
        (0..self.nodes.len()).find(|&j| {
            j != i && self.nodes[j].core.is_some() && !self.nodes[j].paused && self.reachable(i, j)
        })
    }

    /// Stops node `i` gracefully, as on SIGTERM: it refuses new sessions,
    /// waits (bounded) until its peers hold its events, tells them it
    /// leaves, then ends its sessions (its participants move).
    pub fn stop_gracefully(&mut self, i: usize) {
        let generation = self.nodes[i].generation;
        self.schedule(
            Duration::ZERO,
            Action::Stop {
                node: i,
                generation,
            },
        );
    }

    /// The flush of a graceful stop is done: leave and stop.
    fn finish_stop(&mut self, i: usize) {
        let generation = self.nodes[i].generation;
        let core = self.nodes[i].core.as_mut().expect("runs");
        let (members, peers) = core.leave_cluster();
        self.push_members(i, generation, members, peers);
        self.note(|| format!("n{i} left the cluster and stops"));
        self.stop(i);
    }

    /// Pushes `members` from node `i` to each of `targets` it can reach
    /// (an `UpdateServers` call; the answer comes back the same way).
    fn push_members(
        &mut self,
        i: usize,
        generation: u64,
        members: Vec<Member>,
        targets: Vec<Member>,
    ) {
        for m in targets {
            let Some(j) = m.node.as_ref().and_then(|n| self.index_of(n)) else {
                continue;
            };
            if !self.reachable(i, j) || self.nodes[j].core.is_none() {
                continue;
            }
            let to_generation = self.nodes[j].generation;
            let after = self.latency();
            self.schedule(
                after,
                Action::Gossip {
                    from: i,
                    from_generation: generation,
                    to: j,
                    to_generation,
                    members: members.clone(),
                },
            );
        }
    }

    /// Kills node `i`: its state is lost, its connections reset.
    pub fn crash(&mut self, i: usize) {
        self.note(|| format!("crash n{i}"));
        self.stop(i);
    }

    /// Node `i` stops serving (crashed, or removed by the cluster).
    fn stop(&mut self, i: usize) {
        let clients = self.clients_of(i);
        let node = &mut self.nodes[i];
        node.core = None;
        node.paused = false;
        node.deferred.clear();
        node.links.clear();
        node.inbound.clear();
        node.requests.clear();
        node.stopping = None;
        node.sinks.clear();
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive && (c.caller == i || c.callee == i))
            .map(|(&id, _)| id)
            .collect();
        for conn in conns {
            // A dead process's sockets are reset: the other end hears at once.
            self.break_conn(conn, Duration::from_millis(1));
        }
        for p in clients {
            self.client_lost_connection(p, i, Duration::from_millis(1));
        }
    }

    /// Pauses node `i` for `duration` (SIGSTOP, then SIGCONT).
    pub fn pause(&mut self, i: usize, duration: Duration) {
        if self.nodes[i].core.is_none() || self.nodes[i].paused {
            return;
        }
        self.note(|| format!("pause n{i} for {}ms", duration.as_millis()));
        self.nodes[i].paused = true;
        self.schedule(duration, Action::Unpause { node: i });
        let detect = self.config.client_stall_detect;
        let generation = self.nodes[i].generation;
        let clients: Vec<usize> = self.nodes[i].sinks.values().map(|&(_, _, p)| p).collect();
        for p in clients {
            self.schedule(
                detect,
                Action::Client {
                    participant: p,
                    what: participant::ClientAction::StallCheck {
                        node: i,
                        generation,
                    },
                },
            );
        }
    }

    pub fn unpause(&mut self, i: usize) {
        if !self.nodes[i].paused {
            return;
        }
        self.note(|| format!("unpause n{i}"));
        self.nodes[i].paused = false;
        let mut deferred = std::mem::take(&mut self.nodes[i].deferred);
        // What the process does first when it runs again is up to the
        // scheduler: its timer or its sockets.
        let generation = self.nodes[i].generation;
        let tick = Action::Tick {
            node: i,
            generation,
        };
        let at = self.rng.below(deferred.len() + 1);
        deferred.insert(at, tick);
        for action in deferred {
            self.schedule(Duration::ZERO, action);
        }
    }

    /// Cuts the link from `from` to `to` (one direction): packets that way
    /// vanish. Connections over it stall (their frames wait, as TCP
    /// retransmits them) and carry on when it heals; one that stays cut
    /// longer than [`LINK_TIMEOUT`] breaks, losing what was in flight. New
    /// connections cannot be made while it lasts.
    pub fn cut(&mut self, from: usize, to: usize) {
        if self.cuts.contains_key(&(from, to)) {
            return;
        }
        self.note(|| format!("cut n{from} -> n{to}"));
        let id = self.next_cut;
        self.next_cut += 1;
        self.cuts.insert((from, to), id);
        self.schedule(LINK_TIMEOUT, Action::CutTimeout { from, to, cut: id });
    }

    /// Heals the link from `from` to `to`: what waited behind it goes on.
    pub fn heal(&mut self, from: usize, to: usize) {
        if self.cuts.remove(&(from, to)).is_none() {
            return;
        }
        self.note(|| format!("heal n{from} -> n{to}"));
        for Stalled {
            conn,
            forward,
            action,
        } in self.stalled.remove(&(from, to)).unwrap_or_default()
        {
            self.send(conn, forward, action);
        }
    }

    /// Resets every connection between `a` and `b` (a proxy restarts, a
    /// NAT forgets): what was in flight is lost, both ends notice at once.
    pub fn reset(&mut self, a: usize, b: usize) {
        self.note(|| format!("reset n{a} <-> n{b}"));
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.alive && ((c.caller, c.callee) == (a, b) || (c.caller, c.callee) == (b, a))
            })
            .map(|(&id, _)| id)
            .collect();
        for conn in conns {
            self.break_conn(conn, Duration::from_millis(1));
        }
    }

    fn cut_timeout(&mut self, from: usize, to: usize, cut: u64) {
        if self.cuts.get(&(from, to)) != Some(&cut) {
            return;
        }
        self.note(|| format!("connections over the cut n{from} -> n{to} time out"));
        self.stalled.remove(&(from, to));
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.alive
                    && ((c.caller, c.callee) == (from, to) || (c.caller, c.callee) == (to, from))
            })
            .map(|(&id, _)| id)
            .collect();
        for conn in conns {
            self.break_conn(conn, Duration::ZERO);
        }
    }

    /// Delays every frame from `from` to `to` by `extra` more (a slow or
    /// congested link; the stream stays in order).
    pub fn slow_down(&mut self, from: usize, to: usize, extra: Duration) {
        self.note(|| format!("n{from} -> n{to} slowed by {}ms", extra.as_millis()));
        self.slow.insert((from, to), extra);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    pub fn heal_all(&mut self) {
        let cuts: Vec<(usize, usize)> = self.cuts.keys().copied().collect();
        for (a, b) in cuts {
            self.heal(a, b);
        }
    }

    fn reachable(&self, from: usize, to: usize) -> bool {
        !self.cuts.contains_key(&(from, to)) && !self.cuts.contains_key(&(to, from))
    }

    fn break_conn(&mut self, id: u64, after: Duration) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.alive {
            return;
        }
        conn.alive = false;
        self.schedule(after, Action::CallerNotices { conn: id });
        self.schedule(after, Action::CalleeNotices { conn: id });
    }

    /// Whether an action for node `i` (incarnation `generation`) can run
    /// now; defers it while the node is paused.
    fn deliverable(&mut self, i: usize, generation: u64, action: &Action) -> bool {
        let node = &mut self.nodes[i];
        if node.core.is_none() || node.generation != generation {
            return false;
        }
        if node.paused {
            node.deferred.push(action.clone());
            return false;
        }
        true
    }

    fn run(&mut self, action: Action) {
        match action {
            Action::Tick { node, generation } => {
                if self.nodes[node].core.is_none() || self.nodes[node].generation != generation {
                    return;
                }
                if self.nodes[node].paused {
                    // The timer fires when the process runs again.
                    return;
                }
                let now = self.instant();
                self.nodes[node].core.as_mut().expect("runs").tick(now);
                self.carry_out(node);
                let tick = self.config.timing.tick_interval();
                self.schedule(tick, Action::Tick { node, generation });
            }
            Action::Unpause { node } => self.unpause(node),
            Action::Stop { node, generation } => {
                if !self.deliverable(node, generation, &Action::Stop { node, generation }) {
                    return;
                }
                self.note(|| format!("n{node} stops gracefully"));
                let request = self.nodes[node].next_request;
                self.nodes[node].next_request += 1;
                self.nodes[node].stopping = Some(request);
                let now = self.instant();
                let core = self.nodes[node].core.as_mut().expect("deliverable");
                core.stop_sessions();
                core.flush(now, request);
                self.carry_out(node);
            }
            Action::CutTimeout { from, to, cut } => self.cut_timeout(from, to, cut),
            Action::Connect {
                node,
                generation,
                peer,
            } => self.connect(node, generation, peer),
            Action::Hello { conn, member } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (callee, generation, caller) = (c.callee, c.callee_generation, c.caller);
                if !c.alive
                    || !self.deliverable(
                        callee,
                        generation,
                        &Action::Hello {
                            conn,
                            member: member.clone(),
                        },
                    )
                {
                    return;
                }
                let now = self.instant();
                let answer = self.nodes[callee]
                    .core
                    .as_mut()
                    .expect("runs")
                    .on_hello(now, member);
                self.note(|| {
                    format!(
                        "n{callee} hello from n{caller} conn {conn}: {:?}",
                        answer.as_ref().map(|_| ()).map_err(|e| e.to_string())
                    )
                });
                let answer = match answer {
                    Ok((peer, link, ack)) => {
                        self.nodes[callee].inbound.insert(link, conn);
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.inbound = Some((peer, link));
                        }
                        Ok(ack)
                    }
                    Err(e) => Err(e),
                };
                self.carry_out(callee);
                self.send(conn, false, Action::HelloAnswer { conn, answer });
            }
            Action::HelloAnswer { conn, answer } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (caller, generation, callee) = (c.caller, c.caller_generation, c.callee);
                if !c.alive
                    || !self.deliverable(
                        caller,
                        generation,
                        &Action::HelloAnswer {
                            conn,
                            answer: answer.clone(),
                        },
                    )
                {
                    return;
                }
                let peer = self.conn_peer(conn);
                let now = self.instant();
                match answer {
                    Ok(ack) => {
                        let core = self.nodes[caller].core.as_mut().expect("runs");
                        let replay = core.link_up(now, &peer, ack);
                        self.note(|| {
                            format!(
                                "n{caller} link to n{callee} up conn {conn}: {}",
                                replay.as_ref().map_or("unwanted".into(), |r| format!(
                                    "replay {}",
                                    r.events.len()
                                ))
                            )
                        });
                        match replay {
                            Some(replay) => {
                                if let Some(c) = self.conns.get_mut(&conn) {
                                    c.up = true;
                                }
                                self.carry_out(caller);
                                self.send_replay(conn, replay);
                            }
                            None => {
                                self.carry_out(caller);
                                self.break_conn(conn, Duration::ZERO);
                            }
                        }
                    }
                    Err(refusal) => {
                        self.note(|| format!("n{caller} link to n{callee} refused: {refusal}"));
                        let core = self.nodes[caller].core.as_mut().expect("runs");
                        core.link_down(&peer);
                        if refusal == MeshRefusal::Removed {
                            core.link_refused(&peer);
                        }
                        self.carry_out(caller);
                        self.break_conn(conn, Duration::ZERO);
                    }
                }
            }
            Action::HelloTimeout { conn } => {
                if self.conns.get(&conn).is_some_and(|c| c.alive && !c.up) {
                    self.break_conn(conn, Duration::ZERO);
                }
            }
            Action::Frame { conn, frame } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (callee, generation) = (c.callee, c.callee_generation);
                let Some((peer, _)) = c.inbound.clone() else {
                    return;
                };
                if !c.alive
                    || !self.deliverable(
                        callee,
                        generation,
                        &Action::Frame {
                            conn,
                            frame: frame.clone(),
                        },
                    )
                {
                    return;
                }
                let now = self.instant();
                let what = frame_name(&frame);
                let result = self.nodes[callee]
                    .core
                    .as_mut()
                    .expect("runs")
                    .on_relay(now, &peer, frame);
                self.note(|| {
                    format!(
                        "n{callee} <- {} {what}: {:?}",
                        peer.id,
                        result.as_ref().map_err(|e| e.to_string())
                    )
                });
                self.carry_out(callee);
                if result.is_err() {
                    self.break_conn(conn, Duration::ZERO);
                }
            }
            Action::Ack { conn, ack } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (caller, generation) = (c.caller, c.caller_generation);
                if !c.alive
                    || !c.up
                    || !self.deliverable(
                        caller,
                        generation,
                        &Action::Ack {
                            conn,
                            ack: ack.clone(),
                        },
                    )
                {
                    return;
                }
                let peer = self.conn_peer(conn);
                let now = self.instant();
                self.nodes[caller]
                    .core
                    .as_mut()
                    .expect("runs")
                    .on_ack(now, &peer, ack);
                self.carry_out(caller);
            }
            Action::CallerNotices { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (caller, generation) = (c.caller, c.caller_generation);
                if !self.deliverable(caller, generation, &Action::CallerNotices { conn }) {
                    return;
                }
                let peer = self.conn_peer(conn);
                self.note(|| format!("n{caller} notices link to {} broke (conn {conn})", peer.id));
                let link = self.nodes[caller].links.get_mut(&peer.id);
                let Some((_, live, backoff)) = link else {
                    return;
                };
                if *live != Some(conn) {
                    return;
                }
                *live = None;
                let retry = *backoff;
                *backoff = (*backoff * 2).min(Duration::from_secs(2));
                self.nodes[caller]
                    .core
                    .as_mut()
                    .expect("runs")
                    .link_down(&peer);
                self.carry_out(caller);
                let jitter = Duration::from_millis(self.rng.below(256) as u64);
                self.schedule(
                    retry + jitter,
                    Action::Connect {
                        node: caller,
                        generation,
                        peer,
                    },
                );
            }
            Action::CalleeNotices { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (callee, generation) = (c.callee, c.callee_generation);
                let Some((_, link)) = c.inbound.clone() else {
                    self.conns.remove(&conn);
                    return;
                };
                if !self.deliverable(callee, generation, &Action::CalleeNotices { conn }) {
                    return;
                }
                self.nodes[callee].inbound.remove(&link);
                self.nodes[callee]
                    .core
                    .as_mut()
                    .expect("runs")
                    .inbound_closed(link);
                self.carry_out(callee);
                self.conns.remove(&conn);
            }
            Action::Gossip {
                from,
                from_generation,
                to,
                to_generation,
                members,
            } => {
                if !self.deliverable(
                    to,
                    to_generation,
                    &Action::Gossip {
                        from,
                        from_generation,
                        to,
                        to_generation,
                        members: members.clone(),
                    },
                ) {
                    return;
                }
                let now = self.instant();
                let ours = self.nodes[to]
                    .core
                    .as_mut()
                    .expect("runs")
                    .merge_members(now, &members);
                self.note(|| format!("n{to} merges gossip from n{from}"));
                self.carry_out(to);
                if self.reachable(to, from) {
                    let after = self.latency();
                    self.schedule(
                        after,
                        Action::GossipAnswer {
                            to: from,
                            generation: from_generation,
                            members: ours,
                        },
                    );
                }
            }
            Action::GossipAnswer {
                to,
                generation,
                members,
            } => {
                if !self.deliverable(
                    to,
                    generation,
                    &Action::GossipAnswer {
                        to,
                        generation,
                        members: members.clone(),
                    },
                ) {
                    return;
                }
                let now = self.instant();
                self.nodes[to]
                    .core
                    .as_mut()
                    .expect("runs")
                    .merge_members(now, &members);
                self.carry_out(to);
            }
            Action::Client { participant, what } => self.client_action(participant, what),
        }
    }

    /// The peer a connection's caller links to.
    fn conn_peer(&self, conn: u64) -> NodeId {
        let c = &self.conns[&conn];
        NodeId {
            id: format!("n{}", c.callee),
            generation: c.callee_generation,
        }
    }

    fn connect(&mut self, node: usize, generation: u64, peer: NodeId) {
        if self.nodes[node].core.is_none() || self.nodes[node].generation != generation {
            return;
        }
        if self.nodes[node].paused {
            self.nodes[node].deferred.push(Action::Connect {
                node,
                generation,
                peer,
            });
            return;
        }
        let wanted = self.nodes[node]
            .core
            .as_ref()
            .expect("runs")
            .wants_link(&peer);
        let Some(link) = self.nodes[node].links.get(&peer.id) else {
            self.note(|| format!("n{node} has no link to {} any more", peer.id));
            return;
        };
        if !wanted || link.0 != peer || link.1.is_some() {
            let why = format!("wanted {wanted} same {} live {:?}", link.0 == peer, link.1);
            self.note(|| format!("n{node} does not connect to {}: {why}", peer.id));
            return;
        }
        let Some(callee) = self.index_of(&peer) else {
            return;
        };
        let callee_runs =
            self.nodes[callee].core.is_some() && self.nodes[callee].generation == peer.generation;
        if !callee_runs && self.reachable(node, callee) {
            let now = self.instant();
            let core = self.nodes[node].core.as_mut().expect("runs");
            core.connect_refused(now, &peer);
            self.carry_out(node);
        }
        if !callee_runs || !self.reachable(node, callee) {
            // Refused at once (nothing listens), or no answer (a cut link):
            // either way the task backs off and tries again.
            let link = self.nodes[node].links.get_mut(&peer.id).expect("checked");
            let retry = link.2;
            link.2 = (link.2 * 2).min(Duration::from_secs(2));
            let jitter = Duration::from_millis(self.rng.below(256) as u64);
            let timeout = if callee_runs {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            self.note(|| format!("n{node} cannot connect to {}; tries again", peer.id));
            self.schedule(
                timeout + retry + jitter,
                Action::Connect {
                    node,
                    generation,
                    peer,
                },
            );
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                caller: node,
                caller_generation: generation,
                callee,
                callee_generation: peer.generation,
                inbound: None,
                alive: true,
                up: false,
                last_forward: self.now,
                last_back: self.now,
            },
        );
        let link = self.nodes[node].links.get_mut(&peer.id).expect("checked");
        link.1 = Some(conn);
        link.2 = Duration::from_millis(100);
        self.note(|| format!("n{node} connects to {} conn {conn}", peer.id));
        let member = self.nodes[node].core.as_ref().expect("runs").own_member();
        self.send(conn, true, Action::Hello { conn, member });
        let timeout = self.config.timing.failure_timeout;
        self.schedule(timeout, Action::HelloTimeout { conn });
    }

    /// Sends on a connection, caller to callee (`forward`) or back, in
    /// order: a frame never overtakes an earlier one the same way.
    fn send(&mut self, conn: u64, forward: bool, action: Action) {
        let delay = self.latency();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let way = if forward {
            (c.caller, c.callee)
        } else {
            (c.callee, c.caller)
        };
        if self.cuts.contains_key(&way) {
            self.stalled.entry(way).or_default().push(Stalled {
                conn,
                forward,
                action,
            });
            return;
        }
        let extra = self.slow.get(&way).copied().unwrap_or_default();
        let last = if forward {
            &mut c.last_forward
        } else {
            &mut c.last_back
        };
        let at = (self.now + delay + extra).max(*last);
        *last = at;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((at, seq), action);
    }

    fn send_replay(&mut self, conn: u64, replay: Replay) {
        if let Some(gap) = replay.skip {
            let frame = RelayFrame {
                frame: Some(relay_frame::Frame::Skip(gap)),
            };
            self.send(conn, true, Action::Frame { conn, frame });
        }
        let mut grants = replay.grants;
        for chunk in replay.events.chunks(512) {
            let frame = RelayFrame {
                frame: Some(relay_frame::Frame::Batch(RelayBatch {
                    events: chunk.iter().map(|e| Event::clone(e)).collect(),
                    grants: std::mem::take(&mut grants),
                    late: replay.late,
                })),
            };
            self.send(conn, true, Action::Frame { conn, frame });
        }
        if !replay.never_held.is_empty() {
            let frame = RelayFrame {
                frame: Some(relay_frame::Frame::NeverHeld(crate::proto::NeverHeld {
                    upto: replay.never_held,
                })),
            };
            self.send(conn, true, Action::Frame { conn, frame });
        }
    }

    /// Carries out node `i`'s outputs, as [`crate::node::Node::carry_out`]
    /// does.
    fn carry_out(&mut self, i: usize) {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let outputs = core.take_outputs();
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                if self.nodes[i].core.is_none() {
                    return;
                }
                self.carry_out_one(i, output);
            }
        }
    }

    /// The participants of node `i`'s sessions that receive gate index
    /// `gate` (open when it entered the gate).
    fn sessions_from(&self, i: usize, gate: u64) -> Vec<usize> {
        self.nodes[i]
            .sinks
            .values()
            .filter(|&&(_, from, _)| gate >= from)
            .map(|&(_, _, p)| p)
            .collect()
    }

    fn carry_out_one(&mut self, i: usize, output: Output) {
        let generation = self.nodes[i].generation;
        match output {
            Output::Deliver { gate, event } => {
                for p in self.sessions_from(i, gate) {
                    self.participant_receives(p, i, &event);
                }
            }
            Output::Opened(opened) => {
                let Some(p) = self.nodes[i].requests.remove(&opened.request) else {
                    // Nobody waits any more: the stream is dropped at once.
                    let now = self.instant();
                    let core = self.nodes[i].core.as_mut().expect("runs");
                    core.session_dropped(now, &opened.participant_id, opened.session);
                    return;
                };
                let (pid, session) = (opened.participant_id.clone(), opened.session);
                self.nodes[i]
                    .sinks
                    .insert(pid.clone(), (session, opened.from_gate, p));
                if !self.participant_opened(p, i, generation, *opened) {
                    // The participant gave up on this Join: its stream closes.
                    self.nodes[i].sinks.remove(&pid);
                    let now = self.instant();
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.session_dropped(now, &pid, session);
                    }
                }
            }
            Output::EndSession {
                participant_id,
                reason,
            } => {
                if let Some((_, _, p)) = self.nodes[i].sinks.remove(&participant_id) {
                    self.participant_session_ended(p, i, reason);
                }
            }
            Output::Servers(list) => {
                let to: Vec<usize> = self.nodes[i].sinks.values().map(|&(_, _, p)| p).collect();
                for p in to {
                    self.participants[p].learn_servers(&list);
                }
            }
            Output::Room {
                participant_id,
                participants,
            } => {
                if let Some(&(_, _, p)) = self.nodes[i].sinks.get(&participant_id) {
                    self.participant_told_room(p, i, &participants);
                }
            }
            Output::Gap(gap) => {
                let to: Vec<usize> = self.nodes[i].sinks.values().map(|&(_, _, p)| p).collect();
                for p in to {
                    self.participants[p].gaps.push(gap.clone());
                }
            }
            Output::Reply { request, reply } => {
                if self.nodes[i].stopping == Some(request) {
                    self.finish_stop(i);
                    return;
                }
                if let Some(p) = self.nodes[i].requests.remove(&request) {
                    self.participant_reply(p, i, request, reply);
                }
            }
            Output::Relay { peer, item } => {
                let Some(conn) = self.nodes[i]
                    .links
                    .get(&peer.id)
                    .filter(|l| l.0 == *peer)
                    .and_then(|l| l.1)
                else {
                    return;
                };
                if !self.conns.get(&conn).is_some_and(|c| c.up) {
                    return;
                }
                let frame = match item {
                    PeerItem::Event(event, grant) => relay_frame::Frame::Batch(RelayBatch {
                        events: vec![Event::clone(&event)],
                        grants: grant.into_iter().collect(),
                        late: false,
                    }),
                    PeerItem::Heartbeat(hb) => relay_frame::Frame::Heartbeat(hb),
                };
                self.send(
                    conn,
                    true,
                    Action::Frame {
                        conn,
                        frame: RelayFrame { frame: Some(frame) },
                    },
                );
            }
            Output::Resync { peer } => {
                let Some(conn) = self.nodes[i]
                    .links
                    .get(&peer.id)
                    .filter(|l| l.0 == peer)
                    .and_then(|l| l.1)
                else {
                    return;
                };
                if !self.conns.get(&conn).is_some_and(|c| c.up) {
                    return;
                }
                let replay = self.nodes[i].core.as_mut().expect("runs").replay_for(&peer);
                if let Some(replay) = replay {
                    self.send_replay(conn, replay);
                }
            }
            Output::Connect(member) => {
                let Some(peer) = member.node else { return };
                let old = self.nodes[i].links.insert(
                    peer.id.clone(),
                    (peer.clone(), None, Duration::from_millis(100)),
                );
                if let Some((_, Some(conn), _)) = old {
                    self.break_conn(conn, Duration::ZERO);
                }
                let after = self.latency();
                self.schedule(
                    after,
                    Action::Connect {
                        node: i,
                        generation,
                        peer,
                    },
                );
            }
            Output::Disconnect(peer) => {
                self.note(|| format!("n{i} drops its link to {}", peer.id));
                if self.nodes[i]
                    .links
                    .get(&peer.id)
                    .is_some_and(|l| l.0 == peer)
                    && let Some((_, Some(conn), _)) = self.nodes[i].links.remove(&peer.id)
                {
                    self.break_conn(conn, Duration::ZERO);
                }
            }
            Output::Gossip { to } => {
                let core = self.nodes[i].core.as_ref().expect("runs");
                let members = core.membership().snapshot();
                let targets = match to {
                    Some(m) => vec![m],
                    None => core.membership().peers(),
                };
                self.push_members(i, generation, members, targets);
            }
            Output::Ack { link, ack } => {
                let Some(&conn) = self.nodes[i].inbound.get(&link) else {
                    return;
                };
                self.send(conn, false, Action::Ack { conn, ack });
            }
            Output::LateRun { gate, late } => {
                for p in self.sessions_from(i, gate) {
                    self.participants[p].late_runs += usize::from(late);
                }
            }
            Output::Reconnect(peer) => {
                let live = self.nodes[i]
                    .links
                    .get(&peer.id)
                    .filter(|l| l.0 == peer)
                    .and_then(|l| l.1);
                if let Some(conn) = live {
                    self.note(|| format!("n{i} drops its silent link to {}", peer.id));
                    self.break_conn(conn, Duration::ZERO);
                }
            }
            Output::Forward { peer, replay } => {
                let Some(conn) = self.nodes[i]
                    .links
                    .get(&peer.id)
                    .filter(|l| l.0 == *peer)
                    .and_then(|l| l.1)
                else {
                    return;
                };
                if self.conns.get(&conn).is_some_and(|c| c.up) {
                    self.note(|| {
                        format!(
                            "n{i} forwards {} events to {}",
                            replay.events.len(),
                            peer.id
                        )
                    });
                    self.send_replay(conn, replay);
                }
            }
            Output::Removed(reason) => {
                self.note(|| format!("n{i} removed: {reason}"));
                self.stop(i);
            }
        }
    }

    /// Checks every invariant on what the participants received; the
    /// cluster should be quiet (see [`schedule::settle`]).
    pub fn check(&self) -> Result<(), String> {
        check::all(self)
    }

    /// A gap notice reached some participant.
    pub fn gaps_seen(&self) -> usize {
        self.participants.iter().map(|p| p.gaps.len()).sum()
    }

    /// A one-line summary of the run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "seed {} t={:.1}s steps={} participants={} published={} acked={}",
            self.seed,
            self.now.as_secs_f64(),
            self.steps,
            self.participants.len(),
            self.participants
                .iter()
                .map(|p| p.published.len())
                .sum::<usize>(),
            self.participants
                .iter()
                .flat_map(|p| &p.published)
                .filter(|r| r.acked.is_some())
                .count(),
        );
        s
    }
}

fn frame_name(frame: &RelayFrame) -> String {
    match &frame.frame {
        Some(relay_frame::Frame::Batch(b)) => {
            let ids: Vec<String> = b
                .events
                .iter()
                .map(|e| {
                    let id = e.id.clone().unwrap_or_default();
                    format!("{}:{}", id.origin.map(|o| o.id).unwrap_or_default(), id.seq)
                })
                .collect();
            format!("batch [{}]", ids.join(" "))
        }
        Some(relay_frame::Frame::Heartbeat(_)) => "heartbeat".into(),
        Some(relay_frame::Frame::Skip(g)) => format!("skip {:?}", g.ranges.len()),
        Some(relay_frame::Frame::NeverHeld(n)) => format!("never held {}", n.upto.len()),
        Some(relay_frame::Frame::Hello(_)) => "hello".into(),
        None => "empty".into(),
    }
}
