#!/usr/bin/env bash
# Create .venv with captioner and its test tools; later runs reuse it until pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
need_gb=7  # torch's CUDA build (the one torchvision matches): 5.6 GB installed, 5.8 GB at the peak of the install
if [ ! -f "$stamp" ]; then
  free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "setup: installing torch into .venv needs about $need_gb GB free on $(pwd), but only $free_gb GB is" >&2
    exit 1
  fi
  echo "setting up .venv (first run: downloads torch, a few minutes)" >&2
  python3 -m venv .venv
  # --no-cache-dir: no second copy of the wheels left behind in ~/.cache
  .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -e ".[dev]" \
    2> >(grep -v "^WARNING: Location" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
fi
