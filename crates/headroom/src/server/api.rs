//! The shapes of the HTTP API, and their conversion to and from the core's
//! types. Credits are integers in micro-credits (1 credit = 1,000,000);
//! times are RFC 3339 in UTC.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use headroom_core::limits::QUANTITY_MAX;
use headroom_core::*;
use headroom_store::ledger::{LedgerEntry, LedgerPage};

use super::error::{ApiError, ErrorDetail};

// ----- Requests -----

/// "May `subject` use `quantity` of `feature` now, and from where?"
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// The user or API key the request is for.
    #[schema(example = "demo-user")]
    pub subject: String,
    #[schema(example = "codex.local_task")]
    pub feature: String,
    /// Units wanted, 1 to 1,000,000,000.
    #[schema(minimum = 1, maximum = 1_000_000_000, example = 1)]
    #[serde(deserialize_with = "integer")]
    #[schema(value_type = i64)]
    pub quantity: i128,
    /// Request attributes that may set the price (`{"model": "gpt-5-codex"}`), at most 16.
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
    /// Required unless `preview`: a retry with the same key returns the
    /// original decision and consumes nothing again.
    #[serde(default)]
    #[schema(example = "req-0001")]
    pub idempotency_key: Option<String>,
    /// Answer as if deciding, consume nothing.
    #[serde(default)]
    pub preview: Option<bool>,
}

/// Up to 1,000 decisions in one call; each is decided on its own.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub decisions: Vec<DecisionBody>,
}

/// Hold an estimate until the actual quantity is known.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationBody {
    pub subject: String,
    pub feature: String,
    /// The estimate, 1 to 1,000,000,000 units.
    #[schema(minimum = 1, maximum = 1_000_000_000, example = 10)]
    #[serde(deserialize_with = "integer")]
    #[schema(value_type = i64)]
    pub quantity: i128,
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
    pub idempotency_key: String,
    /// Seconds before an uncaptured reservation is released by itself
    /// (default 900, at most 86,400).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400)]
    #[serde(deserialize_with = "optional_integer")]
    #[schema(value_type = Option<i64>)]
    pub lifetime_s: Option<i128>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    /// The actual quantity, 0 to 1,000,000,000: less or more than the estimate.
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 8)]
    #[serde(deserialize_with = "integer")]
    #[schema(value_type = i64)]
    pub quantity: i128,
    pub idempotency_key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub idempotency_key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    #[schema(example = "plus")]
    pub plan: String,
    /// Micro-credits the account may spend below zero; absent: the plan's.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    #[serde(deserialize_with = "optional_integer")]
    #[schema(value_type = Option<i64>)]
    pub overdraft: Option<i128>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    pub account: String,
    /// The subject's own plan (its windows); absent: the account's.
    #[serde(default)]
    pub plan: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// `free_tier`, `promotion`, `entitlement` or `purchase`: the waterfall spends them in this order.
    #[schema(example = "purchase")]
    pub kind: String,
    /// Micro-credits granted, more than 0.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 10_000_000)]
    #[serde(deserialize_with = "integer")]
    #[schema(value_type = i64)]
    pub credits: i128,
    /// Lower is spent first, within a kind (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4_294_967_295_i64)]
    #[serde(deserialize_with = "optional_integer")]
    #[schema(value_type = Option<i64>)]
    pub priority: Option<i128>,
    /// RFC 3339; absent: the catalog's default expiry from now.
    #[serde(default)]
    pub expires_at: Option<String>,
    pub idempotency_key: String,
    /// The grant's id; absent: derived from the idempotency key.
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// `service` (decisions and reservations) or `subject` (reads its own usage).
    #[schema(example = "service")]
    pub kind: String,
    /// For a subject token: whose usage it reads.
    #[serde(default)]
    pub subject: Option<String>,
    /// For a service token: limit it to the subjects of this account.
    #[serde(default)]
    pub account: Option<String>,
}

