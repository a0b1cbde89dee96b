//! The embedded store: one data directory, a write-ahead log with group
//! commit, and snapshots.
//!
//! Two threads. The *engine thread* owns the engine: it takes a batch of
//! waiting commands, applies each through the core in order, encodes the
//! ones that changed state into one log frame and hands the frame, with the
//! answers, to the *writer thread*, then goes on with the next batch. The
//! writer appends the frame, `fdatasync`s once for the whole batch, and only
//! then sends the answers. A later batch can only be acknowledged after an
//! earlier one (one writer, in order), so an answer never depends on state
//! that could be lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use headroom_core::{BalanceUpdate, Catalog, Clock, Engine, Event, IdempotencyKey, SubjectId};

use crate::command::{Command, Response, apply};
use crate::log::{self, Batch, Logged, SegmentWriter};
use crate::settlement::{self, Backlog, Durable, Progress, Settlable};
use crate::snapshot;
use crate::{Reply, Store, StoreError};

/// Most commands in one frame of the log: bounds the frame size and the
/// latency a command waits behind others.
pub const BATCH_COMMANDS_MAX: usize = 4_096;

/// Most requests waiting for the engine thread; senders block beyond it.
pub const REQUEST_QUEUE_DEPTH: usize = 65_536;

/// Frames in flight between the engine thread and the writer: enough to
/// apply the next batch while the previous one syncs, bounded so that
/// memory does not grow when the disk is slow.
pub const WRITE_QUEUE_DEPTH: usize = 4;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_directory: PathBuf,
    /// A snapshot is taken after this many logged commands, which bounds
    /// what a restart replays.
    pub snapshot_every_commands: u64,
    /// Group commit; off makes every command its own frame and sync, the
    /// baseline that shows what group commit buys.
    pub group_commit: bool,
    /// When [`REQUEST_QUEUE_DEPTH`] requests wait: refuse more at once
    /// (`Unavailable`) instead of blocking the caller. For callers that must
    /// not block, such as async servers.
    pub refuse_when_busy: bool,
    /// Balance updates of durable frames (and the groups of frames: each
    /// counts one more) that wait for settlement in memory; beyond them
    /// settlement reads the log. 0: always the log.
    pub settlable_updates_queued: usize,
}

impl StoreConfig {
    pub fn new(data_directory: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_directory: data_directory.into(),
            snapshot_every_commands: 1_000_000,
            group_commit: true,
            refuse_when_busy: false,
            settlable_updates_queued: settlement::SETTLABLE_UPDATES_QUEUED_MAX,
        }
    }
}

/// A read of the engine's state. It runs on the engine thread, in order
/// with the commands, and returns the delivery of its answer, which the
/// writer makes only once everything before it is durable: a reader never
/// sees an effect that a crash could still undo.
type Query = Box<dyn FnOnce(Result<&Engine, StoreError>) -> Delivery + Send>;
/// Called with `Err` when the frame before it could not be made durable.
pub(crate) type Delivery = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(crate) enum Request {
    Command(Command, Reply),
    Query(Query),
    /// The settlement thread's updates: each applied and logged as its own
    /// `Settle` command, one answer for all once they are durable (`Err`
    /// with the first refused, after which the rest are not applied).
    Settle(Vec<BalanceUpdate>, Delivery),
}

enum WriteJob {
    /// The writer encodes the frame: the engine thread is the busier one.
    Frame { batch: u64, logged: Batch, replies: Vec<(Reply, Result<Response, StoreError>)>, deliveries: Vec<Delivery> },
    /// A child process is writing the snapshot through `batch`; it goes in
    /// place once it is written and every frame up to `batch` is durable.
    Snapshot(snapshot::Writing),
}

/// Commands per group commit, counted in power-of-two buckets (1, 2, 4 …
/// up to [`BATCH_COMMANDS_MAX`]): how well concurrent commands share a sync.
#[derive(Debug, Default)]
pub struct CommitStats {
    buckets: [AtomicU64; COMMIT_BUCKETS],
    commits: AtomicU64,
    commands: AtomicU64,
}

const COMMIT_BUCKETS: usize = BATCH_COMMANDS_MAX.ilog2() as usize + 1;

