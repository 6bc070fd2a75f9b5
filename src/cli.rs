//! The `chitty` command line: `chitty server` runs a node, `chitty client`
//! joins the chat, `chitty send` and `chitty watch` script it, `chitty
//! status` shows a cluster, `chitty trace` draws the Lamport sequence
//! diagram of a run from its logs, `chitty health` checks a node. Most flags
//! can also be set with a `CHITTY_...` environment variable. The benchmark
//! is a program of its own, `chitty-bench` (bench/).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::error;

use crate::client::{self, Received};
use crate::connections::{self, ConnectionLimits};
use crate::console::{self, Action};
use crate::core::chat::CoreLimits;
use crate::core::validate::escaped;
use crate::failover::{self, ClientOptions, Update};
use crate::node::{
    DEFAULT_BOOT_TIMEOUT, DEFAULT_BOOTSTRAP_AFTER, DEFAULT_FAILURE_TIMEOUT, DEFAULT_HEARTBEAT,
    DEFAULT_PEER_QUEUE, DEFAULT_SESSION_QUEUE, DEFAULT_SESSION_QUEUE_BYTES, NodeConfig,
};
use crate::rate::{self, RateLimit};
use crate::tls::TlsSettings;

#[derive(Debug, Parser)]
#[command(
    name = "chitty",
    version,
    about = "Chitty-Chat: a chat room over gRPC where every event carries a Lamport timestamp.",
    long_about = "Chitty-Chat: a chat room over gRPC where every event carries a Lamport timestamp.\n\n\
        Start a server, then connect clients to it:\n\n  \
        chitty server\n  \
        chitty client --name Alice\n  \
        chitty client --name Bob\n\n\
        Type a line to publish it to everyone; /help lists the commands; /quit, end of input \
        or Ctrl-C leaves.\n\
        For scripts: `chitty send --name N TEXT` publishes and leaves, `chitty watch` prints the \
        chat, --json prints events as JSON lines.\n\
        Logging is controlled by RUST_LOG (for example RUST_LOG=chitty=debug)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// One value per process, parsed once: boxing the large variant saves nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a chat node.
    Server(ServerArgs),
    /// Join the chat as a participant.
    Client(ClientArgs),
    /// Publish messages and leave: joins as --name, publishes each TEXT
    /// (or, without any, each line of standard input) in order, leaves.
    Send(SendArgs),
    /// Print the chat without taking part: joins (the protocol has no
    /// read-only session) under a name that says so, `watch-XXXX` unless
    /// --name is given, prints every event and never publishes. Ctrl-C
    /// leaves.
    Watch(ClientArgs),
    /// Show the cluster as one node sees it: its nodes and their state, the
    /// participants on each, the lag of its links.
    Status(StatusArgs),
    /// Make a development CA and node certificates for TLS.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Ask a node whether it serves (gRPC health check); exit code 0 if it
    /// does. The container image's health check.
    Health(crate::health::HealthArgs),
    /// Draw the Lamport sequence diagram of a run from the JSON logs of its
    /// nodes and clients (--log-format json; docs/logs.md).
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example, a diagram of the whole run and one of what involved Alice:\n  \
        chitty trace node1.jsonl node2.jsonl alice.jsonl bob.jsonl -o run.svg\n  \
        chitty trace *.jsonl --participant Alice > alice.mmd\n\n\
        Arrows are ordered by happens-before and Lamport time, never by wall clock."
)]
pub struct TraceArgs {
    /// The JSON logs of a run's nodes (their stderr) and clients (their
    /// --log), in any order. Lines that are not diagram records are skipped.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,
    /// Output format: a Mermaid sequenceDiagram, or an SVG picture. Default:
    /// svg when -o names a .svg file, else mermaid.
    #[arg(long, value_enum)]
    pub format: Option<crate::trace::Format>,
    /// Write the diagram to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Only what involves this participant: its calls and deliveries, and
    /// the relays and deliveries of its events. Repeat for several.
    #[arg(long, value_name = "NAME")]
    pub participant: Vec<String>,
    /// Only arrows at this Lamport time or later (the sender's time, or the
    /// receiver's when the sender's is not known).
    #[arg(long, value_name = "L")]
    pub from_lamport: Option<u64>,
    /// Only arrows at this Lamport time or earlier.
    #[arg(long, value_name = "L")]
    pub to_lamport: Option<u64>,
    /// Only arrows logged at this wall-clock time or later (RFC 3339, e.g.
    /// 2026-12-03T10:56:52Z). Selects, never orders.
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub since: Option<i128>,
    /// Only arrows logged at this wall-clock time or earlier (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub until: Option<i128>,
    /// Draw the deliveries of one event to more participants than this as
    /// one "Broadcast" note over the nodes that delivered it.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub collapse_above: usize,
    /// Draw every fan-out (one event delivered to two participants or
    /// more) as one "Broadcast" note.
    #[arg(long)]
    pub collapse: bool,
}

fn parse_rfc3339(s: &str) -> Result<i128, String> {
    crate::trace::parse::parse_time(s)
        .ok_or_else(|| "not an RFC 3339 time such as 2026-12-03T10:56:52Z".to_string())
}

