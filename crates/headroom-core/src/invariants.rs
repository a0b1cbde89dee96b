//! The invariants of SPEC.md over the three datasets, as code: fed every
//! event in order, [`EventAudit`] checks the links between usage events,
//! monetization events and balance updates. The reconciliation command runs
//! the same checks over stored data.

use std::collections::{HashMap, HashSet};

use crate::events::*;
use crate::ids::AccountId;

#[derive(Debug, Default)]
pub struct EventAudit {
    ids: HashSet<EventId>,
    usage: HashMap<EventId, Option<EventId>>,
    /// Monetization id → (amount − write-off, sum of its balance updates' debits).
    monetization: HashMap<EventId, (i128, i128)>,
    /// Per account: the last balance update sequence seen.
    sequences: HashMap<AccountId, u64>,
    pub usage_events: u64,
    pub monetization_events: u64,
    pub balance_updates: u64,
    pub corrections: u64,
}

impl EventAudit {
    pub fn new() -> EventAudit {
        EventAudit::default()
    }

    /// Checks one event against everything seen so far.
    pub fn record(&mut self, event: &Event) -> Result<(), String> {
        let id = event.id();
        if !self.ids.insert(id) {
            return Err(format!("duplicate event id {id}: {event:?}"));
        }
        match event {
            Event::Usage(usage) => {
                self.usage_events += 1;
                if usage.window_units > usage.quantity {
                    return Err(format!("usage {}: windows covered more than the quantity", usage.id));
                }
                self.usage.insert(usage.id, None);
            }
            Event::Monetization(monetization) => {
                self.monetization_events += 1;
                match self.usage.get_mut(&monetization.usage) {
                    None => {
                        return Err(format!("monetization {} names unknown usage", monetization.id));
                    }
                    Some(Some(other)) => {
                        return Err(format!(
                            "usage {} has two monetization events: {other} and {}",
                            monetization.usage, monetization.id
                        ));
                    }
                    Some(link) => *link = Some(monetization.id),
                }
                if monetization.write_off > monetization.amount {
                    return Err(format!("monetization {}: write-off above the amount", monetization.id));
                }
                let owed = i128::from(monetization.amount.micros()) - i128::from(monetization.write_off.micros());
                self.monetization.insert(monetization.id, (owed, 0));
            }
            Event::Correction(correction) => {
                self.corrections += 1;
                if !self.ids.contains(&correction.update) {
                    return Err(format!("correction {} names an unknown balance update", correction.id));
                }
            }
            Event::Balance(update) => {
                self.balance_updates += 1;
                let last = self.sequences.entry(update.account.clone()).or_insert(0);
                if update.sequence != *last + 1 {
                    return Err(format!(
                        "account {}: balance update sequence {} follows {}",
                        update.account, update.sequence, last
                    ));
                }
                *last = update.sequence;
                match &update.cause {
                    BalanceCause::Debit { monetization } => {
                        if update.delta > 0 {
                            return Err(format!("debit {} adds credits", update.id));
                        }
                        let Some((_, debited)) = self.monetization.get_mut(monetization) else {
                            return Err(format!("balance update {} names unknown monetization", update.id));
                        };
                        *debited -= i128::from(update.delta);
                    }
                    BalanceCause::Grant { .. } if update.delta <= 0 => {
                        return Err(format!("grant update {} does not add credits", update.id));
                    }
                    BalanceCause::Expiry if update.delta >= 0 => {
                        return Err(format!("expiry update {} does not take credits", update.id));
                    }
                    BalanceCause::Refund { .. } if update.delta >= 0 => {
                        return Err(format!("refund update {} does not take credits", update.id));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Drops the links already proven complete, keeping only event ids (for
    /// duplicate detection), so that a long run stays small.
    pub fn forget_complete(&mut self) {
        self.usage.clear();
        self.monetization.clear();
    }

    /// Invariant 4 once a batch of events is complete: every usage event has
    /// its monetization event, and every monetization's debits sum to its
    /// amount less its write-off.
    pub fn check_links(&self) -> Result<(), String> {
        if let Some((usage, _)) = self.usage.iter().find(|(_, link)| link.is_none()) {
            return Err(format!("usage {usage} has no monetization event"));
        }
        if let Some((id, (owed, debited))) = self.monetization.iter().find(|(_, (owed, debited))| owed != debited) {
            return Err(format!("monetization {id}: balance updates sum to {debited}, expected {owed}"));
        }
        Ok(())
    }
}
