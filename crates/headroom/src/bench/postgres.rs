//! The PostgreSQL baselines: a server of the bench's own (initdb into a
//! temporary directory, fsync on), and the naive way to keep a balance in
//! it: one transaction per decision that locks the account's row
//! (`SELECT … FOR UPDATE`), checks and takes what it needs (`UPDATE`), and
//! commits. Spoken to directly over the PostgreSQL protocol, without HTTP,
//! one connection per caller, as an application would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hdrhistogram::Histogram;

use super::{BenchConfig, Measured, Mix, Subjects, show_progress};
use crate::random::Random;
use crate::server::metrics::Stopwatch;
use crate::throwaway_postgres::Postgres;

/// Starts a throwaway PostgreSQL server, or says why it could not.
pub fn start() -> Result<Postgres, String> {
    std::panic::catch_unwind(Postgres::start).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_default();
        format!("cannot start PostgreSQL (apt-get install postgresql): {message}")
    })
}

/// The naive schema: a row per account with its window's use and its balance.
const SCHEMA: &str = "
    CREATE TABLE naive_accounts (id int8 PRIMARY KEY, used int8 NOT NULL, capacity int8 NOT NULL, balance int8 NOT NULL);
";

/// One decision of one unit: windows first, then credits, all or nothing.
const DECIDE: &str = "
    UPDATE naive_accounts SET
        used = used + CASE WHEN used < capacity THEN 1 ELSE 0 END,
        balance = balance - CASE WHEN used < capacity THEN 0 ELSE $2 END
    WHERE id = $1 AND (used < capacity OR balance >= $2)";

/// The price of one unit in the bench's catalog, in micro-credits.
const PRICE: i64 = 80_000;

pub fn run_naive(config: &BenchConfig) -> Result<Measured, String> {
    let server = start()?;
    let url = server.url();
    let accounts = config.subjects.div_ceil(config.subjects_per_account) as i64;
    let mut client = postgres::Client::connect(&url, postgres::NoTls).map_err(|error| error.to_string())?;
    client.batch_execute(SCHEMA).map_err(|error| error.to_string())?;
    let (capacity, balance): (i64, i64) = match config.mix {
        Mix::Within => (i64::MAX / 2, 1_000_000_000_000),
        Mix::Spill => (1, 1_000_000_000_000),
        _ => (0, 0),
    };
    client
        .execute(
            "INSERT INTO naive_accounts SELECT id, 0, $2, $3 FROM generate_series(0, $1::int8 - 1) AS id",
            &[&accounts, &capacity, &balance],
        )
        .map_err(|error| error.to_string())?;
    client.batch_execute("VACUUM ANALYZE naive_accounts").map_err(|error| error.to_string())?;

    let subjects = Subjects::new(config.distribution, config.subjects);
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        clients.push(postgres::Client::connect(&url, postgres::NoTls).map_err(|error| error.to_string())?);
    }
    let run = Stopwatch::start();
    let callers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(connection, mut client)| {
            let (subjects, stop, completed) = (subjects.share(), stop.clone(), completed.clone());
            let per_account = config.subjects_per_account;
            std::thread::spawn(move || -> Result<(Histogram<u64>, u64, u64), String> {
                let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
                let mut random = Random::new(0x006e_6169_7665 ^ connection as u64);
                let decide = client.prepare(DECIDE).map_err(|error| error.to_string())?;
                let lock = client
                    .prepare("SELECT used, balance FROM naive_accounts WHERE id = $1 FOR UPDATE")
                    .map_err(|error| error.to_string())?;
                let (mut calls, mut errors) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let account = (subjects.draw(&mut random) / per_account) as i64;
                    let sent = Stopwatch::start();
                    let outcome = client.transaction().and_then(|mut transaction| {
                        transaction.query_one(&lock, &[&account])?;
                        let changed = transaction.execute(&decide, &[&account, &PRICE])?;
                        transaction.commit()?;
                        Ok(changed)
                    });
                    calls += 1;
                    match outcome {
                        Ok(_) => {
                            let _ = histogram.record(sent.nanos().max(1));
                        }
                        Err(_) => errors += 1,
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                Ok((histogram, calls, errors))
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(async {
        let progress = tokio::spawn(show_progress(config.duration, completed.clone(), 1, !config.json));
        tokio::time::sleep(config.duration).await;
        progress.abort();
    });
    stop.store(true, Ordering::SeqCst);
    let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let (mut calls, mut errors) = (0, 0);
    for caller in callers {
        let (part, part_calls, part_errors) = caller.join().map_err(|_| "a caller panicked".to_string())??;
        histogram.add(part).map_err(|error| error.to_string())?;
        calls += part_calls;
        errors += part_errors;
    }
    let seconds = run.nanos() as f64 / 1e9;
    drop(server);
    Ok((histogram, calls, errors, seconds, None))
}
