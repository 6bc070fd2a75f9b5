//! The server mesh with real processes: several `chitty server` nodes form
//! one cluster and participants, as `chitty client` processes on different
//! nodes, chat as if on one server (issue 3).
//!
//! Where a test needs a node's participants to be announced as left rather
//! than fail over to another node, their client processes are frozen
//! (SIGSTOP) first: a frozen client cannot resume its session anywhere, which
//! is what a participant whose machine died looks like to the cluster.

mod common;

use std::time::Instant;

use chitty::proto::server_mesh_client::ServerMeshClient;
use chitty::proto::{
    Member, MemberState, NodeId, RelayFrame, ServerJoinRequest, UpdateServersRequest, relay_frame,
};
use common::cluster::*;
use common::*;
use tonic::Code;

#[test]
fn three_nodes_participants_on_every_node_see_everything() {
    const MESSAGES: u64 = 5;
    let cluster = Cluster::start(3, &FAST_DETECTION);
    let placement = [
        (0, "Alice"),
        (0, "Bob"),
        (1, "Carol"),
        (1, "Dave"),
        (2, "Erin"),
        (2, "Frank"),
    ];
    let mut talkers: Vec<Talker> = spawn_participants(&cluster, &placement)
        .into_iter()
        .map(Talker::new)
        .collect();

    // Everyone talks at once, interleaved across the three nodes.
    for _ in 0..MESSAGES {
        for talker in &mut talkers {
            talker.say_next();
        }
    }
    for observer in &talkers {
        for (_, sender) in &placement {
            observer.client.wait_for_number(sender, MESSAGES);
        }
    }

    let transcripts: Vec<(&str, Vec<EventLine>)> = talkers
        .iter()
        .map(|t| (t.name(), t.client.events()))
        .collect();
    let expected: Vec<u64> = (1..=MESSAGES).collect();
    for (who, events) in &transcripts {
        let faults = transcript_faults(events);
        assert!(faults.is_empty(), "{who}: {faults:#?}");
        // Every message exactly once, each sender's in the order it sent them.
        let by_sender = numbers_by_sender(events);
        for (_, sender) in &placement {
            assert_eq!(
                by_sender.get(*sender),
                Some(&expected),
                "{who}'s messages from {sender}"
            );
        }
    }
    // The same event, with the same timestamp and text, everywhere: joins
    // (for those who saw them) and messages.
    let disagreements = timestamp_disagreements(&transcripts);
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    for (_, name) in &placement {
        let stamps: Vec<u64> = talkers
            .iter()
            .flat_map(|t| joins_of(&t.client, name))
            .map(|e| e.lamport)
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] == w[1]),
            "{name}'s join printed with different timestamps: {stamps:?}"
        );
    }

    leave_all(&mut talkers);
}

#[test]
fn concurrent_joins_through_different_members_converge() {
    let mut cluster = Cluster::start(2, &FAST_DETECTION);
    let (first, second) = (cluster.addr(0), cluster.addr(1));
    // Each new node prints its address before it asks to join, so the two
    // joins run at the same moment: one through each existing member.
    let c = cluster.spawn_node(Some(&first), &[]);
    let d = cluster.spawn_node(Some(&second), &[]);

    let addrs = cluster.addrs();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    wait_members(&all, &all);

    // And a participant on each new node reaches one on the other.
    let carol = spawn_client(&cluster.addr(c), "Carol");
    carol.wait_joined();
    let mut dave = spawn_client(&cluster.addr(d), "Dave");
    dave.wait_joined();
    dave.say("hello from the fourth node");
    carol.wait_for_message("Dave", "hello from the fourth node");
}

