"""Variants that change the PyTorch module itself (structured pruning, depthwise-separable
conversion): rebuild the parent's exact module, transform it, recover accuracy by
distillation from the untouched original, and export the result as a child artifact.

The child's manifest keeps the parent's model section, so the PyTorch baseline that
`bench` compares against is the original network: the drop it reports is what the
transformation cost. The transformed module's weights are saved beside the ONNX (loadable
with ``weights_only=True``).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .artifacts import build_artifact_folder
from .bench import TimingOptions, time_session
from .core import ONNX_NAME, Artifact, UsageError, stable_hash
from .data import ImageSet, bundled_images, load_all, make_image_set
from .export import ExportOptions, check_onnx_file, measure_parity, torch_export_module
from .models import LoadedModel, load_from_manifest, measure_complexity
from .variants import calibration_identity, child_manifest, require_fp32

STRUCTURAL_VERSION = 3  # bump when the output changes for the same settings (2: same-padding kept, BatchNorm trains; 3: rank > 1 as repeat + depthwise)
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
        return time_session(lambda batch: session.run(None, {name: batch}), x, 1, TimingOptions(warmup=5, iterations=30, max_seconds=60)).p50_ms


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


def _distill_and_export(
    staging: Path, parent: Artifact, loaded: LoadedModel, student, x: np.ndarray, distill_options,
    variant: str, step: dict[str, Any], state_of: Callable[[Any], dict], state_name: str, progress: Progress,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Distil ``student`` from the parent's module, save its weights, export and check it.

    Returns (child manifest, summary with params/GMACs before and after and the
    distillation report) for the caller to add its own section to.
    """
    import torch

    from .transforms.distill import distill

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
        from .transforms.prune import apply_sparsity, pruned_state_dict

        progress(f"loading {parent.model_name} and {len(images)} images", None, None)
        loaded = load_from_manifest(parent.manifest)
        x, _ = load_all(images, parent.preprocessing)
        student = copy.deepcopy(loaded.module)
        steps = prune_towards(student, loaded.spec.preprocessing.input_size, options, target, x, progress)
        sparsity_report = apply_sparsity(student, sparsity) if sparsity else None
        manifest, summary = _distill_and_export(
            staging, parent, loaded, student, x, distill_options, "pruned", {"step": "prune", "settings": settings},
            pruned_state_dict, PRUNED_STATE_NAME, progress,
        )
        manifest["pruning"] = {**summary, "steps": steps, "sparsity": sparsity_report}
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)


DWSEP_STATE_NAME = "dwsep_state.pt"
BUDGET_IMAGES = 16  # images the layer-selection budget is measured on


def _mean_kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    from .evaluation import mean_kl

    return mean_kl(teacher_logits, student_logits)


def dwsep_artifact(
    parent: Artifact,
    rank: int,
    images: ImageSet,
    layers: Optional[tuple[str, ...]] = None,
    budget: Optional[float] = None,
    distill_options=None,
    root: Path = Path("exported"),
    progress: Progress = lambda stage, done, total: None,
) -> tuple[Artifact, bool]:
    """The child of an FP32 artifact whose KxK convolutions became depthwise + pointwise.

    ``layers`` names them; otherwise every convertible layer, best MACs saved per unit of
    kernel error first, while the model's mean KL vs the original (measured on a few of
    ``images``, before distillation) stays within ``budget`` (all layers without one).
    """
    require_fp32(parent)
    settings = {
        "rank": rank,
        "layers": list(layers) if layers else None,
        "budget_kl": budget,
        "distill": dataclasses.asdict(distill_options) if distill_options else None,
        "images": calibration_identity(images, parent.manifest["preprocessing"]),
    }
    key = stable_hash({"parent": parent.key, "dw-separable": settings, "version": STRUCTURAL_VERSION})

    def populate(staging: Path) -> dict[str, Any]:
        import torch

        from .transforms.dwsep import convert, layer_table, select_within_budget

        progress(f"loading {parent.model_name} and {len(images)} images", None, None)
        loaded = load_from_manifest(parent.manifest)
        size = loaded.spec.preprocessing.input_size
        x, _ = load_all(images, parent.preprocessing)
        teacher = loaded.module.eval()
        table = layer_table(teacher, rank, size)
        if not table:
            raise UsageError(f"{parent.model_name} has no KxK convolution with groups=1 to convert")
        sample = torch.from_numpy(x[:BUDGET_IMAGES])
        with torch.no_grad():
            reference = teacher(sample).numpy()

        def model_error(names) -> float:
            trial = copy.deepcopy(teacher)
            convert(trial, names, rank)
            with torch.no_grad():
                return _mean_kl(reference, trial.eval()(sample).numpy())

        if layers:
            chosen, trail = list(layers), []
        else:
            chosen, trail = select_within_budget(table, model_error, budget, lambda done, total: progress("choosing layers", done, total))
        student = copy.deepcopy(teacher)
        errors = convert(student, chosen, rank)
        kl_converted = model_error(chosen)
        manifest, summary = _distill_and_export(
            staging, parent, loaded, student, x, distill_options, "dw-separable", {"step": "dw-separable", "settings": settings},
            lambda module: module.state_dict(), DWSEP_STATE_NAME, progress,
        )
        manifest["dw_separable"] = {
            **summary,
            "rank": rank,
            "layers": [{**c.to_dict(), "converted": c.name in chosen} for c in table],
            "selection": trail,
            "kernel_errors": errors,
            "kl_before_distillation": kl_converted,
        }
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)
