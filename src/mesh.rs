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
//! * Failure: a peer silent for longer than the failure timeout is declared
//!   dead, which every other member learns by gossip. A node that stops
//!   gracefully flushes its links and announces that it leaves. Either way
//!   the participants of the departed node are announced as left, once, by
//!   one node chosen by a rule all agree on (the live node with the smallest
//!   id), after a short settling delay that lets reconciliation finish.
//! * A node the cluster removed (for instance it was paused past the failure
//!   timeout) is refused by its peers; it learns so and exits with a clear
//!   message rather than serving stale state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

use crate::core::chat::Snapshot;
use crate::core::history::Audience;
use crate::core::membership::{Change, member};
use crate::error::{Error, Result};
use crate::node::{LinkHandle, Node, State, server_list};
use crate::proto::server_mesh_client::ServerMeshClient;
use crate::proto::{
    Event, EventKind, Gap, Heartbeat, Member, MemberState, NodeId, RelayAck, RelayFrame, SeqMark,
    ServerJoinReply, ServerJoinRequest, UpdateServersRequest, relay_frame,
};
use crate::wire::{RelayOut, Wired};

/// The metadata entry that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-chitty-cluster-secret";
/// Most events in one relay batch.
const MAX_RELAY_BATCH: usize = 512;
/// Longest wait for one mesh call (join, membership push).
const MESH_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait, on graceful stop, for peers to acknowledge our last events.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
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

/// Refuses mesh calls that do not carry the cluster secret.
#[derive(Clone, Debug)]
pub struct CheckSecret(pub Option<Arc<str>>);

impl Interceptor for CheckSecret {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(secret) = &self.0 else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get(SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
            Ok(req)
        } else {
            warn!(remote = ?req.remote_addr(), "refused a mesh call without the cluster secret");
            Err(Status::unauthenticated(
                "missing or wrong cluster secret (--cluster-secret)",
            ))
        }
    }
}

/// Compares without an early exit, so timing does not reveal the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub type MeshClient = ServerMeshClient<InterceptedService<Channel, AddSecret>>;

/// A mesh client for the node at `addr`, carrying `secret`.
pub async fn mesh_client(addr: &str, secret: Option<&str>) -> Result<MeshClient> {
    Ok(ServerMeshClient::new(mesh_service(addr, secret).await?))
}

/// A connection to the node at `addr` whose calls carry `secret`.
async fn mesh_service(
    addr: &str,
    secret: Option<&str>,
) -> Result<InterceptedService<Channel, AddSecret>> {
    let connect_err = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(MESH_CALL_TIMEOUT)
        .initial_stream_window_size(crate::http2::STREAM_WINDOW)
        .initial_connection_window_size(crate::http2::CONNECTION_WINDOW)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let secret = match secret {
        Some(s) => Some(
            s.parse()
                .map_err(|_| Error::Protocol("cluster secret must be printable ASCII".into()))?,
        ),
        None => None,
    };
    Ok(InterceptedService::new(channel, AddSecret(secret)))
}

impl Node {
    fn own_member(&self) -> Member {
        member(
            self.id().clone(),
            &self.config().advertise,
            MemberState::Alive,
            1,
        )
    }

    fn secret(&self) -> Option<&str> {
        self.config().cluster_secret.as_deref()
    }

    /// Joins the cluster through the member at `boot`.
    pub async fn join_cluster(&self, boot: &str) -> Result<()> {
        let mut client = mesh_client(boot, self.secret()).await?;
        let reply = tokio::time::timeout(
            MESH_CALL_TIMEOUT,
            client.server_join(ServerJoinRequest {
                member: Some(self.own_member()),
            }),
        )
        .await
        .map_err(|_| Error::Unavailable(format!("{boot} did not answer ServerJoin")))??
        .into_inner();
        let mut state = self.lock();
        state.core.load(Snapshot {
            participants: reply.participants,
            delivered: reply.delivered,
            lamport: reply.lamport,
            grants: reply.grants,
        });
        let change = state.membership.merge(&reply.members);
        info!(
            boot,
            members = state.membership.alive().len(),
            "joined the cluster"
        );
        self.apply_change(&mut state, change);
        Ok(())
    }

