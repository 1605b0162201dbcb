"""INT8 side by side: edgekit vs five peer quantizers, same calibration images, same held-out views.

One run, one machine. For every model, every quantizer gets the same calibration images
and every INT8 model is judged on the same held-out images, on two CPU runtimes through
edgekit's own backends (``get_backend("onnxruntime")`` / ``get_backend("openvino")``;
edgekit's INT8 artifacts run in the CPU form each backend makes for this CPU, a peer's
QDQ file runs as the peer wrote it):

- quantizers: edgekit (default), edgekit AdaRound (``QuantizeOptions(rounding="adaround")``),
  ONNX Runtime ``quantize_static`` and NNCF's default (baseline_quantizers.py), AIMET-ONNX
  AdaRound and NVIDIA ModelOpt ONNX INT8 PTQ (peer_quantizers.py, each in its own venv);
- figures: top-1 agreement and mean KL vs the FP32 model's PyTorch logits on the held-out
  images, top-1 vs labels where there are labels, batch-1 p50 latency, the quantizer's wall
  time, the Conv/Gemm/MatMul layers its graph leaves in float;
- latency, compared as the project's rules ask: after every quantizer of a model has made
  its file (and its accuracy was measured), every (quantizer, backend) entry of that model,
  the FP32 row included, is timed in ``--rounds`` alternating rounds (default 3; round 1:
  every entry once, round 2: every entry again, in reverse order, ...), each round a p50 over
  ``--iterations`` runs; per entry the JSON keeps every round's p50 and their median, and the
  tables and verdicts use the median. The sessions the accuracy was measured with stay
  loaded across the rounds (one model's entries at a time; ``--reload``: load the same
  compiled file again each round instead);
- models: efficientnet_lite0/1/2 (real ImageNet weights; calibration = the bundled photos'
  odd views, held-out = their even views), the digits network of tests/digits.py (trained
  here on scikit-learn's digits; calibration = 200 training images, held-out = the 540
  validation images with true labels), resnet50, mobilenet_v2 and mobilenet_v3_large
  (random init: time and latency only).

Quantizer wall time, compared for everyone: the whole call, from FP32 ONNX + calibration
images to the INT8 file (edgekit: ``quantize_artifact`` into a fresh temporary artifact
root, so nothing is reused, which includes decoding its calibration images; ORT and NNCF:
the in-process call, their modules imported beforehand; AIMET and ModelOpt: the subprocess
in their own venv, which includes starting Python and importing torch). Also recorded:
edgekit's own "seconds" and stages, and the peers' in-worker quantization seconds.

    .venv/bin/python benchmarks/int8_peers.py                  # everything, over 1 h on 2 cores
    .venv/bin/python benchmarks/int8_peers.py --quick          # smoke run (lite0, edgekit + ORT)
    .venv/bin/python benchmarks/int8_peers.py --models efficientnet_lite0 --quantizers edgekit nncf

Writes results/int8_peers.{json,md} (a --quick run writes to a temporary folder unless --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from run_facts import CPU_FLAGS, cpu_flags, git_state, log  # noqa: E402
sys.path.insert(0, str(REPO / "tests"))  # digits.py: the digits network and its data

from baseline_quantizers import ORT_CALIBRATION_BATCH, nncf_default_int8, ort_default_int8  # noqa: E402
from peer_quantizers import AIMET_BATCH_SIZE, PEER_PACKAGE, aimet_adaround_int8, modelopt_int8  # noqa: E402

from edgekit.artifacts import now_iso  # noqa: E402
from edgekit.backends import BackendOptions, get_backend  # noqa: E402
from edgekit.core import Artifact  # noqa: E402
from edgekit.data import HELD_OUT_EVALUATION, default_calibration, evaluation_images, load_all  # noqa: E402
from edgekit.evaluation import compare_to_baseline  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402
from edgekit.steps.export import ModelRequest, build_artifact  # noqa: E402
from edgekit.options import Settings  # noqa: E402
from edgekit.steps.int8 import pricing_backends, quantize_artifact  # noqa: E402
from edgekit.timing import TimingOptions, machine_info, time_session  # noqa: E402
from edgekit.transforms.quantize import QuantizeOptions  # noqa: E402

RESULTS = HERE / "results"

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "digits", "resnet50", "mobilenet_v2", "mobilenet_v3_large")
RANDOM_INIT = ("resnet50", "mobilenet_v2", "mobilenet_v3_large")
LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # real weights: the KL goal
QUANTIZERS = ("edgekit", "edgekit-adaround", "ort", "nncf", "aimet", "modelopt")
LABELS = {
    "edgekit": "edgekit (default)",
    "edgekit-adaround": "edgekit AdaRound",
    "ort": "ONNX Runtime quantize_static",
    "nncf": "NNCF default",
    "aimet": "AIMET-ONNX AdaRound",
    "modelopt": "TensorRT Model Optimizer ONNX PTQ",
}
PEERS = ("ort", "nncf", "aimet", "modelopt")
BACKENDS = ("onnxruntime", "openvino")
BACKEND_LABELS = {"onnxruntime": "ORT", "openvino": "OV"}

# AIMET's AdaRound costs ~20 min per model on 2 cores with all 77 calibration views
# (peer_quantizers.py), so it runs on efficientnet_lite0 only, reduced:
AIMET_MODELS = ("efficientnet_lite0",)
AIMET_IMAGES = 32  # evenly spaced over the 77 calibration views (every photo represented)
AIMET_ITERATIONS = 50  # AdaRound steps per layer (AIMET's documented default: 10,000)
AIMET_SKIP = "skipped: AIMET AdaRound costs ~20 min per model on 2 cores; run on efficientnet_lite0 only (reduced setting)"

DIGITS_CALIBRATION_LIMIT = 200  # edgekit's default for a folder: a seeded sample of the training split

DEFAULT_ROUNDS = 3
LATENCY_TOLERANCE = 1.05  # edgekit default's median p50 / the best peer's, per model x backend
LITE0_KL_GOAL = 0.002
LITE0_SECONDS_GOAL = 30.0

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")



# --------------------------------------------------------------------------- machine






def versions() -> dict[str, str]:
    import nncf
    import onnx
    import onnxruntime
    import openvino
    import torch

    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__, "nncf": nncf.__version__, "onnx": onnx.__version__, "torch": torch.__version__}


# --------------------------------------------------------------------------- models


@dataclasses.dataclass
class Case:
    name: str
    fp32: Artifact
    calibration: Any  # ImageSet (edgekit reads it)
    x_cal: np.ndarray  # the same images as an array (the peers get it)
    x_eval: np.ndarray
    labels: list
    reference: Optional[np.ndarray]  # PyTorch FP32 logits on x_eval; None for random init
    description: dict[str, Any]
    onnx_reference: Optional[np.ndarray] = None  # the FP32 ONNX in ONNX Runtime: INT8 error alone where the export itself differs


def prepare_case(name: str, root: Path, work: Path) -> Case:
    if name == "digits":
        return prepare_digits(root, work)
    random_init = name in RANDOM_INIT
    fp32, _ = build_artifact(ModelRequest(name, random_init=random_init), root=root)
    calibration = default_calibration().resolve()
    held_out = HELD_OUT_EVALUATION.resolve()
    x_cal, _ = load_all(calibration, fp32.preprocessing)
    x_eval, labels = load_all(held_out, fp32.preprocessing)
    reference = None
    if not random_init:
        session = get_backend("pytorch").load(fp32, BackendOptions())
        reference = np.concatenate([session.run(x_eval[i : i + 16]) for i in range(0, len(x_eval), 16)])
    return Case(
        name, fp32, calibration, x_cal, x_eval, labels, reference,
        {
            "weights": "random init (accuracy not meaningful)" if random_init else "real ImageNet weights",
            "input_size": fp32.preprocessing.input_size,
            "calibration": f"bundled photos, odd views ({len(x_cal)} crops)",
            "held_out": f"bundled photos, even views ({len(x_eval)} crops none of the quantizers saw)",
            "reference": None if random_init else "PyTorch eager FP32 logits (edgekit's pytorch backend) on the held-out views",
        },
    )


def prepare_digits(root: Path, work: Path) -> Case:
    import torch
    from digits import DIGIT_NAMES, IMAGE_SIZE, export_digits_onnx, train_digits_net, write_digits_folders

    from edgekit.onnx_export import import_onnx_file

    folder = work / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    model, test_accuracy = train_digits_net(seed=0)
    onnx_path = folder / "digits.onnx"
    export_digits_onnx(model, onnx_path)
    (folder / "pre.json").write_text(json.dumps({
        "input_size": IMAGE_SIZE, "resize_size": IMAGE_SIZE, "interpolation": "nearest", "mean": [0.5] * 3, "std": [0.5] * 3,
        "classes": list(DIGIT_NAMES),
    }))
    data = write_digits_folders(folder / "data", size=IMAGE_SIZE, resample="nearest")  # train/ and val/, the pixels it trained on
    fp32, _ = import_onnx_file(onnx_path, root, folder / "pre.json")
    calibration = default_calibration(data, limit=DIGITS_CALIBRATION_LIMIT).resolve(fp32.classes)
    held_out = evaluation_images(data).resolve(fp32.classes)
    x_cal, _ = load_all(calibration, fp32.preprocessing)
    x_eval, labels = load_all(held_out, fp32.preprocessing)
    with torch.inference_mode():
        reference = model(torch.from_numpy(x_eval)).numpy()
    return Case(
        "digits", fp32, calibration, x_cal, x_eval, labels, reference,
        {
            "weights": f"tests/digits.py DigitsNet trained here (seed 0, 10 epochs; {test_accuracy:.1f}% test top-1 in PyTorch)",
            "input_size": IMAGE_SIZE,
            "calibration": f"scikit-learn digits, training split, seeded sample of {len(x_cal)} images",
            "held_out": f"scikit-learn digits, validation split, {len(x_eval)} images with true labels",
            "reference": "PyTorch eager FP32 logits of the trained module on the held-out images",
        },
    )


# --------------------------------------------------------------------------- quantizers


def onnx_file_artifact(path: Path, like: Artifact, variant: str) -> Artifact:
    """A peer's ONNX file as an artifact, so edgekit's backends run and time it as it is
    (variant 'int8-baseline' is not edgekit INT8: no CPU form is made from it)."""
    manifest = {**like.manifest, "files": {"onnx": path.name}, "variant": variant}
    manifest.pop("sha256", None)
    return Artifact(path=path.parent, manifest=manifest)


def float_layers(onnx_path: Path) -> dict[str, Any]:
    """Conv/Gemm/MatMul nodes of a QDQ graph whose input or weight does not come from a
    DequantizeLinear (they compute in float), by the same rule for every quantizer."""
    import onnx

    model = onnx.load(str(onnx_path))
    made_by = {o: n for n in model.graph.node for o in n.output}
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    in_float = []
    for node in compute:
        sources = [made_by.get(name) for name in node.input[:2]]
        if not all(s is not None and s.op_type == "DequantizeLinear" for s in sources):
            in_float.append(f"{node.op_type} {node.name}")
    return {"compute_layers": len(compute), "in_float": len(in_float), "nodes": in_float,
            "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node)}


def run_edgekit(case: Case, options: QuantizeOptions, work: Path) -> tuple[Artifact, dict]:
    root = Path(tempfile.mkdtemp(prefix="edgekit-root-", dir=work))  # fresh: nothing reused
    start = time.perf_counter()
    # as `edgekit export --int8` runs it: the fallback priced on every CPU backend here
    artifact, reused = quantize_artifact(case.fp32, case.calibration, options, root, lambda *a: None, None, pricing_backends(Settings()))
    wall = time.perf_counter() - start
    if reused:
        raise RuntimeError("edgekit reused an artifact from a fresh root: timing would not be real")
    q = artifact.manifest["quantization"]
    info = {
        "wall_seconds": wall,
        "compared_seconds": wall,
        "compared": "wall time of the whole quantize_artifact call (fresh artifact root; includes decoding the calibration images)",
        "quantizer_seconds": q.get("seconds"),
        "version": "edgekit (working tree, see git)",
        "settings": dataclasses.asdict(options),
        "calibration_images": q.get("calibration_images"),
        "stages": q.get("stages"),
        "fallback": [f["node"] for f in q.get("fallback", [])],
        "kept_in_float": len(q.get("kept_in_float", [])),
        "kept_in_float_by_type": q.get("float_nodes"),
        "budget_met_on_calibration": q.get("budget_met"),
        "bias_correction_applied": q.get("bias_correction_applied"),
        "notes": q.get("notes"),
        "initial_on_calibration": q.get("initial"),
        "final_on_calibration": q.get("final"),
    }
    return artifact, info


def run_inprocess_peer(key: str, case: Case, work: Path) -> tuple[Artifact, dict]:
    folder = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=work))
    path = folder / "model.onnx"
    quantize = ort_default_int8 if key == "ort" else nncf_default_int8
    start = time.perf_counter()
    quantize(case.fp32.onnx_path, path, case.x_cal)
    wall = time.perf_counter() - start
    if key == "ort":
        import onnxruntime

        version = f"onnxruntime {onnxruntime.__version__}"
        settings = {"api": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8",
                    "weight_type": "QInt8", "calibrate_method": "MinMax", "reduce_range": False, "calibration_batch": ORT_CALIBRATION_BATCH}
    else:
        import nncf

        version = f"nncf {nncf.__version__}"
        settings = {"api": "nncf.quantize (ONNX model)", "preset": "default (performance)", "target_device": "default (ANY)",
                    "fast_bias_correction": "default (on)", "subset_size": len(case.x_cal), "sample": "one image per calibration sample"}
    info = {
        "wall_seconds": wall,
        "compared_seconds": wall,
        "compared": "wall time of the in-process call (modules imported beforehand)",
        "version": version,
        "settings": settings,
        "calibration_images": len(case.x_cal),
    }
    return onnx_file_artifact(path, case.fp32, "int8-baseline"), info


def aimet_subset(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def run_venv_peer(key: str, case: Case, work: Path, aimet_images: int, aimet_iterations: int) -> tuple[Artifact, dict]:
    folder = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=work))
    path = folder / "model.onnx"
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    if key == "aimet":
        index = aimet_subset(len(case.x_cal), aimet_images)
        extra = {"calibration_subset": f"{len(index)} of {len(case.x_cal)} calibration views, evenly spaced (reduced setting)",
                 "calibration_indices": index.tolist(), "adaround_iterations": aimet_iterations, "batch_size": AIMET_BATCH_SIZE}
        result = aimet_adaround_int8(case.fp32.onnx_path, path, case.x_cal[index], iterations=aimet_iterations)
    else:
        result = modelopt_int8(case.fp32.onnx_path, path, case.x_cal)
    wall = time.perf_counter() - start
    info = {
        "wall_seconds": wall,
        "compared_seconds": wall,
        "compared": "wall time of the subprocess in the peer's venv (includes Python start-up and importing torch)",
        "in_worker_seconds": result.get("seconds"),
        "version": f"{PEER_PACKAGE[key]} {result.get('version')}",
        "settings": result.get("settings"),
        "worker_timings": result.get("timings"),
        "calibration_images": (result.get("settings") or {}).get("calibration_images", len(case.x_cal)),
        **extra,
    }
    return onnx_file_artifact(path, case.fp32, "int8-baseline"), info


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Timed:
    """One (quantizer, backend) entry of a model, waiting for the latency rounds."""

    row: dict
    backend: str
    compiled: Artifact  # what the backend compiled: every round times this same file
    session: Any  # the session its accuracy was measured with (None once released, or with --reload)

    @property
    def label(self) -> str:
        return f"{self.row['quantizer']} / {BACKEND_LABELS[self.backend]}"


def evaluate(artifact: Artifact, backend_name: str, case: Case) -> tuple[dict, Timed]:
    """Compile and load ``artifact`` on one backend and judge its logits on the held-out
    images; the latency comes later, in rounds over all of the model's entries (time_rounds)."""
    backend = get_backend(backend_name)
    compiled = backend.compile(artifact, BackendOptions())
    session = backend.load(compiled, BackendOptions())
    logits = session.run(case.x_eval)
    has_labels = any(label is not None for label in case.labels)
    accuracy = None
    if case.reference is not None:
        accuracy = dataclasses.asdict(compare_to_baseline(logits, case.reference, case.labels))
    vs_onnx = None
    if case.onnx_reference is not None:
        vs_onnx = dataclasses.asdict(compare_to_baseline(logits, case.onnx_reference, case.labels))
    result = {
        "file": compiled.onnx_path.name if backend_name == "onnxruntime" else compiled.manifest["files"].get("openvino_xml"),
        "path": str(compiled.onnx_path if backend_name == "onnxruntime" else compiled.path / compiled.manifest["files"].get("openvino_xml", "")),
        "precision": getattr(session, "precision", None),
        "accuracy": accuracy,
        "accuracy_vs_fp32_onnx": vs_onnx,
        "top1_vs_labels": accuracy["top1"] if accuracy and has_labels else None,
    }
    return result, Timed({}, backend_name, compiled, session)  # the caller sets its row


