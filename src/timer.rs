//! A hierarchical timer wheel: O(1) insert, O(expired) advance, a pure function of `now`.
//!
//! Each shard keeps one wheel for every deadline it owns (handshake timeouts, keepalive sweep,
//! token expiry, presence coalescing, ack timeouts). At a million connections a scan per tick
//! is out of the question, so time is cut into ticks (e.g. 10 ms) and entries are hashed into
//! slots by their deadline tick:
//!
//! ```text
//!  level 5  64 slots × 64^5 ticks   (≈ 20 years at 10 ms: the whole horizon)
//!  level 4  64 slots × 64^4 ticks   (≈ 124 days)
//!  level 3  64 slots × 64^3 ticks   (≈ 2 days)
//!  level 2  64 slots × 64^2 ticks   (≈ 45 min)
//!  level 1  64 slots × 64   ticks   (≈ 41 s)
//!  level 0  64 slots × 1    tick    (≈ 640 ms)
//!  far      one list for deadlines past the current level-5 window
//! ```
//!
//! An entry lives on the level of the highest 6-bit digit in which its deadline tick differs
//! from the wheel's current tick (`elapsed`), in the slot named by that digit. So on every
//! level, occupied slots lie strictly *after* the current position, and the first occupied slot
//! on the lowest non-empty level is the next thing to happen. When `elapsed` reaches a slot,
//! the slot is emptied: entries due by the target time are expired directly, the others
//! cascade to a lower level. Each entry therefore moves at most six times in its life.
//!
//! A 64-bit occupancy bitmap per level finds the next occupied slot with one
//! `trailing_zeros`, so `advance` over a gap (the process was stopped for an hour) costs
//! one step per *occupied* slot, never one per tick, and `next_expiration` is a handful of
//! bit operations.
//!
//! # Cancellation
//!
//! There is none, on purpose: removing an entry would need a handle into a slot `Vec` (and
//! moving handles when entries cascade). Callers cancel lazily instead: the value carries a
//! generation-tagged key (a `ConnKey` plus, where needed, a per-purpose sequence number), and
//! when it expires the shard compares it with the connection's current state and ignores it
//! if stale. An owner that re-arms a deadline every 25 s therefore leaves at most
//! one stale entry behind per re-arm; they cost 24 bytes each until their old deadline.
//!
//! # Precision
//!
//! A deadline is rounded *up* to a tick, and a tick fires once `now` has reached it, so an
//! entry never expires early and, if the caller calls [`TimerWheel::advance`] at the instant
//! returned by [`TimerWheel::next_expiration`], at most one tick late.

use std::time::{Duration, Instant};

/// Bits of the tick number consumed by one level.
const LEVEL_BITS: u32 = 6;
/// Slots per level; one bit each in a `u64` occupancy bitmap.
const SLOTS: usize = 1 << LEVEL_BITS;
/// Number of levels; the wheel covers `64^LEVELS = 2^36` ticks before entries go to `far`.
const LEVELS: usize = 6;
/// Tick numbers are clamped here so that adding a window or a tick never overflows.
const MAX_TICK: u64 = u64::MAX >> 2;
/// Slots whose `Vec` grew beyond this many entries give the memory back when emptied; smaller
/// ones keep their allocation for the next rotation (the common case on level 0).
const MAX_RETAINED_SLOT_CAPACITY: usize = 4096;

/// A hierarchical timer wheel storing values of type `T` until their deadline.
///
/// See the [module documentation](self) for the layout, the lazy-cancellation contract and
/// the precision guarantee.
#[derive(Debug)]
pub struct TimerWheel<T> {
    /// Instant of tick 0.
    start: Instant,
    /// Length of one tick in nanoseconds (at least 1).
    tick_ns: u64,
    /// Every entry with a deadline tick `<= elapsed` has been handed out (or sits in `ready`).
    elapsed: u64,
    /// `levels[l][s]` holds `(deadline tick, value)`.
    levels: [Level<T>; LEVELS],
    /// Entries beyond the current top-level window; re-inserted when the window turns.
    far: Vec<(u64, T)>,
    /// Entries inserted with a deadline already reached; handed out by the next `advance`.
    ready: Vec<T>,
    /// Number of entries stored, in all places above.
    len: usize,
}

