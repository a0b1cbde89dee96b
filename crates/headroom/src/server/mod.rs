//! `headroom serve`: the HTTP API over the embedded store or PostgreSQL.
//!
//! A request is parsed and checked on a tokio worker, becomes one
//! [`Command`], and is handed to the store (see [`backend`]), which makes
//! it durable (group commit) before the answer comes back through a
//! oneshot channel. Handlers never block on the disk or the database.

pub mod api;
pub mod auth;
pub mod backend;
pub mod billing;
pub mod body;
pub mod error;
pub mod metrics;
pub mod routes;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use headroom_core::*;
use headroom_store::{
    Command, EmbeddedStore, PostgresConfig, PostgresStore, Response, Store, StoreConfig, StoreError, SystemClock,
};

use auth::{AdminToken, Tokens};
use backend::Backend;
use metrics::Metrics;

/// How long in-flight requests may take to finish after SIGTERM or SIGINT.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(25);

/// How often idle accounts are moved to now, which expires their
/// reservations and grants (an active account does so on every request).
pub const ADVANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A PostgreSQL URL: keep the state there instead of in `data_dir`
    /// (which then holds only this node's tokens).
    pub store: Option<String>,
    /// Connections to PostgreSQL that run transactions.
    pub postgres_connections: usize,
    /// `None`: the demo catalog compiled in.
    pub catalog: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Create the demo account on first start.
    pub demo: bool,
    /// From `HEADROOM_ADMIN_TOKEN` (never a flag: flags show in `ps`).
    pub admin_token: Option<String>,
    /// Where alerts go: a TOML file of `[[endpoints]]`.
    pub alerts: Option<PathBuf>,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Backend,
    pub catalog: Arc<Catalog>,
    pub payments: Arc<billing::Payments>,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Runs a command; resolves once it is durable (or refused).
    pub async fn execute(&self, command: Command) -> Result<Response, StoreError> {
        self.store.execute(command).await
    }
}

/// The demo account that the README's first curl uses.
pub const DEMO_ACCOUNT: &str = "demo";
pub const DEMO_SUBJECT: &str = "demo-user";
pub const DEMO_CREDITS_MICROS: u64 = 25_000_000;