#[test]
fn graceful_stop_announces_its_participants_left_at_once() {
    let mut cluster = Cluster::start(3, &[&FAST_DETECTION[..], &["--grace-ms", "1000"]].concat());
    let mut clients = spawn_participants(
        &cluster,
        &[(0, "Alice"), (1, "Bob"), (2, "Carol"), (2, "Dave")],
    );
    let stopped_addr = cluster.addr(2);
    let survivors = [cluster.addr(0), cluster.addr(1)];
    // Carol's client is frozen: she cannot follow to another node. Dave's
    // client is alive and moves.
    signal(&clients[2].child, "STOP");

    let stopped_at = Instant::now();
    signal(&cluster.nodes[2].child, "TERM");
    // It tells its peers before it exits: they drop it at once, without
    // waiting for missed heartbeats (which would take over a second).
    let survivors: Vec<&str> = survivors.iter().map(String::as_str).collect();
    wait_members(&survivors, &survivors);
    let dropped = stopped_at.elapsed();

    let [alice, bob, carol, dave] = &mut clients[..] else {
        unreachable!()
    };
    dave.wait_moved_from(&stopped_addr);
    assert_left_once(&mut [alice, bob, dave], &["Carol"], 0);
    println!(
        "graceful stop: peers dropped the node {dropped:?} and everyone saw Carol leave {:?} after SIGTERM",
        stopped_at.elapsed()
    );
    // Dave moved and was never announced: neither left nor joined again.
    for observer in [&*alice, &*bob, &*dave] {
        assert!(lefts_of(observer, "Dave").is_empty(), "{}", observer.name);
        assert_eq!(joins_of(observer, "Dave").len(), 1, "{}", observer.name);
    }
    for addr in &survivors {
        let names = block_on(participants_of(addr)).expect("ListParticipants");
        assert_eq!(
            names,
            ["Alice", "Bob", "Dave"],
            "participants known to {addr}"
        );
    }

    // The stopped node waits for its connections to close; Carol's frozen
    // client holds one open (see the next test), so it is let go here.
    carol.child.kill();
    let status = cluster.nodes[2].child.wait_exit();
    assert!(status.success(), "the stopped node exited with {status}");
}

/// A frozen client (SIGSTOP) never reads the end of its session, so its
/// connection stays open until the server's HTTP/2 keepalive gives up on it
/// (10 s + 10 s). A node asked to stop must not wait for that.
#[test]
fn a_stopping_node_does_not_wait_for_a_frozen_client() {
    let mut cluster = Cluster::start(2, &FAST_DETECTION);
    let clients = spawn_participants(&cluster, &[(0, "Alice"), (1, "Carol")]);
    signal(&clients[1].child, "STOP");
    let node = &mut cluster.nodes[1];
    let stopped_at = Instant::now();
    signal(&node.child, "TERM");
    let exited = node.child.wait_exit_within(STOP_BOUND);
    let waited = stopped_at.elapsed();
    println!("a node with a frozen client exited {waited:?} after SIGTERM: {exited:?}");
    assert!(
        exited.is_some_and(|s| s.success()),
        "a node asked to stop with SIGTERM had not exited after {waited:?} (bound {STOP_BOUND:?}): \
         a client that does not read holds its shutdown open"
    );
}

/// How long a graceful stop may take: the node flushes its events to its
/// peers for at most two seconds, then should close its sessions and exit.
const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(6);

#[test]
fn sigkill_of_a_node_is_detected_and_its_participants_announced_left_once() {
    let mut cluster = Cluster::start(3, &[&FAST_DETECTION[..], &["--grace-ms", "500"]].concat());
    let mut clients = spawn_participants(
        &cluster,
        &[(0, "Alice"), (1, "Bob"), (2, "Carol"), (2, "Dave")],
    );
    let survivors = [cluster.addr(0), cluster.addr(1)];
    signal(&clients[2].child, "STOP");
    signal(&clients[3].child, "STOP");

    let killed_at = Instant::now();
    cluster.nodes[2].child.kill();
    let survivors: Vec<&str> = survivors.iter().map(String::as_str).collect();
    wait_members(&survivors, &survivors);
    let detected = killed_at.elapsed();

    let [alice, bob, ..] = &mut clients[..] else {
        unreachable!()
    };
    assert_left_once(&mut [alice, bob], &["Carol", "Dave"], 1);
    println!(
        "SIGKILL: node removed after {detected:?}, its participants announced left after {:?}",
        killed_at.elapsed()
    );
    for addr in &survivors {
        let names = block_on(participants_of(addr)).expect("ListParticipants");
        assert_eq!(names, ["Alice", "Bob"], "participants known to {addr}");
    }
}

