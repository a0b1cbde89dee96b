//! Remembered idempotency keys: the answer each key got, kept for the
//! retention period and then forgotten. Forgetting changes no money: the
//! events of the answer were recorded when it was given.
//!
//! Every decision leaves a record behind for a day, so a record is small
//! and touches little memory: 48 bytes in the hash table, and one
//! allocation that holds the key's text followed by the encoded answer (a
//! decision with its vectors would be three allocations and twice the
//! memory, paid again when it is forgotten). A key is hashed once per
//! operation; the expiry queue keeps the hash, so that forgetting a key
//! finds its record without reading the key's text.

use serde::de::{MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::decision::Recorded;
use crate::ids::IdempotencyKey;
use crate::limits::IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyRecord {
    /// The hash of the key's text in this table.
    hash: u64,
    /// The request's fingerprint, in two halves: a `u128` would align the
    /// record to 16 bytes and make it 64.
    fingerprint: [u64; 2],
    expires_at: Timestamp,
    /// The key's length (one byte: keys are at most 255 bytes), its text,
    /// then the encoded answer.
    stored: Box<[u8]>,
}

/// The key's length and text, ahead of the answer in a record.
fn key_prefix<'p>(key: &IdempotencyKey, prefix: &'p mut [u8; 256]) -> &'p [u8] {
    let text = key.as_str().as_bytes();
    prefix[0] = u8::try_from(text.len()).expect("idempotency keys are at most 255 bytes");
    prefix[1..1 + text.len()].copy_from_slice(text);
    &prefix[..1 + text.len()]
}

impl KeyRecord {
    fn new(key: &IdempotencyKey, hash: u64, fingerprint: u128, expires_at: Timestamp, answer: &[u8]) -> KeyRecord {
        let mut prefix = [0u8; 256];
        let prefix = key_prefix(key, &mut prefix);
        let mut stored = Vec::with_capacity(prefix.len() + answer.len());
        stored.extend_from_slice(prefix);
        stored.extend_from_slice(answer);
        KeyRecord { hash, fingerprint: split(fingerprint), expires_at, stored: stored.into_boxed_slice() }
    }

    fn key(&self) -> &[u8] {
        &self.stored[1..1 + usize::from(self.stored[0])]
    }

    fn key_text(&self) -> &str {
        std::str::from_utf8(self.key()).expect("a key's text is ASCII")
    }

    fn answer(&self) -> &[u8] {
        &self.stored[1 + usize::from(self.stored[0])..]
    }

    /// Starts loading the record's bytes into the cache (the first few
    /// lines: a key and a decision's answer).
    fn prefetch_stored(&self) {
        const LINE: usize = 64;
        const LINES_MAX: usize = 4;
        let bytes = self.stored.as_ptr();
        for offset in (0..self.stored.len().min(LINE * LINES_MAX)).step_by(LINE) {
            crate::prefetch(bytes.wrapping_add(offset));
        }
    }

    fn fingerprint(&self) -> u128 {
        (u128::from(self.fingerprint[0]) << 64) | u128::from(self.fingerprint[1])
    }
}

fn split(fingerprint: u128) -> [u64; 2] {
    [(fingerprint >> 64) as u64, fingerprint as u64]
}

#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    records: HashTable<KeyRecord>,
    /// Each record's expiry and hash, in the order they expire (retention is
    /// fixed and time only moves on; restored keys are put in their place).
    /// A record is found again by its hash and expiry, which together name
    /// it: a key used again after it expired gets a later expiry, and two
    /// keys of the same hash expiring at the same moment are forgotten
    /// together, whichever entry names which.
    expiries: VecDeque<(Timestamp, u64)>,
    hasher: foldhash::fast::RandomState,
}

/// A key with its hash in one table: hashed once, then looked up and
/// recorded with the same hash.
#[derive(Debug, Clone, Copy)]
pub struct HashedKey<'k> {
    pub key: &'k IdempotencyKey,
    hash: u64,
}

pub enum Lookup {
    New,
    Replay(Recorded),
    Conflict,
}

