//! The `chitty` binary: parses flags, sets up logging, and hands over to
//! [`chitty::cli`]. `chitty-bench` (bench/) compiles this same file in, and
//! runs the nodes it starts through its `main`.

use std::process::ExitCode;

use chitty::cli::{Cli, Command, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Reading logs needs no runtime.
    let cli = match cli.command {
        Command::Trace(args) => return chitty::cli::run_trace(args),
        command => Cli { command },
    };
    let threads = match &cli.command {
        Command::Server(args) => args.threads,
        Command::Client(_)
        | Command::Watch(_)
        | Command::Send(_)
        | Command::Status(_)
        | Command::Cert(_)
        | Command::Health(_)
        | Command::Trace(_) => 0,
    };
    match runtime(threads) {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime of a `chitty` process: `threads` worker threads, 0 for one
/// per core, 1 for the current thread only.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    // On the multi-threaded runtime a task woken by another runs right
    // after it by default (the single-threaded one runs them in order). A
    // message fanned out to many sessions would then have the connection
    // task run (and write) after every single session: in order instead,
    // the sessions queue their events first and each connection writes
    // once. The option is in tokio's unstable API (`.cargo/config.toml`).
    #[cfg(tokio_unstable)]
    if threads != 1 {
        builder.disable_lifo_slot();
    }
    builder.enable_all().build()
}

async fn run(cli: Cli) -> ExitCode {
    let watch = matches!(cli.command, Command::Watch(_));
    match cli.command {
        Command::Server(args) => {
            let _log = init_logging("info", args.log_format, None);
            chitty::cli::run_server(args).await
        }
        Command::Status(args) => {
            let _log = init_logging("warn", LogFormat::Text, None);
            chitty::cli::run_status(args).await
        }
        Command::Send(args) => {
            let _log = init_logging("warn", LogFormat::Text, None);
            chitty::cli::run_send(args).await
        }
        Command::Client(args) | Command::Watch(args) => {
            let file = match &args.log {
                Some(path) => match std::fs::File::create(path) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        eprintln!("error: cannot write log file {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                },
                None => None,
            };
            // On a terminal the log would run through the prompt, so without
            // a log file only warnings reach stderr.
            let level = if file.is_some() { "info" } else { "warn" };
            let _log = init_logging(level, args.log_format, file);
            if watch {
                chitty::cli::run_watch(args).await
            } else {
                chitty::cli::run_client(args).await
            }
        }
        Command::Cert(command) => chitty::cli::run_cert(command),
        Command::Health(args) => {
            let _log = init_logging("warn", LogFormat::Text, None);
            chitty::health::run_health(args).await
        }
        Command::Trace(args) => chitty::cli::run_trace(args),
    }
}

/// Libraries whose debug lines are about HTTP/2 frames and TLS records, not
/// about the chat: they stay at `warn` unless `RUST_LOG` names them.
const QUIET_LIBRARIES: &str =
    "h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,rustls=warn,tokio_rustls=warn";

/// Logs to stderr, or to `file`, at `RUST_LOG` or else `default` level, in
/// `format`. `RUST_LOG=debug` shows Chitty's debug lines; `RUST_LOG=h2=debug`
/// (or any directive naming a library) brings that library's back.
///
/// Lines are formatted where they happen and written by a thread of their
/// own, in batches ([`chitty::log_writer`]): a node logs every service call
/// at its default level, and one `write` per line would cost more than the
/// call. The returned guard writes what is still pending when it is
/// dropped; no line is lost.
pub fn init_logging(
    default: &str,
    format: LogFormat,
    file: Option<std::fs::File>,
) -> Option<chitty::log_writer::LogGuard> {
    let wanted = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| default.to_string());
    // Later directives for the same target win, so RUST_LOG overrides these.
    let mut filter = EnvFilter::try_new(format!("{QUIET_LIBRARIES},{wanted}"))
        .unwrap_or_else(|_| EnvFilter::new(default));
    if format == LogFormat::Text {
        // The diagram records are for programs: the text lines for people
        // stay as they were.
        let off = format!("{}=off", chitty::diagram::TARGET);
        filter = filter.add_directive(off.parse().expect("a valid directive"));
    }
    // A log line that cannot be written (stderr closed: the terminal or the
    // pipe reading it went away) is dropped. By default the subscriber
    // reports the failure with `eprintln!`, which panics on a closed stderr
    // and would take the node down instead of letting it leave gracefully.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let out: Box<dyn std::io::Write + Send> = match file {
        Some(file) => Box::new(file),
        None => Box::new(std::io::stderr()),
    };
    let (writer, guard) = match chitty::log_writer::start(out) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("error: cannot start the log writer thread: {e}; logging nothing");
            return None;
        }
    };
    match format {
        LogFormat::Text => builder
            .with_ansi(ansi)
            .fmt_fields(chitty::log_format::LogFields)
            .event_format(chitty::log_format::LogLine::new(
                chitty::log_format::LogTime,
            ))
            .with_writer(writer)
            .init(),
        // One object per line, the event's fields at the top level, where
        // docs/logs.md says they are. Spans are left out: their fields are
        // in the records, and a span's `name` field would clash with its
        // name.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .with_writer(writer)
            .init(),
    }
    if format == LogFormat::Text && !ansi {
        // The hottest lines (one per message) skip tracing's dispatch.
        chitty::log_format::allow_direct_lines();
    }
    Some(guard)
}