#[test]
fn sigstop_of_a_node_is_detected_and_the_node_rejoins_after_sigcont() {
    let mut cluster = Cluster::start(3, &[&FAST_DETECTION[..], &["--grace-ms", "500"]].concat());
    let mut clients = spawn_participants(&cluster, &[(0, "Alice"), (1, "Bob"), (2, "Carol")]);
    let survivors = [cluster.addr(0), cluster.addr(1)];
    let survivors: Vec<&str> = survivors.iter().map(String::as_str).collect();
    signal(&clients[2].child, "STOP");

    let paused_at = Instant::now();
    signal(&cluster.nodes[2].child, "STOP");
    wait_members(&survivors, &survivors);
    println!("SIGSTOP: node unreachable after {:?}", paused_at.elapsed());
    {
        let [alice, bob, _] = &mut clients[..] else {
            unreachable!()
        };
        assert_left_once(&mut [alice, bob], &["Carol"], 0);
    }
    // Carol is gone for good; her frozen client would otherwise hold the
    // woken node's shutdown open (see a_stopping_node_does_not_wait_...).
    clients[2].child.kill();

    // Woken up, the node catches up with what happened meanwhile and is a
    // member again, by itself: no exit, no restart.
    signal(&cluster.nodes[2].child, "CONT");
    cluster.wait_rejoined(2);

    // Everyone chats on, on every node; Carol was announced once.
    let dave = &mut spawn_participants(&cluster, &[(2, "Dave")])[0];
    clients[1].say("still here");
    clients[0].wait_for_message("Bob", "still here");
    dave.wait_for_message("Bob", "still here");
    assert_eq!(lefts_of(&clients[0], "Carol").len(), 1);
}

