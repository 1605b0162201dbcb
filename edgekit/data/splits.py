"""Train/val splits (train/ and val/ folders, or a seeded stratified --val-split) and listing the images a request names."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

from ..classes import folder_class_set
from ..core import ClassSet, DataError, UsageError
from .folders import _image_files, _is, bundled_images, labelled_folder
from .images import ImageSet, LabelledImage, make_image_set
from .overlap import _overlap

TRAIN, VAL = "train", "val"
_SPLIT_FOLDERS = {TRAIN: ("train", "training"), VAL: ("val", "valid", "validation")}


def split_folders(root: Path) -> Optional[dict[str, Path]]:
    """{'train': ..., 'val': ...} when ``root`` holds both split folders, else None."""
    found = {}
    for split, names in _SPLIT_FOLDERS.items():
        for name in names:
            if (Path(root) / name).is_dir():
                found[split] = Path(root) / name
                break
    return found if len(found) == 2 else None


def _class_folder_names(folder: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder) if not e.name.startswith(".") and _is(e, "dir", folder)]
    except OSError:
        return []


def class_folders_of(root: Path) -> Optional[ClassSet]:
    """The classes named by the class folders of ``root`` (both splits where it has them),
    whatever the names are (numbers too); None for a flat folder."""
    root = Path(root)
    folders = split_folders(root)
    names = set()
    for folder in (folders.values() if folders else (root,)):
        names |= set(_class_folder_names(folder))
    return folder_class_set(sorted(names), root) if names else None


def split_images(images: Sequence[LabelledImage], fraction: float, seed: int) -> dict[str, list[LabelledImage]]:
    """A seeded, stratified split: ``fraction`` of every class (at least one image of a
    class with two or more) is validation. Which file goes where depends only on its
    name, the seed and the fraction, not on listing order."""
    by_class: dict[Optional[int], list[LabelledImage]] = {}
    for image in images:
        by_class.setdefault(image.labels[0] if image.labels else None, []).append(image)
    parts: dict[str, list[LabelledImage]] = {TRAIN: [], VAL: []}
    for members in by_class.values():
        ranked = sorted(members, key=lambda i: hashlib.sha256(f"{seed}:{i.path.parent.name}/{i.path.name}".encode()).hexdigest())
        n_val = min(len(ranked) - 1, max(1, round(len(ranked) * fraction))) if len(ranked) > 1 else 0
        parts[VAL] += ranked[:n_val]
        parts[TRAIN] += ranked[n_val:]
    return {k: sorted(v, key=lambda i: str(i.path)) for k, v in parts.items()}


def resolve_images(
    data_dir: Optional[Path] = None,
    labels_file: Optional[Path] = None,
    views_per_image: int = 16,
    limit: Optional[int] = None,
    view_offset: int = 0,
    view_stride: int = 1,
    seed: int = 0,
    split: Optional[str] = None,
    val_split: Optional[float] = None,
    classes: Optional[ClassSet] = None,
) -> ImageSet:
    """Bundled photos by default, else ``data_dir`` (its ``split`` where it has splits:
    train/ and val/ folders, or ``val_split``); ``limit`` caps the files with a seeded
    random sample (kept in path order). Labels index ``classes`` when given."""
    if labels_file is not None and data_dir is None:
        raise UsageError("a label file goes with an image folder (--labels with --data)")
    space: Optional[ClassSet] = None
    if data_dir is None:
        images = bundled_images()
        source = f"bundled photos ({len(images)})"
    else:
        images, space, source = _data_images(Path(data_dir), labels_file, split, val_split, seed, classes)
    if limit is not None and limit < len(images):
        import random

        images = sorted(random.Random(seed).sample(images, limit), key=lambda i: str(i.path))
        source += f", {limit} sampled"
    which = "" if (view_offset, view_stride) == (0, 1) else (" odd" if view_offset % 2 else " even")
    description = f"{source} x {views_per_image}{which} views"
    return make_image_set(images, views_per_image, description, view_offset, view_stride, space)


def _data_images(
    root: Path, labels_file: Optional[Path], split: Optional[str], val_split: Optional[float], seed: int, classes: Optional[ClassSet],
) -> tuple[list[LabelledImage], Optional[ClassSet], str]:
    folders = split_folders(root) if root.is_dir() else None
    if folders is not None:
        if val_split is not None:
            raise UsageError(f"{root} already has {folders[TRAIN].name}/ and {folders[VAL].name}/ folders; --val-split is for a tree without them")
        if labels_file is not None:
            raise UsageError(f"{root} has {folders[TRAIN].name}/ and {folders[VAL].name}/ class folders; --labels is for a flat folder")
        every_class = sorted(set(_class_folder_names(folders[TRAIN])) | set(_class_folder_names(folders[VAL])))
        chosen = folders[split or VAL]
        _check_split_not_empty(folders, split or VAL)
        images, space = labelled_folder(chosen, None, classes, every_class)
        if space is not None and space.source.startswith("class folders"):
            space = ClassSet(space.count, f"class folders of {root}", space.names)
        other = folders[TRAIN if chosen == folders[VAL] else VAL]
        other_files = [p for d in sorted(_class_folder_names(other)) for p in _image_files(other / d)]
        val_files, train_files = ([i.path for i in images], other_files) if chosen == folders[VAL] else (other_files, [i.path for i in images])
        note = _overlap(val_files, train_files, f"{folders[VAL].name}/", f"{folders[TRAIN].name}/", root)
        return images, space, f"{chosen} ({len(images)} images, the {split or VAL} split{'; ' + note if note else ''})"
    images, space = labelled_folder(root, labels_file, classes)
    if split is None or val_split is None:
        return images, space, f"{root} ({len(images)} images)"
    if any(i.labels is None for i in images):
        raise DataError(f"--val-split splits labelled images by class; {root} has unlabelled images")
    parts = split_images(images, val_split, seed)
    if not parts[split]:
        raise DataError(f"the {split} split of {root} is empty ({len(images)} images, --val-split {val_split})")
    note = _overlap([i.path for i in parts[VAL]], [i.path for i in parts[TRAIN]], "the val split", "the train split", root)
    return parts[split], space, f"{root} ({len(parts[split])} images, the {split} split: --val-split {val_split}, seed {seed}{'; ' + note if note else ''})"


def _check_split_not_empty(folders: dict[str, Path], split: str) -> None:
    """An empty validation split is refused before any work."""
    if split == VAL and not any(_image_files(folders[VAL] / d) for d in _class_folder_names(folders[VAL])):
        raise DataError(f"the validation split {folders[VAL]} holds no images in class folders")
