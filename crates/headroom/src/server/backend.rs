//! The store behind the server: the embedded one (one process, one data
//! directory) or PostgreSQL (many stateless nodes over one database). The
//! handlers speak to this, never to a store directly, so that every route
//! behaves the same on both.

use std::sync::Arc;

use headroom_core::*;
use headroom_store::ledger::LedgerPage;
use headroom_store::{Command, EmbeddedStore, PostgresStore, Reply, Response, Store, StoreError};

use super::metrics::StoreFigures;

#[derive(Clone)]
pub enum Backend {
    Embedded { store: Arc<EmbeddedStore>, data_dir: Arc<std::path::PathBuf> },
    Postgres(Arc<PostgresStore>),
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store stopped".to_string())
}

/// Runs a blocking read of the PostgreSQL store off the async workers.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(read).await.unwrap_or_else(|_| Err(stopped()))
}

impl Backend {
    /// Hands `command` over; `reply` is called once it is durable or refused.
    pub fn submit(&self, command: Command, reply: Reply) {
        match self {
            Backend::Embedded { store, .. } => store.submit(command, reply),
            Backend::Postgres(store) => store.submit(command, reply),
        }
    }

    /// Runs a command; resolves once it is durable (or refused).
    pub async fn execute(&self, command: Command) -> Result<Response, StoreError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.submit(
            command,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// The account of each subject, `None` for an unknown subject.
    pub async fn accounts_of(&self, subjects: Vec<SubjectId>) -> Result<Vec<Option<AccountId>>, StoreError> {
        match self {
            Backend::Embedded { store, .. } => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                store.read(
                    move |engine| subjects.iter().map(|subject| engine.account_of(subject).ok().cloned()).collect(),
                    move |answer| {
                        let _ = sender.send(answer);
                    },
                );
                receiver.await.unwrap_or_else(|_| Err(stopped()))
            }
            Backend::Postgres(store) => {
                // Subjects never move: once known, no database and no thread hop.
                if let Some(known) = store.cached_accounts_of(&subjects) {
                    return Ok(known.into_iter().map(Some).collect());
                }
                let store = store.clone();
                blocking(move || store.accounts_of(&subjects)).await
            }
        }
    }

    /// Reads one account's durable state; `None` if there is no such account.
    pub async fn with_account<T: Send + 'static>(
        &self,
        account: AccountId,
        read: impl FnOnce(&Catalog, &AccountState) -> T + Send + 'static,
    ) -> Result<Option<T>, StoreError> {
        match self {
            Backend::Embedded { store, .. } => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                store.read(
                    move |engine| engine.account(&account).map(|state| read(engine.catalog(), state)),
                    move |answer| {
                        let _ = sender.send(answer);
                    },
                );
                receiver.await.unwrap_or_else(|_| Err(stopped()))
            }
            Backend::Postgres(store) => {
                let store = store.clone();
                blocking(move || Ok(store.account(&account)?.map(|state| read(store.catalog(), &state)))).await
            }
        }
    }

    /// Accounts with alerts or a recharge due now, at most `limit`.
    pub async fn due_work(&self, limit: usize) -> Result<Vec<AccountId>, StoreError> {
        match self {
            Backend::Embedded { store, .. } => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let now = Clock::now(&headroom_store::SystemClock);
                store.read(
                    move |engine| engine.due_work(now, limit),
                    move |answer| {
                        let _ = sender.send(answer);
                    },
                );
                receiver.await.unwrap_or_else(|_| Err(stopped()))
            }
            Backend::Postgres(store) => {
                let store = store.clone();
                blocking(move || store.due_work(limit)).await
            }
        }
    }

    /// One page of an account's ledger, only what is durable.
    pub async fn ledger(&self, account: AccountId, after: u64, limit: usize) -> Result<LedgerPage, StoreError> {
        match self {
            Backend::Embedded { store, data_dir } => {
                let directory = data_dir.clone();
                let durable = store.durable_batch();
                blocking(move || headroom_store::ledger::read(&directory, &account, after, limit, durable)).await
            }
            Backend::Postgres(store) => {
                let store = store.clone();
                blocking(move || store.ledger(&account, after, limit)).await
            }
        }
    }

    /// What `/metrics` shows of the store.
    pub async fn figures(&self) -> Result<StoreFigures, StoreError> {
        let (unsettled_updates, lag_batches, sizes) = match self {
            Backend::Embedded { store, .. } => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                store.read(
                    |engine| engine.accounts().map(AccountState::unsettled).sum::<u64>(),
                    move |answer| {
                        let _ = sender.send(answer);
                    },
                );
                let unsettled = receiver.await.unwrap_or_else(|_| Err(stopped()))?;
                (unsettled, store.settlement_batches_behind(), store.commit_sizes())
            }
            Backend::Postgres(store) => {
                let reading = store.clone();
                let unsettled = blocking(move || reading.unsettled_updates()).await?;
                (unsettled, 0, store.commit_sizes())
            }
        };
        Ok(StoreFigures {
            unsettled_updates,
            lag_batches,
            commit_sizes: sizes.buckets,
            commits: sizes.commits,
            committed_commands: sizes.commands,
        })
    }

    /// Why the store cannot take commands now, if it cannot.
    pub async fn unready(&self) -> Option<String> {
        match self {
            Backend::Embedded { store, .. } => {
                store.has_failed().then(|| "storage failed; restart to recover from the log".to_string())
            }
            Backend::Postgres(store) => {
                let store = store.clone();
                blocking(move || store.ping()).await.err().map(|error| error.to_string())
            }
        }
    }

    /// Whether the store moves idle accounts to now by itself; otherwise
    /// the server sends `Command::Advance` now and then.
    pub fn advances_itself(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }

    /// Answers what is in flight and stops the store.
    pub fn close(&self) {
        match self {
            Backend::Embedded { store, .. } => store.close(),
            Backend::Postgres(store) => store.close(),
        }
    }
}
