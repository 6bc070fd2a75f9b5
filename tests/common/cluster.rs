//! Helpers for tests that run several `chitty server` processes as one
//! cluster: starting nodes that join through a member, asking a node what it
//! knows (`ListServers`, `ListParticipants`), sending signals, driving
//! numbered publishers, and checking what participants printed.
//!
//! Like the rest of `common`, nothing here sleeps to wait for readiness:
//! [`poll`] re-checks a condition until it holds or [`DEADLINE`] passes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::{ListParticipantsRequest, ListServersRequest};
use chitty::tls::TlsSettings;

use super::{
    ChildGuard, ClientProcess, DEADLINE, EventLine, ServerProcess, spawn_client, spawn_server,
};

/// The cluster secret every test cluster runs with.
pub const SECRET: &str = "chitty-test-secret";

/// Heartbeat and failure timeout for tests where detection speed is not the
/// point: a dead node is noticed within about a second.
pub const FAST_DETECTION: [&str; 4] = ["--heartbeat-ms", "200", "--failure-timeout-ms", "1000"];

/// Longest wait for one `ListServers` / `ListParticipants` call: a paused
/// node accepts the TCP connection but never answers.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two checks of a condition in [`poll`].
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Sends signal `name` (`TERM`, `STOP`, `CONT`, ...) to a process with the
/// `kill` command.
pub fn signal(child: &ChildGuard, name: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {} failed", child.id());
}

/// Runs `fut` to completion on a fresh single-threaded runtime, for the
/// synchronous process tests that need a gRPC call now and then.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(fut)
}

async fn chat_client(
    addr: &str,
    tls: Option<&TlsSettings>,
) -> Result<ChittyChatClient<tonic::transport::Channel>, String> {
    let endpoint = chitty::tls::endpoint(addr, tls)?;
    match tokio::time::timeout(QUERY_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(ChittyChatClient::new(channel)),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("{addr} did not accept a connection in time")),
    }
}

/// The addresses of the live nodes the node at `addr` knows, sorted.
pub async fn servers_of(addr: &str) -> Result<Vec<String>, String> {
    servers_of_with(addr, None).await
}

/// Like [`servers_of`], asking over TLS with `tls`.
pub async fn servers_of_with(addr: &str, tls: Option<&TlsSettings>) -> Result<Vec<String>, String> {
    Ok(server_lists(addr, tls).await?.0)
}

/// The addresses of the members the node at `addr` cannot reach now,
/// sorted.
pub async fn unreachable_of(addr: &str) -> Result<Vec<String>, String> {
    Ok(server_lists(addr, None).await?.1)
}

/// What the node at `addr` lists in `ListServers`: the addresses of the
/// nodes it reaches and of the members it cannot reach now, each sorted.
pub async fn server_lists(
    addr: &str,
    tls: Option<&TlsSettings>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut client = chat_client(addr, tls).await?;
    let reply = tokio::time::timeout(QUERY_TIMEOUT, client.list_servers(ListServersRequest {}))
        .await
        .map_err(|_| format!("{addr} did not answer ListServers in time"))?
        .map_err(|s| format!("ListServers on {addr} failed: {s}"))?
        .into_inner()
        .servers
        .unwrap_or_default();
    let sorted = |list: Vec<chitty::proto::ServerInfo>| {
        let mut addrs: Vec<String> = list.into_iter().map(|s| s.addr).collect();
        addrs.sort();
        addrs
    };
    Ok((sorted(reply.servers), sorted(reply.unreachable)))
}

/// The names of the live participants the node at `addr` knows, sorted
/// (duplicates kept, so that a doubled participant shows).
pub async fn participants_of(addr: &str) -> Result<Vec<String>, String> {
    let mut client = chat_client(addr, None).await?;
    let reply = tokio::time::timeout(
        QUERY_TIMEOUT,
        client.list_participants(ListParticipantsRequest {}),
    )
    .await
    .map_err(|_| format!("{addr} did not answer ListParticipants in time"))?
    .map_err(|s| format!("ListParticipants on {addr} failed: {s}"))?;
    let mut names: Vec<String> = reply
        .into_inner()
        .participants
        .into_iter()
        .map(|p| p.name)
        .collect();
    names.sort();
    Ok(names)
}

