#!/usr/bin/env bash
# The one gate: formatting, lints, the whole test suite and a long simulation.
# CI runs exactly this (.ci/run). It installs what it needs and needs no input.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "formatting"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "simulation: 1,000,000 operations, random seed (printed first)"
cargo run --release --locked --quiet -p headroom -- simulate --ops 1000000

step "benchmarks compile"
cargo bench --workspace --locked --no-run --quiet
