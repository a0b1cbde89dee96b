//! Scenarios of the decision core, one rule each.

use std::sync::Arc;

use headroom_core::*;

const CATALOG: &str = r#"
[settings]
idempotency_retention = "24h"

[features.task]
unit = "task"
price = 1_000_000

[features.video]
unit = "second"
price_by = "resolution"
prices = { "480p" = 10, "1080p" = 30 }

[features.free]
unit = "call"
price = 0

[groups.agent]
weights = { task = 1, video = 2 }

[plans.basic]
[[plans.basic.windows]]
id = "hourly"
meters = "task"
kind = "fixed"
capacity = 10
period = "1h"
[[plans.basic.windows]]
id = "daily"
meters = "task"
kind = "fixed"
capacity = 15
period = "1d"
[[plans.basic.windows]]
id = "calls"
meters = "free"
kind = "sliding"
capacity = 3
period = "10s"
buckets = 10

[plans.first]
[[plans.first.windows]]
id = "x"
meters = "task"
kind = "fixed"
capacity = 10
period = "1h"

[plans.second]
[[plans.second.windows]]
id = "v"
meters = "free"
kind = "fixed"
capacity = 10
period = "1h"
[[plans.second.windows]]
id = "x"
meters = "task"
kind = "fixed"
capacity = 5
period = "1h"

[plans.team]
overdraft = 2_000_000
[[plans.team.windows]]
id = "member"
meters = "task"
kind = "anchored"
capacity = 5
period = "5h"
[[plans.team.windows]]
id = "org"
meters = "task"
scope = "account"
kind = "fixed"
capacity = 8
period = "1d"
"#;

const HOUR: u64 = 3_600_000;

struct World {
    engine: Engine,
    now: Timestamp,
    events: Vec<Event>,
}

impl World {
    fn new(plan: &str) -> World {
        let catalog = Arc::new(Catalog::from_toml(CATALOG).unwrap());
        let mut engine = Engine::new(catalog);
        let now = Timestamp::from_millis(1_795_392_000_000);
        let account = AccountId::new("acme").unwrap();
        let events = engine.open_account(account.clone(), &PlanId::new(plan).unwrap(), None, now).unwrap();
        engine.put_subject(SubjectId::new("alice").unwrap(), &account, None).unwrap();
        engine.put_subject(SubjectId::new("bob").unwrap(), &account, None).unwrap();
        World { engine, now, events }
    }

    fn account() -> AccountId {
        AccountId::new("acme").unwrap()
    }

    fn grant(&mut self, id: &str, kind: GrantKind, credits: u64, priority: u32, expires_in_ms: Option<u64>) {
        let request = GrantRequest {
            grant: GrantId::new(id).unwrap(),
            kind,
            credits: Credits::from_micros(credits),
            priority,
            expires_at: expires_in_ms.map(|ms| Timestamp::from_millis(self.now.millis() + ms)),
            idempotency_key: IdempotencyKey::new(&format!("grant-{id}")).unwrap(),
        };
        let outcome = self.engine.add_grant(&World::account(), &request, self.now).unwrap();
        self.events.extend(outcome.events);
    }

    fn request(subject: &str, feature: &str, quantity: u64, key: &str) -> DecisionRequest {
        DecisionRequest {
            subject: SubjectId::new(subject).unwrap(),
            feature: FeatureId::new(feature).unwrap(),
            quantity,
            attributes: Attributes::default(),
            idempotency_key: Some(IdempotencyKey::new(key).unwrap()),
            preview: false,
        }
    }

    fn decide(&mut self, request: &DecisionRequest) -> Arc<Decision> {
        let outcome = self.engine.decide(request, self.now).unwrap();
        self.events.extend(outcome.events);
        self.check();
        outcome.result
    }

    fn task(&mut self, subject: &str, quantity: u64, key: &str) -> Arc<Decision> {
        self.decide(&World::request(subject, "task", quantity, key))
    }

