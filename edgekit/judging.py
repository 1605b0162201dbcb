"""Worker outputs -> results rows: joined on each view's identity, judged against the
baseline, with every backend that failed kept as a row that says why.

Shared by ``edgekit bench`` (the baseline is the PyTorch worker's logits) and the
on-device runner (the baseline travels in the bundle). Torch-free.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .core import AccuracyStats, Artifact, BenchResult, ClassSet
from .data import ImageSet, imagenet_classes, skipped_summary
from .evaluation import BackendParity, LogitsFile, evaluate
from .worker import WorkerOutput, bench_result

IMAGENET_CLASSES = 1000
SKIPPED_LISTED = 50  # files named in the results document; the count covers all


@dataclass(frozen=True)
class Judged:
    results: tuple[BenchResult, ...]
    parity: tuple[BackendParity, ...]
    images: dict[str, Any]  # the results document's "images" section
    evaluated: int  # views every backend evaluated


def top1_note(artifact: Artifact, classes: Optional[int], labelled: bool, label_space: Optional[ClassSet] = None) -> Optional[str]:
    """Why top-1 against the labels does not apply to this model, or None when it does.
    ``label_space``: the labels' class set (None: ImageNet-1k)."""
    source = artifact.manifest.get("model", {}).get("weights_source") or {}
    if source.get("kind") == "random-init":
        return "not applicable: random-init weights"
    expected = label_space.count if label_space is not None else IMAGENET_CLASSES
    if labelled and classes is not None and classes != expected:
        what = label_space.describe() if label_space is not None else "ImageNet-1k classes"
        return f"not applicable: the model has {classes} outputs, the labels are {what}"
    if labelled and label_space is None and not artifact.classes.is_imagenet and artifact.classes.count == IMAGENET_CLASSES:
        return f"not applicable: the model's 1000 classes are {artifact.classes.source}, the labels ImageNet-1k's"
    return None


def judge(
    artifact: Artifact,
    image_set: ImageSet,
    order: Sequence[str],
    outputs: dict[str, WorkerOutput],
    errors: dict[str, str],
    baseline: Optional[tuple[str, LogitsFile]] = None,
    **environment: Any,
) -> Judged:
    """Results rows for ``order`` (the backends asked for), from the workers that ran
    (``outputs``) and the ones that failed (``errors``). ``baseline`` names the logits the
    others are compared with; it joins the evaluation even when it is not a row itself."""
    logits = {baseline[0]: baseline[1]} if baseline is not None else {}  # the baseline first, as parity tables list it
    logits.update((name, out.logits) for name, out in outputs.items())
    views = image_set.view_table()
    classes = next((f.classes for f in logits.values()), None)
    note = top1_note(artifact, classes, views.labels is not None, image_set.label_space)
    class_names = image_set.class_names
    if class_names is None and views.labels is not None and note is None:  # labels are ImageNet-1k indices
        class_names = imagenet_classes()[1]
    evaluation = evaluate(logits, views, baseline[0] if baseline is not None else None, note, class_names=class_names)

    label_description = image_set.label_space.describe() if image_set.label_space is not None else "1000 classes (ImageNet-1k)"
    skipped = _skipped(outputs.values())
    if skipped:
        warnings.warn(skipped_summary(skipped) + "; excluded from every backend alike", stacklevel=2)
    from .data.decode import census

    flattening = census(sorted({str(v.image.path) for v in image_set.views}))  # headers only, ~0.1 ms a file: what flattening to RGB did
    if flattening.summary():
        warnings.warn(flattening.summary(), stacklevel=2)
    results = []
    for name in order:
        if name in errors:
            results.append(BenchResult.failed(artifact.model_name, name, artifact.manifest.get("variant", "fp32"), artifact.key, errors[name], dict(environment)))
        elif name in outputs:
            accuracy: Optional[AccuracyStats] = evaluation.accuracy.get(name)
            if accuracy is not None and views.labels is not None:
                accuracy = dataclasses.replace(accuracy, classes=label_description)
            results.append(bench_result(outputs[name].result, artifact, name, accuracy, **environment))
    files = {path for _, path, _ in skipped}
    images = {
        "description": image_set.description,
        "count": len(image_set),
        "files": image_set.file_count,
        "identity": image_set.identity,
        "labelled": image_set.labelled,
        "images_evaluated": evaluation.evaluated,
        "files_evaluated": image_set.file_count - len(files),
        "images_skipped": len({s[0] for s in skipped}),
        "files_skipped": len(files),
        "skipped_files": [{"file": path, "reason": reason} for path, reason in list(_reasons(skipped).items())[:SKIPPED_LISTED]],
        "flattening": flattening.to_dict(),
        "top1_note": note,
        "classes": (image_set.label_space.to_dict() if image_set.label_space is not None else {"count": 1000, "source": "imagenet-1k"}) if image_set.labelled else None,
        "model_classes": artifact.classes.describe(),
        "calibration": _calibration(artifact),
    }
    return Judged(tuple(results), evaluation.parity, images, evaluation.evaluated)


def _calibration(artifact: Artifact) -> Optional[str]:
    """Which images set the INT8 ranges (or trained the model), so a results file says
    that evaluation used other ones."""
    parts = []
    for step in artifact.manifest.get("steps", []):
        if step.get("step") == "finetune":
            parts.append(f"fine-tuned on {step['train']['description']}")
        elif step.get("step") == "quantize" and step.get("calibration"):
            parts.append(f"INT8 calibrated on {step['calibration']['description']}")
    return "; ".join(parts) or None


def _skipped(outputs) -> list[tuple[int, str, str]]:
    """Every view some worker could not read (one entry per view)."""
    seen: dict[int, tuple[int, str, str]] = {}
    for out in outputs:
        for index, path, reason in out.skipped:
            seen.setdefault(int(index), (int(index), path, reason))
    return [seen[i] for i in sorted(seen)]


def _reasons(skipped: Sequence[tuple[int, str, str]]) -> dict[str, str]:
    reasons: dict[str, str] = {}
    for _, path, reason in skipped:
        reasons.setdefault(path, reason)
    return reasons
