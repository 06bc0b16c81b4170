#!/usr/bin/env bash
# Builds (installing what the build needs) and runs every test; prints ctest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
TTT_BUILD_DIR=${TTT_BUILD_DIR:-build} scripts/setup.sh
ctest --test-dir "${TTT_BUILD_DIR:-build}" --output-on-failure -j "$(nproc)"
