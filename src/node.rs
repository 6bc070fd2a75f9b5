//! One running node: the executor of a [`NodeCore`].
//!
//! The core decides; this module carries its decisions out. It holds the
//! core behind one lock together with what the decisions act on: one bounded
//! outgoing queue per local session, one per peer link (the link tasks are in
//! [`crate::mesh`]), the acknowledgement channel of each inbound link, and the
//! callers waiting for an answer. Every call takes the lock, feeds the core
//! one input, and carries out the outputs it queued before letting go
//! (`Node::carry_out`). So every session receives events in the order the
//! core delivered them, and a session is registered before the events meant
//! for it are handed out.
//!
//! Carrying out never waits. What the node has for its own participants
//! goes into one [`DeliveryLog`] that every session's stream reads at its
//! own pace; a link's queue is pushed with `try_send`. Overflow policies:
//! * a session that falls further behind than the log keeps (it is not
//!   reading, or reads slower than the room talks) is cut off; the core
//!   ends it with "too slow" and announces it as left. Nobody else waits
//!   for it, and it costs the others nothing while it falls behind;
//! * a peer link whose queue is full is reported to the core, which has the
//!   link drop its queue and re-send from history; a peer so far behind that
//!   history no longer holds what it misses is told of the gap.
//!
//! A session ends when its Join stream is dropped: by the client leaving, by
//! the client's connection breaking (a killed process), or by the core. A
//! [`SessionStream`] carries a guard that reports the drop to the node.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::Status;
use tracing::{debug, error, info};

use crate::core::FastMap;
use crate::core::chat::CoreLimits;
pub use crate::core::node::{DEFAULT_FAILURE_TIMEOUT, DEFAULT_HEARTBEAT};
use crate::core::node::{EndReason, NodeCore, Opened, Output, PeerItem, Reply, RequestId, Timing};
use crate::delivery_log::{Audience, DeliveryLog, LogLimits, Read, ReaderId};
use crate::diagram::{self, Call, Dir, Record};
use crate::error::{Error, Result, end_status};
use crate::proto::{
    Event, Gap, JoinFrame, NodeId, Participant, PublishReply, Resume, ServerList, SessionGrant,
    join_frame,
};
use crate::rate::{PublishRate, RateLimit};
use crate::wire::{self, EncodedFrame, Wired};

/// Default of `--session-queue`: how many events (and other items) the node
/// keeps for its participants, so how far behind one may fall before it is
/// cut off as too slow.
pub const DEFAULT_SESSION_QUEUE: usize = 8192;
/// Default of `--session-queue-bytes`: the same in bytes, each item counted
/// at its encoded size plus its slot. Events of the usual size reach
/// [`DEFAULT_SESSION_QUEUE`] first (8,192 events of a 64-byte message are
/// about 2.6 MiB); events of the largest size, this.
pub const DEFAULT_SESSION_QUEUE_BYTES: usize = 4 << 20;
/// How long a `--bootstrap` node tries its boot members before it starts a
/// new cluster, by default: short beside [`DEFAULT_BOOT_TIMEOUT`], so the
/// other nodes of a set, which wait that long, are still trying when it
/// starts.
pub const DEFAULT_BOOTSTRAP_AFTER: Duration = Duration::from_secs(5);

/// How long a joining node keeps trying its boot members by default: nodes
/// started together (compose, systemd) have that long to come up.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default capacity of one peer link's outgoing queue, in events.
pub const DEFAULT_PEER_QUEUE: usize = 65_536;
/// Event bytes a node copies out of its sessions' queues for writing, at
/// most, shared evenly among the open sessions (see [`SessionStream::limit`]).
const COPY_BUDGET: usize = 16 << 20;
/// However many sessions there are, a frame may hold this much...
const MIN_FRAME_BYTES: usize = 4 * 1024;
/// ...and however few, no more than this.
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Event bytes in one frame of a replay after a failover.
const REPLAY_FRAME_BYTES: usize = 64 * 1024;

/// After this many sessions ended or were cut off, the node gives the
/// memory freed back to the system (see [`run_memory_return`])...
const RETURN_MEMORY_AFTER_SESSIONS: usize = 64;
/// ...at most once per this long, once the burst is over.
const RETURN_MEMORY_EVERY: Duration = Duration::from_secs(1);

/// At most this many participants' names per node in a `Status` reply, so
/// that it stays well under a client's maximum message size.
pub const STATUS_NAMES_PER_NODE: usize = 100;

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's identity (id and generation).
    pub node: NodeId,
    /// The address clients and peers reach this node at.
    pub advertise: String,
    /// Items the node keeps for its sessions, all of them together: a
    /// session further behind is cut off (see [`crate::delivery_log`]).
    pub session_queue: usize,
    /// The same in bytes.
    pub session_queue_bytes: usize,
    /// Capacity of each peer link's outgoing queue (events).
    pub peer_queue: usize,
    /// Members to join the cluster through (any one will do); none starts
    /// a new cluster.
    pub boot: Vec<String>,
    /// How long to keep trying the boot members before giving up.
    pub boot_timeout: Duration,
    /// When no boot member admits this node within `bootstrap_after`, start
    /// a new cluster instead of giving up (`--bootstrap`).
    pub bootstrap: bool,
    /// With `bootstrap`: how long to try the boot members first.
    pub bootstrap_after: Duration,
    /// Shared secret every mesh call must carry; `None` leaves the mesh open.
    pub cluster_secret: Option<String>,
    /// TLS for participants and the mesh (the node's certificate and key,
    /// and the cluster's CA); `None`: plaintext.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Interval between heartbeats on peer links.
    pub heartbeat: Duration,
    /// Silence after which a peer is declared failed.
    pub failure_timeout: Duration,
    pub limits: CoreLimits,
    /// What the server admits of TCP connections.
    pub connections: crate::connections::ConnectionLimits,
    /// How fast one participant may publish; `None`: no limit.
    pub publish_rate: Option<RateLimit>,
    /// Test-only fault: delay every batch of live events sent to the peer at
    /// this address by this long (to show replies never overtake originals).
    pub fault_link_delay: Option<(String, Duration)>,
    /// Where to serve the Prometheus metrics (`--metrics-listen`), bound
    /// already; `None`: nowhere.
    pub metrics_listener: Option<Arc<std::net::TcpListener>>,
}

