use std::fmt;

use crate::decision::ReservationId;
use crate::ids::{AccountId, FeatureId, GrantId, IdempotencyKey, PaymentId, PlanId, SubjectId};

/// Why the core refused an operation. Every refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    UnknownAccount(AccountId),
    UnknownSubject(SubjectId),
    UnknownFeature(FeatureId),
    UnknownPlan(PlanId),
    UnknownReservation(ReservationId),
    AccountExists(AccountId),
    /// A subject belongs to one account; moving it is not supported.
    SubjectInOtherAccount {
        subject: SubjectId,
        account: AccountId,
    },
    InvalidQuantity {
        quantity: u64,
        reason: String,
    },
    InvalidAttributes(String),
    /// The feature is priced by an attribute the request does not carry.
    MissingAttribute {
        feature: FeatureId,
        attribute: String,
    },
    UnknownAttributeValue {
        feature: FeatureId,
        attribute: String,
        value: String,
    },
    InvalidLifetime(String),
    InvalidGrant(String),
    IdempotencyKeyRequired,
    /// The key was used before with a different request.
    IdempotencyConflict(IdempotencyKey),
    /// The account remembers as many keys as it may; retry once some expire.
    IdempotencyCapacity,
    TooManyGrants,
    TooManyReservations,
    GrantExists(GrantId),
    /// The catalog offers nothing to buy.
    PurchasesNotOffered,
    UnknownPayment(PaymentId),
    /// What the provider reports does not match the payment Headroom opened.
    PaymentMismatch(String),
    TooManyCheckouts,
    InvalidAutoRecharge(String),
}

impl CoreError {
    /// Whether the same call can succeed later without being changed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CoreError::IdempotencyCapacity | CoreError::TooManyReservations)
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::UnknownAccount(id) => write!(f, "unknown account {id}"),
            CoreError::UnknownSubject(id) => write!(f, "unknown subject {id}"),
            CoreError::UnknownFeature(id) => write!(f, "unknown feature {id}"),
            CoreError::UnknownPlan(id) => write!(f, "unknown plan {id}"),
            CoreError::PurchasesNotOffered => write!(f, "the catalog offers no credits for sale ([purchases])"),
            CoreError::UnknownPayment(id) => write!(f, "no payment {id} was opened by Headroom"),
            CoreError::PaymentMismatch(reason) => f.write_str(reason),
            CoreError::TooManyCheckouts => write!(
                f,
                "the account has {} unpaid checkouts, the most it may; pay or wait for one to lapse",
                crate::limits::PENDING_CHECKOUTS_PER_ACCOUNT_MAX
            ),
            CoreError::InvalidAutoRecharge(reason) => write!(f, "auto-recharge: {reason}"),
            CoreError::UnknownReservation(id) => write!(f, "no open reservation {id}"),
            CoreError::AccountExists(id) => write!(f, "account {id} exists already"),
            CoreError::SubjectInOtherAccount { subject, account } => {
                write!(f, "subject {subject} belongs to account {account}")
            }
            CoreError::InvalidQuantity { quantity, reason } => {
                write!(f, "quantity {quantity} {reason}")
            }
            CoreError::InvalidAttributes(reason) => write!(f, "attributes: {reason}"),
            CoreError::MissingAttribute { feature, attribute } => {
                write!(f, "feature {feature} is priced by attribute {attribute:?}, which the request lacks")
            }
            CoreError::UnknownAttributeValue { feature, attribute, value } => {
                write!(f, "feature {feature} has no price for {attribute} = {value:?}")
            }
            CoreError::InvalidLifetime(reason) => write!(f, "lifetime {reason}"),
            CoreError::InvalidGrant(reason) => write!(f, "grant: {reason}"),
            CoreError::IdempotencyKeyRequired => write!(f, "an idempotency key is required"),
            CoreError::IdempotencyConflict(key) => {
                write!(f, "idempotency key {:?} was used with a different request", key.as_str())
            }
            CoreError::IdempotencyCapacity => {
                write!(f, "too many idempotency keys retained; retry later")
            }
            CoreError::TooManyGrants => {
                write!(f, "the wallet holds {} grants, the most allowed", crate::limits::GRANTS_PER_ACCOUNT_MAX)
            }
            CoreError::TooManyReservations => write!(
                f,
                "the account holds {} open reservations, the most allowed",
                crate::limits::RESERVATIONS_PER_ACCOUNT_MAX
            ),
            CoreError::GrantExists(id) => write!(f, "grant {id} exists already"),
        }
    }
}

impl std::error::Error for CoreError {}
