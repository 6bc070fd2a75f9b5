//! What one client can take of a node: message sizes, connections, publish
//! rate. Each limit refuses the excess with a clear status or a closed
//! connection, and the node goes on serving everyone else.
//!
//! "Nothing was broadcast" is checked with an observer: after the refused
//! calls a marker message is published, and it must be the very next event
//! the observer receives.

mod common;

use chitty::proto::PublishRequest;
use chitty::proto::chitty_chat_client::ChittyChatClient;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// A generated client with tonic's default limits: nothing is refused on
/// the client side, so the server alone decides.
async fn raw_client(addr: &str) -> ChittyChatClient<Channel> {
    let channel = chitty::client::connect_channel(addr)
        .await
        .expect("connect");
    ChittyChatClient::new(channel)
}

fn publish_request(token: &str, text: String) -> PublishRequest {
    PublishRequest {
        session_token: token.to_string(),
        text,
        lamport: 1,
        publish_id: String::new(),
    }
}

// ---------------------------------------------------------------------------
// Message sizes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_oversize_publish_is_refused_with_resource_exhausted_naming_the_limit() {
    let server = start_server().await;
    let mut observer = join(&server.addr, "Observer").await;
    observer.wait_own_join().await;
    let token = observer.session.welcome().session_token.clone();
    let mut grpc = raw_client(&server.addr).await;
    let limit = chitty::limits::CLIENT_MAX_REQUEST.to_string();

    for size in [5_000_000, 100 * 1024] {
        let status = within(
            "an oversize Publish",
            grpc.publish(publish_request(&token, "a".repeat(size))),
        )
        .await
        .expect_err("an oversize publish must be refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{size}: {status:?}");
        assert!(
            status.message().contains(&limit),
            "the message names the limit of {limit} bytes: {:?}",
            status.message()
        );
    }

    // The same connection and the node still serve; nothing was broadcast.
    let small = within(
        "a Publish after the refused ones",
        grpc.publish(publish_request(&token, "still here".into())),
    )
    .await
    .expect("a small publish on the same connection is accepted");
    assert!(small.into_inner().lamport > 0);
    observer
        .assert_next_is_message("Observer", "still here")
        .await;
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

