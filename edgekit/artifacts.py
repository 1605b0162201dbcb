"""The artifact store under exported/: content-addressed folders, written atomically.

Every producer (export, ONNX import, quantization...) hands ``build_artifact_folder`` a
key and a function that fills a staging folder and returns the manifest; the folder is
renamed into place only when complete, and an intact folder with the same key is reused.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .core import MANIFEST_NAME, Artifact, InvalidModelFileError, sha256_file, write_manifest

ARTIFACT_FORMAT = "edgekit-artifact/1"


def artifact_dir_name(model_name: str) -> str:
    return model_name.replace("/", "--")


def artifact_folder(root: Path, model_name: str, key: str) -> Path:
    return Path(root) / artifact_dir_name(model_name) / key


def find_existing(root: Path, model_name: str, key: str) -> Optional[Artifact]:
    """A finished, intact artifact for this key, or None."""
    folder = artifact_folder(root, model_name, key)
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        artifact = Artifact.load(folder)
    except InvalidModelFileError:
        return None
    return artifact if not artifact.verify_files() else None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build_artifact_folder(
    root: Path,
    model_name: str,
    key: str,
    populate: Callable[[Path], dict[str, Any]],
) -> tuple[Artifact, bool]:
    """Reuse the intact artifact for ``key`` or build it. Returns (artifact, reused).

    ``populate(staging)`` writes the model files into ``staging`` and returns the
    manifest; this function adds format, key, creation time and the files' SHA-256.
    """
    existing = find_existing(root, model_name, key)
    if existing is not None:
        return existing, True
    final = artifact_folder(root, model_name, key)
    if final.exists():  # tampered or half-deleted: rebuild from scratch
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=final.parent))
    try:
        manifest = populate(staging)
        files = manifest.get("files", {})
        manifest = {
            "format": ARTIFACT_FORMAT,
            "key": key,
            "created": now_iso(),
            **manifest,
            "sha256": {name: sha256_file(staging / name) for name in files.values()},
        }
        write_manifest(staging, manifest)
        staging.chmod(0o755)  # mkdtemp makes it private
        try:
            os.rename(staging, final)
        except OSError:  # another process finished the same artifact first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Artifact.load(final), False
