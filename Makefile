# nasfcos: two-command set-up.  `make demo` and `make test` create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,dist
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lint bench clean help

help:
	@echo "make venv   - create/update .venv with nasfcos[$(EXTRAS)] installed editable"
	@echo "make demo   - compile, export, check and benchmark the shipped paper genotype"
	@echo "make test   - run the test suite (everything, slow end-to-end tests included)"
	@echo "make test-fast - the edit loop: the suite without the tests marked slow"
	@echo "make lint   - ruff check"
	@echo "make bench  - run benchmarks/ (slow; by hand)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nasfcos demo --out demo_out --fpn-channels 128

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	@set -e; for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .hypothesis
