//! Money in and word out, per account: payments (checkouts and automatic
//! recharges) that become purchase grants exactly once, refunds that claw
//! back what is unspent, and the outbox of alerts for the product.
//!
//! Everything here is state of the account, changed by the same serializable
//! operations as a decision, so each store makes it durable and exclusive
//! without anything of its own: a checkout id is granted once because the
//! payment's status changes once under the account's lock, and one recharge
//! is in flight at most because the account holds its id.
//!
//! Calls to the provider and deliveries to endpoints happen outside, in the
//! server: it claims due work ([`BillingOp::ClaimWork`], which also schedules
//! the retry), does it, and records the outcome.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{AccountState, Applicable, BOUNDED};
use crate::GrantKind;
use crate::catalog::{Catalog, Scope};
use crate::error::CoreError;
use crate::events::{BalanceCause, BalanceSource, Event, EventId};
use crate::fingerprint::StableHash;
use crate::ids::{GrantId, IdempotencyKey, PaymentId, ProviderRef, SubjectId, WindowId};
use crate::limits::*;
use crate::money::{Credits, MICROS_PER_CREDIT};
use crate::time::Timestamp;
use crate::wallet::{Grant, Line};
use crate::window::WindowReport;

/// The billing part of an account's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) struct Billing {
    payments: BTreeMap<PaymentId, Payment>,
    auto_recharge: AutoRecharge,
    /// The recharge in flight, if any: never two at once.
    recharging: Option<PaymentId>,
    recharges_started: u64,
    outbox: VecDeque<Notice>,
    notices_made: u64,
    /// Alerts dropped because the outbox was full or delivery gave up.
    notices_dropped: u64,
    /// Whether the balance was at or above the low-balance threshold when
    /// last looked at: `balance.low` fires on the way down only.
    above_low: bool,
}

/// Where a payment started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentOrigin {
    /// The user paid on the provider's checkout page.
    Checkout,
    /// Headroom charged the saved payment method.
    Recharge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    Pending,
    Paid,
    /// A recharge the provider declined (or could not be reached for). Kept
    /// for a while: a success that still arrives grants it after all.
    Failed,
}

/// One payment with the provider and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: PaymentId,
    pub origin: PaymentOrigin,
    pub credits: Credits,
    /// Minor currency units.
    pub amount: u64,
    pub currency: String,
    pub created_at: Timestamp,
    pub status: PaymentStatus,
    /// The provider's id of the paid object (checkout session, payment intent).
    pub provider_ref: Option<ProviderRef>,
    /// Cumulative refunds reported by the provider, in minor units.
    pub refunded_amount: u64,
    /// Of the refunded credits: taken back from the grant, and what had
    /// been spent already (recorded, never taken from another grant).
    pub clawed_back: Credits,
    pub unrecovered: Credits,
    /// Charge attempts (recharges) and when the next may start.
    pub attempts: u32,
    pub next_attempt: Timestamp,
}

impl Payment {
    fn pending(
        id: PaymentId,
        origin: PaymentOrigin,
        credits: Credits,
        amount: u64,
        currency: &str,
        now: Timestamp,
    ) -> Payment {
        Payment {
            id,
            origin,
            credits,
            amount,
            currency: currency.to_string(),
            created_at: now,
            status: PaymentStatus::Pending,
            provider_ref: None,
            refunded_amount: 0,
            clawed_back: Credits::ZERO,
            unrecovered: Credits::ZERO,
            attempts: 0,
            next_attempt: now,
        }
    }

    /// The grant a paid payment became.
    pub fn grant(&self) -> GrantId {
        GrantId::new(&format!("purchase.{}", self.id)).expect("payment ids are short ids")
    }

    /// The credits that `refunded_amount` stands for, rounded down.
    fn refunded_credits(&self) -> Credits {
        let micros = u128::from(self.credits.micros()) * u128::from(self.refunded_amount.min(self.amount))
            / u128::from(self.amount.max(1));
        Credits::from_micros(u64::try_from(micros).expect("at most the payment's credits"))
    }
}

/// "When my balance falls below `minimum`, top it up to `target`."
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AutoRecharge {
    pub enabled: bool,
    pub minimum: Credits,
    pub target: Credits,
    pub customer: Option<ProviderRef>,
    pub payment_method: Option<ProviderRef>,
    /// Failed recharges in a row.
    pub failures: u32,
    /// No recharge starts before this (after a failure).
    pub not_before: Timestamp,
}