/// A node paused for a little less than the failure timeout is woken when
/// its peers have just declared it dead, or are about to, while by its own
/// clock it was not paused long enough to distrust its view of them. The
/// cluster must still end up with one view: the node either is a member
/// again everywhere or exits as removed (and is then restarted for the next
/// round); never a cluster of its own, and the healthy nodes never exit.
/// Whether a round goes wrong depends on the order in which the woken node
/// runs its tasks, so the fault is repeated with pauses around the edge.
#[test]
fn a_node_paused_for_just_under_the_failure_timeout_does_not_split_the_cluster() {
    const FAILURE_TIMEOUT_MS: u64 = 1000;
    let mut cluster = Cluster::start(3, &FAST_DETECTION);
    let mut clients = spawn_participants(&cluster, &[(0, "Alice"), (2, "Carol")]);
    let addrs = cluster.addrs();
    let everyone = sorted(&[&addrs[0], &addrs[1], &addrs[2]]);
    for short_by in [110, 90, 70, 50, 30] {
        // The length of the fault, not a wait for anything.
        let pause = std::time::Duration::from_millis(FAILURE_TIMEOUT_MS - short_by);
        signal(&cluster.nodes[2].child, "STOP");
        std::thread::sleep(pause);
        signal(&cluster.nodes[2].child, "CONT");

        // Settled means the outcome held for longer than a failure timeout
        // and a heartbeat, the time any node needs to change its mind.
        let deadline = Instant::now() + SETTLE_WITHIN;
        let mut settled_since: Option<Instant> = None;
        loop {
            let exits: Vec<Option<std::process::ExitStatus>> = cluster
                .nodes
                .iter_mut()
                .map(|n| n.child.wait_exit_within(std::time::Duration::ZERO))
                .collect();
            let views: Vec<Result<Vec<String>, String>> =
                addrs.iter().map(|a| block_on(servers_of(a))).collect();
            let healthy_running = exits[..2].iter().all(Option::is_none);
            let settled = match exits[2] {
                Some(status) => status.code() == Some(3),
                None => views.iter().all(|v| v.as_ref().ok() == Some(&everyone)),
            };
            settled_since = if healthy_running && settled {
                settled_since.or(Some(Instant::now()))
            } else {
                None
            };
            if settled_since.is_some_and(|t| t.elapsed() >= STABLE) {
                if exits[2].is_some() {
                    cluster.restart_node(2, &addrs[0]);
                    wait_members(
                        &[&addrs[0], &addrs[1], &addrs[2]],
                        &everyone_refs(&everyone),
                    );
                }
                break;
            }
            if !healthy_running || Instant::now() >= deadline {
                let logs: Vec<String> = cluster
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let notable: Vec<String> = n
                            .stderr
                            .snapshot()
                            .into_iter()
                            .filter(|l| {
                                l.contains("declaring it dead")
                                    || l.contains("refused")
                                    || l.contains("removed")
                            })
                            .collect();
                        format!("node {i} ({}):\n{}", addrs[i], notable.join("\n"))
                    })
                    .collect();
                panic!(
                    "node 2 was paused for {pause:?} and woken; node exits: {exits:?}; \
                     their views of the cluster: {views:?}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    // Carol (whose node it was) still reaches Alice.
    clients[1].say("after the pauses");
    clients[0].wait_for_message("Carol", "after the pauses");
}

/// How long an outcome must hold to count as settled (failure timeout
/// 1000 ms plus a heartbeat and some).
const STABLE: std::time::Duration = std::time::Duration::from_millis(1500);
/// How long the cluster may take to settle after one pause: several
/// failure timeouts.
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

fn everyone_refs(addrs: &[String]) -> Vec<&str> {
    addrs.iter().map(String::as_str).collect()
}

#[test]
fn a_reply_never_overtakes_its_original_on_a_slow_link() {
    const DELAY_MS: u64 = 800;
    // The delay stalls the slowed link's heartbeats too, so the failure
    // timeout is well above it.
    let flags = ["--heartbeat-ms", "200", "--failure-timeout-ms", "2500"];
    let mut cluster = Cluster::new(&flags);
    // Carol's node first, so the slowed node can be told its address.
    let carols = cluster.spawn_node(None, &[]);
    let carols_addr = cluster.addr(carols);
    let delay = format!("{carols_addr}={DELAY_MS}");
    let alices = cluster.spawn_node(Some(&carols_addr), &["--fault-link-delay", &delay]);
    let bobs = cluster.spawn_node(Some(&carols_addr), &[]);
    let addrs = cluster.addrs();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    wait_members(&all, &all);

    let mut clients = spawn_participants(
        &cluster,
        &[(alices, "Alice"), (bobs, "Bob"), (carols, "Carol")],
    );
    for round in 1..=3 {
        let question = format!("question {round}?");
        let answer = format!("answer {round}!");
        clients[0].say(&question);
        clients[1].wait_for_message("Alice", &question);
        let bob_saw_it = Instant::now();
        clients[1].say(&answer);
        for client in &clients {
            client.wait_for_message("Bob", &answer);
            let events = client.events();
            let asked = events.iter().position(|e| e.is_message("Alice", &question));
            let answered = events.iter().position(|e| e.is_message("Bob", &answer));
            assert!(
                asked.is_some() && asked < answered,
                "{} saw the answer before the question:\n{events:#?}",
                client.name
            );
            let stamps = (
                events[asked.unwrap()].lamport,
                events[answered.unwrap()].lamport,
            );
            assert!(stamps.0 < stamps.1, "{}: {stamps:?}", client.name);
        }
        println!(
            "round {round}: Carol had the answer {:?} after Bob sent it (link delay {DELAY_MS} ms)",
            bob_saw_it.elapsed()
        );
    }
}

/// A mesh request carrying `secret` in the cluster-secret metadata entry,
/// or no such entry.
fn with_secret<T>(message: T, secret: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(s) = secret {
        request
            .metadata_mut()
            .insert("x-chitty-cluster-secret", s.parse().expect("ascii"));
    }
    request
}

#[test]
fn the_mesh_refuses_callers_without_the_cluster_secret() {
    let cluster = Cluster::start(2, &FAST_DETECTION);
    let addrs = cluster.addrs();
    let members: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let target = cluster.addr(0);
    let intruder = Member {
        node: Some(NodeId {
            id: "intruder".into(),
            generation: 1,
        }),
        addr: "127.0.0.1:9".into(),
        state: MemberState::Alive as i32,
        version: 1,
    };

    // Without the secret, and with a wrong one: every mesh call is refused.
    block_on(async {
        let mut mesh = ServerMeshClient::connect(format!("http://{target}"))
            .await
            .expect("connect to the mesh service");
        for secret in [None, Some("not-the-secret")] {
            let join = mesh
                .server_join(with_secret(
                    ServerJoinRequest {
                        member: Some(intruder.clone()),
                    },
                    secret,
                ))
                .await
                .expect_err("ServerJoin without the secret");
            assert_eq!(join.code(), Code::Unauthenticated, "ServerJoin: {join}");
            let update = mesh
                .update_servers(with_secret(
                    UpdateServersRequest {
                        members: vec![intruder.clone()],
                    },
                    secret,
                ))
                .await
                .expect_err("UpdateServers without the secret");
            assert_eq!(
                update.code(),
                Code::Unauthenticated,
                "UpdateServers: {update}"
            );
            let hello = RelayFrame {
                frame: Some(relay_frame::Frame::Hello(intruder.clone())),
            };
            let relay = mesh
                .relay(with_secret(tokio_stream::iter(vec![hello]), secret))
                .await
                .expect_err("Relay without the secret");
            assert_eq!(relay.code(), Code::Unauthenticated, "Relay: {relay}");
        }
    });

    // A real node started without the secret is not admitted either.
    let mut outsider = spawn_server(&["--boot", &target]);
    let status = outsider.child.wait_exit();
    assert!(
        !status.success(),
        "a node without the secret joined; its standard error:\n{}",
        outsider.stderr.snapshot().join("\n")
    );

    // The refusals were logged, and nobody was admitted.
    cluster.nodes[0]
        .stderr
        .wait_for_line("a logged refusal", |l| {
            l.contains("refused a mesh call") && l.contains("the call carried none")
        });
    for addr in &members {
        let listed = block_on(servers_of(addr)).expect("ListServers");
        assert_eq!(listed, sorted(&members), "members known to {addr}");
    }
}

/// A port nothing listens on right now (bound, read and released: another
/// program could take it in between, which a test accepts).
#[test]
fn a_node_started_before_its_boot_node_keeps_trying_and_the_cluster_forms() {
    let port = free_port();
    let boot_addr = format!("127.0.0.1:{port}");
    let mut cmd = test_command(std::process::Command::new(CHITTY));
    cmd.args(["server", "--listen", "127.0.0.1:0", "--boot", &boot_addr])
        .env("RUST_LOG", "chitty=debug");
    let joiner = start_server_process(cmd, "joiner");
    joiner
        .stderr
        .wait_for_line("a failed attempt to join", |l| {
            l.contains("boot member not reachable") && l.contains("connection refused")
        });
    let started = Instant::now();
    let mut cmd = test_command(std::process::Command::new(CHITTY));
    cmd.args(["server", "--listen", &boot_addr]);
    let boot = start_server_process(cmd, "boot node");
    wait_members(&[&boot.addr, &joiner.addr], &[&boot.addr, &joiner.addr]);
    // The pause between attempts is at most 2 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn boot_takes_several_addresses_and_host_names() {
    let boot = spawn_server(&[]);
    let port = boot.addr.rsplit_once(':').expect("host:port").1;
    // The first address is dead; the second names the boot node by host
    // name.
    let list = format!("127.0.0.1:{},localhost:{port}", free_port());
    let joiner = spawn_server(&["--boot", &list]);
    wait_members(&[&boot.addr, &joiner.addr], &[&boot.addr, &joiner.addr]);
    // Repeated flags work as well.
    let dead = format!("127.0.0.1:{}", free_port());
    let third = spawn_server(&["--boot", &dead, "--boot", &joiner.addr]);
    let all = [boot.addr.as_str(), &joiner.addr, &third.addr];
    wait_members(&all, &all);
}

#[test]
fn a_node_whose_boot_members_never_answer_gives_up_naming_each_cause() {
    let dead = format!("127.0.0.1:{}", free_port());
    let mut cmd = test_command(std::process::Command::new(CHITTY));
    let mut child = cmd
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--boot",
            &format!("{dead},no-such-host.invalid:50051"),
            "--boot-timeout-ms",
            "1500",
        ])
        // A host name that is not loopback needs a secret.
        .env("CHITTY_CLUSTER_SECRET", "a-cluster-secret-for-tests")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chitty server");
    let stderr = Lines::collect(child.stderr.take().expect("piped"));
    let _stdout = Lines::collect(child.stdout.take().expect("piped"));
    let started = Instant::now();
    let mut child = ChildGuard::new(child, "joiner");
    let status = child.wait_exit();
    let stderr = stderr.wait_closed("stderr").join("\n");
    assert!(!status.success(), "{stderr}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1400),
        "it kept trying until the deadline: {:?}",
        started.elapsed()
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains("could not join the cluster within 1500 ms"),
        "{error}"
    );
    assert!(
        error.contains(&format!("cannot connect to {dead}: connection refused")),
        "{error}"
    );
    assert!(
        error.contains("cannot connect to no-such-host.invalid:50051")
            && error.contains("dns error"),
        "{error}"
    );
}

