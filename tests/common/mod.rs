//! Helpers shared by the integration tests.
//!
//! Two ways to run Chitty are covered:
//! * in-process: [`TestServer`] serves a node on a `127.0.0.1:0` listener in
//!   the test's own runtime, and [`Member`] is a participant driven through the
//!   client library;
//! * as processes of the real `chitty` binary: [`ServerProcess`] and
//!   [`ClientProcess`], whose output is collected line by line by background
//!   threads into [`Lines`].
//!
//! Nothing here sleeps to wait for readiness: every wait is for a condition,
//! with a deadline ([`DEADLINE`]) after which the test fails and shows what it
//! saw. Every spawned process is killed and reaped when its guard is dropped,
//! so a failing test leaves nothing behind.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chitty::client::{EventStream, Received, Session};
use chitty::node::NodeConfig;
use chitty::proto::{Event, EventKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod cluster;
pub mod netns;
pub mod pty;

/// How long any single wait may take before the test is declared failed.
/// Generous: it only matters when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The path of the `chitty` binary Cargo built for these tests.
pub const CHITTY: &str = env!("CARGO_BIN_EXE_chitty");

// ---------------------------------------------------------------------------
// Exact texts of the assignment
// ---------------------------------------------------------------------------

/// "Participant X joined Chitty-Chat at Lamport time L" (R6).
pub fn joined_text(name: &str, lamport: u64) -> String {
    format!("Participant {name} joined Chitty-Chat at Lamport time {lamport}")
}

/// "Participant X left Chitty-Chat at Lamport time L" (R8).
pub fn left_text(name: &str, lamport: u64) -> String {
    format!("Participant {name} left Chitty-Chat at Lamport time {lamport}")
}

// ---------------------------------------------------------------------------
// Collected output lines
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LinesState {
    lines: Vec<String>,
    /// The writer closed its end (the process exited or closed the stream).
    closed: bool,
}

/// Lines read from a pipe by a background thread, with a way to wait for one.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<LinesState>, Condvar)>,
}

impl Lines {
    /// Starts a thread that reads `reader` to its end, one line at a time.
    pub fn collect(reader: impl Read + Send + 'static) -> Self {
        let lines = Lines::default();
        let shared = lines.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        let (state, cond) = &*shared.inner;
                        lock(state).lines.push(line);
                        cond.notify_all();
                    }
                }
            }
            let (state, cond) = &*shared.inner;
            lock(state).closed = true;
            cond.notify_all();
        });
        lines
    }

    /// Every line so far.
    pub fn snapshot(&self) -> Vec<String> {
        lock(&self.inner.0).lines.clone()
    }

    /// Waits until `found` returns `Some` for the lines so far, or panics
    /// after [`DEADLINE`] (or when the stream ends first) with `what` and
    /// every line seen.
    pub fn wait_until<T>(&self, what: &str, found: impl FnMut(&[String]) -> Option<T>) -> T {
        self.try_wait_until(what, found)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Like [`Lines::wait_until`], returning the failure instead of panicking.
    pub fn try_wait_until<T>(
        &self,
        what: &str,
        mut found: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T, String> {
        self.wait_state(what, |state| match found(&state.lines) {
            Some(value) => Ok(Some(value)),
            None if state.closed => Err(format!(
                "output ended before {what}; lines seen:\n{}",
                state.lines.join("\n")
            )),
            None => Ok(None),
        })
    }

    /// The one wait loop: re-checks `check` on every new line (or end of
    /// output) until it decides, failing after [`DEADLINE`].
    fn wait_state<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&LinesState) -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        let (state, cond) = &*self.inner;
        let deadline = Instant::now() + DEADLINE;
        let mut guard = lock(state);
        loop {
            if let Some(value) = check(&guard)? {
                return Ok(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "timed out after {DEADLINE:?} waiting for {what}; lines seen:\n{}",
                    guard.lines.join("\n")
                ));
            }
            guard = cond
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits for the first line matching `pred` and returns it.
    pub fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_until(what, |lines| lines.iter().find(|l| pred(l)).cloned())
    }

    /// Waits until the stream ends (the writer exited) and returns every line.
    pub fn wait_closed(&self, what: &str) -> Vec<String> {
        self.wait_state(what, |state| Ok(state.closed.then(|| state.lines.clone())))
            .unwrap_or_else(|failure| panic!("{failure}"))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// The client's event line format
// ---------------------------------------------------------------------------

/// One line of `chitty client` output: `[lamport L | local C] BODY`, where
/// BODY is a join or leave text, or `Name: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    /// The event's Lamport timestamp (the node's).
    pub lamport: u64,
    /// The client's own Lamport clock after receiving the event.
    pub local: u64,
    pub body: String,
}

