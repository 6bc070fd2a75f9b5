//! Lamport clock properties, checked on what participants recorded:
//! * every participant's own clock strictly increases: each request it sends
//!   and each event it receives gives a new, higher reading;
//! * every event's timestamp is greater than the Lamport time of the request
//!   that caused it (the node applies `max(node, request) + 1`);
//! * events reach every participant in increasing timestamp order.
//!
//! The library records come from `Session::publish` (which returns the
//! request's Lamport time) and from the event stream (each event with the
//! participant's clock after receiving it). The process records come from the
//! `chitty client` output and its `--log` file.

mod common;

use std::collections::{HashMap, HashSet};

use chitty::client::{EventStream, Received, Session};
use chitty::proto::{EventKind, JoinFrame, JoinRequest, LeaveRequest, PublishRequest, join_frame};
use common::*;

const MESSAGES_EACH: usize = 40;

/// What one participant sent and received.
struct Record {
    name: String,
    /// (text, Lamport time of the request, timestamp of the resulting event).
    sent: Vec<(String, u64, u64)>,
    received: Vec<Seen>,
}

/// Reads `events` until `messages` chat messages have arrived.
async fn receive(mut events: EventStream, messages: usize) -> Vec<Seen> {
    let mut received = Vec::new();
    let mut count = 0;
    while count < messages {
        match within("the next event", events.next()).await {
            Ok(Some(Received::Event { event, local })) => {
                count += usize::from(event.kind() == EventKind::Message);
                received.push(Seen { event, local });
            }
            Ok(Some(_)) => {}
            other => panic!("the stream ended early: {other:?}"),
        }
    }
    received
}

async fn send(session: Session, name: String) -> Vec<(String, u64, u64)> {
    let mut sent = Vec::new();
    for i in 0..MESSAGES_EACH {
        let text = format!("{name} #{i}");
        let (reply, request) = within("a publish", session.publish(&text))
            .await
            .expect("publish");
        sent.push((text, request, reply.lamport));
    }
    sent
}

/// Three participants publish at the same time while receiving.
async fn concurrent_chat(addr: &str) -> Vec<Record> {
    let names = ["Alice", "Bob", "Carol"];
    let mut joined = Vec::new();
    // Everyone is in before anyone talks, so everyone receives every message.
    for name in names {
        let member = join(addr, name).await;
        joined.push((member.session, member.events));
    }
    let mut tasks = Vec::new();
    for (name, (session, events)) in names.into_iter().zip(joined) {
        let receiver = tokio::spawn(receive(events, names.len() * MESSAGES_EACH));
        let sender = tokio::spawn(send(session, name.to_string()));
        tasks.push((name, sender, receiver));
    }
    let mut records = Vec::new();
    for (name, sender, receiver) in tasks {
        records.push(Record {
            name: name.to_string(),
            sent: sender.await.expect("sender task"),
            received: receiver.await.expect("receiver task"),
        });
    }
    records
}

