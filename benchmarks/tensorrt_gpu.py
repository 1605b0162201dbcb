"""TensorRT on an NVIDIA GPU: engines at the precision their graph asks (TensorRT 11 is
strongly typed only; TensorRT 10 builds strongly typed on request), with build time, typing,
what each layer ran, agreement with ONNX Runtime on the CPU and with PyTorch, throughput
and latency, checked against trtexec on the same engine file.

For each model and precision: FP32 from the exported artifact, FP16 from the `--fp16`
artifact (edgekit.steps.fp16.fp16_artifact), INT8 from the QDQ artifact
(edgekit.steps.int8.quantize_artifact; its float parts FP32, or FP16 for int8-fp16). Per
row: the engine build (seconds, typing, the engine inspector's per-layer precision summary
against the graph, mismatches), `edgekit bench`'s own path (worker process, PyTorch FP32
reference on the CPU, the bundled photos' held-out views) at batch 1 and the large
batches, compute-only time (CUDA events) and end to end (with copies); top-1 agreement of
the engine with ONNX Runtime's CPU provider on the same views; trtexec --loadEngine on the
engine, where installed (goal: compute medians within 5%).

Goals (issues 7 and 25, H100): resnet50 INT8 >= 70,000 img/s compute-only at its best
batch (MLPerf Inference offline anchor: about 88,000 per H100); INT8 and FP16 top-1
agreement with PyTorch >= 99% on the bundled photos (judged on efficientnet_lite0, the
model with real weights offline; the others run with seeded random weights, for speed).

UNVERIFIED: written on a machine without a GPU; it has not run yet. Without a GPU it
exits with one line and records nothing. Writes results/tensorrt_gpu.{json,md} (--out).

    .venv/bin/python benchmarks/tensorrt_gpu.py            # full
    .venv/bin/python benchmarks/tensorrt_gpu.py --quick    # what benchmarks/gpu_check.sh runs
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from edgekit.artifacts import now_iso
from edgekit.backends import BackendOptions, get_backend
from edgekit.backends.tensorrt import graph_precision, tensorrt_facts, visible_gpu_facts
from edgekit.backends.trtexec import find_trtexec, run_trtexec
from edgekit.core import EdgekitError
from edgekit.data import HELD_OUT_EVALUATION, default_calibration, load_all
from edgekit.results.document import write_json
from edgekit.session import BenchRequest, run_bench
from edgekit.steps.export import ModelRequest, build_artifact
from edgekit.steps.fp16 import fp16_artifact
from edgekit.steps.int8 import quantize_artifact
from edgekit.timing import TimingOptions, machine_info
from edgekit.transforms.quantize import QuantizeOptions

RESULTS = Path(__file__).parent / "results"
MODELS = ("efficientnet_lite0", "resnet50", "mobilenet_v2")
REAL_WEIGHTS = ("efficientnet_lite0",)  # torchvision weights do not download offline
GOALS = {"resnet50_int8_img_s": 70000.0, "agreement_pytorch_pct": 99.0}
console = Console(stderr=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128, 256], help="batch sizes timed (the largest tunes the engine)")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8", "int8-fp16"], choices=("fp32", "fp16", "int8", "int8-fp16"),
                        help="int8-fp16: INT8 with its float parts in FP16 (QuantizeOptions.float_precision)")
    parser.add_argument("--quick", action="store_true", help="efficientnet_lite0 and resnet50, fp16/int8/int8-fp16, batches 1 and 128, 100 iterations, 5 s per batch")
    parser.add_argument("--ort-gpu", action="store_true", help="also ONNX Runtime's CUDA and TensorRT execution providers")
    parser.add_argument("--out", type=Path, default=RESULTS / "tensorrt_gpu")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.iterations, args.max_seconds, args.models = [1, 128], 100, 5.0, ["efficientnet_lite0", "resnet50"]
        args.precisions = [p for p in args.precisions if p != "fp32"]
    try:
        get_backend("tensorrt").check_available()
    except EdgekitError as e:
        print(f"error: {e}; nothing recorded", file=sys.stderr)  # one line, never wrapped
        return 2
    batches = tuple(sorted(set(args.batches)))
    document = {
        "created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(),
        "tensorrt": {**tensorrt_facts(), **visible_gpu_facts()}, "goals": GOALS,
        "fp16_artifact_signature": f"fp16_artifact{inspect.signature(fp16_artifact)}", "rows": [],
    }
    calibration = default_calibration().resolve()
    root = Path("exported")
    for name in args.models:
        fp32, _ = build_artifact(ModelRequest(name, random_init=name not in REAL_WEIGHTS), root=root)
        for label in args.precisions:
            console.print(f"[bold]{name}[/] {label}")
            started = time.perf_counter()
            try:
                artifact = variant(fp32, label, calibration, root)
                row = {"model": name, "precision": label, "weights": "real" if name in REAL_WEIGHTS else "random",
                       "artifact_seconds": round(time.perf_counter() - started, 1), **measure(artifact, batches, args)}
            except EdgekitError as e:  # a refused engine (a precision mismatch) is a result too
                row = {"model": name, "precision": label, "error": str(e)}
            document["rows"].append(row)
            document["goals_met"] = goals_met(document["rows"])
            write_json(document, args.out.with_suffix(".json"))
            args.out.with_suffix(".md").write_text(markdown(document))
    console.print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


def variant(fp32, label, calibration, root):
    """The artifact whose graph carries the precision: FP16 from the fp16 step, INT8 from the QDQ step."""
    if label == "fp16":  # its own default calibration images pick the nodes kept in FP32; its signature is recorded in the document
        return fp16_artifact(fp32, root)[0]
    if label.startswith("int8"):  # random weights meet no KL budget: no fallback search for them (it would only cost minutes)
        more = {} if fp32.model_name in REAL_WEIGHTS else {"fallback": False, "max_fallback_nodes": 0}
        if label == "int8-fp16":
            more["float_precision"] = "fp16"  # the float parts in FP16 too: what TensorRT's fastest INT8 engines run
        return quantize_artifact(fp32, calibration, QuantizeOptions(**more), root=root, progress=lambda *a: None)[0]
    return fp32


def measure(artifact, batches, args) -> dict:
    backend = get_backend("tensorrt")
    options = BackendOptions(batch_sizes=batches)
    started = time.perf_counter()
    compiled = backend.compile(artifact, options)  # raises on a layer that ran unlike its graph
    compile_seconds = time.perf_counter() - started
    engine = artifact.path / compiled.manifest["files"]["tensorrt_engine"]
    built = json.loads(engine.with_suffix(".json").read_text())
    graph = graph_precision(artifact)
    row = {
        "graph": {"precision": graph.word, "floats": graph.floats, "asked": graph.counts()},
        "engine": {"file": engine.name, "tensorrt": built.get("tensorrt"), "typing": built.get("typing"), "typing_how": built.get("typing_how"),
                   "flags": built.get("flags"), "cleared_flags": built.get("cleared_flags"), "build_seconds": built.get("build_seconds"),
                   "compile_seconds": round(compile_seconds, 2), "layers": {k: v for k, v in built.get("precision", {}).items() if k != "layers"}},
    }
    request = BenchRequest(
        backends=("pytorch", "tensorrt"), options=options, images=HELD_OUT_EVALUATION,
        timing=TimingOptions(batch_sizes=batches, warmup=20, iterations=args.iterations, max_seconds=args.max_seconds),
    )
    run = run_bench(artifact, request)
    trt = next(r for r in run.results if r.backend == "tensorrt")
    if trt.error:
        raise EdgekitError(trt.error)
    row["edgekit"] = dataclasses.asdict(trt)
    row["agreement_onnxruntime_cpu"] = agreement_with_onnxruntime(artifact, compiled, options)
    row["trtexec"] = {}
    if find_trtexec():
        shape = artifact.manifest["input"]["shape"][1:]
        for b in batches:
            summary = run_trtexec(engine, artifact.manifest["input"]["name"], (b, *shape), seconds=5.0 if args.quick else 10.0)
            row["trtexec"][str(b)] = {"gpu_compute_median_ms": summary.median_ms(), "throughput_qps": summary.throughput_qps}
    row["onnxruntime_gpu"] = ort_gpu(artifact, request) if args.ort_gpu else {}
    return row


def agreement_with_onnxruntime(artifact, compiled, options) -> dict:
    """Top-1 agreement of the engine with ONNX Runtime's CPU provider on the same held-out views."""
    x, _ = load_all(HELD_OUT_EVALUATION.resolve(), artifact.preprocessing)
    engine = get_backend("tensorrt").load(compiled, options)
    ort = get_backend("onnxruntime")
    cpu = ort.load(ort.compile(artifact, BackendOptions()), BackendOptions())  # the file bench would run (INT8: its CPU form)
    a = np.concatenate([engine.run(x[i:i + 8]) for i in range(0, len(x), 8)])
    b = np.concatenate([cpu.run(x[i:i + 8]) for i in range(0, len(x), 8)])
    return {"views": len(x), "agreement_pct": round(100.0 * float(np.mean(a.argmax(1) == b.argmax(1))), 2), "max_abs_diff": float(np.abs(a - b).max())}


