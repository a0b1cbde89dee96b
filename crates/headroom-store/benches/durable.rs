//! Durable decisions per second of the embedded store, beside two baselines
//! run in the same command, and the time a restart takes.
//!
//! Goals (from the issue): at least 500,000 durable decisions per second on
//! a 2-core machine with concurrency, at least 20× SQLite with one WAL
//! transaction per decision (`synchronous=FULL`), and a restart after 10
//! million events in under 10 seconds.
//!
//! Every configuration gets a fresh data directory under the system's
//! temporary directory, and every decision a fresh idempotency key: each one
//! is new work, applied, logged and synced before it counts. The store reads
//! the real clock, as a server would, so every key stays remembered for the
//! whole run (retention is 24 hours).
//!
//! - *blocking*: threads that each call `execute` and wait for the answer.
//!   A blocked thread has one command in flight, so a batch holds at most
//!   as many commands as there are threads.
//! - *pipelined*: a few threads that `submit` without waiting, each keeping
//!   up to a window of commands in flight; what a server with many
//!   connections offers the store.
//! - *SQLite*: the same logical work in one transaction per decision: read
//!   the subject's two window counters and the account's balance, update
//!   them, insert a ledger row under a unique idempotency key.
//! - *no group commit*: the same store, one frame and one sync per command.
//!
//! Run with `cargo bench -p headroom-store --bench durable`.
//! `HEADROOM_BENCH_SECONDS` (default 3) sets the length of each run;
//! `HEADROOM_BENCH_RESTART_EVENTS` (default 10,000,000) the decisions logged
//! before the restart is timed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use headroom_core::{
    AccountId, Attributes, Catalog, Clock, Credits, DecisionRequest, FeatureId, GrantId, GrantKind, GrantRequest,
    IdempotencyKey, PlanId, Source, SubjectId,
};
use headroom_store::{Command, EmbeddedStore, Response, Store, StoreConfig, SystemClock, snapshot};
use rusqlite::{Connection, TransactionBehavior, params};

/// The allocator of the `headroom` binary, so that the store is measured as it runs there.
#[global_allocator]
static ALLOCATOR: headroom_alloc::Allocator = headroom_alloc::Allocator;

/// Accounts, each with [`SUBJECTS_PER_ACCOUNT`] subjects on plan `pro`. One
/// account remembers at most 1,000,000 idempotency keys at a time
/// (`IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX`) and every key here stays for the
/// whole run, so the restart's 10 million decisions need more than ten
/// accounts; a hundred keep each below 100,000.
const ACCOUNT_COUNT: usize = 100;

/// 1,000 subjects in all: the same subject rarely appears twice in a batch.
const SUBJECTS_PER_ACCOUNT: usize = 10;

/// Each account's purchased credits: a million credits, 2.5 million
/// decisions' worth at the most one decision costs here (5 tasks at 0.08
/// credits), so every decision past the windows is allowed and charged.
const GRANT_MICROS: u64 = 1_000_000_000_000;

/// The feature every decision asks for: metered by two windows of plan
/// `pro` (`codex-5h`, 300 units; `codex-weekly`, 1,500 units), priced at
/// [`PRICE_MICROS`] beyond them.
const FEATURE: &str = "codex.local_task";

/// Must match the demo catalog's price of [`FEATURE`].
const PRICE_MICROS: i64 = 80_000;

/// Must match the capacities of plan `pro`'s two codex windows.
const WINDOW_CAPACITIES: [i64; 2] = [300, 1_500];

/// Largest quantity of one decision; quantities run from 1 to it.
const QUANTITY_MAX: u64 = 5;

/// Callers of the blocking configurations, and of the SQLite baseline.
const CALLER_COUNTS: [usize; 3] = [1, 8, 64];

/// Threads that submit in the pipelined configurations: fewer than the
/// cores would leave the engine idle while one builds its next command.
const SUBMITTER_COUNT: usize = 2;

/// Commands in flight in the pipelined configurations, over all
/// submitters. The engine takes at most `BATCH_COMMANDS_MAX` (4,096) per
/// batch, and the request queue holds 65,536.
const PIPELINE_WINDOWS: [usize; 2] = [1_024, 16_384];

/// Length of each timed run unless `HEADROOM_BENCH_SECONDS` says otherwise:
/// long enough for hundreds of syncs, short enough that eleven runs and the
/// restart fit in a few minutes.
const RUN_SECONDS_DEFAULT: u64 = 3;

