"""What a node with the full edgekit (PyTorch too) runs: build a cell's artifact and what
its timing nodes need, or time an artifact with the same bench session as a local run.

An artifact or bundle travels as one uncompressed tar (ONNX weights do not compress)
through Ray's object store, or through the shared folder when the recipe names one; its
SHA-256 goes with it and the receiving node checks it before use (on_device.read_payload).
A bundle's evaluation images travel apart from it, as a tar of their own that a timing
node fetches once and keeps (on_device.node_images): every cell of a recipe bundles the
same images, and a node receives them once, not once per cell.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core import EdgekitError
from ..files import work_folder
from .on_device import IMAGES_DIR, STARTED, Reporter, extract_archive, node_identity, read_payload, release_thread_limit, sha256_bytes

PACKAGE_DIR = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """The SHA-256 of edgekit's own code: a build node must run the same edgekit as the
    driver, or artifacts and bundles would not be what the recipe asked for."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _check_code(expected: str, node: dict[str, Any]) -> None:
    if code_digest() != expected:
        raise EdgekitError(
            f"{node['name']} runs another edgekit (code {code_digest()} here, {expected} where `edgekit run` started): "
            "install the same edgekit on every build node"
        )


def _begin(expected_code: str, board: Any, unit: str) -> tuple[dict[str, Any], Reporter]:
    """What every task on a full-edgekit node does first: say where it runs, refuse another
    edgekit, lift Ray's one-thread limit, tell the driver it started."""
    node = node_identity()
    _check_code(expected_code, node)
    release_thread_limit()
    report = Reporter(board, unit, node)
    report(STARTED)
    return node, report


def _tar(folder: Path, leave_out: Sequence[str] = ()) -> bytes:
    """``folder`` as an uncompressed tar, without the top-level entries named in ``leave_out``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if "__pycache__" not in path.parts and relative.parts[0] not in leave_out:
                tar.add(path, arcname=relative.as_posix(), recursive=False)
    return buffer.getvalue()


def _to_shared(data: bytes, digest: str, shared: Path, name: str) -> Path:
    """Into the shared folder under its hash (an identical one there is kept), written
    aside and renamed so no node ever reads half a bundle."""
    target = shared / f"{name}-{digest[:16]}.tar"
    if target.exists() and target.stat().st_size == len(data):
        return target
    try:
        shared.mkdir(parents=True, exist_ok=True)
        temporary = shared / f".{target.name}.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as e:
        raise EdgekitError(f"cannot write the bundle into the shared folder {shared}: {e.strerror or e}") from None
    return target


def _payload(data: bytes, shared: Optional[str], name: str, meta: dict[str, Any], prefix: str) -> Optional[bytes]:
    """``data`` for the object store, or None when it went to the shared folder (its path
    in ``meta``); its hash goes in ``meta`` either way."""
    digest = sha256_bytes(data)
    meta[f"{prefix}sha256"], meta[f"{prefix}bytes"] = digest, len(data)
    if shared:
        meta[f"{prefix}shared_path"] = str(_to_shared(data, digest, Path(shared), name))
        return None
    return data


def build_cell(cell: Any, bundle_for: Sequence[str], ship_artifact: bool, shared: Optional[str], expected_code: str, board: Any, unit: str):
    """Build ``cell``'s artifact here; then, as its timed units need, the artifact itself
    (for nodes with the full edgekit) and a bundle for ``bundle_for`` with the evaluation
    images and the PyTorch reference logits (for nodes without). Returns (what the driver
    needs to know, the artifact's tar or None, the bundle's tar without its images or None,
    the tar of the bundle's images/ folder or None)."""
    from ..bundle import bundle_name, make_bundle
    from ..plan import budget_met, budget_note, build, runnable_backends
    from ..session import BenchSettings, bench_request, evaluation_set

    bench = cell.settings.bind(BenchSettings)
    node, report = _begin(expected_code, board, unit)
    started = time.monotonic()
    artifact, reused = build(cell, lambda stage, done, total: report(f"build: {stage}", done, total))
    meta: dict[str, Any] = {"artifact_key": artifact.key, "artifact_path": str(artifact.path), "reused": reused, "builder": node, "note": budget_note(cell, artifact),
                            "budget_met": budget_met(artifact)}
    artifact_payload = bundle_payload = images_payload = None
    if ship_artifact:
        artifact.verified()
        artifact_payload = _payload(_tar(artifact.path), shared, f"artifact-{artifact.key}", meta, "artifact_")
    if bundle_for:
        backends, _ = runnable_backends(artifact, cell.backends)
        images = evaluation_set(artifact, bench_request(cell.settings, backends).images)
        with work_folder("cluster-bundle") as tmp:
            folder = make_bundle(
                artifact, bundle_for, images, Path(tmp) / bundle_name(artifact, bundle_for),
                device=bench.device or "cpu", batch_sizes=bench.batch_sizes,
                progress=lambda stage, done, total: report(f"bundle: {stage}", done, total),
            )
            meta["bundle_id"] = json.loads((folder / "bundle.json").read_text())["id"]
            bundle_payload = _payload(_tar(folder, leave_out=(IMAGES_DIR,)), shared, f"bundle-{meta['bundle_id']}", meta, "")
            if (folder / IMAGES_DIR).is_dir():  # the same images for every cell: named by their hash, fetched once per node
                images = _tar(folder / IMAGES_DIR)
                images_payload = _payload(images, shared, f"images-{sha256_bytes(images)[:16]}", meta, "images_")
    meta["seconds"] = round(time.monotonic() - started, 2)
    return meta, artifact_payload, bundle_payload, images_payload


def _received_artifact(meta: dict[str, Any], payload: Optional[bytes], folder: Path):
    """The built artifact: where its builder left it when this node sees that folder
    intact (the same machine, a shared artifact root), else unpacked from what arrived."""
    from ..core import Artifact, EdgekitError as _Error

    here = Path(meta["artifact_path"])
    if (here / "manifest.json").is_file():
        try:
            artifact = Artifact.load(here)
            if artifact.key == meta["artifact_key"]:
                return artifact.verified()
        except _Error:
            pass  # changed or damaged here: use the copy that came with the task
    data = read_payload(f"artifact {meta['artifact_key']}", meta["artifact_sha256"], meta.get("artifact_shared_path"), payload)
    target = folder / here.name
    target.mkdir()
    extract_archive(data, target)
    artifact = Artifact.load(target).verified()
    if artifact.key != meta["artifact_key"]:
        raise EdgekitError(f"the artifact that arrived is {artifact.key}, not {meta['artifact_key']}")
    return artifact


def time_artifact(meta: dict[str, Any], payload: Optional[bytes], cell: Any, backends: Sequence[str], expected_code: str, board: Any, unit: str) -> dict[str, Any]:
    """Time ``backends`` of ``cell`` here on its built artifact: the same bench session as
    `edgekit run` on one machine (the PyTorch original runs here as the baseline)."""
    import dataclasses

    from ..launch.local import LocalLauncher
    from ..plan import bench_artifact
    from ..results.document import session_document

    node, report = _begin(expected_code, board, unit)
    started = time.monotonic()
    with work_folder("cluster-artifact") as tmp:
        artifact = _received_artifact(meta, payload, Path(tmp))
        only = dataclasses.replace(cell, backends=tuple(backends))
        run, _ = bench_artifact(only, artifact, LocalLauncher(), lambda backend, stage, done, total: report(f"{backend}: {stage}", done, total))
    return {"document": session_document(run), "node": node, "seconds": time.monotonic() - started}
