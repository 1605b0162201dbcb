"""The artifact store under exported/: content-addressed folders, written atomically.

Every producer (export, ONNX import, quantization...) hands ``build_artifact_folder`` a
key and a function that fills a staging folder and returns the manifest; the folder is
renamed into place only when complete, and an intact folder with the same key is reused.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from .core import MANIFEST_NAME, Artifact, EdgekitError, InvalidModelFileError, manifest_seal, sha256_file
from .files import atomic_write_text, make_staging_dir, move_aside, release_staging_dir

ARTIFACT_FORMAT = "edgekit-artifact/2"  # 2: sealed manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Seal and write the manifest atomically; returns it as written."""
    manifest = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "seal"}, default=str))
    manifest["seal"] = manifest_seal(manifest)
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


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
    return artifact if not artifact.problems() else None


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
    manifest; this function adds format, key, creation time, the files' SHA-256 and the
    seal. A folder at the key that is not intact is moved aside (with whatever a user put
    in it), never deleted. A full or read-only disk is one error line naming the folder.
    """
    existing = find_existing(root, model_name, key)
    if existing is not None:
        return existing, True
    final = artifact_folder(root, model_name, key)
    try:
        if final.exists():
            problem = next(iter(_problems(final)), "incomplete")
            aside = move_aside(final, "damaged")
            warnings.warn(f"{final} was not intact ({problem}); moved it to {aside} and building it again", stacklevel=2)
        staging = make_staging_dir(final.parent, key)
    except OSError as e:
        raise EdgekitError(f"cannot write artifacts under {final.parent}: {e.strerror or e}") from None
    try:
        manifest = populate(staging)
        release_staging_dir(staging)
        manifest = {
            "format": ARTIFACT_FORMAT,
            "key": key,
            "created": now_iso(),
            **manifest,
            "sha256": {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()},
        }
        write_manifest(staging, manifest)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process finished the same artifact first
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise EdgekitError(f"cannot write the artifact under {final.parent}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Artifact.load(final), False


def _problems(folder: Path) -> list[str]:
    try:
        return Artifact.load(folder).problems()
    except InvalidModelFileError as e:
        return [str(e)]
