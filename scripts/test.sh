#!/usr/bin/env bash
# The test suite: lint, then pytest (CPU only, hermetic: every data set is made by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