/// An alert for the product, waiting in the outbox until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub id: EventId,
    pub alert: Alert,
    pub at: Timestamp,
    pub attempts: u32,
    pub next_attempt: Timestamp,
    /// Endpoints (by the hash of their URL) that acknowledged it already.
    pub delivered: Vec<u64>,
}

/// Where granted credits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantSource {
    Checkout,
    Recharge,
    Admin,
    Plan,
}

impl GrantSource {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantSource::Checkout => "checkout",
            GrantSource::Recharge => "recharge",
            GrantSource::Admin => "admin",
            GrantSource::Plan => "plan",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alert {
    BalanceLow {
        available: Credits,
        threshold: Credits,
    },
    CreditsGranted {
        grant: GrantId,
        kind: GrantKind,
        credits: Credits,
        source: GrantSource,
    },
    CreditsExpired {
        grant: GrantId,
        credits: Credits,
    },
    CreditsRefunded {
        grant: GrantId,
        payment: PaymentId,
        refunded: Credits,
        clawed_back: Credits,
        unrecovered: Credits,
    },
    LimitApproaching {
        subject: Option<SubjectId>,
        window: WindowId,
        limit: u64,
        used: u64,
        share_percent: u64,
    },
    LimitReached {
        subject: Option<SubjectId>,
        window: WindowId,
        limit: u64,
        used: u64,
    },
    AutoRechargeFailed {
        payment: PaymentId,
        reason: String,
        failures: u32,
        disabled: bool,
    },
}

impl Alert {
    /// The event type the product receives.
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::BalanceLow { .. } => "balance.low",
            Alert::CreditsGranted { .. } => "credits.granted",
            Alert::CreditsExpired { .. } => "credits.expired",
            Alert::CreditsRefunded { .. } => "credits.refunded",
            Alert::LimitApproaching { .. } => "limit.approaching",
            Alert::LimitReached { .. } => "limit.reached",
            Alert::AutoRechargeFailed { .. } => "auto_recharge.failed",
        }
    }
}

/// A change to an account's billing state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BillingOp {
    /// Records a checkout before the provider is asked for its page, so that
    /// the payment that follows is one Headroom knows.
    OpenCheckout {
        payment: PaymentId,
        credits: Credits,
        amount: u64,
        currency: String,
    },
    /// The provider says the checkout was paid: grant its credits, once.
    CompleteCheckout {
        payment: PaymentId,
        amount: u64,
        currency: String,
        provider_ref: Option<ProviderRef>,
    },
    /// The provider reports the cumulative refunded amount of a payment.
    Refund {
        payment: PaymentId,
        refunded_amount: u64,
        currency: String,
    },
    /// A payment method the user saved at checkout, for recharges.
    SavePaymentMethod {
        customer: ProviderRef,
        payment_method: ProviderRef,
    },
    SetAutoRecharge {
        enabled: bool,
        minimum: Credits,
        target: Credits,
        customer: Option<ProviderRef>,
        payment_method: Option<ProviderRef>,
    },
    /// Takes the due alerts and the due recharge charge, and schedules each
    /// one's next attempt (the retry if no outcome is recorded).
    ClaimWork {
        notices_max: u32,
    },
    /// `endpoints` acknowledged the notice; `complete`: every endpoint has.
    NoticeDelivered {
        notice: EventId,
        endpoints: Vec<u64>,
        complete: bool,
    },
    RechargePaid {
        payment: PaymentId,
        provider_ref: Option<ProviderRef>,
    },
    RechargeFailed {
        payment: PaymentId,
        reason: String,
    },
}

/// The due work [`BillingOp::ClaimWork`] hands out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Work {
    pub notices: Vec<Notice>,
    pub charge: Option<Charge>,
}

/// A recharge to charge off-session, with what the provider needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub payment: Payment,
    pub customer: ProviderRef,
    pub payment_method: ProviderRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillingAnswer {
    Payment(Payment),
    /// A checkout or a recharge paid. `granted`: this call granted its
    /// credits (false: an earlier one did).
    Completed {
        payment: Payment,
        granted: bool,
    },
    /// What this call clawed back and could not (zero: nothing new).
    Refunded {
        payment: Payment,
        clawed_back: Credits,
        unrecovered: Credits,
    },
    AutoRecharge(AutoRecharge),
    Work(Work),
    Done,
}