impl NodeConfig {
    /// A configuration with a fresh node id and default limits.
    pub fn new(advertise: impl Into<String>) -> Self {
        Self {
            node: NodeId {
                // 16 hex digits of a random UUID: unique enough among the
                // nodes of a cluster (the generation tells incarnations
                // apart), and an event names its origin in its id and in
                // every dependency, so each character is sent once per node
                // per recipient.
                id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
                generation: now_millis(),
            },
            advertise: advertise.into(),
            session_queue: DEFAULT_SESSION_QUEUE,
            session_queue_bytes: DEFAULT_SESSION_QUEUE_BYTES,
            peer_queue: DEFAULT_PEER_QUEUE,
            boot: Vec::new(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            bootstrap: false,
            bootstrap_after: DEFAULT_BOOTSTRAP_AFTER,
            cluster_secret: None,
            tls: None,
            heartbeat: DEFAULT_HEARTBEAT,
            failure_timeout: DEFAULT_FAILURE_TIMEOUT,
            limits: CoreLimits::default(),
            connections: Default::default(),
            publish_rate: Some(RateLimit::default()),
            fault_link_delay: None,
            metrics_listener: None,
        }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            heartbeat: self.heartbeat,
            failure_timeout: self.failure_timeout,
        }
    }
}

/// Milliseconds since the Unix epoch: a node's generation, so a restarted node
/// gets a higher one than its previous incarnation.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the node has for its sessions, in its [`DeliveryLog`].
#[derive(Debug, Clone)]
enum Outbound {
    /// An event encoded once per node ([`crate::wire::participant_field`]).
    Event(Bytes),
    // Rare and larger: behind an `Arc`, so that a slot stays the size of
    // `Bytes` and a reader's copy is a reference.
    Servers(Arc<ServerList>),
    Gap(Arc<Gap>),
    /// Whether the events that follow arrive late.
    Late(bool),
    Room(Arc<crate::proto::Room>),
}

impl Outbound {
    /// Its encoded size, what the log counts it at (with its slot).
    fn size(&self) -> usize {
        use prost::Message as _;
        match self {
            Outbound::Event(event) => event.len(),
            Outbound::Servers(list) => list.encoded_len(),
            Outbound::Gap(gap) => gap.encoded_len(),
            Outbound::Late(_) => 0,
            Outbound::Room(room) => room.encoded_len(),
        }
    }
}

/// A local session, as the node knows it.
#[derive(Debug)]
struct Sink {
    session: u64,
    /// The first gate index this session receives: events that entered the
    /// gate before it opened are not its to see (or were replayed to it).
    from_gate: u64,
    /// Its position in the node's delivery log.
    reader: ReaderId,
}

/// What a peer link's queue carries, in order.
#[derive(Debug)]
pub(crate) enum LinkItem {
    Event(Wired, Option<SessionGrant>),
    Heartbeat(crate::proto::Heartbeat),
    /// Events of other origins the peer lacks (see `Output::Forward`).
    Forward(Box<crate::core::node::Replay>),
}

/// The node's end of an outgoing peer link (the task is in [`crate::mesh`]).
#[derive(Debug)]
pub(crate) struct LinkHandle {
    pub(crate) peer: NodeId,
    pub(crate) tx: mpsc::Sender<LinkItem>,
    /// Set when the link must re-send from history (its queue overflowed, or
    /// a node died and survivors reconcile what each holds).
    pub(crate) resync: Arc<AtomicBool>,
    /// Set when the connection must be dropped and dialled again (it went
    /// silent: a cut network closes nothing).
    pub(crate) restart: Arc<AtomicBool>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) task: JoinHandle<()>,
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer a caller waits for.
#[derive(Debug)]
pub(crate) enum Answer {
    Session(SessionStream),
    Reply(Reply),
}

/// The core and what its outputs act on, behind the node's one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) core: NodeCore,
    sinks: HashMap<String, Sink>,
    pub(crate) links: HashMap<String, LinkHandle>,
    /// The acknowledgement channel of each inbound relay link, by its number.
    pub(crate) ack_watches: HashMap<u64, crate::mesh::AckSender>,
    /// Callers waiting for the answer to a request.
    replies: FastMap<RequestId, oneshot::Sender<Answer>>,
    next_request: RequestId,
    /// The core's outputs being carried out (kept to reuse its allocation).
    outputs: Vec<Output>,
    /// The publish rate limit's buckets, if there is a limit.
    publish_rate: Option<PublishRate>,
}

impl State {
    /// A fresh request id and the receiver of its answer.
    pub(crate) fn request(&mut self) -> (RequestId, oneshot::Receiver<Answer>) {
        let id = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        self.replies.insert(id, tx);
        (id, rx)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    state: Mutex<State>,
    /// What the node has for its sessions, read by each at its own pace.
    /// Appended to under `state`'s lock, read without it.
    log: Arc<DeliveryLog<Outbound>>,
    /// Fires (true) when the node shuts down; every task watches it.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set when the cluster removed this node; the server exits with it.
    pub(crate) fatal: watch::Sender<Option<String>>,
    /// Wakes the gossip task to push the membership to every peer.
    pub(crate) gossip: Notify,
    /// Join streams not yet dropped (each holds a `SessionGuard`).
    open_streams: Arc<watch::Sender<usize>>,
    /// Stream-serving tasks: inbound relay links and publish streams.
    inbound: Mutex<JoinSet<()>>,
    /// What `--metrics-listen` serves.
    metrics: Arc<crate::metrics::Metrics>,
    /// Sessions ended or cut off since memory was last given back.
    sessions_gone: AtomicUsize,
    /// Wakes [`run_memory_return`].
    memory_freed: Notify,
}

/// A cheap, cloneable handle to a node.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) shared: Arc<Shared>,
}

