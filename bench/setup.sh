#!/usr/bin/env bash
# Installs the optional peers the handoff benchmark compares relaunch with.
# Each one is optional: a scenario whose peer is missing is reported as
# "skipped (... not installed)", never as a failure.
#
#   bash bench/setup.sh
#   cargo bench --bench handoff -- --quick
#
# systemd-socket-activate comes with systemd (Debian: package systemd).
set -u

sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi

if ! command -v start_server >/dev/null; then
    if command -v apt-get >/dev/null; then
        $sudo apt-get update -qq && $sudo apt-get install -y -qq libserver-starter-perl \
            || echo "setup: could not install libserver-starter-perl; server-starter will be skipped" >&2
    else
        echo "setup: no apt-get; install Server::Starter (start_server) by hand, or server-starter is skipped" >&2
    fi
fi

if ! command -v systemfd >/dev/null; then
    # Optional: skipped when it cannot be built here. Needs ~/.cargo/bin on PATH.
    cargo install --locked systemfd || echo "setup: systemfd not installed; its scenario will be skipped" >&2
fi

if ! command -v cargo-watch >/dev/null; then
    # The dev-loop scenario's peers: systemfd + cargo watch, and cargo watch alone.
    cargo install --locked cargo-watch || echo "setup: cargo-watch not installed; its dev-loop lines will be skipped" >&2
fi

for tool in start_server systemd-socket-activate systemfd cargo-watch; do
    if command -v "$tool" >/dev/null; then
        echo "setup: $tool: $(command -v "$tool")"
    else
        echo "setup: $tool: missing (its scenario will be skipped)"
    fi
done
