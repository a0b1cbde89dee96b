use std::process::ExitCode;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use headroom::client::{Client, ClientError, GrantArguments};
use headroom::server::{self, LogFormat, ServeConfig};
use headroom::simulate::{self, SimulationConfig};

/// mimalloc, as `headroom_alloc` says why.
#[global_allocator]
static ALLOCATOR: headroom_alloc::Allocator = headroom_alloc::Allocator;

/// Headroom: a real-time access engine. One decision per request: how much
/// of this is allowed, and from where?
#[derive(Parser)]
#[command(name = "headroom", version)]
struct Command {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Run the HTTP API over an embedded data directory. With no arguments:
    /// 127.0.0.1:8080, ./headroom-data, the demo catalog, and on first start
    /// a demo account `demo` (plan plus, 25 credits) with subject `demo-user`.
    ///
    /// The admin token comes from the environment variable
    /// HEADROOM_ADMIN_TOKEN (16 characters or more; never a flag, flags show in
    /// `ps`). When it is unset, one is made on the first start, printed once,
    /// and only its hash is kept in <data-dir>/admin.token.
    Serve {
        /// Address and port to listen on (port 0: any free port, printed at start).
        #[arg(long, env = "HEADROOM_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where decisions, events and the ledger are kept (made if missing).
        /// With --store, only this node's tokens are kept here.
        #[arg(long, env = "HEADROOM_DATA_DIR", default_value = "headroom-data")]
        data_dir: PathBuf,
        /// Keep the state in PostgreSQL instead (`postgres://user:password@host:port/database`),
        /// so that several nodes can serve the same accounts. The schema is
        /// made or migrated on start.
        #[arg(long, env = "HEADROOM_STORE")]
        store: Option<String>,
        /// With --store: connections that run transactions (default: one per
        /// core; fewer connections make bigger group commits).
        #[arg(long, env = "HEADROOM_POSTGRES_CONNECTIONS", default_value_t = headroom_store::postgres::default_connections())]
        postgres_connections: usize,
        /// The catalog (features, plans, windows) in TOML; default: the demo
        /// catalog compiled in (examples/catalog.toml). A data directory keeps
        /// the catalog it was started with.
        #[arg(long, env = "HEADROOM_CATALOG")]
        catalog: Option<PathBuf>,
        /// Log lines for people (`human`) or for log pipelines (`json`), on stderr.
        #[arg(long, env = "HEADROOM_LOG_FORMAT", value_enum, default_value = "human")]
        log_format: LogFormat,
        /// Do not create the demo account on first start.
        #[arg(long, env = "HEADROOM_NO_DEMO")]
        no_demo: bool,
        /// Where alerts (balance.low, credits.granted, limit.reached…) are
        /// sent: a TOML file of `[[endpoints]]` with `url`, `secret` and an
        /// optional `events` filter. Payments come from HEADROOM_STRIPE_SECRET_KEY,
        /// HEADROOM_STRIPE_WEBHOOK_SECRET and HEADROOM_STRIPE_API_BASE.
        #[arg(long, env = "HEADROOM_ALERTS")]
        alerts: Option<PathBuf>,
    },
    /// Load a server over HTTP/1.1 keep-alive connections, closed loop, and
    /// report throughput, latency percentiles, errors and the server's CPU
    /// time per decision. Starts its own server on a fresh data directory
    /// unless --server is given (with the admin token in HEADROOM_TOKEN).
    Bench {
        /// A running server's base URL; default: start one.
        #[arg(long)]
        server: Option<String>,
        /// What to load, one after the other with the same workload:
        /// `headroom` (the embedded store) and its baselines `bare` (an HTTP
        /// endpoint that parses the same body and answers a fixed decision),
        /// `redis`, `redis-fsync`; `postgres` (Headroom over a PostgreSQL
        /// server the bench starts) and its baseline `postgres-naive` (a
        /// transaction per decision on such a server). Ratios follow.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "headroom")]
        targets: Vec<headroom::bench::Target>,
        /// Concurrent connections, each sending its next request when the last is answered.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// How long to load, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Which subjects the requests are for.
        #[arg(long, value_enum, default_value = "hot")]
        distribution: headroom::bench::Distribution,
        /// The shape of each decision.
        #[arg(long, value_enum, default_value = "spill")]
        mix: headroom::bench::Mix,
        /// Write the bench's catalog to this file and exit: a server given
        /// with --server must run it (`headroom serve --catalog FILE`).
        #[arg(long)]
        write_catalog: Option<PathBuf>,
        /// How many subjects (100 per account).
        #[arg(long, default_value_t = 1_000)]
        subjects: u64,
        /// Subjects per account (each account has its own wallet and
        /// idempotency keys); 1 makes every subject an account of its own.
        #[arg(long, default_value_t = 100)]
        subjects_per_account: u64,
        /// Decisions per call: 1 uses /v1/decisions, more the batch route.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Open loop: offer this many decisions per second on a fixed
        /// schedule, latency counted from when each request was due
        /// (corrected for coordinated omission). Default: closed loop.
        #[arg(long)]
        rate: Option<u64>,
        /// Draw latency against load into this SVG file: for each target,
        /// the closed-loop peak, then open-loop runs at 25, 50, 75 and 90 %
        /// of it (each --seconds long).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Write the results into this Markdown file, between its
        /// `<!-- SECTION:begin -->` and `<!-- SECTION:end -->` lines (the rest
        /// of the file is kept; the lines are added at the end if missing):
        /// the machine, this command, the table and the ratios.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// The section of --markdown to write.
        #[arg(long, default_value = "bench")]
        section: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The bare HTTP baseline that `headroom bench --targets bare` starts.
    #[command(hide = true)]
    BenchBareServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Create an account or change its plan (admin).
    #[command(subcommand)]
    Accounts(AccountsAction),
    /// Add a subject to an account (admin).
    #[command(subcommand)]
    Subjects(SubjectsAction),
    /// Grant credits to an account (admin).
    #[command(subcommand)]
    Grants(GrantsAction),
    /// Show a subject's windows and its account's wallet.
    Usage {
        subject: String,
        #[command(flatten)]
        client: ClientArguments,
    },
    /// Create service and subject tokens (admin).
    #[command(subcommand)]
    Tokens(TokensAction),
    /// Run the deterministic simulator: random catalogs, accounts and
    /// operations from one seed, every invariant checked after every step.
    Simulate {
        /// The seed; a random one (printed first) when absent.
        #[arg(long)]
        seed: Option<u64>,
        /// How many operations to run.
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// Also drive the in-memory store twin with injected write and sync
        /// failures and crash-restarts, checking it against the engine. Each
        /// crash check replays the twin's whole log: keep --ops to thousands.
        #[arg(long)]
        twin: bool,
    },
    /// Cross-check a data directory (or, with --store, a PostgreSQL
    /// database) against every invariant: the three datasets, their links,
    /// settlement and the balances. Reads only; works on a live or a stopped
    /// store. Exits 1 on any discrepancy.
    Reconcile {
        /// The data directory to check.
        #[arg(long, default_value = "headroom-data")]
        data_dir: PathBuf,
        /// A PostgreSQL URL: check that database instead, in one consistent snapshot.
        #[arg(long, env = "HEADROOM_STORE")]
        store: Option<String>,
    },
    /// Runs a deterministic workload against an embedded store and prints
    /// each acknowledged operation; the crash test kills it at random.
    #[command(hide = true)]
    StoreWorker {
        #[arg(long)]
        data_dir: PathBuf,
        /// Prefix of every idempotency key of this run.
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 4)]
        threads: u64,
        /// Logged commands between two snapshots.
        #[arg(long, default_value_t = 1_000_000)]
        snapshot_every: u64,
    },
}

