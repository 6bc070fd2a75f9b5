//! What a reading participant checks, whatever the system: every message
//! of every publisher exactly once and in order, and how long each took.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Notify, watch};

use crate::load::{Plan, parse_text};

/// Significant digits of the latency histograms: 0.1 % of the value.
const LATENCY_DIGITS: u8 = 3;

/// Counters a reader updates as it goes, read by the progress line, the
/// flow control and the waits for joins. Aligned so that readers on
/// different cores never share a cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counters {
    /// Events of any kind received.
    pub events: AtomicU64,
    /// Distinct bench messages received.
    pub delivered: AtomicU64,
    /// The stream ended (the bench did not stop it).
    pub ended: AtomicBool,
}

/// Readers that have not yet got everything (or ended), and a wake-up for
/// when none remain.
#[derive(Debug, Default)]
pub struct Completion {
    remaining: AtomicUsize,
    pub all_done: Notify,
    /// Why the first stream that ended early ended, for warnings.
    first_end: Mutex<Option<String>>,
}

impl Completion {
    fn ended(&self, reason: &str) {
        let mut first = self.first_end.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| reason.to_string());
    }

    pub fn first_end(&self) -> String {
        let first = self.first_end.lock().unwrap_or_else(|p| p.into_inner());
        first.clone().unwrap_or_default()
    }

    fn finish_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_done.notify_one();
        }
    }
}

/// What one reader saw, per publisher.
#[derive(Debug)]
pub struct Tracker {
    /// Per publisher, a bit per sequence number seen.
    seen: Vec<Vec<u64>>,
    /// Per publisher, the highest sequence number seen.
    max_seq: Vec<u64>,
    pub distinct: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Texts that are not bench messages of this run.
    pub foreign: u64,
    /// Publish-to-delivery latency of each distinct delivery, in micros.
    pub latency_us: Histogram<u32>,
    /// Micros since the plan's base of the last distinct delivery.
    pub last_delivery_us: Option<u64>,
    /// "left" events of Chitty's never-reading participants (their node
    /// cut them off).
    pub slow_left: u64,
    /// Why the stream ended before the bench stopped it.
    pub ended: Option<String>,
}

impl Tracker {
    fn new(plan: &Plan) -> Self {
        let words = (plan.messages as usize).div_ceil(64);
        Self {
            seen: vec![vec![0; words]; plan.publishers],
            max_seq: vec![0; plan.publishers],
            distinct: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            latency_us: new_latency_histogram(),
            last_delivery_us: None,
            slow_left: 0,
            ended: None,
        }
    }

    /// Records one message text received at `now_us`; returns whether it
    /// was a new delivery.
    pub fn record(&mut self, text: &[u8], now_us: u64) -> bool {
        let Some((publisher, seq, sent_us)) = parse_text(text) else {
            self.foreign += 1;
            return false;
        };
        let Some(bits) = self.seen.get_mut(publisher) else {
            self.foreign += 1;
            return false;
        };
        if seq == 0 || seq as usize > bits.len() * 64 {
            self.foreign += 1;
            return false;
        }
        let (word, bit) = ((seq - 1) as usize / 64, (seq - 1) % 64);
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= 1 << bit;
        if seq < self.max_seq[publisher] {
            self.reordered += 1;
        }
        self.max_seq[publisher] = self.max_seq[publisher].max(seq);
        self.distinct += 1;
        let latency = now_us.saturating_sub(sent_us);
        if self.latency_us.record(latency).is_err() {
            // Only a histogram too large to grow refuses a value.
            self.latency_us.saturating_record(latency);
        }
        self.last_delivery_us = Some(now_us);
        true
    }

    /// Distinct deliveries of the first `sent[p]` messages of each publisher.
    pub fn distinct_within(&self, sent: &[u64]) -> u64 {
        self.seen
            .iter()
            .zip(sent)
            .map(|(bits, &n)| {
                let full = (n / 64) as usize;
                let mut count: u64 = bits[..full.min(bits.len())]
                    .iter()
                    .map(|w| w.count_ones() as u64)
                    .sum();
                if n % 64 != 0
                    && let Some(w) = bits.get(full)
                {
                    count += (w & ((1u64 << (n % 64)) - 1)).count_ones() as u64;
                }
                count
            })
            .sum()
    }
}

/// An empty latency histogram that grows to the largest value recorded.
pub fn new_latency_histogram() -> Histogram<u32> {
    Histogram::new(LATENCY_DIGITS).expect("3 significant digits are supported")
}

/// One reader's side of the bookkeeping: its tracker, and the shared
/// counters it keeps up to date.
pub struct Reading {
    pub plan: Arc<Plan>,
    pub tracker: Tracker,
    counters: Arc<Counters>,
    completion: Arc<Completion>,
    finished: bool,
}

