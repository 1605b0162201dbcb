"""Child artifacts: what every step shares.

A variant is a child artifact: its key hashes the parent's key and every setting that
decides its file (for INT8 also the calibration set's identity), and its manifest
appends a step with those settings and what was measured, so the lineage reads from the
export to the deployed file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core import ONNX_NAME, Artifact, UsageError, numeric_format, quantize_step
from ..data import ImageSet


def child_variant(parent: Artifact, step: str) -> str:
    """'int8' from an FP32 parent, 'pruned+int8' from a pruned one."""
    base = parent.manifest.get("variant", "fp32")
    return step if base == "fp32" else f"{base}+{step}"


def child_manifest(parent: Artifact, variant: str, step: dict[str, Any]) -> dict[str, Any]:
    m = parent.manifest
    return {
        "model": m["model"],
        "preprocessing": m["preprocessing"],
        "input": m["input"],
        "output": m.get("output"),
        "variant": variant,
        "parent": {"key": parent.key, "path": str(parent.path)},
        "files": {"onnx": ONNX_NAME},
        "steps": [*m.get("steps", []), {**step, "parent": parent.key}],
        "tools": m.get("tools", {}),
        "parity": m.get("parity"),
    }


def require_fp32(parent: Artifact) -> None:
    """INT8, FP16, pruning... start from a float artifact (FP32, possibly pruned)."""
    if numeric_format(parent.manifest) != "fp32":
        raise UsageError(f"{parent.path} is already {parent.manifest['variant']}; start from an FP32 artifact")


def calibration_identity(images: ImageSet, preprocessing: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": images.description,
        "count": len(images),
        "files_hash": images.identity,
        "labelled": images.labelled,
        "preprocessing": preprocessing,
    }


def calibration_views(images: ImageSet) -> list[list[Any]]:
    """[absolute path, view] per calibration view, in order: what the manifest records so
    that a runtime quantizing in its own scheme (LiteRT, ExecuTorch) calibrates on exactly
    these images (recorded_calibration). Not part of the key: the identity is."""
    return [[str(v.image.path.resolve()), v.view] for v in images.views]


def recorded_calibration(artifact: Artifact) -> ImageSet:
    """The calibration images an INT8 artifact was made with, from its manifest; a one-line
    UsageError where it records none (made before they were recorded: rebuild it) or where
    they are no longer where they were."""
    from ..data.images import ImageView, LabelledImage

    step = quantize_step(artifact.manifest)
    recorded = step.get("calibration_views")
    identity = step.get("calibration") or {}
    if not isinstance(recorded, list) or not recorded:
        raise UsageError(f"{artifact.path} does not record its calibration images (made by an older edgekit); "
                         "rebuild it (remove the folder and export again) to quantize in another runtime's scheme on the same images")
    views = tuple(ImageView(LabelledImage(Path(str(path)), None), int(view)) for path, view in recorded)
    images = ImageSet(views, str(identity.get("description", "calibration images")))
    missing = next((v.image.path for v in views if not v.image.path.is_file()), None)
    if missing is not None:
        raise UsageError(f"{artifact.path} was calibrated on {missing}, which is no longer there; the target's INT8 is calibrated on the same images")
    if images.identity != identity.get("files_hash"):
        raise UsageError(f"{artifact.path}: its recorded calibration views do not match its calibration identity; rebuild it")
    return images
