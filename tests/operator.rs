//! What an operator sees of a running 3-node cluster: the Prometheus
//! endpoint (`--metrics-listen`), scraped and parsed as the text format, and
//! `chitty status` (table and `--json`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use common::cluster::*;
use common::*;
use serde_json::Value;

/// The metrics address a node printed (`chitty metrics on http://ADDR/metrics`).
fn metrics_addr(node: &ServerProcess) -> String {
    let line = node.stdout.wait_for_line("the metrics address", |l| {
        l.starts_with("chitty metrics on http://")
    });
    line.trim_start_matches("chitty metrics on http://")
        .trim_end_matches("/metrics")
        .to_string()
}

/// One sample: the metric's name and its labels, as written.
type Key = (String, BTreeMap<String, String>);

/// Scrapes `addr` over HTTP and parses the text format: every sample line is
/// `name{label="value",...} number`; `# HELP` and `# TYPE` lines name each
/// metric family first.
fn scrape(addr: &str) -> Result<BTreeMap<Key, f64>, String> {
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(DEADLINE)).ok();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no end of the headers")?;
    if !head.starts_with("HTTP/1.1 200")
        || !head.contains("Content-Type: text/plain; version=0.0.4")
    {
        return Err(format!("unexpected response head: {head}"));
    }
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(line)?;
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or(line)?;
        let value: f64 = value.parse().map_err(|e| format!("{line}: {e}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').ok_or(line)?;
                let labels = rest
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(&name);
        assert!(typed.contains(family), "{line}: no # TYPE before it");
        samples.insert((name, labels), value);
    }
    Ok(samples)
}

fn value(samples: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_string(), labels)).copied()
}

/// Polls `addr` until `check` accepts its samples.
fn wait_metrics(addr: &str, what: &str, check: impl Fn(&BTreeMap<Key, f64>) -> Result<(), String>) {
    poll(what, || scrape(addr).and_then(|s| check(&s)));
}

