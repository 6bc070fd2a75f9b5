//! A participant that survives node failures: the client side of failover.
//!
//! One driver task owns the connection. It keeps the cluster's node list
//! current (from `Welcome` and `Servers` frames), the participant's identity
//! (id and session token), its Lamport clock, and what it has seen (highest
//! sequence number per origin). When the stream breaks (the node died, was
//! stopped, or hangs: HTTP/2 keepalive notices within about two seconds) it
//! reconnects to a live node with jittered backoff and resumes the session,
//! handing over what it has seen so the node replays the rest. Events already
//! seen are dropped, so each is delivered once.
//!
//! Publishes are queued in order, each with a publish id (a UUID). One is in
//! flight at a time; a publish that fails for a transport reason is retried
//! with the same id after reconnecting, and the cluster applies each id at
//! most once. A publish that cannot be acknowledged within
//! [`ClientOptions::publish_timeout`] is reported as given up, saying whether
//! it may still have been delivered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::client::{CALL_TIMEOUT, Received, SharedClock, connect_with, expect_welcome};
use crate::core::causal::OriginKey;
use crate::diagram::Call as Rpc;
use crate::error::{Error, Result};
use crate::proto::chitty_chat_client::ChittyChatClient;
use crate::proto::{
    JoinFrame, JoinRequest, LeaveRequest, NodeId, PublishReply, PublishRequest, Rejoin, Resume,
    SeqMark, join_frame,
};
use crate::tls::TlsSettings;

/// Settings of a failover client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Nodes to try, in order, until the cluster tells us its own list.
    pub servers: Vec<String>,
    pub name: String,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// How long a publish is retried before it is given up.
    pub publish_timeout: Duration,
    /// TLS with the cluster's CA, for every node the client connects to;
    /// `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// On the first join, how many of the latest messages the node holds to
    /// ask for (`JoinRequest.recent`), reported in [`Update::Joined`] with
    /// who was already there. 0: neither is asked for.
    pub recent: u32,
}

impl ClientOptions {
    pub fn new(servers: Vec<String>, name: impl Into<String>) -> Self {
        Self {
            servers,
            name: name.into(),
            max_backoff: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(60),
            tls: None,
            recent: 0,
        }
    }
}

/// What the driver reports.
#[derive(Debug)]
pub enum Update {
    /// An event, a gap or a server list (see [`Received`]).
    Received(Received),
    /// Joined for the first time.
    Joined {
        server: String,
        participant_id: String,
        /// Who was already there (the others), when
        /// [`ClientOptions::recent`] asked for a summary.
        here: Vec<crate::proto::Participant>,
        /// The latest messages from before the join, oldest first, with
        /// the receive rule applied (`Welcome.earlier`).
        earlier: Vec<Received>,
    },
    /// The session moved to another node (or reconnected to the same one).
    Moved { from: String, to: String },
    /// The old session could not be resumed (its grace period ran out), so
    /// the participant joined again as new.
    Rejoined { server: String },
    /// The connection broke; reconnecting.
    Reconnecting { reason: String },
    /// A reconnection attempt failed too: the client keeps trying (with
    /// backoff) until a node answers, then reports `Moved` or `Rejoined`.
    /// Sent once per reconnection.
    NoNodeAnswers { reason: String },
    /// A publish was abandoned.
    PublishGaveUp { text: String, maybe_delivered: bool },
    /// The session is over (after a Leave, or a fatal refusal).
    Ended(Result<()>),
}

enum Command {
    Publish {
        text: String,
        done: oneshot::Sender<Result<PublishReply>>,
    },
    Leave {
        done: oneshot::Sender<Result<u64>>,
    },
    Participants {
        done: oneshot::Sender<Result<Vec<crate::proto::Participant>>>,
    },
}

/// How long a Join (new or resumed) may take to answer with its Welcome.
/// A node answers at once; one that does not is frozen or overloaded, and
/// the next node is tried, well within the grace period that a resuming
/// participant has.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Most node addresses a client remembers.
const MAX_KNOWN_SERVERS: usize = 64;
/// Publish ids remembered to drop a message delivered twice under two ids.
const RECENT_PUBLISH_IDS: usize = 10_000;

/// Capacity of the command queue (publishes waiting to be sent).
const COMMAND_QUEUE: usize = 256;
/// Capacity of the update queue; the driver waits when it is full, which
/// leaves events queued at the node, where the overflow policy applies.
const UPDATE_QUEUE: usize = 1024;

