//! The node protocol under the deterministic cluster simulator
//! ([`chitty::sim`]): thousands of random schedules of crashes, pauses,
//! restarts, link cuts and participants coming and going, each checked
//! against every invariant, in virtual time.
//!
//! A failing seed prints itself with the end of its trace; replay it with
//! `CHITTY_SIM_SEED=N cargo test --test simulator -- --nocapture`.
//! `CHITTY_SIM_SCHEDULES=100000` raises the count for a soak.

use chitty::sim::schedule;

/// Schedules run by default: enough to hit rare interleavings, within a
/// minute on two cores.
const DEFAULT_SCHEDULES: u64 = 2000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `seed` again with its trace and describes the failure.
fn report(seed: u64, violation: &str) -> String {
    let outcome = schedule::run(seed, true);
    let trace = outcome.sim.trace();
    let tail = &trace[trace.len().saturating_sub(150)..];
    format!(
        "seed {seed}: {violation}\n  {}\n  last steps:\n{}\n  replay: CHITTY_SIM_SEED={seed} cargo test --test simulator -- --nocapture",
        outcome.sim.summary(),
        tail.join("\n")
    )
}

#[test]
fn random_schedules_keep_every_invariant() {
    if let Some(seed) = env_u64("CHITTY_SIM_SEED") {
        if std::env::var("CHITTY_SIM_LOG").is_ok() {
            // The nodes' own log lines, interleaved with the trace.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("chitty=debug"))
                .without_time()
                .try_init();
        }
        let outcome = schedule::run(seed, true);
        if std::env::var("CHITTY_SIM_TRACE").is_ok() {
            for line in outcome.sim.trace() {
                println!("{line}");
            }
        }
        if let Some(violation) = outcome.violation {
            panic!("{}", report(seed, &violation));
        }
        println!("{}", outcome.sim.summary());
        return;
    }
    let count = env_u64("CHITTY_SIM_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    let first = env_u64("CHITTY_SIM_FIRST_SEED").unwrap_or(1);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let started = std::time::Instant::now();
    let failures: Vec<(u64, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    let mut steps = 0;
                    for seed in (first + t..first + count).step_by(threads as usize) {
                        let outcome = schedule::run(seed, false);
                        steps += outcome.sim.steps();
                        if let Some(violation) = outcome.violation {
                            failed.push((seed, violation));
                        }
                    }
                    (failed, steps)
                })
            })
            .collect();
        let mut failed = Vec::new();
        let mut steps = 0;
        for worker in workers {
            let (f, s) = worker.join().expect("a schedule panicked");
            failed.extend(f);
            steps += s;
        }
        println!(
            "{count} schedules from seed {first}: {} failed, {steps} steps, {:.1}s",
            failed.len(),
            started.elapsed().as_secs_f64()
        );
        failed
    });
    if let Some((seed, violation)) = failures.first() {
        let list: Vec<String> = failures
            .iter()
            .map(|(seed, violation)| format!("  seed {seed}: {violation}"))
            .collect();
        panic!(
            "{} of {count} schedules broke an invariant:\n{}\n{}",
            failures.len(),
            list.join("\n"),
            report(*seed, violation)
        );
    }
}

#[test]
fn a_seed_replays_bit_for_bit() {
    let first = schedule::run(7, true);
    let second = schedule::run(7, true);
    assert!(first.sim.steps() > 300, "{}", first.sim.summary());
    assert_eq!(first.sim.trace(), second.sim.trace());
    assert_eq!(first.sim.digest(), second.sim.digest());
    let other = schedule::run(8, true);
    assert_ne!(
        first.sim.digest(),
        other.sim.digest(),
        "another seed, another schedule"
    );
}
