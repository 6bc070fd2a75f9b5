//! `--log-format json`: every log line of nodes and clients is one JSON
//! object, and the diagram records (docs/logs.md) carry who, what, which
//! way, the event id and the Lamport time before and after the clock rule,
//! consistently on both sides of every call and with what the clients print.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const TARGET: &str = "chitty::diagram";

/// Node logs with the debug records too (deliveries, acknowledgements).
const NODE_LOG: &str = "info,chitty::diagram=debug";

fn json_server(extra: &[&str], label: &str, flag: bool) -> ServerProcess {
    let mut cmd = test_command(Command::new(CHITTY));
    cmd.args(["server", "--listen", "127.0.0.1:0"]).args(extra);
    // One node is told by the flag, the other by the environment.
    if flag {
        cmd.args(["--log-format", "json"]);
    } else {
        cmd.env("CHITTY_LOG_FORMAT", "json");
    }
    cmd.env("RUST_LOG", NODE_LOG);
    start_server_process(cmd, label)
}

fn json_client(addr: &str, name: &str) -> ClientProcess {
    let mut cmd = test_command(Command::new(CHITTY));
    cmd.env("CHITTY_LOG_FORMAT", "json");
    start_client_process(cmd, addr, name)
}

/// Every line parsed; fails naming the first line that is not a JSON object.
fn parse_all(who: &str, lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            _ => panic!("{who}: a log line that is not a JSON object: {line:?}"),
        })
        .collect()
}

