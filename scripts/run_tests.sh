#!/usr/bin/env bash
# Runs the whole test suite; GUI tests (marker "gui") need an X display, given by Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
# Lint and format first: a style error fails CI as a test would.
python -m ruff check src tests scripts benchmarks
python -m ruff format --check src tests scripts benchmarks
if ! command -v xvfb-run >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Xvfb for the napari GUI tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libxcb-icccm4 \
      libxcb-keysyms1 libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-image0 \
      libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 >/dev/null) || true
  fi
fi
if command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest "$@"
fi
echo "WARNING: no xvfb-run (install the xvfb package); running the tests that need no display" >&2
exec python -m pytest -m "not gui" "$@"
