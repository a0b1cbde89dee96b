//! The deterministic simulator: a random catalog, random accounts and a
//! random stream of operations from one seed, with every invariant checked
//! after every step. The same seed replays the same run exactly.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use headroom_core::invariants::EventAudit;
use headroom_core::*;

use headroom_store::{Command, Faults, MemoryStore, Store, StoreError};

use crate::random::Random;

/// A feature with the attributes that price it and the values each may take.
type PricedFeature = (FeatureId, Vec<(String, Vec<String>)>);

/// Earlier calls kept for replays: enough to reach back past the retention
/// period now and then, bounded so that a long run stays small.
const REMEMBERED_MAX: usize = 4_096;

/// How often a twin run checks a crash and restart (a replay of its log).
const TWIN_CRASH_EVERY_STEPS: u64 = 97;

#[derive(Debug, Clone, Copy)]
pub struct SimulationConfig {
    pub seed: u64,
    pub operations: u64,
    /// Also drive the in-memory store twin, with injected write and sync
    /// failures and crash-restarts.
    pub twin: bool,
}

/// What a run did, for the summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimulationReport {
    pub operations: u64,
    pub allowed: u64,
    pub denied: u64,
    pub previews: u64,
    pub reservations: u64,
    pub captures: u64,
    pub write_offs: u64,
    pub releases: u64,
    pub grants: u64,
    pub replays: u64,
    pub conflicts: u64,
    pub refusals: u64,
    pub settled: u64,
    pub clock_steps_back: u64,
    pub events: u64,
}

/// A failed invariant, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulationFailure {
    pub seed: u64,
    pub step: u64,
    pub operation: String,
    pub message: String,
}

impl std::fmt::Display for SimulationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at step {} ({}): {}\nreproduce with: headroom simulate --seed {} --ops {}",
            self.seed,
            self.step,
            self.operation,
            self.message,
            self.seed,
            self.step + 1
        )
    }
}

/// An earlier consuming call, kept to replay its key or reuse it wrongly.
#[derive(Clone)]
enum Remembered {
    Decide(DecisionRequest, Arc<Decision>),
    Reserve(ReserveRequest, Arc<Decision>),
}

struct Simulation {
    random: Random,
    engine: Engine,
    clock: Arc<FakeClock>,
    accounts: Vec<AccountId>,
    subjects: Vec<SubjectId>,
    features: Vec<PricedFeature>,
    /// Open reservations, by subject.
    reservations: Vec<(SubjectId, ReservationId, u64)>,
    remembered: Vec<Remembered>,
    /// Balance updates not settled yet, per account, in sequence order.
    unsettled: HashMap<AccountId, Vec<BalanceUpdate>>,
    audit: EventAudit,
    /// Per account: the sum of every settled balance update and correction,
    /// kept apart from the engine to check conservation against it.
    ledger: HashMap<AccountId, i128>,
    next_key: u64,
    report: SimulationReport,
    /// The store twin, when the run drives one: it receives every command
    /// that changed the engine, under injected write and sync failures.
    twin: Option<MemoryStore>,
    /// Commands of the current step, to send to the twin.
    mirrored: Vec<Command>,
}

/// Runs a simulation. A core panic (a violated assertion) is caught and
/// reported as a failure of the step it happened in.
pub fn run(config: SimulationConfig) -> Result<SimulationReport, SimulationFailure> {
    let mut simulation = Simulation::new(config.seed, config.twin);
    for step in 0..config.operations {
        let mut operation = String::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            simulation.step(&mut operation)?;
            simulation.drive_twin(step)?;
            simulation.check()
        }));
        let message = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(message)) => message,
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "panic".to_string()),
        };
        return Err(SimulationFailure { seed: config.seed, step, operation, message });
    }
    simulation.report.operations = config.operations;
    Ok(simulation.report)
}

