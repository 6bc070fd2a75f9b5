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