/// Re-checks `check` every [`POLL_INTERVAL`] until it returns `Ok`, and
/// returns that; panics after [`DEADLINE`] with `what` and the last `Err`.
pub fn poll<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last check: {last}")
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// `addrs` as a sorted list of owned strings.
pub fn sorted(addrs: &[&str]) -> Vec<String> {
    let mut list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    list.sort();
    list
}

/// Waits until every node in `asked` lists exactly the nodes `expected` as
/// the live members of the cluster.
pub fn wait_members(asked: &[&str], expected: &[&str]) {
    wait_members_with(asked, expected, None)
}

/// Like [`wait_members`], asking over TLS with `tls`.
pub fn wait_members_with(asked: &[&str], expected: &[&str], tls: Option<&TlsSettings>) {
    let expected = sorted(expected);
    for addr in asked {
        poll(
            &format!("{addr} to list exactly {expected:?}"),
            || match block_on(servers_of_with(addr, tls)) {
                Ok(list) if list == expected => Ok(()),
                Ok(list) => Err(format!("it lists {list:?}")),
                Err(e) => Err(e),
            },
        );
    }
}

/// A cluster of `chitty server` processes on loopback ports.
pub struct Cluster {
    /// Every node started, in order; killed ones stay (their guard reaps).
    pub nodes: Vec<ServerProcess>,
    /// Flags every node gets (besides `--listen`, `--boot` and the secret).
    flags: Vec<String>,
}

