# dbchaos — the two quick-start commands are `make lab` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve lab test test-all fuzz drills browser lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dbchaos needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## Run dbchaos on an embedded PostgreSQL with sample data (http://127.0.0.1:8080).
serve: $(STAMP)
	$(BIN)/dbchaos serve

## The chaos lab: embedded PostgreSQL, a demo shop under traffic, and a dashboard (http://127.0.0.1:8080/lab/).
lab: $(STAMP)
	$(BIN)/dbchaos lab

## The fast suite: everything but drills, fuzzing and browser tests, on real PostgreSQL (embedded 18
## and Debian's 15 if present). Two workers, each with PostgreSQL servers of its own.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not drill and not browser and not fuzz" -q -n 2

## Fuzzing: schemathesis over the API, hypothesis over the validators, the injection corpus
## (the 1,200-request schemathesis run is a drill).
fuzz: $(STAMP)
	$(BIN)/python -m pytest -m "fuzz and not drill" -q -n 2

## The slow crash drills only.
drills: $(STAMP)
	$(BIN)/python -m pytest -m drill -q -n 2

## The lab dashboard in Debian's headless Chromium (screenshots in test-artifacts/lab/).
browser: $(STAMP)
	$(BIN)/python -m pytest -m browser -q

## Everything, drills included.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

## Benchmarks (by hand, not CI): figures next to plain psycopg comparators; see docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
