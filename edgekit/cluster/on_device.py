"""What a timing node runs: unpack a bundle, check its hash, run its torch-free runner.

This module is shipped to the nodes by value (cloudpickle), so a Jetson needs Ray, numpy,
Pillow and its runtime, not edgekit or PyTorch: the bundle carries the runner and the
edgekit code it imports. Only the standard library (and Ray, inside functions) here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

RUNNER_PARTIAL_EXIT = 3  # edgekit.device_runner.PARTIAL_EXIT: some backends failed, their rows say why
IMAGES_DIR = "images"  # a bundle's evaluation images (edgekit.bundle), shipped apart from it
IMAGE_CACHE = "edgekit-images"  # under the node's temporary folder: the images it received, by hash
REPORT_INTERVAL_S = 0.5
STARTED = "started"  # the first report of every attempt (the driver counts retries by it)


def node_identity() -> dict[str, Any]:
    import ray

    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    ip = ray.util.get_node_ip_address()
    return {"ray_node": node_id, "name": f"{platform.node()} ({ip}, node {node_id[:6]})", "hostname": platform.node(), "ip": ip,
            "machine": platform.machine(), "python": platform.python_version()}


def release_thread_limit() -> None:
    """Ray sets OMP_NUM_THREADS to a task's CPU count (1 here) where the node's environment
    did not set it; PyTorch and OpenMP runtimes would then time on one thread where a local
    run uses every core. edgekit's own --threads ([bench] threads) says how many to use."""
    import math

    import ray

    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if os.environ.get("OMP_NUM_THREADS") == str(max(math.floor(assigned or 1), 1)):
        del os.environ["OMP_NUM_THREADS"]


class Reporter:
    """Progress to the driver's board actor, at most one message per REPORT_INTERVAL_S
    (a stage change always goes)."""

    def __init__(self, board: Any, unit: str, node: dict[str, Any]):
        self.board, self.unit, self.node = board, unit, node
        self.last_stage: Optional[str] = None
        self.last_sent = 0.0

    def __call__(self, stage: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
        now = time.monotonic()
        if stage == self.last_stage and now - self.last_sent < REPORT_INTERVAL_S and not (total and done == total):
            return
        self.last_stage, self.last_sent = stage, now
        if self.board is not None:
            self.board.report.remote(self.unit, self.node["ray_node"], self.node["name"], stage, done, total)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_archive(data: bytes, folder: Path) -> None:
    """Unpack a tar (a bundle, an artifact), refusing members that would land outside ``folder``."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        root = folder.resolve()
        for member in tar.getmembers():
            target = (folder / member.name).resolve()
            if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
                raise RuntimeError(f"bundle archive member {member.name!r} is not a plain file inside the bundle")
        tar.extractall(folder)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The runner goes when the Ray worker does (a killed node leaves no timing behind)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def read_payload(what: str, sha256: str, shared_path: Optional[str], payload: Optional[bytes]) -> bytes:
    """A shipped archive's bytes, from Ray's object store or the shared folder, checked
    against the hash its builder recorded."""
    if payload is None:
        if not shared_path:
            raise RuntimeError(f"{what} came with neither its bytes nor a shared path")
        try:
            payload = Path(shared_path).read_bytes()
        except OSError as e:
            raise RuntimeError(f"cannot read {what} from the shared folder: {shared_path}: {e.strerror or e}") from None
    digest = sha256_bytes(payload)
    if digest != sha256:
        raise RuntimeError(f"{what} arrived damaged: SHA-256 {digest[:12]}, its builder wrote {sha256[:12]}")
    return payload


def node_images(meta: dict[str, Any], fetch: Callable[[], Optional[bytes]], cache: Optional[Path] = None) -> Optional[bytes]:
    """The tar of a bundle's images: this node's copy, kept from an earlier cell under the
    images' hash, else received (``fetch``: the bytes from the object store, or None when
    they went through the shared folder) and kept; checked against the builder's hash
    either way. None for a bundle built with its images inside."""
    digest = meta.get("images_sha256")
    if not digest:
        return None
    root = cache or Path(tempfile.gettempdir()) / IMAGE_CACHE
    kept = root / f"{digest}.tar"
    if kept.is_file():
        data = kept.read_bytes()
        if sha256_bytes(data) == digest:
            return data
    data = read_payload(f"images {digest[:12]}", digest, meta.get("images_shared_path"), None if meta.get("images_shared_path") else fetch())
    try:  # kept whole or not at all: written aside, then renamed
        root.mkdir(parents=True, exist_ok=True)
        temporary = root / f".{kept.name}.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, kept)
    except OSError:
        pass  # a full or read-only disk: the next cell receives them again
    return data


def time_bundle(meta: dict[str, Any], payload: Optional[bytes], images: Sequence[Any], backends: Sequence[str], runner_args: Sequence[str],
                board: Any, unit: str) -> dict[str, Any]:
    """Run the bundle's runner for ``backends`` here; returns its results document and
    where it ran. ``images``: [the reference to the bundle's images], in a list so that Ray
    leaves it unfetched until this node needs it (node_images)."""
    node = node_identity()
    release_thread_limit()
    report = Reporter(board, unit, node)
    report(STARTED)
    report("receiving the bundle")
    started = time.monotonic()
    data = read_payload(f"bundle {meta['bundle_id']}", meta["sha256"], meta.get("shared_path"), payload)

    def fetch() -> Optional[bytes]:
        import ray

        report("receiving the images (once on this node)")
        return ray.get(images[0]) if images and images[0] is not None else None

    images_data = node_images(meta, fetch)
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        extract_archive(data, folder)
        del data
        if images_data is not None:
            (folder / IMAGES_DIR).mkdir()
            extract_archive(images_data, folder / IMAGES_DIR)
            del images_data
        out = Path(tmp) / "results.json"
        command = [sys.executable, "-m", "edgekit.device_runner", "bench", *runner_args, *(a for b in backends for a in ("--backend", b)), "--json", str(out)]
        report("starting the runner")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(folder)}
        preexec: Optional[Callable[[], None]] = _die_with_parent if sys.platform.startswith("linux") else None
        proc = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        assert proc.stderr is not None
        error, tail = None, ""
        for line in proc.stderr:
            line = line.strip()
            if line.startswith("error: "):
                error = line[len("error: "):]
            elif line:
                tail = line
                report(line)
        code = proc.wait()
        if code not in (0, RUNNER_PARTIAL_EXIT) or not out.exists():
            raise RuntimeError(f"the bundle runner failed on {node['name']} (exit {code}): {error or tail or 'no message'}")
        document = json.loads(out.read_text())
    return {"document": document, "node": node, "seconds": time.monotonic() - started}