/// The sending half of a failover participant. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Chat {
    commands: mpsc::Sender<Command>,
}

impl Chat {
    /// Queues a publish; resolves when the cluster acknowledged it (after
    /// retries), or with the error that made it give up.
    pub async fn publish(&self, text: &str) -> Result<PublishReply> {
        self.submit(text)
            .await?
            .await
            .map_err(|_| Error::Unavailable("the session has ended".into()))?
    }

    /// Queues a publish (in order with every other) and returns at once with
    /// a receiver for its outcome.
    pub async fn submit(&self, text: &str) -> Result<oneshot::Receiver<Result<PublishReply>>> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish {
                text: text.to_string(),
                done,
            })
            .await
            .map_err(|_| Error::Unavailable("the session has ended".into()))?;
        Ok(rx)
    }

    /// The live participants, cluster-wide, as the node the session is on
    /// knows them (`ListParticipants`). Fails at once while no node answers.
    pub async fn participants(&self) -> Result<Vec<crate::proto::Participant>> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Participants { done })
            .await
            .map_err(|_| Error::Unavailable("the session has ended".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the session has ended".into()))?
    }

    /// Leaves once every queued publish was handled. Returns the Lamport
    /// time of the "left" event.
    pub async fn leave(&self) -> Result<u64> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Leave { done })
            .await
            .map_err(|_| Error::Unavailable("the session has ended".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the session has ended".into()))?
    }
}

/// Joins and starts the driver. Returns the sending half, the updates, and
/// the driver's task (it ends after `Update::Ended`).
pub async fn start(
    options: ClientOptions,
) -> Result<(Chat, mpsc::Receiver<Update>, tokio::task::JoinHandle<()>)> {
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (updates, update_rx) = mpsc::channel(UPDATE_QUEUE);
    let mut driver = Driver {
        commands: Some(command_rx),
        servers: options.servers.clone(),
        seeds: options.servers.clone(),
        options,
        clock: SharedClock::default(),
        seen: HashMap::new(),
        publish_ids: HashSet::new(),
        publish_order: VecDeque::new(),
        departed: HashSet::new(),
        departed_order: VecDeque::new(),
        identity: None,
        earlier: Vec::new(),
        current: String::new(),
        current_node: None,
        known_nodes: Vec::new(),
        client: None,
        stream: None,
        updates,
        pending: VecDeque::new(),
        in_flight: None,
        leaving: None,
    };
    // The first join is done before returning, so a bad name or an
    // unreachable cluster is reported to the caller directly.
    driver.first_join().await?;
    let task = tokio::spawn(driver.run());
    Ok((Chat { commands }, update_rx, task))
}

struct Identity {
    participant_id: String,
    token: String,
}

struct PendingPublish {
    text: String,
    publish_id: String,
    first_try: Instant,
    /// Whether any attempt may have reached a node (so it may be delivered).
    maybe_sent: bool,
    /// The nodes it was sent to without an answer (each may have stamped
    /// it); a resume names them.
    sent_to: Vec<NodeId>,
    done: oneshot::Sender<Result<PublishReply>>,
}

type Call<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

struct Driver {
    /// The user's commands. Taken out while a reconnection attempt races
    /// them, so that the user can still leave while no node answers.
    commands: Option<mpsc::Receiver<Command>>,
    options: ClientOptions,
    /// The cluster's nodes, as last reported, then the configured ones.
    servers: Vec<String>,
    seeds: Vec<String>,
    clock: SharedClock,
    seen: HashMap<OriginKey, u64>,
    publish_ids: HashSet<String>,
    publish_order: VecDeque<String>,
    /// Participants shown as left (and not back since), most recent last,
    /// bounded like the publish ids: both sides of a network split may
    /// announce one departure, and a participant that moved across sees
    /// both; it is shown once.
    departed: HashSet<String>,
    departed_order: VecDeque<String>,
    identity: Option<Identity>,
    /// The earlier messages of the last Welcome, until reported.
    earlier: Vec<crate::proto::Event>,
    current: String,
    /// The node id of `current`, from its Welcome.
    current_node: Option<NodeId>,
    /// The nodes of the server lists received, reachable or not (see
    /// [`crate::core::membership::learn_nodes`]): a resume names them
    /// (`Resume.known_nodes`).
    known_nodes: Vec<NodeId>,
    client: Option<ChittyChatClient<Channel>>,
    stream: Option<Streaming<JoinFrame>>,
    updates: mpsc::Sender<Update>,
    pending: VecDeque<PendingPublish>,
    in_flight: Option<Call<PublishReply>>,
    leaving: Option<oneshot::Sender<Result<u64>>>,
}

