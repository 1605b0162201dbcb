"""Zoo sweep: one model of every family the project tracks (FAMILIES below), exported and run on ONNX
Runtime and OpenVINO at FP32 and INT8. Every family keeps its row; a failure is listed
with its reason instead of being dropped.

Random init for every model but efficientnet_lite0 (the only real weights offline), so
the accuracy columns only check that the backends agree with PyTorch (FP32) or stay
close to it (INT8). The INT8 artifact is built as `edgekit export MODEL --random-init --int8`
builds it (efficientnet_lite0: without --random-init): edgekit's default quantization
options (percentile ranges, bias correction on, fallback search within the default KL
budget, priced on the deployable backends), the default calibration images (the bundled
photos' odd views). With random weights edgekit skips the fallback search by itself.
Per model the row records the quantizer's seconds and the INT8/FP32 p50 ratio per backend.
Each model runs in a subprocess of its own with a time limit, so one crash or hang costs
one row. Latency: batch 1, p50 of a few iterations (indicative: a sweep, not a benchmark).

Writes results/zoo_sweep.{json,md}.

    .venv/bin/python benchmarks/zoo_sweep.py [--only NAME ...] [--resume] [--timeout S]
    .venv/bin/python benchmarks/zoo_sweep.py --only timm/test_vit --out /tmp/zoo_smoke/zoo_sweep --artifacts /tmp/zoo_smoke/exported
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

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
INT8_MODE = "edgekit defaults (edgekit export --int8)"  # rows without "int8_mode" were quantized quickly (below)
QUICK_INT8 = "minmax ranges, no fallback, no bias correction"  # what rows written before the edgekit defaults used


def export_settings(name: str, artifacts: Optional[str] = None):
    """The Settings `edgekit export NAME --random-init --int8` builds from its flags (no
    --random-init for the models with real weights offline)."""
    from edgekit.options import Settings

    return Settings(random_init=name not in REAL_WEIGHTS, int8=True, artifacts=artifacts)


def sweep_one(name: str, artifacts: Optional[str] = None) -> dict:
    """Export, quantize and run one model; raises on the first failure."""
    import dataclasses

    from edgekit.backends import BackendOptions
    from edgekit.timing import TimingOptions
    from edgekit.session import BenchRequest, run_bench
    from edgekit.data import ImageRequest
    from edgekit.steps.export import build_artifact, export_options, model_request
    from edgekit.steps.int8 import calibration_images, pricing_backends, quantize_artifact, quantize_options

    row: dict = {"cells": {}, "int8_mode": INT8_MODE}
    stage = "export"
    try:
        settings = export_settings(name, artifacts)
        root = Path(settings["artifacts"])
        fp32, _ = build_artifact(model_request(name, settings), export_options(settings), root)
        row.update(params_m=fp32.manifest["model"].get("params_m"), gmacs=fp32.manifest["model"].get("gmacs"), onnx_mb=fp32.onnx_path.stat().st_size / 1e6)
        stage = "int8"
        # as `edgekit export NAME --random-init --int8` runs the int8 step (edgekit.steps.int8.run)
        options = quantize_options(settings)
        calibration = calibration_images(settings).resolve(fp32.classes)
        started = time.perf_counter()
        int8, reused = quantize_artifact(fp32, calibration, options, root, lambda *a: None, None, pricing_backends(settings))
        q = int8.manifest["quantization"]
        row["int8"] = {
            "seconds": q.get("seconds"),  # the quantizer's own (from the manifest: the original build's when reused)
            "wall_seconds": time.perf_counter() - started,  # this call (near zero when reused)
            "reused": reused,
            "options": dataclasses.asdict(options),
            "calibration_images": q.get("calibration_images"),
            "quantized_nodes": q.get("quantized_nodes"),
            "bias_correction_applied": q.get("bias_correction_applied"),
            "fallback": [f.get("node") for f in q.get("fallback") or []],
            "random_weights": q.get("random_weights"),
            "stages": [{"name": st.get("name"), "seconds": st.get("seconds")} for st in q.get("stages") or []],
        }
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
        row["int8_fp32_ratio"] = {b: _ratio(row, b) for b in BACKENDS}
        row["status"] = "ok"
    except Exception as e:  # the row records why, and the sweep goes on
        row["status"] = "failed"
        row["failed_at"] = stage
        row["reason"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return row


def _ratio(row: dict, backend: str) -> Optional[float]:
    """INT8 p50 / FP32 p50 on one backend, from the row's cells (rows of older files too)."""
    cells = row.get("cells", {})
    fp32, int8 = cells.get(f"fp32 {backend}"), cells.get(f"int8 {backend}")
    if not fp32 or not int8 or not fp32.get("p50_ms") or int8.get("p50_ms") is None:
        return None
    return int8["p50_ms"] / fp32["p50_ms"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names to sweep (default: every family); a name outside the families is swept as family "
                        "'extra' (a smoke run: --only timm/test_vit)")
    parser.add_argument("--artifacts", help="artifact root to build into and reuse from (default: edgekit's, exported/ here)")
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
        args.child_out.write_text(json.dumps(sweep_one(args.one, args.artifacts)))
        return 0

    from edgekit.artifacts import now_iso
    from edgekit.timing import machine_info

    families = [f for f in FAMILIES if not args.only or f[1] in args.only]
    families += [("extra", name) for name in args.only or () if name not in {f[1] for f in FAMILIES}]
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
                    [sys.executable, __file__, "--one", name, "--child-out", str(out)] + (["--artifacts", args.artifacts] if args.artifacts else []),
                    capture_output=True, text=True, timeout=args.timeout,
                )
                row = json.loads(out.read_text()) if out.is_file() else {
                    "status": "failed", "failed_at": "process", "reason": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300],
                }
            except subprocess.TimeoutExpired:
                row = {"status": "failed", "failed_at": "time limit", "reason": f"over {args.timeout} s"}
        row.update(family=family, model=name, random_init=name not in REAL_WEIGHTS, seconds=time.perf_counter() - started)
        rows.append(row)
        detail = f": {row.get('reason')}" if row["status"] != "ok" else "".join(
            f", {b} INT8/FP32 {v:.2f}" for b, v in (row.get("int8_fp32_ratio") or {}).items() if v is not None
        ) + (f", quantized in {row['int8']['seconds']} s" if row.get("int8") else "")
        print(f"    {row['status']} in {row['seconds']:.0f} s{detail}", file=sys.stderr, flush=True)
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


