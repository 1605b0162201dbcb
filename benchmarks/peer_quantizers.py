"""Peer INT8 quantizers, each in its own virtual environment, for side-by-side benchmarks.

Like ``baseline_quantizers.py``, every function quantizes an FP32 ONNX classifier with the
given calibration images the way a typical user of that tool would, and writes a QDQ ONNX
model (QuantizeLinear / DequantizeLinear, loadable by ONNX Runtime and OpenVINO) to ``out``:

- ``aimet_adaround_int8``: AIMET-ONNX ``QuantizationSimModel`` (per-channel symmetric INT8
  weights, asymmetric INT8 activations, min/max) with AdaRound on the calibration images,
  then ``compute_encodings`` and ``to_onnx_qdq`` (worker: ``peers/aimet_adaround.py``);
- ``modelopt_int8``: NVIDIA TensorRT Model Optimizer's ONNX PTQ,
  ``modelopt.onnx.quantization.quantize(quantize_mode="int8")`` calibrated on a numpy array
  with the CPU execution provider (worker: ``peers/modelopt_ptq.py``).

Their pins clash with the project's own environment (ModelOpt wants onnx 1.21 and
onnxruntime-gpu 1.24; AIMET wants torch < 2.15), so each runs in a virtual environment
under ``benchmarks/.peer-venvs/<name>`` that ``ensure_peer_venv`` creates on first use
(1-3 minutes each, 2 GB each) and the worker is started there with
``subprocess``. Calibration images go over as a temporary ``.npy`` file.

Torch: both peers need it (AIMET's AdaRound optimizes with it; ModelOpt imports it), and
PyPI's Linux torch wheel is the CUDA build that pulls ~3 GB of nvidia-* wheels. So the
pins ask for the CPU build ``torch==2.13.0+cpu`` first (from pip's configured find-links,
or from the PyTorch CPU index when that host answers), and fall back to PyPI's
``torch==2.13.0`` (CUDA build) with a warning when no CPU wheel can be had.

Benchmark support only: edgekit never imports this module. Each function returns
``{"seconds": quantization wall time inside the worker, "version": peer package version,
"settings": {...}, "timings": {...}}`` and raises ``RuntimeError`` with the worker's last
output lines when it fails.

Smoke check on EfficientNet-Lite0 (calibrate on the bundled photos' odd views, judge top-1
agreement with FP32 on the even views, in ONNX Runtime and OpenVINO):

    .venv/bin/python benchmarks/peer_quantizers.py [--peers aimet modelopt]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
PEER_VENVS = HERE / ".peer-venvs"
WORKERS = HERE / "peers"

TORCH_CPU = "torch==2.13.0+cpu"
TORCH_FALLBACK = "torch==2.13.0"  # PyPI's Linux wheel: CUDA build, pulls the nvidia-* wheels
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# Pins found to work together (Python 3.11, Linux x86-64, CPU only), installed with one
# ``pip install``. The first entry is the torch pin (swapped for TORCH_FALLBACK when no CPU
# wheel is reachable); the rest pin the peer and the libraries its results depend on.
PEER_PINS: dict[str, list[str]] = {
    "aimet": [
        TORCH_CPU,
        "aimet-onnx==2.42.0",
        "torchvision==0.28.0",  # onnx2torch needs it; 0.28 is the release for torch 2.13
        "onnx==1.23.2",
        "onnxruntime==1.32.0",
        "onnx-ir==1.1.0",
        "onnxscript==0.7.2",
        "onnx2torch==1.5.15",
        "numpy==2.4.6",
        "scipy==1.17.1",
    ],
    "modelopt": [
        TORCH_CPU,
        "nvidia-modelopt[onnx]==0.47.0",
        "onnx==1.21.0",  # modelopt[onnx] pins onnx~=1.21.0
        "onnxruntime-gpu==1.24.4",  # modelopt[onnx] pins onnxruntime-gpu~=1.24.2 on Linux x86-64; its CPU provider is used
        "onnx-graphsurgeon==0.6.1",
        "onnxconverter-common==1.16.0",
        "onnxslim==0.1.98",
        "polygraphy==0.53.6",
        "cupy-cuda12x==14.2.0",  # required by modelopt[onnx]; never used on a CPU-only machine
        "numpy==2.4.6",
    ],
}
PEER_PACKAGE = {"aimet": "aimet-onnx", "modelopt": "nvidia-modelopt"}

# AIMET's documented AdaRound default is 10,000 iterations per layer. On 2 CPU cores each of
# EfficientNet-Lite0's 50 Conv/Gemm layers costs ~10 s of activation sampling (AIMET re-runs
# the FP32 and the simulated model over every calibration batch for each layer, so this part
# grows with the number of calibration images, not with iterations) plus ~0.05-0.2 s per
# iteration (batch of 8). Measured with 77 calibration images: 20 iterations ~17 min, 100
# iterations ~19.5 min (1169 s; 1% of the weights end up rounded differently from
# round-to-nearest); 10,000 would take about a day. With all 77 images no iteration count
# gets under ~10 min on 2 cores.
AIMET_ADAROUND_ITERATIONS = 100
AIMET_BATCH_SIZE = 8  # images per calibration batch (the batch each AdaRound step optimizes on)

MARKER = ".edgekit-peer-pins.json"


class PeerVenvError(RuntimeError):
    """A peer's virtual environment could not be created or installed."""


