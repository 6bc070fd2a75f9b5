//! One running node: the [`ChatCore`] behind a lock, plus one bounded outgoing
//! queue per local session.
//!
//! Ordering: the core stamps events and the node pushes them into the session
//! queues under the same lock, so every session receives events in stamping
//! (Lamport) order. Pushing never waits: it is `try_send` on a bounded queue.
//!
//! Overflow policy: a session whose queue is full (it is not reading, or
//! reads slower than the room talks) is disconnected with a
//! `RESOURCE_EXHAUSTED` status saying why, and announced as left. Nobody else
//! waits for it.
//!
//! A session ends when its Join stream is dropped: by the client leaving, by
//! the client's connection breaking (a killed process), or by the overflow
//! policy. A [`SessionStream`] carries a guard that reports the drop to the
//! node, which then announces the participant as left unless it already left.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::core::ChatCore;
use crate::core::chat::CoreLimits;
use crate::error::{Error, Result};
use crate::proto::{
    Event, EventBatch, JoinFrame, NodeId, Participant, PublishReply, ServerInfo, ServerList,
    Welcome, join_frame,
};

/// Default capacity of one session's outgoing queue, in events.
pub const DEFAULT_SESSION_QUEUE: usize = 1024;
/// Most events put in one `JoinFrame`.
const MAX_FRAME_EVENTS: usize = 512;

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's identity (id and generation).
    pub node: NodeId,
    /// The address clients and peers reach this node at.
    pub advertise: String,
    /// Capacity of each session's outgoing queue (events).
    pub session_queue: usize,
    pub limits: CoreLimits,
}

