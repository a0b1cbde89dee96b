//! What one decision costs among 1,000,000 subjects, beside the `governor`
//! crate's keyed check on the same key sequence.
//!
//! Goals (from the issue): the window-only path within 3× of governor's keyed
//! check; the full waterfall path (windows exhausted, two grants) under 1 µs.
//!
//! Both sides look subjects up by the same key type, [`SubjectId`] (its text
//! inline up to 22 bytes), and follow the same precomputed key sequence;
//! governor's `DashMap` hashes it with SipHash (the standard library's
//! `RandomState`), the engine with foldhash, seeded per process. The work differs by design:
//! governor reads its clock and updates one GCRA cell; a decision also
//! validates the request, remembers its idempotency key with the answer,
//! emits events and reports every window. Each iteration builds a fresh
//! idempotency key, as a server parses one out of every request, and that is
//! measured too; the subject is an id in hand on both sides, cloned rather
//! than parsed. The decision's events and answer are dropped inside the timed
//! loop, as a server drops them once it has replied.
//!
//! Setup (a million accounts with two grants each, their task windows
//! filled, governor's cells created) takes some 15 to 20 seconds on a
//! two-core machine, most of it in `Engine::open_account`: the engine keeps
//! every `AccountState` inline in one hash table, which grows by rehashing.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use headroom_core::*;

/// The allocator of the `headroom` binary, so that a decision is measured as
/// it runs there; governor's side allocates nothing in the timed loop.
#[global_allocator]
static ALLOCATOR: headroom_alloc::Allocator = headroom_alloc::Allocator;

/// Subjects, and accounts: one subject per account. That mirrors governor's
/// one cell per key best, and it is the consumer case, where every decision
/// touches a different wallet and key table. (10,000 accounts of 100 subjects
/// would share wallets and key tables between neighbours, which keeps more of
/// them in cache and measures something kinder.)
const SUBJECT_COUNT: usize = 1_000_000;

/// Overrides [`SUBJECT_COUNT`]: with a few thousand subjects every account
/// stays in the cache, and a run measures the work of a decision without
/// its cache misses (a change to that work shows there first; at a million
/// subjects the misses dominate and the run-to-run spread hides it).
const SUBJECTS_VARIABLE: &str = "HEADROOM_BENCH_SUBJECTS";

fn subject_count() -> usize {
    match std::env::var(SUBJECTS_VARIABLE) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{SUBJECTS_VARIABLE}: {text:?} is not a count of subjects")),
        Err(_) => SUBJECT_COUNT,
    }
}

/// Exponent of the Zipf distribution of keys: the k-th most active subject
/// makes a share proportional to 1/k. At 1.0 over a million keys the hottest
/// subject makes about 7% of the requests, the top 1,000 about half.
const ZIPF_EXPONENT: f64 = 1.0;

/// Length of each precomputed key sequence, replayed in a cycle. Drawing keys
/// in the timed loop would add the sampler's cost (a binary search over an
/// 8 MB table) to both sides; 4 Mi indices cost 16 MB and repeat rarely
/// within one measurement.
const SEQUENCE_LENGTH: usize = 1 << 22;

/// Seed of the key sequences, printed so that a run can be reproduced.
const SEED: u64 = 0x6865_6164_726f_6f6d;

/// 2026-11-23T00:00:00Z, a Monday.
const START: Timestamp = Timestamp::from_millis(1_795_392_000_000);

/// How far the clock moves between two decisions.
const TIME_PER_DECISION: Duration = Duration::from_millis(1);

/// Every decision remembers its idempotency key for the retention (24 h),
/// far longer than a run takes at 1 ms per decision, so left alone the key
/// tables would grow by some 600 bytes per decision (several GB per
/// benchmark) and the hottest Zipf account would reach its bound of
/// 1,000,000 keys. Instead the clock jumps by the retention every this many
/// decisions: every key remembered so far expires, and each account forgets
/// its expired keys on its next decision, inside the timed call. So the
/// cost of forgetting is measured, one key forgotten per key remembered as
/// in a long-running server, and memory stays bounded (about one key per
/// account, plus one interval's worth). The interval is short so that the
/// hottest Zipf account, which forgets some 7% of an interval's keys at
/// once, makes small spikes rather than one sample of tens of milliseconds.
const DECISIONS_BETWEEN_RETENTION_JUMPS: u64 = 100_000;

/// Must match `idempotency_retention` in [`CATALOG`].
const RETENTION: Duration = Duration::from_hours(24);

