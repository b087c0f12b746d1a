#!/usr/bin/env bash
# Runs the test suite: starts the services the tests need on loopback, then pytest.
# Extra arguments go to pytest (e.g. `-m slow`); the default run excludes slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin

if [ -f scripts/test-services.sh ]; then
  # shellcheck source=/dev/null
  source scripts/test-services.sh
fi
# shellcheck source=/dev/null
[ -f scripts/test-browser.sh ] && source scripts/test-browser.sh

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(-m "not slow")
fi
exec "$BIN/python" -m pytest "${args[@]}"
