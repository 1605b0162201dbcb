"""Images in, model inputs out: bundled photos, image folders, deterministic views, batches.

Only numpy and Pillow are used here (no torch), so a process that runs one backend, and
the on-device runner, can load images without PyTorch. For PIL images the result equals
torchvision's Resize + CenterCrop + Normalize.

Every view has an identity: its index in the image set (which names its file, crop and
labels). Workers stream views from a views file, decode them in a small thread pool a
few batches ahead, and report each view they could not read by that index, so results
are joined on identity and memory stays flat however many images there are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence

import numpy as np

from .classes import folder_class_set, label_index, name_index
from .core import BackendUnavailableError, ClassSet, DataError, Preprocessing, UsageError

if TYPE_CHECKING:
    from .evaluation import ViewTable

SAMPLES_DIR = Path(__file__).parent / "samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe"}
_WNID = re.compile(r"^n\d{8}$")
_ILSVRC_VAL = re.compile(r"^ILSVRC2012_val_(\d{8})$")
VIEWS_FORMAT = "edgekit-views/1"
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # decoding runs beside the runtime's own threads
PREFETCH_BATCHES = 2

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
    labels: Optional[tuple[int, ...]]  # acceptable class indices (ImageNet's, or the set's), first is primary; None if unlabelled


@dataclass(frozen=True)
class ImageView:
    image: LabelledImage
    view: int  # index into VIEW_GRID

    @property
    def key(self) -> str:
        return f"{self.image.path}#{self.view}"


@dataclass(frozen=True)
class IndexedView:
    """A view and its index in its image set: the identity results are joined on."""

    index: int
    file: int  # index of its photo among the set's distinct files
    view: ImageView


@dataclass(frozen=True)
class ImageSet:
    """An ordered list of views; ``identity`` hashes which files and views it holds."""

    views: tuple[ImageView, ...]
    description: str
    class_names: Optional[tuple[str, ...]] = None  # what label indices mean; None: ImageNet-1k's classes
    label_space: Optional[ClassSet] = None  # the labels' class set when it is not ImageNet-1k

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

    def indexed(self) -> Iterator[IndexedView]:
        files: dict[Path, int] = {}
        for i, v in enumerate(self.views):
            yield IndexedView(i, files.setdefault(v.image.path, len(files)), v)

    @property
    def file_count(self) -> int:
        return len({v.image.path for v in self.views})

    def view_table(self) -> "ViewTable":
        """Photo index and acceptable labels of every view, for joining results."""
        import numpy as np

        from .evaluation import ViewTable, label_matrix

        names: dict[Path, int] = {}
        files = np.fromiter((names.setdefault(v.image.path, len(names)) for v in self.views), dtype=np.int64, count=len(self.views))
        labels = label_matrix([v.image.labels for v in self.views])
        return ViewTable(files=files, labels=labels, file_names=tuple(str(p) for p in names))

    def write_views_file(self, path: Path) -> Path:
        """One JSON line per view (after a header): what every worker of a run streams."""
        with open(path, "w") as f:
            f.write(json.dumps({"format": VIEWS_FORMAT, "description": self.description, "count": len(self.views)}) + "\n")
            for v in self.indexed():
                labels = list(v.view.image.labels) if v.view.image.labels is not None else None
                f.write(json.dumps([v.index, v.file, str(v.view.image.path), v.view.view, labels]) + "\n")
        return Path(path)


def read_views_file(path: Path) -> tuple[dict, Iterator[IndexedView]]:
    """(header, the views one by one) of a file written by ImageSet.write_views_file."""
    f = open(path)
    header = json.loads(f.readline())
    if header.get("format") != VIEWS_FORMAT:
        f.close()
        raise DataError(f"{path}: not an edgekit views file")

    def views() -> Iterator[IndexedView]:
        with f:
            for line in f:
                index, file, name, view, labels = json.loads(line)
                yield IndexedView(index, file, ImageView(LabelledImage(Path(name), tuple(labels) if labels is not None else None), view))

    return header, views()


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
    subdirs = [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
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
    return sorted(Path(e.path) for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)


def _space_label(folder: str, space: ClassSet, root: Path) -> int:
    if space.named:
        index = name_index(space).get(folder)
        if index is not None:
            return index
        raise DataError(f"class folder {folder!r} of {root} is not one of the {space.count} classes of {space.source}")
    return label_index(folder, space, f"class folder {root / folder}")


def _read_label_file(path: Path, files: Sequence[Path] = (), classes: Optional[ClassSet] = None) -> tuple[dict[str, int], Optional[ClassSet]]:
    """(file name -> label index, the class set when not ImageNet-1k). Without ``classes``,
    labels that are not all ImageNet synsets or indices are class names: sorted, they are
    the class set."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read label file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"label file {path} is not UTF-8 text (expected '<file name> <label>' lines)") from None
    content = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if classes is None and content and all(line.isdigit() for line in content):
        return _ground_truth_labels(path, content, files), None
    pairs = _label_pairs(path, lines)
    if classes is None:
        try:
            return {name: parse_label(text.split()[0]) for _, name, text in pairs}, None
        except DataError:
            classes = ClassSet(len({t for _, _, t in pairs}), f"labels of {path}", tuple(sorted({t for _, _, t in pairs})))
    return {name: label_index(text, classes, f"{path}:{number}") for number, name, text in pairs}, classes


