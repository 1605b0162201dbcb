"""Faults for writes (issue 28): what may already sit at a path edgekit writes to (device
nodes, FIFOs, symbolic links, links planted in shared folders), bundles a device wrote
into, ONNX files with their weights beside them, artifacts on read-only storage. Shared by
tests/test_faults_writes.py and benchmarks/reliability_writes.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Iterator, Optional

import faults

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- what sits at the path


def char_device(path: Path, kind: str = "full") -> Path:
    """A real character device node like /dev/full (every write: ENOSPC) or /dev/null, made
    where a test can lose it (never the real /dev one). Needs root (mknod)."""
    major, minor = {"null": (1, 3), "full": (1, 7)}[kind]
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    return path


def is_char_device(path: Path) -> bool:
    return stat.S_ISCHR(os.lstat(path).st_mode)


@contextlib.contextmanager
def fifo_reader(path: Path, timeout: float = 120) -> Iterator[list[bytes]]:
    """A FIFO at ``path`` with a reader waiting on it (as `cat fifo` in another shell): the
    list it yields holds what was read once the block ends."""
    os.mkfifo(path)
    got: list[bytes] = []

    def read() -> None:
        with open(path, "rb") as f:  # blocks until a writer opens it
            got.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield got
    finally:
        if reader.is_alive():  # nobody wrote: unblock the reader
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
        reader.join(timeout)


def symlink(link: Path, target: Path) -> Path:
    """``link`` -> ``target`` (the target may not exist yet: a dangling link)."""
    os.symlink(target, link)
    return link


def planted_link(shared: Path, name: str, target: Path, uid: int = 4242) -> Path:
    """A symbolic link another user made in a shared sticky folder (like /tmp), pointing at
    a file of the victim's: what a writer running as root must not follow. Needs root."""
    shared.mkdir(parents=True, exist_ok=True)
    shared.chmod(0o1777)
    link = shared / name
    os.symlink(target, link)
    os.lchown(link, uid, uid)
    return link


def results_document(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- bundles


def device_wrote(bundle: Path) -> dict[str, str]:
    """What a device leaves in a bundle folder besides edgekit's files: its results, a log,
    notes in a folder of its own. Returns {relative path: content}."""
    made = {
        "results.json": json.dumps({"format": "edgekit-results", "from": "the device"}) + "\n",
        "device-run.log": "ran on the jetson\n",
        "notes/todo.txt": "compare with last week\n",
    }
    for name, text in made.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_text(text)
    return made


def flat_photos(folder: Path, names: list[str]) -> Path:
    """A flat folder of some of the bundled photos."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(faults.SAMPLES / name, folder / name)
    return folder


def leftovers_beside(bundle: Path) -> list[Path]:
    """Old bundles kept aside (``<name>.previous-bundle-*``) and staging folders beside it."""
    return sorted(p for p in bundle.parent.iterdir() if p.name.startswith(f"{bundle.name}.previous-bundle") or p.name.startswith(f".tmp-{bundle.name}"))


# --------------------------------------------------------------------------- ONNX with external data


def save_with_external_data(source_onnx: Path, target: Path, location: Optional[str] = None) -> tuple[Path, Path]:
    """``source_onnx`` saved again as ``onnx.save(model, target, save_as_external_data=True)``
    does: the graph in ``target``, the weights in ``location`` beside it. Returns (onnx, data)."""
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    location = location or f"{target.stem}.bin"
    model = onnx.load(str(source_onnx))
    onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    return target, target.parent / location


def point_external_data(onnx_path: Path, location: str) -> None:
    """Rewrite every external-data location in ``onnx_path`` (a hostile file: '../secret', '/etc/passwd')."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    Path(onnx_path).write_bytes(model.SerializeToString())


# --------------------------------------------------------------------------- read-only artifacts


CPU_FORM_GLOBS = ("model.ort-cpu*", "model.ov-cpu*")


def without_cpu_forms(artifact_dir: Path, target: Path) -> Path:
    """A copy of an INT8 artifact whose CPU forms (derived caches) are gone, as a copy made
    by hand or by an older edgekit leaves it; the sealed files are intact."""
    shutil.copytree(artifact_dir, target, ignore=shutil.ignore_patterns(*CPU_FORM_GLOBS, "openvino", ".tmp-*"))
    return target


@contextlib.contextmanager
def read_only_copy(artifact_dir: Path, mount: Path, keep_cpu_forms: bool = False) -> Iterator[Path]:
    """The artifact on a real read-only filesystem (a tmpfs remounted ro: root ignores
    permission bits). Raises OSError where mounting is not permitted."""
    with faults.small_mount(mount, "64m") as m:
        copy = m / artifact_dir.name
        if keep_cpu_forms:
            shutil.copytree(artifact_dir, copy, ignore=shutil.ignore_patterns("openvino", ".tmp-*"))
        else:
            without_cpu_forms(artifact_dir, copy)
        import subprocess

        proc = subprocess.run(["mount", "-o", "remount,ro", str(m)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"cannot remount read-only: {proc.stderr.strip()}")
        yield copy
