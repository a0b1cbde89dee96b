//! What goes into a decision and what comes out of it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

use crate::GrantKind;
use crate::fingerprint::StableHash;
use crate::ids::{FeatureId, GrantId, IdempotencyKey, SubjectId};
use crate::limits::{ATTRIBUTE_LENGTH_MAX, ATTRIBUTES_MAX};
use crate::money::Credits;
use crate::time::{Duration, Timestamp};
use crate::window::WindowReport;

/// A 128-bit id derived from the account, the idempotency key of the call
/// that made it and the time it was made: the same call always yields the
/// same ids, and a key used again after its retention period yields new ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DecisionId(pub u128);

/// A reservation is named by the decision that took it.
pub type ReservationId = DecisionId;

impl DecisionId {
    pub fn derive(account: &crate::AccountId, key: &IdempotencyKey, at: Timestamp) -> DecisionId {
        DecisionId(
            StableHash::new()
                .field(account.as_str().as_bytes())
                .field(key.as_str().as_bytes())
                .number(at.millis())
                .finish(),
        )
    }

    /// Parses the 32 lowercase hexadecimal digits that `Display` prints.
    pub fn parse(text: &str) -> Option<DecisionId> {
        if text.len() != 32 || !text.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(DecisionId)
    }
}

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecisionId({self})")
    }
}

/// Request attributes (`model = "gpt-5-codex"`), sorted by name, names unique.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<(String, String)>")]
pub struct Attributes(Vec<(String, String)>);

/// Deserializing goes through [`Attributes::new`]: sorted, checked, unique.
impl TryFrom<Vec<(String, String)>> for Attributes {
    type Error = String;
    fn try_from(pairs: Vec<(String, String)>) -> Result<Attributes, String> {
        Attributes::new(pairs)
    }
}

impl Attributes {
    pub fn new(mut pairs: Vec<(String, String)>) -> Result<Attributes, String> {
        if pairs.len() > ATTRIBUTES_MAX {
            return Err(format!("has {} attributes, at most {ATTRIBUTES_MAX} are allowed", pairs.len()));
        }
        for (name, value) in &pairs {
            if name.is_empty() || name.len() > ATTRIBUTE_LENGTH_MAX {
                return Err(format!("attribute name {name:?} must be 1 to {ATTRIBUTE_LENGTH_MAX} bytes"));
            }
            if value.len() > ATTRIBUTE_LENGTH_MAX {
                return Err(format!("attribute {name:?} is longer than {ATTRIBUTE_LENGTH_MAX} bytes"));
            }
        }
        pairs.sort();
        if let Some(pair) = pairs.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(format!("attribute {:?} is given twice", pair[0].0));
        }
        Ok(Attributes(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    fn hash_into(&self, hash: StableHash) -> StableHash {
        self.0.iter().fold(hash.number(self.0.len() as u64), |hash, (name, value)| {
            hash.field(name.as_bytes()).field(value.as_bytes())
        })
    }
}

/// "May `subject` use `quantity` of `feature` now, and from where?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRequest {
    pub subject: SubjectId,
    pub feature: FeatureId,
    pub quantity: u64,
    pub attributes: Attributes,
    /// Required unless `preview`.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Answer as if deciding, consume nothing.
    pub preview: bool,
}

/// Hold an estimate until the actual quantity is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub subject: SubjectId,
    pub feature: FeatureId,
    pub quantity: u64,
    pub attributes: Attributes,
    pub idempotency_key: IdempotencyKey,
    /// `None`: [`crate::limits::RESERVATION_LIFETIME_DEFAULT`].
    pub lifetime: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    pub reservation: ReservationId,
    /// The actual quantity: less or more than the estimate.
    pub quantity: u64,
    pub idempotency_key: IdempotencyKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub reservation: ReservationId,
    pub idempotency_key: IdempotencyKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    pub grant: GrantId,
    pub kind: GrantKind,
    pub credits: Credits,
    /// Lower is spent first, within a kind.
    pub priority: u32,
    /// `None`: the catalog's default grant expiry from now.
    pub expires_at: Option<Timestamp>,
    pub idempotency_key: IdempotencyKey,
}

