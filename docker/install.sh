#!/bin/sh
# Lays out onerelay's runtime files under $1 (default /opt/onerelay) from a built source tree ($2,
# default the current directory): what the container image holds. Used by the Dockerfile and by
# test/e2e/container.test.ts, so the test exercises the image's layout without a Docker engine.
set -eu
target=${1:-/opt/onerelay}
source=$(cd "${2:-.}" && pwd)
mkdir -p "$target"
cp -R "$source/dist" "$source/config" "$source/package.json" "$source/package-lock.json" "$target/"
cp "$source/README.md" "$target/" 2>/dev/null || true
cd "$target"
# runtime dependencies only; the build already happened (no install scripts needed at run time)
npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error
# better-sqlite3's native module (the activity database) is taken from the built tree, since install
# scripts do not run here; without it the relay runs and says that recording is off
native=node_modules/better-sqlite3/build/Release/better_sqlite3.node
if [ -f "$source/$native" ]; then
  mkdir -p "$(dirname "$native")"
  cp "$source/$native" "$native"
fi
