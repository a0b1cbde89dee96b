//! Remembered idempotency keys: the answer each key got, kept for the
//! retention period and then forgotten. Forgetting changes no money: the
//! events of the answer were recorded when it was given.
//!
//! Every decision leaves a record behind for a day, so a record is small
//! and touches little memory: 48 bytes in a vector of records, in the order
//! they were made, and the key's text followed by the encoded answer,
//! appended to the table's current chunk of bytes (a decision with its
//! vectors would be three allocations and twice the memory). Chunks double
//! up to 64 KiB and are freed when their last record is forgotten; records
//! expire in the order made (retention is fixed and time only moves on), so
//! chunks empty from the oldest, and a table of one key at a time reuses its
//! one chunk. (One allocation per record, freed a day later somewhere else in
//! the heap, was a fifth of a decision's cost among a million accounts; one
//! vector of bytes that doubles copied them all again and again.)
//!
//! The records are found through an index of 8-byte slots (open addressing,
//! linear probing): a slot holds the low half of its key's hash and the
//! record's place. Where a key's slot is follows from its hash alone, so
//! the engine can ask for that cache line requests ahead without waiting
//! for it ([`KeyTable::prefetch`]); a new key's lookup reads only slots, never
//! a record. New records are appended, so the memory a busy table writes is
//! its index (a sixth of the records' size) and the end of the vector:
//! that is also what a snapshot child's copy-on-write makes the engine copy.
//!
//! A key is hashed once per operation; the expiry queue keeps the hash, so
//! that forgetting a key finds its record without reading the key's text.

