//! `chitty client` on a pseudo-terminal, as a person uses it: the commands,
//! the single echo of one's own message, a refused line kept for editing,
//! the input history, the connection state lines, leaving on SIGHUP and a
//! taken name asked for again. The screen is checked as a terminal shows it.

mod common;

use common::pty::{PtyProcess, spawn_on_pty};
use common::*;

/// `chitty client --server ADDR --name NAME` on a terminal, once it has
/// joined and shows its prompt.
fn terminal_client(addr: &str, name: &str) -> PtyProcess {
    let client = spawn_on_pty(&["client", "--server", addr, "--name", name], &[]);
    client.wait_for(&format!("joined Chitty-Chat at {addr} as {name}"));
    client.wait_for(&format!("Participant {name} joined"));
    wait_prompt(&client);
    client
}

/// Waits until the line editor shows its prompt: keys typed before it is
/// active are echoed by the terminal itself.
fn wait_prompt(client: &PtyProcess) {
    client.wait_screen("the prompt", |s| {
        s.lines().last().is_some_and(|l| l.trim_end() == ">")
    });
}

/// How often `text` appears on the screen.
fn count(screen: &str, text: &str) -> usize {
    screen.matches(text).count()
}

#[test]
fn commands_answer_on_the_terminal_and_are_never_published() {
    let server = spawn_server(&[]);
    let bob = spawn_client(&server.addr, "Bob");
    bob.wait_joined();
    let mut alice = terminal_client(&server.addr, "Alice");

    alice.type_keys("/who\r");
    alice.wait_for("[who] 2 here: Alice, Bob");

    alice.type_keys("/help\r");
    alice.wait_for("/who      who is in the room");

    alice.type_keys("/nick Al\r");
    alice.wait_for("error: unknown command /nick: nothing was sent");

    // A doubled slash publishes a line that starts with one.
    alice.type_keys("//shrug\r");
    bob.wait_for_message("Alice", "/shrug");
    alice.wait_for("Alice: /shrug");

    let said: Vec<String> = bob
        .events()
        .iter()
        .filter_map(|e| e.message().map(|(_, text)| text.to_string()))
        .collect();
    assert_eq!(said, ["/shrug"], "no command was published");

    alice.type_keys("/quit\r");
    alice.wait_for("left Chitty-Chat at Lamport time");
    assert!(alice.child.wait_exit().success());
    bob.wait_for_event("Alice's leave", |e| {
        e.left().is_some_and(|(n, _)| n == "Alice")
    });
}

#[test]
fn an_own_message_is_shown_once_and_a_refused_line_comes_back_for_editing() {
    let server = spawn_server(&[]);
    let mut alice = terminal_client(&server.addr, "Alice");

    alice.type_keys("hello there\r");
    let screen = alice.wait_for("Alice: hello there");
    assert_eq!(
        count(&screen, "hello there"),
        1,
        "the typed line gives way to the echo:\n{screen}\n{:?}",
        alice.raw()
    );
    assert!(screen.contains("[lamport "), "{screen}");

    // 129 characters: one more than a message may have.
    let long = "x".repeat(129);
    alice.type_keys(&format!("{long}\r"));
    let screen = alice.wait_for("error: message not sent");
    let screen = if screen.contains(&format!("> {long}")) {
        screen
    } else {
        alice.wait_screen("the refused line back on the prompt", |s| {
            s.contains(&format!("> {long}"))
        })
    };
    assert!(screen.contains("the limit is 128"), "{screen}");
    // Shortened by one (Backspace), it goes.
    alice.type_keys("\x7f\r");
    let kept = "x".repeat(128);
    alice.wait_for(&format!("Alice: {kept}"));

    // Up brings back the lines typed before, newest first.
    alice.type_keys("\x1b[A\x1b[A");
    alice.wait_screen("the second to last line on the prompt", |s| {
        s.lines()
            .last()
            .is_some_and(|l| l.trim_end() == format!("> {long}"))
    });
    alice.type_keys("\x1b[A");
    alice.wait_screen("the first line on the prompt", |s| {
        s.lines()
            .last()
            .is_some_and(|l| l.trim_end() == "> hello there")
    });
    alice.type_keys("\r");
    let screen = alice.wait_screen("hello there sent twice", |s| {
        count(s, "Alice: hello there") == 2
    });
    assert_eq!(count(&screen, "hello there"), 2, "{screen}");
}

