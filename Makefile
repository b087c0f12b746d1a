# privtext: the two commands that matter are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PRIVTEXT_DATA_DIR ?= $(CURDIR)/data

.PHONY: run test test-fast test-mechanisms test-slow install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

# install-test for the inner loop: redone only when pyproject.toml changes.
$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## Install, ingest the demo corpus if no snapshot is live, ensure an admin key, then start the
## job worker (huey consumer) in the background and serve on :8000 in the foreground; the
## worker is stopped when the server exits. PRIVTEXT_BIND (default 127.0.0.1:8000) and the other
## PRIVTEXT_* settings apply; Ctrl-C lets requests in flight finish.
run: install
	$(BIN)/privtext ingest --demo --if-missing
	$(BIN)/privtext ensure-admin
	export PATH=$(CURDIR)/$(BIN):$$PATH; \
	$(BIN)/privtext worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/privtext serve

## Install what the tests need (incl. Debian's PostgreSQL and redis-server), start them on
## loopback, run the suite.
test: install-test
	bash scripts/test.sh

## The inner loop (about a minute on 2 idle cores): the suite without the tests marked slow,
## browser (headless Chromium), gunicorn, torch, seconds (statistical checks, noise
## calibration, timeouts), postgres, redis and spark (markers in pyproject.toml), stopping at the
## first failure; no lint; test files on tmpfs where there is one (their fsyncs cost nothing).
## `make test` runs them all. Bytecode is cached even where the
## environment says not to (PYTHONDONTWRITEBYTECODE): pytest's assertion rewriting of every
## test module is otherwise redone on each run.
test-fast: $(VENV)/.test-installed
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -x -q \
	  $(if $(wildcard /dev/shm),--basetemp=/dev/shm/privtext-test-fast) \
	  -m "not slow and not browser and not gunicorn and not torch and not seconds and not postgres and not redis and not spark"

## tests/mechanisms alone, in a fresh virtual environment holding only numpy, scipy,
## dp-accounting, pytest, hypothesis and mpmath (scripts/test-mechanisms.sh): proof that
## mechanisms/ and its tests need nothing of the service, the models or the corpus.
test-mechanisms:
	PYTHON=$(PYTHON) bash scripts/test-mechanisms.sh

## The slow tests (full demo ingest and the like), kept out of `make test`.
test-slow: install-test
	bash scripts/test.sh -m slow

lint: install-test
	$(BIN)/ruff check service mechanisms models federation corpus util jobs tests bench client
	$(BIN)/mypy service mechanisms models federation corpus util jobs client/src

bench: install-test
	@echo "see BENCHMARKS.md for each benchmark's command"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