impl Node {
    pub fn new(config: NodeConfig) -> Self {
        let publish_rate = config.publish_rate.map(PublishRate::new);
        let mut core = NodeCore::new(
            Instant::now(),
            config.node.clone(),
            config.advertise.clone(),
            config.timing(),
            config.limits.clone(),
        );
        // Each process draws a fresh id (NodeConfig::new).
        core.never_reuse_ids();
        let log = Arc::new(DeliveryLog::new(LogLimits {
            items: config.session_queue,
            bytes: config.session_queue_bytes,
        }));
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    core,
                    sinks: HashMap::new(),
                    links: HashMap::new(),
                    ack_watches: HashMap::new(),
                    replies: FastMap::default(),
                    next_request: 1,
                    outputs: Vec::new(),
                    publish_rate,
                }),
                log,
                shutdown: watch::channel(false).0,
                fatal: watch::channel(None).0,
                gossip: Notify::new(),
                inbound: Mutex::new(JoinSet::new()),
                open_streams: Arc::new(watch::channel(0).0),
                metrics: Arc::new(crate::metrics::Metrics::new()),
                sessions_gone: AtomicUsize::new(0),
                memory_freed: Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    /// The cluster as this node sees it (`Status`): participants' names are
    /// listed up to [`STATUS_NAMES_PER_NODE`] per node, the rest counted.
    pub fn status(&self) -> crate::proto::StatusReply {
        use crate::proto::NodeStatus;
        let snapshot = self.metrics_snapshot(Instant::now());
        let (list, mut by_home) = {
            let state = self.lock();
            (
                state.core.server_list(),
                state.core.names_by_home(STATUS_NAMES_PER_NODE),
            )
        };
        let me = self.id().clone();
        let mut names_on = |node: &NodeId| -> (Vec<String>, u32) {
            let (names, more) = by_home
                .remove(&(node.id.clone(), node.generation))
                .unwrap_or_default();
            (names, u32::try_from(more).unwrap_or(u32::MAX))
        };
        let (participants, more_participants) = names_on(&me);
        let mut nodes = vec![NodeStatus {
            node: Some(me.clone()),
            addr: self.config().advertise.clone(),
            state: "self".into(),
            participants,
            more_participants,
            ..Default::default()
        }];
        let reachable = list.servers.iter().map(|s| (s, "reachable"));
        let unreachable = list.unreachable.iter().map(|s| (s, "unreachable"));
        for (server, state) in reachable.chain(unreachable) {
            let Some(node) = &server.node else { continue };
            if *node == me {
                continue;
            }
            let peer = snapshot.peers.iter().find(|p| p.report.node == *node);
            let (participants, more_participants) = names_on(node);
            nodes.push(NodeStatus {
                node: Some(node.clone()),
                addr: server.addr.clone(),
                state: state.into(),
                link_up: peer.is_some_and(|p| p.report.up),
                lag: peer.map_or(0, |p| p.report.lag),
                last_heard_ms: peer.map_or(0, |p| p.report.last_heard.as_millis() as u64),
                participants,
                more_participants,
            });
        }
        crate::proto::StatusReply {
            node: Some(me),
            addr: self.config().advertise.clone(),
            lamport: snapshot.lamport,
            nodes,
            sessions: snapshot.sessions as u32,
        }
    }

    /// What the metrics' gauges and `Status` show, read at once.
    pub fn metrics_snapshot(&self, now: Instant) -> crate::metrics::Snapshot {
        let state = self.lock();
        let queued = self.shared.log.held();
        let list = state.core.server_list();
        let queued_on = |tx: &mpsc::Sender<LinkItem>| tx.max_capacity() - tx.capacity();
        let peers = state
            .core
            .peer_reports(now)
            .into_iter()
            .map(|report| crate::metrics::PeerSnapshot {
                queued: state
                    .links
                    .get(&report.node.id)
                    .filter(|l| l.peer == report.node)
                    .map_or(0, |l| queued_on(&l.tx)),
                report,
            })
            .collect();
        crate::metrics::Snapshot {
            participants: state.core.participants().len(),
            sessions: state.sinks.len(),
            lamport: state.core.lamport(),
            reachable: list.servers.len(),
            unreachable: list.unreachable.len(),
            peers,
            session_queue: queued.0,
            session_queue_bytes: queued.1,
            held: state.core.chat().held(),
            history: state.core.chat().history().len(),
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.shared.config.node
    }

    /// The node's state. A panic while it was held left it half-updated:
    /// serving from it could show participants anything, so the node stops
    /// (the process exits with a clear message) instead.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        match self.shared.state.lock() {
            Ok(state) => state,
            Err(_) => {
                error!("a panic left this node's state half-updated; stopping the node");
                eprintln!("chitty: a panic left this node's state half-updated; stopping the node");
                crate::log_writer::flush();
                std::process::exit(70);
            }
        }
    }

    /// Feeds the core one input (`step`) and carries out what follows,
    /// under the lock.
    pub(crate) fn step<T>(&self, step: impl FnOnce(&mut NodeCore, Instant) -> T) -> T {
        let mut state = self.lock();
        let result = step(&mut state.core, Instant::now());
        self.carry_out(&mut state);
        result
    }

    /// Feeds the core a request and waits for its answer.
    async fn ask(&self, step: impl FnOnce(&mut NodeCore, Instant, RequestId)) -> Result<Answer> {
        self.ask_now(step)
            .await
            .map_err(|_| Error::Unavailable("node is shutting down".into()))
    }

    /// Feeds the core a request; the receiver has its answer (at once, for
    /// what the core answers at once).
    pub(crate) fn ask_now(
        &self,
        step: impl FnOnce(&mut NodeCore, Instant, RequestId),
    ) -> oneshot::Receiver<Answer> {
        let mut state = self.lock();
        let (id, rx) = state.request();
        step(&mut state.core, Instant::now(), id);
        self.carry_out(&mut state);
        rx
    }

    /// The node's Lamport clock.
    pub fn lamport(&self) -> u64 {
        self.lock().core.lamport()
    }

    /// Opens a session: registers its queue, then stamps and delivers the
    /// "joined" event, so the joiner receives its own join.
    pub fn join(
        &self,
        name: &str,
        lamport: u64,
        rejoin: Option<crate::proto::Rejoin>,
        recent: usize,
    ) -> Result<SessionStream> {
        let participant_id = uuid::Uuid::new_v4().to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let joiner = crate::core::node::Joiner {
            name,
            participant_id,
            token,
            rejoin,
            recent,
        };
        let mut rx = self.ask_now(|core, now, id| core.join(now, id, joiner, lamport));
        session_answer(rx.try_recv().ok())
    }

    /// Reattaches a participant whose session ended without a Leave (its
    /// node failed, or its connection broke), on proof of ownership. Replays
    /// what it missed after `resume.seen`, then continues live. Announces
    /// nothing to participants.
    pub async fn resume(&self, resume: Resume, lamport: u64) -> Result<SessionStream> {
        let answer = self
            .ask(|core, now, id| core.resume(now, id, resume, lamport))
            .await;
        session_answer(answer.ok())
    }

    /// Publishes; the returned future resolves once another node holds the
    /// event (so an acknowledged publish survives this node's crash), at
    /// once when the node has no peers.
    pub fn publish(
        &self,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) -> impl Future<Output = Result<PublishReply>> + Send + use<> {
        self.publish_by(Call::Publish, token, text, lamport, publish_id)
    }

    /// [`Node::publish`] for a message that came by `call` (a Publish or a
    /// message of a PublishStream), which the node's log records name.
    pub fn publish_by(
        &self,
        call: Call,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) -> impl Future<Output = Result<PublishReply>> + Send + use<> {
        let mut state = self.lock();
        let outcome = self.publish_locked(&mut state, call, token, text, lamport, publish_id);
        self.carry_out(&mut state);
        outcome
    }

    /// Publishes `requests` in order under one hold of the node's lock, and
    /// carries out what follows once: their events reach each peer link
    /// together and leave as one batch, and the sessions are woken once.
    /// One outcome per request, in order.
    pub fn publish_all(
        &self,
        call: Call,
        requests: &[crate::proto::PublishRequest],
    ) -> Vec<impl Future<Output = Result<PublishReply>> + Send + use<>> {
        let mut state = self.lock();
        let outcomes = requests
            .iter()
            .map(|req| {
                self.publish_locked(
                    &mut state,
                    call,
                    &req.session_token,
                    &req.text,
                    req.lamport,
                    &req.publish_id,
                )
            })
            .collect();
        self.carry_out(&mut state);
        outcomes
    }

    /// Has the core publish one message, or refuses it over the rate limit;
    /// the caller carries out what follows.
    fn publish_locked(
        &self,
        state: &mut State,
        call: Call,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) -> impl Future<Output = Result<PublishReply>> + Send + use<> {
        let now = Instant::now();
        // Over the rate limit: refused before the core sees it (the clock
        // does not move, nothing is stamped).
        let limited = match &mut state.publish_rate {
            Some(rate) if state.core.chat().is_local_session(token) => {
                (!rate.take(token, now)).then(|| Error::RateLimited(rate.limit().refusal()))
            }
            _ => None,
        };
        let answer = match limited {
            Some(refused) => Err(refused),
            None => {
                let (id, rx) = state.request();
                state
                    .core
                    .publish_by(call, now, id, token, text, lamport, publish_id);
                Ok(rx)
            }
        };
        let metrics = self.shared.metrics.clone();
        async move {
            match answer?.await {
                Ok(Answer::Reply(Reply::Published(reply))) => {
                    metrics.publish_seconds.observe(now.elapsed().as_secs_f64());
                    Ok(reply)
                }
                Ok(Answer::Reply(Reply::Refused(e))) => Err(e.into()),
                _ => Err(Error::Unavailable("node is shutting down".into())),
            }
        }
    }

    /// Ends the session owning `token`: delivers "left" to the others and
    /// ends the leaver's stream once it has drained.
    pub fn leave(&self, token: &str, lamport: u64) -> Result<u64> {
        let mut rx = self.ask_now(|core, now, id| core.leave(now, id, token, lamport));
        match rx.try_recv() {
            Ok(Answer::Reply(Reply::Left(time))) => Ok(time),
            Ok(Answer::Reply(Reply::Refused(e))) => Err(e.into()),
            _ => Err(Error::Unavailable("node is shutting down".into())),
        }
    }

    pub fn participants(&self) -> Vec<Participant> {
        self.lock().core.participants()
    }

    /// The live nodes of the cluster.
    pub fn server_list(&self) -> ServerList {
        self.lock().core.server_list()
    }

    /// Waits (at most `limit`) until every Join stream has ended, so their
    /// final status is on its way before connections are shut down.
    pub async fn streams_closed(&self, limit: Duration) {
        let mut open = self.shared.open_streams.subscribe();
        let _ = tokio::time::timeout(limit, open.wait_for(|&n| n == 0)).await;
    }

    /// Ends every session with `UNAVAILABLE` and refuses new ones, so that a
    /// graceful server shutdown is not held open by endless Join streams.
    /// Callers still waiting for an answer get `UNAVAILABLE` too.
    pub fn close_sessions(&self) {
        let mut state = self.lock();
        state.core.stop_sessions();
        for (_, sink) in state.sinks.drain() {
            self.shared
                .log
                .end(sink.reader, Some(EndReason::ShuttingDown), true);
        }
        state.replies.clear();
    }

    /// Carries out the core's outputs, in order, until it has none left
    /// (sessions cut off while items are handed out are reported back,
    /// which queues more), then wakes the sessions waiting for them.
    pub(crate) fn carry_out(&self, state: &mut State) {
        let mut outputs = std::mem::take(&mut state.outputs);
        let log = &*self.shared.log;
        let mut cut: Vec<ReaderId> = Vec::new();
        let mut handed = false;
        loop {
            state.core.drain_outputs_into(&mut outputs);
            if outputs.is_empty() {
                break;
            }
            // Encoded once here, however many peers get it.
            let mut encoded: Option<Wired> = None;
            for output in outputs.drain(..) {
                match output {
                    Output::Deliver { gate, event } => {
                        deliver(state, log, gate, &event, &mut cut);
                        handed = true;
                    }
                    Output::LateRun { gate, late } => {
                        hand_out(
                            log,
                            Audience::FromGate(gate),
                            Outbound::Late(late),
                            &mut cut,
                        );
                        handed = true;
                    }
                    Output::Reconnect(peer) => {
                        if let Some(link) = state.links.get(&peer.id).filter(|l| l.peer == peer) {
                            link.restart.store(true, Ordering::Release);
                            link.wake.notify_one();
                        }
                    }
                    Output::Forward { peer, replay } => {
                        let Some(link) = state.links.get(&peer.id).filter(|l| l.peer == *peer)
                        else {
                            continue;
                        };
                        if link
                            .tx
                            .try_send(LinkItem::Forward(Box::new(replay)))
                            .is_err()
                        {
                            state.core.link_overflowed(&peer);
                        }
                    }
                    Output::Opened(opened) => self.open_session(state, *opened),
                    Output::EndSession {
                        participant_id,
                        reason,
                    } => {
                        if let Some(sink) = state.sinks.remove(&participant_id) {
                            // What was handed out before goes first, except
                            // to one cut off as too slow, which is ended at
                            // once (what it has not read is not kept for it).
                            let drain = !matches!(reason, EndReason::TooSlow { .. });
                            let reason = (reason != EndReason::Left).then_some(reason);
                            log.end(sink.reader, reason, drain);
                        }
                    }
                    Output::Servers(list) => {
                        self.shared.metrics.membership_changes.inc();
                        hand_out(
                            log,
                            Audience::All,
                            Outbound::Servers(Arc::new(list)),
                            &mut cut,
                        );
                        handed = true;
                    }
                    Output::Room {
                        participant_id,
                        participants,
                    } => {
                        if let Some(sink) = state.sinks.get(&participant_id) {
                            let room = crate::proto::Room { participants };
                            let to = Audience::Reader(sink.reader);
                            hand_out(log, to, Outbound::Room(Arc::new(room)), &mut cut);
                            handed = true;
                        }
                    }
                    Output::Gap(gap) => {
                        hand_out(log, Audience::All, Outbound::Gap(Arc::new(gap)), &mut cut);
                        handed = true;
                    }
                    Output::Reply { request, reply } => {
                        if let Some(tx) = state.replies.remove(&request) {
                            let _ = tx.send(Answer::Reply(reply));
                        }
                    }
                    Output::Relay { peer, item } => {
                        let Some(link) = state.links.get(&peer.id).filter(|l| l.peer == *peer)
                        else {
                            continue;
                        };
                        let item = match item {
                            PeerItem::Event(event, grant) => {
                                self.shared.metrics.events_out.inc();
                                let wired = match &encoded {
                                    Some(w) if Arc::ptr_eq(&w.event, &event) => w.clone(),
                                    _ => encoded.insert(Wired::for_peers(event)).clone(),
                                };
                                LinkItem::Event(wired, grant)
                            }
                            PeerItem::Heartbeat(hb) => LinkItem::Heartbeat(hb),
                        };
                        if link.tx.try_send(item).is_err() {
                            // History still holds it: the link re-sends.
                            state.core.link_overflowed(&peer);
                        }
                    }
                    Output::Resync { peer } => {
                        if let Some(link) = state.links.get(&peer.id).filter(|l| l.peer == peer) {
                            link.resync.store(true, Ordering::Release);
                            link.wake.notify_one();
                        }
                    }
                    Output::Connect(member) => {
                        let Some(node) = member.node.clone() else {
                            continue;
                        };
                        let link = crate::mesh::spawn_link(self, member);
                        state.links.insert(node.id, link);
                    }
                    Output::Disconnect(node) => {
                        if state.links.get(&node.id).is_some_and(|l| l.peer == node) {
                            state.links.remove(&node.id);
                        }
                    }
                    Output::Gossip { to: None } => self.shared.gossip.notify_one(),
                    Output::Gossip { to: Some(peer) } => {
                        let members = state.core.membership().snapshot();
                        self.spawn_owned(crate::mesh::push_members(
                            self.clone(),
                            members,
                            vec![peer],
                        ));
                    }
                    Output::Ack { link, ack } => {
                        if diagram::debug_enabled() {
                            let marks = diagram::marks(&ack.held);
                            diagram::rpc_debug(
                                state.core.who(),
                                Record::new(Call::RelayAck, Dir::Sent)
                                    .peer(state.core.inbound_peer(link), None)
                                    .held(&marks),
                            );
                        }
                        if let Some(acks) = state.ack_watches.get(&link) {
                            acks.send_replace(Ok(ack));
                        }
                    }
                    Output::Removed(reason) => {
                        self.shared.fatal.send_replace(Some(reason));
                    }
                }
            }
            if !cut.is_empty() {
                self.cut_off(state, &mut cut);
            }
        }
        state.outputs = outputs;
        if handed {
            log.wake_readers();
        }
    }

    /// Reports the sessions the log cut off to the core, which ends them
    /// and announces them as left.
    fn cut_off(&self, state: &mut State, cut: &mut Vec<ReaderId>) {
        let by_reader: FastMap<ReaderId, &String> = state
            .sinks
            .iter()
            .map(|(pid, sink)| (sink.reader, pid))
            .collect();
        let pids: Vec<String> = cut
            .drain(..)
            .filter_map(|reader| by_reader.get(&reader).map(|pid| (*pid).clone()))
            .collect();
        let LogLimits { items, bytes } = self.shared.log.limits();
        self.sessions_gone(pids.len());
        for pid in pids {
            self.shared
                .metrics
                .sessions_cut
                .with_label_values(&["too_slow"])
                .inc();
            state.core.session_overflowed(&pid, items, bytes);
        }
    }

    /// Registers a session's queue and answers its Join with the stream: the
    /// `Welcome`, then the replay, then live events.
    fn open_session(&self, state: &mut State, opened: Opened) {
        let Opened {
            request,
            participant_id,
            session,
            welcome,
            replay,
            gaps,
            from_gate,
        } = opened;
        let reader = self.shared.log.open(from_gate);
        let mut pending = VecDeque::new();
        pending.push_back(EncodedFrame::message(&JoinFrame {
            frame: Some(join_frame::Frame::Welcome(welcome)),
        }));
        if !gaps.is_empty() {
            pending.push_back(EncodedFrame::message(&JoinFrame {
                frame: Some(join_frame::Frame::Gap(Gap {
                    reason: "some events are older than this node's history and cannot be replayed"
                        .into(),
                    ranges: gaps,
                })),
            }));
        }
        let mut replay = replay.iter().map(|e| wire::participant_field(e)).peekable();
        while replay.peek().is_some() {
            let mut size = 0;
            let frame =
                std::iter::from_fn(|| replay.next_if(|e| fits(&mut size, e, REPLAY_FRAME_BYTES)))
                    .collect();
            pending.push_back(EncodedFrame::events(frame));
        }
        self.shared.open_streams.send_modify(|n| *n += 1);
        let stream = SessionStream {
            pending,
            reader: LogReader {
                log: self.shared.log.clone(),
                id: reader,
            },
            taken: Vec::new(),
            open: self.shared.open_streams.clone(),
            deliveries: self.shared.metrics.deliveries.clone(),
            done: false,
            _guard: SessionGuard {
                node: Arc::downgrade(&self.shared),
                participant_id: participant_id.clone(),
                session,
            },
        };
        let Some(reply) = state.replies.remove(&request) else {
            return self.abandon(state, stream);
        };
        state.sinks.insert(
            participant_id,
            Sink {
                session,
                from_gate,
                reader,
            },
        );
        if let Err(Answer::Session(stream)) = reply.send(Answer::Session(stream)) {
            // The caller gave up waiting.
            self.abandon(state, stream);
        }
    }

    /// Drops a session stream nobody took, under the lock: its guard is
    /// disarmed (it would take the lock) and the core told here instead.
    fn abandon(&self, state: &mut State, mut stream: SessionStream) {
        let guard = std::mem::replace(&mut stream._guard.node, Weak::new());
        drop(guard);
        self.shared.open_streams.send_modify(|n| *n -= 1);
        let pid = stream._guard.participant_id.clone();
        let session = stream._guard.session;
        drop(stream);
        if state.sinks.get(&pid).is_some_and(|s| s.session == session) {
            state.sinks.remove(&pid);
        }
        state.core.session_dropped(Instant::now(), &pid, session);
    }

    /// Runs a stream-serving task (an inbound relay link, a publish stream)
    /// that the node owns: it must end when the node's shutdown fires, and
    /// the server waits for it before returning.
    pub(crate) fn spawn_owned(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self
            .shared
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// A receiver that fires when the node shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }

    /// Takes the inbound link tasks, to wait for them at shutdown.
    pub(crate) fn take_inbound(&self) -> JoinSet<()> {
        std::mem::take(
            &mut *self
                .shared
                .inbound
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn session_ended(&self, participant_id: &str, session: u64) {
        let mut state = self.lock();
        if state
            .sinks
            .get(participant_id)
            .is_some_and(|s| s.session == session)
        {
            // Still registered: it ended without a Leave or a cut-off.
            self.shared
                .metrics
                .sessions_cut
                .with_label_values(&["lost"])
                .inc();
            state.sinks.remove(participant_id);
        }
        state
            .core
            .session_dropped(Instant::now(), participant_id, session);
        self.carry_out(&mut state);
        drop(state);
        // What only this session had left to read can go.
        self.shared.log.tidy();
        self.sessions_gone(1);
    }

    /// Counts sessions that ended or were cut off; after a burst of them,
    /// has the memory they held given back.
    fn sessions_gone(&self, count: usize) {
        let before = self
            .shared
            .sessions_gone
            .fetch_add(count, Ordering::Relaxed);
        if before < RETURN_MEMORY_AFTER_SESSIONS && before + count >= RETURN_MEMORY_AFTER_SESSIONS {
            self.shared.memory_freed.notify_one();
        }
    }
}

/// Gives memory back to the system after a burst of sessions ended or were
/// cut off: glibc's malloc keeps the pages it freed in its heaps for reuse,
/// so without this the node's RSS would stay at its peak after many stalled
/// readers went away. Waits [`RETURN_MEMORY_EVERY`] first (the burst ends,
/// connections close), so it runs at most that often.
pub(crate) async fn run_memory_return(node: Node) {
    let mut shutdown = node.shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = node.shared.memory_freed.notified() => {}
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(RETURN_MEMORY_EVERY) => {}
        }
        node.shared.sessions_gone.store(0, Ordering::Relaxed);
        node.shared.log.tidy();
        // It walks the heaps: off the runtime's threads.
        let before = resident_bytes();
        let _ = tokio::task::spawn_blocking(return_freed_memory).await;
        info!(
            rss_before = before,
            rss_after = resident_bytes(),
            "gave memory freed by ended sessions back to the system"
        );
    }
}