/// `--bootstrap`: the node of a fixed set that may come up first starts the
/// cluster when no other answers, and a restarted one joins the running
/// cluster instead of starting its own.
#[test]
fn a_bootstrap_node_starts_alone_only_when_no_boot_member_answers() {
    let dead = format!("127.0.0.1:{}", free_port());
    let first = spawn_server(&[
        "--boot",
        &dead,
        "--bootstrap",
        "--bootstrap-after-ms",
        "500",
    ]);
    first.stderr.wait_for_line("the bootstrap warning", |l| {
        l.contains("starting a new cluster as its first member")
    });
    let second = spawn_server(&["--boot", &first.addr]);
    wait_members(&[&first.addr, &second.addr], &[&first.addr, &second.addr]);

    // A third node with --bootstrap whose boot members are up joins them.
    let third = spawn_server(&[
        "--boot",
        &format!("{dead},{}", second.addr),
        "--bootstrap",
        "--bootstrap-after-ms",
        "20000",
    ]);
    let all = [first.addr.as_str(), &second.addr, &third.addr];
    wait_members(&all, &all);
    assert!(
        !third
            .stderr
            .snapshot()
            .iter()
            .any(|l| l.contains("starting a new cluster")),
        "it started alone although a member answered"
    );
}

/// A node restarted in place with its `--node-id` replaces its earlier
/// process: the others list it once, and nothing as unreachable. (With a
/// random id per process, the killed process would stay listed as an
/// unreachable member.)
#[test]
fn a_node_restarted_with_its_node_id_replaces_its_earlier_process() {
    let mut cluster = Cluster::new(&FAST_DETECTION);
    cluster.spawn_node(None, &["--node-id", "first"]);
    let boot = cluster.addr(0);
    cluster.spawn_node(Some(&boot), &["--node-id", "second"]);
    let addrs = cluster.addrs();
    wait_members(&[&addrs[0], &addrs[1]], &[&addrs[0], &addrs[1]]);

    cluster.nodes[1].child.kill();
    poll(
        "the first node to see the second unreachable",
        || match block_on(unreachable_of(&boot))? {
            list if list == [addrs[1].clone()] => Ok(()),
            list => Err(format!("unreachable: {list:?}")),
        },
    );
    cluster.restart_node_with(1, &boot, &["--node-id", "second"]);
    wait_members(&[&addrs[0], &addrs[1]], &[&addrs[0], &addrs[1]]);
    poll("nothing listed as unreachable", || {
        match block_on(unreachable_of(&boot))? {
            list if list.is_empty() => Ok(()),
            list => Err(format!("unreachable: {list:?}")),
        }
    });
}