/// What the billing part of an account shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingView {
    pub auto_recharge: AutoRecharge,
    pub recharging: Option<PaymentId>,
    pub outbox: usize,
    pub notices_dropped: u64,
}

/// Delay before attempt `attempts + 1`, doubling from the first.
fn backoff(attempts: u32) -> crate::Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    let millis = DELIVERY_BACKOFF_FIRST.millis().saturating_mul(1 << doublings);
    crate::Duration::from_millis(millis.min(DELIVERY_BACKOFF_MAX.millis()))
}

impl AccountState {
    pub fn payment(&self, id: &PaymentId) -> Option<&Payment> {
        self.billing.payments.get(id)
    }

    pub fn billing_view(&self) -> BillingView {
        BillingView {
            auto_recharge: self.billing.auto_recharge.clone(),
            recharging: self.billing.recharging.clone(),
            outbox: self.billing.outbox.len(),
            notices_dropped: self.billing.notices_dropped,
        }
    }

    /// Whether alerts or a recharge wait for the worker.
    pub fn has_work(&self) -> bool {
        !self.billing.outbox.is_empty() || self.billing.recharging.is_some()
    }

    /// The earliest time an alert or a recharge is due, for the worker that
    /// does them.
    pub fn next_work(&self) -> Option<Timestamp> {
        let notice = self.billing.outbox.iter().map(|notice| notice.next_attempt).min();
        let charge = self.billing.recharging.as_ref().map(|id| self.billing.payments[id].next_attempt);
        notice.into_iter().chain(charge).min()
    }

    pub fn billing(
        &mut self,
        catalog: &Catalog,
        op: &BillingOp,
        now: Timestamp,
    ) -> Result<(BillingAnswer, Vec<Event>), CoreError> {
        let now = now.max(self.last_seen);
        self.check_billing(catalog, op)?;
        let mut events = Vec::new();
        self.advance(catalog, now, &mut events);
        let answer = match op {
            BillingOp::OpenCheckout { payment, credits, amount, currency } => {
                if self.billing.payments.contains_key(payment) {
                    BillingAnswer::Payment(self.billing.payments[payment].clone())
                } else {
                    let record =
                        Payment::pending(payment.clone(), PaymentOrigin::Checkout, *credits, *amount, currency, now);
                    self.billing.payments.insert(payment.clone(), record.clone());
                    BillingAnswer::Payment(record)
                }
            }
            BillingOp::CompleteCheckout { payment, provider_ref, .. } => {
                let granted = self.billing.payments[payment].status == PaymentStatus::Pending;
                if granted {
                    self.pay(catalog, payment, provider_ref.clone(), GrantSource::Checkout, now, &mut events);
                }
                BillingAnswer::Completed { payment: self.billing.payments[payment].clone(), granted }
            }
            BillingOp::Refund { payment, refunded_amount, .. } => {
                let record = self.billing.payments.get_mut(payment).expect("checked");
                record.refunded_amount = record.refunded_amount.max(*refunded_amount);
                let (clawed_back, unrecovered) = self.claw_back(payment, now, &mut events);
                BillingAnswer::Refunded { payment: self.billing.payments[payment].clone(), clawed_back, unrecovered }
            }
            BillingOp::SavePaymentMethod { customer, payment_method } => {
                let settings = &mut self.billing.auto_recharge;
                settings.customer = Some(customer.clone());
                settings.payment_method = Some(payment_method.clone());
                BillingAnswer::Done
            }
            BillingOp::SetAutoRecharge { enabled, minimum, target, customer, payment_method } => {
                let settings = &mut self.billing.auto_recharge;
                if !settings.enabled && *enabled {
                    settings.failures = 0;
                    settings.not_before = now;
                }
                settings.enabled = *enabled;
                settings.minimum = *minimum;
                settings.target = *target;
                if let Some(customer) = customer {
                    settings.customer = Some(customer.clone());
                }
                if let Some(payment_method) = payment_method {
                    settings.payment_method = Some(payment_method.clone());
                }
                BillingAnswer::AutoRecharge(settings.clone())
            }
            BillingOp::ClaimWork { notices_max } => BillingAnswer::Work(self.claim_work(*notices_max, now)),
            BillingOp::NoticeDelivered { notice, endpoints, complete } => {
                if *complete {
                    self.billing.outbox.retain(|queued| queued.id != *notice);
                } else if let Some(queued) = self.billing.outbox.iter_mut().find(|queued| queued.id == *notice) {
                    for endpoint in endpoints {
                        if !queued.delivered.contains(endpoint) {
                            queued.delivered.push(*endpoint);
                        }
                    }
                }
                BillingAnswer::Done
            }
            BillingOp::RechargePaid { payment, provider_ref } => {
                let granted = self.billing.payments[payment].status != PaymentStatus::Paid;
                if granted {
                    self.pay(catalog, payment, provider_ref.clone(), GrantSource::Recharge, now, &mut events);
                    self.billing.auto_recharge.failures = 0;
                }
                if self.billing.recharging.as_ref() == Some(payment) {
                    self.billing.recharging = None;
                }
                BillingAnswer::Completed { payment: self.billing.payments[payment].clone(), granted }
            }
            BillingOp::RechargeFailed { payment, reason } => {
                if self.billing.recharging.as_ref() == Some(payment) {
                    self.fail_recharge(payment, reason, now);
                }
                BillingAnswer::Done
            }
        };
        let available = self.wallet.available(now);
        self.watch_balance(catalog, now, available);
        self.forget_old_payments(now);
        Ok((answer, events))
    }

