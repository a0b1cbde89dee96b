//! Commands: every change to the engine's state, as a value. Stores log
//! them and apply them through [`apply`], the one place where a command
//! meets the core, so that recovery replays exactly what was acknowledged.

use headroom_core::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    OpenAccount {
        account: AccountId,
        plan: PlanId,
        overdraft: Option<Credits>,
    },
    SetPlan {
        account: AccountId,
        plan: PlanId,
        overdraft: Option<Credits>,
    },
    PutSubject {
        subject: SubjectId,
        account: AccountId,
        plan: Option<PlanId>,
    },
    Decide(DecisionRequest),
    Reserve(ReserveRequest),
    Capture {
        account: AccountId,
        request: CaptureRequest,
    },
    Release {
        account: AccountId,
        request: ReleaseRequest,
    },
    AddGrant {
        account: AccountId,
        request: GrantRequest,
    },
    /// Settles one balance update into the balance of record.
    Settle(BalanceUpdate),
    /// Moves every account to now: expires reservations and grants.
    Advance,
    /// Moves one account to now (a store that sweeps accounts one by one).
    AdvanceAccount(AccountId),
    /// Payments, auto-recharge and the outbox of alerts of one account.
    Billing {
        account: AccountId,
        op: BillingOp,
    },
}

/// What a command answered, with the events it recorded.
#[derive(Debug, Clone)]
pub enum Response {
    Done {
        events: Vec<Event>,
    },
    Decision(Outcome<Decision>),
    Released(Outcome<Released>),
    GrantAdded(Outcome<GrantAdded>),
    Settled {
        settlement: Settlement,
        events: Vec<Event>,
    },
    /// Boxed: billing answers are large and rare, and every answer is moved
    /// a few times on its way to the caller.
    Billing {
        answer: Box<BillingAnswer>,
        events: Vec<Event>,
    },
}

impl Response {
    pub fn events(&self) -> &[Event] {
        match self {
            Response::Done { events } => events,
            Response::Decision(outcome) => &outcome.events,
            Response::Released(outcome) => &outcome.events,
            Response::GrantAdded(outcome) => &outcome.events,
            Response::Settled { events, .. } | Response::Billing { events, .. } => events,
        }
    }

    /// Moves the events out, for the log; the answer keeps the rest.
    pub fn take_events(&mut self) -> Vec<Event> {
        match self {
            Response::Done { events } | Response::Settled { events, .. } | Response::Billing { events, .. } => {
                std::mem::take(events)
            }
            Response::Decision(outcome) => std::mem::take(&mut outcome.events),
            Response::Released(outcome) => std::mem::take(&mut outcome.events),
            Response::GrantAdded(outcome) => std::mem::take(&mut outcome.events),
        }
    }
}

/// Why a command was refused. Either way, it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Core(CoreError),
    Settle(SettleError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Core(error) => error.fmt(f),
            Refusal::Settle(error) => error.fmt(f),
        }
    }
}

/// Applies `command` at `now`. Deterministic: the same engine state, command
/// and time give the same state, answer and events.
pub fn apply(engine: &mut Engine, command: &Command, now: Timestamp) -> Result<Response, Refusal> {
    let core = Refusal::Core;
    match command {
        Command::OpenAccount { account, plan, overdraft } => engine
            .open_account(account.clone(), plan, *overdraft, now)
            .map(|events| Response::Done { events })
            .map_err(core),
        Command::SetPlan { account, plan, overdraft } => {
            engine.set_plan(account, plan, *overdraft).map(|()| Response::Done { events: Vec::new() }).map_err(core)
        }
        Command::PutSubject { subject, account, plan } => engine
            .put_subject(subject.clone(), account, plan.clone())
            .map(|()| Response::Done { events: Vec::new() })
            .map_err(core),
        Command::Decide(request) => engine.decide(request, now).map(Response::Decision).map_err(core),
        Command::Reserve(request) => engine.reserve(request, now).map(Response::Decision).map_err(core),
        Command::Capture { account, request } => {
            engine.capture(account, request, now).map(Response::Decision).map_err(core)
        }
        Command::Release { account, request } => {
            engine.release(account, request, now).map(Response::Released).map_err(core)
        }
        Command::AddGrant { account, request } => {
            engine.add_grant(account, request, now).map(Response::GrantAdded).map_err(core)
        }
        Command::Settle(update) => {
            let settlement = engine.settle(update).map_err(Refusal::Settle)?;
            let events = match settlement {
                Settlement::Applied { write_off } if !write_off.is_zero() => {
                    vec![Event::Correction(Correction {
                        id: EventId::derive(update.id.0, "correction", 0),
                        update: update.id,
                        account: update.account.clone(),
                        write_off,
                        at: now,
                    })]
                }
                _ => Vec::new(),
            };
            Ok(Response::Settled { settlement, events })
        }
        Command::Advance => Ok(Response::Done { events: engine.advance_all(now) }),
        Command::Billing { account, op } => engine
            .billing(account, op, now)
            .map(|(answer, events)| Response::Billing { answer: Box::new(answer), events })
            .map_err(core),
        Command::AdvanceAccount(account) => {
            engine.advance_account(account, now).map(|events| Response::Done { events }).map_err(core)
        }
    }
}
