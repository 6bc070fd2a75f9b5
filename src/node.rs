//! One running node: the [`ChatCore`] and the [`Membership`] behind one lock,
//! one bounded outgoing queue per local session, and one per peer link.
//!
//! Ordering: the core stamps or releases events and the node pushes them into
//! the session and peer queues under the same lock, so every session receives
//! events in the order this node delivered them. Pushing never waits: it is
//! `try_send` on a bounded queue.
//!
//! Overflow policies:
//! * a session whose queue is full (it is not reading, or reads slower than
//!   the room talks) is disconnected with `RESOURCE_EXHAUSTED` saying why,
//!   and announced as left. Nobody else waits for it;
//! * a peer link whose queue is full drops its queue and re-sends from
//!   history once the peer catches up ([`crate::mesh`]); a peer so far behind
//!   that history no longer holds what it misses is told of the gap.
//!
//! A session ends when its Join stream is dropped: by the client leaving, by
//! the client's connection breaking (a killed process), or by the overflow
//! policy. A [`SessionStream`] carries a guard that reports the drop to the
//! node, which then announces the participant as left unless it already left.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::Stream;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::core::ChatCore;
use crate::core::chat::CoreLimits;
use crate::core::event::visible;
use crate::core::history::Audience;
use crate::core::membership::Membership;
use crate::error::{Error, Result};
use crate::proto::{
    Event, Gap, JoinFrame, NodeId, Participant, PublishReply, RelayAck, Resume, SeqMark,
    ServerInfo, ServerList, Welcome, join_frame,
};
use crate::wire::{self, EncodedFrame, Wired};

/// Default capacity of one session's outgoing queue, in events.
pub const DEFAULT_SESSION_QUEUE: usize = 8192;
/// Default capacity of one peer link's outgoing queue, in events.
pub const DEFAULT_PEER_QUEUE: usize = 65_536;
/// Default interval between heartbeats on a peer link.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
/// Default silence after which a peer is declared failed.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_millis(2500);
/// Event bytes a node copies out of its sessions' queues for writing, at
/// most, shared evenly among the open sessions (see [`SessionStream::limit`]).
const COPY_BUDGET: usize = 16 << 20;
/// However many sessions there are, a frame may hold this much...
const MIN_FRAME_BYTES: usize = 4 * 1024;
/// ...and however few, no more than this.
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Event bytes in one frame of a replay after a failover.
const REPLAY_FRAME_BYTES: usize = 64 * 1024;

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's identity (id and generation).
    pub node: NodeId,
    /// The address clients and peers reach this node at.
    pub advertise: String,
    /// Capacity of each session's outgoing queue (events).
    pub session_queue: usize,
    /// Capacity of each peer link's outgoing queue (events).
    pub peer_queue: usize,
    /// A member to join the cluster through; `None` starts a new cluster.
    pub boot: Option<String>,
    /// Shared secret every mesh call must carry; `None` leaves the mesh open.
    pub cluster_secret: Option<String>,
    /// Interval between heartbeats on peer links.
    pub heartbeat: Duration,
    /// Silence after which a peer is declared failed.
    pub failure_timeout: Duration,
    pub limits: CoreLimits,
    /// Test-only fault: delay every batch of live events sent to the peer at
    /// this address by this long (to show replies never overtake originals).
    pub fault_link_delay: Option<(String, Duration)>,
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
            peer_queue: DEFAULT_PEER_QUEUE,
            boot: None,
            cluster_secret: None,
            heartbeat: DEFAULT_HEARTBEAT,
            failure_timeout: DEFAULT_FAILURE_TIMEOUT,
            limits: CoreLimits::default(),
            fault_link_delay: None,
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

/// What goes down a session's queue.
#[derive(Debug, Clone)]
enum Outbound {
    /// An event encoded once per node ([`crate::wire::participant_field`]).
    Event(Bytes),
    // Rare and larger: boxed, so that a queue slot stays the size of `Bytes`.
    Servers(Box<ServerList>),
    Gap(Box<Gap>),
}