/// Runs `chitty trace`.
pub fn run_trace(args: TraceArgs) -> ExitCode {
    let opts = crate::trace::Options {
        participants: args.participant,
        from_lamport: args.from_lamport,
        to_lamport: args.to_lamport,
        since: args.since,
        until: args.until,
        collapse_above: args.collapse_above,
        collapse: args.collapse,
    };
    let svg_file = args
        .output
        .as_deref()
        .and_then(|p| p.extension())
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let format = args.format.unwrap_or(if svg_file {
        crate::trace::Format::Svg
    } else {
        crate::trace::Format::Mermaid
    });
    match crate::trace::run(&args.files, format, args.output.as_deref(), &opts) {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a CA: DIR/ca.pem (give it to clients and nodes as --tls-ca) and
    /// DIR/ca-key.pem (keep it to sign node certificates).
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make a node certificate signed by the CA: OUT/NAME.pem and
    /// OUT/NAME-key.pem (--tls-cert and --tls-key of the node).
    Node {
        /// Directory of the CA (ca.pem and ca-key.pem).
        #[arg(long)]
        ca: std::path::PathBuf,
        /// The node's name (names the files).
        #[arg(long)]
        name: String,
        /// An address or DNS name clients and peers dial the node at; repeat
        /// for several. Default: 127.0.0.1 and localhost.
        #[arg(long)]
        san: Vec<String>,
        /// Directory to write to (created if missing). Default: the CA's.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (host:port; port 0 picks a free port, which is
    /// printed on the first line of standard output).
    #[arg(long, env = "CHITTY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Address clients and peers should use to reach this node, when it is not
    /// the listen address (for example behind NAT). Defaults to the bound
    /// listen address.
    #[arg(long, env = "CHITTY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Join the cluster through this member (host:port of any running node;
    /// a host name such as a compose service is resolved). Give several
    /// (comma-separated or repeated) to have fallbacks: they are tried in
    /// turn until one admits this node. Without it, this node starts a new
    /// cluster.
    #[arg(long, env = "CHITTY_BOOT", value_delimiter = ',')]
    pub boot: Vec<String>,
    /// How long (milliseconds) to keep trying the --boot members, with a
    /// growing pause (up to 2 s) between rounds, before giving up: nodes
    /// started together come up in any order. A refusal (wrong secret or
    /// certificate) is not retried.
    #[arg(long, env = "CHITTY_BOOT_TIMEOUT_MS", default_value_t = DEFAULT_BOOT_TIMEOUT.as_millis() as u64)]
    pub boot_timeout_ms: u64,
    /// A fixed id for this node (1 to 32 of a-z, 0-9, '-' and '_'), for
    /// nodes that are restarted in place (compose services, StatefulSet
    /// pods, systemd units). A process started with the id of a member
    /// replaces that member's earlier process in the cluster, instead of
    /// leaving it listed as unreachable, once that process has left or been
    /// silent for the failure timeout (until then members refuse it, and it
    /// keeps trying within --boot-timeout-ms). Two running nodes must never
    /// share one. Default: a random id for every process.
    #[arg(long, env = "CHITTY_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// If no --boot member admits this node within --bootstrap-after-ms
    /// (none is up yet), start a new cluster instead of exiting. For the one node
    /// of a fixed set (compose, a StatefulSet, systemd units) that may come
    /// up first: every node lists the others in --boot, so whichever
    /// restarts later rejoins the cluster. Give it to one node only: two
    /// nodes that each start alone make two clusters that never merge, and
    /// so does this node if it restarts while cut off from every other.
    #[arg(long, env = "CHITTY_BOOTSTRAP")]
    pub bootstrap: bool,
    /// With --bootstrap: how long (milliseconds) to try the --boot members
    /// before starting a new cluster. Keep it well below the other nodes'
    /// --boot-timeout-ms, so they are still waiting when it starts.
    #[arg(long, env = "CHITTY_BOOTSTRAP_AFTER_MS", default_value_t = DEFAULT_BOOTSTRAP_AFTER.as_millis() as u64)]
    pub bootstrap_after_ms: u64,
    /// --bootstrap for the node whose --node-id is this one only, so that
    /// one configuration serves every node of a set (a StatefulSet's pods).
    #[arg(long, env = "CHITTY_BOOTSTRAP_NODE_ID")]
    pub bootstrap_node_id: Option<String>,
    /// Secret shared by all nodes of the cluster (at least 16 characters);
    /// mesh calls without it are refused. Required unless every address
    /// (listen, advertise, boot) is loopback. On the command line it is
    /// visible to other users (ps): prefer --cluster-secret-file or the
    /// environment.
    #[arg(long, env = "CHITTY_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Read the cluster secret from this file (its first line).
    #[arg(
        long,
        env = "CHITTY_CLUSTER_SECRET_FILE",
        conflicts_with = "cluster_secret"
    )]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// This node's TLS certificate (PEM, signed by the CA in --tls-ca). With
    /// --tls-key and --tls-ca, the node serves only TLS and the mesh is
    /// mutual TLS: peers must present a certificate from that CA.
    #[arg(long, env = "CHITTY_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "CHITTY_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<std::path::PathBuf>,
    /// The cluster's CA certificate (PEM): every node's certificate must be
    /// signed by it.
    #[arg(long, env = "CHITTY_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Interval between heartbeats to each peer, in milliseconds.
    #[arg(long, env = "CHITTY_HEARTBEAT_MS", default_value_t = DEFAULT_HEARTBEAT.as_millis() as u64)]
    pub heartbeat_ms: u64,
    /// A peer silent for this long (milliseconds) is declared failed and its
    /// participants are announced as left.
    #[arg(long, env = "CHITTY_FAILURE_TIMEOUT_MS", default_value_t = DEFAULT_FAILURE_TIMEOUT.as_millis() as u64)]
    pub failure_timeout_ms: u64,
    /// How long (milliseconds) a participant whose connection or node failed
    /// may resume on any node before it is announced as left.
    #[arg(long, env = "CHITTY_GRACE_MS", default_value_t = CoreLimits::default().grace.as_millis() as u64)]
    pub grace_ms: u64,
    /// Events queued for one peer before its link falls back to re-sending
    /// from history.
    #[arg(long, env = "CHITTY_PEER_QUEUE", default_value_t = DEFAULT_PEER_QUEUE)]
    pub peer_queue: usize,
    /// Testing only: delay live relay batches to the peer at ADDR by MS
    /// milliseconds (ADDR=MS).
    #[arg(long, env = "CHITTY_FAULT_LINK_DELAY", hide = true, value_parser = parse_link_delay)]
    pub fault_link_delay: Option<(String, std::time::Duration)>,
    /// Events (and other items) the node keeps for its participants, all of
    /// them together: one that falls further behind is disconnected as too
    /// slow. Stalled readers cost no more than this however many there are.
    #[arg(long, env = "CHITTY_SESSION_QUEUE", default_value_t = DEFAULT_SESSION_QUEUE)]
    pub session_queue: usize,
    /// The same in bytes (each item at its encoded size plus its slot).
    #[arg(long, env = "CHITTY_SESSION_QUEUE_BYTES", default_value_t = DEFAULT_SESSION_QUEUE_BYTES)]
    pub session_queue_bytes: usize,
    /// Worker threads of the node's runtime. With 1, the default, the node
    /// runs on a single-threaded runtime: its decisions are one task
    /// anyway, and no task wakes another across threads, which costs least
    /// CPU per delivery. 0: one per core (more can run at once, at more CPU
    /// per delivery).
    #[arg(long, env = "CHITTY_THREADS", default_value_t = DEFAULT_THREADS)]
    pub threads: usize,
    /// Recent events kept for replay, by count.
    #[arg(long, env = "CHITTY_HISTORY_EVENTS", default_value_t = CoreLimits::default().history_events)]
    pub history_events: usize,
    /// Recent events kept for replay, by total encoded size in bytes.
    #[arg(long, env = "CHITTY_HISTORY_BYTES", default_value_t = CoreLimits::default().history_bytes)]
    pub history_bytes: usize,
    /// A new connection that has not completed its TLS handshake (on a TLS
    /// node) and sent the HTTP/2 preface and SETTINGS within this many
    /// milliseconds is closed.
    #[arg(long, env = "CHITTY_HANDSHAKE_TIMEOUT_MS", default_value_t = connections::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64)]
    pub handshake_timeout_ms: u64,
    /// Connections (participants' and peers') open at once; one more is
    /// closed as soon as it is accepted. Lowered at start if the open-file
    /// limit (ulimit -n) cannot hold it.
    #[arg(long, env = "CHITTY_MAX_CONNECTIONS", default_value_t = connections::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections open at once from one IP address; one more is closed as
    /// soon as it is accepted.
    #[arg(long, env = "CHITTY_MAX_CONNECTIONS_PER_IP", default_value_t = connections::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Concurrent calls (HTTP/2 streams) on one connection; a client waits
    /// for room before opening one more.
    #[arg(long, env = "CHITTY_MAX_STREAMS_PER_CONNECTION", default_value_t = connections::DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,
    /// Messages per second one participant may publish, sustained (0: no
    /// limit); a publish over it is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHITTY_PUBLISH_RATE", default_value_t = rate::DEFAULT_PUBLISH_RATE)]
    pub publish_rate: f64,
    /// Messages one participant may publish at once after a quiet moment
    /// (the size of its token bucket, which refills at --publish-rate).
    #[arg(long, env = "CHITTY_PUBLISH_BURST", default_value_t = rate::DEFAULT_PUBLISH_BURST)]
    pub publish_burst: u32,
    /// How log lines are written: text for people, or json, one object per
    /// line, with the records a Lamport diagram is drawn from
    /// (docs/logs.md).
    #[arg(long, env = "CHITTY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics over HTTP at this address (host:port; port
    /// 0 picks a free one, printed on standard output), on any path, e.g.
    /// http://ADDR/metrics. Unauthenticated: keep it on a private address.
    #[arg(long, env = "CHITTY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (the default).
    Text,
    /// One JSON object per line, with the diagram records of docs/logs.md.
    Json,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Address of a Chitty node to connect to (host:port). Give several
    /// (comma-separated or repeated) to have fallbacks; the client also learns
    /// every node of the cluster from the node it is connected to, and moves
    /// to a live one by itself when its node fails.
    #[arg(long, env = "CHITTY_SERVER", default_value = "127.0.0.1:50051", value_delimiter = ',', num_args = 1..)]
    pub server: Vec<String>,
    /// Your name in the chat. Defaults to $USER; asked for when unset and
    /// running in a terminal.
    #[arg(long, env = "CHITTY_NAME")]
    pub name: Option<String>,
    /// Also write the client's log (every received event with the local
    /// Lamport time) to this file.
    #[arg(long, env = "CHITTY_LOG")]
    pub log: Option<std::path::PathBuf>,
    /// How log lines are written (to --log, or to stderr): text for people,
    /// or json, one object per line, with the records a Lamport diagram is
    /// drawn from (docs/logs.md).
    #[arg(long, env = "CHITTY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Connect with TLS, accepting only nodes whose certificate this CA
    /// (PEM) signed, on the first node and every node the client moves to.
    #[arg(long, env = "CHITTY_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// On joining, show who is already there and up to this many of the
    /// latest messages the node holds (at most 100), marked [earlier].
    /// 0: neither.
    #[arg(long, env = "CHITTY_RECENT", default_value_t = 20)]
    pub recent: u32,
    /// How event lines show time: `both` (local wall-clock time, then the
    /// Lamport times), `lamport` (only the Lamport times) or `wall` (only
    /// the wall-clock time). Default: `both` when stdout is a terminal,
    /// `lamport` otherwise. Names are coloured on a terminal unless
    /// NO_COLOR is set.
    #[arg(long, env = "CHITTY_LAYOUT", value_enum)]
    pub layout: Option<console::Layout>,
    /// Print events as JSON, one object per line (see README), instead of
    /// text lines; notices stay text on stderr.
    #[arg(long, env = "CHITTY_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node to ask (host:port).
    #[arg(env = "CHITTY_SERVER", default_value = "127.0.0.1:50051")]
    pub server: String,
    /// Connect with TLS, accepting only a node whose certificate this CA
    /// (PEM) signed.
    #[arg(long, env = "CHITTY_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Address of a Chitty node (host:port); give several (comma-separated
    /// or repeated) to try them in turn.
    #[arg(long, env = "CHITTY_SERVER", default_value = "127.0.0.1:50051", value_delimiter = ',', num_args = 1..)]
    pub server: Vec<String>,
    /// The name to send as. Defaults to $USER.
    #[arg(long, env = "CHITTY_NAME")]
    pub name: Option<String>,
    /// Connect with TLS, accepting only nodes whose certificate this CA
    /// (PEM) signed.
    #[arg(long, env = "CHITTY_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Print what was sent as JSON, one object per message.
    #[arg(long)]
    pub json: bool,
    /// The messages, one per argument; none: one per line of standard
    /// input.
    pub text: Vec<String>,
}

