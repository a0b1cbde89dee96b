//! Reconciliation: cross-checks a data directory against every invariant of
//! SPEC.md, reading only. It replays the whole log from the first batch
//! under the recorded catalog and checks:
//!
//! - every command replays to exactly the events it recorded (determinism);
//! - the newest snapshot equals the replayed state at its batch;
//! - the three datasets link exactly once: each usage event has one
//!   monetization event, whose debits sum to its amount less its write-off;
//!   balance updates of an account are numbered 1, 2, 3… with no gap and no
//!   duplicate id; each correction names a known balance update;
//! - every settlement names a balance update that exists (no orphan), and
//!   each is applied at most once;
//! - conservation: per wallet, the sum of settled balance updates and
//!   corrections equals the balance of record;
//! - no grant below zero, no window over capacity (the core's own checks).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use headroom_core::invariants::EventAudit;
use headroom_core::*;

use crate::command::{Command, Response, apply};
use crate::embedded::CATALOG_FILE;
use crate::{StoreError, log, snapshot};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub batches: u64,
    pub commands: u64,
    pub accounts: u64,
    pub usage_events: u64,
    pub monetization_events: u64,
    pub balance_updates: u64,
    pub settled_updates: u64,
    pub unsettled_updates: u64,
    pub corrections: u64,
    pub snapshot_checked: Option<u64>,
    /// Whether a command log was replayed (the embedded store), or only
    /// stored records were read (PostgreSQL).
    pub from_log: bool,
    pub discrepancies: Vec<String>,
}

impl ReconcileReport {
    /// Keeps the first discrepancies one by one and counts the rest.
    pub fn set_discrepancies(&mut self, problems: Vec<String>) {
        let total = problems.len();
        self.discrepancies = problems.into_iter().take(DISCREPANCIES_LISTED_MAX).collect();
        if total > DISCREPANCIES_LISTED_MAX {
            self.discrepancies.push(format!("… and {} more", total - DISCREPANCIES_LISTED_MAX));
        }
    }
}

impl std::fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from_log {
            writeln!(f, "batches            {}", self.batches)?;
            writeln!(f, "commands           {}", self.commands)?;
        }
        writeln!(f, "accounts           {}", self.accounts)?;
        writeln!(f, "usage events       {}", self.usage_events)?;
        writeln!(f, "monetization events {}", self.monetization_events)?;
        writeln!(
            f,
            "balance updates    {} ({} settled, {} not yet)",
            self.balance_updates, self.settled_updates, self.unsettled_updates
        )?;
        writeln!(f, "corrections        {}", self.corrections)?;
        match self.snapshot_checked {
            Some(batch) => writeln!(f, "snapshot           batch {batch} matches the replayed log")?,
            None if self.from_log => writeln!(f, "snapshot           none")?,
            None => {}
        }
        if self.discrepancies.is_empty() {
            writeln!(f, "discrepancies      none")
        } else {
            writeln!(f, "discrepancies      {}", self.discrepancies.len())?;
            self.discrepancies.iter().try_for_each(|discrepancy| writeln!(f, "  - {discrepancy}"))
        }
    }
}

/// Conservation: every wallet's balance of record equals what its settled
/// balance updates and corrections sum to (`ledger`, per account).
pub(crate) fn check_conservation(engine: &Engine, ledger: &HashMap<AccountId, i128>, problems: &mut Vec<String>) {
    for account in engine.accounts() {
        let from_ledger = ledger.get(account.id()).copied().unwrap_or(0);
        if account.wallet().settled_balance() != from_ledger {
            problems.push(format!(
                "account {}: balance of record {} but its settled ledger sums to {from_ledger}",
                account.id(),
                account.wallet().settled_balance()
            ));
        }
    }
}

/// Most discrepancies listed one by one; more are counted.
const DISCREPANCIES_LISTED_MAX: usize = 100;

/// The newest snapshot. On a live directory the writer may replace it
/// between listing and reading: then the newer one is read.
fn newest_snapshot(directory: &Path) -> Result<Option<(u64, Vec<AccountState>)>, StoreError> {
    for _ in 0..SNAPSHOT_READ_ATTEMPTS_MAX {
        let Some((_, path)) = snapshot::list_snapshots(directory)?.pop() else { return Ok(None) };
        match snapshot::read(&path) {
            Err(StoreError::Io { .. }) if !path.exists() => continue,
            other => return other.map(Some),
        }
    }
    Err(StoreError::Unavailable("snapshots are replaced faster than they can be read".to_string()))
}

