//! Bad input gets the right status code and broadcasts nothing.
//!
//! Requests are sent with the raw generated client, so nothing is checked on
//! the client side: the server alone must refuse them. "Nothing was
//! broadcast" is checked with an observer: after the refused call a marker
//! message is published, and it must be the very next event the observer
//! receives.

mod common;

use chitty::proto::chitty_chat_client::ChittyChatClient;
use chitty::proto::{
    JoinRequest, LeaveRequest, NodeId, PublishOutcome, PublishRequest, Rejoin, Resume, SeqMark,
};
use common::*;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
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
            recent: 0,
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

    // A look-alike of the name is the name: other case, fullwidth, a
    // Cyrillic letter; refused naming whom it resembles, shown as typed.
    for like in [
        "observer",
        "OBSERVER",
        "\u{41e}bserver",
        "Obs\u{435}rver",
        "\u{ff2f}bserver",
    ] {
        let status = raw_join(&mut grpc, like)
            .await
            .expect_err(&format!("{like:?} must be refused"));
        assert_eq!(status.code(), Code::AlreadyExists, "{like:?}: {status:?}");
        assert!(
            status.message().contains("looks like \"Observer\""),
            "{like:?}: {:?}",
            status.message()
        );
    }
    observer.say("marker 2").await;
    observer
        .assert_next_is_message("Observer", "marker 2")
        .await;

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

// ---------------------------------------------------------------------------
// Bytes that are not protobuf's idea of a string
// ---------------------------------------------------------------------------

/// A codec that sends and receives gRPC messages as raw bytes, so a test can
/// send what no generated client would.
#[derive(Debug, Clone, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The marker a test puts in the string field to corrupt.
const MARK: &str = "@@MARK@@";

/// `message` encoded, with the bytes of [`MARK`] replaced by as many bytes
/// that are not UTF-8 (a lone continuation byte, an invalid lead byte).
fn corrupt(message: &impl Message) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK.as_bytes())
        .expect("the marker is in the encoding");
    bytes[at..at + MARK.len()].copy_from_slice(b"ab\x80cd\xffef");
    assert!(String::from_utf8(bytes.clone()).is_err());
    bytes
}

/// A raw gRPC client on `addr`.
async fn raw_grpc(addr: &str) -> tonic::client::Grpc<Channel> {
    let channel = chitty::client::connect_channel(addr)
        .await
        .expect("connect");
    tonic::client::Grpc::new(channel)
}

/// Sends `body` as the one message of the unary call `method`.
async fn raw_unary(
    addr: &str,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = raw_grpc(addr).await;
    within("the connection", grpc.ready()).await.expect("ready");
    let path = http::uri::PathAndQuery::from_static(method);
    within(
        method,
        grpc.unary(tonic::Request::new(body), path, RawBytes),
    )
    .await
    .map(|r| r.into_inner())
}

/// Asserts `status` is `INVALID_ARGUMENT` naming `field`.
fn assert_names_field(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert!(
        status.message().contains(field) && status.message().contains("UTF-8"),
        "the message names the field {field} and says what is wrong: {:?}",
        status.message()
    );
}

