//! A real (virtual) network for process tests: every node in a network
//! namespace of its own, all of them on one Linux bridge, and links cut by
//! making packets vanish.
//!
//! Layout of one [`World`] (everything inside namespaces it creates; nothing
//! is added to the root namespace):
//!
//! ```text
//!   ns PREFIX-s:  br0 ── vn1   vn2   vn3        (the "switch")
//!                        │     │     │          (veth pairs)
//!   ns PREFIX-N:         eth0 = 10.77.0.N/24    (one per node)
//! ```
//!
//! A cut between nodes A and B adds `iptables -A INPUT -s <B> -j DROP` in
//! A's namespace and the symmetric rule in B's: a sender sees only silence
//! (no RST, no error), as with a real network split. A heal deletes those
//! rules. The test process stays in the root namespace; processes run in a
//! node's namespace with `ip netns exec`, and gRPC queries run on a thread
//! that entered it with `setns` ([`in_ns`]).
//!
//! Dropping a [`World`] kills whatever still runs in its namespaces and
//! deletes them, also when the test panics; [`World::new`] first removes
//! the leftovers of earlier runs whose process is gone.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::cluster::{SECRET, block_on, participants_of, servers_of};
use super::{
    CHITTY, ClientProcess, EventLine, ServerProcess, start_client_process, start_server_process,
    test_command,
};

/// Every namespace of these tests starts with this, then the pid of the
/// test process, a dash, the world's number in that process, a dash and
/// `s` (the switch) or the node's number: `cht4242-0-s`, `cht4242-0-1`.
pub const PREFIX: &str = "cht";

/// Worlds made so far by this process (numbers them).
static WORLDS: AtomicUsize = AtomicUsize::new(0);

/// Pause between two checks of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The address of node `i` (0-based) inside its namespace.
pub fn node_ip(i: usize) -> String {
    format!("10.77.0.{}", i + 1)
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Panics, saying what is needed, unless this runs as root with `ip` and
/// `iptables` installed.
pub fn require_tools() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the network-split tests need root (network namespaces, veth, bridges, iptables): \
         run them as root, e.g. `sudo -E cargo test --test netsplit`"
    );
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("iptables", "--version", "iptables"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the network-split tests need `{tool}`: apt-get install iproute2 iptables \
             (package {package})"
        );
    }
}

/// Runs `program args...`, panicking with its output if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program args...` and ignores how it went (for cleanup).
fn run_quietly(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of every network namespace.
fn namespaces() -> Vec<String> {
    run_quietly("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        // "name (id: 3)" or just "name"
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The names of every namespace of these tests that still exists.
pub fn our_namespaces() -> Vec<String> {
    namespaces()
        .into_iter()
        .filter(|n| owner_pid(n).is_some())
        .collect()
}

/// The pid of the test process that made namespace `name`, if it is one of
/// ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// The pids of the processes running in namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    run_quietly("ip", &["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs everything in the namespaces `names`, waits (bounded) until
/// they are empty, and deletes them.
fn destroy(names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = names.iter().flat_map(|n| pids_in(n)).collect();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions; the pid was
            // just listed as running in one of our namespaces.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    for name in names {
        run_quietly("ip", &["netns", "del", name]);
    }
}

/// Deletes the namespaces of earlier runs whose test process is gone.
pub fn remove_leftovers() {
    let stale: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| {
            owner_pid(n).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    if !stale.is_empty() {
        destroy(&stale);
    }
}

/// `ip netns exec NS PROGRAM`, with no `CHITTY_*` or `RUST_LOG` settings
/// inherited and killed by the kernel if the spawning thread dies (like the
/// other process tests' commands). `ip netns exec` execs the program in
/// place, so the child's pid is the program's.
pub fn ns_command(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    test_command(cmd)
}

/// Runs `f` on a thread that entered the network namespace `ns`: sockets
/// it opens live there. For gRPC queries, `f` can use
/// [`super::cluster::block_on`] (a current-thread runtime on that thread).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a valid namespace fd; only this thread moves.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {ns}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// How a TCP connect from inside a namespace went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    Connected,
    Refused,
    TimedOut,
}

/// Tries a TCP connect to `addr` from inside `ns`, waiting at most `limit`.
pub fn tcp_connect_from(ns: &str, addr: &str, limit: Duration) -> Result<Connect, String> {
    let target: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    in_ns(ns, || {
        match std::net::TcpStream::connect_timeout(&target, limit) {
            Ok(_) => Ok(Connect::Connected),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Connect::Refused),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(Connect::TimedOut)
            }
            Err(e) => Err(format!("connect from {ns} to {addr}: {e}")),
        }
    })
}

