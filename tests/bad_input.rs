//! Bad input gets the right status code and broadcasts nothing.
//!
//! Requests are sent with the raw generated client, so nothing is checked on
//! the client side: the server alone must refuse them. "Nothing was
//! broadcast" is checked with an observer: after the refused call a marker
//! message is published, and it must be the very next event the observer
//! receives.

mod common;

use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::{JoinRequest, LeaveRequest, PublishRequest};
use common::*;
use tonic::Code;
use tonic::transport::Channel;

/// Publishes `text` with `token` and nothing else: no client-side checks.
async fn raw_publish(
    grpc: &mut ChittyChatClient<Channel>,
    token: &str,
    text: &str,
) -> Result<u64, tonic::Status> {
    within(
        "a raw Publish",
        grpc.publish(PublishRequest {
            session_token: token.to_string(),
            text: text.to_string(),
            lamport: 1,
            publish_id: String::new(),
        }),
    )
    .await
    .map(|r| r.into_inner().lamport)
}

/// Opens a Join stream as `name` with no client-side checks; the status of
/// the call if it was refused.
async fn raw_join(grpc: &mut ChittyChatClient<Channel>, name: &str) -> Result<(), tonic::Status> {
    within(
        "a raw Join",
        grpc.join(JoinRequest {
            name: name.to_string(),
            lamport: 1,
            resume: None,
            rejoin: None,
        }),
    )
    .await
    .map(|_| ())
}

/// A server, an observer who has seen its own join, and a raw client.
async fn setup() -> (TestServer, Member, ChittyChatClient<Channel>) {
    let server = start_server().await;
    let mut observer = join(&server.addr, "Observer").await;
    observer.wait_own_join().await;
    let grpc = chitty::client::connect(&server.addr)
        .await
        .expect("connect");
    (server, observer, grpc)
}

/// The observer's own token, for publishing without the library's checks.
fn token(member: &Member) -> String {
    member.session.welcome().session_token.clone()
}

