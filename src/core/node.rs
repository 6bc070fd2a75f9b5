//! One node's protocol, with no I/O: [`NodeCore`].
//!
//! Everything a node decides lives here: the chat state machine
//! ([`ChatCore`]), server membership ([`Membership`]), the state of each peer
//! link (what the peer acknowledged, whether it must be re-sent history),
//! replication gating, the failure detector, the announcer of a departed
//! node's participants, the conditions a resume waits for, and why a session
//! ends. The shell ([`crate::node`], [`crate::mesh`]) owns sockets, tasks and
//! queues; it feeds inputs in and carries outputs out. The simulator
//! ([`crate::sim`]) does the same with in-memory links and virtual time.
//!
//! It is driven the way a Raft node usually is (toydb's `step`/`tick`):
//! * inputs are method calls: a client request ([`NodeCore::join`],
//!   [`NodeCore::publish`], ...), a frame from a peer
//!   ([`NodeCore::on_relay`]), an acknowledgement ([`NodeCore::on_ack`]), a
//!   link going up or down, and [`NodeCore::tick`], which carries the current
//!   time. The core never reads a clock: every input that depends on time
//!   is given `now`.
//! * outputs are [`Output`] values queued in order and taken with
//!   [`NodeCore::take_outputs`]: events to deliver to local sessions, items to
//!   relay to a peer, replies to complete, sessions to end, links to open or
//!   drop, membership to push. A request that the core cannot answer at once
//!   (a publish waiting for a peer to hold it, a resume waiting for its
//!   participant's join to arrive, a graceful stop waiting for peers to
//!   catch up) is answered later by an [`Output::Reply`] carrying its
//!   [`RequestId`], or at its deadline by a refusal.
//!
//! Outputs must be carried out in order: a session is registered
//! ([`Output::Opened`]) before the events it is to receive are delivered, and
//! a leaver's session ends before its "left" event is delivered to others.
//!
//! The core's data are the protobuf messages of `proto/chitty.proto`
//! (`Event`, `Member`, `SeqMark`, ...): they are plain structs with no I/O,
//! they are what crosses the mesh, and converting them at every call would
//! copy every event once more on the hot path.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::core::chat::{ChatCore, CoreLimits, Received, Snapshot};
use crate::core::error::Error;
use crate::core::history::Audience;
use crate::core::membership::{Change, Membership, member};
use crate::core::validate;
use crate::diagram::{self, Call, Dir, Record, Who};
use crate::log_format::info_line;
use crate::proto::{
    Event, EventKind, Gap, GapRange, Heartbeat, Member, MemberState, NodeId, Participant,
    PublishReply, RelayAck, RelayFrame, Resume, SeqMark, ServerInfo, ServerJoinReply, ServerList,
    SessionGrant, Welcome, relay_frame,
};

/// Who asks to join as a new participant (see [`NodeCore::join`]).
#[derive(Debug)]
pub struct Joiner<'a> {
    pub name: &'a str,
    /// A fresh random id, chosen by the caller.
    pub participant_id: String,
    /// A fresh random session token, chosen by the caller.
    pub token: String,
    /// Set by a participant joining again as new (`JoinRequest.rejoin`).
    pub rejoin: Option<crate::proto::Rejoin>,
    /// How many of the latest messages to hand over in the Welcome
    /// (`JoinRequest.recent`, at most [`MAX_RECENT`]).
    pub recent: usize,
}

/// Most earlier messages a Welcome carries.
pub const MAX_RECENT: usize = 100;

/// What this node knows of one peer, for metrics and `Status`.
#[derive(Debug, Clone)]
pub struct PeerReport {
    pub node: NodeId,
    pub addr: String,
    /// The outgoing link is connected and caught up.
    pub up: bool,
    /// This node hears that the peer runs (within the failure timeout).
    pub reachable: bool,
    /// A connection to it was refused: it is not running.
    pub gone: bool,
    /// This node's own events the peer has not acknowledged yet.
    pub lag: u64,
    /// How long ago this node last heard that the peer runs.
    pub last_heard: Duration,
}

/// Identifies a request whose answer may come later, chosen by the caller.
pub type RequestId = u64;

/// Default interval between heartbeats on a peer link.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
/// Default silence after which a peer is declared failed.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_millis(2500);
/// Longest wait, on graceful stop, for peers to acknowledge our last events.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The timers of the mesh protocol.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Interval between heartbeats on each peer link.
    pub heartbeat: Duration,
    /// Silence after which a peer is declared failed.
    pub failure_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: DEFAULT_HEARTBEAT,
            failure_timeout: DEFAULT_FAILURE_TIMEOUT,
        }
    }
}

impl Timing {
    /// How often the shell should call [`NodeCore::tick`].
    pub fn tick_interval(&self) -> Duration {
        self.heartbeat / 4
    }

    /// How long a request waits for a peer (a publish to be held elsewhere,
    /// a resume for events it saw elsewhere) before it is answered anyway.
    pub fn request_timeout(&self) -> Duration {
        self.failure_timeout * 2
    }

    /// How long a resumed participant's publishes wait for this node to hear
    /// of a node the participant knew of and it does not (see
    /// `Resume.known_nodes`): long enough for that node to dial this one
    /// (members retry every 2 s at most) or be gossiped about.
    pub fn unheard_node_wait(&self) -> Duration {
        self.failure_timeout * 8
    }

    /// How long a peer may lack events of a third node that this node has
    /// before this node forwards them (the peer's own path to that node is
    /// cut or stalled).
    pub fn forward_after(&self) -> Duration {
        self.heartbeat * 2
    }
}

/// Why the node ended a local session. The service edge turns it into the
/// status the participant's stream ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The participant left: its stream ends normally once drained.
    Left,
    /// It read too slowly: it fell more than `events` events or `bytes`
    /// bytes behind what the node had for it.
    TooSlow { events: usize, bytes: usize },
    /// The participant resumed its session on another node.
    ResumedElsewhere,
    /// The participant resumed its session on another connection here.
    Replaced,
    /// The cluster announced the participant as left (its grace period ran
    /// out on another node while it was reconnecting here).
    AnnouncedLeft,
    /// Another node admitted the same name at the same moment and kept it.
    NameClash,
    /// The node is shutting down.
    ShuttingDown,
}

/// Why the core refused a peer's call or frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshRefusal {
    /// The calling node incarnation is not (or no longer) a live member.
    #[error("this node incarnation was removed from the cluster; restart it")]
    Removed,
    /// The call is malformed.
    #[error("{0}")]
    Malformed(&'static str),
    /// The hold-back queue is full: the link must reconnect and re-send.
    #[error("hold-back queue full; reconnect and re-send")]
    HoldBackFull,
    /// The caller claims a node id whose earlier process is still running
    /// as far as this node can tell (this node itself, or a member it
    /// hears): it may call again once that process is gone.
    #[error(
        "node id {0:?} belongs to a process this node still hears; a restarted node is admitted once its earlier process has left or been silent for the failure timeout"
    )]
    IdInUse(String),
}

/// An item for one peer link, in order.
#[derive(Debug, Clone)]
pub enum PeerItem {
    /// One of this node's events, with the session grant of a "joined".
    Event(Arc<Event>, Option<SessionGrant>),
    Heartbeat(Heartbeat),
}

/// What a peer link sends when it (re)connects or re-syncs: everything the
/// peer lacks that history holds, and what history no longer holds.
#[derive(Debug, Default)]
pub struct Replay {
    /// Ranges that cannot be re-sent, for a `skip` frame.
    pub skip: Option<Gap>,
    pub events: Vec<Arc<Event>>,
    /// Session grants of the "joined" events among `events`.
    pub grants: Vec<SessionGrant>,
    /// The events come late: the peer was unreachable from this node, or
    /// they are forwarded for a node the peer cannot reach.
    pub late: bool,
    /// What this node counts as delivered but never held (older than its
    /// join), for a `never_held` frame after the events.
    pub never_held: Vec<SeqMark>,
}

/// What a session's Welcome says came before it.
#[derive(Debug)]
enum Session {
    /// A new session: what this node had delivered before it.
    New {
        before: Vec<SeqMark>,
        earlier: Vec<Event>,
    },
    /// A resumed one: where the participant's own join starts.
    Resumed { before_join: Vec<SeqMark> },
}

/// A session the shell must register.
#[derive(Debug)]
pub struct Opened {
    pub request: RequestId,
    pub participant_id: String,
    pub session: u64,
    pub welcome: Welcome,
    /// For a resumed session: what it missed, in order, and what history no
    /// longer holds of it.
    pub replay: Vec<Arc<Event>>,
    pub gaps: Vec<GapRange>,
    /// The first [`Output::Deliver`] index this session receives.
    pub from_gate: u64,
}

/// The answer to a request.
#[derive(Debug)]
pub enum Reply {
    /// A publish, once another node holds it (or the node has no peers).
    Published(PublishReply),
    /// A Leave: the Lamport time of the "left" event.
    Left(u64),
    /// A graceful stop may go on: peers hold this node's events, or the
    /// flush deadline passed.
    Flushed,
    Refused(Error),
}

/// What the core asks the shell to do, in order.
#[derive(Debug)]
pub enum Output {
    /// Hand `event` to every local session whose `from_gate` is at most
    /// `gate`.
    Deliver {
        gate: u64,
        event: Arc<Event>,
    },
    /// Tell the same sessions, before that event, that the events from
    /// here on arrive late (after a network split healed), or live again.
    LateRun {
        gate: u64,
        late: bool,
    },
    /// Register a new or resumed session; this is also the answer to its
    /// Join request.
    Opened(Box<Opened>),
    /// End a local session (if it is still that participant's).
    EndSession {
        participant_id: String,
        reason: EndReason,
    },
    /// Tell every local session the cluster's nodes changed.
    Servers(ServerList),
    /// Tell every local session that events were lost.
    Gap(Gap),
    /// Tell one session who is in the room: it saw events this node never
    /// got (lost with their node), which may have said someone left.
    Room {
        participant_id: String,
        participants: Vec<crate::proto::Participant>,
    },
    Reply {
        request: RequestId,
        reply: Reply,
    },
    /// Queue `item` on the outgoing link to `peer`.
    Relay {
        peer: Arc<NodeId>,
        item: PeerItem,
    },
    /// The outgoing link to `peer` must drop what it has queued and re-send
    /// from [`NodeCore::replay_for`].
    Resync {
        peer: NodeId,
    },
    /// Open (or replace) the outgoing link to a new member.
    Connect(Member),
    /// Drop the outgoing link to a departed member.
    Disconnect(NodeId),
    /// Push this node's membership view to `to` (every peer if `None`) and
    /// merge the answers ([`NodeCore::merge_members`]).
    Gossip {
        to: Option<Member>,
    },
    /// Acknowledge on inbound link `link`: what this node holds.
    Ack {
        link: u64,
        ack: RelayAck,
    },
    /// The outgoing link to `peer` carried no acknowledgement for the
    /// failure timeout: drop its connection and connect again (a cut
    /// network leaves a connection silent, not closed).
    Reconnect(NodeId),
    /// Send `replay` on the outgoing link to `peer`, in order with what is
    /// queued: events of other origins that the peer still lacks, while
    /// this node has them (it hears them by another path).
    Forward {
        peer: Arc<NodeId>,
        replay: Replay,
    },
    /// A newer incarnation of this node's id joined the cluster: this
    /// process was replaced, and stops serving.
    Removed(String),
}

/// The state of one peer (a member of the cluster), as this node sees it.
#[derive(Debug)]
struct Peer {
    node: NodeId,
    /// The same, shared by the outputs that name it (one per relayed event).
    named: Arc<NodeId>,
    /// Whether the outgoing link is connected and caught up: live events go
    /// only to such links (a link that comes up replays from history).
    up: bool,
    /// Whether this node hears that the peer runs: it heard from it, or of
    /// its heartbeat counter growing through any member, within the
    /// failure timeout. An unreachable peer stays a member (links to it keep
    /// trying) but counts for nothing that waits for peers, and its
    /// participants are announced as left once their grace is over.
    reachable: bool,
    /// The peer was unreachable since its link last caught up: what the
    /// link sends it next is late.
    missed: bool,
    /// A connection to it was refused: nothing listens at its address, so
    /// this incarnation is not running (a crash, not a network split). Set,
    /// to when it was refused first, until this node hears from it again.
    gone_since: Option<Instant>,
    /// The highest of this node's own sequence numbers the peer holds.
    acked_own: u64,
    /// What the peer last said it holds, per origin.
    held: Vec<SeqMark>,
    /// What it last said it holds back, waiting for what those events
    /// depend on: they come too.
    held_back: Vec<SeqMark>,
    /// What the peer said it counts as held but never had (older than its
    /// join, or skipped as lost): it cannot re-send those.
    never_held: Vec<SeqMark>,
    /// When this node last heard that the peer runs.
    last_seen: Instant,
    /// When the outgoing link last carried an acknowledgement.
    last_ack: Instant,
    /// When a frame last came straight from it, on one of its inbound
    /// links (`None` while none is open): while that is recent, only its
    /// own link may carry its events (see [`NodeCore::relayed_by_another`]).
    last_direct: Option<Instant>,
    next_heartbeat: Instant,
    /// Per origin (neither this node nor the peer) that the peer lacks
    /// events of: the sequence number this node had, and since when. Past
    /// [`Timing::forward_after`] without the peer getting there, this node
    /// forwards them (the peer does not hear that origin directly).
    lagging: BTreeMap<(String, u64), (u64, Instant)>,
}

impl Peer {
    fn new(node: NodeId, now: Instant) -> Self {
        Self {
            named: Arc::new(node.clone()),
            node,
            up: false,
            reachable: true,
            missed: false,
            gone_since: None,
            acked_own: 0,
            held: Vec::new(),
            held_back: Vec::new(),
            never_held: Vec::new(),
            last_seen: now,
            last_ack: now,
            last_direct: None,
            next_heartbeat: now,
            lagging: BTreeMap::new(),
        }
    }
}

/// An event on its way to local sessions (see `NodeCore::gate`).
#[derive(Debug)]
struct Gated {
    index: u64,
    event: Arc<Event>,
    /// It reached this node late (after a split healed).
    late: bool,
}

/// A request waiting for a condition.
#[derive(Debug)]
enum Waiting {
    /// A resume of a participant this node has not heard of, until its
    /// join arrives (or its departure).
    Resume {
        request: RequestId,
        resume: Resume,
        lamport: u64,
        deadline: Instant,
    },
    /// A publish of this node's event `seq`, until a peer holds it.
    Publish {
        request: RequestId,
        seq: u64,
        reply: PublishReply,
        deadline: Instant,
    },
    /// A graceful stop, until every peer holds this node's events.
    Flush {
        request: RequestId,
        deadline: Instant,
    },
}

impl Waiting {
    fn postpone(&mut self, by: Duration) {
        match self {
            Waiting::Publish { deadline, .. }
            | Waiting::Resume { deadline, .. }
            | Waiting::Flush { deadline, .. } => *deadline += by,
        }
    }

    fn deadline(&self) -> Instant {
        match self {
            Waiting::Publish { deadline, .. }
            | Waiting::Resume { deadline, .. }
            | Waiting::Flush { deadline, .. } => *deadline,
        }
    }
}

/// Why a replaced node refuses what it was asked.
const REMOVED: &str =
    "a newer process of this node replaced it in the cluster; the request went nowhere";
/// Most nodes a resume may name as holding its unanswered publish.
const MAX_UNANSWERED_AT: usize = validate::MAX_UNANSWERED_AT;
/// How far beyond what any node is known to hold of another origin a
/// resume's `seen` may reach: a node stamps events between the
/// acknowledgements that tell the others (more during a network split), but
/// not 2^32 of them.
const MAX_SEQ_LEAD: u64 = 1 << 32;
/// Most events forwarded to one peer at a time.
const MAX_FORWARD: usize = 2048;
/// Most origins kept from a peer's `never_held` frame.
const MAX_MARKS: usize = 1024;

/// Most resumes waiting for their participant's join to arrive.
const MAX_WAITING_RESUMES: usize = 1024;
/// Most requests a participant may have waiting for its handoff.
const MAX_HANDOFF_QUEUE: usize = 1024;

