//! What a node hands its local participants, kept once for all of them.
//!
//! Every item for the node's sessions (an event, a change of the cluster's
//! nodes, a gap, ...) is appended once to the node's [`DeliveryLog`], and
//! each session's stream reads it at its own cursor. Handing out an item
//! costs the same however many sessions there are and however far behind
//! they are: a participant that stopped reading is a cursor that no longer
//! moves, not a queue that grows with every event. (With a queue per
//! session, each event cost one push per session: under a flood, 500
//! stalled readers made each event about 18 times as costly for the node,
//! and everyone waited for it; see docs/bench.md.)
//!
//! The log holds what the sessions still open have not read, within two
//! limits: `--session-queue` items and `--session-queue-bytes` bytes, each
//! item counted at its encoded size plus its slot in the log. When either is
//! passed, the oldest items are dropped until the log is 1/64 below both
//! (so that a reader hovering at a limit does not have the cursors looked
//! at on every item), and every session that had not read them is cut off
//! as too slow. So what stalled readers cost the node is bounded by these
//! two numbers however many there are, and a session is cut off once it is
//! about a limit behind. What everyone has read is dropped when the cursors
//! are looked at: every [`SCAN_EVERY`] items, at a limit, and when a session
//! ends.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Waker};

use crate::core::FastMap;
use crate::core::node::EndReason;

/// A session's reading position, as the log knows it.
pub(crate) type ReaderId = u64;

/// The cursors are looked at (and what all have read dropped) at least
/// every this many items.
pub(crate) const SCAN_EVERY: usize = 256;

/// How much the log may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogLimits {
    pub(crate) items: usize,
    pub(crate) bytes: usize,
}

impl LogLimits {
    /// Why a session that fell behind these limits was cut off.
    pub(crate) fn too_slow(&self) -> EndReason {
        EndReason::TooSlow {
            events: self.items,
            bytes: self.bytes,
        }
    }
}

/// Which sessions an item is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// Every session reading when it was appended.
    All,
    /// The sessions whose first gate index is at most this one (see
    /// `Output::Deliver`).
    FromGate(u64),
    /// One session.
    Reader(ReaderId),
}

impl Audience {
    fn includes(self, reader: ReaderId, from_gate: u64) -> bool {
        match self {
            Audience::All => true,
            Audience::FromGate(gate) => gate >= from_gate,
            Audience::Reader(only) => only == reader,
        }
    }
}

#[derive(Debug)]
struct Entry<T> {
    audience: Audience,
    item: T,
    /// What it holds: its encoded size plus its slot.
    cost: usize,
}

/// How a session's stream ends once it has read up to `at`.
#[derive(Debug, Clone)]
struct Ending {
    at: u64,
    /// `None`: normally (the participant left).
    reason: Option<EndReason>,
}

#[derive(Debug)]
struct Reader {
    /// The position of the next item it reads.
    cursor: u64,
    from_gate: u64,
    ending: Option<Ending>,
    /// Set while it waits for more.
    waker: Option<Waker>,
}

impl Reader {
    /// Whether it will read nothing more.
    fn finished(&self) -> bool {
        self.ending.as_ref().is_some_and(|e| self.cursor >= e.at)
    }
}

#[derive(Debug)]
struct LogState<T> {
    entries: VecDeque<Entry<T>>,
    /// The position of `entries[0]`.
    first: u64,
    /// The cost of `entries`, summed.
    held: usize,
    readers: FastMap<ReaderId, Reader>,
    next_reader: ReaderId,
    /// Readers with a waker set.
    waiting: Vec<ReaderId>,
    /// Items appended since the cursors were last looked at.
    since_scan: usize,
    /// A session ended since then: what only it held can go.
    reader_gone: bool,
}

impl<T> LogState<T> {
    fn head(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn over(&self, items: usize, bytes: usize) -> bool {
        self.entries.len() > items || self.held > bytes
    }

    fn drop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.held -= entry.cost;
            self.first += 1;
        }
    }

    fn wake(reader: &mut Reader) {
        if let Some(waker) = reader.waker.take() {
            waker.wake();
        }
    }
}