// ---------------------------------------------------------------------------
// The world: namespaces, bridge, cuts
// ---------------------------------------------------------------------------

/// The namespaces of one test, deleted (with everything still running in
/// them) when dropped.
#[derive(Debug)]
pub struct World {
    /// The namespace that holds the bridge.
    pub switch: String,
    /// The namespace of node `i`.
    pub nodes: Vec<String>,
    /// Every namespace created, for cleanup.
    created: Vec<String>,
    /// Links cut now, as `(low, high)` node indexes.
    cuts: BTreeSet<(usize, usize)>,
}

impl World {
    /// Builds a switch and `n` node namespaces wired to it. Panics (after
    /// cleaning up) if anything fails.
    pub fn new(n: usize) -> Self {
        require_tools();
        remove_leftovers();
        let id = WORLDS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{PREFIX}{}-{id}", std::process::id());
        let mut world = World {
            switch: format!("{prefix}-s"),
            nodes: Vec::new(),
            created: Vec::new(),
            cuts: BTreeSet::new(),
        };
        let sw = world.switch.clone();
        run("ip", &["netns", "add", &sw]);
        world.created.push(sw.clone());
        run("ip", &["-n", &sw, "link", "set", "lo", "up"]);
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{prefix}-{}", i + 1);
            run("ip", &["netns", "add", &ns]);
            world.created.push(ns.clone());
            world.nodes.push(ns.clone());
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            // Both ends are made in the switch namespace, one moved at once.
            let port = format!("vn{}", i + 1);
            run(
                "ip",
                &[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            run("ip", &["-n", &sw, "link", "set", &port, "master", "br0"]);
            run("ip", &["-n", &sw, "link", "set", &port, "up"]);
            let cidr = format!("{}/24", node_ip(i));
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        }
        world
    }

    /// Every namespace of this world.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    fn iptables(&self, node: usize, op: &str, from: usize) {
        let from = node_ip(from);
        let ns = &self.nodes[node];
        run(
            "ip",
            &[
                "netns", "exec", ns, "iptables", "-w", op, "INPUT", "-s", &from, "-j", "DROP",
            ],
        );
    }

    /// Cuts the link between nodes `a` and `b` in both directions: each
    /// drops every packet from the other.
    pub fn cut(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        assert!(self.cuts.insert(key), "link {a}-{b} is already cut");
        self.iptables(a, "-A", b);
        self.iptables(b, "-A", a);
    }

    /// Restores the link between nodes `a` and `b`.
    pub fn heal(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        assert!(self.cuts.remove(&key), "link {a}-{b} is not cut");
        self.iptables(a, "-D", b);
        self.iptables(b, "-D", a);
    }

    /// Cuts node `a` off from every other node.
    pub fn isolate(&mut self, a: usize) {
        for b in 0..self.nodes.len() {
            if b != a {
                self.cut(a, b);
            }
        }
    }

    /// Restores every cut link.
    pub fn heal_all(&mut self) {
        for (a, b) in self.cuts.clone() {
            self.heal(a, b);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        destroy(&self.created);
    }
}

// ---------------------------------------------------------------------------
// Chitty in the world
// ---------------------------------------------------------------------------

/// A cluster of `chitty server` processes, node `i` in namespace
/// `world.nodes[i]` on [`node_ip`]`(i)`. Field order matters: the servers
/// are killed and reaped before the namespaces go.
pub struct NetCluster {
    pub servers: Vec<ServerProcess>,
    pub world: World,
}

impl NetCluster {
    /// A world of `n` nodes, each started joining through the previous one
    /// with `flags` and the test secret; waits until every node lists all.
    pub fn start(n: usize, flags: &[&str]) -> Self {
        let mut net = NetCluster {
            servers: Vec::new(),
            world: World::new(n),
        };
        for i in 0..n {
            let boot = i.checked_sub(1).map(|prev| net.addr(prev));
            let server = net.spawn_server(i, boot.as_deref(), flags);
            net.servers.push(server);
        }
        let all = net.addrs();
        for i in 0..n {
            super::cluster::poll(&format!("node {} to list {all:?}", i + 1), || {
                match net.servers_listed(i) {
                    Ok(list) if list == all => Ok(()),
                    Ok(list) => Err(format!("it lists {list:?}")),
                    Err(e) => Err(e),
                }
            });
        }
        net
    }

