"""Depthwise-separable conversion: cost on ONNX Runtime / OpenVINO, per-layer trade-off,
and the accuracy it costs on real weights.

1. resnet18, resnet50, vgg16 (random init: cost only): params, GMACs and batch-1 latency
   on ONNX Runtime and OpenVINO before and after converting every KxK convolution, at
   rank 1 and rank 2, in alternating rounds.
2. resnet50 (rank 1): every layer's kernel error and MACs saved, then the layers
   converted cumulatively in `--dw-budget` order: model KL and measured ONNX Runtime
   latency, the trade-off `--dw-budget` works with.
3. efficientnet_lite0 (real weights): its only standard convolution, the stem, at rank
   1/2/4: mean KL vs the original on held-out views, before and after distillation.

Writes results/dw_separable.{json,md}.

    .venv/bin/python benchmarks/dw_separable.py
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from structural_common import fidelity, interleaved_p50, pytorch_reference

from edgekit.artifacts import now_iso
from edgekit.timing import machine_info
from edgekit.data import load_all
from edgekit.data import HELD_OUT_EVALUATION, default_calibration
from edgekit.steps.export import ModelRequest, build_artifact
from edgekit.results.document import write_json
from edgekit.steps.dwsep import dwsep_artifact
from edgekit.transforms.distill import DistillOptions

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("cost", "per_layer", "accuracy")
console = Console(stderr=True)


def progress(stage, done=None, total=None):
    console.print(f"    {stage}" + (f" {done}/{total}" if total else ""), end="\r")


def per_layer_tradeoff(fp32, steps: int = 6, rounds: int = 3) -> dict:
    """Every candidate layer's kernel error and MACs saved, then the first k layers in
    `--dw-budget` order converted together for a few k: model KL and ONNX Runtime p50,
    timed in alternating rounds (one layer alone saves ~2% of the MACs: below the noise
    of a single timing on a shared machine)."""
    import statistics
    import tempfile

    import numpy as np
    import torch

    from edgekit.backends.onnxruntime import plain_session
    from edgekit.timing import TimingOptions, time_session
    from edgekit.evaluation import mean_kl
    from edgekit.onnx_export import ExportOptions, torch_export_module
    from edgekit.models import load_from_manifest
    from edgekit.transforms.dwsep import convert, layer_table, rank_by_saving_per_error

    loaded = load_from_manifest(fp32.manifest)
    module, size = loaded.module.eval(), loaded.spec.preprocessing.input_size
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, size, size), dtype=np.float32))
    with torch.no_grad():
        reference = module(x).numpy()
    ordered = rank_by_saving_per_error(layer_table(module, 1, size))
    counts = sorted({round(i * len(ordered) / steps) for i in range(steps + 1)})
    points, sessions = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in counts:
            progress(f"first {k} layers", k, len(ordered))
            trial = copy.deepcopy(module)
            convert(trial, [c.name for c in ordered[:k]], 1)
            with torch.no_grad():
                kl = mean_kl(reference, trial.eval()(x).numpy())
            path = Path(tmp) / f"first{k}.onnx"
            torch_export_module(trial, size, path, ExportOptions(slim=False), "probe")
            sessions[k] = plain_session(path)
            points.append({"layers": k, "last_layer": ordered[k - 1].name if k else None, "model_kl_random_input": kl,
                           "macs_saved": sum(c.saved for c in ordered[:k])})
        probe = x[:1].numpy()
        samples = {k: [] for k in counts}
        for _ in range(rounds):
            for k, session in sessions.items():
                name = session.get_inputs()[0].name
                stats = time_session(lambda b, s=session, n=name: s.run(None, {n: b}), probe, 1, TimingOptions(warmup=5, iterations=30, max_seconds=60))
                samples[k].append(stats.p50_ms)
    for point in points:
        point["ort_ms"] = statistics.median(samples[point["layers"]])
        point["ort_ms_rounds"] = samples[point["layers"]]
    return {"layers": [c.to_dict() for c in ordered], "cumulative": points}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS / "dw_separable")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="re-measure these sections; the others keep their recorded figures")
    args = parser.parse_args()
    document = {"created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(), "cost": [], "per_layer": {}, "accuracy": []}
    if args.only and args.out.with_suffix(".json").is_file():  # the other sections keep their recorded figures
        recorded = json.loads(args.out.with_suffix(".json").read_text())
        for section in SECTIONS:
            if section not in args.only:
                document[section] = recorded[section]
                document[f"{section}_measured"] = recorded.get(f"{section}_measured", recorded["created"])
    images = default_calibration().resolve()

    sections = set(args.only or SECTIONS)
    for name in ("resnet18", "resnet50", "vgg16") if "cost" in sections else ():
        console.print(f"[bold]{name}[/] (random init): every KxK conv at rank 1 and 2")
        fp32, _ = build_artifact(ModelRequest(name, random_init=True))
        converted = {f"rank {r}": dwsep_artifact(fp32, r, images, progress=progress)[0] for r in (1, 2)}
        x, _ = load_all(HELD_OUT_EVALUATION.resolve(), fp32.preprocessing)
        latency = interleaved_p50({"original": fp32, **converted}, x, iterations=30)
        document["cost"].append({
            "model": name,
            "gmacs": {"original": converted["rank 1"].manifest["dw_separable"]["gmacs"]["before"], **{k: a.manifest["dw_separable"]["gmacs"]["after"] for k, a in converted.items()}},
            "params_m": {"original": converted["rank 1"].manifest["dw_separable"]["params_m"]["before"], **{k: a.manifest["dw_separable"]["params_m"]["after"] for k, a in converted.items()}},
            "latency_ms": latency,
        })
        save(document, args)
    if "per_layer" in sections:
        console.print("[bold]resnet50[/] (random init): layers converted in --dw-budget order")
        document["per_layer"] = per_layer_tradeoff(build_artifact(ModelRequest("resnet50", random_init=True))[0])
        save(document, args)

    if "accuracy" not in sections:
        return 0
    console.print("[bold]efficientnet_lite0[/] (real weights): the stem, before and after distillation")
    fp32, _ = build_artifact(ModelRequest("efficientnet_lite0"))
    x, labels = load_all(HELD_OUT_EVALUATION.resolve(), fp32.preprocessing)
    reference = pytorch_reference(fp32, x)
    for rank in (1, 4):
        plain, _ = dwsep_artifact(fp32, rank, images, progress=progress)
        distilled, _ = dwsep_artifact(fp32, rank, images, distill_options=DistillOptions(steps=args.distill_steps), progress=progress)
        document["accuracy"].append({
            "rank": rank,
            "layers": [c["name"] for c in plain.manifest["dw_separable"]["layers"] if c["converted"]],
            "kernel_errors": plain.manifest["dw_separable"]["kernel_errors"],
            "no recovery": fidelity(plain, x, reference, labels),
            "distilled": fidelity(distilled, x, reference, labels),
        })
        save(document, args)
    return 0


def save(document: dict, args) -> None:
    """Written after every section, so an interrupted run keeps what it measured."""
    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document, args.distill_steps))
    console.print(f"wrote {args.out.with_suffix('.json')} and .md")


def markdown(doc: dict, steps: int) -> str:
    m = doc["machine"]
    lines = [
        "# Depthwise-separable conversion: cost, per-layer trade-off, accuracy",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}."
        + "".join(f" The {k[: -len('_measured')]} section was measured {v}, in an earlier run." for k, v in doc.items() if k.endswith("_measured")),
        "Latency: batch 1, median over 3 alternating rounds of the p50 of 30 runs, default threads.",
        "",
        "## Every KxK convolution converted (random init: cost only)",
        "",
        "| model | GMACs orig / r=1 / r=2 | params M orig / r=1 / r=2 | ORT ms orig / r=1 / r=2 | ORT speed-up r=1 / r=2 | OpenVINO ms orig / r=1 / r=2 | OpenVINO speed-up r=1 / r=2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in doc["cost"]:
        lat = c["latency_ms"]
        keys = ("original", "rank 1", "rank 2")

        def trio(d, spec=".2f"):
            return " / ".join(f"{d[k]:{spec}}" for k in keys)

        ort = {k: lat[k]["onnxruntime"] for k in keys}
        ov = {k: lat[k]["openvino"] for k in keys}
        lines.append(
            f"| {c['model']} | {trio(c['gmacs'])} | {trio(c['params_m'], '.1f')} | {trio(ort)} | "
            f"{ort['original'] / ort['rank 1']:.2f}x / {ort['original'] / ort['rank 2']:.2f}x | {trio(ov)} | "
            f"{ov['original'] / ov['rank 1']:.2f}x / {ov['original'] / ov['rank 2']:.2f}x |"
        )
    if doc["per_layer"]:
        lines += [
            "",
            "## resnet50, layers converted at rank 1 in `--dw-budget` order (best MACs saved per unit of kernel error first)",
            "",
            "Kernel error is ||W - W_1|| / ||W|| of the random-init kernel; model KL is on random inputs. ONNX Runtime",
            "batch-1 p50, median of 3 alternating rounds of 30 runs.",
            "",
            "| layers converted | last one added | MMACs saved | model KL | ORT ms | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        points = doc["per_layer"]["cumulative"]
        base = points[0]["ort_ms"]
        for p in points:
            lines.append(
                f"| {p['layers']} | {p['last_layer'] or '-'} | {p['macs_saved'] / 1e6:.0f} | {p['model_kl_random_input']:.2e} | "
                f"{p['ort_ms']:.2f} | {base / p['ort_ms']:.2f}x |"
            )
        lines += ["", "| layer | kernel | in->out | kernel error | MMACs saved |", "|---|---|---|---|---|"]
        for r in doc["per_layer"]["layers"]:
            lines.append(f"| {r['name']} | {'x'.join(map(str, r['kernel']))} | {r['in_channels']}->{r['out_channels']} | {r['kernel_error']:.3f} | {r['saved'] / 1e6:.1f} |")
    if not doc["accuracy"]:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"## efficientnet_lite0 (real weights): its standard convolution(s) converted, judged on 77 held-out views (distillation: {steps} steps on the odd views)",
        "",
        "| rank | layers | kernel error | KL vs original, no recovery | agreement % | KL after distillation | agreement % |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in doc["accuracy"]:
        errors = ", ".join(f"{v:.3f}" for v in a["kernel_errors"].values())
        lines.append(
            f"| {a['rank']} | {', '.join(a['layers'])} | {errors} | {a['no recovery']['mean_kl']:.4f} | {a['no recovery']['agreement']:.1f} | "
            f"{a['distilled']['mean_kl']:.4f} | {a['distilled']['agreement']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
