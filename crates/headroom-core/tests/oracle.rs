//! Model-based property tests: the engine against a naive oracle.
//!
//! The oracle re-implements the rules of SPEC.md as plainly as it can, with
//! none of the engine's cleverness: every window owner keeps each consumption
//! as a `(time, units)` record and rescans all of them at every question; the
//! wallet is a list of grants with what is left in each, sorted afresh for
//! every request. It shares no code with the crate beyond the public request
//! and response types. Even the catalog is written twice, as TOML for the
//! engine and as plain data for the oracle, so that a parsing mistake cannot
//! hide on both sides at once.
//!
//! What the oracle covers: decisions and previews (with and without a key)
//! over four features (a flat price, a price by attribute, a credits-only
//! feature and a zero price) against windows of all four kinds, a group with
//! weights, subject and account scopes, a subject on a plan of its own inside
//! an organization, grants of every kind with and without expiry, an
//! overdraft, time moving in small steps, big jumps and small steps back,
//! sweeps, settlement, replays, conflicts and key retention.
//!
//! What it leaves out: reservations (reserve, capture, release, expiry).
//!
//! Proptest prints the smallest failing sequence of operations. Failure
//! persistence is off so that the test writes no file next to itself.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use headroom_core::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// The catalog the engine reads. The oracle's copy is [`SOLO`] and [`TEAM`]
/// below, with [`price_of`]; keep the two in step.
const CATALOG: &str = r#"
[settings]
idempotency_retention = "24h"

[features.task]
unit = "task"
price = 1_000_000

[features.video]
unit = "second"
price_by = "res"
prices = { "sd" = 100_000, "hd" = 300_000 }
default_price = 200_000

[features.export]
unit = "file"
price = 250_000

[features.ping]
unit = "call"
price = 0

[groups.agent]
weights = { task = 1, video = 3 }

[plans.solo]
[[plans.solo.windows]]
id = "minute"
meters = "task"
kind = "fixed"
capacity = 6
period = "1m"
offset = "17s"
[[plans.solo.windows]]
id = "burst"
meters = "agent"
kind = "token_bucket"
capacity = 9
refill = 3
per = "7s"
[[plans.solo.windows]]
id = "pings"
meters = "ping"
kind = "sliding"
capacity = 4
period = "1m"
buckets = 6
[[plans.solo.windows]]
id = "session"
meters = "video"
kind = "anchored"
capacity = 10
period = "2m"
[[plans.solo.windows]]
id = "shared"
meters = "agent"
scope = "account"
kind = "sliding"
capacity = 24
period = "10m"
buckets = 5

[plans.team]
overdraft = 3_500_000
[[plans.team.windows]]
id = "member"
meters = "agent"
kind = "anchored"
capacity = 8
period = "5m"
[[plans.team.windows]]
id = "exports"
meters = "export"
kind = "token_bucket"
capacity = 3
refill = 1
per = "2s"
[[plans.team.windows]]
id = "org"
meters = "agent"
scope = "account"
kind = "fixed"
capacity = 15
period = "10m"
[[plans.team.included_grants]]
kind = "free_tier"
credits = 2_000_000
priority = 5
expires_after = "2h"
"#;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// The catalog's `idempotency_retention`.
const RETENTION: u64 = DAY;
/// Monday 2026-11-23 00:00 UTC; each case starts up to a day later.
const START: u64 = 1_795_392_000_000;
/// Far enough ahead that every window of the catalog is whole again.
const FOREVER: u64 = 400 * DAY;

/// Operations per generated case.
const OPERATIONS_MAX: usize = 60;

// ---------------------------------------------------------------------------
// The oracle's catalog: plain data.

#[derive(Debug, Clone, Copy)]
enum Rule {
    Fixed { period: u64, offset: u64 },
    Anchored { period: u64 },
    Sliding { period: u64, buckets: u64 },
    TokenBucket { refill: u64, per: u64 },
}

#[derive(Debug)]
struct WindowModel {
    id: &'static str,
    /// Each metered feature with the weight of one of its units.
    meters: &'static [(&'static str, u64)],
    account_wide: bool,
    capacity: u64,
    rule: Rule,
}

impl WindowModel {
    fn weight_of(&self, feature: &str) -> Option<u64> {
        self.meters.iter().find(|(metered, _)| *metered == feature).map(|(_, weight)| *weight)
    }
}

#[derive(Debug)]
struct IncludedGrantModel {
    kind: GrantKind,
    credits: u64,
    priority: u32,
    expires_after: u64,
}

#[derive(Debug)]
struct PlanModel {
    id: &'static str,
    windows: &'static [WindowModel],
    overdraft: u64,
    included: &'static [IncludedGrantModel],
}

const AGENT: &[(&str, u64)] = &[("task", 1), ("video", 3)];

const SOLO: PlanModel = PlanModel {
    id: "solo",
    windows: &[
        WindowModel {
            id: "minute",
            meters: &[("task", 1)],
            account_wide: false,
            capacity: 6,
            rule: Rule::Fixed { period: MINUTE, offset: 17 * SECOND },
        },
        WindowModel {
            id: "burst",
            meters: AGENT,
            account_wide: false,
            capacity: 9,
            rule: Rule::TokenBucket { refill: 3, per: 7 * SECOND },
        },
        WindowModel {
            id: "pings",
            meters: &[("ping", 1)],
            account_wide: false,
            capacity: 4,
            rule: Rule::Sliding { period: MINUTE, buckets: 6 },
        },
        WindowModel {
            id: "session",
            meters: &[("video", 1)],
            account_wide: false,
            capacity: 10,
            rule: Rule::Anchored { period: 2 * MINUTE },
        },
        WindowModel {
            id: "shared",
            meters: AGENT,
            account_wide: true,
            capacity: 24,
            rule: Rule::Sliding { period: 10 * MINUTE, buckets: 5 },
        },
    ],
    overdraft: 0,
    included: &[],
};

const TEAM: PlanModel = PlanModel {
    id: "team",
    windows: &[
        WindowModel {
            id: "member",
            meters: AGENT,
            account_wide: false,
            capacity: 8,
            rule: Rule::Anchored { period: 5 * MINUTE },
        },
        WindowModel {
            id: "exports",
            meters: &[("export", 1)],
            account_wide: false,
            capacity: 3,
            rule: Rule::TokenBucket { refill: 1, per: 2 * SECOND },
        },
        WindowModel {
            id: "org",
            meters: AGENT,
            account_wide: true,
            capacity: 15,
            rule: Rule::Fixed { period: 10 * MINUTE, offset: 0 },
        },
    ],
    overdraft: 3_500_000,
    included: &[IncludedGrantModel {
        kind: GrantKind::FreeTier,
        credits: 2_000_000,
        priority: 5,
        expires_after: 2 * HOUR,
    }],
};

struct AccountSpec {
    id: &'static str,
    plan: &'static PlanModel,
}

const ACCOUNTS: [AccountSpec; 2] =
    [AccountSpec { id: "solo-account", plan: &SOLO }, AccountSpec { id: "team-account", plan: &TEAM }];

struct SubjectSpec {
    id: &'static str,
    account: usize,
    /// `None`: the account's plan.
    own_plan: Option<&'static PlanModel>,
}

/// Alice alone on `solo`; Bob and Carol share the `team` account (and its
/// `org` window), Carol on `solo` windows of her own.
const SUBJECTS: [SubjectSpec; 3] = [
    SubjectSpec { id: "alice", account: 0, own_plan: None },
    SubjectSpec { id: "bob", account: 1, own_plan: None },
    SubjectSpec { id: "carol", account: 1, own_plan: Some(&SOLO) },
];

const FEATURES: [&str; 4] = ["task", "video", "export", "ping"];
const RESOLUTIONS: [&str; 2] = ["sd", "hd"];

/// Micro-credits per unit.
fn price_of(feature: &str, attributes: &Attributes) -> u64 {
    let resolution = attributes.pairs().iter().find(|(name, _)| name == "res").map(|(_, value)| value.as_str());
    match (feature, resolution) {
        ("task", _) => 1_000_000,
        ("video", Some("sd")) => 100_000,
        ("video", Some("hd")) => 300_000,
        ("video", None) => 200_000,
        ("export", _) => 250_000,
        ("ping", _) => 0,
        other => panic!("the oracle has no price for {other:?}"),
    }
}

fn kind_rank(kind: GrantKind) -> u8 {
    match kind {
        GrantKind::FreeTier => 0,
        GrantKind::Promotion => 1,
        GrantKind::Entitlement => 2,
        GrantKind::Purchase => 3,
    }
}

// ---------------------------------------------------------------------------
// The oracle's windows: scans over consumption records.

/// Units a window counted at one time; or, for a token bucket only, units a
/// released reservation gave back (`refund`), which refill it at once up to
/// its capacity. Other windows take returned units off the record they were
/// counted in, which changes nothing once that record no longer counts.
#[derive(Debug, Clone, Copy)]
struct Record {
    time: u64,
    units: u64,
    refund: bool,
}

/// What a window shows at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WindowView {
    id: String,
    limit: u64,
    remaining: u64,
    /// Compared only where `Checks::reset_times` says so; `None` elsewhere.
    resets_at: Option<u64>,
}