    /// `ServerJoin`: admits `joiner` and hands it what it needs to serve.
    pub(crate) fn admit(&self, joiner: Member) -> Result<ServerJoinReply, Status> {
        let Some(node) = joiner.node.clone() else {
            return Err(Status::invalid_argument("member without a node id"));
        };
        let mut state = self.lock();
        let change = state.membership.merge(std::slice::from_ref(&joiner));
        if !state.membership.is_alive(&node) {
            return Err(Status::failed_precondition(
                "this node incarnation was removed from the cluster; restart it",
            ));
        }
        info!(node = %node.id, generation = node.generation, addr = %joiner.addr, "ServerJoin");
        self.apply_change(&mut state, change);
        let snapshot = state.core.snapshot();
        Ok(ServerJoinReply {
            members: state.membership.snapshot(),
            participants: snapshot.participants,
            lamport: snapshot.lamport,
            delivered: snapshot.delivered,
            grants: snapshot.grants,
        })
    }

    /// `UpdateServers`: merges a peer's view and returns ours.
    pub(crate) fn merge_members(&self, members: &[Member]) -> Vec<Member> {
        let mut state = self.lock();
        let change = state.membership.merge(members);
        self.apply_change(&mut state, change);
        state.membership.snapshot()
    }

    /// Acts on a membership change: links to new peers, drops departed ones,
    /// reconciles, and tells sessions and peers.
    pub(crate) fn apply_change(&self, state: &mut State, change: Change) {
        if change.self_removed {
            let reason = "this node was removed from the cluster (it was unreachable for \
                          longer than the failure timeout); exiting so it serves no stale state";
            warn!("{reason}");
            self.shared.fatal.send_replace(Some(reason.to_string()));
            return;
        }
        if change.added.is_empty() && change.removed.is_empty() {
            return;
        }
        let now = Instant::now();
        for gone in &change.removed {
            let Some(node) = &gone.node else { continue };
            info!(node = %node.id, generation = node.generation, state = ?gone.state(), "peer left the cluster");
            if state.links.get(&node.id).is_some_and(|l| &l.peer == node) {
                state.links.remove(&node.id);
            }
            state.last_heard.remove(&node.id);
            state
                .gone_since
                .insert(node.id.clone(), (node.clone(), now));
        }
        for added in &change.added {
            let Some(node) = &added.node else { continue };
            info!(node = %node.id, generation = node.generation, addr = %added.addr, "peer joined the cluster");
            state.last_heard.insert(node.id.clone(), now);
            state.gone_since.remove(&node.id);
            let link = spawn_link(self, added.clone());
            state.links.insert(node.id.clone(), link);
        }
        if !change.removed.is_empty() {
            // Survivors re-send each other what they hold of the departed.
            for link in state.links.values() {
                link.request_resync();
            }
        }
        self.notify_servers(state, server_list(&state.membership));
        self.shared.gossip.notify_one();
        // Publishes and the local gate waiting on a departed peer's
        // acknowledgement re-check.
        self.shared.acked.notify_waiters();
        self.dispatch(state, Vec::new());
    }

    /// The first frame of an inbound relay link: who is calling.
    pub(crate) fn relay_hello(&self, hello: Member) -> Result<(NodeId, Vec<SeqMark>), Status> {
        let Some(node) = hello.node.clone() else {
            return Err(Status::invalid_argument("relay hello without a node id"));
        };
        let mut state = self.lock();
        let change = state.membership.merge(&[hello]);
        if !state.membership.is_alive(&node) {
            return Err(Status::failed_precondition(
                "this node incarnation was removed from the cluster; restart it",
            ));
        }
        self.apply_change(&mut state, change);
        state.last_heard.insert(node.id.clone(), Instant::now());
        Ok((node, state.core.delivered()))
    }

