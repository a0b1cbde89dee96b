//! Limit windows: pure functions from (spec, state, now) to what the window can
//! still cover, and from (spec, state, now, units) to the state that covers them.
//!
//! Time passed in never runs backwards: the account clamps it first.

use crate::catalog::{WindowKind, WindowSpec};
use crate::time::{Duration, Timestamp};
use serde::{Deserialize, Serialize};

/// The state of one instance-owner's window: a subject's, or an account's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowState {
    Fixed {
        /// Which instance `used` counts in: `k` of `[k·P + offset - P, k·P + offset)`.
        instance: u64,
        used: u64,
    },
    Anchored {
        /// Start of the current instance; `None` before the first covered request.
        started: Option<Timestamp>,
        used: u64,
    },
    Sliding {
        /// Absolute index (time / bucket length) of the newest bucket in `counts`.
        newest: u64,
        /// Ring of `buckets + 1` counters: the buckets a span of one period can touch.
        counts: Box<[u64]>,
    },
    TokenBucket {
        /// Units available, scaled by `per` in milliseconds so that the refill
        /// (`refill` scaled units per millisecond) is an exact integer.
        level_scaled: u128,
        at: Timestamp,
    },
}

/// Where covered units went, so that a released hold can return them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowHold {
    /// The instance (fixed), start time (anchored) or bucket (sliding) the
    /// units were counted in; unused for a token bucket.
    pub mark: u64,
    pub units: u64,
    /// The kind of window that counted them: a mark means nothing to a
    /// window of another kind (after a plan change).
    pub kind: HoldKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldKind {
    Fixed,
    Anchored,
    Sliding,
    TokenBucket,
}

impl HoldKind {
    fn of(kind: &WindowKind) -> HoldKind {
        match kind {
            WindowKind::Fixed { .. } => HoldKind::Fixed,
            WindowKind::Anchored { .. } => HoldKind::Anchored,
            WindowKind::Sliding { .. } => HoldKind::Sliding,
            WindowKind::TokenBucket { .. } => HoldKind::TokenBucket,
        }
    }
}

/// A window as a decision reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    pub window: crate::WindowId,
    pub scope: crate::catalog::Scope,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// When the window is whole again (fixed, anchored, token bucket) or when
    /// the next unit frees up (sliding); `None` when nothing is used.
    pub resets_at: Option<Timestamp>,
}

impl WindowState {
    pub fn new(spec: &WindowSpec, now: Timestamp) -> WindowState {
        match spec.kind {
            WindowKind::Fixed { .. } => WindowState::Fixed { instance: 0, used: 0 },
            WindowKind::Anchored { .. } => WindowState::Anchored { started: None, used: 0 },
            WindowKind::Sliding { buckets, .. } => {
                WindowState::Sliding { newest: 0, counts: vec![0; buckets as usize + 1].into_boxed_slice() }
            }
            WindowKind::TokenBucket { per, .. } => {
                WindowState::TokenBucket { level_scaled: u128::from(spec.capacity) * u128::from(per.millis()), at: now }
            }
        }
    }

    /// Units covered in the window as of `now`.
    pub fn used(&self, spec: &WindowSpec, now: Timestamp) -> u64 {
        spec.capacity - self.remaining(spec, now)
    }

    /// Units the window can still cover at `now`.
    pub fn remaining(&self, spec: &WindowSpec, now: Timestamp) -> u64 {
        let capacity = spec.capacity;
        match (self, spec.kind) {
            (WindowState::Fixed { instance, used }, WindowKind::Fixed { period, offset }) => {
                if *instance == fixed_instance(now, period, offset) { capacity.saturating_sub(*used) } else { capacity }
            }
            (WindowState::Anchored { started, used }, WindowKind::Anchored { period }) => {
                if anchored_active(*started, period, now) { capacity.saturating_sub(*used) } else { capacity }
            }
            (WindowState::Sliding { newest, counts }, WindowKind::Sliding { period, buckets }) => {
                let current = now.millis() / bucket_length(period, buckets);
                capacity.saturating_sub(sliding_sum(*newest, counts, current))
            }
            (WindowState::TokenBucket { level_scaled, at }, WindowKind::TokenBucket { refill, per }) => {
                let level = bucket_level(*level_scaled, *at, spec.capacity, refill, per, now);
                (level / u128::from(per.millis())) as u64
            }
            _ => unreachable!("window state does not match its spec"),
        }
    }

