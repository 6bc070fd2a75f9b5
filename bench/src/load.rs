//! The load both systems are given: who publishes what and when, the
//! message texts that let every receiver check its deliveries, and the
//! publisher loop with its pacing.
//!
//! Each message text is `"<publisher> <seq> <micros> "` padded with dots to
//! `size` characters, where `micros` is the send time since the run's
//! `Instant`. A receiver therefore knows, without asking anyone, the
//! publish-to-delivery latency of every delivery and whether a (receiver,
//! publisher) pair saw every sequence number exactly once and in order.

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::receive::Counters;

/// A publisher gives up after this many failed sends in a row.
const MAX_CONSECUTIVE_PUBLISH_ERRORS: u32 = 3;
/// A publisher looks at the readers every this many messages.
const FLOW_CHECK_EVERY: u64 = 32;

/// What every run has, whatever the system.
#[derive(Debug, Clone)]
pub struct Load {
    /// Servers of the local cluster to start (ignored with `servers`).
    pub nodes: usize,
    /// Running servers to use instead of starting a cluster.
    pub servers: Vec<String>,
    /// Reading participants (subscribers); the first `publishers` of them
    /// also publish on Chitty, where a publisher is a participant.
    pub participants: usize,
    pub publishers: usize,
    /// Messages each publisher sends.
    pub messages: u64,
    /// Characters per message text (ASCII, so also bytes).
    pub size: usize,
    /// Messages per second, all publishers together; `None` is full speed.
    pub rate: Option<f64>,
    /// At full speed, how many messages (all publishers together) may be
    /// sent beyond what the slowest reader has received; `0`: no limit.
    pub window: u64,
    /// How long to wait for the last deliveries once every publisher is done.
    pub drain: Duration,
    /// Bound on the whole publishing phase.
    pub timeout: Duration,
    /// Where the started servers' logs go; `None`: a temporary directory,
    /// removed at the end unless the run fails.
    pub log_dir: Option<PathBuf>,
    /// Print the progress line on stderr.
    pub progress: bool,
}

impl Load {
    /// Checks what both systems need; `max_size` is the longest message the
    /// system takes.
    pub fn validate(&self, max_size: usize) -> Result<(), String> {
        if self.servers.is_empty() && self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        if self.participants == 0 {
            return Err("--participants must be at least 1".into());
        }
        if self.publishers == 0 {
            return Err("--publishers must be at least 1".into());
        }
        if self.messages == 0 {
            return Err("--messages must be at least 1".into());
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err("--rate must be a positive number of messages per second".into());
        }
        // The longest header: the last publisher, its last sequence number
        // and a send time 28 hours into the run.
        let mut longest = String::new();
        write_text(
            &mut longest,
            self.publishers - 1,
            self.messages,
            99_999_999_999,
            0,
        );
        let longest = longest.len();
        if self.size < longest || self.size > max_size {
            return Err(format!(
                "--size must be between {longest} (what the header needs) and {max_size} characters"
            ));
        }
        Ok(())
    }

    /// Messages of all publishers together.
    pub fn total_messages(&self) -> u64 {
        self.messages * self.publishers as u64
    }
}

/// Writes message `seq` of `publisher`, sent at `micros`, padded to `size`:
/// a header (publisher index, sequence number, send time), then dots.
pub fn write_text(text: &mut String, publisher: usize, seq: u64, micros: u64, size: usize) {
    text.clear();
    let _ = write!(text, "{publisher} {seq} {micros} ");
    while text.len() < size {
        text.push('.');
    }
}

/// Parses `"<publisher> <seq> <micros> ..."`.
pub fn parse_text(text: &[u8]) -> Option<(usize, u64, u64)> {
    fn number(part: Option<&[u8]>) -> Option<u64> {
        let part = part?;
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    }
    let mut parts = text.splitn(4, |&b| b == b' ');
    let publisher = number(parts.next())? as usize;
    let seq = number(parts.next())?;
    let micros = number(parts.next())?;
    parts.next()?;
    Some((publisher, seq, micros))
}

/// What every receiver and publisher needs to know about the run.
#[derive(Debug)]
pub struct Plan {
    /// Send and receive times are micros since this instant.
    pub base: Instant,
    pub publishers: usize,
    /// Messages each publisher sends.
    pub messages: u64,
}