    /// Any frame from `peer`: it is alive. Errs if the cluster removed it.
    fn heard(&self, state: &mut State, peer: &NodeId) -> Result<(), Status> {
        if !state.membership.is_alive(peer) {
            return Err(Status::failed_precondition(
                "this node incarnation was removed from the cluster; restart it",
            ));
        }
        state.last_heard.insert(peer.id.clone(), Instant::now());
        Ok(())
    }

    /// Handles one inbound relay frame; returns the acknowledgement.
    pub(crate) fn relay_frame(&self, peer: &NodeId, frame: RelayFrame) -> Result<RelayAck, Status> {
        let mut state = self.lock();
        self.heard(&mut state, peer)?;
        match frame.frame {
            Some(relay_frame::Frame::Batch(batch)) => {
                for grant in batch.grants {
                    state.core.grant(grant);
                }
                let received = state.core.receive(batch.events);
                for (pid, kind) in &received.ended {
                    let status = match kind {
                        EventKind::Moved => {
                            Status::aborted("this session was resumed on another node")
                        }
                        _ => Status::not_found(
                            "this session ended: the cluster announced the participant as left",
                        ),
                    };
                    self.end_session(&mut state, pid, status);
                }
                let refused = received.refused;
                for (pid, _) in &received.kicked {
                    self.end_session(
                        &mut state,
                        pid,
                        Status::already_exists(
                            "another node admitted the same name at the same moment and \
                             kept it; join again with another name",
                        ),
                    );
                }
                self.dispatch(&mut state, received.events);
                if refused > 0 {
                    // Ending the link makes the peer reconnect and re-send
                    // from what we acknowledge, once the queue has room.
                    warn!(peer = %peer.id, refused, "hold-back queue full: resetting the link");
                    return Err(Status::resource_exhausted(
                        "hold-back queue full; reconnect and re-send",
                    ));
                }
            }
            Some(relay_frame::Frame::Heartbeat(hb)) => {
                let change = state.membership.merge(&hb.members);
                self.apply_change(&mut state, change);
            }
            Some(relay_frame::Frame::Skip(gap)) => {
                warn!(peer = %peer.id, reason = %gap.reason, "peer reports events it can no longer provide");
                let marks: Vec<SeqMark> = gap
                    .ranges
                    .iter()
                    .map(|r| SeqMark {
                        origin: r.origin.clone(),
                        seq: r.to_seq.saturating_sub(1),
                    })
                    .collect();
                let events = state.core.skip_to(&marks);
                self.notify_gap(&state, gap);
                self.dispatch(&mut state, events);
            }
            Some(relay_frame::Frame::Hello(_)) | None => {
                return Err(Status::invalid_argument("unexpected relay frame"));
            }
        }
        let ack = RelayAck {
            held: state.core.delivered(),
        };
        // Events from one peer can release held-back events of another (a
        // causal dependency arrived): every inbound link hears the news now,
        // not at its peer's next frame, which may be a heartbeat away.
        for (other, acks) in &state.ack_watches {
            if other != &peer.id {
                let _ = acks.send_replace(Ok(ack.clone()));
            }
        }
        Ok(ack)
    }

