//! `headroom reconcile --store postgres://…`: the embedded reconciliation's
//! checks over the database, reading only.

use std::collections::HashMap;
use std::sync::Arc;

use headroom_core::invariants::EventAudit;
use headroom_core::*;

use super::{connect, corrupt, decode, decode_state, unavailable};
use crate::StoreError;
use crate::reconcile::ReconcileReport;

/// Runs every check of the embedded store's reconciliation that does not
/// need a command log, over one consistent snapshot of the database,
/// reading only:
///
/// - every account state passes the core's own checks (no grant below
///   zero, no window over capacity, holds and keys within bounds);
/// - the three datasets link exactly once (each usage event has one
///   monetization event, whose debits sum to its amount less its
///   write-off; balance updates of an account are numbered 1, 2, 3… with no
///   gap; every correction names a balance update);
/// - settlement agrees with the state: the updates at or below an account's
///   `settled_through` are marked settled and no others;
/// - conservation: per wallet, settled balance updates and corrections sum
///   to the balance of record;
/// - every subject row names an account that has that subject, and back.
pub fn reconcile(url: &str) -> Result<ReconcileReport, StoreError> {
    let mut client = connect(url)?;
    let failed = |error: postgres::Error| unavailable(&error);
    let mut transaction = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(failed)?;
    let catalog_text: String = transaction
        .query_opt("SELECT value FROM headroom_settings WHERE key = 'catalog'", &[])
        .map_err(failed)?
        .ok_or_else(|| StoreError::Unavailable("the database holds no Headroom schema".to_string()))?
        .get(0);
    let catalog = Catalog::from_toml(&catalog_text).map_err(|error| corrupt("catalog", error))?;
    let mut report = ReconcileReport::default();
    let mut problems = Vec::new();

    let mut accounts = Vec::new();
    for row in transaction.query("SELECT id, state FROM accounts ORDER BY id", &[]).map_err(failed)? {
        let state = decode_state(row.get(1))?;
        if state.id().as_str() != row.get::<_, &str>(0) {
            problems.push(format!("account row {} holds the state of {}", row.get::<_, &str>(0), state.id()));
        }
        accounts.push(state);
    }
    let engine = Engine::from_accounts(Arc::new(catalog), accounts);
    if let Err(problem) = engine.check_invariants() {
        problems.push(problem);
    }

    let mut audit = EventAudit::new();
    let mut record = |event: Event, problems: &mut Vec<String>| {
        if let Err(problem) = audit.record(&event) {
            problems.push(problem);
        }
    };
    for row in transaction.query("SELECT body FROM usage_events ORDER BY account, at, id", &[]).map_err(failed)? {
        record(Event::Usage(decode(row.get(0), "usage event")?), &mut problems);
    }
    for row in
        transaction.query("SELECT body FROM monetization_events ORDER BY account, at, id", &[]).map_err(failed)?
    {
        record(Event::Monetization(decode(row.get(0), "monetization event")?), &mut problems);
    }
    let mut ledger: HashMap<AccountId, i128> = HashMap::new();
    let mut settled_through: HashMap<AccountId, u64> = HashMap::new();
    let mut updates_per_account: HashMap<AccountId, u64> = HashMap::new();
    for row in transaction
        .query("SELECT body, settled FROM balance_updates ORDER BY account, sequence", &[])
        .map_err(failed)?
    {
        let update: BalanceUpdate = decode(row.get(0), "balance update")?;
        let settled: bool = row.get(1);
        *updates_per_account.entry(update.account.clone()).or_default() += 1;
        let expected = engine.account(&update.account).map(AccountState::settled_through);
        match expected {
            None => problems.push(format!("balance update {} names unknown account {}", update.id, update.account)),
            Some(through) if settled != (update.sequence <= through) => problems.push(format!(
                "balance update {} (account {}, sequence {}) is marked {} but the account is settled through {through}",
                update.id,
                update.account,
                update.sequence,
                if settled { "settled" } else { "unsettled" },
            )),
            Some(_) => {}
        }
        if settled {
            report.settled_updates += 1;
            *ledger.entry(update.account.clone()).or_default() += i128::from(update.delta);
            let last = settled_through.entry(update.account.clone()).or_default();
            *last = (*last).max(update.sequence);
        } else {
            report.unsettled_updates += 1;
        }
        record(Event::Balance(update), &mut problems);
    }
    for row in transaction.query("SELECT body FROM corrections ORDER BY account, at, id", &[]).map_err(failed)? {
        let correction: Correction = decode(row.get(0), "correction")?;
        *ledger.entry(correction.account.clone()).or_default() += i128::from(correction.write_off.micros());
        record(Event::Correction(correction), &mut problems);
    }
    if let Err(problem) = audit.check_links() {
        problems.push(problem);
    }
    crate::reconcile::check_conservation(&engine, &ledger, &mut problems);
    for account in engine.accounts() {
        let recorded = updates_per_account.get(account.id()).copied().unwrap_or(0);
        let decided = account.settled_through() + account.unsettled();
        if recorded != decided {
            problems
                .push(format!("account {}: {decided} balance updates decided but {recorded} recorded", account.id()));
        }
        let through = settled_through.get(account.id()).copied().unwrap_or(0);
        if through != account.settled_through() {
            problems.push(format!(
                "account {}: settled through {} but the ledger's settled updates reach {through}",
                account.id(),
                account.settled_through()
            ));
        }
    }

    let mut subject_rows = 0u64;
    for row in transaction.query("SELECT id, account FROM subjects", &[]).map_err(failed)? {
        subject_rows += 1;
        let (subject, account): (&str, &str) = (row.get(0), row.get(1));
        let held = AccountId::new(account)
            .ok()
            .and_then(|account| engine.account(&account))
            .is_some_and(|state| state.subjects().any(|known| known.as_str() == subject));
        if !held {
            problems.push(format!("subject {subject} is recorded for account {account}, which does not have it"));
        }
    }
    let subjects_in_states: u64 = engine.accounts().map(|account| account.subjects().count() as u64).sum();
    if subjects_in_states != subject_rows {
        problems.push(format!("accounts hold {subjects_in_states} subjects but {subject_rows} are recorded"));
    }
    transaction.commit().map_err(failed)?;

    report.accounts = engine.accounts().count() as u64;
    report.usage_events = audit.usage_events;
    report.monetization_events = audit.monetization_events;
    report.balance_updates = audit.balance_updates;
    report.corrections = audit.corrections;
    report.set_discrepancies(problems);
    Ok(report)
}
