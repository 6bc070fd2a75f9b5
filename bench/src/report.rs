//! The outcome of one run, the same figures for both systems: as a table
//! for people and as one JSON object for programs.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{Load, Published};
use crate::measure::Window;
use crate::procfs;
use crate::receive::new_latency_histogram;

/// The outcome of one run. Figures a system or a run does not have are
/// `None` (`null` in JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// "chitty", "nats" or "floor" (`--floor`).
    pub system: String,
    pub nodes: usize,
    pub participants: usize,
    pub publishers: usize,
    pub messages_per_publisher: u64,
    pub size: usize,
    pub rate: Option<f64>,
    /// Chitty: publishers kept many messages in flight (`PublishStream`).
    pub pipeline: bool,
    pub slow: usize,
    pub idle: usize,
    /// Flood messages sent, and how many the node accepted (the rest were
    /// refused, by the publish rate limit).
    pub flood: u64,
    pub flood_accepted: Option<u64>,
    /// The servers' resident memory together: before publishing (everyone
    /// joined), and after the run (stalled participants cut off, every
    /// queue drained).
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// Messages the publishers sent (attempted), all of them together.
    pub sent: u64,
    pub publish_errors: u64,
    /// Distinct deliveries expected: sent messages times readers.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// From the first send to the last delivery (or the deadline).
    pub seconds: f64,
    /// From the first send to the last acknowledged publish.
    pub send_seconds: f64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// With a rate: how late the publishers sent against their schedule.
    pub send_late_mean_ms: Option<f64>,
    pub send_late_max_ms: Option<f64>,
    pub missing: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Readers whose stream ended during the run.
    pub disconnected: u64,
    /// Chitty: never-reading participants the nodes cut off and announced
    /// as left.
    pub slow_disconnected: Option<u64>,
    /// NATS: slow-consumer incidents the servers counted (`/varz`), and
    /// the slow-consumer events the client library reported.
    pub slow_consumers: Option<u64>,
    pub slow_consumer_events: Option<u64>,
    /// Whether every expected delivery arrived before the deadline.
    pub complete: bool,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub client_cpu_us_per_delivery: Option<f64>,
    /// CPU seconds used during the window by neither the servers nor the
    /// bench: how quiet the machine was.
    pub other_cpu_seconds: Option<f64>,
    pub peak_rss_bytes_per_node: Option<u64>,
    pub idle_rss_bytes_per_participant: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_publish_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_disconnect: Option<String>,
}

impl Report {
    /// A report of `system` running `load`, before anything is measured.
    pub fn new(system: &str, load: &Load, nodes: usize) -> Self {
        Self {
            system: system.into(),
            nodes,
            participants: load.participants,
            publishers: load.publishers,
            messages_per_publisher: load.messages,
            size: load.size,
            rate: load.rate,
            ..Self::default()
        }
    }

