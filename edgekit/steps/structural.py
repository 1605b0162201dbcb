"""What the structural steps (pruned, dw-separable) share: rebuild the parent's exact
module, transform it (the step's own job), recover accuracy by distillation from the
untouched original, save the weights and export the result as a child artifact.

The child's manifest keeps the parent's model section, so the PyTorch baseline that
`bench` compares against is the original network: the drop it reports is what the
transformation cost. The transformed module's weights are saved beside the ONNX (loadable
with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core import ONNX_NAME, Artifact
from ..data import ImageRequest, ImageSettings, bundled_images, make_image_set
from ..onnx_export import ExportOptions, check_onnx_file, measure_parity, torch_export_module
from ..models import LoadedModel, measure_complexity
from ..options import Settings, declared
from ..progress import Progress
from .lineage import child_manifest

STRUCTURAL_VERSION = 3  # bump when the output changes for the same settings (2: same-padding kept, BatchNorm trains; 3: rank > 1 as repeat + depthwise)


@dataclasses.dataclass(frozen=True)
class DistillPolicy:
    steps: int = declared("distill_steps").field()  # 0: no distillation after the change


def distill_options(settings: Settings):
    """None when distillation is off (--distill-steps 0)."""
    from ..transforms.distill import DistillOptions

    if not settings.bind(DistillPolicy).steps:
        return None
    return settings.bind(DistillOptions)


def distill_images(settings: Settings) -> ImageRequest:
    """--distill-data, else the calibration images."""
    return settings.bind(ImageSettings).distillation()


def _export_options(parent: Artifact) -> ExportOptions:
    step = next((s for s in parent.manifest.get("steps", []) if s.get("step") == "export"), {})
    return ExportOptions(opset=step.get("opset", 17), dynamic_batch=step.get("dynamic_batch", True), slim=step.get("slim", True))


def distill_and_export(
    staging: Path, parent: Artifact, loaded: LoadedModel, student, x: np.ndarray, distill_options,
    variant: str, step: dict[str, Any], state_of: Callable[[Any], dict], state_name: str, progress: Progress,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Distil ``student`` from the parent's module, save its weights, export and check it.

    Returns (child manifest, summary with params/GMACs before and after and the
    distillation report) for the caller to add its own section to.
    """
    import torch

    from ..transforms.distill import distill

    size = loaded.spec.preprocessing.input_size
    before = measure_complexity(loaded.module, size)
    report = None
    if distill_options is not None and distill_options.steps > 0:
        report = dataclasses.asdict(
            distill(student, loaded.module, x, distill_options, progress=lambda stage, done, total: progress("distilling", done, total))
        )
    student.eval()
    torch.save(state_of(student), staging / state_name)  # after distillation changed the weights
    after = measure_complexity(student, size)

    progress("exporting to ONNX", None, None)
    onnx_path = staging / ONNX_NAME
    torch_export_module(student, size, onnx_path, _export_options(parent), parent.model_name)
    check_onnx_file(onnx_path)
    exported = LoadedModel(spec=loaded.spec, module=student, weights_id=step["step"], weights_desc=variant)
    manifest = child_manifest(parent, variant, {**step, "params_m": [before[0], after[0]], "gmacs": [before[1], after[1]]})
    manifest["files"]["torch_state"] = state_name
    manifest["parity"] = measure_parity(exported, onnx_path, make_image_set(bundled_images(), 2, "bundled photos (parity)"))
    summary = {
        "params_m": {"before": before[0], "after": after[0]},
        "gmacs": {"before": before[1], "after": after[1]},
        "distillation": report,
    }
    return manifest, summary