    /// Refuses, changing nothing, what cannot be applied.
    fn check_billing(&self, catalog: &Catalog, op: &BillingOp) -> Result<(), CoreError> {
        let mismatch = |payment: &Payment, amount: u64, currency: &str| {
            (payment.amount != amount || payment.currency != currency).then(|| {
                CoreError::PaymentMismatch(format!(
                    "payment {} was opened for {} {}, the provider reports {amount} {currency}",
                    payment.id, payment.amount, payment.currency
                ))
            })
        };
        match op {
            BillingOp::OpenCheckout { payment, credits, amount, currency } => {
                if catalog.purchases.is_none() {
                    return Err(CoreError::PurchasesNotOffered);
                }
                if let Some(existing) = self.billing.payments.get(payment) {
                    if existing.credits != *credits || existing.amount != *amount || existing.currency != *currency {
                        return Err(CoreError::PaymentMismatch(format!(
                            "payment {payment} exists already with other credits or amount"
                        )));
                    }
                    return Ok(());
                }
                let pending = self.billing.payments.values().filter(|payment| payment.status == PaymentStatus::Pending);
                if pending.count() >= PENDING_CHECKOUTS_PER_ACCOUNT_MAX {
                    return Err(CoreError::TooManyCheckouts);
                }
                if credits.is_zero() || credits.micros() > GRANT_MICROS_MAX || *amount == 0 {
                    return Err(CoreError::InvalidGrant("a checkout needs credits and an amount".to_string()));
                }
            }
            BillingOp::CompleteCheckout { payment, amount, currency, .. } => {
                let record = self.known_payment(payment, PaymentOrigin::Checkout)?;
                if let Some(error) = mismatch(record, *amount, currency) {
                    return Err(error);
                }
                self.room_for_grant(record)?;
            }
            BillingOp::Refund { payment, currency, .. } => {
                let record =
                    self.billing.payments.get(payment).ok_or_else(|| CoreError::UnknownPayment(payment.clone()))?;
                if record.currency != *currency {
                    return Err(CoreError::PaymentMismatch(format!(
                        "payment {payment} is in {}, the refund in {currency}",
                        record.currency
                    )));
                }
            }
            BillingOp::SetAutoRecharge { enabled, minimum, target, customer, payment_method } => {
                if *enabled && catalog.purchases.is_none() {
                    return Err(CoreError::PurchasesNotOffered);
                }
                if target <= minimum || target.micros() > GRANT_MICROS_MAX {
                    return Err(CoreError::InvalidAutoRecharge(format!(
                        "target must be above minimum and at most {GRANT_MICROS_MAX} micro-credits"
                    )));
                }
                let settings = &self.billing.auto_recharge;
                let has_method = (customer.is_some() || settings.customer.is_some())
                    && (payment_method.is_some() || settings.payment_method.is_some());
                if *enabled && !has_method {
                    return Err(CoreError::InvalidAutoRecharge(
                        "no saved payment method: give customer and payment_method, or buy once through checkout"
                            .to_string(),
                    ));
                }
            }
            BillingOp::RechargePaid { payment, .. } => {
                let record = self.known_payment(payment, PaymentOrigin::Recharge)?;
                self.room_for_grant(record)?;
            }
            BillingOp::RechargeFailed { payment, .. } => {
                self.known_payment(payment, PaymentOrigin::Recharge)?;
            }
            BillingOp::SavePaymentMethod { .. } | BillingOp::ClaimWork { .. } | BillingOp::NoticeDelivered { .. } => {}
        }
        Ok(())
    }

