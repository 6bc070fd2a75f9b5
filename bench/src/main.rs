//! `chitty-bench`: a fan-out benchmark of a real Chitty cluster, and the
//! same load on a NATS cluster for comparison.
//!
//! `chitty-bench [OPTIONS]` starts a local cluster of `chitty server`
//! processes (the chitty this bench is built with, so that a run measures
//! exactly that code, or `--node-bin`), joins participants, has some of them
//! publish and every one of them check what it receives. `chitty-bench nats
//! [OPTIONS]` does the same with `nats-server` processes and NATS clients.
//! Both share the load ([`load`]), the checks ([`receive`]), the measured
//! window ([`measure`]) and the report ([`report`]):
//! * deliveries/s: distinct messages received, summed over every reader,
//!   between the first send and the last delivery;
//! * latency: p50, p99 and max over every delivery ([`hdrhistogram`],
//!   three significant digits);
//! * missing, duplicated and out-of-order deliveries per (receiver,
//!   publisher), which must all be 0;
//! * server CPU per delivery: the servers' own accounting (`utime + stime`
//!   in `/proc/<pid>/stat`) over the measured window, divided by
//!   deliveries, with the bench's own CPU beside it, since on a small
//!   machine the two compete for the same cores;
//! * peak memory: `VmHWM` of each server, the largest reported.
//!
//! `chitty-bench server ...` is `chitty server ...`: how the bench starts
//! its nodes. `chitty-bench floor-server ...` is the floor server
//! ([`floor`]), which `--floor` starts instead.

mod floor;
mod load;
mod measure;
mod on_chitty;
mod on_nats;
mod procfs;
mod receive;
mod report;
mod servers;
mod sweep;

/// The `chitty` binary's own `main`, which runs the nodes.
#[path = "../../src/main.rs"]
mod chitty_main;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chitty-bench",
    about = "Measure fan-out: start a local Chitty cluster (or use running nodes), join \
        participants, publish, check every delivery, and report throughput, latency and cost. \
        `chitty-bench nats` runs the same load on a NATS cluster.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<System>,
    #[command(flatten)]
    chitty: ChittyArgs,
}

#[derive(Debug, Subcommand)]
enum System {
    /// The same load on a NATS cluster: `nats-server` processes (Debian:
    /// apt-get install nats-server) in a full mesh, one subject, each
    /// subscriber and publisher on a connection of its own.
    Nats(NatsArgs),
}