fn strictly_increasing(values: &[u64]) -> bool {
    values.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_participants_clock_strictly_increases_over_its_sends_and_receives() {
    let server = start_server().await;
    for record in concurrent_chat(&server.addr).await {
        let requests: Vec<u64> = record.sent.iter().map(|s| s.1).collect();
        let locals: Vec<u64> = record.received.iter().map(|s| s.local).collect();
        assert!(
            strictly_increasing(&requests),
            "{}'s clock at its requests: {requests:?}",
            record.name
        );
        assert!(
            strictly_increasing(&locals),
            "{}'s clock at its receives:\n{}",
            record.name,
            describe(&record.received)
        );
        // Sends and receives run side by side on one clock: a clock that
        // strictly increases never gives the same reading twice.
        let mut readings: HashSet<u64> = HashSet::new();
        for value in requests.iter().chain(&locals) {
            assert!(
                readings.insert(*value),
                "{}'s clock read {value} twice (requests {requests:?}, receives {locals:?})",
                record.name
            );
        }
        for seen in &record.received {
            assert!(
                seen.local > seen.event.lamport,
                "{} received {} at local time {}: the receive rule is max + 1",
                record.name,
                seen.event.lamport,
                seen.local
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_stamped_later_than_the_request_that_sent_it() {
    let server = start_server().await;
    let records = concurrent_chat(&server.addr).await;
    let mut requests: HashMap<&str, (u64, u64)> = HashMap::new();
    for record in &records {
        for (text, request, stamped) in &record.sent {
            assert!(
                stamped > request,
                "{text:?} was sent at {request} but stamped {stamped}"
            );
            requests.insert(text, (*request, *stamped));
        }
    }
    for record in &records {
        for seen in &record.received {
            if seen.kind() != EventKind::Message {
                continue;
            }
            let (request, stamped) = requests[seen.event.text.as_str()];
            assert_eq!(
                seen.event.lamport, stamped,
                "{} received {:?} with the timestamp its sender was told",
                record.name, seen.event.text
            );
            assert!(seen.event.lamport > request);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_participant_in_increasing_timestamp_order() {
    let server = start_server().await;
    let records = concurrent_chat(&server.addr).await;
    for record in &records {
        let stamps: Vec<u64> = record.received.iter().map(|s| s.event.lamport).collect();
        assert!(
            strictly_increasing(&stamps),
            "{} received events out of timestamp order:\n{}",
            record.name,
            describe(&record.received)
        );
    }
    // And therefore in the same order: the messages everyone received are
    // the same sequence.
    let messages = |r: &Record| -> Vec<(u64, String)> {
        r.received
            .iter()
            .filter(|s| s.kind() == EventKind::Message)
            .map(|s| (s.event.lamport, s.event.text.clone()))
            .collect()
    };
    for record in &records[1..] {
        assert_eq!(messages(record), messages(&records[0]), "{}", record.name);
    }
}

/// The node's rule on a request: its clock becomes max(node, request) + 1,
/// and that is the event's timestamp, the L in the text, and what every
/// participant sees; the receivers' clocks jump past it.
#[tokio::test]
async fn the_node_stamps_each_event_max_of_its_clock_and_the_request_plus_one() {
    let server = start_server().await;
    let mut watcher = join(&server.addr, "Watcher").await;
    let own = watcher.wait_own_join().await;
    assert_eq!(
        own.event.lamport, 2,
        "a fresh node receiving Join at 1: max(0, 1) + 1"
    );
    assert_eq!(
        own.local, 3,
        "a fresh client receiving 2 at 1: max(1, 2) + 1"
    );

    let mut grpc = chitty::client::connect(&server.addr)
        .await
        .expect("connect");
    // A participant whose clock is far ahead joins...
    let mut stream = grpc
        .join(JoinRequest {
            name: "Ahead".into(),
            lamport: 1000,
            resume: None,
            rejoin: None,
            recent: 0,
        })
        .await
        .expect("join")
        .into_inner();
    let token = match stream.message().await.expect("welcome") {
        Some(JoinFrame {
            frame: Some(join_frame::Frame::Welcome(w)),
        }) => w.session_token,
        other => panic!("expected Welcome, got {other:?}"),
    };
    let joined = watcher.next_event().await;
    assert_eq!(joined.event.lamport, 1001, "max(2, 1000) + 1");
    assert_eq!(joined.event.text, joined_text("Ahead", 1001));
    assert_eq!(
        joined.local, 1002,
        "the watcher's clock jumps: max(3, 1001) + 1"
    );

    // ...then publishes with a clock behind the node's: the node still moves on.
    let reply = grpc
        .publish(PublishRequest {
            session_token: token.clone(),
            text: "late clock".into(),
            lamport: 5,
            publish_id: String::new(),
        })
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(reply.lamport, 1002, "max(1001, 5) + 1");
    let message = watcher.next_event().await;
    assert_eq!(message.event.lamport, 1002);

    // ...and leaves far ahead again.
    let left = grpc
        .leave(LeaveRequest {
            session_token: token,
            lamport: 5000,
        })
        .await
        .expect("leave")
        .into_inner();
    assert_eq!(left.lamport, 5001, "max(1002, 5000) + 1");
    let seen = watcher.next_event().await;
    assert_eq!(seen.event.text, left_text("Ahead", 5001));

    // The watcher's next request is past everything it has seen.
    let (stamped, request) = watcher.say("after").await;
    assert!(
        request > seen.local,
        "tick after receive: {request} > {}",
        seen.local
    );
    assert!(stamped > request && stamped > 5001);
}

/// A reply sent after receiving a message is stamped later than the message,
/// along a chain of participants answering one another.
#[tokio::test]
async fn a_reply_is_stamped_later_than_the_message_it_answers() {
    let server = start_server().await;
    let mut members = Vec::new();
    for name in ["Alice", "Bob", "Carol"] {
        members.push(join(&server.addr, name).await);
    }
    let (mut previous, _) = members[0].say("hop 0").await;
    for hop in 1..=12 {
        let from = members[(hop - 1) % 3].name.clone();
        let to = &mut members[hop % 3];
        let text = format!("hop {}", hop - 1);
        let received = to.wait_for(&text, |s| s.is_message(&from, &text)).await;
        let (stamped, request) = to.say(&format!("hop {hop}")).await;
        assert!(
            request > received.local && received.local > previous,
            "hop {hop}: received {previous} at {}, answered at {request}",
            received.local
        );
        assert!(stamped > previous, "hop {hop}: {stamped} > {previous}");
        previous = stamped;
    }
}

/// The same properties on what `chitty client` processes printed and logged.
#[test]
fn client_process_logs_show_increasing_clocks_and_timestamps() {
    let server = spawn_server(&[]);
    let mut clients = Vec::new();
    for name in ["Alice", "Bob", "Carol"] {
        let client = spawn_client(&server.addr, name);
        client.wait_joined();
        clients.push(client);
    }
    for client in &clients {
        client.wait_for_event("Carol's join", |e| {
            e.joined().is_some_and(|(n, _)| n == "Carol")
        });
    }
    const EACH: usize = 20;
    for i in 0..EACH {
        for client in &mut clients {
            let text = format!("{} {i}", client.name);
            client.say(&text);
        }
    }
    for client in &clients {
        for sender in ["Alice", "Bob", "Carol"] {
            client.wait_for_message(sender, &format!("{sender} {}", EACH - 1));
        }
    }
    for client in &mut clients {
        client.close_stdin();
    }
    for client in &mut clients {
        assert!(client.child.wait_exit().success(), "{}", client.name);
    }

    for client in &clients {
        let name = &client.name;
        // Printed: timestamps and local clock strictly increase.
        let printed = client.events();
        let stamps: Vec<u64> = printed.iter().map(|e| e.lamport).collect();
        let locals: Vec<u64> = printed.iter().map(|e| e.local).collect();
        assert!(strictly_increasing(&stamps), "{name} printed {printed:#?}");
        assert!(strictly_increasing(&locals), "{name} printed {printed:#?}");
        assert!(printed.iter().all(|e| e.local > e.lamport), "{printed:#?}");

        // Logged: the clock at each request and each receive.
        let log = client.log_lines();
        let requests: Vec<u64> = log
            .iter()
            .filter(|l| l.contains("sending Publish") || l.contains("sending Leave"))
            .map(|l| log_field(l, "lamport").expect("lamport field"))
            .collect();
        let receives: Vec<u64> = log
            .iter()
            .filter(|l| l.contains("received broadcast"))
            .map(|l| log_field(l, "local").expect("local field"))
            .collect();
        assert_eq!(requests.len(), EACH + 1, "{EACH} publishes and a leave");
        assert!(strictly_increasing(&requests), "{name}: {requests:?}");
        assert_eq!(receives, locals, "{name} logged what it printed");
        let mut readings = HashSet::new();
        for value in requests.iter().chain(&receives) {
            assert!(readings.insert(*value), "{name}'s clock read {value} twice");
        }

        // The k-th request published the k-th message from this client, which
        // was stamped later than the request.
        let own: Vec<u64> = printed
            .iter()
            .filter(|e| e.message().is_some_and(|(sender, _)| sender == name))
            .map(|e| e.lamport)
            .collect();
        assert_eq!(own.len(), EACH);
        for (k, (stamped, request)) in own.iter().zip(&requests).enumerate() {
            assert!(
                stamped > request,
                "{name}'s message {k} was sent at {request} and stamped {stamped}"
            );
        }
    }
}