#[test]
fn the_client_says_when_no_node_answers_and_when_one_does_again() {
    let server = spawn_server(&[]);
    let addr = server.addr.clone();
    let alice = terminal_client(&addr, "Alice");
    drop(server); // killed

    alice.wait_for("[connection] no node answers");
    alice.wait_for("still trying");

    // A node comes back on the same address (a new node: the session is
    // joined again).
    let mut cmd = test_command(std::process::Command::new(CHITTY));
    cmd.args(["server", "--listen", &addr]);
    let _again = start_server_process(cmd, "chitty server (again)");
    alice.wait_for("[connection] back:");
    alice.wait_screen("Alice's second join", |s| {
        count(s, "Participant Alice joined") == 2
    });
}

#[test]
fn a_closed_terminal_leaves_like_ctrl_c() {
    let server = spawn_server(&[]);
    let bob = spawn_client(&server.addr, "Bob");
    bob.wait_joined();
    let mut alice = terminal_client(&server.addr, "Alice");
    alice.signal(libc::SIGHUP);
    let left = bob.wait_for_event("Alice's leave", |e| {
        e.left().is_some_and(|(n, _)| n == "Alice")
    });
    assert_eq!(left.body, left_text("Alice", left.lamport));
    let status = alice.child.wait_exit();
    assert!(status.success(), "{status}");
}

#[test]
fn a_taken_name_is_asked_for_again() {
    let server = spawn_server(&[]);
    let bob = spawn_client(&server.addr, "Bob");
    bob.wait_joined();
    let mut other = spawn_on_pty(&["client", "--server", &server.addr, "--name", "Bob"], &[]);
    other.wait_for("already taken");
    other.wait_screen("the question", |s| {
        s.lines()
            .last()
            .is_some_and(|l| l.trim_end() == "Your name:")
    });
    other.type_keys("Bobby\r");
    other.wait_for(&format!("joined Chitty-Chat at {} as Bobby", server.addr));
    bob.wait_for_event("Bobby's join", |e| {
        e.joined().is_some_and(|(n, _)| n == "Bobby")
    });
}

#[test]
fn joining_shows_who_is_there_and_the_latest_messages_as_earlier() {
    let server = spawn_server(&[]);
    let mut bob = spawn_client(&server.addr, "Bob");
    bob.wait_joined();
    for text in ["one", "two", "three"] {
        bob.say(text);
        bob.wait_for_message("Bob", text);
    }
    let alice = spawn_on_pty(
        &[
            "client",
            "--server",
            &server.addr,
            "--name",
            "Alice",
            "--recent",
            "2",
            "--layout",
            "lamport",
        ],
        &[],
    );
    let screen = alice.wait_for("Participant Alice joined");
    let lines: Vec<&str> = screen.lines().collect();
    let at = |text: &str| {
        lines
            .iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text:?} is not on the screen:\n{screen}"))
    };
    assert!(screen.contains("[here] 1 other: Bob"), "{screen}");
    assert!(
        !screen.contains("Bob: one"),
        "only the latest two:\n{screen}"
    );
    let two = at("Bob: two");
    let three = at("Bob: three");
    let joined = at("Participant Alice joined");
    assert!(two < three && three < joined, "{screen}");
    // Marked as earlier, with the receive rule applied: the local clock
    // passes each message's timestamp and the own join's comes after.
    let mut clock = 0;
    for line in [lines[two], lines[three]] {
        let event = line
            .strip_prefix("[earlier] ")
            .and_then(EventLine::parse)
            .unwrap_or_else(|| panic!("not an earlier event line: {line:?}"));
        assert!(event.local > event.lamport && event.local > clock, "{line}");
        clock = event.local;
    }
    let own = EventLine::parse(lines[joined]).expect("the join line");
    assert!(own.local > clock, "{screen}");

    // Without --recent, piped: the same summary on stdout, the default
    // number of messages.
    let carol = spawn_client(&server.addr, "Carol");
    carol.wait_joined();
    let out = carol.stdout.snapshot();
    assert!(
        out.iter().any(|l| l == "[here] 2 others: Alice, Bob"),
        "{out:?}"
    );
    let earlier: Vec<&String> = out.iter().filter(|l| l.starts_with("[earlier] ")).collect();
    assert_eq!(earlier.len(), 3, "{out:?}");
}

