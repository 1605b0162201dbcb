"""Transfer learning: train a classifier's new head, then (optionally) the whole network,
on the user's labelled images, keeping the weights with the best validation top-1.

The schedule is the one the field uses for small data sets: a linear probe first (only
the head learns, BatchNorm statistics frozen, so a random head does not wreck pretrained
features), then full fine-tuning with AdamW under a cosine schedule, label smoothing and
random-resized-crop augmentation, stopped early when validation top-1 stops improving.
Validation images go through exactly the evaluation preprocessing edgekit's bench uses.

A resume file written after every epoch (weights_only-loadable) lets an interrupted run
continue where it stopped.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..core import EdgekitError, Preprocessing
from ..progress import Progress
from ..options import declared

if TYPE_CHECKING:
    from torch import nn

RESUME_FORMAT = "edgekit-finetune-resume/1"


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = declared("ft_epochs").field()  # full fine-tuning epochs (after the probe)
    probe_epochs: int = declared("ft_probe_epochs").field()  # head-only epochs first
    freeze_backbone: bool = declared("ft_freeze").field()  # head only, all epochs
    lr: float = declared("ft_lr").field()
    batch_size: int = declared("ft_batch").field()
    label_smoothing: float = declared("ft_label_smoothing").field()
    patience: int = declared("ft_patience").field()
    augment: str = declared("ft_augment").field()  # standard | no-flip | none
    seed: int = declared("seed").field()
    weight_decay: float = 0.05
    probe_lr_scale: float = 10.0  # a fresh head on frozen features takes a larger step


@dataclass
class EpochRecord:
    epoch: int
    phase: str  # probe | full | head
    train_loss: float
    train_top1: float
    val_top1: float
    seconds: float


@dataclass
class FinetuneReport:
    train_images: int
    val_images: int
    best_epoch: int
    best_val_top1: float
    epochs_run: int
    stopped_early: bool
    seconds: float
    resumed_from_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # files left out (file, split, reason); the counts above exclude them
    flattening: dict[str, Any] = field(default_factory=dict)  # the flattening rule, images per kind, first names (edgekit.data.decode)
    image_cache: str = ""  # the image cache's line after the warm-up (edgekit.data.cache)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- data


class _Skipped:
    """An image that could not be read (or is over the decode budget): left out of its
    batch (see _collate), and named once in a warning by finetune()."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason


class _TrainImages:
    """(path, label) pairs decoded with PIL, randomly cropped and flipped (torch Dataset)."""

    def __init__(self, items: Sequence[tuple[str, int]], prep: Preprocessing, augment: str):
        from torchvision.transforms import v2

        self.items = list(items)
        self.prep = prep
        interpolation = v2.InterpolationMode(prep.interpolation) if prep.interpolation in ("nearest", "bilinear", "bicubic") else v2.InterpolationMode.BILINEAR
        steps: list = [v2.PILToTensor()]
        if augment == "none":
            steps += [v2.Resize(prep.resize_size, interpolation=interpolation, antialias=True), v2.CenterCrop(prep.input_size)]
        else:
            steps += [v2.RandomResizedCrop(prep.input_size, scale=(0.5, 1.0), interpolation=interpolation, antialias=True)]
            if augment == "standard":
                steps.append(v2.RandomHorizontalFlip())
        import torch

        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(prep.mean), list(prep.std))]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        from ..data import UnreadableImage
        from ..data.batches import cached_train_source

        path, label = self.items[i]
        try:  # decoded (under the decode budget) and box-reduced once, then read from the image cache
            return self.transform(Image.fromarray(cached_train_source(Path(path), self.prep))), label
        except UnreadableImage as e:
            return _Skipped(path, e.reason)  # left out of its batch and named; every backend's evaluation skips it too


class _ValImages:
    """Validation views preprocessed exactly as the bench does (edgekit.data.preprocess)."""

    def __init__(self, items: Sequence[tuple[str, int]], prep: Preprocessing):
        self.items = list(items)
        self.prep = prep

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from ..data import ImageView, LabelledImage, UnreadableImage, preprocess

        path, label = self.items[i]
        try:
            return preprocess(ImageView(LabelledImage(Path(path), (label,)), 0), self.prep), label
        except UnreadableImage as e:
            return _Skipped(path, e.reason)


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, epoch: int):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    workers = min(2, max(0, (os.cpu_count() or 1) - 1))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
        drop_last=shuffle and len(dataset) > batch_size, persistent_workers=False,
        worker_init_fn=_seed_worker if workers else None, collate_fn=_collate,
    )


def _warm_image_cache(train: Sequence[tuple[str, int]], val: Sequence[tuple[str, int]], prep: Preprocessing, progress: Progress) -> str:
    """Decode every training source and validation view once, before the first epoch, in a
    process pool; every epoch then reads them from the image cache. Returns its summary line."""
    from ..data.batches import WarmJob, warm_image_cache

    jobs = [WarmJob(str(path)) for path, _ in train] + [WarmJob(str(path), 0) for path, _ in val]
    line = warm_image_cache(jobs, prep, progress=progress).summary()
    progress(line, None, None)
    return line