    fn known_payment(&self, id: &PaymentId, origin: PaymentOrigin) -> Result<&Payment, CoreError> {
        self.billing
            .payments
            .get(id)
            .filter(|payment| payment.origin == origin)
            .ok_or_else(|| CoreError::UnknownPayment(id.clone()))
    }

    /// A paid payment must be able to become a grant.
    fn room_for_grant(&self, payment: &Payment) -> Result<(), CoreError> {
        if payment.status != PaymentStatus::Paid && self.wallet.grants.len() >= GRANTS_PER_ACCOUNT_MAX {
            return Err(CoreError::TooManyGrants);
        }
        Ok(())
    }

    /// Marks a payment paid and grants its credits, then takes back what
    /// a refund that arrived first already returned.
    fn pay(
        &mut self,
        catalog: &Catalog,
        id: &PaymentId,
        provider_ref: Option<ProviderRef>,
        source: GrantSource,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) {
        let payment = self.billing.payments.get_mut(id).expect("checked");
        payment.status = PaymentStatus::Paid;
        payment.provider_ref = provider_ref.or(payment.provider_ref.take());
        let (grant, credits) = (payment.grant(), payment.credits);
        let expiry = catalog
            .purchases
            .as_ref()
            .map(|purchases| purchases.credits_expire_after)
            .or(catalog.settings.default_grant_expiry);
        if self.wallet.grant_index(&grant).is_some() || self.retired_grants.contains(&grant) {
            return; // Cannot happen: a payment is paid once. Never grant twice.
        }
        let key = IdempotencyKey::new(&format!("payment.{id}")).expect("payment ids are keys");
        let request = crate::GrantRequest {
            grant,
            kind: GrantKind::Purchase,
            credits,
            priority: 0,
            expires_at: expiry.map(|after| now.saturating_add(after)),
            idempotency_key: key,
        };
        self.credit_grant(&request, request.expires_at, source, now, events);
        self.claw_back(id, now, events);
    }

    /// Takes back from the payment's grant the credits refunded since the
    /// last call, from its unspent part only; what was spent is recorded.
    fn claw_back(&mut self, id: &PaymentId, now: Timestamp, events: &mut Vec<Event>) -> (Credits, Credits) {
        let payment = &self.billing.payments[id];
        if payment.status != PaymentStatus::Paid {
            return (Credits::ZERO, Credits::ZERO);
        }
        let settled = payment.clawed_back.checked_add(payment.unrecovered).expect(BOUNDED);
        let owed = payment.refunded_credits().saturating_sub(settled);
        if owed.is_zero() {
            return (Credits::ZERO, Credits::ZERO);
        }
        let grant = payment.grant();
        let index = self.wallet.grant_index(&grant);
        let unspent = index.map_or(Credits::ZERO, |index| self.wallet.grants[index].available());
        let clawed_back = owed.min(unspent);
        let unrecovered = owed.checked_sub(clawed_back).expect("clawed_back <= owed");
        if let (Some(index), false) = (index, clawed_back.is_zero()) {
            self.wallet.add_pending_debit(Line::Grant(index), clawed_back);
            let cause = StableHash::new()
                .field(self.id.as_str().as_bytes())
                .field(id.as_str().as_bytes())
                .number(self.next_sequence)
                .finish();
            self.push_update(
                EventId::derive(cause, "refund", 0),
                BalanceSource::Grant(grant.clone()),
                -clawed_back.signed().expect(BOUNDED),
                BalanceCause::Refund { payment: id.clone() },
                now,
                events,
            );
        }
        let payment = self.billing.payments.get_mut(id).expect("present");
        payment.clawed_back = payment.clawed_back.checked_add(clawed_back).expect(BOUNDED);
        payment.unrecovered = payment.unrecovered.checked_add(unrecovered).expect(BOUNDED);
        let alert = Alert::CreditsRefunded { grant, payment: id.clone(), refunded: owed, clawed_back, unrecovered };
        self.notify(alert, now);
        (clawed_back, unrecovered)
    }