impl Driver {
    async fn first_join(&mut self) -> Result<()> {
        let mut last = Error::Unavailable("no server given".into());
        for addr in self.seeds.clone() {
            match self.open(&addr, false).await {
                Ok(()) => {
                    let participant_id = self
                        .identity
                        .as_ref()
                        .map(|i| i.participant_id.clone())
                        .unwrap_or_default();
                    let earlier = std::mem::take(&mut self.earlier)
                        .into_iter()
                        .map(|event| self.clock.receive(event))
                        .collect();
                    let here = if self.options.recent > 0 {
                        self.others_here(&participant_id).await
                    } else {
                        Vec::new()
                    };
                    self.emit(Update::Joined {
                        server: addr,
                        participant_id,
                        here,
                        earlier,
                    })
                    .await;
                    return Ok(());
                }
                // A refusal (bad name, name taken) is final; a dead node is not.
                Err(Error::Rpc(s)) if !retryable(s.code()) => return Err(Error::Rpc(s)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The other participants the node lists; none if it cannot say (the
    /// summary is a courtesy, not worth failing the join for).
    async fn others_here(&self, me: &str) -> Vec<crate::proto::Participant> {
        let Some(client) = &self.client else {
            return Vec::new();
        };
        let mut client = client.clone();
        match tokio::time::timeout(
            CALL_TIMEOUT,
            client.list_participants(crate::proto::ListParticipantsRequest {}),
        )
        .await
        {
            Ok(Ok(reply)) => {
                let mut here = reply.into_inner().participants;
                here.retain(|p| p.id != me);
                here
            }
            _ => Vec::new(),
        }
    }

    /// What the participant has seen, per origin, as marks.
    fn seen_marks(&self) -> Vec<SeqMark> {
        self.seen
            .iter()
            .map(|(o, &seq)| SeqMark {
                origin: Some(o.to_node_id()),
                seq,
            })
            .collect()
    }

    /// The nodes the oldest unanswered publish went to.
    fn unanswered_at(&self) -> Vec<NodeId> {
        self.pending
            .front()
            .map(|p| p.sent_to.clone())
            .unwrap_or_default()
    }

    /// Connects to `addr` and joins (or, with `resume`, resumes).
    async fn open(&mut self, addr: &str, resume: bool) -> Result<()> {
        let mut client = connect_with(addr, self.options.tls.as_ref()).await?;
        let resume = match (&self.identity, resume) {
            (Some(id), true) => Some(Resume {
                participant_id: id.participant_id.clone(),
                session_token: id.token.clone(),
                seen: self.seen_marks(),
                unanswered_at: self.unanswered_at(),
                known_nodes: self.known_nodes.clone(),
            }),
            _ => None,
        };
        // Joining again as new after the old session was lost: say what it
        // saw and where its unanswered publish went (see `Rejoin`).
        let rejoin = (resume.is_none() && self.identity.is_some()).then(|| Rejoin {
            seen: self.seen_marks(),
            unanswered_at: self.unanswered_at(),
            known_nodes: self.known_nodes.clone(),
        });
        let request = JoinRequest {
            name: self.options.name.clone(),
            lamport: self.clock.send(Rpc::Join, &self.options.name, addr),
            // Earlier messages only for the first session: after a failover
            // the participant has seen them.
            recent: if self.identity.is_none() {
                self.options.recent
            } else {
                0
            },
            resume,
            rejoin,
        };
        let recent = request.recent;
        let mut stream = tokio::time::timeout(JOIN_TIMEOUT, async {
            let mut stream = client.join(request).await?.into_inner();
            let first = stream.message().await?;
            Ok::<_, Status>((stream, first))
        })
        .await
        .map_err(|_| Error::Unavailable(format!("{addr} did not answer Join")))??;
        let mut welcome = expect_welcome(stream.1.take())?;
        // No more earlier messages than asked for, whatever the node sent:
        // the latest of them (they come oldest first).
        keep_latest(&mut welcome.earlier, recent as usize);
        self.clock.welcomed(&welcome);
        if let Some(list) = &welcome.servers {
            self.learn_servers(list);
        }
        // What the node had delivered before a new session counts as seen:
        // events older than this participant's join are never replayed to
        // it after a failover.
        for mark in &welcome.seen {
            if let Some(origin) = &mark.origin {
                let seen = self.seen.entry(OriginKey::from(origin)).or_default();
                *seen = (*seen).max(mark.seq);
            }
        }
        self.earlier = welcome.earlier;
        self.identity = Some(Identity {
            participant_id: welcome.participant_id,
            token: welcome.session_token,
        });
        self.current = addr.to_string();
        self.current_node = welcome.node.clone();
        self.client = Some(client);
        self.stream = Some(stream.0);
        Ok(())
    }

    /// The nodes the cluster reports live come first; nodes known before
    /// (they may come back) and the configured ones follow, so a client whose
    /// known nodes all failed still has somewhere to go.
    fn learn_servers(&mut self, list: &crate::proto::ServerList) {
        let mut servers: Vec<String> = Vec::new();
        let reported = list.servers.iter().map(|s| &s.addr);
        for addr in reported.chain(&self.servers).chain(&self.seeds) {
            if !servers.contains(addr) && servers.len() < MAX_KNOWN_SERVERS {
                servers.push(addr.clone());
            }
        }
        self.servers = servers;
        self.known_nodes = crate::core::membership::learn_nodes(&self.known_nodes, list);
    }

    /// Whether `event` repeats a message already delivered under another id:
    /// a publish retried on another node after the first node showed it to
    /// its own participants and died before any peer held it.
    fn repeats_a_publish(&mut self, event: &crate::proto::Event) -> bool {
        if event.kind() != crate::proto::EventKind::Message || event.publish_id.is_empty() {
            return false;
        }
        if !self.publish_ids.insert(event.publish_id.clone()) {
            return true;
        }
        self.publish_order.push_back(event.publish_id.clone());
        if self.publish_order.len() > RECENT_PUBLISH_IDS
            && let Some(old) = self.publish_order.pop_front()
        {
            self.publish_ids.remove(&old);
        }
        false
    }

    /// Whether `event` announces the departure of a participant already
    /// shown as left (and not back since).
    fn repeats_a_departure(&mut self, event: &crate::proto::Event) -> bool {
        let pid = &event.participant_id;
        match event.kind() {
            crate::proto::EventKind::Joined => {
                self.departed.remove(pid);
                false
            }
            crate::proto::EventKind::Left => {
                if !self.departed.insert(pid.clone()) {
                    return true;
                }
                self.departed_order.push_back(pid.clone());
                if self.departed_order.len() > RECENT_PUBLISH_IDS
                    && let Some(old) = self.departed_order.pop_front()
                {
                    self.departed.remove(&old);
                }
                false
            }
            _ => false,
        }
    }

    /// Reports `update`. The returned future does not borrow the driver
    /// (which is not `Sync`), so the driver's future stays `Send`.
    fn emit(&self, update: Update) -> impl Future<Output = ()> + Send + 'static {
        let updates = self.updates.clone();
        async move {
            let _ = updates.send(update).await;
        }
    }

    async fn run(mut self) {
        let result = self.drive().await;
        // Whatever is still queued will not be sent: say so.
        for p in self.pending.drain(..) {
            let _ = p.done.send(Err(Error::Unavailable(if p.maybe_sent {
                "the session ended: the message may or may not have been delivered".into()
            } else {
                "the session ended before the message was sent".into()
            })));
        }
        self.emit(Update::Ended(result)).await;
    }

    async fn drive(&mut self) -> Result<()> {
        loop {
            if self.in_flight.is_none() {
                self.start_next_publish().await;
            }
            if self.in_flight.is_none()
                && self.pending.is_empty()
                && let Some(done) = self.leaving.take()
            {
                return self.do_leave(done).await;
            }
            let stream = self.stream.as_mut().expect("connected");
            let commands = self
                .commands
                .as_mut()
                .expect("the driver owns its commands");
            tokio::select! {
                frame = stream.message() => match frame {
                    Ok(Some(frame)) => self.on_frame(frame).await,
                    Ok(None) => self.reconnect("the node ended the session".into()).await?,
                    Err(status) => {
                        if fatal_stream_end(&status) {
                            return Err(Error::Rpc(status));
                        }
                        self.reconnect(status.message().to_string()).await?;
                    }
                },
                cmd = commands.recv(), if self.leaving.is_none() => match cmd {
                    Some(Command::Publish { text, done }) => self.queue_publish(text, done),
                    Some(Command::Leave { done }) => self.leaving = Some(done),
                    Some(Command::Participants { done }) => self.list_participants(done),
                    // Every sender is gone: nobody can publish or leave any
                    // more, so leave now.
                    None => {
                        let (done, _) = oneshot::channel();
                        self.leaving = Some(done);
                    }
                },
                result = poll_call(&mut self.in_flight) => {
                    self.in_flight = None;
                    self.on_publish_result(result).await?;
                }
            }
        }
    }

    /// Answers a `Participants` command from the current node, on a task of
    /// its own so that events keep flowing meanwhile.
    fn list_participants(&self, done: oneshot::Sender<Result<Vec<crate::proto::Participant>>>) {
        let Some(client) = &self.client else {
            let _ = done.send(Err(Error::Unavailable("not connected".into())));
            return;
        };
        let mut client = client.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(
                CALL_TIMEOUT,
                client.list_participants(crate::proto::ListParticipantsRequest {}),
            )
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("ListParticipants timed out")))
            .map(|reply| reply.into_inner().participants)
            .map_err(Error::Rpc);
            let _ = done.send(result);
        });
    }

