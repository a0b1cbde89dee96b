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
        Action::Simulate { seed, ops } => {
            let seed = seed.unwrap_or_else(random_seed);
            println!("seed {seed}");
            match simulate::run(SimulationConfig {
                seed,
                operations: ops,
            }) {
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
        Action::StoreWorker {
            data_dir,
            prefix,
            threads,
        } => match headroom::worker::run(&data_dir, &prefix, threads) {
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