def _label_pairs(path: Path, lines: Sequence[str]) -> list[tuple[int, str, str]]:
    """(line number, file name, label text) of '<file> <label>' lines or CSV rows; a
    header row (its first field not an image file name) is skipped."""
    pairs = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = [p.strip().strip('"') for p in (text.split(",", 1) if "," in text else text.split(None, 1))]
        if len(parts) < 2 or not parts[1]:
            raise DataError(f"{path}:{number}: expected '<file name> <label>', got {text[:80]!r}")
        if not pairs and os.path.splitext(parts[0])[1].lower() not in IMAGE_SUFFIXES and _is_header(parts):
            continue  # 'filename,label', Kaggle's 'ImageId,PredictionString'
        pairs.append((number, parts[0], parts[1]))
    return pairs


def _is_header(parts: Sequence[str]) -> bool:
    return parts[0].lower() in {"imageid", "image", "file", "filename", "file_name", "path", "name", "id", "image_id"}


def _ground_truth_labels(path: Path, ids: Sequence[str], files: Sequence[Path]) -> dict[str, int]:
    """ILSVRC2012_validation_ground_truth.txt: line n is the devkit class id (1-1000, the
    devkit's own order, not ImageNet's index order) of ILSVRC2012_val_<n>; meta.mat
    beside it maps the ids to synsets."""
    synsets = _devkit_synsets(path.parent / "meta.mat", path)
    table = {}
    for p in files:
        match = _ILSVRC_VAL.match(p.stem)
        if not match:
            raise DataError(f"{path} numbers images by line, but {p.name} is not named ILSVRC2012_val_<8 digits>")
        number = int(match.group(1))
        if not 1 <= number <= len(ids):
            raise DataError(f"{path} has {len(ids)} lines, none for {p.name}")
        class_id = int(ids[number - 1])
        if class_id not in synsets:
            raise DataError(f"{path}:{number}: class id {class_id} is not in {path.parent / 'meta.mat'}")
        table[p.name] = parse_label(synsets[class_id])
    return table


def _devkit_synsets(meta: Path, ground_truth: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID from the devkit's meta.mat (a MATLAB file: read with scipy)."""
    if not meta.is_file():
        raise DataError(
            f"{ground_truth} numbers classes by the ILSVRC2012 devkit's ids; put the devkit's data/meta.mat beside it "
            "(or label the images with LOC_val_solution.csv or class folders)"
        )
    try:
        from scipy.io import loadmat
    except ImportError:
        raise BackendUnavailableError(f"reading {meta} (the ILSVRC2012 devkit's class list) needs scipy: pip install scipy") from None
    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["ILSVRC2012_ID"]) <= 1000}
    except Exception as e:  # scipy raises several types for a file that is not the devkit's
        raise DataError(f"{meta} is not the ILSVRC2012 devkit's meta.mat ({type(e).__name__})") from None


# Calibration and held-out evaluation on the same photos use disjoint views.
EVEN_VIEWS = (0, 2)  # (offset, stride): views 0, 2, 4...
ODD_VIEWS = (1, 2)


def make_image_set(
    images: Sequence[LabelledImage],
    views_per_image: int,
    description: str,
    view_offset: int = 0,
    view_stride: int = 1,
    label_space: Optional[ClassSet] = None,
) -> ImageSet:
    """Views ``offset, offset + stride, ...`` of every image (at most ``views_per_image``)."""
    available = len(range(view_offset, MAX_VIEWS, view_stride))
    if not 1 <= views_per_image <= available:
        raise DataError(f"views per image must be between 1 and {available}, got {views_per_image}")
    indices = range(view_offset, view_offset + views_per_image * view_stride, view_stride)
    views = tuple(ImageView(img, v) for img in images for v in indices)
    if label_space is not None and label_space.is_imagenet:
        label_space = None
    names = None
    if label_space is not None:
        names = label_space.names or tuple(f"class {i}" for i in range(label_space.count))
    return ImageSet(views=views, description=description, class_names=names, label_space=label_space)


