"""The int8 step: the float ONNX in, one QDQ ONNX out (signed symmetric INT8 activations,
per-channel symmetric weights) that TensorRT, OpenVINO and ONNX Runtime all read.

Options: the [int8] group (calibration set, range method, budget, fallback, bias
correction); see edgekit.transforms.quantize for the algorithm.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..artifacts import build_artifact_folder
from ..core import ONNX_NAME, Artifact, stable_hash
from ..data import ImageRequest, ImageSet, default_calibration, load_all
from ..options import Settings
from ..transforms.quantize import Budget, Progress, QuantizeOptions, quantize_onnx
from .lineage import calibration_identity, child_manifest, child_variant, require_fp32

# Bump when the quantizer's output changes for the same settings, so cached artifacts
# built by older code are not reused.
QUANTIZER_VERSION = 3
ENTROPY_SEARCH = "tensorrt-kl"  # entropy thresholds: edgekit's search (was ONNX Runtime's)


def quantize_options(settings: Settings) -> QuantizeOptions:
    if all(settings[k] is None for k in ("max_drop", "min_agreement", "max_kl")):
        budget = Budget()  # agreement >= 98% and KL <= 0.004 vs FP32
    else:
        budget = Budget(max_top1_drop=settings["max_drop"], min_agreement=settings["min_agreement"], max_kl=settings["max_kl"])
    return QuantizeOptions(
        method=settings["calib_method"],
        percentile=float(settings["percentile"]),
        bias_correction=settings["bias_correction"],
        fallback=settings["max_fallback"] > 0,
        max_fallback_nodes=settings["max_fallback"],
        budget=budget,
    )


def calibration_images(settings: Settings) -> ImageRequest:
    return default_calibration(settings["calib"], settings["calib_labels"], settings["calib_limit"], settings["seed"])


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    return quantize_artifact(parent, calibration_images(settings).resolve(), quantize_options(settings), root, progress)


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
