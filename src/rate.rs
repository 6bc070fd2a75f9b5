//! The publish rate limit: a token bucket per session, so that one
//! participant cannot drown the room. The node checks it before its core
//! sees the publish, under the lock it takes anyway, for sessions of its own
//! only (an unknown token is the core's to refuse, and gets no bucket).

use tokio::time::Instant;

use crate::core::FastMap;

/// Default of `--publish-rate`: messages per second per participant.
pub const DEFAULT_PUBLISH_RATE: f64 = 50.0;
/// Default of `--publish-burst`: messages a participant may send at once
/// after a quiet moment.
pub const DEFAULT_PUBLISH_BURST: u32 = 200;
/// Buckets kept before the full ones (the same as none) are dropped.
const PRUNE_AT: usize = 1024;

/// A sustained rate with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Messages per second, sustained.
    pub per_second: f64,
    /// Messages at once, at most.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_PUBLISH_RATE,
            burst: DEFAULT_PUBLISH_BURST,
        }
    }
}

impl RateLimit {
    /// What a participant is told when it goes over.
    pub fn refusal(&self) -> String {
        format!(
            "publish rate limit: at most {} messages per second per participant \
             (bursts of {}); slow down and send again",
            self.per_second, self.burst
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of the sessions that published lately, by session token.
#[derive(Debug)]
pub struct PublishRate {
    limit: RateLimit,
    buckets: FastMap<String, Bucket>,
    /// Buckets kept after the last prune.
    kept: usize,
}

impl PublishRate {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: FastMap::default(),
            kept: 0,
        }
    }

    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes one message from `token`'s bucket at `now`; `false` if it is
    /// empty (the message is over the limit).
    pub fn take(&mut self, token: &str, now: Instant) -> bool {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second;
        let allowed = match self.buckets.get_mut(token) {
            Some(bucket) => {
                let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
                bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
                bucket.at = now;
                if bucket.tokens >= 1.0 {
                    bucket.tokens -= 1.0;
                    true
                } else {
                    false
                }
            }
            None => {
                self.buckets.insert(
                    token.to_string(),
                    Bucket {
                        tokens: burst - 1.0,
                        at: now,
                    },
                );
                true
            }
        };
        if self.buckets.len() > PRUNE_AT.max(2 * self.kept) {
            self.prune(now);
        }
        allowed
    }

    /// Drops the buckets that have refilled: a full bucket is the same as
    /// none, so memory follows the sessions publishing now.
    fn prune(&mut self, now: Instant) {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second;
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        self.kept = self.buckets.len();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_let_through_then_the_sustained_rate() {
        let start = Instant::now();
        let mut rate = PublishRate::new(RateLimit {
            per_second: 10.0,
            burst: 5,
        });
        let allowed = (0..8).filter(|_| rate.take("a", start)).count();
        assert_eq!(allowed, 5, "the burst");
        assert!(rate.take("b", start), "another session has its own bucket");
        // 10 per second: one more every 100 ms.
        assert!(!rate.take("a", start + Duration::from_millis(50)));
        assert!(rate.take("a", start + Duration::from_millis(150)));
        assert!(!rate.take("a", start + Duration::from_millis(160)));
        // A quiet second refills the burst, and no more.
        let later = start + Duration::from_secs(10);
        let allowed = (0..8).filter(|_| rate.take("a", later)).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn buckets_of_sessions_gone_quiet_are_dropped() {
        let start = Instant::now();
        let mut rate = PublishRate::new(RateLimit {
            per_second: 100.0,
            burst: 10,
        });
        for i in 0..PRUNE_AT {
            assert!(rate.take(&format!("s{i}"), start));
        }
        assert_eq!(rate.len(), PRUNE_AT);
        // A second later every bucket has refilled: the next one prunes.
        assert!(rate.take("new", start + Duration::from_secs(1)));
        assert!(rate.take("new2", start + Duration::from_secs(1)));
        assert!(rate.len() <= 2, "{} buckets kept", rate.len());
    }
}
