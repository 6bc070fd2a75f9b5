//! The server processes a run starts (Chitty nodes or nats-servers): their
//! logs, and a guard that kills and reaps every one of them when dropped, on
//! success, on error, on panic, and when the run's future is dropped on
//! Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long [`ServerProcesses::stop`] lets servers stop by themselves.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// One spawned server, killed and reaped when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Child,
    /// Where clients connect.
    pub addr: String,
    pub log: PathBuf,
}

/// The spawned servers. Dropping it kills and reaps every one of them.
#[derive(Debug)]
pub struct ServerProcesses {
    pub list: Vec<ServerProcess>,
    log_dir: PathBuf,
    /// Remove `log_dir` when dropped.
    remove_logs: bool,
}

impl ServerProcesses {
    /// No servers yet; their logs go to `log_dir`, or to a temporary
    /// directory named after `kind`, removed at the end unless the run fails.
    pub fn new(log_dir: Option<&Path>, kind: &str) -> Result<Self, String> {
        let (log_dir, remove_logs) = match log_dir {
            Some(dir) => (dir.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "{kind}-bench-{}-{}",
                    std::process::id(),
                    uuid::Uuid::new_v4().simple()
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
        Ok(Self {
            list: Vec::new(),
            log_dir,
            remove_logs,
        })
    }

    /// Starts `command` with its stderr (and, unless the caller set it, its
    /// stdout) going to `<log dir>/<name>.log`.
    pub fn spawn(&mut self, mut command: Command, name: &str) -> Result<ServerProcess, String> {
        let log = self.log_dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        command.stdin(Stdio::null()).stderr(log_file);
        let child = command.spawn().map_err(|e| {
            format!(
                "cannot start {}: {e}",
                command.get_program().to_string_lossy()
            )
        })?;
        Ok(ServerProcess {
            child,
            addr: String::new(),
            log,
        })
    }

    pub fn addrs(&self) -> Vec<String> {
        self.list.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.list.iter().map(|n| n.child.id()).collect()
    }

    /// Fails if a server has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (i, server) in self.list.iter_mut().enumerate() {
            if let Some(status) = server.child.try_wait().ok().flatten() {
                return Err(format!(
                    "server {} at {} exited ({status}){}",
                    i + 1,
                    server.addr,
                    log_tail(&server.log)
                ));
            }
        }
        Ok(())
    }

    /// Stops and reaps every server (idempotent): asks each to stop
    /// (SIGTERM), so that it writes out what it still has to log, and kills
    /// whatever still runs after [`STOP_WAIT`]. Polls without blocking the
    /// runtime's thread.
    pub async fn stop(&mut self) {
        for server in &mut self.list {
            if let Ok(None) = server.child.try_wait()
                && let Ok(pid) = libc::pid_t::try_from(server.child.id())
            {
                // SAFETY: kill(2) on a child not reaped yet: the pid is still ours.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        for server in &mut self.list {
            while matches!(server.child.try_wait(), Ok(None))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            server.kill();
        }
    }

    /// Keeps the logs (after a failure), and says where they are.
    pub fn keep_logs(&mut self) {
        if self.remove_logs {
            self.remove_logs = false;
            eprintln!("bench: server logs kept in {}", self.log_dir.display());
        }
    }

    /// Log lines of every server that contain `needle` (case-insensitive).
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        let needle = needle.to_lowercase();
        self.list
            .iter()
            .flat_map(|s| {
                let text = std::fs::read_to_string(&s.log).unwrap_or_default();
                text.lines()
                    .filter(|l| l.to_lowercase().contains(&needle))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl ServerProcess {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for ServerProcesses {
    /// Kills whatever still runs (a run that was dropped, or failed before
    /// [`Self::stop`]).
    fn drop(&mut self) {
        for server in &mut self.list {
            server.kill();
        }
        if self.remove_logs {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// The last lines of a server log, for an error message.
pub fn log_tail(path: &Path) -> String {
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

/// Polls `ready` until it answers `Ok`, for at most `timeout`, failing
/// early if a server exits; `ready` says why not yet with `Err`. Polling is
/// the only readiness signal another process gives.
pub async fn wait_until<F, Fut>(
    servers: &mut ServerProcesses,
    timeout: Duration,
    mut ready: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Err(e) = servers.check_alive() {
            servers.keep_logs();
            return Err(e);
        }
        let why_not = match tokio::time::timeout_at(deadline, ready()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "no answer".into(),
        };
        if tokio::time::Instant::now() >= deadline {
            servers.keep_logs();
            let tail = servers.list.first().map(|s| log_tail(&s.log));
            return Err(format!(
                "the servers were not ready after {timeout:?}: {why_not}{}",
                tail.unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