/// Remaining units and reset time of `window` from every record it holds,
/// oldest first, at `now` (never before a record).
fn scan_window(window: &WindowModel, records: &[Record], now: u64) -> (u64, Option<u64>) {
    let capacity = window.capacity;
    let used_to_remaining = |used: u64| {
        capacity.checked_sub(used).unwrap_or_else(|| panic!("oracle: window {} counts {used} > {capacity}", window.id))
    };
    let counted = |record: &Record| {
        assert!(!record.refund, "only token buckets take refunds");
        record.units
    };
    match window.rule {
        Rule::Fixed { period, offset } => {
            let instance = |time: u64| (time + period - offset) / period;
            let used: u64 = records.iter().filter(|record| instance(record.time) == instance(now)).map(counted).sum();
            // The instance holding `now` began at the last `offset + k·period` at or before it.
            let instance_end = now - (now - offset) % period + period;
            (used_to_remaining(used), (used > 0).then_some(instance_end))
        }
        Rule::Anchored { period } => {
            let mut instance: Option<(u64, u64)> = None;
            for record in records {
                instance = match instance {
                    Some((start, used)) if record.time < start + period => Some((start, used + counted(record))),
                    _ => Some((record.time, counted(record))),
                };
            }
            match instance {
                Some((start, used)) if now < start + period && used > 0 => {
                    (used_to_remaining(used), Some(start + period))
                }
                _ => (capacity, None),
            }
        }
        Rule::Sliding { period, buckets } => {
            let length = period / buckets;
            let current = now / length;
            let oldest = current.saturating_sub(buckets);
            let in_span: Vec<(u64, u64)> = records
                .iter()
                .map(|record| (record.time / length, counted(record)))
                .filter(|(bucket, units)| oldest <= *bucket && *bucket <= current && *units > 0)
                .collect();
            let used = in_span.iter().map(|(_, units)| units).sum();
            // The next unit frees up when the oldest bucket holding one stops counting.
            let frees_up = in_span.iter().map(|(bucket, _)| (bucket + buckets + 1) * length).min();
            (used_to_remaining(used), frees_up)
        }
        Rule::TokenBucket { refill, per } => {
            let full = capacity * per;
            let mut level = full;
            let mut last: Option<u64> = None;
            for record in records {
                if let Some(last) = last {
                    level = full.min(level + refill * (record.time - last));
                }
                level = if record.refund {
                    full.min(level + record.units * per)
                } else {
                    level
                        .checked_sub(record.units * per)
                        .unwrap_or_else(|| panic!("oracle: token bucket {} below empty", window.id))
                };
                last = Some(record.time);
            }
            if let Some(last) = last {
                level = full.min(level + refill * (now - last));
            }
            let whole_at = (level < full).then(|| now + (full - level).div_ceil(refill));
            (level / per, whole_at)
        }
    }
}

fn is_sliding(window_id: &str) -> bool {
    SOLO.windows
        .iter()
        .chain(TEAM.windows)
        .any(|window| window.id == window_id && matches!(window.rule, Rule::Sliding { .. }))
}

// ---------------------------------------------------------------------------
// The oracle's accounts.

#[derive(Debug, Clone)]
struct GrantModel {
    id: String,
    kind: GrantKind,
    priority: u32,
    expires_at: Option<u64>,
    /// Spendable, unless expired: neither spent nor held.
    left: u64,
    held: u64,
    /// Has balance updates not settled yet. A grant with nothing left,
    /// nothing held and nothing unsettled is dropped at the next advance;
    /// only then can its id be used again.
    unsettled: bool,
}

impl GrantModel {
    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|expiry| expiry <= now)
    }

    /// Free tier, promotion, entitlement, purchase; then priority; then the
    /// earliest expiry, never expiring last; then id.
    fn spending_order(&self) -> (u8, u32, bool, u64, String) {
        (kind_rank(self.kind), self.priority, self.expires_at.is_none(), self.expires_at.unwrap_or(0), self.id.clone())
    }
}

/// A source of credits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Grant(String),
    Overdraft,
}

/// A request made with an idempotency key, as the key remembers it.
#[derive(Debug, Clone, PartialEq)]
enum Request {
    Decide(DecisionRequest),
    Grant(GrantRequest),
    Reserve(ReserveRequest),
    Capture(CaptureRequest),
    Release(ReleaseRequest),
}

/// The engine's first answer to a key, which every replay must repeat.
#[derive(Debug, Clone)]
enum Answer {
    Decision(Arc<Decision>),
    Grant(Arc<GrantAdded>),
    Released(Arc<Released>),
}

fn as_decision(answer: &Answer) -> Option<&Arc<Decision>> {
    match answer {
        Answer::Decision(decision) => Some(decision),
        _ => None,
    }
}

fn as_grant(answer: &Answer) -> Option<&Arc<GrantAdded>> {
    match answer {
        Answer::Grant(added) => Some(added),
        _ => None,
    }
}

