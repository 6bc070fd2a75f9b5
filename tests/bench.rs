//! `chitty bench` end to end: it starts its own cluster of real node
//! processes, runs and reports one JSON object.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::CHITTY;

/// The value of `"key":` in a flat JSON object, as written.
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + key.len()
        + 3;
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

fn number(json: &str, key: &str) -> f64 {
    field(json, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} is not a number in {json}: {e}"))
}

#[test]
fn a_small_pipelined_run_beside_a_reader_that_never_reads_delivers_everything_once_in_order() {
    let mut child = Command::new(CHITTY)
        .args([
            "bench",
            "--nodes",
            "3",
            "-s",
            "6",
            "-p",
            "3",
            "-m",
            "600",
            "--pipeline",
            "--slow",
            "1",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chitty bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chitty bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chitty bench did not finish within 120 s");
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
        "bench failed: {status}\n{stdout}\n{stderr}"
    );
    let json = stdout.lines().last().expect("a JSON line");
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");

    assert_eq!(number(json, "sent"), 600.0, "{json}");
    assert_eq!(number(json, "delivered"), 600.0 * 6.0, "{json}");
    for key in ["missing", "duplicates", "reordered", "disconnected"] {
        assert_eq!(number(json, key), 0.0, "{key}: {json}");
    }
    // Too few messages to fill its queue: the never-reading participant
    // stays connected, and costs the others nothing.
    assert_eq!(number(json, "slow_disconnected"), 0.0, "{json}");
    assert!(number(json, "deliveries_per_sec") > 0.0, "{json}");
    let (p50, p99, max) = (
        number(json, "latency_p50_ms"),
        number(json, "latency_p99_ms"),
        number(json, "latency_max_ms"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{json}");
    assert!(number(json, "server_cpu_us_per_delivery") > 0.0, "{json}");
    assert!(number(json, "peak_rss_bytes_per_node") > 0.0, "{json}");
    // The table comes before the JSON line.
    assert!(stdout.contains("deliveries/s"), "{stdout}");
}