impl KeyTable {
    pub fn hashed<'k>(&self, key: &'k IdempotencyKey) -> HashedKey<'k> {
        HashedKey { key, hash: self.hasher.hash_one(key.as_str().as_bytes()) }
    }

    pub fn lookup(&self, key: HashedKey, fingerprint: u128, now: Timestamp) -> Lookup {
        let text = key.key.as_str().as_bytes();
        match self.records.find(key.hash, |record| record.hash == key.hash && record.key() == text) {
            Some(record) if record.expires_at > now => {
                if record.fingerprint() == fingerprint {
                    Lookup::Replay(postcard::from_bytes(record.answer()).expect("an answer this table encoded"))
                } else {
                    Lookup::Conflict
                }
            }
            _ => Lookup::New,
        }
    }

    /// Reads the part of the table where `key` is or would go, so that the
    /// lookup that follows finds it in the cache.
    pub fn touch(&self, key: &IdempotencyKey) {
        let hash = self.hashed(key).hash;
        std::hint::black_box(self.records.find(hash, |record| record.hash == hash).is_some());
    }

    /// Whether a new key fits, counting the keys that have expired by `now`.
    pub fn has_room(&self, now: Timestamp) -> bool {
        let expired = self.expiries.iter().take_while(|(expiry, _)| *expiry <= now).count();
        self.records.len() - expired.min(self.records.len()) < IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX
    }

    pub fn record(&mut self, key: HashedKey, fingerprint: u128, expires_at: Timestamp, recorded: Recorded) {
        let mut prefix = [0u8; 256];
        let stored = crate::encoding::to_boxed_after(key_prefix(key.key, &mut prefix), &recorded);
        self.insert(KeyRecord { hash: key.hash, fingerprint: split(fingerprint), expires_at, stored });
    }

    /// Puts a record in, replacing the key's earlier one (which has expired).
    fn insert(&mut self, record: KeyRecord) {
        // A new key expires last (retention is fixed); a restored one may not.
        let entry = (record.expires_at, record.hash);
        match self.expiries.back() {
            Some((last, _)) if *last > record.expires_at => {
                let position = self.expiries.partition_point(|(expiry, _)| *expiry <= record.expires_at);
                self.expiries.insert(position, entry);
            }
            _ => self.expiries.push_back(entry),
        }
        let hash = record.hash;
        match self.records.entry(hash, |old| old.hash == hash && old.key() == record.key(), |old| old.hash) {
            Entry::Occupied(mut occupied) => *occupied.get_mut() = record,
            Entry::Vacant(vacant) => {
                vacant.insert(record);
            }
        }
    }

    /// Forgets the keys whose retention ended by `now`.
    pub fn forget_expired(&mut self, now: Timestamp) {
        while let Some(&(expiry, hash)) = self.expiries.front() {
            if expiry > now {
                break;
            }
            self.expiries.pop_front();
            // Nothing is found when the key was used again after it expired:
            // its newer record expires later.
            if let Ok(found) =
                self.records.find_entry(hash, |record| record.hash == hash && record.expires_at == expiry)
            {
                found.remove();
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
        let hash = self.hashed(&key).hash;
        self.insert(KeyRecord::new(&key, hash, fingerprint, expires_at, &answer));
    }

    /// Takes every key out, for a store that keeps them elsewhere.
    pub fn drain(&mut self) -> Vec<StoredKey> {
        self.expiries.clear();
        self.records.drain().map(|record| record.into_stored()).collect()
    }
}

impl KeyRecord {
    fn into_stored(self) -> StoredKey {
        StoredKey {
            key: IdempotencyKey::new(self.key_text()).expect("a key this table kept"),
            fingerprint: self.fingerprint(),
            expires_at: self.expires_at,
            answer: self.answer().into(),
        }
    }
}

/// Two tables are equal when they remember the same keys with the same
/// answers: their hashes, seeded per table, and the order of their queues
/// (which may still name replaced records) do not count.
impl PartialEq for KeyTable {
    fn eq(&self, other: &KeyTable) -> bool {
        self.records.len() == other.records.len()
            && self.records.iter().all(|record| {
                let text = record.key();
                let hash = other.hasher.hash_one(text);
                other.records.find(hash, |theirs| theirs.key() == text).is_some_and(|theirs| {
                    (theirs.fingerprint, theirs.expires_at, theirs.answer())
                        == (record.fingerprint, record.expires_at, record.answer())
                })
            })
    }
}

impl Eq for KeyTable {}

/// A remembered key outside its table: the encoded answer, the request's
/// fingerprint and when the key may be forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: IdempotencyKey,
    pub fingerprint: u128,
    pub expires_at: Timestamp,
    pub answer: Box<[u8]>,
}

