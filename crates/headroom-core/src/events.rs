//! The three linked datasets: usage events, monetization events and balance
//! updates. Ids derive from the decision (and so from the idempotency key), so
//! that producing the same events twice yields the same ids.

use crate::decision::DecisionId;
use crate::fingerprint::StableHash;
use crate::ids::{AccountId, FeatureId, GrantId, IdempotencyKey, SubjectId};
use crate::money::Credits;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// A 128-bit event id, derived from what caused the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId(pub u128);

impl EventId {
    pub fn derive(cause: u128, tag: &str, index: u64) -> EventId {
        EventId(StableHash::new().bytes(&cause.to_le_bytes()).field(tag.as_bytes()).number(index).finish())
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Usage(UsageEvent),
    Monetization(MonetizationEvent),
    Balance(BalanceUpdate),
    Correction(Correction),
}

impl Event {
    pub fn id(&self) -> EventId {
        match self {
            Event::Usage(usage) => usage.id,
            Event::Monetization(monetization) => monetization.id,
            Event::Balance(update) => update.id,
            Event::Correction(correction) => correction.id,
        }
    }
}

/// Settling a balance update found less than it takes (an overshoot): the
/// balance stops at zero (or the overdraft) and the rest is written off,
/// recorded here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub id: EventId,
    /// The balance update whose settlement was corrected.
    pub update: EventId,
    pub account: AccountId,
    pub write_off: Credits,
    pub at: Timestamp,
}

/// Units used: one per allowed decide or capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub id: EventId,
    pub decision: DecisionId,
    pub idempotency_key: IdempotencyKey,
    pub account: AccountId,
    pub subject: SubjectId,
    pub feature: FeatureId,
    pub quantity: u64,
    /// Of `quantity`, the units plan windows covered; the rest was priced.
    pub window_units: u64,
    pub at: Timestamp,
}

/// The price of one usage event: exactly one per usage event, zero credits
/// when windows covered it all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonetizationEvent {
    pub id: EventId,
    pub usage: EventId,
    pub account: AccountId,
    /// Units beyond the windows, times the price.
    pub amount: Credits,
    /// The part of `amount` nothing could cover (a capture above its
    /// estimate), recorded instead of charged.
    pub write_off: Credits,
    pub at: Timestamp,
}

/// Which balance a balance update moves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BalanceSource {
    Grant(GrantId),
    Overdraft,
}

/// Why a balance moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalanceCause {
    /// Credits spent by a monetization event.
    Debit { monetization: EventId },
    /// A grant's credits arriving.
    Grant { idempotency_key: IdempotencyKey },
    /// A grant's unspent credits lapsing at its expiry.
    Expiry,
    /// A payment refunded: the grant it became gives back its unspent part.
    Refund { payment: crate::ids::PaymentId },
}

/// One entry of the ledger. Within an account, `sequence` numbers updates
/// 1, 2, 3… in the order they must be settled; settling is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceUpdate {
    pub id: EventId,
    pub sequence: u64,
    pub account: AccountId,
    pub source: BalanceSource,
    /// Micro-credits: positive adds to the balance, negative takes away.
    pub delta: i64,
    pub cause: BalanceCause,
    pub at: Timestamp,
}
