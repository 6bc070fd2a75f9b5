//! Participants as separate processes of the real `chitty` binary, talking to
//! a `chitty server` process: what each one prints is what is checked.
//!
//! Each client is driven through its standard input (every line is
//! published; end of input leaves) and its standard output is collected line
//! by line (`[lamport L | local C] ...`).

mod common;

use common::*;

/// Starts one client per name, each after the previous one has printed its
/// own join, and waits until every one has seen the last join.
fn spawn_clients(addr: &str, names: &[&str]) -> Vec<ClientProcess> {
    let mut clients = Vec::new();
    for name in names {
        let client = spawn_client(addr, name);
        client.wait_joined();
        clients.push(client);
    }
    let last = names.last().expect("at least one name").to_string();
    for client in &clients {
        client.wait_for_event(&format!("{last}'s join"), |e| {
            e.joined().is_some_and(|(n, _)| n == last)
        });
    }
    clients
}

/// Checks that every observer printed the exact "left" line for `name` once,
/// with the line's timestamp as L. A marker published by `marker_from` after
/// the leave must arrive after it, so no duplicate was broadcast before.
fn assert_left_once(observers: &mut [ClientProcess], name: &str, marker_from: usize) -> u64 {
    let mut lamport = None;
    for observer in observers.iter() {
        let line = observer.wait_for_event(&format!("{name}'s leave"), |e| {
            e.left().is_some_and(|(n, _)| n == name)
        });
        assert_eq!(
            line.body,
            left_text(name, line.lamport),
            "the exact wording, with L the event's timestamp"
        );
        assert_eq!(*lamport.get_or_insert(line.lamport), line.lamport);
    }
    let marker = format!("after {name} left");
    observers[marker_from].say(&marker);
    let sender = observers[marker_from].name.clone();
    for observer in observers.iter() {
        observer.wait_for_message(&sender, &marker);
        let events = observer.events();
        let lefts: Vec<_> = events
            .iter()
            .filter(|e| e.left().is_some_and(|(n, _)| n == name))
            .collect();
        assert_eq!(
            lefts.len(),
            1,
            "{} printed {name}'s leave once: {lefts:?}",
            observer.name
        );
        let left_at = events
            .iter()
            .position(|e| e.left().is_some_and(|(n, _)| n == name))
            .unwrap();
        let marker_at = events
            .iter()
            .position(|e| e.is_message(&sender, &marker))
            .unwrap();
        assert!(left_at < marker_at, "{}: {events:?}", observer.name);
    }
    lamport.expect("at least one observer")
}

#[test]
fn three_client_processes_all_receive_every_message_in_the_same_order() {
    let server = spawn_server(&[]);
    let mut clients = spawn_clients(&server.addr, &["Alice", "Bob", "Carol"]);

    // Everyone talks at once.
    for round in 1..=3 {
        for client in &mut clients {
            let text = format!("{} says {round}", client.name);
            client.say(&text);
        }
    }
    for client in &clients {
        for sender in ["Alice", "Bob", "Carol"] {
            for round in 1..=3 {
                client.wait_for_message(sender, &format!("{sender} says {round}"));
            }
        }
    }

    // Same events, same timestamps, same order for everyone.
    let messages = |client: &ClientProcess| -> Vec<(u64, String)> {
        client
            .events()
            .into_iter()
            .filter(|e| e.message().is_some())
            .map(|e| (e.lamport, e.body))
            .collect()
    };
    let first = messages(&clients[0]);
    assert_eq!(first.len(), 9, "{first:?}");
    for client in &clients[1..] {
        assert_eq!(messages(client), first, "{} vs Alice", client.name);
    }

    for client in &mut clients {
        client.close_stdin();
    }
    for client in &mut clients {
        let status = client.child.wait_exit();
        assert!(status.success(), "{} exited with {status}", client.name);
    }
}

#[test]
fn a_client_process_that_joins_late_sees_its_own_join_first_and_then_the_chat() {
    let server = spawn_server(&[]);
    let mut clients = spawn_clients(&server.addr, &["Alice", "Bob"]);
    clients[0].say("before Carol came");
    for client in &clients {
        client.wait_for_message("Alice", "before Carol came");
    }

    let carol = spawn_client(&server.addr, "Carol");
    let joined = carol.wait_joined();
    assert_eq!(
        carol.events().first(),
        Some(&joined),
        "Carol's first line is her own join"
    );
    assert_eq!(joined.body, joined_text("Carol", joined.lamport));

    for client in &clients {
        let seen = client.wait_for_event("Carol's join", |e| {
            e.joined().is_some_and(|(n, _)| n == "Carol")
        });
        assert_eq!(
            (seen.lamport, &seen.body),
            (joined.lamport, &joined.body),
            "{} saw the same join",
            client.name
        );
    }

    clients[1].say("welcome Carol");
    for client in clients.iter().chain([&carol]) {
        client.wait_for_message("Bob", "welcome Carol");
    }
}

