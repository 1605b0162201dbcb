"""Real faults, made on purpose: damaged images, swapped models, full and read-only disks,
killed writers, escaping bundles. Shared by tests/test_faults.py and
benchmarks/reliability.py, which tabulates every case."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "edgekit" / "samples"


# --------------------------------------------------------------------------- images


def labelled_class_tree(root: Path, photos: Optional[list[str]] = None) -> Path:
    """The bundled photos as an ImageNet class-folder tree (synset of each primary label)."""
    from edgekit.data import bundled_images, imagenet_classes

    wnids = imagenet_classes()[0]
    for image in bundled_images():
        if photos is not None and image.path.name not in photos:
            continue
        folder = root / wnids[image.labels[0]]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.path, folder / image.path.name)
    return root


def truncated_jpeg(source: Path, target: Path, keep: float = 0.5) -> Path:
    """A real JPEG cut off part way, as an interrupted download leaves it."""
    data = Path(source).read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def sixteen_bit_png(target: Path, size: int = 64) -> Path:
    """A 16-bit greyscale PNG with a left-to-right ramp over the whole 0..65535 range."""
    import numpy as np
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, size, dtype=np.uint16), (size, 1))
    Image.fromarray(ramp).save(target)
    return target


def decompression_bomb(target: Path, side: int = 40_000) -> Path:
    """A tiny PNG that claims side x side pixels, above Pillow's limit (2 x 89.5 million)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    target.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return target


# --------------------------------------------------------------------------- artifacts


def copy_artifact(artifact_dir: Path, target: Path) -> Path:
    shutil.copytree(artifact_dir, target)
    return target


def swap_model_and_strip_hashes(artifact_dir: Path, other_onnx: Path) -> None:
    """Replace model.onnx with another network and delete the hash list that would betray it."""
    manifest_path = artifact_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("sha256", None)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    shutil.copyfile(other_onnx, artifact_dir / "model.onnx")


# --------------------------------------------------------------------------- disks


@contextlib.contextmanager
def small_mount(path: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs at ``path``: tiny (fills up) or read-only. Root ignores permission bits,
    so a mount is the only honest read-only or full target. Raises OSError when mounting
    is not permitted here (callers skip with the reason)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def mount_problem() -> Optional[str]:
    """Why small_mount cannot work here, or None."""
    if shutil.which("mount") is None:
        return "no mount command"
    probe = Path(f"/tmp/edgekit-mount-probe-{os.getpid()}")
    try:
        with small_mount(probe, "64k"):
            return None
    except OSError as e:
        return str(e)
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def fill(mount: Path) -> Path:
    """Fill a small mount to the last byte."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


# --------------------------------------------------------------------------- processes


def edgekit_process(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], timeout: float = 300, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def staging_folders(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob(".tmp-*") if p.is_dir())


def kill_during_staging(proc: subprocess.Popen, root: Path, sig: int = signal.SIGKILL, timeout: float = 300) -> list[Path]:
    """Send ``sig`` once the process has a staging folder under ``root``; returns the
    staging folders that existed at that moment."""
    seen = wait_for(lambda: bool(staging_folders(root)) or proc.poll() is not None, timeout)
    folders = staging_folders(root)
    if not seen or not folders:
        proc.kill()
        raise AssertionError(f"the process never staged anything under {root} (exit {proc.poll()})")
    time.sleep(0.2)  # let it write into the folder
    proc.send_signal(sig)
    proc.wait(60)
    return folders


# --------------------------------------------------------------------------- bundles


def edit_bundle(bundle_dir: Path, change: Callable[[dict], None]) -> None:
    path = bundle_dir / "bundle.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta, indent=2))


def run_bundle_runner(bundle_dir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The bundle's own runner with its own copy of edgekit, as on a device."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "edgekit.device_runner", *args], cwd=bundle_dir, env=env, capture_output=True, text=True, timeout=timeout)