/// A participant that resumed here. Its publishes wait until
/// * this node has delivered what the participant saw before, so that
///   nothing it publishes here can overtake that anywhere; and
/// * every live peer acknowledged the participant's "moved" event, and this
///   node holds every event each of them had stamped by then (of departed
///   nodes, as much as any live peer holds). A node that had the
///   participant's session stamps nothing for it once it delivered the
///   move, so a publish retried here is recognised if any node had already
///   stamped it, instead of being stamped a second time with another id and
///   Lamport time. Every peer, not only the previous home: a participant
///   that moved twice quickly may still have a publish waiting on the node
///   before.
#[derive(Debug)]
struct Handoff {
    seen: Vec<SeqMark>,
    /// The nodes the participant sent its oldest unanswered publish to
    /// (`Resume.unanswered_at`, this one left out): each may have stamped
    /// it. Its publishes wait while one of them may be running out of reach
    /// (a split), since stamping the retry here would give one message two
    /// events.
    unanswered_at: Vec<NodeId>,
    /// This node's "moved" event for the participant.
    moved_seq: u64,
    /// Per peer that acknowledged the move: its generation and its own last
    /// sequence number then.
    until: BTreeMap<String, (u64, u64)>,
    /// When the participant resumed (or joined again) here: what a peer
    /// said it holds counts only if it said so since (see
    /// [`holds_what_can_come`]).
    since: Instant,
    deadline: Instant,
    queued: VecDeque<Queued>,
    /// This node lacked some of what the participant saw when it resumed.
    lacked: bool,
    /// Nodes the participant knew of (`Resume.known_nodes`) that this node
    /// has not heard of: one may be the only holder of events the
    /// participant saw (it joined the cluster while this node was cut off,
    /// and the node that told the participant stopped since). While one is
    /// unheard of and this node lacks some of what the participant saw,
    /// the publishes wait, until `unheard_until` at most.
    unheard: Vec<NodeId>,
    unheard_until: Instant,
}

/// A request of a resumed participant waiting for its handoff, in order.
#[derive(Debug)]
enum Queued {
    Publish {
        call: Call,
        request: RequestId,
        token: String,
        text: String,
        lamport: u64,
        publish_id: String,
    },
    /// A Leave waits too: a node that had the participant's session might
    /// otherwise announce it once more, or a message of it arrive after
    /// its "left".
    Leave {
        request: RequestId,
        token: String,
        lamport: u64,
    },
}

impl Queued {
    fn request(&self) -> RequestId {
        match self {
            Queued::Publish { request, .. } | Queued::Leave { request, .. } => *request,
        }
    }
}

/// After peers were unreachable (a split healed, or this node did not run
/// for longer than the failure timeout), publishes and leaves of local
/// participants wait until this node holds what each peer that came back
/// held at its first acknowledgement since: a participant that moved to
/// another node meanwhile, or was announced as left there, is known as such
/// here before anything is stamped for it.
#[derive(Debug)]
struct CatchUp {
    /// Peers whose first acknowledgement since is awaited.
    awaiting: std::collections::BTreeSet<String>,
    /// What they held then.
    targets: Vec<SeqMark>,
    deadline: Instant,
    queued: VecDeque<Queued>,
}

/// One node's protocol state. See the module docs.
#[derive(Debug)]
pub struct NodeCore {
    me: NodeId,
    addr: String,
    timing: Timing,
    grace: Duration,
    chat: ChatCore,
    membership: Membership,
    /// Peers (members other than this node, reachable or not), by node id.
    peers: BTreeMap<String, Peer>,
    /// The inbound links open here, by number, with their peer: each gets
    /// acknowledgements. A peer may have more than one open for a while (a
    /// link being replaced, or two processes reached at one address); every
    /// one is acknowledged, so none waits in vain.
    inbound: BTreeMap<u64, NodeId>,
    next_inbound: u64,
    /// What this node held at the last acknowledgement on any inbound link.
    last_acked: Vec<SeqMark>,
    /// What this node last told its peers it counts as delivered but never
    /// held ([`ChatCore::never_held`]).
    never_held_told: Vec<SeqMark>,
    /// Departed nodes and when they were seen to go: their participants are
    /// announced once reconciliation had time to finish.
    departed: BTreeMap<(String, u64), (NodeId, Instant)>,
    /// Events on their way to local sessions, with their gate index: this
    /// node's own events wait until a peer holds them, so nobody sees an
    /// event a crash of this node could still take back. Bounded in time: a
    /// peer that never acknowledges is declared failed within the failure
    /// timeout, which opens the gate.
    gate: VecDeque<Gated>,
    next_gate: u64,
    /// Whether the last event let through the gate came late.
    late_run: bool,
    /// Per origin, the highest sequence number that came in a late batch:
    /// delivering up to it is delivering late.
    late_upto: BTreeMap<(String, u64), u64>,
    /// Publishes waiting for replication, in sequence order.
    publishes: VecDeque<Waiting>,
    /// Resumes and flushes waiting for their conditions.
    others: Vec<Waiting>,
    /// Resumed participants whose publishes wait for their handoff.
    handoffs: BTreeMap<String, Handoff>,
    /// Publishes and leaves waiting for this node to catch up with peers
    /// that came back.
    catch_up: Option<CatchUp>,
    /// When this node next raises its heartbeat counter.
    next_beat: Instant,
    /// The live members when this node joined the cluster: they hold
    /// history from before its join, which it does not.
    elders: Vec<NodeId>,
    last_tick: Option<Instant>,
    stopping: bool,
    removed: bool,
    outputs: Vec<Output>,
}

