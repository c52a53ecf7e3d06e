#!/usr/bin/env bash
# The second build of relaunch that tests/it/upgrade.rs upgrades to: the same
# source with RELAUNCH_BUILD_ID=upgrade-test-b, in TARGET/upgrade-b/debug.
# Its target dir is seeded with hard links to TARGET/debug's dependencies
# (relaunch's own files left out), so only relaunch itself compiles: about
# 25 s of CPU the first time, nothing once it is up to date. scripts/test
# runs it beside the .deb's build, so the upgrade tests find it built.
#
#   tests/upgrade-build.sh TARGET      (TARGET: the target dir, after `cargo build`)
set -euo pipefail
[ -d "${1:-}/debug" ] || { echo "upgrade-build: give the target dir with a debug build in it" >&2; exit 2; }
target="$(readlink -f "$1")"
out="$target/upgrade-b/debug"
if [ ! -d "$out" ]; then
  mkdir -p "$out"
  # A file that a build running beside removes meanwhile (one of rustc's
  # temporaries) is only not seeded: cargo builds what it misses.
  for d in deps build .fingerprint; do
    if [ -d "$target/debug/$d" ]; then cp -al "$target/debug/$d" "$out/" 2>/dev/null || true; fi
  done
  rm -rf "$out"/deps/relaunch-* "$out"/deps/librelaunch* "$out"/.fingerprint/relaunch-* "$out"/build/relaunch-*
fi
cd "$(dirname "$0")/.."
RELAUNCH_BUILD_ID=upgrade-test-b "${CARGO:-cargo}" build --quiet --bin relaunch --target-dir "$target/upgrade-b"
