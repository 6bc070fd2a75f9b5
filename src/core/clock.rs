//! Lamport clocks.
//!
//! The rules, the same for nodes and participants:
//! * before a local event or sending a request: `time += 1` ([`LamportClock::tick`]);
//! * on receiving a request or an event stamped `t`: `time = max(time, t) + 1`
//!   ([`LamportClock::observe`]).
//!
//! The clock never wraps: at `u64::MAX` it stays there. Nodes refuse request
//! clocks far beyond their own and drop relayed events stamped absurdly late
//! (`core::validate`), so no honest cluster comes near it.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LamportClock {
    time: u64,
}

impl LamportClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current time, without advancing it.
    pub fn now(&self) -> u64 {
        self.time
    }

    /// Advances for a local event or an outgoing request; returns the new time.
    pub fn tick(&mut self) -> u64 {
        self.time = self.time.saturating_add(1);
        self.time
    }

    /// Applies the receive rule for a timestamp `remote`; returns the new time.
    pub fn observe(&mut self, remote: u64) -> u64 {
        self.time = self.time.max(remote).saturating_add(1);
        self.time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_and_observe_follow_the_rules() {
        let mut c = LamportClock::new();
        assert_eq!(c.tick(), 1);
        assert_eq!(
            c.observe(10),
            11,
            "a later remote time pulls the clock forward"
        );
        assert_eq!(
            c.observe(3),
            12,
            "an earlier remote time still advances by one"
        );
        assert_eq!(c.now(), 12);
    }

    #[test]
    fn the_clock_never_wraps() {
        let mut c = LamportClock::new();
        assert_eq!(c.observe(u64::MAX), u64::MAX);
        assert_eq!(c.tick(), u64::MAX, "stays at the top, not 0");
        assert_eq!(c.observe(3), u64::MAX);
        let mut c = LamportClock::new();
        assert_eq!(c.observe(u64::MAX - 1), u64::MAX);
    }
}