    /// Counts `units` in the window at `now`. The caller has checked that
    /// `units <= self.remaining(spec, now)`.
    pub fn consume(&mut self, spec: &WindowSpec, now: Timestamp, units: u64) -> WindowHold {
        let remaining = self.remaining(spec, now);
        assert!(units <= remaining, "window {} over capacity: {units} > {remaining}", spec.id);
        if units == 0 {
            return WindowHold { mark: 0, units: 0, kind: HoldKind::of(&spec.kind) };
        }
        match (self, spec.kind) {
            (WindowState::Fixed { instance, used }, WindowKind::Fixed { period, offset }) => {
                let current = fixed_instance(now, period, offset);
                if *instance != current {
                    *instance = current;
                    *used = 0;
                }
                *used += units;
                WindowHold { mark: current, units, kind: HoldKind::of(&spec.kind) }
            }
            (WindowState::Anchored { started, used }, WindowKind::Anchored { period }) => {
                if !anchored_active(*started, period, now) {
                    *started = Some(now);
                    *used = 0;
                }
                *used += units;
                WindowHold { mark: started.expect("started above").millis(), units, kind: HoldKind::Anchored }
            }
            (WindowState::Sliding { newest, counts }, WindowKind::Sliding { period, buckets }) => {
                let current = now.millis() / bucket_length(period, buckets);
                sliding_advance(newest, counts, current);
                let slot = (current % counts.len() as u64) as usize;
                counts[slot] += units;
                WindowHold { mark: current, units, kind: HoldKind::of(&spec.kind) }
            }
            (WindowState::TokenBucket { level_scaled, at }, WindowKind::TokenBucket { refill, per }) => {
                let level = bucket_level(*level_scaled, *at, spec.capacity, refill, per, now);
                *level_scaled = level - u128::from(units) * u128::from(per.millis());
                *at = now;
                WindowHold { mark: 0, units, kind: HoldKind::TokenBucket }
            }
            _ => unreachable!("window state does not match its spec"),
        }
    }

    /// Returns `units` of an earlier hold, if the instance or bucket they were
    /// counted in still counts at `now`; otherwise they have already lapsed.
    pub fn release(&mut self, spec: &WindowSpec, now: Timestamp, hold: WindowHold, units: u64) {
        debug_assert!(units <= hold.units);
        if hold.kind != HoldKind::of(&spec.kind) {
            return;
        }
        match (self, spec.kind) {
            (WindowState::Fixed { instance, used }, WindowKind::Fixed { period, offset }) => {
                if *instance == hold.mark && *instance == fixed_instance(now, period, offset) {
                    *used = used.saturating_sub(units);
                }
            }
            (WindowState::Anchored { started, used }, WindowKind::Anchored { period }) => {
                if started.map(Timestamp::millis) == Some(hold.mark) && anchored_active(*started, period, now) {
                    *used = used.saturating_sub(units);
                }
            }
            (WindowState::Sliding { newest, counts }, WindowKind::Sliding { .. }) => {
                let ring = counts.len() as u64;
                if hold.mark <= *newest && *newest - hold.mark < ring {
                    let slot = (hold.mark % ring) as usize;
                    counts[slot] = counts[slot].saturating_sub(units);
                }
            }
            (WindowState::TokenBucket { level_scaled, at }, WindowKind::TokenBucket { refill, per }) => {
                let level = bucket_level(*level_scaled, *at, spec.capacity, refill, per, now);
                let full = u128::from(spec.capacity) * u128::from(per.millis());
                *level_scaled = (level + u128::from(units) * u128::from(per.millis())).min(full);
                *at = now;
            }
            _ => unreachable!("window state does not match its spec"),
        }
    }

