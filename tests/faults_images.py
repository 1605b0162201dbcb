"""Hostile and huge images, made on purpose (issue 28): a few hundred bytes that would
decode to gigabytes, formats edgekit does not read, and a way to run edgekit under a
memory cap and read its peak resident memory. Shared by tests/test_faults_images.py and
benchmarks/reliability_images.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "edgekit" / "samples"
PHOTOS = ("camera.png", "chelsea.png", "china.jpg", "coffee.png", "flower.jpg", "grace_hopper.jpg", "rocket.jpg")
GB = 2**30


def thin_png(target: Path, long: int = 60_000) -> Path:
    """A 1 x ``long`` black PNG (317 bytes at 60,000): resized to a short side of 256 it is
    256 x 15.4 million pixels, about 11.8 GB."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, long)).save(target)
    return target


def photo_folder(root: Path, photos: Optional[tuple[str, ...]] = None) -> Path:
    """A flat folder of the bundled photos (unlabelled)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in photos or PHOTOS:
        shutil.copyfile(SAMPLES / name, root / name)
    return root


def animated_gif(target: Path, size: int = 96) -> Path:
    """A two-frame GIF (first frame red, second blue)."""
    from PIL import Image

    frames = [Image.new("RGB", (size, size), colour) for colour in ((200, 30, 30), (30, 30, 200))]
    frames[0].save(target, save_all=True, append_images=frames[1:], duration=100)
    return target


def unreadable_formats(folder: Path) -> list[Path]:
    """Files in formats edgekit does not read (bytes need not be real: they are never opened)."""
    made = []
    for name in ("holiday.heic", "scan.heif"):
        (folder / name).write_bytes(b"\0\0\0\x18ftypheic")
        made.append(folder / name)
    return made


def big_jpeg(target: Path, size: tuple[int, int] = (7000, 6000)) -> Path:
    """A flat-coloured JPEG of 42 megapixels in under 1 MB: over the decode budget in full,
    within it at libjpeg's reduced DCT scales."""
    from PIL import Image

    Image.new("RGB", size, (90, 140, 60)).save(target, quality=80)
    return target


def swap_bundled_image(bundle_dir: Path, replacement: Path) -> str:
    """Put ``replacement``'s bytes in place of the bundle's first image, with its hash in
    bundle.json updated (as a bundle made from such a file would be); returns its name."""
    meta_path = bundle_dir / "bundle.json"
    meta = json.loads(meta_path.read_text())
    name = meta["images"]["views"][0]["file"]
    shutil.copyfile(replacement, bundle_dir / name)
    for files in (meta.get("files") or {},):
        if name in files:
            files[name] = hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta, indent=2))
    return name


# A small parent process that runs the command under an address-space cap and prints the
# largest peak resident memory of any process below it (RUSAGE_CHILDREN: every waited-for
# descendant, workers included), so earlier children of the test process do not count.
_CAPPED = r"""
import json, resource, subprocess, sys
cap = int(sys.argv[1])
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
proc = subprocess.run(sys.argv[2:], capture_output=True, text=True, preexec_fn=limit)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak_rss": peak}))
"""


def run_capped(*args: str, cwd: Path, cap: int = 8 * GB, runner: bool = False, timeout: int = 600) -> tuple[subprocess.CompletedProcess, int]:
    """(the finished edgekit command, the peak resident bytes of it and its workers), run
    under an address-space cap of ``cap`` (a runaway decode fails there instead of taking
    the machine). ``runner``: the bundle's own device runner in ``cwd``, as on a device."""
    if runner:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        command = [sys.executable, "-m", "edgekit.device_runner", *args]
    else:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "edgekit.cli", *args]
    out = subprocess.run([sys.executable, "-c", _CAPPED, str(cap), *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0 or not out.stdout.strip():
        raise AssertionError(f"the capped run did not report: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return subprocess.CompletedProcess(command, result["rc"], result["stdout"], result["stderr"]), int(result["peak_rss"])
