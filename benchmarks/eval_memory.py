"""Evaluation at real size: peak memory of every worker, and both ImageNet validation layouts.

Generates small JPEGs in a temporary folder (an ImageNet-style class-folder tree) and runs
the real `edgekit bench` on 7, 2,000 and 50,000 of them, one view each, with the PyTorch,
ONNX Runtime and OpenVINO workers. Each worker reports its own peak RSS (VmHWM); the goal
is that it stays flat, within 64 MB from 7 to 50,000 images. The `edgekit` process's own
peak RSS is read by wait4.

Then the flat ILSVRC2012 validation layout at 50,000 files: labels from Kaggle's
LOC_val_solution.csv and from the devkit's ILSVRC2012_validation_ground_truth.txt with a
meta.mat beside it (generated here in the devkit's format, with a devkit class order that
differs from ImageNet's index order), checked label by label against the truth, and one
`edgekit bench --limit 200` run through each.

    .venv/bin/python benchmarks/eval_memory.py [--sizes 7 2000 50000] [--model efficientnet_lite0]

Writes results/eval_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgekit.timing import machine_info  # noqa: E402
from edgekit.data import folder_images, imagenet_classes  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CLASSES = 10
GOAL_MB = 64.0


def make_jpegs(root: Path, count: int, flat: bool = False, side: int = 96, seed: int = 0) -> dict[str, int]:
    """``count`` small JPEGs (smooth random colour fields, so they compress like photos);
    returns file stem -> class index."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = imagenet_classes()[0]
    classes = rng.choice(1000, size=CLASSES, replace=False)
    truth = {}
    root.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    for n in range(1, count + 1):
        label = int(classes[n % CLASSES])
        tile = np.roll(base, n, axis=(0, 1)) ^ np.uint8(n % 251)
        image = Image.fromarray(tile).resize((side, side), Image.Resampling.BILINEAR)
        stem = f"ILSVRC2012_val_{n:08d}"
        folder = root if flat else root / wnids[label]
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{stem}.JPEG", quality=85)
        truth[stem] = label
    return truth


LAUNCHER = (
    "import atexit, sys\n"
    "from edgekit.timing import peak_rss_mb\n"
    "atexit.register(lambda: sys.stderr.write(f'EDGEKIT_PEAK_RSS_MB={peak_rss_mb():.1f}\\n'))\n"
    "from edgekit.cli import main\n"
    "sys.argv[0] = 'edgekit'\n"
    "main()\n"
)


def model_args(model: str) -> tuple[str, ...]:
    return () if model.startswith("efficientnet_lite") else ("--random-init",)