    fn spawn_server(&self, i: usize, boot: Option<&str>, flags: &[&str]) -> ServerProcess {
        let listen = format!("{}:0", node_ip(i));
        let mut cmd = ns_command(&self.world.nodes[i], CHITTY);
        cmd.args(["server", "--listen", &listen, "--cluster-secret", SECRET])
            .args(flags);
        if let Some(boot) = boot {
            cmd.args(["--boot", boot]);
        }
        start_server_process(cmd, &format!("chitty server {}", i + 1))
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        self.servers[i].addr.clone()
    }

    /// Every node's address, sorted.
    pub fn addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.servers.iter().map(|s| s.addr.clone()).collect();
        addrs.sort();
        addrs
    }

    /// Where to ask node `i`: its namespace and address.
    pub fn target(&self, i: usize) -> (String, String) {
        (self.world.nodes[i].clone(), self.addr(i))
    }

    /// `ListServers` on node `i`, asked from inside its namespace.
    pub fn servers_listed(&self, i: usize) -> Result<Vec<String>, String> {
        let (ns, addr) = self.target(i);
        servers_in(&ns, &addr)
    }

    /// `ListParticipants` on node `i`, asked from inside its namespace.
    pub fn participants_listed(&self, i: usize) -> Result<Vec<String>, String> {
        let (ns, addr) = self.target(i);
        in_ns(&ns, || block_on(participants_of(&addr)))
    }

    /// Starts `chitty client --server <node's addr> --name NAME` inside the
    /// namespace of node `i`: it can reach only that node (and whatever that
    /// node's namespace reaches over the bridge).
    pub fn spawn_client(&self, i: usize, name: &str) -> ClientProcess {
        start_client_process(
            ns_command(&self.world.nodes[i], CHITTY),
            &self.addr(i),
            name,
        )
    }

    /// Starts one client per `(node, name)`, each after the previous one
    /// printed its own join, and waits until every one saw the last join.
    pub fn spawn_participants(&self, placement: &[(usize, &str)]) -> Vec<ClientProcess> {
        let mut clients = Vec::new();
        for (node, name) in placement {
            let client = self.spawn_client(*node, name);
            client.wait_joined();
            clients.push(client);
        }
        let (_, last) = placement.last().expect("at least one participant");
        for client in &clients {
            client.wait_for_event(&format!("{last}'s join"), |e: &EventLine| {
                e.joined().is_some_and(|(n, _)| n == *last)
            });
        }
        clients
    }

    /// The nodes whose process has exited, with how.
    pub fn exited_nodes(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for (i, server) in self.servers.iter_mut().enumerate() {
            if let Some(status) = server.child.wait_exit_within(Duration::ZERO) {
                let tail: Vec<String> =
                    server.stderr.snapshot().into_iter().rev().take(5).collect();
                exited.push(format!(
                    "node {} ({}) exited with {status}; last lines of its standard error \
                     (newest first): {tail:#?}",
                    i + 1,
                    server.addr
                ));
            }
        }
        exited
    }
}

/// `ListServers` on the node at `addr`, asked from inside namespace `ns`.
pub fn servers_in(ns: &str, addr: &str) -> Result<Vec<String>, String> {
    in_ns(ns, || block_on(servers_of(addr)))
}

/// Polls until every `(namespace, address)` target lists exactly
/// `expected` as the live nodes; returns how long that took, or the last
/// disagreement once `limit` has passed.
pub fn wait_all_list(
    targets: &[(String, String)],
    expected: &[String],
    limit: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (ns, addr) in targets {
            match servers_in(ns, addr) {
                Ok(list) if list == expected => {}
                Ok(list) => wrong.push(format!("{addr} lists {list:?}")),
                Err(e) => wrong.push(e),
            }
        }
        if wrong.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= limit {
            return Err(format!(
                "not every node lists {expected:?} after {limit:?}: {wrong:?}"
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
