# nasfcos: two-command set-up.  `make demo` and `make test` create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,dist,openvino
PYTEST_ARGS ?=
# The exact torch/torchvision builds (pyproject.toml allows the tested range).
CONSTRAINTS := constraints.txt
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS)
# TORCH_INDEX: a wheel index for torch/torchvision alone, installed first: PyTorch's CPU-only
# index for a CPU machine (a far smaller venv), its cu126 index for a V100. Empty: the
# package index's default build (CUDA 13.2 for torch 2.14.1).
TORCH_INDEX ?=

.PHONY: venv demo test test-fast lint bench gpu-check ort-gpu clean help

help:
	@echo "make venv   - create/update .venv with nasfcos[$(EXTRAS)] installed editable"
	@echo "make demo   - compile, export, check and benchmark the shipped paper genotype"
	@echo "make test   - run the test suite (everything, slow end-to-end tests included)"
	@echo "make test-fast - the edit loop: the suite without the tests marked slow"
	@echo "make lint   - ruff check"
	@echo "make bench  - run benchmarks/ (slow; by hand)"
	@echo "make gpu-check - on an NVIDIA GPU machine: doctor, TensorRT for this GPU, ONNX Runtime's CUDA"
	@echo "                 provider, then the paper table (torch / ORT CUDA / TensorRT fp32/fp16/int8"
	@echo "                 at 600/800/1000 px) with parity -> gpu_check/gpu_check.md"
	@echo "make ort-gpu   - swap onnxruntime (CPU) for onnxruntime-gpu with its CUDA runtime wheels"

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PIP) --index-url '$(TORCH_INDEX)' torch torchvision)
	$(PIP) -e '.[$(EXTRAS)]'
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

# On a machine with an NVIDIA GPU: the TensorRT this GPU needs ([trt], or [trt-volta] on a
# V100) unless one is installed, ONNX Runtime's CUDA provider, then `nasfcos demo --gpu`: the
# same pipeline as `make demo`, GPU plan.  It checks the machine first (nasfcos doctor) and
# stops in one line, with the fix, when something cannot run.  About 5-8 minutes on an H100.
gpu-check: $(STAMP)
	@set -e; set -- $$($(BIN)/nasfcos doctor --extras); \
	  $(BIN)/python -c 'import tensorrt' 2>/dev/null || $(PIP) -e ".[$$1]"; \
	  $(BIN)/python -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
	    || $(MAKE) --no-print-directory ort-gpu ORT_EXTRA=$$2
	$(BIN)/nasfcos demo --gpu -o gpu_check

# onnxruntime and onnxruntime-gpu install the same module: install the GPU wheel with its CUDA
# and cuDNN runtime wheels, remove both, then put the GPU wheel's files back alone.
# ORT_EXTRA=gpu-volta on a V100 (nasfcos doctor --extras says which).
ORT_EXTRA ?= gpu
ort-gpu: $(STAMP)
	$(PIP) -e '.[$(ORT_EXTRA)]'
	v=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))') && \
	  $(BIN)/python -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu && \
	  $(PIP) --no-deps "onnxruntime-gpu==$$v"

clean:
	rm -rf $(VENV) demo_out gpu_check .pytest_cache .ruff_cache .hypothesis