// ----- Answers -----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    pub decision_id: String,
    /// `decide`, `preview`, `reserve` or `capture`.
    pub kind: String,
    pub allowed: bool,
    /// `covered_by_windows`, `covered_by_windows_and_credits`, `covered_by_credits`,
    /// `partly_written_off`, `limit_reached` or `insufficient_credits`.
    pub reason: String,
    pub subject: String,
    pub feature: String,
    pub quantity: u64,
    /// Micro-credits per unit beyond the windows.
    pub price: u64,
    /// Where the units came from; they sum to `quantity` on an allow, empty on a deny.
    pub sources: Vec<SourceView>,
    /// Micro-credits charged.
    pub credits_charged: u64,
    /// Every window that applies, after this decision.
    pub windows: Vec<WindowView>,
    /// Micro-credits spendable after this decision.
    pub balance: u64,
    /// On a deny: micro-credits that would cover the request now.
    pub credits_short: u64,
    /// On a deny: seconds until a retry could succeed; absent when waiting cannot help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<ReservationView>,
    pub decided_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SourceView {
    /// `windows`, `free_tier`, `promotion`, `entitlement`, `purchase`, `overdraft` or `write_off`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    pub units: u64,
    /// Micro-credits.
    pub credits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WindowView {
    pub window: String,
    /// `subject` or `account` (shared by the whole account).
    pub scope: String,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// When the window is whole again (or the next unit frees up, for a
    /// sliding window); absent when nothing is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReservationView {
    /// Pass to `/v1/reservations/{id}/capture` or `/release`.
    pub id: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    /// One per decision, in the order given.
    pub results: Vec<BatchResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// The status this decision would have had on its own.
    pub status: u16,
    /// Whether the decision is the original answer to a key used before.
    #[serde(default)]
    pub replayed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BatchError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleasedView {
    pub reservation: String,
    pub window_units_returned: u64,
    /// Micro-credits returned.
    pub credits_returned: u64,
    pub released_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantAddedView {
    pub grant: String,
    pub kind: String,
    /// Micro-credits granted.
    pub credits: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Micro-credits spendable after the grant.
    pub balance: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub subject: String,
    pub account: String,
    pub windows: Vec<WindowView>,
    /// Micro-credits spendable now: unexpired grants and the overdraft, less holds and unsettled debits.
    pub balance: u64,
    /// Micro-credits of record (settled), negative within an overdraft.
    pub settled_balance: i64,
    /// Unexpired grants in the order the waterfall spends them.
    pub grants: Vec<GrantView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantView {
    pub id: String,
    pub kind: String,
    pub priority: u32,
    /// Micro-credits granted.
    pub granted: u64,
    /// Micro-credits still spendable.
    pub remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    pub account: String,
    pub plan: String,
    /// Micro-credits the account may spend below zero.
    pub overdraft: u64,
    /// Micro-credits spendable now.
    pub balance: u64,
    pub subjects: Vec<String>,
    /// The wallet's grants in waterfall order.
    pub grants: Vec<GrantView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubjectView {
    pub subject: String,
    pub account: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreatedView {
    pub id: String,
    /// Shown once; only a hash is kept.
    pub token: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// One page of an account's ledger, in settlement order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerView {
    pub entries: Vec<LedgerEntryView>,
    /// Pass as `after` for the next page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<u64>,
}

/// One balance update, linked to the monetization event and usage event
/// that explain it (and through them to the decision and its key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryView {
    pub sequence: u64,
    pub balance_update_id: String,
    /// The grant moved, or `overdraft`.
    pub source: String,
    /// Micro-credits: positive adds, negative takes away.
    pub delta: i64,
    /// `debit`, `grant` or `expiry`.
    pub cause: String,
    pub at: String,
    pub settled: bool,
    /// For a grant: the idempotency key it arrived with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monetization: Option<MonetizationView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageEventView>,
    /// Micro-credits written off when settling found less than expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_off: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MonetizationView {
    pub id: String,
    pub amount: u64,
    pub write_off: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageEventView {
    pub id: String,
    pub decision_id: String,
    pub idempotency_key: String,
    pub subject: String,
    pub feature: String,
    pub quantity: u64,
    pub window_units: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `ok`, or why not.
    pub status: String,
}

// ----- From requests to the core -----

/// An integer of any size JSON writes (a number past a bound is a 422 that
/// names it, not a parse error); fractions are refused.
pub(super) fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i128, D::Error> {
    struct Integer;
    impl serde::de::Visitor<'_> for Integer {
        type Value = i128;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("an integer")
        }
        fn visit_i64<E>(self, value: i64) -> Result<i128, E> {
            Ok(i128::from(value))
        }
        fn visit_u64<E>(self, value: u64) -> Result<i128, E> {
            Ok(i128::from(value))
        }
    }
    deserializer.deserialize_any(Integer)
}

pub(super) fn optional_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i128>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "integer")] i128);
    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(value)| value))
}

