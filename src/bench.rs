//! `chitty bench`: a fan-out benchmark of a real cluster.
//!
//! It starts `--nodes N` real `chitty server` processes on loopback (this same
//! binary, so a bench measures exactly what it was built with), or uses
//! running ones (`--servers`), joins `--participants S` spread round-robin
//! over the nodes, and has the first `--publishers P` of them send
//! `--messages M` chat messages of `--size B` bytes, at full speed or at
//! `--rate R` messages/s in total. Every participant reads its Join stream
//! and checks what it gets.
//!
//! Each message text is `"<publisher> <seq> <micros> "` padded with dots to
//! B characters, where `micros` is the send time since a bench-local
//! `Instant`. A receiver therefore knows, without asking anyone, the
//! publish-to-delivery latency of every delivery and whether a (receiver,
//! publisher) pair saw every sequence number exactly once and in order.
//!
//! What is measured, and how:
//! * deliveries/s: distinct bench messages received, summed over every
//!   participant, between the first send and the last expected delivery;
//! * latency: p50, p99 and max over every delivery (nearest rank);
//! * missing, duplicated and out-of-order deliveries per (receiver,
//!   publisher), which must all be 0;
//! * server CPU per delivery: the nodes' own accounting (`utime + stime` in
//!   `/proc/<pid>/stat`) over the measured window, divided by deliveries.
//!   The bench's own CPU (the 30 or 3000 clients) is shown beside it, since
//!   on a small machine the two compete for the same cores;
//! * peak memory: `VmHWM` of each node, the largest reported.
//!
//! Before the measured window the bench waits until every participant has
//! received the "joined" events of the others: joins go in batches small
//! enough that no participant's server-side queue can overflow, because each
//! join is itself a broadcast (S joins make S²/2 deliveries).
//!
//! `--flood F` has one more participant send F messages over `PublishStream`
//! as fast as its node takes them (not paced, not windowed), alongside the
//! publishers, whose latency is what is reported: what one flooder costs
//! the others. `--slow K` adds K participants that join and never read (each on its own
//! connection, like a slow machine would be, with a small HTTP/2 window so
//! that the node's queue for it fills within a short run), to show what a
//! slow reader costs everyone else: compare a run with and without it. `--idle N` adds N
//! reading, non-publishing participants and reports how much node memory
//! each of them costs.
//!
//! Every spawned node is owned by a [`Cluster`], which kills and reaps them
//! all when dropped: on success, on error, on panic, and when the caller
//! drops the bench future on Ctrl-C.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::client::{self, Session, SharedClock};
use crate::proto::chitty_chat_client::ChittyChatClient;
use crate::proto::{EventKind, JoinRequest, ListServersRequest, Welcome};

/// How long a spawned node may take to print its listening address.
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
/// A publisher gives up after this many failed publishes in a row.
const MAX_CONSECUTIVE_PUBLISH_ERRORS: u32 = 3;
/// HTTP/2 receive window of a slow participant's connection. Its client
/// library never reads, but the connection would still take in a whole
/// default window (2 MiB per stream) before the node noticed anything; a
/// small window makes the node's own queue the thing that fills.
const SLOW_WINDOW: u32 = 64 * 1024;
/// Interval of the progress line on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Participant counts and node counts of `--sweep`.
pub const SWEEP_PARTICIPANTS: [usize; 4] = [3, 30, 300, 3000];
pub const SWEEP_NODES: [usize; 3] = [1, 3, 5];

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes of the local cluster to start (ignored with `servers`).
    pub nodes: usize,
    /// Running nodes to use instead of starting a cluster.
    pub servers: Vec<String>,
    pub participants: usize,
    pub publishers: usize,
    /// Messages in total, across publishers.
    pub messages: u64,
    /// Characters per message text (ASCII, so also bytes).
    pub size: usize,
    /// Messages per second in total; `None` is full speed.
    pub rate: Option<f64>,
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
    /// How long to wait for the last deliveries once every publisher is done.
    pub drain: Duration,
    /// Bound on the whole publishing phase.
    pub timeout: Duration,
    /// `RUST_LOG` of the spawned nodes.
    pub node_log: String,
    /// Extra arguments for every spawned `chitty server`.
    pub node_args: Vec<String>,
    /// Publish over `PublishStream`, many messages in flight, instead of
    /// one acknowledged call at a time.
    pub pipeline: bool,
    /// At full speed, how many messages (all publishers together) may be
    /// sent beyond what the slowest reader has received; `0`: no limit.
    pub window: u64,
    /// Where the spawned nodes' logs go; `None`: a temporary directory,
    /// removed at the end.
    pub log_dir: Option<PathBuf>,
    /// Print the progress line on stderr.
    pub progress: bool,
}

/// The outcome of one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub nodes: usize,
    pub participants: usize,
    pub publishers: usize,
    pub messages: u64,
    pub size: usize,
    pub rate: Option<f64>,
    pub slow: usize,
    pub idle: usize,
    /// Flood messages sent, and how many the node accepted (the rest were
    /// refused, by the publish rate limit).
    pub flood: u64,
    pub flood_accepted: Option<u64>,
    /// The nodes' resident memory together: before publishing (everyone
    /// joined), and after the run (stalled participants cut off, every
    /// queue drained).
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// Messages the publishers sent (attempted).
    pub sent: u64,
    pub publish_errors: u64,
    pub first_publish_error: Option<String>,
    /// Distinct deliveries expected: sent messages times reading participants.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// From the first send to the last delivery (or the deadline).
    pub seconds: f64,
    /// From the first send to the last acknowledged publish.
    pub send_seconds: f64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub missing: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Reading participants whose stream ended during the run.
    pub disconnected: u64,
    pub first_disconnect: Option<String>,
    /// Slow participants the nodes cut off and announced as left.
    pub slow_disconnected: Option<u64>,
    /// Whether every expected delivery arrived before the deadline.
    pub complete: bool,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub client_cpu_us_per_delivery: Option<f64>,
    pub peak_rss_bytes_per_node: Option<u64>,
    pub idle_rss_bytes_per_participant: Option<f64>,
}

/// Runs one benchmark. Spawned nodes are killed before it returns, and also
/// if the returned future is dropped.
pub async fn run(config: &Config) -> Result<Report, String> {
    validate(config)?;
    let mut cluster = if config.servers.is_empty() {
        Some(Cluster::start(config).await?)
    } else {
        None
    };
    let addrs = match &cluster {
        Some(c) => c.addrs(),
        None => config.servers.clone(),
    };
    let result = run_on(config, &addrs, cluster.as_mut()).await;
    if let Some(c) = cluster.as_mut() {
        c.stop();
        if result.is_err() {
            c.keep_logs();
        }
    }
    result
}