// ----- Encoding -----
//
// A table is encoded as it always was, as a map from each key to its record
// and a queue of (expiry, key): snapshots and stored account states written
// before stay readable. The queue is now written empty and rebuilt from the
// records when read (from their expiries, sorted), so that encoding needs no
// allocation (the snapshot child must not allocate) and never has to name a
// key from its hash.

/// A record as encoded.
#[derive(Serialize, Deserialize)]
#[serde(rename = "KeyRecord")]
struct EncodedRecord<Answer> {
    fingerprint: u128,
    expires_at: Timestamp,
    answer: Answer,
}

struct EncodedRecords<'t>(&'t HashTable<KeyRecord>);

/// How many records ahead of the one encoded their bytes are asked for.
const ENCODE_PREFETCH_AHEAD: usize = 8;

impl Serialize for EncodedRecords<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        // Each record's bytes are a separate allocation somewhere in the
        // heap: asked for a few records ahead, their misses overlap instead
        // of making the encoding (the snapshot child's work) wait on each.
        let mut ahead = self.0.iter();
        ahead.by_ref().take(ENCODE_PREFETCH_AHEAD).for_each(KeyRecord::prefetch_stored);
        for record in self.0 {
            if let Some(later) = ahead.next() {
                later.prefetch_stored();
            }
            let encoded = EncodedRecord {
                fingerprint: record.fingerprint(),
                expires_at: record.expires_at,
                answer: record.answer(),
            };
            map.serialize_entry(record.key_text(), &encoded)?;
        }
        map.end()
    }
}

impl Serialize for KeyTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut table = serializer.serialize_struct("KeyTable", 2)?;
        table.serialize_field("records", &EncodedRecords(&self.records))?;
        table.serialize_field("expiries", &[] as &[(Timestamp, IdempotencyKey)])?;
        table.end()
    }
}

/// The records of an encoded table, read straight into a new table.
struct DecodedRecords(KeyTable);

impl<'de> Deserialize<'de> for DecodedRecords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecordsVisitor;
        impl<'de> Visitor<'de> for RecordsVisitor {
            type Value = DecodedRecords;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a map from idempotency keys to their records")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<DecodedRecords, M::Error> {
                let mut table = KeyTable::default();
                table.records.reserve(map.size_hint().unwrap_or(0), |record| record.hash);
                while let Some((key, record)) = map.next_entry::<IdempotencyKey, EncodedRecord<Box<[u8]>>>()? {
                    let hash = table.hashed(&key).hash;
                    let record = KeyRecord::new(&key, hash, record.fingerprint, record.expires_at, &record.answer);
                    table.expiries.push_back((record.expires_at, hash));
                    if table.records.find(hash, |old| old.hash == hash && old.key() == record.key()).is_some() {
                        return Err(serde::de::Error::custom(format!("the idempotency key {key} is remembered twice")));
                    }
                    table.records.insert_unique(hash, record, |record| record.hash);
                }
                table.expiries.make_contiguous().sort_unstable();
                Ok(DecodedRecords(table))
            }
        }
        deserializer.deserialize_map(RecordsVisitor)
    }
}