/// `chitty status ARGS...`: its standard output, after a successful exit.
fn status(args: &[&str]) -> String {
    let out = test_command(Command::new(CHITTY))
        .arg("status")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chitty status");
    assert!(
        out.status.success(),
        "chitty status {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn metrics_and_status_describe_a_three_node_cluster() {
    let mut cluster = Cluster::start(3, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics: Vec<String> = cluster.nodes.iter().map(metrics_addr).collect();
    let mut clients = spawn_participants(&cluster, &[(0, "Alice"), (1, "Bob"), (2, "Carol")]);
    clients[0].say("hello");
    for client in &clients {
        client.wait_for_message("Alice", "hello");
    }

    // The room, the sessions, the links, the traffic.
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let status: Value = serde_json::from_str(&status(&[&cluster.addr(i), "--json"]))
                .expect("one JSON object");
            status["node"].as_str().expect("a node id").to_string()
        })
        .collect();
    wait_metrics(&metrics[0], "node 0's metrics to show the cluster", |s| {
        let want = |name: &str, labels: &[(&str, &str)], v: f64| match value(s, name, labels) {
            Some(got) if got == v => Ok(()),
            other => Err(format!("{name}{labels:?} is {other:?}, not {v}")),
        };
        want("chitty_participants", &[], 3.0)?;
        want("chitty_sessions", &[], 1.0)?;
        want("chitty_members", &[("state", "reachable")], 3.0)?;
        want("chitty_members", &[("state", "unreachable")], 0.0)?;
        for (node, id) in cluster.nodes.iter().zip(&ids).skip(1) {
            let peer = [("addr", node.addr.as_str()), ("peer", id.as_str())];
            want("chitty_peer_link_up", &peer, 1.0)?;
            want("chitty_peer_reachable", &peer, 1.0)?;
            want("chitty_peer_lag_events", &peer, 0.0)?;
            want("chitty_peer_queue_events", &peer, 0.0)?;
        }
        let at_least = |name: &str, v: f64| match value(s, name, &[]) {
            Some(got) if got >= v => Ok(()),
            other => Err(format!("{name} is {other:?}, not at least {v}")),
        };
        // Alice's join and message reached her; Alice's message and the
        // joins went to two peers; Bob's and Carol's joins came in.
        at_least("chitty_deliveries_total", 4.0)?;
        at_least("chitty_events_out_total", 4.0)?;
        at_least("chitty_events_in_total", 2.0)?;
        at_least("chitty_publish_seconds_count", 1.0)?;
        at_least("chitty_membership_changes_total", 1.0)?;
        at_least("chitty_history_events", 4.0)?;
        want("chitty_held_events", &[], 0.0)?;
        match value(s, "chitty_publish_seconds_bucket", &[("le", "+Inf")]) {
            Some(v) if v >= 1.0 => Ok(()),
            other => Err(format!("the +Inf bucket is {other:?}")),
        }
    });

    // chitty status: the same cluster, from node 1.
    let table = status(&[&cluster.addr(1)]);
    assert!(
        table.contains("NODE") && table.contains("PARTICIPANTS"),
        "{table}"
    );
    for (i, name) in ["Alice", "Bob", "Carol"].iter().enumerate() {
        let row = table
            .lines()
            .find(|l| l.contains(&cluster.addr(i)) && !l.starts_with("cluster as"))
            .unwrap_or_else(|| panic!("no row for node {i}:\n{table}"));
        assert!(row.contains(&format!("1 ({name})")), "{row}");
        assert!(
            row.contains(if i == 1 { "self" } else { "reachable" }),
            "{row}"
        );
    }
    poll("node 1's links to be up and caught up", || {
        let status: Value =
            serde_json::from_str(&status(&[&cluster.addr(1), "--json"])).expect("JSON");
        let nodes = status["nodes"].as_array().expect("nodes");
        if nodes.len() != 3 {
            return Err(format!("{status}"));
        }
        assert_eq!(nodes[0]["state"], "self");
        assert_eq!(nodes[0]["addr"], cluster.addr(1).as_str());
        assert_eq!(nodes[0]["participants"], serde_json::json!(["Bob"]));
        assert_eq!(status["sessions"], 1);
        for node in &nodes[1..] {
            if node["state"] != "reachable" || node["link_up"] != true || node["lag"] != 0 {
                return Err(format!("{node}"));
            }
        }
        Ok(())
    });

    // A participant whose process dies is a lost session on its node.
    clients[1].child.kill();
    wait_metrics(
        &metrics[1],
        "Bob's session counted as lost",
        |s| match value(s, "chitty_sessions_cut_total", &[("reason", "lost")]) {
            Some(1.0) => Ok(()),
            other => Err(format!("lost sessions: {other:?}")),
        },
    );

    // A node that dies is seen as unreachable: still listed (a node cut off
    // is never removed from the view, see core::membership), in state
    // "unreachable", its link down. Missing from the list altogether would
    // be a different state, and fails.
    let before = scrape(&metrics[0]).expect("scrape");
    let changes = value(&before, "chitty_membership_changes_total", &[]).unwrap();
    cluster.nodes[2].child.kill();
    poll("node 0 to list node 2 as unreachable", || {
        let status: Value =
            serde_json::from_str(&status(&[&cluster.addr(0), "--json"])).expect("JSON");
        let nodes = status["nodes"].as_array().expect("nodes");
        let listed: Vec<&Value> = nodes
            .iter()
            .filter(|n| n["addr"] == cluster.addr(2).as_str())
            .collect();
        match listed[..] {
            [node2] if node2["state"] == "unreachable" && node2["link_up"] == false => Ok(()),
            [] => panic!("node 2 is missing from the list, not unreachable: {status}"),
            _ => Err(format!("{status}")),
        }
    });
    wait_metrics(
        &metrics[0],
        "node 2 counted as unreachable",
        |s| match value(s, "chitty_members", &[("state", "unreachable")]) {
            Some(1.0) => Ok(()),
            other => Err(format!("unreachable members: {other:?}")),
        },
    );
    wait_metrics(
        &metrics[0],
        "the membership change counted",
        |s| match value(s, "chitty_membership_changes_total", &[]) {
            Some(v) if v > changes => Ok(()),
            other => Err(format!("membership changes: {other:?}")),
        },
    );
}