pub fn id_field<T>(field: &str, text: &str, parse: fn(&str) -> Result<T, IdError>) -> Result<T, ApiError> {
    parse(text).map_err(|error| ApiError::invalid(field, error))
}

/// An integer field within `range`, named in the error.
pub fn bounded(field: &str, value: i128, range: std::ops::RangeInclusive<u64>) -> Result<u64, ApiError> {
    match u64::try_from(value) {
        Ok(value) if range.contains(&value) => Ok(value),
        _ => {
            Err(ApiError::invalid(field, format!("must be between {} and {}, got {value}", range.start(), range.end())))
        }
    }
}

fn attributes(attributes: Option<BTreeMap<String, String>>) -> Result<Attributes, ApiError> {
    Attributes::new(attributes.unwrap_or_default().into_iter().collect())
        .map_err(|error| ApiError::invalid("attributes", error))
}

fn key(text: &str) -> Result<IdempotencyKey, ApiError> {
    id_field("idempotency_key", text, IdempotencyKey::new)
}

impl DecisionBody {
    pub fn request(self) -> Result<DecisionRequest, ApiError> {
        let preview = self.preview.unwrap_or(false);
        let idempotency_key = self.idempotency_key.as_deref().map(key).transpose()?;
        if idempotency_key.is_none() && !preview {
            return Err(ApiError::invalid("idempotency_key", "is required unless preview is true"));
        }
        Ok(DecisionRequest {
            subject: id_field("subject", &self.subject, SubjectId::new)?,
            feature: id_field("feature", &self.feature, FeatureId::new)?,
            quantity: bounded("quantity", self.quantity, 1..=QUANTITY_MAX)?,
            attributes: attributes(self.attributes)?,
            idempotency_key,
            preview,
        })
    }
}

impl ReservationBody {
    pub fn request(self) -> Result<ReserveRequest, ApiError> {
        let lifetime_max = limits::RESERVATION_LIFETIME_MAX.millis() / 1000;
        let lifetime = self.lifetime_s.map(|seconds| bounded("lifetime_s", seconds, 1..=lifetime_max)).transpose()?;
        Ok(ReserveRequest {
            subject: id_field("subject", &self.subject, SubjectId::new)?,
            feature: id_field("feature", &self.feature, FeatureId::new)?,
            quantity: bounded("quantity", self.quantity, 1..=QUANTITY_MAX)?,
            attributes: attributes(self.attributes)?,
            idempotency_key: key(&self.idempotency_key)?,
            lifetime: lifetime.map(Duration::from_seconds),
        })
    }
}

/// A reservation's id outside: its decision id, then its account, which
/// captures and releases use to find it (`<32 hex digits>.<account>`).
pub fn reservation_id(id: ReservationId, account: &AccountId) -> String {
    format!("{id}.{account}")
}

