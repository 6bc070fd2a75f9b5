//! The server mesh: how nodes find each other, relay events and notice
//! failures. The rules live in [`crate::core`]; this module owns the tasks
//! and sockets.
//!
//! * Joining: a new node calls `ServerJoin` on any member and receives the
//!   membership and a snapshot (participants, what the member delivered, its
//!   Lamport clock), so it serves at once. Membership changes are pushed to
//!   every peer with `UpdateServers` and also ride every heartbeat, so views
//!   converge even when pushes are lost. Membership is a CRDT
//!   ([`crate::core::membership`]): concurrent joins through different
//!   members both end up everywhere.
//! * Relaying: each node keeps one outgoing link per peer, a long-lived
//!   `Relay` stream carrying batches of the node's own events (FIFO) and a
//!   heartbeat every interval. The peer answers with acknowledgements: what
//!   it has delivered, per origin. When a link (re)connects, or its queue
//!   overflowed, or a node died, it re-sends from history whatever the peer
//!   lacks, from every origin: that is how survivors reconcile what a dead
//!   node sent to only some of them. Receivers drop duplicates and hold back
//!   events until their causal predecessors are delivered.
//! * Failure: a peer not heard of, directly or through any member (its
//!   heartbeat counter rides the membership view), for the failure timeout
//!   is unreachable; it stays a member and its link keeps dialling it. A
//!   link silent for the failure timeout is dropped and dialled again: a cut
//!   network leaves connections silent, not closed. Once its counter moves
//!   again the peer is back: a fresh connection replays what it lacks, and
//!   this node catches up before it stamps anything more for its
//!   participants. The participants of an unreachable or departed node are
//!   announced as left, once per side, by one node chosen by a rule all agree
//!   on (the reachable node with the smallest id), after their grace period;
//!   a participant still attached to its node is announced back after the
//!   heal.
//! * A node whose id a newer process took over is refused by its peers; it
//!   learns so and exits with a clear message rather than serving stale
//!   state. Nothing else makes a node exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

use crate::connections::ConnInfo;
use crate::core::node::{Replay, Reply};
use crate::diagram::{self, Call, Dir, Record, Who};
use crate::error::{Error, Result, mesh_status};
use crate::node::{Answer, LinkHandle, LinkItem, Node};
use crate::proto::server_mesh_client::ServerMeshClient;
use crate::proto::{
    Event, Member, NodeId, RelayAck, RelayFrame, ServerJoinReply, ServerJoinRequest,
    UpdateServersRequest, relay_frame,
};
use crate::tls::TlsSettings;
use crate::wire::RelayOut;

/// The metadata entry that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-chitty-cluster-secret";
/// Most events in one relay batch.
const MAX_RELAY_BATCH: usize = 512;
/// Longest wait for one mesh call (join, membership push).
const MESH_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest attempt to join through a boot member (dial and call).
const BOOT_ATTEMPT: Duration = Duration::from_secs(6);
/// Reconnect backoff bounds for peer links.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Adds the cluster secret to every outgoing mesh call.
#[derive(Clone, Debug)]
pub struct AddSecret(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for AddSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert(SECRET_HEADER, value.clone());
        }
        Ok(req)
    }
}

/// Refuses mesh calls that do not carry the cluster secret, and, on a TLS
/// node, those on a connection that presented no client certificate from
/// the cluster's CA (the handshake already refused one from another CA).
#[derive(Clone, Debug)]
pub struct CheckMeshCaller {
    pub secret: Option<Arc<str>>,
    pub require_certificate: bool,
}

