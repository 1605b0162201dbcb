"""One fine-tuning epoch of efficientnet_lite0 on large real photos: decoding every file every
epoch (image cache off) vs the image cache (edgekit.data.cache) cold and warm vs the same
images already in memory as tensors (the network's own speed).

Data (made offline, kept in the system's temporary folder between runs): the 7 bundled
photos (edgekit/samples: camera, chelsea, china, coffee, flower, grace_hopper, rocket) in
4 classes, each file a seeded random crop (60-100% of each side) of its photo, upscaled
(bicubic) to a long side of 3000-5000 px, with a small per-file brightness change, saved
alternately as PNG (Pillow's default compression) and JPEG (quality 92). Real pixels,
realistic sizes; the user's report was 1,695 PNGs of up to 623 megapixels.

Each epoch is fine-tuning's own loop (transforms/finetune.py: _TrainImages through
_loader, AdamW, label smoothing, channels_last, the "full" phase: every weight trains);
(d) runs the same loop over a TensorDataset of the files' centre crops. Order: cold
first (the cache emptied, its warm-up timed with it), then rounds of off / warm /
in-memory, alternated, medians reported. Goal from issue 29: warm <= 1.3x in-memory.

    .venv/bin/python benchmarks/finetune_epoch.py [--files 120] [--rounds 2] [--batch 16]

Writes results/finetune_epoch.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from run_facts import cpu_flags, git_state, log  # noqa: E402

from edgekit.artifacts import now_iso  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402
from edgekit.timing import machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CLASSES = {"cat": ["chelsea.png"], "cup": ["coffee.png"], "outdoor": ["china.jpg", "rocket.jpg"], "other": ["camera.png", "flower.jpg", "grace_hopper.jpg"]}


def make_folder(folder: Path, files: int, seed: int = 0) -> list[tuple[str, int]]:
    from edgekit.data import SAMPLES_DIR

    rng = np.random.default_rng(seed)
    items = []
    per_class = files // len(CLASSES)
    for label, (name, sources) in enumerate(CLASSES.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ".png" if i % 2 == 0 else ".jpg"
            path = folder / name / f"{name}_{i:03d}{suffix}"
            items.append((str(path), label))
            (fw, fh), (fx, fy) = rng.uniform(0.6, 1.0, 2), rng.uniform(0.0, 1.0, 2)  # drawn for every file, made or kept
            long_side, gain = int(rng.integers(3000, 5001)), rng.uniform(0.85, 1.15)
            if path.exists():
                continue
            with Image.open(SAMPLES_DIR / sources[i % len(sources)]) as im:
                im = im.convert("RGB")
                w, h = im.size
                cw, ch = int(w * fw), int(h * fh)
                left, top = int(fx * (w - cw)), int(fy * (h - ch))
                crop = im.crop((left, top, left + cw, top + ch))
                scale = long_side / max(cw, ch)
                big = crop.resize((int(cw * scale), int(ch * scale)), Image.Resampling.BICUBIC)
                big = Image.eval(big, lambda v, g=gain: min(255, int(v * g)))
                tmp = path.with_suffix(".part" + suffix)
                big.save(tmp, format="PNG" if suffix == ".png" else "JPEG", **({} if suffix == ".png" else {"quality": 92}))
                os.replace(tmp, path)
    return items


def train_epoch(module, batches, epoch: int) -> tuple[float, int]:
    import torch

    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    module.train()
    begin, seen = time.perf_counter(), 0
    for batch in batches:
        x, y = batch[0], batch[1]
        if x is None:
            continue
        logits = module(x.contiguous(memory_format=torch.channels_last))
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return time.perf_counter() - begin, seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from edgekit.core import ClassSet
    from edgekit.data import cache
    from edgekit.data.batches import WarmJob, warm_image_cache
    from edgekit.models import load_model, with_new_head
    from edgekit.transforms.finetune import _loader, _TrainImages

    folder = Path(tempfile.gettempdir()) / "edgekit-bench-finetune-epoch-v2"
    log(f"making (or reusing) {args.files} large photos in {folder}")
    started = time.perf_counter()
    items = make_folder(folder, args.files)
    made_s = time.perf_counter() - started
    sizes = []
    for path, _ in items:
        with Image.open(path) as im:
            sizes.append(im.size)
    megapixels = [w * h / 1e6 for w, h in sizes]
    disk_mb = sum(os.path.getsize(p) for p, _ in items) / 1e6
    log(f"{len(items)} files, {min(megapixels):.1f}-{max(megapixels):.1f} MP, {disk_mb:.0f} MB ({made_s:.0f} s)")

    cache_dir = Path(tempfile.mkdtemp(prefix="edgekit-bench-cache-"))
    os.environ[cache.DIR_ENV] = str(cache_dir)
    os.environ.pop(cache.SIZE_ENV, None)

    loaded = load_model("efficientnet_lite0")
    prep = loaded.spec.preprocessing
    module = with_new_head(loaded, ClassSet(len(CLASSES), "class folders")).module
    module.to(memory_format=torch.channels_last)
    data = _TrainImages(items, prep, "standard")

    def image_epoch(epoch: int) -> tuple[float, int]:
        return train_epoch(module, _loader(data, args.batch, True, 0, epoch), epoch)

    # (d)'s tensors: each file's centre crop, decoded once, outside any timing
    from edgekit.data import ImageView, LabelledImage, preprocess

    x = torch.from_numpy(np.stack([preprocess(ImageView(LabelledImage(Path(p), (y,)), 0), prep) for p, y in items]))
    y = torch.tensor([label for _, label in items])
    memory = torch.utils.data.TensorDataset(x, y)

    def memory_epoch(epoch: int) -> tuple[float, int]:
        g = torch.Generator().manual_seed(epoch)
        loader = torch.utils.data.DataLoader(memory, batch_size=args.batch, shuffle=True, generator=g, drop_last=len(memory) > args.batch)
        return train_epoch(module, loader, epoch)

    log("one untimed in-memory epoch first: torch's own first-epoch setup stays out of every timing")
    memory_epoch(0)
    shutil.rmtree(cache_dir / "decoded", ignore_errors=True)
    cache.image_cache().reset_counters()
    cache._HASHES.clear()  # cold: nothing hashed or decoded yet in this process
    log("cold: warm-up + one epoch")
    begin = time.perf_counter()
    warm_stats = warm_image_cache([WarmJob(p) for p, _ in items], prep)
    warm_s = time.perf_counter() - begin
    cold_epoch_s, _ = image_epoch(0)
    log(f"  warm-up {warm_s:.1f} s ({warm_stats.summary()}), epoch {cold_epoch_s:.1f} s")

    times: dict[str, list[float]] = {"off": [], "warm": [], "memory": []}
    loads: dict[str, list[float]] = {"off": [], "warm": [], "memory": []}  # the machine is shared: how busy it was
    seen: dict[str, int] = {}
    for r in range(args.rounds):
        for arm in ("off", "warm", "memory"):
            if arm == "off":
                os.environ[cache.SIZE_ENV] = "off"
            else:
                os.environ.pop(cache.SIZE_ENV, None)
            seconds, n = memory_epoch(r + 1) if arm == "memory" else image_epoch(r + 1)
            times[arm].append(seconds)
            loads[arm].append(os.getloadavg()[0])
            seen[arm] = n
            log(f"  round {r + 1} {arm}: {seconds:.1f} s ({n} images, load average {loads[arm][-1]:.1f})")
    os.environ.pop(cache.SIZE_ENV, None)
    after = cache.image_cache().stats()
    medians = {arm: statistics.median(v) for arm, v in times.items()}
    document = {
        "benchmark": "finetune_epoch",
        "command": "python benchmarks/finetune_epoch.py " + " ".join(sys.argv[1:]),
        "created": now_iso(),
        "machine": machine_info(),
        "cpu_flags": cpu_flags(),
        "git": git_state(),
        "data": {
            "files": len(items), "classes": len(CLASSES), "png": sum(p.endswith(".png") for p, _ in items), "jpeg": sum(p.endswith(".jpg") for p, _ in items),
            "megapixels_min": min(megapixels), "megapixels_median": statistics.median(megapixels), "megapixels_max": max(megapixels),
            "bytes_on_disk_mb": disk_mb, "made_from": "the 7 bundled photos, random crops upscaled to 3000-5000 px (see the module docstring)",
        },
        "model": "efficientnet_lite0 (ImageNet weights, new 4-way head), every weight training",
        "batch": args.batch,
        "images_per_epoch": seen,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": min(2, max(0, (os.cpu_count() or 1) - 1)),
        "cold": {"warm_up_s": warm_s, "epoch_s": cold_epoch_s, "total_s": warm_s + cold_epoch_s, "warm_up": warm_stats.summary()},
        "epoch_s": times,
        "median_epoch_s": medians,
        "load_average_1min_after_each": loads,
        "ratios": {
            "off_over_memory": medians["off"] / medians["memory"],
            "warm_over_memory": medians["warm"] / medians["memory"],
            "cold_total_over_memory": (warm_s + cold_epoch_s) / medians["memory"],
            "off_over_warm": medians["off"] / medians["warm"],
        },
        "goal": "warm <= 1.3x in-memory",
        "goal_met": medians["warm"] / medians["memory"] <= 1.3,
        "cache_bytes_mb": after.bytes_on_disk / 1e6,
    }
    RESULTS.mkdir(exist_ok=True)
    write_json(document, RESULTS / "finetune_epoch.json")
    (RESULTS / "finetune_epoch.md").write_text(markdown(document))
    shutil.rmtree(cache_dir, ignore_errors=True)
    log(f"medians: {medians}; warm/memory {document['ratios']['warm_over_memory']:.2f}x")


def markdown(d: dict) -> str:
    m, r, data = d["median_epoch_s"], d["ratios"], d["data"]
    rows = [
        ("(a) image cache off: every file decoded every epoch", m["off"], d["epoch_s"]["off"]),
        ("(b) cache cold: warm-up + epoch", d["cold"]["total_s"], [d["cold"]["total_s"]]),
        ("(c) cache warm", m["warm"], d["epoch_s"]["warm"]),
        ("(d) in memory (TensorDataset)", m["memory"], d["epoch_s"]["memory"]),
    ]
    lines = [
        "# One fine-tuning epoch: image cache off, cold, warm, and in memory",
        "",
        f"`{d['command']}` on {d['machine'].get('cpu', '?')} ({d['created']}), torch threads {d['torch_threads']}, "
        f"loader workers {d['loader_workers']}, batch {d['batch']}, {d['model']}.",
        f"Data: {data['files']} files ({data['png']} PNG, {data['jpeg']} JPEG) in {data['classes']} classes, "
        f"{data['megapixels_min']:.1f}-{data['megapixels_max']:.1f} MP (median {data['megapixels_median']:.1f}), "
        f"{data['bytes_on_disk_mb']:.0f} MB: {data['made_from']}.",
        "",
        "| epoch | median s | each round (s) | x in-memory |",
        "|---|---:|---|---:|",
    ]
    for name, median, each in rows:
        lines.append(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in each)} | {median / m['memory']:.2f} |")
    lines += [
        "",
        f"Cold: warm-up {d['cold']['warm_up_s']:.1f} s ({d['cold']['warm_up']}), then the epoch {d['cold']['epoch_s']:.1f} s.",
        f"Warm / in-memory: **{r['warm_over_memory']:.2f}x** (goal <= 1.3x: {'met' if d['goal_met'] else 'NOT met'}); "
        f"off / warm: {r['off_over_warm']:.2f}x. Rounds alternate off / warm / in-memory. The 2-core machine was shared with other "
        f"jobs (1-minute load average after each epoch: {', '.join(f'{a} ' + '/'.join(f'{v:.1f}' for v in d['load_average_1min_after_each'][a]) for a in ('off', 'warm', 'memory'))}), "
        "so single epochs are noisy; the medians and ratios are the figures.",
        f"Entries on disk after the run: {d['cache_bytes_mb']:.0f} MB for {d['data']['files']} files.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