def summarize_rounds(rounds: list[dict]) -> dict:
    """The latency figure tables and verdicts use: the median of the rounds' p50s, with
    every round's p50 and their spread beside it."""
    p50s = [r["p50_ms"] for r in rounds]
    return {
        "p50_ms": float(np.median(p50s)),
        "p50_rounds": p50s,
        "p50_min_ms": min(p50s),
        "p50_max_ms": max(p50s),
        "rounds": len(p50s),
        "p90_ms": float(np.median([r["p90_ms"] for r in rounds])),
        "mean_ms": float(np.median([r["mean_ms"] for r in rounds])),
        "iterations": [r["iterations"] for r in rounds],
        "batch_size": rounds[0]["batch_size"],
        "figure": "median over the rounds of each round's p50",
    }


def time_rounds(entries: list[Timed], case: Case, timing: TimingOptions, rounds: int, reload: bool) -> None:
    """Every entry of one model timed in ``rounds`` alternating rounds (odd rounds in
    order, even rounds in reverse, so no entry always follows the same one): each round one
    p50 (``time_session``: warm-up, then ``timing.iterations`` runs) per entry. Kept sessions
    stay loaded across the rounds; with ``reload`` (or where a session was released) each
    round loads the same compiled file again. Writes each entry's backend dict: "latency"
    (summarize_rounds), "latency_rounds" (every round's LatencyStats), the load averages."""
    per_entry: dict[int, list[dict]] = {i: [] for i in range(len(entries))}
    loads: dict[int, list[float]] = {i: [] for i in range(len(entries))}
    failed: dict[int, str] = {}
    order = list(range(len(entries)))
    for r in range(rounds):
        log(f"  latency round {r + 1}/{rounds} over {len(entries) - len(failed)} entries")
        for i in (order if r % 2 == 0 else order[::-1]):
            if i in failed:
                continue
            t = entries[i]
            try:
                session = t.session
                if session is None or reload:
                    backend = get_backend(t.backend)
                    session = backend.load(t.compiled, BackendOptions())  # the same compiled file every round
                    if not reload:
                        t.session = session
                loads[i].append(os.getloadavg()[0])
                stats = time_session(session.run, case.x_eval, 1, timing)
                per_entry[i].append(dataclasses.asdict(stats))
                if reload:
                    del session
            except Exception as exc:  # noqa: BLE001 (recorded, the others go on)
                failed[i] = short_error(exc)
                log(f"    {t.label}: timing FAILED {failed[i]}")
    for i, t in enumerate(entries):
        b = t.row["backends"][t.backend]
        b["load_average_1min_before_rounds"] = loads[i]
        if per_entry[i]:
            b["latency"] = summarize_rounds(per_entry[i])
            b["latency_rounds"] = per_entry[i]
            lat = b["latency"]
            log(f"    {t.label}: p50 {lat['p50_ms']:.2f} ms (rounds " + ", ".join(f"{v:.2f}" for v in lat["p50_rounds"]) + ")")
        if i in failed:
            b["latency_error"] = failed[i]
        t.session = None  # released: at most one model's sessions are alive


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 6:
        lines = lines[:1] + ["..."] + lines[-4:]
    return " | ".join(lines)[:600]