    /// Keeps the state within `spec` after a plan change lowered the
    /// capacity: what was counted stays counted, up to the new capacity (the
    /// window is then full, never reopened). A sliding window drops the
    /// excess from its newest buckets, which keeps it conservative.
    pub fn fit(&mut self, spec: &WindowSpec) {
        match (self, spec.kind) {
            (WindowState::Fixed { used, .. }, _) | (WindowState::Anchored { used, .. }, _) => {
                *used = (*used).min(spec.capacity);
            }
            (WindowState::Sliding { newest, counts }, _) => {
                let mut excess = counts.iter().sum::<u64>().saturating_sub(spec.capacity);
                let ring = counts.len() as u64;
                for back in 0..ring {
                    let slot = ((*newest + ring - back) % ring) as usize;
                    let taken = excess.min(counts[slot]);
                    counts[slot] -= taken;
                    excess -= taken;
                }
            }
            (WindowState::TokenBucket { level_scaled, .. }, WindowKind::TokenBucket { per, .. }) => {
                *level_scaled = (*level_scaled).min(u128::from(spec.capacity) * u128::from(per.millis()));
            }
            _ => {}
        }
    }

    /// When the window is whole again (or, sliding, when the next unit frees up).
    pub fn resets_at(&self, spec: &WindowSpec, now: Timestamp) -> Option<Timestamp> {
        self.resets_at_with(spec, now, self.remaining(spec, now))
    }

    /// [`WindowState::resets_at`], given what `remaining` says at `now`.
    fn resets_at_with(&self, spec: &WindowSpec, now: Timestamp, remaining: u64) -> Option<Timestamp> {
        if remaining == spec.capacity {
            return None;
        }
        match (self, spec.kind) {
            (WindowState::Fixed { .. }, WindowKind::Fixed { period, offset }) => {
                Some(fixed_instance_end(fixed_instance(now, period, offset), period, offset))
            }
            (WindowState::Anchored { started, .. }, WindowKind::Anchored { period }) => {
                started.map(|start| start.saturating_add(period))
            }
            (WindowState::Sliding { .. }, WindowKind::Sliding { .. }) => {
                // The next unit frees up when one more than what remains fits.
                self.available_at_with(spec, now, remaining + 1, remaining)
            }
            (WindowState::TokenBucket { .. }, WindowKind::TokenBucket { .. }) => {
                self.available_at_with(spec, now, spec.capacity, remaining)
            }
            _ => unreachable!("window state does not match its spec"),
        }
    }

    /// The earliest time at or after `now` when the window can cover `units`,
    /// if nothing else is consumed meanwhile; `None` if it never can.
    pub fn available_at(&self, spec: &WindowSpec, now: Timestamp, units: u64) -> Option<Timestamp> {
        self.available_at_with(spec, now, units, self.remaining(spec, now))
    }

    /// [`WindowState::available_at`], given what `remaining` says at `now`.
    fn available_at_with(&self, spec: &WindowSpec, now: Timestamp, units: u64, remaining: u64) -> Option<Timestamp> {
        if units > spec.capacity {
            return None;
        }
        if units <= remaining {
            return Some(now);
        }
        match (self, spec.kind) {
            (WindowState::Fixed { .. }, WindowKind::Fixed { period, offset }) => {
                Some(fixed_instance_end(fixed_instance(now, period, offset), period, offset))
            }
            (WindowState::Anchored { started, .. }, WindowKind::Anchored { period }) => {
                started.map(|start| start.saturating_add(period))
            }
            (WindowState::Sliding { newest, counts }, WindowKind::Sliding { period, buckets }) => {
                let length = bucket_length(period, buckets);
                let current = now.millis() / length;
                let mut used = sliding_sum(*newest, counts, current);
                // Oldest first: bucket `b` stops counting once the current
                // bucket is past `b + buckets`.
                for bucket in current.saturating_sub(u64::from(buckets))..=*newest {
                    used -= sliding_count(*newest, counts, bucket);
                    if used + units <= spec.capacity {
                        return Some(Timestamp::from_millis((bucket + u64::from(buckets) + 1) * length));
                    }
                }
                unreachable!("an empty sliding window covers its capacity")
            }
            (WindowState::TokenBucket { level_scaled, at }, WindowKind::TokenBucket { refill, per }) => {
                let level = bucket_level(*level_scaled, *at, spec.capacity, refill, per, now);
                let missing = u128::from(units) * u128::from(per.millis()) - level;
                let wait = missing.div_ceil(u128::from(refill));
                Some(now.saturating_add(Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX))))
            }
            _ => unreachable!("window state does not match its spec"),
        }
    }

    pub fn report(&self, spec: &WindowSpec, now: Timestamp) -> WindowReport {
        let remaining = self.remaining(spec, now);
        WindowReport {
            window: spec.id.clone(),
            scope: spec.scope,
            limit: spec.capacity,
            used: spec.capacity - remaining,
            remaining,
            resets_at: self.resets_at_with(spec, now, remaining),
        }
    }

    /// Invariant 5: the window never counts more than its capacity.
    pub fn check(&self, spec: &WindowSpec) -> Result<(), String> {
        let over = match (self, spec.kind) {
            (WindowState::Fixed { used, .. }, _) | (WindowState::Anchored { used, .. }, _) => {
                (*used > spec.capacity).then_some(*used)
            }
            (WindowState::Sliding { counts, .. }, _) => {
                let sum: u64 = counts.iter().sum();
                (sum > spec.capacity).then_some(sum)
            }
            (WindowState::TokenBucket { level_scaled, .. }, WindowKind::TokenBucket { per, .. }) => {
                let full = u128::from(spec.capacity) * u128::from(per.millis());
                (*level_scaled > full).then_some(spec.capacity + 1)
            }
            _ => return Err(format!("window {}: state does not match its kind", spec.id)),
        };
        match over {
            Some(used) => Err(format!("window {}: counts {used} units over capacity {}", spec.id, spec.capacity)),
            None => Ok(()),
        }
    }
}

