"""The finetuned step: transfer learning to the user's classes (edgekit.transforms.finetune).

It starts every chain it is in (``finetuned``, ``finetuned+int8``, ``finetuned+pruned``):
the parent is the exported pretrained model; the child is a new model, with a head for
the classes of --data and weights trained on its training split. Its checkpoint
(``finetuned.pt``, weights_only-loadable, class names inside) becomes the model's
weights, so the PyTorch baseline, INT8 calibration and pruning of later steps all start
from the fine-tuned network, and `edgekit export MODEL --weights finetuned.pt` rebuilds it.

Options: the [finetune] group, --data / --labels / --val-split, --classes, --seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..artifacts import artifact_folder, build_artifact_folder
from ..core import ONNX_NAME, Artifact, ClassSet, DataError, UsageError, stable_hash
from ..data import ImageSet, ImageSettings
from ..options import Settings
from ..progress import Progress
from .export import ModelSettings
from .lineage import require_fp32

FINETUNE_VERSION = 1
CHECKPOINT_NAME = "finetuned.pt"


def finetune_options(settings: Settings):
    from ..transforms.finetune import FinetuneOptions

    return settings.bind(FinetuneOptions)


def training_split(settings: Settings) -> tuple[ImageSet, ImageSet, ClassSet]:
    """(training images, validation images, their classes) of --data; refuses data without
    a validation split, an empty split, and splits that share files."""
    from ..classes import read_classes_file
    from ..data import class_folders_of, split_folders

    images = settings.bind(ImageSettings)
    data = images.data
    if data is None:
        raise UsageError("fine-tuning trains on --data: a labelled folder with train/ and val/, or one tree with --val-split 0.2")
    if images.val_split is None and split_folders(Path(data)) is None:
        raise UsageError(f"{data} has no train/ and val/ folders: give --val-split (e.g. 0.2) to hold out a seeded part of each class")
    names = settings.bind(ModelSettings).classes
    classes = read_classes_file(names) if names is not None else class_folders_of(Path(data))
    train = images.training().resolve(classes)
    val = dataclasses.replace(images, views=1, limit=None).evaluation().resolve(classes)
    space = classes or train.label_space or val.label_space
    if space is None:
        raise DataError(f"{data}: its labels are ImageNet-1k synsets or indices; fine-tuning learns a head for your own classes (name them with class folders or --classes)")
    if not train.labelled or not val.labelled:
        raise DataError(f"{data}: every training and validation image needs a label")
    present = {v.image.labels[0] for v in train.views}
    if space.count < 2 or len(present) < 2:
        only = f"{space.count} class" if space.count < 2 else f"images of {len(present)} of its {space.count} classes"
        raise DataError(f"the training split of {data} has {only}; fine-tuning a classifier needs at least 2 classes (a single class scores 100% by construction)")
    shared = {v.image.path.resolve() for v in train.views} & {v.image.path.resolve() for v in val.views}
    if shared:
        raise DataError(f"the validation split shares {len(shared)} files with training (e.g. {sorted(shared)[0]})")
    return train, val, space


def run(parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
    train, val, classes = training_split(settings)
    return finetuned_artifact(parent, train, val, classes, finetune_options(settings), root, progress)


def _items(images: ImageSet) -> list[tuple[str, int]]:
    return [(str(v.image.path), int(v.image.labels[0])) for v in images.views]


def finetuned_artifact(
    parent: Artifact, train: ImageSet, val: ImageSet, classes: ClassSet, options, root: Path = Path("exported"),
    progress: Progress = lambda stage, done, total: None,
) -> tuple[Artifact, bool]:
    """A new model: the parent's network with a ``classes`` head, trained on ``train`` and
    chosen on ``val`` (reused when already built)."""
    require_fp32(parent)
    if parent.manifest.get("variant", "fp32") != "fp32":
        raise UsageError(f"fine-tuning starts from the exported model, not from {parent.manifest['variant']}")
    if parent.manifest["model"].get("weights_source") is None:
        raise UsageError(f"{parent.path} was imported from an ONNX file: there is no PyTorch network to fine-tune")
    what = {
        "parent": parent.key, "finetune": dataclasses.asdict(options), "classes": classes.identity,
        "train": train.identity, "val": val.identity, "version": FINETUNE_VERSION,
    }
    key = stable_hash(what)
    final = artifact_folder(root, parent.model_name, key).resolve()
    resume_file = final.parent / f".finetune-{key}.resume.pt"

    def populate(staging: Path) -> dict[str, Any]:
        import torch

        from ..models import find_head, load_from_manifest, with_new_head
        from ..onnx_export import check_onnx_file, measure_parity, torch_export_module
        from ..transforms.finetune import finetune
        from .structural import _export_options
        from ..data import bundled_images, make_image_set

        progress(f"loading {parent.model_name}", None, None)
        loaded = with_new_head(load_from_manifest(parent.manifest), classes)
        head = find_head(loaded.module, classes.count)
        resume_file.parent.mkdir(parents=True, exist_ok=True)
        report = finetune(loaded.module, head, _items(train), _items(val), loaded.spec.preprocessing, options, progress, resume_file)
        checkpoint = staging / CHECKPOINT_NAME
        torch.save({"state_dict": loaded.module.state_dict(), "edgekit": {
            "model": parent.model_name, "classes": list(classes.names), "best_val_top1": report.best_val_top1,
        }}, checkpoint)
        progress("exporting to ONNX", None, None)
        size = loaded.spec.preprocessing.input_size
        torch_export_module(loaded.module, size, staging / ONNX_NAME, _export_options(parent), parent.model_name)
        check_onnx_file(staging / ONNX_NAME)
        parity = measure_parity(loaded, staging / ONNX_NAME, make_image_set(bundled_images(), 2, "bundled photos (parity)"))
        m = parent.manifest
        model = {
            **m["model"],
            "num_classes": classes.count,
            "classes": classes.to_dict(),
            "weights_id": f"finetuned:{key}",
            "weights": f"fine-tuned from {m['model'].get('weights', 'the parent')} on {train.description}",
            "weights_source": {"kind": "file", "path": str(final / CHECKPOINT_NAME), "key": None},
            "reference": {"params_m": None, "gflops": None, "top1": None, "source": ""},
        }
        return {
            "model": model,
            "preprocessing": m["preprocessing"],
            "input": m["input"],
            "output": {**(m.get("output") or {}), "shape": [(m.get("output") or {}).get("shape", ["batch"])[0], classes.count]},
            "variant": "finetuned",
            "parent": {"key": parent.key, "path": str(parent.path)},
            "files": {"onnx": ONNX_NAME, "torch_state": CHECKPOINT_NAME},
            "steps": [*m.get("steps", []), {
                "step": "finetune", "parent": parent.key, "settings": dataclasses.asdict(options),
                "classes": classes.to_dict(), "train": {"description": train.description, "count": len(train), "files_hash": train.identity},
                "val": {"description": val.description, "count": len(val), "files_hash": val.identity},
            }],
            "finetune": report.to_dict(),
            "tools": m.get("tools", {}),
            "parity": parity,
        }

    artifact, reused = build_artifact_folder(root, parent.model_name, key, populate)
    resume_file.unlink(missing_ok=True)
    return artifact, reused


# --------------------------------------------------------------------------- how it describes itself


def describe(artifact: Artifact) -> list:
    """A line per epoch, the best one, and where the checkpoint is."""
    from . import duration

    report = artifact.manifest.get("finetune")
    if not report:
        return []
    lines = [
        f"epoch {epoch['epoch']:>3} {epoch['phase']:<5} loss {epoch['train_loss']:.3f}  train top-1 {epoch['train_top1']:5.1f}%  "
        f"val top-1 {epoch['val_top1']:6.2f}%  {epoch['seconds']:.0f} s"
        for epoch in report["history"]
    ]
    lines.append(
        f"best: epoch {report['best_epoch']}, val top-1 {report['best_val_top1']:.2f}% on {report['val_images']} images "
        f"({artifact.classes.count} classes, {report['train_images']} training images, {duration(report['seconds'])}"
        + (", stopped early" if report["stopped_early"] else "") + ")"
    )
    lines += _image_facts(report)
    lines.append(f"checkpoint: {artifact.path / artifact.manifest['files']['torch_state']}")
    return lines


def _image_facts(report: dict) -> list[str]:
    """The files left out (count, the first few, why) and what flattening to RGB did."""
    from ..data import skipped_summary

    lines = []
    skipped = report.get("skipped") or []
    for split, name in (("train", "training"), ("val", "validation")):
        files = [(0, s["file"], s["reason"]) for s in skipped if s["split"] == split]
        if files:
            lines.append(f"{name}: {skipped_summary(files)}")
    flattening = report.get("flattening") or {}
    if flattening.get("counts"):
        kinds = "; ".join(
            f"{count:,} {kind} ({', '.join(flattening['examples'].get(kind, []))}{', ...' if count > len(flattening['examples'].get(kind, [])) else ''})"
            for kind, count in flattening["counts"].items()
        )
        lines.append(f"flattened to RGB by {flattening['rule']}: {kinds}")
    if report.get("image_cache"):
        lines.append(report["image_cache"])
    return lines
