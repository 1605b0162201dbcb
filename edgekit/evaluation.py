"""Accuracy against labels and against a baseline, joined on each view's identity, streamed.

Workers write logits to disk row by row, with the index of the view each row belongs to
(the view's position in the views file every worker of a run reads, which names its file
and crop). Here the rows of every backend are joined on that index: only views that every
backend evaluated count, so a file one runtime could not read never shifts another's
labels. Metrics accumulate chunk by chunk (a few hundred rows in memory at a time),
per photo, so the intervals can treat the views of one photo as correlated.

Only numpy: the on-device runner imports this module too.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .core import AccuracyStats, EdgekitError
from .uncertainty import METHOD, paired_difference_interval, percent, proportion_interval

CHUNK_ROWS = 256
TOP5 = 5
TOP_CONFUSIONS = 10  # (true, predicted) pairs a results row names
FULL_CONFUSION_CLASSES = 100  # the whole confusion matrix goes into a results row up to this many classes


# --------------------------------------------------------------------------- logits on disk


class LogitsWriter:
    """Appends float32 logits rows and the view index of each row (worker side)."""

    def __init__(self, logits_path: Path, rows_path: Path):
        self.logits_path, self.rows_path = Path(logits_path), Path(rows_path)
        self._file = open(self.logits_path, "wb")
        self._rows = array("q")
        self.classes: Optional[int] = None

    def append(self, indices: Sequence[int], logits: np.ndarray) -> None:
        if logits.ndim != 2 or logits.shape[0] != len(indices):
            raise EdgekitError(
                f"the model returned an output of shape {list(logits.shape)} for a batch of {len(indices)}; "
                "edgekit measures classifiers whose first output is [N, classes] logits"
            )
        if self.classes is None:
            self.classes = int(logits.shape[1])
        self._file.write(np.ascontiguousarray(logits, dtype=np.float32).tobytes())
        self._rows.extend(int(i) for i in indices)

    def close(self) -> dict:
        self._file.close()
        np.save(self.rows_path, np.frombuffer(self._rows, dtype=np.int64) if self._rows else np.zeros(0, np.int64))
        return {"logits": str(self.logits_path), "rows": str(self.rows_path), "count": len(self._rows), "classes": self.classes}


@dataclass(frozen=True)
class LogitsFile:
    """Rows of logits on disk, each with the view index it belongs to (sorted ascending)."""

    path: Path
    rows: np.ndarray  # view index of each stored row
    classes: int
    offset: int = 0  # bytes before the first row (an .npy header)

    @classmethod
    def from_worker(cls, info: dict) -> "LogitsFile":
        rows = np.load(info["rows"])
        if len(rows) and np.any(np.diff(rows) <= 0):
            raise EdgekitError(f"{info['rows']}: view indices out of order; the worker's output is damaged")
        return cls(Path(info["logits"]), rows, int(info["classes"] or 0))

    @classmethod
    def from_npy(cls, path: Path, rows: Optional[np.ndarray] = None) -> "LogitsFile":
        """A 2-D float32 .npy file, read by offset (no memory map: RSS stays flat)."""
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if len(shape) != 2 or fortran or dtype != np.float32:
            raise EdgekitError(f"{path}: expected a C-order float32 [views, classes] array, found {dtype} {list(shape)}")
        indices = np.arange(shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(indices) != shape[0]:
            raise EdgekitError(f"{path}: {shape[0]} rows of logits for {len(indices)} views")
        return cls(Path(path), indices, int(shape[1]), offset)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The stored rows at ``positions`` (ascending), read in contiguous runs."""
        out = np.empty((len(positions), self.classes), dtype=np.float32)
        if not len(positions):
            return out
        row_bytes = self.classes * 4
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        with open(self.path, "rb") as f:
            for run in np.split(np.arange(len(positions)), breaks):
                first = int(positions[run[0]])
                f.seek(self.offset + first * row_bytes)
                block = np.fromfile(f, dtype=np.float32, count=len(run) * self.classes)
                if block.size != len(run) * self.classes:
                    raise EdgekitError(f"{self.path}: truncated logits file")
                out[run] = block.reshape(len(run), self.classes)
        return out


# --------------------------------------------------------------------------- the views behind the rows


