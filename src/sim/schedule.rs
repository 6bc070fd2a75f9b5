//! Random schedules: a seed picks the cluster, the participants, what they
//! do and which faults strike when; [`run`] plays it, lets the cluster
//! settle, and checks the invariants.
//!
//! The faults stay within what the cluster promises to survive: one fault at
//! a time, a node's (a crash, a graceful stop, a pause shorter or longer
//! than the failure timeout, a restart) or a link's (a cut shorter than the failure timeout,
//! one way or both; a reset that loses what was in flight), each followed
//! by a quiet time in which the survivors detect, reconcile and settle;
//! participants that lose their connection, leave or vanish at any time.
//! Faults that overlap until a link is down for longer than the failure
//! timeout are partitions, which these schedules leave out: what the
//! cluster does then is stated in the README's known limits.

use std::time::Duration;

use super::{Sim, SimConfig};

/// How long participants act and faults strike, before the settling.
pub const ACTIVE: Duration = Duration::from_secs(15);

/// A run's result: the simulator (to inspect or trace) and the first
/// violated invariant, if any.
pub struct Outcome {
    pub sim: Sim,
    pub violation: Option<String>,
}

/// Plays the schedule of `seed`.
pub fn run(seed: u64, trace: bool) -> Outcome {
    let mut pick = crate::core::rng::Rng::new(seed ^ 0x5eed);
    let nodes = if pick.chance(25) { 4 } else { 3 };
    let config = SimConfig {
        nodes,
        trace,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(config, seed);
    let participants = 3 + pick.below(4);
    for k in 0..participants {
        let p = sim.add_participant(&format!("P{k}"));
        let node = pick.below(nodes);
        sim.join(p, node);
    }
    let timeout = sim.config.timing.failure_timeout;
    // After a node fault, the survivors detect it, reconcile and settle
    // before the next; after a link fault, the link is back to normal for
    // a failure timeout before the next.
    let spacing = timeout * 2 + Duration::from_secs(2);
    let mut quiet_from = Duration::ZERO;
    let mut crashed: Vec<usize> = Vec::new();
    let mut cut: Option<(usize, usize, Duration)> = None;
    while sim.now() < ACTIVE {
        let step = Duration::from_millis(20 + pick.below(200) as u64);
        sim.run_for(step);
        if let Some((a, b, until)) = cut
            && sim.now() >= until
        {
            sim.heal(a, b);
            sim.heal(b, a);
            cut = None;
        }
        // A paused node that the cluster removed exits when it runs again.
        for i in 0..nodes {
            if !sim.is_running(i) && !crashed.contains(&i) {
                crashed.push(i);
            }
        }
        let roll = pick.below(100);
        let active: Vec<usize> = (0..sim.participants().len())
            .filter(|&p| sim.participants()[p].is_active())
            .collect();
        let healthy: Vec<usize> = (0..nodes)
            .filter(|&i| sim.is_running(i) && !sim.is_paused(i))
            .collect();
        let quiet = sim.now() >= quiet_from && cut.is_none();
        let may_fault = quiet && healthy.len() >= 3;
        let pair = |pick: &mut crate::core::rng::Rng| {
            let a = pick.below(healthy.len());
            let b = (a + 1 + pick.below(healthy.len() - 1)) % healthy.len();
            (healthy[a], healthy[b])
        };
        match roll {
            0..=54 if !active.is_empty() => {
                let p = active[pick.below(active.len())];
                sim.publish(p);
            }
            55..=58 if !active.is_empty() => {
                let p = active[pick.below(active.len())];
                sim.drop_connection(p);
            }
            59 if active.len() > 2 => {
                let p = active[pick.below(active.len())];
                sim.leave(p);
            }
            60 if active.len() > 2 => {
                let p = active[pick.below(active.len())];
                sim.vanish(p);
            }
            61..=62 => {
                let k = sim.participants().len();
                let p = sim.add_participant(&format!("P{k}"));
                let node = healthy[pick.below(healthy.len())];
                sim.join(p, node);
            }
            63..=66 if may_fault => {
                let i = healthy[pick.below(healthy.len())];
                if pick.chance(25) {
                    sim.stop_gracefully(i);
                } else {
                    sim.crash(i);
                }
                crashed.push(i);
                quiet_from = sim.now() + spacing;
            }
            67..=69 if may_fault => {
                let i = healthy[pick.below(healthy.len())];
                // Under the failure timeout (not noticed), or well past it
                // (removed; the node learns so when it runs again).
                let pause = if pick.chance(50) {
                    Duration::from_millis(100 + pick.below(timeout.as_millis() as usize / 2) as u64)
                } else {
                    timeout * 2 + Duration::from_millis(pick.below(2000) as u64)
                };
                sim.pause(i, pause);
                quiet_from = sim.now() + pause + spacing;
            }
            70..=72 if quiet && !crashed.is_empty() => {
                let i = crashed.remove(pick.below(crashed.len()));
                sim.start_node(i);
                quiet_from = sim.now() + spacing;
            }
            73..=75 if quiet && healthy.len() >= 2 => {
                let (a, b) = pair(&mut pick);
                let length = Duration::from_millis(50 + pick.below(700) as u64);
                if pick.chance(50) {
                    sim.cut(a, b);
                } else {
                    sim.cut_both(a, b);
                }
                cut = Some((a, b, sim.now() + length));
                quiet_from = sim.now() + length + timeout;
            }
            76 if quiet && healthy.len() >= 2 => {
                let (a, b) = pair(&mut pick);
                sim.reset(a, b);
                quiet_from = sim.now() + timeout;
            }
            _ => {}
        }
    }
    settle(&mut sim);
    let violation = sim.check().err();
    Outcome { sim, violation }
}

/// Ends every fault and lets the cluster go quiet: long enough for failure
/// detection, reconciliation, grace periods and announcements, and until
/// every participant's messages are answered (bounded).
pub fn settle(sim: &mut Sim) {
    sim.heal_all();
    for i in 0..sim.node_count() {
        if sim.is_paused(i) {
            sim.unpause(i);
        }
    }
    let timing = sim.config.timing.clone();
    let quiet = sim.config.limits.grace + timing.failure_timeout * 3 + Duration::from_secs(2);
    sim.run_for(quiet);
    for _ in 0..20 {
        let busy = sim
            .participants()
            .iter()
            .any(|p| p.is_active() && (p.unanswered() > 0 || !p.is_connected()));
        if !busy {
            break;
        }
        sim.run_for(Duration::from_secs(1));
    }
    // Announcements of what settled last.
    sim.run_for(timing.failure_timeout + timing.heartbeat * 2);
}
