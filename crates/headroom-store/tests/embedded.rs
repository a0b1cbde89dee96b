//! The embedded store on a real data directory: recovery, torn tails,
//! corruption, snapshots, group commit under concurrency.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use headroom_core::*;
use headroom_store::*;

/// A fresh directory under the system's temporary directory, removed when
/// the test ends (also when it fails).
struct TemporaryDirectory(PathBuf);

impl Drop for TemporaryDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TemporaryDirectory {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn temporary_directory(name: &str) -> TemporaryDirectory {
    let directory = std::env::temp_dir().join(format!("headroom-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    TemporaryDirectory(directory)
}

fn clock() -> Arc<FakeClock> {
    Arc::new(FakeClock::new(Timestamp::from_millis(1_795_392_000_000)))
}

fn open(directory: &Path, clock: Arc<FakeClock>) -> Result<EmbeddedStore, StoreError> {
    let mut config = StoreConfig::new(directory);
    config.snapshot_every_commands = 1_000_000;
    EmbeddedStore::open(config, Arc::new(Catalog::demo()), clock)
}

fn setup(store: &EmbeddedStore) {
    let account = AccountId::new("acme").unwrap();
    store
        .execute(Command::OpenAccount { account: account.clone(), plan: PlanId::new("plus").unwrap(), overdraft: None })
        .unwrap();
    store
        .execute(Command::PutSubject { subject: SubjectId::new("ada").unwrap(), account: account.clone(), plan: None })
        .unwrap();
    store
        .execute(Command::AddGrant {
            account,
            request: GrantRequest {
                grant: GrantId::new("bought").unwrap(),
                kind: GrantKind::Purchase,
                credits: Credits::from_micros(50_000_000),
                priority: 0,
                expires_at: None,
                idempotency_key: IdempotencyKey::new("grant-1").unwrap(),
            },
        })
        .unwrap();
}

fn decide(store: &EmbeddedStore, key: &str) -> Outcome<Decision> {
    let request = DecisionRequest {
        subject: SubjectId::new("ada").unwrap(),
        feature: FeatureId::new("codex.local_task").unwrap(),
        quantity: 7,
        attributes: Attributes::default(),
        idempotency_key: Some(IdempotencyKey::new(key).unwrap()),
        preview: false,
    };
    match store.execute(Command::Decide(request)).unwrap() {
        Response::Decision(outcome) => outcome,
        other => panic!("unexpected {other:?}"),
    }
}

/// 8 threads making 100 decisions each at once (keys `t<thread>-<index>`): their answers.
fn decide_from_8_threads(store: &Arc<EmbeddedStore>) -> Vec<Arc<Decision>> {
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..100).map(|index| decide(&store, &format!("t{thread}-{index}")).result).collect::<Vec<_>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect()
}

/// The state once settlement has caught up, so that it is stable.
fn state(store: &EmbeddedStore) -> Vec<AccountState> {
    let lag = store.wait_settled(std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(lag.unsettled_updates, 0, "settlement did not catch up: {lag:?}");
    store.query(|engine| engine.accounts().cloned().collect()).unwrap()
}

/// A data directory with the account set up and `decisions` decisions made
/// (keys `k0`, `k1`…), settled and closed, with the state it was left in.
fn closed_directory(name: &str, decisions: usize) -> (TemporaryDirectory, Arc<FakeClock>, Vec<AccountState>) {
    let directory = temporary_directory(name);
    let clock = clock();
    let store = open(&directory, clock.clone()).unwrap();
    setup(&store);
    for index in 0..decisions {
        decide(&store, &format!("k{index}"));
    }
    let before = state(&store);
    store.close();
    (directory, clock, before)
}

/// Writes `bytes` after the last frame of the newest log segment, over the
/// zeros written ahead, as a crash mid-write would.
fn append_to_log(directory: &Path, bytes: &[u8]) {
    let path = segment(directory);
    let end = frames_end(&path);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, bytes, end).unwrap();
}

/// Asserts that the frames of a segment end at `end`, with nothing but
/// zeros (written ahead by the writer) after them.
fn assert_only_zeros_after(path: &Path, end: u64, what: &str) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(frames_end(path), end, "{what}");
    assert!(bytes[end as usize..].iter().all(|byte| *byte == 0), "{what}");
}

/// Where the frames of a segment end.
fn frames_end(path: &Path) -> u64 {
    log::read_segment(path, true).unwrap().valid_length
}

fn segment(directory: &Path) -> PathBuf {
    log::list_segments(directory).unwrap().last().unwrap().1.clone()
}

#[test]
fn a_reopened_store_has_exactly_the_acknowledged_state() {
    let directory = temporary_directory("reopen");
    let clock = clock();
    let store = open(&directory, clock.clone()).unwrap();
    setup(&store);
    let decisions: Vec<_> = (0..50).map(|index| decide(&store, &format!("k{index}")).result).collect();
    let before = state(&store);
    store.close();

    let store = open(&directory, clock).unwrap();
    assert_eq!(state(&store), before);
    for (index, original) in decisions.iter().enumerate() {
        let replay = decide(&store, &format!("k{index}"));
        assert!(replay.replayed);
        assert_eq!(&replay.result, original);
    }
    store.query(|engine| engine.check_invariants()).unwrap().unwrap();
}

#[test]
fn a_torn_tail_is_dropped_and_the_log_continues() {
    let (directory, clock, before) = closed_directory("torn", 1);

    // A crash in the middle of writing a frame: a header that promises more
    // bytes than arrived.
    let path = segment(&directory);
    let intact = frames_end(&path);
    append_to_log(&directory, &[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]);

    let store = open(&directory, clock.clone()).unwrap();
    assert_eq!(state(&store), before);
    assert_only_zeros_after(&path, intact, "the torn tail is cut off");
    decide(&store, "after");
    store.close();
    let store = open(&directory, clock).unwrap();
    assert!(decide(&store, "after").replayed);
}

#[test]
fn a_last_frame_with_a_bad_checksum_is_a_torn_tail() {
    let (directory, clock, before) = closed_directory("torn-checksum", 1);
    // A frame that was being written when the power went: complete in
    // length, wrong in content. It was never acknowledged.
    let path = segment(&directory);
    let frames = log::read_segment(&path, true).unwrap().frames;
    let (batch, commands) = frames.last().unwrap().clone();
    let mut torn = Vec::new();
    log::encode_frame(&mut torn, batch + 1, &commands);
    let last = torn.len() - 1;
    torn[last] ^= 0xFF;
    append_to_log(&directory, &torn);
    let store = open(&directory, clock).unwrap();
    assert_eq!(state(&store), before, "the damaged last frame was never acknowledged");
}

#[test]
fn corruption_before_the_tail_stops_start_up_with_file_and_offset() {
    let directory = temporary_directory("corrupt");
    let clock = clock();
    let store = open(&directory, clock.clone()).unwrap();
    setup(&store);
    decide(&store, "one");
    decide(&store, "two");
    store.close();
    let path = segment(&directory);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x01; // inside the first frame's payload
    std::fs::write(&path, &bytes).unwrap();
    match open(&directory, clock) {
        Err(StoreError::Corrupt { file, offset, reason }) => {
            assert_eq!(file, path);
            assert_eq!(offset, 0);
            assert_eq!(reason, "checksum mismatch");
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt log opened"),
    }
}

#[test]
fn snapshots_bound_the_log_and_recover_the_same_state() {
    let directory = temporary_directory("snapshot");
    let clock = clock();
    let mut config = StoreConfig::new(directory.to_path_buf());
    config.snapshot_every_commands = 10;
    config.group_commit = false;
    let store = EmbeddedStore::open(config.clone(), Arc::new(Catalog::demo()), clock.clone()).unwrap();
    setup(&store);
    for index in 0..45 {
        decide(&store, &format!("k{index}"));
    }
    let before = state(&store);
    store.close();
    assert!(!snapshot::list_snapshots(&directory).unwrap().is_empty());
    let store = EmbeddedStore::open(config.clone(), Arc::new(Catalog::demo()), clock.clone()).unwrap();
    assert_eq!(state(&store), before);
    assert!(decide(&store, "k44").replayed);
    store.close();

    // A snapshot under a name that is not its batch's would skip the
    // wrong part of the log: start-up stops and names it.
    let (batch, newest) = snapshot::list_snapshots(&directory).unwrap().pop().unwrap();
    let misnamed = directory.join(format!("snapshot-{:020}.bin", batch + 1));
    std::fs::rename(&newest, &misnamed).unwrap();
    match EmbeddedStore::open(config, Arc::new(Catalog::demo()), clock) {
        Err(StoreError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, misnamed);
            assert!(reason.contains("its name says"), "{reason}");
        }
        other => panic!("a misnamed snapshot opened: {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_snapshot_a_crash_cut_short_is_removed_at_open() {
    let directory = temporary_directory("unfinished-snapshot");
    let clock = clock();
    let store = open(&directory, clock.clone()).unwrap();
    setup(&store);
    decide(&store, "before");
    let before = state(&store);
    store.close();
    // What a snapshot's child leaves when it dies with its parent.
    let unfinished = directory.join(format!("snapshot-{:020}.tmp", 2));
    std::fs::write(&unfinished, b"HEADROOM and then nothing").unwrap();
    let store = open(&directory, clock).unwrap();
    assert!(!unfinished.exists(), "the unfinished snapshot is still there");
    assert!(snapshot::list_snapshots(&directory).unwrap().is_empty());
    assert_eq!(state(&store), before);
    assert!(decide(&store, "before").replayed);
}

#[test]
fn concurrent_callers_share_syncs_and_every_answer_is_durable() {
    let directory = temporary_directory("concurrent");
    let clock = clock();
    let store = Arc::new(open(&directory, clock.clone()).unwrap());
    setup(&store);
    let answers = decide_from_8_threads(&store);
    let before = state(&store);
    store.close();
    let frames: usize = log::read_segment(&segment(&directory), true).unwrap().frames.len();
    assert!(frames < 803, "800 decisions and 3 setup commands took {frames} frames: no group commit");

    let store = open(&directory, clock).unwrap();
    assert_eq!(state(&store), before);
    let allowed = answers.iter().filter(|decision| decision.allowed).count();
    assert!(allowed > 0);
    store.query(|engine| engine.check_invariants()).unwrap().unwrap();
}

/// A thread's name and niceness from its `/proc/…/stat` line: "pid (name)
/// state ppid …". The name may hold anything, so the fields are counted
/// after its last parenthesis; niceness is the 19th.
fn name_and_niceness(stat: &str) -> Option<(&str, i64)> {
    let (head, fields) = stat.rsplit_once(')')?;
    Some((head.split_once('(')?.1, fields.split_whitespace().nth(16)?.parse().ok()?))
}

#[test]
fn settlement_runs_below_the_threads_that_decide() {
    let directory = temporary_directory("niceness");
    let store = open(&directory, clock()).unwrap();
    let own = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let (_, own) = name_and_niceness(&own).unwrap();
    let settlement_below = || {
        std::fs::read_dir("/proc/self/task").unwrap().any(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
            name_and_niceness(&stat).is_some_and(|(name, niceness)| name == "headroom-settle" && niceness > own)
        })
    };
    // The thread lowers itself as it starts: wait for that, not a fixed time.
    wait_until(settlement_below, || format!("no settlement thread runs below niceness {own}"));
    store.close();
}

#[test]
fn settlement_from_the_log_alone_or_with_groups_dropped_settles_everything_once() {
    // 0: every group is dropped and read back from the log; 2: a group
    // without updates fits, one with some does not, so some groups arrive
    // in memory, with gaps.
    for queued in [0, 2] {
        let directory = temporary_directory(&format!("settlable-{queued}"));
        let mut config = StoreConfig::new(&*directory);
        config.settlable_updates_queued = queued;
        let store = Arc::new(EmbeddedStore::open(config, Arc::new(Catalog::demo()), clock()).unwrap());
        setup(&store);
        let allowed = decide_from_8_threads(&store).iter().filter(|decision| decision.allowed).count();
        let account = &state(&store)[0];
        assert_eq!(account.unsettled(), 0, "queue of {queued}");
        // 7 units a decision; the windows cover 50 units, credits the rest.
        let charged = account.wallet().settled_balance();
        assert!(allowed > 7 && charged < 50_000_000, "queue of {queued}: {allowed} allowed, balance {charged}");
        store.query(|engine| engine.check_invariants()).unwrap().unwrap();
        store.close();
        let report = reconcile::reconcile(&directory).unwrap();
        assert!(report.discrepancies.is_empty(), "queue of {queued}: {:?}", report.discrepancies);
    }
}

/// Polls `done` every millisecond until it holds; panics with `why_not`
/// after 30 seconds.
fn wait_until(done: impl Fn() -> bool, why_not: impl FnOnce() -> String) {
    for _ in 0..30_000 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("{}", why_not());
}

/// Waits until settlement has gone through every durable batch (nothing
/// may be left to settle, and it still reads the frames).
fn settle_the_whole_log(store: &EmbeddedStore) {
    wait_until(
        || store.settlement_batches_behind() == 0,
        || format!("settlement did not reach the end of the log: {:?}", store.settlement_lag()),
    );
}

#[test]
fn settlement_settles_every_update_and_resumes_after_a_restart() {
    let directory = temporary_directory("settlement");
    let clock = clock();
    let store = open(&directory, clock.clone()).unwrap();
    setup(&store);
    // 7 units a decision: the 5-hour window (50) runs out and credits take over.
    for index in 0..30 {
        decide(&store, &format!("k{index}"));
    }
    let settled = state(&store);
    let lag = store.settlement_lag().unwrap();
    assert_eq!(lag.unsettled_updates, 0, "{lag:?}");
    let account = &settled[0];
    assert_eq!(account.unsettled(), 0);
    assert!(account.wallet().settled_balance() < 50_000_000, "credits were spent and settled");
    store.query(|engine| engine.check_invariants()).unwrap().unwrap();
    store.close();

    // Forget the cursor: settlement starts over, and settling again changes nothing.
    std::fs::remove_file(directory.join("settlement.cursor")).unwrap();
    let store = open(&directory, clock).unwrap();
    settle_the_whole_log(&store);
    assert_eq!(state(&store), settled);

    // Again, with new decisions while the old frames are read back: their
    // updates, handed over in memory, wait behind the log's, and nothing is
    // settled twice or left out.
    store.close();
    std::fs::remove_file(directory.join("settlement.cursor")).unwrap();
    let store = open(&directory, self::clock()).unwrap();
    for index in 30..60 {
        decide(&store, &format!("k{index}"));
    }
    let account = &state(&store)[0];
    assert_eq!(account.unsettled(), 0);
    assert!(account.wallet().settled_balance() < settled[0].wallet().settled_balance(), "the new decisions settled");
    store.query(|engine| engine.check_invariants()).unwrap().unwrap();
    store.close();
    let report = reconcile::reconcile(&directory).unwrap();
    assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
}

#[test]
fn the_ledger_reads_in_pages_with_every_link() {
    let (directory, _clock, _) = closed_directory("ledger", 30);

    let account = AccountId::new("acme").unwrap();
    let (mut after, mut entries) = (0, Vec::new());
    loop {
        let page = ledger::read(&directory, &account, after, 4, u64::MAX).unwrap();
        assert!(page.entries.len() <= 4);
        entries.extend(page.entries);
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    let sequences: Vec<u64> = entries.iter().map(|entry| entry.update.sequence).collect();
    assert_eq!(sequences, (1..=entries.len() as u64).collect::<Vec<_>>(), "in order, no gap");
    assert!(entries.len() > 5, "credits were spent");
    assert!(matches!(entries[0].update.cause, BalanceCause::Grant { .. }));
    for entry in &entries[1..] {
        let monetization = entry.monetization.as_ref().expect("a debit links its monetization event");
        let usage = entry.usage.as_ref().expect("and its usage event");
        assert!(matches!(entry.update.cause, BalanceCause::Debit { monetization: id } if id == monetization.id));
        assert_eq!(monetization.usage, usage.id);
        assert!(usage.idempotency_key.as_str().starts_with('k'));
    }
    assert!(entries.iter().all(|entry| entry.settled));
}

#[test]
fn reconciliation_passes_on_sound_data_and_names_a_forged_settlement() {
    let (directory, clock, _) = closed_directory("reconcile", 30);

    let report = reconcile::reconcile(&directory).unwrap();
    assert_eq!(report.discrepancies, Vec::<String>::new(), "{report}");
    assert_eq!(report.usage_events, 30);
    assert_eq!(report.monetization_events, 30);
    assert_eq!(report.unsettled_updates, 0);
    assert!(report.settled_updates > 5);

    // Append a frame that settles a balance update nobody decided.
    let forged = BalanceUpdate {
        id: EventId(42),
        sequence: 999,
        account: AccountId::new("acme").unwrap(),
        source: BalanceSource::Overdraft,
        delta: -1_000_000,
        cause: BalanceCause::Expiry,
        at: clock.now(),
    };
    let path = segment(&directory);
    let frames = log::read_segment(&path, true).unwrap().frames;
    let next_batch = frames.last().unwrap().0 + 1;
    let mut bytes = Vec::new();
    log::encode_frame(
        &mut bytes,
        next_batch,
        &vec![log::Logged { at: clock.now(), command: Command::Settle(forged), events: Vec::new() }],
    );
    append_to_log(&directory, &bytes);

    let report = reconcile::reconcile(&directory).unwrap();
    assert!(
        report.discrepancies.iter().any(|problem| problem.contains("settlement of unknown balance update")),
        "{report}"
    );
}

#[test]
fn zeros_after_the_last_frame_are_a_torn_tail_and_a_second_opener_is_refused() {
    let directory = temporary_directory("zeros");
    let clock = clock();
    let store = open(&directory, clock.clone()).unwrap();
    setup(&store);
    let before = state(&store);
    assert!(
        matches!(open(&directory, clock.clone()), Err(StoreError::Unavailable(message)) if message.contains("in use"))
    );
    store.close();
    // A power cut can leave the file longer than what was written.
    let path = segment(&directory);
    let file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &file, &[0; 4096]).unwrap();
    let store = open(&directory, clock).unwrap();
    assert_eq!(state(&store), before);
}

#[test]
fn the_log_is_zeroed_ahead_of_its_frames_and_reopens_where_they_end() {
    let (directory, clock, before) = closed_directory("zeroed-ahead", 1);
    let path = segment(&directory);
    let end = frames_end(&path);
    let bytes = std::fs::read(&path).unwrap();
    // Frames overwrite blocks the file already has: their syncs commit no
    // new file size.
    assert!(bytes.len() as u64 > end, "the segment was not zeroed ahead");
    assert!(bytes[end as usize..].iter().all(|byte| *byte == 0));

    let store = open(&directory, clock.clone()).unwrap();
    assert_eq!(state(&store), before);
    assert_only_zeros_after(&path, end, "the frames end where they did");
    decide(&store, "two");
    store.close();
    assert!(std::fs::metadata(&path).unwrap().len() > frames_end(&path), "the segment was not zeroed ahead");
    let report = reconcile::reconcile(&directory).unwrap();
    assert!(report.discrepancies.is_empty(), "{report}");
    let store = open(&directory, clock).unwrap();
    assert!(decide(&store, "two").replayed);
}