    fn queue_publish(&mut self, text: String, done: oneshot::Sender<Result<PublishReply>>) {
        self.pending.push_back(PendingPublish {
            text,
            publish_id: uuid::Uuid::new_v4().to_string(),
            first_try: Instant::now(),
            maybe_sent: false,
            sent_to: Vec::new(),
            done,
        });
    }

    /// Handles a command that arrived while no node answers: a publish is
    /// queued; a Leave (or every sender dropped) ends the driver with an
    /// error, since the leave cannot be announced.
    fn take_command(&mut self, cmd: Option<Command>) -> Result<()> {
        const CANNOT_LEAVE: &str = "not connected to any node, so the leave could not be \
                                    announced: the cluster announces it after its grace period";
        match cmd {
            Some(Command::Publish { text, done }) => {
                self.queue_publish(text, done);
                Ok(())
            }
            Some(Command::Leave { done }) => {
                let _ = done.send(Err(Error::Unavailable(CANNOT_LEAVE.into())));
                Err(Error::Unavailable(CANNOT_LEAVE.into()))
            }
            Some(Command::Participants { done }) => {
                let _ = done.send(Err(Error::Unavailable(
                    "not connected to any node now".into(),
                )));
                Ok(())
            }
            None => Err(Error::Unavailable(CANNOT_LEAVE.into())),
        }
    }

