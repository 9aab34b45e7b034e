#!/bin/sh
# Lays out onerelay's runtime files under $1 (default /opt/onerelay) from a built source tree ($2,
# default the current directory): what the container image holds. Used by the Dockerfile and by
# test/e2e/container.test.ts, so the test exercises the image's layout without a Docker engine.
set -eu
target=${1:-/opt/onerelay}
source=${2:-.}
mkdir -p "$target"
cp -R "$source/dist" "$source/config" "$source/package.json" "$source/package-lock.json" "$target/"
cp "$source/README.md" "$target/" 2>/dev/null || true
cd "$target"
# runtime dependencies only; the build already happened (no install scripts needed at run time)
npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error