impl Reading {
    /// Counts `count` events of any kind received.
    pub fn received_events(&self, count: u64) {
        self.counters.events.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts `count` new deliveries, and says so once the reader has
    /// everything.
    pub fn delivered(&mut self, count: u64) {
        self.counters.delivered.fetch_add(count, Ordering::Relaxed);
        if !self.finished && self.tracker.distinct >= self.plan.expected() {
            self.finished = true;
            self.completion.finish_one();
        }
    }

    /// The reader is done: stopped by the bench (`ended` is `None`), or its
    /// stream ended for `ended`.
    pub fn end(mut self, ended: Option<String>) -> Tracker {
        if let Some(reason) = &ended {
            self.counters.ended.store(true, Ordering::Release);
            self.completion.ended(reason);
        }
        if !self.finished {
            self.completion.finish_one();
        }
        self.tracker.ended = ended;
        self.tracker
    }
}

/// A reader's task and counters.
pub struct Reader {
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<Tracker>,
}

/// Every reading participant's task, with what they share.
pub struct Readers {
    pub plan: Arc<Plan>,
    pub list: Vec<Reader>,
    pub completion: Arc<Completion>,
    stop: watch::Sender<bool>,
}

impl Readers {
    pub fn new(plan: Arc<Plan>) -> Self {
        Self {
            plan,
            list: Vec::new(),
            completion: Arc::new(Completion::default()),
            stop: watch::channel(false).0,
        }
    }

    /// Spawns one reader: `read` gets its bookkeeping and a receiver that
    /// changes when the bench stops the readers.
    pub fn spawn<F, Fut>(&mut self, read: F)
    where
        F: FnOnce(Reading, watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = Tracker> + Send + 'static,
    {
        let counters = Arc::new(Counters::default());
        self.completion.remaining.fetch_add(1, Ordering::AcqRel);
        let reading = Reading {
            plan: self.plan.clone(),
            tracker: Tracker::new(&self.plan),
            counters: counters.clone(),
            completion: self.completion.clone(),
            finished: false,
        };
        let task = tokio::spawn(read(reading, self.stop.subscribe()));
        self.list.push(Reader { counters, task });
    }

    pub fn counters(&self) -> Vec<Arc<Counters>> {
        self.list.iter().map(|r| r.counters.clone()).collect()
    }

    /// Distinct deliveries so far, all readers together.
    pub fn delivered(&self) -> u64 {
        self.list
            .iter()
            .map(|r| r.counters.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Events of any kind each reader has received so far.
    pub fn events(&self) -> Vec<u64> {
        self.list
            .iter()
            .map(|r| r.counters.events.load(Ordering::Relaxed))
            .collect()
    }

    /// Readers counted in `before` (events received then) that have
    /// received fewer than `more` events since, and are still reading.
    pub fn behind(&self, before: &[u64], more: u64) -> usize {
        self.list
            .iter()
            .zip(before)
            .filter(|(r, b)| {
                !r.counters.ended.load(Ordering::Acquire)
                    && r.counters.events.load(Ordering::Relaxed) < *b + more
            })
            .count()
    }

    /// Readers whose stream has ended.
    pub fn ended(&self) -> usize {
        self.list
            .iter()
            .filter(|r| r.counters.ended.load(Ordering::Acquire))
            .count()
    }

    /// Says how many streams have ended early so far, and why the first did.
    pub fn warn_ended(&self) {
        let ended = self.ended();
        if ended > 0 {
            eprintln!(
                "bench: warning: {ended} readers' streams have ended (first: {})",
                self.completion.first_end()
            );
        }
    }

    /// Waits (bounded) until no reader received anything for `quiet_for`.
    pub async fn wait_quiet(&self, quiet_for: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let total = || -> u64 { self.events().iter().sum() };
        let mut last = total();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = total();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet_for {
                return;
            }
        }
        eprintln!("bench: warning: readers still receiving after {timeout:?}");
    }

    /// Stops every reader and collects what each saw.
    pub async fn stop(&mut self) -> Result<Vec<Tracker>, String> {
        let _ = self.stop.send(true);
        let mut trackers = Vec::with_capacity(self.list.len());
        for reader in self.list.drain(..) {
            trackers.push(
                reader
                    .task
                    .await
                    .map_err(|e| format!("reader task failed: {e}"))?,
            );
        }
        Ok(trackers)
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for reader in &self.list {
            reader.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Load;

    fn plan(publishers: usize, messages: u64) -> Plan {
        Plan::new(&Load {
            nodes: 1,
            servers: Vec::new(),
            participants: 1,
            publishers,
            messages,
            size: 64,
            rate: None,
            window: 0,
            drain: Duration::ZERO,
            timeout: Duration::ZERO,
            log_dir: None,
            progress: false,
        })
    }

    #[test]
    fn a_tracker_counts_duplicates_reordering_and_missing() {
        let mut t = Tracker::new(&plan(2, 100));
        assert!(t.record(b"0 1 10 .", 20));
        assert!(t.record(b"0 3 10 .", 20));
        assert!(t.record(b"0 2 10 .", 20)); // after 3: out of order
        assert!(!t.record(b"0 2 10 .", 20)); // seen: duplicate
        assert!(t.record(b"1 100 10 .", 30));
        assert!(!t.record(b"7 1 10 .", 20)); // no such publisher
        assert!(!t.record(b"chat", 20));
        assert_eq!(
            (t.distinct, t.duplicates, t.reordered, t.foreign),
            (4, 1, 1, 2)
        );
        assert_eq!(t.latency_us.len(), 4);
        assert_eq!(t.latency_us.min(), 10);
        assert_eq!(t.latency_us.max(), 20);
        assert_eq!(t.distinct_within(&[3, 100]), 4);
        assert_eq!(t.distinct_within(&[2, 99]), 2);
    }
}
