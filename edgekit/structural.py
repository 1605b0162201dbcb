"""Variants that change the PyTorch module itself (structured pruning; depthwise-separable
conversion later): rebuild the parent's exact module, transform it, recover accuracy by
distillation from the untouched original, and export the result as a child artifact.

The child's manifest keeps the parent's model section, so the PyTorch baseline that
`bench` compares against is the original network: the drop it reports is what the
transformation cost. The transformed module's weights are saved beside the ONNX (loadable
with ``weights_only=True``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .artifacts import build_artifact_folder
from .core import ONNX_NAME, Artifact, UsageError, stable_hash
from .data import ImageSet, bundled_images, load_all, make_image_set
from .export import ExportOptions, check_onnx_file, measure_parity, torch_export_module
from .models import LoadedModel, load_from_manifest, measure_complexity
from .variants import calibration_identity, child_manifest, require_fp32

STRUCTURAL_VERSION = 1  # bump when the output changes for the same settings
PRUNED_STATE_NAME = "pruned_state.pt"
Progress = Callable[[str, Optional[int], Optional[int]], None]


@dataclasses.dataclass(frozen=True)
class PruneTarget:
    """Stop pruning once ``metric`` (flops, params or latency) has fallen by ``reduction``."""

    metric: str
    reduction: float

    def __post_init__(self) -> None:
        if self.metric not in ("flops", "params", "latency"):
            raise UsageError(f"unknown prune target {self.metric!r}; use flops, params or latency")
        if not 0.0 < self.reduction < 1.0:
            raise UsageError(f"prune target reduction must be in (0, 1), got {self.reduction}")


def _export_options(parent: Artifact) -> ExportOptions:
    step = next((s for s in parent.manifest.get("steps", []) if s.get("step") == "export"), {})
    return ExportOptions(opset=step.get("opset", 17), dynamic_batch=step.get("dynamic_batch", True), slim=step.get("slim", True))


def _latency_ms(module, size: int) -> float:
    """ONNX Runtime batch-1 p50 of ``module`` (exported to a temporary file)."""
    import tempfile

    from .backends.onnxruntime import plain_session

    with tempfile.TemporaryDirectory(prefix="edgekit-prune-") as tmp:
        path = Path(tmp) / "probe.onnx"
        torch_export_module(module, size, path, ExportOptions(slim=False), "probe")
        session = plain_session(path)
        x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
        name = session.get_inputs()[0].name
        for _ in range(5):
            session.run(None, {name: x})
        samples = []
        for _ in range(30):
            start = time.perf_counter()
            session.run(None, {name: x})
            samples.append(time.perf_counter() - start)
    return float(np.median(samples) * 1000)


def _metric(module, size: int, metric: str) -> float:
    if metric == "latency":
        return _latency_ms(module, size)
    params_m, gmacs = measure_complexity(module, size)
    return gmacs if metric == "flops" else params_m


def prune_towards(student, size: int, options, target: Optional[PruneTarget], x: np.ndarray, progress: Progress) -> list[dict]:
    """Prune once by ``options.ratio``; with a target, in small steps until it is reached."""
    import torch

    from .transforms.prune import prune_module

    example = torch.zeros(1, 3, size, size)
    if target is None:
        return [prune_module(student, example, options, images=x).to_dict()]
    start = _metric(student, size, target.metric)
    reports = []
    step = dataclasses.replace(options, ratio=0.05)
    for i in range(1, 41):
        reports.append(prune_module(student, example, step, images=x).to_dict())
        now = _metric(student, size, target.metric)
        reduction = 1.0 - now / start
        reports[-1]["target"] = {"metric": target.metric, "start": start, "now": now, "reduction": reduction}
        progress(f"pruning to {target.metric} -{target.reduction:.0%}: -{reduction:.0%}", i, None)
        if reduction >= target.reduction:
            break
    return reports


def pruned_artifact(
    parent: Artifact,
    options,
    images: ImageSet,
    distill_options=None,
    sparsity: Optional[str] = None,
    target: Optional[PruneTarget] = None,
    root: Path = Path("exported"),
    progress: Progress = lambda stage, done, total: None,
) -> tuple[Artifact, bool]:
    """The structurally pruned (and distilled) child of an FP32 artifact; reused when built."""
    require_fp32(parent)
    settings = {
        "prune": dataclasses.asdict(options),
        "target": dataclasses.asdict(target) if target else None,
        "sparsity": sparsity,
        "distill": dataclasses.asdict(distill_options) if distill_options else None,
        "images": calibration_identity(images, parent.manifest["preprocessing"]),
    }
    key = stable_hash({"parent": parent.key, "pruned": settings, "version": STRUCTURAL_VERSION})

    def populate(staging: Path) -> dict[str, Any]:
        import torch

        from .transforms.distill import distill
        from .transforms.prune import apply_sparsity, pruned_state_dict

        progress(f"loading {parent.model_name} and {len(images)} images", None, None)
        loaded = load_from_manifest(parent.manifest)
        size = loaded.spec.preprocessing.input_size
        x, labels = load_all(images, parent.preprocessing)
        teacher = loaded.module
        student = copy.deepcopy(teacher)
        before = measure_complexity(student, size)
        steps = prune_towards(student, size, options, target, x, progress)
        sparsity_report = apply_sparsity(student, sparsity) if sparsity else None
        distill_report = None
        if distill_options is not None and distill_options.steps > 0:
            distill_report = distill(student, teacher, x, distill_options, progress=lambda stage, done, total: progress("distilling", done, total))
            distill_report = dataclasses.asdict(distill_report)
        student.eval()
        torch.save(pruned_state_dict(student), staging / PRUNED_STATE_NAME)
        after = measure_complexity(student, size)

        progress("exporting to ONNX", None, None)
        onnx_path = staging / ONNX_NAME
        torch_export_module(student, size, onnx_path, _export_options(parent), parent.model_name)
        check_onnx_file(onnx_path)
        pruned = LoadedModel(spec=loaded.spec, module=student, weights_id=key, weights_desc="pruned")
        parity_images = make_image_set(bundled_images(), 2, "bundled photos (parity)")
        manifest = child_manifest(
            parent, "pruned",
            {"step": "prune", "settings": settings, "params_m": [before[0], after[0]], "gmacs": [before[1], after[1]]},
        )
        manifest["files"]["torch_state"] = PRUNED_STATE_NAME
        manifest["parity"] = measure_parity(pruned, onnx_path, parity_images)
        manifest["pruning"] = {
            "params_m": {"before": before[0], "after": after[0]},
            "gmacs": {"before": before[1], "after": after[1]},
            "steps": steps,
            "sparsity": sparsity_report,
            "distillation": distill_report,
        }
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)