def run_case(case: Case, quantizers: list[str], timing: TimingOptions, work: Path, args) -> dict:
    entry: dict[str, Any] = {"model": case.name, **case.description, "rows": []}
    if case.reference is not None:
        case.onnx_reference = get_backend("onnxruntime").load(case.fp32, BackendOptions()).run(case.x_eval)

    timed: list[Timed] = []  # every (row, backend) with a session: timed in rounds at the end

    def judge(row: dict, artifact: Artifact, backend: str) -> dict:
        result, entry_timed = evaluate(artifact, backend, case)
        row["backends"][backend] = result
        entry_timed.row = row
        if args.reload:
            entry_timed.session = None
        timed.append(entry_timed)
        return result

    fp32_row: dict[str, Any] = {"quantizer": "FP32 (no quantization)", "key": "fp32", "backends": {}}
    for backend in BACKENDS:
        try:
            judge(fp32_row, case.fp32, backend)
        except Exception as exc:  # noqa: BLE001 (recorded, the run goes on)
            fp32_row["backends"][backend] = {"error": short_error(exc)}
    fp32_row["float_layers"] = float_layers(case.fp32.onnx_path)
    entry["rows"].append(fp32_row)

    for key in quantizers:
        row: dict[str, Any] = {"quantizer": LABELS[key], "key": key, "backends": {}}
        entry["rows"].append(row)
        if key == "aimet" and case.name not in args.aimet_models:
            row["skipped"] = AIMET_SKIP
            log(f"  {LABELS[key]}: {AIMET_SKIP}")
            continue
        log(f"  {LABELS[key]}: quantizing")
        try:
            if key == "edgekit":
                artifact, info = run_edgekit(case, QuantizeOptions(), work)
            elif key == "edgekit-adaround":
                artifact, info = run_edgekit(case, QuantizeOptions(rounding="adaround"), work)
            elif key in ("ort", "nncf"):
                artifact, info = run_inprocess_peer(key, case, work)
            else:
                artifact, info = run_venv_peer(key, case, work, args.aimet_images, args.aimet_iterations)
        except Exception as exc:  # noqa: BLE001
            row["error"] = short_error(exc)
            row["traceback"] = traceback.format_exc()[-4000:]
            log(f"  {LABELS[key]}: FAILED {row['error']}")
            continue
        row.update(info)
        row["float_layers"] = float_layers(artifact.onnx_path)
        log(f"  {LABELS[key]}: quantized in {info['compared_seconds']:.1f} s; judging on the held-out images")
        for backend in BACKENDS:
            try:
                acc = judge(row, artifact, backend)["accuracy"]
                log(f"    {backend}: " + (f"agreement {acc['agreement']:.1f}% KL {acc['mean_kl']:.4f}" if acc else "compiled (no reference logits)"))
            except Exception as exc:  # noqa: BLE001
                row["backends"][backend] = {"error": short_error(exc)}
                log(f"    {backend}: FAILED {short_error(exc)}")

    # latency last, once every quantizer of this model has made its file: alternating rounds
    time_rounds(timed, case, timing, args.rounds, args.reload)
    entry["latency_rounds"] = {"rounds": args.rounds, "order": [t.label for t in timed],
                               "sessions": "reloaded from the same compiled file each round" if args.reload else "kept loaded across the rounds"}
    return entry


