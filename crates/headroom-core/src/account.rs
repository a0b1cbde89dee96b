//! One account's state and the operations on it: decide, reserve, capture,
//! release, add a grant, settle. Each operation is one serializable step:
//! it validates without changing anything, then advances time (expiring
//! reservations, grants and keys), then computes, then applies — and the
//! apply step cannot fail, so an operation happens whole or not at all.

mod billing;

pub use billing::{
    Alert, AutoRecharge, BillingAnswer, BillingOp, BillingView, Charge, GrantSource, Notice, Payment, PaymentOrigin,
    PaymentStatus, Work,
};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

use crate::FastMap;
use std::sync::Arc;

use crate::catalog::{Catalog, Meter, Plan, Price, Scope, WindowSpec};
use crate::decision::*;
use crate::error::CoreError;
use crate::events::*;
use crate::ids::{AccountId, FeatureId, IdempotencyKey, PlanId, SubjectId};
use crate::keys::{HashedKey, KeyTable, Lookup, StoredKey};
use crate::limits::*;
use crate::money::Credits;
use crate::time::{Duration, Timestamp};
use crate::wallet::{Grant, Line, Wallet};
use crate::window::{WindowHold, WindowReport, WindowState};

const BOUNDED: &str = "amounts are bounded by limits so that products and sums fit";

/// Events of a typical consuming call: usage, monetization and a balance
/// update or two, so that the vector is allocated once.
const EVENTS_OF_A_USE: usize = 4;

/// The result of an operation: the answer, whether it is a replay of an
/// earlier answer, and the events to record (none on a replay).
#[derive(Debug, Clone)]
pub struct Outcome<T> {
    pub result: Arc<T>,
    pub replayed: bool,
    pub events: Vec<Event>,
}

/// Window states of one owner (a subject or the account), aligned with the
/// windows of one plan; `None` until first used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WindowSet {
    plan: PlanId,
    states: Vec<Option<WindowState>>,
}

impl WindowSet {
    fn new(plan: &Plan) -> WindowSet {
        WindowSet { plan: plan.id.clone(), states: vec![None; plan.windows.len()] }
    }

    /// Moves to another plan, keeping the state of windows with the same id.
    fn switch_to(&mut self, plan: &Plan, old_plan: Option<&Plan>) {
        let mut states = vec![None; plan.windows.len()];
        if let Some(old_plan) = old_plan {
            for (index, spec) in plan.windows.iter().enumerate() {
                let same = old_plan.windows.iter().position(|old| old.id == spec.id && old.kind == spec.kind);
                if let Some(old_index) = same {
                    states[index] = self.states.get_mut(old_index).and_then(Option::take);
                    if let Some(state) = states[index].as_mut() {
                        state.fit(spec);
                    }
                }
            }
        }
        *self = WindowSet { plan: plan.id.clone(), states };
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SubjectState {
    /// The subject's own plan; `None`: the account's.
    plan: Option<PlanId>,
    windows: WindowSet,
}

/// The windows that apply to one request, kept inline (no allocation on the
/// decision path): at most a plan's windows, from two plans. It keeps the two
/// plans too, so that each window's spec is found by index, not looked up by
/// plan id again at every step.
#[derive(Debug, Clone, Copy)]
struct Applicables<'c> {
    items: [Applicable; 2 * WINDOWS_PER_PLAN_MAX],
    length: usize,
    subject_plan: &'c Plan,
    account_plan: &'c Plan,
}

impl<'c> Applicables<'c> {
    fn new(subject_plan: &'c Plan, account_plan: &'c Plan) -> Applicables<'c> {
        let empty = Applicable { scope: Scope::Subject, meter: Meter { window: 0, weight: 0 } };
        Applicables { items: [empty; 2 * WINDOWS_PER_PLAN_MAX], length: 0, subject_plan, account_plan }
    }

    fn push(&mut self, applicable: Applicable) {
        self.items[self.length] = applicable;
        self.length += 1;
    }

    /// The spec of an applicable window, from the plan of its scope.
    fn spec(&self, applicable: Applicable) -> &'c WindowSpec {
        let plan = match applicable.scope {
            Scope::Subject => self.subject_plan,
            Scope::Account => self.account_plan,
        };
        &plan.windows[applicable.meter.window]
    }
}

impl std::ops::Deref for Applicables<'_> {
    type Target = [Applicable];
    fn deref(&self) -> &[Applicable] {
        &self.items[..self.length]
    }
}

/// A window that applies to a request: whose it is, which one, and the
/// weight of one unit of the feature in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Applicable {
    scope: Scope,
    meter: Meter,
}

/// The two window sets a request reads, its subject's and its account's,
/// found once per operation rather than again at every window.
#[derive(Clone, Copy)]
struct WindowStates<'a> {
    subject: &'a WindowSet,
    account: &'a WindowSet,
}

impl<'a> WindowStates<'a> {
    /// The state of an applicable window: `None` until first used.
    fn state(self, applicable: Applicable) -> &'a Option<WindowState> {
        let set = match applicable.scope {
            Scope::Subject => self.subject,
            Scope::Account => self.account,
        };
        &set.states[applicable.meter.window]
    }

    /// Units of `quantity` the windows can cover: the least any of them
    /// has left; none when no window applies.
    fn cover(self, applicable: &Applicables, quantity: u64, now: Timestamp) -> u64 {
        if applicable.is_empty() {
            return 0;
        }
        applicable.iter().fold(quantity, |cover, one| {
            let spec = applicable.spec(*one);
            let remaining = self.state(*one).as_ref().map_or(spec.capacity, |state| state.remaining(spec, now));
            cover.min(remaining / one.meter.weight)
        })
    }

    fn reports(self, applicable: &Applicables, now: Timestamp) -> Vec<WindowReport> {
        let mut reports = Vec::with_capacity(applicable.len());
        for one in applicable.iter() {
            let spec = applicable.spec(*one);
            reports.push(match self.state(*one) {
                Some(state) => state.report(spec, now),
                None => WindowState::new(spec, now).report(spec, now),
            });
        }
        reports
    }
}

