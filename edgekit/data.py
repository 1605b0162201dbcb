"""Images in, model inputs out: bundled photos, image folders, deterministic views, batches.

Only numpy and Pillow are used here (no torch), so a process that runs one backend, and
the on-device runner, can load images without PyTorch. For PIL images the result equals
torchvision's Resize + CenterCrop + Normalize.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .core import DataError, Preprocessing

SAMPLES_DIR = Path(__file__).parent / "samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe"}
_WNID = re.compile(r"^n\d{8}$")

# A view is a crop of the photo (fraction of each side, where it sits) with an optional
# horizontal flip, taken before the model's own resize + centre crop. View 0 is exactly
# the standard evaluation preprocessing. The order spreads the first few views out.
_VIEW_SCALES = (1.0, 0.85, 0.7)
_VIEW_POSITIONS = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0))
VIEW_GRID: tuple[tuple[float, float, float, bool], ...] = tuple(
    (scale, fx, fy, flip)
    for flip in (False, True)
    for scale in _VIEW_SCALES
    for (fx, fy) in _VIEW_POSITIONS
    if not (scale == 1.0 and (fx, fy) != (0.5, 0.5))  # at full scale every position is the same
)
MAX_VIEWS = len(VIEW_GRID)


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    labels: Optional[tuple[int, ...]]  # acceptable ImageNet indices, first is primary; None if unlabelled


@dataclass(frozen=True)
class ImageView:
    image: LabelledImage
    view: int  # index into VIEW_GRID


@dataclass(frozen=True)
class ImageSet:
    """An ordered list of views; ``identity`` hashes which files and views it holds."""

    views: tuple[ImageView, ...]
    description: str

    @property
    def labelled(self) -> bool:
        return all(v.image.labels is not None for v in self.views)

    @property
    def identity(self) -> str:
        h = hashlib.sha256()
        for v in self.views:
            h.update(f"{v.image.path.name}:{v.view};".encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.views)


# --------------------------------------------------------------------------- class names


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, names) of the 1000 ImageNet-1k classes in index order."""
    wnids, names = [], []
    for line in (SAMPLES_DIR / "imagenet_classes.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        _, wnid, name = line.split("\t")
        wnids.append(wnid)
        names.append(name)
    return tuple(wnids), tuple(names)


def parse_label(text: str) -> int:
    text = text.strip()
    if _WNID.match(text):
        try:
            return imagenet_classes()[0].index(text)
        except ValueError:
            raise DataError(f"{text} is not an ImageNet-1k synset") from None
    if text.isdigit() and int(text) < 1000:
        return int(text)
    raise DataError(f"label {text!r} is neither a class index 0-999 nor an ImageNet synset id")


# --------------------------------------------------------------------------- sources


def bundled_images() -> list[LabelledImage]:
    meta = json.loads((SAMPLES_DIR / "labels.json").read_text())
    return [
        LabelledImage(SAMPLES_DIR / name, tuple(entry["labels"]))
        for name, entry in meta.items()
        if not name.startswith("_")
    ]


def folder_images(root: Path, labels_file: Optional[Path] = None) -> list[LabelledImage]:
    """Images from an ImageNet-style class-folder tree or a flat folder (+ optional label file).

    Class folders named by WordNet synset (``n01440764``) or class index give labels;
    a flat folder takes labels from ``labels_file`` (lines ``<file name> <label>``, label
    a class index or synset; Kaggle's LOC_val_solution.csv for ILSVRC2012 val reads as
    is), else none.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs and labels_file is None:
        images = []
        for d in subdirs:
            label = _folder_label(d.name)
            images += [LabelledImage(p, None if label is None else (label,)) for p in _image_files(d)]
    else:
        table = _read_label_file(labels_file) if labels_file else None
        images = []
        for p in _image_files(root):
            label = table.get(p.name, table.get(p.stem)) if table is not None else None
            if table is not None and label is None:
                raise DataError(f"{labels_file} has no label for {p.name}")
            images.append(LabelledImage(p, None if label is None else (label,)))
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    return images


def _folder_label(name: str) -> Optional[int]:
    if _WNID.match(name) or (name.isdigit() and int(name) < 1000):
        return parse_label(name)
    return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_label_file(path: Path) -> dict[str, int]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DataError(f"cannot read label file {path}: {e.strerror}") from None
    table = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#") or (number == 1 and line.startswith("ImageId")):
            continue  # blank, comment, or the header of Kaggle's LOC_val_solution.csv
        parts = re.split(r"[\s,]+", line.strip())
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected '<file name> <label>', got {line.strip()!r}")
        table[parts[0]] = parse_label(parts[1])
    return table


# Calibration and held-out evaluation on the same photos use disjoint views.
EVEN_VIEWS = (0, 2)  # (offset, stride): views 0, 2, 4...
ODD_VIEWS = (1, 2)


def make_image_set(
    images: Sequence[LabelledImage],
    views_per_image: int,
    description: str,
    view_offset: int = 0,
    view_stride: int = 1,
) -> ImageSet:
    """Views ``offset, offset + stride, ...`` of every image (at most ``views_per_image``)."""
    available = len(range(view_offset, MAX_VIEWS, view_stride))
    if not 1 <= views_per_image <= available:
        raise DataError(f"views per image must be between 1 and {available}, got {views_per_image}")
    indices = range(view_offset, view_offset + views_per_image * view_stride, view_stride)
    views = tuple(ImageView(img, v) for img in images for v in indices)
    return ImageSet(views=views, description=description)


def resolve_images(
    data_dir: Optional[Path] = None,
    labels_file: Optional[Path] = None,
    views_per_image: int = 16,
    limit: Optional[int] = None,
    view_offset: int = 0,
    view_stride: int = 1,
    seed: Optional[int] = None,
) -> ImageSet:
    """Bundled photos by default, else ``data_dir``; ``limit`` caps the files (a seeded
    random sample when ``seed`` is given, else the first ones)."""
    images = bundled_images() if data_dir is None else folder_images(data_dir, labels_file)
    if limit is not None and limit < len(images):
        if seed is None:
            images = images[:limit]
        else:
            import random

            images = sorted(random.Random(seed).sample(images, limit), key=lambda i: str(i.path))
    source = f"bundled photos ({len(images)})" if data_dir is None else f"{data_dir} ({len(images)} images)"
    which = "" if (view_offset, view_stride) == (0, 1) else (" odd" if view_offset % 2 else " even")
    description = f"{source} x {views_per_image}{which} views"
    return make_image_set(images, views_per_image, description, view_offset, view_stride)


# --------------------------------------------------------------------------- preprocessing

_RESAMPLING = {
    "nearest": 0,  # PIL.Image.Resampling values, spelled out to import PIL lazily
    "bilinear": 2,
    "bicubic": 3,
    "lanczos": 1,
    "box": 4,
    "hamming": 5,
}


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None


def preprocess(view: ImageView, prep: Preprocessing) -> np.ndarray:
    """One view as a CHW float32 array ready for the model."""
    from PIL import Image

    image = _open_rgb(view.image.path)
    scale, fx, fy, flip = VIEW_GRID[view.view]
    if scale < 1.0:
        w, h = image.size
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        left, top = int(round(fx * (w - cw))), int(round(fy * (h - ch)))
        image = image.crop((left, top, left + cw, top + ch))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = _resize_short_side(image, prep.resize_size, _RESAMPLING[prep.interpolation])
    image = _center_crop(image, prep.input_size)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _resize_short_side(image, size: int, resample: int):
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision truncates the same way
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), resample=resample)


def _center_crop(image, size: int):
    w, h = image.size
    if w < size or h < size:
        image = _resize_short_side(image, size, _RESAMPLING["bilinear"])
        w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def iter_batches(
    image_set: ImageSet, prep: Preprocessing, batch_size: int, skip_unreadable: bool = True
) -> Iterator[tuple[np.ndarray, list[Optional[tuple[int, ...]]]]]:
    """Stream (NCHW batch, labels) without holding the whole set in memory.

    Unreadable files are skipped with a warning; a set with none readable is an error.
    """
    batch: list[np.ndarray] = []
    labels: list[Optional[tuple[int, ...]]] = []
    read = 0
    for view in image_set.views:
        try:
            batch.append(preprocess(view, prep))
        except DataError as e:
            if not skip_unreadable:
                raise
            warnings.warn(str(e), stacklevel=2)
            continue
        labels.append(view.image.labels)
        read += 1
        if len(batch) == batch_size:
            yield np.stack(batch), labels
            batch, labels = [], []
    if batch:
        yield np.stack(batch), labels
    if read == 0:
        raise DataError(f"none of the images in {image_set.description} could be read")


def load_all(image_set: ImageSet, prep: Preprocessing) -> tuple[np.ndarray, list[Optional[tuple[int, ...]]]]:
    """The whole set as one array (for the small evaluation sets bench uses)."""
    arrays, labels = [], []
    for x, y in iter_batches(image_set, prep, batch_size=64):
        arrays.append(x)
        labels += y
    return np.concatenate(arrays), labels
