//! Time as an injected value. The core never reads a clock: callers pass `now`,
//! taken from a [`Clock`]. Only `SystemClock` in `headroom-store` reads the
//! system clock.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp(u64);

/// A span of time in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Duration(u64);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    pub const fn from_millis(millis: u64) -> Timestamp {
        Timestamp(millis)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Saturates at the end of time rather than wrapping: a deadline that far
    /// away never arrives, which is the right reading of it.
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration.0))
    }

    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl Duration {
    pub const ZERO: Duration = Duration(0);

    pub const fn from_millis(millis: u64) -> Duration {
        Duration(millis)
    }

    pub const fn from_seconds(seconds: u64) -> Duration {
        Duration(seconds * 1000)
    }

    pub const fn from_hours(hours: u64) -> Duration {
        Duration(hours * 3_600_000)
    }

    pub const fn from_days(days: u64) -> Duration {
        Duration(days * 86_400_000)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded up: a client told to retry after this many
    /// seconds must not come back too early.
    pub fn seconds_ceil(self) -> u64 {
        self.0.div_ceil(1000)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}ms", self.0)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with milliseconds: `2026-11-25T03:37:20.000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = (self.0 / 86_400_000) as i64;
        let millis_of_day = self.0 % 86_400_000;
        let (year, month, day) = civil_from_days(days);
        let (hour, minute) = (millis_of_day / 3_600_000, millis_of_day / 60_000 % 60);
        let (second, millis) = (millis_of_day / 1000 % 60, millis_of_day % 1000);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Where time comes from. The server uses the system clock; tests and the
/// simulator use [`FakeClock`] and move it by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// A clock that only moves when told to. Shareable between threads, so that
/// a test can move the clock of a running store.
#[derive(Debug, Default)]
pub struct FakeClock {
    now_millis: AtomicU64,
}

impl FakeClock {
    pub fn new(start: Timestamp) -> FakeClock {
        FakeClock { now_millis: AtomicU64::new(start.millis()) }
    }

    pub fn advance(&self, by: Duration) {
        self.set(self.now().saturating_add(by));
    }

    /// Sets the time, also backwards: the store must cope with a clock step back.
    pub fn set(&self, to: Timestamp) {
        self.now_millis.store(to.millis(), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now_millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let clock = FakeClock::new(Timestamp::from_millis(1000));
        assert_eq!(clock.now(), Timestamp::from_millis(1000));
        clock.advance(Duration::from_seconds(2));
        assert_eq!(clock.now(), Timestamp::from_millis(3000));
    }

    #[test]
    fn timestamps_print_as_rfc3339() {
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000Z");
        // 2026-11-23 is a Monday.
        assert_eq!(Timestamp::from_millis(1_795_392_000_000).to_string(), "2026-11-23T00:00:00.000Z");
        assert_eq!(Duration::from_millis(1001).seconds_ceil(), 2);
    }
}