# --------------------------------------------------------------------------- splits

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
        return [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
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
        return images, space, f"{chosen} ({len(images)} images, the {split or VAL} split)"
    images, space = labelled_folder(root, labels_file, classes)
    if split is None or val_split is None:
        return images, space, f"{root} ({len(images)} images)"
    if any(i.labels is None for i in images):
        raise DataError(f"--val-split splits labelled images by class; {root} has unlabelled images")
    parts = split_images(images, val_split, seed)
    if not parts[split]:
        raise DataError(f"the {split} split of {root} is empty ({len(images)} images, --val-split {val_split})")
    return parts[split], space, f"{root} ({len(parts[split])} images, the {split} split: --val-split {val_split}, seed {seed})"


def _check_split_not_empty(folders: dict[str, Path], split: str) -> None:
    """An empty validation split is refused before any work."""
    if split == VAL and not any(_image_files(folders[VAL] / d) for d in _class_folder_names(folders[VAL])):
        raise DataError(f"the validation split {folders[VAL]} holds no images in class folders")


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ImageRequest:
    """Which images, before they are listed: resolve() lists them (and fails on a bad folder)."""

    data_dir: Optional[Path] = None
    labels_file: Optional[Path] = None
    views_per_image: int = 1
    limit: Optional[int] = None
    view_offset: int = 0
    view_stride: int = 1
    seed: int = 0
    split: Optional[str] = None  # TRAIN or VAL where the folder has splits
    val_split: Optional[float] = None

    def resolve(self, classes: Optional[ClassSet] = None) -> ImageSet:
        """List the images; their labels index ``classes`` (the model's) when given."""
        return resolve_images(
            self.data_dir, self.labels_file, self.views_per_image, self.limit, self.view_offset, self.view_stride, self.seed,
            self.split, self.val_split, classes,
        )

    @property
    def has_training_split(self) -> bool:
        return self.data_dir is not None and (self.val_split is not None or split_folders(Path(self.data_dir)) is not None)


HELD_OUT_VIEWS = len(range(EVEN_VIEWS[0], MAX_VIEWS, EVEN_VIEWS[1]))  # 11


def evaluation_images(
    data_dir: Optional[Path] = None, labels_file: Optional[Path] = None, views: Optional[int] = None, limit: Optional[int] = None, seed: int = 0,
    val_split: Optional[float] = None,
) -> ImageRequest:
    """The images bench, recipes and bundles evaluate on. A folder: ``views`` consecutive
    views per file (default 1, the standard centre crop), of its validation split where it
    has one. The bundled photos: their held-out (even) views, which INT8 calibration never
    sees (default all 11)."""
    if data_dir is not None:
        return ImageRequest(data_dir, labels_file, views or 1, limit, seed=seed, split=VAL, val_split=val_split)
    if labels_file is not None:
        raise UsageError("a label file goes with an image folder (--labels with --data)")
    if val_split is not None:
        raise UsageError("--val-split splits a --data folder")
    return ImageRequest(views_per_image=views or HELD_OUT_VIEWS, limit=limit, view_offset=EVEN_VIEWS[0], view_stride=EVEN_VIEWS[1], seed=seed)


HELD_OUT_EVALUATION = evaluation_images()


def training_images(data_dir: Path, labels_file: Optional[Path] = None, val_split: Optional[float] = None, seed: int = 0, limit: Optional[int] = None) -> ImageRequest:
    """The training split of a --data folder (train/, or the part --val-split leaves)."""
    return ImageRequest(data_dir, labels_file, 1, limit, seed=seed, split=TRAIN, val_split=val_split)


def default_calibration(data_dir: Optional[Path] = None, labels_file: Optional[Path] = None, limit: int = 200, seed: int = 0) -> ImageRequest:
    """Bundled photos: their odd views (evaluation holds out the even ones). A folder: one
    centre crop per image (of its training split where it has train/ and val/), a seeded
    sample of at most ``limit`` files."""
    if data_dir is None:
        return ImageRequest(views_per_image=HELD_OUT_VIEWS, view_offset=ODD_VIEWS[0], view_stride=ODD_VIEWS[1])
    split = TRAIN if split_folders(Path(data_dir)) is not None else None
    return ImageRequest(data_dir, labels_file, views_per_image=1, limit=limit, seed=seed, split=split)


def calibration_request(settings) -> ImageRequest:
    """Calibration (and distillation) images from a Settings: --calib, else the training
    split of --data where it has one (never the images evaluation uses), else the
    bundled photos' odd views."""
    if settings["calib"] is not None:
        return default_calibration(settings["calib"], settings["calib_labels"], settings["calib_limit"], settings["seed"])
    if evaluation_images(settings["data"], settings["labels"], val_split=settings["val_split"]).has_training_split:
        return training_images(settings["data"], settings["labels"], settings["val_split"], settings["seed"], settings["calib_limit"])
    return default_calibration(None)


# --------------------------------------------------------------------------- preprocessing

_RESAMPLING = {
    "nearest": 0,  # PIL.Image.Resampling values, spelled out to import PIL lazily
    "bilinear": 2,
    "bicubic": 3,
    "lanczos": 1,
    "box": 4,
    "hamming": 5,
}


class UnreadableImage(DataError):
    """A file that cannot be decoded; ``reason`` is the decoder's own words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, f"larger than Pillow's pixel limit ({str(e).split('(')[0].strip()})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableImage(path, reason) from None


def _to_rgb(im):
    """8-bit RGB. Pillow's convert() clips 16-bit and 32-bit greyscale to 0..255 (a 16-bit
    PNG turns white), so those are scaled to 8 bits first."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 0..65535 -> 0..255
        elif im.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


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