    fn check(&self) {
        self.engine.check_invariants().unwrap();
        let mut audit = invariants::EventAudit::new();
        for event in &self.events {
            audit.record(event).unwrap();
        }
        audit.check_links().unwrap();
    }

    fn settle_all(&mut self) -> Vec<Settlement> {
        let updates: Vec<BalanceUpdate> = self
            .events
            .iter()
            .filter_map(|event| match event {
                Event::Balance(update) => Some(update.clone()),
                _ => None,
            })
            .collect();
        let account = self.engine.account_mut(&World::account()).unwrap();
        updates.iter().map(|update| account.settle(update).unwrap()).collect()
    }

    fn available(&self) -> Credits {
        self.engine.account(&World::account()).unwrap().wallet().available(self.now)
    }
}

fn units(decision: &Decision, predicate: impl Fn(&Source) -> bool) -> u64 {
    decision.units_from(predicate)
}

#[test]
fn windows_cover_first_and_the_same_request_spills_into_credits() {
    let mut world = World::new("basic");
    world.grant("promo", GrantKind::Promotion, 3_000_000, 0, None);
    world.grant("bought", GrantKind::Purchase, 10_000_000, 0, None);
    world.grant("free", GrantKind::FreeTier, 1_500_000, 0, None);

    let first = world.task("alice", 8, "k1");
    assert!(first.allowed);
    assert_eq!(first.reason, Reason::CoveredByWindows);
    assert_eq!(first.windows.iter().map(|w| w.remaining).collect::<Vec<_>>(), vec![2, 7]);

    // 2 units left in the hourly window; 5 more flow down the waterfall:
    // free tier first, then promotion, then purchase. A unit whose price
    // spans two grants counts where its cumulative price ends: 1.5 credits
    // make 1 unit, 4.5 make 4 (so 3 from the promotion), 5 make 5.
    let second = world.task("alice", 7, "k2");
    assert!(second.allowed);
    assert_eq!(second.reason, Reason::CoveredByWindowsAndCredits);
    assert_eq!(units(&second, |s| *s == Source::Windows), 2);
    let credit_sources: Vec<(String, u64, u64)> = second
        .sources
        .iter()
        .filter_map(|used| match &used.source {
            Source::Grant { grant, .. } => Some((grant.to_string(), used.units, used.credits.micros())),
            _ => None,
        })
        .collect();
    assert_eq!(
        credit_sources,
        vec![
            ("free".to_string(), 1, 1_500_000),
            ("promo".to_string(), 3, 3_000_000),
            ("bought".to_string(), 1, 500_000)
        ]
    );
    assert_eq!(second.credits_charged, Credits::from_micros(5_000_000));
    assert_eq!(second.available, Credits::from_micros(9_500_000));
    assert_eq!(second.sources.iter().map(|used| used.units).sum::<u64>(), 7);
}

#[test]
fn a_deny_consumes_nothing_and_says_when_to_retry() {
    let mut world = World::new("basic");
    world.grant("bought", GrantKind::Purchase, 2_000_000, 0, None);
    world.task("alice", 10, "fill");
    let before = world.engine.account(&World::account()).unwrap().clone();

    let denied = world.task("alice", 3, "too-much");
    assert!(!denied.allowed);
    assert_eq!(denied.reason, Reason::InsufficientCredits);
    assert!(denied.sources.is_empty());
    assert_eq!(denied.credits_short, Credits::from_micros(1_000_000));
    // Two units are buyable now; the third needs the hourly window, which
    // resets at the next hour.
    assert_eq!(denied.retry_at, Some(Timestamp::from_millis(world.now.millis() + HOUR)));
    let after = world.engine.account(&World::account()).unwrap();
    assert_eq!(before.wallet(), after.wallet(), "a deny spends nothing");
    assert!(world.events.iter().all(|event| !matches!(event, Event::Usage(usage) if usage.quantity == 3)));

    // Without any credits the reason is the limit itself.
    let mut empty = World::new("basic");
    empty.task("bob", 10, "fill");
    let denied = empty.task("bob", 1, "more");
    assert_eq!(denied.reason, Reason::LimitReached);
}