def run_bench(model: str, data: Path, out: Path, backends: str, extra: tuple[str, ...] = ()) -> tuple[dict, float, float]:
    """`edgekit bench` in a process of its own: (results document, that process's own peak
    RSS in MB, seconds). Its workers report their own peaks in the document."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", LAUNCHER, "bench", model, *model_args(model), "--data", str(data), "--views", "1", "--backend", backends,
               "--iterations", "20", "--warmup", "5", "--power", "off", "--json", str(out), *extra]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"edgekit bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = next(float(line.split("=", 1)[1]) for line in proc.stderr.splitlines() if line.startswith("EDGEKIT_PEAK_RSS_MB="))
    return json.loads(out.read_text()), peak, seconds


def write_loc_solution(path: Path, truth: dict[str, int]) -> None:
    wnids = imagenet_classes()[0]
    lines = ["ImageId,PredictionString"] + [f"{stem},{wnids[label]} 1 2 30 40 " for stem, label in truth.items()]
    path.write_text("\n".join(lines) + "\n")


def write_devkit(folder: Path, truth: dict[str, int], seed: int = 1) -> Path:
    """ILSVRC2012_validation_ground_truth.txt + meta.mat, devkit ids in a shuffled order."""
    from scipy.io import savemat

    wnids = imagenet_classes()[0]
    order = np.random.default_rng(seed).permutation(1000)  # devkit id k+1 -> ImageNet index order[k]
    id_of = {int(index): k + 1 for k, index in enumerate(order)}
    synsets = np.zeros((1001,), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for k, index in enumerate(order):
        synsets[k] = (k + 1, wnids[int(index)])
    synsets[1000] = (1001, "n00001740")
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / "meta.mat", {"synsets": synsets})
    stems = sorted(truth)
    (folder / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[truth[s]]}\n" for s in stems))
    return folder / "ILSVRC2012_validation_ground_truth.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7, 2000, 50000])
    parser.add_argument("--model", default="mobilenet_v3_small", help="at its own 224 px input; random init unless it has offline weights")
    parser.add_argument("--backends", default="pytorch,onnxruntime,openvino")
    parser.add_argument("--flat-files", type=int, default=50000)
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_memory")
    args = parser.parse_args()
    rows, layouts = [], []
    with tempfile.TemporaryDirectory(prefix="edgekit-eval-memory-") as tmp:
        tmp = Path(tmp)
        for size in sorted(args.sizes):
            data = tmp / f"tree-{size}"
            started = time.perf_counter()
            make_jpegs(data, size)
            generated = time.perf_counter() - started
            print(f"{size} images generated in {generated:.0f} s; benchmarking", file=sys.stderr, flush=True)
            document, cli_rss, seconds = run_bench(args.model, data, tmp / f"r-{size}.json", args.backends)
            for r in document["results"]:
                rows.append({
                    "images": size, "backend": r["backend"], "worker_peak_rss_mb": r["peak_rss_mb"],
                    "evaluation_ips": r.get("evaluation_ips"), "evaluated": document["images"]["images_evaluated"],
                    "edgekit_peak_rss_mb": cli_rss, "seconds": seconds,
                })
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

        flat = tmp / "flat"
        started = time.perf_counter()
        truth = make_jpegs(flat, args.flat_files, flat=True, side=32)
        print(f"flat layout: {args.flat_files} files generated in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        loc = tmp / "LOC_val_solution.csv"
        write_loc_solution(loc, truth)
        ground_truth = write_devkit(tmp / "devkit" / "data", truth)
        for name, labels in (("LOC_val_solution.csv", loc), ("ILSVRC2012_validation_ground_truth.txt + meta.mat", ground_truth)):
            started = time.perf_counter()
            images = folder_images(flat, labels)
            listing = time.perf_counter() - started
            wrong = sum(img.labels != (truth[img.path.stem],) for img in images)
            document, cli_rss, seconds = run_bench(args.model, flat, tmp / "flat.json", "onnxruntime", ("--labels", str(labels), "--limit", "200"))
            layouts.append({
                "layout": f"flat, {name}", "files": len(images), "labels_wrong": wrong, "listing_seconds": listing,
                "bench_limit_200_evaluated": document["images"]["images_evaluated"], "bench_seconds": seconds, "edgekit_peak_rss_mb": cli_rss,
            })
            print(json.dumps(layouts[-1]), file=sys.stderr, flush=True)

    smallest = min(args.sizes)
    base = {r["backend"]: r["worker_peak_rss_mb"] for r in rows if r["images"] == smallest}
    growth = {b: max(r["worker_peak_rss_mb"] for r in rows if r["backend"] == b) - base[b] for b in base}
    command = "python " + " ".join(sys.argv)
    document = {
        "format": "edgekit-benchmark/1", "command": command, "machine": machine_info(), "model": args.model,
        "rows": rows, "layouts": layouts, "growth_mb": growth, "goal_mb": GOAL_MB,
        "goal_met": all(g <= GOAL_MB for g in growth.values()),
    }
    write_json(document, args.out.with_suffix(".json"))
    table = ["| images | backend | worker peak RSS MB | growth vs 7 MB | evaluation img/s | edgekit process peak RSS MB | wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| {r['images']:,} | {r['backend']} | {r['worker_peak_rss_mb']:.0f} | {r['worker_peak_rss_mb'] - base[r['backend']]:+.0f} | "
            f"{r['evaluation_ips']:.0f} | {r['edgekit_peak_rss_mb']:.0f} | {r['seconds']:.0f} |"
        )
    layout_table = ["| layout | files | labels wrong | listing + labels s | `--limit 200` evaluated |", "|---|---|---|---|---|"]
    layout_table += [f"| {x['layout']} | {x['files']:,} | {x['labels_wrong']} | {x['listing_seconds']:.1f} | {x['bench_limit_200_evaluated']} |" for x in layouts]
    machine = document["machine"]
    md = [
        "# Evaluation at real size: memory and ImageNet validation layouts",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores. Model: {args.model}. Command: `{command}`.",
        "",
        f"Generated 96x96 JPEGs, one view each, class-folder tree, each resized and cropped to the model's 224 px input; "
        "the model is small (random init unless it has offline weights) so that 50,000 images fit in the run: memory here is about "
        "the data set's size, which the model does not change. Worker peak RSS is each backend process's high-water mark (VmHWM); "
        f"goal: flat within {GOAL_MB:.0f} MB from {smallest} to {max(args.sizes):,} images. "
        "The edgekit process column is the `edgekit bench` process itself (it lists the files, writes the views file and joins the workers' logits).",
        "",
        *table,
        "",
        "Growth from the smallest to the largest set: " + ", ".join(f"{b} {g:+.0f} MB" for b, g in growth.items())
        + f" ({'goal met' if document['goal_met'] else 'GOAL MISSED'}).",
        "",
        f"## Flat validation layout at {args.flat_files:,} files",
        "",
        "Labels parsed for every file and compared with the generated truth; then `edgekit bench --labels FILE --limit 200` "
        "(a seeded sample) through ONNX Runtime.",
        "",
        *layout_table,
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {args.out.with_suffix('.json')} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
