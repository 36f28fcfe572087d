#!/usr/bin/env bash
# Sends sample events to a running millrace (scripts/up.sh or docker compose)
# and shows what the monitor saw.
#
#   scripts/send-events.sh [COUNT]      default 10
#
# `millrace send` sends COUNT sample flight_scheduled events to ingest at
# 127.0.0.1:50051 and prints one ack per event; `millrace health` prints
# monitor's GetModelHealth. Uses the CLI from MILLRACE_BIN_DIR, else
# target/release, else target/debug (building the release one if neither exists).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
count="${1:-10}"
[[ "$count" =~ ^[0-9]+$ ]] || { echo "usage: $0 [COUNT]" >&2; exit 2; }

# shellcheck source=scripts/millrace-cli.sh
source scripts/millrace-cli.sh

echo "==> $cli send --count $count"
"$cli" send --count "$count"
echo
echo "==> $cli health"
"$cli" health
