"""Byte-identical photos shared by two image sets (held-out vs training or calibration): found by size, then content; reported, not refused."""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

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
