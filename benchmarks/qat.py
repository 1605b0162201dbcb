"""Quantization-aware training (QAT) vs post-training INT8 (PTQ), on true labels.

A MobileNetV2-style network (ReLU6, depthwise 3x3, linear bottlenecks, residual adds) is
trained on scikit-learn's real digits (tests/digits.py: 1,257 training and 540 held-out
images, 16x16 RGB), exported to ONNX and quantized by edgekit's int8 algorithm
(percentile calibration, signed INT8 activations, per-channel weights, bias correction):

* "default": fallback to float allowed (at most 8 nodes, budget agreement >= 98% and
  KL <= 0.004 on the calibration images), as `edgekit export --int8` does;
* "all-INT8": no fallback (--max-fallback 0), every Conv/Gemm in INT8.

QAT (edgekit.transforms.qat, what `--int8 --qat-epochs N` runs, default options but the
epochs) then fine-tunes each PTQ graph and writes the same QDQ graph: "defaults" on the
whole training split (what --qat-limit's default takes from a folder this size; a fifth
of it held back to choose the epoch written), and for comparison on the 200 calibration
images alone (what QAT read before --qat-limit existed). Every file is run with ONNX
Runtime (the QDQ graph as written) on the 540 held-out digits.

Two networks per seed:

* "as trained": quantizes almost losslessly (the digits have wide margins);
* "outlier channels x{alpha}": the same network with two channels of each residual stream
  scaled up by alpha (BatchNorm of the projections producing the stream) and the
  consumers' input weights scaled down by 1/alpha. Linear bottlenecks have no activation,
  so the FP32 function is exactly the same, but one per-tensor INT8 scale now has to
  cover channels alpha times wider than the rest: the outlier-channel problem of real
  networks (the inverse of cross-layer equalization, Nagel et al. 2019), where PTQ
  loses points.

A last section runs EfficientNet-Lite0 (real ImageNet weights) all-INT8 through the int8
step and QAT on the bundled photos (calibration: 77 odd views; judged on the 77 even views
against FP32: agreement and KL, no labels worth the name).

Writes results/qat.{json,md}.

    .venv/bin/python benchmarks/qat.py     # 3 seeds and Lite0: about 45 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from digits import export_digits_onnx, load_digits_split  # noqa: E402

from edgekit.artifacts import now_iso  # noqa: E402
from edgekit.evaluation import compare_to_baseline  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402
from edgekit.timing import machine_info  # noqa: E402
from edgekit.transforms.qat import QATOptions, qat_onnx  # noqa: E402
from edgekit.transforms.qdq_graph import run_logits  # noqa: E402
from edgekit.transforms.quantize import QuantizeOptions, quantize_onnx  # noqa: E402
from edgekit.uncertainty import wilson  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CALIBRATION_IMAGES = 200
OUTLIER_CHANNELS = (0, 5)
console = Console(stderr=True)


# --------------------------------------------------------------------------- the network


def _network_class():
    import torch
    from torch import nn

    def conv_bn(i, o, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(i, o, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o)]
        return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, i, o, stride, expand):
            super().__init__()
            hidden = i * expand
            self.block = nn.Sequential(conv_bn(i, hidden, 1), conv_bn(hidden, hidden, 3, stride, hidden), conv_bn(hidden, o, 1, act=False))
            self.residual = stride == 1 and i == o

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    class MobileDigits(nn.Module):
        """MobileNetV2 in miniature for 3x16x16 digits: 6 inverted residual blocks."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                conv_bn(3, 16, 3), InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4),
                InvertedResidual(24, 32, 2, 4), InvertedResidual(32, 32, 1, 4), InvertedResidual(32, 32, 1, 4), conv_bn(32, 128, 1),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(128, 10)

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    return MobileDigits