#[tokio::test]
async fn invalid_utf8_in_any_string_field_is_invalid_argument_naming_the_field() {
    let (server, mut observer, _grpc) = setup().await;
    let token = token(&observer);
    let publish = |text: &str, token: &str, id: &str| PublishRequest {
        session_token: token.to_string(),
        text: text.to_string(),
        lamport: 1,
        publish_id: id.to_string(),
    };
    let cases: Vec<(&'static str, Vec<u8>, &str)> = vec![
        (
            "/chittychat.v1.ChittyChat/Publish",
            corrupt(&publish(MARK, &token, "")),
            "PublishRequest.text",
        ),
        (
            "/chittychat.v1.ChittyChat/Publish",
            corrupt(&publish("hello", MARK, "")),
            "PublishRequest.session_token",
        ),
        (
            "/chittychat.v1.ChittyChat/Publish",
            corrupt(&publish("hello", &token, MARK)),
            "PublishRequest.publish_id",
        ),
        (
            "/chittychat.v1.ChittyChat/Leave",
            corrupt(&LeaveRequest {
                session_token: MARK.into(),
                lamport: 1,
            }),
            "LeaveRequest.session_token",
        ),
    ];
    for (method, body, field) in cases {
        let status = raw_unary(&server.addr, method, body)
            .await
            .expect_err("a request that is not UTF-8 must be refused");
        assert_names_field(&status, field);
    }

    // Join, whose request the node decodes itself, the same way.
    let join = |name: &str, resume: Option<Resume>| JoinRequest {
        name: name.to_string(),
        lamport: 1,
        resume,
        rejoin: None,
        recent: 0,
    };
    let resume = |pid: &str, token: &str| Resume {
        participant_id: pid.to_string(),
        session_token: token.to_string(),
        ..Default::default()
    };
    let pid = observer.session.participant_id().to_string();
    for (body, field) in [
        (corrupt(&join(MARK, None)), "JoinRequest.name"),
        (
            corrupt(&join("Observer", Some(resume(MARK, &token)))),
            "Resume.participant_id",
        ),
        (
            corrupt(&join("Observer", Some(resume(&pid, MARK)))),
            "Resume.session_token",
        ),
    ] {
        let mut grpc = raw_grpc(&server.addr).await;
        within("the connection", grpc.ready()).await.expect("ready");
        let path = http::uri::PathAndQuery::from_static("/chittychat.v1.ChittyChat/Join");
        let status = within(
            "a raw Join",
            grpc.server_streaming(tonic::Request::new(body), path, RawBytes),
        )
        .await
        .expect_err("a Join that is not UTF-8 must be refused");
        assert_names_field(&status, field);
    }

    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

/// The contract of `PublishStream` for a message that cannot be decoded:
/// the messages before it are published and answered, then the stream ends
/// with `INVALID_ARGUMENT` naming the field; nothing after it is published.
#[tokio::test]
async fn a_publish_stream_with_a_message_that_is_not_utf8_ends_with_invalid_argument_after_the_ones_before()
 {
    let (server, mut observer, _grpc) = setup().await;
    let token = token(&observer);
    let publish = |text: &str| PublishRequest {
        session_token: token.clone(),
        text: text.to_string(),
        lamport: 1,
        publish_id: String::new(),
    };
    let messages = vec![
        publish("first").encode_to_vec(),
        publish("second").encode_to_vec(),
        corrupt(&publish(MARK)),
        publish("after the bad one").encode_to_vec(),
    ];
    let mut grpc = raw_grpc(&server.addr).await;
    within("the connection", grpc.ready()).await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/chittychat.v1.ChittyChat/PublishStream");
    let mut replies = within(
        "a raw PublishStream",
        grpc.streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            path,
            RawBytes,
        ),
    )
    .await
    .expect("the stream opens")
    .into_inner();
    let mut outcomes = Vec::new();
    let end = loop {
        match within("a publish outcome", replies.message()).await {
            Ok(Some(bytes)) => outcomes.push(PublishOutcome::decode(&bytes[..]).expect("outcome")),
            Ok(None) => panic!("the stream ended with OK after {outcomes:?}"),
            Err(status) => break status,
        }
    };
    assert_names_field(&end, "PublishRequest.text");
    assert_eq!(
        outcomes.len(),
        2,
        "the two messages before it are answered: {outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| o.reply.is_some()), "{outcomes:?}");
    observer.assert_next_is_message("Observer", "first").await;
    observer.assert_next_is_message("Observer", "second").await;
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

// ---------------------------------------------------------------------------
// Lamport clocks
// ---------------------------------------------------------------------------

/// A request's clock may be ahead of the node's (its participant saw a node
/// whose clock is ahead), but not absurdly: 2^64-1 used to be accepted and
/// the event stamped 0, and every later event too.
#[tokio::test]
async fn an_absurd_request_clock_is_refused_and_the_node_clock_never_wraps() {
    let (_server, mut observer, mut grpc) = setup().await;
    let token = token(&observer);
    let (before, _) = observer.say("before").await;
    observer.assert_next_is_message("Observer", "before").await;
    for lamport in [u64::MAX, u64::MAX - 1, 1 << 62 | 1, before + (1 << 40) + 1] {
        let status = within(
            "a Publish with an absurd clock",
            grpc.publish(PublishRequest {
                session_token: token.clone(),
                text: "from the far future".into(),
                lamport,
                publish_id: String::new(),
            }),
        )
        .await
        .expect_err("an absurd clock must be refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{lamport}: {status:?}"
        );
        assert!(status.message().contains("lamport"), "{status:?}");
        let status = within(
            "a Leave with an absurd clock",
            grpc.leave(LeaveRequest {
                session_token: token.clone(),
                lamport,
            }),
        )
        .await
        .expect_err("an absurd clock must be refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{lamport}: {status:?}"
        );
        let status = within(
            "a Join with an absurd clock",
            grpc.join(JoinRequest {
                name: "Mallory".into(),
                lamport,
                ..Default::default()
            }),
        )
        .await
        .expect_err("an absurd clock must be refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{lamport}: {status:?}"
        );
        let status = within(
            "a Resume with an absurd clock",
            grpc.join(JoinRequest {
                name: "Observer".into(),
                lamport,
                resume: Some(Resume {
                    participant_id: observer.session.participant_id().to_string(),
                    session_token: token.clone(),
                    ..Default::default()
                }),
                rejoin: None,
                recent: 0,
            }),
        )
        .await
        .expect_err("an absurd clock must be refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{lamport}: {status:?}"
        );
    }
    // On a publish stream the message is refused and the stream goes on.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for lamport in [u64::MAX, 1] {
        tx.send(PublishRequest {
            session_token: token.clone(),
            text: format!("streamed at {lamport}"),
            lamport,
            publish_id: String::new(),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let mut outcomes = within(
        "a PublishStream",
        grpc.publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the stream opens")
    .into_inner();
    let first = within("an outcome", outcomes.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.error_code, Code::InvalidArgument as i32, "{first:?}");
    let second = within("an outcome", outcomes.message())
        .await
        .unwrap()
        .unwrap();
    assert!(second.reply.is_some(), "{second:?}");
    observer
        .assert_next_is_message("Observer", "streamed at 1")
        .await;

    // A clock well ahead, within the bound, is taken: the clock jumps, and
    // keeps growing from there.
    let ahead = before + 1_000_000;
    let stamped = raw_publish_at(&mut grpc, &token, "from a node far ahead", ahead)
        .await
        .expect("a clock ahead within the bound is accepted");
    assert_eq!(stamped, ahead + 1);
    observer
        .assert_next_is_message("Observer", "from a node far ahead")
        .await;
    let (after, _) = observer.say("after").await;
    assert!(
        after > stamped,
        "the clock still grows: {after} after {stamped}"
    );
    observer.assert_next_is_message("Observer", "after").await;
}

async fn raw_publish_at(
    grpc: &mut ChittyChatClient<Channel>,
    token: &str,
    text: &str,
    lamport: u64,
) -> Result<u64, tonic::Status> {
    within(
        "a raw Publish",
        grpc.publish(PublishRequest {
            session_token: token.to_string(),
            text: text.to_string(),
            lamport,
            publish_id: String::new(),
        }),
    )
    .await
    .map(|r| r.into_inner().lamport)
}

// ---------------------------------------------------------------------------
// Field sizes and forms
// ---------------------------------------------------------------------------

/// A Join that resumes `resume`, with no client-side checks.
async fn raw_resume(
    grpc: &mut ChittyChatClient<Channel>,
    resume: Resume,
) -> Result<(), tonic::Status> {
    within(
        "a raw Resume",
        grpc.join(JoinRequest {
            name: String::new(),
            lamport: 1,
            resume: Some(resume),
            rejoin: None,
            recent: 0,
        }),
    )
    .await
    .map(|_| ())
}

fn marks(n: usize) -> Vec<SeqMark> {
    (0..n)
        .map(|i| SeqMark {
            origin: Some(NodeId {
                id: format!("node-{i}"),
                generation: 1,
            }),
            seq: 0,
        })
        .collect()
}

fn nodes(n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| NodeId {
            id: format!("node-{i}"),
            generation: 1,
        })
        .collect()
}

#[tokio::test]
async fn publish_ids_tokens_and_ids_out_of_form_are_refused_naming_the_field() {
    let (_server, mut observer, mut grpc) = setup().await;
    let token = token(&observer);
    let pid = observer.session.participant_id().to_string();
    let publish = |token: &str, id: &str| PublishRequest {
        session_token: token.to_string(),
        text: "hello".into(),
        lamport: 1,
        publish_id: id.to_string(),
    };
    // A publish id that is not a canonical UUID, long ones too (kept well
    // under the gRPC message size limit, which answers bigger requests).
    let huge = "7".repeat(8 << 10);
    for id in [
        "not-a-uuid",
        "67E55044-10B1-426F-9247-BB680E5FE0C8",
        "67e5504410b1426f9247bb680e5fe0c8",
        huge.as_str(),
    ] {
        let status = within("a Publish", grpc.publish(publish(&token, id)))
            .await
            .expect_err("a malformed publish id must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{id:.40}: {status:?}");
        assert!(status.message().contains("publish_id"), "{status:?}");
    }
    // The canonical form is accepted.
    let id = uuid::Uuid::new_v4().to_string();
    within("a Publish", grpc.publish(publish(&token, &id)))
        .await
        .expect("a canonical UUID is a valid publish id");
    observer.assert_next_is_message("Observer", "hello").await;

    // An over-long token is malformed; a well-formed unknown one is not ours.
    let long = "t".repeat(65);
    let status = within("a Publish", grpc.publish(publish(&long, "")))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("session_token"), "{status:?}");
    let status = within(
        "a Leave",
        grpc.leave(LeaveRequest {
            session_token: long.clone(),
            lamport: 1,
        }),
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("session_token"), "{status:?}");
    let status = within("a Publish", grpc.publish(publish(&"t".repeat(64), "")))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    for (resume, field) in [
        (
            Resume {
                participant_id: "p".repeat(65),
                session_token: token.clone(),
                ..Default::default()
            },
            "participant_id",
        ),
        (
            Resume {
                participant_id: pid.clone(),
                session_token: long.clone(),
                ..Default::default()
            },
            "session_token",
        ),
    ] {
        let status = raw_resume(&mut grpc, resume).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }

    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

#[tokio::test]
async fn resume_and_rejoin_vectors_beyond_their_limits_are_refused() {
    let (_server, mut observer, mut grpc) = setup().await;
    let token = token(&observer);
    let pid = observer.session.participant_id().to_string();
    let resume = |seen: usize, unanswered: usize, known: usize| Resume {
        participant_id: pid.clone(),
        session_token: token.clone(),
        seen: marks(seen),
        unanswered_at: nodes(unanswered),
        known_nodes: nodes(known),
    };
    for (seen, unanswered, known, field) in [
        (1025, 0, 0, "seen"),
        (0, 65, 0, "unanswered_at"),
        (0, 0, 65, "known_nodes"),
    ] {
        let status = raw_resume(&mut grpc, resume(seen, unanswered, known))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{status:?}");
        let status = within(
            "a raw rejoin",
            grpc.join(JoinRequest {
                name: "Rejoiner".into(),
                lamport: 1,
                resume: None,
                rejoin: Some(Rejoin {
                    seen: marks(seen),
                    unanswered_at: nodes(unanswered),
                    known_nodes: nodes(known),
                }),
                recent: 0,
            }),
        )
        .await
        .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    // The observer's session was not taken over, and nobody joined.
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

// ---------------------------------------------------------------------------
// A seen vector from the future
// ---------------------------------------------------------------------------

/// A resume claiming to have seen events nobody stamped used to wait 5 s
/// for them, then succeed. It is refused at once; a claim this node cannot
/// check (events of a node it has not heard of yet, as after a move from a
/// node that joined moments ago) is still taken.
#[tokio::test]
async fn a_resume_whose_seen_claims_events_never_stamped_is_refused_at_once() {
    let (server, mut observer, mut grpc) = setup().await;
    let this_node = observer
        .session
        .welcome()
        .node
        .clone()
        .expect("the Welcome names the node");
    let mut resumer = join(&server.addr, "Resumer").await;
    resumer.wait_own_join().await;
    observer
        .wait_for("Resumer's join", |s| s.is_joined("Resumer"))
        .await;
    let resume = |seen: Vec<SeqMark>| Resume {
        participant_id: resumer.session.participant_id().to_string(),
        session_token: resumer.session.welcome().session_token.clone(),
        seen,
        unanswered_at: Vec::new(),
        known_nodes: Vec::new(),
    };
    let mark = |origin: &NodeId, seq: u64| SeqMark {
        origin: Some(origin.clone()),
        seq,
    };
    let stranger = NodeId {
        id: "never-heard-of".into(),
        generation: 7,
    };
    for seen in [
        vec![mark(&this_node, 1_000)],
        vec![mark(&this_node, u64::MAX)],
        vec![mark(&stranger, u64::MAX)],
        vec![mark(&stranger, 1 << 40)],
    ] {
        let asked = std::time::Instant::now();
        let status = raw_resume(&mut grpc, resume(seen.clone()))
            .await
            .expect_err("an impossible seen must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{seen:?}: {status:?}");
        assert!(
            status.message().contains("never stamped"),
            "{:?}",
            status.message()
        );
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(3),
            "refused at once, not after waiting for the events: {:?}",
            asked.elapsed()
        );
        // The same for a participant joining again as new.
        let status = within(
            "a raw rejoin",
            grpc.join(JoinRequest {
                name: "Rejoiner".into(),
                lamport: 1,
                resume: None,
                rejoin: Some(Rejoin {
                    seen,
                    unanswered_at: Vec::new(),
                    known_nodes: Vec::new(),
                }),
                recent: 0,
            }),
        )
        .await
        .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;

    // What this node stamped, and a little of a node it never heard of,
    // are plausible: the session resumes.
    let last = observer.seen.last().expect("the marker").event.clone();
    let own = last.id.expect("an id").seq;
    raw_resume(
        &mut grpc,
        resume(vec![mark(&this_node, own), mark(&stranger, 3)]),
    )
    .await
    .expect("a plausible seen resumes the session");
}

// ---------------------------------------------------------------------------
// Terminal controls in messages
// ---------------------------------------------------------------------------

/// A message is one line of printable text: escape sequences, carriage
/// returns, backspaces, line breaks, direction overrides and texts of
/// nothing but white space are refused, so no participant can rewrite or
/// colour lines on the others' screens, or fake a line from someone else.
#[tokio::test]
async fn messages_with_terminal_controls_or_only_white_space_are_refused() {
    let (_server, mut observer, mut grpc) = setup().await;
    let token = token(&observer);
    for text in [
        "\u{1b}[2J\u{1b}[Hthe screen is mine",
        "\u{1b}[31mred\u{1b}[0m",
        "innocent\rObserver: I quit",
        "line one\nObserver: line two",
        "oops\u{8}\u{8}\u{8}",
        "\u{9b}2J",
        "\u{7f}",
        "tab\there",
        "\u{202e}txet desrever",
        "zero\u{200b}width",
        "\u{200b}",
        " \u{200b}\u{2060}\u{feff} ",
        "para\u{2029}graph",
    ] {
        let status = raw_publish(&mut grpc, &token, text)
            .await
            .expect_err(&format!("{text:?} must be refused"));
        assert_eq!(status.code(), Code::InvalidArgument, "{text:?}: {status:?}");
        assert!(
            status.message().contains("control or invisible character"),
            "{text:?}: {:?}",
            status.message()
        );
    }
    // Spaces only, invisible letters (Hangul fillers), a blank braille
    // pattern: nothing visible. Zero-width characters, alone or mixed,
    // are format characters and refused above.
    for text in [
        " ",
        "     ",
        "\u{3000}\u{2003}",
        "\u{3164}",
        " \u{2800} \u{3164} ",
    ] {
        let status = raw_publish(&mut grpc, &token, text)
            .await
            .expect_err(&format!("{text:?} must be refused"));
        assert_eq!(status.code(), Code::InvalidArgument, "{text:?}: {status:?}");
        assert!(
            status.message().contains("no visible character"),
            "{status:?}"
        );
    }
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
    // Spaces inside and around printable text are fine.
    observer.say("  spaced  out  ").await;
    observer
        .assert_next_is_message("Observer", "  spaced  out  ")
        .await;
}
