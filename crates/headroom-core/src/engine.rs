//! A directory of accounts around the per-account state machine: finds the
//! account of a subject and runs the operation on it. The stores wrap this
//! with durability; the simulator and the benchmarks drive it directly.

use crate::FastMap;
use std::sync::Arc;

use crate::account::{AccountState, Outcome, SettleError, Settlement};
use crate::catalog::Catalog;
use crate::decision::*;
use crate::error::CoreError;
use crate::events::{BalanceUpdate, Event};
use crate::ids::{AccountId, PlanId, SubjectId};
use crate::money::Credits;
use crate::time::Timestamp;

#[derive(Debug, Clone)]
pub struct Engine {
    catalog: Arc<Catalog>,
    accounts: FastMap<AccountId, AccountState>,
    subjects: FastMap<SubjectId, AccountId>,
}

impl Engine {
    pub fn new(catalog: Arc<Catalog>) -> Engine {
        Engine { catalog, accounts: FastMap::default(), subjects: FastMap::default() }
    }

    /// Rebuilds an engine from account states (a snapshot), with the subject index.
    pub fn from_accounts(catalog: Arc<Catalog>, accounts: Vec<AccountState>) -> Engine {
        let mut engine = Engine::new(catalog);
        for account in accounts {
            for subject in account.subjects() {
                engine.subjects.insert(subject.clone(), account.id().clone());
            }
            engine.accounts.insert(account.id().clone(), account);
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
        if self.accounts.contains_key(&id) {
            return Err(CoreError::AccountExists(id));
        }
        let (account, events) = AccountState::open(&self.catalog, id.clone(), plan, overdraft, now)?;
        self.accounts.insert(id, account);
        Ok(events)
    }

    pub fn put_subject(
        &mut self,
        subject: SubjectId,
        account: &AccountId,
        plan: Option<PlanId>,
    ) -> Result<(), CoreError> {
        if let Some(existing) = self.subjects.get(&subject)
            && existing != account
        {
            return Err(CoreError::SubjectInOtherAccount { subject, account: existing.clone() });
        }
        let state = self.accounts.get_mut(account).ok_or_else(|| CoreError::UnknownAccount(account.clone()))?;
        state.put_subject(&self.catalog, subject.clone(), plan)?;
        self.subjects.insert(subject, account.clone());
        Ok(())
    }

    pub fn account(&self, id: &AccountId) -> Option<&AccountState> {
        self.accounts.get(id)
    }

    pub fn account_mut(&mut self, id: &AccountId) -> Option<&mut AccountState> {
        self.accounts.get_mut(id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountState> {
        self.accounts.values()
    }

    pub fn account_of(&self, subject: &SubjectId) -> Result<&AccountId, CoreError> {
        self.subjects.get(subject).ok_or_else(|| CoreError::UnknownSubject(subject.clone()))
    }

    /// The catalog and the account of `subject`, borrowed apart.
    fn subject_account(&mut self, subject: &SubjectId) -> Result<(&Catalog, &mut AccountState), CoreError> {
        let account = self.subjects.get(subject).ok_or_else(|| CoreError::UnknownSubject(subject.clone()))?;
        Ok((&self.catalog, self.accounts.get_mut(account).expect("every subject's account exists")))
    }

    pub fn decide(&mut self, request: &DecisionRequest, now: Timestamp) -> Result<Outcome<Decision>, CoreError> {
        let (catalog, account) = self.subject_account(&request.subject)?;
        account.decide(catalog, request, now)
    }

    pub fn reserve(&mut self, request: &ReserveRequest, now: Timestamp) -> Result<Outcome<Decision>, CoreError> {
        let (catalog, account) = self.subject_account(&request.subject)?;
        account.reserve(catalog, request, now)
    }

    /// Captures a reservation of `subject`'s account.
    pub fn capture(
        &mut self,
        subject: &SubjectId,
        request: &CaptureRequest,
        now: Timestamp,
    ) -> Result<Outcome<Decision>, CoreError> {
        let (catalog, account) = self.subject_account(subject)?;
        account.capture(catalog, request, now)
    }

    pub fn release(
        &mut self,
        subject: &SubjectId,
        request: &ReleaseRequest,
        now: Timestamp,
    ) -> Result<Outcome<Released>, CoreError> {
        let (catalog, account) = self.subject_account(subject)?;
        account.release(catalog, request, now)
    }

    pub fn add_grant(
        &mut self,
        account: &AccountId,
        request: &GrantRequest,
        now: Timestamp,
    ) -> Result<Outcome<GrantAdded>, CoreError> {
        let catalog = self.catalog.clone();
        let state = self.accounts.get_mut(account).ok_or_else(|| CoreError::UnknownAccount(account.clone()))?;
        state.add_grant(&catalog, request, now)
    }

    pub fn set_plan(
        &mut self,
        account: &AccountId,
        plan: &PlanId,
        overdraft: Option<Credits>,
    ) -> Result<(), CoreError> {
        let state = self.accounts.get_mut(account).ok_or_else(|| CoreError::UnknownAccount(account.clone()))?;
        state.set_plan(&self.catalog, plan, overdraft)
    }

    /// Settles one balance update of its account.
    pub fn settle(&mut self, update: &BalanceUpdate) -> Result<Settlement, SettleError> {
        match self.accounts.get_mut(&update.account) {
            Some(state) => state.settle(update),
            None => Err(SettleError::UnknownAccount(update.account.clone())),
        }
    }

    /// Moves every account to `now` (expiring reservations and grants).
    pub fn advance_all(&mut self, now: Timestamp) -> Vec<Event> {
        // In id order: the hash map's order differs from run to run, and a
        // replay must record the same events in the same order.
        let mut ids: Vec<AccountId> = self.accounts.keys().cloned().collect();
        ids.sort();
        let mut events = Vec::new();
        for id in ids {
            let account = self.accounts.get_mut(&id).expect("listed above");
            account.advance(&self.catalog, now, &mut events);
        }
        events
    }

    pub fn check_invariants(&self) -> Result<(), String> {
        for account in self.accounts.values() {
            account.check_invariants(&self.catalog)?;
        }
        Ok(())
    }
}
