#!/usr/bin/env bash
# Property-based fuzzing of the HTTP API with schemathesis, driven by the
# server's own OpenAPI document (/openapi.json). Starts a real `headroom serve`
# on a free loopback port over a throwaway data directory, fuzzes every
# documented operation, and fails on any 5xx or any response that breaks the
# document (status code, content type, body schema, headers).
#
#   scripts/fuzz-api.sh target/debug/headroom
#
# Installs what it needs (python3-venv through apt-get when missing; a venv
# with a pinned schemathesis under target/fuzz-venv, reused across runs) and
# needs no input. Reproducible: a fixed seed, one worker, no example database
# and no schemathesis cache. Knobs: FUZZ_MAX_EXAMPLES, FUZZ_SEED.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-300}"
SEED="${FUZZ_SEED:-20261125}"
# A hang guard, not the budget: the run is bounded by MAX_EXAMPLES.
RUN_TIMEOUT_S=900
ADMIN_TOKEN="fuzz-admin-token-not-a-secret-0123456789"
# Seeded so capture and release reach real reservations, not only 404s.
RESERVATIONS=12

die() { printf 'fuzz-api: %s\n' "$*" >&2; exit 1; }
note() { printf 'fuzz-api: %s\n' "$*"; }

[ $# -eq 1 ] || die "usage: $0 <path to the headroom binary>"
[ -f "$1" ] && [ -x "$1" ] || die "not an executable file: $1"
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"

cd "$(dirname "$0")/.."
VENV="$PWD/target/fuzz-venv"

# ---------------------------------------------------------------- toolchain --

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $*, and no apt-get to install it with"
    note "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

venv_has_schemathesis() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/schemathesis" ] &&
        "$VENV/bin/python" - "$SCHEMATHESIS_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(version("schemathesis") != sys.argv[1])
EOF
}

if ! venv_has_schemathesis; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    # Debian ships `venv` without `ensurepip`; both come with python3-venv.
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "schemathesis $SCHEMATHESIS_VERSION needs Python 3.11 or newer; python3 is $(python3 -V 2>&1)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    note "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$VENV/bin/python" -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
    venv_has_schemathesis || die "schemathesis $SCHEMATHESIS_VERSION did not install into $VENV"
fi
PY="$VENV/bin/python"

# ------------------------------------------------------------------- server --