    /// Fills in what the window measured; `pids` are the server processes.
    pub fn measured(&mut self, window: &Window, pids: &[u32]) {
        let mut all = Published {
            last_ack_us: window.start_us,
            ..Published::default()
        };
        for out in &window.published {
            all.merge(out);
        }
        self.publish_errors += all.errors;
        if self.first_publish_error.is_none() {
            self.first_publish_error = all.first_error;
        }
        let last_ack_us = all.last_ack_us;
        self.sent = window.sent_per_publisher.iter().sum();
        if self.rate.is_some() && self.sent > 0 {
            self.send_late_max_ms = Some(all.max_late_us as f64 / 1000.0);
            self.send_late_mean_ms = Some(all.total_late_us as f64 / self.sent as f64 / 1000.0);
        }

        let mut latency = new_latency_histogram();
        let mut last_delivery_us = window.start_us;
        for t in &window.trackers {
            let distinct = t.distinct_within(&window.sent_per_publisher);
            self.delivered += distinct;
            self.missing += self.sent.saturating_sub(distinct);
            self.duplicates += t.duplicates;
            self.reordered += t.reordered;
            if let Some(reason) = &t.ended {
                self.disconnected += 1;
                self.first_disconnect.get_or_insert_with(|| reason.clone());
            }
            if let Some(us) = t.last_delivery_us {
                last_delivery_us = last_delivery_us.max(us);
            }
            latency
                .add(&t.latency_us)
                .expect("latency histograms of one precision add up");
        }
        self.expected = self.sent * window.trackers.len() as u64;
        self.complete = self.missing == 0;
        // The measured window ends at the last delivery, also when some
        // never came (waiting for them is not delivering).
        let window_end = if self.delivered > 0 {
            last_delivery_us
        } else {
            window.end_us
        };
        self.seconds = window_end.saturating_sub(window.start_us) as f64 / 1e6;
        self.send_seconds = last_ack_us.saturating_sub(window.start_us) as f64 / 1e6;
        if self.seconds > 0.0 {
            self.deliveries_per_sec = self.delivered as f64 / self.seconds;
        }
        if self.send_seconds > 0.0 {
            self.messages_per_sec = self.sent as f64 / self.send_seconds;
        }
        if !latency.is_empty() {
            let ms = |us: u64| us as f64 / 1000.0;
            self.latency_p50_ms = Some(ms(latency.value_at_quantile(0.50)));
            self.latency_p99_ms = Some(ms(latency.value_at_quantile(0.99)));
            self.latency_max_ms = Some(ms(latency.max()));
        }

        let per_delivery = |seconds: Option<f64>| -> Option<f64> {
            (self.delivered > 0).then(|| seconds.map(|s| s * 1e6 / self.delivered as f64))?
        };
        self.server_cpu_seconds = window.cpu.servers;
        self.server_cpu_us_per_delivery = per_delivery(window.cpu.servers);
        self.client_cpu_us_per_delivery = per_delivery(window.cpu.bench);
        self.other_cpu_seconds = window.cpu.others();
        self.peak_rss_bytes_per_node = procfs::peak_rss(pids);
    }

