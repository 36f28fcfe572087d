#!/usr/bin/env bash
# The benchmarks: builds the release binaries once, then runs each bench
# against them (MILLRACE_BIN_DIR) and the pinned nats-server (NATS_SERVER_BIN).
# Not part of scripts/test.sh: a bench measures, it does not pass or fail, and
# it wants the machine to itself.
#
#   scripts/bench.sh            every bench
#   scripts/bench.sh ingest     only integration-tests/benches/ingest.rs
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/nats-server.sh
source scripts/nats-server.sh

NATS_SERVER_BIN="$(nats_server_bin)" || {
    echo "no nats-server ${NATS_SERVER_VERSION} found: run scripts/install-deps.sh" >&2
    exit 1
}
export NATS_SERVER_BIN
export MILLRACE_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release"

cargo build --release --workspace --bins

if [[ $# -eq 0 ]]; then
    cargo bench --workspace --benches
else
    for bench in "$@"; do
        cargo bench -p millrace-integration-tests --bench "$bench"
    done
fi
