"""The fp16 step: a mixed-precision FP16 graph (precision lives in the graph: TensorRT 11
reads FP16 only from FP16 tensors), inputs and outputs kept FP32 (callers need no change),
the layers that overflow, underflow or lose accuracy in FP16 kept FP32, chosen by
measurement on the calibration images (the INT8 step's: --calib, --data's training split,
else the bundled photos' odd views); see edgekit.transforms.fp16. ONNX Runtime's CPU
provider reads the file, slower than FP32: it is for GPU backends."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from ..artifacts import build_artifact_folder
from ..core import ONNX_NAME, Artifact, stable_hash
from ..data import ImageSet, default_calibration, load_all
from ..options import Settings
from ..progress import Progress, quiet
from .lineage import calibration_identity, child_manifest, child_variant, require_fp32

FP16_VERSION = 2  # 2: kept-FP32 layers chosen by measurement (1: every layer FP16, ONNX Runtime's converter)


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    from ..data import calibration_request

    return fp16_artifact(parent, root, calibration_request(settings).resolve(parent.classes), progress)


def fp16_artifact(
    parent: Artifact, root: Path = Path("exported"), calibration: Optional[ImageSet] = None, progress: Progress = quiet,
) -> tuple[Artifact, bool]:
    """The FP16 child of an FP32 artifact (reused when already built); ``calibration``
    defaults to the bundled photos' odd views."""
    from ..transforms import fp16 as algorithm

    require_fp32(parent)
    calibration = calibration if calibration is not None else default_calibration().resolve(parent.classes)
    identity = calibration_identity(calibration, parent.manifest["preprocessing"])
    criterion = algorithm.DEFAULT_CRITERION
    rules = {
        "criterion": dataclasses.asdict(criterion), "overflow_bound": algorithm.OVERFLOW_BOUND,
        "underflow_error": algorithm.UNDERFLOW_ERROR, "max_kept_for_accuracy": algorithm.MAX_KEPT_FOR_ACCURACY,
        "ranking_images": algorithm.RANKING_IMAGES,
    }
    key = stable_hash({"parent": parent.key, "fp16": {"keep_io_types": True, **rules}, "calibration": identity, "version": FP16_VERSION})

    def populate(staging: Path) -> dict[str, Any]:
        progress(f"loading {len(calibration)} calibration images", None, None)
        x, _ = load_all(calibration, parent.preprocessing)
        report = algorithm.to_fp16(parent.onnx_path, staging / ONNX_NAME, x, criterion, progress)
        manifest = child_manifest(parent, child_variant(parent, "fp16"), {
            "step": "fp16",
            "keep_io_types": True,
            "converter": algorithm.CONVERTER,
            "settings": rules,
            "calibration": identity,
            "kept_fp32": [{"node": k.node, "op_type": k.op_type, "why": k.why} for k in report.kept_fp32],
            "fidelity_on_calibration": {"agreement": report.final.agreement, "mean_kl": report.final.mean_kl,
                                        "max_abs_diff": report.final.max_abs_diff},
            "criterion_met": report.criterion_met,
        })
        manifest["fp16"] = report.to_dict()
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)


def describe(artifact: Artifact) -> list:
    """What the FP16 step measured and kept FP32, for people."""
    from . import SummaryTable

    report = artifact.manifest.get("fp16")
    if not report:
        return []
    final, blind, cpu = report["final"], report["all_fp16"], report["onnxruntime_cpu"]
    c = report["criterion"]
    criterion = ", ".join(part for part in (
        f"agreement >= {c['min_agreement']}%" if c.get("min_agreement") is not None else "",
        f"mean KL <= {c['max_kl']}" if c.get("max_kl") is not None else "") if part)
    lines: list = [
        f"FP16 ({report['calibration_images']} calibration images, {report['seconds']:.0f} s): {report['fp16_nodes']} nodes FP16, "
        f"{len(report['kept_fp32'])} kept FP32; vs FP32 on the calibration images agreement {final['agreement']:.1f}%, "
        f"KL {final['mean_kl']:.2g}, max |logit diff| {final['max_abs_diff']:.3g} (every node FP16: {blind['agreement']:.1f}%, "
        f"KL {blind['mean_kl']:.2g}); criterion ({criterion}) " + ("met" if report["criterion_met"] else "NOT met"),
        f"the file on ONNX Runtime's CPU provider: agreement {cpu['agreement']:.1f}%, KL {cpu['mean_kl']:.2g} (it computes most "
        "FP16 operators in FP32 and keeps activations FP32 between them, so the figures above emulate FP16 storage instead)",
    ]
    kept = report["kept_fp32"]
    if kept:
        rows = tuple((k.get("module") or k["node"], k["op_type"], k["why"], k["detail"]) for k in kept)
        lines.append(SummaryTable(f"nodes kept FP32 ({len(kept)})", ("module (ONNX node)", "op", "why", "measured"), rows,
                                  frozenset({"module (ONNX node)", "op", "why", "measured"})))
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return lines
