//! The load on a Chitty cluster.
//!
//! It starts `--nodes N` real `chitty server` processes on loopback, or uses
//! running ones (`--servers`), joins the participants spread round-robin
//! over the nodes, each on its own gRPC connection unless told otherwise
//! (`--streams-per-connection`), and has the first `--publishers P` of them
//! publish, one acknowledged call at a time or, with `--pipeline`, over
//! `PublishStream`.
//!
//! Before the measured window the bench waits until every participant has
//! received the "joined" events of the others: joins go in batches small
//! enough that no participant's node-side queue can overflow, because each
//! join is itself a broadcast (S joins make S²/2 deliveries).
//!
//! `--flood F` has one more participant send F messages over `PublishStream`
//! as fast as its node takes them (not paced, not windowed), alongside the
//! publishers, whose latency is what is reported: what one flooder costs
//! the others. `--slow K` adds K participants that join and never read
//! (each on its own connection, like a slow machine would be, with a small
//! HTTP/2 window so that the node's queue for it fills within a short run),
//! to show what a slow reader costs everyone else: compare a run with and
//! without it. `--idle N` adds N reading, non-publishing participants and
//! reports how much node memory each of them costs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitty::client::{self, PublishSender, Session, SharedClock};
use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::{EventKind, JoinRequest, ListServersRequest, PublishOutcome, Welcome};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::load::{Load, MessageSink, Plan, Published};
use crate::measure::run_window;
use crate::procfs;
use crate::receive::{Readers, Reading, Tracker};
use crate::report::Report;
use crate::servers::{ServerProcess, ServerProcesses, log_tail, wait_until};

/// How long a started node may take to print its listening address.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the nodes may take to all see each other after starting.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Joins per batch. Each join is broadcast to everyone already there, and a
/// batch is only started once the previous one reached every reader, so a
/// reader never has more than this many join events queued on its node
/// (the default session queue holds 1024).
const JOIN_BATCH: usize = 200;
/// How long one batch of join events may take to reach every reader.
const JOIN_BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The room counts as quiet when no participant received anything for this
/// long.
const QUIET_FOR: Duration = Duration::from_millis(300);
/// How long to wait for the room to become quiet before measuring.
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 receive window of a slow participant's connection. Its client
/// library never reads, but the connection would still take in a whole
/// default window (2 MiB per stream) before the node noticed anything; a
/// small window makes the node's own queue the thing that fills.
const SLOW_WINDOW: u32 = 64 * 1024;
/// How long the stalled participants' connections have to close, and the
/// nodes to free what was queued for them, before memory is read again.
const SLOW_GONE_AFTER: Duration = Duration::from_secs(2);

/// What to run on Chitty.
#[derive(Debug, Clone)]
pub struct Config {
    pub load: Load,
    /// Participants that join and never read.
    pub slow: usize,
    /// Messages one extra participant floods the room with, over
    /// `PublishStream` as fast as the node takes them, while the publishers
    /// publish as they would without it (0: no flood).
    pub flood: u64,
    /// Extra reading, non-publishing participants.
    pub idle: usize,
    /// Most Join streams sharing one gRPC connection.
    pub streams_per_connection: usize,
    /// `RUST_LOG` of the started nodes.
    pub node_log: String,
    /// Extra arguments for every started `chitty server`.
    pub node_args: Vec<String>,
    /// The `chitty` binary to start the nodes with; `None`: the chitty
    /// built into this bench.
    pub node_program: Option<PathBuf>,
    /// Publish over `PublishStream`, many messages in flight, instead of
    /// one acknowledged call at a time.
    pub pipeline: bool,
    /// Start the floor server ([`crate::floor`]) instead of Chitty nodes.
    pub floor: bool,
}

/// Runs one benchmark. Started nodes are killed before it returns, and also
/// if the returned future is dropped.
pub async fn run(config: &Config) -> Result<Report, String> {
    validate(config)?;
    let mut cluster = if config.load.servers.is_empty() {
        Some(start_cluster(config).await?)
    } else {
        None
    };
    let addrs = match &cluster {
        Some(c) => c.addrs(),
        None => config.load.servers.clone(),
    };
    let result = run_on(config, &addrs, cluster.as_mut()).await;
    if let Some(c) = cluster.as_mut() {
        c.stop().await;
        if result.is_err() {
            c.keep_logs();
        }
    }
    result
}