/// Attempts to read the newest snapshot of a live directory.
const SNAPSHOT_READ_ATTEMPTS_MAX: usize = 5;

pub fn reconcile(directory: &Path) -> Result<ReconcileReport, StoreError> {
    let catalog_path = directory.join(CATALOG_FILE);
    let catalog_text = std::fs::read_to_string(&catalog_path).map_err(|error| StoreError::io(&catalog_path, error))?;
    let catalog = Catalog::from_toml(&catalog_text).map_err(|error| StoreError::Corrupt {
        file: catalog_path.clone(),
        offset: 0,
        reason: error.to_string(),
    })?;
    let snapshot = newest_snapshot(directory)?;
    let mut engine = Engine::new(Arc::new(catalog));
    let mut report = ReconcileReport { from_log: true, ..ReconcileReport::default() };
    let mut problems = Vec::new();
    let mut audit = EventAudit::new();
    let mut updates: HashMap<EventId, BalanceUpdate> = HashMap::new();
    let mut settled: HashSet<EventId> = HashSet::new();
    let mut ledger: HashMap<AccountId, i128> = HashMap::new();
    let mut previous_batch = 0;
    log::scan(directory, |batch, path, commands| {
        report.batches += 1;
        if batch != previous_batch + 1 {
            problems.push(format!("{}: batch {batch} follows batch {previous_batch}", path.display()));
        }
        previous_batch = batch;
        for logged in &commands {
            report.commands += 1;
            let replayed = apply(&mut engine, &logged.command, logged.at);
            match &replayed {
                Ok(response) if response.events() == logged.events.as_slice() => {}
                other => problems.push(format!(
                    "batch {batch}: {:?} replays to {other:?}, not to what was recorded",
                    logged.command
                )),
            }
            for event in &logged.events {
                if let Err(problem) = audit.record(event) {
                    problems.push(format!("batch {batch}: {problem}"));
                }
                match event {
                    Event::Balance(update) => {
                        updates.insert(update.id, update.clone());
                    }
                    Event::Correction(correction) => {
                        *ledger.entry(correction.account.clone()).or_default() +=
                            i128::from(correction.write_off.micros());
                    }
                    _ => {}
                }
            }
            // The links of one command's events are complete with it.
            if let Err(problem) = audit.check_links() {
                problems.push(format!("batch {batch}: {problem}"));
            }
            audit.forget_complete();
            if let Command::Settle(update) = &logged.command {
                match updates.get(&update.id) {
                    None if settled.contains(&update.id) => {}
                    None => problems.push(format!("batch {batch}: settlement of unknown balance update {}", update.id)),
                    Some(recorded) if recorded != update => {
                        problems.push(format!(
                            "batch {batch}: settlement of {} differs from the update recorded",
                            update.id
                        ));
                    }
                    Some(_) => {
                        if matches!(replayed, Ok(Response::Settled { settlement: Settlement::Applied { .. }, .. })) {
                            settled.insert(update.id);
                            updates.remove(&update.id);
                            *ledger.entry(update.account.clone()).or_default() += i128::from(update.delta);
                        }
                    }
                }
            }
        }
        if let Some((snapshot_batch, accounts)) = &snapshot
            && *snapshot_batch == batch
        {
            let mut replayed: Vec<&AccountState> = engine.accounts().collect();
            let mut stored: Vec<&AccountState> = accounts.iter().collect();
            replayed.sort_by_key(|account| account.id().clone());
            stored.sort_by_key(|account| account.id().clone());
            if replayed != stored {
                problems.push(format!("the snapshot at batch {batch} differs from the replayed log"));
            }
            report.snapshot_checked = Some(batch);
        }
        Ok(())
    })?;
    if let Err(problem) = audit.check_links() {
        problems.push(problem);
    }
    if let Err(problem) = engine.check_invariants() {
        problems.push(problem);
    }
    check_conservation(&engine, &ledger, &mut problems);
    report.unsettled_updates += engine.accounts().map(AccountState::unsettled).sum::<u64>();
    if let Some((batch, _)) = &snapshot
        && report.snapshot_checked.is_none()
        && *batch > 0
    {
        problems.push(format!("the snapshot names batch {batch}, which the log does not hold"));
    }
    report.accounts = engine.accounts().count() as u64;
    report.usage_events = audit.usage_events;
    report.monetization_events = audit.monetization_events;
    report.balance_updates = audit.balance_updates;
    report.corrections = audit.corrections;
    report.settled_updates = settled.len() as u64;
    report.set_discrepancies(problems);
    Ok(report)
}
