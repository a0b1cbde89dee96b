//! The PostgreSQL store: many stateless `headroom serve` nodes over one
//! database, with the same pure core and the same guarantees as the
//! embedded store.
//!
//! Each account is one row holding its state (the core's `AccountState`,
//! encoded). A transaction locks the rows of the accounts it touches
//! (`SELECT … FOR UPDATE`, in id order, so that two nodes never deadlock),
//! lets the core apply every waiting command to them, then writes the new
//! states, the idempotency keys and the three datasets, and commits. Only
//! then are the commands answered: a decision is acknowledged once its
//! transaction committed. No decision logic lives in SQL.
//!
//! **Group commit.** Commands wait per account in a queue. A worker (one
//! connection each) takes every command waiting for up to
//! [`ACCOUNTS_PER_TRANSACTION_MAX`] accounts and runs them in one
//! transaction, so a hot account pays one row lock and one commit for a
//! whole batch, and many quiet accounts share one commit.
//!
//! **Time.** One clock decides: the database's (`clock_timestamp()`), read in
//! the transaction; the core never lets an account's time run backwards.
//!
//! **Background work.** Every node runs a sweeper that finds accounts with
//! unsettled balance updates and accounts whose next reservation or grant
//! expiry has passed, and queues their settlement or advance. Two nodes may
//! queue the same account: the row lock serializes them, and both
//! settlement (`settled_through`) and advancing are idempotent in the core,
//! so nothing changes money twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration as StdDuration;

use headroom_core::*;
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

mod reconcile;
mod write;

pub use reconcile::reconcile;
use write::{Rows, WRITE};

use crate::command::{Command, Refusal, Response, apply};
use crate::embedded::{CommitSizes, CommitStats, REQUEST_QUEUE_DEPTH};
use crate::ledger::{LEDGER_PAGE_ENTRIES_MAX, LedgerEntry, LedgerPage};
use crate::{Reply, StoreError};

/// Most accounts locked by one transaction.
pub const ACCOUNTS_PER_TRANSACTION_MAX: usize = 64;
/// While another transaction is in flight, a worker waits for this many
/// accounts with work, or for [`GATHER_WAIT`], before it starts one.
const GATHER_ACCOUNTS_MIN: usize = 8;
const GATHER_WAIT: StdDuration = StdDuration::from_micros(500);
/// Most commands of one account in one transaction.
pub const COMMANDS_PER_ACCOUNT_MAX: usize = 1_024;
/// Attempts of one transaction that lost a race (serialization failure,
/// deadlock, a unique key another node took first) before giving up.
const ATTEMPTS_MAX: usize = 8;
/// Balance updates settled per account in one transaction.
const SETTLE_PER_TRANSACTION_MAX: i64 = 4_096;
/// Accounts the sweeper queues per round, for settlement and for advancing.
const SWEEP_ACCOUNTS_MAX: i64 = 1_000;
/// Expired idempotency keys deleted per statement, about once a minute, and
/// statements per cleanup (a million keys a minute at most).
const KEY_CLEANUP_ROWS_MAX: i64 = 10_000;
const KEY_CLEANUP_STATEMENTS_MAX: usize = 100;
const KEY_CLEANUP_EVERY: StdDuration = StdDuration::from_secs(60);
/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// Idle time before TCP keepalives probe a connection.
const KEEPALIVE_IDLE: StdDuration = StdDuration::from_secs(10);
/// How long a transaction waits for an account's row lock.
const LOCK_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long a session may sit in an open transaction doing nothing.
const IDLE_IN_TRANSACTION_TIMEOUT: StdDuration = StdDuration::from_secs(30);
/// A session-level advisory lock held while migrating, so that nodes
/// starting together migrate one after the other.
const MIGRATION_LOCK: i64 = 0x6865_6164_726f_6f6d; // "headroom"

/// The encoding of the states, answers and event bodies stored (postcard
/// of the core's types): a node that reads another format refuses to start,
/// rather than decode bytes it would misread.
const STATE_FORMAT: &str = "2";

/// The schema, in order; each applied once, recorded in `headroom_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("postgres/0001_schema.sql")),
    (2, include_str!("postgres/0002_tokens.sql")),
    (3, include_str!("postgres/0003_work.sql")),
];

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// A libpq-style URL: `postgres://user:password@host:port/database`.
    pub url: String,
    /// Connections that run transactions (one worker each).
    pub connections: usize,
    /// How often the sweeper looks for settlement and expiry work.
    pub sweep_every: StdDuration,
    /// Refuse a command at once when this many wait (backpressure), instead of queueing it.
    pub queue_depth_max: usize,
}

/// Transactions run at once by default: one per core. More would mostly
/// make smaller group commits; the database does the work either way.
pub fn default_connections() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get())
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            connections: default_connections(),
            sweep_every: StdDuration::from_millis(200),
            queue_depth_max: REQUEST_QUEUE_DEPTH,
        }
    }
}

pub struct PostgresStore {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    config: PostgresConfig,
    catalog: Arc<Catalog>,
    queue: Mutex<Queue>,
    work: Condvar,
    /// Subjects never move between accounts: once known, cached for good.
    subjects: RwLock<HashMap<SubjectId, AccountId>>,
    readers: Mutex<Vec<Client>>,
    stats: CommitStats,
    closed: AtomicBool,
    sweeper: (Mutex<bool>, Condvar),
}

#[derive(Default)]
struct Queue {
    accounts: HashMap<AccountId, Pending>,
    /// Accounts with work and no transaction in flight, oldest first.
    ready: VecDeque<AccountId>,
    /// Commands whose subject's account is not known yet.
    unresolved: Vec<(Command, Reply)>,
    waiting: usize,
    /// Transactions in flight.
    transactions: usize,
    closed: bool,
}