/// Runs the server until SIGTERM or SIGINT; then stops accepting, finishes
/// what is in flight, syncs and returns.
pub fn serve(config: ServeConfig) -> Result<(), String> {
    init_logging(config.log_format);
    let catalog = match &config.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
            Catalog::from_toml(&text).map_err(|error| format!("{}: {error}", path.display()))?
        }
        None => Catalog::demo(),
    };
    let catalog = Arc::new(catalog);
    let endpoints = match &config.alerts {
        Some(path) => crate::payments::alerts::read_endpoints(path)?,
        None => Vec::new(),
    };
    let payments = Arc::new(billing::Payments::configure(endpoints)?);
    let store = match &config.store {
        None => {
            let store_config = StoreConfig { refuse_when_busy: true, ..StoreConfig::new(&config.data_dir) };
            let store = EmbeddedStore::open(store_config, catalog.clone(), Arc::new(SystemClock))
                .map_err(|error| error.to_string())?;
            Backend::Embedded { store: Arc::new(store), data_dir: Arc::new(config.data_dir.clone()) }
        }
        Some(url) => {
            let postgres_config =
                PostgresConfig { connections: config.postgres_connections.max(1), ..PostgresConfig::new(url) };
            let store = PostgresStore::open(postgres_config, catalog.clone())
                .map_err(|error| format!("cannot open the PostgreSQL store: {error}"))?;
            Backend::Postgres(Arc::new(store))
        }
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|error| format!("cannot create {}: {error}", config.data_dir.display()))?;
    let (tokens, admin) = Tokens::open(&config.data_dir, config.admin_token.as_deref())?;
    let tokens = match &store {
        Backend::Postgres(shared) => tokens.shared_through(shared.clone()),
        Backend::Embedded { .. } => tokens,
    };
    if let AdminToken::Generated(token) = &admin {
        let path = config.data_dir.join(auth::ADMIN_TOKEN_FILE);
        let shown = writeln!(
            std::io::stdout(),
            "admin token (shown once; only its hash is kept in {}):\n{token}",
            path.display()
        )
        .and_then(|()| std::io::stdout().flush());
        if let Err(error) = shown {
            // Nobody saw it: forget it, so that the next start makes another.
            let _ = std::fs::remove_file(&path);
            return Err(format!("cannot show the new admin token on standard output: {error}"));
        }
    }
    if config.demo {
        match &store {
            Backend::Embedded { store, .. } => create_demo(store.as_ref(), |store| {
                store.query(|engine| {
                    let demo = engine.account(&AccountId::new(DEMO_ACCOUNT).expect("a valid id"));
                    (engine.accounts().count() as u64, demo.is_some_and(demo_complete))
                })
            })?,
            Backend::Postgres(store) => create_demo(store.as_ref(), |store| {
                let demo = store.account(&AccountId::new(DEMO_ACCOUNT).expect("a valid id"))?;
                Ok((store.account_count()?, demo.as_ref().is_some_and(demo_complete)))
            })?,
        }
    }
    let state = AppState {
        store: store.clone(),
        catalog,
        payments,
        tokens: Arc::new(tokens),
        metrics: Arc::new(Metrics::default()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("headroom-http")
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", config.listen))?;
        let address = listener.local_addr().map_err(|error| error.to_string())?;
        let backend = if config.store.is_some() { "postgres" } else { "embedded" };
        tracing::info!(%address, data_dir = %config.data_dir.display(), store = backend, "listening");
        // A plain line for people and scripts: where to send requests.
        println!("headroom listening on http://{address}");
        let advance = tokio::spawn(advance_periodically(state.clone()));
        let worker = tokio::spawn(billing::work(state.clone()));

        let app = routes::router(state.clone());
        let (stopping, stopped) = tokio::sync::oneshot::channel();
        let signalled = async move {
            shutdown_signal().await;
            let _ = stopping.send(());
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(signalled).into_future();
        // In-flight requests get a grace period, not forever: a client that
        // never finishes its body must not keep the process alive.
        let deadline = async move {
            match stopped.await {
                Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                Err(_) => std::future::pending().await,
            }
        };
        let served = tokio::select! {
            served = server => served.map_err(|error| format!("the server failed: {error}")),
            () = deadline => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight after the grace period; stopping");
                Ok(())
            }
        };
        advance.abort();
        worker.abort();
        served
    });
    // In-flight requests are answered; now settle what was decided and sync.
    tracing::info!("stopping: closing the store");
    store.close();
    tracing::info!("stopped");
    served
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether the demo account has its subject and its credits.
fn demo_complete(account: &AccountState) -> bool {
    account.subjects().any(|subject| subject.as_str() == DEMO_SUBJECT)
        && account.wallet().grant_index(&GrantId::new("demo-credits").expect("a valid id")).is_some()
}

/// On the first start (no accounts), the demo account with one subject and
/// some purchased credits. A first start that stopped between the steps (a
/// crash) is completed on the next start: every step is idempotent.
/// `survey` tells how many accounts there are and whether the demo is complete.
fn create_demo<S: Store>(store: &S, survey: impl FnOnce(&S) -> Result<(u64, bool), StoreError>) -> Result<(), String> {
    let (accounts, demo_done) = survey(store).map_err(|error| error.to_string())?;
    let halfway = accounts == 1 && !demo_done;
    if !(accounts == 0 || halfway) {
        return Ok(());
    }
    let account = AccountId::new(DEMO_ACCOUNT).expect("a valid id");
    let commands = [
        Command::OpenAccount {
            account: account.clone(),
            plan: PlanId::new("plus").expect("a valid id"),
            overdraft: None,
        },
        Command::PutSubject {
            subject: SubjectId::new(DEMO_SUBJECT).expect("a valid id"),
            account: account.clone(),
            plan: None,
        },
        Command::AddGrant {
            account,
            request: GrantRequest {
                grant: GrantId::new("demo-credits").expect("a valid id"),
                kind: GrantKind::Purchase,
                credits: Credits::from_micros(DEMO_CREDITS_MICROS),
                priority: 0,
                expires_at: None,
                idempotency_key: IdempotencyKey::new("demo-credits").expect("a valid key"),
            },
        },
    ];
    for command in commands {
        match store.execute(command) {
            Ok(_)
            | Err(StoreError::Refused(headroom_store::Refusal::Core(
                CoreError::AccountExists(_) | CoreError::GrantExists(_),
            ))) => {}
            Err(error) => return Err(format!("creating the demo account failed: {error}")),
        }
    }
    tracing::info!(account = DEMO_ACCOUNT, subject = DEMO_SUBJECT, "created the demo account");
    Ok(())
}

async fn advance_periodically(state: AppState) {
    if state.store.advances_itself() {
        return;
    }
    let mut interval = tokio::time::interval(ADVANCE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = state.execute(Command::Advance).await {
            tracing::warn!(%error, "moving accounts to now failed");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = interrupt.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
}
