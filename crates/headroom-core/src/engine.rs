//! A directory of accounts around the per-account state machine: finds the
//! account of a subject and runs the operation on it. The stores wrap this
//! with durability; the simulator and the benchmarks drive it directly.

use crate::FastMap;
use std::sync::Arc;

use crate::account::{AccountState, BillingAnswer, BillingOp, Outcome, SettleError, Settlement};
use crate::catalog::Catalog;
use crate::decision::*;
use crate::error::CoreError;
use crate::events::{BalanceUpdate, Event};
use crate::ids::{AccountId, IdempotencyKey, PlanId, SubjectId};
use crate::money::Credits;
use crate::time::Timestamp;

/// Accounts live in one vector and both indexes point into it, so that a
/// decision finds its account with one hash probe and one array access.
#[derive(Debug, Clone)]
pub struct Engine {
    catalog: Arc<Catalog>,
    accounts: Vec<AccountState>,
    account_index: FastMap<AccountId, usize>,
    subjects: FastMap<SubjectId, usize>,
    /// Accounts that have alerts or a recharge waiting, so that the worker
    /// finds them without looking at every account.
    working: std::collections::BTreeSet<usize>,
}

impl Engine {
    pub fn new(catalog: Arc<Catalog>) -> Engine {
        Engine {
            catalog,
            accounts: Vec::new(),
            account_index: FastMap::default(),
            subjects: FastMap::default(),
            working: std::collections::BTreeSet::new(),
        }
    }

