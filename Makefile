# privtext: the two commands that matter are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PRIVTEXT_DATA_DIR ?= $(CURDIR)/data

.PHONY: run test test-slow install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

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

## The slow tests (full demo ingest and the like), kept out of `make test`.
test-slow: install-test
	bash scripts/test.sh -m slow

lint: install-test
	$(BIN)/ruff check service mechanisms models corpus util jobs tests bench
	$(BIN)/mypy service mechanisms models corpus util jobs

bench: install-test
	@echo "see BENCHMARKS.md for each benchmark's command"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