impl NodeCore {
    /// A node alone in its own cluster, started at `now`.
    pub fn new(now: Instant, me: NodeId, addr: String, timing: Timing, limits: CoreLimits) -> Self {
        Self {
            grace: limits.grace,
            chat: ChatCore::new(me.clone(), limits),
            membership: Membership::new(me.clone(), addr.clone()),
            me,
            addr,
            timing,
            peers: BTreeMap::new(),
            inbound: BTreeMap::new(),
            next_inbound: 1,
            last_acked: Vec::new(),
            never_held_told: Vec::new(),
            departed: BTreeMap::new(),
            gate: VecDeque::new(),
            next_gate: 0,
            late_run: false,
            late_upto: BTreeMap::new(),
            publishes: VecDeque::new(),
            others: Vec::new(),
            handoffs: BTreeMap::new(),
            catch_up: None,
            next_beat: now,
            elders: Vec::new(),
            last_tick: Some(now),
            stopping: false,
            removed: false,
            outputs: Vec::new(),
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.me
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The outputs queued since the last call, in order.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Like [`NodeCore::take_outputs`], reusing `buf`'s allocation.
    pub fn drain_outputs_into(&mut self, buf: &mut Vec<Output>) {
        debug_assert!(buf.is_empty());
        std::mem::swap(&mut self.outputs, buf);
    }

    pub fn lamport(&self) -> u64 {
        self.chat.lamport()
    }

    /// This node, as the diagram records name it.
    pub fn who(&self) -> Who<'_> {
        Who::Node {
            node: &self.me,
            addr: &self.addr,
        }
    }

    /// The peer whose inbound relay link is `link`.
    pub fn inbound_peer(&self, link: u64) -> Option<&NodeId> {
        self.inbound.get(&link)
    }

    pub fn chat(&self) -> &ChatCore {
        &self.chat
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn participants(&self) -> Vec<Participant> {
        self.chat.participants()
    }

    /// Live participants' names by home node, at most `cap` per node (see
    /// [`super::roster::Roster::names_by_home`]).
    pub fn names_by_home(
        &self,
        cap: usize,
    ) -> std::collections::HashMap<(String, u64), (Vec<String>, usize)> {
        self.chat.names_by_home(cap)
    }

    /// The nodes this node reaches (itself included) and the members it
    /// cannot reach, as clients see them.
    pub fn server_list(&self) -> ServerList {
        let (servers, unreachable): (Vec<Member>, Vec<Member>) =
            self.membership.alive().into_iter().partition(|m| {
                m.node
                    .as_ref()
                    .is_none_or(|n| *n == self.me || self.is_reachable(n))
            });
        let info = |m: Member| ServerInfo {
            node: m.node,
            addr: m.addr,
        };
        ServerList {
            servers: servers.into_iter().map(info).collect(),
            unreachable: unreachable.into_iter().map(info).collect(),
        }
    }

    /// Whether `peer` (that incarnation) is a member this node hears runs.
    pub fn is_reachable(&self, peer: &NodeId) -> bool {
        self.peers
            .get(&peer.id)
            .is_some_and(|p| &p.node == peer && p.reachable)
    }

    /// The peers this node hears run.
    fn reachable_peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values().filter(|p| p.reachable)
    }

    /// This node's own membership entry, as it introduces itself to peers.
    pub fn own_member(&self) -> Member {
        member(self.me.clone(), &self.addr, MemberState::Alive, 1)
    }

    /// Whether a newer process of this node replaced it.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Real nodes: a known node id gets a newer process only from that
    /// process itself, and only once its earlier one is not heard (see
    /// [`Membership::fix_generations`] and `check_claimed_incarnation`).
    pub fn never_reuse_ids(&mut self) {
        self.membership.fix_generations();
    }

    /// What this node knows of each peer, by node id.
    pub fn peer_reports(&self, now: Instant) -> Vec<PeerReport> {
        let last = self.chat.last_seq();
        self.peers
            .values()
            .map(|p| PeerReport {
                node: p.node.clone(),
                addr: self.membership.addr_of(&p.node.id).to_string(),
                up: p.up,
                reachable: p.reachable,
                gone: p.gone_since.is_some(),
                lag: last.saturating_sub(p.acked_own),
                last_heard: now.saturating_duration_since(p.last_seen),
            })
            .collect()
    }

    /// Whether an outgoing link to `peer` is wanted (it is a member, even
    /// one this node cannot reach now: the link keeps trying).
    pub fn wants_link(&self, peer: &NodeId) -> bool {
        self.peers.get(&peer.id).is_some_and(|p| &p.node == peer)
    }

    // ---- Client requests -------------------------------------------------

    /// A Join: opens a session for `name`. `participant_id` and `token` are
    /// fresh random values chosen by the caller. Answered by
    /// [`Output::Opened`], or a [`Reply::Refused`].
    pub fn join(&mut self, now: Instant, request: RequestId, joiner: Joiner<'_>, lamport: u64) {
        let Joiner {
            name,
            participant_id,
            token,
            rejoin,
            recent,
        } = joiner;
        self.catch_up_time(now);
        if let Err(e) = self.serving() {
            return self.refuse(request, e);
        }
        if let Err(e) = validate::request_lamport(lamport, self.chat.lamport()).and_then(|()| {
            rejoin.as_ref().map_or(Ok(()), |r| {
                validate::seen_and_nodes(r.seen.len(), r.unanswered_at.len(), r.known_nodes.len())
                    .and_then(|()| self.plausible_seen(&r.seen))
            })
        }) {
            return self.refuse(request, e);
        }
        // Messages reach a participant without their dependencies: what came
        // before its session is told once, in the Welcome. Not this node's
        // own events: some may not be held by any peer yet (a resume
        // elsewhere would wait for them in vain), and the participant's own
        // join, which it receives, covers them.
        if let Some(rejoin) = &rejoin
            && let Err(e) = self.fresh_for_a_retry(&rejoin.unanswered_at)
        {
            return self.refuse(request, e);
        }
        let mut before = self.chat.delivered();
        before.retain(|mark| mark.origin.as_ref() != Some(&self.me));
        let clock_before = self.chat.lamport();
        let joined = match self.chat.join(name, lamport, participant_id, token.clone()) {
            Ok(joined) => joined,
            Err(Error::NameTaken { name, taken }) => {
                // The very name, held by a session that lost its connection
                // here: freed once its grace period ends, unless it resumes.
                // Say when.
                let frees_in = (name == taken)
                    .then(|| self.chat.name_frees_in(&name, now))
                    .flatten();
                // Held on another node: only that node knows whether the
                // session lost its connection; say where, and the longest
                // it can take.
                let elsewhere = (name == taken && frees_in.is_none())
                    .then(|| self.chat.home_of_name(&name))
                    .flatten()
                    .filter(|home| **home != self.me)
                    .map(|home| self.membership.addr_of(&home.id).to_string());
                let e = match (frees_in, elsewhere) {
                    (Some(left), _) => Error::NameHeld {
                        name,
                        secs: (left.as_millis().div_ceil(1000) as u64).max(1),
                    },
                    (None, Some(node)) => Error::NameHeldElsewhere {
                        name,
                        node,
                        secs: (self.grace.as_millis().div_ceil(1000) as u64).max(1),
                    },
                    (None, None) => Error::NameTaken { name, taken },
                };
                return self.refuse(request, e);
            }
            Err(e) => return self.refuse(request, e),
        };
        info!(participant = %name, id = %joined.participant_id, lamport = joined.events[0].lamport, rejoin = rejoin.is_some(), "Join");
        diagram::rpc(
            self.who(),
            Record::new(Call::Join, Dir::Received)
                .participant(name, &joined.participant_id)
                .event(&joined.events[0])
                .carried(lamport)
                .clock(clock_before, self.chat.lamport()),
        );
        if let Some(rejoin) = rejoin {
            // Joining again as new after its old session was announced as
            // left: its publishes wait as a resumed participant's do.
            let joined_seq = joined
                .events
                .first()
                .and_then(|e| own_seq(e, &self.me))
                .unwrap_or(0);
            let mut unanswered_at = rejoin.unanswered_at;
            unanswered_at.retain(|n| *n != self.me);
            unanswered_at.truncate(MAX_UNANSWERED_AT);
            let unheard = self.unheard_of(&rejoin.known_nodes);
            self.handoffs.insert(
                joined.participant_id.clone(),
                Handoff {
                    seen: rejoin.seen,
                    unanswered_at,
                    moved_seq: joined_seq,
                    until: BTreeMap::new(),
                    since: now,
                    deadline: now + self.timing.request_timeout(),
                    queued: VecDeque::new(),
                    lacked: false,
                    unheard,
                    unheard_until: now + self.timing.unheard_node_wait(),
                },
            );
        }
        // Only for a join that is accepted: a refused one costs no scan.
        let earlier = self.earlier_messages(recent);
        let from_gate = self.next_gate;
        self.open(
            request,
            joined.participant_id,
            token,
            joined.session,
            Session::New { before, earlier },
            Vec::new(),
            Vec::new(),
            from_gate,
        );
        self.dispatch(joined.events);
    }

    /// The latest `count` (at most [`MAX_RECENT`]) chat messages this node
    /// has shown its participants, oldest first: what a new session is
    /// handed as earlier messages. Events still behind the gate are not
    /// shown yet, so they are left out, as they are from the session.
    /// The history is scanned from its newest end and only until `count`
    /// messages are found.
    fn earlier_messages(&self, count: usize) -> Vec<Event> {
        let count = count.min(MAX_RECENT);
        if count == 0 {
            return Vec::new();
        }
        let gated: std::collections::HashSet<*const Event> = if self.gate.is_empty() {
            Default::default()
        } else {
            self.gate.iter().map(|g| Arc::as_ptr(&g.event)).collect()
        };
        let mut earlier: Vec<Event> = self
            .chat
            .history()
            .iter()
            .rev()
            .filter(|e| {
                e.kind() == EventKind::Message
                    && self.chat.shown(e)
                    && !gated.contains(&Arc::as_ptr(e))
            })
            .take(count)
            .map(|e| Event {
                deps: Vec::new(),
                ..Event::clone(e)
            })
            .collect();
        earlier.reverse();
        earlier
    }

    /// A Join that resumes a session whose connection or node was lost:
    /// answered with what the participant missed after `seen`, at once (a
    /// participant this node has not heard of yet is waited for, bounded:
    /// its join may still be on its way).
    /// Its publishes here wait (bounded) until this node has delivered what
    /// it saw elsewhere, so nothing it publishes can overtake that, and
    /// until the nodes that may still hold its old session have handed it
    /// over (every live peer acknowledged the move, and this node holds
    /// what each had stamped by then).
    pub fn resume(&mut self, now: Instant, request: RequestId, resume: Resume, lamport: u64) {
        self.catch_up_time(now);
        if let Err(e) = validate::request_lamport(lamport, self.chat.lamport())
            .and_then(|()| validate::token("Resume.participant_id", &resume.participant_id))
            .and_then(|()| validate::token("Resume.session_token", &resume.session_token))
            .and_then(|()| {
                validate::seen_and_nodes(
                    resume.seen.len(),
                    resume.unanswered_at.len(),
                    resume.known_nodes.len(),
                )
            })
            .and_then(|()| self.plausible_seen(&resume.seen))
        {
            return self.refuse(request, e);
        }
        let known = self
            .chat
            .can_resume(&resume.participant_id, &resume.session_token);
        let waiting = self
            .others
            .iter()
            .filter(|w| matches!(w, Waiting::Resume { .. }))
            .count();
        if !known
            && !self.chat.has_departed(&resume.participant_id)
            && waiting < MAX_WAITING_RESUMES
        {
            // Never heard of here: its join may still be on its way (it
            // joined moments ago elsewhere, behind a slow link). One
            // announced as left is refused at once.
            debug!(participant = %resume.participant_id, "Resume waits for the participant's join to arrive");
            self.others.push(Waiting::Resume {
                request,
                resume,
                lamport,
                deadline: now + self.timing.failure_timeout,
            });
            return;
        }
        self.finish_resume(now, request, resume, lamport);
    }

    fn finish_resume(&mut self, now: Instant, request: RequestId, resume: Resume, lamport: u64) {
        if let Err(e) = self.serving() {
            return self.refuse(request, e);
        }
        if self.chat.missed_before_joining(&resume.seen)
            && self.elders.iter().any(|elder| self.is_reachable(elder))
        {
            // A node that was there before this one joined can replay it
            // all. Once none is left, this node replays what it has, and
            // the gap notice tells what it has not.
            return self.refuse(
                request,
                Error::Unavailable(
                    "this node joined the cluster after events this session missed; \
                     resume on another node"
                        .into(),
                ),
            );
        }
        let pid = resume.participant_id;
        let mut unanswered_at = resume.unanswered_at;
        unanswered_at.retain(|n| *n != self.me);
        unanswered_at.truncate(MAX_UNANSWERED_AT);
        if let Err(e) = self.fresh_for_a_retry(&unanswered_at) {
            return self.refuse(request, e);
        }
        let clock_before = self.chat.lamport();
        let resumed = match self.chat.resume(&pid, &resume.session_token, lamport) {
            Ok(resumed) => resumed,
            Err(e) => return self.refuse(request, e),
        };
        let lacked = !self.chat.covers(&resume.seen);
        let unheard = self.unheard_of(&resume.known_nodes);
        if self.reachable_peers().next().is_some() || lacked || !unanswered_at.is_empty() {
            let moved_seq = resumed
                .events
                .first()
                .and_then(|e| own_seq(e, &self.me))
                .unwrap_or(0);
            let queued = self
                .handoffs
                .remove(&pid)
                .map(|h| h.queued)
                .unwrap_or_default();
            self.handoffs.insert(
                pid.clone(),
                Handoff {
                    seen: resume.seen.clone(),
                    unanswered_at: unanswered_at.clone(),
                    moved_seq,
                    until: BTreeMap::new(),
                    since: now,
                    deadline: now + self.timing.request_timeout(),
                    queued,
                    lacked,
                    unheard,
                    unheard_until: now + self.timing.unheard_node_wait(),
                },
            );
        }
        // A stale session of the same participant here (a half-open
        // connection) gives way to the new one.
        self.outputs.push(Output::EndSession {
            participant_id: pid.clone(),
            reason: EndReason::Replaced,
        });
        let seen = self.chat.since_join(&pid, &resume.seen);
        let (mut replay, gaps) = self.chat.replay_after(&seen, Audience::Participant);
        // What is still behind the gate reaches the session from there,
        // once it may be shown (a crash of this node could take it back).
        let gated: std::collections::HashSet<*const Event> =
            self.gate.iter().map(|g| Arc::as_ptr(&g.event)).collect();
        replay.retain(|e| self.chat.shown(e) && !gated.contains(&Arc::as_ptr(e)));
        self.chat.drop_answered_lefts(&mut replay, &resume.seen);
        let from_gate = self.gate.front().map_or(self.next_gate, |g| g.index);
        // What came before its own join, even behind the gate, is not for
        // it: the Welcome says where its join starts, so the client counts
        // that as seen (it may never have seen the join itself).
        let before_join: Vec<SeqMark> = self.chat.since_join(&pid, &[]);
        info!(participant = %resumed.name, id = %pid, replayed = replay.len(), lamport = resumed.events[0].lamport, "Resume");
        diagram::rpc(
            self.who(),
            Record::new(Call::Join, Dir::Received)
                .participant(&resumed.name, &pid)
                .event(&resumed.events[0])
                .carried(lamport)
                .clock(clock_before, self.chat.lamport()),
        );
        self.open(
            request,
            pid,
            resume.session_token,
            resumed.session,
            Session::Resumed { before_join },
            replay,
            gaps,
            from_gate,
        );
        self.dispatch(resumed.events);
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        request: RequestId,
        participant_id: String,
        token: String,
        session: u64,
        kind: Session,
        replay: Vec<Arc<Event>>,
        gaps: Vec<GapRange>,
        from_gate: u64,
    ) {
        let resumed = matches!(kind, Session::Resumed { .. });
        let (seen, earlier) = match kind {
            Session::New { before, earlier } => (before, earlier),
            Session::Resumed { before_join } => (before_join, Vec::new()),
        };
        let welcome = Welcome {
            participant_id: participant_id.clone(),
            session_token: token,
            node: Some(self.me.clone()),
            resumed,
            servers: Some(self.server_list()),
            seen,
            earlier,
        };
        self.outputs.push(Output::Opened(Box::new(Opened {
            request,
            participant_id,
            session,
            welcome,
            replay,
            gaps,
            from_gate,
        })));
    }

    /// A Publish. Answered by [`Reply::Published`] once another node holds
    /// the event (at once for a duplicate or a node without peers).
    pub fn publish(
        &mut self,
        now: Instant,
        request: RequestId,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) {
        self.publish_by(
            Call::Publish,
            now,
            request,
            token,
            text,
            lamport,
            publish_id,
        );
    }

    /// A Publish that came by `call` (a Publish or a message of a
    /// PublishStream), as [`NodeCore::publish`].
    #[allow(clippy::too_many_arguments)]
    pub fn publish_by(
        &mut self,
        call: Call,
        now: Instant,
        request: RequestId,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) {
        self.catch_up_time(now);
        if let Err(e) = self.serving() {
            return self.refuse(request, e);
        }
        if let Err(e) = validate::request_lamport(lamport, self.chat.lamport())
            .and_then(|()| validate::token("PublishRequest.session_token", token))
            .and_then(|()| validate::publish_id(publish_id))
        {
            return self.refuse(request, e);
        }
        if self.catch_up.is_some() || !self.handoffs.is_empty() {
            let queued = Queued::Publish {
                call,
                request,
                token: token.to_string(),
                text: text.to_string(),
                lamport,
                publish_id: publish_id.to_string(),
            };
            if self.queue_if_waiting(token, queued).is_none() {
                return;
            }
        }
        let clock_before = self.chat.lamport();
        let published = match self.chat.publish(token, text, lamport, publish_id) {
            Ok(published) => published,
            Err(e) => return self.refuse(request, e),
        };
        let event = &published.event;
        info_line!(
            "Publish",
            participant = display(&event.participant_name),
            lamport = number(event.lamport),
            request_lamport = number(lamport),
            duplicate = boolean(published.duplicate),
        );
        diagram::rpc(
            self.who(),
            Record::new(call, Dir::Received)
                .participant(&event.participant_name, &event.participant_id)
                .event(event)
                .carried(lamport)
                .clock(clock_before, self.chat.lamport()),
        );
        let reply = PublishReply {
            lamport: event.lamport,
            id: event.id.clone(),
            duplicate: published.duplicate,
        };
        let own = own_seq(event, &self.me);
        self.dispatch(published.events);
        match own {
            Some(seq) if !self.replicated(seq) => self.publishes.push_back(Waiting::Publish {
                request,
                seq,
                reply,
                deadline: now + self.timing.request_timeout(),
            }),
            _ => self.reply(request, Reply::Published(reply)),
        }
    }

    /// A client request came at `now`. If this node did not run for a while
    /// (the request may have waited unread all that time), its clock
    /// catches up first, so that what follows from the stall is known
    /// before anything is stamped.
    fn catch_up_time(&mut self, now: Instant) {
        if self
            .last_tick
            .is_some_and(|t| now.saturating_duration_since(t) > self.timing.tick_interval() * 2)
        {
            self.tick(now);
        }
    }

    /// A participant's unanswered publish went to `unanswered_at`: its retry
    /// here is recognised only if this node remembers the publish ids those
    /// nodes stamped. A node that joined the cluster since starts from a
    /// snapshot, which carries only each participant's latest message (the
    /// one a client that sends one publish at a time retries). While a node
    /// that was there before it is reachable, the participant goes there
    /// instead.
    /// The nodes of `known` (those of the server lists a participant
    /// received, already bounded by validation) that this node has not heard
    /// of, itself left out.
    fn unheard_of(&self, known: &[NodeId]) -> Vec<NodeId> {
        known
            .iter()
            .filter(|n| n.id != self.me.id && !self.membership.has_heard_of(n))
            .cloned()
            .collect()
    }

    fn fresh_for_a_retry(&self, unanswered_at: &[NodeId]) -> Result<(), Error> {
        if unanswered_at.iter().any(|n| self.elders.contains(n))
            && self.elders.iter().any(|elder| self.is_reachable(elder))
        {
            return Err(Error::Unavailable(
                "this node joined the cluster after the node this session's unanswered \
                 message went to; resume on another node"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether a participant may have seen `seen`: of this node's own
    /// events, no more than it stamped; of another origin, no more than
    /// [`MAX_SEQ_LEAD`] beyond what any node is known to hold of it. A
    /// participant may well have seen events of another node that have not
    /// reached this one yet (its resume waits for them), but not billions.
    fn plausible_seen(&self, seen: &[SeqMark]) -> Result<(), Error> {
        for mark in seen {
            let Some(origin) = mark.origin.as_ref() else {
                continue;
            };
            let limit = if *origin == self.me {
                self.chat.last_seq()
            } else {
                self.peers
                    .values()
                    .map(|p| mark_of(&p.held, origin))
                    .chain([
                        self.chat.delivered_of(origin),
                        self.chat.gap_end(origin).unwrap_or(0),
                    ])
                    .max()
                    .unwrap_or(0)
                    .saturating_add(MAX_SEQ_LEAD)
            };
            if mark.seq > limit {
                return Err(Error::InvalidRequest(format!(
                    "seen claims events this cluster never stamped: {} (generation {}) up to \
                     sequence {}, while the most it can have stamped is {limit}",
                    origin.id, origin.generation, mark.seq
                )));
            }
        }
        Ok(())
    }

    /// Whether this node takes new work: not while it stops or after the
    /// cluster removed it.
    fn serving(&self) -> Result<(), Error> {
        if self.removed {
            Err(Error::Unavailable(REMOVED.into()))
        } else if self.stopping {
            Err(Error::Unavailable("node is shutting down".into()))
        } else {
            Ok(())
        }
    }

    /// Queues `queued` while this node catches up with peers that came
    /// back, or behind the handoff of the participant owning `token` if it
    /// has one pending; gives it back otherwise.
    fn queue_if_waiting(&mut self, token: &str, queued: Queued) -> Option<Queued> {
        if let Some(catch_up) = self.catch_up.as_mut() {
            queue_bounded(&mut catch_up.queued, queued, &mut self.outputs);
            return None;
        }
        // A token of no local participant goes on, to be refused there.
        let Some(pid) = self.chat.local_participant(token) else {
            return Some(queued);
        };
        let Some(handoff) = self.handoffs.get_mut(&pid) else {
            return Some(queued);
        };
        queue_bounded(&mut handoff.queued, queued, &mut self.outputs);
        None
    }

    /// A Leave: ends the session that owns `token`; the leaver's stream ends
    /// once drained, before its "left" event is delivered to the others.
    pub fn leave(&mut self, now: Instant, request: RequestId, token: &str, lamport: u64) {
        self.catch_up_time(now);
        if let Err(e) = validate::request_lamport(lamport, self.chat.lamport())
            .and_then(|()| validate::token("LeaveRequest.session_token", token))
        {
            return self.refuse(request, e);
        }
        if self.catch_up.is_some() || !self.handoffs.is_empty() {
            let queued = Queued::Leave {
                request,
                token: token.to_string(),
                lamport,
            };
            if self.queue_if_waiting(token, queued).is_none() {
                return;
            }
        }
        let clock_before = self.chat.lamport();
        let (pid, event) = match self.chat.leave(token, lamport) {
            Ok(left) => left,
            Err(e) => return self.refuse(request, e),
        };
        info!(participant = %event.participant_name, lamport = event.lamport, request_lamport = lamport, "Leave");
        diagram::rpc(
            self.who(),
            Record::new(Call::Leave, Dir::Received)
                .participant(&event.participant_name, &pid)
                .event(&event)
                .carried(lamport)
                .clock(clock_before, self.chat.lamport()),
        );
        self.outputs.push(Output::EndSession {
            participant_id: pid,
            reason: EndReason::Left,
        });
        let time = event.lamport;
        self.dispatch(vec![event]);
        self.reply(request, Reply::Left(time));
    }

    /// The stream of local session `session` ended without a Leave (the
    /// client's connection broke). The participant may resume within the
    /// grace period; after it, it is announced as left.
    pub fn session_dropped(&mut self, now: Instant, participant_id: &str, session: u64) {
        if self.stopping {
            // The node is leaving; its peers announce its participants.
            return;
        }
        if !self.chat.is_current_session(participant_id, session) {
            // Every stream ends so, also after a Leave or a takeover: then
            // there is nothing to do and nothing to say.
            return;
        }
        match self.chat.session_lost(participant_id, session, now) {
            Some(left) => {
                info!(participant = %left.participant_name, lamport = left.lamport, "session ended without Leave: participant left");
                self.dispatch(vec![left]);
            }
            None => {
                debug!(participant = %participant_id, "session ended without Leave; it may resume within the grace period")
            }
        }
    }

    /// A local session fell more than `events` events or `bytes` bytes
    /// behind: it is cut off and announced as left at once.
    pub fn session_overflowed(&mut self, participant_id: &str, events: usize, bytes: usize) {
        self.outputs.push(Output::EndSession {
            participant_id: participant_id.to_string(),
            reason: EndReason::TooSlow { events, bytes },
        });
        if let Some(left) = self.chat.disconnect(participant_id) {
            warn!(participant = %left.participant_name, lamport = left.lamport, "disconnected a participant that fell too far behind");
            self.dispatch(vec![left]);
        }
    }

    // ---- Joining and leaving the cluster -----------------------------------

    /// `ServerJoin`: admits `joiner` and returns what it needs to serve.
    pub fn admit(&mut self, now: Instant, joiner: Member) -> Result<ServerJoinReply, MeshRefusal> {
        let node = joiner
            .node
            .clone()
            .ok_or(MeshRefusal::Malformed("member without a node id"))?;
        self.check_claimed_incarnation(&node)?;
        let change = self.membership.merge_direct(joiner.clone());
        if !self.membership.is_alive(&node) {
            return Err(MeshRefusal::Removed);
        }
        info!(node = %node.id, generation = node.generation, addr = %joiner.addr, "ServerJoin");
        let clock = self.chat.lamport();
        diagram::rpc(
            self.who(),
            Record::new(Call::ServerJoin, Dir::Received)
                .peer(Some(&node), Some(&joiner.addr))
                .clock(clock, clock),
        );
        self.apply_change(now, change);
        let snapshot = self.chat.snapshot();
        Ok(ServerJoinReply {
            members: self.membership.snapshot(),
            participants: snapshot.participants,
            lamport: snapshot.lamport,
            delivered: snapshot.delivered,
            grants: snapshot.grants,
            last_messages: snapshot.last_messages,
        })
    }

    /// This node joined through a member, which answered `reply`.
    pub fn joined_cluster(&mut self, now: Instant, reply: ServerJoinReply) {
        self.chat.load(Snapshot {
            participants: reply.participants,
            delivered: reply.delivered,
            // A boot node's absurd clock is not taken whole.
            lamport: reply.lamport.min(validate::MAX_EVENT_LAMPORT),
            grants: reply.grants,
            last_messages: reply.last_messages,
        });
        let change = self.membership.merge(&reply.members);
        self.elders = self
            .membership
            .peers()
            .into_iter()
            .filter_map(|m| m.node)
            .collect();
        info!(
            members = self.membership.alive().len(),
            "joined the cluster"
        );

        self.apply_change(now, change);
        self.check_resumes(now);
    }

    /// `UpdateServers` (or the answer to a push): merges a peer's view and
    /// returns ours.
    pub fn merge_members(&mut self, now: Instant, members: &[Member]) -> Vec<Member> {
        let change = self.membership.merge(members);
        self.apply_change(now, change);
        self.membership.snapshot()
    }

    /// A graceful stop begins: new sessions are refused, sessions that end
    /// are not announced (peers announce this node's participants), and
    /// [`Reply::Flushed`] answers `request` once every peer holds this
    /// node's events (at most [`FLUSH_TIMEOUT`] from now).
    pub fn flush(&mut self, now: Instant, request: RequestId) {
        self.others.push(Waiting::Flush {
            request,
            deadline: now + FLUSH_TIMEOUT,
        });
        self.check_waiting(now);
    }

    /// Stops serving sessions: new ones are refused and lost ones are not
    /// announced (the peers announce this node's participants).
    pub fn stop_sessions(&mut self) {
        self.stopping = true;
    }

    /// Marks this node as leaving; returns the view to push to every peer
    /// and the peers to push it to.
    pub fn leave_cluster(&mut self) -> (Vec<Member>, Vec<Member>) {
        self.membership.leave();
        (self.membership.snapshot(), self.membership.peers())
    }

    // ---- Peer links --------------------------------------------------------

    /// The first frame of an inbound relay link: who is calling. Returns
    /// the peer, the link's number (for [`NodeCore::inbound_closed`]) and
    /// what this node holds, the link's first acknowledgement.
    pub fn on_hello(
        &mut self,
        now: Instant,
        hello: Member,
    ) -> Result<(NodeId, u64, RelayAck), MeshRefusal> {
        let node = hello
            .node
            .clone()
            .ok_or(MeshRefusal::Malformed("relay hello without a node id"))?;
        self.check_claimed_incarnation(&node)?;
        let change = self.membership.merge_direct(hello);
        if !self.membership.is_alive(&node) {
            return Err(MeshRefusal::Removed);
        }
        self.apply_change(now, change);
        self.heard_directly(now, &node);
        info!(peer = %node.id, addr = %self.membership.addr_of(&node.id), generation = node.generation, "Relay link opened");
        let link = self.next_inbound;
        self.next_inbound += 1;
        self.inbound.insert(link, node.clone());
        Ok((node, link, self.ack()))
    }

    /// A process that calls with its own entry (ServerJoin, relay hello) may
    /// replace an earlier process of its node id (restarted in place with
    /// `--node-id`), but only one this node no longer hears: otherwise any
    /// member could make a running node step aside by claiming to be its
    /// newer process. Never this node's own id. Where generations are not
    /// fixed (the simulator restarts nodes under their id), any newer
    /// process is taken.
    fn check_claimed_incarnation(&self, claimed: &NodeId) -> Result<(), MeshRefusal> {
        if !self.membership.generations_fixed() {
            return Ok(());
        }
        // An older process than the one known is not a claim: it is told
        // it was removed.
        let in_use = if claimed.id == self.me.id {
            claimed.generation > self.me.generation
        } else {
            self.membership
                .alive_incarnation(&claimed.id)
                .filter(|current| claimed.generation > current.generation)
                .is_some_and(|current| {
                    self.peers.get(&current.id).is_some_and(|p| {
                        p.node == *current && p.reachable && p.gone_since.is_none()
                    })
                })
        };
        if in_use {
            warn!(id = %claimed.id, generation = claimed.generation, "refusing a process that claims the id of one still heard");
            return Err(MeshRefusal::IdInUse(claimed.id.clone()));
        }
        Ok(())
    }

    /// Inbound relay link `link` closed.
    pub fn inbound_closed(&mut self, link: u64) {
        let Some(node) = self.inbound.remove(&link) else {
            return;
        };
        if !self.inbound.values().any(|n| *n == node)
            && let Some(p) = self.peers.get_mut(&node.id).filter(|p| p.node == node)
        {
            p.last_direct = None;
        }
    }

    /// Whether an event (or a gap) of `origin` that came on `peer`'s link
    /// must be refused because `origin` is heard straight from its own link:
    /// a node's events travel on its own link, and another member's copy is
    /// accepted only while that link is missing or silent (a cut, a crash),
    /// when forwarding and reconciliation need it. So no member can put
    /// words in the mouth of a node this one hears, nor declare its events
    /// lost. While it is heard, every event of it arrives on that link:
    /// links are FIFO and replay what the receiver lacks when they connect.
    fn relayed_by_another(&self, now: Instant, peer: &NodeId, origin: Option<&NodeId>) -> bool {
        let Some(origin) = origin else {
            return false;
        };
        origin != peer
            && self
                .peers
                .get(&origin.id)
                .filter(|p| p.node == *origin)
                .and_then(|p| p.last_direct)
                .is_some_and(|last| {
                    now.saturating_duration_since(last) < self.timing.forward_after()
                })
    }

    /// A frame came straight from `node`, on one of its inbound links.
    fn heard_directly(&mut self, now: Instant, node: &NodeId) {
        self.heard(now, node);
        if let Some(p) = self.peers.get_mut(&node.id).filter(|p| &p.node == node) {
            p.last_direct = Some(now);
        }
    }

    /// One frame on the inbound relay link of `peer`. An error ends the link.
    pub fn on_relay(
        &mut self,
        now: Instant,
        peer: &NodeId,
        frame: RelayFrame,
    ) -> Result<(), MeshRefusal> {
        if !self.membership.is_alive(peer) {
            return Err(MeshRefusal::Removed);
        }
        self.heard_directly(now, peer);
        let mut result = Ok(());
        match frame.frame {
            Some(relay_frame::Frame::Batch(mut batch)) => {
                batch.events.retain(|event| match validate::relayed_event(event) {
                    Ok(()) => true,
                    Err(why) => {
                        warn!(peer = %peer.id, addr = %self.membership.addr_of(&peer.id), lamport = event.lamport, %why, "dropping a relayed event no honest node stamps");
                        false
                    }
                });
                batch.events.retain(|event| {
                    let origin = event.id.as_ref().and_then(|id| id.origin.as_ref());
                    let refused = self.relayed_by_another(now, peer, origin);
                    if refused {
                        debug!(peer = %peer.id, origin = ?origin.map(|o| &o.id), "dropping another node's event: its own link carries it");
                    }
                    !refused
                });
                for grant in batch.grants {
                    self.chat.grant(grant);
                }
                if batch.late {
                    for event in &batch.events {
                        let Some(id) = event.id.as_ref() else {
                            continue;
                        };
                        let Some(origin) = id.origin.as_ref() else {
                            continue;
                        };
                        if id.seq <= self.chat.delivered_of(origin) {
                            continue;
                        }
                        let upto = self
                            .late_upto
                            .entry((origin.id.clone(), origin.generation))
                            .or_default();
                        *upto = (*upto).max(id.seq);
                    }
                }
                let received = self.chat.receive(batch.events);
                for (event, before, after) in &received.clocked {
                    diagram::rpc(
                        self.who(),
                        Record::new(Call::RelayBatch, Dir::Received)
                            .peer(Some(peer), None)
                            .participant(&event.participant_name, &event.participant_id)
                            .event(event)
                            .clock(*before, *after),
                    );
                }
                let refused = self.take_in(received);
                if refused > 0 {
                    // Ending the link makes the peer reconnect and re-send
                    // from what we acknowledge, once the queue has room.
                    warn!(peer = %peer.id, addr = %self.membership.addr_of(&peer.id), refused, "hold-back queue full: resetting the link");
                    result = Err(MeshRefusal::HoldBackFull);
                }
            }
            Some(relay_frame::Frame::Heartbeat(hb)) => {
                let change = self.membership.merge(&hb.members);
                self.apply_change(now, change);
            }
            Some(relay_frame::Frame::Skip(mut gap)) => {
                warn!(peer = %peer.id, addr = %self.membership.addr_of(&peer.id), reason = %gap.reason, "peer reports events it can no longer provide");
                // Another node's events are declared lost only by that node
                // while it is heard (see `relayed_by_another`).
                gap.ranges
                    .retain(|r| !self.relayed_by_another(now, peer, r.origin.as_ref()));
                if !gap.ranges.is_empty() {
                    let marks: Vec<SeqMark> = gap
                        .ranges
                        .iter()
                        .map(|r| SeqMark {
                            origin: r.origin.clone(),
                            seq: r.to_seq.saturating_sub(1),
                        })
                        .collect();
                    let received = self.chat.skip_to(&marks);
                    warn!(reason = %gap.reason, "telling participants about lost events");
                    self.outputs.push(Output::Gap(gap));
                    self.take_in(received);
                }
            }
            Some(relay_frame::Frame::NeverHeld(never_held)) => {
                if let Some(p) = self.peers.get_mut(&peer.id).filter(|p| p.node == *peer) {
                    p.never_held = never_held.upto;
                    p.never_held.truncate(MAX_MARKS);
                }
            }
            Some(relay_frame::Frame::Hello(_)) | None => {
                return Err(MeshRefusal::Malformed("unexpected relay frame"));
            }
        }
        // The peer's own link is acknowledged. Events from one peer can also
        // release held-back events of another (a causal dependency arrived),
        // or be a third node's (forwarded): then every inbound link hears
        // the news now, not at its peer's next frame, which may be a
        // heartbeat away. That only the peer's own events arrived, or that
        // this node stamped some of its own, the other links learn with
        // their next acknowledgement (each carries all this node holds, and
        // every frame, heartbeats too, gets one; what a peer waits on, its
        // own events held here, comes on its own link): with every link
        // acknowledged for every frame, a node wrote an acknowledgement to
        // each of its peers for each frame it received.
        let mut ack = self.ack();
        let others_moved = ack.held.iter().any(|m| {
            m.origin.as_ref().is_some_and(|origin| {
                origin != peer && origin != &self.me && mark_of(&self.last_acked, origin) != m.seq
            })
        });
        remember_marks(&mut self.last_acked, &ack.held);
        let mut links = self
            .inbound
            .iter()
            .filter(|&(_, node)| others_moved || node == peer)
            .map(|(&link, _)| link)
            .peekable();
        while let Some(link) = links.next() {
            // Each link its own copy, the last one this.
            let ack = match links.peek() {
                Some(_) => ack.clone(),
                None => std::mem::take(&mut ack),
            };
            self.outputs.push(Output::Ack { link, ack });
        }
        self.check_resumes(now);
        self.check_handoffs(now);
        result
    }

    /// The outgoing link to `peer` connected and the peer said what it
    /// holds. Returns what to send it first, or `None` if `peer` is no longer
    /// a live peer (the link should go away).
    pub fn link_up(&mut self, now: Instant, peer: &NodeId, ack: RelayAck) -> Option<Replay> {
        if !self.wants_link(peer) {
            return None;
        }
        if let Some(catch_up) = self.catch_up.as_mut()
            && catch_up.awaiting.remove(&peer.id)
        {
            // The first acknowledgement of a connection made since: what
            // the peer holds now, not before. What of it this node lacks
            // was stamped out of its reach: it arrives late.
            catch_up.targets.extend(
                ack.held
                    .iter()
                    .filter(|m| m.origin.as_ref() != Some(&self.me))
                    .cloned(),
            );
            let key = (peer.id.clone(), peer.generation);
            self.late_upto.remove(&key);
            for mark in &ack.held {
                let Some(origin) = mark.origin.as_ref().filter(|o| **o != self.me) else {
                    continue;
                };
                if mark.seq > self.chat.delivered_of(origin) {
                    let upto = self
                        .late_upto
                        .entry((origin.id.clone(), origin.generation))
                        .or_default();
                    *upto = (*upto).max(mark.seq);
                }
            }
        }
        self.on_ack(now, peer, ack);
        let p = self.peers.get_mut(&peer.id)?;
        p.up = true;
        p.next_heartbeat = now;
        p.last_ack = now;
        p.lagging.clear();
        info!(peer = %peer.id, addr = %self.membership.addr_of(&peer.id), "peer link up");
        self.replay_for(peer)
    }

    /// Everything `peer` lacks that history holds, from every origin (how
    /// survivors reconcile what a dead node sent to only some of them).
    pub fn replay_for(&mut self, peer: &NodeId) -> Option<Replay> {
        let p = self.peers.get_mut(&peer.id).filter(|p| &p.node == peer)?;
        let late = std::mem::take(&mut p.missed);
        let (events, gaps) = self.chat.replay_after(&p.held, Audience::Peer);
        let skip = (!gaps.is_empty()).then(|| Gap {
            reason: "events older than this node's history were lost".into(),
            ranges: gaps,
        });
        let grants = self.chat.grants_for(events.iter().map(|e| &**e));
        Some(Replay {
            skip,
            events,
            grants,
            late,
            never_held: self.chat.never_held(),
        })
    }

    /// Tells every connected peer what this node counts as delivered but
    /// never held, when that grew (it skipped lost events): a peer waiting
    /// for those events releases them too, instead of waiting for this node
    /// to bring them. (A peer whose link comes up later is told with its
    /// replay.)
    fn tell_never_held(&mut self) {
        let never_held = self.chat.never_held();
        if never_held == self.never_held_told {
            return;
        }
        for p in self.peers.values().filter(|p| p.up) {
            self.outputs.push(Output::Forward {
                peer: p.named.clone(),
                replay: Replay {
                    skip: None,
                    events: Vec::new(),
                    grants: Vec::new(),
                    late: true,
                    never_held: never_held.clone(),
                },
            });
        }
        self.never_held_told = never_held;
    }

    /// The outgoing link to `peer` broke; it reconnects by itself.
    pub fn link_down(&mut self, peer: &NodeId) {
        if let Some(p) = self.peers.get_mut(&peer.id).filter(|p| &p.node == peer) {
            p.up = false;
        }
    }

    /// The outgoing link to `peer` could not keep up (its queue is full).
    pub fn link_overflowed(&mut self, peer: &NodeId) {
        if self.wants_link(peer) {
            self.outputs.push(Output::Resync { peer: peer.clone() });
        }
    }

    /// A connection to `peer` was refused: nothing listens at its address,
    /// so that incarnation is not running.
    pub fn connect_refused(&mut self, now: Instant, peer: &NodeId) {
        if let Some(p) = self.peers.get_mut(&peer.id).filter(|p| &p.node == peer)
            && p.gone_since.is_none()
        {
            debug!(peer = %peer.id, addr = %self.membership.addr_of(&peer.id), "connection refused: the peer is not running");
            p.gone_since = Some(now);
            self.check_handoffs(now);
        }
    }

    /// `peer` refused this node's link as coming from a removed node. One
    /// peer's word is not enough (its own view may be the stale one):
    /// exchange membership, whose merge tells for sure.
    pub fn link_refused(&mut self, peer: &NodeId) {
        let to = self
            .membership
            .peers()
            .into_iter()
            .find(|m| m.node.as_ref() == Some(peer));
        if to.is_some() {
            self.outputs.push(Output::Gossip { to });
        }
    }

    /// What an acknowledgement says this node holds, and holds back.
    fn ack(&self) -> RelayAck {
        RelayAck {
            held: self.chat.delivered(),
            held_back: self.chat.held_back(),
        }
    }

    /// `peer` acknowledged on the outgoing link: what it holds.
    pub fn on_ack(&mut self, now: Instant, peer: &NodeId, ack: RelayAck) {
        let Some(p) = self.peers.get_mut(&peer.id).filter(|p| &p.node == peer) else {
            return;
        };
        let RelayAck {
            held,
            mut held_back,
        } = ack;
        let own = held
            .iter()
            .find(|m| m.origin.as_ref() == Some(&self.me))
            .map_or(0, |m| m.seq);
        p.last_ack = now;
        p.held = held;
        held_back.truncate(MAX_MARKS);
        p.held_back = held_back;
        if own > p.acked_own {
            p.acked_own = own;
            self.release();
            self.check_waiting(now);
        }
        self.check_handoffs(now);
        self.check_catch_up(now);
    }

    // ---- Time --------------------------------------------------------------

    /// The clock moved to `now`: heartbeats, failure detection, grace
    /// periods, announcements and request deadlines.
    pub fn tick(&mut self, now: Instant) {
        let period = self.timing.tick_interval();
        if let Some(last) = self.last_tick {
            let gap = now.saturating_duration_since(last);
            if gap > period * 2 {
                // This node was not running (SIGSTOP, a frozen VM,
                // starvation): credit every peer with that time rather than
                // blame it; their heartbeats may be waiting unread.
                let stalled = gap - period;
                warn!(
                    stalled_ms = stalled.as_millis() as u64,
                    "this node was not running for a while; not counting that time against its peers"
                );
                for p in self.peers.values_mut() {
                    p.last_seen = (p.last_seen + stalled).min(now);
                    p.last_ack = (p.last_ack + stalled).min(now);
                }
                // Nor against the requests waiting for them: what would
                // answer them may be waiting unread too.
                for w in self.publishes.iter_mut().chain(self.others.iter_mut()) {
                    w.postpone(stalled);
                }
                for h in self.handoffs.values_mut() {
                    h.deadline += stalled;
                }
                if stalled > self.timing.failure_timeout {
                    // Peers may have taken this node for gone meanwhile:
                    // catch up with every one before serving again.
                    let peers: Vec<String> =
                        self.reachable_peers().map(|p| p.node.id.clone()).collect();
                    self.await_catch_up(now, peers);
                }
            }
        }
        self.last_tick = Some(now);
        if self.removed {
            self.expire_requests(now);
            return;
        }
        if now >= self.next_beat {
            self.membership.beat();
            self.next_beat = now + self.timing.heartbeat;
        }

        let expired = self.chat.expire(now);
        for left in &expired {
            info!(participant = %left.participant_name, lamport = left.lamport, "grace period over: participant left");
        }
        self.dispatch(expired);

        let timeout = self.timing.failure_timeout;
        let silent: Vec<NodeId> = self
            .reachable_peers()
            .filter(|p| now.saturating_duration_since(p.last_seen) > timeout)
            .map(|p| p.node.clone())
            .collect();
        for node in silent {
            self.lose(now, &node);
        }
        for p in self.peers.values_mut() {
            if p.up && now.saturating_duration_since(p.last_ack) > timeout {
                // A cut network leaves the connection silent, not closed:
                // drop it and dial again, which works once the network does.
                info!(peer = %p.node.id, addr = %self.membership.addr_of(&p.node.id), "peer link silent: reconnecting");
                p.up = false;
                self.outputs.push(Output::Reconnect(p.node.clone()));
            }
        }

        // Events held back for events of a departed node (one that left, was
        // replaced, or is not running) that no survivor could provide are
        // released once reconciliation had time, with a gap notice.
        // Not for a node merely out of reach: what it stamped arrives once
        // the network heals (or through a node that reaches it).
        let peers = &self.peers;
        let departed = &self.departed;
        let stuck: Vec<(NodeId, Instant)> = departed
            .values()
            .filter(|(gone, _)| {
                peers
                    .get(&gone.id)
                    .is_none_or(|p| p.node != *gone || p.gone_since.is_some())
            })
            .filter_map(|(gone, _)| Some((gone.clone(), seen_to_go(peers, departed, gone)?)))
            .filter(|&(_, went)| now.saturating_duration_since(went) >= timeout)
            .collect();
        for (gone, went) in stuck {
            // Not while a peer that may be running holds them, or may (its
            // link is not caught up, so what it holds is not known; one out
            // of reach may hold them and bring them when the split heals;
            // what it said before this node saw the node go may lack what
            // it got since).
            let Some(need) = self.chat.gap_end(&gone) else {
                continue;
            };
            let delivered = self.chat.delivered_of(&gone);
            if self
                .peers
                .values()
                .filter(|p| p.gone_since.is_none() && p.node != gone)
                .any(|p| {
                    !p.up
                        || p.last_ack < went
                        || (mark_of(&p.held, &gone) >= need
                            && mark_of(&p.never_held, &gone) <= delivered)
                })
            {
                continue;
            }
            if let Some((range, received)) = self.chat.release_gone(&gone) {
                let gap = Gap {
                    reason: format!(
                        "events {}..{} of departed node {} were lost with it",
                        range.from_seq,
                        range.to_seq - 1,
                        gone.id
                    ),
                    ranges: vec![range],
                };
                warn!(reason = %gap.reason, "telling participants about lost events");
                self.outputs.push(Output::Gap(gap));
                self.take_in(received);
            }
        }

        self.announce_orphans(now);
        self.tell_never_held();

        for p in self.peers.values_mut() {
            if p.up && now >= p.next_heartbeat {
                p.next_heartbeat = now + self.timing.heartbeat;
                self.outputs.push(Output::Relay {
                    peer: p.named.clone(),
                    item: PeerItem::Heartbeat(Heartbeat {
                        lamport: self.chat.lamport(),
                        members: self.membership.snapshot(),
                    }),
                });
            }
        }

        self.forward(now);

        // A departed node is forgotten once its participants had their
        // grace period and what waited on its events was released.
        let forget_after = self.grace.max(self.timing.heartbeat) + timeout * 2;
        self.departed
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < forget_after);

        self.expire_requests(now);
        self.check_resumes(now);
        self.check_handoffs(now);
        self.check_catch_up(now);
    }

    /// Forwards to each connected peer the events of third nodes it has
    /// lacked for [`Timing::forward_after`] while this node had them: its
    /// own path to their origin is cut (or stalled), and this one is not.
    fn forward(&mut self, now: Instant) {
        let after = self.timing.forward_after();
        let delivered = self.chat.delivered();
        let mut due: Vec<(NodeId, NodeId, u64)> = Vec::new();
        for p in self.peers.values_mut().filter(|p| p.up) {
            for mark in &delivered {
                let Some(origin) = mark.origin.as_ref() else {
                    continue;
                };
                if *origin == self.me || *origin == p.node {
                    continue;
                }
                let key = (origin.id.clone(), origin.generation);
                let theirs = mark_of(&p.held, origin);
                if theirs >= mark.seq {
                    p.lagging.remove(&key);
                    continue;
                }
                match p.lagging.get(&key) {
                    Some(&(target, since)) if theirs < target => {
                        if now.saturating_duration_since(since) >= after {
                            due.push((p.node.clone(), origin.clone(), theirs));
                            p.lagging.insert(key, (mark.seq, now));
                        }
                    }
                    _ => {
                        p.lagging.insert(key, (mark.seq, now));
                    }
                }
            }
        }
        for (peer, origin, from) in due {
            let seen = [SeqMark {
                origin: Some(origin.clone()),
                seq: from,
            }];
            let (mut events, mut gaps) = self.chat.replay_after(&seen, Audience::Peer);
            events.retain(|e| e.id.as_ref().and_then(|i| i.origin.as_ref()) == Some(&origin));
            events.truncate(MAX_FORWARD);
            gaps.retain(|g| g.origin.as_ref() == Some(&origin));
            if events.is_empty() && gaps.is_empty() {
                continue;
            }
            debug!(peer = %peer.id, addr = %self.membership.addr_of(&peer.id), origin = %origin.id, events = events.len(), "forwarding events the peer lacks");
            let skip = (!gaps.is_empty()).then(|| Gap {
                reason: "events older than this node's history were lost".into(),
                ranges: gaps,
            });
            let grants = self.chat.grants_for(events.iter().map(|e| &**e));
            let Some(named) = self.peers.get(&peer.id).map(|p| p.named.clone()) else {
                continue;
            };
            self.outputs.push(Output::Forward {
                peer: named,
                replay: Replay {
                    skip,
                    events,
                    grants,
                    late: true,
                    never_held: Vec::new(),
                },
            });
        }
    }

    /// This node heard that `node` runs (a frame from it, or its heartbeat
    /// counter grew).
    fn heard(&mut self, now: Instant, node: &NodeId) {
        let Some(p) = self.peers.get_mut(&node.id).filter(|p| &p.node == node) else {
            return;
        };
        p.last_seen = now;
        p.gone_since = None;
        if p.reachable {
            return;
        }
        p.reachable = true;
        info!(peer = %node.id, addr = %self.membership.addr_of(&node.id), generation = node.generation, "peer reachable again");
        self.departed.remove(&(node.id.clone(), node.generation));
        // Until the new connection says how far the peer got, whatever of
        // it arrives was on its way across the split.
        self.late_upto
            .insert((node.id.clone(), node.generation), u64::MAX);
        // A fresh connection replays what the peer missed, and its first
        // acknowledgement says what this node must catch up on.
        self.await_catch_up(now, vec![node.id.clone()]);
        self.outputs.push(Output::Servers(self.server_list()));
    }

    /// `node` has been silent, directly and through every member, for the
    /// failure timeout: it is unreachable. It stays a member (its link keeps
    /// trying); nothing waits for it any more, and its participants are
    /// announced as left once their grace is over.
    fn lose(&mut self, now: Instant, node: &NodeId) {
        let Some(p) = self.peers.get_mut(&node.id).filter(|p| &p.node == node) else {
            return;
        };
        warn!(peer = %node.id, addr = %self.membership.addr_of(&node.id), generation = node.generation, "peer unreachable: no sign of it, directly or through others, for the failure timeout");
        p.reachable = false;
        p.missed = true;
        self.departed
            .insert((node.id.clone(), node.generation), (node.clone(), now));
        if let Some(catch_up) = self.catch_up.as_mut() {
            catch_up.awaiting.remove(&node.id);
        }
        // The others re-send each other what they hold of it.
        for p in self.peers.values().filter(|p| p.up && p.reachable) {
            self.outputs.push(Output::Resync {
                peer: p.node.clone(),
            });
        }
        self.outputs.push(Output::Servers(self.server_list()));
        self.release();
        self.check_waiting(now);
        self.check_handoffs(now);
        self.check_catch_up(now);
    }

    /// Publishes and leaves wait until this node caught up with `peers`
    /// (see [`CatchUp`]): their links connect again, and the first
    /// acknowledgement of each new connection says what they hold (one
    /// that was on its way all along would say what they held before).
    fn await_catch_up(&mut self, now: Instant, peers: Vec<String>) {
        if peers.is_empty() {
            return;
        }
        for id in &peers {
            if let Some(p) = self.peers.get_mut(id)
                && p.up
            {
                p.up = false;
                self.outputs.push(Output::Reconnect(p.node.clone()));
            }
        }
        let deadline = now + self.timing.request_timeout();
        let catch_up = self.catch_up.get_or_insert_with(|| CatchUp {
            awaiting: Default::default(),
            targets: Vec::new(),
            deadline,
            queued: VecDeque::new(),
        });
        catch_up.awaiting.extend(peers);
        catch_up.deadline = catch_up.deadline.max(deadline);
    }

    /// Lets waiting publishes and leaves through once this node caught up
    /// (past the deadline, anyway).
    fn check_catch_up(&mut self, now: Instant) {
        let Some(catch_up) = self.catch_up.as_mut() else {
            return;
        };
        let peers = &self.peers;
        catch_up
            .awaiting
            .retain(|id| peers.get(id).is_some_and(|p| p.reachable));
        let caught_up = catch_up.awaiting.is_empty() && self.chat.covers(&catch_up.targets);
        if !caught_up && now < catch_up.deadline {
            return;
        }
        if !caught_up {
            warn!(
                "caught up with peers that came back only in part before the deadline; serving anyway"
            );
        }
        let Some(catch_up) = self.catch_up.take() else {
            return;
        };
        for q in catch_up.queued {
            self.run_queued(now, q);
        }
    }

    fn run_queued(&mut self, now: Instant, queued: Queued) {
        match queued {
            Queued::Publish {
                call,
                request,
                token,
                text,
                lamport,
                publish_id,
            } => self.publish_by(call, now, request, &token, &text, lamport, &publish_id),
            Queued::Leave {
                request,
                token,
                lamport,
            } => self.leave(now, request, &token, lamport),
        }
    }

    /// On the announcing node (the live node with the smallest id): announces
    /// as left the participants of departed nodes, once they had the grace
    /// period to resume elsewhere and survivors at least a heartbeat to
    /// reconcile.
    fn announce_orphans(&mut self, now: Instant) {
        let announcer = self
            .membership
            .announcer_among(|n| *n == self.me || self.is_reachable(n));
        // Another node this one reaches announces. Unless it does not know
        // the participant (its "joined" was lost with the node that held
        // it): then this node does, later; a second "left" for one
        // departure is shown to nobody.
        let mut settle = self.grace.max(self.timing.heartbeat);
        if announcer != self.me {
            settle += self.timing.failure_timeout * 2;
        }
        let alive: Vec<NodeId> = std::iter::once(self.me.clone())
            .chain(self.reachable_peers().map(|p| p.node.clone()))
            .collect();
        let mut events = Vec::new();
        for pid in self.chat.orphans(&alive) {
            let home = self.chat.home_of(&pid).cloned().unwrap_or_default();
            let key = (home.id.clone(), home.generation);
            let (_, since) = *self.departed.entry(key).or_insert((home, now));
            if now.saturating_duration_since(since) < settle {
                continue;
            }
            if let Some(left) = self.chat.announce_left(&pid) {
                info!(participant = %left.participant_name, lamport = left.lamport, "announcing a participant of a departed node as left");
                events.push(left);
            }
        }
        self.dispatch(events);
    }

    // ---- Internals ---------------------------------------------------------

    /// Acts on a membership change: links to new peers, drops departed ones,
    /// reconciles, and tells sessions and peers.
    fn apply_change(&mut self, now: Instant, change: Change) {
        if change.self_removed {
            if !self.removed {
                self.removed = true;
                let reason = "a newer process of this node id joined the cluster and replaced \
                              this one; exiting so it serves no stale state";
                warn!("{reason}");
                self.outputs.push(Output::Removed(reason.to_string()));
                // Nothing it waits for will come: answer every request now,
                // as at its deadline (a graceful stop goes on; a publish or
                // resume is refused, the resume by `serving`).
                let waiting = std::mem::take(&mut self.publishes)
                    .into_iter()
                    .chain(std::mem::take(&mut self.others));
                for w in waiting {
                    self.complete(w, now, true);
                }
                let catch_up = self.catch_up.take().map(|c| c.queued).unwrap_or_default();
                let queued = std::mem::take(&mut self.handoffs)
                    .into_values()
                    .flat_map(|h| h.queued)
                    .chain(catch_up);
                {
                    for q in queued {
                        self.refuse(q.request(), Error::Unavailable(REMOVED.into()));
                    }
                }
            }
            return;
        }
        for node in &change.progressed {
            self.heard(now, node);
        }
        if change.added.is_empty() && change.removed.is_empty() {
            return;
        }
        for gone in &change.removed {
            let Some(node) = &gone.node else { continue };
            info!(peer = %node.id, addr = %gone.addr, generation = node.generation, how = self.membership.departure(node), "peer left the cluster");
            if self.peers.get(&node.id).is_some_and(|p| &p.node == node) {
                self.peers.remove(&node.id);
                self.outputs.push(Output::Disconnect(node.clone()));
            }
            self.departed
                .insert((node.id.clone(), node.generation), (node.clone(), now));
        }
        for added in &change.added {
            let Some(node) = &added.node else { continue };
            info!(peer = %node.id, addr = %added.addr, generation = node.generation, "peer joined the cluster");
            self.departed.remove(&(node.id.clone(), node.generation));
            self.peers
                .insert(node.id.clone(), Peer::new(node.clone(), now));
            self.outputs.push(Output::Connect(added.clone()));
        }
        if !change.removed.is_empty() {
            // Survivors re-send each other what they hold of the departed.
            for p in self.peers.values().filter(|p| p.up && p.reachable) {
                self.outputs.push(Output::Resync {
                    peer: p.node.clone(),
                });
            }
        }
        self.outputs.push(Output::Servers(self.server_list()));
        self.outputs.push(Output::Gossip { to: None });
        // Publishes and the gate waiting on a departed peer re-check.
        self.release();
        self.check_waiting(now);
        self.check_handoffs(now);
    }

    /// Whether this node's event `seq` is held elsewhere (or there is
    /// nowhere else).
    fn replicated(&self, seq: u64) -> bool {
        let mut reachable = self.reachable_peers().peekable();
        reachable.peek().is_none() || reachable.any(|p| p.acked_own >= seq)
    }

    /// Relays this node's new events to every connected peer, and queues
    /// every visible event for local sessions behind the gate.
    fn dispatch(&mut self, events: Vec<Arc<Event>>) {
        if events.is_empty() {
            return;
        }
        for event in events {
            let own = own_seq(&event, &self.me).is_some();
            if own {
                diagram::stamp(&self.me, &self.addr, &event);
            }
            info_line!(
                "Broadcast",
                kind = quoted(event.kind().as_str_name()),
                participant = display(&event.participant_name),
                lamport = number(event.lamport),
                origin = quoted(
                    event
                        .id
                        .as_ref()
                        .and_then(|i| i.origin.as_ref())
                        .map_or("", |o| o.id.as_str())
                ),
                seq = number(event.id.as_ref().map_or(0, |i| i.seq)),
            );
            if own {
                // Only a "joined" carries a grant: no lookup per message.
                let grant = (event.kind() == EventKind::Joined)
                    .then(|| self.chat.grants_for([&*event]).pop())
                    .flatten();
                for p in self.peers.values().filter(|p| p.up) {
                    self.outputs.push(Output::Relay {
                        peer: p.named.clone(),
                        item: PeerItem::Event(event.clone(), grant.clone()),
                    });
                }
            }
            if self.chat.shown(&event) {
                let late = !own && self.came_late(&event);
                self.gate.push_back(Gated {
                    index: self.next_gate,
                    event,
                    late,
                });
                self.next_gate += 1;
            }
        }
        self.release();
    }

    /// Whether `event` (of another origin) came in a late batch, or after
    /// one it belongs with.
    fn came_late(&mut self, event: &Event) -> bool {
        if self.late_upto.is_empty() {
            return false;
        }
        let Some(id) = event.id.as_ref() else {
            return false;
        };
        let Some(origin) = id.origin.as_ref() else {
            return false;
        };
        let key = (origin.id.clone(), origin.generation);
        let Some(&upto) = self.late_upto.get(&key) else {
            return false;
        };
        if id.seq >= upto {
            self.late_upto.remove(&key);
        }
        id.seq <= upto
    }

    /// Carries out what delivered events caused, wherever they were
    /// released (relayed, or let through by a gap that will never fill):
    /// local sessions that moved, were announced as left elsewhere or lost a
    /// name clash end, and the events go to the sessions. Returns how many
    /// relayed events the hold-back queue refused.
    fn take_in(&mut self, received: Received) -> usize {
        for pid in &received.back {
            info!(participant = %pid, "announced as left elsewhere while still here: announcing it back");
        }
        for (pid, kind) in received.ended {
            let reason = match kind {
                EventKind::Moved => EndReason::ResumedElsewhere,
                _ => EndReason::AnnouncedLeft,
            };
            self.outputs.push(Output::EndSession {
                participant_id: pid,
                reason,
            });
        }
        for (pid, _) in received.kicked {
            self.outputs.push(Output::EndSession {
                participant_id: pid,
                reason: EndReason::NameClash,
            });
        }
        self.dispatch(received.events);
        received.refused
    }

    /// Lets through the gate what may be shown: an event of this node
    /// waits until a peer holds it; events behind it wait too, to keep the
    /// order.
    fn release(&mut self) {
        while let Some(front) = self.gate.front() {
            if let Some(seq) = own_seq(&front.event, &self.me)
                && !self.replicated(seq)
            {
                return;
            }
            let Gated { index, event, late } = self.gate.pop_front().expect("front exists");
            if late != self.late_run {
                self.late_run = late;
                self.outputs.push(Output::LateRun { gate: index, late });
            }
            self.outputs.push(Output::Deliver { gate: index, event });
        }
    }

    fn check_waiting(&mut self, now: Instant) {
        while let Some(Waiting::Publish { seq, .. }) = self.publishes.front() {
            if !self.replicated(*seq) {
                break;
            }
            if let Some(Waiting::Publish { request, reply, .. }) = self.publishes.pop_front() {
                self.reply(request, Reply::Published(reply));
            }
        }
        let last = self.chat.last_seq();
        let flushed = self.reachable_peers().all(|p| p.acked_own >= last);
        if flushed {
            self.take_others(|w| matches!(w, Waiting::Flush { .. }), now, false);
        }
    }

    /// Lets the publishes of resumed participants through once their
    /// handoff is complete (see [`Handoff`]); past the deadline, anyway.
    fn check_handoffs(&mut self, now: Instant) {
        if self.handoffs.is_empty() {
            return;
        }
        let mut done = Vec::new();
        let mut refused = Vec::new();
        for (pid, h) in &mut self.handoffs {
            // A node the participant knew of and this one did not may be the
            // only holder of events it saw, or of its unanswered publish.
            let membership = &self.membership;
            h.unheard.retain(|n| !membership.has_heard_of(n));
            if !h.unheard.is_empty() && now >= h.unheard_until {
                warn!(participant = %pid, nodes = ?h.unheard.iter().map(|n| &n.id).collect::<Vec<_>>(), "a resumed participant knew of nodes this node never heard of; no longer waiting for them");
                h.unheard.clear();
            }
            let waits_for_unheard = !h.unheard.is_empty()
                && (!self.chat.covers(&h.seen)
                    || h.unanswered_at.iter().any(|n| h.unheard.contains(n)));
            let holds_seen = holds_what_can_come(
                &self.chat,
                &self.peers,
                &self.departed,
                &self.me,
                &h.seen,
                h.since,
            );
            let mut complete = !waits_for_unheard && holds_seen;
            for p in self.peers.values().filter(|p| p.reachable) {
                let stale = h
                    .until
                    .get(&p.node.id)
                    .is_none_or(|&(generation, _)| generation != p.node.generation);
                if stale && mark_of(&p.held, &self.me) >= h.moved_seq {
                    h.until.insert(
                        p.node.id.clone(),
                        (p.node.generation, mark_of(&p.held, &p.node)),
                    );
                }
                complete &= match h.until.get(&p.node.id) {
                    Some(&(generation, seq)) if generation == p.node.generation => {
                        self.chat.delivered_of(&p.node) >= seq
                    }
                    _ => false,
                };
            }
            for (gone, _) in self.departed.values() {
                let need = self
                    .peers
                    .values()
                    .filter(|p| p.reachable)
                    .map(|p| mark_of(&p.held, gone))
                    .max()
                    .unwrap_or(0);
                complete &= self.chat.delivered_of(gone) >= need;
            }
            // A node the participant's unanswered publish went to may have
            // stamped it: it must have handed the participant over (it
            // acknowledged the move and this node holds what it had stamped
            // by then), or, no longer a member or known not to run, this
            // node must hold whatever of its events any peer holds (its
            // stamp may have reached a peer before it stopped).
            let chat = &self.chat;
            let handed_over = h.unanswered_at.iter().all(|sent| {
                let all_it_stamped = || {
                    let all = SeqMark {
                        origin: Some(sent.clone()),
                        seq: u64::MAX,
                    };
                    holds_what_can_come(
                        chat,
                        &self.peers,
                        &self.departed,
                        &self.me,
                        &[all],
                        h.since,
                    )
                };
                match self.peers.get(&sent.id).filter(|p| p.node == *sent) {
                    // No longer a member (it left, or was replaced), or not
                    // running: it may have passed its stamp of the publish
                    // to a peer before it stopped.
                    None => all_it_stamped(),
                    Some(p) if p.gone_since.is_some() => all_it_stamped(),
                    Some(_) => h.until.get(&sent.id).is_some_and(|&(generation, seq)| {
                        generation == sent.generation && chat.delivered_of(sent) >= seq
                    }),
                }
            });
            complete &= handed_over;
            if complete {
                done.push(pid.clone());
            } else if now >= h.deadline {
                if !waits_for_unheard && holds_seen && handed_over {
                    warn!(participant = %pid, "a resumed participant's publishes waited past the deadline for peers to hand it over; publishing anyway");
                    done.push(pid.clone());
                } else {
                    // What it saw elsewhere has not reached this node, or
                    // its previous node may be running out of reach (a
                    // split between the two): publishing now could put its
                    // messages before ones it sent earlier, or stamp a
                    // retried one twice. It waits on; what it asked
                    // meanwhile is refused, to be retried.
                    warn!(participant = %pid, "a resumed participant's previous node is out of reach, or it saw events this node does not have yet; refusing its publishes until then");
                    h.deadline = now + self.timing.request_timeout();
                    refused.extend(h.queued.drain(..).map(|q| q.request()));
                }
            }
        }
        for request in refused {
            self.refuse(
                request,
                Error::Unavailable(
                    "this session's previous node is out of reach, or this node has not \
                     yet received everything the session saw there (a network split?); \
                     retry, here or on another node"
                        .into(),
                ),
            );
        }
        for pid in done {
            let Some(handoff) = self.handoffs.remove(&pid) else {
                continue;
            };
            if handoff.lacked && self.chat.lost_some_of(&handoff.seen) {
                // Some of what it saw never reached this node and never will:
                // perhaps a "left" of someone who is here. Say who is.
                self.outputs.push(Output::Room {
                    participant_id: pid.clone(),
                    participants: self.chat.participants(),
                });
            }
            for q in handoff.queued {
                self.run_queued(now, q);
            }
        }
    }

    fn check_resumes(&mut self, now: Instant) {
        let chat = &self.chat;
        let ready = |w: &Waiting| {
            matches!(w, Waiting::Resume { resume, .. }
                if chat.can_resume(&resume.participant_id, &resume.session_token)
                    || chat.has_departed(&resume.participant_id))
        };
        if !self.others.iter().any(ready) {
            return;
        }
        let (done, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.others)
            .into_iter()
            .partition(ready);
        self.others = keep;
        for w in done {
            if let Waiting::Resume {
                request,
                resume,
                lamport,
                ..
            } = w
            {
                self.finish_resume(now, request, resume, lamport);
            }
        }
    }

    /// Completes the waiting requests that `pick` selects.
    fn take_others(&mut self, pick: impl Fn(&Waiting) -> bool, now: Instant, expired: bool) {
        let (done, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.others)
            .into_iter()
            .partition(|w| pick(w));
        self.others = keep;
        for w in done {
            self.complete(w, now, expired);
        }
    }

    fn complete(&mut self, waiting: Waiting, now: Instant, expired: bool) {
        match waiting {
            Waiting::Publish { request, reply, .. } => {
                if expired {
                    self.refuse(
                        request,
                        Error::Unavailable(
                            "no other node acknowledged the message yet; retry with the same publish id"
                                .into(),
                        ),
                    );
                } else {
                    self.reply(request, Reply::Published(reply));
                }
            }
            // Past its deadline a resume is decided on what this node has.
            Waiting::Resume {
                request,
                resume,
                lamport,
                ..
            } => self.finish_resume(now, request, resume, lamport),
            Waiting::Flush { request, .. } => {
                // A member out of reach (a split) may lack events that only
                // this node holds: they go with it. Say so.
                let last = self.chat.last_seq();
                for p in self.peers.values() {
                    if p.gone_since.is_none() && p.acked_own < last {
                        warn!(
                            peer = %p.node.id,
                            missing = last - p.acked_own,
                            "stopping before this peer holds all of this node's events (out of reach?); any that no other running node holds are lost"
                        );
                    }
                }
                self.reply(request, Reply::Flushed)
            }
        }
    }

    fn expire_requests(&mut self, now: Instant) {
        while self.publishes.front().is_some_and(|w| w.deadline() <= now) {
            if let Some(w) = self.publishes.pop_front() {
                self.complete(w, now, true);
            }
        }
        if self.others.iter().any(|w| w.deadline() <= now) {
            self.take_others(|w| w.deadline() <= now, now, true);
        }
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.outputs.push(Output::Reply { request, reply });
    }

    fn refuse(&mut self, request: RequestId, error: Error) {
        self.reply(request, Reply::Refused(error));
    }
}

/// Whether this node delivered `seen`, except what can no longer come:
/// events of a node that is not running (or no longer a member) beyond
/// what any peer that may run holds or holds back, or this node holds
/// back. What each of those peers holds must be known: all of them
/// connected, each heard from since `since` (the participant saw only
/// events a peer held, so what a peer said before it resumed may lack
/// them; with the way back cut, a link can stay up for a while with
/// nothing heard on it) and since this node saw the origin go (until it
/// stopped, the origin may have passed events to a peer).
fn holds_what_can_come(
    chat: &ChatCore,
    peers: &BTreeMap<String, Peer>,
    departed: &BTreeMap<(String, u64), (NodeId, Instant)>,
    me: &NodeId,
    seen: &[SeqMark],
    since: Instant,
) -> bool {
    seen.iter().all(|mark| {
        let Some(origin) = mark.origin.as_ref() else {
            return true;
        };
        let runs = origin == me
            || peers
                .get(&origin.id)
                .is_some_and(|p| p.node == *origin && p.gone_since.is_none());
        let need = if runs {
            mark.seq
        } else {
            let heard_after = seen_to_go(peers, departed, origin).map_or(since, |at| at.max(since));
            // What peers out of reach hold is not known: they may bring it.
            let all_known = peers
                .values()
                .filter(|p| p.gone_since.is_none() && p.node != *origin)
                .all(|p| p.up && p.last_ack >= heard_after);
            if all_known {
                // What a peer or this node has but holds back (it waits
                // for what it depends on) comes too.
                let held = peers
                    .values()
                    .filter(|p| p.gone_since.is_none())
                    .map(|p| mark_of(&p.held, origin).max(mark_of(&p.held_back, origin)))
                    .max()
                    .unwrap_or(0)
                    .max(chat.received_of(origin));
                mark.seq.min(held)
            } else {
                mark.seq
            }
        };
        chat.delivered_of(origin) >= need
    })
}

/// When this node last saw `origin` go: a connection to it was refused, or
/// it left the membership (or was replaced). `None` if neither.
fn seen_to_go(
    peers: &BTreeMap<String, Peer>,
    departed: &BTreeMap<(String, u64), (NodeId, Instant)>,
    origin: &NodeId,
) -> Option<Instant> {
    let refused = peers
        .get(&origin.id)
        .filter(|p| p.node == *origin)
        .and_then(|p| p.gone_since);
    let left = departed
        .get(&(origin.id.clone(), origin.generation))
        .map(|&(_, at)| at);
    refused.max(left)
}

/// Queues `queued`, or refuses it when `queue` is full.
fn queue_bounded(queue: &mut VecDeque<Queued>, queued: Queued, outputs: &mut Vec<Output>) {
    if queue.len() >= MAX_HANDOFF_QUEUE {
        outputs.push(Output::Reply {
            request: queued.request(),
            reply: Reply::Refused(Error::Unavailable(
                "too many requests waiting for this session's handoff".into(),
            )),
        });
    } else {
        queue.push_back(queued);
    }
}

/// Makes `last` hold what `marks` holds, in place when both name the same
/// origins in the same order (as acknowledgements from one node do, until
/// its peers change), so that nothing is allocated.
fn remember_marks(last: &mut Vec<SeqMark>, marks: &[SeqMark]) {
    let same_origins =
        last.len() == marks.len() && last.iter().zip(marks).all(|(l, m)| l.origin == m.origin);
    if same_origins {
        for (l, m) in last.iter_mut().zip(marks) {
            l.seq = m.seq;
        }
    } else {
        *last = marks.to_vec();
    }
}

/// The sequence number `marks` give for `origin` (0 if none).
fn mark_of(marks: &[SeqMark], origin: &NodeId) -> u64 {
    marks
        .iter()
        .find(|m| m.origin.as_ref() == Some(origin))
        .map_or(0, |m| m.seq)
}

/// The sequence number of `event` if `me` stamped it.
pub fn own_seq(event: &Event, me: &NodeId) -> Option<u64> {
    let id = event.id.as_ref()?;
    (id.origin.as_ref()? == me).then_some(id.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "00000000-0000-4000-8000-000000000001";
    const P2: &str = "00000000-0000-4000-8000-000000000002";

    fn node(id: &str) -> NodeId {
        NodeId {
            id: id.into(),
            generation: 1,
        }
    }

    fn core(id: &str, now: Instant) -> NodeCore {
        NodeCore::new(
            now,
            node(id),
            format!("{id}:1"),
            Timing::default(),
            CoreLimits::default(),
        )
    }

    /// A node `n1` with live peer `n2` (as after a membership merge).
    fn with_peer(now: Instant) -> NodeCore {
        let mut n1 = core("n1", now);
        let peer = member(node("n2"), "n2:1", MemberState::Alive, 1);
        n1.merge_members(now, &[peer]);
        n1.take_outputs();
        n1
    }

    /// A node `n1` with live peers `n2` and `n3`.
    fn with_peers(now: Instant) -> NodeCore {
        let mut n1 = core("n1", now);
        n1.merge_members(
            now,
            &[
                member(node("n2"), "n2:1", MemberState::Alive, 1),
                member(node("n3"), "n3:1", MemberState::Alive, 1),
            ],
        );
        n1
    }

    /// An acknowledgement saying the peer holds `held`, nothing held back.
    fn held_only(held: Vec<SeqMark>) -> RelayAck {
        RelayAck {
            held,
            held_back: Vec::new(),
        }
    }

    fn replies(outputs: &[Output]) -> Vec<(RequestId, &Reply)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Reply { request, reply } => Some((*request, reply)),
                _ => None,
            })
            .collect()
    }

    /// Ticks `n1` from `from` to `until`, its peer n2 sending a heartbeat
    /// before each tick (alive, but acknowledging nothing).
    fn run_with_heartbeats(n1: &mut NodeCore, from: Instant, until: Instant) {
        let mut t = from;
        while t < until {
            t += n1.timing().tick_interval();
            let heartbeat = RelayFrame {
                frame: Some(relay_frame::Frame::Heartbeat(Heartbeat::default())),
            };
            n1.on_relay(t, &node("n2"), heartbeat).unwrap();
            n1.tick(t);
        }
    }

    fn join(core: &mut NodeCore, name: &str) -> String {
        let joiner = Joiner {
            name,
            participant_id: format!("id-{name}"),
            token: format!("tok-{name}"),
            rejoin: None,
            recent: 0,
        };
        core.join(Instant::now(), 1, joiner, 0);
        core.take_outputs();
        format!("tok-{name}")
    }

    #[test]
    fn a_new_session_is_handed_the_latest_messages_as_earlier() {
        let now = Instant::now();
        let mut n1 = core("n1", now);
        let ann = join(&mut n1, "Ann");
        for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
            n1.publish(now, 10 + i as u64, &ann, text, 0, "");
        }
        n1.take_outputs();
        let welcome_of = |n1: &mut NodeCore, name: &str, recent: usize| {
            let joiner = Joiner {
                name,
                participant_id: format!("id-{name}"),
                token: format!("tok-{name}"),
                rejoin: None,
                recent,
            };
            n1.join(now, 20, joiner, 0);
            n1.take_outputs()
                .into_iter()
                .find_map(|o| match o {
                    Output::Opened(opened) => Some(opened.welcome),
                    _ => None,
                })
                .expect("the session opened")
        };
        let welcome = welcome_of(&mut n1, "Bob", 2);
        let texts: Vec<&str> = welcome.earlier.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts,
            ["two", "three"],
            "the latest, oldest first, messages only"
        );
        assert!(welcome.earlier.iter().all(|e| e.deps.is_empty()));
        assert!(welcome.earlier[0].lamport < welcome.earlier[1].lamport);
        assert!(welcome_of(&mut n1, "Carol", 0).earlier.is_empty());
        let many = welcome_of(&mut n1, "Dave", 10_000);
        assert_eq!(many.earlier.len(), 3, "all it holds, bounded by MAX_RECENT");
    }

