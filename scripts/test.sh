#!/usr/bin/env bash
# Runs every test: byte-vector unit tests, engine scenario tests, and (as root) the end-to-end
# tests in the namespace lab. With CI set, the lab tests fail instead of skipping when they
# cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [[ $(id -u) -ne 0 && -z "${CI:-}" ]]; then
  echo "test: not root: the namespace-lab tests will be skipped (run as root to include them)" >&2
fi
cargo build --quiet --workspace --all-targets
cargo test --workspace --no-fail-fast -- --test-threads=2