def ort_gpu(artifact, request) -> dict:
    found = {}
    for device in ("cuda", "tensorrt"):
        try:
            ort = run_bench(artifact, dataclasses.replace(request, backends=("onnxruntime",), options=dataclasses.replace(request.options, device=device)))
            result = ort.results[0]
            found[device] = {"error": result.error} if result.error else dataclasses.asdict(result)
        except EdgekitError as e:
            found[device] = {"error": str(e)}
    return found


def best_throughput(row) -> tuple:
    """(img/s compute-only, batch) at the batch that gives the most."""
    best = (None, None)
    for lat in row.get("edgekit", {}).get("latency", ()):
        if lat.get("compute_mean_ms"):
            ips = lat["batch_size"] * 1000.0 / lat["compute_mean_ms"]
            if best[0] is None or ips > best[0]:
                best = (ips, lat["batch_size"])
    return best


def goals_met(rows) -> dict:
    found = {}
    for row in rows:
        if row["model"] == "resnet50" and row["precision"].startswith("int8") and "edgekit" in row:
            ips, batch = best_throughput(row)
            if ips is not None and ips > (found.get("resnet50_int8_img_s", {}).get("value") or 0):
                found["resnet50_int8_img_s"] = {"value": ips, "batch": batch, "precision": row["precision"], "met": ips >= GOALS["resnet50_int8_img_s"]}
        if row.get("weights") == "real" and row["precision"] != "fp32" and row.get("edgekit", {}).get("accuracy"):
            agreement = row["edgekit"]["accuracy"].get("agreement")
            found[f"{row['model']}_{row['precision']}_agreement_pytorch"] = {"value": agreement, "met": agreement is not None and agreement >= GOALS["agreement_pytorch_pct"]}
    return found


