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
from ..data import ImageRequest, ImageSet, ImageSettings, calibration_request, load_all
from ..session import BenchSettings
from ..options import Settings, declared
from ..progress import Progress
from ..transforms.qat import QATOptions
from ..transforms.quantize import Budget, QuantizeOptions, quantize_onnx
from .lineage import calibration_identity, calibration_views, child_manifest, child_variant, require_fp32

# Bump when the quantizer's output changes for the same settings, so cached artifacts
# built by older code are not reused.
QUANTIZER_VERSION = 7  # 6: Q/DQ only where integer regions stay whole, fallback priced on the target backends; 7: calibration views recorded
ENTROPY_SEARCH = "tensorrt-kl"  # entropy thresholds: edgekit's search (was ONNX Runtime's)
QAT_VERSION = 2  # bump when QAT's output changes for the same settings


def quantize_options(settings: Settings) -> QuantizeOptions:
    budget = settings.bind(Budget)
    if budget == Budget(None, None, None):
        budget = Budget()  # none given: mean KL <= 0.002 vs FP32
    options = settings.bind(QuantizeOptions, budget=budget)
    if options.float_precision == "auto":
        options = dataclasses.replace(options, float_precision=float_parts_for(settings))
    return options


def float_parts_for(settings: Settings) -> str:
    """--int8-float auto: FP16 float parts when every backend of the run (the baseline
    aside) runs on an NVIDIA GPU, where strongly typed TensorRT would otherwise run them
    in FP32; FP32 otherwise (CPU runtimes cannot read FP16 Q/DQ)."""
    from ..backends import get_backend
    from ..backends.base import BASELINE_BACKEND
    from ..session import backend_options

    if not settings.given("backends"):
        return "fp32"
    targets = [b for b in settings.bind(BenchSettings).backends if b != BASELINE_BACKEND]
    options = backend_options(settings)
    return "fp16" if targets and all(get_backend(b).uses_nvidia_gpu(options) for b in targets) else "fp32"


@dataclasses.dataclass(frozen=True)
class Int8Policy:
    """What the int8 group asks beyond the quantizer's options: QAT or not, and whether a
    missed budget fails the command."""

    qat_epochs: int = declared("qat_epochs").field()  # 0 (its default): no QAT
    qat_limit: int = declared("qat_limit").field()
    strict: bool = declared("strict").field()


def qat_options(settings: Settings) -> Optional[QATOptions]:
    """None unless --qat-epochs asks for quantization-aware training."""
    if not settings.bind(Int8Policy).qat_epochs:
        return None
    return settings.bind(QATOptions)


def calibration_images(settings: Settings) -> ImageRequest:
    return calibration_request(settings)


def qat_images(settings: Settings) -> Optional[ImageRequest]:
    """QAT's images: the calibration source sampled up to --qat-limit rather than
    --calib-limit (QAT needs far more images than range estimation: on the digits of
    benchmarks/results/qat.md, 200 left it 1.48 points below FP32, 1,257 0.56); None
    without QAT."""
    policy = settings.bind(Int8Policy)
    if not policy.qat_epochs:
        return None
    return dataclasses.replace(settings.bind(ImageSettings), calib_limit=policy.qat_limit).calibration()