impl Simulation {
    fn new(seed: u64, with_twin: bool) -> Simulation {
        let mut random = Random::new(seed);
        let (catalog_text, features) = random_catalog(&mut random);
        let catalog = Catalog::from_toml(&catalog_text)
            .unwrap_or_else(|error| panic!("generated catalog is invalid: {error}\n{catalog_text}"));
        let plans: Vec<PlanId> = catalog.plans.keys().cloned().collect();
        let catalog = Arc::new(catalog);
        let mut engine = Engine::new(catalog.clone());
        let now = Timestamp::from_millis(1_700_000_000_000 + random.below(1_000_000_000));
        let clock = Arc::new(FakeClock::new(now));
        let mut mirrored = Vec::new();
        let mut accounts = Vec::new();
        let mut subjects = Vec::new();
        let mut unsettled: HashMap<AccountId, Vec<BalanceUpdate>> = HashMap::new();
        let mut audit = EventAudit::new();
        for account_index in 0..random.between(1, 4) {
            let account = AccountId::new(&format!("account-{account_index}")).expect("valid id");
            let plan = random.pick(&plans).clone();
            let overdraft = random.chance(20).then(|| Credits::from_micros(random.below(5_000_000)));
            let events = engine.open_account(account.clone(), &plan, overdraft, now).expect("opens");
            mirrored.push(Command::OpenAccount { account: account.clone(), plan: plan.clone(), overdraft });
            for event in &events {
                audit.record(event).expect("opening events are sound");
                if let Event::Balance(update) = event {
                    unsettled.entry(account.clone()).or_default().push(update.clone());
                }
            }
            for subject_index in 0..random.between(1, 3) {
                let subject = SubjectId::new(&format!("subject-{account_index}-{subject_index}")).expect("valid id");
                let own_plan = random.chance(30).then(|| random.pick(&plans).clone());
                engine.put_subject(subject.clone(), &account, own_plan.clone()).expect("adds");
                mirrored.push(Command::PutSubject {
                    subject: subject.clone(),
                    account: account.clone(),
                    plan: own_plan,
                });
                subjects.push(subject);
            }
            accounts.push(account);
        }
        let mut simulation = Simulation {
            random,
            engine,
            clock: clock.clone(),
            accounts,
            subjects,
            features,
            reservations: Vec::new(),
            remembered: Vec::new(),
            unsettled,
            audit,
            ledger: HashMap::new(),
            next_key: 0,
            report: SimulationReport::default(),
            twin: with_twin.then(|| {
                let faults = Faults { seed, write_failure_one_in: 7, sync_failure_one_in: 11 };
                MemoryStore::new(catalog, clock, faults)
            }),
            mirrored: if with_twin { mirrored } else { Vec::new() },
        };
        // The twin opens the same accounts at the same time.
        simulation.drive_twin(1).expect("the twin opens the accounts");
        simulation
    }

    fn decide_engine(&mut self, request: &DecisionRequest) -> Result<Outcome<Decision>, CoreError> {
        let result = self.engine.decide(request, self.clock.now());
        self.mirror_if(result.is_ok(), || Command::Decide(request.clone()));
        result
    }

    fn reserve_engine(&mut self, request: &ReserveRequest) -> Result<Outcome<Decision>, CoreError> {
        let result = self.engine.reserve(request, self.clock.now());
        self.mirror_if(result.is_ok(), || Command::Reserve(request.clone()));
        result
    }

    fn capture_engine(
        &mut self,
        subject: &SubjectId,
        request: &CaptureRequest,
    ) -> Result<Outcome<Decision>, CoreError> {
        let account = self.engine.account_of(subject)?.clone();
        let result = self.engine.capture(&account, request, self.clock.now());
        self.mirror_if(result.is_ok(), || Command::Capture { account, request: request.clone() });
        result
    }

    fn release_engine(
        &mut self,
        subject: &SubjectId,
        request: &ReleaseRequest,
    ) -> Result<Outcome<Released>, CoreError> {
        let account = self.engine.account_of(subject)?.clone();
        let result = self.engine.release(&account, request, self.clock.now());
        self.mirror_if(result.is_ok(), || Command::Release { account, request: request.clone() });
        result
    }

