//! `chitty-bench` end to end: it starts its own cluster of real server
//! processes, runs, and reports one JSON object; on Chitty and on NATS.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_chitty-bench");
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the bench with `args` and returns its JSON report, after checking
/// that it succeeded and printed the table first.
fn run_bench(args: &[&str]) -> Value {
    let mut child = Command::new(BENCH)
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chitty-bench");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chitty-bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chitty-bench {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "chitty-bench {args:?} failed: {status}\n{stdout}\n{stderr}"
    );
    // The table comes before the JSON line.
    assert!(stdout.contains("deliveries/s"), "{stdout}");
    let json = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn number(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {report}"))
}

/// What every correct run reports: everything sent, delivered once to each
/// of `readers`, in order, with latencies and server costs measured.
fn assert_everything_delivered_once_in_order(report: &Value, sent: f64, readers: f64) {
    assert_eq!(number(report, "sent"), sent, "{report}");
    assert_eq!(number(report, "delivered"), sent * readers, "{report}");
    for key in ["missing", "duplicates", "reordered", "disconnected"] {
        assert_eq!(number(report, key), 0.0, "{key}: {report}");
    }
    assert!(number(report, "deliveries_per_sec") > 0.0, "{report}");
    let (p50, p99, max) = (
        number(report, "latency_p50_ms"),
        number(report, "latency_p99_ms"),
        number(report, "latency_max_ms"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report}");
    assert!(number(report, "server_cpu_seconds") >= 0.0, "{report}");
    assert!(number(report, "peak_rss_bytes_per_node") > 0.0, "{report}");
}

/// 3 servers, 6 readers of whom 3 publish 200 messages each: 600 messages,
/// 3,600 deliveries.
const SMALL_LOAD: [&str; 8] = ["--nodes", "3", "-s", "6", "-p", "3", "-m", "200"];

/// `SMALL_LOAD` after `before` and before `after`.
fn small_load(before: &[&'static str], after: &[&'static str]) -> Vec<&'static str> {
    [before, &SMALL_LOAD[..], after].concat()
}

#[test]
fn a_small_pipelined_run_beside_a_reader_that_never_reads_delivers_everything_once_in_order() {
    let report = run_bench(&small_load(&[], &["--pipeline", "--slow", "1"]));
    assert_eq!(report["system"], "chitty", "{report}");
    assert_eq!(number(&report, "messages_per_publisher"), 200.0, "{report}");
    assert_everything_delivered_once_in_order(&report, 600.0, 6.0);
    // Too few messages to fill its queue: the never-reading participant
    // stays connected, and costs the others nothing.
    assert_eq!(number(&report, "slow_disconnected"), 0.0, "{report}");
    assert!(number(&report, "rss_before_bytes") > 0.0, "{report}");
}

#[test]
fn the_same_load_on_nats_delivers_everything_once_in_order() {
    assert!(
        Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "nats-server is needed (Debian: apt-get install nats-server)"
    );
    let report = run_bench(&small_load(&["nats"], &["--rate", "2000"]));
    assert_eq!(report["system"], "nats", "{report}");
    assert_everything_delivered_once_in_order(&report, 600.0, 6.0);
    assert_eq!(number(&report, "slow_consumers"), 0.0, "{report}");
    assert!(number(&report, "send_late_max_ms") >= 0.0, "{report}");
}

#[test]
fn the_same_load_on_three_floor_servers_delivers_everything_once_in_order() {
    // Publishers on every server: what each publishes reaches the others'
    // readers through the floor servers' mesh.
    let report = run_bench(&small_load(&["--floor"], &["--pipeline"]));
    assert_eq!(report["system"], "floor", "{report}");
    assert_everything_delivered_once_in_order(&report, 600.0, 6.0);
    let unary = run_bench(&["--floor", "--nodes", "2", "-s", "4", "-p", "2", "-m", "50"]);
    assert_everything_delivered_once_in_order(&unary, 100.0, 4.0);
}

#[test]
fn a_small_sweep_writes_a_line_per_point_and_the_picture() {
    let out = std::env::temp_dir().join(format!("chitty-bench-sweep-{}", std::process::id()));
    let output = Command::new(BENCH)
        .args([
            "--sweep",
            "--sweep-nodes",
            "1,2",
            "--sweep-participants",
            "2,4",
        ])
        .args(["--sweep-deliveries", "400", "--pipeline", "--out"])
        .arg(&out)
        .output()
        .expect("run chitty-bench --sweep");
    let jsonl = std::fs::read_to_string(out.join("bench-results.jsonl")).unwrap_or_default();
    let svg = std::fs::read_to_string(out.join("bench-scaling.svg")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let points: Vec<(f64, f64)> = jsonl
        .lines()
        .map(|line| {
            let report: Value = serde_json::from_str(line).unwrap();
            assert_eq!(number(&report, "missing"), 0.0, "{report}");
            (number(&report, "nodes"), number(&report, "participants"))
        })
        .collect();
    assert_eq!(points, [(1.0, 2.0), (1.0, 4.0), (2.0, 2.0), (2.0, 4.0)]);
    assert!(svg.contains("N = 2 nodes"), "{svg}");
}
