//! A participant that never reads its stream must not hold up anyone else:
//! the node keeps a bounded log of what it has for its participants,
//! disconnects one that falls further behind (with `RESOURCE_EXHAUSTED` and
//! a reason), and announces it as left.
//!
//! The nodes here keep a small log (in events, or in bytes), so the stalled
//! participant is cut off after a few hundred events rather than after many
//! thousands. The healthy readers are never more than [`AHEAD`] messages
//! behind the publisher, well within the log whatever the scheduling: the
//! tests are about the stalled one.

mod common;

use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::{EventKind, JoinFrame, JoinRequest, PublishRequest, join_frame};
use common::*;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Endpoint;

/// Messages published while the stalled participant is not reading.
const MESSAGES: usize = 5000;
/// The node's delivery log, in events (`--session-queue`).
const QUEUE: usize = 256;
/// The node's delivery log in bytes (`--session-queue-bytes`), in the test
/// where bytes are the limit: about 500 of these messages.
const QUEUE_BYTES: usize = 128 * 1024;
/// How far the publisher may run ahead of the healthy readers.
const AHEAD: usize = 192;

/// What a healthy reader saw.
struct Reading {
    /// The numbers of the messages received, in order.
    numbers: Vec<usize>,
    /// Every "left" event received, with the position (in messages) it came at.
    lefts: Vec<(String, u64, usize)>,
    last_message_lamport: u64,
}

/// Reads a healthy participant's events, reporting how many messages have
/// arrived, until all of them and the stalled one's leave have.
async fn read_all(mut member: Member, progress: watch::Sender<usize>) -> Reading {
    let mut reading = Reading {
        numbers: Vec::new(),
        lefts: Vec::new(),
        last_message_lamport: 0,
    };
    while reading.numbers.len() < MESSAGES || reading.lefts.is_empty() {
        let seen = member.next_event().await;
        match seen.kind() {
            EventKind::Message => {
                let number = seen.event.text[..4].parse().expect("numbered message");
                reading.numbers.push(number);
                reading.last_message_lamport = seen.event.lamport;
                let _ = progress.send(reading.numbers.len());
            }
            EventKind::Left => reading.lefts.push((
                seen.event.participant_name.clone(),
                seen.event.lamport,
                reading.numbers.len(),
            )),
            _ => {}
        }
        // Keep memory flat: the checks need only the summary above.
        member.seen.clear();
    }
    reading
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_reads_does_not_hold_up_the_others_and_is_announced_as_left() {
    one_stalled_among_readers(|config| config.session_queue = QUEUE).await;
}

/// The same with the log bounded by bytes: the stalled participant is cut
/// off long before it is `--session-queue` events behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_further_behind_than_the_byte_budget_is_cut_off_and_nobody_else() {
    let events = one_stalled_among_readers(|config| {
        config.session_queue = 4 * MESSAGES;
        config.session_queue_bytes = QUEUE_BYTES;
    })
    .await;
    assert!(
        events < MESSAGES / 4,
        "cut off by bytes, after {events} events"
    );
}

