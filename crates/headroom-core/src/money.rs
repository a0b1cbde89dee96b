//! Credits: an integer count of micro-credits with checked arithmetic. No floats.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Micro-credits per credit: prices and balances are integers of micro-credits.
pub const MICROS_PER_CREDIT: u64 = 1_000_000;

/// A non-negative amount of micro-credits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Credits(u64);

/// An arithmetic result that does not fit: an operating error, reported as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("amount out of range")
    }
}

impl std::error::Error for Overflow {}

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub const fn from_micros(micros: u64) -> Credits {
        Credits(micros)
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Credits) -> Result<Credits, Overflow> {
        self.0.checked_add(other.0).map(Credits).ok_or(Overflow)
    }

    pub fn checked_sub(self, other: Credits) -> Result<Credits, Overflow> {
        self.0.checked_sub(other.0).map(Credits).ok_or(Overflow)
    }

    /// The price of `units` at `self` per unit: an exact product, no rounding.
    pub fn checked_mul(self, units: u64) -> Result<Credits, Overflow> {
        self.0.checked_mul(units).map(Credits).ok_or(Overflow)
    }

    pub fn saturating_sub(self, other: Credits) -> Credits {
        Credits(self.0.saturating_sub(other.0))
    }

    pub fn min(self, other: Credits) -> Credits {
        Credits(self.0.min(other.0))
    }

    /// How many whole units of `price` fit in `self` (all of them when the price is 0).
    pub fn units_at(self, price: Credits) -> u64 {
        self.0.checked_div(price.0).unwrap_or(u64::MAX)
    }

    /// As a signed amount, for ledger deltas.
    pub fn signed(self) -> Result<i64, Overflow> {
        i64::try_from(self.0).map_err(|_| Overflow)
    }
}

impl fmt::Display for Credits {
    /// Whole credits with six decimals: `12.500000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / MICROS_PER_CREDIT, self.0 % MICROS_PER_CREDIT)
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}µc", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        let max = Credits::from_micros(u64::MAX);
        assert_eq!(max.checked_add(Credits::from_micros(1)), Err(Overflow));
        assert_eq!(Credits::ZERO.checked_sub(Credits::from_micros(1)), Err(Overflow));
        assert_eq!(max.checked_mul(2), Err(Overflow));
        assert_eq!(Credits::from_micros(7).checked_mul(3), Ok(Credits::from_micros(21)));
        assert_eq!(Credits::from_micros(10).units_at(Credits::from_micros(3)), 3);
        assert_eq!(Credits::from_micros(10).units_at(Credits::ZERO), u64::MAX);
        assert_eq!(Credits::from_micros(12_500_000).to_string(), "12.500000");
    }
}
