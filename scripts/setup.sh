#!/usr/bin/env bash
# Installs what building and testing taskstore needs on Debian 12: redis-server and redis-cli
# (each test starts its own server), clang (for C code built for wasm32), and the
# wasm32-wasip2 target for the toolchain pinned in rust-toolchain.toml, redis-py for the
# tests that check compatibility with the original Python service, and schemathesis (pinned)
# for the contract test of the HTTP API.
# Idempotent; prints nothing when everything is already there. Run as root or with sudo.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

fail() {
    echo "setup.sh: $*" >&2
    exit 1
}

# Runs a command quietly; on failure shows its output and stops.
quietly() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        echo "setup.sh: failed: $*" >&2
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

# command -> Debian package providing it
packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
command -v clang >/dev/null 2>&1 || packages+=(clang)
# `taskstore bench --ops tls-open` (and its test) make their certificates with it.
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
if [ "${#packages[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || fail "apt-get not found; install ${packages[*]} by hand"
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 ||
            fail "need root to install ${packages[*]}: run as root, or install sudo"
        as_root=(sudo)
    fi
    quietly "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    quietly "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${packages[@]}"
    for cmd in redis-server redis-cli clang openssl; do
        command -v "$cmd" >/dev/null 2>&1 || fail "$cmd still missing after installing ${packages[*]}"
    done
fi

# The compatibility tests run the original Python service's storage code (redis-py asyncio).
if ! python3 -c 'import redis.asyncio' >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 || fail "python3 not found; install Python 3.8 or newer"
    quietly python3 -m pip install --quiet --disable-pip-version-check 'redis>=5,<9'
fi

# The contract test (cli/tests/cli/contract.rs) runs schemathesis against `taskstore serve`.
# Pinned: another version generates other cases from the same seed (the test checks the pin).
schemathesis_version=4.32.5
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" \
    != "$schemathesis_version" ]; then
    command -v python3 >/dev/null 2>&1 || fail "python3 not found; install Python 3.9 or newer"
    quietly python3 -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$schemathesis_version"
fi

toolchain="$(sed -n 's/^[[:space:]]*channel[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
    "$repo_root/rust-toolchain.toml")"
[ -n "$toolchain" ] || fail "no channel found in $repo_root/rust-toolchain.toml"
command -v rustup >/dev/null 2>&1 || fail "rustup not found; install Rust $toolchain with rustup"
rustup run "$toolchain" rustc --version >/dev/null 2>&1 ||
    fail "Rust toolchain $toolchain is not installed (rustup toolchain install $toolchain)"
if ! rustup target list --installed --toolchain "$toolchain" | grep -qx wasm32-wasip2; then
    quietly rustup target add --toolchain "$toolchain" wasm32-wasip2
fi