@dataclass(frozen=True)
class Batch:
    """Consecutive views of a stream: the ones read (``indices``, ``array``) and the ones
    that could not be (``skipped``: index, file, reason)."""

    indices: tuple[int, ...]
    array: Optional[np.ndarray]  # NCHW float32; None when no view of the batch could be read
    labels: tuple[Optional[tuple[int, ...]], ...]
    skipped: tuple[tuple[int, str, str], ...] = ()


def _read_view(view: ImageView, prep: Preprocessing) -> tuple[Optional[np.ndarray], Optional[str]]:
    try:
        return preprocess(view, prep), None
    except UnreadableImage as e:
        return None, e.reason


def stream_batches(
    views: Iterable[IndexedView],
    prep: Preprocessing,
    batch_size: int,
    threads: int = DECODE_THREADS,
    prefetch_batches: int = PREFETCH_BATCHES,
) -> Iterator[Batch]:
    """Decode and preprocess ``views`` in order, ``threads`` at a time and at most
    ``prefetch_batches`` batches ahead of the consumer (Pillow releases the GIL while it
    decodes and resizes), so memory is bounded by the batch size, not the data set."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgekit-decode")
    pending: deque = deque()
    source = iter(views)
    window = max(batch_size * prefetch_batches, threads)

    def fill() -> None:
        while len(pending) < window:
            view = next(source, None)
            if view is None:
                return
            pending.append((view, pool.submit(_read_view, view.view, prep)))

    indices: list[int] = []
    arrays: list[np.ndarray] = []
    labels: list[Optional[tuple[int, ...]]] = []
    skipped: list[tuple[int, str, str]] = []

    def emit() -> Batch:
        batch = Batch(tuple(indices), np.stack(arrays) if arrays else None, tuple(labels), tuple(skipped))
        indices.clear(), arrays.clear(), labels.clear(), skipped.clear()
        return batch

    try:
        fill()
        while pending:
            view, future = pending.popleft()
            fill()
            array, reason = future.result()
            if array is None:
                skipped.append((view.index, str(view.view.image.path), reason or "unreadable"))
            else:
                indices.append(view.index)
                arrays.append(array)
                labels.append(view.view.image.labels)
            if len(arrays) == batch_size:
                yield emit()
        if arrays or skipped:
            yield emit()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def skipped_summary(skipped: Sequence[tuple[int, str, str]], shown: int = 3) -> str:
    """'2 unreadable images skipped: a.jpg (image file is truncated), ...'"""
    files = list(dict.fromkeys((Path(path).name, reason) for _, path, reason in skipped))
    listed = "; ".join(f"{name} ({reason})" for name, reason in files[:shown])
    more = f"; and {len(files) - shown} more" if len(files) > shown else ""
    return f"{len(files)} unreadable image{'s' if len(files) != 1 else ''} skipped: {listed}{more}"


def iter_batches(
    image_set: ImageSet, prep: Preprocessing, batch_size: int, skip_unreadable: bool = True
) -> Iterator[tuple[np.ndarray, list[Optional[tuple[int, ...]]]]]:
    """Stream (NCHW batch, labels) without holding the whole set in memory.

    Unreadable files are skipped with one warning naming them; a set with none readable
    is an error.
    """
    read, skipped = 0, []
    for batch in stream_batches(image_set.indexed(), prep, batch_size):
        if batch.skipped and not skip_unreadable:
            _, path, reason = batch.skipped[0]
            raise UnreadableImage(Path(path), reason)
        skipped += batch.skipped
        if batch.array is not None:
            read += len(batch.indices)
            yield batch.array, list(batch.labels)
    if skipped:
        warnings.warn(skipped_summary(skipped), stacklevel=2)
    if read == 0:
        raise DataError(f"none of the images in {image_set.description} could be read")


def load_all(image_set: ImageSet, prep: Preprocessing) -> tuple[np.ndarray, list[Optional[tuple[int, ...]]]]:
    """The whole set as one array (for the small calibration and parity sets); rows and
    labels stay aligned, unreadable views dropped from both."""
    arrays, labels = [], []
    for x, y in iter_batches(image_set, prep, batch_size=64):
        arrays.append(x)
        labels += y
    return np.concatenate(arrays), labels