    /// Whether the run delivered everything exactly once, in order.
    pub fn correct(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.reordered == 0 && self.delivered > 0
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report is plain data")
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let pace = match self.rate {
            Some(r) => format!("{r} messages/s"),
            None => "full speed".into(),
        };
        let mut extras = String::new();
        if self.idle > 0 {
            let _ = write!(extras, ", {} idle", self.idle);
        }
        if self.slow > 0 {
            let _ = write!(extras, ", {} never reading", self.slow);
        }
        let _ = writeln!(
            t,
            "{}: {} server{}, {} reading participants, {} publishers sending {} messages each of {} bytes at {pace}{extras}",
            self.system,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" },
            self.participants,
            self.publishers,
            self.messages_per_publisher,
            self.size,
        );
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        let mib =
            |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        let mut rows: Vec<(&str, String)> = vec![
            (
                "deliveries/s",
                format!(
                    "{} ({} deliveries in {:.3} s)",
                    thousands(self.deliveries_per_sec),
                    self.delivered,
                    self.seconds
                ),
            ),
            (
                "messages/s sent",
                format!(
                    "{} ({} sent in {:.3} s, {} failed)",
                    thousands(self.messages_per_sec),
                    self.sent,
                    self.send_seconds,
                    self.publish_errors
                ),
            ),
            (
                "latency p50 / p99 / max",
                format!(
                    "{} / {} / {} ms",
                    ms(self.latency_p50_ms),
                    ms(self.latency_p99_ms),
                    ms(self.latency_max_ms)
                ),
            ),
        ];
        if let (Some(mean), Some(max)) = (self.send_late_mean_ms, self.send_late_max_ms) {
            rows.push((
                "sent late by",
                format!("{mean:.3} ms on average, {max:.3} ms at most (against the schedule)"),
            ));
        }
        rows.extend([
            (
                "missing / dup / reordered",
                format!(
                    "{} / {} / {}",
                    self.missing, self.duplicates, self.reordered
                ),
            ),
            (
                "server CPU per delivery",
                match (self.server_cpu_us_per_delivery, self.server_cpu_seconds) {
                    (Some(us), Some(s)) => format!("{us:.3} µs ({s:.2} CPU-s over all servers)"),
                    _ => "- (not local processes)".into(),
                },
            ),
            (
                "bench CPU per delivery",
                self.client_cpu_us_per_delivery.map_or("-".into(), |us| {
                    format!("{us:.3} µs (the clients, same machine)")
                }),
            ),
            (
                "other processes' CPU",
                self.other_cpu_seconds.map_or("-".into(), |s| {
                    format!("{s:.2} CPU-s during the run (0 on a quiet machine)")
                }),
            ),
            (
                "peak memory per server",
                self.peak_rss_bytes_per_node.map_or("-".into(), |b| {
                    format!("{:.1} MiB (VmHWM, largest server)", b as f64 / 1048576.0)
                }),
            ),
        ]);
        if self.idle > 0 {
            rows.push((
                "node memory per idle",
                self.idle_rss_bytes_per_participant.map_or("-".into(), |b| {
                    format!("{:.1} KiB (RSS growth, all nodes)", b / 1024.0)
                }),
            ));
        }
        if self.flood > 0 {
            rows.push((
                "flood",
                format!(
                    "{} sent, {} accepted by the node",
                    self.flood,
                    self.flood_accepted.map_or("?".into(), |n| n.to_string())
                ),
            ));
        }
        if self.rss_before_bytes.is_some() {
            rows.push((
                "memory before/after",
                format!(
                    "{} / {} (VmRSS, all servers: everyone joined / run over, stalled ones gone)",
                    mib(self.rss_before_bytes),
                    mib(self.rss_after_bytes)
                ),
            ));
        }
        if self.slow > 0 {
            rows.push((
                "slow ones cut off",
                self.slow_disconnected
                    .map_or("-".into(), |n| format!("{n} of {}", self.slow)),
            ));
        }
        if self.slow_consumers.is_some() || self.slow_consumer_events.is_some() {
            let count = |n: Option<u64>| n.map_or("?".into(), |n| n.to_string());
            rows.push((
                "slow consumers",
                format!(
                    "{} counted by the servers, {} reported to clients",
                    count(self.slow_consumers),
                    count(self.slow_consumer_events)
                ),
            ));
        }
        if self.disconnected > 0 {
            rows.push((
                "readers disconnected",
                format!(
                    "{} (first: {})",
                    self.disconnected,
                    self.first_disconnect.as_deref().unwrap_or("?")
                ),
            ));
        }
        if let Some(e) = &self.first_publish_error {
            rows.push(("first publish error", e.clone()));
        }
        for (k, v) in rows {
            let _ = writeln!(t, "  {k:<26} {v}");
        }
        if let Some(rate) = self.rate
            && self.messages_per_sec < 0.95 * rate
        {
            let _ = writeln!(
                t,
                "  note: the publishers could not keep up with {rate} messages/s"
            );
        }
        let verdict = if self.correct() {
            "every delivery arrived once and in order"
        } else {
            "FAILED: deliveries were missing, duplicated or out of order"
        };
        let _ = write!(t, "  {verdict}");
        t
    }
}

/// 1234567.8 as "1,234,568".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_line_with_every_figure() {
        let report = Report {
            system: "chitty".into(),
            latency_p99_ms: Some(1.5),
            first_disconnect: Some("a \"quoted\"\nreason".into()),
            ..Report::default()
        };
        let json = report.to_json();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["rate"], serde_json::Value::Null);
        assert_eq!(value["latency_p99_ms"], 1.5);
        assert_eq!(value["first_disconnect"], "a \"quoted\"\nreason");
        assert!(value.get("first_publish_error").is_none());
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(12.0), "12");
    }
}
