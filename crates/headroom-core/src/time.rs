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

    /// Parses RFC 3339 (`2026-11-25T03:37:20Z`, `2026-11-25T04:37:20.5+01:00`):
    /// a date, `T`, a time with optional fraction (kept to milliseconds), and
    /// `Z` or an offset. Times before 1970 are refused.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
        let invalid = || format!("{text:?} is not an RFC 3339 time such as 2026-11-25T03:37:20Z");
        let bytes = text.as_bytes();
        let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
            let digits = bytes.get(range).ok_or_else(invalid)?;
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(invalid());
            }
            Ok(digits.iter().fold(0, |value, digit| value * 10 + i64::from(digit - b'0')))
        };
        let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
        if bytes.len() < 20
            || !matches!(bytes[10], b'T' | b't' | b' ')
            || separators.iter().any(|(at, separator)| bytes[*at] != *separator)
        {
            return Err(invalid());
        }
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        let month_days = match month {
            2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            1..=12 => 31,
            _ => return Err(format!("{text:?} has month {month}")),
        };
        if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return Err(format!("{text:?} is not a valid date and time"));
        }
        let mut position = 19;
        let mut millis = 0;
        if bytes[position] == b'.' {
            let digits = bytes[position + 1..].iter().take_while(|byte| byte.is_ascii_digit()).count();
            if digits == 0 {
                return Err(invalid());
            }
            let kept = &bytes[position + 1..position + 1 + digits.min(3)];
            millis = kept.iter().fold(0, |value, digit| value * 10 + i64::from(digit - b'0'))
                * 10_i64.pow(3 - kept.len() as u32);
            position += 1 + digits;
        }
        let offset_minutes = match &bytes[position..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let minutes = number(position + 1..position + 3)? * 60 + number(position + 4..position + 6)?;
                if *sign == b'+' { minutes } else { -minutes }
            }
            _ => return Err(invalid()),
        };
        let seconds =
            days_from_civil(year, month as u32, day as u32) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
                - offset_minutes * 60;
        match u64::try_from(seconds * 1000 + millis) {
            Ok(millis) => Ok(Timestamp(millis)),
            Err(_) => Err(format!("{text:?} is before 1970")),
        }
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

/// A proleptic Gregorian date to days since 1970-01-01 (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_index + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    #[test]
    fn rfc3339_parses_back_what_display_prints() {
        for millis in [0, 1_795_392_000_000, 1_795_392_123_456, 951_782_400_000, 4_107_542_399_999] {
            let time = Timestamp::from_millis(millis);
            assert_eq!(Timestamp::parse_rfc3339(&time.to_string()), Ok(time));
        }
        let parse = |text| Timestamp::parse_rfc3339(text).map(|time| time.millis());
        assert_eq!(parse("2026-11-23T01:00:00+01:00"), Ok(1_795_392_000_000));
        assert_eq!(parse("2026-11-22T23:30:00.5-00:30"), Ok(1_795_392_000_500));
        for bad in [
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-11-23T00:00:00",
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
        assert!(parse("2028-02-29T00:00:00Z").is_ok());
    }
}