/// Decisions logged before the restart unless
/// `HEADROOM_BENCH_RESTART_EVENTS` says otherwise.
const RESTART_DECISIONS_DEFAULT: u64 = 10_000_000;

/// Commands in flight while the restart's log is written: large batches.
const RESTART_WINDOW: usize = 16_384;

/// SQLite's wait for the write lock before it gives up on a transaction;
/// 64 connections queue for one lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    // As the `headroom` binary runs the store.
    headroom_store::disable_transparent_huge_pages();
    let run = Duration::from_secs(environment_number("HEADROOM_BENCH_SECONDS", RUN_SECONDS_DEFAULT));
    let restart_decisions = environment_number("HEADROOM_BENCH_RESTART_EVENTS", RESTART_DECISIONS_DEFAULT);
    println!(
        "durable decisions: {ACCOUNT_COUNT} accounts × {SUBJECTS_PER_ACCOUNT} subjects on plan pro, \
         fresh key per decision, {} s per run, {} cores",
        run.as_secs(),
        std::thread::available_parallelism().map_or(0, |cores| cores.get())
    );
    println!(
        "{:<24} {:>17} {:>9} {:>7} {:>11} {:>8} {:>10} {:>9} {:>9} {:>9}",
        "configuration",
        "callers",
        "decisions",
        "seconds",
        "decisions/s",
        "× SQLite",
        "× no group",
        "per sync",
        "unsettled",
        "engine µs"
    );

    let mut sqlite = Vec::new();
    for callers in CALLER_COUNTS {
        let measured = measure_sqlite(callers, run);
        print_row("SQLite WAL, FULL", &callers.to_string(), &measured, None, None);
        sqlite.push(measured.rate());
    }
    let sqlite_best = sqlite.iter().copied().fold(0.0, f64::max);

    let mut ungrouped = Vec::new();
    for (index, callers) in CALLER_COUNTS.into_iter().enumerate() {
        let measured = measure_blocking(false, callers, run);
        print_row(
            "store, no group commit",
            &callers.to_string(),
            &measured,
            Some(measured.rate() / sqlite[index]),
            None,
        );
        ungrouped.push(measured.rate());
    }
    let ungrouped_best = ungrouped.iter().copied().fold(0.0, f64::max);

    let mut grouped_best: f64 = 0.0;
    for (index, callers) in CALLER_COUNTS.into_iter().enumerate() {
        let measured = measure_blocking(true, callers, run);
        print_row(
            "store, group commit",
            &callers.to_string(),
            &measured,
            Some(measured.rate() / sqlite[index]),
            Some(measured.rate() / ungrouped[index]),
        );
        grouped_best = grouped_best.max(measured.rate());
    }
    for window in PIPELINE_WINDOWS {
        let measured = measure_pipelined(window, run);
        print_row(
            "store, group, pipelined",
            &format!("{SUBMITTER_COUNT} × {} in flight", window / SUBMITTER_COUNT),
            &measured,
            Some(measured.rate() / sqlite_best),
            Some(measured.rate() / ungrouped_best),
        );
        grouped_best = grouped_best.max(measured.rate());
    }
    println!(
        "(pipelined rows compare with the best SQLite and the best no-group-commit row; \
         the others with the same callers)"
    );
    println!(
        "best group commit {:.0}/s: goal 500,000/s {}; {:.1}× the best SQLite row, goal 20× {}",
        grouped_best,
        verdict(grouped_best >= 500_000.0),
        grouped_best / sqlite_best,
        verdict(grouped_best / sqlite_best >= 20.0),
    );

    measure_restart(restart_decisions);
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn environment_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={text} is not a whole number")),
        Err(_) => default,
    }
}

/// Benchmarks measure wall time on purpose: the workspace reads time only
/// through the injected `Clock`, which is what the store under test uses.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Instant {
    Instant::now()
}

/// What one run did.
#[derive(Debug, Default)]
struct Measured {
    decisions: u64,
    /// Usage, monetization and balance-update events the allowed decisions recorded.
    events: u64,
    seconds: f64,
    /// Commands logged per frame (one frame, one sync), over the whole
    /// run: decisions, setup and the settlement processor's commands.
    commands_per_sync: Option<f64>,
    /// Balance updates decided but not yet settled when the run ended:
    /// settlement follows the log on its own thread, so a backlog is work
    /// the run did not pay for.
    unsettled: Option<u64>,
    /// CPU time of the store's engine thread over the run, per decision.
    engine_per_decision: Option<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.decisions as f64 / self.seconds
    }
}