/// Alice and Bob read, the stalled participant never does, and Alice
/// publishes [`MESSAGES`] at full speed on a node set up by `configure`:
/// Alice and Bob receive everything, the stalled one is cut off and
/// announced as left. Returns how many events the stalled one got first.
async fn one_stalled_among_readers(configure: impl FnOnce(&mut chitty::node::NodeConfig)) -> usize {
    // Alice publishes at full speed: no publish rate limit.
    let server = start_server_with(|config| {
        configure(config);
        config.publish_rate = None;
    })
    .await;
    let mut alice = join(&server.addr, "Alice").await;
    let mut bob = join(&server.addr, "Bob").await;

    // The stalled participant has its own connection, with the standard
    // 64 KiB HTTP/2 windows, and never reads a single frame.
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut stalled_client = ChittyChatClient::new(channel);
    let mut stalled = stalled_client
        .join(JoinRequest {
            name: "Stalled".into(),
            lamport: 1,
            resume: None,
            rejoin: None,
            recent: 0,
        })
        .await
        .expect("the stalled participant joins")
        .into_inner();

    for member in [&mut alice, &mut bob] {
        member
            .wait_for("Stalled's join", |s| s.is_joined("Stalled"))
            .await;
    }

    let (alice_tx, alice_progress) = watch::channel(0);
    let (bob_tx, bob_progress) = watch::channel(0);
    // Alice publishes over a connection of its own rather than the one her
    // Join stream uses: the server does not set TCP_NODELAY on accepted
    // sockets, so a reply written right behind an event on the same
    // connection can wait for a delayed ACK (~40 ms), which would make 5000
    // sequential publishes take minutes. The stall under test is unaffected.
    let token = alice.session.welcome().session_token.clone();
    let mut publisher = chitty::client::connect(&server.addr)
        .await
        .expect("connect");
    let alice_reader = tokio::spawn(read_all(alice, alice_tx));
    let bob_reader = tokio::spawn(read_all(bob, bob_tx));

    let padding = "x".repeat(100);
    for i in 0..MESSAGES {
        for progress in [&alice_progress, &bob_progress] {
            let mut progress = progress.clone();
            within(
                "a healthy reader to keep up",
                progress.wait_for(|&received| received + AHEAD > i),
            )
            .await
            .expect("the reader is still running");
        }
        let request = PublishRequest {
            session_token: token.clone(),
            text: format!("{i:04} {padding}"),
            lamport: 0,
            publish_id: String::new(),
        };
        within("a publish", publisher.publish(request))
            .await
            .unwrap_or_else(|e| panic!("publish {i} failed: {e}"));
    }

    let alice = within("Alice's reader", alice_reader)
        .await
        .expect("reader");
    let bob = within("Bob's reader", bob_reader).await.expect("reader");
    let all: Vec<usize> = (0..MESSAGES).collect();
    for (name, reading) in [("Alice", &alice), ("Bob", &bob)] {
        assert!(
            reading.numbers == all,
            "{name} received every message once, in order"
        );
        assert_eq!(
            reading.lefts.len(),
            1,
            "{name}: one participant left, once: {:?}",
            reading.lefts
        );
        let (who, lamport, at) = &reading.lefts[0];
        assert_eq!(who, "Stalled");
        assert!(
            *at < MESSAGES && *lamport < reading.last_message_lamport,
            "{name}: the stalled participant was dropped while the chat went on \
             (after {at} of {MESSAGES} messages)"
        );
    }
    assert_eq!(alice.lefts, bob.lefts, "both saw the same leave");

    // When the stalled participant finally reads, it finds what was on its
    // way to it and then the reason it was disconnected.
    let mut events = 0;
    let status = loop {
        match within("the stalled stream", stalled.message()).await {
            Ok(Some(JoinFrame {
                frame: Some(join_frame::Frame::Events(batch)),
            })) => events += batch.events.len(),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stalled stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too slow"),
        "the reason is given: {:?}",
        status.message()
    );
    assert!(events < MESSAGES, "it was cut off, after {events} events");
    events
}

/// Stalled participants under a flood, for the flood test below.
const STALLED: usize = 20;
/// Messages of the flood.
const FLOOD: usize = 2000;
/// Every how many flood messages the normal-pace publisher sends one.
const PACE: usize = 20;

/// What a reader of the flood saw: per sender the numbers of its messages,
/// in order, and who was announced as left.
#[derive(Default)]
struct FloodReading {
    by_sender: std::collections::BTreeMap<String, Vec<usize>>,
    lefts: Vec<String>,
}

async fn read_flood(
    mut member: Member,
    expected: usize,
    progress: watch::Sender<usize>,
) -> FloodReading {
    let mut reading = FloodReading::default();
    let mut messages = 0;
    while messages < expected || reading.lefts.len() < STALLED {
        let seen = member.next_event().await;
        match seen.kind() {
            EventKind::Message => {
                let number = seen.event.text[..4].parse().expect("numbered message");
                reading
                    .by_sender
                    .entry(seen.event.participant_name.clone())
                    .or_default()
                    .push(number);
                messages += 1;
                let _ = progress.send(messages);
            }
            EventKind::Left => reading.lefts.push(seen.event.participant_name.clone()),
            _ => {}
        }
        member.seen.clear();
    }
    reading
}

/// A flood with many stalled participants open: the stalled ones are cut
/// off (once further behind than the node's delivery log keeps) and
/// announced as left; nobody who reads is cut off, and every reader receives every
/// message of the flooder and of a publisher at a normal pace, once, in
/// each sender's order. No timing is asserted: the latency is the
/// benchmark's (docs/bench.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_flood_stalled_readers_are_cut_off_and_nobody_else_loses_anything() {
    // Readers: Flooder, Pacer, Reader; plus the stalled ones.
    let server = start_server_with(|config| {
        config.session_queue = QUEUE;
        config.publish_rate = None;
    })
    .await;
    let flooder = join(&server.addr, "Flooder").await;
    let pacer = join(&server.addr, "Pacer").await;
    let mut reader = join(&server.addr, "Reader").await;

    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("endpoint")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .expect("connect");
        let stream = ChittyChatClient::new(channel)
            .join(JoinRequest {
                name: format!("Stalled{i}"),
                lamport: 1,
                resume: None,
                rejoin: None,
                recent: 0,
            })
            .await
            .expect("a stalled participant joins")
            .into_inner();
        stalled.push(stream);
    }
    let last = format!("Stalled{}", STALLED - 1);
    reader
        .wait_for("the last stalled join", |s| s.is_joined(&last))
        .await;

    let expected = FLOOD + FLOOD / PACE;
    let tokens = [
        flooder.session.welcome().session_token.clone(),
        pacer.session.welcome().session_token.clone(),
    ];
    let mut progress = Vec::new();
    let mut readers = Vec::new();
    for member in [flooder, pacer, reader] {
        let (tx, rx) = watch::channel(0);
        progress.push(rx);
        readers.push(tokio::spawn(read_flood(member, expected, tx)));
    }
    let mut publisher = chitty::client::connect(&server.addr)
        .await
        .expect("connect");
    let padding = "x".repeat(100);
    let mut sent = 0;
    for i in 0..FLOOD {
        let mut batch = vec![(0, i)];
        if i % PACE == PACE - 1 {
            batch.push((1, i / PACE));
        }
        for (who, number) in batch {
            // The readers stay within AHEAD of the publishers, well within
            // the log: only the stalled can be cut off.
            for progress in &progress {
                let mut progress = progress.clone();
                within(
                    "a reader to keep up",
                    progress.wait_for(|&received| received + AHEAD > sent),
                )
                .await
                .expect("the reader is still running");
            }
            let request = PublishRequest {
                session_token: tokens[who].clone(),
                text: format!("{number:04} {padding}"),
                lamport: 0,
                publish_id: String::new(),
            };
            within("a publish", publisher.publish(request))
                .await
                .unwrap_or_else(|e| panic!("publish {number} of {who} failed: {e}"));
            sent += 1;
        }
    }

    let mut names: Vec<String> = (0..STALLED).map(|i| format!("Stalled{i}")).collect();
    names.sort();
    for handle in readers {
        let mut reading = within("a reader", handle).await.expect("reader");
        assert_eq!(
            reading.by_sender.get("Flooder"),
            Some(&(0..FLOOD).collect::<Vec<_>>()),
            "every flood message, once, in order"
        );
        assert_eq!(
            reading.by_sender.get("Pacer"),
            Some(&(0..FLOOD / PACE).collect::<Vec<_>>()),
            "every message at a normal pace, once, in order"
        );
        reading.lefts.sort();
        assert_eq!(reading.lefts, names, "the stalled left, and nobody else");
    }
    for (i, mut stream) in stalled.into_iter().enumerate() {
        let status = loop {
            match within("a stalled stream", stream.message()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("Stalled{i}'s stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("too slow"), "{status:?}");
    }
    let live = common::cluster::participants_of(&server.addr)
        .await
        .expect("ListParticipants");
    assert_eq!(live, ["Flooder", "Pacer", "Reader"]);
}

/// Seen from the command line: while one `chitty client` process is paused
/// (SIGSTOP) and reads nothing, the others go on chatting; resumed, it
/// catches up on what it missed.
#[test]
fn a_paused_client_process_does_not_hold_up_the_others_and_catches_up_when_resumed() {
    const COUNT: usize = 200;
    let server = spawn_server(&[]);
    let mut alice = spawn_client(&server.addr, "Alice");
    alice.wait_joined();
    let bob = spawn_client(&server.addr, "Bob");
    bob.wait_joined();
    let paused = spawn_client(&server.addr, "Paused");
    paused.wait_joined();
    for client in [&alice, &bob] {
        client.wait_for_event("Paused's join", |e| {
            e.joined().is_some_and(|(n, _)| n == "Paused")
        });
    }

    signal(&paused.child, "STOP");
    for i in 0..COUNT {
        alice.say(&format!("message {i}"));
        if i % 20 == 19 {
            bob.wait_for_message("Alice", &format!("message {i}"));
        }
    }
    for client in [&alice, &bob] {
        client.wait_for_message("Alice", &format!("message {}", COUNT - 1));
    }
    assert!(
        !paused
            .stdout
            .snapshot()
            .iter()
            .any(|l| l.contains("message 0")),
        "the paused client really printed nothing while paused"
    );

    signal(&paused.child, "CONT");
    paused.wait_for_message("Alice", &format!("message {}", COUNT - 1));
    let received: Vec<String> = paused
        .events()
        .iter()
        .filter_map(|e| e.message().map(|(_, text)| text.to_string()))
        .collect();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("message {i}")).collect();
    assert_eq!(received, expected, "it caught up on everything, in order");
}

/// Sends a signal to a process with the `kill` command.
fn signal(child: &ChildGuard, name: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} failed");
}