    fn grant_engine(&mut self, account: &AccountId, request: &GrantRequest) -> Result<Outcome<GrantAdded>, CoreError> {
        let result = self.engine.add_grant(account, request, self.clock.now());
        self.mirror_if(result.is_ok(), || Command::AddGrant { account: account.clone(), request: request.clone() });
        result
    }

    fn advance_engine(&mut self) -> Vec<Event> {
        self.mirror_if(true, || Command::Advance);
        self.engine.advance_all(self.clock.now())
    }

    fn mirror_if(&mut self, changed: bool, command: impl FnOnce() -> Command) {
        if changed && self.twin.is_some() {
            self.mirrored.push(command());
        }
    }

    /// Sends the step's commands to the twin. An injected failure must
    /// change nothing; the command is then retried, as a client would.
    /// Every so often the twin "crashes": what it recovers from its log must
    /// be exactly what it acknowledged, which must be the engine's state.
    fn drive_twin(&mut self, step: u64) -> Result<(), String> {
        let Some(twin) = &self.twin else { return Ok(()) };
        for command in self.mirrored.drain(..) {
            loop {
                let before =
                    twin.query(|engine| engine.accounts().cloned().collect::<Vec<_>>()).map_err(|e| e.to_string())?;
                match twin.execute(command.clone()) {
                    Ok(_) => break,
                    Err(StoreError::Unavailable(_)) => {
                        let after = twin
                            .query(|engine| engine.accounts().cloned().collect::<Vec<_>>())
                            .map_err(|e| e.to_string())?;
                        if before != after {
                            return Err(format!("a failed twin command changed state: {command:?}"));
                        }
                    }
                    Err(error) => return Err(format!("the twin refused {command:?}: {error}")),
                }
            }
        }
        if step.is_multiple_of(TWIN_CRASH_EVERY_STEPS) {
            let mut recovered: Vec<AccountState> = twin.recover().accounts().cloned().collect();
            let mut expected: Vec<AccountState> = self.engine.accounts().cloned().collect();
            recovered.sort_by_key(|account| account.id().clone());
            expected.sort_by_key(|account| account.id().clone());
            if recovered != expected {
                return Err("after a crash the twin recovered another state than the engine's".to_string());
            }
        }
        Ok(())
    }

    fn key(&mut self) -> IdempotencyKey {
        self.next_key += 1;
        IdempotencyKey::new(&format!("key-{}", self.next_key)).expect("valid key")
    }

    fn step(&mut self, operation: &mut String) -> Result<(), String> {
        match self.random.below(100) {
            0..=34 => self.decide(operation, false),
            35..=39 => self.decide(operation, true),
            40..=49 => self.reserve(operation),
            50..=57 => self.capture(operation),
            58..=61 => self.release(operation),
            62..=67 => self.grant(operation),
            68..=72 => self.replay(operation),
            73..=75 => self.conflict(operation),
            76..=85 => self.settle(operation),
            86..=87 => {
                *operation = "sweep".to_string();
                let events = self.advance_engine();
                self.record(&events)
            }
            _ => {
                self.move_clock(operation);
                Ok(())
            }
        }
    }

    fn random_use(&mut self) -> (SubjectId, FeatureId, u64, Attributes) {
        let subject = self.random.pick(&self.subjects).clone();
        let (feature, priced_by) = self.random.pick(&self.features).clone();
        let mut pairs = Vec::new();
        for (attribute, values) in priced_by {
            // Now and then leave the attribute out or name an unknown value.
            match self.random.below(20) {
                0 => {}
                1 => pairs.push((attribute, "unknown".to_string())),
                _ => pairs.push((attribute, self.random.pick(&values).clone())),
            }
        }
        let quantity = if self.random.chance(2) { 0 } else { self.random.between(1, 12) };
        (subject, feature, quantity, Attributes::new(pairs).expect("valid attributes"))
    }

