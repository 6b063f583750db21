# `make run` and `make test` work on a fresh clone: both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test fuzz lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps re-install when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server,test,diffusers,scale]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/openimagine serve

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# schemathesis against a live server, every check on; FUZZ_EXAMPLES=N for a longer run.
fuzz: $(VENV)/.installed-test
	$(BIN)/python tests/fuzz.py

# Pinned: another ruff may format differently, and lint must not change under us.
lint: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet ruff==0.17.6 mypy==2.4.1
	$(BIN)/ruff check --select F,I src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/openimagine --ignore-missing-imports

bench: $(VENV)/.installed-test
	$(BIN)/python bench/api_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