#[tokio::test]
async fn an_oversize_join_is_refused_with_resource_exhausted_and_the_library_refuses_its_own() {
    let server = start_server().await;
    let mut observer = join(&server.addr, "Observer").await;
    observer.wait_own_join().await;
    let mut grpc = raw_client(&server.addr).await;
    let limit = chitty::limits::CLIENT_MAX_REQUEST.to_string();

    let status = within(
        "an oversize Join",
        grpc.join(chitty::proto::JoinRequest {
            name: "a".repeat(100 * 1024),
            lamport: 1,
            resume: None,
            rejoin: None,
            recent: 0,
        }),
    )
    .await
    .expect_err("an oversize join must be refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(&limit), "{status:?}");

    // The client library does not send what the node would refuse, and
    // says so the same way.
    let refused = within(
        "an oversize publish through the library",
        observer.session.publish(&"a".repeat(100 * 1024)),
    )
    .await
    .expect_err("refused");
    assert_eq!(code(&refused), Code::ResourceExhausted, "{refused}");
    assert!(refused.to_string().contains(&limit), "{refused}");

    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

#[test]
fn the_client_program_reports_an_oversize_line_and_goes_on() {
    let server = spawn_server(&[]);
    let mut alice = spawn_client(&server.addr, "Alice");
    alice.wait_joined();
    alice.say(&"a".repeat(100 * 1024));
    alice.stderr.wait_for_line("the refusal", |l| {
        l.contains("message not sent") && l.contains("message too large")
    });
    alice.say("short");
    alice.wait_for_message("Alice", "short");
    assert!(
        !alice.events().iter().any(|e| e.body.len() > 1000),
        "the long line was not broadcast"
    );
}

#[tokio::test]
async fn an_oversize_message_on_a_publish_stream_ends_it_with_resource_exhausted() {
    let server = start_server().await;
    let mut observer = join(&server.addr, "Observer").await;
    observer.wait_own_join().await;
    let token = observer.session.welcome().session_token.clone();
    let mut grpc = raw_client(&server.addr).await;

    let requests = tokio_stream::iter([
        publish_request(&token, "before".into()),
        publish_request(&token, "a".repeat(100 * 1024)),
        publish_request(&token, "after".into()),
    ]);
    let mut outcomes = within("PublishStream", grpc.publish_stream(requests))
        .await
        .expect("the stream opens")
        .into_inner();
    let first = within("the first outcome", outcomes.message())
        .await
        .expect("the first message is answered")
        .expect("an outcome");
    assert!(first.reply.is_some(), "published: {first:?}");
    let end = within("the end of the stream", outcomes.message())
        .await
        .expect_err("the oversize message ends the stream");
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(
        end.message()
            .contains(&chitty::limits::CLIENT_MAX_REQUEST.to_string()),
        "{end:?}"
    );

    observer.assert_next_is_message("Observer", "before").await;
    observer.say("marker").await;
    observer.assert_next_is_message("Observer", "marker").await;
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads from `conn` until the node closes it (end of stream or a reset),
/// discarding what it sends; `Err` with how long it waited if that takes
/// longer than `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Result<(), Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let reading = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, reading)
        .await
        .map_err(|_| started.elapsed())
}

/// Reads the node's first frame on a connection that sent the preface and an
/// empty SETTINGS frame: the node's SETTINGS, as (identifier, value) pairs.
async fn server_settings(conn: &mut TcpStream) -> Vec<(u16, u32)> {
    let mut header = [0u8; 9];
    within("the node's SETTINGS", conn.read_exact(&mut header))
        .await
        .expect("the node sends its SETTINGS");
    assert_eq!(
        header[3], 4,
        "the node's first frame is SETTINGS: {header:?}"
    );
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    within("the SETTINGS payload", conn.read_exact(&mut payload))
        .await
        .expect("the SETTINGS payload");
    payload
        .chunks(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_connection_that_does_not_start_http2_is_closed_within_the_handshake_timeout() {
    let timeout = Duration::from_millis(500);
    let server = start_server_with(|config| {
        config.connections.handshake_timeout = timeout;
        config.connections.max_streams_per_connection = 77;
    })
    .await;
    let mut alice = join(&server.addr, "Alice").await;
    alice.wait_own_join().await;

    // One sends nothing, one half the preface, one the preface and no
    // SETTINGS: each is closed once the timeout has passed, not before.
    let mut silent = TcpStream::connect(&server.addr).await.expect("connect");
    let mut partial = TcpStream::connect(&server.addr).await.expect("connect");
    partial.write_all(&PREFACE[..10]).await.expect("write");
    let mut no_settings = TcpStream::connect(&server.addr).await.expect("connect");
    no_settings.write_all(PREFACE).await.expect("write");
    let opened = Instant::now();
    for (what, conn) in [
        ("silent", &mut silent),
        ("half a preface", &mut partial),
        ("a preface without SETTINGS", &mut no_settings),
    ] {
        closed_within(conn, timeout + Duration::from_secs(5))
            .await
            .unwrap_or_else(|waited| panic!("{what}: still open after {waited:?}"));
    }
    assert!(
        opened.elapsed() >= timeout - Duration::from_millis(100),
        "closed before the timeout: {:?}",
        opened.elapsed()
    );

    // A connection that starts HTTP/2 is served: the node's SETTINGS say
    // how many streams it may open.
    let mut speaking = TcpStream::connect(&server.addr).await.expect("connect");
    speaking.write_all(PREFACE).await.expect("write");
    speaking
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("write");
    let settings = server_settings(&mut speaking).await;
    assert!(
        settings.contains(&(3, 77)),
        "SETTINGS_MAX_CONCURRENT_STREAMS is 77: {settings:?}"
    );

    // Alice, connected since before the timeout passed, still chats.
    alice.say("still connected").await;
    alice
        .wait_for("her message", |s| s.is_message("Alice", "still connected"))
        .await;
}

#[test]
fn beyond_the_per_address_cap_new_connections_are_closed_and_existing_participants_go_on() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Four connections from one address: Alice's and three more.
    let server = spawn_server(&[
        "--max-connections-per-ip",
        "4",
        "--handshake-timeout-ms",
        "60000",
    ]);
    runtime.block_on(async {
        let mut alice = join(&server.addr, "Alice").await;
        alice.wait_own_join().await;

        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(&server.addr).await.expect("connect"));
        }
        // The fifth is closed at once; so is a participant's.
        let mut fifth = TcpStream::connect(&server.addr).await.expect("connect");
        closed_within(&mut fifth, DEADLINE)
            .await
            .unwrap_or_else(|waited| panic!("the fifth connection still open after {waited:?}"));
        within(
            "a join beyond the cap",
            chitty::client::join(&server.addr, "Bob"),
        )
        .await
        .expect_err("a join over a refused connection fails");
        server
            .stderr
            .wait_for_line("a WARN line naming the cap", |l| {
                l.contains("WARN")
                    && l.contains("refused a connection")
                    && l.contains("--max-connections-per-ip")
            });

        // Alice's connection is one of the four: she publishes and receives.
        alice.say("over the cap").await;
        alice
            .wait_for("her message", |s| s.is_message("Alice", "over the cap"))
            .await;
        // The connections that were let in are still open (the node sent
        // them its SETTINGS and waits for theirs).
        for conn in &mut held {
            assert!(
                closed_within(conn, Duration::from_millis(50))
                    .await
                    .is_err(),
                "an admitted connection was closed"
            );
        }

        // Once they close, a new participant gets in.
        drop(held);
        let deadline = Instant::now() + DEADLINE;
        let mut bob = loop {
            match chitty::client::join(&server.addr, "Bob").await {
                Ok((session, events)) => {
                    break Member {
                        name: "Bob".into(),
                        session,
                        events,
                        seen: Vec::new(),
                    };
                }
                // The node has yet to see them closed: poll.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("Bob could not join once the connections closed: {e}"),
            }
        };
        bob.wait_own_join().await;
        alice.wait_for("Bob's join", |s| s.is_joined("Bob")).await;
    });
}

// ---------------------------------------------------------------------------
// Publish rate
// ---------------------------------------------------------------------------

#[test]
fn a_burst_over_the_publish_rate_limit_is_refused_for_the_excess_and_others_are_unaffected() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A burst of 5, then one message every 10 s: nothing refills during
    // the test.
    let server = spawn_server(&["--publish-rate", "0.1", "--publish-burst", "5"]);
    runtime.block_on(async {
        let mut flooder = join(&server.addr, "Flooder").await;
        flooder.wait_own_join().await;
        let mut bob = join(&server.addr, "Bob").await;
        bob.wait_own_join().await;

        // Twelve at once on one publish stream: the first five go through.
        let (sender, mut outcomes) = within("a publish stream", flooder.session.publisher())
            .await
            .expect("a publish stream");
        for i in 0..12 {
            sender.send(&format!("flood {i}")).await.expect("queued");
        }
        let mut published = Vec::new();
        for i in 0..12 {
            let outcome = within("an outcome", outcomes.message())
                .await
                .expect("an outcome")
                .expect("one outcome per message");
            match outcome.reply {
                Some(_) => published.push(i),
                None => {
                    assert_eq!(
                        outcome.error_code,
                        Code::ResourceExhausted as i32,
                        "message {i}: {outcome:?}"
                    );
                    assert!(
                        outcome.error_message.contains("rate limit")
                            && outcome.error_message.contains("0.1 messages per second")
                            && outcome.error_message.contains("bursts of 5"),
                        "the refusal says the limit: {:?}",
                        outcome.error_message
                    );
                }
            }
        }
        assert_eq!(published, vec![0, 1, 2, 3, 4], "the burst, in order");
        // A unary Publish over the limit is refused the same way.
        let refused = within(
            "a Publish over the limit",
            flooder.session.publish("one more"),
        )
        .await
        .expect_err("over the limit");
        assert_eq!(code(&refused), Code::ResourceExhausted, "{refused}");

        // Bob is unaffected and sees exactly the burst, then his own.
        bob.say("bob is fine").await;
        for i in 0..5 {
            bob.assert_next_is_message("Flooder", &format!("flood {i}"))
                .await;
        }
        bob.assert_next_is_message("Bob", "bob is fine").await;
    });
}