    fn decide(&mut self, operation: &mut String, preview: bool) -> Result<(), String> {
        let (subject, feature, quantity, attributes) = self.random_use();
        let idempotency_key = if preview && self.random.chance(50) { None } else { Some(self.key()) };
        let request = DecisionRequest { subject, feature, quantity, attributes, idempotency_key, preview };
        *operation = format!("decide {request:?}");
        match self.decide_engine(&request) {
            Ok(outcome) => {
                self.count(&outcome.result);
                self.record(&outcome.events)?;
                if preview {
                    self.report.previews += 1;
                    // Time moving on may expire grants; a preview itself records nothing.
                    let recorded_usage = outcome
                        .events
                        .iter()
                        .any(|event| !matches!(event, Event::Balance(update) if update.cause == BalanceCause::Expiry));
                    if recorded_usage {
                        return Err("a preview recorded usage".to_string());
                    }
                }
                if request.idempotency_key.is_some() {
                    self.remember(Remembered::Decide(request, outcome.result));
                }
                Ok(())
            }
            Err(error) => self.refused(&error),
        }
    }

    fn reserve(&mut self, operation: &mut String) -> Result<(), String> {
        let (subject, feature, quantity, attributes) = self.random_use();
        let lifetime = Some(Duration::from_millis(self.random.between(1, 600_000)));
        let request = ReserveRequest { subject, feature, quantity, attributes, idempotency_key: self.key(), lifetime };
        *operation = format!("reserve {request:?}");
        match self.reserve_engine(&request) {
            Ok(outcome) => {
                self.count(&outcome.result);
                self.record(&outcome.events)?;
                if let Some(reservation) = &outcome.result.reservation {
                    self.report.reservations += 1;
                    self.reservations.push((request.subject.clone(), reservation.id, request.quantity));
                }
                self.remember(Remembered::Reserve(request, outcome.result));
                Ok(())
            }
            Err(error) => self.refused(&error),
        }
    }

    fn capture(&mut self, operation: &mut String) -> Result<(), String> {
        let Some(index) = self.open_reservation_index() else {
            return Ok(());
        };
        let (subject, reservation, estimate) = self.reservations[index].clone();
        // Below, at and above the estimate.
        let quantity = match self.random.below(3) {
            0 => self.random.below(estimate + 1),
            1 => estimate,
            _ => estimate + self.random.between(1, 10),
        };
        let request = CaptureRequest { reservation, quantity, idempotency_key: self.key() };
        *operation = format!("capture by {subject} {request:?}");
        match self.capture_engine(&subject, &request) {
            Ok(outcome) => {
                self.reservations.swap_remove(index);
                self.report.captures += 1;
                if outcome.result.reason == Reason::PartlyWrittenOff {
                    self.report.write_offs += 1;
                }
                if !outcome.result.allowed {
                    return Err("a capture is always allowed".to_string());
                }
                self.count(&outcome.result);
                self.record(&outcome.events)?;
                // Replaying the capture returns the same answer and changes nothing.
                let replay = self.capture_engine(&subject, &request).map_err(|error| error.to_string())?;
                if !replay.replayed || replay.result != outcome.result {
                    return Err("a replayed capture did not return the original".to_string());
                }
                Ok(())
            }
            Err(CoreError::UnknownReservation(_)) => {
                // It expired meanwhile: expiry released it.
                self.reservations.swap_remove(index);
                Ok(())
            }
            Err(error) => self.refused(&error),
        }
    }

    fn release(&mut self, operation: &mut String) -> Result<(), String> {
        let Some(index) = self.open_reservation_index() else {
            return Ok(());
        };
        let (subject, reservation, _) = self.reservations.swap_remove(index);
        let request = ReleaseRequest { reservation, idempotency_key: self.key() };
        *operation = format!("release by {subject} {request:?}");
        match self.release_engine(&subject, &request) {
            Ok(outcome) => {
                self.report.releases += 1;
                self.record(&outcome.events)
            }
            Err(CoreError::UnknownReservation(_)) => Ok(()),
            Err(error) => self.refused(&error),
        }
    }

    fn open_reservation_index(&mut self) -> Option<usize> {
        if self.reservations.is_empty() {
            None
        } else {
            Some(self.random.below(self.reservations.len() as u64) as usize)
        }
    }

