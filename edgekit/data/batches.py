"""Streaming views as batches: decoded in a small thread pool a few batches ahead, unreadable views reported by index;
fine-tuning's training sources and the warm-up that decodes a set into the image cache (edgekit.data.cache) at once."""

from __future__ import annotations

import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ..core import DataError, Preprocessing
from ..progress import Progress
from . import cache, decode
from .decode import UnreadableImage, preprocess
from .images import ImageSet, ImageView, IndexedView, LabelledImage

DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # decoding runs beside the runtime's own threads
PREFETCH_BATCHES = 2


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


# --------------------------------------------------------------------------- the image cache's readers


def train_source_pixels(path: Path, prep: Preprocessing) -> np.ndarray:
    """The decoded image as fine-tuning starts its random crops from: a photo at least twice
    the crop is box-reduced by the whole factor that keeps its short side at least the crop."""
    with decode.decoded_rgb(Path(path), prep) as image:  # the decode budget every reader shares
        k = min(image.size) // max(prep.resize_size, prep.input_size)
        if k >= 2:
            image = image.reduce(k)
        return np.asarray(image, dtype=np.uint8)


def cached_train_source(path: Path, prep: Preprocessing) -> np.ndarray:
    """``train_source_pixels`` through the image cache (uint8 HWC)."""
    return cache.image_cache().get(Path(path), cache.TRAIN_SOURCE, prep, decode._DECODE_BUDGET, lambda: train_source_pixels(Path(path), prep))


@dataclass(frozen=True)
class WarmJob:
    """One entry to make: a file's training source, or one of its views (``view``)."""

    path: str
    view: Optional[int] = None  # None: the training source


def _warm_one(job: WarmJob, prep: Preprocessing) -> tuple[Optional[tuple], bool, float, bool]:
    """(the file's (stat key, content hash), hit, decode seconds, unreadable)."""
    store = cache.image_cache()
    hits, seconds = store.hits, store.decode_seconds
    unreadable = False
    try:
        if job.view is None:
            cached_train_source(Path(job.path), prep)
        else:
            preprocess(ImageView(LabelledImage(Path(job.path), None), job.view), prep)
    except UnreadableImage:
        unreadable = True
    return cache.known_hash(Path(job.path)), store.hits > hits, store.decode_seconds - seconds, unreadable


def _warm_many(jobs: Sequence[WarmJob], prep: Preprocessing) -> list:
    return [_warm_one(job, prep) for job in jobs]


def warm_image_cache(jobs: Sequence[WarmJob], prep: Preprocessing, workers: Optional[int] = None,
                     progress: Progress = lambda stage, done, total: None, stage: str = "decoding images into the image cache") -> "cache.CacheStats":
    """Make every entry of ``jobs`` the image cache lacks, ``workers`` processes at once
    (default: one fewer than the CPUs, at least one), and learn each file's content hash
    here, so readers forked later (data-loader workers) hash nothing again. Returns the
    counts of this warm-up (unreadable files are counted, not kept: their readers name them)."""
    store = cache.image_cache()
    store.reset_counters()
    if not store.enabled or not jobs:
        return store.stats()
    workers = max(1, min(workers or (os.cpu_count() or 2) - 1, len(jobs)))
    chunks = [list(jobs[i:i + 4]) for i in range(0, len(jobs), 4)]
    done = 0
    progress(stage, 0, len(jobs))
    if workers == 1:
        for chunk in chunks:
            _warm_many(chunk, prep)
            done += len(chunk)
            progress(stage, done, len(jobs))
        return store.stats()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: the caller may hold torch's threads, which a fork would copy mid-flight
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_warm_many, chunk, prep): chunk for chunk in chunks}
        for future in as_completed(futures):
            for job, (known, hit, seconds, unreadable) in zip(futures[future], future.result()):
                if known is not None:
                    cache.learn_hash(*known)
                store.record(job.path, hit, seconds, unreadable)
            done += len(futures[future])
            progress(stage, done, len(jobs))
    return store.stats()