impl NodeConfig {
    /// A configuration with a fresh node id and default limits.
    pub fn new(advertise: impl Into<String>) -> Self {
        Self {
            node: NodeId {
                id: uuid::Uuid::new_v4().to_string(),
                generation: now_millis(),
            },
            advertise: advertise.into(),
            session_queue: DEFAULT_SESSION_QUEUE,
            limits: CoreLimits::default(),
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
    Event(Arc<Event>),
}

#[derive(Debug)]
struct Sink {
    session: u64,
    tx: mpsc::Sender<Outbound>,
    /// Why the node ended the session, read by the stream once the queue is
    /// drained and closed.
    closed: Arc<OnceLock<Status>>,
}

#[derive(Debug)]
struct State {
    core: ChatCore,
    sinks: HashMap<String, Sink>,
    shutting_down: bool,
}

#[derive(Debug)]
struct Shared {
    config: NodeConfig,
    state: Mutex<State>,
}

/// A cheap, cloneable handle to a node.
#[derive(Debug, Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl Node {
    pub fn new(config: NodeConfig) -> Self {
        let core = ChatCore::new(config.node.clone(), config.limits.clone());
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    core,
                    sinks: HashMap::new(),
                    shutting_down: false,
                }),
            }),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
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

    /// Opens a session: registers its queue, then stamps and broadcasts the
    /// "joined" event, so the joiner receives its own join.
    pub fn join(&self, name: &str, lamport: u64) -> Result<SessionStream> {
        let participant_id = uuid::Uuid::new_v4().to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Error::Unavailable("node is shutting down".into()));
        }
        let joined = state
            .core
            .join(name, lamport, participant_id.clone(), token.clone())?;
        let (tx, rx) = mpsc::channel(self.shared.config.session_queue);
        let closed = Arc::new(OnceLock::new());
        state.sinks.insert(
            participant_id.clone(),
            Sink {
                session: joined.session,
                tx,
                closed: closed.clone(),
            },
        );
        info!(participant = %name, id = %participant_id, lamport = joined.events[0].lamport, "Join");
        self.broadcast(&mut state, joined.events);
        let welcome = Welcome {
            participant_id: participant_id.clone(),
            session_token: token,
            node: Some(self.shared.config.node.clone()),
            resumed: false,
            servers: Some(self.server_list()),
        };
        Ok(SessionStream {
            pending: VecDeque::from([JoinFrame {
                frame: Some(join_frame::Frame::Welcome(welcome)),
            }]),
            rx,
            buf: Vec::with_capacity(MAX_FRAME_EVENTS),
            closed,
            done: false,
            _guard: SessionGuard {
                node: Arc::downgrade(&self.shared),
                participant_id,
                session: joined.session,
            },
        })
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
        self.broadcast(&mut state, published.events);
        Ok(PublishReply {
            lamport: event.lamport,
            id: event.id.clone(),
            duplicate: published.duplicate,
        })
    }

    /// Ends the session owning `token`: broadcasts "left" to the others and
    /// ends the leaver's stream once it has drained.
    pub fn leave(&self, token: &str, lamport: u64) -> Result<u64> {
        let mut state = self.lock();
        let (pid, event) = state.core.leave(token, lamport)?;
        // Dropping the sender ends the stream after what is already queued.
        state.sinks.remove(&pid);
        info!(participant = %event.participant_name, lamport = event.lamport, request_lamport = lamport, "Leave");
        let time = event.lamport;
        self.broadcast(&mut state, vec![event]);
        Ok(time)
    }

    pub fn participants(&self) -> Vec<Participant> {
        self.lock().core.participants()
    }

    /// The live nodes of the cluster.
    pub fn server_list(&self) -> ServerList {
        ServerList {
            servers: vec![ServerInfo {
                node: Some(self.shared.config.node.clone()),
                addr: self.shared.config.advertise.clone(),
            }],
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

    /// Pushes `events` to every local session, in order. A session whose
    /// queue is full is disconnected and announced as left, which may in turn
    /// produce more events; the loop runs until none remain.
    fn broadcast(&self, state: &mut State, events: Vec<Arc<Event>>) {
        let mut queue: VecDeque<Arc<Event>> = events.into();
        while let Some(event) = queue.pop_front() {
            info!(
                kind = event.kind().as_str_name(),
                participant = %event.participant_name,
                lamport = event.lamport,
                recipients = state.sinks.len(),
                "Broadcast"
            );
            let mut overflowed = Vec::new();
            for (pid, sink) in &state.sinks {
                match sink.tx.try_send(Outbound::Event(event.clone())) {
                    Ok(()) => debug!(to = %pid, lamport = event.lamport, "deliver"),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        overflowed.push((pid.clone(), sink.session))
                    }
                    // The stream is gone; its guard is about to report it.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            for (pid, session) in overflowed {
                let capacity = self.shared.config.session_queue;
                if let Some(sink) = state.sinks.remove(&pid) {
                    let _ = sink.closed.set(Status::resource_exhausted(format!(
                        "disconnected: too slow to read events \
                         (outgoing queue of {capacity} events is full)"
                    )));
                }
                if let Some(left) = state.core.session_lost(&pid, session) {
                    warn!(participant = %left.participant_name, lamport = left.lamport, "disconnected a participant whose queue overflowed");
                    queue.push_back(left);
                }
            }
        }
    }

    fn session_ended(&self, participant_id: &str, session: u64) {
        let mut state = self.lock();
        if state
            .sinks
            .get(participant_id)
            .is_some_and(|s| s.session == session)
        {
            state.sinks.remove(participant_id);
        }
        if let Some(left) = state.core.session_lost(participant_id, session) {
            info!(participant = %left.participant_name, lamport = left.lamport, "session ended without Leave");
            self.broadcast(&mut state, vec![left]);
        }
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
            Node { shared }.session_ended(&self.participant_id, self.session);
        }
    }
}

/// The response stream of one Join call. Each poll drains everything queued
/// (up to [`MAX_FRAME_EVENTS`]) into one frame, so a reader that falls behind
/// catches up in few large writes rather than many small ones.
#[derive(Debug)]
pub struct SessionStream {
    pending: VecDeque<JoinFrame>,
    rx: mpsc::Receiver<Outbound>,
    buf: Vec<Outbound>,
    closed: Arc<OnceLock<Status>>,
    done: bool,
    _guard: SessionGuard,
}

impl SessionStream {
    /// The first frame (the `Welcome`), for callers that want it before
    /// handing the stream on.
    pub fn welcome(&self) -> Option<&Welcome> {
        match self.pending.front()?.frame.as_ref()? {
            join_frame::Frame::Welcome(w) => Some(w),
            _ => None,
        }
    }
}

impl Stream for SessionStream {
    type Item = Result<JoinFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(frame) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv_many(cx, &mut this.buf, MAX_FRAME_EVENTS) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => {
                this.done = true;
                match this.closed.get() {
                    Some(status) => Poll::Ready(Some(Err(status.clone()))),
                    None => Poll::Ready(None),
                }
            }
            Poll::Ready(_) => {
                let events = this
                    .buf
                    .drain(..)
                    .map(|Outbound::Event(e)| Event::clone(&e))
                    .collect();
                Poll::Ready(Some(Ok(JoinFrame {
                    frame: Some(join_frame::Frame::Events(EventBatch { events })),
                })))
            }
        }
    }
}