# --------------------------------------------------------------------------- verdicts


def _row(entry: dict, key: str) -> Optional[dict]:
    return next((r for r in entry["rows"] if r["key"] == key), None)


def _p50(row: Optional[dict], backend: str) -> Optional[float]:
    """The latency figure of an entry: the median of its rounds' p50s (a file written before
    the rounds: its one p50)."""
    b = (row or {}).get("backends", {}).get(backend) or {}
    return (b.get("latency") or {}).get("p50_ms")


def _rounds(row: Optional[dict], backend: str) -> list[float]:
    """An entry's per-round p50s (a file written before the rounds: its one p50)."""
    lat = ((row or {}).get("backends", {}).get(backend) or {}).get("latency") or {}
    if lat.get("p50_rounds"):
        return list(lat["p50_rounds"])
    return [lat["p50_ms"]] if lat.get("p50_ms") is not None else []


def _spread_text(values: list[float]) -> str:
    return f" [{min(values):.2f}-{max(values):.2f}]" if len(values) > 1 else ""


def _kl(row: Optional[dict], backend: str) -> Optional[float]:
    b = (row or {}).get("backends", {}).get(backend) or {}
    return (b.get("accuracy") or {}).get("mean_kl")


def _met(oks: list[bool], missing: bool) -> Optional[bool]:
    """False when anything checked failed; None (not fully checked) when the rest is fine
    but something was not measured; True only when everything was checked and met."""
    if oks and not all(oks):
        return False
    return None if missing or not oks else True


