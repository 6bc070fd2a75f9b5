//! `chitty send`, `chitty watch` and `--json`, as a script uses them: real
//! processes with piped output.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn send_publishes_and_leaves_and_watch_prints_it_as_json() {
    let server = spawn_server(&[]);
    let (mut watch, watched, watch_err) =
        start_chitty(&["watch", "--server", &server.addr, "--json"]);
    let here = watched.wait_for_line("the here summary", |l| l.contains("\"here\""));
    assert_eq!(json(&here)["names"], serde_json::json!([]), "{here}");
    let own = watched.wait_for_line("the watcher's join", |l| l.contains("\"joined\""));
    let own = json(&own);
    let watcher = own["name"].as_str().expect("a name").to_string();
    assert!(watcher.starts_with("watch-"), "{own}");
    let notice = watch_err.wait_for_line("the notice", |l| l.contains("watching"));
    assert!(notice.contains("read-only"), "{notice}");

    let (mut send, sent, send_err) = start_chitty(&[
        "send",
        "--server",
        &server.addr,
        "--name",
        "Sam",
        "one",
        "two",
    ]);
    let status = send.wait_exit();
    assert!(
        status.success(),
        "{status}: {:?}",
        send_err.wait_closed("send's stderr")
    );
    let sent = sent.wait_closed("send's stdout");
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].starts_with("sent at Lamport time ") && sent[0].ends_with(": one"));

    let left = watched.wait_for_line("Sam's leave", |l| {
        l.contains("\"left\"") && l.contains("\"Sam\"")
    });
    let events: Vec<Value> = watched
        .snapshot()
        .iter()
        .map(|l| json(l))
        .filter(|v| v["name"] == "Sam")
        .collect();
    let kinds: Vec<&str> = events.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["joined", "message", "message", "left"],
        "{events:?}"
    );
    assert_eq!(events[1]["text"], "one");
    assert_eq!(events[2]["text"], "two");
    let lamports: Vec<u64> = events
        .iter()
        .map(|v| v["lamport"].as_u64().unwrap())
        .collect();
    assert!(lamports.windows(2).all(|w| w[0] < w[1]), "{lamports:?}");
    for v in &events {
        assert!(
            v["local"].as_u64().unwrap() > v["lamport"].as_u64().unwrap(),
            "{v}"
        );
        assert!(v["origin"].is_string() && v["seq"].is_u64(), "{v}");
    }
    assert!(
        json(&left)["text"]
            .as_str()
            .unwrap()
            .starts_with("Participant Sam left")
    );

    // --json for send; the messages of a later joiner come as earlier.
    let (mut send, sent, _) = start_chitty(&[
        "send",
        "--server",
        &server.addr,
        "--name",
        "Sam",
        "--json",
        "three",
    ]);
    assert!(send.wait_exit().success());
    let sent = sent.wait_closed("send's stdout");
    let three = json(&sent[0]);
    assert_eq!(three["kind"], "sent");
    assert_eq!(three["text"], "three");
    assert!(three["lamport"].is_u64());
    let (_late, late_out, _) = start_chitty(&[
        "watch",
        "--server",
        &server.addr,
        "--json",
        "--name",
        "late",
    ]);
    late_out.wait_for_line("the late watcher's join", |l| {
        l.contains("\"joined\"") && l.contains("\"late\"")
    });
    let earlier: Vec<Value> = late_out
        .snapshot()
        .iter()
        .map(|l| json(l))
        .filter(|v| v["earlier"] == true)
        .collect();
    let texts: Vec<&str> = earlier
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let here = json(&late_out.snapshot()[0]);
    assert_eq!(here["names"], serde_json::json!([watcher]));

    // Ctrl-C leaves.
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(watch.id() as libc::pid_t, libc::SIGINT) };
    assert!(watch.wait_exit().success());
}

#[test]
fn send_refuses_a_bad_message_before_joining() {
    let server = spawn_server(&[]);
    let long = "x".repeat(129);
    let (mut send, _, err) =
        start_chitty(&["send", "--server", &server.addr, "--name", "Sam", &long]);
    assert!(!send.wait_exit().success());
    let err = err.wait_closed("stderr").join("\n");
    assert!(err.contains("nothing was sent"), "{err}");
}

#[test]
fn the_common_mistakes_get_clear_errors() {
    // A port that is not a Chitty node: it greets like an SSH server.
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let other_addr = other.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in other.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = std::io::Write::write_all(&mut conn, b"SSH-2.0-OpenSSH_9.6\r\n");
        }
    });
    // A port where nothing listens.
    let free_addr = format!("127.0.0.1:{}", free_port());

    let stderr_of = |args: &[&str]| {
        // `client` takes no text; `send` does.
        let args: Vec<&str> = if args[0] == "client" {
            args[..args.len() - 1].to_vec()
        } else {
            args.to_vec()
        };
        let (mut child, _, err) = start_chitty(&args);
        let status = child.wait_exit();
        assert!(!status.success(), "{args:?}");
        err.wait_closed("stderr").join("\n")
    };
    for command in ["client", "send"] {
        let err = stderr_of(&[command, "--server", &other_addr, "--name", "x", "hi"]);
        assert!(err.contains("is this a Chitty node?"), "{command}: {err}");
        assert!(!err.contains("h2 protocol error:"), "{command}: {err}");

        let err = stderr_of(&[command, "--server", &free_addr, "--name", "x", "hi"]);
        assert!(err.contains("connection refused"), "{command}: {err}");
        assert!(
            err.contains(&format!("chitty server --listen {free_addr}")),
            "{command}: {err}"
        );

        let err = stderr_of(&[command, "--server", "50053", "--name", "x", "hi"]);
        assert!(
            err.contains("the host is missing") && err.contains("127.0.0.1:50053"),
            "{command}: {err}"
        );
    }
}

#[test]
fn send_publishes_each_line_of_its_input_as_it_comes() {
    use std::io::Write;
    let server = spawn_server(&[]);
    let (_watch, watched, _) = start_chitty(&["watch", "--server", &server.addr, "--json"]);
    watched.wait_for_line("the watcher's join", |l| l.contains("\"joined\""));

    let mut child = test_command(Command::new(CHITTY))
        .args(["send", "--server", &server.addr, "--name", "Pat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chitty send");
    let mut input = child.stdin.take().expect("piped");
    let sent = Lines::collect(child.stdout.take().expect("piped"));
    let err = Lines::collect(child.stderr.take().expect("piped"));
    let mut send = ChildGuard::new(child, "chitty send (stdin)");

    // The first line is sent while the input is still open.
    input.write_all(b"first\n").unwrap();
    watched.wait_for_line("the first line", |l| {
        l.contains("\"message\"") && l.contains("\"first\"")
    });
    sent.wait_for_line("send's report of it", |l| l.ends_with(": first"));
    input.write_all(b"second\n").unwrap();
    watched.wait_for_line("the second line", |l| {
        l.contains("\"message\"") && l.contains("\"second\"")
    });

    // A line that is not UTF-8 is an error naming it, not a quiet end.
    input.write_all(b"\xff\xfe\nnot sent\n").unwrap();
    drop(input);
    let status = send.wait_exit();
    assert!(!status.success(), "{status}");
    let err = err.wait_closed("send's stderr").join("\n");
    assert!(err.contains("line 3 is not UTF-8"), "{err}");
    watched.wait_for_line("Pat's leave", |l| {
        l.contains("\"left\"") && l.contains("\"Pat\"")
    });
    assert!(
        !watched.snapshot().iter().any(|l| l.contains("not sent")),
        "{:?}",
        watched.snapshot()
    );
}
