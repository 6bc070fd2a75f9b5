//! Random schedules: a seed picks the cluster, the participants, what they
//! do and which faults strike when; [`run`] plays it, lets the cluster
//! settle, and checks the invariants.
//!
//! Node faults come one at a time: a crash, a graceful stop, a pause
//! shorter or longer than the failure timeout, a restart, each followed by
//! a quiet time in which the survivors detect, reconcile and settle. Link
//! faults: a short cut (one way or both) and a reset that loses what was in
//! flight. Participants lose their connection (and resume elsewhere), leave
//! or vanish at any time.
//!
//! Schedules also get network partitions of 3 to 20 seconds, well past the
//! failure timeout, that overlap whatever else happens: one node cut off
//! from all others (both ways, or only its outgoing packets), one link cut
//! (both ways or one), or a link flapping (cut 1 s in every 3);
//! participants may then resume on the other side of a split.
//! `CHITTY_SIM_PARTITIONS=0` leaves them out (the schedules of crashes,
//! pauses and short cuts alone).

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
    let mut split: Option<Split> = None;
    let partitions = std::env::var("CHITTY_SIM_PARTITIONS").as_deref() != Ok("0");
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
        if let Some(s) = split.as_mut()
            && s.advance(&mut sim)
        {
            split = None;
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
                let i = crashed[pick.below(crashed.len())];
                if sim.boot_for(i).is_none() {
                    // No member it can join through (a split): later.
                    continue;
                }
                crashed.retain(|&c| c != i);
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
            77..=79 if partitions && split.is_none() && cut.is_none() => {
                split = Some(Split::start(&mut sim, &mut pick, nodes));
            }
            _ => {}
        }
    }
    settle(&mut sim);
    let violation = sim.check().err();
    Outcome { sim, violation }
}

/// A network partition under way.
struct Split {
    /// The directions cut, (from, to).
    cuts: Vec<(usize, usize)>,
    /// When it heals for good.
    until: Duration,
    /// For a flapping link: when it next toggles, and whether it is cut now.
    flap: Option<(Duration, bool)>,
}

impl Split {
    fn start(sim: &mut Sim, pick: &mut crate::core::rng::Rng, nodes: usize) -> Self {
        let a = pick.below(nodes);
        let b = (a + 1 + pick.below(nodes - 1)) % nodes;
        let length = Duration::from_millis(3000 + pick.below(17_000) as u64);
        let others = (0..nodes).filter(|&j| j != a);
        let (cuts, flap): (Vec<(usize, usize)>, _) = match pick.below(5) {
            0 => (others.flat_map(|j| [(a, j), (j, a)]).collect(), None),
            1 => (others.map(|j| (a, j)).collect(), None),
            2 => (vec![(a, b), (b, a)], None),
            3 => (vec![(a, b)], None),
            _ => (
                vec![(a, b), (b, a)],
                Some((sim.now() + Duration::from_secs(1), true)),
            ),
        };
        for &(from, to) in &cuts {
            sim.cut(from, to);
        }
        Self {
            cuts,
            until: sim.now() + length,
            flap,
        }
    }

    /// Heals or toggles when due; true once healed for good.
    fn advance(&mut self, sim: &mut Sim) -> bool {
        if sim.now() >= self.until {
            for &(from, to) in &self.cuts {
                sim.heal(from, to);
            }
            return true;
        }
        if let Some((next, down)) = self.flap.as_mut()
            && sim.now() >= *next
        {
            for &(from, to) in &self.cuts {
                if *down {
                    sim.heal(from, to);
                } else {
                    sim.cut(from, to);
                }
            }
            *down = !*down;
            *next = sim.now() + Duration::from_secs(if *down { 1 } else { 2 });
        }
        false
    }
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
