//! The store worker: runs the deterministic workload from several threads
//! against an embedded store and prints every acknowledged operation, one
//! line each, flushed before the next operation starts.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use headroom_core::*;
use headroom_store::*;

use crate::workload;

pub fn run(data_directory: &Path, prefix: &str, threads: u64, snapshot_every: u64) -> Result<(), StoreError> {
    let mut config = StoreConfig::new(data_directory);
    config.snapshot_every_commands = snapshot_every;
    let store = Arc::new(EmbeddedStore::open(config, Arc::new(Catalog::demo()), Arc::new(SystemClock))?);
    for command in workload::setup() {
        match store.execute(command) {
            Ok(_) | Err(StoreError::Refused(Refusal::Core(CoreError::AccountExists(_)))) => {}
            Err(error) => return Err(error),
        }
    }
    let output = Arc::new(Mutex::new(std::io::stdout()));
    writeln!(output.lock().expect("not poisoned"), "ready").expect("stdout");
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let (store, output, prefix) = (store.clone(), output.clone(), prefix.to_string());
            std::thread::spawn(move || work(&store, &output, &format!("{prefix}-{thread}")))
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker thread panicked")?;
    }
    Ok(())
}

fn work(store: &EmbeddedStore, output: &Mutex<std::io::Stdout>, prefix: &str) -> Result<(), StoreError> {
    let print = |line: String| {
        let mut stdout = output.lock().expect("not poisoned");
        writeln!(stdout, "{line}").and_then(|()| stdout.flush()).expect("stdout");
    };
    for index in 0.. {
        let key = format!("{prefix}-{index}");
        if index % 4 != 3 {
            let decision = decision(store.execute(workload::decide(&key))?);
            print(format!("decide {key} {}", decision.id));
            continue;
        }
        let reserved = decision(store.execute(workload::reserve(&key))?);
        let Some(reservation) = &reserved.reservation else {
            print(format!("reserve {key} {} -", reserved.id));
            continue;
        };
        print(format!("reserve {key} {} {}", reserved.id, reservation.id));
        let capture_key = format!("{key}-capture");
        let captured = decision(store.execute(workload::capture(&capture_key, reservation.id))?);
        print(format!("capture {capture_key} {key} {} {}", reservation.id, captured.id));
    }
    Ok(())
}

fn decision(response: Response) -> Arc<Decision> {
    match response {
        Response::Decision(outcome) => outcome.result,
        other => panic!("a decision command answered {other:?}"),
    }
}