/// What a read found.
#[derive(Debug)]
pub(crate) enum Read {
    /// Items were taken.
    Items,
    /// Nothing yet: the reader is woken when there is.
    Pending,
    /// The stream ends, normally (`None`) or for this reason.
    Ended(Option<EndReason>),
}

/// The items for a node's sessions, read by each at its own cursor.
#[derive(Debug)]
pub(crate) struct DeliveryLog<T> {
    state: Mutex<LogState<T>>,
    limits: LogLimits,
}

impl<T: Clone> DeliveryLog<T> {
    pub(crate) fn new(limits: LogLimits) -> Self {
        Self {
            state: Mutex::new(LogState {
                entries: VecDeque::new(),
                first: 0,
                held: 0,
                readers: FastMap::default(),
                next_reader: 0,
                waiting: Vec::new(),
                since_scan: 0,
                reader_gone: false,
            }),
            limits,
        }
    }

    pub(crate) fn limits(&self) -> LogLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, LogState<T>> {
        // Every update leaves the state whole before anything that can
        // panic, so a poisoned lock holds nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new reader, reading from what is appended next; it receives what
    /// is delivered through gate index `from_gate` on.
    pub(crate) fn open(&self, from_gate: u64) -> ReaderId {
        let mut log = self.lock();
        let id = log.next_reader;
        log.next_reader += 1;
        let cursor = log.head();
        log.readers.insert(
            id,
            Reader {
                cursor,
                from_gate,
                ending: None,
                waker: None,
            },
        );
        id
    }

    /// The reader's stream was dropped.
    pub(crate) fn release(&self, reader: ReaderId) {
        let mut log = self.lock();
        if log.readers.remove(&reader).is_some() {
            log.reader_gone = true;
        }
    }

    /// Appends `item` (`bytes` its encoded size). Readers that must be cut
    /// off to keep within the limits are added to `cut`, already ended.
    pub(crate) fn append(
        &self,
        audience: Audience,
        item: T,
        bytes: usize,
        cut: &mut Vec<ReaderId>,
    ) {
        let cost = bytes + std::mem::size_of::<Entry<T>>();
        let mut log = self.lock();
        log.entries.push_back(Entry {
            audience,
            item,
            cost,
        });
        log.held += cost;
        log.since_scan += 1;
        if log.since_scan >= SCAN_EVERY || log.over(self.limits.items, self.limits.bytes) {
            self.scan(&mut log, cut);
        }
    }

    /// Drops what every open reader has read, and if the log is still over
    /// a limit, what is oldest until it is 1/64 below both, cutting off the
    /// readers that had not read it.
    fn scan(&self, log: &mut LogState<T>, cut: &mut Vec<ReaderId>) {
        log.since_scan = 0;
        log.reader_gone = false;
        let head = log.head();
        let oldest = log
            .readers
            .values()
            .filter(|r| !r.finished())
            .map(|r| r.cursor)
            .min()
            .unwrap_or(head);
        while log.first < oldest {
            log.drop_front();
        }
        let LogLimits { items, bytes } = self.limits;
        if log.over(items, bytes) {
            while log.over(items - items / 64, bytes - bytes / 64) {
                log.drop_front();
            }
            let first = log.first;
            let reason = self.limits.too_slow();
            for (id, reader) in log.readers.iter_mut() {
                if reader.finished() || reader.cursor >= first {
                    continue;
                }
                if reader.ending.is_none() {
                    cut.push(*id);
                }
                reader.ending = Some(Ending {
                    at: reader.cursor,
                    reason: Some(reason.clone()),
                });
                LogState::<T>::wake(reader);
            }
        }
        // After a burst, give back the room it took.
        let len = log.entries.len();
        if log.entries.capacity() > 4 * len.max(SCAN_EVERY) {
            log.entries.shrink_to(2 * len.max(SCAN_EVERY));
        }
    }

    /// Drops what only ended sessions held, if any ended since the last look.
    pub(crate) fn tidy(&self) {
        let mut log = self.lock();
        if log.reader_gone {
            self.scan(&mut log, &mut Vec::new());
        }
    }

    /// Wakes the readers waiting for more (after appending).
    pub(crate) fn wake_readers(&self) {
        let mut log = self.lock();
        let log = &mut *log;
        for id in log.waiting.drain(..) {
            if let Some(reader) = log.readers.get_mut(&id) {
                LogState::<T>::wake(reader);
            }
        }
    }

    /// Ends a reader's stream: once it has read what was appended so far
    /// (`drain`), or at once. A stream that is already ending keeps its end.
    pub(crate) fn end(&self, reader: ReaderId, reason: Option<EndReason>, drain: bool) {
        let mut log = self.lock();
        let head = log.head();
        if let Some(r) = log.readers.get_mut(&reader)
            && r.ending.is_none()
        {
            r.ending = Some(Ending {
                at: if drain { head } else { r.cursor },
                reason,
            });
            LogState::<T>::wake(r);
        }
    }

    /// Takes up to `max` items for `reader` into `out`.
    pub(crate) fn read(
        &self,
        reader: ReaderId,
        max: usize,
        out: &mut Vec<T>,
        cx: &Context<'_>,
    ) -> Read {
        let mut log = self.lock();
        let head = log.head();
        let LogState {
            entries,
            first,
            readers,
            waiting,
            ..
        } = &mut *log;
        let Some(r) = readers.get_mut(&reader) else {
            return Read::Ended(None);
        };
        if r.cursor < *first {
            // Dropped before it was read: never left so by `scan`, which
            // ends such a reader first.
            return Read::Ended(Some(self.limits.too_slow()));
        }
        let stop = r.ending.as_ref().map_or(head, |e| e.at.min(head));
        let before = out.len();
        let mut at = r.cursor;
        // Room for what this read can take, no more: a session woken for
        // one item does not allocate for a whole frame's worth.
        out.reserve(usize::try_from(stop.saturating_sub(at)).map_or(max, |n| n.min(max)));
        while at < stop && out.len() - before < max {
            let entry = &entries[(at - *first) as usize];
            if entry.audience.includes(reader, r.from_gate) {
                out.push(entry.item.clone());
            }
            at += 1;
        }
        r.cursor = at;
        if out.len() > before {
            return Read::Items;
        }
        if let Some(ending) = &r.ending
            && r.cursor >= ending.at
        {
            return Read::Ended(ending.reason.clone());
        }
        if r.waker.is_none() {
            waiting.push(reader);
        }
        r.waker = Some(cx.waker().clone());
        Read::Pending
    }

    /// Items held and what they cost, in bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        let log = self.lock();
        (log.entries.len(), log.held)
    }