def verdicts(doc: dict) -> list[dict]:
    by_model = {e["model"]: e for e in doc["models"]}
    out = []

    # 1. fidelity: KL below every peer on lite0/1/2 (each backend), lite0 <= 0.002 on both backends
    goal = (f"held-out KL below every peer on {', '.join(LITE_MODELS)} (each backend), "
            f"and efficientnet_lite0 KL <= {LITE0_KL_GOAL} on both backends")
    variants = []
    for key in ("edgekit", "edgekit-adaround"):
        parts, oks, missing = [], [], []
        for model in LITE_MODELS:
            entry = by_model.get(model)
            if entry is None:
                missing.append(f"{model}: not measured in this run")
                continue
            row = _row(entry, key)
            if row is None or "error" in row or "skipped" in row:
                missing.append(f"{model}: {LABELS[key]} not run" if row is None else f"{model}: {LABELS[key]} failed")
                continue
            bits = []
            for backend in BACKENDS:
                kl = _kl(row, backend)
                if kl is None:
                    oks.append(False)
                    bits.append(f"{BACKEND_LABELS[backend]} n/a")
                    continue
                peers = {p: _kl(_row(entry, p), backend) for p in PEERS}
                peers = {p: v for p, v in peers.items() if v is not None}
                best = min(peers.items(), key=lambda kv: kv[1]) if peers else None
                beats = best is not None and kl < best[1]
                if best is None:
                    missing.append(f"{model} {BACKEND_LABELS[backend]}: no peer measured")
                else:
                    oks.append(beats)
                text = f"{BACKEND_LABELS[backend]} {kl:.4f}"
                if model == "efficientnet_lite0":
                    below = kl <= LITE0_KL_GOAL
                    oks.append(below)
                    text += f" ({'<=' if below else '>'} {LITE0_KL_GOAL}"
                    text += f"; best peer {LABELS[best[0]]} {best[1]:.4f}{'' if beats else ' NOT BEATEN'})" if best else "; no peer)"
                else:
                    text += f" (best peer {LABELS[best[0]]} {best[1]:.4f}{'' if beats else ' NOT BEATEN'})" if best else " (no peer)"
                bits.append(text)
            parts.append(f"{model} " + ", ".join(bits))
        if parts or missing:
            met = _met(oks, bool(missing))
            state = "met" if met else "MISSED" if met is False else "not fully checked"
            variants.append((key, met, f"{LABELS[key]}: {state}: " + "; ".join(parts + missing)))
    if not variants:
        out.append({"goal": goal, "met": None, "detail": "edgekit not run on any of " + ", ".join(LITE_MODELS)})
    else:
        # met where one of edgekit's settings (the default, or AdaRound) meets every part of it
        states = [m for _, m, _ in variants]
        met = True if any(m is True for m in states) else (None if any(m is None for m in states) else False)
        out.append({"goal": goal, "met": met, "detail": "; ".join(text for _, _, text in variants)})

    # 2. latency: edgekit default's median p50 <= 1.05x the best peer's, every model x backend
    goal = (f"latency: edgekit default's median p50 no slower than the best peer's within {round((LATENCY_TOLERANCE - 1) * 100)}% "
            f"(ratio <= {LATENCY_TOLERANCE}) on every model x backend (ORT, OV)")
    parts, oks = [], []
    cells: list[dict] = []
    for entry in doc["models"]:
        mine = _row(entry, "edgekit")
        for backend in BACKENDS:
            p = _p50(mine, backend)
            peers = {k: _p50(_row(entry, k), backend) for k in PEERS}
            peers = {k: v for k, v in peers.items() if v is not None}
            if p is None or not peers:
                continue
            best_key, best = min(peers.items(), key=lambda kv: kv[1])
            ratio = p / best
            ok = ratio <= LATENCY_TOLERANCE
            mine_rounds, best_rounds = _rounds(mine, backend), _rounds(_row(entry, best_key), backend)
            overlap = max(min(mine_rounds), min(best_rounds)) <= min(max(mine_rounds), max(best_rounds))
            several = len(mine_rounds) > 1 and len(best_rounds) > 1
            noise = ("within noise (the rounds' spreads overlap)" if overlap else "outside noise (the rounds' spreads do not overlap)") if several else "one round: noise unknown"
            oks.append(ok)
            cells.append({"model": entry["model"], "backend": backend, "edgekit_ms": p, "best_peer": best_key, "best_peer_ms": best,
                          "ratio": ratio, "ok": ok, "edgekit_rounds": mine_rounds, "best_peer_rounds": best_rounds,
                          "within_noise": overlap if several else None})
            parts.append(f"{entry['model']} {BACKEND_LABELS[backend]}: {p:.2f}{_spread_text(mine_rounds)} vs {best:.2f}{_spread_text(best_rounds)} ms "
                         f"({LABELS[best_key]}) = {ratio:.2f}x {'ok' if ok else 'SLOWER'}, {noise}")
    unchecked = [m for m in MODELS if m not in by_model]
    if unchecked and oks:
        parts.append(f"not measured in this run: {', '.join(unchecked)}")
    out.append({"goal": goal, "met": _met(oks, bool(unchecked)) if oks else None,
                "detail": "; ".join(parts) or "no edgekit/peer pair measured", "cells": cells})

    # 3. quantization time
    goal = f"quantization: efficientnet_lite0 under {LITE0_SECONDS_GOAL:.0f} s; resnet50 no slower than NNCF's in the same run"
    parts, oks = [], []
    entry = by_model.get("efficientnet_lite0")
    if entry is not None:
        for key in ("edgekit", "edgekit-adaround"):
            row = _row(entry, key)
            if row and "compared_seconds" in row:
                ok = row["compared_seconds"] < LITE0_SECONDS_GOAL
                if key == "edgekit":
                    oks.append(ok)
                parts.append(f"lite0 {LABELS[key]} {row['compared_seconds']:.1f} s ({'ok' if ok else f'OVER {LITE0_SECONDS_GOAL:.0f} s'}"
                             f"{'' if key == 'edgekit' else ', not the default'})")
    entry = by_model.get("resnet50")
    if entry is not None:
        nncf = _row(entry, "nncf")
        for key in ("edgekit", "edgekit-adaround"):
            row = _row(entry, key)
            if row and "compared_seconds" in row and nncf and "compared_seconds" in nncf:
                ratio = row["compared_seconds"] / nncf["compared_seconds"]
                ok = ratio <= 1.0
                if key == "edgekit":
                    oks.append(ok)
                parts.append(f"resnet50 {LABELS[key]} {row['compared_seconds']:.1f} s vs NNCF {nncf['compared_seconds']:.1f} s = {ratio:.2f}x "
                             f"({'ok' if ok else 'SLOWER than NNCF'}{'' if key == 'edgekit' else ', not the default'})")
    checked = {"efficientnet_lite0": any(p.startswith("lite0 edgekit (default)") for p in parts),
               "resnet50": any(p.startswith("resnet50 edgekit (default)") for p in parts)}
    missing = [name for name, done in checked.items() if not done]
    if missing:
        parts.append(f"{' and '.join(missing)}: not measured in this run" + (" (resnet50 needs edgekit default and NNCF)" if "resnet50" in missing else ""))
    out.append({"goal": goal, "met": _met(oks, bool(missing)), "detail": "; ".join(parts)})
    return out