TMP="$(mktemp -d "${TMPDIR:-/tmp}/headroom-fuzz.XXXXXX")"
SERVER_PID=""
STRIPE_PID=""
cleanup() {
    for pid in "$SERVER_PID" "$STRIPE_PID"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
# Running, and not a zombie that `kill -0` would still find (Linux /proc).
alive() {
    local state
    state="$(sed -n 's/^.*) \([A-Za-z]\).*$/\1/p' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
trap 'exit 130' INT
trap 'exit 143' TERM

# Stripe's two endpoints, stood in for on loopback (scripts/fake-stripe.py),
# so that the payment routes are fuzzed as they work with a provider.
"$PY" "$(dirname "$0")/fake-stripe.py" "$TMP/stripe.port" </dev/null >/dev/null 2>"$TMP/stripe.log" &
STRIPE_PID=$!
for _ in $(seq 1 300); do
    [ -s "$TMP/stripe.port" ] && break
    alive "$STRIPE_PID" || { cat "$TMP/stripe.log" >&2; die "the stand-in for Stripe exited before it listened"; }
    sleep 0.1
done
[ -s "$TMP/stripe.port" ] || die "the stand-in for Stripe did not listen within 30 s"

# Only the flags below shape the server: no catalog, log format, demo or
# alert setting leaks in from the caller's environment.
env -u HEADROOM_CATALOG -u HEADROOM_NO_DEMO -u HEADROOM_LOG_FORMAT -u HEADROOM_LISTEN -u HEADROOM_DATA_DIR \
    -u HEADROOM_ALERTS \
    HEADROOM_ADMIN_TOKEN="$ADMIN_TOKEN" \
    HEADROOM_STRIPE_SECRET_KEY=sk_test_fuzz HEADROOM_STRIPE_WEBHOOK_SECRET=whsec_fuzz \
    HEADROOM_STRIPE_API_BASE="http://127.0.0.1:$(cat "$TMP/stripe.port")" \
    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$TMP/data" \
    </dev/null >"$TMP/server.out" 2>"$TMP/server.log" &
SERVER_PID=$!

URL=""
for _ in $(seq 1 300); do # 30 s at most
    URL="$(sed -n 's|^headroom listening on \(http://127\.0\.0\.1:[0-9][0-9]*\)$|\1|p' "$TMP/server.out" | head -n 1)"
    [ -n "$URL" ] && break
    if ! alive "$SERVER_PID"; then
        cat "$TMP/server.out" "$TMP/server.log" >&2 || true
        die "the server exited before it listened"
    fi
    sleep 0.1
done
if [ -z "$URL" ]; then
    cat "$TMP/server.out" "$TMP/server.log" >&2 || true
    die "the server did not print its address within 30 s"
fi
note "server at $URL (pid $SERVER_PID)"

# Loopback only: no proxy may stand between the fuzzer and the server.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"
# Keep Hypothesis' on-disk state out of the working tree.
export HYPOTHESIS_STORAGE_DIRECTORY="$TMP/hypothesis"

# ------------------------------------------------------------- test data --
# Real identifiers from the demo catalog and the demo account, offered to the
# generator half of the time (positive mode only) so that requests get past
# "unknown subject/feature/kind" into the logic behind; the other half stays
# schema-derived. The document cannot say these: they are data, not types.

"$PY" - "$URL" "$ADMIN_TOKEN" "$RESERVATIONS" "$TMP/schemathesis.toml" <<'EOF'
import json
import sys
import urllib.request

url, token, count, config_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(path, body):
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with opener.open(request, timeout=10) as response:
        return json.load(response)


reservations = []
for i in range(count):
    view = post(
        "/v1/reservations",
        {"subject": "demo-user", "feature": "codex.local_task", "quantity": 1, "idempotency_key": f"fuzz-seed-{i}"},
    )
    if "reservation" not in view or not view["reservation"]:
        sys.exit(f"seeding a reservation failed: {view}")
    reservations.append(view["reservation"]["id"])


def toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def bind(dictionary):
    return '{ dictionary = "%s", probability = 0.5 }' % dictionary


config = f"""
[cache]
enabled = false

# Every check runs but one: positive_data_acceptance expects a 2xx for any
# request the document allows, and the document gives types, not every
# bound the server checks (id characters, non-empty keys), so it fails on
# correct 4xx answers.
[checks.positive_data_acceptance]
enabled = false

[dictionaries.accounts]
values = ["demo"]
[dictionaries.subjects]
values = ["demo-user"]
[dictionaries.features]
values = ["codex.local_task", "codex.cloud_task", "codex.review", "sora.video"]
[dictionaries.plans]
values = ["free", "plus", "pro", "business"]
[dictionaries.reservations]
values = {toml_list(reservations)}
[dictionaries.grant_kinds]
values = ["free_tier", "promotion", "entitlement", "purchase"]
[dictionaries.token_kinds]
values = ["service", "subject"]
# Valid keys (generated strings rarely are): mostly fresh, and reused often
# enough that replays and conflicts (409) happen too.
[dictionaries.idempotency_keys]
values = {toml_list([f"fuzz-key-{i}" for i in range(1000)])}

[parameters]
"body.subject" = {bind("subjects")}
"body.account" = {bind("accounts")}
"body.feature" = {bind("features")}
"body.plan" = {bind("plans")}
"body.idempotency_key" = {bind("idempotency_keys")}
"body.decisions[*].idempotency_key" = {bind("idempotency_keys")}
"body.decisions[*].subject" = {bind("subjects")}
"body.decisions[*].feature" = {bind("features")}

[[operations]]
include-path-regex = "^/v1/accounts/[^/]+(/ledger)?$"
parameters = {{ "path.id" = {bind("accounts")} }}

[[operations]]
include-path = "/v1/accounts/{{id}}/grants"
parameters = {{ "path.id" = {bind("accounts")}, "body.kind" = {bind("grant_kinds")} }}

[[operations]]
include-path = "/v1/tokens"
parameters = {{ "body.kind" = {bind("token_kinds")} }}

[[operations]]
include-path-regex = "^/v1/subjects/"
parameters = {{ "path.id" = {bind("subjects")} }}

[[operations]]
include-path-regex = "^/v1/reservations/"
parameters = {{ "path.id" = {bind("reservations")} }}
# The batch route answers 200 with a result per decision: an invalid
# decision inside a valid batch is its item's 422, by design, not the call's.
[[operations]]
include-path = "/v1/decisions/batch"
checks = {{ negative_data_rejection = {{ enabled = false }} }}
"""
with open(config_path, "w") as f:
    f.write(config)
EOF

# -------------------------------------------------------------------- fuzz --
# Checks: every check schemathesis has, less the two the configuration above
# turns off, each with its reason.
# --phases: all four (examples, coverage, fuzzing, stateful).

cmd=(
    "$VENV/bin/schemathesis" --config-file "$TMP/schemathesis.toml"
    run "$URL/openapi.json"
    --header "Authorization: Bearer $ADMIN_TOKEN"
    --phases examples,coverage,fuzzing,stateful
    --max-examples "$MAX_EXAMPLES"
    --seed "$SEED"
    --workers 1
    --generation-database none
    --request-timeout 10
    --no-color
)
printf 'fuzz-api: running:'
printf ' %q' "${cmd[@]}"
printf '\n'

status=0
(cd "$TMP" && timeout --kill-after=10 "$RUN_TIMEOUT_S" "${cmd[@]}" </dev/null) || status=$?

if ! alive "$SERVER_PID"; then
    note "the server died during the run; its log:"
    cat "$TMP/server.log" >&2 || true
    status=1
elif grep -qE '"level":"ERROR"| ERROR ' "$TMP/server.log"; then
    note "the server logged errors during the run:"
    grep -E '"level":"ERROR"| ERROR ' "$TMP/server.log" | head -n 50 >&2
fi
if [ "$status" -eq 124 ]; then
    note "schemathesis did not finish within ${RUN_TIMEOUT_S} s"
fi
[ "$status" -eq 0 ] || die "failed (exit status $status)"
note "no failures"