impl Interceptor for CheckMeshCaller {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let conn = req.extensions().get::<ConnInfo>();
        let remote = conn.and_then(|c| c.remote);
        if self.require_certificate && conn.is_none_or(|c| c.peer_certs.is_none()) {
            let refusal = "this node requires a client certificate from the cluster's CA for mesh calls: start the calling node with --tls-cert, --tls-key and --tls-ca";
            warn!(?remote, reason = refusal, "refused a mesh call");
            return Err(Status::unauthenticated(refusal));
        }
        let given = req.metadata().get(SECRET_HEADER);
        let refusal = match (&self.secret, given) {
            (None, None) => return Ok(req),
            (Some(secret), Some(given))
                if constant_time_eq(given.as_bytes(), secret.as_bytes()) =>
            {
                return Ok(req);
            }
            // Both sides must say what is wrong: a node without a secret
            // does not admit one that has it, nor the other way round.
            (None, Some(_)) => {
                "this node has no cluster secret but the caller sent one: give every node of the cluster the same secret (--cluster-secret-file)"
            }
            (Some(_), None) => {
                "this node requires the cluster secret and the call carried none: give every node of the cluster the same secret (--cluster-secret-file)"
            }
            (Some(_), Some(_)) => {
                "wrong cluster secret: every node of the cluster needs the same one"
            }
        };
        warn!(?remote, reason = refusal, "refused a mesh call");
        Err(Status::unauthenticated(refusal))
    }
}

/// How a connect error says that nothing listens at the address.
const REFUSED: &str = "connection refused";

/// Whether `error` is a refused connection: nothing listens there, so the
/// node that did is not running (unlike a timeout, which a cut network
/// gives too).
fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Compares without an early exit, so timing does not reveal the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub type MeshClient = ServerMeshClient<InterceptedService<Channel, AddSecret>>;

/// A mesh client for the node at `addr`, carrying `secret`, over TLS with
/// `tls` (a node's settings: its certificate is its client certificate).
pub async fn mesh_client(
    addr: &str,
    secret: Option<&str>,
    tls: Option<&TlsSettings>,
) -> Result<MeshClient> {
    Ok(sized(mesh_service(addr, secret, tls).await?))
}

/// A mesh client over `service`, within the mesh's message size limit.
fn sized(service: InterceptedService<Channel, AddSecret>) -> MeshClient {
    ServerMeshClient::new(service)
        .max_decoding_message_size(crate::limits::MESH_MAX_MESSAGE)
        .max_encoding_message_size(crate::limits::MESH_MAX_MESSAGE)
}

/// A connection to the node at `addr` whose calls carry `secret`.
async fn mesh_service(
    addr: &str,
    secret: Option<&str>,
    tls: Option<&TlsSettings>,
) -> Result<InterceptedService<Channel, AddSecret>> {
    let channel = dial(addr, tls).await.map_err(|failed| failed.error)?;
    with_secret(channel, secret)
}

/// `channel` with an interceptor that adds `secret` to every call.
fn with_secret(
    channel: Channel,
    secret: Option<&str>,
) -> Result<InterceptedService<Channel, AddSecret>> {
    let secret = match secret {
        Some(s) => Some(
            s.parse()
                .map_err(|_| Error::Protocol("cluster secret must be printable ASCII".into()))?,
        ),
        None => None,
    };
    Ok(InterceptedService::new(channel, AddSecret(secret)))
}

/// Why a dial or a join failed, and whether trying again may help.
struct Failed {
    error: Error,
    /// Nothing answered yet (refused, no route, the name does not resolve
    /// yet, a timeout): the node may still be starting. A refusal or a TLS
    /// mismatch is a setup error that waiting does not fix.
    may_pass_later: bool,
}

/// Connects to the node at `addr`.
async fn dial(addr: &str, tls: Option<&TlsSettings>) -> Result<Channel, Failed> {
    let connect_err = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let endpoint = crate::tls::endpoint(addr, tls)
        .map_err(|reason| Failed {
            error: connect_err(reason),
            may_pass_later: false,
        })?
        .connect_timeout(MESH_CALL_TIMEOUT)
        .initial_stream_window_size(crate::http2::STREAM_WINDOW)
        .initial_connection_window_size(crate::http2::CONNECTION_WINDOW)
        .tcp_nodelay(true);
    endpoint.connect().await.map_err(|e| {
        if is_refused(&e) {
            Failed {
                error: connect_err(format!("{REFUSED} ({e})")),
                may_pass_later: true,
            }
        } else {
            Failed {
                error: connect_err(crate::tls::explain_dial_error(addr, tls, &e)),
                may_pass_later: !crate::tls::is_handshake_failure(tls, &e),
            }
        }
    })
}

impl Node {
    fn secret(&self) -> Option<&str> {
        self.config().cluster_secret.as_deref()
    }

    fn tls(&self) -> Option<&TlsSettings> {
        self.config().tls.as_ref()
    }