impl Plan {
    pub fn new(load: &Load) -> Self {
        Self {
            base: Instant::now(),
            publishers: load.publishers,
            messages: load.messages,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// Distinct messages each receiver expects.
    pub fn expected(&self) -> u64 {
        self.messages * self.publishers as u64
    }
}

/// Where one publisher's messages go: a Chitty session, or a NATS
/// connection.
pub trait MessageSink: Send + 'static {
    /// Sends one message; an error is counted, and a few in a row end the
    /// publisher.
    fn send(&mut self, text: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Waits until what was sent is acknowledged (or flushed), and says how
    /// that went.
    fn finish(self) -> impl Future<Output = Published> + Send;
}

/// How one publisher's run went.
#[derive(Debug, Default)]
pub struct Published {
    pub errors: u64,
    pub first_error: Option<String>,
    /// Micros since the plan's base when the last message was acknowledged.
    pub last_ack_us: u64,
    /// With a rate: how late sends were against their slots, at most and
    /// in all (micros).
    pub max_late_us: u64,
    pub total_late_us: u64,
}

impl Published {
    pub fn failed(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    /// Adds what `other` saw: a sink's report at the end of its
    /// publisher's run, or another publisher's run.
    pub fn merge(&mut self, other: &Published) {
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.last_ack_us = self.last_ack_us.max(other.last_ack_us);
        self.max_late_us = self.max_late_us.max(other.max_late_us);
        self.total_late_us += other.total_late_us;
    }
}

/// When each message goes out at a rate: message `k` of publisher `p` has
/// the slot `start + (k * P + p) / rate`, an absolute schedule, so that a
/// late send does not delay the ones after it.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: tokio::time::Instant,
    pub rate: f64,
}

impl Schedule {
    fn slot(&self, publisher: usize, publishers: usize, k: u64) -> tokio::time::Instant {
        let index = k * publishers as u64 + publisher as u64;
        self.start + Duration::from_secs_f64(index as f64 / self.rate)
    }
}

/// Closed-loop pacing at full speed: publishers stay at most `window`
/// messages ahead of the slowest reader still reading. Without it, fast
/// publishers only build queues on the servers (and Chitty's nodes cut off
/// readers whose queue is full): the run would measure queueing, not
/// delivery.
pub struct Flow {
    pub window: u64,
    pub sent: Vec<Arc<AtomicU64>>,
    pub readers: Vec<Arc<Counters>>,
}

impl Flow {
    async fn wait_for_readers(&self) {
        loop {
            let sent = total(&self.sent);
            let slowest = self
                .readers
                .iter()
                .filter(|r| !r.ended.load(Ordering::Acquire))
                .map(|r| r.delivered.load(Ordering::Relaxed))
                .min();
            match slowest {
                Some(received) if sent.saturating_sub(received) > self.window => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                _ => return,
            }
        }
    }
}

/// Messages sent by all publishers so far.
pub fn total(attempted: &[Arc<AtomicU64>]) -> u64 {
    attempted.iter().map(|a| a.load(Ordering::Relaxed)).sum()
}

/// How one publisher is paced.
pub struct Pacing {
    pub schedule: Option<Schedule>,
    pub flow: Option<Arc<Flow>>,
}

/// Sends publisher `publisher`'s messages into `sink`, counting each in
/// `attempted` before sending it, at the schedule's slots or within the
/// flow's window.
pub async fn publish<S: MessageSink>(
    mut sink: S,
    publisher: usize,
    plan: Arc<Plan>,
    size: usize,
    pacing: Pacing,
    attempted: Arc<AtomicU64>,
) -> Published {
    let mut out = Published::default();
    let mut text = String::with_capacity(size);
    let mut failures_in_a_row = 0;
    for k in 0..plan.messages {
        if let Some(schedule) = &pacing.schedule {
            let slot = schedule.slot(publisher, plan.publishers, k);
            tokio::time::sleep_until(slot).await;
            let late = tokio::time::Instant::now().saturating_duration_since(slot);
            let late_us = late.as_micros() as u64;
            out.max_late_us = out.max_late_us.max(late_us);
            out.total_late_us += late_us;
        }
        if let Some(flow) = &pacing.flow
            && k % FLOW_CHECK_EVERY == 0
        {
            flow.wait_for_readers().await;
        }
        write_text(&mut text, publisher, k + 1, plan.now_us(), size);
        attempted.fetch_add(1, Ordering::Relaxed);
        match sink.send(&text).await {
            Ok(()) => failures_in_a_row = 0,
            Err(e) => {
                out.failed(e);
                failures_in_a_row += 1;
                if failures_in_a_row >= MAX_CONSECUTIVE_PUBLISH_ERRORS {
                    break;
                }
            }
        }
    }
    out.merge(&sink.finish().await);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_round_trips() {
        let mut text = String::new();
        write_text(&mut text, 2, 17, 123_456, 64);
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("2 17 123456 "));
        assert_eq!(parse_text(text.as_bytes()), Some((2, 17, 123_456)));
        assert_eq!(parse_text(b"hello world"), None);
    }

    #[test]
    fn a_schedule_gives_publishers_interleaved_slots() {
        let start = tokio::time::Instant::now();
        let schedule = Schedule { start, rate: 100.0 };
        assert_eq!(schedule.slot(0, 3, 0), start);
        assert_eq!(schedule.slot(2, 3, 0), start + Duration::from_millis(20));
        assert_eq!(schedule.slot(1, 3, 2), start + Duration::from_millis(70));
    }
}