def _int8_text(doc: dict) -> list[str]:
    """What the header says about the INT8 cells: edgekit's defaults (rows with "int8_mode"),
    the quick options of files written before them, or both (those rows marked)."""
    rows = doc["rows"]
    new = [r for r in rows if r.get("int8_mode")]
    old = [r for r in rows if not r.get("int8_mode")]
    quick = [
        f"INT8 cells (older sweep): quantized quickly, {QUICK_INT8}, on 21 calibration views",
        "(3 odd views of each bundled photo); agreement is only a rough sign there, a random network's logits are nearly tied.",
    ]
    if not new:
        return quick
    options = next((r["int8"]["options"] for r in new if (r.get("int8") or {}).get("options")), None)
    calibration = next((r["int8"]["calibration_images"] for r in new if (r.get("int8") or {}).get("calibration_images")), None)
    if options:
        budget = options.get("budget") or {}
        limits = ", ".join(f"{k} {v}" for k, v in budget.items() if v is not None) or "none"
        settings = (f"{options['method']} ranges" + (f" ({options['percentile']})" if options["method"] == "percentile" else "")
                    + f", {options['rounding']} rounding, bias correction {'on' if options['bias_correction'] else 'off'}, "
                    + (f"fallback search of at most {options['max_fallback_nodes']} layers within the budget ({limits})" if options["fallback"] else "no fallback"))
    else:
        settings = "edgekit's defaults"
    lines = [
        "INT8: built as `edgekit export MODEL --random-init --int8` builds it (efficientnet_lite0 without --random-init): edgekit's",
        f"default options: {settings}; the fallback priced on the deployable backends.",
        "Calibration: the bundled photos' odd views" + (f" ({calibration} crops)" if calibration else "") + ". With random weights edgekit",
        "makes no fallback search by itself (a budget means nothing for them), so only efficientnet_lite0 can fall back to",
        "float; bias correction is on for every model. INT8 agreement is only a rough sign for random init: a random",
        "network's logits are nearly tied. Quant. s: the quantizer's own seconds (the manifest's",
        "report; \"reused\": an artifact already built, its original time). INT8/FP32: the INT8 p50 over the FP32 p50 on the same",
        "backend (below 1: INT8 faster), from these 10-iteration p50s taken in separate sessions: indicative, not a benchmark.",
    ]
    if old:
        lines += [
            f"Rows marked † were recorded by an earlier version of this sweep whose INT8 was quick ({QUICK_INT8},",
            "21 calibration views): their INT8 cells and ratios are not edgekit's defaults.",
        ]
    return lines