#[test]
fn a_client_process_that_reaches_end_of_input_is_announced_as_left_exactly_once() {
    let mut cmd = test_command(std::process::Command::new(CHITTY));
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "chitty=debug");
    let server = start_server_process(cmd, "chitty server");
    let mut clients = spawn_clients(&server.addr, &["Alice", "Bob", "Carol"]);
    let mut bob = clients.remove(1);
    bob.say("bye");
    bob.close_stdin();
    let status = bob.child.wait_exit();
    assert!(status.success(), "Bob exited with {status}");

    let lamport = assert_left_once(&mut clients, "Bob", 0);
    // Bob was told the same time.
    bob.stderr.wait_for_line("Bob's own leave time", |l| {
        l.contains(&format!("left Chitty-Chat at Lamport time {lamport}"))
    });
    for client in &clients {
        client.wait_for_message("Bob", "bye");
    }
    // The node logs the Leave (its log is written in batches: waited for),
    // and not also a session that ended without one, up to a message
    // published after Bob's process was gone.
    server
        .stderr
        .wait_for_line("the node's log of Bob's Leave", |l| {
            l.contains("Leave") && l.contains("Bob")
        });
    clients[0].say("after Bob");
    server
        .stderr
        .wait_for_line("the node's log of Alice's later Publish", |l| {
            l.contains("Publish") && l.contains("participant=Alice")
        });
    let log = server.stderr.snapshot();
    assert!(!log.iter().any(|l| l.contains("without Leave")), "{log:#?}");
}

#[test]
fn a_client_process_that_types_quit_is_announced_as_left_exactly_once() {
    let server = spawn_server(&[]);
    let mut clients = spawn_clients(&server.addr, &["Alice", "Bob", "Carol"]);
    let mut carol = clients.remove(2);
    carol.say("/quit");
    let status = carol.child.wait_exit();
    assert!(status.success(), "Carol exited with {status}");
    assert!(
        !clients[0]
            .stdout
            .snapshot()
            .iter()
            .any(|l| l.contains("/quit")),
        "/quit is a command, not a message"
    );
    assert_left_once(&mut clients, "Carol", 1);
}

#[test]
fn a_client_process_killed_with_sigkill_is_announced_as_left_exactly_once() {
    // A participant whose connection breaks may resume its session within a
    // grace period before it is announced as left; a short one keeps the
    // test quick.
    let server = spawn_server(&["--grace-ms", "300"]);
    let mut clients = spawn_clients(&server.addr, &["Alice", "Bob", "Carol"]);
    let mut carol = clients.remove(2);
    carol.say("about to be killed");
    for client in &clients {
        client.wait_for_message("Carol", "about to be killed");
    }
    carol.child.kill(); // SIGKILL: no Leave, no goodbye

    assert_left_once(&mut clients, "Carol", 0);

    // The name is free again, and a new Carol joins normally.
    let carol_again = spawn_client(&server.addr, "Carol");
    carol_again.wait_joined();
    for client in &clients {
        client.wait_for_event("the new Carol's join", |e| {
            e.joined().is_some_and(|(n, _)| n == "Carol")
        });
    }
}

#[test]
fn a_client_process_interrupted_with_ctrl_c_leaves_and_is_announced_once() {
    let server = spawn_server(&[]);
    let mut clients = spawn_clients(&server.addr, &["Alice", "Bob", "Carol"]);
    let mut alice = clients.remove(0);
    // A published and received line shows Alice's input loop is running (and
    // with it her Ctrl-C handler), not just that she has joined.
    alice.say("ready");
    alice.wait_for_message("Alice", "ready");
    let sent = std::process::Command::new("kill")
        .args(["-s", "INT", &alice.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let status = alice.child.wait_exit();
    assert!(status.success(), "Alice exited with {status} after Ctrl-C");
    assert_left_once(&mut clients, "Alice", 0);
}