/// Has the allocator give the pages it holds free back to the system.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it
    // takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident memory in bytes (Linux), 0 where unknown.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok());
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.map_or(0, |pages| pages * u64::try_from(page).unwrap_or(4096))
}

/// Hands a released event to every local session that was open when it
/// entered the gate: appends it to the log once, whatever their number.
fn deliver(
    state: &State,
    log: &DeliveryLog<Outbound>,
    gate: u64,
    event: &Event,
    cut: &mut Vec<ReaderId>,
) {
    let field = wire::participant_field(event);
    hand_out(log, Audience::FromGate(gate), Outbound::Event(field), cut);
    if diagram::debug_enabled() || tracing::enabled!(tracing::Level::DEBUG) {
        for (pid, sink) in &state.sinks {
            if gate >= sink.from_gate {
                debug!(to = %pid, lamport = event.lamport, "deliver");
                diagram::event_debug(
                    state.core.who(),
                    Record::new(Call::Deliver, Dir::Sent)
                        .participant_id(pid)
                        .event(event),
                );
            }
        }
    }
}

/// Appends `item` for `to`, counted at its encoded size.
fn hand_out(log: &DeliveryLog<Outbound>, to: Audience, item: Outbound, cut: &mut Vec<ReaderId>) {
    let size = item.size();
    log.append(to, item, size, cut);
}