/// The windows that apply to a use of `feature` by the owner of `states`:
/// the subject's own (from its plan) and the account's (from the account's plan).
fn applicable<'c>(catalog: &'c Catalog, states: WindowStates, feature: &FeatureId) -> Applicables<'c> {
    let account_plan = &catalog.plans[&states.account.plan];
    let account_meters = catalog.meters(&account_plan.id, feature);
    // Most subjects are on their account's plan: looked up once, then.
    let (subject_plan, subject_meters) = if states.subject.plan == states.account.plan {
        (account_plan, account_meters)
    } else {
        let plan = &catalog.plans[&states.subject.plan];
        (plan, catalog.meters(&plan.id, feature))
    };
    let mut applicable = Applicables::new(subject_plan, account_plan);
    let owners = [(subject_plan, subject_meters, Scope::Subject), (account_plan, account_meters, Scope::Account)];
    for (plan, meters, scope) in owners {
        for meter in meters.iter().filter(|meter| plan.windows[meter.window].scope == scope) {
            applicable.push(Applicable { scope, meter: *meter });
        }
    }
    applicable
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    subject: SubjectId,
    feature: FeatureId,
    quantity: u64,
    price: Credits,
    window_units: u64,
    /// Per window: where its units were counted.
    window_holds: Vec<(Scope, crate::WindowId, u64, WindowHold)>,
    /// Credits held per line, in waterfall order.
    credit_holds: Vec<(BalanceSource, Credits)>,
    expires_at: Timestamp,
}

/// How credits would cover the part of a request beyond the windows.
enum CreditCover {
    Covered(Vec<(Line, Credits)>),
    Short(Credits),
    /// The feature's price is 0: it cannot be bought, windows are the limit.
    NotForSale,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    id: AccountId,
    plan: PlanId,
    overdraft_override: Option<Credits>,
    /// The latest time this account has seen; a clock step back is clamped to it.
    last_seen: Timestamp,
    subjects: FastMap<SubjectId, SubjectState>,
    windows: WindowSet,
    wallet: Wallet,
    reservations: FastMap<ReservationId, Reservation>,
    reservation_expiries: BTreeSet<(Timestamp, ReservationId)>,
    keys: KeyTable,
    /// Sequence of the next balance update.
    next_sequence: u64,
    /// Sequence of the last settled balance update.
    settled_through: u64,
    /// Sum of every settled delta less corrections: the ledger's view of the
    /// balance, which conservation compares with the wallet's.
    ledger_balance: i128,
    /// Settled corrections: debits that found less than they expected.
    written_off: Credits,
    /// Ids of grants dropped once spent and settled: never reused, so that
    /// a grant (a payment) cannot arrive twice under its id.
    retired_grants: std::collections::BTreeSet<crate::GrantId>,
    billing: billing::Billing,
}

impl AccountState {
    /// Opens an account on `plan`; its included grants arrive as events.
    pub fn open(
        catalog: &Catalog,
        id: AccountId,
        plan: &PlanId,
        overdraft: Option<Credits>,
        now: Timestamp,
    ) -> Result<(AccountState, Vec<Event>), CoreError> {
        let plan_spec = catalog.plans.get(plan).ok_or_else(|| CoreError::UnknownPlan(plan.clone()))?;
        let mut account = AccountState {
            id,
            plan: plan.clone(),
            overdraft_override: overdraft,
            last_seen: now,
            subjects: FastMap::default(),
            windows: WindowSet::new(plan_spec),
            wallet: Wallet::default(),
            reservations: FastMap::default(),
            reservation_expiries: BTreeSet::new(),
            keys: KeyTable::default(),
            next_sequence: 1,
            settled_through: 0,
            ledger_balance: 0,
            written_off: Credits::ZERO,
            retired_grants: std::collections::BTreeSet::new(),
            billing: billing::Billing::default(),
        };
        account.wallet.overdraft.limit = overdraft.unwrap_or(plan_spec.overdraft);
        let mut events = Vec::new();
        for (index, included) in plan_spec.included_grants.iter().enumerate() {
            let request = GrantRequest {
                grant: crate::GrantId::new(&format!("{}.included.{index}", plan)).expect("plan ids are ids"),
                kind: included.kind,
                credits: included.credits,
                priority: included.priority,
                expires_at: included
                    .expires_after
                    .or(catalog.settings.default_grant_expiry)
                    .map(|after| now.saturating_add(after)),
                idempotency_key: IdempotencyKey::new(&format!("open.{plan}.grant.{index}")).expect("keys"),
            };
            let outcome = account.add_grant_from(catalog, &request, now, GrantSource::Plan)?;
            events.extend(outcome.events);
        }
        Ok((account, events))
    }

    pub fn id(&self) -> &AccountId {
        &self.id
    }