impl EventLine {
    /// Parses one output line; `None` if it is not an event line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("[lamport ")?;
        let (lamport, rest) = rest.split_once(" | local ")?;
        let (local, body) = rest.split_once("] ")?;
        Some(Self {
            lamport: lamport.parse().ok()?,
            local: local.parse().ok()?,
            body: body.to_string(),
        })
    }

    /// `Some((name, L))` for "Participant X joined Chitty-Chat at Lamport time L".
    pub fn joined(&self) -> Option<(&str, u64)> {
        participant_text(&self.body, "joined")
    }

    /// `Some((name, L))` for "Participant X left Chitty-Chat at Lamport time L".
    pub fn left(&self) -> Option<(&str, u64)> {
        participant_text(&self.body, "left")
    }

    /// `Some((sender, text))` for a chat message line.
    pub fn message(&self) -> Option<(&str, &str)> {
        if self.joined().is_some() || self.left().is_some() {
            return None;
        }
        self.body.split_once(": ")
    }

    pub fn is_message(&self, sender: &str, text: &str) -> bool {
        self.message() == Some((sender, text))
    }
}

fn participant_text<'a>(body: &'a str, verb: &str) -> Option<(&'a str, u64)> {
    let rest = body.strip_prefix("Participant ")?;
    let (name, time) = rest.split_once(&format!(" {verb} Chitty-Chat at Lamport time "))?;
    Some((name, time.parse().ok()?))
}

/// Every event line among `lines`, in order; other lines are skipped.
pub fn event_lines(lines: &[String]) -> Vec<EventLine> {
    lines.iter().filter_map(|l| EventLine::parse(l)).collect()
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process that is killed and reaped when dropped, also when the
/// test panics.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    label: String,
}

