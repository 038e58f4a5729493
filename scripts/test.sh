#!/usr/bin/env bash
# Install what the tests need and run the whole suite, every tier (unit, pg, e2e, slow).
# This is the README's second command and exactly what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
python3 -m ruff check src tests bench
python3 -m mypy
python3 -m pytest -m "unit or pg or e2e or slow" "$@"