pub fn parse_reservation_id(text: &str) -> Result<(ReservationId, AccountId), ApiError> {
    let not_found =
        || ApiError::new(axum::http::StatusCode::NOT_FOUND, "unknown_reservation", format!("no reservation {text:?}"));
    let (decision, account) = text.split_at_checked(32).ok_or_else(not_found)?;
    let id = DecisionId::parse(decision).ok_or_else(not_found)?;
    let account = account.strip_prefix('.').and_then(|account| AccountId::new(account).ok()).ok_or_else(not_found)?;
    Ok((id, account))
}

impl CaptureBody {
    pub fn request(self, reservation: ReservationId) -> Result<CaptureRequest, ApiError> {
        Ok(CaptureRequest {
            reservation,
            quantity: bounded("quantity", self.quantity, 0..=QUANTITY_MAX)?,
            idempotency_key: key(&self.idempotency_key)?,
        })
    }
}

impl GrantBody {
    pub fn request(self, account: &AccountId) -> Result<GrantRequest, ApiError> {
        let kind = GrantKind::parse(&self.kind).ok_or_else(|| {
            ApiError::invalid(
                "kind",
                format!("{:?} is not one of free_tier, promotion, entitlement, purchase", self.kind),
            )
        })?;
        let idempotency_key = key(&self.idempotency_key)?;
        let grant = match &self.id {
            Some(text) => id_field("id", text, GrantId::new)?,
            None => {
                let derived = DecisionId::derive(account, &idempotency_key, Timestamp::EPOCH);
                GrantId::new(&format!("grant-{derived}")).expect("hex digits are an id")
            }
        };
        Ok(GrantRequest {
            grant,
            kind,
            credits: Credits::from_micros(bounded("credits", self.credits, 1..=limits::GRANT_MICROS_MAX)?),
            priority: bounded("priority", self.priority.unwrap_or(0), 0..=u64::from(u32::MAX))? as u32,
            expires_at: self
                .expires_at
                .as_deref()
                .map(Timestamp::parse_rfc3339)
                .transpose()
                .map_err(|error| ApiError::invalid("expires_at", error))?,
            idempotency_key,
        })
    }
}

// ----- From the core to answers -----

fn time(at: Timestamp) -> String {
    at.to_string()
}

pub fn window_view(report: &window::WindowReport) -> WindowView {
    WindowView {
        window: report.window.to_string(),
        scope: match report.scope {
            catalog::Scope::Subject => "subject",
            catalog::Scope::Account => "account",
        }
        .to_string(),
        limit: report.limit,
        used: report.used,
        remaining: report.remaining,
        resets_at: report.resets_at.map(time),
    }
}

pub fn decision_view(decision: &Decision) -> DecisionView {
    DecisionView {
        decision_id: decision.id.to_string(),
        kind: match decision.kind {
            DecisionKind::Decide => "decide",
            DecisionKind::Preview => "preview",
            DecisionKind::Reserve => "reserve",
            DecisionKind::Capture => "capture",
        }
        .to_string(),
        allowed: decision.allowed,
        reason: decision.reason.as_str().to_string(),
        subject: decision.subject.to_string(),
        feature: decision.feature.to_string(),
        quantity: decision.quantity,
        price: decision.price.micros(),
        sources: decision.sources.iter().map(source_view).collect(),
        credits_charged: decision.credits_charged.micros(),
        windows: decision.windows.iter().map(window_view).collect(),
        balance: decision.available.micros(),
        credits_short: decision.credits_short.micros(),
        retry_after_s: decision.retry_at.map(|at| at.saturating_since(decision.decided_at).seconds_ceil()),
        reservation: decision.reservation.as_ref().map(|reservation| ReservationView {
            id: reservation_id(reservation.id, &reservation.account),
            expires_at: time(reservation.expires_at),
        }),
        decided_at: time(decision.decided_at),
    }
}

fn source_view(used: &SourceUse) -> SourceView {
    let (kind, grant) = match &used.source {
        Source::Windows => ("windows", None),
        Source::Grant { grant, kind } => (kind.as_str(), Some(grant.to_string())),
        Source::Overdraft => ("overdraft", None),
        Source::WriteOff => ("write_off", None),
    };
    SourceView { kind: kind.to_string(), grant, units: used.units, credits: used.credits.micros() }
}

