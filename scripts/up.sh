#!/usr/bin/env bash
# Runs millrace on this machine without Docker: builds the release binaries,
# starts nats-server 2.15.1 (unless one already answers), starts the five
# services, waits until each is ready and prints where everything listens.
# Ctrl-C (or SIGTERM) stops everything it started.
#
# Environment:
#   MILLRACE_PIPELINE   pipeline file (default examples/flights/pipeline.toml)
#   NATS_URL            use this NATS server; when it does not answer and
#                       points at this machine, a pinned server is started there
#   RUST_LOG            log filter for the services (default info)
#   OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* / NATS_* variables are
#                       passed on to the services unchanged
#   MILLRACE_READY_TIMEOUT  seconds to wait for each service (default 60)
#
# State goes to ./data/<service> (and ./data/nats), logs to ./data/logs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"
# shellcheck source=scripts/nats-server.sh
source scripts/nats-server.sh

services=(ingest enrich feature-state inference monitor)
declare -A http_port=([ingest]=8081 [enrich]=8082 [feature-state]=8083 [inference]=8084 [monitor]=8085)
declare -A grpc_port=([ingest]=50051 [feature-state]=50053 [inference]=50054 [monitor]=50055)

pipeline="${MILLRACE_PIPELINE:-examples/flights/pipeline.toml}"
ready_timeout="${MILLRACE_READY_TIMEOUT:-60}"
data="$root/data"
logs="$data/logs"

say() { printf 'up: %s\n' "$*"; }
die() { printf 'up: %s\n' "$*" >&2; exit 1; }

[[ -f "$pipeline" ]] || die "pipeline file $pipeline not found (set MILLRACE_PIPELINE)"
pipeline="$(cd "$(dirname "$pipeline")" && pwd)/$(basename "$pipeline")"

# ---- processes we start, and stopping them -----------------------------------
declare -A pid_of=()   # name -> pid, only for processes this script started
order=()               # start order; stopped in reverse

