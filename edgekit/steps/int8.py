"""The int8 step: the float ONNX in, one QDQ ONNX out (signed symmetric INT8 activations,
per-channel symmetric weights) that TensorRT, OpenVINO and ONNX Runtime all read.

Options: the [int8] group (calibration set, range method, budget, fallback, bias
correction); see edgekit.transforms.quantize for the algorithm. With --qat-epochs N the
post-training graph is then fine-tuned by quantization-aware training on the calibration
images (edgekit.transforms.qat) and written back as the same QDQ graph: same placements,
fallbacks and activation scales, trained weights and biases.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..artifacts import build_artifact_folder
from ..core import ONNX_NAME, Artifact, stable_hash
from ..data import ImageRequest, ImageSet, calibration_request, load_all
from ..options import Settings
from ..transforms.qat import QATOptions
from ..transforms.quantize import Budget, Progress, QuantizeOptions, quantize_onnx
from .lineage import calibration_identity, child_manifest, child_variant, require_fp32

# Bump when the quantizer's output changes for the same settings, so cached artifacts
# built by older code are not reused.
QUANTIZER_VERSION = 6  # 6: Q/DQ only where integer regions stay whole, fallback priced on the target backends
ENTROPY_SEARCH = "tensorrt-kl"  # entropy thresholds: edgekit's search (was ONNX Runtime's)
QAT_VERSION = 1  # bump when QAT's output changes for the same settings


def quantize_options(settings: Settings) -> QuantizeOptions:
    if all(settings[k] is None for k in ("max_drop", "min_agreement", "max_kl")):
        budget = Budget()  # mean KL <= 0.002 vs FP32
    else:
        budget = Budget(max_top1_drop=settings["max_drop"], min_agreement=settings["min_agreement"], max_kl=settings["max_kl"])
    return QuantizeOptions(
        method=settings["calib_method"],
        percentile=float(settings["percentile"]),
        bias_correction=settings["bias_correction"],
        fallback=settings["max_fallback"] > 0,
        max_fallback_nodes=settings["max_fallback"],
        budget=budget,
        rounding=settings["rounding"],
    )


def qat_options(settings: Settings) -> Optional[QATOptions]:
    """None unless --qat-epochs asks for quantization-aware training."""
    if not settings["qat_epochs"]:
        return None
    return QATOptions(epochs=settings["qat_epochs"], lr=float(settings["qat_lr"]), seed=settings["seed"])


def calibration_images(settings: Settings) -> ImageRequest:
    return calibration_request(settings)


def pricing_backends(settings: Settings) -> tuple[str, ...]:
    """The backends whose speed the fallback search weighs: the ones benched or bundled,
    else every CPU backend (the ones missing here, or without their device, are left out
    with a note when priced)."""
    from ..backends import get_backend
    from ..backends.base import deployable_backends

    if settings.given("backends"):
        return tuple(b for b in settings["backends"] if b in deployable_backends())
    return tuple(b for b in deployable_backends() if get_backend(b).runs_on_cpu)


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    return quantize_artifact(
        parent, calibration_images(settings).resolve(parent.classes), quantize_options(settings), root, progress, qat_options(settings),
        pricing_backends(settings),
    )


def _pricer(backends: tuple[str, ...], x, notes: list[str]):
    """price(all_int8, candidates_float) on the backends that can run here (see profiling)."""
    from ..backends import BackendOptions, get_backend
    from ..core import EdgekitError
    from ..profiling import price_float_layers

    usable = []
    for name in backends:
        try:
            get_backend(name).check_available()
            usable.append(name)
        except EdgekitError as e:
            notes.append(f"fallback not priced on {name}: {e}")
    if not usable:
        return None
    return lambda int8_path, float_path, nodes: price_float_layers(int8_path, float_path, usable, BackendOptions(), x[:1], float_nodes=nodes)


def quantize_artifact(
    parent: Artifact,
    calibration: ImageSet,
    options: QuantizeOptions = QuantizeOptions(),
    root: Path = Path("exported"),
    progress: Progress = lambda stage, done, total: None,
    qat: Optional[QATOptions] = None,
    price_on: tuple[str, ...] = (),
) -> tuple[Artifact, bool]:
    """The INT8 QDQ child of an FP32 artifact (reused when already built); with ``qat``,
    the post-training graph fine-tuned by quantization-aware training on the calibration
    images (the variant is still int8: the same kind of QDQ graph)."""
    require_fp32(parent)
    identity = calibration_identity(calibration, parent.manifest["preprocessing"])
    settings = dataclasses.asdict(options)
    version = QUANTIZER_VERSION if options.method != "entropy" else f"{QUANTIZER_VERSION}-{ENTROPY_SEARCH}"
    payload = {"parent": parent.key, "int8": settings, "calibration": identity, "quantizer": version, "priced_on": sorted(price_on)}
    if qat is not None:  # post-training-only keys stay what they were
        payload["qat"] = {**dataclasses.asdict(qat), "version": QAT_VERSION}
    key = stable_hash(payload)

    random_weights = (parent.manifest.get("model", {}).get("weights_source") or {}).get("kind") == "random-init"

    def populate(staging: Path) -> dict[str, Any]:
        progress(f"loading {len(calibration)} calibration images", None, None)
        x, labels = load_all(calibration, parent.preprocessing)
        pricing_notes: list[str] = []
        price = _pricer(price_on, x, pricing_notes) if price_on and not random_weights else None
        if qat is None:
            report = quantize_onnx(parent.onnx_path, staging / ONNX_NAME, x, labels, options, progress, random_weights, price)
            qat_report = None
        else:
            from ..transforms.qat import qat_onnx

            with tempfile.TemporaryDirectory(prefix="edgekit-ptq-") as tmp:  # the PTQ graph is not kept
                ptq_path = Path(tmp) / ONNX_NAME
                report = quantize_onnx(parent.onnx_path, ptq_path, x, labels, options, progress, random_weights, price)
                qat_report = qat_onnx(parent.onnx_path, ptq_path, staging / ONNX_NAME, x, labels, qat, progress)
        manifest = child_manifest(
            parent,
            child_variant(parent, "int8"),
            {
                "step": "quantize",
                "format": "QDQ, INT8 weights per-channel symmetric, INT8 activations symmetric (zero point 0)",
                "settings": settings,
                "calibration": identity,
                "fallback": [f.node for f in report.fallback],
                "fidelity_on_calibration": dataclasses.asdict(report.final if qat_report is None else qat_report.after),
                "budget_met": report.budget_met if qat_report is None else options.budget.met(qat_report.after),
                **({} if qat_report is None else {"qat": _qat_summary(qat_report)}),
            },
        )
        manifest["quantization"] = report.to_dict()
        if report.fallback or any("fallback" in n for n in report.notes):
            manifest["quantization"]["notes"] = [*pricing_notes, *manifest["quantization"]["notes"]]
        manifest["quantization"]["priced_on"] = list(price_on)
        if qat_report is not None:
            # the quantization section describes the file delivered (what --strict and
            # bench's budget note read); the post-training figures stay in manifest["qat"]["before"]
            q = manifest["quantization"]
            q["final"] = dataclasses.asdict(qat_report.after)
            q["budget_met"] = options.budget.met(qat_report.after)
            q["notes"] = [*q["notes"], (
                f"quantization-aware training, {qat.epochs} epochs: KL vs FP32 on the calibration images "
                f"{qat_report.before.mean_kl:.4f} after post-training INT8 -> {qat_report.after.mean_kl:.4f}"
            )]
            manifest["qat"] = qat_report.to_dict()
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)


def _qat_summary(report) -> dict[str, Any]:
    """What the manifest's step records about QAT (the whole report is manifest["qat"])."""
    def figures(stats) -> dict[str, Any]:
        return {"agreement": stats.agreement, "mean_kl": stats.mean_kl, "top1": stats.top1, "top1_drop": stats.top1_drop}

    return {
        "epochs": report.options.epochs,
        "lr": report.options.lr,
        "steps": report.steps,
        "images": report.images,
        "labelled": report.labelled,
        "activation_scales": report.scales,
        "fidelity_before": figures(report.before),  # the post-training graph, calibration images vs FP32
        "fidelity_after": figures(report.after),
        "seconds": round(report.seconds, 1),
    }