def peer_venv_python(name: str) -> Path:
    return PEER_VENVS / name / "bin" / "python"


def _torch_cpu_index_reachable(timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(TORCH_CPU_INDEX + "/torch/", timeout=timeout) as response:
            return response.status == 200
    except OSError:  # URLError, timeouts, refused connections
        return False


def _pip_install(python: Path, requirements: list[str], extra_args: list[str], log) -> subprocess.CompletedProcess:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *extra_args, *requirements]
    log(f"peer venv: {' '.join(command[1:])}")
    return subprocess.run(command, capture_output=True, text=True, check=False)


def ensure_peer_venv(name: str, log=lambda message: print(message, file=sys.stderr)) -> Path:
    """The python of ``benchmarks/.peer-venvs/<name>``, created and pip-installed with
    ``PEER_PINS[name]`` unless a previous call already installed exactly those pins."""
    if name not in PEER_PINS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEER_PINS)}")
    pins = PEER_PINS[name]
    root = PEER_VENVS / name
    python = peer_venv_python(name)
    marker = root / MARKER
    if python.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()).get("pins") == pins:
                return python
        except (OSError, ValueError):
            pass

    start = time.perf_counter()
    log(f"peer venv: creating {root}")
    venv.EnvBuilder(clear=True, with_pip=True).create(root)

    # CPU torch from pip's find-links or, when that host answers, the PyTorch CPU index
    extra = ["--extra-index-url", TORCH_CPU_INDEX] if _torch_cpu_index_reachable() else []
    requirements = pins
    done = _pip_install(python, requirements, extra, log)
    if done.returncode != 0 and "No matching distribution found for " + TORCH_CPU in done.stdout + done.stderr:
        log(f"peer venv: no {TORCH_CPU} wheel reachable; falling back to {TORCH_FALLBACK} from PyPI (CUDA build, ~3 GB of nvidia-* wheels)")
        requirements = [TORCH_FALLBACK if p == TORCH_CPU else p for p in pins]
        done = _pip_install(python, requirements, [], log)
    if done.returncode != 0:
        raise PeerVenvError(f"could not install the {name} peer venv at {root}; pip said:\n{_tail(done.stdout + done.stderr)}")
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"pins": pins, "installed": requirements, "install_seconds": seconds}, indent=2))
    log(f"peer venv: {name} ready in {seconds:.0f} s")
    return python


def _tail(text: str, lines: int = 30) -> str:
    kept = [line for line in text.splitlines() if line.strip() and "is ignored: it is neither a file nor a directory" not in line]
    return "\n".join(kept[-lines:])


def _run_worker(peer: str, script: str, fp32_onnx: Path, out: Path, calibration: np.ndarray, extra: list[str]) -> dict:
    python = ensure_peer_venv(peer)
    x = np.ascontiguousarray(calibration, dtype=np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"calibration must be a non-empty NCHW array, got shape {x.shape}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"peer-{peer}-") as tmp:
        calibration_file, result_file = Path(tmp) / "calibration.npy", Path(tmp) / "result.json"
        np.save(calibration_file, x)
        # The worker gets its own copy: ModelOpt rewrites the file it is given in place.
        model_file = Path(tmp) / "fp32.onnx"
        onnx.save(onnx.load(str(fp32_onnx)), str(model_file))
        command = [
            str(python),
            str(WORKERS / script),
            "--model", str(model_file),
            "--calibration", str(calibration_file),
            "--out", str(out.resolve()),
            "--result", str(result_file),
            *extra,
        ]
        env = {**os.environ, "PYTHONNOUSERSITE": "1", "TMPDIR": tmp}
        env.pop("PYTHONPATH", None)  # nothing from the project's environment leaks in
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp, check=False)
        if done.returncode != 0 or not result_file.exists() or not out.exists():
            raise RuntimeError(
                f"{PEER_PACKAGE[peer]} worker {script} failed (exit {done.returncode}); last output:\n{_tail(done.stderr or done.stdout)}"
            )
        return json.loads(result_file.read_text())