fn print_row(
    configuration: &str,
    callers: &str,
    measured: &Measured,
    versus_sqlite: Option<f64>,
    versus_ungrouped: Option<f64>,
) {
    let ratio = |value: Option<f64>| value.map_or("—".to_string(), |ratio| format!("{ratio:.1}×"));
    let per_sync = measured.commands_per_sync.map_or("—".to_string(), |commands| format!("{commands:.1}"));
    let unsettled = measured.unsettled.map_or("—".to_string(), |updates| updates.to_string());
    let engine = measured
        .engine_per_decision
        .map_or("—".to_string(), |engine| format!("{:.2}", engine.as_nanos() as f64 / 1_000.0));
    println!(
        "{:<24} {:>17} {:>9} {:>7.2} {:>11.0} {:>8} {:>10} {:>9} {:>9} {:>9}",
        configuration,
        callers,
        measured.decisions,
        measured.seconds,
        measured.rate(),
        ratio(versus_sqlite),
        ratio(versus_ungrouped),
        per_sync,
        unsettled,
        engine,
    );
}

// ----- The workload -----

/// SplitMix64: spreads a caller and a sequence number over subjects and
/// quantities, the same way in every configuration.
fn spread(caller: u64, index: u64) -> u64 {
    let mut value = (caller << 40 ^ index).wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

fn account_name(account: usize) -> String {
    format!("bench-{account}")
}

fn subject_name(subject: usize) -> String {
    format!("bench-{}-{}", subject / SUBJECTS_PER_ACCOUNT, subject % SUBJECTS_PER_ACCOUNT)
}

/// The `caller`'s `index`-th decision: its subject (by number), quantity and key.
fn decision_of(caller: u64, index: u64) -> (usize, u64, String) {
    let spread = spread(caller, index);
    let subject = (spread % (ACCOUNT_COUNT * SUBJECTS_PER_ACCOUNT) as u64) as usize;
    let quantity = 1 + (spread >> 32) % QUANTITY_MAX;
    (subject, quantity, format!("{caller}-{index}"))
}

/// Ids parsed once; a decision clones `Arc`s.
struct Workload {
    subjects: Vec<SubjectId>,
    feature: FeatureId,
}

impl Workload {
    fn new() -> Workload {
        Workload {
            subjects: (0..ACCOUNT_COUNT * SUBJECTS_PER_ACCOUNT)
                .map(|subject| SubjectId::new(&subject_name(subject)).expect("valid id"))
                .collect(),
            feature: FeatureId::new(FEATURE).expect("valid id"),
        }
    }

    /// The accounts, their subjects and their credits.
    fn setup(&self) -> Vec<Command> {
        let mut commands = Vec::new();
        for account in 0..ACCOUNT_COUNT {
            let id = AccountId::new(&account_name(account)).expect("valid id");
            commands.push(Command::OpenAccount {
                account: id.clone(),
                plan: PlanId::new("pro").expect("valid id"),
                overdraft: None,
            });
            for subject in 0..SUBJECTS_PER_ACCOUNT {
                commands.push(Command::PutSubject {
                    subject: self.subjects[account * SUBJECTS_PER_ACCOUNT + subject].clone(),
                    account: id.clone(),
                    plan: None,
                });
            }
            commands.push(Command::AddGrant {
                account: id,
                request: GrantRequest {
                    grant: GrantId::new("bench-credits").expect("valid id"),
                    kind: GrantKind::Purchase,
                    credits: Credits::from_micros(GRANT_MICROS),
                    priority: 0,
                    expires_at: None,
                    idempotency_key: IdempotencyKey::new(&format!("grant-{account}")).expect("valid key"),
                },
            });
        }
        commands
    }

    fn decide(&self, caller: u64, index: u64) -> Command {
        let (subject, quantity, key) = decision_of(caller, index);
        Command::Decide(DecisionRequest {
            subject: self.subjects[subject].clone(),
            feature: self.feature.clone(),
            quantity,
            attributes: Attributes::default(),
            idempotency_key: Some(IdempotencyKey::new(&key).expect("valid key")),
            preview: false,
        })
    }
}

/// Counts answers from whichever thread delivers them, from the start of a run.
struct Tally {
    decisions: AtomicU64,
    allowed: AtomicU64,
    events: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
    /// The engine thread's CPU time when the run started (none for SQLite).
    engine_at_start: Option<Duration>,
}

impl Tally {
    fn start() -> Tally {
        Tally {
            decisions: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
            events: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            engine_at_start: engine_cpu(),
        }
    }

    fn count(&self, result: Result<Response, headroom_store::StoreError>) {
        match result {
            Ok(Response::Decision(outcome)) if !outcome.replayed => {
                self.decisions.fetch_add(1, Ordering::Relaxed);
                if outcome.result.allowed {
                    self.allowed.fetch_add(1, Ordering::Relaxed);
                    // A usage and a monetization event, and a balance update per grant charged.
                    let charged = outcome
                        .result
                        .sources
                        .iter()
                        .filter(|used| matches!(used.source, Source::Grant { .. } | Source::Overdraft))
                        .count();
                    self.events.fetch_add(2 + charged as u64, Ordering::Relaxed);
                }
            }
            other => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_failure.lock().expect("not poisoned").get_or_insert_with(|| format!("{other:?}"));
            }
        }
    }

    /// The run's numbers. A failed or replayed decision is a bug in the
    /// bench or the store; a denied one would mean the configurations did
    /// different work (the grant is sized so that none is).
    fn measured(&self, seconds: f64) -> Measured {
        let failed = self.failed.load(Ordering::SeqCst);
        assert_eq!(
            failed,
            0,
            "{failed} commands failed, the first with {:?}",
            self.first_failure.lock().expect("not poisoned")
        );
        let decisions = self.decisions.load(Ordering::SeqCst);
        let allowed = self.allowed.load(Ordering::SeqCst);
        assert_eq!(allowed, decisions, "some decisions were denied");
        Measured {
            decisions,
            events: self.events.load(Ordering::SeqCst),
            seconds,
            commands_per_sync: None,
            unsettled: None,
            engine_per_decision: self.engine_at_start.zip(engine_cpu()).and_then(|(start, end)| {
                let per_decision = end.saturating_sub(start).checked_div(u32::try_from(decisions).ok()?)?;
                Some(per_decision)
            }),
        }
    }
}