fn session_answer(answer: Option<Answer>) -> Result<SessionStream> {
    match answer {
        Some(Answer::Session(stream)) => Ok(stream),
        Some(Answer::Reply(Reply::Refused(e))) => Err(e.into()),
        _ => Err(Error::Unavailable("node is shutting down".into())),
    }
}

/// Reports a dropped Join stream to its node.
#[derive(Debug)]
struct SessionGuard {
    node: Weak<Shared>,
    participant_id: String,
    session: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.node.upgrade() {
            shared.open_streams.send_modify(|n| *n -= 1);
            Node { shared }.session_ended(&self.participant_id, self.session);
        }
    }
}

/// A session's place in the node's delivery log, given up when dropped.
#[derive(Debug)]
struct LogReader {
    log: Arc<DeliveryLog<Outbound>>,
    id: ReaderId,
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.log.release(self.id);
    }
}

/// The response stream of one Join call. Each frame holds every event
/// waiting for it (up to [`SessionStream::limit`] bytes), so a reader that
/// falls behind catches up in few large writes rather than many small ones.
#[derive(Debug)]
pub struct SessionStream {
    pending: VecDeque<EncodedFrame>,
    reader: LogReader,
    /// Taken from the log, not yet framed.
    taken: Vec<Outbound>,
    /// Open sessions on the node.
    open: Arc<watch::Sender<usize>>,
    /// `chitty_deliveries_total`: events taken by this stream count there.
    deliveries: prometheus::IntCounter,
    done: bool,
    _guard: SessionGuard,
}

