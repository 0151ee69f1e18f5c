# nasfcos: two-command set-up.  `make demo` and `make test` create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,dist
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lint bench gpu-check clean help

help:
	@echo "make venv   - create/update .venv with nasfcos[$(EXTRAS)] installed editable"
	@echo "make demo   - compile, export, check and benchmark the shipped paper genotype"
	@echo "make test   - run the test suite (everything, slow end-to-end tests included)"
	@echo "make test-fast - the edit loop: the suite without the tests marked slow"
	@echo "make lint   - ruff check"
	@echo "make bench  - run benchmarks/ (slow; by hand)"
	@echo "make gpu-check - on an NVIDIA GPU machine: install [trt], pytest -m gpu, FP32/FP16/INT8"
	@echo "                 engines, torch vs ORT CUDA vs TensorRT benchmark -> gpu_check.md"

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

# On a machine with an NVIDIA GPU.  ORT_GPU=1 also swaps onnxruntime for onnxruntime-gpu (same
# version) so that the ONNX Runtime CUDA row is measured; without it that row is skipped.
ORT_GPU ?= 0
gpu-check: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[trt]'
	@if [ "$(ORT_GPU)" = "1" ]; then v=$$($(BIN)/python -c 'import onnxruntime as o; print(o.__version__)'); \
	  $(BIN)/python -m pip uninstall --quiet -y onnxruntime && \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check "onnxruntime-gpu==$$v"; fi
	$(BIN)/python -m nasfcos.runtime.gpu_check --out gpu_check

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .hypothesis gpu_check_work
