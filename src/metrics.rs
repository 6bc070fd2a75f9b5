//! A node's metrics, in the Prometheus text format (`--metrics-listen`).
//!
//! Counters are bumped where things happen (events in and out, deliveries,
//! publishes, cut-off sessions, membership changes); the gauges (the room,
//! sessions, per-peer link state and lag, queue depths) are read from the
//! node's state at each scrape. Each node has its own registry, so several
//! nodes in one process (the tests) keep their numbers apart.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::node::Node;

/// Every metric of one node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events received from peers on relay links.
    pub events_in: IntCounter,
    /// Events queued to peers on relay links.
    pub events_out: IntCounter,
    /// Events queued to participants' sessions (one per session reached).
    pub deliveries: IntCounter,
    /// Publishes acknowledged, and how long each took from arrival to
    /// acknowledgement (another node holds it).
    pub publish_seconds: Histogram,
    /// Sessions that ended without a Leave, by reason: `lost` (the
    /// connection dropped), `too_slow` (cut off: its queue overflowed).
    pub sessions_cut: IntCounterVec,
    /// Changes of the cluster's membership as this node sees it.
    pub membership_changes: IntCounter,
    participants: IntGauge,
    sessions: IntGauge,
    lamport: IntGauge,
    members: IntGaugeVec,
    peer_up: IntGaugeVec,
    peer_reachable: IntGaugeVec,
    peer_lag: IntGaugeVec,
    peer_last_heard: IntGaugeVec,
    peer_queue: IntGaugeVec,
    session_queue: IntGauge,
    held: IntGauge,
    history: IntGauge,
}

fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    registry
        .register(Box::new(m.clone()))
        .expect("each metric is registered once");
    m
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            registered(&r, IntCounter::new(name, help).expect("a valid metric"))
        };
        let gauge =
            |name: &str, help: &str| registered(&r, IntGauge::new(name, help).expect("valid"));
        let per_peer = |name: &str, help: &str| {
            registered(
                &r,
                IntGaugeVec::new(Opts::new(name, help), &["peer", "addr"]).expect("valid"),
            )
        };
        Self {
            events_in: counter(
                "chitty_events_in_total",
                "Events received from peers on relay links.",
            ),
            events_out: counter(
                "chitty_events_out_total",
                "Events queued to peers on relay links.",
            ),
            deliveries: counter(
                "chitty_deliveries_total",
                "Events queued to participants' sessions, one per session reached.",
            ),
            publish_seconds: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "chitty_publish_seconds",
                        "Time from a Publish's arrival to its acknowledgement (another node holds the event).",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0,
                    ]),
                )
                .expect("valid"),
            ),
            sessions_cut: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "chitty_sessions_cut_total",
                        "Sessions that ended without a Leave: lost (the connection dropped) or too_slow (cut off, its queue overflowed).",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            membership_changes: counter(
                "chitty_membership_changes_total",
                "Changes of the cluster's live nodes as this node sees them.",
            ),
            participants: gauge(
                "chitty_participants",
                "Live participants, cluster-wide, as this node knows them.",
            ),
            sessions: gauge("chitty_sessions", "Participants' sessions open on this node."),
            lamport: gauge("chitty_lamport", "This node's Lamport clock."),
            members: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "chitty_members",
                        "Nodes of the cluster by state as this node sees them: reachable (itself included) or unreachable.",
                    ),
                    &["state"],
                )
                .expect("valid"),
            ),
            peer_up: per_peer(
                "chitty_peer_link_up",
                "1 when the relay link to the peer is connected and caught up.",
            ),
            peer_reachable: per_peer(
                "chitty_peer_reachable",
                "1 when this node hears that the peer runs.",
            ),
            peer_lag: per_peer(
                "chitty_peer_lag_events",
                "This node's own events the peer has not acknowledged yet.",
            ),
            peer_last_heard: per_peer(
                "chitty_peer_last_heard_ms",
                "Milliseconds since this node last heard that the peer runs.",
            ),
            peer_queue: per_peer(
                "chitty_peer_queue_events",
                "Items queued on the relay link to the peer.",
            ),
            session_queue: gauge(
                "chitty_session_queue_events",
                "Items queued to participants' sessions, all sessions together.",
            ),
            held: gauge(
                "chitty_held_events",
                "Relayed events waiting for their causal predecessors.",
            ),
            history: gauge(
                "chitty_history_events",
                "Recent events kept for replay.",
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric, with the gauges read from
    /// `node` now.
    pub fn render(&self, node: &Node) -> String {
        let snapshot = node.metrics_snapshot(Instant::now());
        self.participants.set(snapshot.participants as i64);
        self.sessions.set(snapshot.sessions as i64);
        self.lamport.set(snapshot.lamport as i64);
        self.members
            .with_label_values(&["reachable"])
            .set(snapshot.reachable as i64);
        self.members
            .with_label_values(&["unreachable"])
            .set(snapshot.unreachable as i64);
        for vec in [
            &self.peer_up,
            &self.peer_reachable,
            &self.peer_lag,
            &self.peer_last_heard,
            &self.peer_queue,
        ] {
            vec.reset();
        }
        for peer in &snapshot.peers {
            let labels = [peer.report.node.id.as_str(), peer.report.addr.as_str()];
            self.peer_up
                .with_label_values(&labels)
                .set(i64::from(peer.report.up));
            self.peer_reachable
                .with_label_values(&labels)
                .set(i64::from(peer.report.reachable));
            self.peer_lag
                .with_label_values(&labels)
                .set(peer.report.lag as i64);
            self.peer_last_heard
                .with_label_values(&labels)
                .set(peer.report.last_heard.as_millis() as i64);
            self.peer_queue
                .with_label_values(&labels)
                .set(peer.queued as i64);
        }
        self.session_queue.set(snapshot.session_queue as i64);
        self.held.set(snapshot.held as i64);
        self.history.set(snapshot.history as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One peer as a scrape reports it.
#[derive(Debug)]
pub struct PeerSnapshot {
    pub report: crate::core::node::PeerReport,
    /// Items queued on the link to it.
    pub queued: usize,
}

/// The node's state that the gauges show, read under its lock at once.
#[derive(Debug)]
pub struct Snapshot {
    pub participants: usize,
    pub sessions: usize,
    pub lamport: u64,
    pub reachable: usize,
    pub unreachable: usize,
    pub peers: Vec<PeerSnapshot>,
    pub session_queue: usize,
    pub held: usize,
    pub history: usize,
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until the
/// node shuts down: a minimal HTTP/1.1 responder, one response per
/// connection.
pub async fn serve(listener: TcpListener, node: Node) {
    let mut shutdown = node.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((mut conn, _)) = accepted else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            // Read the request head (bounded), whatever it asks.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let body = node.metrics().render(&node);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Shared by a node's tasks.
pub type SharedMetrics = Arc<Metrics>;
