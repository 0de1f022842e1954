# The two commands: `make serve` and `make test`. Both create or refresh .venv/ from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# The example model plugin too: tests/e2e runs it on a real worker (its tests run with the rest).
PLUGIN_EXAMPLE := examples/revtune-plugin-example

$(STAMP): pyproject.toml $(PLUGIN_EXAMPLE)/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e $(PLUGIN_EXAMPLE)
	touch $(STAMP)

# torch only for the tests (the export's PyTorch snippet is run): not a dependency of the service.
TEST_STAMP := $(VENV)/.installed-test

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,torch]'
	touch $(TEST_STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/revtune serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The engine's tests (tests/hypercore: in-process, compile-bound, nothing shared between them) run on
# two processes, the rest (databases, brokers, workers, browsers) on one. PYTEST_ARGS runs what it names.
test: lint $(TEST_STAMP)
ifeq ($(strip $(PYTEST_ARGS)),)
	$(BIN)/python -m pytest -n 2 tests/hypercore
	$(BIN)/python -m pytest --ignore=tests/hypercore
else
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .revtune