impl ChildGuard {
    pub fn new(child: Child, label: impl Into<String>) -> Self {
        Self {
            child,
            label: label.into(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process abruptly (SIGKILL on Unix) and reaps it.
    pub fn kill(&mut self) {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("cannot kill {}: {e}", self.label));
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own, failing after [`DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => panic!("{} did not exit within {DEADLINE:?}", self.label),
                Err(e) => panic!("cannot wait for {}: {e}", self.label),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Either may fail when the process has already exited and been reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `chitty` command with no `CHITTY_*` settings inherited from the
/// environment, so only the flags a test passes apply.
fn chitty_command() -> Command {
    test_command(Command::new(CHITTY))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on
/// it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("reserve a port")
        .port()
}

/// Starts `chitty ARGS...` with no input and its output piped: the process
/// and its standard output and error, line by line.
pub fn start_chitty(args: &[&str]) -> (ChildGuard, Lines, Lines) {
    let mut child = chitty_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chitty");
    let stdout = Lines::collect(child.stdout.take().expect("piped"));
    let stderr = Lines::collect(child.stderr.take().expect("piped"));
    (
        ChildGuard::new(child, format!("chitty {}", args.join(" "))),
        stdout,
        stderr,
    )
}

/// `cmd` (which runs `chitty`, directly or through a wrapper) with no
/// `CHITTY_*` settings inherited, killed if the test process dies.
pub fn test_command(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CHITTY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    // If the test process dies without running its guards (killed by a
    // timeout, say), the kernel kills the child too, so nothing outlives the
    // run. (The signal follows the spawning thread: tests spawn from their
    // own thread, which outlives the guards.)
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// A running `chitty server` process.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: ChildGuard,
    /// The address it listens on, from its first line of output.
    pub addr: String,
    pub stdout: Lines,
    pub stderr: Lines,
}

/// Starts `chitty server --listen 127.0.0.1:0 EXTRA...` and waits for the
/// address it prints on its first line.
pub fn spawn_server(extra: &[&str]) -> ServerProcess {
    let mut cmd = chitty_command();
    cmd.args(["server", "--listen", "127.0.0.1:0"]).args(extra);
    start_server_process(cmd, "chitty server")
}

/// Starts `cmd` (a `chitty server` command line) and waits for the address
/// it prints on its first line; `label` names it in failures.
pub fn start_server_process(mut cmd: Command, label: &str) -> ServerProcess {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {label}: {e}"));
    // Both pipes are always drained, so the server never blocks on logging.
    let stdout = Lines::collect(child.stdout.take().expect("stdout is piped"));
    let stderr = Lines::collect(child.stderr.take().expect("stderr is piped"));
    let child = ChildGuard::new(child, label);
    let first = stdout
        .try_wait_until("the server's first line", |lines| lines.first().cloned())
        .unwrap_or_else(|e| panic!("{e}\nstandard error:\n{}", stderr.snapshot().join("\n")));
    let addr = first
        .strip_prefix("chitty server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the server: {first:?}"))
        .to_string();
    ServerProcess {
        child,
        addr,
        stdout,
        stderr,
    }
}

/// A running `chitty client` process with piped standard streams.
#[derive(Debug)]
pub struct ClientProcess {
    pub name: String,
    pub child: ChildGuard,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    /// The file given to `--log`.
    pub log: PathBuf,
}

/// A fresh path for a log file under Cargo's temporary directory for tests.
pub fn temp_path(label: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chitty-tests");
    std::fs::create_dir_all(&dir).expect("create the temporary directory");
    dir.join(format!("{label}-{}.log", uuid::Uuid::new_v4().simple()))
}

/// Starts `chitty client --server ADDR --name NAME --log FILE`.
pub fn spawn_client(addr: &str, name: &str) -> ClientProcess {
    start_client_process(chitty_command(), addr, name)
}

/// Starts `cmd` (which runs `chitty`) with `client --server ADDR --name
/// NAME --log FILE`.
pub fn start_client_process(mut cmd: Command, addr: &str, name: &str) -> ClientProcess {
    let log = temp_path(name);
    let mut child = cmd
        .args(["client", "--server", addr, "--name", name, "--log"])
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start chitty client {name}: {e}"));
    let stdin = child.stdin.take();
    let stdout = Lines::collect(child.stdout.take().expect("stdout is piped"));
    let stderr = Lines::collect(child.stderr.take().expect("stderr is piped"));
    ClientProcess {
        name: name.to_string(),
        child: ChildGuard::new(child, format!("chitty client {name}")),
        stdin,
        stdout,
        stderr,
        log,
    }
}

impl ClientProcess {
    /// Types one line (publishes it).
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot write to {}: {e}", self.name));
    }

    /// Closes standard input: end of input, which means leave.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The event lines printed so far.
    pub fn events(&self) -> Vec<EventLine> {
        event_lines(&self.stdout.snapshot())
    }

    /// Waits for the first event line matching `pred`.
    pub fn wait_for_event(&self, what: &str, pred: impl Fn(&EventLine) -> bool) -> EventLine {
        let what = format!("{what} (client {})", self.name);
        self.stdout
            .try_wait_until(&what, |lines| {
                lines
                    .iter()
                    .filter_map(|l| EventLine::parse(l))
                    .find(|e| pred(e))
            })
            .unwrap_or_else(|failure| {
                panic!(
                    "{failure}\nstandard error of {}:\n{}",
                    self.name,
                    self.stderr.snapshot().join("\n")
                )
            })
    }

    /// Waits until this client has printed its own "joined" line.
    pub fn wait_joined(&self) -> EventLine {
        let name = self.name.clone();
        self.wait_for_event("its own join", |e| {
            e.joined().is_some_and(|(n, _)| n == name)
        })
    }

    /// Waits for the message `sender: text`.
    pub fn wait_for_message(&self, sender: &str, text: &str) -> EventLine {
        self.wait_for_event(&format!("message {sender}: {text}"), |e| {
            e.is_message(sender, text)
        })
    }

    /// The contents of the `--log` file.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.log.display()))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        // The log of a failed test is kept for reading; others are removed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The number after `key=` in a log line, e.g. `field(line, "lamport")`.
pub fn log_field(line: &str, key: &str) -> Option<u64> {
    let pattern = format!(" {key}=");
    let start = line.find(&pattern)? + pattern.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------
// In-process server and participants
// ---------------------------------------------------------------------------

/// A node served in the test's runtime on an ephemeral loopback port.
pub struct TestServer {
    pub addr: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<chitty::error::Result<()>>>,
}

/// Serves a node with the default configuration.
pub async fn start_server() -> TestServer {
    start_server_with(|_| {}).await
}

/// Serves a node whose configuration `configure` may adjust.
pub async fn start_server_with(configure: impl FnOnce(&mut NodeConfig)) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address").to_string();
    let mut config = NodeConfig::new(addr.clone());
    configure(&mut config);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(chitty::server::serve(listener, config, async move {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestServer {
    /// Asks the server to shut down and waits until `serve` has returned.
    pub async fn shutdown(mut self) -> chitty::error::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("not shut down yet");
        within("the server to shut down", task)
            .await
            .expect("the server task panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Awaits `fut`, failing the test after [`DEADLINE`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// The gRPC status code of a failed call made through the client library.
pub fn code(err: &chitty::Error) -> tonic::Code {
    match err {
        chitty::Error::Rpc(status) => status.code(),
        other => panic!("expected an error status from the server, got {other:?}"),
    }
}

/// One received event with the participant's clock after receiving it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub event: Event,
    pub local: u64,
}

impl Seen {
    pub fn kind(&self) -> EventKind {
        self.event.kind()
    }

    pub fn is_message(&self, sender: &str, text: &str) -> bool {
        self.kind() == EventKind::Message
            && self.event.participant_name == sender
            && self.event.text == text
    }

    pub fn is_joined(&self, name: &str) -> bool {
        self.kind() == EventKind::Joined && self.event.participant_name == name
    }

    pub fn is_left(&self, name: &str) -> bool {
        self.kind() == EventKind::Left && self.event.participant_name == name
    }
}

/// A participant driven through the client library, recording every event
/// it receives.
pub struct Member {
    pub name: String,
    pub session: Session,
    pub events: EventStream,
    /// Everything received so far, in order.
    pub seen: Vec<Seen>,
}

/// Joins the node at `addr` as `name`, failing the test if that fails.
pub async fn join(addr: &str, name: &str) -> Member {
    let (session, events) = within(&format!("{name} to join"), chitty::client::join(addr, name))
        .await
        .unwrap_or_else(|e| panic!("{name} could not join: {e}"));
    Member {
        name: name.to_string(),
        session,
        events,
        seen: Vec::new(),
    }
}

impl Member {
    /// The next event, failing the test if the stream ends or errs first.
    pub async fn next_event(&mut self) -> Seen {
        let what = format!("the next event for {}", self.name);
        loop {
            match within(&what, self.events.next()).await {
                Ok(Some(Received::Event { event, local })) => {
                    let seen = Seen { event, local };
                    self.seen.push(seen.clone());
                    return seen;
                }
                // Cluster membership news is not an event of the chat.
                Ok(Some(Received::Servers(_))) => continue,
                Ok(Some(other)) => panic!("{} received {other:?}", self.name),
                Ok(None) => panic!(
                    "the stream of {} ended while waiting for an event",
                    self.name
                ),
                Err(e) => panic!("the stream of {} failed: {e}", self.name),
            }
        }
    }

    /// Reads events until one matches `pred`, and returns it.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} did not receive {what} within {DEADLINE:?}; received:\n{}",
                        self.name,
                        describe(&self.seen)
                    )
                });
            if pred(&seen) {
                return seen;
            }
        }
    }

    /// Like [`Member::wait_for`], but first looks among the events already
    /// received.
    pub async fn ensure_seen(&mut self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        if let Some(seen) = self.seen.iter().find(|s| pred(s)) {
            return seen.clone();
        }
        self.wait_for(what, pred).await
    }

    /// Reads events until this participant's own "joined" event.
    pub async fn wait_own_join(&mut self) -> Seen {
        let name = self.name.clone();
        self.wait_for(&format!("{name}'s own join"), |s| s.is_joined(&name))
            .await
    }

    /// Publishes `text`, failing the test if the server refuses it.
    /// Returns the message's timestamp and the request's Lamport time.
    pub async fn say(&self, text: &str) -> (u64, u64) {
        let (reply, request) = within("a publish", self.session.publish(text))
            .await
            .unwrap_or_else(|e| panic!("{} could not publish {text:?}: {e}", self.name));
        (reply.lamport, request)
    }

    /// Asserts that the very next event is the message `sender: text`: a
    /// marker published after something that must not have broadcast
    /// anything.
    pub async fn assert_next_is_message(&mut self, sender: &str, text: &str) {
        let next = self.next_event().await;
        assert!(
            next.is_message(sender, text),
            "{} expected {sender}: {text:?} next but received {:?} ({:?}: {:?})",
            self.name,
            next.kind(),
            next.event.participant_name,
            next.event.text
        );
    }

    /// Reads the rest of the stream: the events, then how it ended.
    pub async fn drain_to_end(&mut self) -> Result<(), chitty::Error> {
        let what = format!("the stream of {} to end", self.name);
        loop {
            match within(&what, self.events.next()).await {
                Ok(Some(Received::Event { event, local })) => self.seen.push(Seen { event, local }),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// One line per event, for failure messages.
pub fn describe(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            format!(
                "[lamport {} | local {}] {:?} {}: {}",
                s.event.lamport,
                s.local,
                s.kind(),
                s.event.participant_name,
                s.event.text
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
