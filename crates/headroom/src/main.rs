use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use headroom::simulate::{self, SimulationConfig};

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
    /// Cross-check a data directory against every invariant: the three
    /// datasets, their links, settlement and the balances. Reads only; works
    /// on a live or a stopped data directory. Exits 1 on any discrepancy.
    Reconcile {
        /// The data directory to check.
        #[arg(long, default_value = "headroom-data")]
        data_dir: PathBuf,
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
    },
}

fn main() -> ExitCode {
    match Command::parse().action {
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
        Action::Reconcile { data_dir } => match headroom_store::reconcile::reconcile(&data_dir) {
            Ok(report) => {
                print!("{report}");
                if report.discrepancies.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(error) => {
                eprintln!("headroom: {error}");
                ExitCode::from(2)
            }
        },
        Action::StoreWorker { data_dir, prefix, threads } => match headroom::worker::run(&data_dir, &prefix, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("headroom: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A seed from the process's randomly keyed hasher: no clock, no extra crate.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}
