# The two commands of the quick start, plus the checks CI runs.
# Each target creates the virtualenv and installs the project on first use.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: run demo browser test lint check binary clean

$(BIN)/.installed: pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

## run: the engine on its embedded default (SQLite in ./eskit-data, HTTP on 127.0.0.1:8080)
run: $(BIN)/.installed
	$(BIN)/eskit run

## demo: the bank example as a library, without the engine
demo: $(BIN)/.installed
	$(BIN)/python -m eskit_bank

## browser: Debian's Chromium, for the status page's headless-browser test (installed when missing)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the status-page test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "the status-page test needs Chromium: sudo apt-get install chromium" >&2; exit 1; \
	  fi; }

## test: the whole test suite against real PostgreSQL and nats-server (started by the suite)
test: $(BIN)/.installed browser
	$(BIN)/pytest

## lint: ruff, ruff format and mypy strict
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## binary: the single executable dist/eskit (PyInstaller; see packaging/README.md)
binary: $(BIN)/.installed
	PYTHON=$(BIN)/python packaging/build.sh

## check: everything CI runs
check: lint test

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