    pub fn plan(&self) -> &PlanId {
        &self.plan
    }

    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }

    pub fn last_seen(&self) -> Timestamp {
        self.last_seen
    }

    pub fn subjects(&self) -> impl Iterator<Item = &SubjectId> {
        self.subjects.keys()
    }

    pub fn open_reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Balance updates decided but not settled yet.
    pub fn unsettled(&self) -> u64 {
        self.next_sequence - 1 - self.settled_through
    }

    pub fn settled_through(&self) -> u64 {
        self.settled_through
    }

    /// Adds a subject, or changes its plan. Its windows keep their state
    /// where the new plan has the same window.
    pub fn put_subject(
        &mut self,
        catalog: &Catalog,
        subject: SubjectId,
        plan: Option<PlanId>,
    ) -> Result<(), CoreError> {
        let effective = plan.as_ref().unwrap_or(&self.plan);
        let plan_spec = catalog.plans.get(effective).ok_or_else(|| CoreError::UnknownPlan(effective.clone()))?;
        match self.subjects.get_mut(&subject) {
            Some(state) => {
                let old_plan = catalog.plans.get(&state.windows.plan);
                state.windows.switch_to(plan_spec, old_plan);
                state.plan = plan;
            }
            None => {
                let windows = WindowSet::new(plan_spec);
                self.subjects.insert(subject, SubjectState { plan, windows });
            }
        }
        Ok(())
    }

    /// Changes the account's plan and overdraft. Lowering the overdraft below
    /// what is already committed against it is refused.
    pub fn set_plan(&mut self, catalog: &Catalog, plan: &PlanId, overdraft: Option<Credits>) -> Result<(), CoreError> {
        let plan_spec = catalog.plans.get(plan).ok_or_else(|| CoreError::UnknownPlan(plan.clone()))?;
        let limit = overdraft.unwrap_or(plan_spec.overdraft);
        let overdraft_line = &self.wallet.overdraft;
        let committed = overdraft_line
            .settled_used
            .checked_add(overdraft_line.pending_debit)
            .and_then(|sum| sum.checked_add(overdraft_line.held))
            .expect(BOUNDED);
        if limit < committed {
            return Err(CoreError::InvalidGrant(format!(
                "overdraft {limit} is below the {committed} already committed against it"
            )));
        }
        let old_plan = catalog.plans.get(&self.plan);
        self.windows.switch_to(plan_spec, old_plan);
        for subject in self.subjects.values_mut().filter(|subject| subject.plan.is_none()) {
            subject.windows.switch_to(plan_spec, old_plan);
        }
        self.plan = plan.clone();
        self.overdraft_override = overdraft;
        self.wallet.overdraft.limit = limit;
        Ok(())
    }

    // ----- Operations -----

    pub fn decide(
        &mut self,
        catalog: &Catalog,
        request: &DecisionRequest,
        now: Timestamp,
    ) -> Result<Outcome<Decision>, CoreError> {
        self.prefetch_use();
        let now = now.max(self.last_seen);
        let key = match (&request.idempotency_key, request.preview) {
            (Some(key), _) => Some(self.keys.hashed(key)),
            (None, true) => None,
            (None, false) => return Err(CoreError::IdempotencyKeyRequired),
        };
        if let Some(key) = key {
            self.keys.prefetch(key);
        }
        let fingerprint = Fingerprinted::Decide(request).fingerprint();
        if let Some(key) = key
            && let Some(replay) = self.replay(key, fingerprint, now)?
        {
            return replay_decision(replay);
        }
        let price =
            self.validate_use(catalog, &request.subject, &request.feature, request.quantity, &request.attributes)?;
        let mut events = Vec::with_capacity(EVENTS_OF_A_USE);
        self.advance(catalog, now, &mut events);

        let states = self.window_states(&request.subject);
        let applicable = applicable(catalog, states, &request.feature);
        let window_units = states.cover(&applicable, request.quantity, now);
        let credit_units = request.quantity - window_units;
        let id = match key {
            Some(key) => DecisionId::derive(&self.id, key.key, now),
            None => DecisionId::derive(&self.id, &IdempotencyKey::new("preview").expect("valid"), now),
        };
        let kind = if request.preview { DecisionKind::Preview } else { DecisionKind::Decide };
        let mut decision =
            self.blank_decision(id, kind, &request.subject, &request.feature, request.quantity, price, now);
        match self.credit_cover(credit_units, price, now) {
            CreditCover::Covered(takes) => {
                decision.allowed = true;
                decision.sources = self.sources(window_units, &takes, price);
                decision.credits_charged = total_credits(&takes);
                decision.reason = reason_of(&decision.sources);
                if !request.preview {
                    self.consume_windows(&request.subject, &applicable, window_units, now, |_, _, _| {});
                    for (line, credits) in &takes {
                        self.wallet.add_pending_debit(*line, *credits);
                    }
                    let key = key.expect("a consuming decision has a key");
                    self.record_usage(&decision, key.key, window_units, Credits::ZERO, &takes, &mut events);
                }
            }
            CreditCover::Short(short) => self.deny(&mut decision, short, &applicable, now),
            CreditCover::NotForSale => self.deny(&mut decision, Credits::ZERO, &applicable, now),
        }
        decision.windows = self.window_states(&request.subject).reports(&applicable, now);
        decision.available = self.wallet.available(now);
        if decision.allowed && !request.preview && window_units > 0 {
            self.watch_windows(catalog, &request.subject, &applicable, &decision.windows, window_units, now);
        }
        self.finish(catalog, key, fingerprint, now, decision, events)
    }

    pub fn reserve(
        &mut self,
        catalog: &Catalog,
        request: &ReserveRequest,
        now: Timestamp,
    ) -> Result<Outcome<Decision>, CoreError> {
        self.prefetch_use();
        let now = now.max(self.last_seen);
        let key = self.keys.hashed(&request.idempotency_key);
        self.keys.prefetch(key);
        let fingerprint = Fingerprinted::Reserve(request).fingerprint();
        if let Some(replay) = self.replay(key, fingerprint, now)? {
            return replay_decision(replay);
        }
        let price =
            self.validate_use(catalog, &request.subject, &request.feature, request.quantity, &request.attributes)?;
        let lifetime = request.lifetime.unwrap_or(RESERVATION_LIFETIME_DEFAULT);
        if lifetime == Duration::ZERO || lifetime > RESERVATION_LIFETIME_MAX {
            return Err(CoreError::InvalidLifetime(format!(
                "must be between 1 ms and {} ms",
                RESERVATION_LIFETIME_MAX.millis()
            )));
        }
        if self.reservations.len() >= RESERVATIONS_PER_ACCOUNT_MAX {
            return Err(CoreError::TooManyReservations);
        }
        let mut events = Vec::with_capacity(EVENTS_OF_A_USE);
        self.advance(catalog, now, &mut events);

        let states = self.window_states(&request.subject);
        let applicable = applicable(catalog, states, &request.feature);
        let window_units = states.cover(&applicable, request.quantity, now);
        let id = DecisionId::derive(&self.id, &request.idempotency_key, now);
        let mut decision = self.blank_decision(
            id,
            DecisionKind::Reserve,
            &request.subject,
            &request.feature,
            request.quantity,
            price,
            now,
        );
        match self.credit_cover(request.quantity - window_units, price, now) {
            CreditCover::Covered(takes) => {
                decision.allowed = true;
                decision.sources = self.sources(window_units, &takes, price);
                decision.credits_charged = total_credits(&takes);
                decision.reason = reason_of(&decision.sources);
                let mut window_holds = Vec::with_capacity(applicable.len());
                self.consume_windows(&request.subject, &applicable, window_units, now, |applicable, spec, hold| {
                    window_holds.push((applicable.scope, spec.id.clone(), applicable.meter.weight, hold))
                });
                for (line, credits) in &takes {
                    self.wallet.hold(*line, *credits);
                }
                let expires_at = now.saturating_add(lifetime);
                let credit_holds = takes.iter().map(|(line, credits)| (self.wallet.source(*line), *credits)).collect();
                self.reservations.insert(
                    id,
                    Reservation {
                        subject: request.subject.clone(),
                        feature: request.feature.clone(),
                        quantity: request.quantity,
                        price,
                        window_units,
                        window_holds,
                        credit_holds,
                        expires_at,
                    },
                );
                self.reservation_expiries.insert((expires_at, id));
                decision.reservation = Some(ReservationInfo { id, account: self.id.clone(), expires_at });
            }
            CreditCover::Short(short) => self.deny(&mut decision, short, &applicable, now),
            CreditCover::NotForSale => self.deny(&mut decision, Credits::ZERO, &applicable, now),
        }
        decision.windows = self.window_states(&request.subject).reports(&applicable, now);
        decision.available = self.wallet.available(now);
        if decision.allowed && window_units > 0 {
            self.watch_windows(catalog, &request.subject, &applicable, &decision.windows, window_units, now);
        }
        self.finish(catalog, Some(key), fingerprint, now, decision, events)
    }

    /// Settles a reservation at the actual quantity. Less than the estimate
    /// returns the rest; more takes the extra from the waterfall; what even
    /// that cannot cover is written off (the work is done) and said so.
    pub fn capture(
        &mut self,
        catalog: &Catalog,
        request: &CaptureRequest,
        now: Timestamp,
    ) -> Result<Outcome<Decision>, CoreError> {
        let now = now.max(self.last_seen);
        let fingerprint = Fingerprinted::Capture(request).fingerprint();
        let key = self.keys.hashed(&request.idempotency_key);
        if let Some(replay) = self.replay(key, fingerprint, now)? {
            return replay_decision(replay);
        }
        validate_quantity(request.quantity, true)?;
        self.open_reservation(&request.reservation, now)?;
        let reservation = self.reservations.get(&request.reservation).expect("checked open");
        price_of_units(request.quantity, reservation.price)?;
        if !self.subjects.contains_key(&reservation.subject) {
            return Err(CoreError::UnknownSubject(reservation.subject.clone()));
        }
        let mut events = Vec::with_capacity(EVENTS_OF_A_USE);
        self.advance(catalog, now, &mut events);
        let reservation = self.take_reservation(&request.reservation);
        let price = reservation.price;
        let actual = request.quantity;

        // 1. Held window units first, returning what the actual did not use.
        let from_window_hold = actual.min(reservation.window_units);
        self.return_window_units(catalog, &reservation, reservation.window_units - from_window_hold, now);
        // 2. Then held credits, releasing the rest.
        let held_units = reservation.quantity - reservation.window_units;
        let from_credit_hold = (actual - from_window_hold).min(held_units);
        let mut left = price_of_units(from_credit_hold, price).expect(BOUNDED);
        let mut takes: Vec<(Line, Credits)> = Vec::new();
        for (source, held) in &reservation.credit_holds {
            let line = self.wallet.line_of(source).expect("held grants are never removed");
            let take = left.min(*held);
            left = left.checked_sub(take).expect("take <= left");
            self.wallet.unhold(line, *held);
            if !take.is_zero() {
                self.wallet.add_pending_debit(line, take);
                takes.push((line, take));
            }
        }
        // 3. Anything above the estimate flows down the waterfall like a new request.
        let extra = actual - from_window_hold - from_credit_hold;
        let states = self.window_states(&reservation.subject);
        let applicable = applicable(catalog, states, &reservation.feature);
        let extra_window_units = states.cover(&applicable, extra, now);
        self.consume_windows(&reservation.subject, &applicable, extra_window_units, now, |_, _, _| {});
        let extra_credit_units = extra - extra_window_units;
        let wanted = price_of_units(extra_credit_units, price).expect(BOUNDED);
        let available = self.wallet.available(now).min(wanted);
        let extra_takes = self.wallet.plan_takes(now, available).expect("takes at most what is available");
        for (line, credits) in &extra_takes {
            self.wallet.add_pending_debit(*line, *credits);
        }
        merge_takes(&mut takes, extra_takes);
        let write_off = wanted.checked_sub(available).expect("available <= wanted");
        let write_off_units_without_price = if price.is_zero() { extra_credit_units } else { 0 };

        let window_units = from_window_hold + extra_window_units;
        let id = DecisionId::derive(&self.id, &request.idempotency_key, now);
        let mut decision = self.blank_decision(
            id,
            DecisionKind::Capture,
            &reservation.subject,
            &reservation.feature,
            actual,
            price,
            now,
        );
        decision.allowed = true;
        decision.sources = self.sources(window_units, &takes, price);
        if !write_off.is_zero() || write_off_units_without_price > 0 {
            let counted: u64 = decision.sources.iter().map(|used| used.units).sum();
            decision.sources.push(SourceUse { source: Source::WriteOff, units: actual - counted, credits: write_off });
        }
        decision.credits_charged = total_credits(&takes);
        decision.reason = reason_of(&decision.sources);
        decision.reservation = Some(ReservationInfo {
            id: request.reservation,
            account: self.id.clone(),
            expires_at: reservation.expires_at,
        });
        self.record_usage(&decision, &request.idempotency_key, window_units, write_off, &takes, &mut events);
        self.expire_grants(now, &mut events);
        decision.windows = self.window_states(&reservation.subject).reports(&applicable, now);
        decision.available = self.wallet.available(now);
        self.finish(catalog, Some(key), fingerprint, now, decision, events)
    }

    pub fn release(
        &mut self,
        catalog: &Catalog,
        request: &ReleaseRequest,
        now: Timestamp,
    ) -> Result<Outcome<Released>, CoreError> {
        let now = now.max(self.last_seen);
        let fingerprint = Fingerprinted::Release(request).fingerprint();
        let key = self.keys.hashed(&request.idempotency_key);
        match self.replay(key, fingerprint, now)? {
            Some(Recorded::Released(released)) => {
                return Ok(Outcome { result: released, replayed: true, events: Vec::new() });
            }
            Some(_) => unreachable!("a fingerprint names its operation"),
            None => {}
        }
        self.open_reservation(&request.reservation, now)?;
        let mut events = Vec::new();
        self.advance(catalog, now, &mut events);
        let released = self.release_reservation(catalog, &request.reservation, now, &mut events);
        self.watch(catalog, now);
        let released = Arc::new(released);
        self.remember(catalog, key, fingerprint, now, Recorded::Released(released.clone()));
        Ok(Outcome { result: released, replayed: false, events })
    }

    pub fn add_grant(
        &mut self,
        catalog: &Catalog,
        request: &GrantRequest,
        now: Timestamp,
    ) -> Result<Outcome<GrantAdded>, CoreError> {
        self.add_grant_from(catalog, request, now, GrantSource::Admin)
    }

    fn add_grant_from(
        &mut self,
        catalog: &Catalog,
        request: &GrantRequest,
        now: Timestamp,
        source: GrantSource,
    ) -> Result<Outcome<GrantAdded>, CoreError> {
        let now = now.max(self.last_seen);
        let fingerprint = Fingerprinted::Grant(request).fingerprint();
        let key = self.keys.hashed(&request.idempotency_key);
        match self.replay(key, fingerprint, now)? {
            Some(Recorded::GrantAdded(added)) => {
                return Ok(Outcome { result: added, replayed: true, events: Vec::new() });
            }
            Some(_) => unreachable!("a fingerprint names its operation"),
            None => {}
        }
        if request.credits.is_zero() || request.credits.micros() > GRANT_MICROS_MAX {
            return Err(CoreError::InvalidGrant(format!(
                "credits must be between 1 and {GRANT_MICROS_MAX} micro-credits"
            )));
        }
        let expires_at =
            request.expires_at.or_else(|| catalog.settings.default_grant_expiry.map(|after| now.saturating_add(after)));
        if expires_at.is_some_and(|expiry| expiry <= now) {
            return Err(CoreError::InvalidGrant("expires_at must be in the future".to_string()));
        }
        if self.wallet.grant_index(&request.grant).is_some() || self.retired_grants.contains(&request.grant) {
            return Err(CoreError::GrantExists(request.grant.clone()));
        }
        // Counted before advancing, which may drop spent grants: a refusal
        // must change nothing, and the next operation's advance frees room.
        if self.wallet.grants.len() >= GRANTS_PER_ACCOUNT_MAX {
            return Err(CoreError::TooManyGrants);
        }
        let mut events = Vec::new();
        self.advance(catalog, now, &mut events);
        self.credit_grant(request, expires_at, source, now, &mut events);
        self.watch(catalog, now);
        let added = Arc::new(GrantAdded {
            grant: request.grant.clone(),
            kind: request.kind,
            credits: request.credits,
            expires_at,
            available: self.wallet.available(now),
        });
        self.remember(catalog, key, fingerprint, now, Recorded::GrantAdded(added.clone()));
        Ok(Outcome { result: added, replayed: false, events })
    }

    /// Applies one balance update to the balance of record. Idempotent:
    /// an update settled before changes nothing. Updates settle in sequence.
    pub fn settle(&mut self, update: &BalanceUpdate) -> Result<Settlement, SettleError> {
        if update.account != self.id {
            return Err(SettleError::WrongAccount { update: update.account.clone(), account: self.id.clone() });
        }
        if update.sequence <= self.settled_through {
            return Ok(Settlement::AlreadySettled);
        }
        if update.sequence != self.settled_through + 1 {
            return Err(SettleError::OutOfOrder { expected: self.settled_through + 1, got: update.sequence });
        }
        let line = self.wallet.line_of(&update.source).ok_or(SettleError::UnknownSource(update.source.clone()))?;
        let amount = Credits::from_micros(update.delta.unsigned_abs());
        let mut write_off = Credits::ZERO;
        match (line, update.delta >= 0) {
            (Line::Grant(index), true) => {
                let grant = &mut self.wallet.grants[index];
                grant.pending_credit = grant.pending_credit.checked_sub(amount).expect("settles what was pending");
                grant.settled = grant.settled.checked_add(amount).expect(BOUNDED);
            }
            (Line::Grant(index), false) => {
                let grant = &mut self.wallet.grants[index];
                grant.pending_debit = grant.pending_debit.checked_sub(amount).expect("settles what was pending");
                // Overshoot correction: a debit never takes a grant below zero;
                // what it could not take is recorded as written off.
                write_off = amount.saturating_sub(grant.settled);
                grant.settled = grant.settled.saturating_sub(amount);
            }
            (Line::Overdraft, false) => {
                let overdraft = &mut self.wallet.overdraft;
                overdraft.pending_debit =
                    overdraft.pending_debit.checked_sub(amount).expect("settles what was pending");
                let used = overdraft.settled_used.checked_add(amount).expect(BOUNDED);
                write_off = used.saturating_sub(overdraft.limit);
                overdraft.settled_used = used.checked_sub(write_off).expect("write_off <= used");
            }
            (Line::Overdraft, true) => {
                return Err(SettleError::UnknownSource(update.source.clone()));
            }
        }
        self.settled_through = update.sequence;
        self.ledger_balance += i128::from(update.delta) + i128::from(write_off.micros());
        self.written_off = self.written_off.checked_add(write_off).expect(BOUNDED);
        Ok(Settlement::Applied { write_off })
    }

    /// Moves the account to `now`: expires reservations and grants, forgets
    /// keys past retention, drops grants that are spent and settled. The
    /// store may call it on its own (a sweep); every operation calls it first.
    pub fn advance(&mut self, catalog: &Catalog, now: Timestamp, events: &mut Vec<Event>) {
        let now = now.max(self.last_seen);
        self.last_seen = now;
        while let Some(&(expires_at, id)) = self.reservation_expiries.first() {
            if expires_at > now {
                break;
            }
            self.release_reservation(catalog, &id, now, events);
        }
        self.expire_grants(now, events);
        self.keys.forget_expired(now);
        let retired = &mut self.retired_grants;
        self.wallet.grants.retain(|grant| {
            let spent = grant.settled.is_zero()
                && grant.pending_credit.is_zero()
                && grant.pending_debit.is_zero()
                && grant.held.is_zero();
            if spent {
                retired.insert(grant.id.clone());
            }
            !spent
        });
    }

    /// Looks at the balance after a change that did not go through an
    /// operation (a sweep): alerts and recharges that it calls for.
    pub fn watch(&mut self, catalog: &Catalog, now: Timestamp) {
        let now = now.max(self.last_seen);
        let available = self.wallet.available(now);
        self.watch_balance(catalog, now, available);
    }

    /// Puts back idempotency keys kept outside the state (a database
    /// table): the operations that follow see them as if never taken out.
    pub fn restore_keys(&mut self, keys: impl IntoIterator<Item = StoredKey>) {
        for key in keys {
            self.keys.restore(key);
        }
    }

    /// Takes every remembered key out of the state, for a store that keeps
    /// keys in a table of their own instead of in the state.
    pub fn take_keys(&mut self) -> Vec<StoredKey> {
        self.keys.drain()
    }

    /// The next time something happens to this account without a request:
    /// the earliest expiry of an open reservation or of a grant with
    /// credits left. A store's sweep advances the account then.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let reservation = self.reservation_expiries.first().map(|(expires_at, _)| *expires_at);
        // A grant that expired by the last advance already lapsed: what it
        // still holds returns with its reservation, whose expiry counts.
        let grant = self
            .wallet
            .grants
            .iter()
            .filter(|grant| !grant.available().is_zero() || !grant.held.is_zero())
            .filter_map(|grant| grant.expires_at)
            .filter(|expires_at| *expires_at > self.last_seen)
            .min();
        reservation.into_iter().chain(grant).min()
    }

    /// What a subject sees: every window of its plan and its account's, and the wallet.
    pub fn usage(&self, catalog: &Catalog, subject: &SubjectId, now: Timestamp) -> Result<Usage, CoreError> {
        let now = now.max(self.last_seen);
        let state = self.subjects.get(subject).ok_or_else(|| CoreError::UnknownSubject(subject.clone()))?;
        let mut windows = Vec::new();
        let owners = [(&state.windows, Scope::Subject), (&self.windows, Scope::Account)];
        for (set, scope) in owners {
            let plan = &catalog.plans[&set.plan];
            for (index, spec) in plan.windows.iter().enumerate().filter(|(_, spec)| spec.scope == scope) {
                let report = match &set.states[index] {
                    Some(window) => window.report(spec, now),
                    None => WindowState::new(spec, now).report(spec, now),
                };
                windows.push(report);
            }
        }
        let grants = self.wallet.grants.iter().filter(|grant| !grant.is_expired(now)).cloned().collect();
        Ok(Usage {
            windows,
            available: self.wallet.available(now),
            grants,
            settled_balance: self.wallet.settled_balance(),
        })
    }

    // ----- Invariants -----

    /// Every invariant that one account's state can show on its own.
    pub fn check_invariants(&self, catalog: &Catalog) -> Result<(), String> {
        self.wallet.check()?;
        self.check_billing_invariants()?;
        let sets = self.subjects.values().map(|subject| &subject.windows).chain(std::iter::once(&self.windows));
        for set in sets {
            let plan = &catalog.plans[&set.plan];
            for (spec, state) in plan.windows.iter().zip(&set.states) {
                if let Some(state) = state {
                    state.check(spec)?;
                }
            }
        }
        // Conservation: the wallet's balance of record equals the ledger's.
        if self.wallet.settled_balance() != self.ledger_balance {
            return Err(format!(
                "account {}: wallet balance {} != ledger balance {}",
                self.id,
                self.wallet.settled_balance(),
                self.ledger_balance
            ));
        }
        // Every hold is owned by exactly one open reservation.
        let mut holds: HashMap<&BalanceSource, Credits> = HashMap::new();
        for reservation in self.reservations.values() {
            for (source, credits) in &reservation.credit_holds {
                let sum = holds.entry(source).or_default();
                *sum = sum.checked_add(*credits).expect(BOUNDED);
            }
        }
        for (index, grant) in self.wallet.grants.iter().enumerate() {
            let source = self.wallet.source(Line::Grant(index));
            if holds.get(&source).copied().unwrap_or_default() != grant.held {
                return Err(format!(
                    "grant {}: held {:?} but reservations hold {:?}",
                    grant.id,
                    grant.held,
                    holds.get(&source)
                ));
            }
        }
        if holds.get(&BalanceSource::Overdraft).copied().unwrap_or_default() != self.wallet.overdraft.held {
            return Err("overdraft holds do not match the reservations".to_string());
        }
        if self.reservations.len() != self.reservation_expiries.len() {
            return Err("reservation expiry index out of step".to_string());
        }
        if self.keys.len() > IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX {
            return Err("more idempotency keys than the bound".to_string());
        }
        Ok(())
    }

    // ----- Steps shared by the operations -----

    /// Loads the place of `key` in the key table, for [`Engine::prefetch_key`].
    ///
    /// [`Engine::prefetch_key`]: crate::Engine::prefetch_key
    pub(crate) fn prefetch_key(&self, key: &IdempotencyKey) {
        self.keys.prefetch(self.keys.hashed(key));
    }

    /// Starts loading what every use of a feature reads outside the hash
    /// tables, so that those misses overlap the tables': the grants and the
    /// account's windows. (Looking the subject up here as well, to prefetch
    /// its windows, measured slower: the lookup waits for its miss.)
    fn prefetch_use(&self) {
        crate::prefetch(self.wallet.grants.as_ptr());
        crate::prefetch(self.windows.states.as_ptr());
    }

    /// The stored answer if `key` was used with the same request; a conflict
    /// if with another. Checks room for a new key.
    fn replay(&self, key: HashedKey, fingerprint: u128, now: Timestamp) -> Result<Option<Recorded>, CoreError> {
        match self.keys.lookup(key, fingerprint, now) {
            Lookup::Replay(recorded) => Ok(Some(recorded)),
            Lookup::Conflict => Err(CoreError::IdempotencyConflict(key.key.clone())),
            Lookup::New if !self.keys.has_room(now) => Err(CoreError::IdempotencyCapacity),
            Lookup::New => Ok(None),
        }
    }

    fn remember(&mut self, catalog: &Catalog, key: HashedKey, fingerprint: u128, now: Timestamp, recorded: Recorded) {
        let expires_at = now.saturating_add(catalog.settings.idempotency_retention);
        self.keys.record(key, fingerprint, expires_at, recorded);
    }

    fn finish(
        &mut self,
        catalog: &Catalog,
        key: Option<HashedKey>,
        fingerprint: u128,
        now: Timestamp,
        decision: Decision,
        events: Vec<Event>,
    ) -> Result<Outcome<Decision>, CoreError> {
        debug_assert_eq!(decision.check(), Ok(()));
        if decision.kind != DecisionKind::Preview {
            self.watch_balance(catalog, now, decision.available);
        }
        let decision = Arc::new(decision);
        if let Some(key) = key {
            self.remember(catalog, key, fingerprint, now, Recorded::Decision(decision.clone()));
        }
        Ok(Outcome { result: decision, replayed: false, events })
    }

    /// Checks a request to use a feature and returns the price of one unit.
    fn validate_use(
        &self,
        catalog: &Catalog,
        subject: &SubjectId,
        feature: &FeatureId,
        quantity: u64,
        attributes: &Attributes,
    ) -> Result<Credits, CoreError> {
        if !self.subjects.contains_key(subject) {
            return Err(CoreError::UnknownSubject(subject.clone()));
        }
        let feature_spec = catalog.features.get(feature).ok_or_else(|| CoreError::UnknownFeature(feature.clone()))?;
        validate_quantity(quantity, false)?;
        let price = match &feature_spec.price {
            Price::Flat(price) => *price,
            Price::ByAttribute { attribute, prices, default } => match attributes.get(attribute) {
                Some(value) => *prices.get(value).ok_or_else(|| CoreError::UnknownAttributeValue {
                    feature: feature.clone(),
                    attribute: attribute.clone(),
                    value: value.to_string(),
                })?,
                None => default.ok_or_else(|| CoreError::MissingAttribute {
                    feature: feature.clone(),
                    attribute: attribute.clone(),
                })?,
            },
        };
        price_of_units(quantity, price)?;
        Ok(price)
    }

    fn open_reservation(&self, id: &ReservationId, now: Timestamp) -> Result<(), CoreError> {
        match self.reservations.get(id) {
            Some(reservation) if reservation.expires_at > now => Ok(()),
            _ => Err(CoreError::UnknownReservation(*id)),
        }
    }

    fn take_reservation(&mut self, id: &ReservationId) -> Reservation {
        let reservation = self.reservations.remove(id).expect("the reservation is open");
        self.reservation_expiries.remove(&(reservation.expires_at, *id));
        reservation
    }

    fn release_reservation(
        &mut self,
        catalog: &Catalog,
        id: &ReservationId,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Released {
        let reservation = self.take_reservation(id);
        self.return_window_units(catalog, &reservation, reservation.window_units, now);
        let mut credits_returned = Credits::ZERO;
        for (source, held) in &reservation.credit_holds {
            let line = self.wallet.line_of(source).expect("held grants are never removed");
            self.wallet.unhold(line, *held);
            credits_returned = credits_returned.checked_add(*held).expect(BOUNDED);
        }
        // Credits held on a grant that expired meanwhile lapse now.
        self.expire_grants(now, events);
        Released {
            reservation: *id,
            window_units_returned: reservation.window_units,
            credits_returned,
            released_at: now,
        }
    }

    fn return_window_units(&mut self, catalog: &Catalog, reservation: &Reservation, units: u64, now: Timestamp) {
        if units == 0 {
            return;
        }
        // By window id: the plan may have changed since the reservation, and
        // a window it no longer has lets its units lapse.
        for (scope, window, weight, hold) in &reservation.window_holds {
            let set = self.window_set_mut(&reservation.subject, *scope);
            let windows = &catalog.plans[&set.plan].windows;
            let Some(index) = windows.iter().position(|spec| &spec.id == window && spec.scope == *scope) else {
                continue;
            };
            if let Some(state) = set.states[index].as_mut() {
                state.release(&windows[index], now, *hold, units * weight);
            }
        }
    }

    /// Unspent credits of expired grants lapse, each with an expiry entry.
    fn expire_grants(&mut self, now: Timestamp, events: &mut Vec<Event>) {
        for index in 0..self.wallet.grants.len() {
            let grant = &self.wallet.grants[index];
            if !grant.is_expired(now) || grant.available().is_zero() {
                continue;
            }
            let lapsed = grant.available();
            let (id, source) = (grant.id.clone(), self.wallet.source(Line::Grant(index)));
            self.wallet.add_pending_debit(Line::Grant(index), lapsed);
            let cause = crate::fingerprint::StableHash::new()
                .field(self.id.as_str().as_bytes())
                .field(id.as_str().as_bytes())
                .number(self.next_sequence)
                .finish();
            let delta = -lapsed.signed().expect(BOUNDED);
            self.push_update(EventId::derive(cause, "expiry", 0), source, delta, BalanceCause::Expiry, now, events);
            self.notify(Alert::CreditsExpired { grant: id, credits: lapsed }, now);
        }
    }

    fn push_update(
        &mut self,
        id: EventId,
        source: BalanceSource,
        delta: i64,
        cause: BalanceCause,
        at: Timestamp,
        events: &mut Vec<Event>,
    ) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        events.push(Event::Balance(BalanceUpdate { id, sequence, account: self.id.clone(), source, delta, cause, at }));
    }

    /// Usage, monetization and balance updates of an allowed consuming call.
    fn record_usage(
        &mut self,
        decision: &Decision,
        key: &IdempotencyKey,
        window_units: u64,
        write_off: Credits,
        takes: &[(Line, Credits)],
        events: &mut Vec<Event>,
    ) {
        let usage = EventId::derive(decision.id.0, "usage", 0);
        let monetization = EventId::derive(decision.id.0, "monetization", 0);
        let amount = decision.credits_charged.checked_add(write_off).expect(BOUNDED);
        events.push(Event::Usage(UsageEvent {
            id: usage,
            decision: decision.id,
            idempotency_key: key.clone(),
            account: self.id.clone(),
            subject: decision.subject.clone(),
            feature: decision.feature.clone(),
            quantity: decision.quantity,
            window_units,
            at: decision.decided_at,
        }));
        events.push(Event::Monetization(MonetizationEvent {
            id: monetization,
            usage,
            account: self.id.clone(),
            amount,
            write_off,
            at: decision.decided_at,
        }));
        for (index, (line, credits)) in takes.iter().enumerate() {
            let source = self.wallet.source(*line);
            let delta = -credits.signed().expect(BOUNDED);
            let id = EventId::derive(decision.id.0, "balance", index as u64);
            self.push_update(id, source, delta, BalanceCause::Debit { monetization }, decision.decided_at, events);
        }
    }

    fn deny(&self, decision: &mut Decision, short: Credits, applicable: &Applicables, now: Timestamp) {
        let available = self.wallet.available(now);
        decision.allowed = false;
        // A feature that cannot be bought (price 0) is limited by its windows alone.
        decision.reason = if available.is_zero() || decision.price.is_zero() {
            Reason::LimitReached
        } else {
            Reason::InsufficientCredits
        };
        decision.credits_short = short;
        let states = self.window_states(&decision.subject);
        // Waiting helps if the windows alone, once they free up, can cover
        // what the credits cannot.
        let credit_units = if decision.price.is_zero() { 0 } else { available.units_at(decision.price) };
        let window_need = decision.quantity - credit_units.min(decision.quantity);
        decision.retry_at = if applicable.is_empty() {
            None
        } else {
            applicable.iter().try_fold(now, |latest, one| {
                let spec = applicable.spec(*one);
                let units = window_need.checked_mul(one.meter.weight)?;
                let at = match states.state(*one) {
                    Some(state) => state.available_at(spec, now, units)?,
                    None => WindowState::new(spec, now).available_at(spec, now, units)?,
                };
                Some(latest.max(at))
            })
        };
    }

    #[allow(clippy::too_many_arguments)] // The fields every decision starts from.
    fn blank_decision(
        &self,
        id: DecisionId,
        kind: DecisionKind,
        subject: &SubjectId,
        feature: &FeatureId,
        quantity: u64,
        price: Credits,
        now: Timestamp,
    ) -> Decision {
        Decision {
            id,
            kind,
            allowed: false,
            reason: Reason::LimitReached,
            subject: subject.clone(),
            feature: feature.clone(),
            quantity,
            price,
            sources: Vec::new(),
            credits_charged: Credits::ZERO,
            windows: Vec::new(),
            available: Credits::ZERO,
            retry_at: None,
            credits_short: Credits::ZERO,
            reservation: None,
            decided_at: now,
        }
    }

    /// The window states a request reads: its subject's and the account's.
    fn window_states(&self, subject: &SubjectId) -> WindowStates<'_> {
        WindowStates { subject: &self.subjects[subject].windows, account: &self.windows }
    }

    /// The window states a scope refers to: the subject's or the account's.
    fn window_set_mut(&mut self, subject: &SubjectId, scope: Scope) -> &mut WindowSet {
        match scope {
            Scope::Subject => &mut self.subjects.get_mut(subject).expect("known subject").windows,
            Scope::Account => &mut self.windows,
        }
    }

    /// Counts `units` in every window that applies, telling `hold` where
    /// each window counted them (a reservation keeps that to return them).
    fn consume_windows(
        &mut self,
        subject: &SubjectId,
        applicable: &Applicables,
        units: u64,
        now: Timestamp,
        mut hold: impl FnMut(Applicable, &WindowSpec, WindowHold),
    ) {
        if units == 0 {
            return;
        }
        // Both sets at once, the subject's found once: distinct fields.
        let subject_set = &mut self.subjects.get_mut(subject).expect("known subject").windows;
        let account_set = &mut self.windows;
        for one in applicable.iter() {
            let spec = applicable.spec(*one);
            let set = match one.scope {
                Scope::Subject => &mut *subject_set,
                Scope::Account => &mut *account_set,
            };
            let state = set.states[one.meter.window].get_or_insert_with(|| WindowState::new(spec, now));
            hold(*one, spec, state.consume(spec, now, units * one.meter.weight));
        }
    }

    fn credit_cover(&self, units: u64, price: Credits, now: Timestamp) -> CreditCover {
        if units == 0 {
            return CreditCover::Covered(Vec::new());
        }
        if price.is_zero() {
            return CreditCover::NotForSale;
        }
        match self.wallet.plan_takes(now, price_of_units(units, price).expect(BOUNDED)) {
            Ok(takes) => CreditCover::Covered(takes),
            Err(short) => CreditCover::Short(short),
        }
    }

    /// Sources of an allow. Units per credit line split the credit units by
    /// cumulative credits, so that they sum exactly even when one unit's
    /// price spans two grants.
    fn sources(&self, window_units: u64, takes: &[(Line, Credits)], price: Credits) -> Vec<SourceUse> {
        let mut sources = Vec::with_capacity(takes.len() + 1);
        if window_units > 0 {
            sources.push(SourceUse { source: Source::Windows, units: window_units, credits: Credits::ZERO });
        }
        let mut cumulative = Credits::ZERO;
        for (line, credits) in takes {
            let before = cumulative.units_at(price);
            cumulative = cumulative.checked_add(*credits).expect(BOUNDED);
            let source = match line {
                Line::Grant(index) => {
                    let grant = &self.wallet.grants[*index];
                    Source::Grant { grant: grant.id.clone(), kind: grant.kind }
                }
                Line::Overdraft => Source::Overdraft,
            };
            sources.push(SourceUse { source, units: cumulative.units_at(price) - before, credits: *credits });
        }
        sources
    }
}

