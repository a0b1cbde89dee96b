//! The simulator over a fixed set of seeds plus one random seed, printed so
//! that a failure can be replayed with `headroom simulate --seed S`.

use std::process::Command;

use headroom::simulate::{SimulationConfig, run};

const FIXED_SEEDS: [u64; 8] = [1, 2, 3, 5, 8, 13, 21, 34];
const OPERATIONS: u64 = 20_000;

fn simulate(seed: u64, operations: u64, twin: bool) {
    if let Err(failure) = run(SimulationConfig { seed, operations, twin }) {
        panic!("{failure}");
    }
}

#[test]
fn fixed_seeds_hold_every_invariant() {
    for seed in FIXED_SEEDS {
        simulate(seed, OPERATIONS, false);
    }
}

#[test]
fn a_random_seed_holds_every_invariant() {
    use std::hash::{BuildHasher, RandomState};
    let seed = RandomState::new().hash_one("simulate");
    println!("random simulation seed {seed}");
    simulate(seed, OPERATIONS, false);
}

/// The store twin under injected write and sync failures and crash-restarts
/// ends every step in exactly the engine's state.
#[test]
fn the_store_twin_survives_faults_and_crashes() {
    for seed in [1, 2, 3] {
        simulate(seed, 3_000, true);
    }
}

#[test]
fn the_command_prints_its_seed_first_and_succeeds() {
    let output = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["simulate", "--seed", "77", "--ops", "2000"])
        .output()
        .expect("runs the binary");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout.lines().next(), Some("seed 77"));
    assert!(stdout.contains("operations: 2000"));
}