#[test]
fn every_window_must_hold() {
    let mut world = World::new("basic");
    world.task("alice", 10, "a");
    world.now = Timestamp::from_millis(world.now.millis() + HOUR);
    // The hourly window reset, but the daily one has only 5 left.
    let decision = world.task("alice", 10, "b");
    assert!(!decision.allowed);
    let decision = world.task("alice", 5, "c");
    assert!(decision.allowed);
    assert_eq!(decision.windows.iter().map(|w| w.remaining).collect::<Vec<_>>(), vec![5, 0]);
}

#[test]
fn an_organization_cap_holds_across_members_with_their_own_windows() {
    let mut world = World::new("team");
    assert!(world.task("alice", 5, "a1").allowed);
    assert!(world.task("bob", 3, "b1").allowed);
    // The organization's daily window (8) is now full: bob's own window has
    // room, but every window must hold. The overdraft (2 credits) covers two.
    let decision = world.task("bob", 2, "b2");
    assert!(decision.allowed);
    assert_eq!(units(&decision, |s| *s == Source::Overdraft), 2);
    let denied = world.task("bob", 1, "b3");
    assert!(!denied.allowed);
    assert_eq!(denied.reason, Reason::LimitReached);
    assert!(!world.task("alice", 1, "a2").allowed);
    // The org window resets the next day; alice's anchored 5 h window
    // reopens earlier, but waiting for it alone does not help.
    assert_eq!(denied.retry_at.unwrap().millis() % 86_400_000, 0);
}

#[test]
fn preview_decides_without_consuming() {
    let mut world = World::new("basic");
    let mut request = World::request("alice", "task", 4, "p");
    request.preview = true;
    request.idempotency_key = None;
    let preview = world.decide(&request);
    assert!(preview.allowed);
    assert_eq!(preview.kind, DecisionKind::Preview);
    let real = world.task("alice", 10, "real");
    assert!(real.allowed, "the preview consumed nothing");
}

#[test]
fn a_replay_returns_the_original_and_a_changed_request_conflicts() {
    let mut world = World::new("basic");
    world.grant("bought", GrantKind::Purchase, 5_000_000, 0, None);
    let request = World::request("alice", "task", 12, "same");
    let first = world.engine.decide(&request, world.now).unwrap();
    let replay = world.engine.decide(&request, world.now).unwrap();
    assert!(replay.replayed);
    assert!(replay.events.is_empty());
    assert_eq!(first.result, replay.result);
    assert_eq!(world.available(), Credits::from_micros(3_000_000), "charged once");

    let changed = World::request("alice", "task", 13, "same");
    assert_eq!(
        world.engine.decide(&changed, world.now).unwrap_err(),
        CoreError::IdempotencyConflict(IdempotencyKey::new("same").unwrap())
    );
    // After the retention period the key is forgotten; the money stays recorded.
    world.now = Timestamp::from_millis(world.now.millis() + 24 * HOUR);
    let again = world.engine.decide(&changed, world.now).unwrap();
    assert!(!again.replayed);
}

#[test]
fn prices_follow_attributes_and_groups_weigh_features() {
    let catalog = Catalog::from_toml(CATALOG).unwrap();
    let mut request = World::request("alice", "video", 10, "v");
    let mut world = World::new("basic");
    assert!(matches!(world.engine.decide(&request, world.now), Err(CoreError::MissingAttribute { .. })));
    request.attributes = Attributes::new(vec![("resolution".into(), "4k".into())]).unwrap();
    assert!(matches!(world.engine.decide(&request, world.now), Err(CoreError::UnknownAttributeValue { .. })));
    request.attributes = Attributes::new(vec![("resolution".into(), "1080p".into())]).unwrap();
    world.grant("bought", GrantKind::Purchase, 1_000, 0, None);
    let decision = world.decide(&request);
    assert_eq!(decision.price, Credits::from_micros(30));
    assert_eq!(decision.credits_charged, Credits::from_micros(300));
    assert!(catalog.groups.contains_key(&GroupId::new("agent").unwrap()));
}