    /// This node, as the diagram records name it.
    pub(crate) fn who(&self) -> Who<'_> {
        Who::Node {
            node: self.id(),
            addr: &self.config().advertise,
        }
    }

    /// Logs the diagram record of a mesh call (membership calls at debug:
    /// they repeat on every change).
    pub(crate) fn log_mesh_call(
        &self,
        call: Call,
        dir: Dir,
        peer: Option<&NodeId>,
        peer_addr: Option<&str>,
    ) {
        let record = Record::new(call, dir).peer(peer, peer_addr);
        match call {
            Call::UpdateServers => diagram::rpc_debug(self.who(), record),
            _ => diagram::rpc(self.who(), record),
        }
    }

    /// Joins the cluster through any of the members at `boot`, trying them
    /// in turn with a growing pause (at most [`BACKOFF_MAX`]) until one
    /// admits this node or `timeout` has passed: nodes started together
    /// (compose, systemd) come up in any order. A refusal (wrong secret or
    /// certificate) ends the attempts at once. The error names every address
    /// with its last failure.
    pub async fn join_cluster(&self, boot: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last: Vec<Option<Error>> = boot.iter().map(|_| None).collect();
        let mut pause = BACKOFF_MIN;
        'attempts: loop {
            for (addr, last) in boot.iter().zip(&mut last) {
                // A member that is itself still starting has its port open
                // but does not answer yet: over TLS the handshake would wait
                // for it forever. Every attempt is bounded.
                // Not cut short by the deadline: an attempt the member is
                // answering is let finish.
                let budget = BOOT_ATTEMPT;
                let attempt = tokio::time::timeout(budget, self.join_through(addr))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failed {
                            error: Error::Connect {
                                addr: addr.clone(),
                                reason: format!("no answer within {} ms", budget.as_millis()),
                            },
                            may_pass_later: true,
                        })
                    });
                match attempt {
                    Ok(()) => return Ok(()),
                    Err(failed) if !failed.may_pass_later => return Err(failed.error),
                    Err(failed) => {
                        debug!(boot = %addr, error = %failed.error, "boot member not reachable; trying again");
                        *last = Some(failed.error);
                    }
                }
                if Instant::now() >= deadline {
                    break 'attempts;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
        let causes: Vec<String> = boot
            .iter()
            .zip(&last)
            .map(|(addr, error)| match error {
                Some(error) => error.to_string(),
                None => format!("{addr}: not tried"),
            })
            .collect();
        Err(Error::Unavailable(format!(
            "could not join the cluster within {} ms (--boot-timeout-ms): {}",
            timeout.as_millis(),
            causes.join("; ")
        )))
    }

    /// One attempt to join through the member at `boot`.
    async fn join_through(&self, boot: &str) -> Result<(), Failed> {
        let channel = dial(boot, self.tls()).await?;
        let fatal = |error| Failed {
            error,
            may_pass_later: false,
        };
        let mut client = sized(with_secret(channel, self.secret()).map_err(fatal)?);
        let (member, clock) = {
            let state = self.lock();
            (state.core.own_member(), state.core.lamport())
        };
        diagram::rpc(
            self.who(),
            Record::new(Call::ServerJoin, Dir::Sent)
                .peer(None, Some(boot))
                .clock(clock, clock),
        );
        let reply = tokio::time::timeout(
            MESH_CALL_TIMEOUT,
            client.server_join(ServerJoinRequest {
                member: Some(member),
            }),
        )
        .await
        .map_err(|_| Failed {
            error: Error::Unavailable(format!("{boot} did not answer ServerJoin")),
            may_pass_later: true,
        })?
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated => fatal(Error::Protocol(format!(
                "{boot} refused this node: {}",
                status.message()
            ))),
            code => match crate::tls::explain_call_error(boot, self.tls(), &status) {
                Some(reason) => fatal(Error::Connect {
                    addr: boot.to_string(),
                    reason,
                }),
                // A node that is stopping, or lost its connection while
                // answering: another member, or this one later, may admit.
                None if code == Code::Unavailable => Failed {
                    error: Error::Connect {
                        addr: boot.to_string(),
                        reason: status.message().to_string(),
                    },
                    may_pass_later: true,
                },
                None => fatal(Error::from(status)),
            },
        })?
        .into_inner();
        info!(boot, "joined the cluster through its boot member");
        let boot_clock = reply.lamport;
        let (before, after) = self.step(|core, now| {
            let before = core.lamport();
            core.joined_cluster(now, reply);
            (before, core.lamport())
        });
        diagram::rpc(
            self.who(),
            Record::new(Call::ServerJoinReply, Dir::Received)
                .peer(None, Some(boot))
                .carried(boot_clock)
                .clock(before, after),
        );
        Ok(())
    }

    /// `ServerJoin`: admits `joiner` and hands it what it needs to serve.
    pub(crate) fn admit(&self, joiner: Member) -> Result<ServerJoinReply, Status> {
        self.step(|core, now| core.admit(now, joiner))
            .map_err(|r| mesh_status(&r))
    }

    /// `UpdateServers`: merges a peer's view and returns ours.
    pub(crate) fn merge_members(&self, members: &[Member]) -> Vec<Member> {
        self.step(|core, now| core.merge_members(now, members))
    }

    /// The first frame of an inbound relay link: who is calling. Returns the
    /// link, its acknowledgement channel registered.
    pub(crate) fn relay_hello(&self, hello: Member) -> Result<InboundLink, Status> {
        let mut state = self.lock();
        let opened = state.core.on_hello(Instant::now(), hello);
        let link = opened.map(|(peer, link, ack)| {
            // The first acknowledgement tells the peer what to catch up
            // on. The channel is registered before the core's outputs are
            // carried out, so no acknowledgement for this link is lost.
            let (acks, first) = ack_channel(Ok(ack));
            state.ack_watches.insert(link, acks.clone());
            InboundLink {
                peer,
                link,
                acks,
                first,
            }
        });
        self.carry_out(&mut state);
        link.map_err(|r| mesh_status(&r))
    }

    /// Starts the background tasks: the core's clock, membership pushes,
    /// and giving memory back after many sessions went.
    pub fn start_mesh(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(run_ticks(self.clone())),
            tokio::spawn(run_gossip(self.clone())),
            tokio::spawn(crate::node::run_memory_return(self.clone())),
        ]
    }

    /// Graceful stop: waits (bounded) until peers hold our last events, then
    /// tells them we leave, so they drop us at once.
    pub async fn leave_cluster(&self) {
        let flushed = self.ask_now(|core, now, id| {
            core.stop_sessions();
            core.flush(now, id)
        });
        if !matches!(flushed.await, Ok(Answer::Reply(Reply::Flushed))) {
            debug!("stopped before peers acknowledged everything");
        }
        let (members, peers) = self.lock().core.leave_cluster();
        push_members(self.clone(), members, peers).await;
        info!("left the cluster");
    }

    /// Stops every mesh task.
    pub fn stop_mesh(&self) {
        self.shared.shutdown.send_replace(true);
        self.lock().links.clear();
    }

    /// Resolves with a reason when the cluster removed this node.
    pub async fn removed(&self) -> String {
        let mut rx = self.shared.fatal.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Feeds the core the time at its tick interval: heartbeats, failure
/// detection, grace periods, announcements, request deadlines.
async fn run_ticks(node: Node) {
    let mut shutdown = node.shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(node.config().timing().tick_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        node.step(|core, now| core.tick(now));
    }
}

/// Pushes the membership to every peer whenever it changes.
async fn run_gossip(node: Node) {
    let mut shutdown = node.shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = node.shared.gossip.notified() => {}
        }
        let (members, peers) = {
            let state = node.lock();
            let membership = state.core.membership();
            (membership.snapshot(), membership.peers())
        };
        push_members(node.clone(), members, peers).await;
    }
}

