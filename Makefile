# Two entry points: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; install Python 3.11+ or run 'make PYTHON=python3 ...'" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Tests run runner="tagent" on the real TAgent (the tagent extra), and steps on a real Ray cluster (the ray extra). TAgent installs a `tagent` command too and
# pip keeps the last one written, so the client is installed again last: `tagent` stays tagentd's CLI.
$(STAMP): $(BIN)/python pyproject.toml client/pyproject.toml
	$(BIN)/python -m pip install -q -e ./client -e '.[test,tagent,otel,ray]'
	$(BIN)/python -m pip install -q --no-deps --force-reinstall -e ./client
	@touch $(STAMP)

# The demo needs only tagentd and the client (not the test tools or TAgent's LiteLLM); a venv already set up
# for the tests has everything it needs.
$(DEMO_STAMP): $(BIN)/python pyproject.toml client/pyproject.toml
	@if [ $(STAMP) -nt pyproject.toml ] && [ $(STAMP) -nt client/pyproject.toml ]; then :; \
	else $(BIN)/python -m pip install -q -e ./client -e .; fi
	@touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m tagentd.cli.demo

# Most tests wait on real daemons and workers rather than compute, so the suite runs in up to 4 processes
# (pytest-xdist, one per core: on a 2-core machine 6.5 min instead of 11.5 in one process).
test: lint
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist worksteal

# Style and correctness (ruff) and the layers of docs/architecture.md (import-linter); part of `make test`.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python bench/daemon.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
