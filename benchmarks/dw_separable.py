"""Depthwise-separable conversion: cost on ONNX Runtime / OpenVINO, per-layer trade-off,
and the accuracy it costs on real weights.

1. resnet18, resnet50, vgg16 (random init: cost only): params, GMACs and batch-1 latency
   on ONNX Runtime and OpenVINO before and after converting every KxK convolution, at
   rank 1 and rank 2, in alternating rounds.
2. resnet50, one layer at a time (rank 1): the layer's kernel error, the MACs it saves
   and the measured ONNX Runtime latency saved: the trade-off `--dw-budget` works with.
3. efficientnet_lite0 (real weights): its only standard convolution, the stem, at rank
   1/2/4: mean KL vs the original on held-out views, before and after distillation.

Writes results/dw_separable.{json,md}.

    .venv/bin/python benchmarks/dw_separable.py
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from structural_common import fidelity, interleaved_p50, pytorch_reference  # noqa: E402

from edgekit.artifacts import now_iso  # noqa: E402
from edgekit.bench import machine_info  # noqa: E402
from edgekit.data import load_all  # noqa: E402
from edgekit.pipeline import HELD_OUT_EVALUATION, ModelRequest, build_artifact, default_calibration  # noqa: E402
from edgekit.report import write_json  # noqa: E402
from edgekit.structural import _latency_ms, dwsep_artifact  # noqa: E402
from edgekit.transforms.distill import DistillOptions  # noqa: E402

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)


def progress(stage, done=None, total=None):
    console.print(f"    {stage}" + (f" {done}/{total}" if total else ""), end="\r")


def per_layer_tradeoff(fp32) -> list[dict]:
    import numpy as np
    import torch

    from edgekit.bench import mean_kl
    from edgekit.models import load_from_manifest
    from edgekit.transforms.dwsep import convert, layer_table

    loaded = load_from_manifest(fp32.manifest)
    module, size = loaded.module.eval(), loaded.spec.preprocessing.input_size
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, size, size), dtype=np.float32))
    with torch.no_grad():
        reference = module(x).numpy()
    base_ms = _latency_ms(module, size)
    rows = []
    table = layer_table(module, 1, size)
    for i, c in enumerate(table, 1):
        progress(f"layer {c.name}", i, len(table))
        trial = copy.deepcopy(module)
        convert(trial, [c.name], 1)
        with torch.no_grad():
            kl = mean_kl(reference, trial.eval()(x).numpy())
        ms = _latency_ms(trial, size)
        rows.append({**c.to_dict(), "model_kl_random_input": kl, "ort_ms_saved": base_ms - ms, "ort_ms_base": base_ms})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS / "dw_separable")
    args = parser.parse_args()
    document = {"created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(), "cost": [], "per_layer": [], "accuracy": []}
    images = default_calibration().resolve()

    for name in ("resnet18", "resnet50", "vgg16"):
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
        if name == "resnet50":
            console.print("  resnet50: one layer at a time")
            document["per_layer"] = per_layer_tradeoff(fp32)

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

    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document, args.distill_steps))
    console.print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


def markdown(doc: dict, steps: int) -> str:
    m = doc["machine"]
    lines = [
        "# Depthwise-separable conversion: cost, per-layer trade-off, accuracy",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}.",
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
        base = doc["per_layer"][0]["ort_ms_base"]
        lines += [
            "",
            f"## resnet50, one layer at a time at rank 1 (ONNX Runtime, whole model {base:.1f} ms)",
            "",
            "Kernel error is ||W - W_1|| / ||W|| of the random-init kernel; model KL is on random inputs. The",
            "layers `--dw-budget` converts first are those with the most MACs saved per unit of error.",
            "",
            "| layer | kernel | in->out | kernel error | MMACs saved | ORT ms saved | model KL |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted(doc["per_layer"], key=lambda r: -r["saved"] / max(r["kernel_error"], 1e-6)):
            lines.append(
                f"| {r['name']} | {'x'.join(map(str, r['kernel']))} | {r['in_channels']}->{r['out_channels']} | {r['kernel_error']:.3f} | "
                f"{r['saved'] / 1e6:.1f} | {r['ort_ms_saved']:+.2f} | {r['model_kl_random_input']:.2e} |"
            )
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
