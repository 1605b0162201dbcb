"""Labels: ImageNet-1k class ids, and label files ('<file> <label>' lines, CSV, Kaggle's solution file, the ILSVRC2012 devkit's ground truth)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from ..classes import MAX_LABEL_FILE_BYTES, check_class_names, label_index, read_text_file, shown
from ..core import BackendUnavailableError, ClassSet, DataError
from .images import IMAGE_SUFFIXES, SAMPLES_DIR

_WNID = re.compile(r"^n\d{8}$")
_ILSVRC_VAL = re.compile(r"^ILSVRC2012_val_(\d{8})$")


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
