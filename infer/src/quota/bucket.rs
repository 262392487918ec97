//! A token bucket driven by event time, in exact integer arithmetic: a replay of the same
//! events makes the same decisions, whatever the wall clock says.

/// Micro-tokens per token.
const SCALE: i128 = 1_000_000;

/// The decision for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketDecision {
    Admit,
    /// Admitted against future tokens: process after this many microseconds.
    Delay {
        wait_us: i64,
    },
    /// Not admitted; a token is available again after this many milliseconds.
    Reject {
        retry_after_ms: i64,
    },
}

/// `rate` tokens per second up to `burst`, refilled by event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Micro-tokens; negative while requests are delayed against future tokens.
    tokens: i128,
    /// Event time of the last refill, µs.
    last_us: i64,
    rate: u32,
    burst: u32,
}

impl Bucket {
    /// A full bucket at event time `at_us`.
    pub fn full(rate: u32, burst: u32, at_us: i64) -> Self {
        Self { tokens: i128::from(burst) * SCALE, last_us: at_us, rate, burst }
    }

    /// Restores a bucket from a checkpoint.
    /// Tokens are clamped: at most the burst, and no more debt than an hour of refill (a
    /// checkpoint cannot hold a bucket shut for longer).
    pub fn restore(rate: u32, burst: u32, tokens_micro: i128, last_us: i64) -> Self {
        let mut bucket = Self { tokens: tokens_micro, last_us, rate, burst };
        let most_debt = -(i128::from(rate.max(1)) * SCALE * 3600);
        bucket.tokens = bucket.tokens.clamp(most_debt, bucket.capacity());
        bucket
    }

    fn capacity(&self) -> i128 {
        i128::from(self.burst) * SCALE
    }

    /// Micro-tokens now (for checkpoints and the gauge).
    pub fn tokens_micro(&self) -> i128 {
        self.tokens
    }

    pub fn last_us(&self) -> i64 {
        self.last_us
    }

    /// Changes rate and burst (a policy reload); tokens above the new burst are dropped.
    pub fn reconfigure(&mut self, rate: u32, burst: u32) {
        self.rate = rate;
        self.burst = burst;
        self.tokens = self.tokens.min(self.capacity());
    }

    fn refill(&mut self, at_us: i64) {
        // Event time may step back (out-of-order clients): no refill then, never negative.
        if at_us > self.last_us {
            // i128 throughout: any two i64 event times, any rate, cannot overflow.
            let earned = (i128::from(at_us) - i128::from(self.last_us)) * i128::from(self.rate);
            self.tokens = self.tokens.saturating_add(earned).min(self.capacity());
            self.last_us = at_us;
        }
    }

    /// Decides one event at `at_us`. With `max_delay_us > 0` an event that would wait no longer
    /// than that is admitted against future tokens instead of rejected.
    pub fn decide(&mut self, at_us: i64, max_delay_us: i64) -> BucketDecision {
        self.decide_cost(at_us, max_delay_us, 1)
    }

    /// Decides one event that costs `cost` tokens (an explained request), as [`Bucket::decide`].
    pub fn decide_cost(&mut self, at_us: i64, max_delay_us: i64, cost: u32) -> BucketDecision {
        self.refill(at_us);
        let cost = i128::from(cost.max(1)) * SCALE;
        if self.tokens >= cost {
            self.tokens -= cost;
            return BucketDecision::Admit;
        }
        let deficit = cost.saturating_sub(self.tokens);
        let rate = i128::from(self.rate.max(1));
        let wait_us = i64::try_from(deficit.saturating_add(rate - 1) / rate).unwrap_or(i64::MAX);
        if max_delay_us > 0 && wait_us <= max_delay_us {
            self.tokens -= cost;
            return BucketDecision::Delay { wait_us };
        }
        BucketDecision::Reject { retry_after_ms: wait_us.saturating_add(999) / 1000 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = Bucket::full(10, 3, 0);
        assert_eq!(b.decide(0, 0), BucketDecision::Admit);
        assert_eq!(b.decide(0, 0), BucketDecision::Admit);
        assert_eq!(b.decide(0, 0), BucketDecision::Admit);
        assert_eq!(b.decide(0, 0), BucketDecision::Reject { retry_after_ms: 100 });
        assert_eq!(b.decide(50_000, 0), BucketDecision::Reject { retry_after_ms: 50 });
        assert_eq!(b.decide(100_000, 0), BucketDecision::Admit);
        // Delay: admitted against the next token, 100 ms later.
        assert_eq!(b.decide(100_000, 150_000), BucketDecision::Delay { wait_us: 100_000 });
        assert_eq!(b.decide(100_000, 150_000), BucketDecision::Reject { retry_after_ms: 200 }, "debt is bounded");
    }

    #[test]
    fn an_explained_request_takes_its_cost_in_tokens() {
        let mut b = Bucket::full(10, 8, 0);
        assert_eq!(b.decide_cost(0, 0, 5), BucketDecision::Admit);
        assert_eq!(b.tokens_micro(), 3 * SCALE);
        // 3 tokens left: 5 more need 2 tokens of refill, 200 ms at 10/s.
        assert_eq!(b.decide_cost(0, 0, 5), BucketDecision::Reject { retry_after_ms: 200 });
        assert_eq!(b.decide(0, 0), BucketDecision::Admit, "a plain request still fits");
        assert_eq!(b.decide_cost(200_000, 0, 5), BucketDecision::Reject { retry_after_ms: 100 });
        assert_eq!(b.decide_cost(300_000, 0, 5), BucketDecision::Admit);
    }
}
