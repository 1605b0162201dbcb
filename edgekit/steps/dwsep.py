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
from ..options import Settings, declared
from ..progress import Progress
from .lineage import calibration_identity, require_fp32
from .structural import STRUCTURAL_VERSION, distill_and_export, distill_images, distill_options

DWSEP_STATE_NAME = "dwsep_state.pt"
BUDGET_IMAGES = 16  # images the layer-selection budget is measured on


@dataclasses.dataclass(frozen=True)
class DwSeparableSettings:
    rank: int = declared("dw_rank").field()
    layers: tuple[str, ...] = declared("dw_layers").field(convert=tuple)
    budget: Optional[float] = declared("dw_budget").field()


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    dw = settings.bind(DwSeparableSettings)
    return dwsep_artifact(
        parent, dw.rank, distill_images(settings).resolve(parent.classes), dw.layers or None, dw.budget,
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


# --------------------------------------------------------------------------- how it describes itself


def describe(artifact: Artifact) -> list:
    """The layers considered (by MACs saved per unit of kernel error), then one line of totals."""
    from . import SummaryTable

    d = artifact.manifest.get("dw_separable")
    if not d:
        return []
    rows = tuple(
        (c["name"], "x".join(map(str, c["kernel"])), f"{c['in_channels']}->{c['out_channels']}", f"{c['kernel_error']:.3f}",
         f"{c['macs_before'] / 1e6:.1f}", f"{c['macs_after'] / 1e6:.1f}", "yes" if c["converted"] else "")
        for c in sorted(d["layers"], key=lambda c: -c["saved"] / max(c["kernel_error"], 1e-6))
    )
    table = SummaryTable(
        f"depthwise-separable conversion, rank {d['rank']} (ordered by MACs saved per unit of kernel error)",
        ("layer", "kernel", "in->out", "kernel error", "MMACs before", "MMACs after", "converted"), rows, frozenset({"layer", "converted"}),
    )
    line = (f"GMACs {d['gmacs']['before']:.3f} -> {d['gmacs']['after']:.3f}, params {d['params_m']['before']:.2f}M -> {d['params_m']['after']:.2f}M; "
            f"mean KL vs original before distillation {d['kl_before_distillation']:.4f}")
    if d.get("distillation"):
        line += f"; distilled {d['distillation']['steps']} steps"
    return [table, line]