# --------------------------------------------------------------------------- markdown


def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _export_differs(entry: dict) -> bool:
    """Whether the FP32 ONNX model disagrees with the PyTorch reference (beyond float noise)
    and the rows carry figures against the FP32 ONNX model to show instead."""
    fp32 = _row(entry, "fp32") or {}
    acc = (fp32.get("backends", {}).get("onnxruntime") or {}).get("accuracy")
    has_onnx_figures = any((b or {}).get("accuracy_vs_fp32_onnx") for r in entry["rows"] for b in r.get("backends", {}).values() if isinstance(b, dict))
    return bool(acc) and has_onnx_figures and (acc["agreement"] < 100.0 or (acc["max_abs_diff"] or 0.0) > 1e-2)


def _load_range(doc: dict) -> str:
    loads = []
    for e in doc["models"]:
        for r in e["rows"]:
            for b in r.get("backends", {}).values():
                if isinstance(b, dict):
                    loads += b.get("load_average_1min_before_rounds") or []
                    if "load_average_1min_before_timing" in b:  # a file written before the rounds
                        loads.append(b["load_average_1min_before_timing"])
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"


def _latency_cell(b: dict) -> str:
    lat = b.get("latency") or {}
    if lat.get("p50_ms") is None:
        return f"failed: {b['latency_error'][:120]}" if b.get("latency_error") else "n/a"
    rounds = lat.get("p50_rounds") or []
    return f"{lat['p50_ms']:.2f}" + (f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else "")


def _timing_text(t: dict) -> str:
    rounds = t.get("rounds")
    if not rounds:  # a file written before the rounds
        return f"p50 of {t['iterations']} runs after {t['warmup']} warm-up (at most {t['max_seconds']:.0f} s), timed once right after quantizing"
    return (f"{rounds} alternating rounds over all of a model's entries once every quantizer had made its file (odd rounds in order, "
            f"even rounds reversed), each a p50 of {t['iterations']} runs after {t['warmup']} warm-up (at most {t['max_seconds']:.0f} s); "
            "the figure is the median of the rounds' p50s, their range in brackets")


