"""Child artifacts: what every step shares.

A variant is a child artifact: its key hashes the parent's key and every setting that
decides its file (for INT8 also the calibration set's identity), and its manifest
appends a step with those settings and what was measured, so the lineage reads from the
export to the deployed file.
"""

from __future__ import annotations

from typing import Any

from ..core import ONNX_NAME, Artifact, UsageError, numeric_format
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