/// A reading of [`CommitStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSizes {
    /// (upper bound, commits with at most that many commands and more than the bound before).
    pub buckets: Vec<(u64, u64)>,
    pub commits: u64,
    pub commands: u64,
}

impl CommitStats {
    pub(crate) fn record(&self, commands: usize) {
        let index = (commands.max(1).next_power_of_two().ilog2() as usize).min(COMMIT_BUCKETS - 1);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
    }

    pub fn read(&self) -> CommitSizes {
        CommitSizes {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(index, count)| (1u64 << index, count.load(Ordering::Relaxed)))
                .collect(),
            commits: self.commits.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
        }
    }
}

pub struct EmbeddedStore {
    commit_stats: Arc<CommitStats>,
    refuse_when_busy: bool,
    /// Held while open: one writer per data directory.
    lock: Mutex<Option<std::fs::File>>,
    requests: Mutex<Option<SyncSender<Request>>>,
    failed: Arc<AtomicBool>,
    durable: Arc<Durable>,
    settlement: Arc<Progress>,
    closing: Arc<AtomicBool>,
    settlement_thread: Mutex<Option<JoinHandle<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// How far settlement is behind decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlementLag {
    /// The last batch of the log that is durable.
    pub durable_batch: u64,
    /// The last batch whose balance updates are all settled.
    pub settled_batch: u64,
    /// Balance updates decided but not settled yet, over all accounts.
    pub unsettled_updates: u64,
    /// Whether settlement stopped on an error (it is logged).
    pub stopped: bool,
}

/// What recovery found on disk.
pub struct Recovered {
    pub engine: Engine,
    pub last_batch: u64,
    pub commands_since_snapshot: u64,
    pub writer: SegmentWriter,
}

impl EmbeddedStore {
    /// Opens (or creates) the data directory and recovers exactly the
    /// acknowledged state.
    pub fn open(
        config: StoreConfig,
        catalog: Arc<Catalog>,
        clock: Arc<dyn Clock>,
    ) -> Result<EmbeddedStore, StoreError> {
        let lock = lock_directory(&config.data_directory)?;
        snapshot::remove_unfinished(&config.data_directory)?;
        let recovered = recover(&config.data_directory, catalog)?;
        let cursor = settlement::read_cursor(&config.data_directory)?;
        if cursor > recovered.last_batch {
            return Err(StoreError::Corrupt {
                file: config.data_directory.join(settlement::CURSOR_FILE),
                offset: 0,
                reason: format!("settled through batch {cursor}, but the log ends at batch {}", recovered.last_batch),
            });
        }
        let (request_sender, request_receiver) = mpsc::sync_channel(REQUEST_QUEUE_DEPTH);
        let (write_sender, write_receiver) = mpsc::sync_channel(WRITE_QUEUE_DEPTH);
        let failed = Arc::new(AtomicBool::new(false));
        let durable = Arc::new(Durable::new(recovered.last_batch));
        let settlement = Arc::new(Progress::default());
        let closing = Arc::new(AtomicBool::new(false));
        let (settlable_sender, settlable_receiver) = mpsc::channel();
        let backlog = Arc::new(Backlog::new(config.settlable_updates_queued, recovered.last_batch));
        let settlement_thread = {
            let (directory, requests) = (config.data_directory.clone(), request_sender.clone());
            let (durable, settlement, closing) = (durable.clone(), settlement.clone(), closing.clone());
            let settlable = (backlog.clone(), settlable_receiver);
            std::thread::Builder::new()
                .name("headroom-settlement".to_string())
                .spawn(move || settlement::run(directory, requests, durable, settlable, settlement, closing))
                .map_err(|error| StoreError::io(&config.data_directory, error))?
        };
        let snapshotting = Arc::new(AtomicBool::new(false));
        let engine_thread = {
            let failed = failed.clone();
            let engine_config = config.clone();
            let snapshots = snapshotting.clone();
            let (engine, last_batch, pending) =
                (recovered.engine, recovered.last_batch, recovered.commands_since_snapshot);
            std::thread::Builder::new()
                .name("headroom-engine".to_string())
                .spawn(move || {
                    let _guard = FailOnPanic(failed.clone(), "engine");
                    engine_loop(
                        engine,
                        last_batch,
                        pending,
                        engine_config,
                        clock,
                        request_receiver,
                        write_sender,
                        failed,
                        snapshots,
                    )
                })
                .map_err(|error| StoreError::io(&config.data_directory, error))?
        };
        let commit_stats = Arc::new(CommitStats::default());
        let writer_thread = {
            let (failed, durable, group_commit) = (failed.clone(), durable.clone(), config.group_commit);
            let snapshotting = snapshotting.clone();
            let directory = config.data_directory.clone();
            let writer = recovered.writer;
            let stats = commit_stats.clone();
            let durable = Published { durable, backlog, settlable: settlable_sender };
            std::thread::Builder::new()
                .name("headroom-writer".to_string())
                .spawn(move || {
                    let _guard = FailOnPanic(failed.clone(), "writer");
                    writer_loop(writer, directory, write_receiver, group_commit, failed, durable, stats, snapshotting)
                })
                .map_err(|error| StoreError::io(&config.data_directory, error))?
        };
        Ok(EmbeddedStore {
            commit_stats,
            refuse_when_busy: config.refuse_when_busy,
            lock: Mutex::new(Some(lock)),
            requests: Mutex::new(Some(request_sender)),
            failed,
            durable,
            settlement,
            closing,
            settlement_thread: Mutex::new(Some(settlement_thread)),
            threads: Mutex::new(vec![engine_thread, writer_thread]),
        })
    }