def aimet_adaround_int8(
    fp32_onnx: Path,
    out: Path,
    calibration: np.ndarray,
    *,
    iterations: int = AIMET_ADAROUND_ITERATIONS,
    batch_size: int = AIMET_BATCH_SIZE,
) -> dict:
    """AIMET-ONNX INT8 with AdaRound; writes the QDQ model to ``out`` (see peers/aimet_adaround.py).

    Per-channel symmetric INT8 weights (AdaRounded for every Conv/Gemm), asymmetric
    per-tensor INT8 activations exported as uint8 with a zero point, min/max calibration,
    ``calibration`` (float32 NCHW) fed in batches of ``batch_size``; ``iterations`` AdaRound
    steps per layer (AIMET recommends 10,000; see AIMET_ADAROUND_ITERATIONS).
    """
    return _run_worker("aimet", "aimet_adaround.py", fp32_onnx, out, calibration, ["--iterations", str(iterations), "--batch-size", str(batch_size)])


def modelopt_int8(fp32_onnx: Path, out: Path, calibration: np.ndarray) -> dict:
    """NVIDIA ModelOpt ONNX INT8 PTQ on the CPU provider; writes the QDQ model to ``out`` (see peers/modelopt_ptq.py).

    ModelOpt's defaults (entropy calibration, TensorRT-style Q/DQ placement, per-channel
    symmetric weights, symmetric int8 activations) except ``calibration_eps=["cpu"]`` and
    ``high_precision_dtype="fp32"``; ``calibration`` (float32 NCHW) is passed as one array
    and fed one image per step (the model's batch dimension is dynamic).
    """
    return _run_worker("modelopt", "modelopt_ptq.py", fp32_onnx, out, calibration, [])


def modelopt_fp16(fp32_onnx: Path, out: Path, calibration: np.ndarray, *, keep_io_types: bool = True) -> dict:
    """NVIDIA ModelOpt AutoCast, FP32 -> mixed FP32/FP16 ONNX; writes it to ``out`` (see peers/modelopt_autocast.py).

    AutoCast's defaults (data_max 512, init_max 65504, CPU provider) with ``calibration``
    (float32 NCHW) as its calibration data and ``keep_io_types``. Not an INT8 peer, so not
    in ``PEERS``; the result adds ``kept_fp32`` (node, op_type, why) and ``fp16_nodes``.
    """
    return _run_worker("modelopt", "modelopt_autocast.py", fp32_onnx, out, calibration,
                       ["--settings", json.dumps({"keep_io_types": keep_io_types})])


PEERS = {"aimet": aimet_adaround_int8, "modelopt": modelopt_int8}


# --------------------------------------------------------------------------- smoke check


def _top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    return float(100.0 * np.mean(np.argmax(logits, axis=1) == np.argmax(reference, axis=1)))