/// Price of one unit beyond the windows, in micro-credits; must match the
/// prices in [`CATALOG`].
const PRICE_MICROS: u64 = 1_000;

/// Each of the two grants of every account: a million credits, a million
/// decisions' worth at [`PRICE_MICROS`] for even the hottest subject, far
/// more than a run makes.
const GRANT_MICROS: u64 = 1_000_000_000_000;

/// Two features, so that one engine serves both paths: `call` is metered by
/// windows no run can empty (the window-only path), `task` by windows of one
/// unit that are filled during setup and never refill within a century, so
/// that they stay exhausted however far the clock jumps (the waterfall path).
/// Grants never expire: the catalog sets no default expiry.
const CATALOG: &str = r#"
[settings]
idempotency_retention = "24h"

[features.call]
unit = "call"
price = 1_000

[features.task]
unit = "task"
price = 1_000

[plans.bench]

[[plans.bench.windows]]
id = "calls-burst"
meters = "call"
kind = "token_bucket"
capacity = 1_000_000_000_000
refill = 1_000_000_000_000
per = "1s"

[[plans.bench.windows]]
id = "calls-daily"
meters = "call"
kind = "fixed"
capacity = 1_000_000_000_000
period = "1d"

[[plans.bench.windows]]
id = "tasks-burst"
meters = "task"
kind = "token_bucket"
capacity = 1
refill = 1
per = "36500d"

[[plans.bench.windows]]
id = "tasks-lifetime"
meters = "task"
kind = "fixed"
capacity = 1
period = "36500d"
"#;