#[derive(Debug)]
struct Sink {
    session: u64,
    /// The first gate index this session receives: events that entered the
    /// gate before it opened are not its to see (or were replayed to it).
    from_gate: u64,
    tx: mpsc::Sender<Outbound>,
    /// Why the node ended the session, read by the stream once the queue is
    /// drained and closed.
    closed: Arc<OnceLock<Status>>,
}

/// The node's end of an outgoing peer link (the task is in [`crate::mesh`]).
#[derive(Debug)]
pub(crate) struct LinkHandle {
    pub(crate) peer: NodeId,
    pub(crate) tx: mpsc::Sender<Wired>,
    /// Set when the link must re-send from history (its queue overflowed, or
    /// a node died and survivors reconcile what each holds).
    pub(crate) resync: Arc<AtomicBool>,
    pub(crate) wake: Arc<Notify>,
    /// The highest of this node's own sequence numbers the peer acknowledged.
    pub(crate) acked_own: Arc<AtomicU64>,
    pub(crate) task: JoinHandle<()>,
}

impl LinkHandle {
    pub(crate) fn request_resync(&self) {
        self.resync.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) core: ChatCore,
    pub(crate) membership: Membership,
    sinks: HashMap<String, Sink>,
    pub(crate) links: HashMap<String, LinkHandle>,
    /// When each peer was last heard from (any frame on its inbound link).
    pub(crate) last_heard: HashMap<String, Instant>,
    /// When each departed node was seen to go, for announcing its
    /// participants once reconciliation had time to finish.
    pub(crate) gone_since: HashMap<String, (NodeId, Instant)>,
    pub(crate) shutting_down: bool,
    /// Events on their way to local sessions (see `release_next`), with their
    /// gate index. Bounded in time: a peer that never acknowledges is
    /// declared failed within the failure timeout, which opens the gate.
    gate: VecDeque<(u64, Wired)>,
    next_gate_index: u64,
    /// The acknowledgement channel of each inbound relay link, by peer id.
    pub(crate) ack_watches: HashMap<String, watch::Sender<Result<RelayAck, Status>>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    state: Mutex<State>,
    /// Fires (true) when the node shuts down; every task watches it.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set when the cluster removed this node; the server exits with it.
    pub(crate) fatal: watch::Sender<Option<String>>,
    /// Wakes the gossip task to push the membership to every peer.
    pub(crate) gossip: Notify,
    /// Woken when a peer acknowledges events or a link goes away.
    pub(crate) acked: Notify,
    /// Join streams not yet dropped (each holds a `SessionGuard`).
    open_streams: Arc<AtomicUsize>,
    /// Stream-serving tasks: inbound relay links and publish streams.
    inbound: Mutex<JoinSet<()>>,
}

/// A cheap, cloneable handle to a node.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) shared: Arc<Shared>,
}