    fn grant(&mut self, operation: &mut String) -> Result<(), String> {
        let account = self.random.pick(&self.accounts).clone();
        let kind = *self.random.pick(&GrantKind::ALL);
        let expires_at = match self.random.below(3) {
            0 => None,
            1 => Some(self.clock.now().saturating_add(Duration::from_millis(self.random.between(1, 7_200_000)))),
            _ => Some(self.clock.now().saturating_add(Duration::from_days(self.random.between(1, 30)))),
        };
        let key = self.key();
        let request = GrantRequest {
            grant: GrantId::new(&format!("grant-{key}")).expect("valid id"),
            kind,
            credits: Credits::from_micros(self.random.between(1, 20_000_000)),
            priority: self.random.below(3) as u32,
            expires_at,
            idempotency_key: key,
        };
        *operation = format!("grant to {account} {request:?}");
        match self.grant_engine(&account, &request) {
            Ok(outcome) => {
                self.report.grants += 1;
                self.record(&outcome.events)?;
                let replay = self.grant_engine(&account, &request).map_err(|error| error.to_string())?;
                if !replay.replayed || !replay.events.is_empty() {
                    return Err("a replayed grant granted again".to_string());
                }
                Ok(())
            }
            Err(error) => self.refused(&error),
        }
    }

    /// Replays an earlier call with the same key and request: the answer
    /// must be the original, and nothing may change.
    fn replay(&mut self, operation: &mut String) -> Result<(), String> {
        if self.remembered.is_empty() {
            return Ok(());
        }
        // Mostly recent calls (a client retrying), now and then an old one.
        let length = self.remembered.len() as u64;
        let index = if self.random.chance(80) {
            (length - 1 - self.random.below(length.min(32))) as usize
        } else {
            self.random.below(length) as usize
        };
        let remembered = self.remembered[index].clone();
        let subject = match &remembered {
            Remembered::Decide(request, _) => &request.subject,
            Remembered::Reserve(request, _) => &request.subject,
        };
        let account = self.engine.account_of(subject).map_err(|error| error.to_string())?.clone();
        let before = self.wallet_of(&account);
        let (replayed, original) = match &remembered {
            Remembered::Decide(request, original) => {
                *operation = format!("replay decide {request:?}");
                (self.decide_engine(request), original)
            }
            Remembered::Reserve(request, original) => {
                *operation = format!("replay reserve {request:?}");
                (self.reserve_engine(request), original)
            }
        };
        match replayed {
            Ok(outcome) if outcome.replayed => {
                self.report.replays += 1;
                if &outcome.result != original {
                    return Err("a replay returned a different decision".to_string());
                }
                if before != self.wallet_of(&account) {
                    return Err("a replay changed the wallet".to_string());
                }
                Ok(())
            }
            Ok(outcome) => {
                // Forgotten after its retention period: a new decision, honestly counted.
                self.count(&outcome.result);
                self.remembered[index] = match remembered {
                    Remembered::Decide(request, _) => Remembered::Decide(request, outcome.result),
                    Remembered::Reserve(request, _) => {
                        if let Some(reservation) = &outcome.result.reservation {
                            self.reservations.push((request.subject.clone(), reservation.id, request.quantity));
                        }
                        Remembered::Reserve(request, outcome.result)
                    }
                };
                self.record(&outcome.events)
            }
            Err(error) => Err(format!("a replay failed: {error}")),
        }
    }

    /// Reuses an earlier key with a different request: a conflict, never a charge.
    fn conflict(&mut self, operation: &mut String) -> Result<(), String> {
        let Some(Remembered::Decide(request, _)) = self.remembered.last().cloned() else {
            return Ok(());
        };
        let mut changed = request.clone();
        changed.quantity = request.quantity % 12 + 1;
        if changed.quantity == request.quantity {
            changed.quantity += 1;
        }
        *operation = format!("conflict {changed:?}");
        let account = self.engine.account_of(&changed.subject).map_err(|error| error.to_string())?.clone();
        let before = self.wallet_of(&account);
        match self.decide_engine(&changed) {
            Err(CoreError::IdempotencyConflict(_)) => {
                self.report.conflicts += 1;
                if before != self.wallet_of(&account) {
                    return Err("a conflict changed the wallet".to_string());
                }
                Ok(())
            }
            // The original's key has expired: the changed request is a new decision.
            Ok(outcome) => {
                self.count(&outcome.result);
                self.remembered.pop();
                self.remember(Remembered::Decide(changed, outcome.result));
                self.record(&outcome.events)
            }
            Err(error) => self.refused(&error),
        }
    }

