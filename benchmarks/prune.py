"""Structured pruning: cost on ONNX Runtime / OpenVINO, and what distillation recovers.

1. resnet50 and mobilenet_v2 (random init: no offline weights; cost only), 30% of the
   channels removed (L2, uniform, stem and classifier kept), channel counts rounded to
   multiples of 8 (the default) and not rounded: params, GMACs and batch-1 latency on
   ONNX Runtime and OpenVINO vs the unpruned model, in alternating rounds.
2. efficientnet_lite0 (real weights) pruned 20%: mean KL and top-1 agreement vs the
   original on the bundled photos' even views (held out: distillation uses the odd
   ones), without and with distillation.

Writes results/prune.{json,md}.

    .venv/bin/python benchmarks/prune.py
"""

from __future__ import annotations

import argparse
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
from edgekit.steps.prune import pruned_artifact
from edgekit.transforms.distill import DistillOptions
from edgekit.transforms.prune import PruneOptions

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)


def progress(stage, done=None, total=None):
    console.print(f"    {stage}" + (f" {done}/{total}" if total else ""), end="\r")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS / "prune")
    parser.add_argument("--only", choices=("cost", "recovery"), help="re-measure one section; the other keeps its recorded figures")
    args = parser.parse_args()
    document = {"created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(), "cost": [], "recovery": None}
    if args.only and args.out.with_suffix(".json").is_file():
        recorded = json.loads(args.out.with_suffix(".json").read_text())
        kept = "recovery" if args.only == "cost" else "cost"
        document[kept] = recorded[kept]
        document[f"{kept}_measured"] = recorded.get(f"{kept}_measured", recorded["created"])
    images = default_calibration().resolve()

    for name in ("resnet50", "mobilenet_v2") if args.only != "recovery" else ():
        console.print(f"[bold]{name}[/] (random init) pruned 30%")
        fp32, _ = build_artifact(ModelRequest(name, random_init=True))
        pruned = {
            f"round_to={r}": pruned_artifact(fp32, PruneOptions(ratio=0.3, round_to=r), images, None, progress=progress)[0]
            for r in (8, 1)  # 8 is the default: channel counts in whole kernel blocks
        }
        x, _ = load_all(HELD_OUT_EVALUATION.resolve(), fp32.preprocessing)
        latency = interleaved_p50({"unpruned": fp32, **pruned}, x)
        for variant, artifact in pruned.items():
            p = artifact.manifest["pruning"]
            document["cost"].append({"model": name, "variant": variant, "params_m": p["params_m"], "gmacs": p["gmacs"], "latency_ms": {"unpruned": latency["unpruned"], "pruned": latency[variant]}})
        save(document, args.out)

    if args.only == "cost":
        return 0
    console.print("[bold]efficientnet_lite0[/] (real weights) pruned 20%: without and with distillation")
    fp32, _ = build_artifact(ModelRequest("efficientnet_lite0"))
    x, labels = load_all(HELD_OUT_EVALUATION.resolve(), fp32.preprocessing)
    reference = pytorch_reference(fp32, x)
    rows = document["recovery"] = {"original": fidelity(fp32, x, reference, labels)}
    for label, distill in (("no recovery", None), (f"distilled {args.distill_steps} steps", DistillOptions(steps=args.distill_steps))):
        pruned, _ = pruned_artifact(fp32, PruneOptions(ratio=0.2), images, distill, progress=progress)
        rows[label] = {**fidelity(pruned, x, reference, labels), "params_m": pruned.manifest["pruning"]["params_m"], "gmacs": pruned.manifest["pruning"]["gmacs"], "distillation": pruned.manifest["pruning"]["distillation"]}
        save(document, args.out)
    return 0


def save(document: dict, out: Path) -> None:
    """Written after every section, so an interrupted run keeps what it measured."""
    write_json(document, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(document))
    console.print(f"wrote {out.with_suffix('.json')} and .md")


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# Structured pruning: cost and recovery",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}."
        + "".join(f" The {k.split('_')[0]} section was measured {v}, in an earlier run." for k, v in doc.items() if k.endswith("_measured")),
        "Latency: batch 1, median over 3 alternating rounds of the p50 of 50 runs, default threads.",
        "",
        "## 30% of channels removed (L2, uniform; stem and classifier kept; random init, cost only)",
        "",
        "round_to=8 (the default) keeps every pruned layer's channel count a multiple of 8; round_to=1 prunes exactly 30%.",
        "",
        "| model | channels | params M | GMACs | ORT ms | ORT speed-up | OpenVINO ms | OpenVINO speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cost"]:
        lat = c["latency_ms"]
        ort = (lat["unpruned"]["onnxruntime"], lat["pruned"]["onnxruntime"])
        ov = (lat["unpruned"]["openvino"], lat["pruned"]["openvino"])
        lines.append(
            f"| {c['model']} | {c.get('variant', '-')} | {c['params_m']['before']:.1f} -> {c['params_m']['after']:.1f} | {c['gmacs']['before']:.2f} -> {c['gmacs']['after']:.2f} | "
            f"{ort[0]:.2f} -> {ort[1]:.2f} | {ort[0] / ort[1]:.2f}x | {ov[0]:.2f} -> {ov[1]:.2f} | {ov[0] / ov[1]:.2f}x |"
        )
    r = doc["recovery"]
    if not r:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## efficientnet_lite0 (real weights) pruned 20%, judged on 77 held-out views vs the original",
        "",
        "| model | mean KL vs original | top-1 agreement % | top-1 vs labels % | params M | GMACs |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in r.items():
        params = f"{row['params_m']['after']:.2f}" if "params_m" in row else "-"
        gmacs = f"{row['gmacs']['after']:.3f}" if "gmacs" in row else "-"
        lines.append(f"| {label} | {row['mean_kl']:.4f} | {row['agreement']:.1f} | {row['top1']:.1f} | {params} | {gmacs} |")
    keys = [k for k in r if k != "original"]
    if len(keys) == 2:
        lines += ["", f"Distillation divides the KL by {r[keys[0]]['mean_kl'] / max(r[keys[1]]['mean_kl'], 1e-12):.1f} (goal: at least 2)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
