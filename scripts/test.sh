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
# RIPE Atlas's own result parser, which the Atlas-format test runs on our output: from PyPI
# into a virtual environment of its own (target/sagan-venv), once.
sagan=target/sagan-venv
if [[ ! -x $sagan/bin/python ]] || ! "$sagan/bin/python" -c 'import ripe.atlas.sagan' 2>/dev/null; then
  python3 -m venv "$sagan"
  "$sagan/bin/pip" install --quiet --disable-pip-version-check 'ripe.atlas.sagan>=2,<3'
fi
export SVCTR_SAGAN_PYTHON="$PWD/$sagan/bin/python"
# ClickHouse as a Python module (chdb: the ClickHouse engine in-process, no server), which
# the replies test loads our rows into to run schema/clickhouse's table and queries.
chdb=target/chdb-venv
if [[ ! -x $chdb/bin/python ]] || ! "$chdb/bin/python" -c 'import chdb' 2>/dev/null; then
  python3 -m venv "$chdb"
  "$chdb/bin/pip" install --quiet --disable-pip-version-check 'chdb>=3,<5'
fi
export SVCTR_CHDB_PYTHON="$PWD/$chdb/bin/python"
cargo build --quiet --workspace --all-targets
cargo test --workspace --no-fail-fast -- --test-threads=2