/// Runs `chitty cert ca` or `chitty cert node`.
pub fn run_cert(command: CertCommand) -> ExitCode {
    let made = match command {
        CertCommand::Ca { out, force } => crate::cert::make_ca(&out, force),
        CertCommand::Node {
            ca,
            name,
            mut san,
            out,
            force,
        } => {
            if san.is_empty() {
                san = vec!["127.0.0.1".into(), "localhost".into()];
            }
            let out = out.unwrap_or_else(|| ca.clone());
            crate::cert::make_node(&ca, &name, &san, &out, force)
        }
    };
    match made {
        Ok((cert, key)) => {
            println!("wrote {} and {} (private)", cert.display(), key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `chitty server` until Ctrl-C or SIGTERM.
pub async fn run_server(args: ServerArgs) -> ExitCode {
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secret = match cluster_secret(args.cluster_secret, args.cluster_secret_file.as_deref()) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => match TlsSettings::node(cert, key, ca) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    // Mutual TLS closes the mesh as the secret does: only holders of a
    // certificate from the cluster's CA can call it.
    if secret.is_none() && tls.is_none() {
        let mut open = vec![bound.to_string()];
        open.extend(args.advertise.clone());
        open.extend(args.boot.clone());
        if let Some(addr) = open.iter().find(|a| !is_loopback(a)) {
            eprintln!(
                "error: {addr} is not a loopback address, and without a cluster secret or TLS anyone who reaches it could join the mesh, read every participant and write as anyone. Give every node of the cluster the same secret: --cluster-secret-file FILE (or CHITTY_CLUSTER_SECRET), for example a file made with `head -c 32 /dev/urandom | base64 > FILE`; or TLS certificates from one CA (--tls-cert, --tls-key, --tls-ca; see `chitty cert`); or listen on 127.0.0.1 only."
            );
            return ExitCode::from(2);
        }
    }
    let advertise = match advertised(args.advertise, bound) {
        Ok(advertise) => advertise,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = NodeConfig::new(advertise);
    if let Some(id) = &args.node_id {
        config.node.id = id.clone();
    }
    config.session_queue = args.session_queue.max(1);
    config.session_queue_bytes = args.session_queue_bytes.max(1);
    config.peer_queue = args.peer_queue.max(1);
    // One list for every node of a set may name this node too: it does not
    // try to join through itself.
    config.boot = args
        .boot
        .into_iter()
        .filter(|b| !b.is_empty() && *b != config.advertise)
        .collect();
    config.boot_timeout = std::time::Duration::from_millis(args.boot_timeout_ms);
    config.bootstrap_after = std::time::Duration::from_millis(args.bootstrap_after_ms);
    config.bootstrap = args.bootstrap
        || (args.bootstrap_node_id.is_some() && args.bootstrap_node_id == args.node_id);
    config.fault_link_delay = args.fault_link_delay;
    config.cluster_secret = secret;
    config.tls = tls;
    config.heartbeat = std::time::Duration::from_millis(args.heartbeat_ms.max(10));
    config.failure_timeout = std::time::Duration::from_millis(args.failure_timeout_ms.max(1));
    if config.failure_timeout <= config.heartbeat * 2 {
        eprintln!("error: --failure-timeout-ms must be more than twice --heartbeat-ms");
        return ExitCode::FAILURE;
    }
    config.limits.history_events = args.history_events;
    config.limits.history_bytes = args.history_bytes;
    config.limits.grace = std::time::Duration::from_millis(args.grace_ms);
    config.connections = ConnectionLimits {
        handshake_timeout: std::time::Duration::from_millis(args.handshake_timeout_ms.max(1)),
        max_connections: args.max_connections.max(1),
        max_connections_per_ip: args.max_connections_per_ip.max(1),
        max_streams_per_connection: args.max_streams_per_connection.max(1),
    };
    if !(args.publish_rate >= 0.0 && args.publish_rate.is_finite()) {
        eprintln!("error: --publish-rate must be a number of messages per second, 0 for no limit");
        return ExitCode::FAILURE;
    }
    config.publish_rate = (args.publish_rate > 0.0).then_some(RateLimit {
        per_second: args.publish_rate,
        burst: args.publish_burst.max(1),
    });
    println!("chitty server listening on {bound}");
    if let Some(addr) = &args.metrics_listen {
        match std::net::TcpListener::bind(addr).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((at, listener)) => {
                println!("chitty metrics on http://{at}/metrics");
                config.metrics_listener = Some(std::sync::Arc::new(listener));
            }
            Err(e) => {
                eprintln!("error: cannot listen for metrics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = std::io::stdout().flush();
    match crate::server::serve(listener, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "server stopped");
            // Not `eprintln!`: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(3)
        }
    }
}

/// A `--node-id`: short, and only characters that read the same in logs,
/// event ids (`origin:generation:seq`) and file names.
fn parse_node_id(id: &str) -> Result<String, String> {
    let fits = (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if fits {
        Ok(id.to_string())
    } else {
        Err("a node id is 1 to 32 of a-z, 0-9, '-' and '_'".to_string())
    }
}

/// The address clients and peers are told to reach this node at: `given`
/// (--advertise), or else the bound address. A wildcard (0.0.0.0, [::]) is
/// no address anyone can dial, and which of the machine's addresses others
/// reach depends on their network (NAT, containers, several interfaces),
/// so then the operator must say.
fn advertised(given: Option<String>, bound: std::net::SocketAddr) -> Result<String, String> {
    let wildcard = |addr: &str| {
        addr.parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified())
    };
    match given {
        Some(addr) if wildcard(&addr) => Err(format!(
            "--advertise {addr} is not an address clients and peers can dial: give the \
             address or host name they reach this node at, for example \
             --advertise chat.example.com:{port}",
            port = bound.port()
        )),
        Some(addr) => Ok(addr),
        None if bound.ip().is_unspecified() => Err(format!(
            "listening on {bound} (every interface), this node cannot tell which address \
             clients and peers reach it at: give it with --advertise HOST:PORT (for example \
             --advertise node1:{port} in compose, or this machine's address), or listen on \
             one address",
            port = bound.port()
        )),
        None => Ok(bound.to_string()),
    }
}

/// Shortest cluster secret accepted.
const MIN_SECRET_CHARS: usize = 16;

/// A node's runtime threads by default (see [`ServerArgs::threads`]).
pub const DEFAULT_THREADS: usize = 1;

/// The cluster secret, from the flag (or CHITTY_CLUSTER_SECRET) or the first
/// line of `file`; `None` for none. Refuses one that is too short or not
/// printable ASCII (it travels in gRPC metadata).
fn cluster_secret(
    given: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    let secret = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read --cluster-secret-file {}: {e}", path.display())
            })?;
            let line = text.lines().next().unwrap_or("").trim().to_string();
            if line.is_empty() {
                return Err(format!("--cluster-secret-file {} is empty", path.display()));
            }
            line
        }
        None => match given {
            Some(s) if !s.is_empty() => s,
            _ => return Ok(None),
        },
    };
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(format!(
            "the cluster secret is {} characters long; use at least {MIN_SECRET_CHARS}",
            secret.chars().count()
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the cluster secret must be printable ASCII without spaces (it travels in gRPC metadata)"
                .into(),
        );
    }
    Ok(Some(secret))
}

/// Whether `addr` (host:port) names a loopback address.
fn is_loopback(addr: &str) -> bool {
    if let Ok(socket) = addr.parse::<std::net::SocketAddr>() {
        return socket.ip().is_loopback();
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_link_delay(text: &str) -> Result<(String, std::time::Duration), String> {
    let (addr, ms) = text
        .rsplit_once('=')
        .ok_or_else(|| "expected ADDR=MS".to_string())?;
    let ms: u64 = ms.parse().map_err(|e| format!("bad milliseconds: {e}"))?;
    Ok((addr.to_string(), std::time::Duration::from_millis(ms)))
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Completes on Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal was
/// closed): a client leaves on each.
pub async fn client_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = hangup.recv() => {}
            }
            return;
        }
    }
    shutdown_signal().await;
}

/// What the client last heard of which nodes its node cannot reach, to
/// print one line when that changes.
#[derive(Default)]
struct Reachability {
    unreachable: std::collections::BTreeSet<String>,
}

impl Reachability {
    /// The lines to print for a new server list: `[cluster] unreachable:
    /// ADDR, ...` for nodes its node lost, `[cluster] back: ADDR, ...` for
    /// those it reaches again.
    fn update(&mut self, list: &crate::proto::ServerList) -> Vec<String> {
        let now: std::collections::BTreeSet<String> =
            list.unreachable.iter().map(|s| s.addr.clone()).collect();
        let reached: std::collections::BTreeSet<&str> =
            list.servers.iter().map(|s| s.addr.as_str()).collect();
        let lost: Vec<&str> = now
            .difference(&self.unreachable)
            .map(String::as_str)
            .collect();
        let back: Vec<&str> = self
            .unreachable
            .difference(&now)
            .map(String::as_str)
            .filter(|addr| reached.contains(addr))
            .collect();
        let mut lines = Vec::new();
        if !lost.is_empty() {
            lines.push(format!(
                "[cluster] unreachable: {}",
                escaped(&lost.join(", "))
            ));
        }
        if !back.is_empty() {
            lines.push(format!("[cluster] back: {}", escaped(&back.join(", "))));
        }
        self.unreachable = now;
        lines
    }
}

/// Runs `chitty client`: joins, prints every event, publishes every line,
/// answers the `/commands` (see [`crate::console`]).
pub async fn run_client(args: ClientArgs) -> ExitCode {
    client_session(args, false).await
}

/// Runs `chitty watch`: a client that never reads input or publishes.
pub async fn run_watch(args: ClientArgs) -> ExitCode {
    client_session(args, true).await
}

/// `chitty client`, or with `read_only` `chitty watch`.
async fn client_session(args: ClientArgs, read_only: bool) -> ExitCode {
    let interactive =
        !read_only && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let watcher = || format!("watch-{}", &uuid::Uuid::new_v4().simple().to_string()[..4]);
    let default_name = if read_only {
        Some(watcher())
    } else {
        std::env::var("USER").ok()
    };
    let mut name = match args.name.clone().or(default_name) {
        Some(n) => n,
        None if interactive => match ask_name() {
            Some(n) => n,
            None => return ExitCode::FAILURE,
        },
        None => {
            eprintln!("error: no name given: use --name NAME (or set CHITTY_NAME or USER)");
            return ExitCode::FAILURE;
        }
    };
    for addr in &args.server {
        if let Err(e) = check_server_addr(addr) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let tls = match crate::tls::client_tls(args.tls_ca.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A refused name is asked for again in a terminal.
    let (chat, mut updates, driver) = loop {
        if let Err(e) = crate::core::validate::name(&name) {
            eprintln!("error: {e}");
            if interactive && let Some(again) = ask_name() {
                name = again;
                continue;
            }
            return ExitCode::FAILURE;
        }
        let mut options = ClientOptions::new(args.server.clone(), name.clone());
        options.tls = tls.clone();
        options.recent = args.recent;
        match failover::start(options).await {
            Ok(started) => break started,
            Err(crate::Error::Rpc(status))
                if interactive && status.code() == tonic::Code::AlreadyExists =>
            {
                eprintln!("error: {}", status.message());
                match ask_name() {
                    Some(again) => name = again,
                    None => return ExitCode::FAILURE,
                }
            }
            Err(e) => {
                // The last server tried is the one the error is about.
                let addr = args.server.last().map_or("", String::as_str);
                eprintln!(
                    "error: could not join Chitty-Chat: {}",
                    explain_join_error(addr, &e)
                );
                return ExitCode::FAILURE;
            }
        }
    };

    let terminal = interactive.then(TerminalState::save).flatten();
    let (input_tx, mut input_rx) = mpsc::channel::<Action>(64);
    // A watcher reads no input: the sender stays here, unused, so that
    // only a signal or the session's end stops it.
    let (screen, _no_input) = if read_only {
        (console::Screen::plain(), Some(input_tx))
    } else {
        (console::spawn_input_reader(interactive, input_tx), None)
    };

    // Printing runs on its own task so that a slow publish never holds up
    // what is being received.
    let printer = {
        let screen = screen.clone();
        let name = name.clone();
        let recent = args.recent;
        let json = args.json;
        let style = if json {
            console::Style::json()
        } else {
            console::Style::detect(args.layout, std::io::stdout().is_terminal())
        };
        tokio::spawn(async move {
            let mut reach = Reachability::default();
            // Whether the client said that no node answers (and so says
            // when one does again).
            let mut cut_off = false;
            while let Some(update) = updates.recv().await {
                match update {
                    Update::Received(
                        item @ (Received::Event { .. }
                        | Received::Late(_)
                        | Received::Room(_)
                        | Received::StillHere(_)),
                    ) => screen.line(&style.render(&item)),
                    Update::Received(Received::Gap(gap)) => screen.notice(&format!(
                        "warning: some events were lost: {}",
                        escaped(&gap.reason)
                    )),
                    Update::Received(Received::Servers(list)) => {
                        tracing::info!(servers = ?list.servers.iter().map(|s| &s.addr).collect::<Vec<_>>(), "cluster nodes");
                        for line in reach.update(&list) {
                            screen.line(&line);
                        }
                    }
                    Update::Joined {
                        server,
                        here,
                        earlier,
                        ..
                    } => {
                        screen.notice(&if read_only {
                            format!(
                                "watching Chitty-Chat at {} as {name} (read-only; others see {name} join and leave); Ctrl-C to stop",
                                escaped(&server)
                            )
                        } else {
                            format!(
                                "joined Chitty-Chat at {} as {name}; type a message and press Enter, /help for the commands, /quit to leave",
                                escaped(&server)
                            )
                        });
                        if recent > 0 {
                            screen.line(&if json {
                                console::Style::json_here(&here)
                            } else {
                                console::here_line(&here)
                            });
                        }
                        for item in earlier {
                            screen.line(&if json {
                                console::Style::json_line(&item, true)
                            } else {
                                format!("{} {}", console::EARLIER, style.render(&item))
                            });
                        }
                    }
                    Update::Moved { from, to } => {
                        if std::mem::take(&mut cut_off) {
                            // Where it is now, and that it moved if it did.
                            let resumed = if from == to {
                                format!("session resumed at {}", escaped(&to))
                            } else {
                                format!(
                                    "moved from {} to {}: session resumed",
                                    escaped(&from),
                                    escaped(&to)
                                )
                            };
                            screen.notice(&format!("[connection] back: {resumed}, nothing missed"));
                        } else {
                            screen.notice(&format!(
                                "moved from {} to {}: session resumed, nothing missed",
                                escaped(&from),
                                escaped(&to)
                            ));
                        }
                    }
                    Update::Rejoined { server } => {
                        let back = if std::mem::take(&mut cut_off) {
                            "[connection] back: "
                        } else {
                            ""
                        };
                        screen.notice(&format!(
                            "{back}the old session had expired: joined again at {} as a new participant",
                            escaped(&server)
                        ));
                    }
                    Update::Reconnecting { reason } => {
                        tracing::info!(%reason, "connection lost; reconnecting")
                    }
                    Update::NoNodeAnswers { reason } => {
                        cut_off = true;
                        screen.notice(&format!(
                            "[connection] no node answers ({}); still trying, messages you type wait until one does",
                            escaped(&reason)
                        ));
                    }
                    Update::PublishGaveUp {
                        text,
                        maybe_delivered,
                    } => screen.notice(&format!(
                        "error: gave up sending {text:?}: {}",
                        if maybe_delivered {
                            "it may or may not have been delivered"
                        } else {
                            "it was not delivered"
                        }
                    )),
                    Update::Ended(result) => return result,
                }
            }
            Ok(())
        })
    };
    tokio::pin!(printer);

    let shutdown = client_shutdown_signal();
    tokio::pin!(shutdown);
    let mut code = ExitCode::SUCCESS;
    let mut leave = true;
    let mut outcomes = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            input = input_rx.recv() => match input {
                Some(Action::Publish(text)) => match chat.submit(&text).await {
                    // Queued in order; the outcome is reported when it comes,
                    // so that Ctrl-C and /quit are never stuck behind it.
                    Ok(outcome) => {
                        while outcomes.try_join_next().is_some() {}
                        let screen = screen.clone();
                        outcomes.spawn(async move {
                            match outcome.await {
                                Ok(Ok(_)) => {}
                                // Reported once, by `PublishGaveUp`, which
                                // names the message.
                                Ok(Err(crate::Error::Unavailable(reason)))
                                    if reason.starts_with("gave up") => {}
                                Ok(Err(e)) => screen.notice(&format!(
                                    "error: message not sent: {e}"
                                )),
                                Err(_) => screen
                                    .notice("error: message not sent: the session ended"),
                            }
                        });
                    }
                    Err(e) => screen.notice(&format!("error: message not sent: {e}")),
                },
                Some(Action::Who) => {
                    let chat = chat.clone();
                    let screen = screen.clone();
                    outcomes.spawn(async move {
                        match chat.participants().await {
                            Ok(list) => screen.notice(&console::who_line(&list)),
                            Err(e) => screen.notice(&format!("error: /who: {e}")),
                        }
                    });
                }
                Some(Action::Help) => screen.notice(console::HELP),
                Some(Action::Unknown(word)) => screen.notice(&console::unknown_command(&word)),
                Some(Action::Nothing) => {}
                Some(Action::Quit) | None => break,
            },
            _ = &mut shutdown => break,
            ended = &mut printer => {
                leave = false;
                match ended {
                    Ok(Ok(())) => screen.notice("the session ended"),
                    Ok(Err(e)) => {
                        screen.notice(&format!("error: the session ended: {e}"));
                        code = ExitCode::FAILURE;
                    }
                    Err(e) => {
                        screen.notice(&format!("error: {e}"));
                        code = ExitCode::FAILURE;
                    }
                }
                break;
            }
        }
    }
    if leave {
        match chat.leave().await {
            Ok(lamport) => screen.notice(&format!("left Chitty-Chat at Lamport time {lamport}")),
            Err(e) => {
                screen.notice(&format!("error: leave failed: {e}"));
                code = ExitCode::FAILURE;
            }
        }
        drop(chat);
        // The driver ends once the session is over; print what it still has.
        let _ = tokio::time::timeout(client::CALL_TIMEOUT, &mut printer).await;
    }
    // Report the outcomes still to come (each resolves once the driver ends).
    let _ = tokio::time::timeout(client::CALL_TIMEOUT, async {
        while outcomes.join_next().await.is_some() {}
    })
    .await;
    driver.abort();
    if let Some(t) = terminal {
        t.restore();
    }
    code
}

/// Checks a `--server` address as a client takes it: `host:port` (or a
/// URL). The common slip of a bare port is told apart.
pub fn check_server_addr(addr: &str) -> Result<(), String> {
    let addr = addr.trim();
    if addr.contains("://") {
        return Ok(());
    }
    if addr.parse::<u16>().is_ok() {
        return Err(format!(
            "--server {addr}: the host is missing: give HOST:PORT, for example 127.0.0.1:{addr}"
        ));
    }
    let port = addr.rsplit_once(':').map(|(_, port)| port);
    if addr.ends_with(']') || port.is_none_or(|p| p.parse::<u16>().is_err()) {
        return Err(format!(
            "--server {addr}: the port is missing or not a number: give HOST:PORT, for example {}:50051",
            addr.trim_end_matches(':')
        ));
    }
    Ok(())
}

/// Why joining at `addr` failed, in the user's terms: nothing listening
/// there (with the command that starts a node), or something that is not a
/// Chitty node.
pub fn explain_join_error(addr: &str, err: &crate::Error) -> String {
    let text = err.to_string();
    let not_chitty = |detail: &str| {
        tracing::debug!(addr, detail, "not a Chitty node");
        format!(
            "{addr} answered, but does not speak Chitty's protocol (gRPC over HTTP/2): is \
             this a Chitty node? Check the host and port"
        )
    };
    match err {
        crate::Error::Connect { reason, .. } if reason.contains("Connection refused") => format!(
            "nothing listens at {addr} (connection refused): is the node running? Start one \
             with `chitty server --listen {addr}`"
        ),
        crate::Error::Connect { reason, .. }
            if reason.contains("h2 protocol error") || reason.contains("HTTP/2") =>
        {
            not_chitty(reason)
        }
        crate::Error::Rpc(status) => match status.code() {
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
                if text.contains("transport error")
                    || text.contains("h2 protocol error")
                    || text.contains("canceled") =>
            {
                not_chitty(status.message())
            }
            tonic::Code::Unimplemented => not_chitty(status.message()),
            _ => format!("{addr}: {}", status.message()),
        },
        other => format!("{addr}: {other}"),
    }
}

/// Runs `chitty status ADDR`.
pub async fn run_status(args: StatusArgs) -> ExitCode {
    if let Err(e) = check_server_addr(&args.server) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let tls = match crate::tls::client_tls(args.tls_ca.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let asked = async {
        let mut client = client::connect_with(&args.server, tls.as_ref()).await?;
        let reply = tokio::time::timeout(
            client::CALL_TIMEOUT,
            client.status(crate::proto::StatusRequest {}),
        )
        .await
        .map_err(|_| crate::Error::Unavailable("no answer".into()))??;
        Ok::<_, crate::Error>(reply.into_inner())
    };
    let status = match asked.await {
        Ok(status) => status,
        Err(e) => {
            eprintln!("error: {}", explain_join_error(&args.server, &e));
            return ExitCode::FAILURE;
        }
    };
    let out = if args.json {
        status_json(&status).to_string()
    } else {
        status_table(&status)
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
    ExitCode::SUCCESS
}

/// `chitty status --json`: the `StatusReply` as one object.
pub fn status_json(status: &crate::proto::StatusReply) -> serde_json::Value {
    let id = |n: &Option<crate::proto::NodeId>| n.as_ref().map(|n| n.id.clone());
    let generation = |n: &Option<crate::proto::NodeId>| n.as_ref().map(|n| n.generation);
    serde_json::json!({
        "node": id(&status.node),
        "addr": status.addr,
        "lamport": status.lamport,
        "sessions": status.sessions,
        "nodes": status.nodes.iter().map(|n| serde_json::json!({
            "node": id(&n.node),
            "generation": generation(&n.node),
            "addr": n.addr,
            "state": n.state,
            "link_up": n.link_up,
            "lag": n.lag,
            "last_heard_ms": n.last_heard_ms,
            "participants": n.participants,
            "more_participants": n.more_participants,
        })).collect::<Vec<_>>(),
    })
}

/// `chitty status`: a table for people.
/// Every string in it comes from the network and is shown escaped.
pub fn status_table(status: &crate::proto::StatusReply) -> String {
    let short = |n: &Option<crate::proto::NodeId>| {
        n.as_ref()
            .map(|n| escaped(&n.id.chars().take(8).collect::<String>()).into_owned())
            .unwrap_or_default()
    };
    let mut rows = vec![[
        "NODE".to_string(),
        "ADDRESS".to_string(),
        "STATE".to_string(),
        "LINK".to_string(),
        "LAG".to_string(),
        "HEARD".to_string(),
        "PARTICIPANTS".to_string(),
    ]];
    for n in &status.nodes {
        let peer = n.state != "self";
        let total = n.participants.len() as u64 + u64::from(n.more_participants);
        let names = if total == 0 {
            "-".to_string()
        } else {
            let more = match n.more_participants {
                0 => String::new(),
                m if n.participants.is_empty() => format!("{m} not listed"),
                m => format!(", and {m} more"),
            };
            format!("{total} ({}{more})", escaped(&n.participants.join(", ")))
        };
        rows.push([
            short(&n.node),
            escaped(&n.addr).into_owned(),
            escaped(&n.state).into_owned(),
            if !peer {
                "-".into()
            } else if n.link_up {
                "up".into()
            } else {
                "down".into()
            },
            if peer { n.lag.to_string() } else { "-".into() },
            if peer {
                format!("{} ms ago", n.last_heard_ms)
            } else {
                "-".into()
            },
            names,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "cluster as {} ({}) sees it: Lamport time {}, {} session(s) on it",
        short(&status.node),
        escaped(&status.addr),
        status.lamport,
        status.sessions
    );
    for row in &rows {
        out.push('\n');
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
    }
    out
}

/// Runs `chitty send`: join, publish each text in order, leave.
pub async fn run_send(args: SendArgs) -> ExitCode {
    let Some(name) = args.name.clone().or_else(|| std::env::var("USER").ok()) else {
        eprintln!("error: no name given: use --name NAME (or set CHITTY_NAME or USER)");
        return ExitCode::FAILURE;
    };
    if let Err(e) = crate::core::validate::name(&name) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // Texts given as arguments are checked before anyone sees a join:
    // nothing is sent if one is refused. Lines of standard input are read
    // (on a thread of their own) and sent one by one as they come.
    for text in &args.text {
        if let Err(e) = crate::core::validate::message(text) {
            eprintln!("error: {e}: nothing was sent");
            return ExitCode::FAILURE;
        }
    }
    let mut texts = if args.text.is_empty() {
        stdin_lines()
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(args.text.len());
        for text in &args.text {
            let _ = tx.try_send(Ok(text.clone()));
        }
        rx
    };
    let tls = match crate::tls::client_tls(args.tls_ca.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in &args.server {
        if let Err(e) = check_server_addr(addr) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let mut joined = None;
    let mut failure = String::from("no server given");
    for addr in &args.server {
        let attempt = async {
            let client = client::connect_with(addr, tls.as_ref()).await?;
            client::join_with(client, &name).await
        };
        match attempt.await {
            Ok(session) => {
                joined = Some(session);
                break;
            }
            Err(e) => failure = explain_join_error(addr, &e),
        }
    }
    let Some((session, events)) = joined else {
        eprintln!("error: could not join Chitty-Chat: {failure}");
        return ExitCode::FAILURE;
    };
    // The session's events are read and dropped, so that the node does not
    // cut a quiet sender off as too slow in a busy room; the stream stays
    // open until the leave, so the node never takes the session for a lost
    // one.
    let drain = tokio::spawn(async move {
        let mut events = events;
        while let Ok(Some(_)) = events.next().await {}
        // Held (open) until the task is ended after the leave.
        std::future::pending::<()>().await;
    });
    let mut code = ExitCode::SUCCESS;
    while let Some(text) = texts.recv().await {
        let text = match text.and_then(|t| {
            crate::core::validate::message(&t)
                .map(|()| t)
                .map_err(|e| e.to_string())
        }) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: {e}: not sent, and nothing after it");
                code = ExitCode::FAILURE;
                break;
            }
        };
        match session.publish(&text).await {
            Ok((reply, _)) => {
                let origin = reply.id.as_ref().and_then(|id| id.origin.as_ref());
                let line = if args.json {
                    serde_json::json!({
                        "kind": "sent",
                        "lamport": reply.lamport,
                        "origin": origin.map(|o| o.id.as_str()),
                        "seq": reply.id.as_ref().map(|id| id.seq),
                        "text": text,
                    })
                    .to_string()
                } else {
                    format!("sent at Lamport time {}: {}", reply.lamport, escaped(&text))
                };
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("error: message not sent: {e}");
                code = ExitCode::FAILURE;
                break;
            }
        }
    }
    if let Err(e) = session.leave().await {
        eprintln!("error: leave failed: {e}");
        code = ExitCode::FAILURE;
    }
    drain.abort();
    code
}

/// The non-blank lines of standard input, read on a thread of their own and
/// handed over as they come (a few at most waiting). A line that is not
/// UTF-8, or a read error, is handed over as an error naming the line, and
/// nothing is read after it.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut input = std::io::stdin().lock();
        let mut line = Vec::new();
        for number in 1.. {
            line.clear();
            let item = match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => match std::str::from_utf8(&line) {
                    Ok(text) => {
                        let text = text.trim_end_matches(['\n', '\r']);
                        if text.trim().is_empty() {
                            continue;
                        }
                        Ok(text.to_string())
                    }
                    Err(_) => Err(format!("standard input line {number} is not UTF-8")),
                },
                Err(e) => Err(format!("reading standard input line {number}: {e}")),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    rx
}

fn ask_name() -> Option<String> {
    eprint!("Your name: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim().to_string()),
        _ => {
            eprintln!("error: no name given");
            None
        }
    }
}

/// The terminal settings at start, restored at exit: the line editor may
/// still be in raw mode when the client exits for another reason.
struct TerminalState(String);

impl TerminalState {
    fn save() -> Option<Self> {
        let out = std::process::Command::new("stty")
            .arg("-g")
            .stdin(std::process::Stdio::inherit())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| Self(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }

    fn restore(self) {
        let _ = std::process::Command::new("stty")
            .arg(&self.0)
            .stdin(std::process::Stdio::inherit())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_escapes_what_came_from_the_network() {
        use crate::proto::{NodeId, NodeStatus, StatusReply};
        let status = StatusReply {
            node: Some(NodeId {
                id: "a\x1b[2J".into(),
                generation: 1,
            }),
            addr: "h\r:1".into(),
            lamport: 3,
            sessions: 0,
            nodes: vec![NodeStatus {
                node: Some(NodeId {
                    id: "\x1b]0;x\x07".into(),
                    generation: 1,
                }),
                addr: "b\n:2".into(),
                state: "reachable\x1b[31m".into(),
                participants: vec!["Ann\x1b[1m".into()],
                more_participants: 150,
                ..Default::default()
            }],
        };
        let table = status_table(&status);
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        assert_eq!(table.lines().count(), 3, "{table:?}");
        assert!(table.contains("reachable\\x1b[31m"), "{table}");
        assert!(table.contains("151 (Ann\\x1b[1m, and 150 more)"), "{table}");
    }

    #[test]
    fn a_node_id_is_short_and_plain() {
        assert_eq!(parse_node_id("node-1_a").as_deref(), Ok("node-1_a"));
        for bad in ["", "Node1", "node 1", "node:1", "é", &"n".repeat(33)] {
            assert!(parse_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_wildcard_listen_address_is_never_advertised() {
        let any: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let err = advertised(None, any).expect_err("0.0.0.0 is refused");
        assert!(err.contains("--advertise HOST:PORT"), "{err}");
        let any6: std::net::SocketAddr = "[::]:50051".parse().unwrap();
        assert!(advertised(None, any6).is_err());
        assert_eq!(
            advertised(Some("node1:50051".into()), any).as_deref(),
            Ok("node1:50051")
        );
        assert!(advertised(Some("0.0.0.0:50051".into()), any).is_err());
        let one: std::net::SocketAddr = "10.0.0.1:50051".parse().unwrap();
        assert_eq!(advertised(None, one).as_deref(), Ok("10.0.0.1:50051"));
    }

    #[test]
    fn a_server_address_needs_a_host_and_a_port() {
        for good in [
            "127.0.0.1:50051",
            "node1:50051",
            "[::1]:50051",
            "http://h:1",
        ] {
            assert_eq!(check_server_addr(good), Ok(()), "{good}");
        }
        let bare = check_server_addr("50053").unwrap_err();
        assert!(
            bare.contains("the host is missing") && bare.contains("127.0.0.1:50053"),
            "{bare}"
        );
        for bad in ["localhost", "node1:", "node1:port", "[::1]"] {
            let e = check_server_addr(bad).unwrap_err();
            assert!(e.contains("the port is missing"), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_addresses_are_told_from_the_others() {
        for addr in [
            "127.0.0.1:50051",
            "127.3.4.5:1",
            "[::1]:80",
            "localhost:50051",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in [
            "0.0.0.0:50051",
            "10.0.0.1:50051",
            "[::]:80",
            "chat.example:50051",
        ] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }

    #[test]
    fn a_cluster_secret_comes_from_the_flag_or_a_file_and_must_be_long_enough() {
        assert_eq!(cluster_secret(None, None), Ok(None));
        assert_eq!(cluster_secret(Some(String::new()), None), Ok(None));
        let long = "0123456789abcdef".to_string();
        assert_eq!(
            cluster_secret(Some(long.clone()), None),
            Ok(Some(long.clone()))
        );
        assert!(cluster_secret(Some("short".into()), None).is_err());
        assert!(cluster_secret(Some("with a space inside it".into()), None).is_err());
        let path = std::env::temp_dir().join(format!("chitty-secret-{}", std::process::id()));
        std::fs::write(&path, format!("{long}\n")).expect("write the secret file");
        assert_eq!(cluster_secret(None, Some(&path)), Ok(Some(long)));
        std::fs::write(&path, "\n").expect("write the secret file");
        assert!(cluster_secret(None, Some(&path)).is_err(), "empty file");
        std::fs::remove_file(&path).expect("remove the secret file");
        let missing = cluster_secret(None, Some(&path)).expect_err("missing file");
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