#[test]
fn a_free_feature_is_limited_by_its_window_alone() {
    let mut world = World::new("basic");
    world.grant("bought", GrantKind::Purchase, 5_000_000, 0, None);
    assert!(world.decide(&World::request("alice", "free", 3, "f1")).allowed);
    let denied = world.decide(&World::request("alice", "free", 1, "f2"));
    assert!(!denied.allowed);
    assert_eq!(denied.credits_short, Credits::ZERO);
    // Sliding, 10 s in 10 buckets: the calls free up 11 s later at the latest.
    let retry = denied.retry_at.unwrap();
    assert!(retry.millis() > world.now.millis() && retry.millis() <= world.now.millis() + 11_000);
    world.now = retry;
    assert!(world.decide(&World::request("alice", "free", 3, "f3")).allowed);
}

#[test]
fn expired_grants_are_never_spent_and_lapse_with_an_entry() {
    let mut world = World::new("basic");
    world.grant("promo", GrantKind::Promotion, 3_000_000, 0, Some(HOUR));
    world.grant("bought", GrantKind::Purchase, 1_000_000, 0, None);
    world.task("alice", 10, "fill");
    world.now = Timestamp::from_millis(world.now.millis() + HOUR + 1);
    world.task("alice", 5, "fill2"); // the hourly window has reset; the daily one is full now
    let decision = world.task("alice", 2, "after-expiry");
    assert!(!decision.allowed, "only the purchase (1 credit) is spendable");
    let expiry: Vec<i64> = world
        .events
        .iter()
        .filter_map(|event| match event {
            Event::Balance(update) if update.cause == BalanceCause::Expiry => Some(update.delta),
            _ => None,
        })
        .collect();
    assert_eq!(expiry, vec![-3_000_000]);
    world.settle_all();
    world.check();
}

