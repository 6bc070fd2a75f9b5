//! Failover without loss (issue 4): when a node dies, stops or hangs, its
//! participants move to a live node by themselves, nobody misses a message
//! and nobody sees one twice.
//!
//! Most tests run real `chitty server` and `chitty client` processes: the
//! clients publish numbered messages (`#1`, `#2`, ...) typed into their
//! standard input at a steady pace while nodes are killed, so "nothing lost,
//! nothing twice, per-sender FIFO" is "every participant printed exactly
//! `#1..=#n` of every sender, in order". Two tests drive the protocol
//! directly (raw `Join` with `Resume`, `Publish` with a chosen publish id)
//! against in-process nodes.

mod common;

use std::time::{Duration, Instant};

use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::{
    Event, EventKind, JoinFrame, JoinRequest, PublishReply, PublishRequest, Resume, SeqMark,
    Welcome, join_frame,
};
use common::cluster::*;
use common::*;
use tonic::Streaming;
use tonic::transport::Channel;

/// Pause between two rounds of a steady publisher (pacing, not waiting).
const PACE: Duration = Duration::from_millis(40);

/// Every talker types its next numbered message, `rounds` times.
fn publish_rounds(talkers: &mut [Talker], rounds: usize) {
    for _ in 0..rounds {
        for talker in talkers.iter_mut() {
            talker.say_next();
        }
        std::thread::sleep(PACE);
    }
}

/// Checks that none of `names` was announced as left, or as joined more
/// than once, by any talker.
fn assert_never_announced(talkers: &[Talker], names: &[&str]) {
    for observer in talkers {
        for name in names {
            let lefts = lefts_of(&observer.client, name);
            assert!(
                lefts.is_empty(),
                "{} printed {name} as left: {lefts:?}",
                observer.name()
            );
            let joins = joins_of(&observer.client, name);
            assert!(
                joins.len() <= 1,
                "{} printed {name}'s join {} times: {joins:?}",
                observer.name(),
                joins.len()
            );
        }
    }
}

fn talkers(clients: Vec<ClientProcess>) -> Vec<Talker> {
    clients.into_iter().map(Talker::new).collect()
}

