"""Zoo sweep: one model of every family the project tracks (FAMILIES below), exported and run on ONNX
Runtime and OpenVINO at FP32 and INT8. Every family keeps its row; a failure is listed
with its reason instead of being dropped.

Random init for every model but efficientnet_lite0 (the only real weights offline), so
the accuracy columns only check that the backends agree with PyTorch (FP32) or stay
close to it (INT8, quantized quickly: minmax ranges, no fallback, no bias correction).
Each model runs in a subprocess of its own with a time limit, so one crash or hang costs
one row. Latency: batch 1, p50 of a few iterations (indicative: a sweep, not a benchmark).

Writes results/zoo_sweep.{json,md}.

    .venv/bin/python benchmarks/zoo_sweep.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FAMILIES = (
    ("AlexNet", "alexnet"), ("VGG", "vgg11"), ("GoogLeNet", "googlenet"), ("Inception v3", "inception_v3"),
    ("ResNet", "resnet18"), ("ResNet", "resnet50"), ("ResNeXt", "resnext50_32x4d"), ("Wide ResNet", "wide_resnet50_2"),
    ("DenseNet", "densenet121"), ("SqueezeNet", "squeezenet1_1"), ("ShuffleNet", "shufflenet_v2_x1_0"),
    ("MNASNet", "mnasnet1_0"), ("MobileNet V2", "mobilenet_v2"), ("MobileNet V3", "mobilenet_v3_large"),
    ("EfficientNet", "efficientnet_b0"), ("EfficientNet V2", "efficientnet_v2_s"), ("EfficientNet-Lite", "efficientnet_lite0"),
    ("RegNet", "regnet_y_400mf"), ("ConvNeXt", "convnext_tiny"), ("ViT", "vit_b_16"), ("Swin", "swin_t"), ("MaxViT", "maxvit_t"),
    ("DeiT", "timm/deit_tiny_patch16_224"), ("PoolFormer", "timm/poolformer_s12"), ("FocalNet", "timm/focalnet_tiny_srf"),
    ("MLP-Mixer", "timm/mixer_b16_224"), ("ResMLP", "timm/resmlp_12_224"), ("gMLP", "timm/gmlp_s16_224"),
    ("PVT", "timm/pvt_v2_b0"), ("ConvMixer", "timm/convmixer_768_32"),
)
REAL_WEIGHTS = {"efficientnet_lite0"}
BACKENDS = ("onnxruntime", "openvino")


def sweep_one(name: str) -> dict:
    """Export, quantize and run one model; raises on the first failure."""
    from edgekit.backends import BackendOptions
    from edgekit.timing import TimingOptions
    from edgekit.data import ODD_VIEWS
    from edgekit.session import BenchRequest, run_bench
    from edgekit.data import ImageRequest
    from edgekit.steps.export import ModelRequest, build_artifact
    from edgekit.transforms.quantize import Budget, QuantizeOptions
    from edgekit.steps.int8 import quantize_artifact

    row: dict = {"cells": {}}
    stage = "export"
    try:
        fp32, _ = build_artifact(ModelRequest(name, random_init=name not in REAL_WEIGHTS))
        row.update(params_m=fp32.manifest["model"].get("params_m"), gmacs=fp32.manifest["model"].get("gmacs"), onnx_mb=fp32.onnx_path.stat().st_size / 1e6)
        stage = "int8"
        quick = QuantizeOptions(method="minmax", fallback=False, bias_correction=False, budget=Budget(min_agreement=None, max_kl=None))
        calibration = ImageRequest(views_per_image=3, view_offset=ODD_VIEWS[0], view_stride=ODD_VIEWS[1]).resolve()
        int8, _ = quantize_artifact(fp32, calibration, quick)
        timing = TimingOptions(batch_sizes=(1,), warmup=2, iterations=10, max_seconds=10)
        images = ImageRequest(views_per_image=1)
        for variant, artifact in (("fp32", fp32), ("int8", int8)):
            stage = f"{variant} bench"
            backends = ("pytorch",) + BACKENDS if variant == "fp32" else BACKENDS
            run = run_bench(artifact, BenchRequest(backends=backends, options=BackendOptions(), timing=timing, images=images))
            for r in run.results:
                if r.error:  # the sweep records a model as failed at its first failing cell, as before rows were kept
                    raise RuntimeError(f"{r.backend}: {r.error}")
                row["cells"][f"{variant} {r.backend}"] = {
                    "p50_ms": r.latency[0].p50_ms,
                    "agreement": r.accuracy.agreement if r.accuracy else None,
                    "max_abs_diff": r.accuracy.max_abs_diff if r.accuracy else None,
                    "precision": r.precision,
                }
        row["status"] = "ok"
    except Exception as e:  # the row records why, and the sweep goes on
        row["status"] = "failed"
        row["failed_at"] = stage
        row["reason"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names to sweep (default: every family)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one model, JSON to --child-out
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--out", type=Path, default=RESULTS / "zoo_sweep")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    parser.add_argument("--resume", action="store_true", help="keep the recorded rows; sweep only the families not recorded yet")
    parser.add_argument("--contended", nargs="*", default=[], help="models whose recorded latency was taken while other work shared the machine")
    args = parser.parse_args()
    if args.markdown_only:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return 0
    if args.one:
        args.child_out.write_text(json.dumps(sweep_one(args.one)))
        return 0

    from edgekit.artifacts import now_iso
    from edgekit.timing import machine_info

    families = [f for f in FAMILIES if not args.only or f[1] in args.only]
    created = now_iso()
    rows, runs, contended = [], [], list(args.contended)
    if args.resume and args.out.with_suffix(".json").is_file():
        previous = json.loads(args.out.with_suffix(".json").read_text())
        rows, runs = previous["rows"], previous.get("runs", [previous["created"]])
        contended += previous.get("contended", [])
        families = [f for f in families if f[1] not in {r["model"] for r in rows}]
    runs = runs + [created]
    planned = len(rows) + len(families)
    for i, (family, name) in enumerate(families, 1):
        print(f"[{i}/{len(families)}] {family}: {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", name, "--child-out", str(out)],
                    capture_output=True, text=True, timeout=args.timeout,
                )
                row = json.loads(out.read_text()) if out.is_file() else {
                    "status": "failed", "failed_at": "process", "reason": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300],
                }
            except subprocess.TimeoutExpired:
                row = {"status": "failed", "failed_at": "time limit", "reason": f"over {args.timeout} s"}
        row.update(family=family, model=name, random_init=name not in REAL_WEIGHTS, seconds=time.perf_counter() - started)
        rows.append(row)
        print(f"    {row['status']} in {row['seconds']:.0f} s" + (f": {row.get('reason')}" if row["status"] != "ok" else ""), file=sys.stderr, flush=True)
        # written after every row, so an interrupted sweep still leaves its rows
        document = {"created": created, "runs": runs, "command": "python " + " ".join(sys.argv), "machine": machine_info(), "rows": rows, "planned": planned, "contended": contended}
        args.out.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(document))
    print(f"wrote {args.out.with_suffix('.json')} and .md", file=sys.stderr)
    return 0


def _cell(row: dict, key: str) -> str:
    cell = row.get("cells", {}).get(key)
    if not cell:
        return "-"
    agreement = cell["agreement"]
    return f"{cell['p50_ms']:.1f}" + (f" ({agreement:.0f}%)" if agreement is not None and not key.startswith("fp32 pytorch") else "")


def markdown(doc: dict) -> str:
    m = doc["machine"]
    ok = sum(r["status"] == "ok" for r in doc["rows"])
    lines = [
        "# Zoo sweep: every family through ONNX Runtime and OpenVINO, FP32 and INT8",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}"
        + (f"; rows recorded in {len(doc['runs'])} runs ({', '.join(doc['runs'])})." if len(doc.get("runs", [])) > 1 else "."),
        f"{ok} of {len(doc['rows'])} models went through every step"
        + (f" ({doc['planned'] - len(doc['rows'])} not reached: the sweep stopped early)" if doc.get("planned", 0) > len(doc["rows"]) else "")
        + ". Cells: batch-1 p50 ms (10 iterations, indicative) and, in",
        "brackets, top-1 agreement with PyTorch FP32 on the 7 bundled photos. Random init everywhere but",
        "efficientnet_lite0: agreement checks that a backend computes the same function, and for INT8",
        "(minmax, no fallback) it is only a rough sign; a random network's logits are nearly tied.",
        "",
        *([
            "**Latency of the rows marked * is not comparable** with other rows or results: they ran while other",
            "benchmarks and tests shared the machine's 2 cores (PyTorch eager times of 1-6 s are that contention).",
            "Those cells say that each step ran, not how fast.",
            "",
        ] if doc.get("contended") else []),
        "| family | model | status | params M | GMACs | PyTorch FP32 | ORT FP32 | OpenVINO FP32 | ORT INT8 | OpenVINO INT8 | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = {r["model"] for r in doc["rows"]}
    not_run = [{"family": f, "model": m, "status": "not run", "random_init": m not in REAL_WEIGHTS} for f, m in FAMILIES if m not in done]
    for r in doc["rows"] + not_run:
        if r["status"] == "not run":
            lines.append(f"| {r['family']} | {r['model']} | not run | - | - | - | - | - | - | - | the sweep was stopped before this model (session time) |")
            continue
        note = ("real weights" if not r["random_init"] else "random init") + (" *" if r["model"] in doc.get("contended", ()) else "")
        if r["status"] != "ok":
            note = f"failed at {r.get('failed_at')}: {r.get('reason')}"
        params = f"{r['params_m']:.1f}" if r.get("params_m") else "-"
        gmacs = f"{r['gmacs']:.2f}" if r.get("gmacs") else "-"
        cells = [_cell(r, k) for k in ("fp32 pytorch", "fp32 onnxruntime", "fp32 openvino", "int8 onnxruntime", "int8 openvino")]
        lines.append(f"| {r['family']} | {r['model']} | {r['status']} | {params} | {gmacs} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
