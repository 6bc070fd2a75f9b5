//! The system requirements R1–R8 of the Chitty-Chat assignment, each checked
//! by what the participants actually received. Participants are driven through
//! the client library against a node served in-process on a loopback port,
//! except for R4, which is about the `chitty client` log file.
//!
//! Numbering follows the assignment text in `002_…` (R1: a gRPC service; R2:
//! publish a valid message; R3: broadcast with the timestamp; R4: log received
//! messages; R5/R6: join and the "joined" message; R7/R8: leave and the "left"
//! message). The other edition (`003_…`) splits R1/R2 differently but asks
//! for the same things.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chitty::proto::{EventKind, ListParticipantsRequest};
use common::*;

/// R1: the service is reached over gRPC; the API hands each participant an
/// identity, and every event carries an id, a kind, the participant's name
/// and id, and a Lamport timestamp.
#[tokio::test]
async fn r1_participants_use_the_grpc_api_and_events_carry_id_kind_name_and_lamport() {
    let server = start_server().await;
    let mut alice = join(&server.addr, "Alice").await;
    let welcome = alice.session.welcome().clone();
    uuid::Uuid::parse_str(&welcome.participant_id).expect("the participant id is a UUID");
    assert!(
        !welcome.session_token.is_empty(),
        "Welcome holds a session token"
    );

    let joined = alice.wait_own_join().await;
    let event = &joined.event;
    assert_eq!(event.kind(), EventKind::Joined);
    assert_eq!(event.participant_name, "Alice");
    assert_eq!(event.participant_id, welcome.participant_id);
    assert!(event.lamport > 0, "the event carries a Lamport timestamp");
    let id = event.id.as_ref().expect("the event has an id");
    assert!(id.origin.is_some(), "the event id names the node");
    assert!(id.seq > 0);

    let (stamped, _) = alice.say("hello over gRPC").await;
    let message = alice
        .wait_for("her message", |s| s.is_message("Alice", "hello over gRPC"))
        .await;
    assert_eq!(message.event.lamport, stamped);
    assert_eq!(message.event.participant_id, welcome.participant_id);
    assert_ne!(message.event.id, event.id, "every event has its own id");

    let mut grpc = chitty::client::connect(&server.addr)
        .await
        .expect("connect");
    let listed = grpc
        .list_participants(ListParticipantsRequest {})
        .await
        .expect("ListParticipants")
        .into_inner()
        .participants;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "Alice");
    assert_eq!(listed[0].id, welcome.participant_id);
}

/// R2: a participant can publish a valid message (UTF-8, up to 128
/// characters) at any time: right after joining, before reading anything,
/// and while others are publishing too.
#[tokio::test]
async fn r2_a_participant_can_publish_a_valid_message_at_any_time() {
    let server = start_server().await;
    let alice = join(&server.addr, "Alice").await;
    // Before reading a single event of her own stream.
    alice.say("first thing I do").await;

    let mut bob = join(&server.addr, "Bob").await;
    bob.wait_own_join().await;
    // 128 characters with the "A " or "B " prefix added below.
    let longest = "ü".repeat(126);
    let texts = ["çà et là: ✓", "日本語のメッセージ", longest.as_str(), " "];
    // Both publish at the same time.
    let alice_says = async {
        for text in texts {
            alice.say(&format!("A {text}")).await;
        }
    };
    let bob_says = async {
        for text in texts {
            bob.session
                .publish(&format!("B {text}"))
                .await
                .expect("Bob publishes");
        }
    };
    tokio::join!(alice_says, bob_says);

    // Bob receives every message exactly as it was published.
    for sender in ["A", "B"] {
        for text in texts {
            let expected = format!("{sender} {text}");
            let from = if sender == "A" { "Alice" } else { "Bob" };
            bob.ensure_seen(&expected, |s| s.is_message(from, &expected))
                .await;
        }
    }
}