def pricing_backends(settings: Settings) -> tuple[str, ...]:
    """The backends whose speed the fallback search weighs: the ones benched or bundled,
    else every CPU backend (the ones missing here, or without their device, are left out
    with a note when priced)."""
    from ..backends import get_backend
    from ..backends.base import deployable_backends

    if settings.given("backends"):
        return tuple(b for b in settings.bind(BenchSettings).backends if b in deployable_backends())
    return tuple(b for b in deployable_backends() if get_backend(b).runs_on_cpu)


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    qat_request = qat_images(settings)
    return quantize_artifact(
        parent, calibration_images(settings).resolve(parent.classes), quantize_options(settings), root, progress, qat_options(settings),
        pricing_backends(settings), qat_request.resolve(parent.classes) if qat_request is not None else None,
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
    qat_set: Optional[ImageSet] = None,
) -> tuple[Artifact, bool]:
    """The INT8 QDQ child of an FP32 artifact (reused when already built); with ``qat``,
    the post-training graph fine-tuned by quantization-aware training on ``qat_set``
    (default: the calibration images; the variant is still int8: the same kind of QDQ graph)."""
    require_fp32(parent)
    identity = calibration_identity(calibration, parent.manifest["preprocessing"])
    settings = dataclasses.asdict(options)
    keyed = {k: v for k, v in settings.items() if not (k == "float_precision" and v == "fp32")}  # keys from before the option stay
    version = QUANTIZER_VERSION if options.method != "entropy" else f"{QUANTIZER_VERSION}-{ENTROPY_SEARCH}"
    payload = {"parent": parent.key, "int8": keyed, "calibration": identity, "quantizer": version, "priced_on": sorted(price_on)}
    if qat is not None:  # post-training-only keys stay what they were
        payload["qat"] = {**dataclasses.asdict(qat), "version": QAT_VERSION}
        if qat_set is not None:
            payload["qat"]["images"] = calibration_identity(qat_set, parent.manifest["preprocessing"])
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
                x_qat, qat_labels = x, labels
                if qat_set is not None:
                    progress(f"loading {len(qat_set)} QAT images", None, None)
                    x_qat, qat_labels = load_all(qat_set, parent.preprocessing)
                qat_report = qat_onnx(parent.onnx_path, ptq_path, staging / ONNX_NAME, x_qat, qat_labels, qat, progress)
        manifest = child_manifest(
            parent,
            child_variant(parent, "int8"),
            {
                "step": "quantize",
                "format": "QDQ, INT8 weights per-channel symmetric, INT8 activations symmetric (zero point 0)",
                "settings": settings,
                "calibration": identity,
                "calibration_views": calibration_views(calibration),
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
        if options.float_precision == "fp16":
            manifest["int8_float"] = _floats_to_fp16(parent, staging / ONNX_NAME, x, progress)
            manifest["steps"][-1]["float_precision"] = "fp16"
        if qat_report is not None:
            # the quantization section describes the file delivered (what --strict and
            # bench's budget note read); the post-training figures stay in manifest["qat"]["before"]
            q = manifest["quantization"]
            q["final"] = dataclasses.asdict(qat_report.after)
            q["budget_met"] = options.budget.met(qat_report.after)
            q["notes"] = [*q["notes"], _qat_note(qat_report)]
            manifest["qat"] = qat_report.to_dict()
        return manifest

    return build_artifact_folder(root, parent.model_name, key, populate)


def _floats_to_fp16(parent: Artifact, path: Path, x, progress: Progress) -> dict[str, Any]:
    """--int8-float fp16: the QDQ graph at ``path`` rewritten with FP16 float parts, judged
    against the FP32 parent on the calibration images; what the manifest records."""
    from ..transforms.fp16 import int8_floats_to_fp16, logits_of

    progress("float parts to FP16", None, None)
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-fp16-") as tmp:
        out = Path(tmp) / ONNX_NAME
        report = int8_floats_to_fp16(path, out, x, logits_of(parent.onnx_path, x), progress)
        path.write_bytes(out.read_bytes())
    return {"precision": "fp16", **report.to_dict()}


def _qat_note(report) -> str:
    """One line: what QAT changed, judged on the images it held back when it had some."""
    epochs = f"{report.options.epochs} epoch{'s' if report.options.epochs != 1 else ''}"
    trained = f"quantization-aware training, {epochs} at lr {report.options.lr:g} on {report.images - report.selection_images} images"
    judged = f"the {report.selection_images} held back" if report.selection_images else "the images it trained on"
    if report.best_epoch == 0:
        return (f"{trained}: KL vs FP32 on {judged} {report.epoch_kl[0]:.4f} after post-training INT8 -> {report.epoch_kl[-1]:.4f}, "
                "no better: the post-training graph is kept as it was")
    line = (f"{trained}: KL vs FP32 {report.before.mean_kl:.4f} after post-training INT8 -> {report.after.mean_kl:.4f} (all {report.images} images)")
    if report.selection_images:
        line += f"; on {judged}: {report.selection_before.mean_kl:.4f} -> {report.selection_after.mean_kl:.4f}"
    return line


def _qat_summary(report) -> dict[str, Any]:
    """What the manifest's step records about QAT (the whole report is manifest["qat"])."""
    def figures(stats) -> dict[str, Any]:
        return {"agreement": stats.agreement, "mean_kl": stats.mean_kl, "top1": stats.top1, "top1_drop": stats.top1_drop}

    return {
        "epochs": report.options.epochs,
        "lr": report.options.lr,
        "steps": report.steps,
        "images": report.images,
        "selection_images": report.selection_images,
        "best_epoch": report.best_epoch,
        "labelled": report.labelled,
        "activation_scales": report.scales,
        "fidelity_before": figures(report.before),  # the post-training graph vs FP32, on all of QAT's images
        "fidelity_after": figures(report.after),
        **({"selection_before": figures(report.selection_before), "selection_after": figures(report.selection_after)} if report.selection_images else {}),
        "seconds": round(report.seconds, 1),
    }


# --------------------------------------------------------------------------- how it describes itself

SENSITIVITY_ROWS = 10  # the same rows in export, bench and inspect


def describe(artifact: Artifact) -> list:
    """The INT8 report of ``artifact`` for people: ranges, rounding and fidelity, the budget,
    the nodes kept in float and why, the layers ranked by sensitivity, the notes."""
    from ..transforms.quantize import Budget
    from . import SummaryTable

    q = artifact.manifest.get("quantization")
    if not q:
        return []
    options = q["options"]
    stages = q.get("stages") or []
    story = " -> ".join(f"{st['name']} KL {st['after']['mean_kl']:.4f}" for st in stages) or f"KL {q['final']['mean_kl']:.4f}"
    lines: list = [
        f"INT8 ({options['method']} ranges, {options.get('rounding', 'nearest')} rounding, {q['calibration_images']} calibration images"
        + (f", {q['seconds']:.0f} s" if q.get("seconds") else "") + f"): on the calibration images vs FP32, {story}; "
        f"final agreement {q['final']['agreement']:.1f}%; budget ({Budget(**options['budget']).describe()}) "
        + ("not searched (random-init weights)" if q.get("random_weights") else ("met" if q["budget_met"] else "NOT met"))
    ]
    kept = q.get("kept_in_float")
    if kept is None:  # artifacts quantized before the list existed
        lines.append(f"{q['quantized_nodes']} layers INT8; in float: {q['float_nodes'] or 'none'}")
    else:
        lines.append(f"{q['quantized_nodes']} layers INT8, {len(kept)} nodes in float" + (":" if kept else ""))
        reasons: dict[str, list[str]] = {}
        for node in kept:
            reason = node["reason"] if not node["reason"].startswith("fell back") else "fell back to float (budget)"
            reasons.setdefault(reason, []).append(node["module"] or node["node"])
        for reason, names in reasons.items():
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            lines.append(f"  {len(names)} x {reason}: {shown}")
    rows = q["sensitivity"][:SENSITIVITY_ROWS]
    measured = any(r["kl_if_float"] is not None for r in rows)
    if rows:
        n = q.get("sensitivity_images") or "?"
        title = (
            f"layers ranked by KL vs FP32 when read in float alone ({n} images; all INT8 on them: {q['sensitivity_all_int8_kl']:.4f})"
            if measured and q.get("sensitivity_all_int8_kl") is not None
            else f"layers with the largest output error vs FP32 ({n} images; no fallback search was needed)"
        )
        columns = ("module (ONNX node)", "op", "output rel. error", *(("KL if float",) if measured else ()), "in float")
        fell_back = {f["node"]: f for f in q["fallback"]}
        table_rows = []
        for r in rows:
            step = fell_back.get(r["node"])
            cells = [r.get("module") or r["node"], r["op_type"], f"{r['output_rel_error']:.3f}"]
            if measured:
                cells.append(f"{r['kl_if_float']:.4f}" if r["kl_if_float"] is not None else "-")
            cells.append(_fallback_cell(step) if step else "")
            table_rows.append(tuple(cells))
        lines.append(SummaryTable(f"{title}, top {len(rows)} of {len(q['sensitivity'])}", columns, tuple(table_rows),
                                  frozenset({"module (ONNX node)", "op", "in float"})))
    lines += [f"note: {note}" for note in q.get("notes", [])]
    floats = artifact.manifest.get("int8_float")
    if floats:
        e, cpu, before = floats["emulated"], floats["onnxruntime_cpu"], floats["int8_fp32_floats"]
        lines.append(
            f"float parts FP16 for GPU targets (--int8-float: fp16, or auto with every backend on an NVIDIA GPU; opset {floats['opset'][0]} -> {floats['opset'][1]}, {len(floats['kept_fp32'])} nodes kept FP32): vs FP32 on the "
            f"calibration images agreement {e['agreement']:.1f}%, KL {e['mean_kl']:.4f} (FP16 storage emulated; float parts FP32: "
            f"{before['agreement']:.1f}%, KL {before['mean_kl']:.4f}; the file on ONNX Runtime's CPU provider: {cpu['agreement']:.1f}%, KL {cpu['mean_kl']:.4f})"
        )
    return lines


def _fallback_cell(step: dict) -> str:
    """'yes (KL after: 0.0022; costs onnxruntime +0.082 ms, openvino +0.022 ms)'."""
    price = ", ".join(f"{backend} {ms:+.3f} ms" for backend, ms in (step.get("price_ms") or {}).items())
    return f"yes (KL after: {step['after']['mean_kl']:.4f}" + (f"; costs {price}" if price else "") + ")"