/// Sends `members` to each of `peers` (concurrently, bounded in time) and
/// merges their answers.
pub(crate) async fn push_members(node: Node, members: Vec<Member>, peers: Vec<Member>) {
    let mut calls = tokio::task::JoinSet::new();
    for peer in peers {
        let members = members.clone();
        let secret = node.secret().map(str::to_string);
        let tls = node.tls().cloned();
        let node = node.clone();
        calls.spawn(async move {
            let call = async {
                let mut client = mesh_client(&peer.addr, secret.as_deref(), tls.as_ref())
                    .await
                    .ok()?;
                node.log_mesh_call(
                    Call::UpdateServers,
                    Dir::Sent,
                    peer.node.as_ref(),
                    Some(&peer.addr),
                );
                let reply = client
                    .update_servers(UpdateServersRequest { members })
                    .await
                    .ok()?;
                Some(reply.into_inner().members)
            };
            tokio::time::timeout(MESH_CALL_TIMEOUT, call)
                .await
                .ok()
                .flatten()
        });
    }
    while let Some(done) = calls.join_next().await {
        if let Ok(Some(theirs)) = done {
            node.merge_members(&theirs);
        }
    }
}

pub(crate) fn spawn_link(node: &Node, peer: Member) -> LinkHandle {
    let (tx, rx) = mpsc::channel(node.config().peer_queue);
    let resync = Arc::new(AtomicBool::new(false));
    let restart = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let id = peer.node.clone().unwrap_or_default();
    let link = Link {
        node: node.clone(),
        id: id.clone(),
        peer,
        rx,
        resync: resync.clone(),
        restart: restart.clone(),
        wake: wake.clone(),
        caught_up: false,
    };
    LinkHandle {
        peer: id,
        tx,
        resync,
        restart,
        wake,
        task: tokio::spawn(link.run()),
    }
}

