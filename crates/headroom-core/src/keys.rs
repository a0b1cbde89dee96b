//! Remembered idempotency keys: the answer each key got, kept for the
//! retention period and then forgotten. Forgetting changes no money: the
//! events of the answer were recorded when it was given.
//!
//! An answer is kept encoded, in one allocation: every decision leaves one
//! behind for a day, and a decision with its vectors would be three
//! allocations and twice the memory, paid again when it is forgotten.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use crate::FastMap;

use crate::decision::Recorded;
use crate::ids::IdempotencyKey;
use crate::limits::IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyRecord {
    fingerprint: u128,
    expires_at: Timestamp,
    answer: Box<[u8]>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTable {
    records: FastMap<IdempotencyKey, KeyRecord>,
    /// Keys in the order they expire (retention is fixed, time only moves on).
    expiries: VecDeque<(Timestamp, IdempotencyKey)>,
}

pub enum Lookup {
    New,
    Replay(Recorded),
    Conflict,
}

impl KeyTable {
    pub fn lookup(&self, key: &IdempotencyKey, fingerprint: u128, now: Timestamp) -> Lookup {
        match self.records.get(key) {
            Some(record) if record.expires_at > now => {
                if record.fingerprint == fingerprint {
                    Lookup::Replay(postcard::from_bytes(&record.answer).expect("an answer this table encoded"))
                } else {
                    Lookup::Conflict
                }
            }
            _ => Lookup::New,
        }
    }

    /// Whether a new key fits, counting the keys that have expired by `now`.
    pub fn has_room(&self, now: Timestamp) -> bool {
        let expired = self.expiries.iter().take_while(|(expiry, _)| *expiry <= now).count();
        self.records.len() - expired.min(self.records.len()) < IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX
    }

    pub fn record(&mut self, key: IdempotencyKey, fingerprint: u128, expires_at: Timestamp, recorded: Recorded) {
        let answer = crate::encoding::to_boxed(&recorded);
        self.expiries.push_back((expires_at, key.clone()));
        self.records.insert(key, KeyRecord { fingerprint, expires_at, answer });
    }

    /// Forgets the keys whose retention ended by `now`.
    pub fn forget_expired(&mut self, now: Timestamp) {
        while let Some((expiry, _)) = self.expiries.front() {
            if *expiry > now {
                break;
            }
            let (expiry, key) = self.expiries.pop_front().expect("front exists");
            // A key reused after it expired has a newer record: keep that one.
            if self.records.get(&key).is_some_and(|record| record.expires_at == expiry) {
                self.records.remove(&key);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Puts back a key that a store kept elsewhere (a database table), so
    /// that the next operation sees it.
    pub fn restore(&mut self, stored: StoredKey) {
        let StoredKey { key, fingerprint, expires_at, answer } = stored;
        // Keep the expiry queue in order: restored keys arrive in any order.
        let position = self.expiries.partition_point(|(expiry, _)| *expiry <= expires_at);
        self.expiries.insert(position, (expires_at, key.clone()));
        self.records.insert(key, KeyRecord { fingerprint, expires_at, answer });
    }

    /// Takes every key out, for a store that keeps them elsewhere.
    pub fn drain(&mut self) -> Vec<StoredKey> {
        self.expiries.clear();
        self.records
            .drain()
            .map(|(key, record)| StoredKey {
                key,
                fingerprint: record.fingerprint,
                expires_at: record.expires_at,
                answer: record.answer,
            })
            .collect()
    }
}

/// A remembered key outside its table: the encoded answer, the request's
/// fingerprint and when the key may be forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: IdempotencyKey,
    pub fingerprint: u128,
    pub expires_at: Timestamp,
    pub answer: Box<[u8]>,
}