def _collate(items):
    """(x, y, skipped): the readable items stacked (x, y None when there are none) and the
    _Skipped ones."""
    from torch.utils.data import default_collate

    kept = [item for item in items if not isinstance(item, _Skipped)]
    skipped = [item for item in items if isinstance(item, _Skipped)]
    if not kept:
        return None, None, skipped
    x, y = default_collate(kept)
    return x, y, skipped


def _seed_worker(worker_id: int) -> None:
    import random

    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# --------------------------------------------------------------------------- training


def _parameters_of(module: "nn.Module", head: str, head_only: bool):
    if not head_only:
        return [p for p in module.parameters() if p.requires_grad]
    prefix = head + "."
    return [p for name, p in module.named_parameters() if name.startswith(prefix)]


def _set_mode(module: "nn.Module", head: str, head_only: bool) -> None:
    """Full fine-tuning trains everything; a probe keeps the backbone in eval mode so its
    BatchNorm statistics and dropout stay as pretrained."""
    if not head_only:
        module.train()
        return
    module.eval()
    dict(module.named_modules())[head].train()


def evaluate_top1(module: "nn.Module", loader, skipped: Optional[dict[str, str]] = None) -> float:
    """Top-1 (%) over the loader's readable images; unreadable ones go into ``skipped``."""
    import torch

    module.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y, unread in loader:
            if skipped is not None:
                skipped.update((s.path, s.reason) for s in unread)
            if x is None:
                continue
            predicted = module(x).argmax(1)
            correct += int((predicted == torch.as_tensor(y)).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1)


def _phases(options: FinetuneOptions) -> list[str]:
    if options.freeze_backbone:
        return ["head"] * max(1, options.probe_epochs + options.epochs)
    return ["probe"] * options.probe_epochs + ["full"] * options.epochs


def finetune(
    module: "nn.Module",
    head: str,
    train: Sequence[tuple[str, int]],
    val: Sequence[tuple[str, int]],
    prep: Preprocessing,
    options: FinetuneOptions = FinetuneOptions(),
    progress: Progress = lambda stage, done, total: None,
    resume_file: Optional[Path] = None,
) -> FinetuneReport:
    """Train ``module`` (its classifier is the layer named ``head``) in place on ``train``,
    leave it holding the weights of its best validation epoch, and report every epoch.
    ``resume_file``: written after each epoch, and read first when it exists."""
    import torch

    if not train or not val:
        raise EdgekitError(f"fine-tuning needs training and validation images (got {len(train)} and {len(val)})")
    torch.manual_seed(options.seed)
    phases = _phases(options)
    totals = {"train": len(train), "val": len(val)}
    flattening, unread = _check_images(train, val, prep, progress)  # unread: file -> reason, per split
    said: set[str] = set()
    _say_skipped(unread, said, totals["train"], totals["val"])
    train, val = _readable(train, unread["train"], "training"), _readable(val, unread["val"], "validation")
    train_data, val_loader = _TrainImages(train, prep, options.augment), _loader(_ValImages(val, prep), 64, False, 0, 0)
    image_cache = _warm_image_cache(train, val, prep, progress)
    steps_per_epoch = max(1, len(train) // options.batch_size)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)

    state = _load_resume(resume_file, module)
    module.to(memory_format=torch.channels_last)  # CPU depthwise-conv backward is several times faster this way
    history: list[EpochRecord] = state["history"]
    best_top1, best_epoch, best_state = state["best_top1"], state["best_epoch"], state["best_state"]
    resumed = len(history)
    started = time.perf_counter()
    optimizer = scheduler = None
    current_phase = None
    stale = state["stale"]
    for epoch in range(resumed, len(phases)):
        phase = phases[epoch]
        head_only = phase in ("probe", "head")
        if phase != current_phase:  # a new optimizer and schedule for each phase
            current_phase = phase
            for p in module.parameters():
                p.requires_grad_(True)
            lr = options.lr * (options.probe_lr_scale if head_only else 1.0)
            optimizer = torch.optim.AdamW(_parameters_of(module, head, head_only), lr=lr, weight_decay=options.weight_decay if not head_only else 0.0)
            phase_epochs = sum(1 for p in phases if p == phase)
            total_steps = phase_epochs * steps_per_epoch
            done_in_phase = sum(1 for r in history if r.phase == phase) * steps_per_epoch
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s, t=total_steps, d=done_in_phase: 0.5 * (1 + math.cos(math.pi * min(1.0, (s + d) / t))))
            if state.get("optimizer") is not None and state.get("phase") == phase:
                optimizer.load_state_dict(state["optimizer"])
        _set_mode(module, head, head_only)
        begin = time.perf_counter()
        losses, correct, seen = 0.0, 0, 0
        for step, (x, y, skipped) in enumerate(_loader(train_data, options.batch_size, True, options.seed, epoch), 1):
            unread["train"].update((s.path, s.reason) for s in skipped)
            if x is None:
                continue
            logits = module(x.contiguous(memory_format=torch.channels_last))
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses += loss.detach().item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            progress(f"epoch {epoch + 1}/{len(phases)} ({phase})", step, steps_per_epoch)
        progress(f"epoch {epoch + 1}/{len(phases)}: validating on {totals['val'] - len(unread['val'])} images", None, None)
        val_top1 = evaluate_top1(module, val_loader, unread["val"])
        _say_skipped(unread, said, totals["train"], totals["val"])
        record = EpochRecord(epoch + 1, phase, losses / max(seen, 1), 100 * correct / max(seen, 1), val_top1, time.perf_counter() - begin)
        history.append(record)
        progress(
            f"epoch {record.epoch}/{len(phases)} ({phase}): loss {record.train_loss:.3f}, train top-1 {record.train_top1:.1f}%, "
            f"val top-1 {val_top1:.2f}% (best {max(best_top1, val_top1):.2f}%)", None, None,
        )
        if val_top1 > best_top1:
            best_top1, best_epoch, best_state, stale = val_top1, epoch + 1, copy.deepcopy(module.state_dict()), 0
        else:
            stale += 1
        stop = stale >= options.patience and epoch + 1 < len(phases) and phase != "probe"
        _save_resume(resume_file, module, optimizer, phase, history, best_top1, best_epoch, best_state, stale)
        if stop:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.to(memory_format=torch.contiguous_format)
    module.eval()
    return FinetuneReport(
        train_images=totals["train"] - len(unread["train"]), val_images=totals["val"] - len(unread["val"]), best_epoch=best_epoch, best_val_top1=best_top1,
        epochs_run=len(history), stopped_early=len(history) < len(phases), seconds=time.perf_counter() - started,
        resumed_from_epoch=resumed, history=history, image_cache=image_cache,
        skipped=[{"file": f, "split": split, "reason": r} for split, files in unread.items() for f, r in files.items()],
        flattening=flattening,
    )