    fn claim_work(&mut self, notices_max: u32, now: Timestamp) -> Work {
        let mut work = Work::default();
        let before = self.billing.outbox.len();
        self.billing.outbox.retain(|notice| notice.attempts < DELIVERY_ATTEMPTS_MAX || notice.next_attempt > now);
        self.billing.notices_dropped += (before - self.billing.outbox.len()) as u64;
        for notice in self.billing.outbox.iter_mut().filter(|notice| notice.next_attempt <= now) {
            if work.notices.len() >= notices_max as usize {
                break;
            }
            notice.attempts += 1;
            notice.next_attempt = now.saturating_add(backoff(notice.attempts));
            work.notices.push(notice.clone());
        }
        let Some(id) = self.billing.recharging.clone() else {
            return work;
        };
        let payment = &self.billing.payments[&id];
        if payment.next_attempt > now {
            return work;
        }
        let settings = &self.billing.auto_recharge;
        let method = settings.customer.clone().zip(settings.payment_method.clone());
        match method {
            Some(_) if payment.attempts >= DELIVERY_ATTEMPTS_MAX => {
                self.fail_recharge(&id, "the payment provider could not be reached", now);
            }
            None => self.fail_recharge(&id, "no saved payment method", now),
            Some((customer, payment_method)) => {
                let payment = self.billing.payments.get_mut(&id).expect("present");
                payment.attempts += 1;
                payment.next_attempt = now.saturating_add(backoff(payment.attempts));
                work.charge = Some(Charge { payment: payment.clone(), customer, payment_method });
            }
        }
        work
    }

    fn fail_recharge(&mut self, id: &PaymentId, reason: &str, now: Timestamp) {
        if let Some(payment) = self.billing.payments.get_mut(id) {
            payment.status = PaymentStatus::Failed;
        }
        self.billing.recharging = None;
        let settings = &mut self.billing.auto_recharge;
        settings.failures += 1;
        settings.not_before = now.saturating_add(RECHARGE_RETRY_DELAY);
        let disabled = settings.failures >= RECHARGE_FAILURES_MAX;
        if disabled {
            settings.enabled = false;
        }
        let alert = Alert::AutoRechargeFailed {
            payment: id.clone(),
            reason: reason.to_string(),
            failures: settings.failures,
            disabled,
        };
        self.notify(alert, now);
    }

    /// Adds a grant with its balance update and its alert. The caller has
    /// checked that it is new and that the wallet has room.
    pub(super) fn credit_grant(
        &mut self,
        request: &crate::GrantRequest,
        expires_at: Option<Timestamp>,
        source: GrantSource,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) {
        self.wallet.insert_grant(Grant {
            id: request.grant.clone(),
            kind: request.kind,
            priority: request.priority,
            expires_at,
            granted: request.credits,
            settled: Credits::ZERO,
            pending_credit: request.credits,
            pending_debit: Credits::ZERO,
            held: Credits::ZERO,
        });
        let cause = crate::DecisionId::derive(&self.id, &request.idempotency_key, now).0;
        self.push_update(
            EventId::derive(cause, "grant", 0),
            BalanceSource::Grant(request.grant.clone()),
            request.credits.signed().expect(BOUNDED),
            BalanceCause::Grant { idempotency_key: request.idempotency_key.clone() },
            now,
            events,
        );
        let alert = Alert::CreditsGranted {
            grant: request.grant.clone(),
            kind: request.kind,
            credits: request.credits,
            source,
        };
        self.notify(alert, now);
    }

    /// Queues an alert. A full outbox drops its oldest, counted.
    pub(super) fn notify(&mut self, alert: Alert, now: Timestamp) {
        if self.billing.outbox.len() >= NOTICES_PER_ACCOUNT_MAX {
            self.billing.outbox.pop_front();
            self.billing.notices_dropped += 1;
        }
        let cause = StableHash::new().field(self.id.as_str().as_bytes()).finish();
        let id = EventId::derive(cause, "notice", self.billing.notices_made);
        self.billing.notices_made += 1;
        self.billing.outbox.push_back(Notice {
            id,
            alert,
            at: now,
            attempts: 0,
            next_attempt: now,
            delivered: Vec::new(),
        });
    }

