//! Where log lines go: into one buffer, written out in batches by a thread
//! of its own.
//!
//! A node logs every service call at its default level. Writing each line
//! with its own `write`, or handing each line to a thread through a channel
//! that wakes it, costs more than many of the calls logged. Here a caller
//! appends its formatted line to a shared buffer under a lock, and wakes the
//! writer thread only when the buffer was empty and the thread asleep; the
//! thread then lets lines gather for [`GATHER`] (or until [`EARLY_BYTES`]
//! are pending) and writes them with one `write`. So a busy node wakes the
//! thread about once per [`GATHER`], and an idle one not at all.
//!
//! Nothing is dropped: with [`LIMIT_BYTES`] pending, callers wait for the
//! thread. Dropping the [`LogGuard`] writes what is left; [`flush`] does so
//! without stopping, for a process about to exit.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather once the first arrives.
pub const GATHER: Duration = Duration::from_millis(10);
/// Pending bytes that wake the writer before [`GATHER`] is over.
pub const EARLY_BYTES: usize = 256 * 1024;
/// Pending bytes at which callers wait for the writer: the most a log
/// holds in memory.
pub const LIMIT_BYTES: usize = 8 * 1024 * 1024;
/// A batch buffer larger than this is not kept for the next batch.
const KEEP_BYTES: usize = 1024 * 1024;

/// The log writer of this process, for [`flush`].
static CURRENT: OnceLock<Arc<Shared>> = OnceLock::new();

struct Shared {
    /// Where lines go. Held while a batch is taken and written, so that
    /// batches leave in the order they were taken.
    out: Mutex<Box<dyn Write + Send>>,
    pending: Mutex<Pending>,
    /// The writer thread waits here for lines.
    lines: Condvar,
    /// Callers wait here for room, with [`LIMIT_BYTES`] pending.
    room: Condvar,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The writer thread waits for a first line (not gathering).
    writer_asleep: bool,
    /// Callers waiting for room.
    waiting: usize,
    closing: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while appending or writing leaves bytes, not broken state.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn append(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        while pending.lines.len() >= LIMIT_BYTES && !pending.closing {
            pending.waiting += 1;
            pending = self
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
            pending.waiting -= 1;
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        let wake = (before == 0 && pending.writer_asleep)
            || (before < EARLY_BYTES && pending.lines.len() >= EARLY_BYTES);
        drop(pending);
        if wake {
            self.lines.notify_one();
        }
    }

    /// Takes what is pending and writes it; returns whether the log is
    /// closing and nothing is left.
    fn write_batch(&self, batch: &mut Vec<u8>) -> bool {
        let mut out = lock(&self.out);
        let mut pending = lock(&self.pending);
        std::mem::swap(&mut pending.lines, batch);
        let done = pending.closing && batch.is_empty();
        let waiting = pending.waiting > 0;
        drop(pending);
        if waiting {
            self.room.notify_all();
        }
        if !batch.is_empty() {
            // A line that cannot be written (stderr closed) is dropped.
            let _ = out.write_all(batch);
            let _ = out.flush();
        }
        drop(out);
        batch.clear();
        if batch.capacity() > KEEP_BYTES {
            *batch = Vec::new();
        }
        done
    }

    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            let mut pending = lock(&self.pending);
            while pending.lines.is_empty() && !pending.closing {
                pending.writer_asleep = true;
                pending = self
                    .lines
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.writer_asleep = false;
            if !pending.closing && pending.lines.len() < EARLY_BYTES {
                pending = self
                    .lines
                    .wait_timeout(pending, GATHER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            drop(pending);
            if self.write_batch(&mut batch) {
                return;
            }
        }
    }
}

/// The `MakeWriter` of the log: each line is appended to the shared buffer.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes what is still pending and stops the writer thread when dropped.
#[must_use = "the log's last lines are written when the guard is dropped"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread of a log that goes to `out`. The first log of a
/// process is also the one [`flush`] writes out.
pub fn start(out: Box<dyn Write + Send>) -> std::io::Result<(LogWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        out: Mutex::new(out),
        pending: Mutex::new(Pending::default()),
        lines: Condvar::new(),
        room: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("chitty-log".into())
        .spawn({
            let shared = shared.clone();
            move || shared.run()
        })?;
    let _ = CURRENT.set(shared.clone());
    Ok((
        LogWriter {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// Writes every line logged so far, before a process exits without
/// dropping its [`LogGuard`].
pub fn flush() {
    if let Some(shared) = CURRENT.get() {
        shared.write_batch(&mut Vec::new());
    }
}

/// Whether a log was started in this process.
pub fn started() -> bool {
    CURRENT.get().is_some()
}

/// Appends a whole formatted line to the log [`start`] began first, as a
/// line logged through tracing is; false if no log was started.
pub fn append_line(line: &[u8]) -> bool {
    match CURRENT.get() {
        Some(shared) => {
            shared.append(line);
            true
        }
        None => false,
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closing = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line being written; tracing's formatter writes a whole line at once.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output the test can read while the log writes to it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(out: &Captured) -> String {
        String::from_utf8(lock(&out.0).clone()).unwrap()
    }

    #[test]
    fn lines_from_many_threads_are_all_written_whole_once_the_guard_is_dropped() {
        let out = Captured::default();
        let (writer, guard) = start(Box::new(out.clone())).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        // As tracing's formatter does: the whole line at once.
                        let line = format!("thread {t} line {i}\n");
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = text(&out);
        assert_eq!(text.lines().count(), 20_000);
        for t in 0..4 {
            let mine: Vec<_> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<_> = (0..5_000).map(|i| format!("thread {t} line {i}")).collect();
            assert!(
                mine == expected,
                "thread {t}'s lines are not all there in its order"
            );
        }
    }

    #[test]
    fn a_line_is_written_while_the_guard_is_still_held() {
        let out = Captured::default();
        let (writer, _guard) = start(Box::new(out.clone())).unwrap();
        writer.make_writer().write_all(b"hello\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while text(&out).is_empty() {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(text(&out), "hello\n");
    }

    #[test]
    fn callers_wait_rather_than_drop_when_the_output_is_stuck() {
        /// An output that blocks until let go.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>, Captured);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut open = lock(open);
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                self.1.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Captured::default();
        let (writer, guard) = start(Box::new(Stuck(gate.clone(), out.clone()))).unwrap();
        let line = vec![b'x'; 1023];
        let lines = 3 * LIMIT_BYTES / 1024;
        let producer = std::thread::spawn(move || {
            for _ in 0..lines {
                let mut w = writer.make_writer();
                w.write_all(&line).unwrap();
                w.write_all(b"\n").unwrap();
            }
        });
        // The producer cannot finish while the output is stuck: it waits once
        // the buffer holds the limit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&guard.shared.pending).waiting == 0 {
            assert!(Instant::now() < deadline, "the caller never waited");
            assert!(
                !producer.is_finished(),
                "all lines were taken with the output stuck"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(lock(&guard.shared.pending).lines.len() <= LIMIT_BYTES + 1024);
        *lock(&gate.0) = true;
        gate.1.notify_all();
        producer.join().unwrap();
        drop(guard);
        assert_eq!(text(&out).lines().count(), lines);
    }
}
