//! `chitty trace`: the assignment's scenario run with real processes (two
//! nodes; X joins node 1, Y joins node 2, X publishes, Y replies, X
//! leaves), drawn from the JSON logs and checked against what the clients
//! printed; the same diagram whatever the wall clocks said and whatever
//! order the files are given in; an SVG that is well-formed XML, renders,
//! and has no overlapping labels; and bad input refused or warned about by
//! file and line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use common::*;
use serde_json::Value;

const TARGET: &str = "chitty::diagram";
const NODE_LOG: &str = "info,chitty::diagram=debug";

fn json_server(extra: &[&str], label: &str) -> ServerProcess {
    let mut cmd = test_command(Command::new(CHITTY));
    cmd.args(["server", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(extra)
        .env("RUST_LOG", NODE_LOG);
    start_server_process(cmd, label)
}

fn json_client(addr: &str, name: &str) -> ClientProcess {
    let mut cmd = test_command(Command::new(CHITTY));
    cmd.env("CHITTY_LOG_FORMAT", "json");
    start_client_process(cmd, addr, name)
}

fn has_record(lines: &[String], pred: impl Fn(&Value) -> bool) -> bool {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|v| v["target"] == TARGET && pred(&v))
}

/// Waits until the client's `--log` file holds a record matching `pred`.
fn wait_log_record(client: &ClientProcess, what: &str, pred: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    while !has_record(&client.log_lines(), &pred) {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what} in the log of {}",
            client.name
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The logs of one run of the scenario, in files, and what the clients
/// printed.
struct Run {
    dir: PathBuf,
    node1: PathBuf,
    node2: PathBuf,
    x: PathBuf,
    y: PathBuf,
    /// The log of a node of another run.
    other: PathBuf,
    node1_addr: String,
    node2_addr: String,
    x_printed: Vec<EventLine>,
    y_printed: Vec<EventLine>,
}

impl Run {
    fn all(&self) -> Vec<PathBuf> {
        vec![
            self.node1.clone(),
            self.node2.clone(),
            self.x.clone(),
            self.y.clone(),
        ]
    }
}

/// Runs the scenario once for every test of this file; every process is
/// killed when it returns (or fails).
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(run_scenario)
}

fn run_scenario() -> Run {
    let a = json_server(&[], "node 1");
    let b = json_server(&["--boot", &a.addr], "node 2");
    // X joins once node 2 is in the cluster: an event stamped before node 1
    // admitted node 2 reaches node 2 with the cluster's state in the answer
    // to its ServerJoin, not in a RelayBatch, which the scenario waits for.
    b.stderr.wait_for_line("node 2 in the cluster", |l| {
        l.contains(r#""message":"joined the cluster through its boot member""#)
    });
    let mut x = json_client(&a.addr, "X");
    x.wait_joined();
    // Y joins after node 2 has X's join, so that it is not delivered to Y.
    b.stderr.wait_until("X's join relayed to node 2", |lines| {
        has_record(lines, |r| {
            r["call"] == "RelayBatch" && r["dir"] == "received" && r["kind"] == "joined"
        })
        .then_some(())
    });
    let mut y = json_client(&b.addr, "Y");
    y.wait_joined();
    x.wait_for_event("Y's join", |e| e.joined().is_some_and(|(n, _)| n == "Y"));
    x.say("hello from X");
    y.wait_for_message("X", "hello from X");
    y.say("hi X");
    x.wait_for_message("Y", "hi X");
    y.wait_for_message("Y", "hi X");
    x.close_stdin();
    assert!(x.child.wait_exit().success(), "X did not leave cleanly");
    y.wait_for_event("X's departure", |e| e.left().is_some_and(|(n, _)| n == "X"));
    wait_log_record(&y, "X's left delivered", |r| {
        r["call"] == "Deliver" && r["kind"] == "left"
    });
    b.stderr
        .wait_until("X's left delivered by node 2", |lines| {
            has_record(lines, |r| {
                r["call"] == "Deliver" && r["dir"] == "sent" && r["kind"] == "left"
            })
            .then_some(())
        });
    // A node of another run.
    let other = json_server(&[], "a node of another run");
    other.stderr.wait_until("its start record", |lines| {
        has_record(lines, |r| r["message"] == "start").then_some(())
    });

    let dir = temp_path("trace-run").with_extension("d");
    std::fs::create_dir_all(&dir).expect("create the log directory");
    let write = |name: &str, lines: Vec<String>| {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write a log");
        path
    };
    Run {
        node1: write("node1.jsonl", a.stderr.snapshot()),
        node2: write("node2.jsonl", b.stderr.snapshot()),
        x: write("x.jsonl", x.log_lines()),
        y: write("y.jsonl", y.log_lines()),
        other: write("other.jsonl", other.stderr.snapshot()),
        dir,
        node1_addr: a.addr.clone(),
        node2_addr: b.addr.clone(),
        x_printed: x.events(),
        y_printed: y.events(),
    }
}

fn trace(args: &[&str], files: &[PathBuf]) -> Output {
    test_command(Command::new(CHITTY))
        .arg("trace")
        .args(args)
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("run chitty trace")
}

/// The diagram on standard output; fails showing stderr when it failed.
fn diagram(args: &[&str], files: &[PathBuf]) -> String {
    let out = trace(args, files);
    assert!(
        out.status.success(),
        "chitty trace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// One arrow of a Mermaid diagram.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Drawn {
    from: String,
    to: String,
    what: String,
    send: Option<u64>,
    recv: Option<u64>,
}

fn lamport(s: &str) -> Option<u64> {
    (s != "?").then(|| s.parse().expect("a Lamport time"))
}

/// The lifelines (by id) and the arrows, in order, of Mermaid source.
fn parse_mermaid(text: &str) -> (HashMap<String, String>, Vec<Drawn>) {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sequenceDiagram"));
    let mut names = HashMap::new();
    let mut arrows = Vec::new();
    for line in lines {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("participant ") {
            let (id, name) = rest.split_once(" as ").expect("participant ID as NAME");
            names.insert(id.to_string(), name.to_string());
        } else if line.starts_with("Note ") {
            continue;
        } else {
            let (ends, label) = line.split_once(": ").expect("FROM->>TO: LABEL");
            let (from, to) = ends
                .split_once("-->>")
                .or_else(|| ends.split_once("->>"))
                .expect("an arrow");
            let (what, times) = label.rsplit_once(" [L=").expect("a Lamport label");
            let (send, recv) = times
                .strip_suffix(']')
                .and_then(|t| t.split_once(" → L="))
                .expect("[L=S → L=R]");
            arrows.push(Drawn {
                from: names[from].clone(),
                to: names[to].clone(),
                what: what.to_string(),
                send: lamport(send),
                recv: lamport(recv),
            });
        }
    }
    (names, arrows)
}

fn printed<'a>(
    events: &'a [EventLine],
    what: &str,
    pred: impl Fn(&EventLine) -> bool,
) -> &'a EventLine {
    events
        .iter()
        .find(|e| pred(e))
        .unwrap_or_else(|| panic!("not printed: {what}; printed: {events:?}"))
}

#[test]
fn the_scenario_is_drawn_as_the_clients_saw_it() {
    let run = run();
    let text = diagram(&[], &run.all());
    let (names, arrows) = parse_mermaid(&text);
    let n1 = format!("node 1 ({})", run.node1_addr);
    let n2 = format!("node 2 ({})", run.node2_addr);
    let mut lifelines: Vec<&String> = names.values().collect();
    lifelines.sort();
    assert_eq!(lifelines, [&"X".to_string(), &"Y".to_string(), &n1, &n2]);

    // What the clients printed: each event's stamp, and each client's
    // clock after receiving it.
    let (xs, ys) = (&run.x_printed, &run.y_printed);
    let x_joined_x = printed(xs, "X's join at X", |e| {
        e.joined().is_some_and(|(n, _)| n == "X")
    });
    let y_joined_x = printed(xs, "Y's join at X", |e| {
        e.joined().is_some_and(|(n, _)| n == "Y")
    });
    let y_joined_y = printed(ys, "Y's join at Y", |e| {
        e.joined().is_some_and(|(n, _)| n == "Y")
    });
    let hello_x = printed(xs, "hello at X", |e| e.is_message("X", "hello from X"));
    let hello_y = printed(ys, "hello at Y", |e| e.is_message("X", "hello from X"));
    let hi_x = printed(xs, "hi at X", |e| e.is_message("Y", "hi X"));
    let hi_y = printed(ys, "hi at Y", |e| e.is_message("Y", "hi X"));
    let left_y = printed(ys, "X's departure at Y", |e| {
        e.left().is_some_and(|(n, _)| n == "X")
    });

    let (x, y) = ("X".to_string(), "Y".to_string());
    let arrow =
        |from: &String, to: &String, what: &str, send: Option<u64>, recv: Option<u64>| Drawn {
            from: from.clone(),
            to: to.clone(),
            what: what.to_string(),
            send,
            recv,
        };
    // Find each expected arrow; `None` in a time: any value.
    let find = |want: &Drawn| -> usize {
        let found: Vec<usize> = arrows
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a.from == want.from
                    && a.to == want.to
                    && a.what == want.what
                    && want.send.is_none_or(|s| a.send == Some(s))
                    && want.recv.is_none_or(|r| a.recv == Some(r))
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found.len(), 1, "expected once: {want:?}\nin:\n{text}");
        found[0]
    };
    let server_join = find(&arrow(&n2, &n1, "ServerJoin", None, None));
    let server_join_reply = find(&arrow(&n1, &n2, "ServerJoinReply", None, None));
    let join_x = find(&arrow(&x, &n1, "Join", Some(1), Some(x_joined_x.lamport)));
    let deliver_join_x = find(&arrow(
        &n1,
        &x,
        "Deliver X joined",
        Some(x_joined_x.lamport),
        Some(x_joined_x.local),
    ));
    let relay_join_x = find(&arrow(
        &n1,
        &n2,
        "RelayBatch X joined",
        Some(x_joined_x.lamport),
        None,
    ));
    let join_y = find(&arrow(&y, &n2, "Join", Some(1), Some(y_joined_y.lamport)));
    let deliver_join_y = find(&arrow(
        &n2,
        &y,
        "Deliver Y joined",
        Some(y_joined_y.lamport),
        Some(y_joined_y.local),
    ));
    let relay_join_y = find(&arrow(
        &n2,
        &n1,
        "RelayBatch Y joined",
        Some(y_joined_y.lamport),
        None,
    ));
    let deliver_join_y_x = find(&arrow(
        &n1,
        &x,
        "Deliver Y joined",
        Some(y_joined_x.lamport),
        Some(y_joined_x.local),
    ));
    let publish_x = find(&arrow(&x, &n1, "Publish", None, Some(hello_x.lamport)));
    let relay_hello = find(&arrow(
        &n1,
        &n2,
        "RelayBatch X message",
        Some(hello_x.lamport),
        None,
    ));
    let hello_to_x = find(&arrow(
        &n1,
        &x,
        "Deliver X message",
        Some(hello_x.lamport),
        Some(hello_x.local),
    ));
    let hello_to_y = find(&arrow(
        &n2,
        &y,
        "Deliver X message",
        Some(hello_y.lamport),
        Some(hello_y.local),
    ));
    let publish_y = find(&arrow(&y, &n2, "Publish", None, Some(hi_y.lamport)));
    let relay_hi = find(&arrow(
        &n2,
        &n1,
        "RelayBatch Y message",
        Some(hi_y.lamport),
        None,
    ));
    let hi_to_y = find(&arrow(
        &n2,
        &y,
        "Deliver Y message",
        Some(hi_y.lamport),
        Some(hi_y.local),
    ));
    let hi_to_x = find(&arrow(
        &n1,
        &x,
        "Deliver Y message",
        Some(hi_x.lamport),
        Some(hi_x.local),
    ));
    let leave_x = find(&arrow(&x, &n1, "Leave", None, Some(left_y.lamport)));
    let relay_left = find(&arrow(
        &n1,
        &n2,
        "RelayBatch X left",
        Some(left_y.lamport),
        None,
    ));
    let left_to_y = find(&arrow(
        &n2,
        &y,
        "Deliver X left",
        Some(left_y.lamport),
        Some(left_y.local),
    ));
    assert_eq!(
        arrows.len(),
        20,
        "one arrow per call and delivery, no more:\n{text}"
    );

    // In an order consistent with happens-before.
    for chain in [
        &[server_join, server_join_reply, relay_join_x][..],
        &[join_x, deliver_join_x],
        &[join_x, relay_join_x],
        &[join_y, relay_join_y, deliver_join_y_x, publish_x],
        &[join_y, deliver_join_y],
        &[
            publish_x,
            relay_hello,
            hello_to_y,
            publish_y,
            relay_hi,
            hi_to_x,
            leave_x,
            relay_left,
            left_to_y,
        ],
        &[publish_x, hello_to_x, hi_to_x],
        &[publish_y, hi_to_y],
    ] {
        assert!(
            chain.windows(2).all(|w| w[0] < w[1]),
            "out of order: {chain:?}\n{text}"
        );
    }
    // Each process's clock only goes forward down the diagram, and every
    // receive is later than what it received.
    let mut clock: HashMap<&str, u64> = HashMap::new();
    for a in &arrows {
        if a.what.starts_with("ServerJoin") {
            continue;
        }
        let (send, recv) = (
            a.send.expect("a send time"),
            a.recv.expect("a receive time"),
        );
        assert!(recv > send, "{a:?}");
        if !a.from.starts_with("node ") {
            let c = clock.entry(&a.from).or_insert(0);
            assert!(send > *c, "{}'s clock went back at {a:?}", a.from);
            *c = send;
        }
        let c = clock.entry(&a.to).or_insert(0);
        assert!(recv > *c, "{}'s clock went back at {a:?}", a.to);
        *c = recv;
    }
}