/// CPU time the running store's engine thread has used, from the kernel's
/// scheduler statistics (nanoseconds on a CPU, first in `schedstat`). The
/// engine applies every command in order, so its time per decision is what
/// bounds the pipelined rows, and it varies less from run to run on a shared
/// machine than their throughput does. `None` when no store runs.
fn engine_cpu() -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let engine = tasks.flatten().map(|task| task.path()).find(|task| {
        std::fs::read_to_string(task.join("comm")).is_ok_and(|name| name.trim_end() == "headroom-engine")
    })?;
    let schedstat = std::fs::read_to_string(engine.join("schedstat")).ok()?;
    let nanos = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

// ----- The embedded store -----

/// A data directory that is removed when dropped.
struct TemporaryDirectory(PathBuf);

impl TemporaryDirectory {
    fn new(name: &str) -> TemporaryDirectory {
        let path = std::env::temp_dir().join(format!("headroom-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temporary directory is writable");
        TemporaryDirectory(path)
    }
}

impl Drop for TemporaryDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_store(directory: &Path, group_commit: bool) -> Arc<EmbeddedStore> {
    let mut config = StoreConfig::new(directory);
    config.group_commit = group_commit;
    let store = EmbeddedStore::open(config, Arc::new(Catalog::demo()), Arc::new(SystemClock)).expect("the store opens");
    Arc::new(store)
}

/// Runs the setup commands in order (one submitter keeps them in order)
/// without a sync for each, and checks that every one succeeded.
fn set_up(store: &EmbeddedStore, workload: &Workload) {
    let commands = workload.setup();
    let window = Arc::new(Window::default());
    let failures = Arc::new(Mutex::new(Vec::new()));
    for command in commands {
        window.acquire(usize::MAX);
        let (window, failures) = (window.clone(), failures.clone());
        store.submit(
            command,
            Box::new(move |result| {
                if let Err(error) = result {
                    failures.lock().expect("not poisoned").push(error.to_string());
                }
                window.release();
            }),
        );
    }
    window.drain();
    let failures = failures.lock().expect("not poisoned");
    assert!(failures.is_empty(), "setup failed: {failures:?}");
}

/// Callers that each `execute` one decision at a time, for `run`.
fn measure_blocking(group_commit: bool, callers: usize, run: Duration) -> Measured {
    let directory = TemporaryDirectory::new(&format!("blocking-{group_commit}-{callers}"));
    let store = open_store(&directory.0, group_commit);
    let workload = Arc::new(Workload::new());
    set_up(&store, &workload);
    let tally = Arc::new(Tally::start());
    let stop = Arc::new(AtomicBool::new(false));
    let start = wall_clock();
    let threads: Vec<_> = (0..callers as u64)
        .map(|caller| {
            let (store, workload, tally, stop) = (store.clone(), workload.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut index = 0;
                while !stop.load(Ordering::Relaxed) {
                    tally.count(store.execute(workload.decide(caller, index)));
                    index += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a caller panicked");
    }
    let measured = tally.measured(start.elapsed().as_secs_f64());
    close_and_count(&store, measured)
}

/// Commands one submitter has in flight, with a wake-up for when there is
/// room again. Replies arrive in batches, so a full submitter sleeps until
/// half its window has been answered rather than waking for every reply.
#[derive(Default)]
struct Window {
    state: Mutex<WindowState>,
    changed: Condvar,
}

#[derive(Default)]
struct WindowState {
    in_flight: usize,
    /// Set while the submitter sleeps: wake it at or below this many.
    wake_at: Option<usize>,
}

impl Window {
    /// Waits for room below `limit`, then counts one more command in flight.
    fn acquire(&self, limit: usize) {
        let mut state = self.state.lock().expect("not poisoned");
        if state.in_flight >= limit {
            state = self.wait_for(state, limit / 2);
        }
        state.in_flight += 1;
    }

    /// Called from the store's reply: one command answered.
    fn release(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        state.in_flight -= 1;
        if state.wake_at.is_some_and(|wake_at| state.in_flight <= wake_at) {
            state.wake_at = None;
            self.changed.notify_one();
        }
    }

    /// Waits until every command in flight has been answered.
    fn drain(&self) {
        let state = self.state.lock().expect("not poisoned");
        drop(self.wait_for(state, 0));
    }

    fn wait_for<'a>(&self, mut state: MutexGuard<'a, WindowState>, wake_at: usize) -> MutexGuard<'a, WindowState> {
        while state.in_flight > wake_at {
            state.wake_at = Some(wake_at);
            state = self.changed.wait(state).expect("not poisoned");
        }
        state
    }
}

/// Submitters that each keep up to `window / SUBMITTER_COUNT` commands in
/// flight, for `run`.
fn measure_pipelined(window: usize, run: Duration) -> Measured {
    let directory = TemporaryDirectory::new(&format!("pipelined-{window}"));
    let store = open_store(&directory.0, true);
    let workload = Arc::new(Workload::new());
    set_up(&store, &workload);
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(run);
            stop.store(true, Ordering::Relaxed);
        })
    };
    let measured = drive_pipelined(&store, &workload, window, &stop, u64::MAX);
    stopper.join().expect("the stopper does not panic");
    close_and_count(&store, measured)
}

