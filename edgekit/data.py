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
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence

import numpy as np

from .classes import MAX_LABEL_FILE_BYTES, check_class_names, folder_class_set, label_index, name_index, read_text_file, shown
from .core import BackendUnavailableError, ClassSet, DataError, Preprocessing, UsageError

if TYPE_CHECKING:
    from .evaluation import ViewTable

SAMPLES_DIR = Path(__file__).parent / "samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe", ".gif", ".avif"}  # GIF: its first frame
# Image files edgekit does not read: listed in one warning per folder, never silently dropped.
UNREAD_IMAGE_SUFFIXES = {".heic", ".heif", ".jxl", ".svg", ".dng", ".cr2", ".nef", ".arw", ".raw", ".psd", ".ico", ".jp2"}
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


def _read_label_file(path: Path, files: Sequence[Path] = (), classes: Optional[ClassSet] = None) -> tuple[dict[str, int], Optional[ClassSet]]:
    """(file name -> label index, the class set when not ImageNet-1k). Without ``classes``,
    labels that are not all ImageNet synsets or indices are class names: sorted, they are
    the class set."""
    lines = read_text_file(path, "label file", MAX_LABEL_FILE_BYTES).splitlines()  # BOM dropped; /dev/zero refused
    content = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if classes is None and content and all(line.isdigit() for line in content):
        return _ground_truth_labels(path, content, files), None
    pairs = _label_pairs(path, lines)
    if classes is None:
        try:
            return _label_table(path, [(number, name, parse_label(text.split()[0]), text) for number, name, text in pairs]), None
        except DataError:
            names = tuple(sorted({t for _, _, t in pairs}))
            check_class_names(names, f"label file {path}")
            classes = ClassSet(len(names), f"labels of {path}", names)
    return _label_table(path, [(number, name, label_index(text, classes, f"{path}:{number}"), text) for number, name, text in pairs]), classes


def _label_table(path: Path, labelled: Sequence[tuple[int, str, int, str]]) -> dict[str, int]:
    """File name -> label from (line number, file name, label, label text); a file labelled
    twice with two different labels is an error naming both lines (the same label twice is
    accepted)."""
    table: dict[str, int] = {}
    first: dict[str, tuple[int, str]] = {}
    for number, name, label, text in labelled:
        if name in table and table[name] != label:
            line, before = first[name]
            raise DataError(
                f"{path} labels {shown(name)} twice, differently: line {line} says {shown(before, 40)}, line {number} says {shown(text, 40)}; keep one label per file"
            )
        table[name] = label
        first.setdefault(name, (number, text))
    return table


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


MAX_COMPARED_FILES = 100_000  # files whose size is shared, read in part to look for photos in two sets


def same_content(first: Sequence[Path], second: Sequence[Path]) -> Optional[list[tuple[Path, Path]]]:
    """(a file of ``first``, a byte-identical file of ``second``) pairs. Sizes are compared
    first (a stat per file); only files whose size occurs in both sets are read: their
    first and last 4 KiB, then the whole file (SHA-256) where those match too. None when
    more than MAX_COMPARED_FILES files share a size (not looked at: too costly).
    Cached per pair of lists."""
    found = _same_content(tuple(str(p) for p in first), tuple(str(p) for p in second))
    return None if found is None else list(found)


@lru_cache(maxsize=16)
def _same_content(first: tuple[str, ...], second: tuple[str, ...]) -> Optional[tuple[tuple[Path, Path], ...]]:
    sizes = [_sizes(first), _sizes(second)]
    common = set(sizes[0].values()) & set(sizes[1].values())
    candidates = [[p for p in paths if size.get(p) in common] for paths, size in zip((first, second), sizes)]
    if not candidates[0]:
        return ()
    if len(candidates[0]) + len(candidates[1]) > MAX_COMPARED_FILES:
        return None
    keys = [{p: (size[p], _digest(p, partial=True)) for p in found} for found, size in zip(candidates, sizes)]
    shared = set(keys[0].values()) & set(keys[1].values())
    seen: dict[tuple, str] = {}
    for p in candidates[1]:
        if keys[1][p] in shared and keys[1][p][1] is not None:
            seen.setdefault((keys[1][p], _digest(p)), p)
    pairs = []
    for p in candidates[0]:
        if keys[0][p] in shared and keys[0][p][1] is not None:
            match = seen.get((keys[0][p], _digest(p)))
            if match is not None:
                pairs.append((Path(p), Path(match)))
    return tuple(pairs)


def _sizes(paths: Sequence[str]) -> dict[str, int]:
    sizes = {}
    for p in paths:
        try:
            sizes[p] = os.stat(p).st_size
        except OSError:  # unreadable files are skipped (and said so) when decoded
            pass
    return sizes