#[test]
fn grants_are_spent_by_priority_then_earliest_expiry() {
    let mut world = World::new("basic");
    world.grant("late", GrantKind::Purchase, 1_000_000, 0, Some(10 * HOUR));
    world.grant("never", GrantKind::Purchase, 1_000_000, 0, None);
    world.grant("soon", GrantKind::Purchase, 1_000_000, 0, Some(2 * HOUR));
    world.grant("first", GrantKind::Purchase, 1_000_000, 0, Some(HOUR / 2)); // soonest, but priority 0
    world.grant("urgent", GrantKind::Purchase, 1_000_000, 0, Some(HOUR / 4));
    world.task("alice", 10, "fill");
    let decision = world.task("alice", 4, "spend");
    let order: Vec<String> = decision
        .sources
        .iter()
        .filter_map(|used| match &used.source {
            Source::Grant { grant, .. } => Some(grant.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["urgent", "first", "soon", "late"]);
}

fn reserve(world: &mut World, quantity: u64, key: &str) -> Arc<Decision> {
    let request = ReserveRequest {
        subject: SubjectId::new("alice").unwrap(),
        feature: FeatureId::new("task").unwrap(),
        quantity,
        attributes: Attributes::default(),
        idempotency_key: IdempotencyKey::new(key).unwrap(),
        lifetime: Some(Duration::from_seconds(60)),
    };
    let outcome = world.engine.reserve(&request, world.now).unwrap();
    world.events.extend(outcome.events);
    world.check();
    outcome.result
}

fn capture(world: &mut World, reservation: ReservationId, quantity: u64, key: &str) -> Arc<Decision> {
    let request = CaptureRequest { reservation, quantity, idempotency_key: IdempotencyKey::new(key).unwrap() };
    let outcome = world.engine.capture(&AccountId::new("acme").unwrap(), &request, world.now).unwrap();
    world.events.extend(outcome.events);
    world.check();
    outcome.result
}

#[test]
fn a_capture_below_the_estimate_returns_the_rest() {
    let mut world = World::new("basic");
    world.grant("bought", GrantKind::Purchase, 5_000_000, 0, None);
    let reserved = reserve(&mut world, 13, "r");
    assert_eq!(world.available(), Credits::from_micros(2_000_000), "3 credits held");
    let id = reserved.reservation.as_ref().unwrap().id;
    let captured = capture(&mut world, id, 9, "c");
    assert_eq!(captured.reason, Reason::CoveredByWindows);
    assert_eq!(world.available(), Credits::from_micros(5_000_000));
    assert_eq!(world.task("bob", 1, "bob").windows[0].remaining, 9, "bob's windows are his own");
    let again = world.task("alice", 1, "more");
    assert_eq!(again.windows[0].remaining, 0, "alice used 9 + 1 of 10");
}

#[test]
fn a_capture_above_the_estimate_takes_the_waterfall_then_writes_off() {
    let mut world = World::new("basic");
    world.grant("bought", GrantKind::Purchase, 2_500_000, 0, None);
    let reserved = reserve(&mut world, 11, "r");
    let id = reserved.reservation.as_ref().unwrap().id;
    // 10 from windows, 1 held credit; the extra 4 find 1.5 credits and the
    // remaining 2.5 credits are written off.
    let captured = capture(&mut world, id, 15, "c");
    assert!(captured.allowed);
    assert_eq!(captured.reason, Reason::PartlyWrittenOff);
    assert_eq!(captured.credits_charged, Credits::from_micros(2_500_000));
    let write_off = captured.sources.iter().find(|used| used.source == Source::WriteOff).unwrap();
    assert_eq!(write_off.credits, Credits::from_micros(2_500_000));
    assert_eq!(captured.sources.iter().map(|used| used.units).sum::<u64>(), 15);
    assert_eq!(world.available(), Credits::ZERO);
    world.settle_all();
    world.check();

    // The same capture key again is a replay; another key finds the reservation closed.
    let replay = world
        .engine
        .capture(
            &AccountId::new("acme").unwrap(),
            &CaptureRequest { reservation: id, quantity: 15, idempotency_key: IdempotencyKey::new("c").unwrap() },
            world.now,
        )
        .unwrap();
    assert!(replay.replayed);
    let closed = world.engine.capture(
        &AccountId::new("acme").unwrap(),
        &CaptureRequest { reservation: id, quantity: 15, idempotency_key: IdempotencyKey::new("c2").unwrap() },
        world.now,
    );
    assert_eq!(closed.unwrap_err(), CoreError::UnknownReservation(id));
}

#[test]
fn an_unreleased_reservation_expires_by_itself() {
    let mut world = World::new("basic");
    world.grant("bought", GrantKind::Purchase, 5_000_000, 0, None);
    let reserved = reserve(&mut world, 12, "r");
    assert_eq!(world.available(), Credits::from_micros(3_000_000));
    world.now = Timestamp::from_millis(world.now.millis() + 60_000);
    let events = world.engine.advance_all(world.now);
    world.events.extend(events);
    world.check();
    assert_eq!(world.available(), Credits::from_micros(5_000_000));
    assert_eq!(world.task("alice", 10, "after").reason, Reason::CoveredByWindows);
    let id = reserved.reservation.as_ref().unwrap().id;
    let release = ReleaseRequest { reservation: id, idempotency_key: IdempotencyKey::new("late").unwrap() };
    assert_eq!(
        world.engine.release(&AccountId::new("acme").unwrap(), &release, world.now).unwrap_err(),
        CoreError::UnknownReservation(id)
    );
}

#[test]
fn settlement_is_idempotent_in_order_and_conserves_the_balance() {
    let mut world = World::new("basic");
    world.grant("bought", GrantKind::Purchase, 5_000_000, 0, None);
    world.task("alice", 12, "k");
    let first = world.settle_all();
    assert!(first.iter().all(|settled| matches!(settled, Settlement::Applied { write_off } if write_off.is_zero())));
    let second = world.settle_all();
    assert!(second.iter().all(|settled| *settled == Settlement::AlreadySettled));
    let account = world.engine.account(&World::account()).unwrap();
    assert_eq!(account.wallet().settled_balance(), 3_000_000);
    assert_eq!(account.unsettled(), 0);
    world.check();

    // Out of order is refused.
    world.task("alice", 1, "k2");
    world.task("alice", 1, "k3");
    let updates: Vec<BalanceUpdate> = world
        .events
        .iter()
        .filter_map(|event| match event {
            Event::Balance(update) => Some(update.clone()),
            _ => None,
        })
        .collect();
    let last = updates.last().unwrap().clone();
    let account = world.engine.account_mut(&World::account()).unwrap();
    assert!(matches!(account.settle(&last), Err(SettleError::OutOfOrder { .. })));
}

#[test]
fn a_clock_step_back_cannot_reopen_a_window() {
    let mut world = World::new("basic");
    world.now = Timestamp::from_millis(world.now.millis() + HOUR);
    world.task("alice", 10, "a");
    world.now = Timestamp::from_millis(world.now.millis() - HOUR);
    let decision = world.task("alice", 1, "b");
    assert!(!decision.allowed, "the account still sees the later time");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut world = World::new("basic");
    let before = world.engine.account(&World::account()).unwrap().clone();
    let zero = World::request("alice", "task", 0, "z");
    assert!(matches!(world.engine.decide(&zero, world.now), Err(CoreError::InvalidQuantity { .. })));
    let huge = World::request("alice", "task", limits::QUANTITY_MAX + 1, "h");
    assert!(matches!(world.engine.decide(&huge, world.now), Err(CoreError::InvalidQuantity { .. })));
    let unknown = World::request("alice", "nope", 1, "u");
    assert!(matches!(world.engine.decide(&unknown, world.now), Err(CoreError::UnknownFeature(_))));
    let stranger = World::request("mallory", "task", 1, "m");
    assert!(matches!(world.engine.decide(&stranger, world.now), Err(CoreError::UnknownSubject(_))));
    let mut keyless = World::request("alice", "task", 1, "x");
    keyless.idempotency_key = None;
    assert_eq!(world.engine.decide(&keyless, world.now).unwrap_err(), CoreError::IdempotencyKeyRequired);
    assert_eq!(&before, world.engine.account(&World::account()).unwrap());
}

#[test]
fn a_plan_change_keeps_holds_with_their_windows_and_never_reopens_one() {
    let mut world = World::new("first");
    let reserved = reserve(&mut world, 10, "r");
    world.engine.set_plan(&World::account(), &PlanId::new("second").unwrap(), None).unwrap();
    world.check(); // the 10 units counted in x fit the new capacity of 5: x is full, not over
    assert!(!world.task("alice", 1, "t").allowed, "x stays full after the downgrade");
    assert!(world.decide(&World::request("alice", "free", 10, "f")).allowed);
    // Releasing returns the held units to x, found by id, never to v.
    let release = ReleaseRequest {
        reservation: reserved.reservation.as_ref().unwrap().id,
        idempotency_key: IdempotencyKey::new("rel").unwrap(),
    };
    world.engine.release(&AccountId::new("acme").unwrap(), &release, world.now).unwrap();
    world.check();
    assert!(!world.decide(&World::request("alice", "free", 1, "f2")).allowed, "v is still full");
    assert!(world.task("alice", 5, "t2").allowed, "x got its units back");
}
