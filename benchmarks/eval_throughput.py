"""Evaluation throughput: edgekit's streaming loader vs torchvision's DataLoader, same session.

Both feed the same ONNX Runtime session of efficientnet_lite0 (real weights) from the
same folder of JPEGs, decoding, preprocessing (bicubic resize, centre crop, normalise)
and running every image once in batches of the same size:

* edgekit: ``edgekit.data.stream_batches`` (a decode thread pool a few batches ahead),
  what every bench worker runs;
* torchvision: ``ImageFolder`` + ``DataLoader(num_workers=2)``, what a user would write.

The two alternate, several rounds, in one process; images/s is the median per loader and
the ratio is taken from the same run. Their logits are compared too (the same
preprocessing must give the same predictions), so the race is between equal pipelines.
The folder holds ImageNet-sized JPEGs (about 500x375) cut from the bundled photos.

    .venv/bin/python benchmarks/eval_throughput.py [--images 1000] [--rounds 3]

Writes results/eval_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgekit.timing import machine_info  # noqa: E402
from edgekit.data import DECODE_THREADS, bundled_images, imagenet_classes, make_image_set, folder_images, stream_batches  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BATCH = 8


def make_folder(root: Path, count: int, seed: int = 0) -> None:
    """ImageNet-sized JPEGs: random crops of the bundled photos, resized to about 500x375."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = bundled_images()
    wnids = imagenet_classes()[0]
    opened = [Image.open(p.path).convert("RGB") for p in photos]
    for n in range(count):
        i = n % len(photos)
        image = opened[i]
        w, h = image.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((left, top, left + cw, top + ch)).resize((500, 375) if cw >= ch else (375, 500), Image.Resampling.BILINEAR)
        folder = root / wnids[photos[i].labels[0]]
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{n:06d}.jpg", quality=90)


def edgekit_pass(session, name: str, root: Path, prep) -> tuple[float, np.ndarray]:
    images = make_image_set(folder_images(root), 1, str(root))
    started = time.perf_counter()
    logits = [session.run(None, {name: batch.array})[0] for batch in stream_batches(images.indexed(), prep, BATCH)]
    return len(images) / (time.perf_counter() - started), np.concatenate(logits)


def torchvision_pass(session, name: str, root: Path, prep) -> tuple[float, np.ndarray]:
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize(prep.resize_size, interpolation=transforms.InterpolationMode(prep.interpolation)),
        transforms.CenterCrop(prep.input_size),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), transform=transform), batch_size=BATCH, num_workers=2)
    logits = [session.run(None, {name: x.numpy()})[0] for x, _ in loader]
    count = sum(len(chunk) for chunk in logits)
    return count / (time.perf_counter() - started), np.concatenate(logits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_throughput")
    args = parser.parse_args()

    import onnxruntime as ort

    from edgekit.steps.export import ModelRequest, build_artifact

    with tempfile.TemporaryDirectory(prefix="edgekit-eval-throughput-") as tmp:
        tmp = Path(tmp)
        artifact, _ = build_artifact(ModelRequest("efficientnet_lite0"), root=tmp / "exported")
        make_folder(tmp / "images", args.images)
        session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        prep = artifact.preprocessing
        rates: dict[str, list[float]] = {"edgekit": [], "torchvision": []}
        for round_ in range(args.rounds):
            order = (("edgekit", edgekit_pass), ("torchvision", torchvision_pass))
            for loader, run in order if round_ % 2 == 0 else order[::-1]:
                rate, logits = run(session, name, tmp / "images", prep)
                rates[loader].append(rate)
                if loader == "edgekit":
                    ours = logits
                else:
                    theirs = logits
                print(f"round {round_ + 1} {loader}: {rate:.1f} images/s", file=sys.stderr, flush=True)
        agreement = float((ours.argmax(1) == theirs.argmax(1)).mean() * 100)
        max_diff = float(np.abs(ours - theirs).max())

    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = median["edgekit"] / median["torchvision"]
    command = "python " + " ".join(sys.argv)
    document = {
        "format": "edgekit-benchmark/1", "command": command, "machine": machine_info(), "model": "efficientnet_lite0",
        "images": args.images, "batch_size": BATCH, "decode_threads": DECODE_THREADS, "rounds": rates,
        "median_images_per_s": median, "ratio_edgekit_over_torchvision": ratio, "goal": "ratio >= 1 (no slower)",
        "goal_met": ratio >= 1.0, "same_predictions_percent": agreement, "max_abs_logit_diff": max_diff,
    }
    write_json(document, args.out.with_suffix(".json"))
    machine = document["machine"]
    md = [
        "# Evaluation throughput: edgekit's streaming loader vs torchvision DataLoader",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores. Command: `{command}`.",
        "",
        f"efficientnet_lite0 (real weights) on ONNX Runtime's CPU provider, one session shared by both loaders; {args.images} JPEGs "
        f"of about 500x375 in class folders; batch {BATCH}; decode + preprocess + run of every image, {args.rounds} alternating rounds. "
        f"edgekit decodes in {DECODE_THREADS} threads a few batches ahead; torchvision uses `DataLoader(num_workers=2)`.",
        "",
        "| loader | images/s per round | median images/s |",
        "|---|---|---|",
        *[f"| {k} | {', '.join(f'{r:.1f}' for r in v)} | {median[k]:.1f} |" for k, v in rates.items()],
        "",
        f"Ratio edgekit / torchvision (medians, same run): **{ratio:.2f}x** ({'goal met: no slower' if ratio >= 1 else 'GOAL MISSED: slower'}). "
        f"Same predictions on {agreement:.1f}% of images, max |logit diff| {max_diff:.1e} (equal preprocessing).",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {args.out.with_suffix('.json')} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