    /// Stops taking commands, finishes and syncs what was taken, and waits
    /// for both threads.
    pub fn close(&self) {
        // Settlement first: it sends commands, so the engine can only stop after it.
        self.closing.store(true, Ordering::SeqCst);
        self.durable.wake();
        if let Some(thread) = self.settlement_thread.lock().expect("not poisoned").take() {
            let _ = thread.join();
        }
        self.requests.lock().expect("not poisoned").take();
        for thread in self.threads.lock().expect("not poisoned").drain(..) {
            let _ = thread.join();
        }
        self.lock.lock().expect("not poisoned").take();
    }

    pub fn settlement_lag(&self) -> Result<SettlementLag, StoreError> {
        let unsettled_updates = self.query(|engine| engine.accounts().map(|account| account.unsettled()).sum())?;
        Ok(SettlementLag {
            durable_batch: self.durable.get(),
            settled_batch: self.settlement.settled_batch.load(Ordering::SeqCst),
            unsettled_updates,
            stopped: self.settlement.stopped.load(Ordering::SeqCst),
        })
    }

    /// Waits until every balance update decided so far is settled (for
    /// tests and orderly shutdown); gives up after `timeout`.
    pub fn wait_settled(&self, timeout: std::time::Duration) -> Result<SettlementLag, StoreError> {
        let mut waited = std::time::Duration::ZERO;
        loop {
            let lag = self.settlement_lag()?;
            if lag.unsettled_updates == 0 || lag.stopped || waited >= timeout {
                return Ok(lag);
            }
            let pause = std::time::Duration::from_millis(2);
            std::thread::sleep(pause);
            waited += pause;
        }
    }

    /// How many commands each group commit carried.
    pub fn commit_sizes(&self) -> CommitSizes {
        self.commit_stats.read()
    }

    /// Log batches durable but not yet settled, without waiting on the engine.
    pub fn settlement_batches_behind(&self) -> u64 {
        self.durable.get().saturating_sub(self.settlement.settled_batch.load(Ordering::SeqCst))
    }

