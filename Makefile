# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# `make demo` installs what the demo needs (edgekit with the openvino extra; torch is a
# CUDA build, most of the size); `make test` adds the test, ray, litert and executorch extras to the same venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet -c constraints.txt
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: venv demo-env demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(DEMO_STAMP): setup.cfg constraints.txt | $(BIN)/python
	$(PIP) -e '.[openvino]'
	touch $@

# After `make demo` this installs only the extras (pytest, scikit-learn, Ray, and the
# LiteRT and ExecuTorch runtimes with their converters, whose tests skip without them).
$(TEST_STAMP): $(DEMO_STAMP)
	$(PIP) -e '.[openvino,test,ray,litert,executorch]'
	touch $@

demo-env: $(DEMO_STAMP)

# The full development environment: everything `make test` needs, Ray included.
venv: $(TEST_STAMP)

# EfficientNet-Lite0 (real ImageNet weights) -> ONNX -> ONNX Runtime vs PyTorch, bundled photos.
demo: $(DEMO_STAMP)
	$(BIN)/edgekit bench efficientnet_lite0

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

# Recorded benchmarks (benchmarks/results/*.json and *.md); NNCF is the INT8 baseline.
bench: $(DEMO_STAMP)
	$(PIP) -e '.[openvino,bench]'
	$(BIN)/python benchmarks/fp32_onnxruntime.py
	$(BIN)/python benchmarks/int8_onnxruntime.py
	$(BIN)/python benchmarks/openvino_cpu.py

clean:
	rm -rf $(VENV) exported/*/ .pytest_cache