#[derive(Default)]
struct Pending {
    jobs: Vec<(Command, Reply)>,
    settle: bool,
    advance: bool,
    in_flight: bool,
    queued: bool,
}

impl Pending {
    fn has_work(&self) -> bool {
        !self.jobs.is_empty() || self.settle || self.advance
    }
}

/// One account's share of a transaction.
struct Work {
    account: AccountId,
    jobs: Vec<(Command, Reply)>,
    settle: bool,
    advance: bool,
}

enum Task {
    Resolve(Vec<(Command, Reply)>),
    Transaction(Vec<Work>),
}

impl Queue {
    fn push(&mut self, account: AccountId, add: impl FnOnce(&mut Pending)) {
        let pending = self.accounts.entry(account.clone()).or_default();
        add(pending);
        if !pending.in_flight && !pending.queued && pending.has_work() {
            pending.queued = true;
            self.ready.push_back(account);
        }
    }

    /// The next task. Unless `eager`, a worker leaves a small batch to grow
    /// while another transaction is in flight (its commit ends soon and
    /// frees a worker anyway): bigger group commits, fewer transactions.
    fn take(&mut self, eager: bool) -> Option<Task> {
        if !self.unresolved.is_empty() {
            let jobs = std::mem::take(&mut self.unresolved);
            self.waiting -= jobs.len();
            return Some(Task::Resolve(jobs));
        }
        if !eager && self.transactions > 0 && self.ready.len() < GATHER_ACCOUNTS_MIN {
            return None;
        }
        let mut works = Vec::new();
        while works.len() < ACCOUNTS_PER_TRANSACTION_MAX {
            let Some(account) = self.ready.pop_front() else { break };
            let pending = self.accounts.get_mut(&account).expect("a ready account is pending");
            pending.queued = false;
            pending.in_flight = true;
            let take = pending.jobs.len().min(COMMANDS_PER_ACCOUNT_MAX);
            let jobs: Vec<_> = pending.jobs.drain(..take).collect();
            self.waiting -= jobs.len();
            works.push(Work {
                account,
                jobs,
                settle: std::mem::take(&mut pending.settle),
                advance: std::mem::take(&mut pending.advance),
            });
        }
        if works.is_empty() {
            return None;
        }
        self.transactions += 1;
        Some(Task::Transaction(works))
    }

    fn finished(&mut self, accounts: impl Iterator<Item = AccountId>) {
        self.transactions -= 1;
        for account in accounts {
            let pending = self.accounts.get_mut(&account).expect("an account in flight is pending");
            pending.in_flight = false;
            if pending.has_work() {
                pending.queued = true;
                self.ready.push_back(account);
            } else {
                self.accounts.remove(&account);
            }
        }
    }
}

fn unavailable(error: &postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("the database: {error}"))
}

fn corrupt(what: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("the database holds an unreadable {what}: {reason}"))
}

fn connect(url: &str) -> Result<Client, StoreError> {
    postgres::Config::from(connection_config(url)?).connect(NoTls).map_err(|error| unavailable(&error))
}

/// How every connection is made: the URL's settings, with timeouts that
/// keep a cut-off node from holding row locks.
fn connection_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|error| StoreError::Unavailable(format!("the database URL: {error}")))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.keepalives_idle(KEEPALIVE_IDLE);
    // A node cut off while holding row locks must not hold them for long:
    // its session ends, and other nodes waiting on a lock give up (503) instead of waiting.
    config.options(format!(
        "-c lock_timeout={}ms -c idle_in_transaction_session_timeout={}ms",
        LOCK_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    ));
    config.application_name("headroom");
    Ok(config)
}

/// Whether a transaction failed only because it lost a race with another
/// transaction: running it again from the start is safe and may succeed.
fn lost_race(error: &postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED | &SqlState::UNIQUE_VIOLATION)
    )
}