    /// The last log batch that is durable: everything acknowledged is at or before it.
    pub fn durable_batch(&self) -> u64 {
        self.durable.get()
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Hands a request to the engine thread; gives it back, with why, if
    /// the store is closed (or busy, when it refuses then).
    fn send(&self, request: Request) -> Result<(), (Box<Request>, StoreError)> {
        let closed = || StoreError::Unavailable("the store is closed".to_string());
        let sender = self.requests.lock().expect("not poisoned").clone();
        let Some(sender) = sender else {
            return Err((Box::new(request), closed()));
        };
        if !self.refuse_when_busy {
            return sender.send(request).map_err(|mpsc::SendError(request)| (Box::new(request), closed()));
        }
        sender.try_send(request).map_err(|error| match error {
            mpsc::TrySendError::Full(request) => (
                Box::new(request),
                StoreError::Unavailable(format!("the store is busy ({REQUEST_QUEUE_DEPTH} requests wait); retry")),
            ),
            mpsc::TrySendError::Disconnected(request) => (Box::new(request), closed()),
        })
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for EmbeddedStore {
    fn submit(&self, command: Command, reply: Reply) {
        if let Err((request, error)) = self.send(Request::Command(command, reply))
            && let Request::Command(_, reply) = *request
        {
            reply(Err(error));
        }
    }

    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Engine) -> T + Send + 'static,
        answer: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) {
        let query: Query = Box::new(move |engine| {
            let value = engine.map(read);
            Box::new(move |durable| answer(durable.and(value)))
        });
        if let Err((request, error)) = self.send(Request::Query(query))
            && let Request::Query(query) = *request
        {
            query(Err(error))(Ok(()));
        }
    }
}

/// Marks the store failed when its thread dies of a panic, so that
/// readiness checks and later commands see it.
struct FailOnPanic(Arc<AtomicBool>, &'static str);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
            eprintln!("headroom: the {} thread panicked; the store refuses further commands", self.1);
        }
    }
}