fn validate(config: &Config) -> Result<(), String> {
    if config.servers.is_empty() && config.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if config.participants == 0 {
        return Err("--participants must be at least 1".into());
    }
    if config.publishers == 0 || config.publishers > config.participants {
        return Err(format!(
            "--publishers must be between 1 and --participants ({})",
            config.participants
        ));
    }
    if config.messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    if config.streams_per_connection == 0 {
        return Err("--streams-per-connection must be at least 1".into());
    }
    if let Some(rate) = config.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err("--rate must be a positive number of messages per second".into());
    }
    let limit = crate::core::validate::MAX_MESSAGE_CHARS;
    // The longest header: the last publisher, its last sequence number and a
    // send time 28 hours into the run.
    let longest = header(
        config.publishers - 1,
        config.messages.div_ceil(config.publishers as u64),
        99_999_999_999,
    )
    .len();
    if config.size < longest || config.size > limit {
        return Err(format!(
            "--size must be between {longest} (what the header needs) and {limit} characters"
        ));
    }
    Ok(())
}

/// The start of a message text: publisher index, sequence number, send time.
fn header(publisher: usize, seq: u64, micros: u64) -> String {
    format!("{publisher} {seq} {micros} ")
}

/// Parses `"<publisher> <seq> <micros> ..."`.
fn parse_text(text: &[u8]) -> Option<(usize, u64, u64)> {
    fn number(part: Option<&[u8]>) -> Option<u64> {
        let part = part?;
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    }
    let mut parts = text.splitn(4, |&b| b == b' ');
    let publisher = number(parts.next())? as usize;
    let seq = number(parts.next())?;
    let micros = number(parts.next())?;
    parts.next()?;
    Some((publisher, seq, micros))
}

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
    participant_name: prost::bytes::Bytes,
    #[prost(bytes = "bytes", tag = "6")]
    text: prost::bytes::Bytes,
}

type Frames = tonic::Streaming<ReaderFrame>;

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
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(crate::edge::JOIN_PATH);
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

/// Flags the benchmark gives the nodes it starts, unless `--node-arg`
/// sets them: every participant of a benchmark connects from 127.0.0.1, so
/// the per-address cap is the total one; and its publishers send at full
/// speed, far over a participant's publish rate limit, which is off.
fn bench_node_defaults(node_args: &[String]) -> Vec<String> {
    let defaults = [
        (
            "--max-connections-per-ip",
            crate::connections::DEFAULT_MAX_CONNECTIONS.to_string(),
        ),
        ("--publish-rate", "0".to_string()),
    ];
    defaults
        .into_iter()
        .filter(|(flag, _)| !node_args.iter().any(|a| a.split('=').next() == Some(flag)))
        .map(|(flag, value)| format!("{flag}={value}"))
        .collect()
}

// ---------------------------------------------------------------------------
// The spawned cluster
// ---------------------------------------------------------------------------

/// One spawned `chitty server`.
#[derive(Debug)]
struct NodeProcess {
    child: Child,
    addr: String,
    log: PathBuf,
}

/// The spawned nodes. Dropping it kills and reaps every one of them.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<NodeProcess>,
    log_dir: PathBuf,
    /// Remove `log_dir` when dropped.
    remove_logs: bool,
}

impl Cluster {
    /// Starts `config.nodes` nodes; node 1 starts the cluster and the others
    /// join through it. Returns once every node lists all of them.
    pub async fn start(config: &Config) -> Result<Self, String> {
        let (log_dir, remove_logs) = match &config.log_dir {
            Some(dir) => (dir.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "chitty-bench-{}-{}",
                    std::process::id(),
                    uuid::Uuid::new_v4().simple()
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            log_dir,
            remove_logs,
        };
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the chitty executable: {e}"))?;
        let secret = uuid::Uuid::new_v4().simple().to_string();
        for i in 1..=config.nodes {
            let boot = cluster.nodes.first().map(|n| n.addr.clone());
            match cluster.spawn(&exe, i, &secret, boot, config).await {
                Ok(node) => cluster.nodes.push(node),
                Err(e) => {
                    cluster.keep_logs();
                    return Err(e);
                }
            }
        }
        if let Err(e) = cluster.wait_ready().await {
            cluster.keep_logs();
            return Err(e);
        }
        Ok(cluster)
    }

    /// Starts node `index` of the cluster.
    async fn spawn(
        &self,
        exe: &Path,
        index: usize,
        secret: &str,
        boot: Option<String>,
        config: &Config,
    ) -> Result<NodeProcess, String> {
        let log = self.log_dir.join(format!("node{index}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut command = Command::new(exe);
        command
            .args(["server", "--listen", "127.0.0.1:0"])
            // In the environment, not on the command line, where any user
            // could read it.
            .env("CHITTY_CLUSTER_SECRET", secret)
            .args(boot.iter().flat_map(|b| ["--boot", b.as_str()]))
            .args(bench_node_defaults(&config.node_args))
            .args(&config.node_args)
            .env("RUST_LOG", &config.node_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("node stdout was not captured".into());
        };
        // A thread reads the first line and then drains the pipe until the
        // node exits, so the node never blocks (or fails) writing to it. It
        // ends when the pipe closes, which the Cluster guard guarantees.
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
        let mut node = NodeProcess {
            child,
            addr: String::new(),
            log,
        };
        let first = tokio::time::timeout(NODE_START_TIMEOUT, rx).await;
        let line = match first {
            Ok(Ok(Ok(line))) => line,
            Ok(_) => String::new(),
            Err(_) => {
                let _ = node.child.kill();
                let _ = node.child.wait();
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
                let _ = node.child.kill();
                let status = node.child.wait();
                Err(format!(
                    "node {index} did not start (first line {:?}, {}){}",
                    line.trim(),
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    log_tail(&node.log)
                ))
            }
        }
    }

    /// Waits (bounded) until every node lists every node as alive.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + CLUSTER_READY_TIMEOUT;
        let want = self.nodes.len();
        for i in 0..self.nodes.len() {
            let addr = self.nodes[i].addr.clone();
            let mut seen = 0;
            loop {
                if let Some(status) = self.nodes[i].child.try_wait().ok().flatten() {
                    return Err(format!(
                        "node {} at {addr} exited ({status}){}",
                        i + 1,
                        log_tail(&self.nodes[i].log)
                    ));
                }
                let listed = tokio::time::timeout_at(deadline, async {
                    let mut client = client::connect(&addr).await.ok()?;
                    let reply = client.list_servers(ListServersRequest {}).await.ok()?;
                    Some(reply.into_inner().servers.map_or(0, |s| s.servers.len()))
                })
                .await;
                match listed {
                    Ok(Some(n)) if n >= want => break,
                    Ok(n) => seen = n.unwrap_or(seen),
                    Err(_) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "node {} at {addr} saw {seen} of {want} nodes after {CLUSTER_READY_TIMEOUT:?}{}",
                        i + 1,
                        log_tail(&self.nodes[i].log)
                    ));
                }
                // Polling is the only readiness signal another process gives.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.child.id()).collect()
    }

    /// Fails if a node has exited.
    fn check_alive(&mut self) -> Result<(), String> {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(status) = node.child.try_wait().ok().flatten() {
                return Err(format!(
                    "node {} at {} exited during the run ({status}){}",
                    i + 1,
                    node.addr,
                    log_tail(&node.log)
                ));
            }
        }
        Ok(())
    }

    /// Kills and reaps every node (idempotent).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// Keeps the node logs (after a failure), and says where they are.
    fn keep_logs(&mut self) {
        if self.remove_logs {
            self.remove_logs = false;
            eprintln!("bench: node logs kept in {}", self.log_dir.display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if self.remove_logs {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// The last lines of a node log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(10)..];
    format!(
        "\n--- last lines of {} ---\n{}",
        path.display(),
        tail.join("\n")
    )
}

// ---------------------------------------------------------------------------
// Process accounting
// ---------------------------------------------------------------------------

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14, 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// CPU ticks of the nodes (summed) and of the bench itself.
fn cpu_snapshot(pids: &[u32]) -> (Option<u64>, Option<u64>) {
    let nodes = if pids.is_empty() {
        None
    } else {
        pids.iter()
            .map(|p| cpu_ticks(&p.to_string()))
            .sum::<Option<u64>>()
    };
    (nodes, cpu_ticks("self"))
}

fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| status_bytes(p, "VmRSS")).sum()
}

// ---------------------------------------------------------------------------
// Receivers
// ---------------------------------------------------------------------------

/// What every receiver needs to know about the plan.
#[derive(Debug)]
struct Plan {
    base: Instant,
    /// Messages each publisher will send.
    per_publisher: Vec<u64>,
    /// Distinct messages each receiver expects.
    expected: u64,
}

/// Counters a receiver updates as it goes, read by the progress line and the
/// batch waits. Aligned so that receivers on different cores never share a
/// cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Counters {
    /// Events of any kind received.
    events: AtomicU64,
    /// Distinct bench messages received.
    delivered: AtomicU64,
    /// The stream ended (the bench did not stop it).
    ended: AtomicBool,
}

/// Receivers that have not yet got everything (or ended), and a wake-up for
/// when none remain.
#[derive(Debug, Default)]
struct Completion {
    remaining: AtomicUsize,
    all_done: Notify,
    /// Why the first stream that ended early ended, for warnings.
    first_end: Mutex<Option<String>>,
}

impl Completion {
    fn ended(&self, reason: &str) {
        let mut first = self.first_end.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| reason.to_string());
    }

    fn first_end(&self) -> String {
        let first = self.first_end.lock().unwrap_or_else(|p| p.into_inner());
        first.clone().unwrap_or_default()
    }

    fn finish_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_done.notify_one();
        }
    }
}

