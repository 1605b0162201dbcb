"""Transfer learning: efficientnet_lite0 from its ImageNet weights vs the same network from
random init, same data, schedule, steps and machine.

Data: scikit-learn's digits (1,797 real labelled 8x8 scans) written as PNG class folders
(zero..nine) with train/ (70%) and val/ (30%, stratified), upsampled to 32 px and fed at
--input-size (default 64). Both arms run `edgekit finetune` through the Python API with
the defaults users get (linear probe, then full fine-tuning; AdamW, cosine, label
smoothing, random-resized crops without flips: digits are not mirror-symmetric), early
stopping off so both see every epoch. Per epoch: validation top-1 (with its 95% Wilson
interval), optimizer steps and wall time so far. Goal from the issue: transfer reaches
98% validation top-1 in under 10 minutes on this machine.

Writes results/finetune_transfer.{json,md}.

    .venv/bin/python benchmarks/finetune_transfer.py [--epochs 8] [--input-size 64]
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
from edgekit.uncertainty import wilson  # noqa: E402

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)


def arm(name: str, data: Path, work: Path, args, random_init: bool) -> dict:
    started = time.perf_counter()
    artifact = edgekit.export(
        "efficientnet_lite0", variant="finetuned", data=str(data), input_size=args.input_size, random_init=random_init,
        ft_epochs=args.epochs, ft_probe_epochs=args.probe_epochs, ft_augment="no-flip", ft_patience=1000, seed=args.seed,
        artifacts=str(work / "exported"),
        progress=lambda stage, done, total: console.print(f"  {name}: {stage}" + (f" {done}/{total}" if total else ""), end="\r"),
    )
    wall = time.perf_counter() - started
    report = artifact.manifest["finetune"]
    steps_per_epoch = max(1, report["train_images"] // artifact.manifest["steps"][-1]["settings"]["batch_size"])
    elapsed, epochs = 0.0, []
    for e in report["history"]:
        elapsed += e["seconds"]
        correct = round(e["val_top1"] * report["val_images"] / 100)
        interval = wilson(correct, report["val_images"])
        epochs.append({**e, "steps": e["epoch"] * steps_per_epoch, "elapsed_s": elapsed, "val_top1_ci": list(interval.as_percent())})
    console.print(f"  {name}: best val top-1 {report['best_val_top1']:.2f}% at epoch {report['best_epoch']} ({wall:.0f} s in all)" + " " * 20)

    def first(threshold):
        hit = next((e for e in epochs if e["val_top1"] >= threshold), None)
        return None if hit is None else {"epoch": hit["epoch"], "steps": hit["steps"], "elapsed_s": hit["elapsed_s"]}

    return {
        "arm": name, "random_init": random_init, "best_val_top1": report["best_val_top1"], "best_epoch": report["best_epoch"],
        "train_images": report["train_images"], "val_images": report["val_images"], "wall_s": wall,
        "reach_95": first(95.0), "reach_98": first(98.0), "epochs": epochs,
    }


def markdown(document: dict) -> str:
    lines = [
        "# Transfer learning: efficientnet_lite0, ImageNet weights vs random init",
        "",
        f"`{document['command']}` on {document['machine'].get('cpu', '?')} ({document['created']}).",
        f"Data: scikit-learn digits as PNG class folders, {document['arms'][0]['train_images']} training / "
        f"{document['arms'][0]['val_images']} validation images, input {document['input_size']} px. "
        "Same schedule, steps and seed for both arms; early stopping off.",
        "",
        "| arm | best val top-1 % | epoch | steps to 95% | time to 95% | steps to 98% | time to 98% | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in document["arms"]:
        reached = []
        for hit in (a["reach_95"], a["reach_98"]):
            reached += [str(hit["steps"]), "%.0f s" % hit["elapsed_s"]] if hit else ["not reached", "-"]
        lines.append(f"| {a['arm']} | {a['best_val_top1']:.2f} | {a['best_epoch']} | " + " | ".join(reached) + f" | {a['wall_s']:.0f} s |")
    lines += ["", "Per epoch (validation top-1 with its 95% Wilson interval, cumulative training time):", "",
              "| arm | epoch | phase | train loss | val top-1 % | 95% interval | steps | time |", "|---|---|---|---|---|---|---|---|"]
    for a in document["arms"]:
        for e in a["epochs"]:
            lo, hi = e["val_top1_ci"]
            lines.append(f"| {a['arm']} | {e['epoch']} | {e['phase']} | {e['train_loss']:.3f} | {e['val_top1']:.2f} | [{lo:.1f}, {hi:.1f}] | {e['steps']} | {e['elapsed_s']:.0f} s |")
    goal = document["arms"][0]["reach_98"]
    lines += ["", f"Goal (transfer reaches 98% in under 10 minutes): {'met' if goal and goal['elapsed_s'] < 600 else 'not met'}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=7, help="full fine-tuning epochs after the 1 probe epoch")
    parser.add_argument("--probe-epochs", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "finetune_transfer")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-transfer-"))
    try:
        data = write_digits_folders(work / "digits", size=32)
        arms = [arm("pretrained (ImageNet)", data, work, args, False), arm("random init", data, work, args, True)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    document = {
        "created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(),
        "input_size": args.input_size, "epochs": args.epochs, "probe_epochs": args.probe_epochs, "arms": arms,
    }
    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
