"""Derived artifacts: an FP32 artifact in, an INT8 (QDQ) or FP16 artifact out.

A variant is a child artifact: its key hashes the parent's key and every setting that
decides its file (for INT8 also the calibration set's identity), and its manifest
appends a step with those settings and what was measured, so the lineage reads from the
export to the deployed file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .artifacts import build_artifact_folder
from .core import ONNX_NAME, Artifact, UsageError, numeric_format, stable_hash
from .data import ImageSet, load_all
from .transforms.quantize import Progress, QuantizeOptions, quantize_onnx

# Bump when the quantizer's output changes for the same settings, so cached artifacts
# built by older code are not reused.
QUANTIZER_VERSION = 3
ENTROPY_SEARCH = "tensorrt-kl"  # entropy thresholds: edgekit's search (was ONNX Runtime's)



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


def quantize_artifact(
    parent: Artifact,
    calibration: ImageSet,
    options: QuantizeOptions = QuantizeOptions(),
    root: Path = Path("exported"),
    progress: Progress = lambda stage, done, total: None,
) -> tuple[Artifact, bool]:
    """The INT8 QDQ child of an FP32 artifact (reused when already built)."""
    require_fp32(parent)
    identity = calibration_identity(calibration, parent.manifest["preprocessing"])
    settings = dataclasses.asdict(options)
    version = QUANTIZER_VERSION if options.method != "entropy" else f"{QUANTIZER_VERSION}-{ENTROPY_SEARCH}"
    key = stable_hash({"parent": parent.key, "int8": settings, "calibration": identity, "quantizer": version})

    def populate(staging: Path) -> dict[str, Any]:
        progress(f"loading {len(calibration)} calibration images", None, None)
        x, labels = load_all(calibration, parent.preprocessing)
        report = quantize_onnx(parent.onnx_path, staging / ONNX_NAME, x, labels, options, progress)
        manifest = child_manifest(
            parent,
            child_variant(parent, "int8"),
            {
                "step": "quantize",
                "format": "QDQ, INT8 weights per-channel symmetric, INT8 activations symmetric (zero point 0)",
                "settings": settings,
                "calibration": identity,
                "fallback": [f.node for f in report.fallback],
                "fidelity_on_calibration": dataclasses.asdict(report.final),
                "budget_met": report.budget_met,
            },
        )
        manifest["quantization"] = report.to_dict()
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)


def fp16_artifact(parent: Artifact, root: Path = Path("exported")) -> tuple[Artifact, bool]:
    """Weights and compute in FP16, inputs and outputs kept FP32 (callers need no change)."""
    require_fp32(parent)
    key = stable_hash({"parent": parent.key, "fp16": {"keep_io_types": True}})

    def populate(staging: Path) -> dict[str, Any]:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(parent.onnx_path)), keep_io_types=True)
        onnx.save(model, str(staging / ONNX_NAME))
        return child_manifest(parent, child_variant(parent, "fp16"), {"step": "fp16", "keep_io_types": True, "converter": "onnxruntime.transformers.float16"})

    return build_artifact_folder(root, parent.model_name, key, populate)