/// Loads the newest snapshot and replays the log after it.
///
/// The two cores share the work: a reader thread reads and decodes the
/// segments to replay, one at a time, while this thread decodes the
/// snapshot and then applies each segment the reader hands over.
pub fn recover(directory: &Path, catalog: Arc<Catalog>) -> Result<Recovered, StoreError> {
    std::fs::create_dir_all(directory).map_err(|error| StoreError::io(directory, error))?;
    record_catalog(directory, &catalog)?;
    let newest_snapshot = snapshot::list_snapshots(directory)?.pop();
    let named_batch = newest_snapshot.as_ref().map_or(0, |(batch, _)| *batch);
    let segments = log::list_segments(directory)?;
    // The log is kept whole as the audit trail; a segment the snapshot
    // covers entirely is not even read.
    let to_read: Vec<(PathBuf, bool)> = (0..segments.len())
        .filter(|index| index + 1 == segments.len() || segments[index + 1].0 > named_batch + 1)
        .map(|index| (segments[index].1.clone(), index + 1 == segments.len()))
        .collect();
    std::thread::scope(|scope| {
        // A rendezvous: the reader holds at most one decoded segment while
        // this thread applies another.
        let (segment_sender, decoded_segments) = mpsc::sync_channel(0);
        let reader = std::thread::Builder::new().name("headroom-recover".into());
        let reader = reader
            .spawn_scoped(scope, move || {
                for (path, last) in to_read {
                    let contents = log::read_segment(&path, last);
                    let failed = contents.is_err();
                    if segment_sender.send((path, last, contents)).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|error| StoreError::io(directory, error))?;
        let (snapshot_batch, accounts) = match &newest_snapshot {
            Some((_, path)) => snapshot::read(path)?,
            None => (0, Vec::new()),
        };
        if let Some((_, path)) = &newest_snapshot
            && snapshot_batch != named_batch
        {
            let reason = format!("the snapshot is of batch {snapshot_batch}, its name says {named_batch}");
            return Err(StoreError::Corrupt { file: path.clone(), offset: 0, reason });
        }
        let mut engine = Engine::from_accounts(catalog, accounts);
        let mut last_batch = snapshot_batch;
        let mut commands_since_snapshot = 0;
        let mut tail = None;
        for (path, last, contents) in decoded_segments {
            let contents = contents?;
            for (batch, commands) in contents.frames.into_iter().filter(|(batch, _)| *batch > snapshot_batch) {
                replay_frame(&mut engine, &path, batch, &commands, last_batch)?;
                commands_since_snapshot += commands.len() as u64;
                last_batch = batch;
            }
            if last {
                tail = Some((path, contents.valid_length));
            }
        }
        // A reader that panicked ended the segments early: that must not
        // read as the end of the log, which the writer would then cut.
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
        let (path, length) = tail.unwrap_or_else(|| (log::segment_path(directory, last_batch + 1), 0));
        let writer = SegmentWriter::open(directory, &path, length)?;
        Ok(Recovered { engine, last_batch, commands_since_snapshot, writer })
    })
}

/// What the engine thread has applied and not yet handed to the writer.
#[derive(Default)]
struct Pending {
    logged: Batch,
    replies: Vec<(Reply, Result<Response, StoreError>)>,
    deliveries: Vec<Delivery>,
}

impl Pending {
    fn len(&self) -> usize {
        self.replies.len() + self.deliveries.len()
    }
}

/// Replays frame `batch` of the segment at `path`, which must follow
/// `last_batch`: each command must record again exactly what it recorded.
fn replay_frame(
    engine: &mut Engine,
    path: &Path,
    batch: u64,
    commands: &Batch,
    last_batch: u64,
) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { file: path.to_path_buf(), offset: 0, reason };
    if batch != last_batch + 1 {
        return Err(corrupt(format!("batch {batch} follows batch {last_batch}: part of the log is missing")));
    }
    for logged in commands {
        let replayed = apply(engine, &logged.command, logged.at);
        let same = matches!(&replayed, Ok(response) if response.events() == logged.events.as_slice());
        if !same {
            return Err(corrupt(format!("batch {batch} does not replay to what was recorded: {replayed:?}")));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn engine_loop(
    mut engine: Engine,
    mut last_batch: u64,
    mut commands_since_snapshot: u64,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    requests: Receiver<Request>,
    writes: SyncSender<WriteJob>,
    failed: Arc<AtomicBool>,
    // Set while a child process writes a snapshot: one at a time.
    snapshotting: Arc<AtomicBool>,
) {
    let batch_max = if config.group_commit { BATCH_COMMANDS_MAX } else { 1 };
    let mut pending = Pending::default();
    // Blocks only while nothing waits: everything that arrived is applied
    // and handed to the writer at once, as one frame. The writer makes the
    // frames that queue while it syncs durable together (group commit), so
    // the engine never waits for it, nor polls.
    let mut arrived = Vec::new();
    while let Ok(request) = requests.recv() {
        arrived.push(request);
        while arrived.len() < batch_max {
            match requests.try_recv() {
                Ok(request) => arrived.push(request),
                Err(_) => break,
            }
        }
        // Room for the whole frame at once: growing a vector of thousands
        // of commands from empty copied each of them a dozen times.
        pending.logged.reserve_exact(arrived.len());
        pending.replies.reserve_exact(arrived.len());
        // What a command reads is asked for a few commands ahead, so that
        // its misses overlap the work on the ones before it (asked for all
        // at once, a large batch's first commands were evicted again before
        // their turn): its account first, and where its key goes once the
        // account is in the cache.
        arrived.iter().take(ACCOUNT_PREFETCH_AHEAD).for_each(|request| prefetch_account(&engine, request));
        arrived.iter().take(KEY_PREFETCH_AHEAD).for_each(|request| prefetch_key(&engine, request));
        let mut batch = arrived.drain(..);
        while let Some(request) = batch.next() {
            if let Some(ahead) = batch.as_slice().get(ACCOUNT_PREFETCH_AHEAD - 1) {
                prefetch_account(&engine, ahead);
            }
            if let Some(ahead) = batch.as_slice().get(KEY_PREFETCH_AHEAD - 1) {
                prefetch_key(&engine, ahead);
            }
            apply_request(&mut engine, &clock, &failed, request, &mut pending);
        }
        if !hand_off(&mut pending, &mut last_batch, &mut commands_since_snapshot, &writes) {
            return;
        }
        // A snapshot is due, and none is being written: a child process
        // writes this state while the engine goes on.
        if commands_since_snapshot >= config.snapshot_every_commands && !snapshotting.load(Ordering::SeqCst) {
            let accounts: Vec<_> = engine.accounts().collect();
            commands_since_snapshot = 0;
            match snapshot::start(&config.data_directory, last_batch, &accounts) {
                Ok(writing) => {
                    snapshotting.store(true, Ordering::SeqCst);
                    if writes.send(WriteJob::Snapshot(writing)).is_err() {
                        return;
                    }
                }
                // The log still holds everything: a missed snapshot costs restart time only.
                Err(error) => eprintln!("headroom: a snapshot at batch {last_batch} could not start: {error}"),
            }
        }
    }
}

/// How many requests ahead of the one applied the engine asks for the
/// account each will use.
const ACCOUNT_PREFETCH_AHEAD: usize = 8;

/// How many requests ahead of the one applied the engine asks for the
/// place of each one's key: half as far, so that the account it reads to
/// find that place has arrived.
const KEY_PREFETCH_AHEAD: usize = 4;

/// Starts loading the account a request uses, changing nothing.
fn prefetch_account(engine: &Engine, request: &Request) {
    if let Some((subject, _)) = use_of(request) {
        engine.prefetch_account(subject);
    }
}

/// Starts loading where a request's key goes, changing nothing.
fn prefetch_key(engine: &Engine, request: &Request) {
    if let Some((subject, Some(key))) = use_of(request) {
        engine.prefetch_key(subject, key);
    }
}

/// The subject and key of a request that uses a feature: what it reads first.
fn use_of(request: &Request) -> Option<(&SubjectId, Option<&IdempotencyKey>)> {
    match request {
        Request::Command(Command::Decide(request), _) => Some((&request.subject, request.idempotency_key.as_ref())),
        Request::Command(Command::Reserve(request), _) => Some((&request.subject, Some(&request.idempotency_key))),
        _ => None,
    }
}

/// Applies one request into the pending frame.
fn apply_request(
    engine: &mut Engine,
    clock: &Arc<dyn Clock>,
    failed: &AtomicBool,
    request: Request,
    pending: &mut Pending,
) {
    match request {
        Request::Query(query) if failed.load(Ordering::SeqCst) => {
            query(Err(StoreError::Unavailable("a write to the log failed; reopen the store".to_string())))(Ok(()));
        }
        Request::Query(query) => pending.deliveries.push(query(Ok(engine))),
        Request::Settle(_, done) if failed.load(Ordering::SeqCst) => {
            done(Err(StoreError::Unavailable("a write to the log failed; reopen the store".to_string())));
        }
        Request::Settle(updates, done) => {
            let now = clock.now();
            // One logged command per update: room for all of them at once
            // (the frame's reserve counted this request as one).
            pending.logged.reserve(updates.len());
            let mut settled = Ok(());
            for update in updates {
                let command = Command::Settle(update);
                match apply(engine, &command, now) {
                    Ok(mut response) => {
                        let events = response.take_events();
                        pending.logged.push(Logged { at: now, command, events });
                    }
                    Err(refusal) => {
                        settled = Err(StoreError::Refused(refusal));
                        break;
                    }
                }
            }
            pending.deliveries.push(Box::new(move |durable| done(durable.and(settled))));
        }
        Request::Command(_, reply) if failed.load(Ordering::SeqCst) => {
            reply(Err(StoreError::Unavailable("a write to the log failed; reopen the store".to_string())));
        }
        Request::Command(command, reply) => {
            let now = clock.now();
            match apply(engine, &command, now) {
                Ok(mut response) => {
                    let events = response.take_events();
                    pending.logged.push(Logged { at: now, command, events });
                    pending.replies.push((reply, Ok(response)));
                }
                // Changed nothing, but answered in order with the rest.
                Err(refusal) => pending.replies.push((reply, Err(StoreError::Refused(refusal)))),
            }
        }
    }
}

/// Encodes the pending frame and gives it to the writer; false if the writer is gone.
fn hand_off(
    pending: &mut Pending,
    last_batch: &mut u64,
    commands_since_snapshot: &mut u64,
    writes: &SyncSender<WriteJob>,
) -> bool {
    if pending.len() == 0 {
        return true;
    }
    let Pending { logged, replies, deliveries } = std::mem::take(pending);
    let batch = if logged.is_empty() {
        // Nothing to log; the answers still wait for earlier frames.
        *last_batch
    } else {
        *last_batch += 1;
        *commands_since_snapshot += logged.len() as u64;
        *last_batch
    };
    writes.send(WriteJob::Frame { batch, logged, replies, deliveries }).is_ok()
}

/// Frames the writer makes durable with one sync at most: the engine hands
/// over a frame each time it runs dry, so under load several wait.
const FRAMES_PER_SYNC_MAX: usize = 64;

/// Frames taken from the queue and not yet durable: one write, one sync.
#[derive(Default)]
struct Group {
    bytes: Vec<u8>,
    first_batch: Option<u64>,
    last_batch: u64,
    commands: usize,
    /// The frames' balance updates, for settlement once they are durable.
    updates: Vec<BalanceUpdate>,
    replies: Vec<(Reply, Result<Response, StoreError>)>,
    deliveries: Vec<Delivery>,
}

#[allow(clippy::too_many_arguments)]
fn writer_loop(
    mut writer: SegmentWriter,
    directory: PathBuf,
    jobs: Receiver<WriteJob>,
    group_commit: bool,
    failed: Arc<AtomicBool>,
    durable: Published,
    stats: Arc<CommitStats>,
    snapshotting: Arc<AtomicBool>,
) {
    let mut finishing: Option<JoinHandle<()>> = None;
    let frames_max = if group_commit { FRAMES_PER_SYNC_MAX } else { 1 };
    // One buffer for every group's bytes: growing a fresh one to megabytes
    // copied each group's frames several times over.
    let mut bytes = Vec::new();
    while let Some(job) = next_job(&jobs, &mut writer, &failed) {
        // Group commit: the frames that queued while the last sync ran go
        // to disk together. A snapshot waits until they are durable: it
        // holds their changes.
        let mut group = Group { bytes: std::mem::take(&mut bytes), ..Group::default() };
        let mut next = Some(job);
        let mut frames = 0;
        while let Some(job) = next.take() {
            match job {
                WriteJob::Frame { batch, logged, replies, deliveries } => {
                    if !logged.is_empty() {
                        log::encode_frame(&mut group.bytes, batch, &logged);
                        group.first_batch.get_or_insert(batch);
                        group.last_batch = batch;
                        group.commands += logged.len();
                        let events = logged.into_iter().flat_map(|logged| logged.events);
                        group.updates.extend(events.filter_map(|event| match event {
                            Event::Balance(update) => Some(update),
                            _ => None,
                        }));
                    }
                    group.replies.extend(replies);
                    group.deliveries.extend(deliveries);
                    frames += 1;
                    if frames < frames_max {
                        next = jobs.try_recv().ok();
                    }
                }
                WriteJob::Snapshot(writing) => {
                    // Every frame up to the snapshot's batch is durable
                    // once this group is: then it may go in place.
                    let written = write_group(&mut writer, std::mem::take(&mut group), &failed, &durable, &stats);
                    group.bytes = written;
                    let install = !failed.load(Ordering::SeqCst);
                    let (directory, running) = (directory.clone(), Running(snapshotting.clone()));
                    let finish = move || {
                        finish_snapshot(&directory, writing, install);
                        drop(running);
                    };
                    // Waits for the child on a thread of its own: syncs go on meanwhile.
                    finishing = std::thread::Builder::new()
                        .name("headroom-snapshot".to_string())
                        .spawn(finish)
                        .map_err(|error| eprintln!("headroom: waiting for a snapshot on this thread: {error}"))
                        .ok();
                }
            }
        }
        bytes = write_group(&mut writer, group, &failed, &durable, &stats);
    }
    if let Some(thread) = finishing {
        let _ = thread.join();
    }
}

/// The next job; while none waits, the writer zeros the log ahead of its
/// frames, a step at a time. None once the engine is gone.
fn next_job(jobs: &Receiver<WriteJob>, writer: &mut SegmentWriter, failed: &AtomicBool) -> Option<WriteJob> {
    loop {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if !failed.load(Ordering::SeqCst) => match writer.zero_ahead() {
                Ok(true) => continue,
                Ok(false) => return jobs.recv().ok(),
                Err(error) => {
                    failed.store(true, Ordering::SeqCst);
                    eprintln!("headroom: writing the log failed, refusing further commands: {error}");
                }
            },
            Err(mpsc::TryRecvError::Empty) => return jobs.recv().ok(),
        }
    }
}

/// Where the writer tells that frames are durable: the last durable batch,
/// and the frames' balance updates for settlement.
struct Published {
    durable: Arc<Durable>,
    backlog: Arc<Backlog>,
    settlable: mpsc::Sender<Settlable>,
}

/// Writes and syncs a group of frames, then answers their callers. Gives
/// back the group's buffer, emptied, for the next group.
fn write_group(
    writer: &mut SegmentWriter,
    group: Group,
    failed: &AtomicBool,
    durable: &Published,
    stats: &CommitStats,
) -> Vec<u8> {
    let written = match group.first_batch {
        Some(first_batch) if !failed.load(Ordering::SeqCst) => writer.append(&group.bytes, first_batch),
        _ => Ok(()),
    };
    if let Err(error) = &written {
        failed.store(true, Ordering::SeqCst);
        eprintln!("headroom: writing the log failed, refusing further commands: {error}");
    }
    let failure = failed.load(Ordering::SeqCst);
    if !failure && let Some(first_batch) = group.first_batch {
        // Never waits: a group that does not fit is read from the log.
        let settlable = Settlable { first_batch, last_batch: group.last_batch, updates: group.updates };
        durable.backlog.offer(&durable.settlable, settlable);
        durable.durable.publish(group.last_batch);
        stats.record(group.commands);
    }
    let unavailable = || StoreError::Unavailable("the log could not be written".to_string());
    for (reply, result) in group.replies {
        reply(if failure { Err(unavailable()) } else { result });
    }
    for deliver in group.deliveries {
        deliver(if failure { Err(unavailable()) } else { Ok(()) });
    }
    let mut bytes = group.bytes;
    if bytes.capacity() > GROUP_BUFFER_KEPT_MAX {
        return Vec::new();
    }
    bytes.clear();
    bytes
}

/// The largest group buffer kept for the next group; a rare larger group
/// gives its memory back.
const GROUP_BUFFER_KEPT_MAX: usize = 64 << 20;

/// Clears the engine's "a snapshot is being written" when dropped, even
/// when the thread that was to finish the snapshot could not start.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Waits for a snapshot's child, then puts it in place (unless the log
/// failed) and removes the older ones.
fn finish_snapshot(directory: &Path, writing: snapshot::Writing, install: bool) {
    let batch = writing.batch;
    let finished = writing.finish(directory, install).and_then(|()| match install {
        true => prune(directory, batch),
        false => Ok(()),
    });
    if let Err(error) = finished {
        // The log still holds everything: a failed snapshot costs restart time only.
        eprintln!("headroom: snapshot at batch {batch} failed: {error}");
    }
}

/// Takes the data directory's lock file: two processes appending to one log
/// would interleave their frames.
fn lock_directory(directory: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(directory).map_err(|error| StoreError::io(directory, error))?;
    let path = directory.join("lock");
    let file = std::fs::File::create(&path).map_err(|error| StoreError::io(&path, error))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StoreError::Unavailable(format!("{} is in use by another process", directory.display())))
        }
        Err(std::fs::TryLockError::Error(error)) => Err(StoreError::io(&path, error)),
    }
}

/// The file that records the catalog a data directory's log was written under.
pub const CATALOG_FILE: &str = "catalog.toml";

/// Records the catalog on first use; refuses another one later, because the
/// log replays only under the catalog it was written with.
fn record_catalog(directory: &Path, catalog: &Catalog) -> Result<(), StoreError> {
    let path = directory.join(CATALOG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(recorded) if recorded == catalog.source() => Ok(()),
        Ok(_) => Err(StoreError::CatalogChanged { path }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, catalog.source())
                .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
                .map_err(|error| StoreError::io(&temporary, error))?;
            std::fs::rename(&temporary, &path).map_err(|error| StoreError::io(&path, error))?;
            log::sync_directory(directory)
        }
        Err(error) => Err(StoreError::io(&path, error)),
    }
}

/// Deletes snapshots older than the newest. Log segments stay: they are
/// the audit trail of the three datasets, and recovery skips what a
/// snapshot covers without reading it.
fn prune(directory: &Path, snapshot_batch: u64) -> Result<(), StoreError> {
    for (batch, path) in snapshot::list_snapshots(directory)? {
        if batch < snapshot_batch {
            std::fs::remove_file(&path).map_err(|error| StoreError::io(&path, error))?;
        }
    }
    log::sync_directory(directory)
}