    /// Readers not yet released.
    #[cfg(test)]
    fn readers(&self) -> usize {
        self.lock().readers.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn log(items: usize, bytes: usize) -> DeliveryLog<u32> {
        DeliveryLog::new(LogLimits { items, bytes })
    }

    fn read_all(log: &DeliveryLog<u32>, reader: ReaderId) -> (Vec<u32>, Read) {
        let waker = std::task::Waker::from(Arc::new(Wakes::default()));
        let cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        loop {
            match log.read(reader, 1000, &mut out, &cx) {
                Read::Items => continue,
                end => return (out, end),
            }
        }
    }

    fn append(log: &DeliveryLog<u32>, items: std::ops::Range<u32>) -> Vec<ReaderId> {
        let mut cut = Vec::new();
        for i in items {
            log.append(Audience::All, i, 0, &mut cut);
        }
        cut
    }

    #[test]
    fn each_reader_gets_what_was_appended_after_it_opened_once_in_order() {
        let log = log(1000, usize::MAX);
        let early = log.open(0);
        append(&log, 0..10);
        let late = log.open(0);
        append(&log, 10..20);
        let (got, end) = read_all(&log, early);
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        assert!(matches!(end, Read::Pending));
        let (got, _) = read_all(&log, late);
        assert_eq!(got, (10..20).collect::<Vec<_>>());
        // Read by everyone: gone at the next look.
        append(&log, 20..(20 + SCAN_EVERY as u32));
        read_all(&log, early);
        read_all(&log, late);
        append(&log, 0..SCAN_EVERY as u32);
        assert!(log.held().0 <= SCAN_EVERY, "{:?}", log.held());
    }

    #[test]
    fn items_reach_only_their_audience() {
        let log = log(1000, usize::MAX);
        let from_3 = log.open(3);
        let other = log.open(0);
        let mut cut = Vec::new();
        log.append(Audience::FromGate(2), 1, 0, &mut cut);
        log.append(Audience::FromGate(3), 2, 0, &mut cut);
        log.append(Audience::Reader(other), 3, 0, &mut cut);
        log.append(Audience::All, 4, 0, &mut cut);
        assert_eq!(read_all(&log, from_3).0, [2, 4]);
        assert_eq!(read_all(&log, other).0, [1, 2, 3, 4]);
    }

    #[test]
    fn a_reader_past_a_limit_is_cut_off_and_the_log_stays_within_it() {
        for (items, bytes, size) in [(800, usize::MAX, 0), (usize::MAX, 64 * 1024, 100)] {
            let log = log(items, bytes);
            let stalled = log.open(0);
            let reading = log.open(0);
            let mut cut = Vec::new();
            let mut got = Vec::new();
            for i in 0..10_000 {
                log.append(Audience::All, i, size, &mut cut);
                let (held, cost) = log.held();
                assert!(held <= items && cost <= bytes, "{held} items, {cost} bytes");
                if i % 100 == 99 {
                    got.extend(read_all(&log, reading).0);
                }
            }
            assert_eq!(cut, [stalled], "only the stalled one, once");
            assert_eq!(got, (0..10_000).collect::<Vec<_>>());
            let (_, end) = read_all(&log, stalled);
            assert!(
                matches!(end, Read::Ended(Some(EndReason::TooSlow { .. }))),
                "{end:?}"
            );
        }
    }

    #[test]
    fn a_drained_end_comes_after_what_was_appended_before_it() {
        let log = log(1000, usize::MAX);
        let leaving = log.open(0);
        let cut_off = log.open(0);
        append(&log, 0..5);
        log.end(leaving, None, true);
        log.end(cut_off, Some(EndReason::ShuttingDown), false);
        append(&log, 5..10);
        let (got, end) = read_all(&log, leaving);
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(matches!(end, Read::Ended(None)));
        let (got, end) = read_all(&log, cut_off);
        assert!(got.is_empty());
        assert!(matches!(end, Read::Ended(Some(EndReason::ShuttingDown))));
    }

    #[test]
    fn a_waiting_reader_is_woken_once_by_what_comes_next() {
        let log = log(1000, usize::MAX);
        let reader = log.open(0);
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(matches!(log.read(reader, 10, &mut out, &cx), Read::Pending));
        assert!(matches!(log.read(reader, 10, &mut out, &cx), Read::Pending));
        append(&log, 0..3);
        log.wake_readers();
        log.wake_readers();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(matches!(log.read(reader, 10, &mut out, &cx), Read::Items));
        assert_eq!(out, [0, 1, 2]);
    }

    #[test]
    fn what_only_a_released_reader_held_is_dropped() {
        let log = log(100_000, usize::MAX);
        let stalled = log.open(0);
        append(&log, 0..5000);
        assert_eq!(log.held().0, 5000);
        log.release(stalled);
        log.tidy();
        assert_eq!(log.held(), (0, 0));
        assert_eq!(log.readers(), 0);
    }
}
