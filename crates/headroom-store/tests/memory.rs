//! The in-memory twin with injected write and sync failures: a command
//! either happens whole and is acknowledged, or fails clearly and changes
//! nothing.

use std::sync::Arc;

use headroom_core::*;
use headroom_store::*;

#[test]
fn a_failed_write_or_sync_changes_nothing() {
    let clock = Arc::new(FakeClock::new(Timestamp::from_millis(1_795_392_000_000)));
    let faults = Faults { seed: 7, write_failure_one_in: 5, sync_failure_one_in: 5 };
    let store = MemoryStore::new(Arc::new(Catalog::demo()), clock.clone(), faults);
    let account = AccountId::new("acme").unwrap();
    let retry = |command: Command| loop {
        match store.execute(command.clone()) {
            Err(StoreError::Unavailable(_)) => continue,
            other => break other,
        }
    };
    retry(Command::OpenAccount { account: account.clone(), plan: PlanId::new("plus").unwrap(), overdraft: None })
        .unwrap();
    retry(Command::PutSubject { subject: SubjectId::new("ada").unwrap(), account: account.clone(), plan: None })
        .unwrap();

    let (mut failures, mut acknowledged) = (0, 0);
    for index in 0..400 {
        clock.advance(Duration::from_seconds(30));
        let command = if index % 10 == 0 {
            Command::AddGrant {
                account: account.clone(),
                request: GrantRequest {
                    grant: GrantId::new(&format!("g{index}")).unwrap(),
                    kind: GrantKind::Purchase,
                    credits: Credits::from_micros(1_000_000),
                    priority: 0,
                    expires_at: None,
                    idempotency_key: IdempotencyKey::new(&format!("grant-{index}")).unwrap(),
                },
            }
        } else {
            Command::Decide(DecisionRequest {
                subject: SubjectId::new("ada").unwrap(),
                feature: FeatureId::new("codex.local_task").unwrap(),
                quantity: 3,
                attributes: Attributes::default(),
                idempotency_key: Some(IdempotencyKey::new(&format!("k{index}")).unwrap()),
                preview: false,
            })
        };
        let before: Vec<AccountState> = store.query(|engine| engine.accounts().cloned().collect()).unwrap();
        match store.execute(command) {
            Ok(_) => acknowledged += 1,
            Err(StoreError::Unavailable(message)) => {
                failures += 1;
                assert!(message.contains("injected"), "{message}");
                let after: Vec<AccountState> = store.query(|engine| engine.accounts().cloned().collect()).unwrap();
                assert_eq!(before, after, "a failed command changed state");
            }
            Err(other) => panic!("unexpected {other}"),
        }
        // What a restart recovers is exactly what was acknowledged.
        let recovered: Vec<AccountState> = store.recover().accounts().cloned().collect();
        let live: Vec<AccountState> = store.query(|engine| engine.accounts().cloned().collect()).unwrap();
        assert_eq!(recovered, live);
    }
    assert!(failures > 50 && acknowledged > 50, "{failures} failures, {acknowledged} acknowledged");
}