fn as_released(answer: &Answer) -> Option<&Arc<Released>> {
    match answer {
        Answer::Released(released) => Some(released),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct KeyRecord {
    request: Request,
    answer: Answer,
    expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ModelError {
    Conflict(String),
    InvalidQuantity,
    InvalidGrant,
    GrantExists(String),
    UnknownReservation,
}

fn classify(error: &CoreError) -> ModelError {
    match error {
        CoreError::IdempotencyConflict(key) => ModelError::Conflict(key.as_str().to_string()),
        CoreError::InvalidQuantity { .. } => ModelError::InvalidQuantity,
        CoreError::InvalidGrant(_) => ModelError::InvalidGrant,
        CoreError::GrantExists(grant) => ModelError::GrantExists(grant.to_string()),
        CoreError::UnknownReservation(_) => ModelError::UnknownReservation,
        other => panic!("the engine refused with an error the oracle never expects: {other:?}"),
    }
}

/// Whose records a window counts: a subject's (by index) or the account's.
type Owner = (Option<usize>, &'static str);

/// Where a reservation's units were counted, to give them back.
#[derive(Debug, Clone)]
struct WindowHoldModel {
    owner: Owner,
    window: &'static WindowModel,
    weight: u64,
    /// Index of the record in the owner's records.
    record: usize,
}

#[derive(Debug, Clone)]
struct ReservationModel {
    subject: usize,
    feature: String,
    quantity: u64,
    price: u64,
    window_units: u64,
    window_holds: Vec<WindowHoldModel>,
    /// Credits held per line, in waterfall order.
    credit_holds: Vec<(Line, u64)>,
    expires_at: u64,
}

/// What a request asks for, in the oracle's terms.
#[derive(Debug, Clone, Copy)]
struct Ask<'a> {
    subject: usize,
    feature: &'a str,
    quantity: u64,
    /// Micro-credits per unit.
    price: u64,
}

/// How the waterfall would go, without changing anything.
struct Evaluation {
    window_units: u64,
    /// The credits taken from each line, or the credits missing.
    credits: Result<Vec<(Line, u64)>, u64>,
}

/// What an allowed request does.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// A preview: nothing.
    Nothing,
    Consume,
    /// A reservation: the units and credits are held until it closes.
    Hold {
        expires_at: u64,
    },
}

/// What the oracle expects a fresh decision to say.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    kind: DecisionKind,
    decided_at: u64,
    quantity: u64,
    price: u64,
    allowed: bool,
    reason: Reason,
    window_units: u64,
    /// (source, units, credits), in waterfall order.
    sources: Vec<(String, u64, u64)>,
    credits_charged: u64,
    credits_short: u64,
    available: u64,
    windows: Vec<WindowView>,
    reservation_expires_at: Option<u64>,
}

fn reason_of(sources: &[(String, u64, u64)]) -> Reason {
    let has = |name: &str| sources.iter().any(|(source, _, _)| source == name);
    let credits = sources.iter().any(|(source, _, _)| source != "windows" && source != "write-off");
    if has("write-off") {
        Reason::PartlyWrittenOff
    } else if has("windows") && credits {
        Reason::CoveredByWindowsAndCredits
    } else if credits {
        Reason::CoveredByCredits
    } else {
        Reason::CoveredByWindows
    }
}

#[derive(Debug)]
struct AccountModel {
    plan: &'static PlanModel,
    overdraft_limit: u64,
    overdraft_used: u64,
    overdraft_held: u64,
    grants: Vec<GrantModel>,
    reservations: HashMap<ReservationId, ReservationModel>,
    last_seen: u64,
    keys: HashMap<String, KeyRecord>,
    records: HashMap<Owner, Vec<Record>>,
    /// Balance updates of the current operation: (source, delta, cause).
    updates: Vec<Update>,
    /// Ids of grants dropped once spent.
    retired: Vec<String>,
}

/// A balance update as the oracle predicts it: source, delta and cause.
type Update = (String, i64, &'static str);

impl AccountModel {
    fn open(plan: &'static PlanModel, now: u64) -> AccountModel {
        let grants: Vec<GrantModel> = plan
            .included
            .iter()
            .enumerate()
            .map(|(index, included)| GrantModel {
                id: format!("{}.included.{index}", plan.id),
                kind: included.kind,
                priority: included.priority,
                expires_at: Some(now + included.expires_after),
                left: included.credits,
                held: 0,
                unsettled: true,
            })
            .collect();
        let updates = grants.iter().map(|grant| (grant.id.clone(), grant.left as i64, "grant")).collect();
        AccountModel {
            updates,
            plan,
            overdraft_limit: plan.overdraft,
            overdraft_used: 0,
            overdraft_held: 0,
            grants,
            reservations: HashMap::new(),
            last_seen: now,
            keys: HashMap::new(),
            records: HashMap::new(),
            retired: Vec::new(),
        }
    }

    /// A clock behind what the account has seen does not count.
    fn now(&self, clock: u64) -> u64 {
        clock.max(self.last_seen)
    }

    /// What every operation that goes ahead does first: reservations past
    /// their lifetime are released, expired grants lapse, and grants with
    /// nothing in them and nothing unsettled are dropped.
    fn advance(&mut self, now: u64) {
        self.last_seen = now;
        let expired: Vec<ReservationId> = self
            .reservations
            .iter()
            .filter(|(_, reservation)| reservation.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let reservation = self.reservations.remove(&id).expect("listed above");
            self.release(&reservation, now);
        }
        self.lapse(now);
        let (kept, spent) = std::mem::take(&mut self.grants)
            .into_iter()
            .partition(|grant| grant.left > 0 || grant.held > 0 || grant.unsettled);
        self.grants = kept;
        // A spent grant's id is never granted again.
        self.retired.extend(spent.into_iter().map(|grant: GrantModel| grant.id));
    }

    /// What is left of an expired grant lapses; what is held stays held.
    fn lapse(&mut self, now: u64) {
        for grant in &mut self.grants {
            if grant.expired(now) && grant.left > 0 {
                self.updates.push((grant.id.clone(), -(grant.left as i64), "expiry"));
                grant.left = 0;
                grant.unsettled = true;
            }
        }
    }

    /// The earlier answer to `key`, or a conflict, while the key is remembered.
    fn lookup(&self, key: &str, request: Request, now: u64) -> Option<Result<Answer, ModelError>> {
        let record = self.keys.get(key).filter(|record| record.expires_at > now)?;
        Some(if record.request == request {
            Ok(record.answer.clone())
        } else {
            Err(ModelError::Conflict(key.to_string()))
        })
    }

    fn remember(&mut self, key: &IdempotencyKey, request: Request, answer: Answer, now: u64) {
        let record = KeyRecord { request, answer, expires_at: now + RETENTION };
        self.keys.insert(key.as_str().to_string(), record);
    }

    fn overdraft_available(&self) -> u64 {
        self.overdraft_limit - self.overdraft_used - self.overdraft_held
    }

    fn available(&self, now: u64) -> u64 {
        let grants: u64 = self.grants.iter().filter(|grant| !grant.expired(now)).map(|grant| grant.left).sum();
        grants + self.overdraft_available()
    }

    fn grant_mut(&mut self, id: &str) -> &mut GrantModel {
        self.grants.iter_mut().find(|grant| grant.id == id).expect("a grant in use is never dropped")
    }

    /// One debit update per line.
    fn record_debits(&mut self, takes: &[(Line, u64)]) {
        for (line, credits) in takes {
            let source = match line {
                Line::Grant(id) => id.clone(),
                Line::Overdraft => "overdraft".to_string(),
            };
            self.updates.push((source, -(*credits as i64), "debit"));
        }
    }

    fn debit(&mut self, line: &Line, credits: u64) {
        match line {
            Line::Grant(id) => {
                let grant = self.grant_mut(id);
                grant.left -= credits;
                grant.unsettled = true;
            }
            Line::Overdraft => self.overdraft_used += credits,
        }
    }

    fn hold(&mut self, line: &Line, credits: u64) {
        match line {
            Line::Grant(id) => {
                let grant = self.grant_mut(id);
                grant.left -= credits;
                grant.held += credits;
            }
            Line::Overdraft => self.overdraft_held += credits,
        }
    }

    fn unhold(&mut self, line: &Line, credits: u64) {
        match line {
            Line::Grant(id) => {
                let grant = self.grant_mut(id);
                grant.held -= credits;
                grant.left += credits;
            }
            Line::Overdraft => self.overdraft_held -= credits,
        }
    }

    fn subject_plan(&self, subject: usize) -> &'static PlanModel {
        SUBJECTS[subject].own_plan.unwrap_or(self.plan)
    }

    /// Every window a subject sees: its own plan's subject windows, then
    /// the account plan's account windows.
    fn all_windows(&self, subject: usize) -> Vec<(Owner, &'static WindowModel)> {
        let own = self
            .subject_plan(subject)
            .windows
            .iter()
            .filter(|window| !window.account_wide)
            .map(|window| ((Some(subject), window.id), window));
        let shared =
            self.plan.windows.iter().filter(|window| window.account_wide).map(|window| ((None, window.id), window));
        own.chain(shared).collect()
    }

    /// The windows that meter `feature` for `subject`, with weights.
    fn applicable(&self, subject: usize, feature: &str) -> Vec<(Owner, &'static WindowModel, u64)> {
        self.all_windows(subject)
            .into_iter()
            .filter_map(|(owner, window)| window.weight_of(feature).map(|weight| (owner, window, weight)))
            .collect()
    }

    fn view(&self, owner: Owner, window: &WindowModel, now: u64) -> WindowView {
        let records = self.records.get(&owner).map_or(&[][..], Vec::as_slice);
        let (remaining, resets_at) = scan_window(window, records, now);
        WindowView { id: window.id.to_string(), limit: window.capacity, remaining, resets_at }
    }

    /// The least any applicable window can still cover, up to `quantity`;
    /// nothing when no window applies.
    fn window_cover(&self, applicable: &[(Owner, &'static WindowModel, u64)], quantity: u64, now: u64) -> u64 {
        if applicable.is_empty() {
            return 0;
        }
        applicable
            .iter()
            .map(|(owner, window, weight)| self.view(*owner, window, now).remaining / weight)
            .fold(quantity, u64::min)
    }

    fn consume(
        &mut self,
        applicable: &[(Owner, &'static WindowModel, u64)],
        units: u64,
        now: u64,
    ) -> Vec<WindowHoldModel> {
        if units == 0 {
            return Vec::new();
        }
        applicable
            .iter()
            .map(|(owner, window, weight)| {
                let records = self.records.entry(*owner).or_default();
                records.push(Record { time: now, units: units * weight, refund: false });
                WindowHoldModel { owner: *owner, window, weight: *weight, record: records.len() - 1 }
            })
            .collect()
    }

    fn give_back(&mut self, holds: &[WindowHoldModel], units: u64, now: u64) {
        if units == 0 {
            return;
        }
        for hold in holds {
            let records = self.records.get_mut(&hold.owner).expect("held records");
            let units = units * hold.weight;
            match hold.window.rule {
                Rule::TokenBucket { .. } => records.push(Record { time: now, units, refund: true }),
                _ => records[hold.record].units -= units,
            }
        }
    }

    /// The waterfall for `quantity` with the windows as they are at `at` and
    /// the grants as they are at `credits_at`.
    fn evaluate(&self, ask: Ask, at: u64, credits_at: u64) -> Evaluation {
        let applicable = self.applicable(ask.subject, ask.feature);
        let window_units = self.window_cover(&applicable, ask.quantity, at);
        let credit_units = ask.quantity - window_units;
        let credits = if credit_units == 0 {
            Ok(Vec::new())
        } else if ask.price == 0 {
            // Not for sale: the windows are the limit.
            Err(0)
        } else {
            self.take_credits(credit_units * ask.price, credits_at)
        };
        Evaluation { window_units, credits }
    }

    fn take_credits(&self, wanted: u64, now: u64) -> Result<Vec<(Line, u64)>, u64> {
        let mut grants: Vec<&GrantModel> = self.grants.iter().filter(|grant| !grant.expired(now)).collect();
        grants.sort_by_key(|grant| grant.spending_order());
        let lines = grants
            .into_iter()
            .map(|grant| (Line::Grant(grant.id.clone()), grant.left))
            .chain([(Line::Overdraft, self.overdraft_available())]);
        let mut left = wanted;
        let mut takes = Vec::new();
        for (line, available) in lines {
            let take = left.min(available);
            if take > 0 {
                takes.push((line, take));
                left -= take;
            }
        }
        if left == 0 { Ok(takes) } else { Err(left) }
    }

    /// Sources of an allow. A unit whose price spans two lines counts where
    /// its cumulative price ends.
    fn sources(&self, window_units: u64, takes: &[(Line, u64)], price: u64) -> Vec<(String, u64, u64)> {
        let mut sources = Vec::new();
        if window_units > 0 {
            sources.push(("windows".to_string(), window_units, 0));
        }
        let mut cumulative = 0;
        for (line, credits) in takes {
            let before = cumulative / price;
            cumulative += credits;
            let name = match line {
                Line::Grant(id) => {
                    let grant = self.grants.iter().find(|grant| grant.id == *id).expect("known");
                    format!("{id} ({:?})", grant.kind)
                }
                Line::Overdraft => "overdraft".to_string(),
            };
            sources.push((name, cumulative / price - before, *credits));
        }
        sources
    }

    /// A decision, preview or reservation at `now`, the account advanced.
    fn decide(
        &mut self,
        ask: Ask,
        now: u64,
        kind: DecisionKind,
        effect: Effect,
    ) -> (Observed, Option<ReservationModel>) {
        let Ask { subject, feature, quantity, price } = ask;
        let evaluation = self.evaluate(ask, now, now);
        let applicable = self.applicable(subject, feature);
        let available_before = self.available(now);
        let mut reservation = None;
        let mut observed = Observed {
            kind,
            decided_at: now,
            quantity,
            price,
            allowed: evaluation.credits.is_ok(),
            // Credits cannot help a feature that cannot be bought.
            reason: if available_before == 0 || price == 0 {
                Reason::LimitReached
            } else {
                Reason::InsufficientCredits
            },
            window_units: 0,
            sources: Vec::new(),
            credits_charged: 0,
            credits_short: *evaluation.credits.as_ref().err().unwrap_or(&0),
            available: 0,
            windows: Vec::new(),
            reservation_expires_at: None,
        };
        if let Ok(takes) = &evaluation.credits {
            observed.window_units = evaluation.window_units;
            observed.sources = self.sources(evaluation.window_units, takes, price);
            observed.reason = reason_of(&observed.sources);
            observed.credits_charged = takes.iter().map(|(_, credits)| credits).sum();
            match effect {
                Effect::Nothing => {}
                Effect::Consume => {
                    self.consume(&applicable, evaluation.window_units, now);
                    for (line, credits) in takes {
                        self.debit(line, *credits);
                    }
                    self.record_debits(takes);
                }
                Effect::Hold { expires_at } => {
                    let window_holds = self.consume(&applicable, evaluation.window_units, now);
                    for (line, credits) in takes {
                        self.hold(line, *credits);
                    }
                    observed.reservation_expires_at = Some(expires_at);
                    reservation = Some(ReservationModel {
                        subject,
                        feature: feature.to_string(),
                        quantity,
                        price,
                        window_units: evaluation.window_units,
                        window_holds,
                        credit_holds: takes.clone(),
                        expires_at,
                    });
                }
            }
        }
        observed.windows = applicable.iter().map(|(owner, window, _)| self.view(*owner, window, now)).collect();
        observed.available = self.available(now);
        (observed, reservation)
    }

    /// Units and credits held come back; held credits of a grant that
    /// expired meanwhile lapse.
    fn release(&mut self, reservation: &ReservationModel, now: u64) {
        self.give_back(&reservation.window_holds, reservation.window_units, now);
        for (line, held) in &reservation.credit_holds {
            self.unhold(line, *held);
        }
        self.lapse(now);
    }

    /// Settles a reservation at the `actual` quantity: held window units
    /// first, then held credits, each returning what is not used; beyond the
    /// estimate the waterfall as for a new request, and what even that cannot
    /// cover is written off.
    fn capture(&mut self, reservation: ReservationModel, actual: u64, now: u64) -> Observed {
        let price = reservation.price;
        let from_window_hold = actual.min(reservation.window_units);
        self.give_back(&reservation.window_holds, reservation.window_units - from_window_hold, now);
        let held_units = reservation.quantity - reservation.window_units;
        let from_credit_hold = (actual - from_window_hold).min(held_units);
        let mut owed = from_credit_hold * price;
        let mut takes: Vec<(Line, u64)> = Vec::new();
        for (line, held) in &reservation.credit_holds {
            let take = owed.min(*held);
            owed -= take;
            self.unhold(line, *held);
            if take > 0 {
                self.debit(line, take);
                takes.push((line.clone(), take));
            }
        }

        let extra = actual - from_window_hold - from_credit_hold;
        let applicable = self.applicable(reservation.subject, &reservation.feature);
        let extra_window_units = self.window_cover(&applicable, extra, now);
        self.consume(&applicable, extra_window_units, now);
        let extra_credit_units = extra - extra_window_units;
        let wanted = extra_credit_units * price;
        let payable = wanted.min(self.available(now));
        let extra_takes = self.take_credits(payable, now).expect("takes at most what is available");
        for (line, credits) in extra_takes {
            self.debit(&line, credits);
            match takes.iter_mut().find(|(taken, _)| *taken == line) {
                Some((_, sum)) => *sum += credits,
                None => takes.push((line, credits)),
            }
        }
        let written_off = wanted - payable;
        self.record_debits(&takes);

        let window_units = from_window_hold + extra_window_units;
        let mut sources = self.sources(window_units, &takes, price);
        if written_off > 0 || (price == 0 && extra_credit_units > 0) {
            let counted: u64 = sources.iter().map(|(_, units, _)| units).sum();
            sources.push(("write-off".to_string(), actual - counted, written_off));
        }
        self.lapse(now);
        Observed {
            kind: DecisionKind::Capture,
            decided_at: now,
            quantity: actual,
            price,
            allowed: true,
            reason: reason_of(&sources),
            window_units,
            sources,
            credits_charged: takes.iter().map(|(_, credits)| credits).sum(),
            credits_short: 0,
            available: self.available(now),
            windows: applicable.iter().map(|(owner, window, _)| self.view(*owner, window, now)).collect(),
            reservation_expires_at: Some(reservation.expires_at),
        }
    }
}

#[derive(Debug)]
enum Expected<T> {
    Replay(Answer),
    Fresh(T),
}

#[derive(Debug)]
struct Model {
    accounts: Vec<AccountModel>,
}

impl Model {
    fn open(now: u64) -> Model {
        Model { accounts: ACCOUNTS.iter().map(|account| AccountModel::open(account.plan, now)).collect() }
    }

    fn decide(
        &mut self,
        subject: usize,
        request: &DecisionRequest,
        clock: u64,
    ) -> Result<Expected<Observed>, ModelError> {
        let account = &mut self.accounts[SUBJECTS[subject].account];
        let now = account.now(clock);
        if let Some(key) = &request.idempotency_key
            && let Some(found) = account.lookup(key.as_str(), Request::Decide(request.clone()), now)
        {
            return found.map(Expected::Replay);
        }
        if request.quantity == 0 {
            return Err(ModelError::InvalidQuantity);
        }
        let feature = request.feature.as_str();
        let price = price_of(feature, &request.attributes);
        account.advance(now);
        let (kind, effect) = if request.preview {
            (DecisionKind::Preview, Effect::Nothing)
        } else {
            (DecisionKind::Decide, Effect::Consume)
        };
        let ask = Ask { subject, feature, quantity: request.quantity, price };
        let (observed, _) = account.decide(ask, now, kind, effect);
        Ok(Expected::Fresh(observed))
    }

    fn reserve(
        &mut self,
        subject: usize,
        request: &ReserveRequest,
        clock: u64,
    ) -> Result<Expected<(Observed, Option<ReservationModel>)>, ModelError> {
        let account = &mut self.accounts[SUBJECTS[subject].account];
        let now = account.now(clock);
        let key = request.idempotency_key.as_str();
        if let Some(found) = account.lookup(key, Request::Reserve(request.clone()), now) {
            return found.map(Expected::Replay);
        }
        if request.quantity == 0 {
            return Err(ModelError::InvalidQuantity);
        }
        let feature = request.feature.as_str();
        let price = price_of(feature, &request.attributes);
        let lifetime = request.lifetime.map_or(RESERVATION_LIFETIME, Duration::millis);
        account.advance(now);
        let effect = Effect::Hold { expires_at: now + lifetime };
        let ask = Ask { subject, feature, quantity: request.quantity, price };
        let decided = account.decide(ask, now, DecisionKind::Reserve, effect);
        Ok(Expected::Fresh(decided))
    }

    fn capture(
        &mut self,
        account_index: usize,
        request: &CaptureRequest,
        clock: u64,
    ) -> Result<Expected<Observed>, ModelError> {
        let account = &mut self.accounts[account_index];
        let now = account.now(clock);
        let key = request.idempotency_key.as_str();
        if let Some(found) = account.lookup(key, Request::Capture(request.clone()), now) {
            return found.map(Expected::Replay);
        }
        let open =
            account.reservations.get(&request.reservation).is_some_and(|reservation| reservation.expires_at > now);
        if !open {
            return Err(ModelError::UnknownReservation);
        }
        account.advance(now);
        let reservation = account.reservations.remove(&request.reservation).expect("open");
        Ok(Expected::Fresh(account.capture(reservation, request.quantity, now)))
    }

    fn release(
        &mut self,
        account_index: usize,
        request: &ReleaseRequest,
        clock: u64,
    ) -> Result<Expected<Released>, ModelError> {
        let account = &mut self.accounts[account_index];
        let now = account.now(clock);
        let key = request.idempotency_key.as_str();
        if let Some(found) = account.lookup(key, Request::Release(request.clone()), now) {
            return found.map(Expected::Replay);
        }
        let open =
            account.reservations.get(&request.reservation).is_some_and(|reservation| reservation.expires_at > now);
        if !open {
            return Err(ModelError::UnknownReservation);
        }
        account.advance(now);
        let reservation = account.reservations.remove(&request.reservation).expect("open");
        account.release(&reservation, now);
        Ok(Expected::Fresh(Released {
            reservation: request.reservation,
            window_units_returned: reservation.window_units,
            credits_returned: Credits::from_micros(reservation.credit_holds.iter().map(|(_, held)| held).sum()),
            released_at: at(now),
        }))
    }

    /// Expected: a replay, or the time and the available balance after the grant.
    fn add_grant(
        &mut self,
        account_index: usize,
        request: &GrantRequest,
        clock: u64,
    ) -> Result<Expected<(u64, u64)>, ModelError> {
        let account = &mut self.accounts[account_index];
        let now = account.now(clock);
        let key = request.idempotency_key.as_str();
        if let Some(found) = account.lookup(key, Request::Grant(request.clone()), now) {
            return found.map(Expected::Replay);
        }
        let expires_at = request.expires_at.map(Timestamp::millis);
        if expires_at.is_some_and(|expiry| expiry <= now) {
            return Err(ModelError::InvalidGrant);
        }
        let id = request.grant.as_str();
        if account.grants.iter().any(|grant| grant.id == id) || account.retired.iter().any(|retired| retired == id) {
            return Err(ModelError::GrantExists(id.to_string()));
        }
        account.advance(now);
        account.updates.push((id.to_string(), request.credits.micros() as i64, "grant"));
        account.grants.push(GrantModel {
            id: id.to_string(),
            kind: request.kind,
            priority: request.priority,
            expires_at,
            left: request.credits.micros(),
            held: 0,
            unsettled: true,
        });
        Ok(Expected::Fresh((now, account.available(now))))
    }

    fn sweep(&mut self, clock: u64) {
        for account in &mut self.accounts {
            account.advance(account.now(clock));
        }
    }

    fn settle(&mut self, account: usize) {
        for grant in &mut self.accounts[account].grants {
            grant.unsettled = false;
        }
    }
}

/// The engine's default reservation lifetime, 15 minutes.
const RESERVATION_LIFETIME: u64 = 15 * MINUTE;

// ---------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone)]
enum KeyChoice {
    Fresh,
    /// A key used before, in either account.
    Reuse(Index),
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Decide,
    Preview,
    PreviewWithoutKey,
    /// Reserve, with a lifetime in milliseconds or the default.
    Reserve(Option<u64>),
}

#[derive(Debug, Clone)]
struct UseOperation {
    subject: usize,
    feature: usize,
    quantity: u64,
    resolution: Option<usize>,
    mode: Mode,
    key: KeyChoice,
}

#[derive(Debug, Clone)]
struct GrantOperation {
    account: usize,
    grant: usize,
    kind: GrantKind,
    credits: u64,
    priority: u32,
    /// Milliseconds from the clock.
    expires_in: Option<u64>,
    key: KeyChoice,
}

#[derive(Debug, Clone)]
enum Operation {
    Wait(u64),
    /// The clock steps back; accounts keep the later time they saw.
    StepBack(u64),
    /// The clock moves to a millisecond before, at or after an instant where
    /// something changes: a grant, key or reservation expires, a window resets.
    WaitForBoundary(Index, i8),
    /// Decide, preview or reserve.
    Use(UseOperation),
    Grant(GrantOperation),
    /// Captures a reservation at a quantity (below, at or above its estimate).
    Capture(ReservationChoice, u64, KeyChoice),
    Release(ReservationChoice, KeyChoice),
    /// The same request as an earlier one, key and all.
    Repeat(Index),
    /// `Engine::advance_all`.
    Sweep,
    /// Settles every balance update of one account, in order.
    Settle(usize),
}

/// Which reservation a capture or release names.
#[derive(Debug, Clone)]
enum ReservationChoice {
    /// One the oracle holds open, if any.
    Open(Index),
    /// Any taken so far, most of them closed by now.
    Any(Index),
}

fn reservation_choice() -> impl Strategy<Value = ReservationChoice> {
    prop_oneof![
        3 => any::<Index>().prop_map(ReservationChoice::Open),
        1 => any::<Index>().prop_map(ReservationChoice::Any),
    ]
}

fn key_choice() -> impl Strategy<Value = KeyChoice> {
    prop_oneof![
        4 => Just(KeyChoice::Fresh),
        1 => any::<Index>().prop_map(KeyChoice::Reuse),
    ]
}

fn use_operation(reservations: bool) -> impl Strategy<Value = UseOperation> {
    let quantity = prop_oneof![1 => Just(0u64), 40 => 1u64..=12];
    let reserve_weight = if reservations { 6 } else { 0 };
    let mode = prop_oneof![
        8 => Just(Mode::Decide),
        1 => Just(Mode::Preview),
        1 => Just(Mode::PreviewWithoutKey),
        reserve_weight => proptest::option::of(SECOND..=20 * MINUTE).prop_map(Mode::Reserve),
    ];
    (0..SUBJECTS.len(), 0..FEATURES.len(), quantity, proptest::option::of(0..RESOLUTIONS.len()), mode, key_choice())
        .prop_map(|(subject, feature, quantity, resolution, mode, key)| UseOperation {
            subject,
            feature,
            quantity,
            resolution,
            mode,
            key,
        })
}

fn grant_operation() -> impl Strategy<Value = GrantOperation> {
    let expires_in = prop_oneof![
        2 => Just(None),
        2 => (1..=2 * MINUTE).prop_map(Some),
        1 => (HOUR..=2 * DAY).prop_map(Some),
    ];
    (
        0..ACCOUNTS.len(),
        0usize..6,
        proptest::sample::select(GrantKind::ALL.to_vec()),
        50_000u64..=4_000_000,
        0u32..3,
        expires_in,
        key_choice(),
    )
        .prop_map(|(account, grant, kind, credits, priority, expires_in, key)| GrantOperation {
            account,
            grant,
            kind,
            credits,
            priority,
            expires_in,
            key,
        })
}

fn operation(reservations: bool) -> impl Strategy<Value = Operation> {
    let wait = prop_oneof![
        2 => Just(0u64),
        3 => 1..SECOND,
        4 => SECOND..30 * SECOND,
        2 => 30 * SECOND..15 * MINUTE,
        1 => HOUR..3 * DAY,
    ];
    let closing_weight = if reservations { 3 } else { 0 };
    prop_oneof![
        4 => wait.prop_map(Operation::Wait),
        1 => (1..=MINUTE).prop_map(Operation::StepBack),
        2 => (any::<Index>(), -1i8..=1).prop_map(|(boundary, offset)| Operation::WaitForBoundary(boundary, offset)),
        12 => use_operation(reservations).prop_map(Operation::Use),
        3 => grant_operation().prop_map(Operation::Grant),
        closing_weight => (reservation_choice(), 0u64..=15, key_choice())
            .prop_map(|(reservation, quantity, key)| Operation::Capture(reservation, quantity, key)),
        closing_weight => (reservation_choice(), key_choice())
            .prop_map(|(reservation, key)| Operation::Release(reservation, key)),
        2 => any::<Index>().prop_map(Operation::Repeat),
        1 => Just(Operation::Sweep),
        1 => (0..ACCOUNTS.len()).prop_map(Operation::Settle),
    ]
}

fn operations(reservations: bool) -> impl Strategy<Value = Vec<Operation>> {
    proptest::collection::vec(operation(reservations), 1..=OPERATIONS_MAX)
}

// ---------------------------------------------------------------------------
// The harness: runs each operation on the engine and the oracle, compares.

/// Which windows' `resets_at` are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ResetTimes {
    #[default]
    Unchecked,
    /// Fixed, anchored and token bucket windows.
    ExceptSliding,
    Sliding,
}

/// Checks beyond the ones always made.
#[derive(Debug, Clone, Copy, Default)]
struct Checks {
    reset_times: ResetTimes,
    /// `retry_at` of every deny: the earliest time the same request succeeds.
    retry_times: bool,
    /// A denied decision changes nothing in the account but its key.
    denials_change_nothing: bool,
}

fn catalog() -> Arc<Catalog> {
    static CATALOG_PARSED: OnceLock<Arc<Catalog>> = OnceLock::new();
    CATALOG_PARSED.get_or_init(|| Arc::new(Catalog::from_toml(CATALOG).expect("the test catalog is valid"))).clone()
}

fn at(millis: u64) -> Timestamp {
    Timestamp::from_millis(millis)
}

fn account_id(account: usize) -> AccountId {
    AccountId::new(ACCOUNTS[account].id).expect("valid id")
}

fn subject_id(subject: usize) -> SubjectId {
    SubjectId::new(SUBJECTS[subject].id).expect("valid id")
}

fn subject_index(subject: &SubjectId) -> usize {
    SUBJECTS.iter().position(|spec| spec.id == subject.as_str()).expect("a known subject")
}

/// A request as issued, with what the engine needs to route it.
#[derive(Debug, Clone)]
enum Issued {
    Decide(DecisionRequest),
    Reserve(ReserveRequest),
    Grant(usize, GrantRequest),
    /// By the reservation's subject.
    Capture(usize, CaptureRequest),
    Release(usize, ReleaseRequest),
}

struct Harness {
    engine: Engine,
    model: Model,
    clock: u64,
    checks: Checks,
    /// Every request made, for `Operation::Repeat`.
    history: Vec<Issued>,
    keys_used: Vec<String>,
    next_key: u64,
    /// Every reservation taken, with its subject.
    reservations: Vec<(usize, ReservationId)>,
    /// Per account: balance updates not settled yet, in order.
    unsettled: Vec<Vec<BalanceUpdate>>,
    /// Balance updates of the current operation, in the oracle's terms.
    step_updates: Vec<(usize, Update)>,
    audit: invariants::EventAudit,
}

impl Harness {
    fn new(start: u64, checks: Checks) -> Harness {
        let mut harness = Harness {
            engine: Engine::new(catalog()),
            model: Model::open(start),
            clock: start,
            checks,
            history: Vec::new(),
            keys_used: Vec::new(),
            next_key: 0,
            reservations: Vec::new(),
            unsettled: vec![Vec::new(); ACCOUNTS.len()],
            step_updates: Vec::new(),
            audit: invariants::EventAudit::new(),
        };
        for (index, account) in ACCOUNTS.iter().enumerate() {
            let plan = PlanId::new(account.plan.id).expect("valid id");
            let events =
                harness.engine.open_account(account_id(index), &plan, None, at(start)).expect("the account opens");
            harness.record(&events);
        }
        for (index, subject) in SUBJECTS.iter().enumerate() {
            let plan = subject.own_plan.map(|plan| PlanId::new(plan.id).expect("valid id"));
            harness
                .engine
                .put_subject(subject_id(index), &account_id(subject.account), plan)
                .expect("the subject joins");
        }
        harness.check_updates("opening");
        harness.check_state("opening");
        harness
    }

    fn run(start: u64, operations: &[Operation], checks: Checks) {
        let mut harness = Harness::new(START + start, checks);
        for (step, operation) in operations.iter().enumerate() {
            harness.apply(operation);
            let context = format!("step {step}: {operation:?}");
            harness.check_updates(&context);
            harness.check_state(&context);
        }
    }

    /// The balance updates of one operation (grants, debits, lapses) are the
    /// ones the oracle predicts, in any order. What lapses from one grant is
    /// summed: the engine may lapse it in parts, one per reservation released.
    fn check_updates(&mut self, context: &str) {
        let mut expected: Vec<(usize, Update)> = Vec::new();
        for (index, account) in self.model.accounts.iter_mut().enumerate() {
            expected.extend(account.updates.drain(..).map(|update| (index, update)));
        }
        let got = std::mem::take(&mut self.step_updates);
        assert_eq!(merge_lapses(got), merge_lapses(expected), "balance updates of {context}");
        for (index, unsettled) in self.unsettled.iter().enumerate() {
            assert_eq!(
                self.account(index).unsettled(),
                unsettled.len() as u64,
                "unsettled updates of {} after {context}",
                ACCOUNTS[index].id
            );
        }
    }

    fn account(&self, account: usize) -> &AccountState {
        self.engine.account(&account_id(account)).expect("the account is open")
    }

    fn record(&mut self, events: &[Event]) {
        for event in events {
            self.audit.record(event).unwrap_or_else(|error| panic!("event audit: {error}"));
            if let Event::Balance(update) = event {
                let account =
                    ACCOUNTS.iter().position(|spec| spec.id == update.account.as_str()).expect("a known account");
                self.unsettled[account].push(update.clone());
                let source = match &update.source {
                    BalanceSource::Grant(grant) => grant.to_string(),
                    BalanceSource::Overdraft => "overdraft".to_string(),
                };
                let cause = match update.cause {
                    BalanceCause::Debit { .. } => "debit",
                    BalanceCause::Grant { .. } => "grant",
                    BalanceCause::Expiry => "expiry",
                    BalanceCause::Refund { .. } => "refund",
                };
                self.step_updates.push((account, (source, update.delta, cause)));
            }
        }
        self.audit.check_links().unwrap_or_else(|error| panic!("event audit: {error}"));
    }

    fn key(&mut self, choice: &KeyChoice) -> IdempotencyKey {
        let text = match choice {
            KeyChoice::Reuse(index) if !self.keys_used.is_empty() => {
                self.keys_used[index.index(self.keys_used.len())].clone()
            }
            _ => {
                self.next_key += 1;
                let key = format!("key-{}", self.next_key);
                self.keys_used.push(key.clone());
                key
            }
        };
        IdempotencyKey::new(&text).expect("valid key")
    }

    fn apply(&mut self, operation: &Operation) {
        match operation {
            Operation::Wait(millis) => self.clock += millis,
            Operation::StepBack(millis) => self.clock -= millis,
            Operation::WaitForBoundary(index, offset) => {
                let boundaries = self.boundaries();
                if !boundaries.is_empty() {
                    let boundary = boundaries[index.index(boundaries.len())];
                    self.clock = self.clock.max(boundary.saturating_add_signed(i64::from(*offset)));
                }
            }
            Operation::Use(operation) => {
                let issued = self.use_request(operation);
                self.issue(issued);
            }
            Operation::Grant(grant) => {
                let request = GrantRequest {
                    grant: GrantId::new(&format!("grant-{}", grant.grant)).expect("valid id"),
                    kind: grant.kind,
                    credits: Credits::from_micros(grant.credits),
                    priority: grant.priority,
                    expires_at: grant.expires_in.map(|millis| at(self.clock + millis)),
                    idempotency_key: self.key(&grant.key),
                };
                self.issue(Issued::Grant(grant.account, request));
            }
            Operation::Capture(reservation, quantity, key) => {
                if let Some((subject, reservation)) = self.pick_reservation(reservation) {
                    let request = CaptureRequest { reservation, quantity: *quantity, idempotency_key: self.key(key) };
                    self.issue(Issued::Capture(subject, request));
                }
            }
            Operation::Release(reservation, key) => {
                if let Some((subject, reservation)) = self.pick_reservation(reservation) {
                    let request = ReleaseRequest { reservation, idempotency_key: self.key(key) };
                    self.issue(Issued::Release(subject, request));
                }
            }
            Operation::Repeat(index) => {
                if !self.history.is_empty() {
                    let issued = self.history[index.index(self.history.len())].clone();
                    self.issue(issued);
                }
            }
            Operation::Sweep => {
                let events = self.engine.advance_all(at(self.clock));
                self.record(&events);
                self.model.sweep(self.clock);
            }
            Operation::Settle(account) => {
                let updates = std::mem::take(&mut self.unsettled[*account]);
                let state = self.engine.account_mut(&account_id(*account)).expect("the account is open");
                for update in &updates {
                    assert_eq!(
                        state.settle(update),
                        Ok(Settlement::Applied { write_off: Credits::ZERO }),
                        "settling {update:?}"
                    );
                }
                assert_eq!(state.unsettled(), 0, "every update settled");
                self.model.settle(*account);
            }
        }
    }

    /// Every instant after the clock at which the oracle knows something changes.
    fn boundaries(&self) -> Vec<u64> {
        let mut boundaries = Vec::new();
        for (subject, spec) in SUBJECTS.iter().enumerate() {
            let account = &self.model.accounts[spec.account];
            let now = account.now(self.clock);
            boundaries.extend(
                account
                    .all_windows(subject)
                    .into_iter()
                    .filter_map(|(owner, window)| account.view(owner, window, now).resets_at),
            );
        }
        for account in &self.model.accounts {
            boundaries.extend(account.grants.iter().filter_map(|grant| grant.expires_at));
            boundaries.extend(account.keys.values().map(|record| record.expires_at));
            boundaries.extend(account.reservations.values().map(|reservation| reservation.expires_at));
        }
        boundaries.retain(|boundary| *boundary > self.clock);
        boundaries.sort_unstable();
        boundaries.dedup();
        boundaries
    }

    fn pick_reservation(&self, choice: &ReservationChoice) -> Option<(usize, ReservationId)> {
        let (candidates, index): (Vec<(usize, ReservationId)>, &Index) = match choice {
            ReservationChoice::Open(index) => {
                let open = self.reservations.iter().filter(|(subject, id)| {
                    let account = &self.model.accounts[SUBJECTS[*subject].account];
                    let now = account.now(self.clock);
                    account.reservations.get(id).is_some_and(|reservation| reservation.expires_at > now)
                });
                (open.copied().collect(), index)
            }
            ReservationChoice::Any(index) => (self.reservations.clone(), index),
        };
        (!candidates.is_empty()).then(|| candidates[index.index(candidates.len())])
    }

    fn use_request(&mut self, operation: &UseOperation) -> Issued {
        let attributes = match operation.resolution {
            Some(index) => {
                Attributes::new(vec![("res".to_string(), RESOLUTIONS[index].to_string())]).expect("valid attributes")
            }
            None => Attributes::default(),
        };
        let subject = subject_id(operation.subject);
        let feature = FeatureId::new(FEATURES[operation.feature]).expect("valid id");
        let quantity = operation.quantity;
        match operation.mode {
            Mode::Reserve(lifetime) => Issued::Reserve(ReserveRequest {
                subject,
                feature,
                quantity,
                attributes,
                idempotency_key: self.key(&operation.key),
                lifetime: lifetime.map(Duration::from_millis),
            }),
            mode => Issued::Decide(DecisionRequest {
                subject,
                feature,
                quantity,
                attributes,
                idempotency_key: match mode {
                    Mode::PreviewWithoutKey => None,
                    _ => Some(self.key(&operation.key)),
                },
                preview: !matches!(mode, Mode::Decide),
            }),
        }
    }

    fn issue(&mut self, issued: Issued) {
        self.history.push(issued.clone());
        match issued {
            Issued::Decide(request) => self.decide(request),
            Issued::Reserve(request) => self.reserve(request),
            Issued::Grant(account, request) => self.add_grant(account, request),
            Issued::Capture(subject, request) => self.capture(subject, request),
            Issued::Release(subject, request) => self.release(subject, request),
        }
    }

    /// The account as a consuming request finds it once time has moved on,
    /// to compare with what a deny leaves.
    fn swept(&self, account: usize) -> Option<AccountState> {
        self.checks.denials_change_nothing.then(|| {
            let mut swept = self.account(account).clone();
            swept.advance(self.engine.catalog(), at(self.clock), &mut Vec::new());
            swept
        })
    }

    /// Checks a refusal or a replay against the oracle's; hands a fresh
    /// answer back to the caller.
    fn compare_outcome<T, E>(
        &self,
        account: usize,
        before: &AccountState,
        context: &str,
        expected: Result<Expected<E>, ModelError>,
        got: Result<Outcome<T>, CoreError>,
        stored: fn(&Answer) -> Option<&Arc<T>>,
    ) -> Option<(E, Outcome<T>)>
    where
        T: PartialEq + std::fmt::Debug,
        E: std::fmt::Debug,
    {
        match (expected, got) {
            (Err(expected), Err(error)) => {
                assert_eq!(classify(&error), expected, "{context}");
                assert_eq!(self.account(account), before, "a refusal changed the account: {context}");
                None
            }
            (Ok(Expected::Replay(answer)), Ok(outcome)) => {
                let stored = stored(&answer).unwrap_or_else(|| panic!("{context}: the key first answered {answer:?}"));
                assert!(outcome.replayed, "a replay is marked: {context}");
                assert!(outcome.events.is_empty(), "a replay records nothing: {context}");
                assert_eq!(*outcome.result, **stored, "a replay repeats the answer: {context}");
                assert_eq!(self.account(account), before, "a replay changed the account: {context}");
                None
            }
            (Ok(Expected::Fresh(expected)), Ok(outcome)) => {
                assert!(!outcome.replayed, "a fresh answer is not a replay: {context}");
                Some((expected, outcome))
            }
            (expected, got) => {
                panic!("{context}\noracle expected {expected:#?}\nengine answered {got:#?}")
            }
        }
    }

    fn decide(&mut self, request: DecisionRequest) {
        let subject = subject_index(&request.subject);
        let account = SUBJECTS[subject].account;
        let before = self.account(account).clone();
        let swept = self.swept(account).filter(|_| !request.preview);
        let expected = self.model.decide(subject, &request, self.clock);
        let got = self.engine.decide(&request, at(self.clock));
        let context = format!("clock {}: {request:?}", self.clock);
        let fresh = self.compare_outcome(account, &before, &context, expected, got, as_decision);
        if let Some((expected, outcome)) = fresh {
            self.check_fresh_decision(subject, expected, &outcome, swept, &context);
            if let Some(key) = &request.idempotency_key {
                self.model.accounts[account].remember(
                    key,
                    Request::Decide(request.clone()),
                    Answer::Decision(outcome.result.clone()),
                    outcome.result.decided_at.millis(),
                );
            }
        }
    }

    fn reserve(&mut self, request: ReserveRequest) {
        let subject = subject_index(&request.subject);
        let account = SUBJECTS[subject].account;
        let before = self.account(account).clone();
        let swept = self.swept(account);
        let expected = self.model.reserve(subject, &request, self.clock);
        let got = self.engine.reserve(&request, at(self.clock));
        let context = format!("clock {}: {request:?}", self.clock);
        let fresh = self.compare_outcome(account, &before, &context, expected, got, as_decision);
        if let Some(((expected, reservation), outcome)) = fresh {
            self.check_fresh_decision(subject, expected, &outcome, swept, &context);
            let decision = &outcome.result;
            if let (Some(info), Some(reservation)) = (&decision.reservation, reservation) {
                self.model.accounts[account].reservations.insert(info.id, reservation);
                self.reservations.push((subject, info.id));
            }
            self.model.accounts[account].remember(
                &request.idempotency_key,
                Request::Reserve(request.clone()),
                Answer::Decision(decision.clone()),
                decision.decided_at.millis(),
            );
        }
    }

    fn capture(&mut self, subject: usize, request: CaptureRequest) {
        let account = SUBJECTS[subject].account;
        let before = self.account(account).clone();
        let expected = self.model.capture(account, &request, self.clock);
        let got = self.engine.capture(&account_id(account), &request, at(self.clock));
        let context = format!("clock {}: {request:?}", self.clock);
        let fresh = self.compare_outcome(account, &before, &context, expected, got, as_decision);
        if let Some((expected, outcome)) = fresh {
            self.check_fresh_decision(subject, expected, &outcome, None, &context);
            self.model.accounts[account].remember(
                &request.idempotency_key,
                Request::Capture(request.clone()),
                Answer::Decision(outcome.result.clone()),
                outcome.result.decided_at.millis(),
            );
        }
    }

    fn release(&mut self, subject: usize, request: ReleaseRequest) {
        let account = SUBJECTS[subject].account;
        let before = self.account(account).clone();
        let expected = self.model.release(account, &request, self.clock);
        let got = self.engine.release(&account_id(account), &request, at(self.clock));
        let context = format!("clock {}: {request:?}", self.clock);
        let fresh = self.compare_outcome(account, &before, &context, expected, got, as_released);
        if let Some((expected, outcome)) = fresh {
            assert_eq!(*outcome.result, expected, "{context}");
            check_no_usage(&outcome.events, &context);
            self.record(&outcome.events);
            self.model.accounts[account].remember(
                &request.idempotency_key,
                Request::Release(request.clone()),
                Answer::Released(outcome.result.clone()),
                expected.released_at.millis(),
            );
        }
    }

    fn add_grant(&mut self, account: usize, request: GrantRequest) {
        let before = self.account(account).clone();
        let expected = self.model.add_grant(account, &request, self.clock);
        let got = self.engine.add_grant(&account_id(account), &request, at(self.clock));
        let context = format!("clock {}: {request:?} on {}", self.clock, ACCOUNTS[account].id);
        let fresh = self.compare_outcome(account, &before, &context, expected, got, as_grant);
        if let Some(((now, available), outcome)) = fresh {
            let expected = GrantAdded {
                grant: request.grant.clone(),
                kind: request.kind,
                credits: request.credits,
                expires_at: request.expires_at,
                available: Credits::from_micros(available),
            };
            assert_eq!(*outcome.result, expected, "{context}");
            check_no_usage(&outcome.events, &context);
            self.record(&outcome.events);
            self.model.accounts[account].remember(
                &request.idempotency_key,
                Request::Grant(request.clone()),
                Answer::Grant(outcome.result.clone()),
                now,
            );
        }
    }

    /// A decision, preview, reservation or capture answered afresh.
    fn check_fresh_decision(
        &mut self,
        subject: usize,
        expected: Observed,
        outcome: &Outcome<Decision>,
        swept: Option<AccountState>,
        context: &str,
    ) {
        let decision = &outcome.result;
        let mut observed = self.observe(decision);
        observed.windows = self.views(observed.windows);
        let mut expected = expected;
        expected.windows = self.views(expected.windows);
        assert_eq!(observed, expected, "{context}");
        check_decision_events(decision, &outcome.events, context);
        self.record(&outcome.events);
        if !decision.allowed {
            if self.checks.retry_times {
                self.check_retry(subject, decision, context);
            }
            if let Some(swept) = swept {
                self.check_deny_changed_nothing(SUBJECTS[subject].account, swept, context);
            }
        }
    }

    /// The engine's decision in the oracle's terms.
    fn observe(&self, decision: &Decision) -> Observed {
        let sources = decision
            .sources
            .iter()
            .map(|used| {
                let name = match &used.source {
                    Source::Windows => "windows".to_string(),
                    Source::Grant { grant, kind } => format!("{grant} ({kind:?})"),
                    Source::Overdraft => "overdraft".to_string(),
                    Source::WriteOff => "write-off".to_string(),
                };
                (name, used.units, used.credits.micros())
            })
            .collect();
        Observed {
            kind: decision.kind,
            decided_at: decision.decided_at.millis(),
            quantity: decision.quantity,
            price: decision.price.micros(),
            allowed: decision.allowed,
            reason: decision.reason,
            window_units: decision.window_units(),
            sources,
            credits_charged: decision.credits_charged.micros(),
            credits_short: decision.credits_short.micros(),
            available: decision.available.micros(),
            windows: decision.windows.iter().map(window_view).collect(),
            reservation_expires_at: decision.reservation.as_ref().map(|reservation| reservation.expires_at.millis()),
        }
    }

    /// Drops the reset times that are not checked.
    fn views(&self, mut views: Vec<WindowView>) -> Vec<WindowView> {
        for view in &mut views {
            let checked = match self.checks.reset_times {
                ResetTimes::Unchecked => false,
                ResetTimes::ExceptSliding => !is_sliding(&view.id),
                ResetTimes::Sliding => is_sliding(&view.id),
            };
            if !checked {
                view.resets_at = None;
            }
        }
        views
    }

    /// After every step: the engine's own invariants, and every window,
    /// grant and open reservation each subject sees, against the oracle.
    fn check_state(&self, context: &str) {
        self.engine.check_invariants().unwrap_or_else(|error| panic!("invariant broken after {context}: {error}"));
        for (index, model) in self.model.accounts.iter().enumerate() {
            assert_eq!(
                self.account(index).open_reservations(),
                model.reservations.len(),
                "open reservations of {} after {context}",
                ACCOUNTS[index].id
            );
        }
        for (subject, spec) in SUBJECTS.iter().enumerate() {
            let account = &self.model.accounts[spec.account];
            let now = account.now(self.clock);
            let usage = self
                .account(spec.account)
                .usage(self.engine.catalog(), &subject_id(subject), at(self.clock))
                .expect("a known subject");
            let windows = usage.windows.iter().map(window_view).collect();
            let expected_windows = account
                .all_windows(subject)
                .into_iter()
                .map(|(owner, window)| account.view(owner, window, now))
                .collect();
            assert_eq!(self.views(windows), self.views(expected_windows), "windows of {} after {context}", spec.id);
            let grants: Vec<(String, u64)> =
                usage.grants.iter().map(|grant| (grant.id.to_string(), grant.available().micros())).collect();
            let mut expected_grants: Vec<&GrantModel> =
                account.grants.iter().filter(|grant| !grant.expired(now)).collect();
            expected_grants.sort_by_key(|grant| grant.spending_order());
            let expected_grants: Vec<(String, u64)> =
                expected_grants.into_iter().map(|grant| (grant.id.clone(), grant.left)).collect();
            assert_eq!(grants, expected_grants, "grants of {} after {context}", spec.id);
            assert_eq!(usage.available.micros(), account.available(now), "available to {} after {context}", spec.id);
        }
    }

    /// A deny's `retry_at` is the earliest time the same request would be
    /// allowed if nothing else changed (the credits staying as they are now);
    /// `None` when waiting can never be enough.
    fn check_retry(&self, subject: usize, decision: &Decision, context: &str) {
        let account = &self.model.accounts[SUBJECTS[subject].account];
        let now = decision.decided_at.millis();
        let ask = Ask {
            subject,
            feature: decision.feature.as_str(),
            quantity: decision.quantity,
            price: decision.price.micros(),
        };
        let allowed_at = |time: u64| account.evaluate(ask, time, now).credits.is_ok();
        match decision.retry_at.map(Timestamp::millis) {
            Some(retry_at) => {
                assert!(retry_at > now, "retry_at {retry_at} not after {now}: {context}");
                assert!(allowed_at(retry_at), "still denied at retry_at {retry_at}: {context}");
                assert!(!allowed_at(retry_at - 1), "already allowed before retry_at {retry_at}: {context}");
            }
            None => assert!(!allowed_at(now + FOREVER), "retry_at is None but waiting helps: {context}"),
        }
    }

    /// A deny consumes nothing: beside its idempotency key (remembered so that
    /// a replay repeats the deny), the account is as the request found it.
    fn check_deny_changed_nothing(&self, account: usize, swept: AccountState, context: &str) {
        let after = self.account(account);
        assert_eq!(after.wallet(), swept.wallet(), "a deny changed the wallet: {context}");
        assert_eq!(after.last_seen(), swept.last_seen(), "{context}");
        assert_eq!(after.unsettled(), swept.unsettled(), "{context}");
        assert_eq!(after.open_reservations(), swept.open_reservations(), "{context}");
        let catalog = self.engine.catalog();
        for (subject, spec) in SUBJECTS.iter().enumerate() {
            if spec.account != account {
                continue;
            }
            for later in [0, MINUTE, HOUR] {
                let time = at(after.last_seen().millis() + later);
                assert_eq!(
                    after.usage(catalog, &subject_id(subject), time),
                    swept.usage(catalog, &subject_id(subject), time),
                    "a deny changed the windows of {}: {context}",
                    spec.id
                );
            }
        }
        // Once the deny's key is forgotten, the two states are one.
        let forgotten = at(after.last_seen().millis() + RETENTION);
        let mut after = after.clone();
        let mut swept = swept;
        after.advance(catalog, forgotten, &mut Vec::new());
        swept.advance(catalog, forgotten, &mut Vec::new());
        assert_eq!(after, swept, "a deny changed the account: {context}");
    }
}

/// Sorted, with the lapses of each grant summed into one.
fn merge_lapses(updates: Vec<(usize, Update)>) -> Vec<(usize, Update)> {
    let mut merged: Vec<(usize, Update)> = Vec::new();
    for (account, (source, delta, cause)) in updates {
        let same_lapse = merged.iter_mut().find(|(other_account, (other_source, _, other_cause))| {
            cause == "expiry" && *other_cause == "expiry" && *other_account == account && *other_source == source
        });
        match same_lapse {
            Some((_, (_, sum, _))) => *sum += delta,
            None => merged.push((account, (source, delta, cause))),
        }
    }
    merged.sort();
    merged
}

fn window_view(report: &window::WindowReport) -> WindowView {
    WindowView {
        id: report.window.to_string(),
        limit: report.limit,
        remaining: report.remaining,
        resets_at: report.resets_at.map(Timestamp::millis),
    }
}

/// An allowed decision or capture records one usage event, one monetization
/// event and debits summing to the charge; anything else records none (only
/// grants lapsing on the way).
fn check_decision_events(decision: &Decision, events: &[Event], context: &str) {
    let consumed = decision.allowed && matches!(decision.kind, DecisionKind::Decide | DecisionKind::Capture);
    if !consumed {
        check_no_usage(events, context);
        return;
    }
    let usage: Vec<&UsageEvent> = events
        .iter()
        .filter_map(|event| match event {
            Event::Usage(usage) => Some(usage),
            _ => None,
        })
        .collect();
    let monetization = events.iter().filter(|event| matches!(event, Event::Monetization(_))).count();
    let debited: i128 = events
        .iter()
        .filter_map(|event| match event {
            Event::Balance(update) if matches!(update.cause, BalanceCause::Debit { .. }) => {
                Some(-i128::from(update.delta))
            }
            _ => None,
        })
        .sum();
    assert_eq!(usage.len(), 1, "{context}");
    assert_eq!((usage[0].quantity, usage[0].window_units), (decision.quantity, decision.window_units()), "{context}");
    assert_eq!(monetization, 1, "{context}");
    assert_eq!(debited, i128::from(decision.credits_charged.micros()), "{context}");
}

/// Only grants lapsing: no usage, no monetization, no debit.
fn check_no_usage(events: &[Event], context: &str) {
    for event in events {
        let lapse = matches!(event, Event::Balance(update) if update.cause == BalanceCause::Expiry);
        let grant = matches!(event, Event::Balance(update) if matches!(update.cause, BalanceCause::Grant { .. }));
        assert!(lapse || grant, "unexpected event {event:?}: {context}");
    }
}

// ---------------------------------------------------------------------------
// The properties.

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Every decision, preview, grant, replay and conflict comes out as the
    /// oracle says, and so does every window and grant after every step.
    #[test]
    fn the_engine_decides_like_the_oracle(start in 0..DAY, operations in operations(false)) {
        Harness::run(start, &operations, Checks::default());
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// The same with reservations: reserve, capture below and above the
    /// estimate, release, expiry.
    #[test]
    fn reservations_hold_capture_and_release_like_the_oracle(
        start in 0..DAY,
        operations in operations(true),
    ) {
        Harness::run(start, &operations, Checks::default());
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_denied_decision_changes_nothing_but_its_key(start in 0..DAY, operations in operations(true)) {
        let checks = Checks { denials_change_nothing: true, ..Checks::default() };
        Harness::run(start, &operations, checks);
    }

    #[test]
    fn a_deny_says_the_earliest_time_a_retry_succeeds(start in 0..DAY, operations in operations(true)) {
        let checks = Checks { retry_times: true, ..Checks::default() };
        Harness::run(start, &operations, checks);
    }

    /// Fixed and anchored windows reset at the end of their instance, token
    /// buckets when full again.
    #[test]
    fn windows_report_when_they_are_whole_again(start in 0..DAY, operations in operations(true)) {
        let checks = Checks { reset_times: ResetTimes::ExceptSliding, ..Checks::default() };
        Harness::run(start, &operations, checks);
    }

    /// SPEC.md: a sliding window reports "when the next unit frees up".
    #[test]

    fn sliding_windows_report_when_the_next_unit_frees_up(
        start in 0..DAY,
        operations in operations(false),
    ) {
        let checks = Checks { reset_times: ResetTimes::Sliding, ..Checks::default() };
        Harness::run(start, &operations, checks);
    }
}