/// The answer to a usage view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub windows: Vec<WindowReport>,
    pub available: Credits,
    pub grants: Vec<Grant>,
    pub settled_balance: i128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Applied { write_off: Credits },
    AlreadySettled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleError {
    UnknownAccount(AccountId),
    WrongAccount { update: AccountId, account: AccountId },
    OutOfOrder { expected: u64, got: u64 },
    UnknownSource(BalanceSource),
}

impl std::fmt::Display for SettleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettleError::UnknownAccount(account) => {
                write!(f, "balance update of unknown account {account}")
            }
            SettleError::WrongAccount { update, account } => {
                write!(f, "balance update of account {update} applied to account {account}")
            }
            SettleError::OutOfOrder { expected, got } => {
                write!(f, "balance update {got} settled out of order: expected {expected}")
            }
            SettleError::UnknownSource(source) => {
                write!(f, "balance update for unknown source {source:?}")
            }
        }
    }
}

impl std::error::Error for SettleError {}

fn replay_decision(recorded: Recorded) -> Result<Outcome<Decision>, CoreError> {
    match recorded {
        Recorded::Decision(decision) => Ok(Outcome { result: decision, replayed: true, events: Vec::new() }),
        _ => unreachable!("a fingerprint names its operation"),
    }
}

fn validate_quantity(quantity: u64, zero_allowed: bool) -> Result<(), CoreError> {
    if quantity == 0 && !zero_allowed {
        return Err(CoreError::InvalidQuantity { quantity, reason: "must be at least 1".to_string() });
    }
    if quantity > QUANTITY_MAX {
        return Err(CoreError::InvalidQuantity { quantity, reason: format!("must be at most {QUANTITY_MAX}") });
    }
    Ok(())
}