def _quant_seconds(row: dict) -> str:
    q = row.get("int8") or {}
    if q.get("seconds") is None:
        return "-"
    return f"{q['seconds']:.1f}" + (" (reused)" if q.get("reused") else "")


def _ratio_text(row: dict, backend: str) -> str:
    ratio = _ratio(row, backend)
    return "-" if ratio is None else f"{ratio:.2f}"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    ok = sum(r["status"] == "ok" for r in doc["rows"])
    mixed = any(r.get("int8_mode") for r in doc["rows"]) and any(not r.get("int8_mode") for r in doc["rows"])
    lines = [
        "# Zoo sweep: every family through ONNX Runtime and OpenVINO, FP32 and INT8",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}"
        + (f"; rows recorded in {len(doc['runs'])} runs ({', '.join(doc['runs'])})." if len(doc.get("runs", [])) > 1 else "."),
        f"{ok} of {len(doc['rows'])} models went through every step"
        + (f" ({doc['planned'] - len(doc['rows'])} not reached: the sweep stopped early)" if doc.get("planned", 0) > len(doc["rows"]) else "")
        + ". Cells: batch-1 p50 ms (10 iterations, indicative) and, in",
        "brackets, top-1 agreement with PyTorch FP32 on the 7 bundled photos. Random init everywhere but",
        "efficientnet_lite0: agreement checks that a backend computes the same function.",
        *_int8_text(doc),
        "",
        *([
            "**Latency of the rows marked * is not comparable** with other rows or results: they ran while other",
            "benchmarks and tests shared the machine's 2 cores (PyTorch eager times of 1-6 s are that contention).",
            "Those cells say that each step ran, not how fast.",
            "",
        ] if doc.get("contended") else []),
        "| family | model | status | params M | GMACs | PyTorch FP32 | ORT FP32 | OpenVINO FP32 | ORT INT8 | OpenVINO INT8 | ORT INT8/FP32 | OpenVINO INT8/FP32 | quant. s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = {r["model"] for r in doc["rows"]}
    not_run = [{"family": f, "model": m, "status": "not run", "random_init": m not in REAL_WEIGHTS} for f, m in FAMILIES if m not in done]
    for r in doc["rows"] + not_run:
        if r["status"] == "not run":
            lines.append(f"| {r['family']} | {r['model']} | not run | - | - | - | - | - | - | - | - | - | - | the sweep was stopped before this model (session time) |")
            continue
        note = ("real weights" if not r["random_init"] else "random init") + (" *" if r["model"] in doc.get("contended", ()) else "")
        if mixed and not r.get("int8_mode"):
            note += " †"
        if r["status"] != "ok":
            note = f"failed at {r.get('failed_at')}: {r.get('reason')}"
        params = f"{r['params_m']:.1f}" if r.get("params_m") else "-"
        gmacs = f"{r['gmacs']:.2f}" if r.get("gmacs") else "-"
        cells = [_cell(r, k) for k in ("fp32 pytorch", "fp32 onnxruntime", "fp32 openvino", "int8 onnxruntime", "int8 openvino")]
        cells += [_ratio_text(r, b) for b in BACKENDS] + [_quant_seconds(r)]
        lines.append(f"| {r['family']} | {r['model']} | {r['status']} | {params} | {gmacs} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