    /// Settles a few pending balance updates of one account, sometimes twice.
    fn settle(&mut self, operation: &mut String) -> Result<(), String> {
        let account = self.random.pick(&self.accounts).clone();
        let pending = self.unsettled.entry(account.clone()).or_default();
        let count = (self.random.between(1, 8) as usize).min(pending.len());
        let batch: Vec<BalanceUpdate> = pending.drain(..count).collect();
        *operation = format!("settle {count} updates of {account}");
        self.mirrored.extend(batch.iter().map(|update| Command::Settle(update.clone())));
        let state = self.engine.account_mut(&account).ok_or("unknown account")?;
        for update in &batch {
            match state.settle(update).map_err(|error| error.to_string())? {
                Settlement::Applied { write_off } => {
                    self.report.settled += 1;
                    *self.ledger.entry(account.clone()).or_default() +=
                        i128::from(update.delta) + i128::from(write_off.micros());
                }
                Settlement::AlreadySettled => {
                    return Err(format!("update {} settled before", update.sequence));
                }
            }
        }
        // Settling again changes nothing.
        if let Some(update) = batch.last() {
            let again = state.settle(update).map_err(|error| error.to_string())?;
            if again != Settlement::AlreadySettled {
                return Err("a second settlement applied again".to_string());
            }
        }
        Ok(())
    }

    fn move_clock(&mut self, operation: &mut String) {
        let step = match self.random.below(20) {
            0 => {
                self.report.clock_steps_back += 1;
                let back = Duration::from_millis(self.random.between(1, 3_600_000));
                self.clock.set(Timestamp::from_millis(self.clock.now().millis().saturating_sub(back.millis())));
                *operation = format!("clock back {back:?}");
                return;
            }
            1 if self.random.chance(25) => Duration::from_hours(self.random.between(1, 48)),
            _ => Duration::from_millis(self.random.between(0, 20_000)),
        };
        *operation = format!("clock forward {step:?}");
        self.clock.advance(step);
    }

    fn wallet_of(&self, account: &AccountId) -> Option<headroom_core::wallet::Wallet> {
        self.engine.account(account).map(|state| state.wallet().clone())
    }

    /// Keeps a bounded sample of earlier calls to replay.
    fn remember(&mut self, remembered: Remembered) {
        if self.remembered.len() >= REMEMBERED_MAX {
            let index = self.random.below(self.remembered.len() as u64) as usize;
            self.remembered.swap_remove(index);
        }
        self.remembered.push(remembered);
    }

    fn refused(&mut self, error: &CoreError) -> Result<(), String> {
        // Refusals that random input can cause on purpose.
        match error {
            CoreError::InvalidQuantity { .. }
            | CoreError::MissingAttribute { .. }
            | CoreError::UnknownAttributeValue { .. }
            | CoreError::TooManyGrants
            // The account's clock may be ahead of the simulator's after a step back.
            | CoreError::InvalidGrant(_)
            | CoreError::TooManyReservations => {
                self.report.refusals += 1;
                Ok(())
            }
            other => Err(format!("unexpected refusal: {other}")),
        }
    }

    fn count(&mut self, decision: &Decision) {
        if decision.allowed {
            self.report.allowed += 1;
        } else {
            self.report.denied += 1;
        }
    }