    /// An event `origin` stamped as its `seq`-th at Lamport time `lamport`,
    /// about participant `name` (id `id-<name lowercased>`).
    fn stamped(
        (origin, seq, lamport): (&str, u64, u64),
        kind: EventKind,
        name: &str,
        text: &str,
    ) -> Event {
        Event {
            id: Some(crate::proto::EventId {
                origin: Some(node(origin)),
                seq,
            }),
            lamport,
            kind: kind as i32,
            participant_name: name.into(),
            participant_id: format!("id-{}", name.to_lowercase()),
            text: text.into(),
            ..Default::default()
        }
    }

    /// A relay frame carrying `events`.
    fn relay_batch(events: Vec<Event>) -> RelayFrame {
        RelayFrame {
            frame: Some(relay_frame::Frame::Batch(crate::proto::RelayBatch {
                events,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_relayed_event_with_an_absurd_lamport_is_dropped_and_the_clock_stays() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        join(&mut n1, "Ann");
        let before = n1.lamport();
        let event = |seq: u64, lamport: u64| {
            stamped(
                ("n2", seq, lamport),
                EventKind::Joined,
                &format!("Bob{seq}"),
                &format!("Participant Bob{seq} joined"),
            )
        };
        let batch = |e: Event| relay_batch(vec![e]);
        n1.on_relay(now, &node("n2"), batch(event(1, u64::MAX)))
            .unwrap();
        let out = n1.take_outputs();
        assert!(
            !out.iter().any(|o| matches!(o, Output::Deliver { .. })),
            "the absurd event was not delivered: {out:?}"
        );
        assert_eq!(n1.lamport(), before, "the clock did not jump");
        assert!(n1.participants().iter().all(|p| p.name != "Bob1"));
        // A plausible one is taken, and the clock follows it.
        n1.on_relay(now, &node("n2"), batch(event(1, 1 << 40)))
            .unwrap();
        assert_eq!(n1.lamport(), (1 << 40) + 1);
    }

    /// A member cannot get through other nodes what no participant could
    /// publish: each of these is dropped, and the honest event with the
    /// same id that follows is delivered.
    /// Bob's "joined", stamped by n2 at Lamport time 3.
    fn bob_joined_on_n2() -> Event {
        stamped(
            ("n2", 1, 3),
            EventKind::Joined,
            "Bob",
            "Participant Bob joined Chitty-Chat at Lamport time 3",
        )
    }

    #[test]
    fn relayed_events_no_honest_node_stamps_are_dropped() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        join(&mut n1, "Ann");
        let bob = |change: &dyn Fn(&mut Event)| {
            let mut e = bob_joined_on_n2();
            change(&mut e);
            relay_batch(vec![e])
        };
        let message = |text: &str| {
            let text = text.to_string();
            move |e: &mut Event| {
                e.kind = EventKind::Message as i32;
                e.text = text.clone();
            }
        };
        type Change = Box<dyn Fn(&mut Event)>;
        let hostile: Vec<(&str, Change)> = vec![
            ("escape sequence", Box::new(message("\x1b[2Jfake"))),
            ("129 characters", Box::new(message(&"x".repeat(129)))),
            ("blank", Box::new(message("   "))),
            (
                "control in a name",
                Box::new(|e: &mut Event| e.participant_name = "Al\rice".into()),
            ),
            (
                "empty name",
                Box::new(|e: &mut Event| e.participant_name.clear()),
            ),
            (
                "1 MiB publish id",
                Box::new(|e: &mut Event| e.publish_id = "a".repeat(1 << 20)),
            ),
            (
                "long participant id",
                Box::new(|e: &mut Event| e.participant_id = "i".repeat(65)),
            ),
            ("unknown kind", Box::new(|e: &mut Event| e.kind = 99)),
            (
                "two-line notice",
                Box::new(|e: &mut Event| e.text = "Participant Bob joined\nAlice: hi".into()),
            ),
        ];
        for (what, change) in &hostile {
            n1.on_relay(now, &node("n2"), bob(change.as_ref())).unwrap();
            let out = n1.take_outputs();
            assert!(
                !out.iter().any(|o| matches!(o, Output::Deliver { .. })),
                "{what}: delivered"
            );
        }
        assert!(n1.participants().iter().all(|p| p.name != "Bob"));
        n1.on_relay(now, &node("n2"), bob(&|_| {})).unwrap();
        assert!(n1.participants().iter().any(|p| p.name == "Bob"));
    }

    /// A peer's frame of its own events is acknowledged on its link only,
    /// also after this node stamped events of its own; one that releases
    /// a third node's events held back here is acknowledged on every
    /// inbound link, so that node hears at once.
    #[test]
    fn only_news_of_other_nodes_is_acknowledged_on_every_inbound_link() {
        let now = Instant::now();
        let mut n1 = with_peers(now);
        let (_, l2, _) = n1
            .on_hello(now, member(node("n2"), "n2:1", MemberState::Alive, 1))
            .unwrap();
        let (_, l3, _) = n1
            .on_hello(now, member(node("n3"), "n3:1", MemberState::Alive, 1))
            .unwrap();
        n1.take_outputs();
        let acks = |n1: &mut NodeCore| -> Vec<(u64, u64, u64)> {
            n1.take_outputs()
                .into_iter()
                .filter_map(|o| match o {
                    Output::Ack { link, ack } => Some((
                        link,
                        mark_of(&ack.held, &node("n2")),
                        mark_of(&ack.held, &node("n3")),
                    )),
                    _ => None,
                })
                .collect()
        };

        n1.on_relay(now, &node("n2"), relay_batch(vec![bob_joined_on_n2()]))
            .unwrap();
        assert_eq!(acks(&mut n1), [(l2, 1, 0)], "n2's own event: n2's link");

        // Cy's "joined" on n3 follows n2's second event, not here yet.
        let cy_joined = Event {
            deps: vec![SeqMark {
                origin: Some(node("n2")),
                seq: 2,
            }],
            ..stamped(
                ("n3", 1, 5),
                EventKind::Joined,
                "Cy",
                "Participant Cy joined Chitty-Chat at Lamport time 5",
            )
        };
        n1.on_relay(now, &node("n3"), relay_batch(vec![cy_joined]))
            .unwrap();
        assert_eq!(acks(&mut n1), [(l3, 1, 0)], "held back: n3's link only");

        let bob_says = stamped(("n2", 2, 4), EventKind::Message, "Bob", "hi");
        n1.on_relay(now, &node("n2"), relay_batch(vec![bob_says]))
            .unwrap();
        assert_eq!(
            acks(&mut n1),
            [(l2, 2, 1), (l3, 2, 1)],
            "n3's event released: every link"
        );

        // Nor do this node's own events (Ann's "joined"): a peer learns
        // what the node stamped from its events, not from its marks.
        join(&mut n1, "Ann");
        let heartbeat = RelayFrame {
            frame: Some(relay_frame::Frame::Heartbeat(Heartbeat::default())),
        };
        n1.on_relay(now, &node("n3"), heartbeat).unwrap();
        assert_eq!(acks(&mut n1), [(l3, 2, 1)]);
    }

    /// A member cannot put words in the mouth of a node this one hears
    /// straight from its own link, nor declare its events lost; once that
    /// node's link is silent (cut, crashed), another member's copy is taken,
    /// as forwarding and reconciliation need.
    #[test]
    fn another_nodes_events_are_taken_from_a_member_only_while_its_own_link_is_silent() {
        let now = Instant::now();
        let mut n1 = with_peers(now);
        join(&mut n1, "Ann");
        n1.on_hello(now, member(node("n2"), "n2:1", MemberState::Alive, 1))
            .unwrap();
        n1.on_hello(now, member(node("n3"), "n3:1", MemberState::Alive, 1))
            .unwrap();
        // n2 holds Ann's "joined", so what follows it may be shown.
        let ann_joined = SeqMark {
            origin: Some(node("n1")),
            seq: 1,
        };
        n1.link_up(now, &node("n2"), held_only(vec![ann_joined]));
        n1.link_up(now, &node("n3"), RelayAck::default());
        n1.take_outputs();
        // n3's events: Cy joins, then says something.
        let from_n3 = |seq: u64, text: &str| {
            let (kind, text) = if seq == 1 {
                (
                    EventKind::Joined,
                    "Participant Cy joined Chitty-Chat at Lamport time 4",
                )
            } else {
                (EventKind::Message, text)
            };
            stamped(("n3", seq, 3 + seq), kind, "Cy", text)
        };
        let delivered = |out: &[Output]| -> Vec<String> {
            out.iter()
                .filter_map(|o| match o {
                    Output::Deliver { event, .. } => Some(event.text.clone()),
                    _ => None,
                })
                .collect()
        };

        // n2 claims n3 said something, and that n3's first events are lost.
        n1.on_relay(
            now,
            &node("n2"),
            relay_batch(vec![from_n3(1, ""), from_n3(2, "forged")]),
        )
        .unwrap();
        let gap = RelayFrame {
            frame: Some(relay_frame::Frame::Skip(Gap {
                reason: "lost".into(),
                ranges: vec![crate::proto::GapRange {
                    origin: Some(node("n3")),
                    from_seq: 1,
                    to_seq: 4,
                }],
            })),
        };
        n1.on_relay(now, &node("n2"), gap).unwrap();
        let out = n1.take_outputs();
        assert!(delivered(&out).is_empty(), "{:?}", delivered(&out));
        assert!(!out.iter().any(|o| matches!(o, Output::Gap(_))));
        assert_eq!(n1.chat().delivered_of(&node("n3")), 0);

        // n3's own link carries its events.
        n1.on_relay(
            now,
            &node("n3"),
            relay_batch(vec![from_n3(1, ""), from_n3(2, "real")]),
        )
        .unwrap();
        assert_eq!(
            delivered(&n1.take_outputs()),
            [
                "Participant Cy joined Chitty-Chat at Lamport time 4",
                "real"
            ]
        );

        // n3 falls silent (its link cut): n2's copy of what n1 lacks is taken.
        let later = now + n1.timing.forward_after();
        n1.on_relay(
            later,
            &node("n2"),
            relay_batch(vec![from_n3(3, "forwarded")]),
        )
        .unwrap();
        assert_eq!(delivered(&n1.take_outputs()), ["forwarded"]);
    }

    /// With fixed generations (real nodes), a caller claiming to be a newer
    /// process of this node, or of a member this node hears, is refused and
    /// nobody steps aside; once the member is silent past the failure
    /// timeout, its newer process (restarted with its --node-id) is taken.
    #[test]
    fn a_newer_process_of_a_node_id_is_taken_only_once_the_earlier_is_not_heard() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        n1.never_reuse_ids();
        n1.on_hello(now, member(node("n2"), "n2:1", MemberState::Alive, 1))
            .unwrap();
        let newer = |id: &str| {
            member(
                NodeId {
                    id: id.into(),
                    generation: 2,
                },
                &format!("{id}:2"),
                MemberState::Alive,
                1,
            )
        };
        for claim in ["n1", "n2"] {
            assert!(
                matches!(n1.on_hello(now, newer(claim)), Err(MeshRefusal::IdInUse(_))),
                "hello claiming a newer {claim}"
            );
            assert!(
                matches!(n1.admit(now, newer(claim)), Err(MeshRefusal::IdInUse(_))),
                "ServerJoin claiming a newer {claim}"
            );
        }
        assert!(
            !n1.take_outputs()
                .iter()
                .any(|o| matches!(o, Output::Removed(_)))
        );
        assert!(n1.membership.is_alive(&node("n2")));

        // n2's process dies: silent past the failure timeout, it is not heard.
        let later = now + n1.timing.failure_timeout * 2;
        let mut t = now;
        while t < later {
            t += n1.timing.tick_interval();
            n1.tick(t);
        }
        n1.admit(later, newer("n2"))
            .expect("the restarted process is admitted");
        assert!(!n1.membership.is_alive(&node("n2")));
    }

    /// A name held by a participant of another node: this node cannot know
    /// whether that session lost its connection, so it says where the
    /// holder is and the longest it may take to be freed.
    #[test]
    fn a_name_held_on_another_node_says_where_and_the_longest_it_may_take() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        n1.on_hello(now, member(node("n2"), "n2:1", MemberState::Alive, 1))
            .unwrap();
        let bob_joined = bob_joined_on_n2();
        n1.on_relay(now, &node("n2"), relay_batch(vec![bob_joined]))
            .unwrap();
        n1.take_outputs();
        let joiner = Joiner {
            name: "Bob",
            participant_id: "id-bob-2".into(),
            token: "tok-bob-2".into(),
            rejoin: None,
            recent: 0,
        };
        n1.join(now, 9, joiner, 0);
        let out = n1.take_outputs();
        let refused = replies(&out);
        match refused.as_slice() {
            [(9, Reply::Refused(e @ Error::NameHeldElsewhere { node, secs, .. }))] => {
                assert_eq!(node, "n2:1");
                assert_eq!(*secs, n1.grace.as_secs());
                assert!(e.to_string().contains("on node n2:1"), "{e}");
            }
            other => panic!("expected NameHeldElsewhere, got {other:?}"),
        }
    }

    #[test]
    fn a_publish_is_answered_once_a_peer_holds_it_and_shown_only_then() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        let token = join(&mut n1, "Ann");
        n1.link_up(now, &node("n2"), RelayAck::default());
        n1.take_outputs();
        n1.publish(now, 7, &token, "hello", 0, P1);
        let out = n1.take_outputs();
        assert!(replies(&out).is_empty(), "answered before a peer holds it");
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Deliver { event, .. } if event.text == "hello")),
            "shown before a peer holds it"
        );
        assert!(out.iter().any(
            |o| matches!(o, Output::Relay { item: PeerItem::Event(e, _), .. } if e.text == "hello")
        ));

        let held = n1.chat().delivered();
        n1.on_ack(now, &node("n2"), held_only(held));
        let out = n1.take_outputs();
        assert!(matches!(replies(&out)[..], [(7, Reply::Published(_))]));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Deliver { event, .. } if event.text == "hello"))
        );
    }

    #[test]
    fn an_unacknowledged_publish_is_refused_at_its_deadline() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        let token = join(&mut n1, "Ann");
        n1.publish(now, 7, &token, "hello", 0, P1);
        n1.take_outputs();
        // The peer keeps its heartbeats coming but never acknowledges.
        let timeout = n1.timing().request_timeout();
        run_with_heartbeats(&mut n1, now, now + timeout);
        let out = n1.take_outputs();
        assert!(matches!(
            replies(&out)[..],
            [(7, Reply::Refused(Error::Unavailable(_)))]
        ));
    }

    #[test]
    fn a_silent_peer_is_unreachable_not_removed_and_a_stall_of_this_node_is_not_held_against_it() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        // This node did not run for ten seconds (SIGSTOP): its peer's
        // heartbeats may be waiting unread, so the peer is not blamed.
        n1.tick(now + Duration::from_secs(10));
        assert!(n1.is_reachable(&node("n2")));
        // Then the peer stays silent while this node runs.
        let mut t = now + Duration::from_secs(10);
        for _ in 0..30 {
            t += n1.timing().tick_interval();
            n1.tick(t);
        }
        assert!(!n1.is_reachable(&node("n2")));
        assert_eq!(n1.membership().peers().len(), 1, "still a member");
        let list = n1.server_list();
        assert_eq!(list.servers.len(), 1);
        assert_eq!(list.unreachable[0].node, Some(node("n2")));
        let out = n1.take_outputs();
        assert!(
            !out.iter().any(|o| matches!(o, Output::Disconnect(_))),
            "its link keeps trying"
        );
        // Its heartbeat counter grows again (heard through any member).
        n1.merge_members(t, &[member(node("n2"), "n2:1", MemberState::Alive, 9)]);
        assert!(n1.is_reachable(&node("n2")));
        assert!(n1.server_list().unreachable.is_empty());
    }

    #[test]
    fn a_resumed_participants_publish_waits_for_its_handoff() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        // Ann joined on n2; n1 learned of her and her token.
        let joined = {
            let mut n2 = core("n2", now);
            let joiner = Joiner {
                name: "Ann",
                participant_id: "id-Ann".into(),
                token: "tok-Ann".into(),
                rejoin: None,
                recent: 0,
            };
            n2.join(now, 1, joiner, 0);
            n2.chat().history().iter().cloned().collect::<Vec<_>>()
        };
        n1.on_hello(now, member(node("n2"), "n2:1", MemberState::Alive, 1))
            .unwrap();
        n1.on_relay(
            now,
            &node("n2"),
            RelayFrame {
                frame: Some(relay_frame::Frame::Batch(crate::proto::RelayBatch {
                    events: joined.iter().map(|e| Event::clone(e)).collect(),
                    grants: vec![crate::core::tokens::grant_of("id-Ann", "tok-Ann")],
                    late: false,
                })),
            },
        )
        .unwrap();
        n1.link_up(now, &node("n2"), RelayAck::default());
        n1.take_outputs();

        let resume = Resume {
            participant_id: "id-Ann".into(),
            session_token: "tok-Ann".into(),
            seen: n1.chat().delivered(),
            unanswered_at: Vec::new(),
            known_nodes: Vec::new(),
        };
        n1.resume(now, 1, resume, 5);
        let out = n1.take_outputs();
        assert!(
            out.iter().any(|o| matches!(o, Output::Opened(_))),
            "answered at once"
        );
        n1.publish(now, 2, "tok-Ann", "retry", 6, P1);
        let out = n1.take_outputs();
        assert!(
            !out.iter().any(|o| matches!(o, Output::Relay { item: PeerItem::Event(e, _), .. } if e.text == "retry")),
            "stamped before n2 acknowledged the move"
        );
        // n2 acknowledges the move (n1's events up to now) and has stamped
        // nothing more: the publish goes through.
        let mut held = n1.chat().delivered();
        held.retain(|m| m.origin.as_ref() != Some(&node("n2")));
        held.push(SeqMark {
            origin: Some(node("n2")),
            seq: 1,
        });
        n1.on_ack(now, &node("n2"), held_only(held));
        let out = n1.take_outputs();
        assert!(out.iter().any(
            |o| matches!(o, Output::Relay { item: PeerItem::Event(e, _), .. } if e.text == "retry")
        ));
    }

    #[test]
    fn a_publish_with_an_unknown_token_is_refused_while_a_handoff_is_pending() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        // Ann joined on n2 and resumes here: her handoff is pending.
        n1.on_hello(now, member(node("n2"), "n2:1", MemberState::Alive, 1))
            .unwrap();
        let joined = {
            let mut n2 = core("n2", now);
            join(&mut n2, "Ann");
            n2.chat().history().iter().cloned().collect::<Vec<_>>()
        };
        let batch = crate::proto::RelayBatch {
            events: joined.iter().map(|e| Event::clone(e)).collect(),
            grants: vec![crate::core::tokens::grant_of("id-Ann", "tok-Ann")],
            late: false,
        };
        let frame = RelayFrame {
            frame: Some(relay_frame::Frame::Batch(batch)),
        };
        n1.on_relay(now, &node("n2"), frame).unwrap();
        n1.link_up(now, &node("n2"), RelayAck::default());
        let resume = Resume {
            participant_id: "id-Ann".into(),
            session_token: "tok-Ann".into(),
            seen: n1.chat().delivered(),
            unanswered_at: Vec::new(),
            known_nodes: Vec::new(),
        };
        n1.resume(now, 1, resume, 5);
        n1.take_outputs();
        n1.publish(now, 2, "no-such-token", "hi", 6, P1);
        let out = n1.take_outputs();
        assert!(
            matches!(
                replies(&out)[..],
                [(2, Reply::Refused(Error::UnknownSession))]
            ),
            "{:?}",
            replies(&out)
        );
    }

    #[test]
    fn a_resume_of_a_participant_not_heard_of_waits_for_its_join() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        let resume = Resume {
            participant_id: "id-Bob".into(),
            session_token: "tok-Bob".into(),
            seen: Vec::new(),
            unanswered_at: Vec::new(),
            known_nodes: Vec::new(),
        };
        n1.resume(now, 1, resume, 5);
        assert!(replies(&n1.take_outputs()).is_empty(), "refused at once");
        let timeout = n1.timing().failure_timeout;
        run_with_heartbeats(&mut n1, now, now + timeout);
        let out = n1.take_outputs();
        assert!(matches!(
            replies(&out)[..],
            [(1, Reply::Refused(Error::UnknownSession))]
        ));
    }

    /// Ann (joined with `join`) resumes having seen n0's event 5, knowing
    /// of `known_nodes`.
    fn ann_saw_n0s_fifth(known_nodes: Vec<NodeId>) -> Resume {
        Resume {
            participant_id: "id-Ann".into(),
            session_token: "tok-Ann".into(),
            seen: vec![SeqMark {
                origin: Some(node("n0")),
                seq: 5,
            }],
            unanswered_at: Vec::new(),
            known_nodes,
        }
    }

    /// A node cut off while another joined the cluster has not heard of it;
    /// a participant that moves here from a node that had (and then
    /// stopped) may have seen events only that newcomer holds. Its
    /// publishes wait until this node hears of the newcomer, bounded.
    #[test]
    fn a_resumed_participants_publish_waits_for_a_node_it_knew_of_and_this_one_did_not() {
        let stamped = |out: &[Output], text: &str| {
            out.iter()
                .any(|o| matches!(o, Output::Deliver { event, .. } if event.text == text))
        };
        let now = Instant::now();
        let mut n1 = core("n1", now);
        join(&mut n1, "Ann");
        // Ann saw events of n0 that n1 never got; she knew of n0 and n3.
        n1.resume(now, 1, ann_saw_n0s_fifth(vec![node("n0"), node("n3")]), 5);
        assert!(
            n1.take_outputs()
                .iter()
                .any(|o| matches!(o, Output::Opened(_)))
        );
        n1.publish(now, 2, "tok-Ann", "after n0's", 6, P1);
        let mut t = now;
        let step = n1.timing().tick_interval();
        while t < now + n1.timing().failure_timeout {
            t += step;
            n1.tick(t);
        }
        assert!(
            !stamped(&n1.take_outputs(), "after n0's"),
            "stamped while nodes that may hold what Ann saw are unheard of"
        );
        // n1 hears that n0 and n3 have left: nobody can bring those events.
        n1.merge_members(
            t,
            &[
                member(node("n0"), "n0:1", MemberState::Left, 9),
                member(node("n3"), "n3:1", MemberState::Left, 9),
            ],
        );
        t += step;
        n1.tick(t);
        assert!(stamped(&n1.take_outputs(), "after n0's"));

        // Knowing of a node this one never hears of delays the publishes
        // for at most `unheard_node_wait`.
        let mut n1 = core("n1", now);
        join(&mut n1, "Ann");
        n1.resume(now, 1, ann_saw_n0s_fifth(vec![node("n9")]), 5);
        n1.publish(now, 2, "tok-Ann", "after n0's", 6, P1);
        let wait = n1.timing().unheard_node_wait();
        let (mut t, mut out) = (now, Vec::new());
        while t < now + wait - step {
            t += step;
            n1.tick(t);
            out.extend(n1.take_outputs());
        }
        assert!(
            !stamped(&out, "after n0's"),
            "stamped before the wait was over"
        );
        assert!(
            matches!(
                replies(&out)[..],
                [(2, Reply::Refused(Error::Unavailable(_)))]
            ),
            "refused, to be retried"
        );
        t += step * 2;
        n1.tick(t);
        n1.publish(t, 3, "tok-Ann", "after n0's", 7, P1);
        assert!(stamped(&n1.take_outputs(), "after n0's"));
    }

    #[test]
    fn a_resumed_participants_publish_waits_for_events_a_peer_holds_back() {
        let stamped = |out: &[Output], text: &str| {
            out.iter().any(
                |o| matches!(o, Output::Relay { item: PeerItem::Event(e, _), .. } if e.text == text),
            )
        };
        let now = Instant::now();
        let mut n1 = core("n1", now);
        n1.merge_members(
            now,
            &[
                member(node("n0"), "n0:1", MemberState::Alive, 1),
                member(node("n2"), "n2:1", MemberState::Alive, 1),
            ],
        );
        join(&mut n1, "Ann");
        n1.link_up(now, &node("n2"), RelayAck::default());
        // Ann saw n0's event 5, which n1 never got.
        n1.resume(now, 1, ann_saw_n0s_fifth(vec![node("n0"), node("n2")]), 5);
        n1.publish(now, 2, "tok-Ann", "after n0's", 6, P1);
        let moved = SeqMark {
            origin: Some(node("n1")),
            seq: n1.chat().last_seq(),
        };
        let ack = |held_back: u64| RelayAck {
            held: vec![moved.clone()],
            held_back: (held_back > 0)
                .then(|| SeqMark {
                    origin: Some(node("n0")),
                    seq: held_back,
                })
                .into_iter()
                .collect(),
        };
        // n0 is not running, and goes unheard for the failure timeout; n2,
        // which holds n1's events up to the move, keeps saying that it
        // holds n0's event 5 back.
        let step = n1.timing().tick_interval();
        n1.connect_refused(now + step, &node("n0"));
        let (mut t, mut out) = (now + step, Vec::new());
        while t < now + n1.timing().failure_timeout + step * 2 {
            t += step;
            let heartbeat = RelayFrame {
                frame: Some(relay_frame::Frame::Heartbeat(Heartbeat::default())),
            };
            n1.on_relay(t, &node("n2"), heartbeat).unwrap();
            n1.on_ack(t, &node("n2"), ack(5));
            n1.tick(t);
            out.extend(n1.take_outputs());
        }
        assert!(
            !stamped(&out, "after n0's"),
            "stamped before an event Ann saw, which n2 may still deliver and pass on"
        );
        // n2 holds nothing of n0's: what Ann saw of n0 can no longer come.
        n1.on_ack(t + step, &node("n2"), ack(0));
        assert!(stamped(&n1.take_outputs(), "after n0's"));
    }

    #[test]
    fn a_node_replaced_while_it_waits_answers_every_request() {
        let now = Instant::now();
        let mut n1 = with_peer(now);
        let token = join(&mut n1, "Ann");
        n1.publish(now, 7, &token, "hello", 0, P1);
        n1.stop_sessions();
        n1.flush(now, 8);
        assert!(replies(&n1.take_outputs()).is_empty());
        // A peer's old view says this incarnation is dead: refuted.
        let dead = member(node("n1"), "n1:1", MemberState::Dead, 2);
        n1.merge_members(now, &[dead]);
        assert!(
            !n1.take_outputs()
                .iter()
                .any(|o| matches!(o, Output::Removed(_)))
        );
        assert!(n1.membership().is_alive(&node("n1")));
        // A newer process of this node id joined: this one was replaced.
        let newer = NodeId {
            id: "n1".into(),
            generation: 2,
        };
        n1.merge_members(now, &[member(newer, "n1:2", MemberState::Alive, 1)]);
        let out = n1.take_outputs();
        assert!(out.iter().any(|o| matches!(o, Output::Removed(_))));
        let answered = replies(&out);
        assert!(
            answered
                .iter()
                .any(|r| matches!(r, (7, Reply::Refused(Error::Unavailable(_))))),
            "{answered:?}"
        );
        assert!(
            answered.iter().any(|r| matches!(r, (8, Reply::Flushed))),
            "{answered:?}"
        );
        n1.publish(now, 9, &token, "more", 0, P2);
        let out = n1.take_outputs();
        assert!(matches!(
            replies(&out)[..],
            [(9, Reply::Refused(Error::Unavailable(_)))]
        ));
    }
}
