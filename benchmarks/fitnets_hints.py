"""FitNets hints vs logit-only distillation, recovering a pruned network: true top-1.

The teacher is efficientnet_lite0 fine-tuned from its ImageNet weights on scikit-learn's
digits (PNG class folders, train/ and val/; `edgekit finetune` defaults, fewer epochs).
It is pruned by 30% of its channels (L2, uniform) and recovered by distillation from the
teacher on the training split's images (no labels), the same steps, batch, learning rate
and seed for both arms: logits only (KL at T=4), and logits plus FitNets hints (the
middle and last feature maps through 1x1 regressors). Every arm's true top-1 is measured
by `edgekit bench` on ONNX Runtime on the validation split, with its 95% interval.

Writes results/fitnets_hints.{json,md}.

    .venv/bin/python benchmarks/fitnets_hints.py [--steps 150] [--prune 0.3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from digits import write_digits_folders  # noqa: E402

import edgekit  # noqa: E402
from edgekit.artifacts import now_iso  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402
from edgekit.timing import machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)


def true_top1(artifact, data: Path) -> dict:
    run = edgekit.bench(artifact.path, backends=["onnxruntime"], data=str(data), iterations=5, warmup=1, power="off")
    (row,) = run.rows
    return {"top1": row.accuracy.top1, "top1_ci": list(row.accuracy.top1_ci), "images": row.accuracy.images}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="distillation steps, both arms")
    parser.add_argument("--prune", type=float, default=0.3)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "fitnets_hints")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-fitnets-"))
    common = dict(input_size=args.input_size, ft_epochs=args.ft_epochs, ft_augment="no-flip", artifacts=str(work / "exported"))

    def progress(label):
        return lambda stage, done, total: console.print(f"  {label}: {stage}" + (f" {done}/{total}" if total else "") + " " * 10, end="\r")

    try:
        data = write_digits_folders(work / "digits", size=32)
        teacher = edgekit.export("efficientnet_lite0", variant="finetuned", data=str(data), progress=progress("teacher"), **common)
        arms = [{"arm": "fine-tuned teacher (unpruned)", **true_top1(teacher, data), "seconds": None}]
        for label, steps, hints in (("pruned, no recovery", 0, False), ("logit distillation", args.steps, False), ("logits + FitNets hints", args.steps, True)):
            started = time.perf_counter()
            student = edgekit.export(
                "efficientnet_lite0", variant="finetuned+pruned", data=str(data), prune=args.prune, distill_steps=steps, distill_hints=hints,
                progress=progress(label), **common,
            )
            seconds = time.perf_counter() - started
            distillation = (student.manifest.get("pruning") or {}).get("distillation") or {}
            arms.append({"arm": label, **true_top1(student, data), "seconds": seconds, "hint_layers": distillation.get("hint_layers"),
                         "params_m": student.manifest["pruning"]["params_m"]})
            console.print(f"  {label}: top-1 {arms[-1]['top1']:.2f}% ({seconds:.0f} s)" + " " * 40)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    document = {"created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(),
                "steps": args.steps, "prune": args.prune, "input_size": args.input_size, "arms": arms}
    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document))
    print(markdown(document))
    return 0


def markdown(document: dict) -> str:
    teacher = document["arms"][0]["top1"]
    lines = [
        "# FitNets hints vs logit-only distillation after pruning (true top-1)",
        "",
        f"`{document['command']}` on {document['machine'].get('cpu', '?')} ({document['created']}).",
        f"efficientnet_lite0 fine-tuned on digits (input {document['input_size']} px), {document['prune']:.0%} of channels pruned, "
        f"{document['steps']} distillation steps per arm on the training split (no labels); top-1 on the validation split "
        f"({document['arms'][0]['images']} images) by ONNX Runtime, 95% Wilson intervals.",
        "",
        "| arm | top-1 % | 95% interval | recovered of the loss | time |",
        "|---|---|---|---|---|",
    ]
    pruned = next(a["top1"] for a in document["arms"] if a["arm"].startswith("pruned"))
    for a in document["arms"]:
        lo, hi = a["top1_ci"]
        lost = teacher - pruned
        recovered = f"{(a['top1'] - pruned) / lost:.0%}" if lost > 0 and a["arm"] not in ("fine-tuned teacher (unpruned)",) and not a["arm"].startswith("pruned") else "-"
        lines.append(f"| {a['arm']} | {a['top1']:.2f} | [{lo:.1f}, {hi:.1f}] | {recovered} | {a['seconds']:.0f} s |" if a["seconds"] else
                     f"| {a['arm']} | {a['top1']:.2f} | [{lo:.1f}, {hi:.1f}] | {recovered} | - |")
    hints = next((a for a in document["arms"] if a.get("hint_layers")), None)
    if hints:
        lines += ["", f"Hint layers: {', '.join(hints['hint_layers'])}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