/// Instance `k` spans `[k·P + offset - P, k·P + offset)`; the shift by one
/// period keeps `k` non-negative for every time since the epoch.
fn fixed_instance(now: Timestamp, period: Duration, offset: Duration) -> u64 {
    (now.millis() + period.millis() - offset.millis()) / period.millis()
}

fn fixed_instance_end(instance: u64, period: Duration, offset: Duration) -> Timestamp {
    Timestamp::from_millis(instance * period.millis() + offset.millis())
}

fn anchored_active(started: Option<Timestamp>, period: Duration, now: Timestamp) -> bool {
    started.is_some_and(|start| now < start.saturating_add(period))
}

fn bucket_length(period: Duration, buckets: u32) -> u64 {
    period.millis() / u64::from(buckets)
}

/// The count of absolute bucket `bucket`, if the ring still holds it.
fn sliding_count(newest: u64, counts: &[u64], bucket: u64) -> u64 {
    let ring = counts.len() as u64;
    if bucket <= newest && newest - bucket < ring { counts[(bucket % ring) as usize] } else { 0 }
}

/// Units in the buckets a span of one period ending in bucket `current` can
/// touch: buckets `current - buckets ..= current`. Counting the oldest bucket
/// whole is what makes the window conservative.
fn sliding_sum(newest: u64, counts: &[u64], current: u64) -> u64 {
    let oldest = current.saturating_sub(counts.len() as u64 - 1);
    (oldest..=newest.min(current)).map(|bucket| sliding_count(newest, counts, bucket)).sum()
}

/// Moves the ring forward to bucket `current`, clearing the buckets it skips.
fn sliding_advance(newest: &mut u64, counts: &mut [u64], current: u64) {
    assert!(current >= *newest, "time ran backwards in a sliding window");
    let ring = counts.len() as u64;
    for bucket in (*newest + 1)..=current.min(*newest + ring) {
        counts[(bucket % ring) as usize] = 0;
    }
    if current >= *newest + ring {
        counts.fill(0);
    }
    *newest = current;
}