impl<'de> Deserialize<'de> for KeyTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "KeyTable")]
        struct Encoded {
            records: DecodedRecords,
            /// Rebuilt from the records: what an older encoding kept here is read and dropped.
            #[allow(dead_code)]
            expiries: Vec<(Timestamp, IdempotencyKey)>,
        }
        Ok(Encoded::deserialize(deserializer)?.records.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Recorded;

    fn at(millis: u64) -> Timestamp {
        Timestamp::from_millis(millis)
    }

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::new(text).expect("a valid key")
    }

    fn answer(number: u64) -> Recorded {
        Recorded::Released(std::sync::Arc::new(crate::decision::Released {
            reservation: crate::decision::DecisionId(u128::from(number)),
            window_units_returned: number,
            credits_returned: crate::Credits::from_micros(number),
            released_at: at(number),
        }))
    }

    fn remember(table: &mut KeyTable, text: &str, fingerprint: u128, expires_at: Timestamp, number: u64) {
        let key = key(text);
        table.record(table.hashed(&key), fingerprint, expires_at, answer(number));
    }

    fn look(table: &KeyTable, text: &str, fingerprint: u128, now: Timestamp) -> Option<Option<Recorded>> {
        let key = key(text);
        match table.lookup(table.hashed(&key), fingerprint, now) {
            Lookup::New => Some(None),
            Lookup::Replay(recorded) => Some(Some(recorded)),
            Lookup::Conflict => None,
        }
    }

    #[test]
    fn a_key_replays_its_answer_until_it_expires_and_conflicts_with_another_request() {
        let mut table = KeyTable::default();
        let long = "k".repeat(255);
        remember(&mut table, "short", 1, at(100), 1);
        remember(&mut table, &long, 2, at(200), 2);
        assert_eq!(look(&table, "short", 1, at(99)), Some(Some(answer(1))));
        assert_eq!(look(&table, &long, 2, at(99)), Some(Some(answer(2))));
        assert_eq!(look(&table, "short", 3, at(99)), None, "another request with the same key");
        assert_eq!(look(&table, "other", 1, at(99)), Some(None));
        assert_eq!(look(&table, "short", 1, at(100)), Some(None), "expired, even before it is forgotten");
        table.forget_expired(at(100));
        assert_eq!(table.len(), 1);
        table.forget_expired(at(200));
        assert_eq!(table.len(), 0);
        assert!(table.expiries.is_empty());
    }

    #[test]
    fn a_key_used_again_after_it_expired_keeps_its_newer_record() {
        let mut table = KeyTable::default();
        remember(&mut table, "again", 1, at(100), 1);
        // Used again after its expiry, before the table forgot it.
        remember(&mut table, "again", 2, at(300), 2);
        assert_eq!(table.len(), 1);
        table.forget_expired(at(150));
        assert_eq!(look(&table, "again", 2, at(150)), Some(Some(answer(2))));
        table.forget_expired(at(300));
        assert_eq!(table.len(), 0);
        assert!(table.expiries.is_empty());
    }

    #[test]
    fn keys_of_the_same_expiry_are_all_forgotten() {
        let mut table = KeyTable::default();
        for number in 0..1_000 {
            remember(&mut table, &format!("key-{number}"), u128::from(number), at(100 + number % 3), number);
        }
        assert!(table.has_room(at(0)));
        table.forget_expired(at(101));
        assert_eq!(table.len(), 333);
        assert!((0..1_000).filter(|number| number % 3 == 2).all(|number| {
            look(&table, &format!("key-{number}"), u128::from(number), at(101)) == Some(Some(answer(number)))
        }));
        table.forget_expired(at(102));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_table_encodes_as_before_and_reads_back_equal_with_its_queue_rebuilt() {
        let mut table = KeyTable::default();
        for number in 0..50u64 {
            remember(&mut table, &format!("key-{number}"), u128::MAX - u128::from(number), at(1_000 - number), number);
        }
        remember(&mut table, "key-7", 9, at(5_000), 7);
        let encoded = postcard::to_allocvec(&table).expect("encodes");

        // The encoding an older build wrote: a map of records and the queue of keys.
        #[derive(Serialize)]
        struct Older {
            records: std::collections::BTreeMap<IdempotencyKey, EncodedRecord<Box<[u8]>>>,
            expiries: Vec<(Timestamp, IdempotencyKey)>,
        }
        let records = table.records.iter().map(|record| {
            let encoded = EncodedRecord {
                fingerprint: record.fingerprint(),
                expires_at: record.expires_at,
                answer: Box::<[u8]>::from(record.answer()),
            };
            (key(record.key_text()), encoded)
        });
        let older = Older { records: records.collect(), expiries: vec![(at(1), key("key-1"))] };
        let older = postcard::to_allocvec(&older).expect("encodes");

        for bytes in [encoded, older] {
            let mut read: KeyTable = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(read, table);
            assert!(read.expiries.iter().is_sorted_by_key(|(expiry, _)| *expiry));
            assert_eq!(look(&read, "key-7", 9, at(0)), Some(Some(answer(7))));
            read.forget_expired(at(1_000));
            assert_eq!(read.len(), 1, "only the key used again is left");
        }
    }

    #[test]
    fn drained_keys_restore_to_an_equal_table() {
        let mut table = KeyTable::default();
        for number in 0..20u64 {
            remember(&mut table, &format!("key-{number}"), u128::from(number), at(number * 7 % 13), number);
        }
        let copy = table.clone();
        let mut drained = table.drain();
        assert_eq!(table.len(), 0);
        drained.reverse();
        for stored in drained {
            table.restore(stored);
        }
        assert_eq!(table, copy);
        assert!(table.expiries.iter().is_sorted_by_key(|(expiry, _)| *expiry));
    }
}