/// What both systems are given.
#[derive(Debug, Args)]
struct LoadArgs {
    /// Servers of the local cluster to start (on 127.0.0.1, killed at the
    /// end).
    #[arg(long, env = "CHITTY_BENCH_NODES", default_value_t = 3)]
    nodes: usize,
    /// Use these running servers (comma-separated; Chitty: host:port, NATS:
    /// nats://host:port) instead of starting a cluster. Server CPU and
    /// memory are then not measured.
    #[arg(long, env = "CHITTY_BENCH_SERVERS", value_delimiter = ',', num_args = 1..)]
    servers: Vec<String>,
    /// Reading participants, spread round-robin over the servers.
    #[arg(
        long,
        short = 's',
        env = "CHITTY_BENCH_PARTICIPANTS",
        default_value_t = 30
    )]
    participants: usize,
    /// Publishers. On Chitty they are the first of the participants; on
    /// NATS they have connections of their own.
    #[arg(
        long,
        short = 'p',
        env = "CHITTY_BENCH_PUBLISHERS",
        default_value_t = 3
    )]
    publishers: usize,
    /// Messages each publisher sends: P × M messages in all, each delivered
    /// to every reading participant.
    #[arg(
        long,
        short = 'm',
        env = "CHITTY_BENCH_MESSAGES",
        default_value_t = 10_000
    )]
    messages: u64,
    /// Bytes (ASCII characters) per message text.
    #[arg(long, env = "CHITTY_BENCH_SIZE", default_value_t = 64)]
    size: usize,
    /// Messages per second, all publishers together, each on a fixed
    /// schedule; without it, full speed: every publisher sends as fast as it
    /// can, within --window of the slowest reader.
    #[arg(long, env = "CHITTY_BENCH_RATE")]
    rate: Option<f64>,
    /// At full speed, publishers stay at most this many messages (all of
    /// them together) ahead of the slowest reader (0: no limit, queues on
    /// the servers grow until readers are cut off).
    #[arg(long, env = "CHITTY_BENCH_WINDOW", default_value_t = 2000)]
    window: u64,
    /// Seconds to wait for the last deliveries after the last publish; what
    /// has not arrived by then counts as missing.
    #[arg(long, env = "CHITTY_BENCH_DRAIN_SECS", default_value_t = 30)]
    drain_secs: u64,
    /// Seconds the publishers may take in all before they are stopped.
    #[arg(long, env = "CHITTY_BENCH_TIMEOUT_SECS", default_value_t = 600)]
    timeout_secs: u64,
    /// Keep the started servers' logs in this directory (default: a
    /// temporary one, removed unless the run fails).
    #[arg(long, env = "CHITTY_BENCH_LOG_DIR")]
    log_dir: Option<PathBuf>,
    /// Print one JSON object with the results as the last line of stdout.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    fn load(&self) -> load::Load {
        load::Load {
            nodes: self.nodes,
            servers: self.servers.clone(),
            participants: self.participants,
            publishers: self.publishers,
            messages: self.messages,
            size: self.size,
            rate: self.rate,
            window: self.window,
            drain: Duration::from_secs(self.drain_secs),
            timeout: Duration::from_secs(self.timeout_secs),
            log_dir: self.log_dir.clone(),
            progress: true,
        }
    }
}

#[derive(Debug, Args)]
struct ChittyArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Publish over PublishStream (many messages in flight per publisher,
    /// still in order) instead of one acknowledged call at a time.
    #[arg(long, env = "CHITTY_BENCH_PIPELINE")]
    pipeline: bool,
    /// Run the load on floor servers instead of Chitty nodes: the least a
    /// cluster on Chitty's stack (tonic, hyper, h2, tokio) does for it, with
    /// no chat logic (see bench/src/floor.rs).
    #[arg(long)]
    floor: bool,
    /// Also join this many participants that never read their stream.
    #[arg(long, env = "CHITTY_BENCH_SLOW", default_value_t = 0)]
    slow: usize,
    /// Also have one more participant flood the room with this many
    /// messages over PublishStream, as fast as its node takes them, while
    /// the publishers go on as set (their latency is what is reported).
    #[arg(long, env = "CHITTY_BENCH_FLOOD", default_value_t = 0)]
    flood: u64,
    /// Also join this many reading, non-publishing participants, and report
    /// node memory per participant.
    #[arg(long, env = "CHITTY_BENCH_IDLE", default_value_t = 0)]
    idle: usize,
    /// Most Join streams that share one gRPC connection (1: a connection
    /// per participant, as participants on their own machines have).
    #[arg(long, env = "CHITTY_BENCH_STREAMS_PER_CONNECTION", default_value_t = 1)]
    streams_per_connection: usize,
    /// RUST_LOG of the started nodes (their own default is info).
    #[arg(long, env = "CHITTY_BENCH_NODE_LOG", default_value = "info")]
    node_log: String,
    /// Extra argument for every started node (repeat it), e.g.
    /// `--node-arg=--session-queue=4096`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Start the nodes with this `chitty` binary instead of the chitty
    /// built into the bench (to measure two builds with one bench).
    #[arg(long, env = "CHITTY_BENCH_NODE_BIN")]
    node_bin: Option<PathBuf>,
    /// Run the sweep instead: S participants on N nodes at full speed for
    /// each S of --sweep-participants and each N of --sweep-nodes, a fresh
    /// cluster each, writing OUT/bench-results.jsonl and
    /// OUT/bench-scaling.svg.
    #[arg(long)]
    sweep: bool,
    /// Node counts of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    sweep_nodes: Vec<usize>,
    /// Participant counts of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "3,30,300,3000")]
    sweep_participants: Vec<usize>,
    /// Directory the sweep writes to.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Deliveries per sweep point: each point sends about this many
    /// divided by S messages (at least 200, at most --sweep-max-messages),
    /// split over the publishers.
    #[arg(long, default_value_t = 300_000)]
    sweep_deliveries: u64,
    /// Most messages one sweep point sends, all publishers together.
    #[arg(long, default_value_t = 2_000)]
    sweep_max_messages: u64,
    /// Text added to the sweep picture's caption (cluster/sweep.sh passes
    /// the git commit).
    #[arg(long, default_value = "")]
    sweep_label: String,
}

