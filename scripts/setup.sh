#!/usr/bin/env bash
# Create .venv with captioner and its test tools; later runs reuse it until pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (first run: downloads torch, a few minutes)" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
fi