    fn record(&mut self, events: &[Event]) -> Result<(), String> {
        for event in events {
            self.audit.record(event)?;
            self.report.events += 1;
            if let Event::Balance(update) = event {
                self.unsettled.entry(update.account.clone()).or_default().push(update.clone());
            }
        }
        self.audit.check_links()?;
        self.audit.forget_complete();
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.engine.check_invariants()?;
        for account in self.engine.accounts() {
            let pending = self.unsettled.get(account.id()).map_or(0, Vec::len) as u64;
            let ledger = self.ledger.get(account.id()).copied().unwrap_or(0);
            if account.wallet().settled_balance() != ledger {
                return Err(format!(
                    "account {}: balance {} but its settled ledger sums to {ledger}",
                    account.id(),
                    account.wallet().settled_balance()
                ));
            }
            if account.unsettled() != pending {
                return Err(format!(
                    "account {}: {} updates unsettled, the simulator holds {pending}",
                    account.id(),
                    account.unsettled()
                ));
            }
        }
        Ok(())
    }
}

/// A random catalog, as TOML so that it goes through the real parser, and
/// the features with the attributes and values that price them.
fn random_catalog(random: &mut Random) -> (String, Vec<PricedFeature>) {
    let mut text = String::from("[settings]\nidempotency_retention = \"24h\"\n");
    if random.chance(50) {
        text.push_str("default_grant_expiry = \"30d\"\n");
    }
    let mut features = Vec::new();
    let feature_count = random.between(1, 3);
    for index in 0..feature_count {
        let id = format!("feature-{index}");
        writeln!(text, "[features.{id}]\nunit = \"unit\"").expect("writes to a string");
        if random.chance(30) {
            writeln!(
                text,
                "price_by = \"tier\"\nprices = {{ low = {}, high = {} }}",
                random.between(1, 50_000),
                random.between(50_000, 2_000_000)
            )
            .expect("writes to a string");
            features.push((
                FeatureId::new(&id).expect("valid"),
                vec![("tier".to_string(), vec!["low".to_string(), "high".to_string()])],
            ));
        } else {
            let price = if random.chance(15) { 0 } else { random.between(1, 2_000_000) };
            writeln!(text, "price = {price}").expect("writes to a string");
            features.push((FeatureId::new(&id).expect("valid"), Vec::new()));
        }
    }
    let with_group = feature_count > 1 && random.chance(60);
    if with_group {
        writeln!(
            text,
            "[groups.shared]\nweights = {{ feature-0 = {}, feature-1 = {} }}",
            random.between(1, 3),
            random.between(1, 3)
        )
        .expect("writes to a string");
    }
    for plan in ["small", "large"] {
        writeln!(text, "[plans.{plan}]\noverdraft = {}", if random.chance(30) { random.below(3_000_000) } else { 0 })
            .expect("writes to a string");
        for window in 0..random.between(0, 3) {
            let meters = if with_group && random.chance(40) {
                "shared".to_string()
            } else {
                format!("feature-{}", random.below(feature_count))
            };
            let scope = if random.chance(25) { "account" } else { "subject" };
            let capacity = random.between(1, 40);
            writeln!(text, "[[plans.{plan}.windows]]\nid = \"w{window}\"\nmeters = \"{meters}\"\nscope = \"{scope}\"\ncapacity = {capacity}")
                .expect("writes to a string");
            let period_ms = random.between(1, 120) * 1000;
            match random.below(4) {
                0 => writeln!(
                    text,
                    "kind = \"fixed\"\nperiod = \"{period_ms}ms\"\noffset = \"{}ms\"",
                    random.below(period_ms)
                ),
                1 => writeln!(text, "kind = \"anchored\"\nperiod = \"{period_ms}ms\""),
                2 => writeln!(text, "kind = \"sliding\"\nperiod = \"{period_ms}ms\"\nbuckets = 10"),
                _ => writeln!(
                    text,
                    "kind = \"token_bucket\"\nrefill = {}\nper = \"{period_ms}ms\"",
                    random.between(1, 5)
                ),
            }
            .expect("writes to a string");
        }
        if random.chance(40) {
            writeln!(
                text,
                "[[plans.{plan}.included_grants]]\nkind = \"free_tier\"\ncredits = {}\nexpires_after = \"1h\"",
                random.between(1, 5_000_000)
            )
            .expect("writes to a string");
        }
    }
    (text, features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let config = SimulationConfig { seed: 42, operations: 2_000, twin: true };
        assert_eq!(run(config), run(config));
    }
}