/// One outgoing peer link: owns the connection to the peer and the queue of
/// what the core relays to it.
struct Link {
    node: Node,
    id: NodeId,
    peer: Member,
    rx: mpsc::Receiver<LinkItem>,
    resync: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
    wake: Arc<Notify>,
    /// The current connection got past its catch-up.
    caught_up: bool,
}

impl Link {
    async fn run(mut self) {
        let mut shutdown = self.node.shared.shutdown.subscribe();
        let mut backoff = BACKOFF_MIN;
        loop {
            self.caught_up = false;
            let result = self.session(&mut shutdown).await;
            if self.caught_up {
                // It worked for a while: the next try comes quickly.
                backoff = BACKOFF_MIN;
            }
            let id = self.id.clone();
            match result {
                Ok(()) => return,
                Err(status) if status.code() == Code::FailedPrecondition => {
                    warn!(peer = %self.peer.addr, reason = status.message(), "peer refused this node; exchanging membership");
                    self.node.step(|core, _| {
                        core.link_down(&id);
                        core.link_refused(&id)
                    });
                }
                Err(status) => {
                    debug!(peer = %self.peer.addr, error = %status, "peer link down; reconnecting");
                    let refused = status.message().contains(REFUSED);
                    self.node.step(|core, now| {
                        core.link_down(&id);
                        if refused {
                            core.connect_refused(now, &id);
                        }
                    });
                }
            }
            let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: hello, catch-up from history, then what the core
    /// relays, until the connection breaks or the node stops.
    async fn session(
        &mut self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Status> {
        let node = self.node.clone();
        self.restart.store(false, Ordering::Release);
        let mut client = crate::proto::peer::server_mesh_client::ServerMeshClient::new(
            mesh_service(&self.peer.addr, node.secret(), node.tls())
                .await
                .map_err(Status::from)?,
        )
        .max_decoding_message_size(crate::limits::MESH_MAX_MESSAGE)
        .max_encoding_message_size(crate::limits::MESH_MAX_MESSAGE);
        let (out, out_rx) = mpsc::channel::<RelayOut>(16);
        let hello = RelayFrame {
            frame: Some(relay_frame::Frame::Hello(node.lock().core.own_member())),
        };
        out.send(RelayOut::Frame(hello))
            .await
            .map_err(|_| Status::cancelled("link closed"))?;
        // The peer client's `Relay` sends `RelayOut`: the same messages on the
        // wire, with events as the node's one encoding.
        let mut acks = client
            .relay(ReceiverStream::new(out_rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(node.config().failure_timeout, acks.message())
            .await
            .map_err(|_| Status::deadline_exceeded("peer did not acknowledge the link"))??
            .ok_or_else(|| Status::unavailable("peer closed the link"))?;
        let Some(replay) = self.catch_up(|core, now, id| core.link_up(now, id, first)) else {
            return Ok(()); // no longer a peer: the node drops this link
        };
        self.send_replay(&out, replay).await?;
        self.caught_up = true;

        let mut buf = Vec::with_capacity(MAX_RELAY_BATCH);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                ack = acks.message() => match ack? {
                    Some(ack) => {
                        if diagram::debug_enabled() {
                            let marks = diagram::marks(&ack.held);
                            diagram::rpc_debug(
                                node.who(),
                                Record::new(Call::RelayAck, Dir::Received)
                                    .peer(Some(&self.id), Some(&self.peer.addr))
                                    .held(&marks),
                            );
                        }
                        let id = &self.id;
                        node.step(|core, now| core.on_ack(now, id, ack));
                    }
                    None => return Err(Status::unavailable("peer closed the link")),
                },
                n = self.rx.recv_many(&mut buf, MAX_RELAY_BATCH) => {
                    if n == 0 {
                        return Ok(()); // the node dropped this link
                    }
                    self.gather(&mut buf);
                    if let Some((addr, delay)) = &node.config().fault_link_delay
                        && addr == &self.peer.addr
                    {
                        tokio::time::sleep(*delay).await;
                    }
                    self.send_items(&out, &mut buf).await?;
                }
                _ = self.wake.notified() => {
                    if self.restart.swap(false, Ordering::AcqRel) {
                        return Err(Status::unavailable("peer link silent for the failure timeout"));
                    }
                    if self.resync.load(Ordering::Acquire)
                        && let Some(replay) = self.catch_up(|core, _, id| core.replay_for(id))
                    {
                        self.send_replay(&out, replay).await?;
                    }
                }
            }
        }
    }

    /// Adds to `buf` what the node queued for this link since it woke. A
    /// step of the node (several messages of a publish stream, a relayed
    /// batch) queues all its events under the node's lock: waiting for
    /// the lock makes them leave as one batch rather than one frame each,
    /// with a write each here and a decoding each at the peer.
    fn gather(&mut self, buf: &mut Vec<LinkItem>) {
        drop(self.node.lock());
        while buf.len() < MAX_RELAY_BATCH {
            match self.rx.try_recv() {
                Ok(item) => buf.push(item),
                Err(_) => break,
            }
        }
    }

    /// Under the node's lock: drops what is queued (`replay` covers it) and
    /// asks the core what to re-send.
    fn catch_up(
        &mut self,
        replay: impl FnOnce(&mut crate::core::node::NodeCore, Instant, &NodeId) -> Option<Replay>,
    ) -> Option<Replay> {
        let mut state = self.node.lock();
        while self.rx.try_recv().is_ok() {}
        self.resync.store(false, Ordering::Release);
        let replay = replay(&mut state.core, Instant::now(), &self.id);
        self.node.carry_out(&mut state);
        replay
    }

    /// Sends a replay: the gap notice, then the events in batches.
    async fn send_replay(
        &self,
        out: &mpsc::Sender<RelayOut>,
        replay: Replay,
    ) -> Result<(), Status> {
        let closed = |_| Status::unavailable("link closed");
        if let Some(gap) = replay.skip {
            let frame = RelayOut::Frame(RelayFrame {
                frame: Some(relay_frame::Frame::Skip(gap)),
            });
            out.send(frame).await.map_err(closed)?;
        }
        let mut grants = replay.grants;
        for chunk in replay.events.chunks(MAX_RELAY_BATCH) {
            self.log_sent(chunk.iter().map(|e| &**e));
            let frame = RelayOut::Batch {
                events: chunk.iter().map(|e| crate::wire::event_field(e)).collect(),
                grants: std::mem::take(&mut grants),
                late: replay.late,
            };
            out.send(frame).await.map_err(closed)?;
        }
        if !replay.never_held.is_empty() {
            let frame = RelayOut::Frame(RelayFrame {
                frame: Some(relay_frame::Frame::NeverHeld(crate::proto::NeverHeld {
                    upto: replay.never_held,
                })),
            });
            out.send(frame).await.map_err(closed)?;
        }
        Ok(())
    }

    /// Logs the diagram record of each event relayed to this peer.
    fn log_sent<'e>(&self, events: impl Iterator<Item = &'e Event>) {
        for event in events {
            diagram::rpc(
                self.node.who(),
                Record::new(Call::RelayBatch, Dir::Sent)
                    .peer(Some(&self.id), Some(&self.peer.addr))
                    .participant(&event.participant_name, &event.participant_id)
                    .event(event),
            );
        }
    }

    /// Sends queued items in order: runs of events as one batch each,
    /// heartbeats as their own frames.
    async fn send_items(
        &self,
        out: &mpsc::Sender<RelayOut>,
        items: &mut Vec<LinkItem>,
    ) -> Result<(), Status> {
        let closed = |_| Status::unavailable("link closed");
        let mut events = Vec::new();
        let mut grants = Vec::new();
        if diagram::info_enabled() {
            self.log_sent(items.iter().filter_map(|item| match item {
                LinkItem::Event(wired, _) => Some(&*wired.event),
                _ => None,
            }));
        }
        for item in items.drain(..) {
            match item {
                LinkItem::Event(wired, grant) => {
                    events.push(wired.field);
                    grants.extend(grant);
                }
                LinkItem::Heartbeat(hb) => {
                    send_batch(out, &mut events, &mut grants).await?;
                    let frame = RelayOut::Frame(RelayFrame {
                        frame: Some(relay_frame::Frame::Heartbeat(hb)),
                    });
                    out.send(frame).await.map_err(closed)?;
                }
                LinkItem::Forward(replay) => {
                    send_batch(out, &mut events, &mut grants).await?;
                    self.send_replay(out, *replay).await?;
                }
            }
        }
        send_batch(out, &mut events, &mut grants).await?;
        Ok(())
    }
}

/// Sends the live events gathered so far (if any) as one batch.
async fn send_batch(
    out: &mpsc::Sender<RelayOut>,
    events: &mut Vec<prost::bytes::Bytes>,
    grants: &mut Vec<crate::proto::SessionGrant>,
) -> Result<(), Status> {
    if events.is_empty() {
        return Ok(());
    }
    let batch = RelayOut::Batch {
        events: std::mem::take(events),
        grants: std::mem::take(grants),
        late: false,
    };
    out.send(batch)
        .await
        .map_err(|_| Status::unavailable("link closed"))
}

/// An inbound relay link the core accepted.
pub(crate) struct InboundLink {
    pub(crate) peer: NodeId,
    /// Its number, to tell the core when it closes.
    pub(crate) link: u64,
    pub(crate) acks: AckSender,
    /// The receiving end: the response stream.
    pub(crate) first: AckStream,
}

/// The acknowledgements of one inbound relay link, on their way to the
/// Relay call's response stream. Each one says all the node holds, so only
/// the newest is kept: a reader that falls behind skips stale ones and never
/// misses the newest (as a watch channel does). The stream takes it rather
/// than copying it. `first` is the stream's first item.
pub(crate) fn ack_channel(first: Result<RelayAck, Status>) -> (AckSender, AckStream) {
    let slot = Arc::new(AckSlot {
        latest: std::sync::Mutex::new(Some(first)),
        waker: atomic_waker::AtomicWaker::new(),
        senders: std::sync::atomic::AtomicUsize::new(1),
    });
    (AckSender(slot.clone()), AckStream(slot))
}

#[derive(Debug)]
struct AckSlot {
    latest: std::sync::Mutex<Option<Result<RelayAck, Status>>>,
    waker: atomic_waker::AtomicWaker,
    /// Senders not dropped: with none left the stream ends, after the last
    /// acknowledgement.
    senders: std::sync::atomic::AtomicUsize,
}

impl AckSlot {
    fn latest(&self) -> std::sync::MutexGuard<'_, Option<Result<RelayAck, Status>>> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Hands acknowledgements to an [`AckStream`].
#[derive(Debug)]
pub(crate) struct AckSender(Arc<AckSlot>);

impl AckSender {
    /// Makes `ack` the one the stream yields next, in place of any it has
    /// not taken yet.
    pub(crate) fn send_replace(&self, ack: Result<RelayAck, Status>) {
        *self.0.latest() = Some(ack);
        self.0.waker.wake();
    }
}

impl Clone for AckSender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Self(self.0.clone())
    }
}

impl Drop for AckSender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.waker.wake();
        }
    }
}