/// The scaled level of a token bucket at `now`: the stored level plus the
/// refill since `at`, never above the capacity.
fn bucket_level(level_scaled: u128, at: Timestamp, capacity: u64, refill: u64, per: Duration, now: Timestamp) -> u128 {
    let full = u128::from(capacity) * u128::from(per.millis());
    let refilled = u128::from(refill) * u128::from(now.saturating_since(at).millis());
    (level_scaled + refilled).min(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Metered, Scope};
    use crate::ids::{FeatureId, WindowId};

    fn spec(kind: WindowKind, capacity: u64) -> WindowSpec {
        WindowSpec {
            id: WindowId::new("w").unwrap(),
            metered: Metered::Feature(FeatureId::new("f").unwrap()),
            scope: Scope::Subject,
            capacity,
            kind,
        }
    }

    fn at(millis: u64) -> Timestamp {
        Timestamp::from_millis(millis)
    }

    #[test]
    fn fixed_window_resets_at_the_end_of_its_instance() {
        // Weekly, aligned to Monday 00:00 UTC (the epoch was a Thursday).
        let week = Duration::from_days(7);
        let spec = spec(WindowKind::Fixed { period: week, offset: Duration::from_days(4) }, 10);
        let monday = 1_795_392_000_000; // 2026-11-23T00:00Z
        let mut state = WindowState::new(&spec, at(monday));
        let wednesday = at(monday + Duration::from_days(2).millis());
        state.consume(&spec, wednesday, 10);
        assert_eq!(state.remaining(&spec, wednesday), 0);
        let next_monday = at(monday + week.millis());
        assert_eq!(state.resets_at(&spec, wednesday), Some(next_monday));
        assert_eq!(state.available_at(&spec, wednesday, 1), Some(next_monday));
        assert_eq!(state.remaining(&spec, at(next_monday.millis() - 1)), 0);
        assert_eq!(state.remaining(&spec, next_monday), 10);
    }

    #[test]
    fn anchored_window_starts_with_the_first_covered_request() {
        let five_hours = Duration::from_hours(5);
        let spec = spec(WindowKind::Anchored { period: five_hours }, 3);
        let mut state = WindowState::new(&spec, at(0));
        assert_eq!(state.resets_at(&spec, at(1000)), None);
        state.consume(&spec, at(1000), 0);
        assert_eq!(state.remaining(&spec, at(1000)), 3, "zero units start nothing");
        state.consume(&spec, at(5000), 3);
        assert_eq!(state.resets_at(&spec, at(6000)), Some(at(5000 + five_hours.millis())));
        assert_eq!(state.remaining(&spec, at(5000 + five_hours.millis())), 3);
    }

    #[test]
    fn sliding_window_never_covers_more_than_capacity_in_any_period() {
        let spec = spec(WindowKind::Sliding { period: Duration::from_millis(100), buckets: 10 }, 5);
        let mut state = WindowState::new(&spec, at(0));
        state.consume(&spec, at(95), 5);
        // At 105 the span (5, 105] still holds the units at 95.
        assert_eq!(state.remaining(&spec, at(105)), 0);
        // Bucket 9 (90..100) stops counting once the current bucket passes 19.
        assert_eq!(state.available_at(&spec, at(105), 1), Some(at(200)));
        assert_eq!(state.remaining(&spec, at(199)), 0);
        assert_eq!(state.remaining(&spec, at(200)), 5);
        state.consume(&spec, at(10_000), 2);
        assert_eq!(state.remaining(&spec, at(10_000)), 3);
    }

    #[test]
    fn token_bucket_refills_exactly() {
        // Capacity 10, refill 1 unit every 3 ms: no rounding drift.
        let spec = spec(WindowKind::TokenBucket { refill: 1, per: Duration::from_millis(3) }, 10);
        let mut state = WindowState::new(&spec, at(0));
        state.consume(&spec, at(0), 10);
        assert_eq!(state.remaining(&spec, at(2)), 0);
        assert_eq!(state.remaining(&spec, at(3)), 1);
        assert_eq!(state.available_at(&spec, at(3), 4), Some(at(12)));
        assert_eq!(state.resets_at(&spec, at(3)), Some(at(30)));
        assert_eq!(state.remaining(&spec, at(1_000_000)), 10);
    }

    #[test]
    fn a_released_hold_returns_units_only_to_its_own_instance() {
        let spec = spec(WindowKind::Fixed { period: Duration::from_millis(100), offset: Duration::ZERO }, 10);
        let mut state = WindowState::new(&spec, at(0));
        let hold = state.consume(&spec, at(10), 6);
        state.release(&spec, at(20), hold, 4);
        assert_eq!(state.remaining(&spec, at(20)), 8);
        let hold = state.consume(&spec, at(30), 8);
        state.release(&spec, at(130), hold, 8);
        assert_eq!(state.remaining(&spec, at(130)), 10);
        assert!(state.check(&spec).is_ok());
    }
}
