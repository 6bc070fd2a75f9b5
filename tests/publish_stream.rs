//! `PublishStream`: many messages in flight on one stream, published in
//! order, each answered in order; a refused one does not end the stream.

mod common;

use common::{join, start_server_with, within};
use tonic::Code;

#[tokio::test]
async fn a_publish_stream_keeps_order_and_answers_each_message() {
    // 300 messages at full speed: more than the publish rate limit allows.
    let server = start_server_with(|config| config.publish_rate = None).await;
    let mut alice = join(&server.addr, "Alice").await;
    alice.wait_own_join().await;
    let mut bob = join(&server.addr, "Bob").await;
    bob.wait_own_join().await;

    let (sender, mut replies) = alice.session.publisher().await.expect("publish stream");
    let texts: Vec<String> = (0..300).map(|i| format!("pipelined {i}")).collect();
    let too_long = "x".repeat(129);
    // All sent before reading any reply; the refused one sits in the middle.
    for (i, text) in texts.iter().enumerate() {
        sender.send(text).await.expect("queued");
        if i == 150 {
            sender.send(&too_long).await.expect("queued");
        }
    }
    let mut outcomes = Vec::new();
    while outcomes.len() < texts.len() + 1 {
        let outcome = within("a publish outcome", replies.message())
            .await
            .expect("the publish stream failed")
            .expect("the publish stream ended early");
        outcomes.push(outcome);
    }
    let refused: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].reply.is_none())
        .collect();
    assert_eq!(refused, [151], "only the over-long message is refused");
    assert_eq!(outcomes[151].error_code, Code::InvalidArgument as i32);
    let stamps: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| o.reply.as_ref().map(|r| r.lamport))
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "replies come back in publish order with increasing timestamps"
    );

    for text in &texts {
        let seen = bob
            .wait_for(&format!("{text:?}"), |s| {
                s.kind() == chitty::proto::EventKind::Message
            })
            .await;
        assert!(
            seen.is_message("Alice", text),
            "in order: expected {text:?}, got {:?}",
            seen.event.text
        );
    }
}