pub fn released_view(released: &Released, account: &AccountId) -> ReleasedView {
    ReleasedView {
        reservation: reservation_id(released.reservation, account),
        window_units_returned: released.window_units_returned,
        credits_returned: released.credits_returned.micros(),
        released_at: time(released.released_at),
    }
}

pub fn grant_added_view(added: &GrantAdded) -> GrantAddedView {
    GrantAddedView {
        grant: added.grant.to_string(),
        kind: added.kind.as_str().to_string(),
        credits: added.credits.micros(),
        expires_at: added.expires_at.map(time),
        balance: added.available.micros(),
    }
}

pub fn usage_view(subject: &SubjectId, account: &AccountId, usage: &Usage) -> UsageView {
    UsageView {
        subject: subject.to_string(),
        account: account.to_string(),
        windows: usage.windows.iter().map(window_view).collect(),
        balance: usage.available.micros(),
        settled_balance: i64::try_from(usage.settled_balance).expect("balances are bounded by limits"),
        grants: usage.grants.iter().map(grant_view).collect(),
    }
}

fn grant_view(grant: &headroom_core::wallet::Grant) -> GrantView {
    GrantView {
        id: grant.id.to_string(),
        kind: grant.kind.as_str().to_string(),
        priority: grant.priority,
        granted: grant.granted.micros(),
        remaining: grant.available().micros(),
        expires_at: grant.expires_at.map(time),
    }
}

pub fn account_view(account: &AccountState, now: Timestamp) -> AccountView {
    let mut subjects: Vec<String> = account.subjects().map(ToString::to_string).collect();
    subjects.sort();
    AccountView {
        account: account.id().to_string(),
        plan: account.plan().to_string(),
        overdraft: account.wallet().overdraft.limit.micros(),
        balance: account.wallet().available(now).micros(),
        subjects,
        grants: account.wallet().grants.iter().filter(|grant| !grant.is_expired(now)).map(grant_view).collect(),
    }
}

pub fn ledger_view(page: &LedgerPage) -> LedgerView {
    LedgerView { entries: page.entries.iter().map(ledger_entry_view).collect(), next_cursor: page.next }
}

fn ledger_entry_view(entry: &LedgerEntry) -> LedgerEntryView {
    let update = &entry.update;
    let (cause, grant_idempotency_key) = match &update.cause {
        BalanceCause::Debit { .. } => ("debit", None),
        BalanceCause::Grant { idempotency_key } => ("grant", Some(idempotency_key.to_string())),
        BalanceCause::Expiry => ("expiry", None),
        BalanceCause::Refund { .. } => ("refund", None),
    };
    LedgerEntryView {
        sequence: update.sequence,
        balance_update_id: update.id.to_string(),
        source: match &update.source {
            BalanceSource::Grant(grant) => grant.to_string(),
            BalanceSource::Overdraft => "overdraft".to_string(),
        },
        delta: update.delta,
        cause: cause.to_string(),
        at: time(update.at),
        settled: entry.settled,
        grant_idempotency_key,
        monetization: entry.monetization.as_ref().map(|monetization| MonetizationView {
            id: monetization.id.to_string(),
            amount: monetization.amount.micros(),
            write_off: monetization.write_off.micros(),
        }),
        usage: entry.usage.as_ref().map(|usage| UsageEventView {
            id: usage.id.to_string(),
            decision_id: usage.decision.to_string(),
            idempotency_key: usage.idempotency_key.to_string(),
            subject: usage.subject.to_string(),
            feature: usage.feature.to_string(),
            quantity: usage.quantity,
            window_units: usage.window_units,
        }),
        written_off: entry.correction.as_ref().map(|correction| correction.write_off.micros()),
    }
}

pub fn batch_error(error: &ApiError) -> BatchError {
    let ErrorDetail { code, message, field } = error.body().error;
    BatchError { code: code.to_string(), message, field }
}
