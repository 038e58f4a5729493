#!/usr/bin/env bash
# Install what the tests need and run the whole suite, every tier (unit, pg, e2e, slow).
# This is the README's second command and exactly what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
PY="${STRATA_VENV:-$(pwd)/.venv}/bin/python"
"$PY" -m ruff check src tests bench
"$PY" -m mypy
"$PY" -m pytest -m "unit or pg or e2e or slow" "$@"
# historical servers are lazy (FUSE) where FUSE works: run the end-to-end tier
# again with materialized ones, so both modes are proven on every run
STRATA_TEST_HISTORICAL=materialize "$PY" -m pytest -m e2e "$@"
