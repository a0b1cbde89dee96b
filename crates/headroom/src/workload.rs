//! A deterministic workload over the demo catalog: every request follows
//! from its idempotency key, so that a checker can rebuild exactly what a
//! (possibly killed) worker sent and replay it.

use headroom_core::*;
use headroom_store::Command;

pub const ACCOUNT: &str = "load";
pub const SUBJECTS: u64 = 8;

fn subject(index: u64) -> SubjectId {
    SubjectId::new(&format!("load-{}", index % SUBJECTS)).expect("valid id")
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::new(text).expect("valid key")
}

/// A stable number from a key, to derive the request's fields.
fn spread(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Commands that make the account, its subjects and its credits; safe to
/// run again (an existing account is refused, the rest replay).
pub fn setup() -> Vec<Command> {
    let account = AccountId::new(ACCOUNT).expect("valid id");
    let mut commands = vec![Command::OpenAccount {
        account: account.clone(),
        plan: PlanId::new("plus").expect("valid"),
        overdraft: None,
    }];
    for index in 0..SUBJECTS {
        commands.push(Command::PutSubject { subject: subject(index), account: account.clone(), plan: None });
    }
    commands.push(Command::AddGrant {
        account,
        request: GrantRequest {
            grant: GrantId::new("load-credits").expect("valid id"),
            kind: GrantKind::Purchase,
            credits: Credits::from_micros(1_000_000_000_000),
            priority: 0,
            expires_at: None,
            idempotency_key: key("load-credits"),
        },
    });
    commands
}

pub fn decide(idempotency_key: &str) -> Command {
    let spread = spread(idempotency_key);
    Command::Decide(DecisionRequest {
        subject: subject(spread),
        feature: FeatureId::new("codex.local_task").expect("valid id"),
        quantity: 1 + spread % 5,
        attributes: Attributes::default(),
        idempotency_key: Some(key(idempotency_key)),
        preview: false,
    })
}

pub fn reserve(idempotency_key: &str) -> Command {
    let spread = spread(idempotency_key);
    Command::Reserve(ReserveRequest {
        subject: subject(spread),
        feature: FeatureId::new("codex.local_task").expect("valid id"),
        quantity: 1 + spread % 8,
        attributes: Attributes::default(),
        idempotency_key: key(idempotency_key),
        lifetime: Some(Duration::from_seconds(600)),
    })
}

/// Captures below, at or above the estimate, by the key.
pub fn capture(idempotency_key: &str, reservation: ReservationId) -> Command {
    Command::Capture {
        account: AccountId::new(ACCOUNT).expect("valid id"),
        request: CaptureRequest {
            reservation,
            quantity: spread(idempotency_key) % 12,
            idempotency_key: key(idempotency_key),
        },
    }
}