#[derive(Debug, Args)]
struct NatsArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The nats-server program to start the servers with.
    #[arg(long, env = "CHITTY_BENCH_NATS_SERVER", default_value = "nats-server")]
    nats_server: PathBuf,
    /// The subject everyone publishes and subscribes to.
    #[arg(long, default_value = "chat.bench")]
    subject: String,
}

fn main() -> ExitCode {
    let first = std::env::args_os().nth(1);
    if first.as_ref().is_some_and(|a| a == "server") {
        return chitty_main::main();
    }
    if first.as_ref().is_some_and(|a| a == "floor-server") {
        let args: Vec<String> = std::env::args().skip(2).collect();
        return floor::main(&args);
    }
    let cli = Cli::parse();
    // The chitty client library's warnings, as `chitty` shows them.
    let _log = chitty_main::init_logging("warn", chitty::cli::LogFormat::Text, None);
    // The `chitty` binary's runtime, as the clients have always run in.
    match chitty_main::runtime(0) {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs what the command line asks; Ctrl-C stops it (and every server it
/// started).
async fn run(cli: Cli) -> ExitCode {
    let work = async {
        match cli.command {
            Some(System::Nats(args)) => {
                let config = on_nats::Config {
                    load: args.load.load(),
                    program: args.nats_server,
                    subject: args.subject,
                };
                let report = on_nats::run(&config).await?;
                Ok(print(&report, args.load.json))
            }
            None => {
                let args = cli.chitty;
                let config = on_chitty::Config {
                    load: args.load.load(),
                    slow: args.slow,
                    flood: args.flood,
                    idle: args.idle,
                    streams_per_connection: args.streams_per_connection,
                    node_log: args.node_log,
                    node_args: args.node_args,
                    node_program: args.node_bin,
                    pipeline: args.pipeline,
                    floor: args.floor,
                };
                if args.sweep {
                    let sweep = sweep::Sweep {
                        base: config,
                        nodes: args.sweep_nodes,
                        participants: args.sweep_participants,
                        deliveries: args.sweep_deliveries,
                        max_messages: args.sweep_max_messages,
                        label: args.sweep_label,
                    };
                    let reports = sweep::sweep(&sweep, &args.out).await?;
                    Ok(reports.iter().all(|r| r.correct()))
                } else {
                    let report = on_chitty::run(&config).await?;
                    Ok(print(&report, args.load.json))
                }
            }
        }
    };
    // Dropping `work` on Ctrl-C drops the server guard, which kills them.
    tokio::select! {
        result = work => match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(2),
            Err::<_, String>(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        _ = chitty::cli::shutdown_signal() => {
            eprintln!("bench: interrupted; stopping the servers");
            ExitCode::from(130)
        }
    }
}

/// Prints the table (and the JSON line); returns whether the run was
/// correct.
fn print(report: &report::Report, json: bool) -> bool {
    println!("{}", report.table());
    if json {
        println!("{}", report.to_json());
    }
    report.correct()
}