def _run_onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _run_exact_qdq(path: Path, x: np.ndarray) -> np.ndarray:
    """The QDQ graph as written (ONNX Runtime with graph optimizations off: float ops between
    Q/DQ, no fused integer kernels, so no int16 saturation on CPUs without VNNI)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _rounding_changes(fp32_path: Path, qdq_path: Path) -> dict | None:
    """For weights stored as integers (AIMET's export): how many differ from round-to-nearest
    of the FP32 weight with the same scale, i.e. what AdaRound changed. None if the QDQ model
    stores float weights."""
    import onnx
    from onnx import numpy_helper

    fp32 = onnx.load(str(fp32_path))
    fp32_weights = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    qdq = onnx.load(str(qdq_path))
    initializers = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    made_by = {o: n for n in qdq.graph.node for o in n.output}
    changed = total = layers = 0
    for node in qdq.graph.node:
        dq = made_by.get(node.input[1]) if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 else None
        original = fp32_nodes.get(node.name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers or original is None:
            continue
        q = initializers[dq.input[0]].astype(np.int32)
        scale = initializers[dq.input[1]].astype(np.float64)
        zero = initializers[dq.input[2]].astype(np.int32) if len(dq.input) > 2 else np.zeros_like(scale, dtype=np.int32)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        w = fp32_weights[original.input[1]].astype(np.float64)
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis] = -1
        info = np.iinfo(initializers[dq.input[0]].dtype)
        nearest = np.clip(np.round(w / scale.reshape(shape)) + zero.reshape(shape), info.min, info.max)
        changed += int(np.sum(nearest != q))
        total += q.size
        layers += 1
    if not layers:
        return None
    return {"layers": layers, "weights": total, "rounded_differently_from_nearest": changed, "percent": 100.0 * changed / total}


def _run_openvino(path: Path, x: np.ndarray) -> np.ndarray:
    from edgekit.backends.openvino import shared_core

    compiled = shared_core().compile_model(str(path), "CPU")
    return np.concatenate([np.asarray(compiled(x[i : i + 1])[0]) for i in range(len(x))])


def _qdq_summary(path: Path) -> dict:
    """What the exported graph holds: Q/DQ counts, activation types and zero points."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    activation_zero_points = [
        initializers[n.input[2]] for n in quantize if n.input[0] not in initializers and len(n.input) > 2 and n.input[2] in initializers
    ]
    weight_types = sorted({str(initializers[n.input[0]].dtype) for n in dequantize if n.input[0] in initializers})
    return {
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "quantize_linear": len(quantize),
        "dequantize_linear": len(dequantize),
        "activation_types": sorted({str(z.dtype) for z in activation_zero_points}),
        "activation_quantizers_with_nonzero_zero_point": int(sum(bool(np.any(z)) for z in activation_zero_points)),
        "activation_quantizers": len(activation_zero_points),
        "stored_weight_types": weight_types or ["float32 (quantized at run time by QuantizeLinear)"],
    }


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run the peer quantizers on EfficientNet-Lite0 and check their output in ONNX Runtime and OpenVINO")
    parser.add_argument("--peers", nargs="+", choices=sorted(PEERS), default=sorted(PEERS))
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the quantized models here (default: a temporary folder)")
    parser.add_argument("--aimet-iterations", type=int, default=AIMET_ADAROUND_ITERATIONS)
    args = parser.parse_args()

    sys.path.insert(0, str(HERE.parent))
    from edgekit.data import HELD_OUT_EVALUATION, default_calibration, load_all
    from edgekit.steps.export import ModelRequest, build_artifact

    fp32, _ = build_artifact(ModelRequest("efficientnet_lite0"))
    x_cal, _ = load_all(default_calibration().resolve(), fp32.preprocessing)
    x_eval, _ = load_all(HELD_OUT_EVALUATION.resolve(), fp32.preprocessing)
    print(f"FP32 {fp32.onnx_path}; calibration {x_cal.shape[0]} views, held-out {x_eval.shape[0]} views", flush=True)
    reference = {"onnxruntime": _run_onnxruntime(fp32.onnx_path, x_eval), "openvino": _run_openvino(fp32.onnx_path, x_eval)}

    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        for peer in args.peers:
            venv_start = time.perf_counter()
            ensure_peer_venv(peer)
            venv_seconds = time.perf_counter() - venv_start
            out = out_dir / f"efficientnet_lite0-{peer}-int8.onnx"
            start = time.perf_counter()
            if peer == "aimet":
                result = aimet_adaround_int8(fp32.onnx_path, out, x_cal, iterations=args.aimet_iterations)
            else:
                result = PEERS[peer](fp32.onnx_path, out, x_cal)
            row = {
                **result,
                "venv_seconds": venv_seconds,
                "subprocess_seconds": time.perf_counter() - start,
                "graph": _qdq_summary(out),
                # top-1 agreement with the FP32 model on the same runtime, held-out views
                "agreement_onnxruntime": _top1_agreement(_run_onnxruntime(out, x_eval), reference["onnxruntime"]),
                "agreement_openvino": _top1_agreement(_run_openvino(out, x_eval), reference["openvino"]),
                "agreement_exact_qdq": _top1_agreement(_run_exact_qdq(out, x_eval), reference["onnxruntime"]),
                "weight_rounding_vs_nearest": _rounding_changes(fp32.onnx_path, out),
            }
            report[peer] = row
            print(
                f"{PEER_PACKAGE[peer]} {result['version']}: quantized in {result['seconds']:.0f} s "
                f"(worker {row['subprocess_seconds']:.0f} s); top-1 agreement with FP32 on {len(x_eval)} held-out views: "
                f"ONNX Runtime {row['agreement_onnxruntime']:.1f}%, OpenVINO {row['agreement_openvino']:.1f}%, "
                f"exact QDQ {row['agreement_exact_qdq']:.1f}%",
                flush=True,
            )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
