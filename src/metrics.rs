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
    session_queue_bytes: IntGauge,
    held: IntGauge,
    history: IntGauge,
    /// Held while a scrape sets the gauges and encodes them, so two
    /// concurrent scrapes do not reset each other's per-peer series.
    render_lock: std::sync::Mutex<()>,
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
                "Changes of the cluster's membership as this node sees it: a node joining or leaving, or one becoming unreachable or reachable again.",
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
                "Items the node keeps for its participants' sessions (its delivery log).",
            ),
            session_queue_bytes: gauge(
                "chitty_session_queue_bytes",
                "Bytes those items hold: encoded sizes plus slots.",
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
            render_lock: std::sync::Mutex::new(()),
        }
    }

    /// The text exposition of every metric, with the gauges read from
    /// `node` now.
    pub fn render(&self, node: &Node) -> String {
        let _rendering = self
            .render_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshot = node.metrics_snapshot(Instant::now());
        self.participants.set(snapshot.participants as i64);
        self.sessions.set(snapshot.sessions as i64);
        self.lamport.set(saturating_i64(snapshot.lamport));
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
        self.session_queue_bytes
            .set(snapshot.session_queue_bytes as i64);
        self.held.set(snapshot.held as i64);
        self.history.set(snapshot.history as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `v` as a gauge's value: above `i64::MAX` it stays at `i64::MAX` rather
/// than wrapping negative.
fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
    pub session_queue_bytes: usize,
    pub held: usize,
    pub history: usize,
}

/// Connections served at once; one more is closed as soon as it is
/// accepted.
pub const MAX_CONNECTIONS: usize = 8;

/// How long accepting pauses after an accept error (out of file
/// descriptors, say), rather than retrying at once in a busy loop.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `GET /metrics` (any path, in fact) on `listener` until the
/// node shuts down: a minimal HTTP/1.1 responder, one response per
/// connection, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: TcpListener, node: Node) {
    let mut shutdown = node.shutdown_signal();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let mut conn = match accepted {
            Ok((conn, _)) => conn,
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Too many at once: closed without an answer.
            drop(conn);
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeConfig;

    #[test]
    fn a_lamport_clock_above_i64_saturates() {
        assert_eq!(saturating_i64(5), 5);
        assert_eq!(saturating_i64(i64::MAX as u64), i64::MAX);
        assert_eq!(saturating_i64(u64::MAX), i64::MAX);
        assert_eq!(saturating_i64(1 << 63), i64::MAX);
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let node = Node::new(NodeConfig::new("127.0.0.1:1"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, node));
        // Connections that send nothing hold their slots (until the 5 s
        // read timeout).
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept them all.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        extra
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            extra.read_to_end(&mut buf),
        )
        .await
        .expect("the extra connection is closed at once");
        assert!(read.is_err() || buf.is_empty(), "answered: {buf:?}");

        // A slot freed, a scrape is answered again.
        drop(held.pop());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await.unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 200 OK"));
    }
}