/// Node flags with a given grace period and fast failure detection.
fn flags(grace_ms: &'static str) -> Vec<&'static str> {
    let mut flags = FAST_DETECTION.to_vec();
    flags.extend(["--grace-ms", grace_ms]);
    flags
}

#[test]
fn sigkill_one_of_three_nodes_while_publishing_loses_nothing() {
    let mut cluster = Cluster::start(3, &flags("2000"));
    let doomed = cluster.addr(2);
    let mut clients = spawn_participants(
        &cluster,
        &[
            (0, "Alice"),
            (1, "Bob"),
            (2, "Carol"),
            (2, "Dave"),
            (2, "Erin"),
        ],
    );
    // Erin's client is frozen: she cannot fail over, so she is announced
    // left once the grace period is over. Seeing that proves the others on
    // the dead node had all the time they could be announced in.
    let erin = clients.pop().expect("Erin");
    signal(&erin.child, "STOP");
    let mut talkers = talkers(clients);

    publish_rounds(&mut talkers, 15);
    let sent_at_kill: Vec<(String, u64)> = talkers
        .iter()
        .map(|t| (t.name().to_string(), t.sent))
        .collect();
    // The first message published after the kill by someone on a live node
    // that reaches a participant of the dead node shows delivery resumed.
    let carols_output = talkers[2].client.stdout.clone();
    let killed_at = Instant::now();
    let resumed = std::thread::spawn(move || {
        carols_output.wait_until("Carol's first message published after the kill", |lines| {
            lines
                .iter()
                .filter_map(|l| EventLine::parse(l))
                .find_map(|e| {
                    let (sender, text) = e.message()?;
                    let n = number_of(text)?;
                    let (_, before) = sent_at_kill.iter().find(|(s, _)| s == sender)?;
                    (sender != "Carol" && sender != "Dave" && n > *before).then(Instant::now)
                })
        })
    });
    cluster.nodes[2].child.kill();

    publish_rounds(&mut talkers, 15);
    for talker in &talkers {
        talker.client.wait_for_event("Erin's leave", |e| {
            e.left().is_some_and(|(n, _)| n == "Erin")
        });
    }
    publish_rounds(&mut talkers, 5);
    assert_everyone_saw_everything(&talkers);

    let resumed_after = resumed
        .join()
        .expect("the watcher of Carol's output")
        .duration_since(killed_at);
    println!(
        "SIGKILL of a node: first message delivered to a moved participant {resumed_after:?} after the kill"
    );

    for moved in &talkers[2..] {
        assert!(
            !moved.client.moves().is_empty(),
            "{} did not move",
            moved.name()
        );
        moved.client.wait_moved_from(&doomed);
        assert!(
            !moved.client.rejoined(),
            "{} joined again as new",
            moved.name()
        );
    }
    assert_never_announced(&talkers, &["Alice", "Bob", "Carol", "Dave"]);
    // The same events for everyone: from Erin's join on, every transcript
    // holds the same set of (timestamp, text).
    let after_erin = |t: &Talker| -> std::collections::BTreeSet<(u64, String)> {
        let events = t.client.events();
        let from = events
            .iter()
            .position(|e| e.joined().is_some_and(|(n, _)| n == "Erin"))
            .expect("everyone saw Erin join");
        events[from..]
            .iter()
            .map(|e| (e.lamport, e.body.clone()))
            .collect()
    };
    let first = after_erin(&talkers[0]);
    for talker in &talkers[1..] {
        assert_eq!(after_erin(talker), first, "{} vs Alice", talker.name());
    }

    drop(erin);
    leave_all(&mut talkers);
}

#[test]
fn sigstop_then_sigcont_produces_no_duplicates_and_no_stale_state_and_the_node_rejoins() {
    // Moving off a hung node takes the client's keepalive (about two
    // seconds), so the grace period is well above that.
    let mut cluster = Cluster::start(3, &flags("8000"));
    let hung = cluster.addr(2);
    let survivors = [cluster.addr(0), cluster.addr(1)];
    let survivors: Vec<&str> = survivors.iter().map(String::as_str).collect();
    let mut talkers = talkers(spawn_participants(
        &cluster,
        &[(0, "Alice"), (1, "Bob"), (2, "Carol"), (2, "Dave")],
    ));

    publish_rounds(&mut talkers, 10);
    signal(&cluster.nodes[2].child, "STOP");
    // Carry on publishing until both of the hung node's participants moved.
    let deadline = Instant::now() + DEADLINE;
    while talkers[2..].iter().any(|t| t.client.moves().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "Carol and Dave did not move off the hung node within {DEADLINE:?}"
        );
        publish_rounds(&mut talkers, 1);
    }
    for moved in &talkers[2..] {
        moved.client.wait_moved_from(&hung);
    }
    wait_members(&survivors, &survivors);
    publish_rounds(&mut talkers, 5);

    // The hung node wakes up after the others took it for unreachable: it
    // must not hand anything stale to anyone; it catches up and is a
    // member again, by itself.
    signal(&cluster.nodes[2].child, "CONT");
    publish_rounds(&mut talkers, 10);
    cluster.wait_rejoined(2);
    publish_rounds(&mut talkers, 5);

    assert_everyone_saw_everything(&talkers);
    assert_never_announced(&talkers, &["Alice", "Bob", "Carol", "Dave"]);
    for moved in &talkers[2..] {
        assert!(
            !moved.client.rejoined(),
            "{} joined again as new",
            moved.name()
        );
    }
    for addr in &cluster.addrs() {
        let names = block_on(participants_of(addr)).expect("ListParticipants");
        assert_eq!(
            names,
            ["Alice", "Bob", "Carol", "Dave"],
            "participants known to {addr}: each once"
        );
    }
}

/// A node delivers a message to its own participants as soon as it stamps
/// it; if it dies before any other node holds the message, the sender's
/// retry (same publish id) on another node must not make the sender see the
/// message a second time. The link from the sender's node is slowed (a
/// test-only fault knob) so that the node dies in exactly that window.
#[test]
fn a_message_seen_just_before_its_node_died_is_not_seen_again_after_the_retry() {
    // The delay also holds up the slowed link's heartbeats, so the failure
    // timeout is well above it.
    let mut cluster = Cluster::new(&["--heartbeat-ms", "200", "--failure-timeout-ms", "2500"]);
    let steady = cluster.spawn_node(None, &[]);
    let steady_addr = cluster.addr(steady);
    let delay = format!("{steady_addr}=1500");
    let doomed = cluster.spawn_node(Some(&steady_addr), &["--fault-link-delay", &delay]);
    let doomed_addr = cluster.addr(doomed);
    wait_members(&[&steady_addr, &doomed_addr], &[&steady_addr, &doomed_addr]);
    let mut clients = spawn_participants(&cluster, &[(steady, "Alice"), (doomed, "Bob")]);

    clients[1].say("hello once");
    // Bob's node delivered it to him; its copy for the other node is still
    // held back by the slow link, so the publish is not acknowledged yet.
    clients[1].wait_for_message("Bob", "hello once");
    cluster.nodes[doomed].child.kill();
    clients[1].wait_moved_from(&doomed_addr);
    clients[1].say("after the move");

    for client in &clients {
        client.wait_for_message("Bob", "after the move");
        let copies: Vec<EventLine> = client
            .events()
            .into_iter()
            .filter(|e| e.is_message("Bob", "hello once"))
            .collect();
        assert_eq!(
            copies.len(),
            1,
            "{} printed Bob's message {} times: {copies:?}",
            client.name,
            copies.len()
        );
    }
}

