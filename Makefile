# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,openvino,ray]'
	touch $(STAMP)

# EfficientNet-Lite0 (real ImageNet weights) -> ONNX -> ONNX Runtime vs PyTorch, bundled photos.
demo: venv
	$(BIN)/edgekit bench efficientnet_lite0

test: venv
	$(BIN)/python -m pytest -q

# Recorded benchmarks (benchmarks/results/*.json and *.md); NNCF is the INT8 baseline.
bench: venv
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python benchmarks/fp32_onnxruntime.py
	$(BIN)/python benchmarks/int8_onnxruntime.py
	$(BIN)/python benchmarks/openvino_cpu.py

clean:
	rm -rf $(VENV) exported/*/ .pytest_cache
