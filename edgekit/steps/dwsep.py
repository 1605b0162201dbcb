"""The dw-separable step: KxK convolutions become a depthwise KxK (r filters per input
channel) and a pointwise 1x1, initialised by a per-input-channel SVD of the trained
kernel, chosen by MACs saved per unit of error within a KL budget (or named), then
distilled from the original and exported (edgekit.steps.structural).

Options: the [dw_separable] and [distill] groups.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Optional


from ..artifacts import build_artifact_folder
from ..core import Artifact, UsageError, stable_hash
from ..data import ImageSet, load_all
from ..evaluation import mean_kl
from ..models import load_from_manifest
from ..options import Settings
from .lineage import calibration_identity, require_fp32
from .structural import STRUCTURAL_VERSION, Progress, distill_and_export, distill_images, distill_options

DWSEP_STATE_NAME = "dwsep_state.pt"
BUDGET_IMAGES = 16  # images the layer-selection budget is measured on


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    return dwsep_artifact(
        parent, settings["dw_rank"], distill_images(settings).resolve(parent.classes), settings["dw_layers"] or None, settings["dw_budget"],
        distill_options(settings), root, progress,
    )


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

        from ..transforms.dwsep import convert, layer_table, select_within_budget

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
                return mean_kl(reference, trial.eval()(sample).numpy())

        if layers:
            chosen, trail = list(layers), []
        else:
            chosen, trail = select_within_budget(table, model_error, budget, lambda done, total: progress("choosing layers", done, total))
        student = copy.deepcopy(teacher)
        errors = convert(student, chosen, rank)
        kl_converted = model_error(chosen)
        manifest, summary = distill_and_export(
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