use serde::de::{MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::hash::BuildHasher;

use crate::decision::Recorded;
use crate::ids::IdempotencyKey;
use crate::limits::IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX;
use crate::time::Timestamp;

#[derive(Debug, Clone)]
struct KeyRecord {
    /// The hash of the key's text in this table.
    hash: u64,
    /// The request's fingerprint, in two halves: a `u128` would align the
    /// record to 16 bytes and make it 64.
    fingerprint: [u64; 2],
    expires_at: Timestamp,
    /// Where the record's bytes lie: the key's length (one byte: keys are
    /// at most 255 bytes), its text, then the encoded answer.
    bytes: Place,
}

/// Where a record's bytes lie among a table's chunks.
#[derive(Debug, Clone, Copy)]
struct Place {
    /// The chunk's number: chunks are numbered in the order made.
    chunk: u64,
    start: u32,
    /// 0 for a forgotten record's place: a record has at least its key's length.
    length: u32,
}

impl KeyRecord {
    /// The place of a forgotten record, until a new one takes it.
    fn vacant() -> KeyRecord {
        let bytes = Place { chunk: 0, start: 0, length: 0 };
        KeyRecord { hash: 0, fingerprint: [0; 2], expires_at: Timestamp::from_millis(0), bytes }
    }

    fn is_vacant(&self) -> bool {
        self.bytes.length == 0
    }

    fn fingerprint(&self) -> u128 {
        (u128::from(self.fingerprint[0]) << 64) | u128::from(self.fingerprint[1])
    }
}

fn split(fingerprint: u128) -> [u64; 2] {
    [(fingerprint >> 64) as u64, fingerprint as u64]
}

/// An index slot: 0 when empty, else the low 32 bits of the key's hash
/// (which also say where its probe starts) above the record's place + 1.
type Slot = u64;

fn slot(hash: u64, place: usize) -> Slot {
    let place = u32::try_from(place + 1).expect("fewer than 2^32 records in one table");
    (u64::from(hash as u32) << 32) | u64::from(place)
}

fn slot_tag(slot: Slot) -> u32 {
    (slot >> 32) as u32
}

fn slot_place(slot: Slot) -> usize {
    (slot as u32 - 1) as usize
}

/// The smallest index: every table that remembers a key has at least this
/// many slots.
const SLOTS_MIN: usize = 8;

/// The index has at least this many slots per record (as a fraction:
/// numerator over denominator), so that probes stay short: at most three
/// quarters of the slots are used.
const SLOTS_PER_RECORD: (usize, usize) = (4, 3);

/// The largest chunk of bytes, unless one record needs more.
const CHUNK_BYTES_MAX: usize = 64 * 1024;

/// Chunks are sized in multiples of this, so that a table of one key at a
/// time still fits the next key, whose answer may be a byte longer, in the
/// chunk it keeps.
const CHUNK_BYTES_STEP: usize = 32;

/// The bytes of a table's records, in chunks filled one after another.
/// The chunk being filled is kept inline, so that a table of one chunk
/// allocates only that chunk and reaches it without another pointer.
#[derive(Debug, Clone, Default)]
struct Chunks {
    /// Filled chunks still holding records, oldest first.
    older: VecDeque<Chunk>,
    /// The number of the first chunk in `older`; the one being filled
    /// follows the last of them.
    first: u64,
    filling: Chunk,
}

#[derive(Debug, Clone, Default)]
struct Chunk {
    bytes: Vec<u8>,
    /// Records whose bytes are here and not forgotten.
    live: usize,
}

impl Chunk {
    fn room(&self) -> usize {
        self.bytes.capacity() - self.bytes.len()
    }
}

impl Chunks {
    fn filling_number(&self) -> u64 {
        self.first + self.older.len() as u64
    }

    /// Appends a record's bytes, the concatenation of `parts`, and says where they lie.
    fn push(&mut self, parts: [&[u8]; 3]) -> Place {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let needed = length.next_multiple_of(CHUNK_BYTES_STEP);
        if self.filling.bytes.is_empty() {
            // Nothing to copy: the chunk grows where it is.
            self.filling.bytes.reserve_exact(needed);
        } else if self.filling.room() < length {
            let capacity = (self.filling.bytes.capacity() * 2).min(CHUNK_BYTES_MAX).max(needed);
            let filled = std::mem::replace(&mut self.filling, Chunk { bytes: Vec::with_capacity(capacity), live: 0 });
            self.older.push_back(filled);
        }
        let start = self.filling.bytes.len();
        for part in parts {
            self.filling.bytes.extend_from_slice(part);
        }
        self.filling.live += 1;
        let (start, length) = (u32::try_from(start), u32::try_from(length));
        let (start, length) = (start.expect("chunks stay small"), length.expect("records are small"));
        Place { chunk: self.filling_number(), start, length }
    }

    fn chunk(&self, number: u64) -> &Chunk {
        if number == self.filling_number() { &self.filling } else { &self.older[(number - self.first) as usize] }
    }

    fn get(&self, place: Place) -> &[u8] {
        let start = place.start as usize;
        &self.chunk(place.chunk).bytes[start..start + place.length as usize]
    }

    /// Forgets a record's bytes. A filled chunk with no record left is
    /// freed; the one being filled is emptied for the next records.
    fn release(&mut self, place: Place) {
        if place.chunk == self.filling_number() {
            self.filling.live -= 1;
            if self.filling.live == 0 {
                self.filling.bytes.clear();
            }
            return;
        }
        let chunk = &mut self.older[(place.chunk - self.first) as usize];
        chunk.live -= 1;
        if chunk.live == 0 {
            chunk.bytes = Vec::new();
        }
        while self.older.front().is_some_and(|chunk| chunk.live == 0) {
            self.older.pop_front();
            self.first += 1;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    /// Every record, in the order made; a forgotten one leaves a vacant
    /// place that the next new record takes.
    records: Vec<KeyRecord>,
    bytes: Chunks,
    vacant: Vec<usize>,
    /// The index: empty, or a power of two of slots.
    slots: Vec<Slot>,
    live: usize,
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
        match self.find(key.hash, |record| self.key_of(record) == text) {
            Some((_, place)) if self.records[place].expires_at > now => {
                let record = &self.records[place];
                if record.fingerprint() == fingerprint {
                    Lookup::Replay(postcard::from_bytes(self.answer_of(record)).expect("an answer this table encoded"))
                } else {
                    Lookup::Conflict
                }
            }
            _ => Lookup::New,
        }
    }

    /// Starts loading, without waiting for it, what remembering `key`
    /// reads and writes: the index slot where its probe begins, the place
    /// at the end of the records that a new record takes, and the end of
    /// the bytes.
    pub fn prefetch(&self, key: HashedKey) {
        if !self.slots.is_empty() {
            crate::prefetch(&self.slots[key.hash as usize & (self.slots.len() - 1)]);
        }
        if self.vacant.is_empty() {
            crate::prefetch(self.records.as_ptr().wrapping_add(self.records.len()));
        }
        let filling = &self.bytes.filling.bytes;
        crate::prefetch(filling.as_ptr().wrapping_add(filling.len()));
    }

    /// Whether a new key fits, counting the keys that have expired by `now`.
    /// Below the bound, as nearly always, without reading the expiries.
    pub fn has_room(&self, now: Timestamp) -> bool {
        if self.live < IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX {
            return true;
        }
        let expired = self.expiries.iter().take_while(|(expiry, _)| *expiry <= now).count();
        self.live - expired.min(self.live) < IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX
    }

    pub fn record(&mut self, key: HashedKey, fingerprint: u128, expires_at: Timestamp, recorded: Recorded) {
        let record = crate::encoding::with_encoded(&recorded, |answer| {
            self.new_record(key.key, key.hash, fingerprint, expires_at, answer)
        });
        self.insert(record);
    }

    /// A record of `key`, its bytes (the key's length and text, then the
    /// answer) appended to the chunks; not yet in the index.
    fn new_record(
        &mut self,
        key: &IdempotencyKey,
        hash: u64,
        fingerprint: u128,
        expires_at: Timestamp,
        answer: &[u8],
    ) -> KeyRecord {
        let text = key.as_str().as_bytes();
        let length = [u8::try_from(text.len()).expect("idempotency keys are at most 255 bytes")];
        let bytes = self.bytes.push([&length, text, answer]);
        KeyRecord { hash, fingerprint: split(fingerprint), expires_at, bytes }
    }

    fn stored(&self, record: &KeyRecord) -> &[u8] {
        self.bytes.get(record.bytes)
    }

    fn key_of(&self, record: &KeyRecord) -> &[u8] {
        let stored = self.stored(record);
        &stored[1..1 + usize::from(stored[0])]
    }

    fn key_text(&self, record: &KeyRecord) -> &str {
        std::str::from_utf8(self.key_of(record)).expect("a key's text is ASCII")
    }

    fn answer_of(&self, record: &KeyRecord) -> &[u8] {
        let stored = self.stored(record);
        &stored[1 + usize::from(stored[0])..]
    }

    /// The slot and the place of the record of `hash` that `matches`.
    fn find(&self, hash: u64, matches: impl Fn(&KeyRecord) -> bool) -> Option<(usize, usize)> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            if slot_tag(slot) == hash as u32 {
                let place = slot_place(slot);
                let record = &self.records[place];
                if record.hash == hash && matches(record) {
                    return Some((at, place));
                }
            }
            at = (at + 1) & mask;
        }
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
        match self.find(record.hash, |old| self.key_of(old) == self.key_of(&record)) {
            Some((_, place)) => {
                self.bytes.release(self.records[place].bytes);
                self.records[place] = record;
            }
            None => self.add(record),
        }
    }

    /// Adds a record whose key is not in the table.
    fn add(&mut self, record: KeyRecord) {
        self.reserve(self.live + 1);
        let hash = record.hash;
        let place = match self.vacant.pop() {
            Some(place) => {
                self.records[place] = record;
                place
            }
            None => {
                self.records.push(record);
                self.records.len() - 1
            }
        };
        self.place(hash, place);
        self.live += 1;
    }

    /// Writes `place`'s slot in the first empty slot of its probe.
    fn place(&mut self, hash: u64, place: usize) {
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        while self.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = slot(hash, place);
    }

    /// Grows the index, if needed, to hold `records` records.
    fn reserve(&mut self, records: usize) {
        let (numerator, denominator) = SLOTS_PER_RECORD;
        let needed = (records * numerator).div_ceil(denominator);
        if needed <= self.slots.len() {
            return;
        }
        let size = needed.next_power_of_two().max(SLOTS_MIN);
        self.slots = vec![0; size];
        // Read in the order made: the records stream through the cache.
        for place in 0..self.records.len() {
            if !self.records[place].is_vacant() {
                self.place(self.records[place].hash, place);
            }
        }
        self.records.reserve(records.saturating_sub(self.records.len()));
    }

    /// Forgets the record at slot `at` and place `place`. The slots after it
    /// in its run move back where their probes allow, so that no probe ever
    /// stops at the emptied slot too early.
    fn remove(&mut self, at: usize, place: usize) {
        self.bytes.release(self.records[place].bytes);
        self.records[place] = KeyRecord::vacant();
        self.vacant.push(place);
        self.live -= 1;
        let mask = self.slots.len() - 1;
        let mut hole = at;
        let mut next = (at + 1) & mask;
        loop {
            let slot = self.slots[next];
            if slot == 0 {
                break;
            }
            let home = slot_tag(slot) as usize & mask;
            // The slot may move back to the hole unless its probe starts
            // after the hole (cyclically).
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = 0;
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
            if let Some((at, place)) = self.find(hash, |record| record.expires_at == expiry) {
                self.remove(at, place);
            }
        }
        if self.live == 0 {
            // Every slot is empty again. The memory is kept, as a table
            // with one key a day would otherwise allocate it again each time.
            self.records.clear();
            self.vacant.clear();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The records remembered, in the order made.
    fn iter(&self) -> impl Iterator<Item = &KeyRecord> + Clone {
        self.records.iter().filter(|record| !record.is_vacant())
    }

    /// Puts back a key that a store kept elsewhere (a database table), so
    /// that the next operation sees it.
    pub fn restore(&mut self, stored: StoredKey) {
        let StoredKey { key, fingerprint, expires_at, answer } = stored;
        let hash = self.hashed(&key).hash;
        let record = self.new_record(&key, hash, fingerprint, expires_at, &answer);
        self.insert(record);
    }

    /// Takes every key out, for a store that keeps them elsewhere.
    pub fn drain(&mut self) -> Vec<StoredKey> {
        let drained = self.iter().map(|record| self.stored_key(record)).collect();
        *self = KeyTable { hasher: self.hasher.clone(), ..KeyTable::default() };
        drained
    }

    fn stored_key(&self, record: &KeyRecord) -> StoredKey {
        StoredKey {
            key: IdempotencyKey::new(self.key_text(record)).expect("a key this table kept"),
            fingerprint: record.fingerprint(),
            expires_at: record.expires_at,
            answer: self.answer_of(record).into(),
        }
    }
}

/// Two tables are equal when they remember the same keys with the same
/// answers: their hashes, seeded per table, and the order of their queues
/// (which may still name replaced records) do not count.
impl PartialEq for KeyTable {
    fn eq(&self, other: &KeyTable) -> bool {
        self.live == other.live
            && self.iter().all(|record| {
                let text = self.key_of(record);
                let hash = other.hasher.hash_one(text);
                other.find(hash, |theirs| other.key_of(theirs) == text).is_some_and(|(_, place)| {
                    let theirs = &other.records[place];
                    (theirs.fingerprint, theirs.expires_at, other.answer_of(theirs))
                        == (record.fingerprint, record.expires_at, self.answer_of(record))
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
#[derive(Serialize)]
#[serde(rename = "KeyRecord")]
struct EncodedRecord<Answer> {
    fingerprint: u128,
    expires_at: Timestamp,
    answer: Answer,
}

/// A record as read: the answer borrowed from the bytes read when the
/// reader allows it (a snapshot in memory), so that loading a key copies
/// its answer once, into the record, rather than twice.
#[derive(Deserialize)]
#[serde(rename = "KeyRecord")]
struct DecodedRecord<'a> {
    fingerprint: u128,
    expires_at: Timestamp,
    #[serde(borrow)]
    answer: std::borrow::Cow<'a, [u8]>,
}

/// An answer's bytes, encoded as one piece. Postcard writes a byte slice
/// as its length and its bytes either way, but one byte at a time through
/// `serialize_seq`: most of the time a snapshot took.
struct AnswerBytes<'a>(&'a [u8]);

impl Serialize for AnswerBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

struct EncodedRecords<'t>(&'t KeyTable);

impl Serialize for EncodedRecords<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let table = self.0;
        let mut map = serializer.serialize_map(Some(table.live))?;
        for record in table.iter() {
            let encoded = EncodedRecord {
                fingerprint: record.fingerprint(),
                expires_at: record.expires_at,
                answer: AnswerBytes(table.answer_of(record)),
            };
            map.serialize_entry(table.key_text(record), &encoded)?;
        }
        map.end()
    }
}

impl Serialize for KeyTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut table = serializer.serialize_struct("KeyTable", 2)?;
        table.serialize_field("records", &EncodedRecords(self))?;
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
                // A length read from the bytes is not trusted beyond the bound.
                table.reserve(map.size_hint().unwrap_or(0).min(IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX));
                while let Some((key, record)) = map.next_entry::<IdempotencyKey, DecodedRecord<'de>>()? {
                    let hash = table.hashed(&key).hash;
                    let record = table.new_record(&key, hash, record.fingerprint, record.expires_at, &record.answer);
                    table.expiries.push_back((record.expires_at, hash));
                    if table.find(hash, |old| table.key_of(old) == key.as_str().as_bytes()).is_some() {
                        return Err(serde::de::Error::custom(format!("the idempotency key {key} is remembered twice")));
                    }
                    table.add(record);
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
    fn a_full_table_has_room_only_for_what_has_expired() {
        let mut table = KeyTable::default();
        for number in 0..IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX as u64 {
            let expires_at = if number == 0 { at(100) } else { at(200) };
            remember(&mut table, &number.to_string(), 0, expires_at, 0);
        }
        assert!(!table.has_room(at(99)), "full, nothing expired yet");
        assert!(table.has_room(at(100)), "one key has expired, though not yet forgotten");
        remember(&mut table, "one-more", 0, at(300), 0);
        assert!(!table.has_room(at(100)), "full again");
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
        let records = table.iter().map(|record| {
            let encoded = EncodedRecord {
                fingerprint: record.fingerprint(),
                expires_at: record.expires_at,
                answer: Box::<[u8]>::from(table.answer_of(record)),
            };
            (key(table.key_text(record)), encoded)
        });
        let older = Older { records: records.collect(), expiries: vec![(at(1), key("key-1"))] };
        let older = postcard::to_allocvec(&older).expect("encodes");
        let bytes: Vec<u8> = (0..=255).cycle().take(300).collect();
        let as_bytes = postcard::to_allocvec(&AnswerBytes(&bytes)).expect("encodes");
        assert_eq!(as_bytes, postcard::to_allocvec(&bytes[..]).expect("encodes"), "answers encode as they always did");

        for bytes in [encoded, older] {
            let mut read: KeyTable = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(read, table);
            assert!(read.expiries.iter().is_sorted_by_key(|(expiry, _)| *expiry));
            assert_eq!(look(&read, "key-7", 9, at(0)), Some(Some(answer(7))));
            read.forget_expired(at(1_000));
            assert_eq!(read.len(), 1, "only the key used again is left");
        }
    }

    /// Random records, lookups and expiries against a plain map, long
    /// enough that the index grows, wraps around its end, and moves slots
    /// back after removals many times.
    #[test]
    fn the_index_agrees_with_a_map_through_random_records_and_expiries() {
        let mut state = 0x5eed_u64;
        let mut next = move |bound: u64| {
            // SplitMix64.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % bound
        };
        let mut table = KeyTable::default();
        let mut model: std::collections::HashMap<String, (u128, u64, u64)> = std::collections::HashMap::new();
        let mut now = 0;
        let mut most_older_chunks = 0;
        for step in 0..20_000u64 {
            let text = format!("key-{}", next(600));
            let alive = model.get(&text).filter(|(_, expires_at, _)| *expires_at > now).copied();
            match alive {
                Some((fingerprint, _, number)) => {
                    assert_eq!(look(&table, &text, fingerprint, at(now)), Some(Some(answer(number))));
                    assert_eq!(look(&table, &text, fingerprint + 1, at(now)), None);
                }
                None => {
                    assert_eq!(look(&table, &text, 7, at(now)), Some(None), "{text} at step {step}");
                    let expires_at = now + 1 + next(60);
                    remember(&mut table, &text, u128::from(step), at(expires_at), step);
                    model.insert(text, (u128::from(step), expires_at, step));
                }
            }
            if next(4) == 0 {
                now += next(3);
                table.forget_expired(at(now));
                model.retain(|_, (_, expires_at, _)| *expires_at > now);
                assert_eq!(table.len(), model.len(), "at step {step}");
                let chunks = &table.bytes;
                let records_per_chunk = table.iter().fold(vec![0; chunks.older.len() + 1], |mut counts, record| {
                    counts[(record.bytes.chunk - chunks.first) as usize] += 1;
                    counts
                });
                let live = chunks.older.iter().chain([&chunks.filling]).map(|chunk| chunk.live);
                assert!(live.eq(records_per_chunk), "at step {step}");
                assert!(chunks.older.front().is_none_or(|first| first.live > 0), "at step {step}");
                most_older_chunks = most_older_chunks.max(chunks.older.len());
            }
        }
        assert!(most_older_chunks >= 2, "the records spanned several chunks");
        now += 100;
        table.forget_expired(at(now));
        assert_eq!(table.len(), 0);
        assert!(table.records.is_empty() && table.slots.iter().all(|slot| *slot == 0));
        let chunks = &table.bytes;
        assert!(
            chunks.older.is_empty() && chunks.filling.bytes.is_empty(),
            "one chunk is kept, empty, for the next keys"
        );
        assert!(chunks.filling.bytes.capacity() > 0);
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
