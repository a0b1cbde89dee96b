//! The settlement processor: a thread that follows the durable log, in
//! order, and settles every balance update it finds into the balance of
//! record (a `Settle` command, itself logged with its correction if the
//! update overshot). Its cursor, the last batch whose updates are all
//! settled, is kept in `settlement.cursor`; after a crash it resumes from
//! there, and settling an update again changes nothing.
//!
//! The writer hands over the updates of every group of frames it has made
//! durable, in memory ([`Settlable`]), so that settlement does not read
//! back and decode what was just written. That hand-over never waits: when
//! settlement lags so far that its queue is full, the writer drops the
//! group and says so ([`Backlog::dropped_through`]), and settlement reads
//! those frames from the log, as it does for the frames a restart left
//! unsettled. It reads the log for nothing else: a durable group that was
//! not dropped is in the queue already (the writer hands it over before it
//! publishes it durable), so settlement catches up from memory.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use headroom_core::{BalanceUpdate, Event};

use crate::StoreError;
use crate::log::{self, Batch, FRAME_HEADER_BYTES};

pub const CURSOR_FILE: &str = "settlement.cursor";

/// Most settlements in flight before the thread waits for them and moves its
/// cursor: bounds the reply queue and keeps client commands from queueing
/// behind a long backlog (after a restart, say).
const SETTLE_UPDATES_PER_ROUND_MAX: usize = 16_384;

/// Updates handed to the engine in one request: one answer for them all
/// instead of one each, and a bound on what one request adds to a frame.
const SETTLE_UPDATES_PER_REQUEST: usize = 1_024;

/// Batches settled between two saves of the cursor: what a restart settles
/// again at most (harmlessly), against two syncs per save.
const CURSOR_SAVE_EVERY_BATCHES: u64 = 256;

/// Balance updates (and groups: each counts one more) waiting for
/// settlement in memory, beyond which the writer drops groups (settlement
/// then reads them from the log): bounds the memory a lagging settlement
/// holds. The default of `StoreConfig::settlable_updates_queued`.
pub const SETTLABLE_UPDATES_QUEUED_MAX: usize = 1 << 18;

/// What waits for settlement in memory, shared by the writer and settlement.
#[derive(Debug)]
pub struct Backlog {
    /// Most updates (and groups) queued; 0 drops every group.
    limit: usize,
    /// Updates and groups queued now.
    queued: AtomicUsize,
    /// The last batch of the log that settlement must read from the log:
    /// what a restart left, and every group the writer dropped.
    dropped_through: AtomicU64,
}

impl Backlog {
    /// `log_ends_at`: the last batch recovered, all of it only in the log.
    pub fn new(limit: usize, log_ends_at: u64) -> Backlog {
        Backlog { limit, queued: AtomicUsize::new(0), dropped_through: AtomicU64::new(log_ends_at) }
    }

    /// Hands a durable group to settlement, or drops it if too much waits.
    /// Never waits. Called before the group is published durable.
    pub fn offer(&self, queue: &Sender<Settlable>, group: Settlable) {
        let (weight, last_batch) = (group.updates.len() + 1, group.last_batch);
        // Only the writer adds: what it reads here can only shrink meanwhile.
        if self.queued.load(Ordering::SeqCst) + weight <= self.limit {
            self.queued.fetch_add(weight, Ordering::SeqCst);
            if queue.send(group).is_ok() {
                return;
            }
            // Settlement has stopped: nothing takes the group.
            self.queued.fetch_sub(weight, Ordering::SeqCst);
        }
        self.dropped_through.fetch_max(last_batch, Ordering::SeqCst);
    }

    /// Takes the next group handed over, if one waits.
    fn take(&self, queue: &Receiver<Settlable>) -> Option<Settlable> {
        let group = queue.try_recv().ok()?;
        self.queued.fetch_sub(group.updates.len() + 1, Ordering::SeqCst);
        Some(group)
    }
}

/// The balance updates of durable frames `first_batch..=last_batch`, in order.
pub struct Settlable {
    pub first_batch: u64,
    pub last_batch: u64,
    pub updates: Vec<BalanceUpdate>,
}

/// The last durable batch, published by the writer after each sync.
#[derive(Default)]
pub struct Durable {
    batch: Mutex<u64>,
    changed: Condvar,
}

impl Durable {
    pub fn new(batch: u64) -> Durable {
        Durable { batch: Mutex::new(batch), changed: Condvar::new() }
    }

    pub fn publish(&self, batch: u64) {
        *self.batch.lock().expect("not poisoned") = batch;
        self.changed.notify_all();
    }

    pub fn get(&self) -> u64 {
        *self.batch.lock().expect("not poisoned")
    }

    /// Waits until a batch after `after` is durable, or a while.
    fn wait_past(&self, after: u64) -> u64 {
        let batch = self.batch.lock().expect("not poisoned");
        let (batch, _) = self
            .changed
            .wait_timeout_while(batch, std::time::Duration::from_millis(50), |batch| *batch <= after)
            .expect("not poisoned");
        *batch
    }