#[test]
fn nodes_killed_one_after_another_until_one_is_left_the_chat_goes_on() {
    let mut cluster = Cluster::start(3, &flags("10000"));
    let addrs = cluster.addrs();
    let mut talkers = talkers(spawn_participants(
        &cluster,
        &[(0, "Alice"), (1, "Bob"), (2, "Carol")],
    ));

    publish_rounds(&mut talkers, 5);
    cluster.nodes[2].child.kill();
    talkers[2].client.wait_moved_from(&addrs[2]);
    wait_members(&[&addrs[0], &addrs[1]], &[&addrs[0], &addrs[1]]);
    publish_rounds(&mut talkers, 5);

    cluster.nodes[1].child.kill();
    talkers[1].client.wait_moved_from(&addrs[1]);
    wait_members(&[&addrs[0]], &[&addrs[0]]);
    publish_rounds(&mut talkers, 5);

    assert_everyone_saw_everything(&talkers);
    assert_never_announced(&talkers, &["Alice", "Bob", "Carol"]);
    let names = block_on(participants_of(&addrs[0])).expect("ListParticipants");
    assert_eq!(names, ["Alice", "Bob", "Carol"]);
    leave_all(&mut talkers);
}

#[test]
fn a_participant_that_resumes_within_grace_is_never_announced() {
    let mut cluster = Cluster::start(2, &flags("1500"));
    let dead = cluster.addr(1);
    let mut clients = spawn_participants(&cluster, &[(0, "Alice"), (1, "Carol"), (1, "Dave")]);
    // Dave's client is frozen and cannot resume: his leave, once the grace
    // period is over, shows that Carol's would have come by then too.
    signal(&clients[2].child, "STOP");
    cluster.nodes[1].child.kill();
    clients[1].wait_moved_from(&dead);

    for client in &clients[..2] {
        client.wait_for_event("Dave's leave", |e| {
            e.left().is_some_and(|(n, _)| n == "Dave")
        });
    }
    clients[1].say("still Carol");
    for client in &clients[..2] {
        client.wait_for_message("Carol", "still Carol");
        assert!(
            lefts_of(client, "Carol").is_empty(),
            "{} printed Carol as left",
            client.name
        );
        assert_eq!(joins_of(client, "Carol").len(), 1, "{}", client.name);
        assert_eq!(lefts_of(client, "Dave").len(), 1, "{}", client.name);
    }
    assert!(!clients[1].rejoined(), "Carol joined again as new");
    let names = block_on(participants_of(&cluster.addr(0))).expect("ListParticipants");
    assert_eq!(names, ["Alice", "Carol"]);
}

#[test]
fn a_participant_gone_past_grace_is_announced_left_exactly_once() {
    let mut cluster = Cluster::start(3, &flags("1000"));
    let mut clients = spawn_participants(
        &cluster,
        &[(0, "Alice"), (1, "Bob"), (1, "Dave"), (2, "Erin")],
    );
    // Two ways to be gone: Dave's client process dies while his node lives;
    // Erin's node dies while her client is frozen.
    clients[2].child.kill();
    signal(&clients[3].child, "STOP");
    cluster.nodes[2].child.kill();

    let [alice, bob, ..] = &mut clients[..] else {
        unreachable!()
    };
    assert_left_once(&mut [alice, bob], &["Dave", "Erin"], 0);
    for addr in [cluster.addr(0), cluster.addr(1)] {
        let names = block_on(participants_of(&addr)).expect("ListParticipants");
        assert_eq!(names, ["Alice", "Bob"], "participants known to {addr}");
    }
}

// ---------------------------------------------------------------------------
// The protocol, driven directly against in-process nodes
// ---------------------------------------------------------------------------