/// The operation whose fingerprint is taken, so that a key reused for another
/// operation is a conflict too.
pub(crate) enum Fingerprinted<'a> {
    Decide(&'a DecisionRequest),
    Reserve(&'a ReserveRequest),
    Capture(&'a CaptureRequest),
    Release(&'a ReleaseRequest),
    Grant(&'a GrantRequest),
}

impl Fingerprinted<'_> {
    pub(crate) fn fingerprint(&self) -> u128 {
        let hash = StableHash::new();
        match self {
            Fingerprinted::Decide(request) => request
                .attributes
                .hash_into(
                    hash.number(1)
                        .field(request.subject.as_str().as_bytes())
                        .field(request.feature.as_str().as_bytes())
                        .number(request.quantity),
                )
                .number(u64::from(request.preview)),
            Fingerprinted::Reserve(request) => request
                .attributes
                .hash_into(
                    hash.number(2)
                        .field(request.subject.as_str().as_bytes())
                        .field(request.feature.as_str().as_bytes())
                        .number(request.quantity),
                )
                .number(request.lifetime.map_or(u64::MAX, Duration::millis)),
            Fingerprinted::Capture(request) => {
                hash.number(3).bytes(&request.reservation.0.to_le_bytes()).number(request.quantity)
            }
            Fingerprinted::Release(request) => hash.number(4).bytes(&request.reservation.0.to_le_bytes()),
            Fingerprinted::Grant(request) => hash
                .number(5)
                .field(request.grant.as_str().as_bytes())
                .field(request.kind.as_str().as_bytes())
                .number(request.credits.micros())
                .number(u64::from(request.priority))
                .number(request.expires_at.map_or(u64::MAX, Timestamp::millis)),
        }
        .finish()
    }
}

/// Why a decision came out as it did. Stable, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Plan windows covered all of it.
    CoveredByWindows,
    /// Windows covered part, credits the rest.
    CoveredByWindowsAndCredits,
    /// Windows covered nothing (exhausted or none apply); credits covered it.
    CoveredByCredits,
    /// A capture whose extra quantity could not be covered: the uncovered
    /// part is written off.
    PartlyWrittenOff,
    /// Denied: windows cannot cover it and the wallet holds no spendable credits.
    LimitReached,
    /// Denied: windows and credits together fall short.
    InsufficientCredits,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CoveredByWindows => "covered_by_windows",
            Reason::CoveredByWindowsAndCredits => "covered_by_windows_and_credits",
            Reason::CoveredByCredits => "covered_by_credits",
            Reason::PartlyWrittenOff => "partly_written_off",
            Reason::LimitReached => "limit_reached",
            Reason::InsufficientCredits => "insufficient_credits",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where units of a request came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Windows,
    Grant {
        grant: GrantId,
        kind: GrantKind,
    },
    /// Below zero, within the account's overdraft.
    Overdraft,
    /// Work already done that nothing could cover (a capture above its estimate).
    WriteOff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceUse {
    pub source: Source,
    pub units: u64,
    pub credits: Credits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionKind {
    Decide,
    Preview,
    Reserve,
    Capture,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationInfo {
    pub id: ReservationId,
    /// Captures and releases find the reservation through its account.
    pub account: crate::AccountId,
    pub expires_at: Timestamp,
}

/// The engine's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub id: DecisionId,
    pub kind: DecisionKind,
    pub allowed: bool,
    pub reason: Reason,
    pub subject: SubjectId,
    pub feature: FeatureId,
    pub quantity: u64,
    /// Price of one unit beyond the windows.
    pub price: Credits,
    /// On an allow, the sources' units sum to the quantity; empty on a deny.
    pub sources: Vec<SourceUse>,
    pub credits_charged: Credits,
    /// Every window that applies, after this decision.
    pub windows: Vec<WindowReport>,
    /// Credits spendable after this decision: unexpired grants and the
    /// overdraft, less holds and unsettled debits.
    pub available: Credits,
    /// On a deny: the earliest time a retry could succeed, if nothing else
    /// changes; `None` if waiting cannot help (buy credits instead).
    pub retry_at: Option<Timestamp>,
    /// On a deny: the credits that would cover the request now.
    pub credits_short: Credits,
    pub reservation: Option<ReservationInfo>,
    pub decided_at: Timestamp,
}

impl Decision {
    pub fn window_units(&self) -> u64 {
        self.units_from(|source| matches!(source, Source::Windows))
    }

    pub fn units_from(&self, predicate: impl Fn(&Source) -> bool) -> u64 {
        self.sources.iter().filter(|used| predicate(&used.source)).map(|used| used.units).sum()
    }

    /// Invariant 7: a deny has a deny reason; an allow's sources sum to the quantity.
    pub fn check(&self) -> Result<(), String> {
        let units: u64 = self.sources.iter().map(|used| used.units).sum();
        let credits = self.sources.iter().try_fold(Credits::ZERO, |sum, used| sum.checked_add(used.credits));
        let deny_reason = matches!(self.reason, Reason::LimitReached | Reason::InsufficientCredits);
        if self.allowed == deny_reason {
            return Err(format!("decision {}: allowed={} with reason {}", self.id, self.allowed, self.reason));
        }
        if self.allowed && units != self.quantity {
            return Err(format!("decision {}: sources cover {units} of {} units", self.id, self.quantity));
        }
        if !self.allowed && (!self.sources.is_empty() || !self.credits_charged.is_zero()) {
            return Err(format!("decision {}: a deny consumed something", self.id));
        }
        let write_off = self
            .sources
            .iter()
            .filter(|used| used.source == Source::WriteOff)
            .try_fold(Credits::ZERO, |sum, used| sum.checked_add(used.credits));
        let charged = credits.and_then(|sum| write_off.and_then(|write_off| sum.checked_sub(write_off)));
        if charged != Ok(self.credits_charged) {
            return Err(format!("decision {}: sources' credits do not sum to the charge", self.id));
        }
        Ok(())
    }
}

/// The answer to a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub reservation: ReservationId,
    pub window_units_returned: u64,
    pub credits_returned: Credits,
    pub released_at: Timestamp,
}

/// The answer to a grant addition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantAdded {
    pub grant: GrantId,
    pub kind: GrantKind,
    pub credits: Credits,
    pub expires_at: Option<Timestamp>,
    pub available: Credits,
}

/// What an idempotency key remembers: the answer, shared with the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recorded {
    Decision(Arc<Decision>),
    Released(Arc<Released>),
    GrantAdded(Arc<GrantAdded>),
}