    /// After anything that moves the available balance: `balance.low` on
    /// the way below the threshold, and a recharge when auto-recharge is on
    /// and the balance is below its minimum.
    pub(super) fn watch_balance(&mut self, catalog: &Catalog, now: Timestamp, available: Credits) {
        let settings = &self.billing.auto_recharge;
        let threshold = if settings.enabled { Some(settings.minimum) } else { catalog.alerts.low_balance };
        let Some(threshold) = threshold else {
            return;
        };
        let below = available < threshold;
        if below && self.billing.above_low {
            self.notify(Alert::BalanceLow { available, threshold }, now);
        }
        self.billing.above_low = !below;
        let settings = &self.billing.auto_recharge;
        if below && settings.enabled && self.billing.recharging.is_none() && now >= settings.not_before {
            self.start_recharge(catalog, now, available);
        }
    }

    fn start_recharge(&mut self, catalog: &Catalog, now: Timestamp, available: Credits) {
        let Some(purchases) = &catalog.purchases else {
            return;
        };
        let missing = self.billing.auto_recharge.target.saturating_sub(available).micros();
        let credits = missing.div_ceil(MICROS_PER_CREDIT).clamp(purchases.min_credits, purchases.max_credits);
        let amount = purchases.price_of(credits).expect("clamped to what may be bought");
        let number = self.billing.recharges_started;
        self.billing.recharges_started += 1;
        let hash = StableHash::new().field(self.id.as_str().as_bytes()).field(b"recharge").number(number).finish();
        let id = PaymentId::new(&format!("rc_{hash:032x}")).expect("a valid id");
        let credits = Credits::from_micros(credits * MICROS_PER_CREDIT);
        let payment = Payment::pending(id.clone(), PaymentOrigin::Recharge, credits, amount, &purchases.currency, now);
        self.billing.payments.insert(id.clone(), payment);
        self.billing.recharging = Some(id);
    }

    /// After a consuming decision: `limit.approaching` and `limit.reached`
    /// for each window whose use crossed the share or the limit with it.
    pub(super) fn watch_windows(
        &mut self,
        catalog: &Catalog,
        subject: &SubjectId,
        applicable: &[Applicable],
        reports: &[WindowReport],
        window_units: u64,
        now: Timestamp,
    ) {
        let share = u128::from(catalog.alerts.limit_approaching_percent);
        for (applicable, report) in applicable.iter().zip(reports) {
            let (limit, used) = (u128::from(report.limit), u128::from(report.used));
            let before = used.saturating_sub(u128::from(window_units) * u128::from(applicable.meter.weight));
            if limit == 0 {
                continue;
            }
            let owner = (applicable.scope == Scope::Subject).then(|| subject.clone());
            if before * 100 < share * limit && used * 100 >= share * limit {
                let alert = Alert::LimitApproaching {
                    subject: owner.clone(),
                    window: report.window.clone(),
                    limit: report.limit,
                    used: report.used,
                    share_percent: catalog.alerts.limit_approaching_percent,
                };
                self.notify(alert, now);
            }
            if before < limit && used >= limit {
                let alert = Alert::LimitReached {
                    subject: owner,
                    window: report.window.clone(),
                    limit: report.limit,
                    used: report.used,
                };
                self.notify(alert, now);
            }
        }
    }

    /// Drops unpaid checkouts that lapsed and paid payments past the time
    /// a refund could come.
    pub(super) fn forget_old_payments(&mut self, now: Timestamp) {
        let recharging = self.billing.recharging.clone();
        self.billing.payments.retain(|id, payment| {
            let kept_for = match payment.status {
                PaymentStatus::Pending | PaymentStatus::Failed => CHECKOUT_RETENTION,
                PaymentStatus::Paid => PAYMENT_RETENTION,
            };
            Some(id) == recharging.as_ref() || payment.created_at.saturating_add(kept_for) > now
        });
    }

    pub(super) fn check_billing_invariants(&self) -> Result<(), String> {
        if let Some(id) = &self.billing.recharging {
            match self.billing.payments.get(id) {
                Some(payment)
                    if payment.status == PaymentStatus::Pending && payment.origin == PaymentOrigin::Recharge => {}
                _ => return Err(format!("the recharge in flight {id} is not a pending recharge")),
            }
        }
        for payment in self.billing.payments.values() {
            let returned = payment.clawed_back.checked_add(payment.unrecovered).map_err(|_| "refunds overflow")?;
            if returned > payment.credits {
                return Err(format!("payment {} returned more credits than it bought", payment.id));
            }
        }
        if self.billing.outbox.len() > NOTICES_PER_ACCOUNT_MAX {
            return Err("the outbox is over its bound".to_string());
        }
        Ok(())
    }
}
