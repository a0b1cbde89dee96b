//! Money in, as a property: decisions, paid checkouts (delivered twice,
//! reordered, for checkouts never opened), refunds (cumulative, out of
//! order), grant expiries, auto-recharges that succeed or fail and alert
//! deliveries, interleaved at random, keep every invariant. Run through the
//! embedded store (with a fake clock, so credits expire) and PostgreSQL;
//! afterwards the store's reconciliation finds nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use headroom_core::*;
use headroom_store::{Command, Refusal, Response, Store, StoreConfig, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

mod support;

const CATALOG: &str = r#"
[settings]
default_grant_expiry = "30d"

[features.task]
unit = "task"
price = 1_000_000

[plans.small]
[[plans.small.windows]]
id = "hourly"
meters = "task"
kind = "fixed"
period = "1h"
capacity = 10

[purchases]
currency = "usd"
price_per_credit = 3
min_credits = 5
max_credits = 1_000
credits_expire_after = "3h"

[alerts]
limit_approaching = 80
low_balance = 20_000_000
"#;

const CHECKOUTS: usize = 5;

#[derive(Debug, Clone)]
enum Step {
    Decide {
        subject: usize,
        quantity: u64,
        key: u8,
    },
    OpenCheckout {
        checkout: usize,
    },
    /// A paid checkout's webhook, delivered `copies` times.
    Paid {
        checkout: usize,
        copies: u8,
        amount_off: bool,
    },
    Refund {
        checkout: usize,
        percent: u64,
    },
    AutoRecharge {
        enabled: bool,
    },
    /// The worker: claim due work, then the provider's answer to a charge.
    Work {
        charge_paid: bool,
    },
    /// Minutes of time passing (the embedded store only).
    Wait {
        minutes: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..2usize, 1..8u64, 0..40u8).prop_map(|(subject, quantity, key)| Step::Decide { subject, quantity, key }),
        2 => (0..CHECKOUTS).prop_map(|checkout| Step::OpenCheckout { checkout }),
        2 => (0..CHECKOUTS, 1..4u8, proptest::bool::weighted(0.1))
            .prop_map(|(checkout, copies, amount_off)| Step::Paid { checkout, copies, amount_off }),
        1 => (0..CHECKOUTS, 0..=100u64).prop_map(|(checkout, percent)| Step::Refund { checkout, percent }),
        1 => proptest::bool::weighted(0.8).prop_map(|enabled| Step::AutoRecharge { enabled }),
        2 => proptest::bool::weighted(0.6).prop_map(|charge_paid| Step::Work { charge_paid }),
        1 => (1..120u64).prop_map(|minutes| Step::Wait { minutes }),
    ]
}

fn checkout_credits(checkout: usize) -> u64 {
    (checkout as u64 + 1) * 10
}