    /// Starts the background tasks: failure detection and membership pushes.
    pub fn start_mesh(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(run_detector(self.clone())),
            tokio::spawn(run_gossip(self.clone())),
        ]
    }

    /// Graceful stop: waits (bounded) until peers hold our last events, then
    /// tells them we leave, so they drop us at once.
    pub async fn leave_cluster(&self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        loop {
            let pending = {
                let state = self.lock();
                let last = state.core.last_seq();
                state
                    .links
                    .values()
                    .filter(|l| l.acked_own.load(Ordering::Acquire) < last)
                    .count()
            };
            if pending == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (members, peers) = {
            let mut state = self.lock();
            state.membership.leave();
            (state.membership.snapshot(), state.membership.peers())
        };
        push_members(self, members, peers).await;
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

/// Every tick: declares silent peers dead, and (on the announcing node)
/// announces the participants of departed nodes as left.
async fn run_detector(node: Node) {
    let mut shutdown = node.shared.shutdown.subscribe();
    let period = node.config().heartbeat / 4;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // Time this task did not run (the process was paused or starved) is
        // not silence of the peers: their heartbeats may be waiting unread.
        let gap = now.duration_since(last_tick);
        let stalled = (gap > period * 2).then(|| gap - period);
        last_tick = now;
        detect(&node, now, stalled);
    }
}

fn detect(node: &Node, now: Instant, stalled: Option<Duration>) {
    let timeout = node.config().failure_timeout;
    // Participants of a departed node get the grace period to resume
    // elsewhere, and at least one heartbeat for survivors to reconcile.
    let settle = node.config().limits.grace.max(node.config().heartbeat);
    let mut state = node.lock();
    let expired = state.core.expire(now);
    for left in &expired {
        info!(participant = %left.participant_name, lamport = left.lamport, "grace period over: participant left");
    }
    node.dispatch(&mut state, expired);
    if let Some(stalled) = stalled {
        // This process was not running (SIGSTOP, a frozen VM, starvation):
        // credit every peer with that time rather than blame it.
        warn!(
            stalled_ms = stalled.as_millis() as u64,
            "this node was not running for a while; not counting that time against its peers"
        );
        for heard in state.last_heard.values_mut() {
            *heard = (*heard + stalled).min(now);
        }
    }
    for peer in state.membership.peers() {
        let Some(id) = peer.node.clone() else {
            continue;
        };
        let heard = *state.last_heard.entry(id.id.clone()).or_insert(now);
        if now.duration_since(heard) > timeout {
            warn!(node = %id.id, generation = id.generation, silent_ms = now.duration_since(heard).as_millis() as u64, "peer missed its heartbeats: declaring it dead");
            if let Some(dead) = state.membership.mark_dead(&id) {
                let change = Change {
                    removed: vec![dead],
                    ..Change::default()
                };
                node.apply_change(&mut state, change);
            }
        }
    }
    // Events held back for events of a departed node that no survivor could
    // provide are released once reconciliation had time, with a gap notice.
    let stuck: Vec<NodeId> = state
        .gone_since
        .values()
        .filter(|(_, since)| now.duration_since(*since) >= timeout)
        .map(|(gone, _)| gone.clone())
        .collect();
    for gone in stuck {
        if let Some((range, events)) = state.core.release_gone(&gone) {
            let gap = Gap {
                reason: format!(
                    "events {}..{} of departed node {} were lost with it",
                    range.from_seq,
                    range.to_seq - 1,
                    gone.id
                ),
                ranges: vec![range],
            };
            node.notify_gap(&state, gap);
            node.dispatch(&mut state, events);
        }
    }
    if &state.membership.announcer() != node.id() {
        return;
    }
    let alive: Vec<NodeId> = state
        .membership
        .alive()
        .into_iter()
        .filter_map(|m| m.node)
        .collect();
    let mut events = Vec::new();
    for pid in state.core.orphans(&alive) {
        let home = state.core.home_of(&pid).cloned().unwrap_or_default();
        let (_, since) = *state
            .gone_since
            .entry(home.id.clone())
            .or_insert((home, now));
        if now.duration_since(since) < settle {
            continue;
        }
        if let Some(left) = state.core.announce_left(&pid) {
            info!(participant = %left.participant_name, lamport = left.lamport, "announcing a participant of a departed node as left");
            events.push(left);
        }
    }
    node.dispatch(&mut state, events);
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
            (state.membership.snapshot(), state.membership.peers())
        };
        push_members(&node, members, peers).await;
    }
}