/// `line` with its wall-clock time moved by `shift` seconds.
fn shift_timestamp(line: &str, shift: i64) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let Some(t) = v["timestamp"].as_str() else {
        return line.to_string();
    };
    let nanos = chitty::trace::parse::parse_time(t).expect("an RFC 3339 timestamp")
        + i128::from(shift) * 1_000_000_000;
    v["timestamp"] = Value::String(format_time(nanos));
    v.to_string()
}

/// Nanoseconds since 1970 as RFC 3339 UTC with microseconds.
fn format_time(nanos: i128) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let micros = nanos.rem_euclid(1_000_000_000) / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn rewrite(from: &Path, to: &Path, f: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(from).expect("read a log");
    let out: Vec<String> = text.lines().map(f).collect();
    std::fs::write(to, out.join("\n") + "\n").expect("write a log");
}

#[test]
fn skewed_wall_clocks_and_file_order_change_nothing() {
    let run = run();
    assert_eq!(
        format_time(chitty::trace::parse::parse_time("2026-12-03T00:10:52.003709Z").unwrap()),
        "2026-12-03T00:10:52.003709Z"
    );
    // Node 2's clock an hour slow, X's an hour fast: by wall clock, most of
    // node 2's records would come first and X's last.
    let node2 = run.dir.join("node2-slow.jsonl");
    let x = run.dir.join("x-fast.jsonl");
    rewrite(&run.node2, &node2, |l| shift_timestamp(l, -3600));
    rewrite(&run.x, &x, |l| shift_timestamp(l, 3600));
    let text = std::fs::read_to_string(&node2).unwrap();
    assert!(
        text != std::fs::read_to_string(&run.node2).unwrap(),
        "the clock was moved"
    );
    let skewed = vec![run.node1.clone(), node2, x, run.y.clone()];
    for format in ["mermaid", "svg"] {
        let straight = diagram(&["--format", format], &run.all());
        assert_eq!(
            diagram(&["--format", format], &skewed),
            straight,
            "{format}: the order follows Lamport time, not wall clock"
        );
        let mut reversed = run.all();
        reversed.reverse();
        assert_eq!(
            diagram(&["--format", format], &reversed),
            straight,
            "{format}: any file order"
        );
    }
}