/// What one receiver saw, per publisher.
#[derive(Debug)]
struct Tracker {
    /// Per publisher, a bit per sequence number seen.
    seen: Vec<Vec<u64>>,
    /// Per publisher, the highest sequence number seen.
    max_seq: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    reordered: u64,
    /// Texts that are not bench messages of this run.
    foreign: u64,
    latencies_us: Vec<u32>,
    /// Micros since `base` of the last distinct delivery.
    last_delivery_us: Option<u64>,
    /// "left" events of slow participants (the nodes cut them off).
    slow_left: u64,
    /// Why the stream ended before the bench stopped it.
    ended: Option<String>,
}

impl Tracker {
    fn new(plan: &Plan) -> Self {
        Self {
            seen: plan
                .per_publisher
                .iter()
                .map(|&n| vec![0; (n as usize).div_ceil(64)])
                .collect(),
            max_seq: vec![0; plan.per_publisher.len()],
            distinct: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            latencies_us: Vec::with_capacity(plan.expected.min(1 << 16) as usize),
            last_delivery_us: None,
            slow_left: 0,
            ended: None,
        }
    }

    /// Records one message text; returns whether it was a new delivery.
    fn record(&mut self, text: &[u8], now_us: u64) -> bool {
        let Some((publisher, seq, sent_us)) = parse_text(text) else {
            self.foreign += 1;
            return false;
        };
        let Some(bits) = self.seen.get_mut(publisher) else {
            self.foreign += 1;
            return false;
        };
        if seq == 0 || seq as usize > bits.len() * 64 {
            self.foreign += 1;
            return false;
        }
        let (word, bit) = ((seq - 1) as usize / 64, (seq - 1) % 64);
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= 1 << bit;
        if seq < self.max_seq[publisher] {
            self.reordered += 1;
        }
        self.max_seq[publisher] = self.max_seq[publisher].max(seq);
        self.distinct += 1;
        let latency = now_us.saturating_sub(sent_us).min(u32::MAX as u64) as u32;
        self.latencies_us.push(latency);
        self.last_delivery_us = Some(now_us);
        true
    }

    /// Distinct deliveries of the first `sent[p]` messages of each publisher.
    fn distinct_within(&self, sent: &[u64]) -> u64 {
        self.seen
            .iter()
            .zip(sent)
            .map(|(bits, &n)| {
                let full = (n / 64) as usize;
                let mut count: u64 = bits[..full.min(bits.len())]
                    .iter()
                    .map(|w| w.count_ones() as u64)
                    .sum();
                if n % 64 != 0
                    && let Some(w) = bits.get(full)
                {
                    count += (w & ((1u64 << (n % 64)) - 1)).count_ones() as u64;
                }
                count
            })
            .sum()
    }
}

/// Reads one participant's stream until the bench says stop (or it ends).
async fn receive(
    mut frames: Frames,
    clock: SharedClock,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    completion: Arc<Completion>,
    mut stop: watch::Receiver<bool>,
) -> Tracker {
    let mut tracker = Tracker::new(&plan);
    let mut finished = false;
    // Registered once, not per frame: idle readers are most of a big room.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut stopped => break,
            item = frames.message() => item,
        };
        match item {
            Ok(Some(ReaderFrame {
                events: Some(batch),
                ..
            })) => {
                counters
                    .events
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                // Everything in one frame arrived at the same instant.
                let now_us = plan.base.elapsed().as_micros() as u64;
                let mut latest = 0;
                let mut delivered = 0;
                for event in &batch.events {
                    latest = latest.max(event.lamport);
                    match event.kind() {
                        EventKind::Message => {}
                        EventKind::Left if event.participant_name.starts_with(b"slow-") => {
                            tracker.slow_left += 1;
                            continue;
                        }
                        _ => continue,
                    }
                    if tracker.record(&event.text, now_us) {
                        delivered += 1;
                    }
                }
                clock.observe(latest);
                counters.delivered.fetch_add(delivered, Ordering::Relaxed);
                if !finished && tracker.distinct >= plan.expected {
                    finished = true;
                    completion.finish_one();
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                tracker.ended = Some("the stream ended".into());
                break;
            }
            Err(e) => {
                tracker.ended = Some(e.to_string());
                break;
            }
        }
    }
    if let Some(reason) = &tracker.ended {
        counters.ended.store(true, Ordering::Release);
        completion.ended(reason);
    }
    if !finished {
        completion.finish_one();
    }
    tracker
}

// ---------------------------------------------------------------------------
// The room: connections and participants
// ---------------------------------------------------------------------------