/// Sends `members` to each of `peers` (concurrently, bounded in time) and
/// merges their answers.
async fn push_members(node: &Node, members: Vec<Member>, peers: Vec<Member>) {
    let mut calls = tokio::task::JoinSet::new();
    for peer in peers {
        let members = members.clone();
        let secret = node.secret().map(str::to_string);
        calls.spawn(async move {
            let call = async {
                let mut client = mesh_client(&peer.addr, secret.as_deref()).await.ok()?;
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

fn spawn_link(node: &Node, peer: Member) -> LinkHandle {
    let (tx, rx) = mpsc::channel(node.config().peer_queue);
    let resync = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let acked_own = Arc::new(AtomicU64::new(0));
    let link = Link {
        node: node.clone(),
        peer: peer.clone(),
        rx,
        resync: resync.clone(),
        wake: wake.clone(),
        acked_own: acked_own.clone(),
        last_sent_own: 0,
    };
    LinkHandle {
        peer: peer.node.unwrap_or_default(),
        tx,
        resync,
        wake,
        acked_own,
        task: tokio::spawn(link.run()),
    }
}

/// One outgoing peer link: owns the connection to the peer and the queue of
/// this node's events for it.
struct Link {
    node: Node,
    peer: Member,
    rx: mpsc::Receiver<Wired>,
    resync: Arc<AtomicBool>,
    wake: Arc<Notify>,
    acked_own: Arc<AtomicU64>,
    last_sent_own: u64,
}

impl Link {
    async fn run(mut self) {
        let mut shutdown = self.node.shared.shutdown.subscribe();
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.session(&mut shutdown).await {
                Ok(()) => return,
                Err(status) if status.code() == Code::FailedPrecondition => {
                    // One peer's word is not enough to conclude we were
                    // removed (its own view may be the stale one): exchange
                    // membership, whose merge tells for sure.
                    warn!(peer = %self.peer.addr, reason = status.message(), "peer refused this node; exchanging membership");
                    let members = self.node.lock().membership.snapshot();
                    push_members(&self.node, members, vec![self.peer.clone()]).await;
                }
                Err(status) => {
                    debug!(peer = %self.peer.addr, error = %status, "peer link down; reconnecting");
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

    /// One connection: hello, catch-up from history, then live events and
    /// heartbeats until the connection breaks or the node stops.
    async fn session(
        &mut self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Status> {
        let node = self.node.clone();
        let mut client = crate::proto::peer::server_mesh_client::ServerMeshClient::new(
            mesh_service(&self.peer.addr, node.secret())
                .await
                .map_err(Status::from)?,
        );
        let (out, out_rx) = mpsc::channel::<RelayOut>(16);
        let hello = RelayFrame {
            frame: Some(relay_frame::Frame::Hello(node.own_member())),
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
        let mut peer_has = first.held;
        self.note_ack(&peer_has);
        self.last_sent_own = 0;
        self.resync.store(false, Ordering::Release);
        self.send_history(&out, &peer_has).await?;
        info!(peer = %self.peer.addr, "peer link up");

        let mut heartbeat = tokio::time::interval(node.config().heartbeat);
        let mut buf = Vec::with_capacity(MAX_RELAY_BATCH);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                ack = acks.message() => match ack? {
                    Some(ack) => {
                        peer_has = ack.held;
                        self.note_ack(&peer_has);
                    }
                    None => return Err(Status::unavailable("peer closed the link")),
                },
                n = self.rx.recv_many(&mut buf, MAX_RELAY_BATCH) => {
                    if n == 0 {
                        return Ok(()); // the node dropped this link
                    }
                    if let Some((addr, delay)) = &node.config().fault_link_delay
                        && addr == &self.peer.addr
                    {
                        tokio::time::sleep(*delay).await;
                    }
                    let me = node.id();
                    let last = self.last_sent_own;
                    let events: Vec<Wired> = buf
                        .drain(..)
                        .filter(|w| own_seq(&w.event, me).is_some_and(|s| s > last))
                        .collect();
                    self.send_events(&out, events).await?;
                }
                _ = self.wake.notified() => {
                    if self.resync.swap(false, Ordering::AcqRel) {
                        while self.rx.try_recv().is_ok() {}
                        self.send_history(&out, &peer_has).await?;
                    }
                }
                _ = heartbeat.tick() => {
                    let frame = {
                        let state = node.lock();
                        Heartbeat {
                            lamport: state.core.lamport(),
                            members: state.membership.snapshot(),
                        }
                    };
                    let frame = RelayOut::Frame(RelayFrame {
                        frame: Some(relay_frame::Frame::Heartbeat(frame)),
                    });
                    out.send(frame).await.map_err(|_| Status::unavailable("link closed"))?;
                }
            }
        }
    }

    fn note_ack(&self, held: &[SeqMark]) {
        let me = self.node.id();
        if let Some(mark) = held.iter().find(|m| m.origin.as_ref() == Some(me)) {
            if self.acked_own.fetch_max(mark.seq, Ordering::AcqRel) < mark.seq {
                self.node.shared.acked.notify_waiters();
                self.node.release();
            }
        }
    }

    /// Sends, from history, every event the peer lacks; reports what history
    /// no longer holds.
    async fn send_history(
        &mut self,
        out: &mpsc::Sender<RelayOut>,
        peer_has: &[SeqMark],
    ) -> Result<(), Status> {
        let (events, gaps) = self.node.lock().core.replay_after(peer_has, Audience::Peer);
        if !gaps.is_empty() {
            let frame = RelayOut::Frame(RelayFrame {
                frame: Some(relay_frame::Frame::Skip(Gap {
                    reason: "events older than this node's history were lost".into(),
                    ranges: gaps,
                })),
            });
            out.send(frame)
                .await
                .map_err(|_| Status::unavailable("link closed"))?;
        }
        for chunk in events.chunks(MAX_RELAY_BATCH) {
            let batch = chunk.iter().map(|e| Wired::for_peers(e.clone())).collect();
            self.send_events(out, batch).await?;
        }
        Ok(())
    }

    async fn send_events(
        &mut self,
        out: &mpsc::Sender<RelayOut>,
        events: Vec<Wired>,
    ) -> Result<(), Status> {
        if events.is_empty() {
            return Ok(());
        }
        let me = self.node.id().clone();
        if let Some(max) = events.iter().filter_map(|w| own_seq(&w.event, &me)).max() {
            self.last_sent_own = self.last_sent_own.max(max);
        }
        let grants = (self.node.lock().core).grants_for(events.iter().map(|w| &*w.event));
        let frame = RelayOut::Batch {
            events: events.into_iter().map(|w| w.field).collect(),
            grants,
        };
        out.send(frame)
            .await
            .map_err(|_| Status::unavailable("link closed"))
    }
}

/// The sequence number of `event` if `me` stamped it.
fn own_seq(event: &Event, me: &NodeId) -> Option<u64> {
    let id = event.id.as_ref()?;
    (id.origin.as_ref()? == me).then_some(id.seq)
}

/// Serves one inbound relay link until the peer closes it, the peer is
/// removed, or the node stops. Acknowledgements go to `acks`.
pub(crate) async fn serve_inbound(
    node: Node,
    peer: NodeId,
    mut inbound: tonic::Streaming<RelayFrame>,
    acks: tokio::sync::watch::Sender<Result<RelayAck, Status>>,
) {
    let mut shutdown = node.shared.shutdown.subscribe();
    node.lock()
        .ack_watches
        .insert(peer.id.clone(), acks.clone());
    serve_inbound_frames(&node, &peer, &mut inbound, &acks, &mut shutdown).await;
    let mut state = node.lock();
    if state
        .ack_watches
        .get(&peer.id)
        .is_some_and(|w| w.same_channel(&acks))
    {
        state.ack_watches.remove(&peer.id);
    }
}

async fn serve_inbound_frames(
    node: &Node,
    peer: &NodeId,
    inbound: &mut tonic::Streaming<RelayFrame>,
    acks: &tokio::sync::watch::Sender<Result<RelayAck, Status>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            _ = shutdown.changed() => {
                let _ = acks.send_replace(Err(Status::unavailable("node is shutting down")));
                return;
            }
            frame = inbound.message() => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        match node.relay_frame(peer, frame) {
            Ok(ack) => {
                let _ = acks.send_replace(Ok(ack));
            }
            Err(status) => {
                let _ = acks.send_replace(Err(status));
                return;
            }
        }
    }
}