async fn connect(addr: &str) -> ChittyChatClient<Channel> {
    within(
        "a connection",
        ChittyChatClient::connect(format!("http://{addr}")),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// Sends `request` as a Join and returns the Welcome and the stream.
async fn raw_join(addr: &str, request: JoinRequest) -> (Welcome, Streaming<JoinFrame>) {
    let mut client = connect(addr).await;
    let mut stream = within("Join", client.join(request))
        .await
        .unwrap_or_else(|s| panic!("Join on {addr} refused: {s}"))
        .into_inner();
    match next_frame(&mut stream).await {
        join_frame::Frame::Welcome(welcome) => (welcome, stream),
        other => panic!("expected a Welcome first, got {other:?}"),
    }
}

async fn next_frame(stream: &mut Streaming<JoinFrame>) -> join_frame::Frame {
    within("the next frame", stream.message())
        .await
        .expect("the session stream failed")
        .expect("the session stream ended")
        .frame
        .expect("a frame with content")
}

/// Reads frames until an event matches `pred`; returns every frame read,
/// server lists left out.
async fn frames_until(
    stream: &mut Streaming<JoinFrame>,
    pred: impl Fn(&Event) -> bool,
) -> Vec<join_frame::Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = next_frame(stream).await;
        let done = matches!(&frame, join_frame::Frame::Events(b) if b.events.iter().any(&pred));
        if !matches!(frame, join_frame::Frame::Servers(_)) {
            frames.push(frame);
        }
        if done {
            return frames;
        }
    }
}

fn events_of(frames: &[join_frame::Frame]) -> Vec<&Event> {
    frames
        .iter()
        .filter_map(|f| match f {
            join_frame::Frame::Events(batch) => Some(&batch.events),
            _ => None,
        })
        .flatten()
        .collect()
}

fn is_message(event: &Event, text: &str) -> bool {
    event.kind() == EventKind::Message && event.text == text
}

/// What `seen` covers: the highest sequence number per origin.
fn seen_marks(seen: &[Seen]) -> Vec<SeqMark> {
    let mut marks: Vec<SeqMark> = Vec::new();
    for s in seen {
        let Some(id) = &s.event.id else { continue };
        match marks.iter_mut().find(|m| m.origin == id.origin) {
            Some(mark) => mark.seq = mark.seq.max(id.seq),
            None => marks.push(SeqMark {
                origin: id.origin.clone(),
                seq: id.seq,
            }),
        }
    }
    marks
}

