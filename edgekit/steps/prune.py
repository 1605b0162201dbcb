"""The pruned step: structured pruning of the PyTorch module (torch-pruning's dependency
graph), optionally in small steps towards a measured target, then distillation from the
original and export (edgekit.steps.structural).

Options: the [prune] and [distill] groups.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..artifacts import build_artifact_folder
from ..timing import TimingOptions, time_session
from ..core import Artifact, UsageError, stable_hash
from ..data import ImageSet, load_all
from ..onnx_export import ExportOptions, torch_export_module
from ..models import load_from_manifest, measure_complexity
from ..options import Settings, declared
from ..progress import Progress
from .lineage import calibration_identity, require_fp32
from .structural import STRUCTURAL_VERSION, distill_and_export, distill_images, distill_options

PRUNED_STATE_NAME = "pruned_state.pt"


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


@dataclasses.dataclass(frozen=True)
class PruneSettings:
    """The prune group's options that are not the transform's own (PruneOptions)."""

    ratio: Optional[float] = declared("prune").field()
    target: Optional[str] = declared("prune_target").field()
    sparsity: Optional[str] = declared("sparsity").field()


def prune_options(settings: Settings):
    from ..transforms.prune import PruneOptions

    # towards a target, pruning goes in steps of 5% (prune_towards)
    return settings.bind(PruneOptions, **({} if settings.bind(PruneSettings).target is None else {"ratio": 0.05}))


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    prune = settings.bind(PruneSettings)
    if prune.ratio is None:
        raise UsageError("a 'pruned' variant needs a ratio: --prune 0.3 (recipes: [prune] ratio)")
    target = PruneTarget(prune.target, prune.ratio) if prune.target else None
    return pruned_artifact(
        parent, prune_options(settings), distill_images(settings).resolve(parent.classes), distill_options(settings), prune.sparsity, target, root, progress,
    )


def _latency_ms(module, size: int) -> float:
    """Batch-1 p50 of ``module`` (exported to a temporary file) on the default deploy
    backend's plain CPU run (backends.base.graph_timing_backend)."""
    import tempfile

    from ..backends.base import graph_timing_backend

    with tempfile.TemporaryDirectory(prefix="edgekit-prune-") as tmp:
        path = Path(tmp) / "probe.onnx"
        torch_export_module(module, size, path, ExportOptions(slim=False), "probe")
        run = graph_timing_backend().graph_runner(path)
        x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
        return time_session(run, x, 1, TimingOptions(warmup=5, iterations=30, max_seconds=60)).p50_ms


def _metric(module, size: int, metric: str) -> float:
    if metric == "latency":
        return _latency_ms(module, size)
    params_m, gmacs = measure_complexity(module, size)
    return gmacs if metric == "flops" else params_m


def prune_towards(student, size: int, options, target: Optional[PruneTarget], x: np.ndarray, progress: Progress) -> list[dict]:
    """Prune once by ``options.ratio``; with a target, in small steps until it is reached."""
    import torch

    from ..transforms.prune import prune_module

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
        from ..transforms.prune import apply_sparsity, pruned_state_dict

        progress(f"loading {parent.model_name} and {len(images)} images", None, None)
        loaded = load_from_manifest(parent.manifest)
        x, _ = load_all(images, parent.preprocessing)
        student = copy.deepcopy(loaded.module)
        steps = prune_towards(student, loaded.spec.preprocessing.input_size, options, target, x, progress)
        sparsity_report = apply_sparsity(student, sparsity) if sparsity else None
        manifest, summary = distill_and_export(
            staging, parent, loaded, student, x, distill_options, "pruned", {"step": "prune", "settings": settings},
            pruned_state_dict, PRUNED_STATE_NAME, progress,
        )
        manifest["pruning"] = {**summary, "steps": steps, "sparsity": sparsity_report}
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)


# --------------------------------------------------------------------------- how it describes itself


def describe(artifact: Artifact) -> list:
    """One line: params and GMACs before and after, the distillation, the sparsity."""
    p = artifact.manifest.get("pruning")
    if not p:
        return []
    params, gmacs = p["params_m"], p["gmacs"]
    line = f"pruned: params {params['before']:.2f}M -> {params['after']:.2f}M, GMACs {gmacs['before']:.3f} -> {gmacs['after']:.3f}"
    if p.get("distillation"):
        d = p["distillation"]
        line += f"; distilled {d['steps']} steps (loss {d['first_loss']:.4f} -> {d['last_loss']:.4f})"
    if p.get("sparsity"):
        line += f"; sparsity {p['sparsity'].get('overall', p['sparsity'])}"
    return [line]
