#!/usr/bin/env bash
# The benchmarks: builds the release binaries once, then runs each bench
# against them (MILLRACE_BIN_DIR) and the pinned nats-server (NATS_SERVER_BIN).
# Not part of scripts/test.sh: a bench measures, it does not pass or fail, and
# it wants the machine to itself.
#
#   scripts/bench.sh              every bench
#   scripts/bench.sh ingest       only integration-tests/benches/ingest.rs
#   scripts/bench.sh year monitor those two, in that order
#
# The benches in integration-tests/benches/:
#   ingest   ingest's throughput, latency and memory next to raw JetStream
#   monitor  monitor's cost per prediction and label
#   year     the nycflights13 year through ingest alone and the whole pipeline, next to
#            raw JetStream publishing of the same events, with deploy/nats-server.conf.
#            Needs the CSVs (scripts/get-nycflights.sh; MILLRACE_FLIGHTS_DIR elsewhere).
#            YEAR_BENCH_PARTS=raw,ingest,pipeline picks parts, YEAR_BENCH_UNTIL=2013-02-01T00:00:00Z
#            replays only the flights before that time.
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