    pub fn wake(&self) {
        self.changed.notify_all();
    }
}

/// What the store tells about settlement: how far decisions and settlement are.
#[derive(Debug, Default)]
pub struct Progress {
    pub settled_batch: AtomicU64,
    pub stopped: AtomicBool,
}

pub fn read_cursor(directory: &Path) -> Result<u64, StoreError> {
    let path = directory.join(CURSOR_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| StoreError::Corrupt {
            file: path.clone(),
            offset: 0,
            reason: format!("not a batch number: {text:?}"),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(StoreError::io(&path, error)),
    }
}

fn write_cursor(directory: &Path, batch: u64) -> Result<(), StoreError> {
    let path = directory.join(CURSOR_FILE);
    let temporary = path.with_extension("tmp");
    File::create(&temporary)
        .and_then(|mut file| file.write_all(format!("{batch}\n").as_bytes()).and_then(|()| file.sync_all()))
        .map_err(|error| StoreError::io(&temporary, error))?;
    std::fs::rename(&temporary, &path).map_err(|error| StoreError::io(&path, error))?;
    log::sync_directory(directory)
}

/// Reads durable frames in order, across segments.
struct LogTail {
    directory: PathBuf,
    segment: Option<File>,
    offset: u64,
    next_batch: u64,
}

impl LogTail {
    fn new(directory: &Path, next_batch: u64) -> LogTail {
        LogTail { directory: directory.to_path_buf(), segment: None, offset: 0, next_batch }
    }

    /// The next frame, if it is durable (at most `durable`).
    fn next(&mut self, durable: u64) -> Result<Option<(u64, Batch)>, StoreError> {
        while self.next_batch <= durable {
            if self.segment.is_none() {
                self.open_segment_of(self.next_batch)?;
            }
            let file = self.segment.as_ref().expect("opened above");
            let mut header = [0u8; FRAME_HEADER_BYTES];
            let length = match file.read_exact_at(&mut header, self.offset) {
                Ok(()) => u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize,
                Err(_) => 0,
            };
            if length == 0 {
                // The end of this segment's frames (the end of the file, or
                // zeros written ahead): the next frame starts the next one.
                self.segment = None;
                continue;
            }
            let batch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let offset = self.offset;
            self.offset += (FRAME_HEADER_BYTES + length) as u64;
            if batch < self.next_batch {
                continue;
            }
            let mut payload = vec![0u8; length];
            let directory = self.directory.clone();
            let corrupt =
                |reason: &str| StoreError::Corrupt { file: directory.clone(), offset, reason: reason.to_string() };
            file.read_exact_at(&mut payload, offset + FRAME_HEADER_BYTES as u64)
                .map_err(|_| corrupt("a durable frame is cut short"))?;
            let commands: Batch =
                postcard::from_bytes(&payload).map_err(|_| corrupt("a durable frame does not decode"))?;
            self.next_batch = batch + 1;
            return Ok(Some((batch, commands)));
        }
        Ok(None)
    }

    /// Moves on to `batch`, past frames settled from memory: the search
    /// starts again at the segment that holds it.
    fn skip_to(&mut self, batch: u64) {
        if batch > self.next_batch {
            self.next_batch = batch;
            self.segment = None;
        }
    }

    fn open_segment_of(&mut self, batch: u64) -> Result<(), StoreError> {
        let segments = log::list_segments(&self.directory)?;
        let (_, path) =
            segments.iter().rev().find(|(first, _)| *first <= batch).ok_or_else(|| StoreError::Corrupt {
                file: self.directory.clone(),
                offset: 0,
                reason: format!("no log segment holds batch {batch}"),
            })?;
        self.segment = Some(File::open(path).map_err(|error| StoreError::io(path, error))?);
        self.offset = 0;
        Ok(())
    }
}

/// Settlement's niceness: below the threads that answer decisions. It
/// never holds a decision up (the available balance already counts every
/// update that waits), so its bursts should not take a core from one in
/// flight; at niceness 10 it still gets a tenth of a busy core's time, many
/// times what settling takes.
const SETTLEMENT_NICENESS: libc::c_int = 10;

/// Runs until `closing` is set: follows the log and settles.
pub fn run(
    directory: PathBuf,
    requests: SyncSender<crate::embedded::Request>,
    durable: Arc<Durable>,
    settlable: (Arc<Backlog>, Receiver<Settlable>),
    progress: Arc<Progress>,
    closing: Arc<AtomicBool>,
) {
    // SAFETY: a system call that reads no memory of ours. On Linux a nice
    // value belongs to a thread, and `0` names the calling one; a failure
    // leaves the priority as it was.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SETTLEMENT_NICENESS) };
    if let Err(error) = settle_loop(&directory, &requests, &durable, &settlable, &progress, &closing) {
        eprintln!("headroom: settlement stopped: {error}");
        progress.stopped.store(true, Ordering::SeqCst);
    }
}

fn settle_loop(
    directory: &Path,
    requests: &SyncSender<crate::embedded::Request>,
    durable: &Durable,
    (backlog, settlable): &(Arc<Backlog>, Receiver<Settlable>),
    progress: &Progress,
    closing: &AtomicBool,
) -> Result<(), StoreError> {
    let mut cursor = read_cursor(directory)?;
    let mut saved = cursor;
    progress.settled_batch.store(cursor, Ordering::SeqCst);
    let mut tail = LogTail::new(directory, cursor + 1);
    // The next group handed over in memory, held while the frames before
    // it are read from the log.
    let mut next_group: Option<Settlable> = None;
    while !closing.load(Ordering::SeqCst) {
        // The writer hands a group over before it publishes it durable.
        let durable_batch = durable.wait_past(cursor);
        if next_group.is_none() {
            next_group = backlog.take(settlable);
        }
        let mut updates = Vec::new();
        let mut last = cursor;
        // From the log: the frames before the next group in memory (a
        // restart's backlog, groups dropped while settlement lagged), or,
        // if none waits, the durable frames dropped. Every other durable
        // group is in memory: handed over before it was published.
        let read_through = match &next_group {
            Some(group) => group.first_batch - 1,
            None => durable_batch.min(backlog.dropped_through.load(Ordering::SeqCst)),
        };
        tail.skip_to(last + 1);
        while last < read_through && updates.len() < SETTLE_UPDATES_PER_ROUND_MAX {
            let Some((batch, commands)) = tail.next(read_through)? else { break };
            updates.extend(commands.into_iter().flat_map(|logged| logged.events).filter_map(|event| match event {
                Event::Balance(update) => Some(update),
                _ => None,
            }));
            last = batch;
        }
        // From memory: the groups that follow without a gap.
        while updates.len() < SETTLE_UPDATES_PER_ROUND_MAX
            && let Some(group) = next_group.take_if(|group| group.first_batch <= last + 1)
        {
            // A group read from the log already (published while this
            // thread looked away) is settled; settling again would be
            // harmless, but it is work.
            if group.last_batch > last {
                updates.extend(group.updates);
                last = group.last_batch;
            }
            next_group = backlog.take(settlable);
        }
        let (sender, receiver) = mpsc::channel();
        let mut submitted = 0;
        let mut updates = updates.into_iter().peekable();
        while updates.peek().is_some() {
            let chunk: Vec<_> = updates.by_ref().take(SETTLE_UPDATES_PER_REQUEST).collect();
            let sender = sender.clone();
            let done: crate::embedded::Delivery = Box::new(move |result| {
                let _ = sender.send(result);
            });
            if requests.send(crate::embedded::Request::Settle(chunk, done)).is_err() {
                return Ok(());
            }
            submitted += 1;
        }
        for _ in 0..submitted {
            match receiver.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => return Ok(()),
            }
        }
        if last != cursor {
            cursor = last;
            progress.settled_batch.store(cursor, Ordering::SeqCst);
            // Saving the cursor costs two syncs and a rename; settling again
            // after a crash is harmless, so it is saved now and then.
            if cursor - saved >= CURSOR_SAVE_EVERY_BATCHES {
                write_cursor(directory, cursor)?;
                saved = cursor;
            }
        }
    }
    if cursor != saved {
        write_cursor(directory, cursor)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group without updates: it weighs one.
    fn group(first_batch: u64, last_batch: u64) -> Settlable {
        Settlable { first_batch, last_batch, updates: Vec::new() }
    }

    #[test]
    fn the_backlog_queues_what_fits_and_marks_what_it_drops() {
        // The log ends at batch 3 at start: read from the log.
        let backlog = Backlog::new(5, 3);
        let (sender, receiver) = mpsc::channel();
        backlog.offer(&sender, group(4, 4)); // 1 queued
        backlog.offer(&sender, group(5, 6)); // 2 queued
        backlog.offer(&sender, group(7, 7)); // 3 queued
        assert_eq!(backlog.dropped_through.load(Ordering::SeqCst), 3);
        backlog.offer(&sender, group(8, 9)); // 4 queued
        backlog.offer(&sender, group(10, 10)); // 5 queued: full
        backlog.offer(&sender, group(11, 12)); // dropped
        assert_eq!(backlog.dropped_through.load(Ordering::SeqCst), 12);
        let taken: Vec<_> = std::iter::from_fn(|| backlog.take(&receiver)).map(|group| group.first_batch).collect();
        assert_eq!(taken, [4, 5, 7, 8, 10]);
        // Room again once settlement took them.
        backlog.offer(&sender, group(13, 13));
        assert_eq!(backlog.take(&receiver).map(|group| group.last_batch), Some(13));
        assert_eq!(backlog.dropped_through.load(Ordering::SeqCst), 12);
        // 0: every group is dropped.
        let none = Backlog::new(0, 0);
        none.offer(&sender, group(1, 2));
        assert!(none.take(&receiver).is_none());
        assert_eq!(none.dropped_through.load(Ordering::SeqCst), 2);
    }
}