async fn publish(
    addr: &str,
    token: &str,
    text: &str,
    publish_id: &str,
) -> Result<PublishReply, tonic::Status> {
    let mut client = connect(addr).await;
    within(
        "Publish",
        client.publish(PublishRequest {
            session_token: token.to_string(),
            text: text.to_string(),
            lamport: 1,
            publish_id: publish_id.to_string(),
        }),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_beyond_history_gets_a_gap_notice() {
    const HISTORY: usize = 4;
    const MESSAGES: usize = 10;
    let server = start_server_with(|c| c.limits.history_events = HISTORY).await;
    let (welcome, mut stream) = raw_join(
        &server.addr,
        JoinRequest {
            name: "Alice".into(),
            lamport: 1,
            resume: None,
            rejoin: None,
            recent: 0,
        },
    )
    .await;
    let frames = frames_until(&mut stream, |e| e.kind() == EventKind::Joined).await;
    let joined = events_of(&frames)[0].id.clone().expect("an event id");
    // Alice's connection breaks without a Leave; she has seen up to her join.
    drop(stream);

    let mut bob = join(&server.addr, "Bob").await;
    for i in 1..=MESSAGES {
        bob.say(&format!("m{i}")).await;
    }
    let last = format!("m{MESSAGES}");
    bob.wait_for("the last message", |s| s.is_message("Bob", &last))
        .await;

    let (resumed, mut stream) = raw_join(
        &server.addr,
        JoinRequest {
            name: "Alice".into(),
            lamport: 2,
            resume: Some(Resume {
                participant_id: welcome.participant_id.clone(),
                session_token: welcome.session_token.clone(),
                seen: vec![SeqMark {
                    origin: joined.origin.clone(),
                    seq: joined.seq,
                }],
                unanswered_at: Vec::new(),
                known_nodes: Vec::new(),
            }),
            rejoin: None,
            recent: 0,
        },
    )
    .await;
    assert!(resumed.resumed, "the Welcome says the session was resumed");
    assert_eq!(resumed.participant_id, welcome.participant_id);
    let frames = frames_until(&mut stream, |e| is_message(e, &last)).await;

    // First the gap notice, then what history still holds, nothing else.
    let join_frame::Frame::Gap(gap) = &frames[0] else {
        panic!("expected a Gap frame first, got {frames:#?}");
    };
    assert!(!gap.reason.is_empty(), "the gap says why");
    assert_eq!(gap.ranges.len(), 1, "{gap:?}");
    let range = &gap.ranges[0];
    assert_eq!(range.origin, joined.origin, "{gap:?}");
    assert_eq!(
        range.from_seq,
        joined.seq + 1,
        "missed from just after her join"
    );
    assert!(range.to_seq > range.from_seq, "{gap:?}");
    let replayed = events_of(&frames[1..]);
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|e| e.id.as_ref().expect("an event id").seq)
        .collect();
    assert!(
        seqs.first().is_some_and(|first| *first >= range.to_seq)
            && seqs.windows(2).all(|w| w[0] < w[1]),
        "replayed after the gap, in order: {seqs:?} (gap {range:?})"
    );
    assert!(replayed.len() <= HISTORY, "{replayed:#?}");
    let texts: Vec<&str> = replayed.iter().map(|e| e.text.as_str()).collect();
    let tail: Vec<String> = (MESSAGES + 1 - texts.len()..=MESSAGES)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(texts, tail, "the most recent messages are replayed");

    // Within the grace period nobody was told she left or joined again.
    bob.say("marker").await;
    bob.wait_for("the marker", |s| s.is_message("Bob", "marker"))
        .await;
    assert!(
        !bob.seen.iter().any(|s| s.event.participant_name == "Alice"
            && matches!(s.kind(), EventKind::Left | EventKind::Joined)),
        "Bob saw Alice's resume announced:\n{}",
        describe(&bob.seen)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_applied_once() {
    let fast = |c: &mut chitty::node::NodeConfig| {
        c.heartbeat = Duration::from_millis(200);
        c.failure_timeout = Duration::from_millis(1000);
    };
    let first = start_server_with(fast).await;
    let boot = first.addr.clone();
    let second = start_server_with(|c| {
        fast(c);
        c.boot = vec![boot];
    })
    .await;
    let both = [first.addr.as_str(), second.addr.as_str()];
    converged(&both, &both).await;

    let mut alice = join(&first.addr, "Alice").await;
    alice.wait_own_join().await;
    let mut carol = join(&first.addr, "Carol").await;
    carol.wait_own_join().await;
    let mut bob = join(&second.addr, "Bob").await;
    bob.wait_own_join().await;
    alice.wait_for("Bob's join", |s| s.is_joined("Bob")).await;
    let token = alice.session.welcome().session_token.clone();
    let publish_id = uuid::Uuid::new_v4().to_string();

    // The same publish id twice on the same node.
    let original = publish(&first.addr, &token, "only once", &publish_id)
        .await
        .expect("the first publish");
    assert!(!original.duplicate);
    let retry = publish(&first.addr, &token, "only once", &publish_id)
        .await
        .expect("the retry on the same node");
    assert!(retry.duplicate, "a retry is answered as a duplicate");
    assert_eq!(
        (retry.lamport, &retry.id),
        (original.lamport, &original.id),
        "with the original event's timestamp and id"
    );

    // Alice moves to the other node (as after a failover) and retries there.
    alice
        .wait_for("her message", |s| s.is_message("Alice", "only once"))
        .await;
    let seen = seen_marks(&alice.seen);
    let (welcome, mut moved) = raw_join(
        &second.addr,
        JoinRequest {
            name: "Alice".into(),
            lamport: alice.session.lamport() + 1,
            resume: Some(Resume {
                participant_id: alice.session.participant_id().to_string(),
                session_token: token.clone(),
                seen,
                unanswered_at: Vec::new(),
                known_nodes: Vec::new(),
            }),
            rejoin: None,
            recent: 0,
        },
    )
    .await;
    assert!(welcome.resumed);
    let retry = publish(&second.addr, &token, "only once", &publish_id)
        .await
        .expect("the retry on another node");
    assert!(
        retry.duplicate,
        "a retry on another node is a duplicate too"
    );
    assert_eq!(
        (retry.lamport, &retry.id),
        (original.lamport, &original.id),
        "with the original event's timestamp and id"
    );
    publish(&second.addr, &token, "after the retries", "")
        .await
        .expect("a later publish");

    // One event for everyone, on both nodes, Alice's new session included.
    let count = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.is_message("Alice", "only once"))
            .count()
    };
    for observer in [&mut bob, &mut carol] {
        observer
            .wait_for("the later message", |s| {
                s.is_message("Alice", "after the retries")
            })
            .await;
        assert_eq!(
            count(&observer.seen),
            1,
            "{} received:\n{}",
            observer.name,
            describe(&observer.seen)
        );
    }
    let frames = frames_until(&mut moved, |e| is_message(e, "after the retries")).await;
    let copies = events_of(&frames)
        .into_iter()
        .filter(|e| is_message(e, "only once"))
        .count()
        + count(&alice.seen);
    assert_eq!(copies, 1, "Alice received the message {copies} times");
}

// ---------------------------------------------------------------------------
// Seeded random chaos
// ---------------------------------------------------------------------------

/// Steps of the random schedule.
const CHAOS_STEPS: usize = 20;
/// Seed used when `CHITTY_CHAOS_SEED` is not set.
const DEFAULT_CHAOS_SEED: u64 = 20_261_121;
/// Most clients alive at once.
const CHAOS_CLIENTS: usize = 6;
/// Pause between steps (pacing of the schedule).
const CHAOS_PACE: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, Copy, PartialEq)]
enum NodeState {
    Running,
    /// SIGSTOPped; the others will take it for unreachable.
    Paused,
    /// Killed.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ClientState {
    Alive,
    /// Its input was closed: it publishes what it was given, then leaves.
    Leaving,
    Killed,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    /// Only publish this step.
    Quiet,
    JoinClient,
    LeaveClient,
    KillClient,
    KillNode,
    PauseNode,
    ContinueNode,
    RestartNode,
}