#[test]
fn the_svg_is_well_formed_renders_and_its_labels_do_not_overlap() {
    let run = run();
    let out = run.dir.join("sequence.svg");
    let file = out.to_str().unwrap();
    let printed = diagram(&["--format", "svg", "-o", file], &run.all());
    assert!(printed.is_empty(), "-o writes the file, not stdout");
    let svg = std::fs::read_to_string(&out).expect("the SVG was written");

    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let arrows = root
        .descendants()
        .filter(|n| n.attribute("marker-end").is_some())
        .count();
    assert_eq!(arrows, 20);
    let texts: Vec<&str> = root
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    assert!(texts.contains(&format!("node 1 ({})", run.node1_addr).as_str()));
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("RelayBatch X message [L="))
    );

    // A real renderer draws it without errors, and draws something.
    let tree = resvg::usvg::Tree::from_str(&svg, &resvg::usvg::Options::default())
        .expect("resvg parses the SVG");
    let size = tree.size().to_int_size();
    assert!(size.width() > 200 && size.height() > 20 * 30, "{size:?}");
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    let inked = pixmap
        .pixels()
        .iter()
        .filter(|p| p.red() < 200 || p.green() < 200 || p.blue() < 200)
        .count();
    assert!(
        inked > 10_000,
        "the arrows and lifelines are drawn: {inked} pixels"
    );

    // The layout's text boxes, at 20 arrows and more: none overlaps another.
    let logs: Vec<(String, String)> = run
        .all()
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let opts = chitty::trace::Options {
        collapse_above: 8,
        ..Default::default()
    };
    let mut warnings = Vec::new();
    let d = chitty::trace::trace(&logs, &opts, &mut warnings).expect("a diagram");
    assert!(d.items.len() >= 20);
    let layout = chitty::trace::svg::layout(&d);
    let boxes = layout.text_boxes();
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
        }
    }
}

