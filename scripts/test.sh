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

# In CI (CI=true) a missing service is an error, not a skipped test.
if [ -n "${CI:-}" ]; then
  if [ -z "${PRIVTEXT_TEST_POSTGRES_URL:-}" ]; then
    echo "test.sh: PostgreSQL could not be started; refusing to run without it in CI" >&2
    exit 1
  fi
  if [ -z "${PRIVTEXT_TEST_REDIS_URL:-}" ]; then
    echo "test.sh: Redis could not be started; refusing to run without it in CI" >&2
    exit 1
  fi
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "test.sh: chromium/chromedriver missing; refusing to run without them in CI" >&2
    exit 1
  fi
fi

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  # The default run also lints and type-checks (STYLE.md: a linter and a type checker in CI).
  "$BIN/ruff" check service mechanisms models federation corpus util jobs tests bench client
  "$BIN/mypy" service mechanisms models federation corpus util jobs client/src
  args=(-m "not slow")
fi
exec "$BIN/python" -m pytest "${args[@]}"