fn validate(config: &Config) -> Result<(), String> {
    config
        .load
        .validate(chitty::core::validate::MAX_MESSAGE_CHARS)?;
    if config.load.publishers > config.load.participants {
        return Err(format!(
            "--publishers must be at most --participants ({}): publishers are participants",
            config.load.participants
        ));
    }
    if config.floor && !config.load.servers.is_empty() {
        return Err("--floor starts floor servers: it takes no --servers".into());
    }
    if config.streams_per_connection == 0 {
        return Err("--streams-per-connection must be at least 1".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading a Join stream
// ---------------------------------------------------------------------------

/// What a bench reader decodes of a `JoinFrame`: the `Welcome`, and of each
/// event only what it checks (Lamport time, kind, sender, text). The other
/// fields (ids, dependencies, publish id) are skipped without being
/// allocated, so that the readers, which share the machine with the nodes,
/// spend as little of it as they can.
#[derive(Clone, PartialEq, prost::Message)]
struct ReaderFrame {
    #[prost(message, optional, tag = "1")]
    welcome: Option<Welcome>,
    #[prost(message, optional, tag = "2")]
    events: Option<ReaderBatch>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReaderBatch {
    #[prost(message, repeated, tag = "1")]
    events: Vec<ReaderEvent>,
}

/// `Event` fields 2, 3, 4 and 6 (strings read as bytes: the same encoding).
#[derive(Clone, PartialEq, prost::Message)]
struct ReaderEvent {
    #[prost(uint64, tag = "2")]
    lamport: u64,
    #[prost(enumeration = "EventKind", tag = "3")]
    kind: i32,
    #[prost(bytes = "bytes", tag = "4")]
    participant_name: bytes::Bytes,
    #[prost(bytes = "bytes", tag = "6")]
    text: bytes::Bytes,
}

type Frames = tonic::Streaming<ReaderFrame>;
/// Join streams the readers stopped reading, kept open until everyone left.
type KeptStreams = Arc<std::sync::Mutex<Vec<Frames>>>;

/// Joins as `name` over `channel` and reads the `Welcome`: the sending half
/// of the session, the rest of its stream, and the participant's clock.
async fn join_reader(
    channel: Channel,
    name: &str,
) -> Result<(Session, Frames, SharedClock), String> {
    let clock = SharedClock::default();
    let request = JoinRequest {
        name: name.to_string(),
        lamport: clock.tick(),
        resume: None,
        rejoin: None,
        recent: 0,
    };
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(chitty::edge::JOIN_PATH);
    let codec = tonic_prost::ProstCodec::<JoinRequest, ReaderFrame>::default();
    let mut frames = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let welcome = match frames.message().await.map_err(|e| e.to_string())? {
        Some(ReaderFrame {
            welcome: Some(welcome),
            ..
        }) => welcome,
        other => return Err(format!("expected a Welcome frame first, got {other:?}")),
    };
    let session =
        Session::from_welcome(ChittyChatClient::new(channel), welcome, name, clock.clone());
    Ok((session, frames, clock))
}

/// Reads one participant's stream until the bench says stop (or it ends).
/// A stream stopped while still open goes to `kept`, so that its session is
/// still there for the participant to leave.
async fn read_join_stream(
    mut frames: Frames,
    clock: SharedClock,
    mut reading: Reading,
    mut stop: watch::Receiver<bool>,
    kept: KeptStreams,
) -> Tracker {
    // Registered once, not per frame: idle readers are most of a big room.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let ended = loop {
        let item = tokio::select! {
            biased;
            _ = &mut stopped => break None,
            item = frames.message() => item,
        };
        match item {
            Ok(Some(ReaderFrame {
                events: Some(batch),
                ..
            })) => {
                reading.received_events(batch.events.len() as u64);
                // Everything in one frame arrived at the same instant.
                let now_us = reading.plan.now_us();
                let mut latest = 0;
                let mut delivered = 0;
                for event in &batch.events {
                    latest = latest.max(event.lamport);
                    match event.kind() {
                        EventKind::Message => {}
                        EventKind::Left if event.participant_name.starts_with(b"slow-") => {
                            reading.tracker.slow_left += 1;
                            continue;
                        }
                        _ => continue,
                    }
                    if reading.tracker.record(&event.text, now_us) {
                        delivered += 1;
                    }
                }
                clock.observe(latest);
                reading.delivered(delivered);
            }
            Ok(Some(_)) => {}
            Ok(None) => break Some("the stream ended".to_string()),
            Err(e) => break Some(e.to_string()),
        }
    };
    if ended.is_none() {
        kept.lock().unwrap_or_else(|e| e.into_inner()).push(frames);
    }
    reading.end(ended)
}

// ---------------------------------------------------------------------------
// The started cluster
// ---------------------------------------------------------------------------

/// Flags the benchmark gives the nodes it starts, unless `--node-arg`
/// sets them: every participant of a benchmark connects from 127.0.0.1, so
/// the per-address cap is the total one; and its publishers send at full
/// speed, far over a participant's publish rate limit, which is off.
fn bench_node_defaults(node_args: &[String]) -> Vec<String> {
    let defaults = [
        (
            "--max-connections-per-ip",
            chitty::connections::DEFAULT_MAX_CONNECTIONS.to_string(),
        ),
        ("--publish-rate", "0".to_string()),
    ];
    defaults
        .into_iter()
        .filter(|(flag, _)| !node_args.iter().any(|a| a.split('=').next() == Some(flag)))
        .map(|(flag, value)| format!("{flag}={value}"))
        .collect()
}

/// Starts `config.load.nodes` nodes; node 1 starts the cluster and the
/// others join through it. Returns once every node lists all of them.
async fn start_cluster(config: &Config) -> Result<ServerProcesses, String> {
    let mut cluster = ServerProcesses::new(config.load.log_dir.as_deref(), "chitty")?;
    let program = match &config.node_program {
        Some(program) => program.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find the chitty-bench executable: {e}"))?,
    };
    let secret = uuid::Uuid::new_v4().simple().to_string();
    for i in 1..=config.load.nodes {
        let mut command = Command::new(&program);
        let server = if config.floor {
            "floor-server"
        } else {
            "server"
        };
        command
            .args([server, "--listen", "127.0.0.1:0"])
            // In the environment, not on the command line, where any user
            // could read it.
            .env("CHITTY_CLUSTER_SECRET", &secret)
            .args(
                cluster
                    .list
                    .first()
                    .iter()
                    .flat_map(|n| ["--boot", &n.addr]),
            )
            .args(bench_node_defaults(&config.node_args))
            .args(&config.node_args)
            .env("RUST_LOG", &config.node_log)
            .stdout(Stdio::piped());
        let started = match cluster.spawn(command, &format!("node{i}")) {
            Ok(node) => wait_listening(node, i).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(node) => cluster.list.push(node),
            Err(e) => {
                cluster.keep_logs();
                return Err(e);
            }
        }
    }
    let addrs = cluster.addrs();
    wait_until(&mut cluster, CLUSTER_READY_TIMEOUT, || {
        let addrs = addrs.clone();
        async move {
            for addr in &addrs {
                let mut client = client::connect(addr).await.map_err(|e| e.to_string())?;
                let reply = client
                    .list_servers(ListServersRequest {})
                    .await
                    .map_err(|e| e.to_string())?;
                let seen = reply.into_inner().servers.map_or(0, |s| s.servers.len());
                if seen < addrs.len() {
                    return Err(format!("{addr} sees {seen} of {} nodes", addrs.len()));
                }
            }
            Ok(())
        }
    })
    .await?;
    Ok(cluster)
}

/// Waits for node `index` to print the address it listens on.
async fn wait_listening(mut node: ServerProcess, index: usize) -> Result<ServerProcess, String> {
    let Some(stdout) = node.child.stdout.take() else {
        node.kill();
        return Err("node stdout was not captured".into());
    };
    // A thread reads the first line and then drains the pipe until the
    // node exits, so the node never blocks (or fails) writing to it. It
    // ends when the pipe closes, which the process guard guarantees.
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let first = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send(first);
        let mut sink = Vec::new();
        while matches!(reader.read_until(b'\n', &mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
    });
    let line = match tokio::time::timeout(NODE_START_TIMEOUT, rx).await {
        Ok(Ok(Ok(line))) => line,
        Ok(_) => String::new(),
        Err(_) => {
            node.kill();
            return Err(format!(
                "node {index} did not start within {NODE_START_TIMEOUT:?}{}",
                log_tail(&node.log)
            ));
        }
    };
    match line.trim().strip_prefix("chitty server listening on ") {
        Some(addr) => {
            node.addr = addr.to_string();
            Ok(node)
        }
        None => {
            node.kill();
            Err(format!(
                "node {index} did not start (first line {:?}){}",
                line.trim(),
                log_tail(&node.log)
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// The room: connections and participants
// ---------------------------------------------------------------------------

/// Who joins how.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// Reads; the first `publishers` of them also publish.
    Participant,
    /// Reads, never publishes.
    Idle,
    /// Never reads.
    Slow,
}

struct Room {
    addrs: Vec<String>,
    per_connection: usize,
    /// Shared connections, by (node, chunk).
    channels: HashMap<(usize, usize), Channel>,
    /// Participants placed on each node so far.
    placed: Vec<usize>,
    /// Every joined session, kept so nobody leaves before the end.
    sessions: Vec<Session>,
    /// The readers' Join streams once they stopped reading: a session
    /// whose stream closed can no longer be left, only time out.
    kept_streams: KeptStreams,
    /// Sessions of the publishers, in publisher order.
    publishers: Vec<Session>,
    readers: Readers,
    /// The slow participants and their Join streams, never read; each holds
    /// its own connection, which closes when both are dropped.
    slow_streams: Vec<(Session, Frames)>,
    /// Joined so far, to spread everyone round-robin over the nodes.
    joined: usize,
    name_prefix: String,
}

impl Room {
    /// A connection for the next participant on `node`: shared by at most
    /// `per_connection` streams, or (for a slow participant) its own.
    async fn channel_for(&mut self, node: usize, role: Role) -> Result<Channel, String> {
        let addr = &self.addrs[node];
        if role == Role::Slow {
            // Unread data holds the connection's flow-control window: a slow
            // reader must not share a connection with anyone else.
            return connect_small_window(addr).await;
        }
        let chunk = self.placed[node] / self.per_connection;
        self.placed[node] += 1;
        if let Some(c) = self.channels.get(&(node, chunk)) {
            return Ok(c.clone());
        }
        let c = client::connect_channel(addr)
            .await
            .map_err(|e| e.to_string())?;
        self.channels.insert((node, chunk), c.clone());
        Ok(c)
    }

    /// Joins `count` participants of `role`, in batches, and waits after each
    /// batch until its join events reached every reader already there.
    async fn join(&mut self, role: Role, count: usize, publishers: usize) -> Result<(), String> {
        let mut done = 0;
        while done < count {
            let batch = JOIN_BATCH.min(count - done);
            let before = self.readers.events();
            let mut joins = JoinSet::new();
            for k in 0..batch {
                let index = self.joined;
                self.joined += 1;
                let node = index % self.addrs.len();
                let channel = self.channel_for(node, role).await?;
                let label = match role {
                    Role::Participant => "bench",
                    Role::Idle => "idle",
                    Role::Slow => "slow",
                };
                let name = format!("{label}-{}{}", self.name_prefix, done + k + 1);
                let addr = self.addrs[node].clone();
                joins.spawn(async move {
                    join_reader(channel, &name)
                        .await
                        .map(|(s, f, c)| (done + k, s, f, c))
                        .map_err(|e| format!("{name} could not join at {addr}: {e}"))
                });
            }
            let mut joined = Vec::with_capacity(batch);
            while let Some(result) = joins.join_next().await {
                joined.push(result.map_err(|e| format!("join task failed: {e}"))??);
            }
            // Publishers are the first participants, whatever order their
            // joins completed in.
            joined.sort_by_key(|(i, _, _, _)| *i);
            for (i, session, frames, clock) in joined {
                if role == Role::Participant && i < publishers {
                    self.publishers.push(session.clone());
                }
                match role {
                    Role::Slow => self.slow_streams.push((session, frames)),
                    Role::Participant | Role::Idle => {
                        self.sessions.push(session);
                        let kept = self.kept_streams.clone();
                        self.readers.spawn(|reading, stop| {
                            read_join_stream(frames, clock, reading, stop, kept)
                        });
                    }
                }
            }
            done += batch;
            self.wait_batch(&before, batch as u64).await;
        }
        Ok(())
    }

    /// Waits (bounded) until each reader counted in `before` received at
    /// least `batch` more events: the join events of the batch.
    async fn wait_batch(&self, before: &[u64], batch: u64) {
        let deadline = Instant::now() + JOIN_BATCH_TIMEOUT;
        loop {
            let behind = self.readers.behind(before, batch);
            if behind == 0 {
                self.readers.warn_ended();
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "bench: warning: {behind} participants did not receive all join events within {JOIN_BATCH_TIMEOUT:?}"
                );
                self.readers.warn_ended();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_quiet(&self) {
        self.readers.wait_quiet(QUIET_FOR, QUIET_TIMEOUT).await;
    }

    /// Leaves with every session (used with `--servers`, where the cluster
    /// outlives the bench). Best effort and bounded.
    async fn leave_all(&self) {
        let mut leaves = JoinSet::new();
        for session in &self.sessions {
            let session = session.clone();
            leaves.spawn(async move {
                let _ = session.leave().await;
            });
            if leaves.len() >= 64 {
                leaves.join_next().await;
            }
        }
        let _ = tokio::time::timeout(client::CALL_TIMEOUT, async {
            while leaves.join_next().await.is_some() {}
        })
        .await;
    }
}

/// A connection whose HTTP/2 windows are [`SLOW_WINDOW`], for one slow
/// participant.
async fn connect_small_window(addr: &str) -> Result<Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(client::CONNECT_TIMEOUT)
        .initial_stream_window_size(SLOW_WINDOW)
        .initial_connection_window_size(SLOW_WINDOW)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

// ---------------------------------------------------------------------------
// Publishers
// ---------------------------------------------------------------------------

/// A publisher that sends one `Publish` call at a time and waits for its
/// reply.
struct CallSink {
    session: Session,
    plan: Arc<Plan>,
    last_ack_us: u64,
}

impl MessageSink for CallSink {
    async fn send(&mut self, text: &str) -> Result<(), String> {
        let result = self.session.publish(text).await;
        self.last_ack_us = self.plan.now_us();
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn finish(self) -> Published {
        Published {
            last_ack_us: self.last_ack_us,
            ..Published::default()
        }
    }
}

/// A publisher that sends over one `PublishStream` without waiting; its
/// outcomes are read beside it.
struct StreamSink {
    sender: PublishSender,
    outcomes: tokio::task::JoinHandle<Published>,
}

impl StreamSink {
    async fn open(session: &Session, plan: Arc<Plan>) -> Result<Self, String> {
        let (sender, replies) = session.publisher().await.map_err(|e| e.to_string())?;
        let outcomes = tokio::spawn(read_outcomes(replies, plan));
        Ok(Self { sender, outcomes })
    }
}

impl MessageSink for StreamSink {
    async fn send(&mut self, text: &str) -> Result<(), String> {
        self.sender
            .send(text)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn finish(self) -> Published {
        drop(self.sender);
        match self.outcomes.await {
            Ok(read) => read,
            Err(e) => {
                let mut out = Published::default();
                out.failed(e.to_string());
                out
            }
        }
    }
}

/// Reads a publish stream's outcomes (in order) until `plan.messages`
/// arrived or the stream ended.
async fn read_outcomes(
    mut replies: tonic::Streaming<PublishOutcome>,
    plan: Arc<Plan>,
) -> Published {
    let mut out = Published::default();
    let mut seen = 0;
    while seen < plan.messages {
        match replies.message().await {
            Ok(Some(outcome)) => {
                seen += 1;
                if outcome.reply.is_none() {
                    out.failed(outcome.error_message);
                }
                out.last_ack_us = plan.now_us();
            }
            Ok(None) => break,
            Err(status) => {
                out.failed(status.to_string());
                out.errors += plan.messages - seen - 1;
                break;
            }
        }
    }
    out
}

/// The flooder: `count` messages over one `PublishStream`, sent as fast as
/// the stream takes them; returns how many the node accepted.
async fn flood(session: Session, count: u64, size: usize) -> u64 {
    let Ok((sender, mut replies)) = session.publisher().await else {
        return 0;
    };
    let accepted = tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok(Some(outcome)) = replies.message().await {
            accepted += u64::from(outcome.reply.is_some());
        }
        accepted
    });
    let mut text = String::with_capacity(size);
    for k in 0..count {
        text.clear();
        let _ = write!(text, "flood {k} ");
        while text.len() < size {
            text.push('~');
        }
        if sender.send(&text).await.is_err() {
            break;
        }
    }
    drop(sender);
    accepted.await.unwrap_or(0)
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

async fn run_on(
    config: &Config,
    addrs: &[String],
    cluster: Option<&mut ServerProcesses>,
) -> Result<Report, String> {
    let plan = Arc::new(Plan::new(&config.load));
    let mut room = Room {
        addrs: addrs.to_vec(),
        per_connection: config.streams_per_connection,
        channels: HashMap::new(),
        placed: vec![0; addrs.len()],
        sessions: Vec::new(),
        kept_streams: KeptStreams::default(),
        publishers: Vec::new(),
        readers: Readers::new(plan),
        slow_streams: Vec::new(),
        joined: 0,
        // Names must not clash with what a shared cluster already has.
        name_prefix: if config.load.servers.is_empty() {
            String::new()
        } else {
            format!("{}-", &uuid::Uuid::new_v4().simple().to_string()[..6])
        },
    };
    let result = measure(config, &mut room, cluster).await;
    if !config.load.servers.is_empty() {
        room.leave_all().await;
    }
    result
}

async fn measure(
    config: &Config,
    room: &mut Room,
    mut cluster: Option<&mut ServerProcesses>,
) -> Result<Report, String> {
    let load = &config.load;
    let pids = cluster.as_ref().map(|c| c.pids()).unwrap_or_default();
    let say = |text: String| {
        if load.progress {
            eprintln!("bench: {text}");
        }
    };
    let started = Instant::now();
    room.join(Role::Participant, load.participants, load.publishers)
        .await?;
    room.wait_quiet().await;
    say(format!(
        "{} participants joined on {} nodes in {:.1} s",
        load.participants,
        room.addrs.len(),
        started.elapsed().as_secs_f64()
    ));

    let mut idle_rss = None;
    if config.idle > 0 {
        let before = procfs::total_rss(&pids);
        let t = Instant::now();
        room.join(Role::Idle, config.idle, 0).await?;
        room.wait_quiet().await;
        let after = procfs::total_rss(&pids);
        if let (Some(b), Some(a)) = (before, after) {
            idle_rss = Some((a as f64 - b as f64) / config.idle as f64);
        }
        say(format!(
            "{} idle participants joined in {:.1} s",
            config.idle,
            t.elapsed().as_secs_f64()
        ));
    }
    if config.slow > 0 {
        room.join(Role::Slow, config.slow, 0).await?;
        room.wait_quiet().await;
        say(format!("{} slow participants joined", config.slow));
    }
    // The flooder reads its stream (it must not be cut off as too slow);
    // its messages are no bench message to the readers (not counted).
    let mut flooder = None;
    if config.flood > 0 {
        let channel = client::connect_channel(&room.addrs[0])
            .await
            .map_err(|e| e.to_string())?;
        let (session, mut frames, _) =
            join_reader(channel, &format!("flood-{}1", room.name_prefix))
                .await
                .map_err(|e| format!("the flooder could not join: {e}"))?;
        tokio::spawn(async move { while let Ok(Some(_)) = frames.message().await {} });
        room.wait_quiet().await;
        flooder = Some(session);
    }
    // A node that died while joining would make everything after meaningless.
    if let Some(c) = cluster.as_deref_mut() {
        c.check_alive()?;
    }
    let rss_before = procfs::total_rss(&pids);

    let plan = room.readers.plan.clone();
    let flooding = flooder
        .clone()
        .map(|session| tokio::spawn(flood(session, config.flood, load.size)));
    let window = if config.pipeline {
        let mut sinks = Vec::with_capacity(room.publishers.len());
        for session in &room.publishers {
            sinks.push(StreamSink::open(session, plan.clone()).await?);
        }
        run_window(load, sinks, &mut room.readers, &pids).await?
    } else {
        let sinks = room
            .publishers
            .iter()
            .map(|session| CallSink {
                session: session.clone(),
                plan: plan.clone(),
                last_ack_us: 0,
            })
            .collect();
        run_window::<CallSink>(load, sinks, &mut room.readers, &pids).await?
    };

    let system = if config.floor { "floor" } else { "chitty" };
    let mut report = Report::new(system, load, room.addrs.len());
    report.pipeline = config.pipeline;
    report.slow = config.slow;
    report.idle = config.idle;
    report.flood = config.flood;
    report.measured(&window, &pids);
    if let Some(flooding) = flooding {
        report.flood_accepted = flooding.await.ok();
    }
    drop(flooder);
    report.rss_before_bytes = rss_before;
    // The stalled participants go away (their connections close), and
    // the nodes free what was queued for them.
    if !room.slow_streams.is_empty() {
        room.slow_streams.clear();
        tokio::time::sleep(SLOW_GONE_AFTER).await;
    }
    report.rss_after_bytes = procfs::total_rss(&pids);
    report.idle_rss_bytes_per_participant = idle_rss;
    if config.slow > 0 {
        report.slow_disconnected = window.trackers.iter().map(|t| t.slow_left).max();
    }
    if let Some(c) = cluster {
        c.check_alive()?;
    }
    Ok(report)
}