#[test]
fn names_from_the_logs_are_escaped() {
    let run = run();
    let evil = "<X & \"Co\"> ;#%% -->> end";
    let json_name = serde_json::to_string(evil).unwrap();
    let files: Vec<PathBuf> = run
        .all()
        .iter()
        .map(|p| {
            let to = run
                .dir
                .join(format!("evil-{}", p.file_name().unwrap().to_string_lossy()));
            rewrite(p, &to, |l| {
                l.replace(
                    "\"participant\":\"X\"",
                    &format!("\"participant\":{json_name}"),
                )
            });
            to
        })
        .collect();
    let mermaid = diagram(&[], &files);
    for line in mermaid.lines().skip(1) {
        assert!(
            !line.contains('<') && !line.contains('%') && !line.contains('"'),
            "unescaped: {line}"
        );
        assert_eq!(
            line.matches("->>").count(),
            usize::from(
                !line.trim_start().starts_with("participant")
                    && !line.trim_start().starts_with("Note")
            ),
            "{line}"
        );
    }
    assert!(
        mermaid.contains(
            "participant L0 as #60;X #38; #34;Co#34;#62; #59;#35;#37;#37; #45;#45;#62;#62; end"
        ),
        "{mermaid}"
    );

    let svg = diagram(&["--format", "svg"], &files);
    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    assert!(
        doc.descendants().any(|n| n.text() == Some(evil)),
        "the name is shown as it is"
    );
}