stop_all() {
    trap - INT TERM EXIT
    [[ ${#order[@]} -gt 0 ]] || return 0
    say "stopping..."
    local i name pid deadline
    # Services first (they drain, snapshot and ack on SIGTERM), NATS last.
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do
        name="${order[i]}"
        pid="${pid_of[$name]}"
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop within 20s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    say "stopped; logs are in ${logs#"$root"/}"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# start NAME LOGFILE CMD...: starts CMD in the background with its output in
# LOGFILE, in a session of its own so that the terminal's Ctrl-C reaches only
# this script, which then stops the services before NATS.
start() {
    local name="$1" log="$2"
    shift 2
    setsid "$@" </dev/null >>"$log" 2>&1 &
    pid_of[$name]=$!
    order+=("$name")
}

alive() { kill -0 "${pid_of[$1]}" 2>/dev/null; }

show_log() {
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n 30 "$1" >&2 || true
}

http_ok() {
    python3 - "$1" <<'EOF' 2>/dev/null
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

# Lowest port >= $1 that nothing on 127.0.0.1 answers on.
free_port() {
    local p="$1"
    while tcp_answers 127.0.0.1 "$p"; do p=$((p + 1)); done
    printf '%s\n' "$p"
}

# ---- build ---------------------------------------------------------------------
say "checking dependencies"
scripts/install-deps.sh build nats
say "building release binaries (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-$root/target}/release"

mkdir -p "$logs" "$data/nats"
for svc in "${services[@]}"; do mkdir -p "$data/$svc"; done

# ---- NATS ------------------------------------------------------------------------
user_nats_url="${NATS_URL:-}"
nats_url="${user_nats_url:-nats://127.0.0.1:4222}"
read -r nats_host nats_port < <(nats_url_host_port "$nats_url")
nats_monitor=""
start_nats_on=""

if running="$(nats_running_version "$nats_host" "$nats_port")"; then
    if version_at_least "$running" "$NATS_SERVER_VERSION"; then
        say "using the NATS server at $nats_url (v$running)"
    elif [[ -n "$user_nats_url" ]]; then
        say "warning: $nats_url runs nats-server v$running; millrace is tested with v$NATS_SERVER_VERSION"
    else
        # An older server (e.g. Debian's 2.9) holds the default port: run the
        # pinned one beside it rather than on it.
        start_nats_on="$(free_port $((nats_port + 1)))"
        say "127.0.0.1:$nats_port runs nats-server v$running, older than v$NATS_SERVER_VERSION; starting v$NATS_SERVER_VERSION on port $start_nats_on instead"
    fi
elif tcp_answers "$nats_host" "$nats_port"; then
    die "$nats_host:$nats_port accepts connections but does not answer like a NATS server"
else
    case "$nats_host" in
        127.* | localhost | ::1 | 0.0.0.0) start_nats_on="$nats_port" ;;
        *) die "no NATS server answers at $nats_url" ;;
    esac
fi

if [[ -n "$start_nats_on" ]]; then
    nats_bin="$(nats_server_bin)" || die "nats-server v$NATS_SERVER_VERSION not found (scripts/install-deps.sh nats)"
    monitor_port="$(free_port 8222)"
    start nats "$logs/nats.log" "$nats_bin" -c deploy/nats-server.conf \
        -a 127.0.0.1 -p "$start_nats_on" -m "$monitor_port" -sd "$data/nats"
    deadline=$((SECONDS + 15))
    until nats_running_version 127.0.0.1 "$start_nats_on" >/dev/null; do
        alive nats || { show_log "$logs/nats.log"; die "nats-server exited"; }
        ((SECONDS < deadline)) || { show_log "$logs/nats.log"; die "nats-server did not answer within 15s"; }
        sleep 0.2
    done
    nats_url="nats://127.0.0.1:$start_nats_on"
    nats_monitor="http://127.0.0.1:$monitor_port"
    say "nats-server v$NATS_SERVER_VERSION is up at $nats_url (store ${data#"$root"/}/nats)"
fi

# ---- services ----------------------------------------------------------------------
# These name one service's own addresses and directory; a value meant for one
# service must not leak into all five.
unset MILLRACE_HTTP_ADDR MILLRACE_GRPC_ADDR MILLRACE_DATA_DIR
export NATS_URL="$nats_url" MILLRACE_PIPELINE="$pipeline" RUST_LOG="${RUST_LOG:-info}"
# For the CLI in other terminals (scripts/demo.sh): where NATS and the pipeline file are.
printf '%s\n' "$nats_url" >"$data/nats.url"

for svc in "${services[@]}"; do
    exe="$bin/millrace-$svc"
    [[ -x "$exe" ]] || die "$exe was not built"
    start "$svc" "$logs/$svc.log" env MILLRACE_DATA_DIR="$data/$svc" "$exe"
    say "started $svc (pid ${pid_of[$svc]}), log ${logs#"$root"/}/$svc.log"
done

for svc in "${services[@]}"; do
    url="http://127.0.0.1:${http_port[$svc]}/readyz"
    deadline=$((SECONDS + ready_timeout))
    until http_ok "$url"; do
        alive "$svc" || { show_log "$logs/$svc.log"; die "$svc exited before it was ready"; }
        ((SECONDS < deadline)) || { show_log "$logs/$svc.log"; die "$svc not ready after ${ready_timeout}s ($url)"; }
        sleep 0.3
    done
done

# ---- where everything is -------------------------------------------------------------
echo
echo "millrace is up (pipeline ${pipeline#"$root"/})"
echo
printf '  %-14s %-24s %s\n' "what" "gRPC" "HTTP (/metrics /healthz /readyz)"
printf '  %-14s %-24s %s\n' "nats" "$nats_url" "${nats_monitor:-}"
for svc in "${services[@]}"; do
    grpc="-"
    [[ -z "${grpc_port[$svc]:-}" ]] || grpc="127.0.0.1:${grpc_port[$svc]}"
    printf '  %-14s %-24s %s\n' "$svc" "$grpc" "http://127.0.0.1:${http_port[$svc]}"
done
echo
echo "  data: ${data#"$root"/}/<service>   logs: ${logs#"$root"/}/<service>.log"
[[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]] && echo "  spans: $OTEL_EXPORTER_OTLP_ENDPOINT"
echo
echo "From another terminal: scripts/demo.sh (the flight-delay demo) or scripts/send-events.sh"
echo "Ctrl-C stops everything."

# Wait until Ctrl-C, or until something we started exits on its own.
while true; do
    wait -n || true
    for name in "${order[@]}"; do
        if ! alive "$name"; then
            log="$logs/$name.log"
            show_log "$log"
            die "$name exited; stopping the rest"
        fi
    done
done