impl Cluster {
    /// A cluster with no node yet; every node will get `flags`.
    pub fn new(flags: &[&str]) -> Self {
        Self {
            nodes: Vec::new(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// Starts `n` nodes, each joining through the one started before it (any
    /// member can be the boot), and waits until every node lists all of them.
    pub fn start(n: usize, flags: &[&str]) -> Self {
        let mut cluster = Self::new(flags);
        for i in 0..n {
            let boot = i.checked_sub(1).map(|prev| cluster.addr(prev));
            cluster.spawn_node(boot.as_deref(), &[]);
        }
        let addrs = cluster.addrs();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        wait_members(&addrs, &addrs);
        cluster
    }

    /// Starts one more node joining through `boot` (a new cluster without
    /// it), with `extra` flags besides the cluster's. Does not wait for the
    /// membership to converge. Returns the node's index.
    pub fn spawn_node(&mut self, boot: Option<&str>, extra: &[&str]) -> usize {
        let mut args: Vec<&str> = vec!["--cluster-secret", SECRET];
        args.extend(self.flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        if let Some(boot) = boot {
            args.extend(["--boot", boot]);
        }
        self.nodes.push(spawn_server(&args));
        self.nodes.len() - 1
    }

    /// Restarts node `i` (which must have exited) as a new process on the
    /// same address, joining through `boot`: a new incarnation (new id and
    /// generation) where clients already look for a node.
    pub fn restart_node(&mut self, i: usize, boot: &str) {
        self.restart_node_with(i, boot, &[]);
    }

    /// [`Cluster::restart_node`] with `extra` flags besides the cluster's.
    pub fn restart_node_with(&mut self, i: usize, boot: &str, extra: &[&str]) {
        let addr = self.addr(i);
        let mut child = super::chitty_command()
            .args(["server", "--listen", &addr, "--cluster-secret", SECRET])
            .args(&self.flags)
            .args(extra)
            .args(["--boot", boot])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start chitty server");
        let stdout = super::Lines::collect(child.stdout.take().expect("stdout is piped"));
        let stderr = super::Lines::collect(child.stderr.take().expect("stderr is piped"));
        let child = ChildGuard::new(child, format!("chitty server (restarted at {addr})"));
        let expected = format!("chitty server listening on {addr}");
        let first = stdout
            .try_wait_until("the restarted server's first line", |lines| {
                lines.first().cloned()
            })
            .unwrap_or_else(|e| {
                panic!(
                    "{e}\n(its address may have been taken meanwhile); standard error:\n{}",
                    stderr.snapshot().join("\n")
                )
            });
        assert_eq!(first, expected, "the restarted server's first line");
        self.nodes[i] = ServerProcess {
            child,
            addr,
            stdout,
            stderr,
        };
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.clone()
    }

    /// Waits until every node lists every node (node `i`, woken or back,
    /// included), and checks that node `i` did not exit.
    pub fn wait_rejoined(&mut self, i: usize) {
        let all = self.addrs();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        wait_members(&all, &all);
        let node = &mut self.nodes[i];
        assert!(
            node.child.wait_exit_within(Duration::ZERO).is_none(),
            "node {i} exited; its standard error:\n{}",
            node.stderr.snapshot().join("\n")
        );
    }

    /// The addresses of every node started.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }
}

/// Starts one client per `(node, name)`, each after the previous one has
/// printed its own join, and waits until every one has seen the last join,
/// so that all of them receive everything published afterwards.
pub fn spawn_participants(cluster: &Cluster, placement: &[(usize, &str)]) -> Vec<ClientProcess> {
    let mut clients = Vec::new();
    for (node, name) in placement {
        let client = spawn_client(&cluster.addr(*node), name);
        client.wait_joined();
        clients.push(client);
    }
    let (_, last) = placement.last().expect("at least one participant");
    for client in &clients {
        client.wait_for_event(&format!("{last}'s join"), |e| {
            e.joined().is_some_and(|(n, _)| n == *last)
        });
    }
    clients
}

/// Waits until every node in `asked` lists at least the nodes in `expected`
/// (for use inside a tokio runtime, where [`wait_members`] cannot run).
pub async fn converged(asked: &[&str], expected: &[&str]) {
    let expected = sorted(expected);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for addr in asked {
        loop {
            let listed = servers_of(addr).await;
            match &listed {
                Ok(list) if expected.iter().all(|e| list.contains(e)) => break,
                _ if tokio::time::Instant::now() >= deadline => {
                    panic!("{addr} does not list {expected:?} after {DEADLINE:?}: {listed:?}")
                }
                _ => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Participants that publish numbered messages
// ---------------------------------------------------------------------------

/// The text of a publisher's `n`th numbered message.
pub fn numbered(n: u64) -> String {
    format!("#{n}")
}

/// The number of a numbered message text (`#7` is 7).
pub fn number_of(text: &str) -> Option<u64> {
    text.strip_prefix('#')?.parse().ok()
}

/// A client process that publishes `#1`, `#2`, ... and counts what it typed.
pub struct Talker {
    pub client: ClientProcess,
    /// Numbered messages typed so far (the last one is `#sent`).
    pub sent: u64,
}

impl Talker {
    pub fn new(client: ClientProcess) -> Self {
        Self { client, sent: 0 }
    }

    pub fn name(&self) -> &str {
        &self.client.name
    }

    /// Types the next numbered message.
    pub fn say_next(&mut self) {
        self.sent += 1;
        self.client.say(&numbered(self.sent));
    }

    /// Like [`Talker::say_next`], but reports a client that can no longer be
    /// written to (it exited) instead of panicking.
    pub fn try_say_next(&mut self) -> Result<(), String> {
        self.sent += 1;
        let line = numbered(self.sent);
        self.client.try_say(&line).inspect_err(|_| self.sent -= 1)
    }

    /// Whether the client printed a line on standard error that says a
    /// message may not have been delivered (a refused or abandoned publish).
    pub fn publish_errors(&self) -> Vec<String> {
        self.client
            .stderr
            .snapshot()
            .into_iter()
            .filter(|l| l.contains("message not sent") || l.contains("gave up sending"))
            .collect()
    }
}

impl ChildGuard {
    /// Waits up to `limit` for the process to exit on its own; `None` if it
    /// is still running then (it is left running).
    pub fn wait_exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(None) => return None,
                Err(e) => panic!("cannot wait for {}: {e}", self.label),
            }
        }
    }
}

/// The "moved from A to B: ..." part of a client's notice that it moved,
/// which follows "[connection] back: " when no node had answered for a
/// while before.
fn moved_line(line: &str) -> Option<&str> {
    let line = line.strip_prefix("[connection] back: ").unwrap_or(line);
    line.starts_with("moved from ").then_some(line)
}

impl ClientProcess {
    /// Types one line, reporting a closed pipe (the client exited) instead
    /// of panicking.
    pub fn try_say(&mut self, line: &str) -> Result<(), String> {
        use std::io::Write;
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(format!("the standard input of {} is closed", self.name));
        };
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("cannot write to {}: {e}", self.name))
    }

    /// The lines this client printed on standard error that say it moved to
    /// another node.
    pub fn moves(&self) -> Vec<String> {
        self.stderr
            .snapshot()
            .into_iter()
            .filter_map(|l| moved_line(&l).map(str::to_string))
            .collect()
    }

    /// Whether its old session expired so that it joined again as new.
    pub fn rejoined(&self) -> bool {
        self.stderr
            .snapshot()
            .iter()
            .any(|l| l.starts_with("the old session had expired"))
    }

    /// Waits until the client says on standard error that it moved away from
    /// the node at `from`.
    pub fn wait_moved_from(&self, from: &str) -> String {
        let prefix = format!("moved from {from} to ");
        let line = self
            .stderr
            .wait_for_line(&format!("{} to move away from {from}", self.name), |l| {
                moved_line(l).is_some_and(|m| m.starts_with(&prefix))
            });
        moved_line(&line).unwrap_or(&line).to_string()
    }

    /// Waits until this client has seen the numbered message `#n` of
    /// `sender`.
    pub fn wait_for_number(&self, sender: &str, n: u64) -> EventLine {
        self.wait_for_message(sender, &numbered(n))
    }
}

// ---------------------------------------------------------------------------
// Checking transcripts
// ---------------------------------------------------------------------------

/// Per sender, the numbers of its numbered messages in the order `events`
/// shows them.
pub fn numbers_by_sender(events: &[EventLine]) -> BTreeMap<String, Vec<u64>> {
    let mut by_sender: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in events {
        if let Some((sender, text)) = event.message()
            && let Some(n) = number_of(text)
        {
            by_sender.entry(sender.to_string()).or_default().push(n);
        }
    }
    by_sender
}

/// What is wrong with one participant's transcript on its own: an event
/// printed twice (same timestamp and text), a message printed twice (every
/// message text of a sender is unique in these tests), or a sender's
/// messages out of the order they were sent (per-sender FIFO).
pub fn transcript_faults(events: &[EventLine]) -> Vec<String> {
    let mut faults = Vec::new();
    let mut lines: HashMap<(u64, &str), usize> = HashMap::new();
    let mut messages: HashMap<&str, usize> = HashMap::new();
    for event in events {
        *lines
            .entry((event.lamport, event.body.as_str()))
            .or_default() += 1;
        if event.message().is_some() {
            *messages.entry(event.body.as_str()).or_default() += 1;
        }
    }
    let mut twice: Vec<String> = lines
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((l, body), n)| format!("event [lamport {l}] {body} printed {n} times"))
        .collect();
    twice.extend(
        messages
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(body, n)| format!("message {body:?} printed {n} times")),
    );
    twice.sort();
    faults.extend(twice);
    for (sender, numbers) in numbers_by_sender(events) {
        if let Some(w) = numbers.windows(2).find(|w| w[0] >= w[1]) {
            faults.push(format!(
                "{sender}'s messages out of order: #{} before #{} in {numbers:?}",
                w[0], w[1]
            ));
        }
    }
    faults
}

/// Waits until every talker has printed every talker's last message, then
/// checks that each printed exactly `#1..=#n` of every sender, in order,
/// each message with the same timestamp everywhere, and that no publish was
/// reported as failed.
pub fn assert_everyone_saw_everything(talkers: &[Talker]) {
    for observer in talkers {
        for sender in talkers {
            observer.client.wait_for_number(sender.name(), sender.sent);
        }
    }
    let transcripts: Vec<(&str, Vec<EventLine>)> = talkers
        .iter()
        .map(|t| (t.name(), t.client.events()))
        .collect();
    for (who, events) in &transcripts {
        let faults = transcript_faults(events);
        assert!(faults.is_empty(), "{who}: {faults:#?}");
        let by_sender = numbers_by_sender(events);
        for sender in talkers {
            let expected: Vec<u64> = (1..=sender.sent).collect();
            assert_eq!(
                by_sender.get(sender.name()),
                Some(&expected),
                "{who} printed these of {}'s messages",
                sender.name()
            );
        }
    }
    let disagreements = timestamp_disagreements(&transcripts);
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    for talker in talkers {
        let errors = talker.publish_errors();
        assert!(errors.is_empty(), "{}: {errors:#?}", talker.name());
    }
}

/// Checks that every participant that printed the same message body printed
/// it with the same Lamport timestamp (one event, stamped once). Returns the
/// disagreements.
pub fn timestamp_disagreements(transcripts: &[(&str, Vec<EventLine>)]) -> Vec<String> {
    let mut stamps: BTreeMap<&str, BTreeMap<u64, Vec<&str>>> = BTreeMap::new();
    for (who, events) in transcripts {
        for event in events {
            if event.message().is_some() {
                stamps
                    .entry(event.body.as_str())
                    .or_default()
                    .entry(event.lamport)
                    .or_default()
                    .push(who);
            }
        }
    }
    stamps
        .into_iter()
        .filter(|(_, by_time)| by_time.len() > 1)
        .map(|(body, by_time)| format!("{body:?} printed with different timestamps: {by_time:?}"))
        .collect()
}

/// The "left" lines for `name` that `client` printed.
pub fn lefts_of(client: &ClientProcess, name: &str) -> Vec<EventLine> {
    client
        .events()
        .into_iter()
        .filter(|e| e.left().is_some_and(|(n, _)| n == name))
        .collect()
}

/// The "joined" lines for `name` that `client` printed.
pub fn joins_of(client: &ClientProcess, name: &str) -> Vec<EventLine> {
    client
        .events()
        .into_iter()
        .filter(|e| e.joined().is_some_and(|(n, _)| n == name))
        .collect()
}

/// Waits until every one of `observers` printed `name`'s "left" line, checks
/// that they agree on its timestamp, then has `observers[marker_from]`
/// publish a marker and checks that, once the marker arrived, each observer
/// had printed that "left" line exactly once, before the marker.
pub fn assert_left_once(observers: &mut [&mut ClientProcess], names: &[&str], marker_from: usize) {
    for name in names {
        let mut lamport = None;
        for observer in observers.iter() {
            let line = observer.wait_for_event(&format!("{name}'s leave"), |e| {
                e.left().is_some_and(|(n, _)| n == *name)
            });
            assert_eq!(
                line.body,
                super::left_text(name, line.lamport),
                "the exact wording, with L the event's timestamp"
            );
            let first = *lamport.get_or_insert(line.lamport);
            assert_eq!(
                first, line.lamport,
                "{} printed {name}'s leave at a different timestamp",
                observer.name
            );
        }
    }
    let marker = format!("after {} left", names.join(" and "));
    observers[marker_from].say(&marker);
    let sender = observers[marker_from].name.clone();
    for observer in observers.iter() {
        observer.wait_for_message(&sender, &marker);
        let events = observer.events();
        let marker_at = events
            .iter()
            .position(|e| e.is_message(&sender, &marker))
            .expect("just waited for it");
        for name in names {
            let lefts: Vec<usize> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.left().is_some_and(|(n, _)| n == *name))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(
                lefts.len(),
                1,
                "{} printed {name}'s leave {} times:\n{events:#?}",
                observer.name,
                lefts.len()
            );
            assert!(
                lefts[0] < marker_at,
                "{} printed {name}'s leave after the later marker",
                observer.name
            );
        }
    }
}

/// A tiny xorshift64* generator: deterministic for a seed, no dependencies.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Self((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every talker leaves by end of input, and each client must exit cleanly.
pub fn leave_all(talkers: &mut [Talker]) {
    for talker in talkers.iter_mut() {
        talker.client.close_stdin();
    }
    for talker in talkers.iter_mut() {
        let status = talker.client.child.wait_exit();
        assert!(status.success(), "{} exited with {status}", talker.name());
    }
}