@dataclass(frozen=True)
class ViewTable:
    """What the parent knows of every view: its photo and its labels (-1 pads)."""

    files: np.ndarray  # file (photo) index of each view
    labels: Optional[np.ndarray]  # [views, max labels] acceptable classes, -1 where none; None if unlabelled
    file_names: tuple[str, ...]  # per file index, for messages

    @property
    def file_count(self) -> int:
        return len(self.file_names)


# --------------------------------------------------------------------------- accumulating


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_rows(baseline: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(softmax(baseline) || softmax(other)) per row."""
    lp, lq = log_softmax(baseline), log_softmax(other)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row: does the top-k contain one of the row's acceptable labels (-1 = none)?"""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] else np.broadcast_to(np.arange(logits.shape[1]), logits.shape)
    return ((top[:, :, None] == labels[:, None, :]) & (labels[:, None, :] >= 0)).any(axis=(1, 2))


@dataclass
class _PerFile:
    """Per-photo sums of a per-view quantity."""

    size: int
    values: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.values = np.zeros(self.size, dtype=np.int64)

    def add(self, files: np.ndarray, per_view: np.ndarray) -> None:
        np.add.at(self.values, files, per_view.astype(np.int64))


class BackendAccumulator:
    """One backend's accuracy, and its agreement with the baseline, over streamed chunks."""

    def __init__(self, file_count: int, labelled: bool, compared: bool, classes: Optional[int] = None, class_names: Optional[Sequence[str]] = None):
        self.labelled, self.compared = labelled, compared
        # per class (``classes`` given): a [true, predicted] count matrix against each view's
        # primary label, which views each class got right (its primary or another acceptable
        # label), and the cells of right answers off the primary label (not confusions)
        self.class_names = class_names
        self.confusion = np.zeros((classes, classes), dtype=np.int64) if labelled and classes else None
        self.class_correct = np.zeros(classes, dtype=np.int64) if labelled and classes else None
        self.accepted: dict[tuple[int, int], int] = {}
        self.count = _PerFile(file_count)
        self.top1 = _PerFile(file_count)
        self.top5 = _PerFile(file_count)
        self.agree = _PerFile(file_count)
        self.lost = _PerFile(file_count)  # baseline right, this wrong
        self.gained = _PerFile(file_count)  # baseline wrong, this right
        self.kl_sum = 0.0
        self.max_abs_diff = 0.0

    def update(self, files: np.ndarray, logits: np.ndarray, baseline: Optional[np.ndarray], labels: Optional[np.ndarray]) -> None:
        baseline = baseline if self.compared else None
        self.count.add(files, np.ones(len(files), dtype=np.int64))
        if self.labelled and labels is not None:
            right = hits(logits, labels, 1)
            self.top1.add(files, right)
            self.top5.add(files, hits(logits, labels, TOP5))
            if self.confusion is not None:
                self._count_classes(logits, labels)
            if baseline is not None:
                base_right = hits(baseline, labels, 1)
                self.lost.add(files, base_right & ~right)
                self.gained.add(files, ~base_right & right)
        if baseline is not None:
            self.agree.add(files, logits.argmax(1) == baseline.argmax(1))
            self.kl_sum += float(np.maximum(kl_rows(baseline, logits), 0.0).sum())
            self.max_abs_diff = max(self.max_abs_diff, float(np.abs(logits.astype(np.float64) - baseline).max(initial=0.0)))

    def _count_classes(self, logits: np.ndarray, labels: np.ndarray) -> None:
        assert self.confusion is not None and self.class_correct is not None
        classes = self.confusion.shape[0]
        predicted = logits.argmax(1)
        primary = labels[:, 0]
        right = ((labels == predicted[:, None]) & (labels >= 0)).any(axis=1)
        keep = (primary >= 0) & (primary < classes)
        true, predicted, right = primary[keep], predicted[keep], right[keep]
        np.add.at(self.confusion, (true, predicted), 1)
        np.add.at(self.class_correct, true, right.astype(np.int64))
        off_primary = right & (predicted != true)  # right under another acceptable label
        for t, p in zip(true[off_primary].tolist(), predicted[off_primary].tolist()):
            self.accepted[(t, p)] = self.accepted.get((t, p), 0) + 1

    def result(self, note: Optional[str] = None) -> AccuracyStats:
        n = int(self.count.values.sum())
        files = int((self.count.values > 0).sum())
        counts = self.count.values

        def pct(per_file: _PerFile) -> float:
            return 100.0 * float(per_file.values.sum()) / n if n else float("nan")

        top1 = top5 = drop = None
        top1_ci = top5_ci = drop_ci = None
        if self.labelled and n:
            top1, top5 = pct(self.top1), pct(self.top5)
            top1_ci = percent(proportion_interval(self.top1.values, counts))
            top5_ci = percent(proportion_interval(self.top5.values, counts))
            if self.compared:
                drop = 100.0 * float(self.lost.values.sum() - self.gained.values.sum()) / n
                drop_ci = percent(paired_difference_interval(self.lost.values, self.gained.values, counts))
        agreement = agreement_ci = mean_kl = max_diff = None
        if self.compared and n:
            agreement = pct(self.agree)
            agreement_ci = percent(proportion_interval(self.agree.values, counts))
            mean_kl, max_diff = self.kl_sum / n, self.max_abs_diff
        per_class = top_confusions = confusion = None
        if self.confusion is not None and self.class_correct is not None and self.confusion.any():
            per_class, top_confusions, confusion = class_figures(self.confusion, self.class_correct, self.accepted, self.class_names)
        return AccuracyStats(
            images=n, top1=top1, top5=top5, top1_drop=drop, agreement=agreement, mean_kl=mean_kl, max_abs_diff=max_diff,
            files=files, top1_ci=top1_ci, top5_ci=top5_ci, top1_drop_ci=drop_ci, agreement_ci=agreement_ci,
            ci_method=METHOD if n else None, note=note,
            per_class=per_class, top_confusions=top_confusions, confusion=confusion,
        )