/// How the admin subcommands reach a running server. The bearer token (the
/// admin token for admin commands) comes from HEADROOM_TOKEN.
#[derive(Args)]
struct ClientArguments {
    /// The server's base URL.
    #[arg(long, env = "HEADROOM_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl ClientArguments {
    fn client(self) -> Client {
        // The bearer token comes from HEADROOM_TOKEN only: flags show in `ps`.
        let token = std::env::var("HEADROOM_TOKEN").ok().filter(|token| !token.is_empty());
        Client { server: self.server, token, json: self.json }
    }
}

#[derive(Subcommand)]
enum AccountsAction {
    /// Create the account, or change its plan and overdraft.
    Put {
        account: String,
        #[arg(long)]
        plan: String,
        /// Credits the account may spend below zero (`100`, `0.5`); default: the plan's.
        #[arg(long)]
        overdraft: Option<String>,
        #[command(flatten)]
        client: ClientArguments,
    },
    /// Show an account.
    Get {
        account: String,
        #[command(flatten)]
        client: ClientArguments,
    },
}

#[derive(Subcommand)]
enum SubjectsAction {
    /// Add the subject to an account, or change its plan.
    Put {
        subject: String,
        #[arg(long)]
        account: String,
        /// The subject's own plan; default: its account's.
        #[arg(long)]
        plan: Option<String>,
        #[command(flatten)]
        client: ClientArguments,
    },
}

#[derive(Subcommand)]
enum GrantsAction {
    /// Grant credits, exactly once per idempotency key.
    Add {
        account: String,
        /// free_tier, promotion, entitlement or purchase.
        #[arg(long, default_value = "purchase")]
        kind: String,
        /// Credits (`10`, `0.25`).
        #[arg(long)]
        credits: String,
        /// Lower is spent first within a kind.
        #[arg(long)]
        priority: Option<u32>,
        /// RFC 3339; default: the catalog's default expiry.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long)]
        idempotency_key: String,
        #[command(flatten)]
        client: ClientArguments,
    },
}

#[derive(Subcommand)]
enum TokensAction {
    /// Create a token; it is shown once.
    Create {
        /// service (decisions, reservations) or subject (its own usage).
        #[arg(long)]
        kind: String,
        /// For a subject token: the subject.
        #[arg(long)]
        subject: Option<String>,
        /// For a service token: limit it to this account's subjects.
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        client: ClientArguments,
    },
}

