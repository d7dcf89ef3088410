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
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" && return
        die "cargo not found: install the Rust toolchain (rustup) first; rust-toolchain.toml pins the version"
    fi
}

# The PostgreSQL server the scripts start; trust auth ignores the password, a fresh Debian
# install (scram) gets it set by `scripts/services up`.
# shellcheck disable=SC2034 # used by the scripts that source this file
PAYSYNC_PG_ADMIN_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