def class_name(names: Optional[Sequence[str]], index: int) -> str:
    """A class's name, or its index where no name is known."""
    return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)


def class_figures(
    confusion: np.ndarray,
    correct: np.ndarray,
    accepted: dict[tuple[int, int], int],
    names: Optional[Sequence[str]] = None,
) -> tuple[tuple[dict, ...], tuple[dict, ...], Optional[tuple[tuple[int, int, int], ...]]]:
    """(per_class, top_confusions, confusion) of an AccuracyStats from a [true, predicted]
    count matrix, the views each true class got right, and the right answers off the primary
    label (not confusions). The full matrix only up to FULL_CONFUSION_CLASSES classes."""
    classes = confusion.shape[0]
    images = confusion.sum(axis=1)
    per_class = tuple(
        {"class": int(c), "name": class_name(names, int(c)), "images": int(images[c]), "correct": int(correct[c]), "top1": 100.0 * float(correct[c]) / float(images[c])}
        for c in np.flatnonzero(images)
    )
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    for (t, p), count in accepted.items():
        errors[t, p] -= count
    flat = errors.ravel()
    cells = np.flatnonzero(flat > 0)
    cells = cells[np.lexsort((cells, -flat[cells]))][:TOP_CONFUSIONS]  # most frequent first, then by class
    top_confusions = tuple(
        {"true": t, "true_name": class_name(names, t), "predicted": p, "predicted_name": class_name(names, p), "count": int(flat[cell])}
        for cell in cells.tolist()
        for t, p in [divmod(cell, classes)]
    )
    full = None
    if classes <= FULL_CONFUSION_CLASSES:
        true, predicted = np.nonzero(confusion)
        full = tuple((int(t), int(p), int(confusion[t, p])) for t, p in zip(true, predicted))
    return per_class, top_confusions, full


class PairAccumulator:
    """Top-1 agreement and largest logit difference between two backends."""

    def __init__(self) -> None:
        self.n = 0
        self.agree = 0
        self.max_abs_diff = 0.0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        self.n += len(a)
        self.agree += int((a.argmax(1) == b.argmax(1)).sum())
        self.max_abs_diff = max(self.max_abs_diff, float(np.abs(a.astype(np.float64) - b).max(initial=0.0)))


@dataclass(frozen=True)
class BackendParity:
    """Two backends' outputs for one artifact on the same images."""

    first: str
    second: str
    agreement: float  # percent of images with the same top-1
    max_abs_diff: float  # largest logit difference


# --------------------------------------------------------------------------- joining


@dataclass(frozen=True)
class Evaluation:
    accuracy: dict[str, AccuracyStats]
    parity: tuple[BackendParity, ...]
    evaluated: int  # views every backend evaluated


def common_rows(outputs: Iterable[LogitsFile]) -> np.ndarray:
    rows: Optional[np.ndarray] = None
    for output in outputs:
        rows = output.rows if rows is None else np.intersect1d(rows, output.rows, assume_unique=True)
    return np.zeros(0, np.int64) if rows is None else rows


