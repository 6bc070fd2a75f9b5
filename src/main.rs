//! The `chitty` binary: parses flags, sets up logging, and hands over to
//! [`chitty::cli`].

use std::process::ExitCode;

use chitty::cli::{Cli, Command};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Server(args) => args.threads,
        Command::Client(_) | Command::Bench(_) | Command::Cert(_) => 0,
    };
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    // By default a task woken by another runs right after it. A message
    // fanned out to many sessions would then have the connection task run
    // (and write) after every single session: in order instead, the
    // sessions queue their events first and each connection writes once.
    // The option is in tokio's unstable API (`.cargo/config.toml`).
    #[cfg(tokio_unstable)]
    if threads != 1 {
        builder.disable_lifo_slot();
    }
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Server(args) => {
            init_logging("info", None);
            chitty::cli::run_server(args).await
        }
        Command::Client(args) => {
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
            init_logging(if file.is_some() { "info" } else { "warn" }, file);
            chitty::cli::run_client(args).await
        }
        Command::Bench(args) => {
            init_logging("warn", None);
            chitty::cli::run_bench(args).await
        }
        Command::Cert(command) => chitty::cli::run_cert(command),
    }
}

/// Libraries whose debug lines are about HTTP/2 frames and TLS records, not
/// about the chat: they stay at `warn` unless `RUST_LOG` names them.
const QUIET_LIBRARIES: &str =
    "h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,rustls=warn,tokio_rustls=warn";

/// Logs to stderr, or to `file`, at `RUST_LOG` or else `default` level.
/// `RUST_LOG=debug` shows Chitty's debug lines; `RUST_LOG=h2=debug` (or any
/// directive naming a library) brings that library's back.
fn init_logging(default: &str, file: Option<std::fs::File>) {
    let wanted = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| default.to_string());
    // Later directives for the same target win, so RUST_LOG overrides these.
    let filter = EnvFilter::try_new(format!("{QUIET_LIBRARIES},{wanted}"))
        .unwrap_or_else(|_| EnvFilter::new(default));
    // A log line that cannot be written (stderr closed: the terminal or the
    // pipe reading it went away) is dropped. By default the subscriber
    // reports the failure with `eprintln!`, which panics on a closed stderr
    // and would take the node down instead of letting it leave gracefully.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    match file {
        Some(file) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init(),
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
}