impl SessionStream {
    /// Most event bytes in one frame: the node's [`COPY_BUDGET`] shared by
    /// its open sessions. With few sessions a backlog leaves in large writes;
    /// with many, each holds only a small copy while its socket is full and
    /// the rest of its backlog waits in its queue as references to the one
    /// encoding of each event.
    pub fn limit(&self) -> usize {
        let open = (*self.open.borrow()).max(1);
        (COPY_BUDGET / open).clamp(MIN_FRAME_BYTES, MAX_FRAME_BYTES)
    }
}

impl Stream for SessionStream {
    type Item = Result<EncodedFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let limit = self.limit();
        let this = &mut *self;
        if let Some(frame) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.taken.is_empty() {
            // At most what one frame takes: `take` items, fewer the more
            // sessions share the node. The log reserves room for what it
            // hands over.
            let take = (limit / 256).min(1024);
            if this.taken.capacity() > take {
                this.taken = Vec::new();
            }
            let reader = &this.reader;
            match reader.log.read(reader.id, take, &mut this.taken, cx) {
                Read::Pending => {
                    // Nothing to send: an idle session holds no slots.
                    this.taken = Vec::new();
                    return Poll::Pending;
                }
                Read::Ended(reason) => {
                    this.done = true;
                    return Poll::Ready(reason.map(|reason| Err(end_status(&reason))));
                }
                Read::Items => {
                    let events = this
                        .taken
                        .iter()
                        .filter(|item| matches!(item, Outbound::Event(_)));
                    this.deliveries.inc_by(events.count() as u64);
                }
            }
        }
        // The events at the front share one frame; anything else gets its own.
        let mut size = 0;
        let run = this
            .taken
            .iter()
            .take_while(|item| matches!(item, Outbound::Event(e) if fits(&mut size, e, limit)))
            .count();
        let frame = if run <= 1 {
            this.taken.remove(0).into_frame()
        } else {
            let events = this.taken.drain(..run).filter_map(Outbound::into_event);
            EncodedFrame::events(events.collect())
        };
        Poll::Ready(Some(Ok(frame)))
    }
}