#[test]
fn a_name_held_by_a_dropped_session_says_when_it_frees() {
    let server = spawn_server(&[]);
    let mut alice = terminal_client(&server.addr, "Alice");
    alice.child.kill();
    // Until the node notices the broken connection, the name is simply
    // taken; then it is held for the grace period (10 s by default).
    let deadline = std::time::Instant::now() + DEADLINE;
    let said = loop {
        let mut again = spawn_client(&server.addr, "Alice");
        let status = again.child.wait_exit();
        let err = again.stderr.wait_closed("the refusal").join("\n");
        assert!(!status.success(), "the name is not free yet: {err}");
        if err.contains("held by a session that lost its connection") {
            break err;
        }
        assert!(err.contains("already taken"), "{err}");
        assert!(std::time::Instant::now() < deadline, "{err}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        said.contains("your own, if your client was just cut off"),
        "{said}"
    );
    let secs: u64 = said
        .split("it is freed in ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {said:?}"));
    assert!((1..=10).contains(&secs), "{said}");

    // In a terminal the client asks for another name.
    let mut retry = spawn_on_pty(
        &["client", "--server", &server.addr, "--name", "Alice"],
        &[],
    );
    retry.wait_for("held by a session that lost its connection");
    retry.wait_screen("the question", |s| {
        s.lines()
            .last()
            .is_some_and(|l| l.trim_end() == "Your name:")
    });
    retry.type_keys("Alice2\r");
    retry.wait_for("Participant Alice2 joined");
}

#[test]
fn a_terminal_shows_the_wall_clock_time_and_coloured_names_unless_no_color() {
    let server = spawn_server(&[]);
    let mut bob = spawn_client(&server.addr, "Bob");
    bob.wait_joined();
    let alice = terminal_client(&server.addr, "Alice");
    let plain = spawn_on_pty(
        &["client", "--server", &server.addr, "--name", "Carol"],
        &[("NO_COLOR", "1")],
    );
    plain.wait_for("Participant Carol joined");
    bob.say("colours?");
    let screen = alice.wait_for("Bob: colours?");
    let line = screen
        .lines()
        .find(|l| l.contains("Bob: colours?"))
        .expect("the line");
    // HH:MM:SS, then the Lamport times.
    let (time, rest) = line.split_once(' ').expect("a time first");
    assert_eq!(time.len(), 8, "{line}");
    assert!(
        time.chars().all(|c| c.is_ascii_digit() || c == ':'),
        "{line}"
    );
    assert!(rest.starts_with("[lamport "), "{line}");
    let coloured = alice.raw();
    assert!(
        coloured.contains("\x1b[") && coloured.contains("mBob\x1b[0m: colours?"),
        "the name is coloured: {coloured:?}"
    );
    plain.wait_for("Bob: colours?");
    let raw = plain.raw();
    assert!(!raw.contains("mBob"), "NO_COLOR: no colour: {raw:?}");
    // Piped: the plain Lamport layout, no colour.
    let piped = bob.wait_for_message("Bob", "colours?");
    assert!(piped.body == "Bob: colours?");
    assert!(!bob.stdout.snapshot().iter().any(|l| l.contains('\x1b')));
}