fn print_call(result: Result<String, ClientError>) -> ExitCode {
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("headroom: {error}");
            match error {
                ClientError::Refused(_) => ExitCode::FAILURE,
                ClientError::Unreachable(_) => ExitCode::from(2),
            }
        }
    }
}

fn main() -> ExitCode {
    headroom_store::disable_transparent_huge_pages();
    match Command::parse().action {
        Action::Serve { listen, data_dir, store, postgres_connections, catalog, log_format, no_demo, alerts } => {
            let admin_token = std::env::var("HEADROOM_ADMIN_TOKEN").ok().filter(|token| !token.is_empty());
            let config = ServeConfig {
                listen,
                data_dir,
                store,
                postgres_connections,
                catalog,
                log_format,
                demo: !no_demo,
                admin_token,
                alerts,
            };
            match server::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("headroom: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Action::Accounts(AccountsAction::Put { account, plan, overdraft, client }) => {
            print_call(client.client().put_account(&account, &plan, overdraft.as_deref()))
        }
        Action::Accounts(AccountsAction::Get { account, client }) => print_call(client.client().get_account(&account)),
        Action::Subjects(SubjectsAction::Put { subject, account, plan, client }) => {
            print_call(client.client().put_subject(&subject, &account, plan.as_deref()))
        }
        Action::Grants(GrantsAction::Add { account, kind, credits, priority, expires_at, idempotency_key, client }) => {
            let grant = GrantArguments { kind, credits, priority, expires_at, idempotency_key };
            print_call(client.client().add_grant(&account, &grant))
        }
        Action::Usage { subject, client } => print_call(client.client().usage(&subject)),
        Action::Bench {
            server,
            targets,
            connections,
            seconds,
            distribution,
            mix,
            write_catalog,
            subjects,
            subjects_per_account,
            batch,
            rate,
            plot,
            markdown,
            section,
            json,
        } => {
            if let Some(path) = write_catalog {
                return match std::fs::write(&path, headroom::bench::CATALOG) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("headroom: {}: {error}", path.display());
                        ExitCode::FAILURE
                    }
                };
            }
            let token = std::env::var("HEADROOM_TOKEN").ok().filter(|token| !token.is_empty());
            let duration = std::time::Duration::from_secs(seconds.max(1));
            let mut reports = Vec::new();
            for target in targets {
                let config = headroom::bench::BenchConfig {
                    target,
                    server: server.clone(),
                    token: token.clone(),
                    connections,
                    duration,
                    distribution,
                    mix,
                    subjects,
                    subjects_per_account,
                    batch,
                    rate,
                    json,
                };
                let result = match &plot {
                    Some(_) => headroom::bench::sweep(&config),
                    None => headroom::bench::run(config).map(|report| vec![report]),
                };
                match result {
                    Ok(runs) => {
                        for report in runs {
                            if !json {
                                println!("{}", report.table());
                            }
                            reports.push(report);
                        }
                    }
                    Err(error) => {
                        eprintln!("headroom: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if let Some(path) = &plot {
                if let Err(error) = std::fs::write(path, headroom::bench::plot(&reports)) {
                    eprintln!("headroom: {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("headroom: latency against load drawn in {}", path.display());
            }
            let ratios = headroom::bench::ratios(&reports);
            if let Some(path) = &markdown {
                let command: Vec<String> = std::env::args().skip(1).collect();
                let text = headroom::bench::markdown(&format!("headroom {}", command.join(" ")), &reports, &ratios);
                if let Err(error) = headroom::bench::write_section(path, &section, &text) {
                    eprintln!("headroom: {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if json {
                let output = serde_json::json!({ "reports": reports, "ratios": ratios });
                println!("{}", serde_json::to_string_pretty(&output).expect("a report serializes"));
            } else {
                for ratio in &ratios {
                    println!("{}", ratio.line());
                }
            }
            ExitCode::SUCCESS
        }
        Action::BenchBareServer { listen } => match headroom::bench::serve_bare(listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("headroom: {error}");
                ExitCode::FAILURE
            }
        },
        Action::Tokens(TokensAction::Create { kind, subject, account, client }) => {
            print_call(client.client().create_token(&kind, subject.as_deref(), account.as_deref()))
        }
        Action::Simulate { seed, ops, twin } => {
            let seed = seed.unwrap_or_else(random_seed);
            println!("seed {seed}");
            match simulate::run(SimulationConfig { seed, operations: ops, twin }) {
                Ok(report) => {
                    println!("ok: {report:?}");
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    eprintln!("{failure}");
                    ExitCode::FAILURE
                }
            }
        }
        Action::Reconcile { data_dir, store } => match match &store {
            Some(url) => headroom_store::postgres::reconcile(url),
            None => headroom_store::reconcile::reconcile(&data_dir),
        } {
            Ok(report) => {
                print!("{report}");
                if report.discrepancies.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(error) => {
                eprintln!("headroom: {error}");
                ExitCode::from(2)
            }
        },
        Action::StoreWorker { data_dir, prefix, threads, snapshot_every } => {
            match headroom::worker::run(&data_dir, &prefix, threads, snapshot_every) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("headroom: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A seed from the process's randomly keyed hasher: no clock, no extra crate.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}