    async fn start_next_publish(&mut self) {
        loop {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if front.first_try.elapsed() > self.options.publish_timeout {
                let p = self.pending.pop_front().expect("front exists");
                let maybe = p.maybe_sent;
                let _ = p.done.send(Err(Error::Unavailable(if maybe {
                    "gave up: the message may or may not have been delivered".into()
                } else {
                    "gave up: the message was not delivered".into()
                })));
                self.emit(Update::PublishGaveUp {
                    text: p.text,
                    maybe_delivered: maybe,
                })
                .await;
                continue;
            }
            let (Some(client), Some(id)) = (&self.client, &self.identity) else {
                return;
            };
            let request = PublishRequest {
                session_token: id.token.clone(),
                text: front.text.clone(),
                lamport: self
                    .clock
                    .send(Rpc::Publish, &self.options.name, &self.current),
                publish_id: front.publish_id.clone(),
            };
            if let Err(status) = crate::limits::check_request(&request) {
                // Too large for any node: refused here, never retried.
                if let Some(p) = self.pending.pop_front() {
                    let _ = p.done.send(Err(Error::Rpc(status)));
                }
                continue;
            }
            tracing::info!(lamport = request.lamport, publish_id = %request.publish_id, "sending Publish");
            front.maybe_sent = true;
            if let Some(node) = &self.current_node
                && !front.sent_to.contains(node)
                && front.sent_to.len() < MAX_KNOWN_SERVERS
            {
                front.sent_to.push(node.clone());
            }
            let mut client = client.clone();
            self.in_flight = Some(Box::pin(async move {
                tokio::time::timeout(CALL_TIMEOUT, client.publish(request))
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("publish timed out")))
                    .map(tonic::Response::into_inner)
            }));
            return;
        }
    }

    async fn on_publish_result(&mut self, result: Result<PublishReply, Status>) -> Result<()> {
        match result {
            Ok(reply) => {
                if let Some(p) = self.pending.pop_front() {
                    let _ = p.done.send(Ok(reply));
                }
                Ok(())
            }
            Err(status) if retryable(status.code()) => {
                // Keep it at the front; it is retried once reconnected.
                self.reconnect(format!("publish failed: {}", status.message()))
                    .await
            }
            Err(status) => {
                if let Some(p) = self.pending.pop_front() {
                    let _ = p.done.send(Err(Error::Rpc(status)));
                }
                Ok(())
            }
        }
    }

    async fn on_frame(&mut self, frame: JoinFrame) {
        match frame.frame {
            Some(join_frame::Frame::Events(batch)) => {
                for event in batch.events {
                    let Some((origin, seq)) = event
                        .id
                        .as_ref()
                        .and_then(|id| Some((OriginKey::from(id.origin.as_ref()?), id.seq)))
                    else {
                        continue;
                    };
                    let seen = self.seen.entry(origin).or_default();
                    if seq <= *seen {
                        continue; // already delivered before a failover
                    }
                    *seen = seq;
                    if self.repeats_a_publish(&event) || self.repeats_a_departure(&event) {
                        continue;
                    }
                    self.emit(Update::Received(self.clock.receive(event))).await;
                }
            }
            Some(join_frame::Frame::Gap(gap)) => {
                self.emit(Update::Received(Received::Gap(gap))).await;
            }
            Some(join_frame::Frame::Servers(list)) => {
                self.learn_servers(&list);
                self.emit(Update::Received(Received::Servers(list))).await;
            }
            Some(join_frame::Frame::Late(run)) => {
                self.emit(Update::Received(Received::Late(run.late))).await;
            }
            Some(join_frame::Frame::Room(room)) => {
                // Those it was told left, by news lost since, are here.
                let back: Vec<String> = room
                    .participants
                    .iter()
                    .filter(|p| self.departed.remove(&p.id))
                    .map(|p| p.name.clone())
                    .collect();
                if !back.is_empty() {
                    self.emit(Update::Received(Received::StillHere(back))).await;
                }
            }
            Some(join_frame::Frame::Welcome(_)) | None => {}
        }
    }

    /// Finds a live node and resumes there; if the session cannot be
    /// resumed any more, joins again as new.
    async fn reconnect(&mut self, reason: String) -> Result<()> {
        let from = std::mem::take(&mut self.current);
        self.stream = None;
        self.client = None;
        self.in_flight = None;
        self.emit(Update::Reconnecting { reason }).await;
        let mut backoff = Duration::from_millis(50);
        let mut resume = true;
        // Whether `NoNodeAnswers` was reported for this reconnection.
        let mut told = false;
        loop {
            // Try the others first: the node we lost is the least likely to
            // answer.
            let mut candidates = self.servers.clone();
            if let Some(pos) = candidates.iter().position(|s| s == &from) {
                let lost = candidates.remove(pos);
                candidates.push(lost);
            }
            for addr in candidates {
                let mut commands = self.commands.take().expect("the driver owns its commands");
                let raced = tokio::select! {
                    result = self.open(&addr, resume) => Ok(result),
                    cmd = commands.recv() => Err(cmd),
                };
                self.commands = Some(commands);
                let attempt = match raced {
                    Ok(result) => Some(result),
                    // A Leave ends the driver; a publish waits its turn.
                    Err(cmd) => self.take_command(cmd).map(|()| None)?,
                };
                let Some(attempt) = attempt else { continue };
                match attempt {
                    Ok(()) => {
                        let update = if resume {
                            Update::Moved {
                                from: from.clone(),
                                to: addr,
                            }
                        } else {
                            Update::Rejoined { server: addr }
                        };
                        self.emit(update).await;
                        return Ok(());
                    }
                    Err(Error::Rpc(s)) if resume && s.code() == Code::Unauthenticated => {
                        // The session is gone (its grace period ran out or
                        // it was announced as left): join again as new.
                        // What it saw stays seen: the Rejoin hands it over,
                        // so the new session's publishes never overtake it.
                        resume = false;
                        break;
                    }
                    Err(Error::Rpc(s))
                        if !retryable(s.code()) && s.code() != Code::AlreadyExists =>
                    {
                        return Err(Error::Rpc(s));
                    }
                    Err(e) => {
                        tracing::debug!(addr, error = %e, "reconnect attempt failed");
                        if !told {
                            told = true;
                            self.emit(Update::NoNodeAnswers {
                                reason: e.to_string(),
                            })
                            .await;
                        }
                    }
                }
            }
            let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
            let pause = tokio::time::sleep(backoff + jitter);
            tokio::pin!(pause);
            loop {
                let commands = self
                    .commands
                    .as_mut()
                    .expect("the driver owns its commands");
                tokio::select! {
                    _ = &mut pause => break,
                    cmd = commands.recv() => self.take_command(cmd)?,
                }
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
            // Drop publishes that have waited too long, telling the user.
            self.expire_publishes().await;
        }
    }

    async fn expire_publishes(&mut self) {
        while let Some(front) = self.pending.front() {
            if front.first_try.elapsed() <= self.options.publish_timeout {
                return;
            }
            let p = self.pending.pop_front().expect("front exists");
            let maybe = p.maybe_sent;
            let _ = p
                .done
                .send(Err(Error::Unavailable("gave up while reconnecting".into())));
            self.emit(Update::PublishGaveUp {
                text: p.text,
                maybe_delivered: maybe,
            })
            .await;
        }
    }

    async fn do_leave(&mut self, done: oneshot::Sender<Result<u64>>) -> Result<()> {
        loop {
            let (Some(client), Some(id)) = (&self.client, &self.identity) else {
                let _ = done.send(Err(Error::Unavailable("not connected".into())));
                return Ok(());
            };
            let request = LeaveRequest {
                session_token: id.token.clone(),
                lamport: self
                    .clock
                    .send(Rpc::Leave, &self.options.name, &self.current),
            };
            tracing::info!(lamport = request.lamport, "sending Leave");
            let mut client = client.clone();
            let result = tokio::time::timeout(CALL_TIMEOUT, client.leave(request))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("leave timed out")));
            match result {
                Ok(reply) => {
                    // Print what arrived before the stream ends.
                    let deadline = Instant::now() + CALL_TIMEOUT;
                    while let Some(stream) = self.stream.as_mut() {
                        match tokio::time::timeout_at(deadline, stream.message()).await {
                            Ok(Ok(Some(frame))) => self.on_frame(frame).await,
                            _ => break,
                        }
                    }
                    let _ = done.send(Ok(reply.into_inner().lamport));
                    return Ok(());
                }
                Err(status) if retryable(status.code()) => {
                    self.reconnect(format!("leave failed: {}", status.message()))
                        .await?;
                }
                Err(status) => {
                    let _ = done.send(Err(Error::Rpc(status)));
                    return Ok(());
                }
            }
        }
    }
}

async fn poll_call<T>(call: &mut Option<Call<T>>) -> Result<T, Status> {
    match call {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

/// Errors that a retry on this or another node may cure.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::Unauthenticated
    )
}

/// Stream endings that a reconnect would not cure.
fn fatal_stream_end(status: &Status) -> bool {
    matches!(status.code(), Code::AlreadyExists | Code::InvalidArgument)
}

/// Keeps the last `count` of `events`, dropping the older ones before them.
fn keep_latest(events: &mut Vec<crate::proto::Event>, count: usize) {
    let extra = events.len().saturating_sub(count);
    events.drain(..extra);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_messages_are_cut_to_the_count_asked_for() {
        let event = |lamport| crate::proto::Event {
            lamport,
            ..Default::default()
        };
        let mut earlier: Vec<_> = (1..=5).map(event).collect();
        keep_latest(&mut earlier, 2);
        assert_eq!(
            earlier.iter().map(|e| e.lamport).collect::<Vec<_>>(),
            [4, 5]
        );
        keep_latest(&mut earlier, 10);
        assert_eq!(earlier.len(), 2);
        keep_latest(&mut earlier, 0);
        assert!(earlier.is_empty());
    }
}