def train_network(x_train, y_train, seed: int, epochs: int = 10):
    """Adam (lr 1e-2, cosine), batch 64, one thread; about 20 s."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _network_class()()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
        schedule.step()
    return model.eval()


def with_outlier_channels(model, alpha: float):
    """A copy computing the same function, with OUTLIER_CHANNELS of both residual streams
    (24 and 32 channels) alpha times larger: the projections that write a stream get their
    BatchNorm scale and shift multiplied by alpha, the 1x1 convolutions that read it their
    input weights divided by alpha. Exact: nothing non-linear sits on a stream."""
    import copy

    import torch

    model = copy.deepcopy(model)
    f = model.features
    streams = (([f[2], f[3]], [f[3], f[4]]), ([f[4], f[5], f[6]], [f[5], f[6], f[7]]))
    with torch.no_grad():
        for writers, readers in streams:
            for c in OUTLIER_CHANNELS:
                for block in writers:
                    bn = block.block[2][1]
                    bn.weight[c] *= alpha
                    bn.bias[c] *= alpha
                for block in readers:
                    conv = block.block[0][0] if hasattr(block, "block") else block[0]
                    conv.weight[:, c] /= alpha
    return model


# --------------------------------------------------------------------------- measuring


def judge(path: Path, x_test, y_test, reference) -> dict:
    logits = run_logits(path, x_test)
    stats = compare_to_baseline(logits, reference, [(int(v),) for v in y_test])
    return {
        "correct": int((logits.argmax(1) == y_test).sum()),
        "top1": stats.top1, "top1_ci": stats.top1_ci,
        "top1_drop": stats.top1_drop, "top1_drop_ci": stats.top1_drop_ci,
        "agreement": stats.agreement, "mean_kl": stats.mean_kl,
    }


def run_case(fp32: Path, folder: Path, data, qat_options: QATOptions, tag: str) -> dict:
    x_train, y_train, x_test, y_test = data
    x_cal, y_cal = x_train[:CALIBRATION_IMAGES], y_train[:CALIBRATION_IMAGES]
    cal_labels = [(int(v),) for v in y_cal]
    reference = run_logits(fp32, x_test)
    rows = {"FP32": judge(fp32, x_test, y_test, reference)}
    details = {}
    for mode, options in (("default", QuantizeOptions()), ("all-INT8", QuantizeOptions(max_fallback_nodes=0))):
        console.print(f"  {tag}: PTQ {mode}")
        ptq = folder / f"{tag}-ptq-{mode}.onnx"
        report = quantize_onnx(fp32, ptq, x_cal, cal_labels, options)
        rows[f"PTQ {mode}"] = judge(ptq, x_test, y_test, reference)
        rows[f"PTQ {mode}"]["fallback_nodes"] = len(report.fallback)
        train_labels = [(int(v),) for v in y_train]
        runs = [
            (f"QAT {mode}, defaults, {len(x_train)} images", x_train, train_labels, qat_options),
            (f"QAT {mode}, defaults, {CALIBRATION_IMAGES} images", x_cal, cal_labels, qat_options),
        ]
        for name, x_fit, y_fit, options in runs:
            console.print(f"  {tag}: {name}")
            out = folder / f"{tag}-{name.replace(' ', '_').replace(',', '')}.onnx"
            start = time.perf_counter()
            qat = qat_onnx(fp32, ptq, out, x_fit, y_fit, options)
            rows[name] = judge(out, x_test, y_test, reference)
            rows[name].update(fallback_nodes=len(report.fallback), seconds=time.perf_counter() - start)
            details[name] = {
                "steps": qat.steps, "best_epoch": qat.best_epoch, "selection_images": qat.selection_images, "epoch_kl": list(qat.epoch_kl), "loss": [qat.first_loss, qat.last_loss],
                "train_kl": [qat.before.mean_kl, qat.after.mean_kl], "train_agreement": [qat.before.agreement, qat.after.agreement],
                "simulation_max_abs_diff": qat.simulation_max_abs_diff, "notes": list(qat.notes),
            }
    return {"rows": rows, "qat_details": details}


def pooled(cases: list[dict], network: str) -> dict:
    """Correct answers summed over seeds (different networks, disjoint trainings), with a
    Wilson interval; drops and KL averaged."""
    chosen = [c for c in cases if c["network"] == network]
    names = list(chosen[0]["rows"])
    table = {}
    for name in names:
        rows = [c["rows"][name] for c in chosen]
        n = sum(c["test_images"] for c in chosen)
        correct = sum(r["correct"] for r in rows)
        interval = wilson(correct, n).as_percent()
        table[name] = {
            "top1": 100.0 * correct / n, "top1_ci": interval, "images": n,
            "top1_drop": float(np.mean([r["top1_drop"] for r in rows])),
            "agreement": float(np.mean([r["agreement"] for r in rows])),
            "mean_kl": float(np.mean([r["mean_kl"] for r in rows])),
        }
    return table


def lite0_section(options: QATOptions) -> dict:
    """EfficientNet-Lite0 (real ImageNet weights), all-INT8, QAT on the bundled photos'
    77 odd views (the calibration images), judged on the 77 even views."""
    from edgekit.data import HELD_OUT_EVALUATION, default_calibration, load_all
    from edgekit.steps.export import ModelRequest, build_artifact
    from edgekit.steps.int8 import quantize_artifact

    console.print("[bold]efficientnet_lite0[/]: all-INT8 PTQ, then QAT")
    fp32, _ = build_artifact(ModelRequest("efficientnet_lite0"))
    calibration = default_calibration().resolve()
    ptq, _ = quantize_artifact(fp32, calibration, QuantizeOptions(max_fallback_nodes=0))
    x_cal, cal_labels = load_all(calibration, fp32.preprocessing)
    x_eval, eval_labels = load_all(HELD_OUT_EVALUATION.resolve(), fp32.preprocessing)
    reference = run_logits(fp32.onnx_path, x_eval)

    def figures(path) -> dict:
        stats = compare_to_baseline(run_logits(path, x_eval), reference, eval_labels)
        return {"agreement": stats.agreement, "agreement_ci": stats.agreement_ci, "mean_kl": stats.mean_kl, "top1": stats.top1}

    rows = {"FP32": figures(fp32.onnx_path), "PTQ all-INT8": figures(ptq.onnx_path)}
    details = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-qat-lite0-") as tmp:
        for name, run_options in ((f"QAT all-INT8, defaults, {options.epochs} epochs", options),):
            console.print(f"  {name}")
            out = Path(tmp) / "qat.onnx"
            report = qat_onnx(fp32.onnx_path, ptq.onnx_path, out, x_cal, cal_labels, run_options)
            rows[name] = {**figures(out), "seconds": report.seconds}
            details[name] = {
                "best_epoch": report.best_epoch, "selection_images": report.selection_images, "epoch_kl": list(report.epoch_kl),
                "train_kl": [report.before.mean_kl, report.after.mean_kl], "notes": list(report.notes),
            }
    return {"calibration_images": len(x_cal), "eval_images": len(x_eval), "rows": rows, "qat_details": details}


# --------------------------------------------------------------------------- report


def markdown(document: dict) -> str:
    o = document["qat_options"]
    lines = [
        "# Quantization-aware training vs post-training INT8 (true labels)",
        "",
        f"Machine: {document['machine']['cpu']}, {document['machine']['logical_cores']} logical cores. Command: `{document['command']}`. Created {document['created']}.",
        "",
        "Network: MobileNetV2 in miniature (ReLU6, depthwise 3x3, linear bottlenecks, residual adds), trained 10 epochs on the "
        f"digits' 1,257 training images; seeds {document['seeds']}. PTQ: edgekit's int8 algorithm (percentile 99.999, bias "
        f"correction), calibrated on the first {CALIBRATION_IMAGES} training images. QAT at its defaults but the epochs: {o['epochs']} epochs, Adam lr {o['lr']:g}, "
        f"batch {o['batch_size']}, distillation from FP32 at T={o['temperature']} (label weight {o['label_weight']}), "
        f"augmentation (flips, shifts) {'on' if o['augment'] else 'off'}, activation scales learned from the calibrated ones "
        f"(log scale, Adam lr {o['scale_lr']}); {o['selection']:.0%} of its images held back, and the last epoch written unless an earlier one "
        "(the PTQ start included) is better on them beyond the noise. QAT starts from the PTQ graph and writes the same graph (same nodes, Q/DQ placements and fallbacks).",
        "Every figure: ONNX Runtime running the file as written, on the 540 held-out digits per seed, pooled over seeds "
        "(top-1 with a Wilson 95% interval on all held-out answers; drop, agreement and KL vs FP32 averaged over seeds).",
        "",
    ]
    for network, table in document["pooled"].items():
        lines += [f"## {network}", "", "| model | top-1 % | 95% interval | vs FP32 (points) | agreement with FP32 % | mean KL vs FP32 |", "|---|---|---|---|---|---|"]
        for name, r in table.items():
            lines.append(
                f"| {name} | {r['top1']:.2f} | {r['top1_ci'][0]:.2f}-{r['top1_ci'][1]:.2f} | {0.0 - r['top1_drop'] + 0.0:+.2f} | {r['agreement']:.2f} | {r['mean_kl']:.5f} |"
            )
        lines.append("")
    lines += ["## Per seed (top-1 %, held-out)", ""]
    for network in document["pooled"]:
        cases = [c for c in document["cases"] if c["network"] == network]
        names = list(cases[0]["rows"])
        lines += [f"{network}:", "", "| model | " + " | ".join(f"seed {c['seed']}" for c in cases) + " |", "|---|" + "---|" * len(cases)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{c['rows'][name]['top1']:.2f}" for c in cases) + " |")
        lines.append("")
    lines += ["", "## Goal: QAT at its defaults within 0.3 points of FP32 wherever PTQ loses more than 1 point", ""]
    for line in document["goal"]:
        lines.append(f"- {line}")
    lite = document.get("lite0")
    if lite:
        lines += [
            "", "## EfficientNet-Lite0 (real ImageNet weights), all-INT8",
            "",
            *([f"Measured {document['lite0_measured']}, in an earlier run of this script.", ""] if document.get("lite0_measured") else []),
            f"PTQ (no fallback) and QAT on the bundled photos' {lite['calibration_images']} odd views (QAT holds back "
            + ", ".join(f"{d.get('selection_images', 0)} to judge it; written: " + (f"epoch {d['best_epoch']}" if d['best_epoch'] else "the post-training values, kept") for d in lite["qat_details"].values())
            + f"); figures on the {lite['eval_images']} even views none of them saw, vs the FP32 ONNX model (top-1 vs the photos' labels: 7 photos, "
            "not a measure of accuracy).",
            "",
            "| model | agreement with FP32 % | 95% interval | mean KL vs FP32 | top-1 vs labels % | QAT seconds |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in lite["rows"].items():
            ci = f"{r['agreement_ci'][0]:.1f}-{r['agreement_ci'][1]:.1f}" if r.get("agreement_ci") else "-"
            lines.append(f"| {name} | {r['agreement']:.1f} | {ci} | {r['mean_kl']:.4f} | {r['top1']:.1f} | {r.get('seconds', 0):.0f} |")
    lines += ["", "For scale, NVIDIA's published MobileNetV2 ImageNet figures: FP32 71.77, PTQ 70.87, QAT 71.62.", ""]
    return "\n".join(lines)


def goal_lines(document: dict) -> list[str]:
    found = []
    for network, table in document["pooled"].items():
        fp32 = table["FP32"]["top1"]
        for mode in ("default", "all-INT8"):
            ptq = table[f"PTQ {mode}"]["top1"]
            qats = {k: v["top1"] for k, v in table.items() if k.startswith(f"QAT {mode},")}
            defaults = next(k for k in qats if k.startswith(f"QAT {mode}, defaults, {document['training_images']} images"))
            verdict = "met" if fp32 - qats[defaults] <= 0.3 else "NOT met"
            applies = fp32 - ptq > 1.0
            found.append(
                f"{network}, PTQ {mode}: FP32 {fp32:.2f}, PTQ {ptq:.2f} ({ptq - fp32:+.2f}), "
                + ", ".join(f"{k} {v:.2f} ({v - fp32:+.2f})" for k, v in qats.items())
                + (f": PTQ loses more than 1 point; goal {verdict} ({defaults})" if applies else ": PTQ loses at most 1 point (goal does not apply)")
            )
    return found


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alpha", type=float, default=64.0, help="outlier channel factor")
    parser.add_argument("--epochs", type=int, default=12, help="QAT epochs on the digits")
    parser.add_argument("--lr", type=float, default=QATOptions.lr, help="QAT's learning rate (default: QAT's own default)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--lite0-epochs", type=int, default=4)
    parser.add_argument("--skip-lite0", action="store_true", help="leave out EfficientNet-Lite0 (about 20 minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS / "qat")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is faster on a shared 2-core machine
    options = QATOptions(epochs=args.epochs, lr=args.lr, augment=not args.no_augment)
    data = load_digits_split(seed=0)
    document = {
        "created": now_iso(), "command": "python " + " ".join(["benchmarks/qat.py", *sys.argv[1:]]), "machine": machine_info(),
        "seeds": args.seeds, "alpha": args.alpha, "calibration_images": CALIBRATION_IMAGES, "training_images": len(data[0]), "qat_options": dataclasses.asdict(options), "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="edgekit-qat-bench-") as tmp:
        folder = Path(tmp)
        for seed in args.seeds:
            console.print(f"[bold]seed {seed}[/]: training the network")
            model = train_network(data[0], data[1], seed)
            networks = (("as trained", model), (f"outlier channels x{args.alpha:g}", with_outlier_channels(model, args.alpha)))
            for network, module in networks:
                tag = f"s{seed}-{'plain' if network == 'as trained' else 'outlier'}"
                fp32 = folder / f"{tag}.onnx"
                export_digits_onnx(module, fp32)
                case = run_case(fp32, folder, data, options, tag)
                document["cases"].append({"network": network, "seed": seed, "test_images": len(data[3]), **case})
                console.print("    " + ", ".join(f"{k} {v['top1']:.2f}" for k, v in case["rows"].items()))
    if not args.skip_lite0:
        torch.set_num_threads(2)
        document["lite0"] = lite0_section(dataclasses.replace(options, epochs=args.lite0_epochs))
    elif args.out.with_suffix(".json").is_file():  # keep what an earlier run measured
        recorded = json.loads(args.out.with_suffix(".json").read_text())
        if recorded.get("lite0"):
            document["lite0"] = recorded["lite0"]
            document["lite0_measured"] = recorded.get("lite0_measured", recorded["created"])
    document["pooled"] = {network: pooled(document["cases"], network) for network in dict.fromkeys(c["network"] for c in document["cases"])}
    document["goal"] = goal_lines(document)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document))
    console.print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