/// One configuration for every node of a set: the boot list names this node
/// too (it does not join through itself), and `--bootstrap-node-id` makes
/// only the named node bootstrap.
#[test]
fn a_shared_configuration_bootstraps_only_the_named_node() {
    let own = format!("127.0.0.1:{}", free_port());
    let dead = format!("127.0.0.1:{}", free_port());
    let shared = |id: &'static str, listen: &str| {
        let mut cmd = test_command(std::process::Command::new(CHITTY));
        cmd.args(["server", "--listen", listen, "--node-id", id])
            .args(["--boot", &format!("{own},{dead}")])
            .args([
                "--bootstrap-node-id",
                "first",
                "--bootstrap-after-ms",
                "500",
            ]);
        cmd
    };
    let first = start_server_process(shared("first", &own), "first");
    let started = first.stderr.wait_for_line("the bootstrap warning", |l| {
        l.contains("starting a new cluster as its first member")
    });
    assert!(
        !started.contains(&own),
        "it tried to join through itself: {started}"
    );
    // Another node of the set does not bootstrap: it joins the first.
    let second = start_server_process(shared("second", "127.0.0.1:0"), "second");
    wait_members(&[&own, &second.addr], &[&own, &second.addr]);
}

/// Two look-alike names ("Alice" and "Аlice", Cyrillic А) joining at the
/// same moment on two nodes, over the gRPC API: whichever way the race
/// goes (one refused at once, or both admitted and the later one ended by
/// the tie-break), both nodes end up listing exactly one of them.
#[test]
fn look_alike_names_joining_at_once_on_two_nodes_leave_one() {
    let cluster = Cluster::start(2, &FAST_DETECTION);
    let (a, b) = (cluster.addr(0), cluster.addr(1));
    block_on(async move {
        let join = |addr: String, name: &'static str| async move {
            let mut client = chitty::client::connect(&addr).await.expect("connect");
            let joined = client
                .join(chitty::proto::JoinRequest {
                    name: name.into(),
                    lamport: 1,
                    resume: None,
                    rejoin: None,
                    recent: 0,
                })
                .await;
            (client, joined)
        };
        let (left, right) = tokio::join!(join(a.clone(), "Alice"), join(b.clone(), "\u{410}lice"));
        for (_, joined) in [&left, &right] {
            if let Err(status) = joined {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
            }
        }
        // Keep the streams open while the nodes settle.
        let _streams = (left, right);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let on_a = participants_of(&a).await.expect("list on a");
            let on_b = participants_of(&b).await.expect("list on b");
            if on_a.len() == 1 && on_a == on_b {
                assert!(["Alice", "\u{410}lice"].contains(&on_a[0].as_str()));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes list {on_a:?} and {on_b:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
}