impl Node {
    pub fn new(config: NodeConfig) -> Self {
        let core = ChatCore::new(config.node.clone(), config.limits.clone());
        let membership = Membership::new(config.node.clone(), config.advertise.clone());
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    core,
                    membership,
                    sinks: HashMap::new(),
                    links: HashMap::new(),
                    last_heard: HashMap::new(),
                    gone_since: HashMap::new(),
                    shutting_down: false,
                    gate: VecDeque::new(),
                    next_gate_index: 0,
                    ack_watches: HashMap::new(),
                }),
                shutdown: watch::channel(false).0,
                fatal: watch::channel(None).0,
                gossip: Notify::new(),
                acked: Notify::new(),
                inbound: Mutex::new(JoinSet::new()),
                open_streams: Arc::default(),
            }),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    pub fn id(&self) -> &NodeId {
        &self.shared.config.node
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still the
        // best we have, so keep serving rather than poison every call.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The node's Lamport clock.
    pub fn lamport(&self) -> u64 {
        self.lock().core.lamport()
    }

    /// Opens a session: registers its queue, then stamps and delivers the
    /// "joined" event, so the joiner receives its own join.
    pub fn join(&self, name: &str, lamport: u64) -> Result<SessionStream> {
        let participant_id = uuid::Uuid::new_v4().to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Error::Unavailable("node is shutting down".into()));
        }
        // Messages reach a participant without their dependencies: what came
        // before its session is told once, in the Welcome. Not this node's
        // own events: some may not be held by any peer yet (a resume
        // elsewhere would wait for them in vain), and the participant's own
        // join, which it receives, covers them.
        let me = &self.shared.config.node;
        let mut before = state.core.delivered();
        before.retain(|mark| mark.origin.as_ref() != Some(me));
        let joined = state
            .core
            .join(name, lamport, participant_id.clone(), token.clone())?;
        info!(participant = %name, id = %participant_id, lamport = joined.events[0].lamport, "Join");
        let stream = self.open_session(
            &mut state,
            participant_id,
            token,
            joined.session,
            Some(before),
            VecDeque::new(),
        );
        self.dispatch(&mut state, joined.events);
        Ok(stream)
    }

    /// Reattaches a participant whose session ended without a Leave (its
    /// node failed, or its connection broke), on proof of ownership. Replays
    /// what it missed after `resume.seen`, then continues live. Announces
    /// nothing to participants.
    pub async fn resume(&self, resume: Resume, lamport: u64) -> Result<SessionStream> {
        // A client that saw events this node has not delivered yet waits for
        // them (bounded), so nothing it publishes here can overtake them.
        let deadline = Instant::now() + self.shared.config.failure_timeout * 2;
        while !self.lock().core.covers(&resume.seen) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Error::Unavailable("node is shutting down".into()));
        }
        let pid = resume.participant_id;
        let resumed = state.core.resume(&pid, &resume.session_token, lamport)?;
        // A stale session of the same participant here (a half-open
        // connection) gives way to the new one.
        self.end_session(
            &mut state,
            &pid,
            Status::aborted("this session was resumed on another connection"),
        );
        let (replay, gaps) = state.core.replay_after(&resume.seen, Audience::Participant);
        let mut prelude = VecDeque::new();
        if !gaps.is_empty() {
            prelude.push_back(EncodedFrame::message(&JoinFrame {
                frame: Some(join_frame::Frame::Gap(Gap {
                    reason: "some events are older than this node's history and cannot be replayed"
                        .into(),
                    ranges: gaps,
                })),
            }));
        }
        let replay: Vec<Bytes> = replay
            .iter()
            .filter(|e| visible(e))
            .map(|e| wire::participant_field(e))
            .collect();
        info!(participant = %resumed.name, id = %pid, replayed = replay.len(), lamport = resumed.events[0].lamport, "Resume");
        let mut replay = replay.into_iter().peekable();
        while replay.peek().is_some() {
            let mut size = 0;
            let frame =
                std::iter::from_fn(|| replay.next_if(|e| fits(&mut size, e, REPLAY_FRAME_BYTES)))
                    .collect();
            prelude.push_back(EncodedFrame::events(frame));
        }
        let stream = self.open_session(
            &mut state,
            pid,
            resume.session_token,
            resumed.session,
            None,
            prelude,
        );
        self.dispatch(&mut state, resumed.events);
        Ok(stream)
    }

    /// Registers a local session's queue and builds its stream: the
    /// `Welcome`, then `prelude`, then live events.
    fn open_session(
        &self,
        state: &mut State,
        participant_id: String,
        token: String,
        session: u64,
        // `None` for a resumed session; for a new one, what this node had
        // delivered before it.
        seen: Option<Vec<SeqMark>>,
        prelude: VecDeque<EncodedFrame>,
    ) -> SessionStream {
        let (tx, rx) = mpsc::channel(self.shared.config.session_queue);
        let closed = Arc::new(OnceLock::new());
        state.sinks.insert(
            participant_id.clone(),
            Sink {
                session,
                from_gate: state.next_gate_index,
                tx,
                closed: closed.clone(),
            },
        );
        let welcome = Welcome {
            participant_id: participant_id.clone(),
            session_token: token,
            node: Some(self.shared.config.node.clone()),
            resumed: seen.is_none(),
            servers: Some(server_list(&state.membership)),
            seen: seen.unwrap_or_default(),
        };
        let mut pending = prelude;
        pending.push_front(EncodedFrame::message(&JoinFrame {
            frame: Some(join_frame::Frame::Welcome(welcome)),
        }));
        self.shared.open_streams.fetch_add(1, Ordering::AcqRel);
        SessionStream {
            pending,
            rx,
            taken: Vec::new(),
            open: self.shared.open_streams.clone(),
            closed,
            done: false,
            _guard: SessionGuard {
                node: Arc::downgrade(&self.shared),
                participant_id,
                session,
            },
        }
    }

    pub fn publish(
        &self,
        token: &str,
        text: &str,
        lamport: u64,
        publish_id: &str,
    ) -> Result<PublishReply> {
        let mut state = self.lock();
        let published = state.core.publish(token, text, lamport, publish_id)?;
        let event = published.event.clone();
        info!(
            participant = %event.participant_name,
            lamport = event.lamport,
            request_lamport = lamport,
            duplicate = published.duplicate,
            "Publish"
        );
        self.dispatch(&mut state, published.events);
        Ok(PublishReply {
            lamport: event.lamport,
            id: event.id.clone(),
            duplicate: published.duplicate,
        })
    }

    /// Waits until a peer holds this node's event `seq`, so that an
    /// acknowledged publish survives this node's crash. Returns at once when
    /// the node has no peers.
    pub async fn wait_replicated(&self, seq: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.shared.config.failure_timeout * 2;
        loop {
            let notified = self.shared.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                if state.links.is_empty()
                    || state
                        .links
                        .values()
                        .any(|l| l.acked_own.load(Ordering::Acquire) >= seq)
                {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::Unavailable(
                    "no other node acknowledged the message yet; retry with the same publish id"
                        .into(),
                ));
            }
        }
    }

    /// Ends the session owning `token`: delivers "left" to the others and
    /// ends the leaver's stream once it has drained.
    pub fn leave(&self, token: &str, lamport: u64) -> Result<u64> {
        let mut state = self.lock();
        let (pid, event) = state.core.leave(token, lamport)?;
        // Dropping the sender ends the stream after what is already queued.
        state.sinks.remove(&pid);
        info!(participant = %event.participant_name, lamport = event.lamport, request_lamport = lamport, "Leave");
        let time = event.lamport;
        self.dispatch(&mut state, vec![event]);
        Ok(time)
    }

    pub fn participants(&self) -> Vec<Participant> {
        self.lock().core.participants()
    }

    /// The live nodes of the cluster.
    pub fn server_list(&self) -> ServerList {
        server_list(&self.lock().membership)
    }

    /// Waits (at most `limit`) until every Join stream has ended, so their
    /// final status is on its way before connections are shut down.
    pub async fn streams_closed(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.shared.open_streams.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Ends every session with `UNAVAILABLE` and refuses new ones, so that a
    /// graceful server shutdown is not held open by endless Join streams.
    pub fn close_sessions(&self, reason: &str) {
        let mut state = self.lock();
        state.shutting_down = true;
        for (_, sink) in state.sinks.drain() {
            let _ = sink.closed.set(Status::unavailable(reason.to_string()));
        }
    }

    /// Delivers `events` (in order) to every local session, and relays the
    /// ones this node stamped to every peer. A session whose queue is full is
    /// disconnected and announced as left, which may in turn produce more
    /// events; the loop runs until none remain.
    pub(crate) fn dispatch(&self, state: &mut State, events: Vec<Arc<Event>>) {
        let me = &self.shared.config.node;
        let mut queue: VecDeque<Arc<Event>> = events.into();
        loop {
            // Local participants get events through the gate, in order: this
            // node's own events only once a peer holds them.
            while let Some(event) = self.release_next(state) {
                queue.extend(self.deliver(state, &event));
            }
            let Some(event) = queue.pop_front() else {
                return;
            };
            let origin = event.id.as_ref().and_then(|i| i.origin.as_ref());
            info!(
                kind = event.kind().as_str_name(),
                participant = %event.participant_name,
                lamport = event.lamport,
                origin = origin.map(|o| o.id.as_str()).unwrap_or(""),
                seq = event.id.as_ref().map(|i| i.seq).unwrap_or(0),
                recipients = state.sinks.len(),
                "Broadcast"
            );
            let to_peers = origin == Some(me) && !state.links.is_empty();
            let to_sessions = visible(&event);
            if !to_peers && !to_sessions {
                continue;
            }
            // Encoded once here, however many peers or sessions get it.
            if to_peers {
                let wired = Wired::for_peers(event.clone());
                for link in state.links.values() {
                    if link.tx.try_send(wired.clone()).is_err() {
                        // History still holds it: the link re-sends from there.
                        link.request_resync();
                    }
                }
            }
            if to_sessions {
                let index = state.next_gate_index;
                state.next_gate_index += 1;
                state.gate.push_back((index, Wired::for_sessions(event)));
            }
        }
    }

    /// Re-checks the gate (a peer acknowledged events, or a link went away).
    pub(crate) fn release(&self) {
        let mut state = self.lock();
        self.dispatch(&mut state, Vec::new());
    }

    /// The next event the gate lets through, if any. An event of this node
    /// waits until a peer holds it (or the node has no peers), so nobody
    /// sees an event that a crash of this node could still take back; events
    /// behind it wait too, to keep the order.
    fn release_next(&self, state: &mut State) -> Option<(u64, Wired)> {
        let (_, Wired { event, .. }) = state.gate.front()?;
        let id = event.id.as_ref()?;
        let own = id.origin.as_ref() == Some(&self.shared.config.node);
        let held_elsewhere = || {
            state.links.is_empty()
                || state
                    .links
                    .values()
                    .any(|l| l.acked_own.load(Ordering::Acquire) >= id.seq)
        };
        if own && !held_elsewhere() {
            return None;
        }
        state.gate.pop_front()
    }

    /// Hands a released event to every local session that was open when it
    /// entered the gate. A session whose queue is full is disconnected and
    /// announced as left: the returned events.
    fn deliver(&self, state: &mut State, (index, wired): &(u64, Wired)) -> Vec<Arc<Event>> {
        let Wired { event, field } = wired;
        let mut overflowed = Vec::new();
        for (pid, sink) in &state.sinks {
            if *index < sink.from_gate {
                continue; // stamped before this session opened
            }
            match sink.tx.try_send(Outbound::Event(field.clone())) {
                Ok(()) => debug!(to = %pid, lamport = event.lamport, "deliver"),
                Err(mpsc::error::TrySendError::Full(_)) => overflowed.push(pid.clone()),
                // The stream is gone; its guard is about to report it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let mut left_events = Vec::new();
        for pid in overflowed {
            let capacity = self.shared.config.session_queue;
            self.end_session(
                state,
                &pid,
                Status::resource_exhausted(format!(
                    "disconnected: too slow to read events \
                     (outgoing queue of {capacity} events is full)"
                )),
            );
            if let Some(left) = state.core.disconnect(&pid) {
                warn!(participant = %left.participant_name, lamport = left.lamport, "disconnected a participant whose queue overflowed");
                left_events.push(left);
            }
        }
        left_events
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

    /// Tells every local session the cluster's nodes changed. Best effort: a
    /// session whose queue is full is being disconnected anyway.
    pub(crate) fn notify_servers(&self, state: &State, list: ServerList) {
        for sink in state.sinks.values() {
            let _ = sink.tx.try_send(Outbound::Servers(Box::new(list.clone())));
        }
    }

    /// Tells every local session that events were lost (never silently).
    pub(crate) fn notify_gap(&self, state: &State, gap: Gap) {
        warn!(reason = %gap.reason, "telling participants about lost events");
        for sink in state.sinks.values() {
            let _ = sink.tx.try_send(Outbound::Gap(Box::new(gap.clone())));
        }
    }

    /// Removes a local session's queue; its stream ends with `status` once it
    /// has drained what was queued.
    pub(crate) fn end_session(&self, state: &mut State, participant_id: &str, status: Status) {
        if let Some(sink) = state.sinks.remove(participant_id) {
            let _ = sink.closed.set(status);
        }
    }

    fn session_ended(&self, participant_id: &str, session: u64) {
        let mut state = self.lock();
        if state.shutting_down {
            // The node is leaving; its peers announce its participants.
            return;
        }
        if state
            .sinks
            .get(participant_id)
            .is_some_and(|s| s.session == session)
        {
            state.sinks.remove(participant_id);
        }
        match state
            .core
            .session_lost(participant_id, session, Instant::now())
        {
            Some(left) => {
                info!(participant = %left.participant_name, lamport = left.lamport, "session ended without Leave");
                self.dispatch(&mut state, vec![left]);
            }
            None => {
                info!(participant = %participant_id, "session ended without Leave; it may resume within the grace period")
            }
        }
    }
}

/// The live nodes in `membership`, as clients see them.
pub(crate) fn server_list(membership: &Membership) -> ServerList {
    ServerList {
        servers: membership
            .alive()
            .into_iter()
            .map(|m| ServerInfo {
                node: m.node,
                addr: m.addr,
            })
            .collect(),
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
            shared.open_streams.fetch_sub(1, Ordering::AcqRel);
            Node { shared }.session_ended(&self.participant_id, self.session);
        }
    }
}

/// The response stream of one Join call. Each frame holds every event
/// queued (up to [`SessionStream::limit`] bytes), so a reader that falls
/// behind catches up in few large writes rather than many small ones.
#[derive(Debug)]
pub struct SessionStream {
    pending: VecDeque<EncodedFrame>,
    rx: mpsc::Receiver<Outbound>,
    /// Taken from the queue, not yet framed.
    taken: Vec<Outbound>,
    /// Open sessions on the node.
    open: Arc<AtomicUsize>,
    closed: Arc<OnceLock<Status>>,
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
        let open = self.open.load(Ordering::Relaxed).max(1);
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
            // Room for what one frame takes, kept between polls: a session
            // holds `take` slots, fewer the more sessions share the node.
            let take = (limit / 256).min(1024);
            if this.taken.capacity() > take {
                this.taken = Vec::new();
            }
            this.taken.reserve_exact(take);
            match this.rx.poll_recv_many(cx, &mut this.taken, take) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(0) => {
                    this.done = true;
                    return Poll::Ready(this.closed.get().map(|status| Err(status.clone())));
                }
                Poll::Ready(_) => {}
            }
        }
        // The events at the front share one frame; anything else gets its own.
        let mut size = 0;
        let run = this
            .taken
            .iter()
            .take_while(|item| matches!(item, Outbound::Event(e) if fits(&mut size, e, limit)))
            .count();
        let frame = if run == 0 {
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
            Outbound::Event(e) => return EncodedFrame::events(vec![e]),
            Outbound::Servers(list) => join_frame::Frame::Servers(*list),
            Outbound::Gap(gap) => join_frame::Frame::Gap(*gap),
        };
        EncodedFrame::message(&JoinFrame { frame: Some(frame) })
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use prost::Message as _;

    use super::*;

    /// Polls `stream` once.
    async fn poll_once(stream: &mut SessionStream) -> Poll<Option<Result<EncodedFrame, Status>>> {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_next(cx))).await
    }

    fn decode(frame: &EncodedFrame) -> JoinFrame {
        JoinFrame::decode(frame.encode_to_vec().as_slice()).unwrap()
    }

    /// Joins `name` and reads its Welcome.
    async fn join(node: &Node, name: &str) -> (SessionStream, Welcome) {
        let mut stream = node.join(name, 0).unwrap();
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
        let node = Node::new(NodeConfig::new("127.0.0.1:1"));
        let (mut stream, welcome) = join(&node, "Ann").await;
        let texts: Vec<String> = (0..300).map(|i| format!("{i:0>128}")).collect();
        for text in &texts {
            node.publish(&welcome.session_token, text, 0, "").unwrap();
        }
        // As many open sessions as make the smallest limit.
        stream.open.store(usize::MAX / 2, Ordering::Relaxed);
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
        stream.open.store(1, Ordering::Relaxed);
        for text in &texts {
            node.publish(&welcome.session_token, text, 0, "").unwrap();
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