/// Runs `steps` on `account` in `store`, checking what each answer says.
fn run(store: &impl Store, account: &AccountId, steps: &[Step], clock: Option<&FakeClock>) {
    let plan = PlanId::new("small").unwrap();
    store.execute(Command::OpenAccount { account: account.clone(), plan, overdraft: None }).unwrap();
    let subjects: Vec<SubjectId> =
        (0..2).map(|index| SubjectId::new(&format!("{account}-user-{index}")).unwrap()).collect();
    for subject in &subjects {
        let put = Command::PutSubject { subject: subject.clone(), account: account.clone(), plan: None };
        store.execute(put).unwrap();
    }
    let payment = |checkout: usize| PaymentId::new(&format!("co_{account}_{checkout}")).unwrap();
    let billing = |op: BillingOp| store.execute(Command::Billing { account: account.clone(), op });
    let mut opened = [false; CHECKOUTS];
    // Grants made per payment, from the balance updates the commands recorded.
    let mut grants: BTreeMap<GrantId, u32> = BTreeMap::new();
    let mut count_grants = |response: &Response| {
        for event in response.events() {
            if let Event::Balance(BalanceUpdate { cause: BalanceCause::Grant { .. }, source, .. }) = event {
                let BalanceSource::Grant(grant) = source else { panic!("a grant update names a grant") };
                *grants.entry(grant.clone()).or_default() += 1;
            }
        }
    };
    for step in steps {
        match step {
            Step::Decide { subject, quantity, key } => {
                let request = DecisionRequest {
                    subject: subjects[*subject].clone(),
                    feature: FeatureId::new("task").unwrap(),
                    quantity: *quantity,
                    attributes: Attributes::default(),
                    idempotency_key: Some(IdempotencyKey::new(&format!("key-{key}")).unwrap()),
                    preview: false,
                };
                match store.execute(Command::Decide(request)) {
                    Ok(response) => count_grants(&response),
                    Err(StoreError::Refused(Refusal::Core(CoreError::IdempotencyConflict(_)))) => {}
                    Err(error) => panic!("decide: {error}"),
                }
            }
            Step::OpenCheckout { checkout } => {
                let credits = checkout_credits(*checkout);
                let op = BillingOp::OpenCheckout {
                    payment: payment(*checkout),
                    credits: Credits::from_micros(credits * 1_000_000),
                    amount: credits * 3,
                    currency: "usd".to_string(),
                };
                match billing(op) {
                    Ok(_) => opened[*checkout] = true,
                    // Reopened after it lapsed or was paid: the same record.
                    Err(error) => panic!("open checkout: {error}"),
                }
            }
            Step::Paid { checkout, copies, amount_off } => {
                let amount = checkout_credits(*checkout) * 3 + u64::from(*amount_off);
                for _ in 0..*copies {
                    let op = BillingOp::CompleteCheckout {
                        payment: payment(*checkout),
                        amount,
                        currency: "usd".to_string(),
                        provider_ref: None,
                    };
                    match billing(op) {
                        Ok(response) => {
                            assert!(opened[*checkout] && !amount_off, "only an opened, matching checkout is paid");
                            count_grants(&response);
                        }
                        Err(StoreError::Refused(Refusal::Core(CoreError::UnknownPayment(_)))) => {}
                        Err(StoreError::Refused(Refusal::Core(CoreError::PaymentMismatch(_)))) => {
                            assert!(*amount_off);
                        }
                        Err(error) => panic!("complete checkout: {error}"),
                    }
                }
            }
            Step::Refund { checkout, percent } => {
                let amount = checkout_credits(*checkout) * 3;
                let op = BillingOp::Refund {
                    payment: payment(*checkout),
                    refunded_amount: amount * percent / 100,
                    currency: "usd".to_string(),
                };
                match billing(op) {
                    Ok(_) | Err(StoreError::Refused(Refusal::Core(CoreError::UnknownPayment(_)))) => {}
                    Err(error) => panic!("refund: {error}"),
                }
            }
            Step::AutoRecharge { enabled } => {
                let op = BillingOp::SetAutoRecharge {
                    enabled: *enabled,
                    minimum: Credits::from_micros(15_000_000),
                    target: Credits::from_micros(40_000_000),
                    customer: Some(ProviderRef::new("cus_1").unwrap()),
                    payment_method: Some(ProviderRef::new("pm_1").unwrap()),
                };
                billing(op).unwrap();
            }
            Step::Work { charge_paid } => {
                let Response::Billing { answer, .. } = billing(BillingOp::ClaimWork { notices_max: 10 }).unwrap()
                else {
                    panic!("a claim answers with work");
                };
                let BillingAnswer::Work(work) = *answer else { panic!("a claim answers with work") };
                if let Some(charge) = work.charge {
                    let op = if *charge_paid {
                        BillingOp::RechargePaid { payment: charge.payment.id, provider_ref: None }
                    } else {
                        BillingOp::RechargeFailed { payment: charge.payment.id, reason: "card_declined".to_string() }
                    };
                    count_grants(&billing(op).unwrap());
                }
                for notice in work.notices {
                    let op = BillingOp::NoticeDelivered { notice: notice.id, endpoints: vec![1], complete: true };
                    billing(op).unwrap();
                }
            }
            Step::Wait { minutes } => {
                if let Some(clock) = clock {
                    clock.advance(Duration::from_millis(minutes * 60_000));
                    store.execute(Command::Advance).unwrap();
                }
            }
        }
    }
    for (grant, count) in &grants {
        assert_eq!(*count, 1, "{grant} was granted {count} times");
    }
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

#[test]
fn payments_refunds_recharges_and_alerts_keep_every_invariant_in_the_embedded_store() {
    let catalog = Arc::new(Catalog::from_toml(CATALOG).unwrap());
    let mut runner = TestRunner::new(config(48));
    let cases = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&proptest::collection::vec(step(), 1..80), |steps| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let directory = support::Directory::new(&format!("billing-{case}"));
            let clock = Arc::new(FakeClock::new(Timestamp::from_millis(1_800_000_000_000)));
            let store =
                headroom_store::EmbeddedStore::open(StoreConfig::new(directory.data()), catalog.clone(), clock.clone())
                    .unwrap();
            let account = AccountId::new("acme").unwrap();
            run(&store, &account, &steps, Some(&clock));
            store.query(|engine| engine.check_invariants()).unwrap().unwrap();
            store.wait_settled(std::time::Duration::from_secs(30)).unwrap();
            store.close();
            let report = headroom_store::reconcile::reconcile(&directory.data()).unwrap();
            prop_assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
            Ok(())
        })
        .unwrap();
}

#[test]
fn payments_refunds_recharges_and_alerts_keep_every_invariant_in_postgresql() {
    let postgres = support::postgres::Postgres::start();
    let catalog = Arc::new(Catalog::from_toml(CATALOG).unwrap());
    let config_of = || headroom_store::PostgresConfig {
        sweep_every: std::time::Duration::from_millis(20),
        ..headroom_store::PostgresConfig::new(postgres.url())
    };
    let store = headroom_store::PostgresStore::open(config_of(), catalog).unwrap();
    let mut runner = TestRunner::new(config(12));
    let cases = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&proptest::collection::vec(step(), 1..60), |steps| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let account = AccountId::new(&format!("acme{case}")).unwrap();
            run(&store, &account, &steps, None);
            let state = store.account(&account).unwrap().unwrap();
            state.check_invariants(store.catalog()).unwrap();
            Ok(())
        })
        .unwrap();
    // Every account whose outbox still holds alerts is one the workers find.
    let due = store.due_work(1_000).unwrap();
    for account in &due {
        assert!(store.account(account).unwrap().unwrap().has_work(), "{account} has no work");
    }
    store.wait_settled(std::time::Duration::from_secs(30)).unwrap();
    store.close();
    let report = headroom_store::postgres::reconcile(&postgres.url()).unwrap();
    assert!(report.accounts >= 12, "{report:?}");
    assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
}
