"""TensorRT on an NVIDIA GPU: throughput and latency of edgekit's engines, checked
against trtexec on the same engine file, with ONNX Runtime's CUDA and TensorRT execution
providers alongside where installed.

For each model (resnet50, mobilenet_v2, efficientnet_lite0) and precision (FP16 from the
FP32 artifact, INT8 from the QDQ artifact): `edgekit bench`'s own path (worker process,
PyTorch FP32 reference on the CPU, same held-out photos) at batch 1 and --batch-large,
reporting compute-only time (CUDA events) and end-to-end time (with copies); then trtexec
--loadEngine on the engine that run built, at the same shapes; the ratio of the two
compute medians is the fidelity check (goal: within 5%).

Goals (issue 7, H100): resnet50 INT8 >= 70,000 img/s compute-only at batch >= 128,
batch-1 compute-only <= 0.5 ms.

UNVERIFIED: written on a machine without a GPU; it has not run yet. Without a GPU it
exits with one line and records nothing. Writes results/tensorrt_gpu.{json,md}.

    .venv/bin/python benchmarks/tensorrt_gpu.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rich.console import Console

from edgekit.artifacts import now_iso
from edgekit.backends import BackendOptions, get_backend
from edgekit.backends.tensorrt import ENGINE_FOLDER
from edgekit.backends.trtexec import find_trtexec, run_trtexec
from edgekit.timing import TimingOptions, machine_info
from edgekit.core import EdgekitError
from edgekit.data import HELD_OUT_EVALUATION, default_calibration
from edgekit.session import BenchRequest, run_bench
from edgekit.steps.export import ModelRequest, build_artifact
from edgekit.results.document import write_json
from edgekit.transforms.quantize import QuantizeOptions
from edgekit.steps.int8 import quantize_artifact

RESULTS = Path(__file__).parent / "results"
MODELS = ("resnet50", "mobilenet_v2", "efficientnet_lite0")
console = Console(stderr=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-large", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=RESULTS / "tensorrt_gpu")
    args = parser.parse_args()
    try:
        get_backend("tensorrt").check_available()
    except EdgekitError as e:
        console.print(f"error: {e}; nothing recorded", markup=False)
        return 2
    batches = (1, args.batch_large)
    document = {"created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(), "rows": []}
    calibration = default_calibration().resolve()
    for name in args.models:
        fp32, _ = build_artifact(ModelRequest(name, random_init=name != "efficientnet_lite0"))
        int8, _ = quantize_artifact(fp32, calibration, QuantizeOptions(), progress=lambda *a: None)
        for label, artifact, precision in (("fp16", fp32, "f16"), ("int8", int8, None)):
            console.print(f"[bold]{name}[/] {label}")
            row = {"model": name, "precision": label, **measure(artifact, precision, batches, args.iterations)}
            document["rows"].append(row)
            write_json(document, args.out.with_suffix(".json"))
            args.out.with_suffix(".md").write_text(markdown(document))
    console.print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


def measure(artifact, precision, batches, iterations) -> dict:
    options = BackendOptions(batch_sizes=batches, own={"precision": precision})
    request = BenchRequest(
        backends=("pytorch", "tensorrt"), options=options, images=HELD_OUT_EVALUATION,
        timing=TimingOptions(batch_sizes=batches, warmup=50, iterations=iterations, max_seconds=30),
    )
    run = run_bench(artifact, request)
    trt = next(r for r in run.results if r.backend == "tensorrt")
    if trt.error:  # a failed backend is a row with its error, no figures: nothing to compare with trtexec
        raise EdgekitError(trt.error)
    row = {"edgekit": dataclasses.asdict(trt), "trtexec": {}, "onnxruntime": {}}
    engine = next((artifact.path / ENGINE_FOLDER).glob("*.engine"), None)  # the one the worker built
    if find_trtexec() and engine is not None:
        shape = artifact.manifest["input"]["shape"][1:]
        for b in batches:
            summary = run_trtexec(engine, artifact.manifest["input"]["name"], (b, *shape))
            row["trtexec"][str(b)] = {"gpu_compute_median_ms": summary.median_ms(), "throughput_qps": summary.throughput_qps}
    for device in ("cuda", "tensorrt"):
        try:
            ort = run_bench(artifact, dataclasses.replace(request, backends=("onnxruntime",), options=dataclasses.replace(options, device=device)))
            result = ort.results[0]
            row["onnxruntime"][device] = {"error": result.error} if result.error else dataclasses.asdict(result)
        except EdgekitError as e:
            row["onnxruntime"][device] = {"error": str(e)}
    return row


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# TensorRT on an NVIDIA GPU",
        "",
        f"Machine: {m.get('cpu')}. Command: `{doc['command']}`. Created {doc['created']}.",
        "compute = CUDA events around the inference alone; e2e = host-to-host with copies; trtexec = its GPU Compute Time median on the same engine (--useSpinWait --noDataTransfers).",
        "",
        "| model | precision | batch | compute p50 ms | compute img/s | e2e p50 ms | trtexec ms | edgekit / trtexec | agreement % vs PyTorch | ORT CUDA e2e ms | ORT TensorRT EP e2e ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        trt = row["edgekit"]
        for lat in trt["latency"]:
            b = lat["batch_size"]
            trtexec = row["trtexec"].get(str(b), {}).get("gpu_compute_median_ms")
            compute = lat.get("compute_p50_ms")
            ratio = f"{compute / trtexec:.3f}" if compute and trtexec else "-"
            ort = [_ort_p50(row["onnxruntime"].get(d), b) for d in ("cuda", "tensorrt")]
            agreement = trt["accuracy"]["agreement"] if trt.get("accuracy") else None
            lines.append(
                f"| {row['model']} | {row['precision']} | {b} | {_f(compute, '.3f')} | {_f(b * 1000 / lat['compute_mean_ms'] if lat.get('compute_mean_ms') else None, '.0f')} | "
                f"{lat['p50_ms']:.3f} | {_f(trtexec, '.3f')} | {ratio} | {_f(agreement, '.1f')} | {ort[0]} | {ort[1]} |"
            )
    return "\n".join(lines) + "\n"


def _ort_p50(result, batch) -> str:
    if not result or "error" in result:
        return "-"
    return next((f"{lat['p50_ms']:.3f}" for lat in result["latency"] if lat["batch_size"] == batch), "-")


def _f(value, spec) -> str:
    return "-" if value is None else f"{value:{spec}}"


if __name__ == "__main__":
    sys.exit(main())