/// R3: every published message is broadcast, with its Lamport timestamp, to
/// every participant, the sender included; everyone sees the same event.
#[tokio::test]
async fn r3_every_message_reaches_every_participant_including_the_sender_with_its_timestamp() {
    let server = start_server().await;
    let mut members = Vec::new();
    for name in ["Alice", "Bob", "Carol"] {
        let mut member = join(&server.addr, name).await;
        member.wait_own_join().await;
        members.push(member);
    }
    // Everyone has seen everyone join before the messages start.
    for member in &mut members {
        member
            .ensure_seen("Carol's join", |s| s.is_joined("Carol"))
            .await;
    }

    let mut published = Vec::new();
    for member in &members {
        let text = format!("hello from {}", member.name);
        let (lamport, _) = member.say(&text).await;
        published.push((member.name.clone(), text, lamport));
    }

    let mut first_view: Option<Vec<_>> = None;
    for member in &mut members {
        let mut view = Vec::new();
        for (sender, text, lamport) in &published {
            let seen = member
                .wait_for(&format!("{sender}: {text}"), |s| s.is_message(sender, text))
                .await;
            assert_eq!(
                seen.event.lamport, *lamport,
                "{} received {text:?} with the timestamp the sender was told",
                member.name
            );
            view.push(seen.event.clone());
        }
        match &first_view {
            None => first_view = Some(view),
            Some(first) => assert_eq!(
                first, &view,
                "{} received the same events as the first participant",
                member.name
            ),
        }
    }
}

/// R4: when a `chitty client` receives a broadcast, it writes the message and
/// its current Lamport time to its log (and prints both).
#[test]
fn r4_the_client_logs_each_received_message_with_its_own_lamport_time() {
    let server = spawn_server(&[]);
    let mut alice = spawn_client(&server.addr, "Alice");
    alice.wait_joined();
    let mut bob = spawn_client(&server.addr, "Bob");
    bob.wait_joined();
    alice.say("logged by everyone");
    bob.say("me too");
    for client in [&alice, &bob] {
        client.wait_for_message("Alice", "logged by everyone");
        client.wait_for_message("Bob", "me too");
    }
    alice.close_stdin();
    bob.close_stdin();
    assert!(alice.child.wait_exit().success());
    assert!(bob.child.wait_exit().success());

    for client in [&alice, &bob] {
        let log = client.log_lines();
        let received: Vec<_> = log
            .iter()
            .filter(|l| l.contains("received broadcast"))
            .collect();
        let printed = client.events();
        assert!(printed.len() >= 3, "{}: {printed:?}", client.name);
        for event in &printed {
            let text = match event.message() {
                Some((_, text)) => text.to_string(),
                None => event.body.clone(),
            };
            let logged = received.iter().any(|l| {
                log_field(l, "lamport") == Some(event.lamport)
                    && log_field(l, "local") == Some(event.local)
                    && l.contains(&format!("text={text}"))
            });
            assert!(
                logged,
                "{} printed {event:?} but its log has no matching line:\n{}",
                client.name,
                log.join("\n")
            );
            assert!(
                event.local > event.lamport,
                "the local time is taken after receiving"
            );
        }
    }
}

/// R5: participants can join at any time, also while others are chatting;
/// a newcomer receives everything published after its join.
#[tokio::test]
async fn r5_a_participant_can_join_while_others_are_chatting() {
    let server = start_server().await;
    let mut alice = join(&server.addr, "Alice").await;
    alice.wait_own_join().await;
    alice.say("before Carol").await;

    let mut carol = join(&server.addr, "Carol").await;
    alice.say("after Carol").await;

    let first = carol.next_event().await;
    assert!(
        first.is_joined("Carol"),
        "Carol's first event is her own join, got {first:?}"
    );
    carol
        .wait_for("the message sent after her join", |s| {
            s.is_message("Alice", "after Carol")
        })
        .await;

    // Alice saw her own message, then Carol join, then her next message.
    alice
        .wait_for("before Carol", |s| s.is_message("Alice", "before Carol"))
        .await;
    let next = alice.next_event().await;
    assert!(next.is_joined("Carol"), "{next:?}");
    alice.assert_next_is_message("Alice", "after Carol").await;

    // A name is free again once its holder left: join at any time means also
    // coming back.
    carol.session.leave().await.expect("Carol leaves");
    alice
        .wait_for("Carol's leave", |s| s.is_left("Carol"))
        .await;
    let mut carol_again = join(&server.addr, "Carol").await;
    carol_again.wait_own_join().await;
}

