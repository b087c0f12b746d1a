#!/usr/bin/env bash
# Makes sure Debian's headless Chromium and its WebDriver are installed for the browser tests
# (tests/service/test_budget_page.py drives /usr/bin/chromium through /usr/bin/chromedriver).
#
#   source scripts/test-browser.sh     # scripts/test.sh does this
#   bash scripts/test-browser.sh       # the same, standalone
#
# Idempotent and quiet: nothing happens when both binaries are found. Otherwise, as root, the
# packages are installed with apt-get, trying the existing package lists first and running
# `apt-get update` only when that fails. Never fatal: without them the browser test is skipped.

_privtext_browser_ready() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

_privtext_browser_install() {
  _privtext_browser_ready && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "test-browser: chromium/chromedriver missing and cannot apt-get install; browser tests will be skipped" >&2
    return 0
  fi
  echo "test-browser: installing Debian's chromium and chromium-driver" >&2
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
  if ! "${apt[@]}" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    "${apt[@]}" >/dev/null 2>&1 || true
  fi
  _privtext_browser_ready ||
    echo "test-browser: installing chromium failed; browser tests will be skipped" >&2
  return 0
}

_privtext_browser_install
