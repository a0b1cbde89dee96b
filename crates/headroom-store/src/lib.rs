//! Stores around the pure core: each command runs in its account's
//! serializable transaction (the core computes, the store applies), and is
//! acknowledged only once it is durable.
//!
//! - [`MemoryStore`]: the in-memory twin, with injectable write and sync
//!   faults, for tests and the simulator.
//! - [`EmbeddedStore`]: one data directory, a write-ahead log with group
//!   commit and snapshots. See `ARCHITECTURE.md`.

pub mod command;
mod embedded;
pub mod ledger;
pub mod log;
mod memory;
pub mod postgres;
pub mod reconcile;
mod settlement;
pub mod snapshot;

use std::path::{Path, PathBuf};

pub use command::{Command, Refusal, Response, apply};
pub use embedded::{CATALOG_FILE, CommitSizes, EmbeddedStore, SettlementLag, StoreConfig};
pub use memory::{Faults, MemoryStore};
pub use postgres::{PostgresConfig, PostgresStore};

use headroom_core::{Clock, Engine, Timestamp};

/// Why a store could not run a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The core refused the command; nothing changed. Not retryable as is.
    Refused(Refusal),
    /// Writing or syncing failed; the command did not happen. The store
    /// stops taking commands until it is reopened (recovery from disk).
    Unavailable(String),
    /// The connection to the database failed while committing: the command
    /// may or may not have happened. Retrying with the same idempotency key
    /// is safe (a replay returns the original answer).
    Uncertain(String),
    /// Stored data failed a check: the file and the offset of the damage.
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    Io {
        path: PathBuf,
        message: String,
    },
    /// The data directory was written under another catalog.
    CatalogChanged {
        path: PathBuf,
    },
}

impl StoreError {
    pub fn io(path: &Path, error: std::io::Error) -> StoreError {
        StoreError::Io { path: path.to_path_buf(), message: error.to_string() }
    }

    /// Whether the same command may succeed if tried again later.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Refused(Refusal::Core(error)) => error.is_retryable(),
            StoreError::Refused(_) => false,
            StoreError::Unavailable(_) | StoreError::Uncertain(_) | StoreError::Io { .. } => true,
            StoreError::Corrupt { .. } | StoreError::CatalogChanged { .. } => false,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Refused(refusal) => refusal.fmt(f),
            StoreError::Unavailable(reason) => write!(f, "storage unavailable: {reason}"),
            StoreError::Uncertain(reason) => {
                write!(f, "storage failed while committing, the outcome is unknown: {reason}")
            }
            StoreError::Corrupt { file, offset, reason } => {
                write!(f, "{} is corrupt at offset {offset}: {reason}", file.display())
            }
            StoreError::Io { path, message } => write!(f, "{}: {message}", path.display()),
            StoreError::CatalogChanged { path } => write!(
                f,
                "the data directory was written under another catalog ({}); changing the catalog of existing data is not supported",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// Receives the answer to a command once it is durable (or failed).
pub type Reply = Box<dyn FnOnce(Result<Response, StoreError>) + Send>;

/// The narrow interface the server and the tools use.
pub trait Store: Send + Sync {
    /// Runs `command`; `reply` is called once it is durable, or with why not.
    fn submit(&self, command: Command, reply: Reply);

    /// Reads the engine's state in order with the commands; `answer` is
    /// called once everything before the read is durable (a reader never
    /// sees an effect a crash could undo), or with why the read failed.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Engine) -> T + Send + 'static,
        answer: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    );

    /// Reads the engine's state and waits for the answer.
    fn query<T: Send + 'static>(&self, read: impl FnOnce(&Engine) -> T + Send + 'static) -> Result<T, StoreError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.read(read, move |answer| {
            let _ = sender.send(answer);
        });
        receiver.recv().unwrap_or_else(|_| Err(StoreError::Unavailable("the store stopped".to_string())))
    }

    /// Runs `command` and waits for its answer.
    fn execute(&self, command: Command) -> Result<Response, StoreError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.submit(
            command,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver.recv().unwrap_or_else(|_| Err(StoreError::Unavailable("the store stopped".to_string())))
    }
}

/// The system clock: the one place outside tests that reads the time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // The adapter that injects real time.
    fn now(&self) -> Timestamp {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("the system clock is after 1970");
        Timestamp::from_millis(since_epoch.as_millis() as u64)
    }
}

/// Turns transparent huge pages off for this process; called first thing
/// by processes that run the embedded store.
///
/// The store's threads allocate and free hundreds of megabytes a second
/// (commands, events, answers), and the allocator returns what is freed to
/// the system. Backed by 2 MiB pages, each return splits a huge page and
/// each reuse zeroes a whole new one; with 4 KiB pages the same churn costs
/// far less (durable bench, 2 × 512 in flight: about 300,000 → 390,000
/// decisions/s in alternating runs). The snapshot child's copy-on-write
/// faults also stay 4 KiB.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: `prctl` with PR_SET_THP_DISABLE only sets a flag of this
    // process; it reads no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