/// A reading participant's task and counters.
struct Reader {
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<Tracker>,
}

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
    /// Sessions of the publishers, in publisher order.
    publishers: Vec<Session>,
    readers: Vec<Reader>,
    /// The slow participants and their Join streams, never read; each holds
    /// its own connection, which closes when both are dropped.
    slow_streams: Vec<(Session, Frames)>,
    /// Joined so far, to spread everyone round-robin over the nodes.
    joined: usize,
    name_prefix: String,
    plan: Arc<Plan>,
    completion: Arc<Completion>,
    stop: watch::Sender<bool>,
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
            let before: Vec<u64> = self
                .readers
                .iter()
                .map(|r| r.counters.events.load(Ordering::Relaxed))
                .collect();
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
                        self.spawn_reader(frames, clock);
                    }
                }
            }
            done += batch;
            self.wait_batch(&before, batch as u64).await;
        }
        Ok(())
    }

    fn spawn_reader(&mut self, frames: Frames, clock: SharedClock) {
        let counters = Arc::new(Counters::default());
        self.completion.remaining.fetch_add(1, Ordering::AcqRel);
        let task = tokio::spawn(receive(
            frames,
            clock,
            self.plan.clone(),
            counters.clone(),
            self.completion.clone(),
            self.stop.subscribe(),
        ));
        self.readers.push(Reader { counters, task });
    }

    /// Waits (bounded) until each reader counted in `before` received at
    /// least `batch` more events: the join events of the batch.
    async fn wait_batch(&self, before: &[u64], batch: u64) {
        let deadline = Instant::now() + JOIN_BATCH_TIMEOUT;
        loop {
            let behind = self
                .readers
                .iter()
                .zip(before)
                .filter(|(r, b)| {
                    !r.counters.ended.load(Ordering::Acquire)
                        && r.counters.events.load(Ordering::Relaxed) < *b + batch
                })
                .count();
            if behind == 0 {
                self.warn_ended();
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "bench: warning: {behind} participants did not receive all join events within {JOIN_BATCH_TIMEOUT:?}"
                );
                self.warn_ended();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) until no reader received anything for [`QUIET_FOR`].
    async fn wait_quiet(&self) {
        let deadline = Instant::now() + QUIET_TIMEOUT;
        let total = || -> u64 {
            self.readers
                .iter()
                .map(|r| r.counters.events.load(Ordering::Relaxed))
                .sum()
        };
        let mut last = total();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = total();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= QUIET_FOR {
                return;
            }
        }
        eprintln!("bench: warning: participants still receiving after {QUIET_TIMEOUT:?}");
    }

    /// Says how many streams have ended early so far, and why the first did.
    fn warn_ended(&self) {
        let ended = self
            .readers
            .iter()
            .filter(|r| r.counters.ended.load(Ordering::Acquire))
            .count();
        if ended > 0 {
            eprintln!(
                "bench: warning: {ended} participants' streams have ended (first: {})",
                self.completion.first_end()
            );
        }
    }

    fn delivered(&self) -> u64 {
        self.readers
            .iter()
            .map(|r| r.counters.delivered.load(Ordering::Relaxed))
            .sum()
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

#[derive(Debug, Default)]
struct Published {
    errors: u64,
    first_error: Option<String>,
    /// Micros since base when the last publish was acknowledged.
    last_ack_us: u64,
}

/// Sends one publisher's share, one call at a time, counting each message in
/// `attempted` before sending it. With a rate, message `k` of publisher `p`
/// goes at `start + (k * P + p) / rate`: an absolute schedule, so a late
/// send does not delay the ones after it.
#[allow(clippy::too_many_arguments)]
async fn publish(
    session: Session,
    pipeline: bool,
    publisher: usize,
    plan: Arc<Plan>,
    size: usize,
    pace: Option<(tokio::time::Instant, f64)>,
    attempted: Arc<AtomicU64>,
    flow: Option<Arc<Flow>>,
) -> Published {
    let publishers = plan.per_publisher.len() as u64;
    let count = plan.per_publisher[publisher];
    let mut out = Published::default();
    let mut text = String::with_capacity(size);
    let mut failures_in_a_row = 0;
    // Pipelined: one task sends, this one's outcomes are read beside it.
    let mut pipelined = None;
    let mut outcomes = None;
    if pipeline {
        match session.publisher().await {
            Ok((sender, replies)) => {
                pipelined = Some(sender);
                let base = plan.base;
                outcomes = Some(tokio::spawn(read_outcomes(replies, count, base)));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error = Some(e.to_string());
                return out;
            }
        }
    }
    for k in 0..count {
        if let Some((start, rate)) = pace {
            let slot = (k * publishers + publisher as u64) as f64 / rate;
            tokio::time::sleep_until(start + Duration::from_secs_f64(slot)).await;
        }
        if let Some(flow) = &flow
            && k % FLOW_CHECK_EVERY == 0
        {
            flow.wait_for_readers().await;
        }
        text.clear();
        let now_us = plan.base.elapsed().as_micros() as u64;
        let _ = write!(text, "{publisher} {} {now_us} ", k + 1);
        while text.len() < size {
            text.push('.');
        }
        attempted.fetch_add(1, Ordering::Relaxed);
        if let Some(sender) = &pipelined {
            if let Err(e) = sender.send(&text).await {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
                break;
            }
            continue;
        }
        match session.publish(&text).await {
            Ok(_) => failures_in_a_row = 0,
            Err(e) => {
                out.errors += 1;
                failures_in_a_row += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        out.last_ack_us = plan.base.elapsed().as_micros() as u64;
        if failures_in_a_row >= MAX_CONSECUTIVE_PUBLISH_ERRORS {
            break;
        }
    }
    if let Some(outcomes) = outcomes {
        drop(pipelined);
        match outcomes.await {
            Ok(read) => {
                out.errors += read.errors;
                if out.first_error.is_none() {
                    out.first_error = read.first_error;
                }
                out.last_ack_us = read.last_ack_us;
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
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

/// Messages sent by all publishers so far.
fn total(attempted: &[Arc<AtomicU64>]) -> u64 {
    attempted.iter().map(|a| a.load(Ordering::Relaxed)).sum()
}

/// A publisher looks at the readers every this many messages.
const FLOW_CHECK_EVERY: u64 = 32;

/// Closed-loop pacing at full speed: publishers stay at most `window`
/// messages ahead of the slowest reader still reading. Without it, fast
/// publishers only build queues on the nodes (and the nodes cut off readers
/// whose queue is full): the run would measure queueing, not delivery.
struct Flow {
    window: u64,
    sent: Vec<Arc<AtomicU64>>,
    readers: Vec<Arc<Counters>>,
}

impl Flow {
    async fn wait_for_readers(&self) {
        loop {
            let sent = total(&self.sent);
            let slowest = self
                .readers
                .iter()
                .filter(|r| !r.ended.load(Ordering::Acquire))
                .map(|r| r.delivered.load(Ordering::Relaxed))
                .min();
            match slowest {
                Some(received) if sent.saturating_sub(received) > self.window => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                _ => return,
            }
        }
    }
}

/// Reads a publish stream's outcomes (in order) until `count` arrived or
/// the stream ended.
async fn read_outcomes(
    mut replies: tonic::Streaming<crate::proto::PublishOutcome>,
    count: u64,
    base: Instant,
) -> Published {
    let mut out = Published::default();
    let mut seen = 0;
    while seen < count {
        match replies.message().await {
            Ok(Some(outcome)) => {
                seen += 1;
                if outcome.reply.is_none() {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert_with(|| outcome.error_message.clone());
                }
                out.last_ack_us = base.elapsed().as_micros() as u64;
            }
            Ok(None) => break,
            Err(status) => {
                out.errors += count - seen;
                out.first_error.get_or_insert_with(|| status.to_string());
                break;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

async fn run_on(
    config: &Config,
    addrs: &[String],
    cluster: Option<&mut Cluster>,
) -> Result<Report, String> {
    let pids = cluster.as_ref().map(|c| c.pids()).unwrap_or_default();
    let p = config.publishers as u64;
    let plan = Arc::new(Plan {
        base: Instant::now(),
        per_publisher: (0..p)
            .map(|i| config.messages / p + u64::from(i < config.messages % p))
            .collect(),
        expected: config.messages,
    });
    let (stop, _) = watch::channel(false);
    let mut room = Room {
        addrs: addrs.to_vec(),
        per_connection: config.streams_per_connection,
        channels: HashMap::new(),
        placed: vec![0; addrs.len()],
        sessions: Vec::new(),
        publishers: Vec::new(),
        readers: Vec::new(),
        slow_streams: Vec::new(),
        joined: 0,
        // Names must not clash with what a shared cluster already has.
        name_prefix: if config.servers.is_empty() {
            String::new()
        } else {
            format!("{}-", &uuid::Uuid::new_v4().simple().to_string()[..6])
        },
        plan: plan.clone(),
        completion: Arc::new(Completion::default()),
        stop,
    };
    let result = measure(config, &mut room, &pids, cluster).await;
    // Stop the readers whatever happened; they end at their next event.
    let _ = room.stop.send(true);
    if !config.servers.is_empty() {
        room.leave_all().await;
    }
    for reader in &room.readers {
        reader.task.abort();
    }
    result
}

async fn measure(
    config: &Config,
    room: &mut Room,
    pids: &[u32],
    mut cluster: Option<&mut Cluster>,
) -> Result<Report, String> {
    let say = |text: String| {
        if config.progress {
            eprintln!("bench: {text}");
        }
    };
    let started = Instant::now();
    room.join(Role::Participant, config.participants, config.publishers)
        .await?;
    room.wait_quiet().await;
    say(format!(
        "{} participants joined on {} nodes in {:.1} s",
        config.participants,
        room.addrs.len(),
        started.elapsed().as_secs_f64()
    ));

    let mut idle_rss = None;
    if config.idle > 0 {
        let before = total_rss(pids);
        let t = Instant::now();
        room.join(Role::Idle, config.idle, 0).await?;
        room.wait_quiet().await;
        let after = total_rss(pids);
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
    let rss_before = total_rss(pids);

    let plan = room.plan.clone();
    let readers = room.readers.len() as u64;
    let ticks = clock_ticks();
    // Messages each publisher sent (or is sending), known even if a
    // publisher task has to be stopped.
    let attempted: Vec<Arc<AtomicU64>> = (0..config.publishers)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let sent = || total(&attempted);
    let (cpu_nodes_0, cpu_self_0) = cpu_snapshot(pids);
    let t0_us = plan.base.elapsed().as_micros() as u64;
    let pace = config
        .rate
        .map(|r| (tokio::time::Instant::now() + Duration::from_millis(1), r));
    let flow = (config.rate.is_none() && config.window > 0).then(|| {
        Arc::new(Flow {
            window: config.window,
            sent: attempted.clone(),
            readers: room.readers.iter().map(|r| r.counters.clone()).collect(),
        })
    });
    let flooding = flooder
        .clone()
        .map(|session| tokio::spawn(flood(session, config.flood, config.size)));
    let mut publishers = JoinSet::new();
    for (i, session) in room.publishers.iter().cloned().enumerate() {
        publishers.spawn(publish(
            session,
            config.pipeline,
            i,
            plan.clone(),
            config.size,
            pace,
            attempted[i].clone(),
            flow.clone(),
        ));
    }

    // Wait for the publishers, then (bounded) for the last deliveries.
    let mut published: Vec<Published> = Vec::new();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let send_deadline = tokio::time::Instant::now() + config.timeout;
    let mut drain_deadline = None;
    let mut last_delivered = 0;
    let all_done = room.completion.all_done.notified();
    tokio::pin!(all_done);
    loop {
        let wait_drain = async {
            match drain_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut all_done => break,
            joined = publishers.join_next(), if !publishers.is_empty() => {
                match joined {
                    Some(Ok(p)) => published.push(p),
                    Some(Err(e)) => return Err(format!("publisher task failed: {e}")),
                    None => {}
                }
                if publishers.is_empty() {
                    drain_deadline = Some(tokio::time::Instant::now() + config.drain);
                }
            }
            _ = tokio::time::sleep_until(send_deadline), if !publishers.is_empty() => {
                eprintln!("bench: warning: publishing did not finish within {:?}; stopping it", config.timeout);
                publishers.abort_all();
                while let Some(joined) = publishers.join_next().await {
                    if let Ok(p) = joined {
                        published.push(p);
                    }
                }
                drain_deadline = Some(tokio::time::Instant::now() + config.drain);
            }
            _ = wait_drain => {
                eprintln!("bench: warning: not every delivery arrived within {:?} of the last publish", config.drain);
                break;
            }
            _ = tick.tick() => {
                let delivered = room.delivered();
                if config.progress {
                    let elapsed = (plan.base.elapsed().as_micros() as u64 - t0_us) as f64 / 1e6;
                    eprintln!(
                        "bench: {elapsed:5.1} s  sent {}/{}  delivered {}/{}  {:.0}/s now",
                        sent(),
                        config.messages,
                        delivered,
                        config.messages * readers,
                        (delivered - last_delivered) as f64 / PROGRESS_EVERY.as_secs_f64(),
                    );
                }
                last_delivered = delivered;
            }
        }
    }
    let (cpu_nodes_1, cpu_self_1) = cpu_snapshot(pids);
    let end_us = plan.base.elapsed().as_micros() as u64;
    // Publishers normally finished before the last delivery; if every
    // delivery arrived first, wait for their last acknowledgements.
    while let Some(joined) = publishers.join_next().await {
        if let Ok(p) = joined {
            published.push(p);
        }
    }

    // Stop the readers and collect what each saw.
    let _ = room.stop.send(true);
    let mut trackers = Vec::with_capacity(room.readers.len());
    for reader in room.readers.drain(..) {
        trackers.push(
            reader
                .task
                .await
                .map_err(|e| format!("receiver task failed: {e}"))?,
        );
    }

    let sent_per_publisher: Vec<u64> = attempted
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let mut report = Report {
        nodes: room.addrs.len(),
        participants: config.participants,
        publishers: config.publishers,
        messages: config.messages,
        size: config.size,
        rate: config.rate,
        slow: config.slow,
        idle: config.idle,
        flood: config.flood,
        ..Report::default()
    };
    if let Some(flooding) = flooding {
        report.flood_accepted = flooding.await.ok();
    }
    drop(flooder);
    report.rss_before_bytes = rss_before;
    // The stalled participants go away (their connections close), and
    // the nodes free what was queued for them.
    if !room.slow_streams.is_empty() {
        room.slow_streams.clear();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report.rss_after_bytes = total_rss(pids);
    let mut last_ack_us = t0_us;
    for out in &published {
        report.publish_errors += out.errors;
        if report.first_publish_error.is_none() {
            report.first_publish_error = out.first_error.clone();
        }
        last_ack_us = last_ack_us.max(out.last_ack_us);
    }
    report.sent = sent_per_publisher.iter().sum();

    let mut latencies: Vec<u32> = Vec::new();
    let mut last_delivery_us = t0_us;
    for t in &trackers {
        let distinct = t.distinct_within(&sent_per_publisher);
        report.delivered += distinct;
        report.missing += report.sent.saturating_sub(distinct);
        report.duplicates += t.duplicates;
        report.reordered += t.reordered;
        if let Some(reason) = &t.ended {
            report.disconnected += 1;
            report
                .first_disconnect
                .get_or_insert_with(|| reason.clone());
        }
        if let Some(us) = t.last_delivery_us {
            last_delivery_us = last_delivery_us.max(us);
        }
        latencies.extend_from_slice(&t.latencies_us);
    }
    report.expected = report.sent * readers;
    report.complete = report.missing == 0;
    // The measured window ends at the last delivery, also when some never
    // came (waiting for them is not delivering).
    let window_end = if report.delivered > 0 {
        last_delivery_us
    } else {
        end_us
    };
    report.seconds = window_end.saturating_sub(t0_us) as f64 / 1e6;
    report.send_seconds = last_ack_us.saturating_sub(t0_us) as f64 / 1e6;
    if report.seconds > 0.0 {
        report.deliveries_per_sec = report.delivered as f64 / report.seconds;
    }
    if report.send_seconds > 0.0 {
        report.messages_per_sec = report.sent as f64 / report.send_seconds;
    }
    latencies.sort_unstable();
    let rank = |q: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        let i = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        Some(latencies[i] as f64 / 1000.0)
    };
    report.latency_p50_ms = rank(0.50);
    report.latency_p99_ms = rank(0.99);
    report.latency_max_ms = latencies.last().map(|&l| l as f64 / 1000.0);

    let per_delivery = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        let ticks_used = b?.checked_sub(a?)?;
        (report.delivered > 0).then(|| ticks_used as f64 / ticks * 1e6 / report.delivered as f64)
    };
    report.server_cpu_us_per_delivery = per_delivery(cpu_nodes_0, cpu_nodes_1);
    report.client_cpu_us_per_delivery = per_delivery(cpu_self_0, cpu_self_1);
    report.server_cpu_seconds = match (cpu_nodes_0, cpu_nodes_1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ticks),
        _ => None,
    };
    report.peak_rss_bytes_per_node = pids.iter().filter_map(|&p| status_bytes(p, "VmHWM")).max();
    report.idle_rss_bytes_per_participant = idle_rss;
    if config.slow > 0 {
        report.slow_disconnected = trackers.iter().map(|t| t.slow_left).max();
    }
    if let Some(c) = cluster {
        c.check_alive()?;
    }
    Ok(report)
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

impl Report {
    /// One JSON object on one line (written by hand: numbers and a few
    /// strings, no nesting).
    pub fn to_json(&self) -> String {
        let mut fields: Vec<(&str, String)> = vec![
            ("nodes", self.nodes.to_string()),
            ("participants", self.participants.to_string()),
            ("publishers", self.publishers.to_string()),
            ("messages", self.messages.to_string()),
            ("size", self.size.to_string()),
            ("rate", json_f64(self.rate, 1)),
            ("slow", self.slow.to_string()),
            ("idle", self.idle.to_string()),
            ("sent", self.sent.to_string()),
            ("publish_errors", self.publish_errors.to_string()),
            ("expected", self.expected.to_string()),
            ("delivered", self.delivered.to_string()),
            ("seconds", json_f64(Some(self.seconds), 6)),
            (
                "deliveries_per_sec",
                json_f64(Some(self.deliveries_per_sec), 1),
            ),
            ("messages_per_sec", json_f64(Some(self.messages_per_sec), 1)),
            ("latency_p50_ms", json_f64(self.latency_p50_ms, 3)),
            ("latency_p99_ms", json_f64(self.latency_p99_ms, 3)),
            ("latency_max_ms", json_f64(self.latency_max_ms, 3)),
            ("missing", self.missing.to_string()),
            ("duplicates", self.duplicates.to_string()),
            ("reordered", self.reordered.to_string()),
            ("disconnected", self.disconnected.to_string()),
            (
                "slow_disconnected",
                self.slow_disconnected
                    .map_or("null".into(), |n| n.to_string()),
            ),
            ("server_cpu_seconds", json_f64(self.server_cpu_seconds, 3)),
            (
                "server_cpu_us_per_delivery",
                json_f64(self.server_cpu_us_per_delivery, 3),
            ),
            (
                "client_cpu_us_per_delivery",
                json_f64(self.client_cpu_us_per_delivery, 3),
            ),
            (
                "peak_rss_bytes_per_node",
                self.peak_rss_bytes_per_node
                    .map_or("null".into(), |n| n.to_string()),
            ),
            (
                "idle_rss_bytes_per_participant",
                json_f64(self.idle_rss_bytes_per_participant, 0),
            ),
        ];
        if let Some(e) = &self.first_publish_error {
            fields.push(("first_publish_error", json_string(e)));
        }
        if let Some(e) = &self.first_disconnect {
            fields.push(("first_disconnect", json_string(e)));
        }
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let pace = match self.rate {
            Some(r) => format!("{r} messages/s"),
            None => "full speed".into(),
        };
        let _ = writeln!(
            t,
            "chitty bench: {} nodes, {} participants ({} publishing), {} messages of {} bytes at {pace}{}{}",
            self.nodes,
            self.participants,
            self.publishers,
            self.messages,
            self.size,
            if self.idle > 0 {
                format!(", {} idle", self.idle)
            } else {
                String::new()
            },
            if self.slow > 0 {
                format!(", {} never reading", self.slow)
            } else {
                String::new()
            },
        );
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        let rows: Vec<(&str, String)> = vec![
            (
                "deliveries/s",
                format!(
                    "{} ({} deliveries in {:.3} s)",
                    thousands(self.deliveries_per_sec),
                    self.delivered,
                    self.seconds
                ),
            ),
            (
                "messages/s sent",
                format!(
                    "{} ({} sent in {:.3} s, {} failed)",
                    thousands(self.messages_per_sec),
                    self.sent,
                    self.send_seconds,
                    self.publish_errors
                ),
            ),
            (
                "latency p50 / p99 / max",
                format!(
                    "{} / {} / {} ms",
                    ms(self.latency_p50_ms),
                    ms(self.latency_p99_ms),
                    ms(self.latency_max_ms)
                ),
            ),
            (
                "missing / dup / reordered",
                format!(
                    "{} / {} / {}",
                    self.missing, self.duplicates, self.reordered
                ),
            ),
            (
                "server CPU per delivery",
                match (self.server_cpu_us_per_delivery, self.server_cpu_seconds) {
                    (Some(us), Some(s)) => format!("{us:.3} µs ({s:.2} CPU-s over all nodes)"),
                    _ => "- (not local processes)".into(),
                },
            ),
            (
                "bench CPU per delivery",
                self.client_cpu_us_per_delivery.map_or("-".into(), |us| {
                    format!("{us:.3} µs (the clients, same machine)")
                }),
            ),
            (
                "peak memory per node",
                self.peak_rss_bytes_per_node.map_or("-".into(), |b| {
                    format!("{:.1} MiB (VmHWM, largest node)", b as f64 / 1048576.0)
                }),
            ),
        ];
        let mut rows = rows;
        if self.idle > 0 {
            rows.push((
                "node memory per idle",
                self.idle_rss_bytes_per_participant.map_or("-".into(), |b| {
                    format!("{:.1} KiB (RSS growth, all nodes)", b / 1024.0)
                }),
            ));
        }
        if self.flood > 0 {
            rows.push((
                "flood",
                format!(
                    "{} sent, {} accepted by the node",
                    self.flood,
                    self.flood_accepted.map_or("?".into(), |n| n.to_string())
                ),
            ));
        }
        let mib =
            |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        rows.push((
            "node memory before/after",
            format!(
                "{} / {} (VmRSS, all nodes: everyone joined / run over, stalled ones gone)",
                mib(self.rss_before_bytes),
                mib(self.rss_after_bytes)
            ),
        ));
        if self.slow > 0 {
            rows.push((
                "slow ones cut off",
                self.slow_disconnected
                    .map_or("-".into(), |n| format!("{n} of {}", self.slow)),
            ));
        }
        if self.disconnected > 0 {
            rows.push((
                "readers disconnected",
                format!(
                    "{} (first: {})",
                    self.disconnected,
                    self.first_disconnect.as_deref().unwrap_or("?")
                ),
            ));
        }
        if let Some(e) = &self.first_publish_error {
            rows.push(("first publish error", e.clone()));
        }
        for (k, v) in rows {
            let _ = writeln!(t, "  {k:<26} {v}");
        }
        if let Some(rate) = self.rate
            && self.messages_per_sec < 0.95 * rate
        {
            let _ = writeln!(
                t,
                "  note: the publishers could not keep up with {rate} messages/s (one call at a time each)"
            );
        }
        let verdict = if self.missing == 0 && self.duplicates == 0 && self.reordered == 0 {
            "every delivery arrived once and in order"
        } else {
            "FAILED: deliveries were missing, duplicated or out of order"
        };
        let _ = write!(t, "  {verdict}");
        t
    }

    /// Whether the run delivered everything exactly once, in order.
    pub fn correct(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.reordered == 0 && self.delivered > 0
    }
}

fn json_f64(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "null".into(),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// 1234567.8 as "1,234,568".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------

/// Messages for a sweep point with `participants`: about `budget` deliveries,
/// at least 200 messages (for a meaningful p99) and at most `cap` (small S
/// would otherwise need many messages, and publishers send one at a time).
pub fn sweep_messages(participants: usize, budget: u64, cap: u64) -> u64 {
    (budget / participants as u64).clamp(200, cap.max(200))
}

/// Runs every point of [`SWEEP_NODES`] × [`SWEEP_PARTICIPANTS`] at full speed
/// with `base`'s other settings (`base.messages` is the most messages a
/// point sends; `label` goes into the caption), writes the JSON lines to
/// `out/bench-results.jsonl` (one per point, as they finish) and the picture
/// to `out/bench-scaling.svg`. Returns the reports of the points that ran.
pub async fn sweep(
    base: &Config,
    budget: u64,
    label: &str,
    out: &Path,
) -> Result<Vec<Report>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let jsonl = out.join("bench-results.jsonl");
    let svg = out.join("bench-scaling.svg");
    let mut lines = String::new();
    let mut reports = Vec::new();
    for &nodes in &SWEEP_NODES {
        for &participants in &SWEEP_PARTICIPANTS {
            let config = Config {
                nodes,
                participants,
                publishers: base.publishers.min(participants),
                messages: sweep_messages(participants, budget, base.messages),
                rate: None,
                slow: 0,
                flood: 0,
                idle: 0,
                ..base.clone()
            };
            eprintln!(
                "sweep: N={nodes} S={participants} M={} P={}",
                config.messages, config.publishers
            );
            match run(&config).await {
                Ok(report) => {
                    eprintln!("{}", report.table());
                    println!("{}", report.to_json());
                    lines.push_str(&report.to_json());
                    lines.push('\n');
                    std::fs::write(&jsonl, &lines)
                        .map_err(|e| format!("cannot write {}: {e}", jsonl.display()))?;
                    reports.push(report);
                }
                Err(e) => eprintln!("sweep: N={nodes} S={participants} failed: {e}"),
            }
        }
    }
    let note = format!(
        "each point: a fresh cluster, about {budget} deliveries (messages = {budget}/S, at least 200, at most {}); data in bench-results.jsonl",
        base.messages.max(200)
    );
    let caption = if label.is_empty() {
        machine()
    } else {
        format!("{}, {label}", machine())
    };
    std::fs::write(&svg, scaling_svg(&reports, &caption, &note))
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    eprintln!("sweep: wrote {} and {}", jsonl.display(), svg.display());
    Ok(reports)
}

/// "AMD EPYC ..., 2 cores", for captions.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}

/// Two panels, deliveries/s and p99 latency against participants (log
/// scale), one line per node count; `machine` and `note` are captions.
pub fn scaling_svg(reports: &[Report], machine: &str, note: &str) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 440.0;
    const PANEL_W: f64 = 400.0;
    const PANEL_H: f64 = 280.0;
    const TOP: f64 = 80.0;
    const LEFTS: [f64; 2] = [90.0, 570.0];
    const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

    let xs = SWEEP_PARTICIPANTS.map(|s| s as f64);
    let (xmin, xmax) = (xs[0].log10(), xs[xs.len() - 1].log10());
    let x_at = |left: f64, s: f64| left + (s.log10() - xmin) / (xmax - xmin) * PANEL_W;

    // Left: deliveries/s, linear from 0.
    let max_rate = reports
        .iter()
        .map(|r| r.deliveries_per_sec)
        .fold(0.0, f64::max);
    let rate_step = nice_step(max_rate / 5.0);
    let rate_top = (max_rate / rate_step).ceil().max(1.0) * rate_step;
    // Right: p99 in ms, log from a power of ten below to one above.
    let p99s: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.latency_p99_ms)
        .filter(|v| *v > 0.0)
        .collect();
    let lo = p99s
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let hi = p99s
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        .ceil();
    let (lo, hi) = if p99s.is_empty() {
        (0.0, 1.0)
    } else if hi <= lo {
        (lo, lo + 1.0)
    } else {
        (lo, hi)
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let (publishers, size) = reports.first().map_or((0, 0), |r| (r.publishers, r.size));
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" font-size="16" text-anchor="middle">chitty bench at full speed: {publishers} publishers, {size}-byte messages, N local nodes, S participants</text>"#,
        W / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="46" fill="#555" text-anchor="middle">{}</text>"##,
        W / 2.0,
        xml_escape(machine)
    );

    let panels = [
        ("deliveries per second (all participants)", LEFTS[0]),
        ("p99 publish-to-delivery latency (ms, log scale)", LEFTS[1]),
    ];
    for (panel, (title, left)) in panels.iter().enumerate() {
        let bottom = TOP + PANEL_H;
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{title}</text>"#,
            left + PANEL_W / 2.0,
            TOP - 10.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">participants S (log scale)</text>"#,
            left + PANEL_W / 2.0,
            bottom + 38.0
        );
        for &s in &xs {
            let x = x_at(*left, s);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{s}</text>"##,
                bottom + 18.0
            );
        }
        // Horizontal grid and labels.
        let ticks: Vec<(f64, String)> = if panel == 0 {
            let mut v = Vec::new();
            let mut t = 0.0;
            while t <= rate_top + rate_step / 2.0 {
                v.push((t / rate_top, thousands(t)));
                t += rate_step;
            }
            v
        } else {
            (lo as i32..=hi as i32)
                .map(|e| {
                    let value = 10f64.powi(e);
                    let label = if e >= 0 {
                        format!("{value:.0}")
                    } else {
                        format!("{value}")
                    };
                    ((e as f64 - lo) / (hi - lo), label)
                })
                .collect()
        };
        for (frac, label) in ticks {
            let y = bottom - frac * PANEL_H;
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                left + PANEL_W,
                left - 6.0,
                y + 4.0
            );
        }
        // One line per node count.
        for (i, &nodes) in SWEEP_NODES.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut points: Vec<(f64, f64, bool)> = reports
                .iter()
                .filter(|r| r.nodes == nodes)
                .filter_map(|r| {
                    let x = x_at(*left, r.participants as f64);
                    let frac = if panel == 0 {
                        r.deliveries_per_sec / rate_top
                    } else {
                        let v = r.latency_p99_ms.filter(|v| *v > 0.0)?;
                        (v.log10() - lo) / (hi - lo)
                    };
                    Some((x, bottom - frac * PANEL_H, r.correct()))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if points.is_empty() {
                continue;
            }
            let path: Vec<String> = points
                .iter()
                .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y, correct) in points {
                // A run that lost, repeated or reordered deliveries is drawn
                // hollow: its numbers are not comparable.
                let fill = if correct { color } else { "white" };
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{fill}" stroke="{color}" stroke-width="2"/>"#
                );
            }
        }
    }
    // Legend.
    for (i, &nodes) in SWEEP_NODES.iter().enumerate() {
        let x = LEFTS[0] + i as f64 * 120.0;
        let y = H - 30.0;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">N = {nodes} node{}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0,
            if nodes == 1 { "" } else { "s" }
        );
    }
    if reports.iter().any(|r| !r.correct()) {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" fill="#555">hollow point: deliveries were missing, duplicated or out of order</text>"##,
            LEFTS[0] + 380.0,
            H - 26.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" fill="#555" font-size="11">{}</text>"##,
        LEFTS[0],
        H - 8.0,
        xml_escape(note)
    );
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let pow = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow)
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(per_publisher: Vec<u64>) -> Plan {
        let expected = per_publisher.iter().sum();
        Plan {
            base: Instant::now(),
            per_publisher,
            expected,
        }
    }

    #[test]
    fn message_text_round_trips() {
        let text = format!("{:.<64}", header(2, 17, 123_456));
        assert_eq!(text.len(), 64);
        assert_eq!(parse_text(text.as_bytes()), Some((2, 17, 123_456)));
        assert_eq!(parse_text(b"hello world"), None);
    }

    #[test]
    fn tracker_counts_duplicates_reordering_and_missing() {
        let plan = plan(vec![3, 100]);
        let mut t = Tracker::new(&plan);
        assert!(t.record(b"0 1 10 .", 20));
        assert!(t.record(b"0 3 10 .", 20));
        assert!(t.record(b"0 2 10 .", 20)); // after 3: out of order
        assert!(!t.record(b"0 2 10 .", 20)); // seen: duplicate
        assert!(t.record(b"1 100 10 .", 30));
        assert!(!t.record(b"7 1 10 .", 20)); // no such publisher
        assert!(!t.record(b"chat", 20));
        assert_eq!(
            (t.distinct, t.duplicates, t.reordered, t.foreign),
            (4, 1, 1, 2)
        );
        assert_eq!(t.latencies_us, vec![10, 10, 10, 20]);
        assert_eq!(t.distinct_within(&[3, 100]), 4);
        assert_eq!(t.distinct_within(&[2, 99]), 2);
    }

    #[test]
    fn json_is_one_flat_line() {
        let report = Report {
            rate: None,
            latency_p99_ms: Some(1.5),
            first_disconnect: Some("a \"quoted\"\nreason".into()),
            ..Report::default()
        };
        let json = report.to_json();
        assert!(!json.contains('\n'));
        assert!(json.contains("\"rate\":null"));
        assert!(json.contains("\"latency_p99_ms\":1.500"));
        assert!(json.contains(r#""first_disconnect":"a \"quoted\"\nreason""#));
    }

    #[test]
    fn helpers() {
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(nice_step(180_000.0), 200_000.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(sweep_messages(3000, 300_000, 10_000), 200);
        assert_eq!(sweep_messages(3, 300_000, 10_000), 10_000);
    }

    #[test]
    fn svg_has_a_line_per_node_count() {
        let reports: Vec<Report> = SWEEP_NODES
            .iter()
            .flat_map(|&n| {
                SWEEP_PARTICIPANTS.iter().map(move |&s| Report {
                    nodes: n,
                    participants: s,
                    deliveries_per_sec: (s * 1000 / n) as f64,
                    latency_p99_ms: Some(s as f64 / 10.0),
                    ..Report::default()
                })
            })
            .collect();
        let svg = scaling_svg(&reports, "test machine", "a note");
        assert_eq!(svg.matches("<polyline").count(), 2 * SWEEP_NODES.len());
        assert!(svg.ends_with("</svg>\n"));
    }
}