#[tokio::test]
async fn a_129_character_message_is_refused_with_invalid_argument_and_not_broadcast() {
    let (_server, mut observer, mut grpc) = setup().await;
    let token = token(&observer);
    for text in ["a".repeat(129), "😀".repeat(129), "ü".repeat(1000)] {
        let status = raw_publish(&mut grpc, &token, &text)
            .await
            .expect_err("an over-long message must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("128"),
            "the message says what the limit is: {:?}",
            status.message()
        );
    }
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

#[tokio::test]
async fn a_message_of_128_characters_is_accepted_even_when_they_are_128_emoji() {
    let (_server, mut observer, mut grpc) = setup().await;
    let token = token(&observer);
    let emoji = "😀".repeat(128); // 512 bytes of UTF-8
    let ascii = "a".repeat(128);
    let mixed = "a😀é".repeat(42) + "ab"; // 128 characters of 1, 4 and 2 bytes
    for text in [&emoji, &ascii, &mixed] {
        assert_eq!(text.chars().count(), 128);
        let stamped = raw_publish(&mut grpc, &token, text)
            .await
            .unwrap_or_else(|s| panic!("a 128-character message was refused: {s:?}"));
        let seen = observer.next_event().await;
        assert!(
            seen.is_message("Observer", text),
            "broadcast exactly as sent, got {:?}",
            seen.event.text
        );
        assert_eq!(seen.event.lamport, stamped);
    }
}

#[tokio::test]
async fn an_empty_message_is_refused_with_invalid_argument_and_not_broadcast() {
    let (_server, mut observer, mut grpc) = setup().await;
    let status = raw_publish(&mut grpc, &token(&observer), "")
        .await
        .expect_err("an empty message must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("empty"),
        "the message says why: {:?}",
        status.message()
    );
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

#[tokio::test]
async fn a_name_held_by_a_live_participant_is_refused_with_already_exists() {
    let (server, mut observer, mut grpc) = setup().await;
    let status = raw_join(&mut grpc, "Observer")
        .await
        .expect_err("a second Observer must be refused");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Through the client library too, with the same answer.
    let err = chitty::client::join(&server.addr, "Observer")
        .await
        .expect_err("a second Observer must be refused");
    assert_eq!(code(&err), Code::AlreadyExists, "{err}");

    // Nothing was announced, and the holder of the name is unaffected.
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;

    // Once the holder left, the name is free again.
    observer.session.leave().await.expect("leave");
    let mut again = join(&server.addr, "Observer").await;
    again.wait_own_join().await;
}

#[tokio::test]
async fn invalid_names_are_refused_with_invalid_argument_and_not_announced() {
    let (server, mut observer, mut grpc) = setup().await;
    let too_long = "x".repeat(33);
    for name in [
        "",
        "   ",
        " Alice",
        "Alice ",
        "Al\nice",
        "Bell\u{7}",
        "tab\t",
        too_long.as_str(),
    ] {
        let status = raw_join(&mut grpc, name)
            .await
            .expect_err(&format!("the name {name:?} must be refused"));
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}: {status:?}");
    }
    // The limits themselves are fine: 32 characters, spaces and emoji inside.
    let longest = "é".repeat(32);
    for name in [longest.as_str(), "Zoë 🦀"] {
        let mut member = join(&server.addr, name).await;
        member.wait_own_join().await;
        member.session.leave().await.expect("leave");
    }
    observer
        .wait_for("the last valid name's leave", |s| s.is_left("Zoë 🦀"))
        .await;
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
    let announced: Vec<_> = observer
        .seen
        .iter()
        .map(|s| s.event.participant_name.clone())
        .filter(|n| n != "Observer")
        .collect();
    assert_eq!(
        announced,
        [longest.as_str(), longest.as_str(), "Zoë 🦀", "Zoë 🦀"],
        "only the valid names were announced (joined and left)"
    );
}

/// Names must be printable: a name made of, or hiding, invisible format
/// characters (zero-width space, right-to-left override) would show as an
/// empty name or as somebody else's.
#[tokio::test]
async fn names_with_invisible_characters_are_refused_with_invalid_argument() {
    let (_server, mut observer, mut grpc) = setup().await;
    for name in [
        "\u{200B}",
        "Obser\u{200B}ver",
        "\u{202E}revresbO",
        "\u{FEFF}",
    ] {
        if let Err(status) = raw_join(&mut grpc, name).await {
            assert_eq!(status.code(), Code::InvalidArgument, "{name:?}: {status:?}");
            continue;
        }
        let announced = observer.next_event().await;
        panic!(
            "the name {name:?} was accepted and announced as {:?}",
            announced.event.text
        );
    }
}

#[tokio::test]
async fn publish_with_a_token_that_never_joined_is_refused_with_unauthenticated() {
    let (_server, mut observer, mut grpc) = setup().await;
    let never_joined = uuid::Uuid::new_v4().simple().to_string();
    for bad in [never_joined.as_str(), ""] {
        let status = raw_publish(&mut grpc, bad, "hello")
            .await
            .expect_err("a publish without a session must be refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}: {status:?}");
        let status = within(
            "a raw Leave",
            grpc.leave(LeaveRequest {
                session_token: bad.to_string(),
                lamport: 1,
            }),
        )
        .await
        .expect_err("a leave without a session must be refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}: {status:?}");
    }
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

#[tokio::test]
async fn publish_and_leave_after_leaving_are_refused_with_unauthenticated() {
    let (server, mut observer, _grpc) = setup().await;
    let mut leaver = join(&server.addr, "Leaver").await;
    leaver.wait_own_join().await;
    leaver.session.leave().await.expect("the first leave");
    observer
        .wait_for("Leaver's leave", |s| s.is_left("Leaver"))
        .await;

    let err = leaver
        .session
        .publish("from beyond")
        .await
        .expect_err("a publish after leaving must be refused");
    assert_eq!(code(&err), Code::Unauthenticated, "{err}");
    let err = leaver
        .session
        .leave()
        .await
        .expect_err("a second leave must be refused");
    assert_eq!(code(&err), Code::Unauthenticated, "{err}");

    // No message, and no second "left".
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

/// The command-line client shows the server's refusal and keeps running.
#[test]
fn the_client_shows_a_refused_message_and_keeps_running() {
    let server = spawn_server(&[]);
    let mut alice = spawn_client(&server.addr, "Alice");
    alice.wait_joined();
    let too_long = "x".repeat(129);
    alice.say(&too_long);
    alice.say("still here");
    alice.wait_for_message("Alice", "still here");
    let error = alice.stderr.wait_for_line("the refusal on stderr", |l| {
        l.contains("error") && l.contains("128")
    });
    assert!(
        error.contains("not sent"),
        "the user is told the message was not sent: {error:?}"
    );
    assert!(
        !alice
            .stdout
            .snapshot()
            .iter()
            .any(|l| l.contains(&too_long)),
        "the refused message was not broadcast"
    );
    alice.close_stdin();
    assert!(alice.child.wait_exit().success());
}
