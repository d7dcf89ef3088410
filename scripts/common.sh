# Shared by the project's scripts: logging, root escalation and the local defaults.
# shellcheck shell=bash

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command as root (directly, or through sudo when the script is not root).
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $*"
    fi
}

require_cargo() {
    require_build_deps
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" && return
        die "cargo not found: install the Rust toolchain (rustup) first; rust-toolchain.toml pins the version"
    fi
}

# The C libraries the build links: OpenSSL for librdkafka's TLS and SASL (SCRAM) to Kafka.
require_build_deps() {
    if pkg-config --exists openssl 2>/dev/null; then
        return
    fi
    log "installing the build's C libraries (libssl-dev, pkg-config)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq libssl-dev pkg-config >/dev/null
}

# The PostgreSQL server the scripts start; trust auth ignores the password, a fresh Debian
# install (scram) gets it set by `scripts/services up`.
# shellcheck disable=SC2034 # used by the scripts that source this file
PAYSYNC_PG_ADMIN_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"

# Where the scripts keep installs, logs and PID files (shared by every clone on the machine).
# shellcheck disable=SC2034 # used by the scripts that source this file
STATE_DIR=${PAYSYNC_SERVICES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/paysync}

# ensure_pip_package VENV PACKAGE VERSION: installs PACKAGE==VERSION from PyPI into the venv
# VENV unless that exact version is there already.
ensure_pip_package() {
    local venv=$1 package=$2 version=$3
    if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$package') != '$version')" 2>/dev/null; then
        return
    fi
    log "installing $package $version into $venv"
    if ! python3 -m venv --clear "$venv" 2>/dev/null; then
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv --clear "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check "$package==$version"
}
