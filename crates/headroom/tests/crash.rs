//! Crash test: a worker process runs decisions, reservations and captures
//! from several threads against an embedded store and is killed with
//! SIGKILL at a random moment, again and again on the same data directory.
//! After each kill, every operation it acknowledged must be there: replaying
//! its key returns the same decision and changes nothing; and every
//! invariant holds on what was recovered. The worker snapshots often, so
//! that kills land while a snapshot's child process is writing too.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;

use headroom::random::Random;
use headroom::workload;
use headroom_core::*;
use headroom_store::*;

const KILLS: u64 = 24;

#[test]
fn every_acknowledged_operation_survives_sigkill() {
    let directory = std::env::temp_dir().join(format!("headroom-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let seed = {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one("crash")
    };
    println!("crash test seed {seed}");
    let mut random = Random::new(seed);
    let mut total = 0;
    for run in 0..KILLS {
        let acknowledged = run_and_kill(&directory, run, random.between(10, 400));
        total += acknowledged.len();
        verify(&directory, &acknowledged);
        reconcile(&directory, true);
    }
    println!("{KILLS} kills, {total} acknowledged operations verified");
    assert!(!snapshot::list_snapshots(&directory).unwrap().is_empty(), "no snapshot was ever written");
    std::fs::remove_dir_all(&directory).unwrap();
}

/// Starts a worker, lets it acknowledge `operations` operations, kills it,
/// and returns every line it acknowledged before dying.
fn run_and_kill(directory: &Path, run: u64, operations: u64) -> Vec<String> {
    let mut worker = Process::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["store-worker", "--threads", "4", "--snapshot-every", "100", "--prefix", &format!("run{run}")])
        .arg("--data-dir")
        .arg(directory)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts the worker");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut acknowledged = Vec::new();
    for line in lines.by_ref() {
        acknowledged.push(line.unwrap());
        // Reconciliation reads a live data directory too.
        if run == 0 && acknowledged.len() == 5 {
            reconcile(directory, false);
        }
        if acknowledged.len() as u64 == operations {
            worker.kill().expect("SIGKILL");
            break;
        }
    }
    // Lines already in the pipe were printed after their operation was
    // acknowledged: they count too.
    acknowledged.extend(lines.map_while(Result::ok));
    worker.wait().unwrap();
    acknowledged
}

/// Runs `headroom reconcile` on the directory: no discrepancy, and a
/// stopped directory is left exactly as it was.
fn reconcile(directory: &Path, stopped: bool) {
    let listing = |directory: &Path| {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap())
            .map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.metadata().unwrap().len()))
            .collect();
        files.sort();
        files
    };
    let before = listing(directory);
    let output = Process::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["reconcile", "--data-dir"])
        .arg(directory)
        .output()
        .expect("runs reconcile");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "reconcile failed:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("discrepancies      none"), "{stdout}");
    if stopped {
        assert_eq!(listing(directory), before, "reconcile changed the data directory");
    }
}

fn verify(directory: &Path, acknowledged: &[String]) {
    let store = EmbeddedStore::open(StoreConfig::new(directory), Arc::new(Catalog::demo()), Arc::new(SystemClock))
        .expect("recovers after SIGKILL");
    // Settlement resumes on its own; let it finish so that state is still.
    let lag = store.wait_settled(std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(lag.unsettled_updates, 0, "settlement did not resume: {lag:?}");
    let before: Vec<AccountState> = store.query(|engine| engine.accounts().cloned().collect()).unwrap();
    for line in acknowledged {
        let fields: Vec<&str> = line.split(' ').collect();
        let (command, expected) = match fields[..] {
            ["decide", key, id] => (workload::decide(key), id),
            ["reserve", key, id, _] => (workload::reserve(key), id),
            ["capture", key, _reserve_key, reservation, id] => {
                let reservation = DecisionId::parse(reservation).expect("a decision id");
                (workload::capture(key, reservation), id)
            }
            _ => panic!("unexpected worker line {line:?}"),
        };
        match store.execute(command) {
            Ok(Response::Decision(outcome)) => {
                assert!(outcome.replayed, "acknowledged {line:?} was lost");
                assert_eq!(outcome.result.id.to_string(), expected, "{line:?} replayed another decision");
            }
            other => panic!("replaying {line:?} answered {other:?}"),
        }
    }
    let after: Vec<AccountState> = store.query(|engine| engine.accounts().cloned().collect()).unwrap();
    assert!(before == after, "replaying acknowledged keys changed state");
    store.query(|engine| engine.check_invariants()).unwrap().expect("invariants hold after recovery");
    store.close();
}
