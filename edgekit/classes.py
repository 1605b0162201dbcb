"""Class sets: reading the user's class names and turning labels into output indices.

A model's outputs mean the classes of its ``ClassSet`` (edgekit.core), in order. Labels
come as folder names, class names or indices; here they become indices into that set,
and anything that does not fit is a one-line DataError naming both sides.

Torch-free: the on-device runner imports it.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from .core import ClassSet, DataError, UsageError, imagenet_class_set

MAX_CLASSES = 100_000
MAX_CLASSES_FILE_BYTES = 16 * 1024 * 1024  # 100,000 names of 160 bytes
MAX_LABEL_FILE_BYTES = 512 * 1024 * 1024  # '<file> <label>' lines for ten million images
SHOWN_CHARS = 80  # at most this much of a name the user gave is echoed in a message


def read_text_file(path: Path, what: str, limit: int) -> str:
    """A small UTF-8 text file the user named (a classes or label file): a byte-order mark
    is dropped; a missing, special (/dev/zero, a FIFO, a folder), oversized or non-UTF-8
    file is a one-line DataError naming it. Never reads more than ``limit`` + 1 bytes."""
    path = Path(path)
    try:
        info = os.stat(path)  # stat, not open: opening a FIFO would wait for a writer
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket, not a regular file"
        raise DataError(f"{what} {path} is {kind}; give a text file")
    if info.st_size > limit:
        raise DataError(f"{what} {path} is {info.st_size:,} bytes; at most {limit:,} are read (is it the right file?)")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:  # it grew since it was looked at
        raise DataError(f"{what} {path} is more than {limit:,} bytes (is it the right file?)")
    try:
        return data.decode("utf-8-sig")  # a BOM (Windows editors write one) is not part of the first name
    except UnicodeDecodeError:
        raise DataError(f"{what} {path} is not UTF-8 text") from None


def _unsafe(char: str) -> bool:
    """Characters that move the cursor, end a line or reorder text on a terminal or a page:
    control characters (C0, DEL, C1: ANSI escapes start with one), format characters
    (bidi overrides), line and paragraph separators."""
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


def check_class_names(names: Sequence[str], source: str) -> None:
    """Class names end up on the screen, in Markdown and HTML reports: one holding a
    control character (a newline, an escape sequence) is refused, naming it escaped."""
    for name in names:
        bad = next((c for c in name if _unsafe(c)), None)
        if bad is not None:
            raise DataError(f"class name {shown(name)} of {source} contains the control character U+{ord(bad):04X}; rename the class")


def display_name(name: str) -> str:
    """A class name as it may be printed: control and format characters escaped
    (\\n, \\x1b, \\u202e), so a name from a results file cannot drive the terminal or a page."""
    if not any(_unsafe(c) for c in name):
        return name
    return "".join(c.encode("unicode_escape").decode("ascii") if _unsafe(c) else c for c in name)


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """A user's string as a message quotes it: escaped (repr) and cut to ``limit``
    characters with its length, so a 20 MB name makes a one-line error."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def read_classes_file(path: Path) -> ClassSet:
    """One class name per line, or JSON: a list of names, or {"0": "cat", ...} / {"cat": 0, ...}."""
    path = Path(path)
    text = read_text_file(path, "classes file", MAX_CLASSES_FILE_BYTES)
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        names = _json_names(path, stripped)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DataError(f"classes file {path} names no classes")
    if len(names) > MAX_CLASSES:
        raise DataError(f"classes file {path} names {len(names)} classes; at most {MAX_CLASSES}")
    duplicates = _duplicates(names)
    if duplicates:
        raise DataError(f"classes file {path} names {shown(duplicates[0])} twice")
    check_class_names(names, f"classes file {path}")
    return ClassSet(len(names), f"file {path}", tuple(names))


def _duplicates(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]


def _json_names(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"classes file {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return [n.strip() for n in data]
    if isinstance(data, dict) and data:
        items = list(data.items())
        if all(_is_index(k) and isinstance(v, str) for k, v in items):  # {"0": "cat"}
            by_index = {int(k): v for k, v in items}
        elif all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in items):  # {"cat": 0}
            by_index = {int(v): k for k, v in items}
        else:
            by_index = {}
        if by_index and sorted(by_index) == list(range(len(by_index))):
            return [by_index[i].strip() for i in range(len(by_index))]
    raise DataError(f"classes file {path}: expected a list of names or a mapping between names and indices 0..N-1")


def _is_index(key: object) -> bool:
    return isinstance(key, str) and key.isdigit()


def folder_class_set(names: Sequence[str], root: Path) -> ClassSet:
    """Classes named by the folders of a tree, in sorted order (torchvision's ImageFolder)."""
    check_class_names(names, f"the class folders of {root}")
    return ClassSet(len(names), f"class folders of {root}", tuple(sorted(names)))


def resolve_class_set(num_classes: Optional[int], classes_file: Optional[Path], head: Optional[int] = None) -> Optional[ClassSet]:
    """The class set a user asked for with --num-classes / --classes (None: not asked).
    ``head``: the output count a checkpoint's head has, when known."""
    named = read_classes_file(classes_file) if classes_file is not None else None
    if named is not None and num_classes is not None and named.count != num_classes:
        raise UsageError(f"--classes {classes_file} names {named.count} classes but --num-classes is {num_classes}")
    wanted = named.count if named is not None else num_classes
    if head is not None and wanted is not None and head != wanted:
        source = f"--classes {classes_file} names" if named is not None else "--num-classes asks for"
        raise UsageError(f"{source} {wanted} classes but the checkpoint's head has {head} outputs")
    if named is not None:
        return named
    if num_classes is not None:
        return imagenet_class_set() if num_classes == 1000 else ClassSet(num_classes, "--num-classes")
    return None


def label_index(text: str, classes: ClassSet, where: str) -> int:
    """A label written as a class name of ``classes`` or as an index below its count."""
    text = text.strip()
    if classes.named:
        try:
            return name_index(classes)[text]
        except KeyError:
            pass
    if text.isdigit() and int(text) < classes.count:
        return int(text)
    known = f"one of the {classes.count} class names of {classes.source} or" if classes.named else "a class"
    raise DataError(f"{where}: label {shown(text)} is not {known} index 0-{classes.count - 1}")


def name_index(classes: ClassSet) -> dict[str, int]:
    """Class name -> output index (cached per class set)."""
    return _index_of_names(classes.names)


@lru_cache(maxsize=8)
def _index_of_names(names: tuple[str, ...]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


def check_labels_fit(labels: ClassSet, outputs: int, model: str) -> None:
    """Labels that name another number of classes than the model has outputs: one line."""
    if labels.count != outputs:
        raise DataError(
            f"the labels name {labels.count} classes ({labels.source}) but {model} has {outputs} outputs; "
            "give the model's classes with --classes FILE, evaluate on data labelled with its classes, "
            "or train a head for these: edgekit finetune MODEL --data DIR"
        )
