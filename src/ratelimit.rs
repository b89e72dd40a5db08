//! Per-user message rate limiting: a token bucket in 8 bytes, a pure function of `now`.
//!
//! A shard keeps one bucket per user it serves (possibly a million), so the bucket is two
//! `u32`s and involves no floating point; the rate and burst, the same for every user, are a
//! [`RateLimit`] passed to each call:
//!
//! * **tokens** in fixed point, 1/1000 of a token per unit ("millitokens");
//! * **last refill** as milliseconds since the shard's [`Epoch`] (an `Instant` is 16 bytes
//!   on its own, so buckets store a `u32` offset and the shard converts its loop-turn `now`
//!   once with [`Epoch::millis`]);
//! * **rate** (tokens per second) and **burst** (bucket size, in tokens).
//!
//! The two units fit each other: `r` tokens per second is exactly `r` millitokens per
//! millisecond, so refilling is `elapsed_ms × rate` in integers, with no rounding drift however
//! often the bucket is consulted.
//!
//! # Limits
//!
//! * `burst` is capped at [`MAX_BURST`] (≈ 4.29 million tokens, so the bucket fits a `u32` of
//!   millitokens). `rate` is a plain `u32`.
//! * Millisecond offsets wrap every 2^32 ms (≈ 49.7 days). The elapsed time is the wrapping
//!   difference, which is exact for gaps below 49.7 days; a user silent for longer may find
//!   the refill computed from the gap modulo 49.7 days (it can only under-fill, never exceed
//!   the burst). Times must not go backwards: pass the shard's monotonic loop-turn `now`.

use std::time::Instant;

/// Largest burst, in tokens, that a bucket can hold (plus a fraction, within `u32::MAX`
/// millitokens).
pub const MAX_BURST: u32 = (u32::MAX - (MILLI - 1)) / MILLI;

/// Fixed-point units per token.
const MILLI: u32 = 1_000;

/// The reference instant of one shard's millisecond clock (one per shard, made at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(Instant);

/// Milliseconds since an [`Epoch`], wrapping every ≈ 49.7 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u32);

impl Epoch {
    /// An epoch starting at `start` (usually the shard's start-up time).
    pub fn new(start: Instant) -> Self {
        Epoch(start)
    }

    /// `now` as milliseconds since the epoch, modulo 2^32 (instants before the epoch are 0).
    pub fn millis(&self, now: Instant) -> Millis {
        let ms = now.saturating_duration_since(self.0).as_millis();
        // Keep the low 32 bits on purpose: buckets compare offsets with wrapping arithmetic.
        Millis((ms & u128::from(u32::MAX)) as u32)
    }
}

/// The rate and burst of the buckets: up to `burst` messages at once, `rate_per_s` per
/// second sustained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    rate_per_s: u32,
    burst: u32,
}

impl RateLimit {
    /// `burst` above [`MAX_BURST`] is lowered to it; a `burst` of 0 refuses everything and a
    /// `rate_per_s` of 0 never refills (the validated config excludes both).
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        RateLimit {
            rate_per_s,
            burst: burst.min(MAX_BURST),
        }
    }

    /// A full bucket.
    pub fn full(&self, now: Millis) -> TokenBucket {
        TokenBucket {
            millitokens: self.burst * MILLI,
            last_ms: now.0,
        }
    }
}

/// One user's bucket, used with the shard's [`RateLimit`] (always the same one: a bucket
/// does not remember its limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Available tokens × 1000, below `(burst + 1) × 1000`.
    millitokens: u32,
    /// When `millitokens` was last brought up to date.
    last_ms: u32,
}