def markdown(doc: dict) -> str:
    m, t = doc["machine"], doc["tensorrt"]
    lines = [
        "# TensorRT on an NVIDIA GPU",
        "",
        f"Machine: {m.get('cpu')}; GPU {t.get('gpu')} (compute {t.get('compute_capability')}), driver {t.get('driver')}, CUDA {t.get('cuda_runtime')}; "
        f"TensorRT {t.get('tensorrt')}, {t.get('typing')} typing. Command: `{doc['command']}`. Created {doc['created']}.",
        "compute = CUDA events around the inference alone; e2e = host-to-host with copies; trtexec = its GPU Compute Time median on the same engine "
        "(--useSpinWait --noDataTransfers); agreement = top-1 on the bundled photos' held-out views.",
        "",
        "| model | precision | engine (typing, build s) | layers ran (asked) | mismatches | batch | compute p50 ms | compute img/s | e2e p50 ms | trtexec ms | edgekit / trtexec | agreement % vs PyTorch | vs ORT CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['precision']} | error: {row['error']} |" + " |" * 10)
            continue
        engine, trt = row["engine"], row["edgekit"]
        layers = engine["layers"]
        ran = ", ".join(f"{k} {v}" for k, v in sorted(layers.get("ran", {}).items()))
        asked = ", ".join(f"{k} {v}" for k, v in sorted(layers.get("asked", {}).items()))
        agreement = trt["accuracy"]["agreement"] if trt.get("accuracy") else None
        for lat in trt["latency"]:
            b = lat["batch_size"]
            trtexec = row["trtexec"].get(str(b), {}).get("gpu_compute_median_ms")
            compute = lat.get("compute_p50_ms")
            ratio = f"{compute / trtexec:.3f}" if compute and trtexec else "-"
            lines.append(
                f"| {row['model']} | {row['precision']} | {engine['typing']}, {_f(engine['build_seconds'], '.1f')} | {ran} ({asked}) | {len(layers.get('mismatches', []))} | {b} | "
                f"{_f(compute, '.3f')} | {_f(b * 1000 / lat['compute_mean_ms'] if lat.get('compute_mean_ms') else None, '.0f')} | {lat['p50_ms']:.3f} | "
                f"{_f(trtexec, '.3f')} | {ratio} | {_f(agreement, '.1f')} | {_f(row['agreement_onnxruntime_cpu']['agreement_pct'], '.1f')} |"
            )
    lines += ["", "Goals: " + "; ".join(f"{k} {_f(v.get('value'), '.1f')} ({'met' if v['met'] else 'NOT met'})" for k, v in doc.get("goals_met", {}).items())]
    return "\n".join(lines) + "\n"


def _f(value, spec) -> str:
    return "-" if value is None else f"{value:{spec}}"


if __name__ == "__main__":
    sys.exit(main())
