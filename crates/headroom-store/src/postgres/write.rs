//! What one transaction writes: the rows of every table, column by
//! column, and the one statement that writes them all.

use headroom_core::*;
use postgres::types::ToSql;

use super::{encode, encode_state, millis};

/// Everything a transaction writes, in one statement of data-modifying
/// parts (one round trip however many commands). A subject is inserted
/// plainly: one that another node gave to an account meanwhile is a unique
/// violation, and the transaction runs again and sees it.
pub(super) const WRITE: &str = "
WITH updated AS (
    UPDATE accounts SET state = ($2::bytea[])[array_position($1::text[], id)],
                        due_at = ($3::int8[])[array_position($1::text[], id)],
                        work_at = ($46::int8[])[array_position($1::text[], id)]
    WHERE id = ANY($1::text[])
), created AS (
    INSERT INTO accounts (id, state, due_at, work_at)
    SELECT * FROM unnest($4::text[], $5::bytea[], $6::int8[], $47::int8[])
), subjects_added AS (
    INSERT INTO subjects (id, account) SELECT * FROM unnest($7::text[], $8::text[])
), keys_added AS (
    INSERT INTO idempotency_keys (account, key, fingerprint, expires_at, answer)
    SELECT * FROM unnest($9::text[], $10::text[], $11::bytea[], $12::int8[], $13::bytea[])
    ON CONFLICT (account, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, expires_at = EXCLUDED.expires_at, answer = EXCLUDED.answer
), usage AS (
    INSERT INTO usage_events (id, account, decision, idempotency_key, subject, feature, quantity, window_units, at, body)
    SELECT * FROM unnest($14::text[]::uuid[], $15::text[], $16::text[]::uuid[], $17::text[], $18::text[], $19::text[],
                         $20::int8[], $21::int8[], $22::int8[], $23::bytea[])
), monetization AS (
    INSERT INTO monetization_events (id, usage_id, account, amount, write_off, at, body)
    SELECT * FROM unnest($24::text[]::uuid[], $25::text[]::uuid[], $26::text[], $27::int8[], $28::int8[], $29::int8[],
                         $30::bytea[])
), balance AS (
    INSERT INTO balance_updates (id, account, sequence, source, delta, cause, monetization_id, at, body)
    SELECT * FROM unnest($31::text[]::uuid[], $32::text[], $33::int8[], $34::text[], $35::int8[], $36::text[],
                         $37::text[]::uuid[], $38::int8[], $39::bytea[])
), corrected AS (
    INSERT INTO corrections (id, update_id, account, write_off, at, body)
    SELECT * FROM unnest($40::text[]::uuid[], $41::text[]::uuid[], $42::text[], $43::int8[], $44::int8[], $45::bytea[])
)
SELECT 1";

/// The rows of [`WRITE`], column by column.
#[derive(Default)]
pub(super) struct Rows {
    updated: (Vec<String>, Vec<Vec<u8>>, Vec<Option<i64>>),
    created: (Vec<String>, Vec<Vec<u8>>, Vec<Option<i64>>),
    updated_work: Vec<Option<i64>>,
    created_work: Vec<Option<i64>>,
    subjects: (Vec<String>, Vec<String>),
    keys: KeyColumns,
    usage: UsageColumns,
    monetization: MonetizationColumns,
    balance: BalanceColumns,
    corrections: CorrectionColumns,
}

#[derive(Default)]
struct KeyColumns {
    accounts: Vec<String>,
    keys: Vec<String>,
    fingerprints: Vec<Vec<u8>>,
    expiries: Vec<i64>,
    answers: Vec<Vec<u8>>,
}

#[derive(Default)]
struct MonetizationColumns {
    ids: Vec<String>,
    usages: Vec<String>,
    accounts: Vec<String>,
    amounts: Vec<i64>,
    write_offs: Vec<i64>,
    ats: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

#[derive(Default)]
struct CorrectionColumns {
    ids: Vec<String>,
    updates: Vec<String>,
    accounts: Vec<String>,
    write_offs: Vec<i64>,
    ats: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

#[derive(Default)]
struct UsageColumns {
    ids: Vec<String>,
    accounts: Vec<String>,
    decisions: Vec<String>,
    keys: Vec<String>,
    subjects: Vec<String>,
    features: Vec<String>,
    quantities: Vec<i64>,
    window_units: Vec<i64>,
    ats: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

#[derive(Default)]
struct BalanceColumns {
    ids: Vec<String>,
    accounts: Vec<String>,
    sequences: Vec<i64>,
    sources: Vec<String>,
    deltas: Vec<i64>,
    causes: Vec<&'static str>,
    monetizations: Vec<Option<String>>,
    ats: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

impl Rows {
    pub(super) fn account(&mut self, state: &AccountState, new: bool) {
        let columns = if new { &mut self.created } else { &mut self.updated };
        columns.0.push(state.id().to_string());
        columns.1.push(encode_state(state));
        columns.2.push(state.next_deadline().map(millis));
        let work = if new { &mut self.created_work } else { &mut self.updated_work };
        work.push(state.next_work().map(millis));
    }

    pub(super) fn key(&mut self, account: &AccountId, stored: StoredKey) {
        self.keys.accounts.push(account.to_string());
        self.keys.keys.push(stored.key.to_string());
        self.keys.fingerprints.push(stored.fingerprint.to_le_bytes().to_vec());
        self.keys.expiries.push(millis(stored.expires_at));
        self.keys.answers.push(stored.answer.into_vec());
    }

    /// A subject newly given to an account.
    pub(super) fn subject(&mut self, subject: &SubjectId, account: &AccountId) {
        self.subjects.0.push(subject.to_string());
        self.subjects.1.push(account.to_string());
    }

    /// Events the core recorded, each into its table's columns.
    pub(super) fn events(&mut self, events: &[Event]) {
        for event in events {
            match event {
                Event::Usage(usage) => self.usage(usage),
                Event::Monetization(monetization) => self.monetization(monetization),
                Event::Balance(update) => self.balance(update),
                Event::Correction(correction) => self.correction(correction),
            }
        }
    }

    fn usage(&mut self, usage: &UsageEvent) {
        let columns = &mut self.usage;
        columns.ids.push(usage.id.to_string());
        columns.accounts.push(usage.account.to_string());
        columns.decisions.push(usage.decision.to_string());
        columns.keys.push(usage.idempotency_key.to_string());
        columns.subjects.push(usage.subject.to_string());
        columns.features.push(usage.feature.to_string());
        columns.quantities.push(usage.quantity as i64);
        columns.window_units.push(usage.window_units as i64);
        columns.ats.push(millis(usage.at));
        columns.bodies.push(encode(usage));
    }

    fn monetization(&mut self, monetization: &MonetizationEvent) {
        let columns = &mut self.monetization;
        columns.ids.push(monetization.id.to_string());
        columns.usages.push(monetization.usage.to_string());
        columns.accounts.push(monetization.account.to_string());
        columns.amounts.push(monetization.amount.micros() as i64);
        columns.write_offs.push(monetization.write_off.micros() as i64);
        columns.ats.push(millis(monetization.at));
        columns.bodies.push(encode(monetization));
    }

    fn balance(&mut self, update: &BalanceUpdate) {
        let columns = &mut self.balance;
        columns.ids.push(update.id.to_string());
        columns.accounts.push(update.account.to_string());
        columns.sequences.push(update.sequence as i64);
        columns.sources.push(match &update.source {
            BalanceSource::Grant(grant) => grant.to_string(),
            BalanceSource::Overdraft => "overdraft".to_string(),
        });
        columns.deltas.push(update.delta);
        let (cause, monetization) = match &update.cause {
            BalanceCause::Debit { monetization } => ("debit", Some(monetization.to_string())),
            BalanceCause::Grant { .. } => ("grant", None),
            BalanceCause::Expiry => ("expiry", None),
            BalanceCause::Refund { .. } => ("refund", None),
        };
        columns.causes.push(cause);
        columns.monetizations.push(monetization);
        columns.ats.push(millis(update.at));
        columns.bodies.push(encode(update));
    }

    fn correction(&mut self, correction: &Correction) {
        let columns = &mut self.corrections;
        columns.ids.push(correction.id.to_string());
        columns.updates.push(correction.update.to_string());
        columns.accounts.push(correction.account.to_string());
        columns.write_offs.push(correction.write_off.micros() as i64);
        columns.ats.push(millis(correction.at));
        columns.bodies.push(encode(correction));
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let (usage, balance) = (&self.usage, &self.balance);
        vec![
            &self.updated.0,
            &self.updated.1,
            &self.updated.2,
            &self.created.0,
            &self.created.1,
            &self.created.2,
            &self.subjects.0,
            &self.subjects.1,
            &self.keys.accounts,
            &self.keys.keys,
            &self.keys.fingerprints,
            &self.keys.expiries,
            &self.keys.answers,
            &usage.ids,
            &usage.accounts,
            &usage.decisions,
            &usage.keys,
            &usage.subjects,
            &usage.features,
            &usage.quantities,
            &usage.window_units,
            &usage.ats,
            &usage.bodies,
            &self.monetization.ids,
            &self.monetization.usages,
            &self.monetization.accounts,
            &self.monetization.amounts,
            &self.monetization.write_offs,
            &self.monetization.ats,
            &self.monetization.bodies,
            &balance.ids,
            &balance.accounts,
            &balance.sequences,
            &balance.sources,
            &balance.deltas,
            &balance.causes,
            &balance.monetizations,
            &balance.ats,
            &balance.bodies,
            &self.corrections.ids,
            &self.corrections.updates,
            &self.corrections.accounts,
            &self.corrections.write_offs,
            &self.corrections.ats,
            &self.corrections.bodies,
            &self.updated_work,
            &self.created_work,
        ]
    }
}