#[derive(Debug)]
struct Level<T> {
    /// Bit `s` set iff `slots[s]` is non-empty.
    occupied: u64,
    slots: [Vec<(u64, T)>; SLOTS],
}

impl<T> Level<T> {
    fn new() -> Self {
        Level {
            occupied: 0,
            slots: std::array::from_fn(|_| Vec::new()),
        }
    }
}

/// The next slot to process: its level, its index and the tick at which it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Slot {
        level: usize,
        slot: usize,
        start: u64,
    },
    /// The top-level window ends at this tick; `far` is re-inserted then.
    Far(u64),
}

impl Next {
    fn tick(self) -> u64 {
        match self {
            Next::Slot { start, .. } => start,
            Next::Far(t) => t,
        }
    }
}

impl<T> TimerWheel<T> {
    /// A wheel whose tick 0 is `start`, with ticks of `tick` (rounded up to 1 ns).
    pub fn new(tick: Duration, start: Instant) -> Self {
        let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        TimerWheel {
            start,
            tick_ns,
            elapsed: 0,
            levels: std::array::from_fn(|_| Level::new()),
            far: Vec::new(),
            ready: Vec::new(),
            len: 0,
        }
    }

    /// Number of entries waiting (including stale ones the caller has not cancelled).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of one tick.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_ns)
    }

    /// Stores `value` until `deadline`. A deadline already reached fires at the next
    /// [`advance`](Self::advance). O(1).
    pub fn insert(&mut self, deadline: Instant, value: T) {
        let when = self.deadline_tick(deadline);
        self.len += 1;
        if when <= self.elapsed {
            self.ready.push(value);
        } else {
            self.place(when, value);
        }
    }

    /// Moves the wheel to `now` and appends to `expired` every value whose deadline is
    /// `<= now`. Values come out in no particular order within one call; none is early.
    ///
    /// Cost: one step per occupied slot passed and per entry moved, so a jump over an hour
    /// of empty ticks is as cheap as a jump over one.
    pub fn advance(&mut self, now: Instant, expired: &mut Vec<T>) {
        self.len -= self.ready.len();
        expired.append(&mut self.ready);
        let target = self.floor_tick(now);
        if target <= self.elapsed {
            return;
        }
        while let Some(next) = self.next_slot() {
            if next.tick() > target {
                break;
            }
            self.elapsed = next.tick();
            match next {
                Next::Slot { level, slot, .. } => self.process_slot(level, slot, target, expired),
                Next::Far(_) => self.process_far(target, expired),
            }
        }
        self.elapsed = target;
    }

    /// The instant at which [`advance`](Self::advance) should next be called, or `None` if the
    /// wheel is empty. Never later than the earliest deadline rounded up to a tick; it may be
    /// earlier when the earliest entry still sits on a coarse level (the call then only
    /// cascades). Returns an instant `<= now` when something inserted in the past is pending.
    pub fn next_expiration(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return self.tick_instant(self.elapsed);
        }
        self.tick_instant(self.next_slot()?.tick())
    }

    /// The tick of `deadline`, rounded up (never early).
    fn deadline_tick(&self, deadline: Instant) -> u64 {
        let ns = saturating_nanos(deadline.saturating_duration_since(self.start));
        ns.div_ceil(self.tick_ns).min(MAX_TICK)
    }

    /// The tick `now` falls in, rounded down.
    fn floor_tick(&self, now: Instant) -> u64 {
        let ns = saturating_nanos(now.saturating_duration_since(self.start));
        (ns / self.tick_ns).min(MAX_TICK)
    }

    fn tick_instant(&self, tick: u64) -> Option<Instant> {
        let ns = u128::from(tick) * u128::from(self.tick_ns);
        let secs = u64::try_from(ns / 1_000_000_000).ok()?;
        // The remainder is below 10^9 and fits.
        let nanos = (ns % 1_000_000_000) as u32;
        self.start.checked_add(Duration::new(secs, nanos))
    }

    /// Files an entry due strictly after `elapsed` on its level (`len` already counted).
    fn place(&mut self, when: u64, value: T) {
        let level = level_for(self.elapsed, when);
        if level >= LEVELS {
            self.far.push((when, value));
            return;
        }
        let slot = slot_for(when, level);
        let lvl = &mut self.levels[level];
        lvl.occupied |= 1 << slot;
        lvl.slots[slot].push((when, value));
    }

    /// The first occupied slot after the current position, lowest level first (every slot on
    /// a level starts after every slot on the levels below it).
    fn next_slot(&self) -> Option<Next> {
        for (level, lvl) in self.levels.iter().enumerate() {
            let shift = LEVEL_BITS * level as u32;
            let pos = (self.elapsed >> shift) & (SLOTS as u64 - 1);
            // Slots at or before `pos` are empty by the placement invariant; mask them anyway
            // so a broken invariant shows up as a missed timer in tests, not as a loop.
            let after = lvl.occupied & ((u64::MAX << pos) << 1);
            if after != 0 {
                let slot = after.trailing_zeros() as usize;
                let window = shift + LEVEL_BITS;
                let base = (self.elapsed >> window) << window;
                return Some(Next::Slot {
                    level,
                    slot,
                    start: base + ((slot as u64) << shift),
                });
            }
        }
        if self.far.is_empty() {
            return None;
        }
        let top = LEVEL_BITS * LEVELS as u32;
        Some(Next::Far(((self.elapsed >> top) + 1) << top))
    }

    /// Empties a slot that `elapsed` has just reached: expire what is due by `target`, move
    /// the rest down (it always lands on a lower level, never back in this slot).
    fn process_slot(&mut self, level: usize, slot: usize, target: u64, expired: &mut Vec<T>) {
        let lvl = &mut self.levels[level];
        lvl.occupied &= !(1 << slot);
        let mut entries = std::mem::take(&mut lvl.slots[slot]);
        for (when, value) in entries.drain(..) {
            if when <= target {
                self.len -= 1;
                expired.push(value);
            } else {
                self.place(when, value);
            }
        }
        if entries.capacity() <= MAX_RETAINED_SLOT_CAPACITY {
            self.levels[level].slots[slot] = entries;
        }
    }

    /// The top-level window has turned: re-file every far entry against the new `elapsed`.
    fn process_far(&mut self, target: u64, expired: &mut Vec<T>) {
        let far = std::mem::take(&mut self.far);
        for (when, value) in far {
            if when <= target {
                self.len -= 1;
                expired.push(value);
            } else {
                self.place(when, value);
            }
        }
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (584 years): a 64-bit division per insert
/// instead of a 128-bit one.
fn saturating_nanos(d: Duration) -> u64 {
    d.as_secs()
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(u64::from(d.subsec_nanos())))
        .unwrap_or(u64::MAX)
}