def markdown(doc: dict) -> str:
    m = doc["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on) or "none of " + ", ".join(CPU_FLAGS)
    t = doc["timing"]
    lines = [
        "# INT8 side by side: edgekit vs ONNX Runtime, NNCF, AIMET-ONNX and TensorRT Model Optimizer",
        "",
        (
            f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, CPU flags {flags} (edgekit's ONNX Runtime CPU form: {m['edgekit_ort_weight_form']}). "
            f"Command: `{doc['command']}`. Created {doc['created']}; {'the runs took' if doc.get('parts') else 'the run took'} {doc['run_seconds'] / 60:.1f} min."
        ),
        f"edgekit: commit {doc['git']['commit'][:10]}"
        + (f" with uncommitted changes in edgekit/ (source sha256 {doc['git']['edgekit_source_sha256'][:12]}, in the JSON)" if doc["git"]["edgekit_uncommitted_changes"] else "")
        + f". Runtimes: ONNX Runtime {doc['versions']['onnxruntime']}, OpenVINO {doc['versions']['openvino']}; NNCF {doc['versions']['nncf']}.",
        "",
        "Every quantizer of a model got the same calibration images (AIMET excepted, see below) and every INT8 model is judged",
        "on the same held-out images it never saw. Agreement (top-1 equal) and mean KL(FP32 || INT8) are against the FP32",
        "model's PyTorch logits. ORT = ONNX Runtime CPU provider, OV = OpenVINO CPU, both through edgekit's backends: edgekit's",
        "INT8 artifacts run in the CPU form each backend makes for this CPU; a peer's QDQ file runs as the peer wrote it.",
        f"Latency: batch 1, {_timing_text(t)}"
        + ("; the merged runs were timed differently, see the list below" if len({json.dumps(p.get("timing"), sort_keys=True) for p in doc.get("parts") or []}) > 1 else "")
        + "; default threads, one process, models one after another.",
        "The machine is shared and noisy: where two entries' round ranges overlap, their difference is within noise.",
        "Quant. s: wall time of the whole quantizer call from FP32 ONNX + calibration images to the INT8 file (edgekit: the whole",
        "`quantize_artifact` call into a fresh artifact root, including decoding its calibration images; ORT, NNCF: the in-process",
        "call; AIMET, ModelOpt: the subprocess in their own venv, including Python start-up and importing torch; their in-worker",
        "quantization seconds are in brackets). Layers in float: Conv/Gemm/MatMul nodes of the INT8 graph whose input or weight",
        "is not dequantized from INT8 (same rule for every quantizer), out of all of them; edgekit's fallbacks in brackets.",
        "",
        *([f"Merged from {len(doc['parts'])} runs (`--render`): " + "; ".join(
            f"`{part['command']}` ({part['created']}, {part['run_seconds'] / 60:.1f} min, commit {part['git']['commit'][:10]}"
            + (", uncommitted edgekit/ changes" if part["git"]["edgekit_uncommitted_changes"] else "")
            + f", {part['timing']['iterations']} timed runs" + (f" x {part['timing']['rounds']} rounds" if part["timing"].get("rounds") else ", one round")
            + ")" for part in doc["parts"]) + "."] if doc.get("parts") else []),
        f"1-minute load average just before each latency measurement: {_load_range(doc)} (2 cores: above ~2 something else was running).",
        "",
        "## Verdicts",
        "",
    ]
    for v in doc["verdicts"]:
        state = ("not fully checked" if "not measured" in v["detail"] else "not checked") if v["met"] is None else ("MET" if v["met"] else "MISSED")
        lines.append(f"- **{v['goal']}**: {state}. {v['detail']}")
    cells = next((v.get("cells") for v in doc["verdicts"] if v.get("cells")), None)
    if cells:
        lines += ["", f"Latency per model x backend: edgekit default vs the fastest peer, median p50 ms [range of the rounds' p50s]; goal ratio <= {LATENCY_TOLERANCE}.", "",
                  "| model | backend | edgekit default | fastest peer | peer | ratio | goal | noise |", "|---|---|---|---|---|---|---|---|"]
        for c in cells:
            noise = "n/a (one round)" if c["within_noise"] is None else "within noise" if c["within_noise"] else "outside noise"
            lines.append(f"| {c['model']} | {BACKEND_LABELS[c['backend']]} | {c['edgekit_ms']:.2f}{_spread_text(c['edgekit_rounds'])} | {LABELS[c['best_peer']]} | "
                         f"{c['best_peer_ms']:.2f}{_spread_text(c['best_peer_rounds'])} | {c['ratio']:.2f} | {'ok' if c['ok'] else 'SLOWER'} | {noise} |")
    for entry in doc["models"]:
        labelled = entry["model"] == "digits"
        export_differs = _export_differs(entry)
        key_acc = "accuracy_vs_fp32_onnx" if export_differs else "accuracy"
        lines += ["", f"## {entry['model']}", "",
                  f"{entry['weights']}; input {entry['input_size']} px. Calibration: {entry['calibration']}. Held-out: {entry['held_out']}.", ""]
        head = "| quantizer | ORT agreement % | ORT KL | " + ("ORT top-1 % | " if labelled else "") + "ORT p50 ms | OV agreement % | OV KL | " + ("OV top-1 % | " if labelled else "") + "OV p50 ms | quant. s | layers in float |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in entry["rows"]:
            if "skipped" in row or "error" in row:
                reason = row.get("skipped") or f"failed: {row['error']}"
                lines.append(f"| {row['quantizer']} | {reason} |" + " |" * (head.count("|") - 3))
                continue
            cells = [row["quantizer"]]
            for backend in BACKENDS:
                b = row["backends"].get(backend) or {}
                if "error" in b:
                    cells += [f"failed: {b['error'][:200]}", "", *([""] if labelled else []), ""]
                    continue
                acc = b.get("accuracy" if row["key"] == "fp32" else key_acc)
                cells += [_fmt(acc["agreement"] if acc else None, ".1f"), _fmt(acc["mean_kl"] if acc else None, ".4f")]
                if labelled:
                    cells.append(_fmt(b.get("top1_vs_labels"), ".1f"))
                cells.append(_latency_cell(b))
            if row["key"] == "fp32":
                cells.append("-")
            else:
                seconds = f"{row['compared_seconds']:.1f}"
                if row.get("in_worker_seconds") is not None:
                    seconds += f" ({row['in_worker_seconds']:.1f})"
                cells.append(seconds)
            fl = row["float_layers"]
            layers = "-" if row["key"] == "fp32" else f"{fl['in_float']} / {fl['compute_layers']}"
            if row["key"].startswith("edgekit"):
                layers += f" ({len(row.get('fallback') or [])} fallback)"
            cells.append(layers)
            lines.append("| " + " | ".join(cells) + " |")
        notes = []
        fp32 = _row(entry, "fp32")
        diffs = [(BACKEND_LABELS[b], ((fp32["backends"].get(b) or {}).get("accuracy") or {}).get("max_abs_diff")) for b in BACKENDS]
        if all(d is not None for _, d in diffs):
            notes.append("FP32 ONNX vs the PyTorch reference, max |logit difference|: " + ", ".join(f"{name} {d:.1e}" for name, d in diffs) + ".")
        if export_differs:
            a = fp32["backends"]["onnxruntime"]["accuracy"]
            notes.insert(0, f"**The FP32 ONNX export itself differs from PyTorch here** (top-1 agreement {a['agreement']:.1f}%, KL {a['mean_kl']:.4f}, "
                         "edgekit's export warned about its parity), so agreement and KL in this table are against the FP32 ONNX model run in "
                         "ONNX Runtime (the INT8 error alone), except the FP32 row, which is against PyTorch; the JSON has both.")
        for row in entry["rows"]:
            if row["key"] == "aimet" and "calibration_subset" in row:
                notes.append(f"AIMET-ONNX AdaRound ran reduced: {row['calibration_subset']}, {row['adaround_iterations']} AdaRound iterations per layer "
                             f"(AIMET's documented default is 10,000), batch {row['batch_size']}.")
            if row["key"].startswith("edgekit") and row.get("stages"):
                stages = ", ".join(f"{s['name']} {s['seconds']:.1f} s (KL {s['after']['mean_kl']:.4f})" for s in row["stages"])
                listed = sum(st["seconds"] for st in row["stages"])
                notes.append(f"{row['quantizer']} stages on the calibration images: {stages}; they sum to {listed:.1f} s of the quantizer's own "
                             f"{row['quantizer_seconds']:.1f} s.")
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "## Peer settings", ""]
    seen = set()
    for entry in doc["models"]:
        for row in entry["rows"]:
            if row["key"] in PEERS and row["key"] not in seen and row.get("settings"):
                seen.add(row["key"])
                lines.append(f"- {row['quantizer']} ({row['version']}): `{json.dumps(row['settings'], sort_keys=True)}`")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--quantizers", nargs="+", choices=QUANTIZERS, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: efficientnet_lite0, edgekit default + ONNX Runtime, 20 timing iterations")
    parser.add_argument("--iterations", type=int, default=None, help="timed runs per round of a latency figure (default 200; --quick 20)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"alternating latency rounds over all of a model's entries; the figure is the median of the rounds' p50s (default {DEFAULT_ROUNDS})")
    parser.add_argument("--reload", action="store_true",
                        help="load each entry's compiled file again every round instead of keeping its session loaded across the rounds")
    parser.add_argument("--aimet-models", nargs="+", default=list(AIMET_MODELS))
    parser.add_argument("--aimet-images", type=int, default=AIMET_IMAGES)
    parser.add_argument("--aimet-iterations", type=int, default=AIMET_ITERATIONS)
    parser.add_argument("--out", type=Path, default=None, help="results/int8_peers (default); a --quick run: a temporary folder")
    parser.add_argument("--render", nargs="+", type=Path, default=None, metavar="JSON",
                        help="measure nothing: merge these result files (runs of model subsets) into one document, "
                        "verdicts recomputed over all their models, and write --out's .json and .md")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.render:
        out = args.out or RESULTS / "int8_peers"
        document = merge_documents([json.loads(path.read_text()) for path in args.render])
        write_json(document, out.with_suffix(".json"))
        out.with_suffix(".md").write_text(markdown_with_failures(document))
        log(f"wrote {out.with_suffix('.json')} and .md from {len(args.render)} result files")
        return 0

    models = args.models or (["efficientnet_lite0"] if args.quick else list(MODELS))
    quantizers = args.quantizers or (["edgekit", "ort"] if args.quick else list(QUANTIZERS))
    iterations = args.iterations or (20 if args.quick else 200)
    out = args.out or (Path(tempfile.mkdtemp(prefix="int8-peers-quick-")) / "int8_peers" if args.quick else RESULTS / "int8_peers")
    timing = TimingOptions(warmup=20, iterations=iterations, max_seconds=60)

    # imported before any timing, so no quantizer pays for another's imports
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's own switch: no telemetry
    import onnxruntime.quantization  # noqa: F401

    if "nncf" in quantizers:
        import nncf  # noqa: F401
    from edgekit.backends.int8_cpu_form import weight_form

    started = time.perf_counter()
    document: dict[str, Any] = {
        "created": now_iso(),
        "command": "python " + " ".join(sys.argv),
        "machine": {**machine_info(), "cpu_flags": cpu_flags(), "edgekit_ort_weight_form": weight_form(), "platform": platform.platform()},
        "versions": versions(),
        "git": git_state(),
        "timing": {"batch_size": 1, "warmup": timing.warmup, "iterations": timing.iterations, "max_seconds": timing.max_seconds,
                   "rounds": args.rounds, "order": "odd rounds in entry order, even rounds reversed", "figure": "median of the rounds' p50s",
                   "sessions": "reloaded each round from the same compiled file" if args.reload else "kept loaded across the rounds (one model's entries at a time)"},
        "models_requested": models,
        "quantizers_requested": quantizers,
        "aimet_reduced_setting": {"models": args.aimet_models, "calibration_images": args.aimet_images, "adaround_iterations": args.aimet_iterations,
                                  "batch_size": AIMET_BATCH_SIZE, "why": "AIMET AdaRound costs ~20 min per model with 77 images on 2 cores"},
        "models": [],
    }

    with tempfile.TemporaryDirectory(prefix="int8-peers-") as tmp:
        work = Path(tmp)
        fp32_root = work / "fp32"
        for name in models:
            log(f"{name}: preparing FP32 artifact and images")
            model_start = time.perf_counter()
            try:
                case = prepare_case(name, fp32_root, work)
            except Exception as exc:  # noqa: BLE001
                document["models"].append({"model": name, "error": short_error(exc), "traceback": traceback.format_exc()[-4000:], "rows": []})
                log(f"  FAILED to prepare {name}: {short_error(exc)}")
                continue
            entry = run_case(case, quantizers, timing, work, args)
            entry["seconds"] = time.perf_counter() - model_start
            document["models"].append(entry)
            log(f"{name} done in {entry['seconds']:.0f} s")
            document["run_seconds"] = time.perf_counter() - started
            document["verdicts"] = verdicts(document)
            write_json(document, out.with_suffix(".json"))  # after every model: a crash keeps what was measured

    document["run_seconds"] = time.perf_counter() - started
    document["verdicts"] = verdicts(document)
    document["models"] = [e for e in document["models"] if "error" not in e] + [e for e in document["models"] if "error" in e]
    write_json(document, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown_with_failures(document))
    log(f"wrote {out.with_suffix('.json')} and .md in {document['run_seconds'] / 60:.1f} min")
    return 0


def merge_documents(documents: list[dict]) -> dict:
    """One document from runs of model subsets: models in the usual order (a model in
    several files: the last file's), each run's command, machine, git state and timing kept
    under "parts", verdicts recomputed over every model."""
    parts = []
    for doc in documents:
        parts += doc.get("parts") or [{k: doc.get(k) for k in ("created", "command", "run_seconds", "git", "timing", "machine", "versions", "aimet_reduced_setting")}]
    models: dict[str, dict] = {}
    for doc in documents:
        for entry in doc["models"]:
            models[entry["model"]] = entry
    order = [m for m in MODELS if m in models] + [m for m in models if m not in MODELS]
    first = documents[0]
    merged = {
        **first,
        "created": now_iso(),
        "command": "python " + " ".join(sys.argv),
        "run_seconds": sum(p.get("run_seconds") or 0.0 for p in parts),
        "parts": parts,
        "models_requested": order,
        "quantizers_requested": sorted({q for doc in documents for q in doc.get("quantizers_requested", [])}, key=QUANTIZERS.index),
        "models": [models[m] for m in order],
    }
    merged["verdicts"] = verdicts(merged)
    return merged


def markdown_with_failures(doc: dict) -> str:
    ok = {**doc, "models": [e for e in doc["models"] if "error" not in e]}
    text = markdown(ok)
    failed = [e for e in doc["models"] if "error" in e]
    if failed:
        text += "\n## Models that could not be prepared\n\n" + "\n".join(f"- {e['model']}: {e['error']}" for e in failed) + "\n"
    return text


if __name__ == "__main__":
    sys.exit(main())
