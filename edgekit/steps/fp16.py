"""The fp16 step: weights and compute in FP16, inputs and outputs kept FP32 (callers need
no change). For GPU backends: ONNX Runtime's CPU provider runs it slower than FP32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import build_artifact_folder
from ..core import ONNX_NAME, Artifact, stable_hash
from ..options import Settings
from ..progress import Progress
from .lineage import child_manifest, child_variant, require_fp32


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    return fp16_artifact(parent, root)


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
