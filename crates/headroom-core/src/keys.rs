//! Remembered idempotency keys: the answer each key got, kept for the
//! retention period and then forgotten. Forgetting changes no money: the
//! events of the answer were recorded when it was given.

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
    recorded: Recorded,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTable {
    records: FastMap<IdempotencyKey, KeyRecord>,
    /// Keys in the order they expire (retention is fixed, time only moves on).
    expiries: VecDeque<(Timestamp, IdempotencyKey)>,
}

pub enum Lookup<'a> {
    New,
    Replay(&'a Recorded),
    Conflict,
}

impl KeyTable {
    pub fn lookup(&self, key: &IdempotencyKey, fingerprint: u128, now: Timestamp) -> Lookup<'_> {
        match self.records.get(key) {
            Some(record) if record.expires_at > now => {
                if record.fingerprint == fingerprint {
                    Lookup::Replay(&record.recorded)
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
        self.expiries.push_back((expires_at, key.clone()));
        self.records.insert(key, KeyRecord { fingerprint, expires_at, recorded });
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
}