#[test]
fn a_receive_without_its_send_comes_from_an_unknown_sender() {
    let run = run();
    // X's log is missing: its requests arrive from an unknown sender.
    let text = diagram(&[], &[run.node1.clone(), run.node2.clone(), run.y.clone()]);
    let (_, arrows) = parse_mermaid(&text);
    for call in ["Join from X", "Publish from X", "Leave from X"] {
        let a = arrows
            .iter()
            .find(|a| a.what == call)
            .unwrap_or_else(|| panic!("no {call}:\n{text}"));
        assert_eq!(a.from, "unknown sender");
        assert!(
            a.send.is_some() && a.recv.is_some(),
            "{a:?}: the request carried the time"
        );
    }
    // Deliveries to X are drawn still, received at an unknown time.
    assert!(
        arrows
            .iter()
            .any(|a| a.to == "X" && a.what == "Deliver Y message" && a.recv.is_none()),
        "{text}"
    );
    assert_eq!(arrows.len(), 20, "nothing dropped:\n{text}");
}

#[test]
fn node_logs_without_their_debug_records_give_the_same_arrows() {
    let run = run();
    // At the default level a node does not log its deliveries: each is
    // drawn from the node its participant names, after the node got it.
    let info: Vec<PathBuf> = run
        .all()
        .iter()
        .map(|p| {
            let to = run
                .dir
                .join(format!("info-{}", p.file_name().unwrap().to_string_lossy()));
            let text = std::fs::read_to_string(p).unwrap();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("\"level\":\"DEBUG\""))
                .collect();
            std::fs::write(&to, kept.join("\n")).unwrap();
            to
        })
        .collect();
    let (_, mut with_debug) = parse_mermaid(&diagram(&[], &run.all()));
    let text = diagram(&[], &info);
    let (_, mut without) = parse_mermaid(&text);
    let key = |a: &Drawn| format!("{a:?}");
    with_debug.sort_by_key(key);
    without.sort_by_key(key);
    assert_eq!(without, with_debug, "{text}");
}