struct ChaosClient {
    talker: Talker,
    state: ClientState,
    /// Joined before anything happened (the participants that may have
    /// been connected throughout).
    from_start: bool,
}

/// The cluster, the clients and the model of what the schedule did to them.
struct Chaos {
    seed: u64,
    rng: XorShift,
    cluster: Cluster,
    nodes: Vec<NodeState>,
    clients: Vec<ChaosClient>,
    /// What happened, step by step, for failure messages.
    history: Vec<String>,
}

/// Prints the seed when the test fails anywhere, also inside a helper.
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chaos test failed with seed {0}; replay with CHITTY_CHAOS_SEED={0}",
                self.0
            );
        }
    }
}

impl Chaos {
    fn start(seed: u64) -> Self {
        let cluster = Cluster::start(3, &flags("15000"));
        // Each client is given every address (its own node's first), so
        // that it can always find a live node: the schedule keeps one
        // running, and a restarted node comes back at its old address.
        let addrs = cluster.addrs();
        let mut clients: Vec<ChaosClient> = Vec::new();
        for (i, own) in addrs.iter().enumerate() {
            let mut servers = vec![own.clone()];
            servers.extend(addrs.iter().filter(|a| *a != own).cloned());
            let client = spawn_client(&servers.join(","), &format!("C{i}"));
            client.wait_joined();
            clients.push(ChaosClient {
                talker: Talker::new(client),
                state: ClientState::Alive,
                from_start: true,
            });
        }
        for client in &clients {
            client.talker.client.wait_for_event("the last join", |e| {
                e.joined().is_some_and(|(n, _)| n == "C2")
            });
        }
        Self {
            seed,
            rng: XorShift::new(seed),
            nodes: vec![NodeState::Running; 3],
            cluster,
            clients,
            history: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        println!(
            "seed {}: [{:.3}] {what}",
            self.seed,
            now.as_secs_f64() % 3600.0
        );
        self.history.push(what);
    }

    fn nodes_in(&self, state: NodeState) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i] == state)
            .collect()
    }

    fn alive_clients(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&i| self.clients[i].state == ClientState::Alive)
            .collect()
    }

    /// Clients the schedule may make leave or kill: all alive but `C0`, who
    /// stays to the end so that someone was connected throughout.
    fn expendable_clients(&self) -> Vec<usize> {
        self.alive_clients()
            .into_iter()
            .filter(|&i| i != 0)
            .collect()
    }

    fn running_addrs(&self) -> Vec<String> {
        self.nodes_in(NodeState::Running)
            .into_iter()
            .map(|i| self.cluster.addr(i))
            .collect()
    }

    /// The actions whose preconditions hold now.
    fn possible(&self) -> Vec<Action> {
        let running = self.nodes_in(NodeState::Running).len();
        let paused = self.nodes_in(NodeState::Paused).len();
        let alive = self.alive_clients().len();
        let mut actions = vec![Action::Quiet];
        if alive < CHAOS_CLIENTS {
            actions.push(Action::JoinClient);
        }
        if self.expendable_clients().len() > 1 {
            actions.push(Action::LeaveClient);
            actions.push(Action::KillClient);
        }
        if running >= 2 {
            actions.push(Action::KillNode);
            actions.push(Action::PauseNode);
        }
        if paused > 0 {
            actions.push(Action::ContinueNode);
        }
        if running + paused < self.nodes.len() {
            actions.push(Action::RestartNode);
        }
        actions
    }

    fn step(&mut self, step: usize) {
        for i in self.alive_clients() {
            let talker = &mut self.clients[i].talker;
            if let Err(e) = talker.try_say_next() {
                panic!("seed {}: step {step}: {e}", self.seed);
            }
        }
        let possible = self.possible();
        let action = *self.rng.pick(&possible);
        match action {
            Action::Quiet => self.note(format!("step {step}: publish only")),
            Action::JoinClient => {
                // The chosen running node first, then every address of the
                // cluster, as a user would configure a client.
                let first = self.rng.pick(&self.running_addrs()).clone();
                let mut servers = vec![first.clone()];
                servers.extend(self.cluster.addrs().into_iter().filter(|a| *a != first));
                let name = format!("C{}", self.clients.len());
                self.note(format!("step {step}: {name} joins at {}", servers[0]));
                let client = spawn_client(&servers.join(","), &name);
                client.wait_joined();
                self.clients.push(ChaosClient {
                    talker: Talker::new(client),
                    state: ClientState::Alive,
                    from_start: false,
                });
            }
            Action::LeaveClient => {
                let i = *self.rng.pick(&self.expendable_clients());
                self.note(format!("step {step}: C{i} leaves (end of input)"));
                self.clients[i].talker.client.close_stdin();
                self.clients[i].state = ClientState::Leaving;
            }
            Action::KillClient => {
                let i = *self.rng.pick(&self.expendable_clients());
                self.note(format!("step {step}: C{i}'s process is killed"));
                self.clients[i].talker.client.child.kill();
                self.clients[i].state = ClientState::Killed;
            }
            Action::KillNode => {
                let i = *self.rng.pick(&self.nodes_in(NodeState::Running));
                self.note(format!("step {step}: node {i} is killed"));
                self.cluster.nodes[i].child.kill();
                self.nodes[i] = NodeState::Gone;
            }
            Action::PauseNode => {
                let i = *self.rng.pick(&self.nodes_in(NodeState::Running));
                self.note(format!("step {step}: node {i} is paused"));
                signal(&self.cluster.nodes[i].child, "STOP");
                self.nodes[i] = NodeState::Paused;
            }
            Action::ContinueNode => {
                let i = *self.rng.pick(&self.nodes_in(NodeState::Paused));
                self.note(format!(
                    "step {step}: node {i} is continued once unreachable"
                ));
                self.continue_node(i);
            }
            Action::RestartNode => {
                let i = *self.rng.pick(&self.nodes_in(NodeState::Gone));
                let boot = self.rng.pick(&self.running_addrs()).clone();
                let addr = self.cluster.addr(i);
                self.note(format!(
                    "step {step}: node {i} restarts at {addr} and joins through {boot}"
                ));
                self.cluster.restart_node(i, &boot);
                self.nodes[i] = NodeState::Running;
                for other in self.running_addrs() {
                    poll(
                        &format!("{other} to list the restarted node {addr}"),
                        || {
                            let list = block_on(servers_of(&other))?;
                            if list.contains(&addr) {
                                Ok(())
                            } else {
                                Err(format!("it lists {list:?}"))
                            }
                        },
                    );
                }
            }
        }
    }

    /// Waits until the running nodes list paused node `i` as unreachable,
    /// wakes it up, and checks that it catches up and is a member again
    /// (listed by every running node, itself included), without exiting.
    fn continue_node(&mut self, i: usize) {
        let paused = self.cluster.addr(i);
        for addr in self.running_addrs() {
            poll(
                &format!("{addr} to take the paused node {paused} for unreachable"),
                || {
                    let list = block_on(servers_of(&addr))?;
                    if list.contains(&paused) {
                        Err(format!("it lists {list:?}"))
                    } else {
                        Ok(())
                    }
                },
            );
        }
        signal(&self.cluster.nodes[i].child, "CONT");
        self.nodes[i] = NodeState::Running;
        let running = self.running_addrs();
        for addr in &running {
            poll(&format!("{addr} to list the woken node {paused}"), || {
                let list = block_on(servers_of(addr))?;
                if running.iter().all(|a| list.contains(a)) {
                    Ok(())
                } else {
                    Err(format!("it lists {list:?}"))
                }
            });
        }
        let node = &mut self.cluster.nodes[i];
        if let Some(status) = node.child.wait_exit_within(Duration::ZERO) {
            panic!(
                "seed {}: node {i} woken after a pause past the failure timeout exited with \
                 {status}; its standard error:\n{}",
                self.seed,
                node.stderr.snapshot().join("\n")
            );
        }
    }

    /// Ends the chaos and checks the invariants on every recorded log.
    fn finish(mut self) {
        for i in self.nodes_in(NodeState::Paused) {
            self.note(format!("end: node {i} is continued once unreachable"));
            self.continue_node(i);
        }
        let seed = self.seed;
        let history = self.history.join("\n");
        let fail = |what: String| -> ! { panic!("seed {seed}: {what}\nschedule:\n{history}") };

        // Everyone alive says one last thing and hears everyone else's.
        let alive = self.alive_clients();
        for &i in &alive {
            if let Err(e) = self.clients[i].talker.try_say_next() {
                fail(e);
            }
        }
        for &observer in &alive {
            for &sender in &alive {
                let o = &self.clients[observer].talker;
                let s = &self.clients[sender].talker;
                let last = numbered(s.sent);
                let found = o.client.stdout.try_wait_until(
                    &format!("{}'s {last} at {}", s.name(), o.name()),
                    |lines| {
                        lines
                            .iter()
                            .filter_map(|l| EventLine::parse(l))
                            .find(|e| e.is_message(s.name(), &last))
                    },
                );
                if let Err(e) = found {
                    fail(format!(
                        "{e}\nstandard error of {}:\n{}",
                        o.name(),
                        o.client.stderr.snapshot().join("\n")
                    ));
                }
            }
        }
        for client in &mut self.clients {
            if client.state == ClientState::Leaving {
                let status = client.talker.client.child.wait_exit();
                if !status.success() {
                    fail(format!(
                        "{} exited with {status} after its input ended; standard error:\n{}",
                        client.talker.name(),
                        client.talker.client.stderr.snapshot().join("\n")
                    ));
                }
            }
        }

        // Every recorded log: nothing twice, each sender's messages in order.
        let transcripts: Vec<(&str, Vec<EventLine>)> = self
            .clients
            .iter()
            .map(|c| (c.talker.name(), c.talker.client.events()))
            .collect();
        for (who, events) in &transcripts {
            let faults = transcript_faults(events);
            if !faults.is_empty() {
                fail(format!("{who}'s log: {faults:#?}"));
            }
        }
        let disagreements = timestamp_disagreements(&transcripts);
        if !disagreements.is_empty() {
            fail(format!("{disagreements:#?}"));
        }

        // Every acknowledged publish reached everyone connected throughout.
        // Acknowledged: typed into a client still alive (or that left
        // cleanly) that never reported a message as not sent or given up.
        let acknowledged: Vec<&Talker> = self
            .clients
            .iter()
            .filter(|c| c.state != ClientState::Killed)
            .map(|c| &c.talker)
            .filter(|t| {
                let errors = t.publish_errors();
                if !errors.is_empty() {
                    println!("seed {seed}: {} reported {errors:?}", t.name());
                }
                errors.is_empty()
            })
            .collect();
        let throughout: Vec<&ChaosClient> = self
            .clients
            .iter()
            .filter(|c| {
                c.from_start && c.state == ClientState::Alive && !c.talker.client.rejoined()
            })
            .collect();
        if throughout.is_empty() {
            fail("nobody was connected throughout (C0 rejoined as new?)".into());
        }
        for observer in &throughout {
            let by_sender = numbers_by_sender(&observer.talker.client.events());
            for sender in &acknowledged {
                let expected: Vec<u64> = (1..=sender.sent).collect();
                let got = by_sender.get(sender.name()).cloned().unwrap_or_default();
                if got != expected {
                    fail(format!(
                        "{} printed {:?} of {}'s messages, expected #1..=#{}",
                        observer.talker.name(),
                        got,
                        sender.name(),
                        sender.sent
                    ));
                }
            }
        }
        println!(
            "seed {seed}: checked {} logs; {} senders acknowledged; {} connected throughout",
            transcripts.len(),
            acknowledged.len(),
            throughout.len()
        );
    }
}

#[test]
fn seeded_random_chaos_keeps_the_invariants() {
    let seed = std::env::var("CHITTY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_CHAOS_SEED);
    println!("chaos seed {seed} (replay with CHITTY_CHAOS_SEED={seed})");
    let _report = SeedOnPanic(seed);
    let started = Instant::now();
    let mut chaos = Chaos::start(seed);
    for step in 0..CHAOS_STEPS {
        chaos.step(step);
        std::thread::sleep(CHAOS_PACE);
    }
    chaos.finish();
    println!("seed {seed}: chaos done in {:?}", started.elapsed());
}
