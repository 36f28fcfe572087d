#!/usr/bin/env bash
# Sourced by the scripts that drive a running millrace: sets `cli` to the
# `millrace` binary from MILLRACE_BIN_DIR, else target/release, else
# target/debug, building the release one if none exists. Run from the repo root.

cli=""
for dir in "${MILLRACE_BIN_DIR:-}" target/release target/debug; do
    if [[ -n "$dir" && -x "$dir/millrace" ]]; then
        cli="$dir/millrace"
        break
    fi
done
if [[ -z "$cli" ]]; then
    cargo build --release --bin millrace
    cli=target/release/millrace
fi