/// The diagram records among `lines` (every line must parse).
fn records(who: &str, lines: &[String]) -> Vec<Value> {
    parse_all(who, lines)
        .into_iter()
        .filter(|v| v["target"] == TARGET)
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// The one record matching `pred`, failing with every record when there is
/// none or more than one.
fn one<'a>(
    who: &str,
    records: &'a [Value],
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    let found: Vec<&Value> = records.iter().filter(|r| pred(r)).collect();
    match found.as_slice() {
        [only] => only,
        _ => panic!(
            "{who}: expected one {what}, found {}; records:\n{}",
            found.len(),
            records
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn is(r: &Value, message: &str, call: &str, dir: &str) -> bool {
    r["message"] == message && r["call"] == call && r["dir"] == dir
}

/// Waits until `server`'s stderr holds a record matching `pred`.
fn wait_record(server: &ServerProcess, what: &str, pred: impl Fn(&Value) -> bool) {
    server.stderr.wait_until(what, |lines| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["target"] == TARGET && pred(&v))
            .then_some(())
    });
}

/// Every rpc and event record names who logged it, the call and the way.
fn check_common_fields(who: &str, records: &[Value]) {
    for r in records {
        let message = str_of(r, "message");
        assert!(r["timestamp"].is_string(), "{who}: no timestamp: {r}");
        match message {
            "start" => {
                assert_eq!(r["role"], "node", "{who}: {r}");
                str_of(r, "node");
                str_of(r, "node_addr");
                num(r, "generation");
            }
            "stamp" => {
                assert_eq!(r["role"], "node", "{who}: {r}");
                str_of(r, "node");
                str_of(r, "participant_id");
                num(r, "event_lamport");
                assert!(
                    str_of(r, "event").starts_with(str_of(r, "node")),
                    "{who}: {r}"
                );
            }
            "rpc" | "event" => {
                let role = str_of(r, "role");
                let call = str_of(r, "call");
                assert!(
                    [
                        "Join",
                        "Publish",
                        "PublishStream",
                        "Leave",
                        "Deliver",
                        "ServerJoin",
                        "ServerJoinReply",
                        "UpdateServers",
                        "RelayBatch",
                        "RelayAck"
                    ]
                    .contains(&call),
                    "{who}: unknown call in {r}"
                );
                assert!(
                    ["sent", "received"].contains(&str_of(r, "dir")),
                    "{who}: {r}"
                );
                match role {
                    "node" => {
                        str_of(r, "node");
                        str_of(r, "node_addr");
                        num(r, "generation");
                    }
                    "participant" => {
                        str_of(r, "participant");
                        str_of(r, "node_addr");
                        if call != "Join" {
                            str_of(r, "participant_id");
                            str_of(r, "node");
                        }
                    }
                    other => panic!("{who}: unknown role {other} in {r}"),
                }
                if !r["event"].is_null() {
                    let id = str_of(r, "event");
                    assert_eq!(id.split(':').count(), 3, "{who}: event id {id}");
                    num(r, "event_lamport");
                    str_of(r, "kind");
                }
                if !r["lamport_before"].is_null() {
                    assert!(
                        num(r, "lamport_before") <= num(r, "lamport_after"),
                        "{who}: clock went back: {r}"
                    );
                }
            }
            other => panic!("{who}: unknown record {other}: {r}"),
        }
    }
}

#[test]
fn json_logs_tell_every_call_and_event_on_both_sides() {
    let a = json_server(&[], "node A", true);
    let b = json_server(&["--boot", &a.addr], "node B", false);

    let mut x = json_client(&a.addr, "X");
    x.wait_joined();
    let mut y = json_client(&b.addr, "Y");
    y.wait_joined();
    x.wait_for_event("Y's join", |e| e.joined().is_some_and(|(n, _)| n == "Y"));
    x.say("hello from X");
    let x_hello_at_y = y.wait_for_message("X", "hello from X");
    y.say("hi X");
    let y_hi_at_x = x.wait_for_message("Y", "hi X");
    let x_hello_at_x = x.wait_for_message("X", "hello from X");
    let y_hi_at_y = y.wait_for_message("Y", "hi X");
    x.close_stdin();
    assert!(x.child.wait_exit().success(), "X did not leave cleanly");
    y.wait_for_event("X's departure", |e| e.left().is_some_and(|(n, _)| n == "X"));
    y.close_stdin();
    assert!(y.child.wait_exit().success(), "Y did not leave cleanly");
    // Y's departure reaches A last.
    wait_record(&a, "Y's left relayed to A", |r| {
        is(r, "rpc", "RelayBatch", "received") && r["participant"] == "Y" && r["kind"] == "left"
    });

    let a_recs = records("node A", &a.stderr.snapshot());
    let b_recs = records("node B", &b.stderr.snapshot());
    let x_recs = records("client X", &x.log_lines());
    let y_recs = records("client Y", &y.log_lines());
    for (who, recs) in [
        ("node A", &a_recs),
        ("node B", &b_recs),
        ("client X", &x_recs),
        ("client Y", &y_recs),
    ] {
        check_common_fields(who, recs);
    }

    // Who the nodes are, and that B joined through A.
    let a_start = one("node A", &a_recs, "start", |r| r["message"] == "start");
    let b_start = one("node B", &b_recs, "start", |r| r["message"] == "start");
    assert!(a_start["boot"].is_null());
    assert_eq!(b_start["boot"], a.addr.as_str());
    assert_eq!(a_start["node_addr"], a.addr.as_str());
    let a_id = str_of(a_start, "node");
    let b_id = str_of(b_start, "node");
    one("node B", &b_recs, "ServerJoin sent", |r| {
        is(r, "rpc", "ServerJoin", "sent") && r["peer_addr"] == a.addr.as_str()
    });
    one("node A", &a_recs, "ServerJoin received", |r| {
        is(r, "rpc", "ServerJoin", "received") && r["peer"] == b_id
    });
    let reply = one("node B", &b_recs, "ServerJoinReply", |r| {
        is(r, "rpc", "ServerJoinReply", "received")
    });
    assert_eq!(
        num(reply, "lamport_after"),
        num(reply, "lamport_before").max(num(reply, "lamport_carried")) + 1
    );

    // The joins: the participant's request time is what the node received.
    let x_id = check_join("X", &x_recs, &a_recs, a_id);
    let y_id = check_join("Y", &y_recs, &b_recs, b_id);

    // Each message: published at its node, relayed, delivered on both sides.
    let hello = check_message(
        ("X", &x_id, &x_recs, &x_hello_at_x),
        ("Y", &y_recs, &x_hello_at_y),
        ("node A", &a_recs, a_id),
        ("node B", &b_recs, b_id),
    );
    let hi = check_message(
        ("Y", &y_id, &y_recs, &y_hi_at_y),
        ("X", &x_recs, &y_hi_at_x),
        ("node B", &b_recs, b_id),
        ("node A", &a_recs, a_id),
    );
    assert!(hello.1 < hi.1, "the reply is stamped after what it answers");

    // X's leave.
    let sent = one("client X", &x_recs, "Leave sent", |r| {
        is(r, "rpc", "Leave", "sent")
    });
    let received = one("node A", &a_recs, "Leave received", |r| {
        is(r, "rpc", "Leave", "received") && r["participant_id"] == x_id.as_str()
    });
    assert_eq!(
        num(sent, "lamport_carried"),
        num(received, "lamport_carried")
    );
    assert_eq!(num(sent, "lamport_carried"), num(sent, "lamport_after"));
    assert_eq!(
        num(received, "lamport_after"),
        num(received, "lamport_before").max(num(received, "lamport_carried")) + 1
    );
    assert_eq!(received["kind"], "left");
    let left = str_of(received, "event");
    let y_saw = y
        .events()
        .into_iter()
        .find(|e| e.left().is_some_and(|(n, _)| n == "X"))
        .expect("Y printed X's departure");
    assert_eq!(num(received, "event_lamport"), y_saw.lamport);
    let delivered = one("client Y", &y_recs, "X's left delivered", |r| {
        is(r, "event", "Deliver", "received") && r["event"] == left
    });
    assert_eq!(num(delivered, "lamport_after"), y_saw.local);

    // Acknowledgements name what the peer holds.
    let acked = b_recs.iter().any(|r| {
        is(r, "rpc", "RelayAck", "sent")
            && r["peer"] == a_id
            && r["held"]
                .as_str()
                .is_some_and(|h| h.split(',').any(|m| m == hello.0))
    });
    assert!(acked, "node B acknowledges X's message to A");
    let ack_seen = a_recs.iter().any(|r| {
        is(r, "rpc", "RelayAck", "received")
            && r["peer"] == b_id
            && r["held"]
                .as_str()
                .is_some_and(|h| h.split(',').any(|m| m == hello.0))
    });
    assert!(ack_seen, "node A logs B's acknowledgement of X's message");
}

/// Checks `name`'s join: sent by the client, received by its node with the
/// same request time; returns the participant's id.
fn check_join(name: &str, client: &[Value], node: &[Value], node_id: &str) -> String {
    let sent = one(name, client, "Join sent", |r| is(r, "rpc", "Join", "sent"));
    assert_eq!(num(sent, "lamport_before") + 1, num(sent, "lamport_after"));
    let received = one("node", node, "Join received", |r| {
        is(r, "rpc", "Join", "received") && r["participant"] == name
    });
    assert_eq!(
        num(sent, "lamport_carried"),
        num(received, "lamport_carried")
    );
    assert_eq!(
        num(received, "lamport_after"),
        num(received, "lamport_before").max(num(received, "lamport_carried")) + 1
    );
    assert_eq!(
        num(received, "event_lamport"),
        num(received, "lamport_after")
    );
    assert_eq!(received["kind"], "joined");
    let id = str_of(received, "participant_id").to_string();
    // The client learns its id and node from the Welcome: its own join's
    // delivery names both.
    let own = one(name, client, "own join delivered", |r| {
        is(r, "event", "Deliver", "received") && r["event"] == received["event"]
    });
    assert_eq!(own["participant_id"], id.as_str());
    assert_eq!(own["node"], node_id);
    id
}

/// Checks one message from `author` (on `home`) to `reader` (on `away`):
/// the publish request, the stamp, the relay both ways, the deliveries and
/// what both clients printed. Returns the event id and its stamp.
fn check_message(
    (author, author_id, author_recs, author_line): (&str, &str, &[Value], &EventLine),
    (reader, reader_recs, reader_line): (&str, &[Value], &EventLine),
    (home_name, home, home_id): (&str, &[Value], &str),
    (away_name, away, away_id): (&str, &[Value], &str),
) -> (String, u64) {
    let stamp = author_line.lamport;
    assert_eq!(reader_line.lamport, stamp);
    let received = one(home_name, home, "Publish received", |r| {
        is(r, "rpc", "Publish", "received") && r["participant_id"] == author_id
    });
    let event = str_of(received, "event").to_string();
    assert!(
        event.starts_with(&format!("{home_id}:")),
        "{event} comes from {home_name}"
    );
    assert_eq!(received["kind"], "message");
    assert_eq!(num(received, "event_lamport"), stamp);
    assert_eq!(num(received, "lamport_after"), stamp);
    assert!(num(received, "lamport_before") < stamp);
    assert_eq!(
        stamp,
        num(received, "lamport_before").max(num(received, "lamport_carried")) + 1
    );

    // Stamped once, at the home node only.
    let stamped = one(home_name, home, "stamp", |r| {
        r["message"] == "stamp" && r["event"] == event.as_str()
    });
    assert_eq!(num(stamped, "event_lamport"), stamp);
    assert!(
        !away
            .iter()
            .any(|r| r["message"] == "stamp" && r["event"] == event.as_str())
    );

    // The request as the author sent it.
    let sent = one(author, author_recs, "Publish sent", |r| {
        is(r, "rpc", "Publish", "sent")
            && num(r, "lamport_carried") == num(received, "lamport_carried")
    });
    assert_eq!(num(sent, "lamport_before") + 1, num(sent, "lamport_after"));

    // Relayed: sent by the home node, received by the other, same id.
    let relayed = one(home_name, home, "RelayBatch sent", |r| {
        is(r, "rpc", "RelayBatch", "sent") && r["event"] == event.as_str()
    });
    assert_eq!(relayed["peer"], away_id);
    assert_eq!(num(relayed, "event_lamport"), stamp);
    let arrived = one(away_name, away, "RelayBatch received", |r| {
        is(r, "rpc", "RelayBatch", "received") && r["event"] == event.as_str()
    });
    assert_eq!(arrived["peer"], home_id);
    assert_eq!(num(arrived, "event_lamport"), stamp);
    assert_eq!(
        num(arrived, "lamport_after"),
        num(arrived, "lamport_before").max(stamp) + 1
    );

    // Delivered by each node (debug records) and received by each client,
    // with the clock each client printed.
    one(home_name, home, "Deliver sent to the author", |r| {
        is(r, "event", "Deliver", "sent")
            && r["event"] == event.as_str()
            && r["participant_id"] == author_id
    });
    assert!(
        away.iter()
            .any(|r| is(r, "event", "Deliver", "sent") && r["event"] == event.as_str()),
        "{away_name} delivers {event}"
    );
    for (who, recs, line) in [
        (author, author_recs, author_line),
        (reader, reader_recs, reader_line),
    ] {
        let got = one(who, recs, "Deliver received", |r| {
            is(r, "event", "Deliver", "received") && r["event"] == event.as_str()
        });
        assert_eq!(num(got, "event_lamport"), stamp, "{who}");
        assert!(
            num(got, "lamport_before") < num(got, "lamport_after"),
            "{who}: {got}"
        );
        assert_eq!(
            num(got, "lamport_after"),
            line.local,
            "{who}: the printed local time"
        );
        assert_eq!(
            num(got, "lamport_after"),
            num(got, "lamport_before").max(stamp) + 1,
            "{who}"
        );
    }
    (event, stamp)
}

#[test]
fn text_logs_stay_text_and_a_wrong_format_is_refused() {
    // The default and `--log-format text`: lines for people, no records.
    let mut plain = spawn_server(&[]);
    let mut text = spawn_server(&["--log-format", "text"]);
    for server in [&plain, &text] {
        let line = server
            .stderr
            .wait_for_line("the serving line", |l| l.contains("serving Chitty-Chat"));
        assert!(!line.trim_start().starts_with('{'), "not JSON: {line}");
        assert!(line.contains(" INFO "), "{line}");
    }
    let mut x = spawn_client(&text.addr, "X");
    x.wait_joined();
    x.close_stdin();
    assert!(x.child.wait_exit().success());
    for line in x.log_lines().iter().chain(&text.stderr.snapshot()) {
        assert!(
            !line.trim_start().starts_with('{'),
            "a JSON line in a text log: {line}"
        );
        assert!(
            !line.contains(TARGET),
            "a diagram record in a text log: {line}"
        );
    }
    assert!(
        x.log_lines()
            .iter()
            .any(|l| l.contains("received broadcast") && l.contains(" lamport="))
    );
    plain.child.kill();
    text.child.kill();

    // Anything else is refused by the flag parser, naming what is accepted.
    for args in [
        &["server", "--log-format", "yaml"][..],
        &["client", "--log-format", "JSON5"][..],
    ] {
        let out = test_command(Command::new(CHITTY))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run chitty");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid value"), "{err}");
        assert!(err.contains("--log-format"), "{err}");
        assert!(err.contains("[possible values: text, json]"), "{err}");
    }
    let out = test_command(Command::new(CHITTY))
        .args(["server"])
        .env("CHITTY_LOG_FORMAT", "xml")
        .stdin(Stdio::null())
        .output()
        .expect("run chitty");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'xml'"));
}
