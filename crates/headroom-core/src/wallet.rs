//! The wallet: grants in waterfall order plus the overdraft line, each with
//! its balance of record (settled), unsettled movements and holds.
//!
//! available = settled + pending credits − pending debits − holds.
//! Decisions spend only what is available, so settling later can never take a
//! balance below zero (or an overdraft beyond its limit).

use crate::GrantKind;
use crate::events::BalanceSource;
use crate::ids::GrantId;
use crate::money::Credits;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

const BOUNDED: &str = "amounts are bounded by limits so that sums fit";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: GrantId,
    pub kind: GrantKind,
    pub priority: u32,
    pub expires_at: Option<Timestamp>,
    pub granted: Credits,
    /// Balance of record: what settled updates left in the grant.
    pub settled: Credits,
    /// Unsettled updates that add to the grant (its own arrival).
    pub pending_credit: Credits,
    /// Unsettled updates that take from it (debits, expiry).
    pub pending_debit: Credits,
    /// Held by open reservations.
    pub held: Credits,
}

impl Grant {
    pub fn available(&self) -> Credits {
        self.settled
            .checked_add(self.pending_credit)
            .and_then(|sum| sum.checked_sub(self.pending_debit))
            .and_then(|sum| sum.checked_sub(self.held))
            .expect("a grant never commits more than it holds")
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|expiry| expiry <= now)
    }

    /// Waterfall order: kind, then priority, then earliest expiry (never
    /// expiring last), then id so that the order is total.
    fn order_key(&self) -> (GrantKind, u32, Timestamp, &GrantId) {
        (self.kind, self.priority, self.expires_at.unwrap_or(Timestamp::MAX), &self.id)
    }
}

/// Spending below zero, up to a limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Overdraft {
    pub limit: Credits,
    /// Settled debt.
    pub settled_used: Credits,
    pub pending_debit: Credits,
    pub held: Credits,
}

impl Overdraft {
    pub fn available(&self) -> Credits {
        // The limit may have been lowered below what is used: then nothing is available.
        self.limit.saturating_sub(
            self.settled_used
                .checked_add(self.pending_debit)
                .and_then(|sum| sum.checked_add(self.held))
                .expect(BOUNDED),
        )
    }
}

/// One source of credits in the waterfall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Grant(usize),
    Overdraft,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wallet {
    /// Always sorted in waterfall order.
    pub grants: Vec<Grant>,
    pub overdraft: Overdraft,
}

impl Wallet {
    /// Credits spendable at `now`: unexpired grants and the overdraft.
    pub fn available(&self, now: Timestamp) -> Credits {
        self.spendable_lines(now).fold(Credits::ZERO, |sum, (_, available)| sum.checked_add(available).expect(BOUNDED))
    }

    /// Lines in waterfall order with what each can give at `now`.
    pub fn spendable_lines(&self, now: Timestamp) -> impl Iterator<Item = (Line, Credits)> + '_ {
        let grants = self
            .grants
            .iter()
            .enumerate()
            .filter(move |(_, grant)| !grant.is_expired(now))
            .map(|(index, grant)| (Line::Grant(index), grant.available()));
        grants
            .chain(std::iter::once((Line::Overdraft, self.overdraft.available())))
            .filter(|(_, available)| !available.is_zero())
    }

    /// Takes `credits` from the lines in waterfall order, without changing
    /// anything: what each line would give, or `None` with the shortfall.
    pub fn plan_takes(&self, now: Timestamp, credits: Credits) -> Result<Vec<(Line, Credits)>, Credits> {
        let mut left = credits;
        let mut takes = Vec::new();
        for (line, available) in self.spendable_lines(now) {
            if left.is_zero() {
                break;
            }
            let take = available.min(left);
            takes.push((line, take));
            left = left.checked_sub(take).expect("take <= left");
        }
        if left.is_zero() { Ok(takes) } else { Err(left) }
    }

    pub fn insert_grant(&mut self, grant: Grant) {
        let position = self.grants.partition_point(|existing| existing.order_key() < grant.order_key());
        self.grants.insert(position, grant);
    }

    pub fn grant_index(&self, id: &GrantId) -> Option<usize> {
        self.grants.iter().position(|grant| &grant.id == id)
    }

    pub fn source(&self, line: Line) -> BalanceSource {
        match line {
            Line::Grant(index) => BalanceSource::Grant(self.grants[index].id.clone()),
            Line::Overdraft => BalanceSource::Overdraft,
        }
    }

    pub fn line_of(&self, source: &BalanceSource) -> Option<Line> {
        match source {
            BalanceSource::Grant(id) => self.grant_index(id).map(Line::Grant),
            BalanceSource::Overdraft => Some(Line::Overdraft),
        }
    }

    /// An allowed spend, not yet settled.
    pub fn add_pending_debit(&mut self, line: Line, credits: Credits) {
        let pending = match line {
            Line::Grant(index) => &mut self.grants[index].pending_debit,
            Line::Overdraft => &mut self.overdraft.pending_debit,
        };
        *pending = pending.checked_add(credits).expect(BOUNDED);
    }

    pub fn hold(&mut self, line: Line, credits: Credits) {
        let held = self.held_mut(line);
        *held = held.checked_add(credits).expect(BOUNDED);
    }

    pub fn unhold(&mut self, line: Line, credits: Credits) {
        let held = self.held_mut(line);
        *held = held.checked_sub(credits).expect("a hold is released at most once");
    }

    fn held_mut(&mut self, line: Line) -> &mut Credits {
        match line {
            Line::Grant(index) => &mut self.grants[index].held,
            Line::Overdraft => &mut self.overdraft.held,
        }
    }

    /// The balance of record: settled grant credits less settled debt.
    pub fn settled_balance(&self) -> i128 {
        let grants: i128 = self.grants.iter().map(|grant| i128::from(grant.settled.micros())).sum();
        grants - i128::from(self.overdraft.settled_used.micros())
    }

    /// Invariant 1, from the wallet's side.
    pub fn check(&self) -> Result<(), String> {
        for grant in &self.grants {
            let committed = grant.pending_debit.checked_add(grant.held).map_err(|_| "grant commitments overflow")?;
            let funded = grant.settled.checked_add(grant.pending_credit).map_err(|_| "grant funds overflow")?;
            if committed > funded {
                return Err(format!("grant {} commits more than it holds: {grant:?}", grant.id));
            }
        }
        if self.grants.windows(2).any(|pair| pair[0].order_key() > pair[1].order_key()) {
            return Err("grants are out of waterfall order".to_string());
        }
        let overdraft = &self.overdraft;
        let committed =
            overdraft.settled_used.checked_add(overdraft.pending_debit).and_then(|sum| sum.checked_add(overdraft.held));
        if committed.map_or(true, |committed| committed > overdraft.limit) {
            return Err(format!("overdraft beyond its limit: {:?}", self.overdraft));
        }
        Ok(())
    }
}