def _check_images(train: Sequence[tuple[str, int]], val: Sequence[tuple[str, int]], prep: Preprocessing, progress: Progress) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Every file's header read once before the first epoch: what flattening to RGB does to
    them (said once, returned for the report) and, per split, the files that cannot be read
    (file -> reason), left out from the start. Truncated files show only when decoded."""
    from ..data.decode import census

    split_of = {str(Path(path)): ("train", path) for path, _ in train} | {str(Path(path)): ("val", path) for path, _ in val}
    found = census(list(split_of), prep)
    unread: dict[str, dict[str, str]] = {"train": {}, "val": {}}
    for file, reason in found.unreadable:
        split, path = split_of[file]
        unread[split][path] = reason
    if found.summary():
        progress(found.summary(), None, None)
    return found.to_dict(), unread


def _readable(items: Sequence[tuple[str, int]], unread: dict[str, str], split: str) -> list[tuple[str, int]]:
    from ..core import DataError
    from ..data import skipped_summary

    kept = [item for item in items if item[0] not in unread]
    if not kept:
        raise DataError(f"none of the {len(items)} {split} images can be read ({skipped_summary([(0, f, r) for f, r in unread.items()])})")
    return kept


def _say_skipped(unread: dict[str, dict[str, str]], said: set[str], train: int, val: int) -> None:
    """One warning for the files found unreadable since the last one (before the first
    epoch: those over the decode budget or not images; after an epoch: those whose pixels
    failed to decode), so each file is named once per run with the decoder's reason and
    the counts that are left, as evaluation does."""
    import warnings

    from ..data import skipped_summary

    new = [(0, f, r) for files in unread.values() for f, r in files.items() if f not in said]
    if not new:
        return
    said.update(f for _, f, _ in new)
    warnings.warn(
        f"{skipped_summary(new)}; left out of fine-tuning ({train - len(unread['train'])} of {train} training "
        f"and {val - len(unread['val'])} of {val} validation images used)", stacklevel=3,
    )


# --------------------------------------------------------------------------- resume


def _save_resume(path: Optional[Path], module, optimizer, phase, history, best_top1, best_epoch, best_state, stale) -> None:
    if path is None:
        return
    import torch

    import io

    from ..files import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({
        "format": RESUME_FORMAT, "model": module.state_dict(), "optimizer": optimizer.state_dict(), "phase": phase,
        "history": [asdict(r) for r in history], "best_top1": best_top1, "best_epoch": best_epoch, "best_state": best_state, "stale": stale,
    }, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _load_resume(path: Optional[Path], module) -> dict[str, Any]:
    fresh = {"history": [], "best_top1": -1.0, "best_epoch": 0, "best_state": None, "stale": 0, "optimizer": None, "phase": None}
    if path is None or not Path(path).is_file():
        return fresh
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != RESUME_FORMAT:
            return fresh
        module.load_state_dict(saved["model"])
    except Exception:  # a resume file from an interrupted write or another model: start over
        return fresh
    return {**saved, "history": [EpochRecord(**r) for r in saved["history"]]}
