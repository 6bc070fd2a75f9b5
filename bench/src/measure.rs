//! The measured window, the same for both systems: the publishers send
//! their messages, the readers receive them, and the window ends with the
//! last delivery (or when waiting for the rest runs out).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::load::{Flow, Load, MessageSink, Pacing, Published, Schedule, publish, total};
use crate::procfs::{CpuSnapshot, CpuUsed};
use crate::receive::{Readers, Tracker};

/// Interval of the progress line on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the window gathered.
#[derive(Debug)]
pub struct Window {
    /// What each reader saw.
    pub trackers: Vec<Tracker>,
    /// How each publisher's run went.
    pub published: Vec<Published>,
    /// Messages each publisher sent (or tried to).
    pub sent_per_publisher: Vec<u64>,
    /// Micros since the plan's base when publishing started, and when the
    /// bench stopped waiting for deliveries.
    pub start_us: u64,
    pub end_us: u64,
    /// CPU used during the window.
    pub cpu: CpuUsed,
}

/// Has one publisher task per sink send its messages while `readers`
/// read, waits for every delivery (bounded by the load's timeout and
/// drain), then stops the readers and collects what they saw. `pids` are
/// the server processes whose CPU is counted.
pub async fn run_window<S: MessageSink>(
    load: &Load,
    sinks: Vec<S>,
    readers: &mut Readers,
    pids: &[u32],
) -> Result<Window, String> {
    let plan = readers.plan.clone();
    let expected_deliveries = load.total_messages() * readers.list.len() as u64;
    let attempted: Vec<Arc<AtomicU64>> = (0..sinks.len())
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let schedule = load.rate.map(|rate| Schedule {
        start: tokio::time::Instant::now() + Duration::from_millis(1),
        rate,
    });
    let flow = (load.rate.is_none() && load.window > 0).then(|| {
        Arc::new(Flow {
            window: load.window,
            sent: attempted.clone(),
            readers: readers.counters(),
        })
    });
    let cpu_before = CpuSnapshot::take(pids);
    let start_us = plan.now_us();
    let mut publishers = JoinSet::new();
    for (i, sink) in sinks.into_iter().enumerate() {
        let pacing = Pacing {
            schedule,
            flow: flow.clone(),
        };
        publishers.spawn(publish(
            sink,
            i,
            plan.clone(),
            load.size,
            pacing,
            attempted[i].clone(),
        ));
    }

    // Wait for the publishers, then (bounded) for the last deliveries.
    let mut published: Vec<Published> = Vec::new();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let send_deadline = tokio::time::Instant::now() + load.timeout;
    let mut drain_deadline = None;
    let mut last_delivered = 0;
    let completion = readers.completion.clone();
    let all_done = completion.all_done.notified();
    tokio::pin!(all_done);
    loop {
        let wait_drain = async {
            match drain_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut all_done => break,
            joined = publishers.join_next(), if !publishers.is_empty() => {
                match joined {
                    Some(Ok(p)) => published.push(p),
                    Some(Err(e)) => return Err(format!("publisher task failed: {e}")),
                    None => {}
                }
                if publishers.is_empty() {
                    drain_deadline = Some(tokio::time::Instant::now() + load.drain);
                }
            }
            _ = tokio::time::sleep_until(send_deadline), if !publishers.is_empty() => {
                eprintln!("bench: warning: publishing did not finish within {:?}; stopping it", load.timeout);
                publishers.abort_all();
                while let Some(joined) = publishers.join_next().await {
                    if let Ok(p) = joined {
                        published.push(p);
                    }
                }
                drain_deadline = Some(tokio::time::Instant::now() + load.drain);
            }
            _ = wait_drain => {
                eprintln!("bench: warning: not every delivery arrived within {:?} of the last publish", load.drain);
                break;
            }
            _ = tick.tick() => {
                let delivered = readers.delivered();
                if load.progress {
                    let elapsed = plan.now_us().saturating_sub(start_us) as f64 / 1e6;
                    eprintln!(
                        "bench: {elapsed:5.1} s  sent {}/{}  delivered {delivered}/{expected_deliveries}  {:.0}/s now",
                        total(&attempted),
                        load.total_messages(),
                        (delivered - last_delivered) as f64 / PROGRESS_EVERY.as_secs_f64(),
                    );
                }
                last_delivered = delivered;
            }
        }
    }
    let cpu = CpuUsed::between(&cpu_before, &CpuSnapshot::take(pids));
    let end_us = plan.now_us();
    // Publishers normally finished before the last delivery; if every
    // delivery arrived first, wait for their last acknowledgements.
    while let Some(joined) = publishers.join_next().await {
        if let Ok(p) = joined {
            published.push(p);
        }
    }
    let trackers = readers.stop().await?;
    Ok(Window {
        trackers,
        published,
        sent_per_publisher: attempted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
        start_us,
        end_us,
        cpu,
    })
}