impl PostgresStore {
    /// Connects, applies the schema's migrations (one node at a time),
    /// records the catalog or refuses another one, and starts the workers
    /// and the sweeper.
    pub fn open(config: PostgresConfig, catalog: Arc<Catalog>) -> Result<PostgresStore, StoreError> {
        let mut client = connect(&config.url)?;
        migrate(&mut client, &catalog)?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            catalog,
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            subjects: RwLock::new(HashMap::new()),
            readers: Mutex::new(vec![client]),
            stats: CommitStats::default(),
            closed: AtomicBool::new(false),
            sweeper: (Mutex::new(false), Condvar::new()),
        });
        let mut threads = Vec::new();
        for index in 0..config.connections.max(1) {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("headroom-pg-{index}"))
                .spawn(move || worker(&shared))
                .map_err(|error| StoreError::Unavailable(format!("starting a worker: {error}")))?;
            threads.push(thread);
        }
        let sweeper_shared = shared.clone();
        let sweeper = std::thread::Builder::new()
            .name("headroom-pg-sweep".to_string())
            .spawn(move || sweep(&sweeper_shared))
            .map_err(|error| StoreError::Unavailable(format!("starting the sweeper: {error}")))?;
        threads.push(sweeper);
        Ok(PostgresStore { shared, threads: Mutex::new(threads) })
    }

    /// Answers what is queued, then stops the workers and the sweeper.
    pub fn close(&self) {
        {
            let mut queue = self.shared.queue.lock().expect("not poisoned");
            queue.closed = true;
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.work.notify_all();
        {
            let (stop, wake) = &self.shared.sweeper;
            *stop.lock().expect("not poisoned") = true;
            wake.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().expect("not poisoned"));
        for thread in threads {
            let _ = thread.join();
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.shared.catalog
    }

    pub fn commit_sizes(&self) -> CommitSizes {
        self.shared.stats.read()
    }

    /// The accounts of `subjects` when every one is known to this node
    /// already: an answer without the database, that never blocks.
    pub fn cached_accounts_of(&self, subjects: &[SubjectId]) -> Option<Vec<AccountId>> {
        let cache = self.shared.subjects.read().expect("not poisoned");
        subjects.iter().map(|subject| cache.get(subject).cloned()).collect()
    }

    /// The accounts of `subjects`, `None` for a subject no account has.
    pub fn accounts_of(&self, subjects: &[SubjectId]) -> Result<Vec<Option<AccountId>>, StoreError> {
        if let Some(known) = self.cached_accounts_of(subjects) {
            return Ok(known.into_iter().map(Some).collect());
        }
        let names: Vec<&str> = subjects.iter().map(SubjectId::as_str).collect();
        let found = self.shared.read(|client| lookup_subjects(client, &names))?;
        self.shared.remember_subjects(&found);
        Ok(subjects.iter().map(|subject| found.get(subject).cloned()).collect())
    }

    /// An account's committed state, as of now.
    pub fn account(&self, account: &AccountId) -> Result<Option<AccountState>, StoreError> {
        self.shared.read(|client| {
            let row = client
                .query_opt("SELECT state FROM accounts WHERE id = $1", &[&account.as_str()])
                .map_err(|error| unavailable(&error))?;
            row.map(|row| decode_state(row.get(0))).transpose()
        })
    }

    /// Stores a token's record (kept as given, JSON) for every node; an id
    /// already taken is refused.
    pub fn put_token(&self, id: &str, record: &str) -> Result<(), StoreError> {
        self.shared.read(|client| {
            let inserted = client
                .execute("INSERT INTO tokens (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", &[&id, &record])
                .map_err(|error| unavailable(&error))?;
            match inserted {
                1 => Ok(()),
                _ => Err(StoreError::Unavailable(format!("token id {id} is taken"))),
            }
        })
    }

    /// A token's record, as stored by [`PostgresStore::put_token`].
    pub fn token(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.shared.read(|client| {
            let row = client
                .query_opt("SELECT record FROM tokens WHERE id = $1", &[&id])
                .map_err(|error| unavailable(&error))?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    /// Whether the database answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.shared.read(|client| client.simple_query("SELECT 1").map(|_| ()).map_err(|error| unavailable(&error)))
    }

    /// How many accounts there are.
    pub fn account_count(&self) -> Result<u64, StoreError> {
        self.shared.read(|client| {
            let row = client.query_one("SELECT count(*) FROM accounts", &[]).map_err(|error| unavailable(&error))?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    /// Accounts with alerts or a recharge due by the database's clock, the
    /// most overdue first.
    pub fn due_work(&self, limit: usize) -> Result<Vec<AccountId>, StoreError> {
        self.shared.read(|client| {
            let rows = client
                .query(
                    "SELECT id FROM accounts WHERE work_at <= (extract(epoch FROM now()) * 1000)::int8
                     ORDER BY work_at LIMIT $1",
                    &[&(limit as i64)],
                )
                .map_err(|error| unavailable(&error))?;
            rows.iter()
                .map(|row| {
                    AccountId::new(row.get::<_, &str>(0))
                        .map_err(|error| StoreError::Unavailable(format!("a stored account id {error}")))
                })
                .collect()
        })
    }

    /// Balance updates decided but not settled yet, over every account.
    pub fn unsettled_updates(&self) -> Result<u64, StoreError> {
        self.shared.read(|client| {
            let row = client
                .query_one("SELECT count(*) FROM balance_updates WHERE NOT settled", &[])
                .map_err(|error| unavailable(&error))?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    /// Waits until every balance update is settled, or `timeout`.
    pub fn wait_settled(&self, timeout: StdDuration) -> Result<u64, StoreError> {
        let every = self.shared.config.sweep_every.max(StdDuration::from_millis(1));
        let mut checks = timeout.as_millis() / every.as_millis() + 1;
        loop {
            let unsettled = self.unsettled_updates()?;
            checks -= 1;
            if unsettled == 0 || checks == 0 {
                return Ok(unsettled);
            }
            std::thread::sleep(every);
        }
    }

    /// One page of an account's ledger: balance updates in sequence order,
    /// each with the monetization and usage events that explain it.
    pub fn ledger(&self, account: &AccountId, after: u64, limit: usize) -> Result<LedgerPage, StoreError> {
        let limit = limit.clamp(1, LEDGER_PAGE_ENTRIES_MAX);
        self.shared.read(|client| {
            let rows = client
                .query(
                    "SELECT b.body, b.settled, m.body, u.body, c.body
                     FROM balance_updates b
                     LEFT JOIN monetization_events m ON m.id = b.monetization_id
                     LEFT JOIN usage_events u ON u.id = m.usage_id
                     LEFT JOIN corrections c ON c.update_id = b.id
                     WHERE b.account = $1 AND b.sequence > $2
                     ORDER BY b.sequence LIMIT $3",
                    &[&account.as_str(), &(after.min(i64::MAX as u64) as i64), &(limit as i64 + 1)],
                )
                .map_err(|error| unavailable(&error))?;
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                entries.push(LedgerEntry {
                    update: decode(row.get(0), "balance update")?,
                    settled: row.get(1),
                    monetization: row
                        .get::<_, Option<&[u8]>>(2)
                        .map(|body| decode(body, "monetization event"))
                        .transpose()?,
                    usage: row.get::<_, Option<&[u8]>>(3).map(|body| decode(body, "usage event")).transpose()?,
                    correction: row.get::<_, Option<&[u8]>>(4).map(|body| decode(body, "correction")).transpose()?,
                });
            }
            let next = if entries.len() > limit {
                entries.truncate(limit);
                entries.last().map(|entry| entry.update.sequence)
            } else {
                None
            };
            Ok(LedgerPage { entries, next })
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// Runs `read` on a pooled reading connection; a connection that failed is dropped.
    fn read<T>(&self, read: impl Fn(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().expect("not poisoned").pop();
        let mut client = match pooled {
            Some(client) if !client.is_closed() => client,
            _ => connect(&self.config.url)?,
        };
        let mut result = read(&mut client);
        if result.is_err() && client.is_closed() {
            // A pooled connection the database closed (a restart): once more, on a new one.
            client = connect(&self.config.url)?;
            result = read(&mut client);
        }
        if result.is_ok() {
            self.readers.lock().expect("not poisoned").push(client);
        }
        result
    }

    /// Subjects never move between accounts: what was found stays true.
    fn remember_subjects(&self, found: &HashMap<SubjectId, AccountId>) {
        let mut cache = self.subjects.write().expect("not poisoned");
        cache.extend(found.iter().map(|(subject, account)| (subject.clone(), account.clone())));
    }

    fn enqueue(&self, account: AccountId, add: impl FnOnce(&mut Pending)) {
        self.queue.lock().expect("not poisoned").push(account, add);
        self.work.notify_one();
    }
}

impl crate::Store for PostgresStore {
    fn submit(&self, command: Command, reply: Reply) {
        if self.shared.closed.load(Ordering::SeqCst) {
            return reply(Err(StoreError::Unavailable("the store is closed".to_string())));
        }
        let account = match &command {
            Command::OpenAccount { account, .. }
            | Command::SetPlan { account, .. }
            | Command::PutSubject { account, .. }
            | Command::Capture { account, .. }
            | Command::Release { account, .. }
            | Command::AddGrant { account, .. }
            | Command::Billing { account, .. }
            | Command::AdvanceAccount(account) => Some(account.clone()),
            Command::Settle(_) => {
                return reply(Err(StoreError::Unavailable(
                    "the PostgreSQL store settles by itself, from the stored balance updates".to_string(),
                )));
            }
            Command::Decide(DecisionRequest { subject, .. }) | Command::Reserve(ReserveRequest { subject, .. }) => {
                self.shared.subjects.read().expect("not poisoned").get(subject).cloned()
            }
            Command::Advance => {
                return reply(Err(StoreError::Unavailable(
                    "the PostgreSQL store advances accounts by itself, one at a time".to_string(),
                )));
            }
        };
        let mut queue = self.shared.queue.lock().expect("not poisoned");
        if queue.closed {
            drop(queue);
            return reply(Err(StoreError::Unavailable("the store is closed".to_string())));
        }
        if queue.waiting >= self.shared.config.queue_depth_max {
            drop(queue);
            return reply(Err(StoreError::Unavailable("too many commands are waiting; retry later".to_string())));
        }
        queue.waiting += 1;
        match account {
            Some(account) => queue.push(account, |pending| pending.jobs.push((command, reply))),
            None => queue.unresolved.push((command, reply)),
        }
        drop(queue);
        self.shared.work.notify_one();
    }

    fn read<T: Send + 'static>(
        &self,
        _read: impl FnOnce(&Engine) -> T + Send + 'static,
        answer: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) {
        answer(Err(StoreError::Unavailable(
            "the PostgreSQL store holds no engine in memory; read one account at a time".to_string(),
        )))
    }
}

// ----- Workers -----

fn worker(shared: &Shared) {
    let mut client: Option<Connection> = None;
    loop {
        let task = {
            let mut queue = shared.queue.lock().expect("not poisoned");
            loop {
                let eager = queue.closed;
                if let Some(task) = queue.take(eager) {
                    break task;
                }
                if queue.closed && queue.ready.is_empty() {
                    return;
                }
                if queue.ready.is_empty() {
                    queue = shared.work.wait(queue).expect("not poisoned");
                    continue;
                }
                // Work waits, but little: give it a moment to grow. Each
                // new command wakes this worker, so it waits on until
                // enough accounts have work, the transaction in flight
                // ends, or the moment is over; not just for the next one.
                let (waited, _) = shared
                    .work
                    .wait_timeout_while(queue, GATHER_WAIT, |queue| {
                        !queue.closed
                            && queue.unresolved.is_empty()
                            && queue.transactions > 0
                            && queue.ready.len() < GATHER_ACCOUNTS_MIN
                    })
                    .expect("not poisoned");
                queue = waited;
                if let Some(task) = queue.take(true) {
                    break task;
                }
            }
        };
        if client.as_ref().is_some_and(|connection| !connection.usable()) {
            client = None;
        }
        let connected = match client.take() {
            Some(existing) => Ok(existing),
            None => Connection::open(&shared.config.url),
        };
        match task {
            Task::Resolve(jobs) => match connected {
                Ok(connected) => {
                    if resolve(shared, &connected, jobs) {
                        client = Some(connected);
                    }
                }
                Err(error) => {
                    for (_, reply) in jobs {
                        reply(Err(error.clone()));
                    }
                }
            },
            Task::Transaction(works) => {
                let accounts: Vec<AccountId> = works.iter().map(|work| work.account.clone()).collect();
                let replies = match connected {
                    Ok(mut connected) => {
                        let (replies, healthy) = run(shared, &mut connected, works);
                        if healthy {
                            client = Some(connected);
                        }
                        replies
                    }
                    Err(error) => works
                        .into_iter()
                        .flat_map(|work| work.jobs)
                        .map(|(_, reply)| (reply, Err(error.clone())))
                        .collect(),
                };
                shared.queue.lock().expect("not poisoned").finished(accounts.into_iter());
                shared.work.notify_all();
                for (reply, result) in replies {
                    reply(result);
                }
            }
        }
    }
}

/// Finds the accounts of subjects the cache does not know, then queues each
/// command under its account (or answers that the subject is unknown).
/// Returns whether the connection is still usable.
fn resolve(shared: &Shared, connection: &Connection, jobs: Vec<(Command, Reply)>) -> bool {
    let subject_of = |command: &Command| match command {
        Command::Decide(DecisionRequest { subject, .. }) | Command::Reserve(ReserveRequest { subject, .. }) => {
            subject.clone()
        }
        other => unreachable!("only decisions and reservations wait for their subject: {other:?}"),
    };
    let wanted: Vec<SubjectId> = jobs.iter().map(|(command, _)| subject_of(command)).collect();
    let names: Vec<&str> = wanted.iter().map(SubjectId::as_str).collect();
    let rows = connection.run(connection.client.query(&connection.statements.owners, &[&names]));
    let found = match rows.map_err(|error| unavailable(&error)).and_then(|rows| owners_from(&rows)) {
        Ok(found) => found,
        Err(error) => {
            for (_, reply) in jobs {
                reply(Err(error.clone()));
            }
            return connection.usable();
        }
    };
    shared.remember_subjects(&found);
    let mut queue = shared.queue.lock().expect("not poisoned");
    let mut unknown = Vec::new();
    for ((command, reply), subject) in jobs.into_iter().zip(wanted) {
        match found.get(&subject) {
            Some(account) => {
                queue.waiting += 1;
                queue.push(account.clone(), |pending| pending.jobs.push((command, reply)));
            }
            None => unknown.push((reply, subject)),
        }
    }
    drop(queue);
    shared.work.notify_all();
    for (reply, subject) in unknown {
        reply(Err(StoreError::Refused(Refusal::Core(CoreError::UnknownSubject(subject)))));
    }
    true
}

fn lookup_subjects(client: &mut Client, subjects: &[&str]) -> Result<HashMap<SubjectId, AccountId>, StoreError> {
    let rows = client
        .query("SELECT id, account FROM subjects WHERE id = ANY($1)", &[&subjects])
        .map_err(|error| unavailable(&error))?;
    owners_from(&rows)
}

/// Subjects and their accounts from rows of (subject, account).
fn owners_from(rows: &[postgres::Row]) -> Result<HashMap<SubjectId, AccountId>, StoreError> {
    rows.iter()
        .map(|row| {
            let subject = SubjectId::new(row.get(0)).map_err(|error| corrupt("subject id", error))?;
            let account = AccountId::new(row.get(1)).map_err(|error| corrupt("account id", error))?;
            Ok((subject, account))
        })
        .collect()
}

type Answer = (Reply, Result<Response, StoreError>);

/// Runs one transaction over `works`, again from the start when it lost a
/// race. Returns the answers, and whether the connection is still usable.
fn run(shared: &Shared, connection: &mut Connection, works: Vec<Work>) -> (Vec<Answer>, bool) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        if !connection.usable() {
            let lost = StoreError::Unavailable("the database connection was lost; nothing was recorded".to_string());
            let replies = works.into_iter().flat_map(|work| work.jobs).map(|(_, reply)| (reply, Err(lost.clone())));
            return (replies.collect(), false);
        }
        // A panic in the core or in decoding fails this batch, not the
        // worker: its accounts must be finished, or they would wait forever.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| transact(shared, connection, &works)))
            .unwrap_or_else(|_| {
                // Its transaction may still be open, holding row locks:
                // the connection goes, and the database rolls back.
                connection.broken = true;
                Err(Failure::Panic(StoreError::Unavailable(
                    "an internal error stopped the transaction; nothing was recorded".to_string(),
                )))
            });
        match outcome {
            Ok(Outcome { results, commands }) => {
                shared.stats.record(commands);
                let replies = works.into_iter().flat_map(|work| work.jobs).map(|(_, reply)| reply);
                return (replies.zip(results).collect(), true);
            }
            Err(Failure::Database(error) | Failure::Commit(error)) if lost_race(&error) && attempt < ATTEMPTS_MAX => {
                continue;
            }
            // Bad data of one account (a state that does not decode, a
            // refusal of the database, a panic) must not fail the others
            // batched with it: each account again, on its own. Nothing of
            // the failed transaction happened.
            Err(failure) if works.len() > 1 && failure.may_be_one_account() => {
                if matches!(failure, Failure::Panic(_))
                    && let Ok(fresh) = Connection::open(&shared.config.url)
                {
                    *connection = fresh;
                }
                let mut answers = Vec::new();
                for work in works {
                    answers.extend(run(shared, connection, vec![work]).0);
                }
                return (answers, connection.usable());
            }
            Err(failure) => {
                let (error, healthy) = match failure {
                    // The database said no: nothing of the transaction happened.
                    Failure::Database(error) | Failure::Commit(error) if error.as_db_error().is_some() => (
                        StoreError::Unavailable(format!("the database refused the transaction: {error}")),
                        connection.usable(),
                    ),
                    Failure::Database(error) => (unavailable(&error), false),
                    Failure::Commit(error) => (StoreError::Uncertain(format!("the database: {error}")), false),
                    Failure::Store(error) => (error, connection.usable()),
                    // The transaction was dropped mid-way: start again on a new connection.
                    Failure::Panic(error) => (error, false),
                };
                let replies =
                    works.into_iter().flat_map(|work| work.jobs).map(|(_, reply)| (reply, Err(error.clone())));
                return (replies.collect(), healthy);
            }
        }
    }
}

impl Failure {
    /// Whether the failure may come from one account's data rather than
    /// from the connection or the database as a whole.
    fn may_be_one_account(&self) -> bool {
        match self {
            Failure::Database(error) => error.as_db_error().is_some(),
            Failure::Store(_) | Failure::Panic(_) => true,
            Failure::Commit(_) => false,
        }
    }
}

enum Failure {
    Database(postgres::Error),
    /// Failed at `COMMIT`: without an answer from the database, the
    /// transaction may have committed.
    Commit(postgres::Error),
    Store(StoreError),
    Panic(StoreError),
}

impl From<postgres::Error> for Failure {
    fn from(error: postgres::Error) -> Failure {
        Failure::Database(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

struct Outcome {
    /// One per job, in the order of the works and their jobs.
    results: Vec<Result<Response, StoreError>>,
    commands: usize,
}

fn idempotency_key(command: &Command) -> Option<&IdempotencyKey> {
    match command {
        Command::Decide(request) => request.idempotency_key.as_ref(),
        Command::Reserve(request) => Some(&request.idempotency_key),
        Command::Capture { request, .. } => Some(&request.idempotency_key),
        Command::Release { request, .. } => Some(&request.idempotency_key),
        Command::AddGrant { request, .. } => Some(&request.idempotency_key),
        _ => None,
    }
}

/// Runs one transaction over `works`. Whatever fails, no transaction
/// stays open on the connection.
fn transact(shared: &Shared, connection: &mut Connection, works: &[Work]) -> Result<Outcome, Failure> {
    let outcome = transact_once(shared, connection, works);
    // After a COMMIT, or outside a transaction, ROLLBACK only warns.
    if outcome.is_err() && connection.usable() && connection.run(connection.client.batch_execute("ROLLBACK")).is_err() {
        connection.broken = true;
    }
    outcome
}

/// Two round trips to the database: every read at once, then every write
/// with the `COMMIT`. The database runs what it is sent in order, so each
/// read after the row locks sees what the previous holder of the locks
/// committed (read committed on purpose).
fn transact_once(shared: &Shared, connection: &Connection, works: &[Work]) -> Result<Outcome, Failure> {
    let catalog = &shared.catalog;
    let Connection { client, statements, .. } = connection;
    let mut ids: Vec<&str> = works.iter().map(|work| work.account.as_str()).collect();
    ids.sort_unstable();
    // The idempotency keys the commands name.
    let mut key_accounts = Vec::new();
    let mut key_names = Vec::new();
    for work in works {
        for (command, _) in &work.jobs {
            if let Some(key) = idempotency_key(command) {
                key_accounts.push(work.account.as_str());
                key_names.push(key.as_str());
            }
        }
    }
    // The accounts whose balance updates wait for settlement.
    let settle_ids: Vec<&str> = works.iter().filter(|work| work.settle).map(|work| work.account.as_str()).collect();
    // Subjects that new PutSubject commands name: one account each, across the database.
    let put_subjects: Vec<&str> = works
        .iter()
        .flat_map(|work| &work.jobs)
        .filter_map(|(command, _)| match command {
            Command::PutSubject { subject, .. } => Some(subject.as_str()),
            _ => None,
        })
        .collect();

    // Begin, lock the accounts in id order with the database's clock, and
    // read what the commands need.
    let lock_params: Params = &[&ids];
    let keys_params: Params = &[&key_accounts, &key_names];
    let unsettled_params: Params = &[&settle_ids, &SETTLE_PER_TRANSACTION_MAX];
    let owners_params: Params = &[&put_subjects];
    let (begun, locked, keys, unsettled, owners) = connection.run(async {
        tokio::join!(
            client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
            client.query(&statements.lock, lock_params),
            query_unless_empty(client, &statements.keys, keys_params, key_names.is_empty()),
            query_unless_empty(client, &statements.unsettled, unsettled_params, settle_ids.is_empty()),
            query_unless_empty(client, &statements.owners, owners_params, put_subjects.is_empty()),
        )
    });
    begun?;
    let (rows, keys, unsettled, owners) = (locked?, keys?, unsettled?, owners?);
    let mut now_millis = match rows.first() {
        Some(row) => row.get::<_, i64>(2),
        None => connection.run(client.query_one(&statements.clock, &[]))?.get(0),
    };
    let mut before: HashMap<AccountId, AccountState> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let state = decode_state(row.get(1))?;
        now_millis = now_millis.max(row.get(2));
        before.insert(state.id().clone(), state);
    }
    let now = Timestamp::from_millis(now_millis.max(0) as u64);

    // Put back the idempotency keys the commands name.
    let mut states: HashMap<AccountId, AccountState> = before.clone();
    let mut restored: HashMap<(AccountId, IdempotencyKey), StoredKey> = HashMap::new();
    for row in &keys {
        let account = AccountId::new(row.get(0)).map_err(|error| corrupt("account id", error))?;
        let key = IdempotencyKey::new(row.get(1)).map_err(|error| corrupt("idempotency key", error))?;
        let fingerprint: &[u8] = row.get(2);
        let fingerprint =
            u128::from_le_bytes(fingerprint.try_into().map_err(|_| corrupt("fingerprint", "not 16 bytes"))?);
        let stored = StoredKey {
            key: key.clone(),
            fingerprint,
            expires_at: Timestamp::from_millis(row.get::<_, i64>(3).max(0) as u64),
            answer: Box::from(row.get::<_, &[u8]>(4)),
        };
        if let Some(state) = states.get_mut(&account) {
            state.restore_keys([stored.clone()]);
            restored.insert((account, key), stored);
        }
    }

    // The balance updates waiting for settlement, in order.
    let mut to_settle: HashMap<AccountId, Vec<BalanceUpdate>> = HashMap::new();
    for row in &unsettled {
        let update: BalanceUpdate = decode(row.get(0), "balance update")?;
        to_settle.entry(update.account.clone()).or_default().push(update);
    }
    let mut owners = owners_from(&owners)?;

    // The core applies everything.
    let mut engine = Engine::from_accounts(catalog.clone(), states.into_values().collect());
    let mut rows = Rows::default();
    let mut settled = Vec::new();
    let mut results = Vec::new();
    let mut commands = 0;
    for work in works {
        if work.advance && before.contains_key(&work.account) {
            let response =
                apply(&mut engine, &Command::AdvanceAccount(work.account.clone()), now).map_err(StoreError::Refused)?;
            rows.events(response.events());
        }
        for update in to_settle.remove(&work.account).unwrap_or_default() {
            let id = update.id.to_string();
            match apply(&mut engine, &Command::Settle(update), now) {
                Ok(response) => rows.events(response.events()),
                // Out of step with the state: left unsettled, for
                // reconciliation to name, rather than blocking the account.
                Err(_) => break,
            }
            settled.push(id);
        }
        for (command, _) in &work.jobs {
            commands += 1;
            if let Command::PutSubject { subject, account, .. } = command
                && let Some(owner) = owners.get(subject)
                && owner != account
            {
                results.push(Err(StoreError::Refused(Refusal::Core(CoreError::SubjectInOtherAccount {
                    subject: subject.clone(),
                    account: owner.clone(),
                }))));
                continue;
            }
            match apply(&mut engine, command, now) {
                Ok(mut response) => {
                    rows.events(&response.take_events());
                    if let Command::PutSubject { subject, account, .. } = command
                        && !owners.contains_key(subject)
                    {
                        owners.insert(subject.clone(), account.clone());
                        rows.subject(subject, account);
                    }
                    results.push(Ok(response));
                }
                Err(refusal) => results.push(Err(StoreError::Refused(refusal))),
            }
        }
    }

    // Write what changed, in one statement.
    for mut state in engine.into_accounts() {
        for stored in state.take_keys() {
            // Unchanged keys stay as they are; a key whose retention ended
            // and that a new request took again is written anew.
            if restored.get(&(state.id().clone(), stored.key.clone())) != Some(&stored) {
                rows.key(state.id(), stored);
            }
        }
        match before.get(state.id()) {
            Some(old) if *old == state => {}
            Some(_) => rows.account(&state, false),
            None => rows.account(&state, true),
        }
    }
    let params = rows.params();
    // Set when the write fails before it is sent (its parameters do not
    // encode): then no COMMIT may follow, or the rest would commit alone.
    let unsent = std::cell::Cell::new(false);
    let (written, marked, committed) = connection.run(async {
        // Polled in this order: each request is sent when first polled.
        tokio::join!(
            biased;
            async {
                let mut write = std::pin::pin!(client.execute(&statements.write, &params));
                match std::future::poll_fn(|context| Poll::Ready(write.as_mut().poll(context))).await {
                    Poll::Ready(result) => {
                        unsent.set(true);
                        result
                    }
                    Poll::Pending => write.await,
                }
            },
            // Apart, and only when there is something to mark: with an
            // empty list the generic plan would still scan the table.
            async {
                if settled.is_empty() { Ok(0) } else { client.execute(&statements.mark_settled, &[&settled]).await }
            },
            async { if unsent.get() { Ok(()) } else { client.batch_execute("COMMIT").await } },
        )
    });
    // A write the database refused aborted the transaction, and the COMMIT
    // behind it rolled back; a write without an answer may have committed.
    for result in [written, marked] {
        if let Err(error) = result {
            let certain = error.as_db_error().is_some() || unsent.get();
            return Err(if certain { Failure::Database(error) } else { Failure::Commit(error) });
        }
    }
    committed.map_err(Failure::Commit)?;
    Ok(Outcome { results, commands })
}

type Params<'a> = &'a [&'a (dyn postgres::types::ToSql + Sync)];

/// The rows of `statement`, or none without asking when `empty` (its lists
/// are empty).
async fn query_unless_empty(
    client: &tokio_postgres::Client,
    statement: &Statement,
    params: Params<'_>,
    empty: bool,
) -> Result<Vec<postgres::Row>, postgres::Error> {
    if empty { Ok(Vec::new()) } else { client.query(statement, params).await }
}

fn millis(at: Timestamp) -> i64 {
    at.millis().min(i64::MAX as u64) as i64
}

/// The statements a worker runs, prepared once per connection.
struct Statements {
    lock: Statement,
    clock: Statement,
    keys: Statement,
    unsettled: Statement,
    owners: Statement,
    write: Statement,
    mark_settled: Statement,
}

/// A worker's connection with its prepared statements, and the runtime it
/// runs on: requests sent together go out at once (pipelined), and their
/// answers come back in one round trip.
struct Connection {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    statements: Statements,
    /// A failed transaction could not be rolled back: the connection must go.
    broken: bool,
}

impl Connection {
    fn open(url: &str) -> Result<Connection, StoreError> {
        let config = connection_config(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| StoreError::Unavailable(format!("cannot start a database runtime: {error}")))?;
        let (client, connection) =
            runtime.block_on(config.connect(tokio_postgres::NoTls)).map_err(|error| unavailable(&error))?;
        // The connection's task runs whenever the worker waits for an answer.
        runtime.spawn(connection);
        let prepare = |sql: &str| runtime.block_on(client.prepare(sql)).map_err(|error| unavailable(&error));
        let statements = Statements {
            // Locks the accounts in id order and reads the database's clock.
            lock: prepare(
                "SELECT id, state, (extract(epoch FROM clock_timestamp()) * 1000)::int8
                 FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )?,
            clock: prepare("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8")?,
            // One primary-key lookup per (account, key) pair: the `OFFSET 0`
            // keeps the planner from hashing the whole table instead.
            keys: prepare(
                "SELECT k.account, k.key, k.fingerprint, k.expires_at, k.answer
                 FROM unnest($1::text[], $2::text[]) AS wanted(account, key)
                 CROSS JOIN LATERAL (
                    SELECT * FROM idempotency_keys
                    WHERE account = wanted.account AND key = wanted.key OFFSET 0) k",
            )?,
            unsettled: prepare(
                "SELECT body FROM (
                    SELECT body, account, sequence,
                           row_number() OVER (PARTITION BY account ORDER BY sequence) AS position
                    FROM balance_updates WHERE account = ANY($1) AND NOT settled
                 ) waiting WHERE position <= $2 ORDER BY account, sequence",
            )?,
            owners: prepare("SELECT id, account FROM subjects WHERE id = ANY($1)")?,
            write: prepare(WRITE)?,
            mark_settled: prepare("UPDATE balance_updates SET settled = true WHERE id = ANY($1::text[]::uuid[])")?,
        };
        Ok(Connection { runtime, client, statements, broken: false })
    }

    /// Runs requests on this connection and waits for their answers.
    fn run<F: std::future::Future>(&self, requests: F) -> F::Output {
        self.runtime.block_on(requests)
    }

    fn usable(&self) -> bool {
        !self.broken && !self.client.is_closed()
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("events encode")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| corrupt(what, error))
}

fn encode_state(state: &AccountState) -> Vec<u8> {
    postcard::to_stdvec(state).expect("account states encode")
}

fn decode_state(bytes: &[u8]) -> Result<AccountState, StoreError> {
    decode(bytes, "account state")
}

// ----- The sweeper -----

fn sweep(shared: &Shared) {
    let mut client: Option<Client> = None;
    let cleanup_every = (KEY_CLEANUP_EVERY.as_millis() / shared.config.sweep_every.as_millis().max(1)).max(1) as u64;
    let mut rounds = 0u64;
    let mut after = String::new();
    loop {
        {
            let (stop, wake) = &shared.sweeper;
            let stopped = stop.lock().expect("not poisoned");
            let (stopped, _) = wake.wait_timeout(stopped, shared.config.sweep_every).expect("not poisoned");
            if *stopped {
                return;
            }
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(&shared.config.url).ok();
        }
        let Some(connected) = client.as_mut() else { continue };
        rounds += 1;
        match sweep_once(shared, connected, &after, rounds.is_multiple_of(cleanup_every)) {
            Ok(next) => after = next,
            Err(_) => client = None,
        }
    }
}

/// One round: queues settlement for accounts with unsettled updates (from
/// `after`, the last account of the previous round, so that every account
/// gets its turn however many there are), and advancing for accounts whose
/// deadline passed, oldest first. Returns where the next round starts.
fn sweep_once(shared: &Shared, client: &mut Client, after: &str, cleanup: bool) -> Result<String, postgres::Error> {
    let unsettled = client.query(
        "SELECT DISTINCT account FROM balance_updates WHERE NOT settled AND account > $1 ORDER BY account LIMIT $2",
        &[&after, &SWEEP_ACCOUNTS_MAX],
    )?;
    let due = client.query(
        // now(), not clock_timestamp(): a stable time can be an index condition.
        "SELECT id FROM accounts WHERE due_at <= (extract(epoch FROM now()) * 1000)::int8
         ORDER BY due_at LIMIT $1",
        &[&SWEEP_ACCOUNTS_MAX],
    )?;
    // A short page means the end: the next round starts from the beginning.
    let next = match unsettled.last() {
        Some(row) if unsettled.len() as i64 == SWEEP_ACCOUNTS_MAX => row.get::<_, &str>(0).to_string(),
        _ => String::new(),
    };
    for row in &unsettled {
        if let Ok(account) = AccountId::new(row.get(0)) {
            shared.enqueue(account, |pending| pending.settle = true);
        }
    }
    for row in &due {
        if let Ok(account) = AccountId::new(row.get(0)) {
            shared.enqueue(account, |pending| pending.advance = true);
        }
    }
    if cleanup {
        // Forgetting a key changes no money: its events were recorded with
        // its answer. In bounded statements, as long as full ones come back.
        for _ in 0..KEY_CLEANUP_STATEMENTS_MAX {
            let deleted = client.execute(
                "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM idempotency_keys
                    WHERE expires_at <= (extract(epoch FROM now()) * 1000)::int8 LIMIT $1))",
                &[&KEY_CLEANUP_ROWS_MAX],
            )?;
            if deleted < KEY_CLEANUP_ROWS_MAX as u64 {
                break;
            }
        }
    }
    Ok(next)
}

// ----- Migrations -----

fn migrate(client: &mut Client, catalog: &Catalog) -> Result<(), StoreError> {
    let failed = |error: postgres::Error| StoreError::Unavailable(format!("migrating the schema: {error}"));
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(failed)?;
    let result = (|| {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS headroom_migrations (
                    version int PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .map_err(failed)?;
        for (version, sql) in MIGRATIONS {
            let mut transaction = client.transaction().map_err(failed)?;
            let applied = transaction
                .query_opt("SELECT 1 FROM headroom_migrations WHERE version = $1", &[version])
                .map_err(failed)?
                .is_some();
            if !applied {
                transaction.batch_execute(sql).map_err(failed)?;
                transaction
                    .execute("INSERT INTO headroom_migrations (version) VALUES ($1)", &[version])
                    .map_err(failed)?;
            }
            transaction.commit().map_err(failed)?;
        }
        // The first node records them; the others must agree.
        let mut recorded = |key: &str, value: &str| -> Result<String, StoreError> {
            let row = client
                .query_one(
                    "WITH inserted AS (
                        INSERT INTO headroom_settings (key, value) VALUES ($1, $2)
                        ON CONFLICT (key) DO NOTHING RETURNING value)
                     SELECT value FROM inserted UNION ALL SELECT value FROM headroom_settings WHERE key = $1",
                    &[&key, &value],
                )
                .map_err(failed)?;
            Ok(row.get(0))
        };
        let format = recorded("format", STATE_FORMAT)?;
        if format != STATE_FORMAT {
            return Err(StoreError::Unavailable(format!(
                "the database holds states in format {format}, this headroom reads format {STATE_FORMAT}"
            )));
        }
        if recorded("catalog", catalog.source())? != catalog.source() {
            return Err(StoreError::CatalogChanged { path: "headroom_settings.catalog".into() });
        }
        Ok(())
    })();
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).map_err(failed);
    result.and(unlocked.map(|_| ()))
}