def _digest(path: str, partial: bool = False) -> Optional[str]:
    """SHA-256 of the file, or of its first and last 4 KiB (``partial``); None if unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            if partial:
                h.update(f.read(4096))
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                h.update(f.read(4096))
            else:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _overlap(held_out: Sequence[Path], training: Sequence[Path], held_name: str, training_name: str, root: Path) -> Optional[str]:
    """A note for the image set's description when evaluation images are byte-identical
    to training (or calibration) ones, said once as a warning; None when none are. Not
    refused: real data sets carry a few such duplicates, and the count is recorded with
    the results so a reader can weigh the figure."""
    pairs = same_content(held_out, training)
    if pairs is None:
        warnings.warn(
            f"did not look for photos shared by {held_name} and {training_name}: more than {MAX_COMPARED_FILES:,} of their "
            "files share a size (reading them would cost more than the run)",
            stacklevel=2,
        )
        return f"not compared with {training_name} (too many files)"
    if not pairs:
        return None

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    a, b = pairs[0]
    warnings.warn(
        f"{len(pairs)} of the {len(held_out)} images of {held_name} {'is' if len(pairs) == 1 else 'are'} byte-identical to images of {training_name} "
        f"(e.g. {rel(a)} = {rel(b)}); their top-1 is not held out",
        stacklevel=2,
    )
    return f"{len(pairs)} image{'' if len(pairs) == 1 else 's'} of {held_name} byte-identical to images of {training_name}"


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
    held_out: Optional["ImageRequest"] = None  # calibration images: the evaluation images they must not share content with

    def resolve(self, classes: Optional[ClassSet] = None) -> ImageSet:
        """List the images; their labels index ``classes`` (the model's) when given."""
        images = resolve_images(
            self.data_dir, self.labels_file, self.views_per_image, self.limit, self.view_offset, self.view_stride, self.seed,
            self.split, self.val_split, classes,
        )
        if self.held_out is not None and self.data_dir is not None:
            try:
                evaluated = self.held_out.resolve(classes)
            except DataError:  # said when evaluation itself lists them
                return images
            note = _overlap(sorted({v.image.path for v in evaluated.views}), sorted({v.image.path for v in images.views}),
                            f"evaluation (--data {self.held_out.data_dir})", f"calibration (--calib {self.data_dir})", Path(self.data_dir))
            if note:
                images = dataclasses.replace(images, description=f"{images.description}; {note}")
        return images

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
        request = default_calibration(settings["calib"], settings["calib_labels"], settings["calib_limit"], settings["seed"])
        if settings["data"] is not None:  # the same photo in both is found by content, said and recorded
            held_out = evaluation_images(settings["data"], settings["labels"], val_split=settings["val_split"])
            request = dataclasses.replace(request, held_out=held_out)
        return request
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
_UNSUPPORTED_HINTS = {".avif": "this Pillow cannot read AVIF (Pillow 11.3 or later can)"}



from contextlib import contextmanager  # noqa: E402 (the decode budget's section)

# The decode budget: the one rule every path that reads images goes through (evaluation
# workers, calibration, distillation, pruning, bundles, the on-device runner, fine-tuning).
# A file is measured from its header before any pixel is decoded: the estimated peak
# memory of decoding it and making its view (the decoded file, its RGB copy, the view's
# crop, the resized image, whose long side grows with the aspect ratio: a 317-byte
# 1 x 60,000 PNG resized to a short side of 256 is 15.4 million pixels tall). One image
# over the budget is skipped, named, with the reason; a JPEG over it is first decoded at
# a reduced DCT scale that keeps its short side at least the resize size. The decode
# threads of a process share the budget, so memory stays bounded however many threads
# decode at once.
DECODE_BUDGET_MB = 128
_DECODE_BUDGET = DECODE_BUDGET_MB * 2**20
# Bytes per pixel of Pillow's decoded modes, with the 16-bit and 32-bit greyscale
# scaling of _to_rgb (float64 values + 8-bit result); RGB conversion adds 4 where the mode is not RGB.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 12, "I;16B": 12, "I;16L": 12, "I;16N": 12, "I": 14, "F": 14}


class _Budget:
    """Bytes that decode threads of this process may hold at once; an image waits until
    its estimate fits beside the others' (one over the whole budget never gets here)."""

    def __init__(self, total: int):
        import threading

        self.total, self.free, self.cond = total, total, threading.Condition()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        cost = min(max(cost, 0), self.total)
        with self.cond:
            self.cond.wait_for(lambda: self.free >= cost)
            self.free -= cost
        try:
            yield
        finally:
            with self.cond:
                self.free += cost
                self.cond.notify_all()


_BUDGET = _Budget(_DECODE_BUDGET)
_BOMB_WARNING_FILTERED = False
if hasattr(os, "register_at_fork"):  # a forked data-loader worker starts with its own, empty budget
    os.register_at_fork(after_in_child=lambda: globals().__setitem__("_BUDGET", _Budget(_DECODE_BUDGET)))


def _short_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``size`` (torchvision's truncation)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def decode_cost(size: tuple[int, int], mode: str, prep: Optional[Preprocessing] = None, scale: float = 1.0, extra_per_pixel: int = 0) -> int:
    """Estimated peak bytes of decoding an image of ``size`` and ``mode`` and making one
    view of it (``scale``: the view's crop; ``extra_per_pixel``: a caller's own copies)."""
    w, h = max(1, size[0]), max(1, size[1])
    pixels = w * h
    cost = pixels * (_MODE_BYTES.get(mode, 4) + (0 if mode == "RGB" else 4) + extra_per_pixel)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    if scale < 1.0:
        cost += 4 * cw * ch
    if prep is not None:
        rw, rh = _short_side_size(cw, ch, max(prep.resize_size, prep.input_size))
        cost += 4 * (rw * rh + rw * ch)  # the horizontal pass, then the resized image
    return cost


def _over_budget(path: Path, size: tuple[int, int], cost: int, prep: Optional[Preprocessing], scale: float) -> "UnreadableImage":
    w, h = size
    what = f"{w} x {h} pixels"
    if prep is not None:
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        rw, rh = _short_side_size(cw, ch, max(prep.resize_size, prep.input_size))
        if 4 * rw * rh > cost // 2:
            what += f", {rw} x {rh} once its short side is resized to {max(prep.resize_size, prep.input_size)}"
    return UnreadableImage(path, f"decoding it would take about {cost / 2**20:,.0f} MB ({what}), over edgekit's {DECODE_BUDGET_MB} MB decode budget")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Pillow's and the file system's errors as UnreadableImage with the decoder's words."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, f"larger than Pillow's pixel limit ({str(e).split('(')[0].strip()})") from None
    except UnidentifiedImageError as e:
        hint = _UNSUPPORTED_HINTS.get(path.suffix.lower())
        raise UnreadableImage(path, hint or str(e).splitlines()[0]) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableImage(path, reason) from None


@contextmanager
def decoded_rgb(path: Path, prep: Optional[Preprocessing] = None, scale: float = 1.0, extra_per_pixel: int = 0) -> Iterator:
    """The file as an 8-bit RGB PIL image, within the decode budget: its header is read
    first, and a file whose view (``prep``'s resize of its ``scale`` crop) would cost more
    than the budget is an UnreadableImage naming why; the bytes stay reserved until the
    block ends. GIF and other animations: the first frame."""
    from PIL import Image

    global _BOMB_WARNING_FILTERED
    if not _BOMB_WARNING_FILTERED:  # the budget decides below; Pillow's warning under its hard limit would only repeat it
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _BOMB_WARNING_FILTERED = True
    path = Path(path)
    with _reading(path):
        f = open(path, "rb")
    with f:
        with _reading(path):
            im = Image.open(f)
            cost = decode_cost(im.size, im.mode, prep, scale, extra_per_pixel)
            if cost > _DECODE_BUDGET and im.format == "JPEG" and prep is not None:
                im.draft("RGB", _draft_request(im.size, prep, scale))  # libjpeg's DCT scaling: 1/2, 1/4 or 1/8
                cost = decode_cost(im.size, im.mode, prep, scale, extra_per_pixel)
            if cost > _DECODE_BUDGET:
                raise _over_budget(path, im.size, cost, prep, scale)
        with _BUDGET.hold(cost):
            with _reading(path):
                image = _to_rgb(im)
            del im
            yield image


def _draft_request(size: tuple[int, int], prep: Preprocessing, scale: float) -> tuple[int, int]:
    """The smallest size a JPEG may be decoded at and still give its view a short side of
    at least the resize size."""
    w, h = size
    factor = max(prep.resize_size, prep.input_size) / max(1e-9, scale * min(w, h))
    return (min(w, int(np.ceil(w * factor)) + 1), min(h, int(np.ceil(h * factor)) + 1))


def _open_rgb(path: Path, prep: Optional[Preprocessing] = None):
    """The file as 8-bit RGB (the decode budget applied to the file, and to ``prep``'s
    resize when given); UnreadableImage when it cannot be read."""
    with decoded_rgb(path, prep) as image:
        return image


def _to_rgb(im):
    """8-bit RGB. Pillow's convert() clips 16-bit and 32-bit greyscale to 0..255 (a 16-bit
    PNG turns white), so those are scaled to 8 bits first (in place: one float copy)."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and values.max(initial=0) > 255):
            values /= 257.0  # 0..65535 -> 0..255
        elif im.mode == "F" and values.max(initial=0) <= 1.0:
            values *= 255.0
        np.clip(np.rint(values, out=values), 0, 255, out=values)
        im = Image.fromarray(values.astype(np.uint8), mode="L")
        del values
    if im.mode == "RGB":
        im.load()  # the pixels, read before the file closes
        return im
    return im.convert("RGB")


def preprocess(view: ImageView, prep: Preprocessing) -> np.ndarray:
    """One view as a CHW float32 array ready for the model (within the decode budget)."""
    from PIL import Image

    scale, fx, fy, flip = VIEW_GRID[view.view]
    with decoded_rgb(view.image.path, prep, scale) as image:
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
    new_w, new_h = _short_side_size(w, h, size)
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
        warnings.warn(f"{skipped_summary(skipped)}; left out of {image_set.description} ({read} views read)", stacklevel=2)
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
