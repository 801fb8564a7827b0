#!/usr/bin/env bash
# The test suite: lint, then pytest (CPU only, hermetic: every data set is made by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests (tests/test_browser.py) drive Debian's chromium through its chromedriver; the music
# tests (tests/test_music.py) play a tune with fluidsynth and a General MIDI sound font.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/fluidsynth ] \
  || [ ! -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then
  packages="chromium chromium-driver fluidsynth fluid-soundfont-gm"
  echo "installing Debian's $packages for the browser and audio tests" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $packages >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends $packages >/dev/null; } \
    || echo "could not install $packages: those tests will be skipped (and fail under CI=true)" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
