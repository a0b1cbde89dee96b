//! Reading the ledger of one account: its balance updates in sequence order,
//! each linked to the monetization and usage events that explain it (and
//! through them to the decision and its idempotency key), whether it is
//! settled, and any correction its settlement recorded.
//!
//! The ledger lives in the log. A page is read by scanning the log, which
//! costs time in proportion to the log's size: fine for audits and support,
//! not yet for a hot path.

use std::collections::BTreeMap;
use std::path::Path;

use headroom_core::*;

use crate::StoreError;
use crate::command::Command;
use crate::log;

/// Most entries in one page.
pub const LEDGER_PAGE_ENTRIES_MAX: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub update: BalanceUpdate,
    /// The monetization event a debit pays for, and its usage event.
    pub monetization: Option<MonetizationEvent>,
    pub usage: Option<UsageEvent>,
    pub settled: bool,
    pub correction: Option<Correction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntry>,
    /// Pass as `after` to read the next page; `None` at the end.
    pub next: Option<u64>,
}

/// The entries of `account` with a sequence after `after`, at most `limit`,
/// from the log's batches up to `through_batch`: a live store passes its
/// durable batch, so that a page never shows what a crash could still undo.
pub fn read(
    directory: &Path,
    account: &AccountId,
    after: u64,
    limit: usize,
    through_batch: u64,
) -> Result<LedgerPage, StoreError> {
    let limit = limit.clamp(1, LEDGER_PAGE_ENTRIES_MAX);
    // One more than the page, to know whether another page follows.
    let last_wanted = after.saturating_add(limit as u64 + 1);
    let mut entries: BTreeMap<u64, LedgerEntry> = BTreeMap::new();
    let mut by_id: BTreeMap<EventId, u64> = BTreeMap::new();
    log::scan(directory, |batch, _, commands| {
        if batch > through_batch {
            return Ok(());
        }
        for logged in commands {
            if let Command::Settle(update) = &logged.command
                && &update.account == account
                && let Some(entry) = entries.get_mut(&update.sequence)
            {
                entry.settled = true;
            }
            let usage = logged.events.iter().find_map(|event| match event {
                Event::Usage(usage) => Some(usage),
                _ => None,
            });
            let monetization = logged.events.iter().find_map(|event| match event {
                Event::Monetization(monetization) => Some(monetization),
                _ => None,
            });
            for event in &logged.events {
                match event {
                    // Sequences are gapless within an account: a page is a range of them.
                    Event::Balance(update)
                        if &update.account == account
                            && (after.saturating_add(1)..=last_wanted).contains(&update.sequence) =>
                    {
                        let linked = matches!(update.cause, BalanceCause::Debit { .. });
                        by_id.insert(update.id, update.sequence);
                        entries.insert(
                            update.sequence,
                            LedgerEntry {
                                update: update.clone(),
                                monetization: monetization.filter(|_| linked).cloned(),
                                usage: usage.filter(|_| linked).cloned(),
                                settled: false,
                                correction: None,
                            },
                        );
                    }
                    Event::Correction(correction) if &correction.account == account => {
                        if let Some(entry) =
                            by_id.get(&correction.update).and_then(|sequence| entries.get_mut(sequence))
                        {
                            entry.correction = Some(correction.clone());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    })?;
    let more = entries.len() > limit;
    let entries: Vec<LedgerEntry> = entries.into_values().take(limit).collect();
    let next = if more { entries.last().map(|entry| entry.update.sequence) } else { None };
    Ok(LedgerPage { entries, next })
}