/// Adds what the run left unsettled and how its log was batched, after the timing.
fn close_and_count(store: &EmbeddedStore, mut measured: Measured) -> Measured {
    measured.unsettled = Some(store.settlement_lag().expect("the store answers").unsettled_updates);
    store.close();
    // Counted by the writer: one sync may carry several frames.
    let sizes = store.commit_sizes();
    measured.commands_per_sync = Some(sizes.commands as f64 / sizes.commits.max(1) as f64);
    measured
}

/// Submits decisions from [`SUBMITTER_COUNT`] threads until `stop` is set
/// or each has submitted `decisions_each`, then waits for every answer.
fn drive_pipelined(
    store: &Arc<EmbeddedStore>,
    workload: &Arc<Workload>,
    window: usize,
    stop: &Arc<AtomicBool>,
    decisions_each: u64,
) -> Measured {
    let limit = window / SUBMITTER_COUNT;
    let tally = Arc::new(Tally::start());
    let start = wall_clock();
    let threads: Vec<_> = (0..SUBMITTER_COUNT as u64)
        .map(|caller| {
            let (store, workload, tally, stop) = (store.clone(), workload.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let window = Arc::new(Window::default());
                let mut index = 0;
                while index < decisions_each && !stop.load(Ordering::Relaxed) {
                    let command = workload.decide(caller, index);
                    window.acquire(limit);
                    let (window, tally) = (window.clone(), tally.clone());
                    store.submit(
                        command,
                        Box::new(move |result| {
                            tally.count(result);
                            window.release();
                        }),
                    );
                    index += 1;
                }
                window.drain();
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a submitter panicked");
    }
    tally.measured(start.elapsed().as_secs_f64())
}

// ----- Restart -----

/// Logs `decisions` decisions as fast as the store takes them, closes the
/// store, and times `EmbeddedStore::open`: the newest snapshot loaded and
/// the log after it replayed.
fn measure_restart(decisions: u64) {
    let directory = TemporaryDirectory::new("restart");
    let workload = Arc::new(Workload::new());
    let generated = {
        let store = open_store(&directory.0, true);
        set_up(&store, &workload);
        let never = Arc::new(AtomicBool::new(false));
        let decisions_each = decisions.div_ceil(SUBMITTER_COUNT as u64);
        let generated = drive_pipelined(&store, &workload, RESTART_WINDOW, &never, decisions_each);
        store.close();
        generated
    };
    let (bytes, files) = directory_size(&directory.0);
    let start = wall_clock();
    let store = open_store(&directory.0, true);
    let recovery = start.elapsed().as_secs_f64();
    let accounts = store.query(|engine| engine.accounts().count()).expect("the reopened store answers");
    assert_eq!(accounts, ACCOUNT_COUNT, "the reopened store lost accounts");
    store.close();
    println!(
        "restart after {} decisions ({} events), logged at {:.0}/s in {:.1} s: data directory {:.2} GB in {files} files",
        generated.decisions,
        generated.events,
        generated.rate(),
        generated.seconds,
        bytes as f64 / 1e9,
    );
    // The part of the restart that loads the snapshot, timed again on its
    // own (the file is in the page cache either way): the rest is the log.
    let (snapshot_seconds, snapshot_bytes) = match snapshot::list_snapshots(&directory.0).expect("listed").last() {
        Some((_, path)) => {
            let start = wall_clock();
            let state = snapshot::read(path).expect("the snapshot reads");
            let seconds = start.elapsed().as_secs_f64();
            drop(state); // Freeing ten million keys takes seconds of its own; recovery keeps them.
            (seconds, std::fs::metadata(path).expect("its size").len())
        }
        None => (0.0, 0),
    };
    println!(
        "open (recovery) took {recovery:.2} s, goal < 10 s {}; reading the newest snapshot ({:.2} GB) alone takes \
         {snapshot_seconds:.2} s; peak resident memory {}",
        verdict(recovery < 10.0),
        snapshot_bytes as f64 / 1e9,
        peak_memory(),
    );
}

/// The process's peak resident memory, as Linux reports it.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("VmHWM:").map(|value| value.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Bytes and files in `directory` (not recursive: the store keeps no subdirectories).
fn directory_size(directory: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(directory).expect("the data directory is readable") {
        let metadata = entry.expect("an entry").metadata().expect("its metadata");
        bytes += metadata.len();
        files += 1;
    }
    (bytes, files)
}

// ----- SQLite -----

/// The same logical work as a decision, in one SQLite transaction per
/// decision: WAL, `synchronous=FULL`, each caller its own connection.
fn measure_sqlite(callers: usize, run: Duration) -> Measured {
    let directory = TemporaryDirectory::new(&format!("sqlite-{callers}"));
    let path = directory.0.join("decisions.db");
    set_up_sqlite(&path);
    let tally = Arc::new(Tally::start());
    let stop = Arc::new(AtomicBool::new(false));
    let start = wall_clock();
    let threads: Vec<_> = (0..callers as u64)
        .map(|caller| {
            let (path, tally, stop) = (path.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut connection = connect_sqlite(&path);
                let mut index = 0;
                while !stop.load(Ordering::Relaxed) {
                    let allowed = decide_sqlite(&mut connection, caller, index);
                    tally.decisions.fetch_add(1, Ordering::Relaxed);
                    if allowed {
                        tally.allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    index += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a SQLite caller panicked");
    }
    tally.measured(start.elapsed().as_secs_f64())
}

fn connect_sqlite(path: &Path) -> Connection {
    let connection = Connection::open(path).expect("SQLite opens");
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).expect("WAL mode");
    assert_eq!(mode, "wal");
    connection.pragma_update(None, "synchronous", "FULL").expect("synchronous=FULL");
    connection.busy_timeout(SQLITE_BUSY_TIMEOUT).expect("busy timeout");
    connection
}

fn set_up_sqlite(path: &Path) {
    let mut connection = connect_sqlite(path);
    connection
        .execute_batch(
            "CREATE TABLE balances (account TEXT PRIMARY KEY, micros INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE windows (subject TEXT NOT NULL, window INTEGER NOT NULL, used INTEGER NOT NULL,
                                   PRIMARY KEY (subject, window)) WITHOUT ROWID;
             CREATE TABLE ledger (idempotency_key TEXT NOT NULL UNIQUE, subject TEXT NOT NULL,
                                  account TEXT NOT NULL, quantity INTEGER NOT NULL,
                                  window_units INTEGER NOT NULL, charged INTEGER NOT NULL,
                                  allowed INTEGER NOT NULL, at INTEGER NOT NULL);",
        )
        .expect("the schema is created");
    let transaction = connection.transaction().expect("a transaction");
    for account in 0..ACCOUNT_COUNT {
        transaction
            .execute("INSERT INTO balances VALUES (?1, ?2)", params![account_name(account), GRANT_MICROS as i64])
            .expect("an account");
        for subject in 0..SUBJECTS_PER_ACCOUNT {
            for window in 0..WINDOW_CAPACITIES.len() {
                transaction
                    .execute(
                        "INSERT INTO windows VALUES (?1, ?2, 0)",
                        params![subject_name(account * SUBJECTS_PER_ACCOUNT + subject), window as i64],
                    )
                    .expect("a window");
            }
        }
    }
    transaction.commit().expect("setup commits");
}

/// One decision as one transaction: the windows cover what they can, the
/// balance pays the rest if it can; the ledger row's key is unique.
fn decide_sqlite(connection: &mut Connection, caller: u64, index: u64) -> bool {
    let (subject, quantity, key) = decision_of(caller, index);
    let subject_name = subject_name(subject);
    let account = account_name(subject / SUBJECTS_PER_ACCOUNT);
    let quantity = quantity as i64;
    let at = SystemClock.now().millis() as i64;
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate).expect("the write lock");
    let mut window_room = i64::MAX;
    let mut used = [0; WINDOW_CAPACITIES.len()];
    for (window, capacity) in WINDOW_CAPACITIES.into_iter().enumerate() {
        used[window] = transaction
            .prepare_cached("SELECT used FROM windows WHERE subject = ?1 AND window = ?2")
            .and_then(|mut statement| {
                statement.query_row(params![subject_name, window as i64], |row| row.get::<_, i64>(0))
            })
            .expect("a window counter");
        window_room = window_room.min(capacity - used[window]);
    }
    let balance: i64 = transaction
        .prepare_cached("SELECT micros FROM balances WHERE account = ?1")
        .and_then(|mut statement| statement.query_row(params![account], |row| row.get(0)))
        .expect("a balance");
    let window_units = quantity.min(window_room.max(0));
    let charged = (quantity - window_units) * PRICE_MICROS;
    let allowed = charged <= balance;
    if allowed {
        for (window, used) in used.into_iter().enumerate() {
            transaction
                .prepare_cached("UPDATE windows SET used = ?3 WHERE subject = ?1 AND window = ?2")
                .and_then(|mut statement| statement.execute(params![subject_name, window as i64, used + window_units]))
                .expect("a window update");
        }
        transaction
            .prepare_cached("UPDATE balances SET micros = ?2 WHERE account = ?1")
            .and_then(|mut statement| statement.execute(params![account, balance - charged]))
            .expect("a balance update");
    }
    transaction
        .prepare_cached("INSERT INTO ledger VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
        .and_then(|mut statement| {
            statement.execute(params![key, subject_name, account, quantity, window_units, charged, allowed, at])
        })
        .expect("a ledger row with a fresh key");
    transaction.commit().expect("the decision commits");
    allowed
}