#[test]
fn an_svg_file_gets_an_svg() {
    let run = run();
    let out = run.dir.join("picked.svg");
    diagram(&["-o", out.to_str().unwrap()], &run.all());
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.starts_with("<?xml"), "{svg}");
    let out = run.dir.join("picked.mmd");
    diagram(&["-o", out.to_str().unwrap()], &run.all());
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .starts_with("sequenceDiagram\n")
    );
}

#[test]
fn filters_keep_what_was_asked_and_say_what_was_left_out() {
    let run = run();
    let text = diagram(&["--participant", "Y"], &run.all());
    let (_, arrows) = parse_mermaid(&text);
    assert!(!arrows.is_empty());
    assert!(
        arrows
            .iter()
            .all(|a| a.from == "Y" || a.to == "Y" || a.what.contains(" Y ")),
        "{text}"
    );
    assert!(
        text.contains(" arrows left out: ") && text.contains(" not involving Y"),
        "{text}"
    );

    let text = diagram(&["--from-lamport", "6", "--to-lamport", "10"], &run.all());
    let (_, arrows) = parse_mermaid(&text);
    assert!(!arrows.is_empty());
    assert!(
        arrows.iter().all(|a| (6..=10).contains(&a.send.unwrap())),
        "{text}"
    );
    assert!(text.contains("outside Lamport time 6..10"), "{text}");

    // A wall-time window that ends before the run: nothing is drawn.
    let text = diagram(&["--until", "2000-01-01T00:00:00Z"], &run.all());
    assert!(parse_mermaid(&text).1.is_empty());
    assert!(
        text.contains("20 of 20 arrows left out: 20 outside the time window"),
        "{text}"
    );

    // The fan-out, collapsed.
    let text = diagram(&["--collapse"], &run.all());
    assert!(text.contains("Broadcast X message L="), "{text}");
    assert!(
        text.contains(" to 2 participants (received at L="),
        "{text}"
    );

    let out = trace(&["--participant", "Z"], &run.all());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no participant named \"Z\""));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_is_refused_or_warned_about_by_file_and_line() {
    let run = run();
    let dir = &run.dir;

    // An empty file.
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = trace(&[], &[run.node1.clone(), empty.clone()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("error: {}: the file is empty", empty.display())),
        "{}",
        stderr(&out)
    );

    // A text-format log.
    let text = dir.join("node-text.log");
    std::fs::write(
        &text,
        "2026-12-03T10:56:52.003709Z  INFO chitty::cli: serving Chitty-Chat on 127.0.0.1:50051\n",
    )
    .unwrap();
    let out = trace(&[], std::slice::from_ref(&text));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("error: {}:1: not a JSON log", text.display()))
            && stderr(&out).contains("--log-format json"),
        "{}",
        stderr(&out)
    );

    // A cut-off last line, and a damaged line in the middle: warnings,
    // and the diagram of the rest.
    let cut = dir.join("node1-cut.jsonl");
    let original = std::fs::read_to_string(&run.node1).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    let last = lines.len();
    let half = &lines[last - 1][..lines[last - 1].len() / 2];
    lines[last - 1] = half;
    lines.insert(2, "{\"timestamp\": oops}");
    std::fs::write(&cut, lines.join("\n")).unwrap();
    let out = trace(
        &[],
        &[cut.clone(), run.node2.clone(), run.x.clone(), run.y.clone()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "warning: {}:{}: the last line is cut off",
            cut.display(),
            last + 1
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("warning: {}:3: malformed JSON", cut.display())),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sequenceDiagram\n"));

    // Logs of two runs.
    let mut files = run.all();
    files.push(run.other.clone());
    let out = trace(&[], &files);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("these logs are of 2 different runs"), "{err}");
    assert!(err.contains(&format!("{}:1", run.other.display())), "{err}");
    assert!(err.contains(&format!("{}:1", run.node1.display())), "{err}");

    // A file that is not there.
    let out = trace(&[], &[dir.join("missing.jsonl")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("missing.jsonl: cannot read"),
        "{}",
        stderr(&out)
    );
}