    /// Rebuilds an engine from account states (a snapshot), with the subject index.
    pub fn from_accounts(catalog: Arc<Catalog>, accounts: Vec<AccountState>) -> Engine {
        let mut engine = Engine::new(catalog);
        for account in accounts {
            engine.insert(account);
        }
        engine
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn open_account(
        &mut self,
        id: AccountId,
        plan: &PlanId,
        overdraft: Option<Credits>,
        now: Timestamp,
    ) -> Result<Vec<Event>, CoreError> {
        if self.account_index.contains_key(&id) {
            return Err(CoreError::AccountExists(id));
        }
        let (account, events) = AccountState::open(&self.catalog, id, plan, overdraft, now)?;
        self.insert(account);
        Ok(events)
    }

    fn insert(&mut self, account: AccountState) {
        let index = self.accounts.len();
        for subject in account.subjects() {
            self.subjects.insert(subject.clone(), index);
        }
        self.account_index.insert(account.id().clone(), index);
        self.accounts.push(account);
        self.note_work(index);
    }

    /// Runs `operation` on the account at `index`, then notes whether it has
    /// work waiting. The index changes only when that does: most operations
    /// leave it as it was, and an account whose alerts nobody collects (no
    /// worker runs) would otherwise cost a search of the index each time.
    fn on_account<T>(&mut self, index: usize, operation: impl FnOnce(&Catalog, &mut AccountState) -> T) -> T {
        let had_work = self.accounts[index].has_work();
        let result = operation(&self.catalog, &mut self.accounts[index]);
        if self.accounts[index].has_work() != had_work {
            self.note_work(index);
        }
        result
    }

    fn note_work(&mut self, index: usize) {
        if self.accounts[index].has_work() {
            self.working.insert(index);
        } else {
            self.working.remove(&index);
        }
    }

    /// Accounts with alerts or a recharge due at `now`, at most `limit`.
    pub fn due_work(&self, now: Timestamp, limit: usize) -> Vec<AccountId> {
        let due = self.working.iter().map(|index| &self.accounts[*index]);
        due.filter(|account| account.next_work().is_some_and(|at| at <= now))
            .take(limit)
            .map(|account| account.id().clone())
            .collect()
    }

    pub fn put_subject(
        &mut self,
        subject: SubjectId,
        account: &AccountId,
        plan: Option<PlanId>,
    ) -> Result<(), CoreError> {
        let index = *self.account_index.get(account).ok_or_else(|| CoreError::UnknownAccount(account.clone()))?;
        if let Some(existing) = self.subjects.get(&subject)
            && *existing != index
        {
            return Err(CoreError::SubjectInOtherAccount { subject, account: self.accounts[*existing].id().clone() });
        }
        self.accounts[index].put_subject(&self.catalog, subject.clone(), plan)?;
        self.subjects.insert(subject, index);
        Ok(())
    }

    pub fn account(&self, id: &AccountId) -> Option<&AccountState> {
        self.account_index.get(id).map(|index| &self.accounts[*index])
    }

    pub fn account_mut(&mut self, id: &AccountId) -> Option<&mut AccountState> {
        self.account_index.get(id).map(|index| &mut self.accounts[*index])
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountState> {
        self.accounts.iter()
    }

    pub fn account_of(&self, subject: &SubjectId) -> Result<&AccountId, CoreError> {
        let index = self.subjects.get(subject).ok_or_else(|| CoreError::UnknownSubject(subject.clone()))?;
        Ok(self.accounts[*index].id())
    }

    fn subject_index(&self, subject: &SubjectId) -> Result<usize, CoreError> {
        self.subjects.get(subject).copied().ok_or_else(|| CoreError::UnknownSubject(subject.clone()))
    }

    fn account_index(&self, id: &AccountId) -> Result<usize, CoreError> {
        self.account_index.get(id).copied().ok_or_else(|| CoreError::UnknownAccount(id.clone()))
    }

    /// Starts loading the account that a use of a feature by `subject`
    /// reads first. Changes nothing. A store holding many requests calls it
    /// a few requests ahead of the one it applies, and
    /// [`Engine::prefetch_key`] for the request half as far ahead, once its
    /// account has arrived, so that their cache misses overlap instead of
    /// following one another.
    pub fn prefetch_account(&self, subject: &SubjectId) {
        if let Some(&index) = self.subjects.get(subject) {
            crate::prefetch_all(&self.accounts[index]);
        }
    }

    /// Starts loading where `key` goes in the table of `subject`'s account:
    /// the second step after [`Engine::prefetch_account`].
    pub fn prefetch_key(&self, subject: &SubjectId, key: &IdempotencyKey) {
        if let Some(&index) = self.subjects.get(subject) {
            self.accounts[index].prefetch_key(key);
        }
    }

    pub fn decide(&mut self, request: &DecisionRequest, now: Timestamp) -> Result<Outcome<Decision>, CoreError> {
        let index = self.subject_index(&request.subject)?;
        crate::prefetch_all(&self.accounts[index]);
        self.on_account(index, |catalog, account| account.decide(catalog, request, now))
    }

    pub fn reserve(&mut self, request: &ReserveRequest, now: Timestamp) -> Result<Outcome<Decision>, CoreError> {
        let index = self.subject_index(&request.subject)?;
        crate::prefetch_all(&self.accounts[index]);
        self.on_account(index, |catalog, account| account.reserve(catalog, request, now))
    }

    /// Captures a reservation of `account`. A reservation is found through
    /// its account, not its subject: a replayed capture must find the
    /// account after the reservation is closed.
    pub fn capture(
        &mut self,
        account: &AccountId,
        request: &CaptureRequest,
        now: Timestamp,
    ) -> Result<Outcome<Decision>, CoreError> {
        let index = self.account_index(account)?;
        self.on_account(index, |catalog, account| account.capture(catalog, request, now))
    }

    pub fn release(
        &mut self,
        account: &AccountId,
        request: &ReleaseRequest,
        now: Timestamp,
    ) -> Result<Outcome<Released>, CoreError> {
        let index = self.account_index(account)?;
        self.on_account(index, |catalog, account| account.release(catalog, request, now))
    }

    pub fn add_grant(
        &mut self,
        account: &AccountId,
        request: &GrantRequest,
        now: Timestamp,
    ) -> Result<Outcome<GrantAdded>, CoreError> {
        let index = self.account_index(account)?;
        self.on_account(index, |catalog, account| account.add_grant(catalog, request, now))
    }

    pub fn set_plan(
        &mut self,
        account: &AccountId,
        plan: &PlanId,
        overdraft: Option<Credits>,
    ) -> Result<(), CoreError> {
        let index = *self.account_index.get(account).ok_or_else(|| CoreError::UnknownAccount(account.clone()))?;
        let state = &mut self.accounts[index];
        state.set_plan(&self.catalog, plan, overdraft)
    }

    /// Settles one balance update of its account.
    pub fn settle(&mut self, update: &BalanceUpdate) -> Result<Settlement, SettleError> {
        match self.account_index.get(&update.account).map(|index| &mut self.accounts[*index]) {
            Some(state) => state.settle(update),
            None => Err(SettleError::UnknownAccount(update.account.clone())),
        }
    }

    /// Moves every account to `now` (expiring reservations and grants).
    pub fn advance_all(&mut self, now: Timestamp) -> Vec<Event> {
        // In id order: the hash map's order differs from run to run, and a
        // replay must record the same events in the same order.
        let mut order: Vec<usize> = (0..self.accounts.len()).collect();
        order.sort_by(|one, other| self.accounts[*one].id().cmp(self.accounts[*other].id()));
        let mut events = Vec::new();
        for index in order {
            self.on_account(index, |catalog, account| {
                account.advance(catalog, now, &mut events);
                account.watch(catalog, now);
            });
        }
        events
    }

    /// Moves one account to `now` (expiring its reservations and grants).
    pub fn advance_account(&mut self, id: &AccountId, now: Timestamp) -> Result<Vec<Event>, CoreError> {
        let index = self.account_index(id)?;
        let mut events = Vec::new();
        self.on_account(index, |catalog, account| {
            account.advance(catalog, now, &mut events);
            account.watch(catalog, now);
        });
        Ok(events)
    }

    /// Changes an account's payments, auto-recharge or outbox.
    pub fn billing(
        &mut self,
        id: &AccountId,
        op: &BillingOp,
        now: Timestamp,
    ) -> Result<(BillingAnswer, Vec<Event>), CoreError> {
        let index = self.account_index(id)?;
        self.on_account(index, |catalog, account| account.billing(catalog, op, now))
    }

    /// The accounts, for a store that keeps each one elsewhere.
    pub fn into_accounts(self) -> Vec<AccountState> {
        self.accounts
    }

    pub fn check_invariants(&self) -> Result<(), String> {
        for account in &self.accounts {
            account.check_invariants(&self.catalog)?;
        }
        Ok(())
    }
}