fn price_of_units(units: u64, price: Credits) -> Result<Credits, CoreError> {
    match price.checked_mul(units) {
        Ok(credits) if credits.micros() <= CHARGE_MICROS_MAX => Ok(credits),
        _ => Err(CoreError::InvalidQuantity {
            quantity: units,
            reason: format!("costs more than the largest charge, {CHARGE_MICROS_MAX} micro-credits"),
        }),
    }
}

fn total_credits(takes: &[(Line, Credits)]) -> Credits {
    takes.iter().fold(Credits::ZERO, |sum, (_, credits)| sum.checked_add(*credits).expect(BOUNDED))
}

fn merge_takes(takes: &mut Vec<(Line, Credits)>, more: Vec<(Line, Credits)>) {
    for (line, credits) in more {
        match takes.iter_mut().find(|(existing, _)| *existing == line) {
            Some((_, sum)) => *sum = sum.checked_add(credits).expect(BOUNDED),
            None => takes.push((line, credits)),
        }
    }
}

fn reason_of(sources: &[SourceUse]) -> Reason {
    let windows = sources.iter().any(|used| used.source == Source::Windows);
    let credits = sources.iter().any(|used| matches!(used.source, Source::Grant { .. } | Source::Overdraft));
    if sources.iter().any(|used| used.source == Source::WriteOff) {
        Reason::PartlyWrittenOff
    } else if windows && credits {
        Reason::CoveredByWindowsAndCredits
    } else if credits {
        Reason::CoveredByCredits
    } else {
        Reason::CoveredByWindows
    }
}