/// The Relay call's response stream: each acknowledgement once, the newest.
#[derive(Debug)]
pub struct AckStream(Arc<AckSlot>);

impl tokio_stream::Stream for AckStream {
    type Item = Result<RelayAck, Status>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.waker.register(cx.waker());
        if let Some(ack) = self.0.latest().take() {
            return std::task::Poll::Ready(Some(ack));
        }
        if self.0.senders.load(Ordering::Acquire) == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::Poll::Pending
    }
}

/// Serves one inbound relay link until the peer closes it, the peer is
/// removed, or the node stops. Acknowledgements go to `acks`.
pub(crate) async fn serve_inbound(
    node: Node,
    peer: NodeId,
    link: u64,
    mut inbound: tonic::Streaming<RelayFrame>,
    acks: AckSender,
) {
    let mut shutdown = node.shared.shutdown.subscribe();
    loop {
        let frame = tokio::select! {
            _ = shutdown.changed() => {
                acks.send_replace(Err(Status::unavailable("node is shutting down")));
                break;
            }
            frame = inbound.message() => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(status) => {
                let status = crate::limits::oversize(status);
                if status.code() == Code::ResourceExhausted {
                    warn!(peer = %peer.id, error = %status, "relay link refused a frame");
                }
                break;
            }
        };
        if let Some(crate::proto::relay_frame::Frame::Batch(batch)) = &frame.frame {
            node.metrics().events_in.inc_by(batch.events.len() as u64);
        }
        if let Err(refusal) = node.step(|core, now| core.on_relay(now, &peer, frame)) {
            acks.send_replace(Err(mesh_status(&refusal)));
            break;
        }
    }
    let mut state = node.lock();
    state.core.inbound_closed(link);
    state.ack_watches.remove(&link);
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use tokio_stream::Stream;

    use super::*;

    fn ack(seq: u64) -> Result<RelayAck, Status> {
        Ok(RelayAck {
            held: vec![crate::proto::SeqMark { origin: None, seq }],
            held_back: Vec::new(),
        })
    }

    fn poll(stream: &mut AckStream) -> Poll<Option<Result<RelayAck, Status>>> {
        std::pin::Pin::new(stream).poll_next(&mut Context::from_waker(Waker::noop()))
    }

    fn seq(item: Poll<Option<Result<RelayAck, Status>>>) -> u64 {
        match item {
            Poll::Ready(Some(Ok(ack))) => ack.held[0].seq,
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    }

    #[test]
    fn the_stream_yields_the_first_then_only_the_newest_once_each() {
        let (acks, mut stream) = ack_channel(ack(1));
        assert_eq!(seq(poll(&mut stream)), 1);
        assert!(poll(&mut stream).is_pending());
        acks.send_replace(ack(2));
        acks.send_replace(ack(3));
        assert_eq!(seq(poll(&mut stream)), 3, "the stale one skipped");
        assert!(poll(&mut stream).is_pending());
    }

    #[test]
    fn the_stream_ends_once_every_sender_is_gone_after_the_last_acknowledgement() {
        let (acks, mut stream) = ack_channel(ack(1));
        let other = acks.clone();
        assert_eq!(seq(poll(&mut stream)), 1);
        drop(acks);
        assert!(poll(&mut stream).is_pending(), "one sender is left");
        other.send_replace(Err(Status::unavailable("stopping")));
        drop(other);
        match poll(&mut stream) {
            Poll::Ready(Some(Err(status))) => assert_eq!(status.code(), Code::Unavailable),
            other => panic!("expected the error first, got {other:?}"),
        }
        assert!(matches!(poll(&mut stream), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn a_waiting_stream_is_woken_by_a_send_and_by_the_last_sender_leaving() {
        use tokio_stream::StreamExt;
        let (acks, mut stream) = ack_channel(ack(1));
        assert_eq!(stream.next().await.unwrap().unwrap().held[0].seq, 1);
        let reader = tokio::spawn(async move {
            let next = stream.next().await.map(|a| a.unwrap().held[0].seq);
            (next, stream.next().await.is_none())
        });
        tokio::task::yield_now().await;
        acks.send_replace(ack(7));
        tokio::task::yield_now().await;
        drop(acks);
        assert_eq!(reader.await.unwrap(), (Some(7), true));
    }
}