/// Whether an event still goes into a frame holding `size` bytes of events,
/// at most `limit` (the first always does); counts it in if so.
fn fits(size: &mut usize, event: &Bytes, limit: usize) -> bool {
    let fits = *size == 0 || *size + event.len() <= limit;
    if fits {
        *size += event.len();
    }
    fits
}

impl Outbound {
    fn into_event(self) -> Option<Bytes> {
        match self {
            Outbound::Event(e) => Some(e),
            _ => None,
        }
    }

    fn into_frame(self) -> EncodedFrame {
        let frame = match self {
            Outbound::Event(e) => return EncodedFrame::event(e),
            Outbound::Servers(list) => join_frame::Frame::Servers(Arc::unwrap_or_clone(list)),
            Outbound::Gap(gap) => join_frame::Frame::Gap(Arc::unwrap_or_clone(gap)),
            Outbound::Late(late) => join_frame::Frame::Late(crate::proto::LateRun { late }),
            Outbound::Room(room) => join_frame::Frame::Room(Arc::unwrap_or_clone(room)),
        };
        EncodedFrame::message(&JoinFrame { frame: Some(frame) })
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use prost::Message as _;

    use super::*;
    use crate::proto::Welcome;

    /// Polls `stream` once.
    async fn poll_once(stream: &mut SessionStream) -> Poll<Option<Result<EncodedFrame, Status>>> {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_next(cx))).await
    }

    fn decode(frame: &EncodedFrame) -> JoinFrame {
        JoinFrame::decode(frame.encode_to_vec().as_slice()).unwrap()
    }

    /// Joins `name` and reads its Welcome.
    async fn join(node: &Node, name: &str) -> (SessionStream, Welcome) {
        let mut stream = node.join(name, 0, None, 0).unwrap();
        let Poll::Ready(Some(Ok(first))) = poll_once(&mut stream).await else {
            panic!("no Welcome");
        };
        let Some(join_frame::Frame::Welcome(welcome)) = decode(&first).frame else {
            panic!("the first frame is not a Welcome");
        };
        (stream, welcome)
    }

    #[tokio::test]
    async fn a_backlog_leaves_in_frames_of_at_most_the_limit() {
        // 300 messages at once: over the publish rate limit, which is off.
        let mut config = NodeConfig::new("127.0.0.1:1");
        config.publish_rate = None;
        let node = Node::new(config);
        let (mut stream, welcome) = join(&node, "Ann").await;
        let texts: Vec<String> = (0..300).map(|i| format!("{i:0>128}")).collect();
        for text in &texts {
            node.publish(&welcome.session_token, text, 0, "")
                .await
                .unwrap();
        }
        // As many open sessions as make the smallest limit.
        stream.open.send_replace(usize::MAX / 2);
        assert_eq!(stream.limit(), MIN_FRAME_BYTES);

        let mut received = Vec::new();
        let mut frames = 0;
        let mut total = 0;
        while let Poll::Ready(Some(Ok(frame))) = poll_once(&mut stream).await {
            let Some(join_frame::Frame::Events(batch)) = decode(&frame).frame else {
                panic!("not an events frame");
            };
            let bytes: usize = batch
                .events
                .iter()
                .map(|e| wire::session_field(e).len())
                .sum();
            assert!(bytes <= MIN_FRAME_BYTES, "a frame of {bytes} bytes");
            frames += 1;
            total += bytes;
            received.extend(batch.events.into_iter().map(|e| e.text));
        }
        // Ann's own join, then every message once and in order.
        assert!(received[0].starts_with("Participant Ann joined"));
        assert_eq!(received[1..], texts[..]);
        // No more frames than it takes: each but the last is nearly full.
        assert!(total > 4 * MIN_FRAME_BYTES, "{total} bytes");
        assert!(
            frames <= total.div_ceil(MIN_FRAME_BYTES / 2),
            "{frames} frames"
        );

        // With the node's only session the same backlog is one frame.
        stream.open.send_replace(1);
        for text in &texts {
            node.publish(&welcome.session_token, text, 0, "")
                .await
                .unwrap();
        }
        let Poll::Ready(Some(Ok(frame))) = poll_once(&mut stream).await else {
            panic!("nothing queued");
        };
        let Some(join_frame::Frame::Events(batch)) = decode(&frame).frame else {
            panic!("not an events frame");
        };
        assert_eq!(batch.events.len(), 300);
    }

    #[tokio::test]
    async fn a_welcome_tells_what_came_before_the_session() {
        let node = Node::new(NodeConfig::new("127.0.0.1:1"));
        let (_ann, welcome) = join(&node, "Ann").await;
        assert!(
            welcome.seen.iter().all(|m| m.seq == 0),
            "{:?}",
            welcome.seen
        );
        let reply = node
            .publish(&welcome.session_token, "first", 0, "")
            .await
            .unwrap();

        let (mut bob, welcome) = join(&node, "Bob").await;
        // Ann's join and message came before Bob's session, both from this
        // node: not in the Welcome (Bob's own join, next, covers them).
        let me = node.id().clone();
        assert!(
            welcome.seen.iter().all(|m| m.origin.as_ref() != Some(&me)),
            "{:?}",
            welcome.seen
        );
        assert!(reply.lamport > 0);
        // Bob's stream starts with his own join.
        let Poll::Ready(Some(Ok(frame))) = poll_once(&mut bob).await else {
            panic!("no events");
        };
        let Some(join_frame::Frame::Events(batch)) = decode(&frame).frame else {
            panic!("not an events frame");
        };
        let join = &batch.events[0];
        assert!(join.text.starts_with("Participant Bob joined"));
        assert_eq!(join.id.as_ref().map(|i| i.seq), Some(3));
    }
}
