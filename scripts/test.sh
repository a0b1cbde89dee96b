#!/usr/bin/env bash
# The one gate: formatting, lints, the whole test suite and a long simulation.
# CI runs exactly this (.ci/run). It installs what it needs and needs no input.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

# Installs Debian packages that are missing (as root, or through sudo).
install_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Installs PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin), which
# the tests use to start throwaway clusters of their own; the package is told not
# to create and start a system cluster (createcluster.conf, read by its postinst).
install_postgresql() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    "${sudo[@]}" mkdir -p /etc/postgresql-common
    echo 'create_main_cluster = false' | "${sudo[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
    # ucf keeps that file rather than asking whether to replace it with the package's.
    UCF_FORCE_CONFFOLD=1 install_packages postgresql
}

step "packages the tests use"
install_packages curl redis-server
install_postgresql

step "formatting"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "API fuzzing: schemathesis against the real server, driven by its OpenAPI document"
cargo build --locked --quiet -p headroom
scripts/fuzz-api.sh "${CARGO_TARGET_DIR:-target}/debug/headroom"

step "simulation: 1,000,000 operations, random seed (printed first)"
cargo run --release --locked --quiet -p headroom -- simulate --ops 1000000

step "benchmarks compile"
cargo bench --workspace --locked --no-run --quiet
