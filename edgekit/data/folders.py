"""Image sources: the bundled photos, and image folders (class folders or a flat folder with a label file) listed as labelled images."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

from ..classes import folder_class_set, label_index, name_index
from ..core import ClassSet, DataError
from .images import IMAGE_SUFFIXES, SAMPLES_DIR, UNREAD_IMAGE_SUFFIXES, LabelledImage
from .labels import _WNID, _read_label_file, parse_label


def bundled_images() -> list[LabelledImage]:
    meta = json.loads((SAMPLES_DIR / "labels.json").read_text())
    return [
        LabelledImage(SAMPLES_DIR / name, tuple(entry["labels"]))
        for name, entry in meta.items()
        if not name.startswith("_")
    ]


def folder_images(root: Path, labels_file: Optional[Path] = None, classes: Optional[ClassSet] = None) -> list[LabelledImage]:
    """The images of ``root`` (see labelled_folder), without their class set."""
    return labelled_folder(root, labels_file, classes)[0]


def labelled_folder(
    root: Path, labels_file: Optional[Path] = None, classes: Optional[ClassSet] = None, class_folders: Optional[Sequence[str]] = None,
) -> tuple[list[LabelledImage], Optional[ClassSet]]:
    """Images from a class-folder tree or a flat folder (+ optional label file), and the
    class set their labels index (None: ImageNet-1k, or unlabelled).

    Class folders: named by ``classes`` when given (the model's or --classes); else
    ImageNet synsets or indices; else they are the classes, in sorted order (torchvision's
    ImageFolder), ``class_folders`` naming them all when a split lacks some. A flat folder
    takes labels from ``labels_file``, else none. Label files: '<file> <label>' lines or
    CSV (label: a class name of ``classes``, an index, or an ImageNet synset), Kaggle's
    LOC_val_solution.csv, or the devkit's ILSVRC2012_validation_ground_truth.txt (one
    devkit class id per line for ILSVRC2012_val_<n> files; its meta.mat beside it).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list image folder {root}: {e.strerror}") from None
    subdirs = [Path(e.path) for e in entries if not e.name.startswith(".") and _is(e, "dir", root)]
    custom = classes if classes is not None and not classes.is_imagenet else None
    space: Optional[ClassSet] = custom
    if subdirs and labels_file is None:
        names = [d.name for d in subdirs]
        if custom is not None and not custom.named and all(_WNID.match(n) for n in names):
            space = None  # synset folders are ImageNet labels, whatever the model's head
        elif custom is None and not all(_folder_label(n) is not None for n in names) and (classes is None or not any(_folder_label(n) is not None for n in names)):
            space = folder_class_set(sorted(set(class_folders or ()) | set(names)), root)
        images = []
        for d in subdirs:
            if space is not None:
                label: Optional[int] = _space_label(d.name, space, root)
            else:
                label = _folder_label(d.name)
            images += [LabelledImage(p, None if label is None else (label,)) for p in _image_files(d)]
    else:
        files = _image_files(root)
        table, space = _read_label_file(Path(labels_file), files, custom) if labels_file else (None, None)
        images = []
        missing = []
        for p in files:
            label = table.get(p.name, table.get(p.stem)) if table is not None else None
            if table is not None and label is None:
                missing.append(p.name)
                continue
            images.append(LabelledImage(p, None if label is None else (label,)))
        if missing:
            raise DataError(f"{labels_file} has no label for {len(missing)} of {len(files)} images (e.g. {missing[0]}); label every image or move the others out")
    _note_unread_images(root, subdirs if subdirs and labels_file is None else [root])
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    return images, space


def _folder_label(name: str) -> Optional[int]:
    if _WNID.match(name) or (name.isdigit() and int(name) < 1000):
        return parse_label(name)
    return None


def _image_files(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise DataError(f"cannot list image folder {folder}: {e.strerror}") from None
    images = [e for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    return sorted(Path(e.path) for e in images if _is(e, "file", folder))


def _is(entry: os.DirEntry, kind: str, folder: Path) -> bool:
    """``entry.is_dir()`` / ``is_file()``, except that an entry that cannot be followed (a
    symlink loop, a link into a folder that cannot be read) is False with a warning naming
    it, instead of an OSError."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as e:
        if entry.path not in _UNFOLLOWABLE:  # said once, however often the folder is listed
            _UNFOLLOWABLE.add(entry.path)
            warnings.warn(f"skipped {entry.path}: it cannot be followed ({e.strerror})", stacklevel=3)
        return False


_UNFOLLOWABLE: set[str] = set()


def _space_label(folder: str, space: ClassSet, root: Path) -> int:
    if space.named:
        index = name_index(space).get(folder)
        if index is not None:
            return index
        raise DataError(f"class folder {folder!r} of {root} is not one of the {space.count} classes of {space.source}")
    return label_index(folder, space, f"class folder {root / folder}")


def _note_unread_images(root: Path, folders: Sequence[Path]) -> None:
    """One warning per listed folder tree naming how many files of which image formats
    edgekit leaves out (HEIC, RAW...), so none is dropped without a word."""
    counts: dict[str, int] = {}
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            suffix = os.path.splitext(e.name)[1].lower()
            if suffix in UNREAD_IMAGE_SUFFIXES:
                counts[suffix] = counts.get(suffix, 0) + 1
    key = str(root)
    if counts and key not in _NOTED_UNREAD:
        _NOTED_UNREAD.add(key)
        listed = ", ".join(f"{n} {suffix}" for suffix, n in sorted(counts.items()))
        total = sum(counts.values())
        warnings.warn(
            f"{total} file{'s' if total != 1 else ''} in {root} not read ({listed}): edgekit reads {', '.join(sorted(IMAGE_SUFFIXES))}; "
            "convert them (e.g. to JPEG) to include them", stacklevel=3,
        )


_NOTED_UNREAD: set[str] = set()