/// The splitmix64 generator: tiny, fast, and good enough to draw keys.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `0..bound`, by multiplying rather than by a modulo, whose
    /// bias toward small values this avoids.
    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`, from the top 53 bits (an `f64`'s precision).
    fn unit_interval(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples ranks `0..count` with probability proportional to `1 / (rank + 1)^exponent`,
/// by binary search in the precomputed cumulative distribution.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(count: usize, exponent: f64) -> Zipf {
        let mut sum = 0.0;
        let mut cumulative: Vec<f64> = (1..=count)
            .map(|rank| {
                sum += (rank as f64).powf(-exponent);
                sum
            })
            .collect();
        for value in &mut cumulative {
            *value /= sum;
        }
        Zipf { cumulative }
    }

    fn sample(&self, random: &mut SplitMix64) -> usize {
        let target = random.unit_interval();
        // Rounding may leave the last value a hair below 1.0.
        self.cumulative.partition_point(|&value| value <= target).min(self.cumulative.len() - 1)
    }
}

/// The two key sequences, as indices into the subjects.
struct KeySequences {
    uniform: Vec<u32>,
    zipf: Vec<u32>,
}

impl KeySequences {
    fn new(seed: u64, subject_count: usize) -> KeySequences {
        let mut random = SplitMix64::new(seed);
        let uniform = (0..SEQUENCE_LENGTH).map(|_| random.below(subject_count) as u32).collect();
        // Ranks are scattered over the subjects, so that the hottest subjects
        // are not the ones created one after the other, next to each other
        // in memory.
        let mut subject_of_rank: Vec<u32> = (0..subject_count as u32).collect();
        for index in (1..subject_count).rev() {
            subject_of_rank.swap(index, random.below(index + 1));
        }
        let zipf_sampler = Zipf::new(subject_count, ZIPF_EXPONENT);
        let zipf = (0..SEQUENCE_LENGTH).map(|_| subject_of_rank[zipf_sampler.sample(&mut random)]).collect();
        KeySequences { uniform, zipf }
    }
}

/// Walks one key sequence in a cycle.
struct Cursor<'a> {
    sequence: &'a [u32],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn new(sequence: &'a [u32]) -> Cursor<'a> {
        Cursor { sequence, position: 0 }
    }

    fn next_index(&mut self) -> usize {
        let index = self.sequence[self.position] as usize;
        // SEQUENCE_LENGTH is a power of two: the mask wraps around.
        self.position = (self.position + 1) & (SEQUENCE_LENGTH - 1);
        index
    }
}

/// A key never used before: 32 hexadecimal digits, the length of a UUID's,
/// written on the stack so that the one allocation is the key's own, as
/// when a server parses the key out of a request it has already read.
fn fresh_key(counter: u64) -> IdempotencyKey {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'0'; 32];
    for (position, digit) in text.iter_mut().rev().take(16).enumerate() {
        *digit = DIGITS[((counter >> (4 * position)) & 0xf) as usize];
    }
    let text = std::str::from_utf8(&text).expect("hexadecimal digits are ASCII");
    IdempotencyKey::new(text).expect("hexadecimal digits make a valid key")
}

/// Drives the engine as a server would: a fresh key for every decision,
/// time moving on between them.
struct Driver {
    engine: Engine,
    request: DecisionRequest,
    now: Timestamp,
    decisions_made: u64,
}

impl Driver {
    fn decide(&mut self, subject: &SubjectId) -> Arc<Decision> {
        self.decisions_made += 1;
        self.now = self.now.saturating_add(TIME_PER_DECISION);
        if self.decisions_made.is_multiple_of(DECISIONS_BETWEEN_RETENTION_JUMPS) {
            self.now = self.now.saturating_add(RETENTION);
        }
        self.request.subject = subject.clone();
        self.request.idempotency_key = Some(fresh_key(self.decisions_made));
        self.engine.decide(&self.request, self.now).expect("every subject exists and every key is fresh").result
    }

    fn use_feature(&mut self, feature: &str) {
        self.request.feature = FeatureId::new(feature).expect("a valid feature id");
    }

    /// Moves past the retention and sweeps every account, as a store's
    /// sweep would: the three keys each account remembers from the setup
    /// are forgotten now, untimed, rather than in the first benchmark only.
    fn forget_setup(&mut self) {
        self.now = self.now.saturating_add(RETENTION);
        let events = self.engine.advance_all(self.now);
        assert!(events.is_empty(), "nothing expires but keys");
    }
}

struct World {
    subjects: Vec<SubjectId>,
    sequences: KeySequences,
    driver: Driver,
    governor: DefaultKeyedRateLimiter<SubjectId>,
}

impl World {
    fn build() -> World {
        let subject_count = subject_count();
        println!("{subject_count} subjects, key sequences from seed {SEED:#x}");
        let sequences = KeySequences::new(SEED, subject_count);
        let subjects: Vec<SubjectId> =
            (0..subject_count).map(|index| SubjectId::new(&format!("subject-{index}")).expect("a valid id")).collect();
        let catalog = Arc::new(Catalog::from_toml(CATALOG).expect("the catalog is valid"));
        let mut driver = Driver {
            engine: Engine::new(catalog),
            request: DecisionRequest {
                subject: subjects[0].clone(),
                feature: FeatureId::new("task").expect("a valid id"),
                quantity: 1,
                attributes: Attributes::default(),
                idempotency_key: None,
                preview: false,
            },
            now: START,
            decisions_made: 0,
        };
        open_accounts(&mut driver, &subjects);
        fill_task_windows(&mut driver, &subjects);
        driver.forget_setup();
        World { governor: warm_governor(&subjects), subjects, sequences, driver }
    }
}

/// One account per subject, each with a promotion and a purchase: two grants
/// for the waterfall to walk.
fn open_accounts(driver: &mut Driver, subjects: &[SubjectId]) {
    let plan = PlanId::new("bench").expect("a valid id");
    let grants =
        [(GrantKind::Promotion, "promotion"), (GrantKind::Purchase, "purchase")].map(|(kind, name)| GrantRequest {
            grant: GrantId::new(name).expect("a valid id"),
            kind,
            credits: Credits::from_micros(GRANT_MICROS),
            priority: 0,
            expires_at: None,
            idempotency_key: IdempotencyKey::new(name).expect("a valid key"),
        });
    let engine = &mut driver.engine;
    for (index, subject) in subjects.iter().enumerate() {
        let account = AccountId::new(&format!("account-{index}")).expect("a valid id");
        engine.open_account(account.clone(), &plan, None, driver.now).expect("a new account");
        engine.put_subject(subject.clone(), &account, None).expect("a new subject");
        for grant in &grants {
            engine.add_grant(&account, grant, driver.now).expect("a valid grant");
        }
    }
}

/// Uses the one unit of every subject's task windows, so that from now on
/// every task is paid for from credits.
fn fill_task_windows(driver: &mut Driver, subjects: &[SubjectId]) {
    driver.use_feature("task");
    for subject in subjects {
        let decision = driver.decide(subject);
        assert_eq!(decision.reason, Reason::CoveredByWindows);
    }
    let decision = driver.decide(&subjects[0]);
    assert_eq!(decision.reason, Reason::CoveredByCredits, "windows exhausted");
    assert_eq!(decision.credits_charged, Credits::from_micros(PRICE_MICROS));
}

/// A keyed limiter whose quota never runs out, with a cell for every subject
/// already, as the engine has an account for every subject: both sides then
/// measure a lookup, not an insertion.
fn warm_governor(subjects: &[SubjectId]) -> DefaultKeyedRateLimiter<SubjectId> {
    let governor = RateLimiter::keyed(Quota::per_second(NonZeroU32::MAX));
    for subject in subjects {
        assert!(governor.check_key(subject).is_ok());
    }
    governor
}

fn window_only(criterion: &mut Criterion, world: &mut World) {
    let mut group = criterion.benchmark_group("window_only");
    let sequences = [("uniform", &world.sequences.uniform), ("zipf", &world.sequences.zipf)];
    world.driver.use_feature("call");
    for (distribution, sequence) in sequences {
        let mut cursor = Cursor::new(sequence);
        let (subjects, driver) = (&world.subjects, &mut world.driver);
        group.bench_function(BenchmarkId::new("headroom_decide", distribution), |bencher| {
            bencher.iter(|| {
                let decision = driver.decide(&subjects[cursor.next_index()]);
                assert_eq!(decision.reason, Reason::CoveredByWindows);
                decision
            })
        });
        let mut cursor = Cursor::new(sequence);
        let (subjects, governor) = (&world.subjects, &world.governor);
        group.bench_function(BenchmarkId::new("governor_keyed", distribution), |bencher| {
            bencher.iter(|| {
                let allowed = governor.check_key(&subjects[cursor.next_index()]).is_ok();
                assert!(allowed);
                black_box(allowed)
            })
        });
    }
    group.finish();
}

fn waterfall(criterion: &mut Criterion, world: &mut World) {
    let mut group = criterion.benchmark_group("waterfall");
    let sequences = [("uniform", &world.sequences.uniform), ("zipf", &world.sequences.zipf)];
    world.driver.use_feature("task");
    for (distribution, sequence) in sequences {
        let mut cursor = Cursor::new(sequence);
        let (subjects, driver) = (&world.subjects, &mut world.driver);
        group.bench_function(BenchmarkId::new("headroom_decide", distribution), |bencher| {
            bencher.iter(|| {
                let decision = driver.decide(&subjects[cursor.next_index()]);
                assert_eq!(decision.reason, Reason::CoveredByCredits);
                decision
            })
        });
    }
    group.finish();
}

fn decide(criterion: &mut Criterion) {
    let mut world = World::build();
    window_only(criterion, &mut world);
    waterfall(criterion, &mut world);
    // Freeing a million accounts one allocation at a time takes seconds and
    // measures nothing: the process is about to exit, which frees it all at once.
    std::mem::forget(world);
}

/// Instead of timing, makes exactly this many decisions on each path, each
/// path in a function of its own that is never inlined, so that an
/// instruction counter can measure one path without the noise of a shared
/// machine:
///
/// ```text
/// HEADROOM_BENCH_SUBJECTS=2000 HEADROOM_BENCH_COUNT=50000 valgrind --tool=callgrind \
///     --toggle-collect=decide::count_window_only target/release/deps/decide-…
/// ```
///
/// and divide the instructions collected by the count.
const COUNT_VARIABLE: &str = "HEADROOM_BENCH_COUNT";

#[inline(never)]
fn count_window_only(world: &mut World, count: usize) {
    count_decisions(world, "call", Reason::CoveredByWindows, count);
}

#[inline(never)]
fn count_waterfall(world: &mut World, count: usize) {
    count_decisions(world, "task", Reason::CoveredByCredits, count);
}

fn count_decisions(world: &mut World, feature: &str, reason: Reason, count: usize) {
    world.driver.use_feature(feature);
    let mut cursor = Cursor::new(&world.sequences.uniform);
    for _ in 0..count {
        let decision = world.driver.decide(&world.subjects[cursor.next_index()]);
        assert_eq!(decision.reason, reason);
    }
}

criterion_group!(benches, decide);

fn main() {
    match std::env::var(COUNT_VARIABLE) {
        Ok(text) => {
            let count = text.parse().unwrap_or_else(|_| panic!("{COUNT_VARIABLE}: {text:?} is not a count"));
            let mut world = World::build();
            count_window_only(&mut world, count);
            count_waterfall(&mut world, count);
            println!("{count} decisions on each path, uniform keys");
            std::mem::forget(world);
        }
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