/// Level of an entry due at `when` (> `elapsed`): the index of the highest 6-bit digit in
/// which the two differ; `LEVELS` or more means beyond the wheel.
fn level_for(elapsed: u64, when: u64) -> usize {
    // `| (SLOTS - 1)` keeps a difference confined to digit 0 on level 0.
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    (significant / LEVEL_BITS) as usize
}

fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (LEVEL_BITS * level as u32)) & (SLOTS as u64 - 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    const TICK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn empty_wheel_has_no_expiration() {
        let t0 = Instant::now();
        let mut w: TimerWheel<u32> = TimerWheel::new(TICK, t0);
        assert!(w.is_empty());
        assert_eq!(w.next_expiration(), None);
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_secs(3600), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn fires_in_order_never_early_at_most_one_tick_late() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        // Deadlines not aligned to ticks, inserted out of order.
        let deadlines = [
            ms(35),
            ms(1),
            ms(10),
            ms(999),
            ms(640),
            ms(641),
            ms(5_000),
            ms(43),
        ];
        for (i, d) in deadlines.iter().enumerate() {
            w.insert(t0 + *d, i);
        }
        let mut fired: Vec<(Duration, usize)> = Vec::new();
        let mut out = Vec::new();
        // Step 1 ms at a time: each value must appear at the first step >= its deadline
        // rounded up to a tick.
        for step in 0..=6_000u64 {
            let now = ms(step);
            w.advance(t0 + now, &mut out);
            for v in out.drain(..) {
                let d = deadlines[v];
                assert!(now >= d, "value {v} early: now {now:?} deadline {d:?}");
                assert!(now < d + TICK, "value {v} late: now {now:?} deadline {d:?}");
                fired.push((now, v));
            }
        }
        assert_eq!(fired.len(), deadlines.len());
        assert!(w.is_empty());
        let mut sorted = fired.clone();
        sorted.sort_by_key(|&(_, v)| deadlines[v]);
        assert_eq!(
            fired.iter().map(|f| f.0).collect::<Vec<_>>(),
            sorted.iter().map(|f| f.0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn next_expiration_is_never_after_the_deadline_tick() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        w.insert(t0 + ms(12_345), 1u8);
        let mut now = t0;
        let mut out = Vec::new();
        let mut wakeups = 0;
        // Drive it like a shard: sleep until next_expiration, advance.
        while let Some(at) = w.next_expiration() {
            assert!(
                at <= t0 + ms(12_350),
                "next_expiration {at:?} past the deadline tick"
            );
            now = now.max(at);
            w.advance(now, &mut out);
            wakeups += 1;
            assert!(wakeups < 10, "too many cascade wake-ups");
        }
        assert_eq!(out, vec![1]);
        assert!(now >= t0 + ms(12_345) && now < t0 + ms(12_345) + TICK);
    }

    #[test]
    fn past_deadlines_fire_at_next_advance() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        let mut out = Vec::new();
        w.advance(t0 + ms(1_000), &mut out);
        w.insert(t0 + ms(10), 'a');
        w.insert(t0, 'b');
        w.insert(t0 - ms(5), 'c'); // before the wheel's start
        assert!(w.next_expiration().is_some_and(|at| at <= t0 + ms(1_000)));
        assert_eq!(w.len(), 3);
        w.advance(t0 + ms(1_000), &mut out);
        out.sort();
        assert_eq!(out, vec!['a', 'b', 'c']);
        assert!(w.is_empty());
    }

    #[test]
    fn far_future_deadlines_cascade_correctly() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        let days = |n: u64| Duration::from_secs(n * 86_400);
        let deadlines = [
            days(1),
            days(3),
            days(40),
            days(200),
            days(400),
            days(365 * 30),
        ];
        for (i, d) in deadlines.iter().enumerate() {
            w.insert(t0 + *d, i);
        }
        let mut out = Vec::new();
        // Follow next_expiration exactly; check each fires within a tick of its deadline.
        let mut guard = 0;
        while let Some(at) = w.next_expiration() {
            w.advance(at, &mut out);
            for v in out.drain(..) {
                let d = t0 + deadlines[v];
                assert!(at >= d && at < d + TICK, "value {v} fired at {:?}", at - t0);
            }
            guard += 1;
            assert!(guard < 100, "cascade does not converge");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn one_hour_jump_is_bounded_and_complete() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        for i in 0..10_000u64 {
            w.insert(t0 + ms(i * 37 % 7_200_000), i);
        }
        w.insert(t0 + Duration::from_secs(7_200), u64::MAX);
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        w.advance(t0 + Duration::from_secs(3_600), &mut out);
        // 360k ticks passed; a per-tick loop would still be fast, so check the work shape too:
        // everything due came out, the one far entry stayed.
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(out.len(), 10_000);
        assert_eq!(w.len(), 1);
        let next = w.next_expiration().unwrap_or(t0);
        assert!(next > t0 + Duration::from_secs(3_600));
        assert!(next <= t0 + Duration::from_secs(7_200));
    }

    #[test]
    fn huge_jump_skips_empty_ticks() {
        // A 1 ns tick and a jump of ten years: 3·10^17 ticks. A per-tick loop would never end.
        let t0 = Instant::now();
        let mut w = TimerWheel::new(Duration::from_nanos(1), t0);
        w.insert(t0 + Duration::from_secs(86_400 * 3650), 1u8);
        w.insert(t0 + Duration::from_secs(5), 2u8);
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_secs(86_400 * 3650 + 1), &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2]);
    }

    #[test]
    fn million_entries_with_simulated_clock() {
        let n: u64 = if cfg!(debug_assertions) {
            200_000
        } else {
            1_000_000
        };
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        let mut rng = StdRng::seed_from_u64(7);
        // Spread over 60 s, like ping deadlines at a million connections.
        for i in 0..n {
            let d = ms(rng.random_range(0..60_000));
            w.insert(t0 + d, (i, d));
        }
        assert_eq!(w.len() as u64, n);
        let mut out = Vec::new();
        let mut seen = 0u64;
        let mut now = ms(0);
        while now <= ms(60_010) {
            w.advance(t0 + now, &mut out);
            for (_, d) in out.drain(..) {
                assert!(d <= now && now < d + TICK);
                seen += 1;
            }
            now += TICK;
        }
        assert_eq!(seen, n);
        assert!(w.is_empty());
    }

    #[test]
    fn randomized_against_binary_heap() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut w = TimerWheel::new(TICK, t0);
        let mut reference: BinaryHeap<Reverse<(Duration, u64)>> = BinaryHeap::new();
        let mut now = Duration::ZERO;
        let mut out = Vec::new();
        let mut id = 0u64;
        let rounds = if cfg!(debug_assertions) {
            3_000
        } else {
            20_000
        };
        for _ in 0..rounds {
            for _ in 0..rng.random_range(0..8) {
                // Mix of short, medium, long and past deadlines.
                let d = match rng.random_range(0..10) {
                    0 => now.saturating_sub(ms(rng.random_range(0..500))),
                    1..=5 => now + ms(rng.random_range(0..2_000)),
                    6..=8 => now + ms(rng.random_range(0..600_000)),
                    _ => now + Duration::from_secs(rng.random_range(0..10_000_000)),
                };
                w.insert(t0 + d, (id, d));
                reference.push(Reverse((d, id)));
                id += 1;
            }
            // Advance by a random step, sometimes a big jump, sometimes not at all.
            let prev_tick = now.as_nanos() / TICK.as_nanos();
            now += match rng.random_range(0..20) {
                0 => Duration::from_secs(rng.random_range(0..1_000_000)),
                1 => Duration::ZERO,
                _ => ms(rng.random_range(0..200)),
            };
            if let Some(at) = w.next_expiration() {
                // The wheel must not sleep through a due reference entry (one inserted in
                // the past is due at the wheel's current tick).
                if let Some(Reverse((d, _))) = reference.peek() {
                    let due_tick = d.as_nanos().div_ceil(TICK.as_nanos()).max(prev_tick);
                    assert!((at - t0).as_nanos() <= due_tick * TICK.as_nanos());
                }
            }
            w.advance(t0 + now, &mut out);
            let mut expected = Vec::new();
            while let Some(Reverse((d, i))) = reference.peek().copied() {
                let due_tick = d.as_nanos().div_ceil(TICK.as_nanos());
                if due_tick * TICK.as_nanos() > now.as_nanos() {
                    break;
                }
                reference.pop();
                expected.push(i);
            }
            let mut got: Vec<u64> = out
                .drain(..)
                .map(|(i, d)| {
                    assert!(d <= now, "early");
                    i
                })
                .collect();
            got.sort_unstable();
            expected.sort_unstable();
            assert_eq!(got, expected);
            assert_eq!(w.len(), reference.len());
        }
    }

    #[test]
    fn level_and_slot_arithmetic() {
        assert_eq!(level_for(0, 1), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(0, (1 << 36) - 1), 5);
        assert_eq!(level_for(0, 1 << 36), 6);
        assert_eq!(slot_for(64 * 5 + 3, 1), 5);
        assert_eq!(slot_for(64 * 5 + 3, 0), 3);
    }
}