impl TokenBucket {
    /// Takes one token if available. `false` means the message is over the limit (answer
    /// 429; the caller counts refusals to decide on a 1008 close).
    pub fn try_take(&mut self, limit: &RateLimit, now: Millis) -> bool {
        self.refill(limit, now);
        if self.millitokens >= MILLI {
            self.millitokens -= MILLI;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at `now` (for tests and diagnostics).
    pub fn available(&self, limit: &RateLimit, now: Millis) -> u32 {
        let mut copy = *self;
        copy.refill(limit, now);
        copy.millitokens / MILLI
    }

    fn refill(&mut self, limit: &RateLimit, now: Millis) {
        let elapsed_ms = now.0.wrapping_sub(self.last_ms);
        self.last_ms = now.0;
        // The cap keeps a fraction of a token above `burst`: clipping at exactly `burst` would
        // drop the part of a token that accrued between two consultations of a full bucket
        // (a bucket with burst 1 and rate 3/s would grant 29 tokens in 10 s instead of 30).
        // Whole tokens available never exceed `burst`.
        let cap = u64::from(limit.burst) * u64::from(MILLI) + u64::from(MILLI - 1);
        let added = u64::from(elapsed_ms) * u64::from(limit.rate_per_s);
        let filled = (u64::from(self.millitokens) + added).min(cap);
        // `filled <= cap <= u32::MAX` because `burst <= MAX_BURST`.
        self.millitokens = u32::try_from(filled).unwrap_or(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn eight_bytes() {
        assert_eq!(std::mem::size_of::<TokenBucket>(), 8);
    }

    #[test]
    fn burst_then_refused() {
        let limit = RateLimit::new(100, 200);
        let mut b = limit.full(Millis(0));
        for _ in 0..200 {
            assert!(b.try_take(&limit, Millis(0)));
        }
        assert!(!b.try_take(&limit, Millis(0)));
        assert_eq!(b.available(&limit, Millis(0)), 0);
    }

    #[test]
    fn refills_at_rate_without_drift() {
        let limit = RateLimit::new(100, 200);
        let mut b = limit.full(Millis(0));
        while b.try_take(&limit, Millis(0)) {}
        // 100/s = one token per 10 ms; consulting every millisecond must not lose fractions.
        let mut taken = 0;
        for ms in 1..=10_000u32 {
            if b.try_take(&limit, Millis(ms)) {
                taken += 1;
            }
        }
        assert_eq!(taken, 1_000);
        // Odd rate: 3/s over 10 s polled every ms is exactly 30.
        let limit = RateLimit::new(3, 1);
        let mut b = limit.full(Millis(0));
        assert!(b.try_take(&limit, Millis(0)));
        let taken = (1..=10_000u32)
            .filter(|&ms| b.try_take(&limit, Millis(ms)))
            .count();
        assert_eq!(taken, 30);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let limit = RateLimit::new(1_000, 5);
        let mut b = limit.full(Millis(0));
        while b.try_take(&limit, Millis(0)) {}
        assert_eq!(b.available(&limit, Millis(3_600_000)), 5);
        assert_eq!(b.available(&limit, Millis(u32::MAX)), 5);
        for _ in 0..5 {
            assert!(b.try_take(&limit, Millis(3_600_000)));
        }
        assert!(!b.try_take(&limit, Millis(3_600_000)));
    }

    #[test]
    fn extreme_parameters_do_not_overflow() {
        let limit = RateLimit::new(u32::MAX, u32::MAX);
        let mut b = limit.full(Millis(0));
        assert_eq!(b.available(&limit, Millis(0)), MAX_BURST);
        assert!(b.try_take(&limit, Millis(u32::MAX)));
        let zero_burst_limit = RateLimit::new(100, 0);
        let mut zero_burst = zero_burst_limit.full(Millis(0));
        assert!(!zero_burst.try_take(&zero_burst_limit, Millis(1_000)));
        let zero_rate_limit = RateLimit::new(0, 1);
        let mut zero_rate = zero_rate_limit.full(Millis(0));
        assert!(zero_rate.try_take(&zero_rate_limit, Millis(0)));
        assert!(!zero_rate.try_take(&zero_rate_limit, Millis(1_000_000)));
    }

    #[test]
    fn offsets_wrap_around_the_epoch_clock() {
        let near_wrap = u32::MAX - 5;
        let limit = RateLimit::new(1_000, 1);
        let mut b = limit.full(Millis(near_wrap));
        assert!(b.try_take(&limit, Millis(near_wrap)));
        assert!(!b.try_take(&limit, Millis(near_wrap)));
        // 10 ms later the clock has wrapped; one token per ms has refilled the bucket.
        assert!(b.try_take(&limit, Millis(near_wrap.wrapping_add(10))));
    }

    #[test]
    fn epoch_converts_instants() {
        let t0 = Instant::now();
        let e = Epoch::new(t0);
        assert_eq!(e.millis(t0), Millis(0));
        assert_eq!(e.millis(t0 + Duration::from_millis(1_234)), Millis(1_234));
        assert_eq!(e.millis(t0 + Duration::from_millis(1 << 32)), Millis(0));
        let before = t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0);
        assert_eq!(e.millis(before), Millis(0));
    }
}