def chunks(rows: np.ndarray, size: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def evaluate(
    outputs: dict[str, LogitsFile],
    views: ViewTable,
    baseline: Optional[str] = None,
    note: Optional[str] = None,
    progress=lambda done, total: None,
    class_names: Optional[Sequence[str]] = None,
) -> Evaluation:
    """Accuracy of every backend (and agreement with ``baseline``'s logits, when given) on
    the views all of them evaluated; ``note`` says why top-1 does not apply, if it does not.
    Where top-1 applies, each row also carries per-class top-1 and confusions against each
    view's primary label, named by ``class_names`` (label index -> name; else the index)."""
    if not outputs:
        return Evaluation({}, (), 0)
    classes = {name: o.classes for name, o in outputs.items()}
    if len(set(classes.values())) > 1:
        raise EdgekitError("backends disagree on the number of classes: " + ", ".join(f"{n} {c}" for n, c in classes.items()))
    rows = common_rows(outputs.values())
    labelled = views.labels is not None and note is None
    names = list(outputs)
    accumulators = {  # the baseline is not compared with itself: its row has no drop or agreement
        name: BackendAccumulator(
            views.file_count, labelled, compared=baseline is not None and name != baseline, classes=classes[name], class_names=class_names
        )
        for name in names
    }
    pairs = {(a, b): PairAccumulator() for i, a in enumerate(names) for b in names[i + 1 :]}
    done = 0
    for chunk in chunks(rows):
        logits = {name: o.read(np.searchsorted(o.rows, chunk)) for name, o in outputs.items()}
        files = views.files[chunk]
        labels = views.labels[chunk] if labelled else None
        base = logits.get(baseline) if baseline is not None else None
        for name in names:
            accumulators[name].update(files, logits[name], base, labels)
        for (a, b), pair in pairs.items():
            pair.update(logits[a], logits[b])
        done += len(chunk)
        progress(done, len(rows))
    accuracy = {name: acc.result(note) for name, acc in accumulators.items()}
    parity = tuple(BackendParity(a, b, 100.0 * p.agree / p.n if p.n else float("nan"), p.max_abs_diff) for (a, b), p in pairs.items())
    return Evaluation(accuracy, parity, int(len(rows)))


# --------------------------------------------------------------------------- in memory


def label_matrix(labels: Sequence[Optional[tuple[int, ...]]]) -> Optional[np.ndarray]:
    """Acceptable labels per view as an int array padded with -1 (None if any view has none)."""
    if not labels or any(lab is None for lab in labels):
        return None
    width = max(len(lab) for lab in labels)  # type: ignore[arg-type]
    matrix = np.full((len(labels), width), -1, dtype=np.int64)
    for i, lab in enumerate(labels):
        matrix[i, : len(lab)] = lab  # type: ignore[arg-type]
    return matrix


def compare_to_baseline(
    logits: np.ndarray,
    baseline: Optional[np.ndarray],
    labels: Sequence[Optional[tuple[int, ...]]],
    files: Optional[np.ndarray] = None,
) -> AccuracyStats:
    """The same figures for logits already in memory, row i of each being the same view
    (``files`` groups views by photo; default: every row its own photo)."""
    if baseline is not None and baseline.shape != logits.shape:
        raise ValueError(f"logits {logits.shape} and baseline {baseline.shape} differ in shape")
    files = np.arange(len(logits)) if files is None else np.asarray(files)
    matrix = label_matrix(labels)
    accumulator = BackendAccumulator(int(files.max(initial=-1)) + 1, matrix is not None, baseline is not None)
    for chunk in chunks(np.arange(len(logits))):
        accumulator.update(files[chunk], logits[chunk], None if baseline is None else baseline[chunk], None if matrix is None else matrix[chunk])
    return accumulator.result()


def mean_kl(baseline: np.ndarray, other: np.ndarray) -> float:
    """Mean over images of KL(softmax(baseline) || softmax(other))."""
    return max(0.0, float(kl_rows(baseline, other).mean()))  # clamp rounding below 0


def topk_accuracy(logits: np.ndarray, labels: Sequence[Optional[tuple[int, ...]]], k: int) -> Optional[float]:
    """Percent of images whose top-k predictions include one of their acceptable labels."""
    matrix = label_matrix(labels)
    return None if matrix is None else float(hits(logits, matrix, k).mean() * 100)