/// R6: "Participant X joined Chitty-Chat at Lamport time L" reaches every
/// participant, X included, once, with L the event's timestamp.
#[tokio::test]
async fn r6_everyone_including_the_newcomer_receives_participant_x_joined_at_lamport_time_l() {
    let server = start_server().await;
    let mut alice = join(&server.addr, "Alice").await;
    let mut bob = join(&server.addr, "Bob").await;
    // Alice sees both joins; Bob's first event is his own join.
    alice.wait_own_join().await;
    let bob_first = bob.next_event().await;
    assert!(bob_first.is_joined("Bob"), "{bob_first:?}");

    let mut carol = join(&server.addr, "Carol").await;
    let carol_first = carol.next_event().await;
    assert!(
        carol_first.is_joined("Carol"),
        "the newcomer receives its own join first, got {carol_first:?}"
    );
    let lamport = carol_first.event.lamport;
    assert_eq!(
        carol_first.event.text,
        joined_text("Carol", lamport),
        "the exact wording, with L the event's timestamp"
    );

    for member in [&mut alice, &mut bob] {
        let seen = member
            .wait_for("Carol's join", |s| s.is_joined("Carol"))
            .await;
        assert_eq!(
            seen.event, carol_first.event,
            "{} saw the same event",
            member.name
        );
    }
    carol.say("marker").await;
    for member in [&mut alice, &mut bob, &mut carol] {
        member.assert_next_is_message("Carol", "marker").await;
        let joins = member.seen.iter().filter(|s| s.is_joined("Carol")).count();
        assert_eq!(joins, 1, "{} received Carol's join once", member.name);
    }
}

/// R7: participants can drop out at any time, by leaving or by just
/// disconnecting, and the chat goes on for the others.
#[tokio::test]
async fn r7_a_participant_can_drop_out_at_any_time_and_the_others_keep_chatting() {
    // A participant that vanishes may come back within a grace period before
    // it is announced as left; a short one keeps the test quick.
    let server = start_server_with(|c| c.limits.grace = Duration::from_millis(300)).await;
    let mut alice = join(&server.addr, "Alice").await;
    let bob = join(&server.addr, "Bob").await;
    let dave = join(&server.addr, "Dave").await;
    alice.wait_for("Dave's join", |s| s.is_joined("Dave")).await;

    // Bob leaves in the middle of a conversation.
    alice.say("one").await;
    bob.session.leave().await.expect("Bob leaves");
    alice.say("two").await;
    // Dave vanishes without a word: his connection is dropped.
    drop(dave);
    alice.wait_for("Dave's leave", |s| s.is_left("Dave")).await;
    alice.say("three").await;
    alice
        .wait_for("three", |s| s.is_message("Alice", "three"))
        .await;

    let order: Vec<String> = alice
        .seen
        .iter()
        .filter(|s| s.kind() != EventKind::Joined)
        .map(|s| match s.kind() {
            EventKind::Left => format!("{} left", s.event.participant_name),
            _ => s.event.text.clone(),
        })
        .collect();
    assert_eq!(order, ["one", "Bob left", "two", "Dave left", "three"]);

    let mut grpc = chitty::client::connect(&server.addr)
        .await
        .expect("connect");
    let names: HashSet<String> = grpc
        .list_participants(ListParticipantsRequest {})
        .await
        .expect("ListParticipants")
        .into_inner()
        .participants
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, HashSet::from(["Alice".to_string()]));
}

/// R8: "Participant X left Chitty-Chat at Lamport time L" reaches every
/// remaining participant once, with L the event's timestamp; the leaver's
/// stream ends normally.
#[tokio::test]
async fn r8_the_remaining_participants_receive_participant_x_left_at_lamport_time_l() {
    let server = start_server().await;
    let mut alice = join(&server.addr, "Alice").await;
    let mut bob = join(&server.addr, "Bob").await;
    let mut carol = join(&server.addr, "Carol").await;
    for member in [&mut alice, &mut bob, &mut carol] {
        member
            .ensure_seen("Carol's join", |s| s.is_joined("Carol"))
            .await;
    }

    let left_at = carol.session.leave().await.expect("Carol leaves");
    if let Err(e) = carol.drain_to_end().await {
        panic!("the leaver's stream should end normally, it ended with {e}");
    }

    alice.say("marker").await;
    for member in [&mut alice, &mut bob] {
        let left = member.next_event().await;
        assert!(left.is_left("Carol"), "{}: {left:?}", member.name);
        assert_eq!(left.event.lamport, left_at, "L is what Leave answered");
        assert_eq!(left.event.text, left_text("Carol", left_at));
        member.assert_next_is_message("Alice", "marker").await;
    }
    assert!(
        !carol.seen.iter().any(|s| s.is_message("Alice", "marker")),
        "nothing reaches a participant after it left"
    );
}
