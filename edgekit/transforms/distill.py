"""Knowledge distillation: train a student network to reproduce a teacher's outputs.

Generic over any student/teacher pair of ``nn.Module`` classifiers with the same classes:
a pruned model and its unpruned original, a depthwise-separable rewrite and the model it
came from. Labels are optional; the teacher's softened outputs are the targets, so a
hundred unlabelled photos are enough to recover much of what a transform lost.

BatchNorm trains as usual: each batch is normalised by its own statistics and the running
averages follow them. Pruning (or any rewrite) changes what reaches each BatchNorm, and
batch statistics let the student adapt to that at once. Measured on EfficientNet-Lite0
pruned 20%, distilled on 77 views of the bundled photos (batch 32, 100 steps): with
BatchNorm frozen at the original statistics the mean KL to the original on held-out views
went from 5.3 to 2.8, with batch statistics to 0.10. Re-estimating the statistics on the
plain images afterwards made things worse (Lite0: KL 0.06 -> 0.17; digits: 95% -> 78%
top-1): the weights fit the statistics of augmented batches, so the running averages
from training are kept. Batches smaller than MIN_BATCHNORM_BATCH images give statistics
too noisy to train with; BatchNorm then stays frozen (eval mode) while its scale and
shift still learn.

What a hundred images can teach depends on how varied they are: on views of the same
photos the student matches its teacher closely (Lite0 pruned 20%: KL 5.3 -> 0.06), on
photos it never saw much less (55 views of 5 photos, tested on 2 others: 4.3 -> 2.8).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..core import DataError, UsageError
from ..options import declared
from ..progress import Progress
from ..progress import quiet as _quiet

if TYPE_CHECKING:
    import torch
    from torch import nn

PROGRESS_EVERY = 10  # steps
LOSS_WINDOW = 10  # steps averaged for the first and last loss
SHIFT_FRACTION = 1 / 8  # random shifts of up to this fraction of the image side
MIN_BATCHNORM_BATCH = 8  # smaller batches train with BatchNorm statistics frozen


@dataclass(frozen=True)
class DistillOptions:
    """Adam on all trainable parameters of the student, learning rate decayed to zero on
    a cosine over ``steps``. Loss ``T^2 * KL(teacher_T || student_T)`` at temperature T,
    mixed with cross-entropy on labels (weight ``label_weight``) where labels are given.
    ``augment``: random horizontal flips and shifts of each batch. ``hints``: FitNets-style
    hints beside the logits: the student's feature maps at the middle and the end of the
    network, through a small trainable regressor (a 1x1 convolution, discarded
    afterwards), regress the teacher's at the same layers (MSE relative to the teacher's
    feature energy, weight ``hint_weight``)."""

    steps: int = declared("distill_steps").field()
    batch_size: int = 32
    lr: float = 1e-3
    temperature: float = 4.0
    label_weight: float = 0.5
    seed: int = 0
    augment: bool = True
    hints: bool = declared("distill_hints").field()
    hint_weight: float = 1.0

    def __post_init__(self) -> None:
        check_training_options("distillation", self, whole=("steps", "batch_size"), positive=("lr", "temperature"))


_NUMBER_NAMES = {"lr": "learning rate", "scale_lr": "scale learning rate"}


def check_training_options(what: str, options: Any, whole: Sequence[str], positive: Sequence[str]) -> None:
    """One-line UsageErrors for the numbers the training loops here take (distillation,
    QAT): whole counts >= 1, finite positive rates, a label weight in [0, 1]."""
    for name in whole:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{what} {name.replace('_', ' ')} must be a whole number >= 1, got {value!r}")
    for name in positive:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"{what} {_NUMBER_NAMES.get(name, name.replace('_', ' '))} must be a finite number > 0, got {value!r}")
    if not 0.0 <= options.label_weight <= 1.0:
        raise UsageError(f"{what} label weight must be between 0 and 1, got {options.label_weight!r}")


@dataclass(frozen=True)
class DistillReport:
    steps: int
    images: int
    labelled: bool
    first_loss: float  # mean over the first LOSS_WINDOW steps
    last_loss: float  # mean over the last LOSS_WINDOW steps
    seconds: float
    hint_layers: tuple[str, ...] = ()  # where FitNets hints guided the student (empty: logits only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- pieces


def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or len(images) == 0:
        shape = getattr(images, "shape", None)
        raise DataError(f"distillation needs a non-empty NCHW image array, got {type(images).__name__} of shape {shape}")
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_labels(labels: Optional[np.ndarray], count: int) -> Optional[np.ndarray]:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"expected {count} integer labels, one per image, got shape {labels.shape} of {labels.dtype}")
    return labels.astype(np.int64)


def _batchnorm_layers(module: "nn.Module") -> list["nn.Module"]:
    from torch import nn

    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def _channels_last(*modules: "nn.Module"):
    """Run with 4-D weights in channels-last layout, restored afterwards. On CPU, the
    backward pass of depthwise convolutions is about 4x faster this way (EfficientNet-Lite0,
    batch 32: 46 s against 11 s a step on two busy cores)."""
    import torch

    def layout(module):
        weights = [p for p in module.parameters() if p.dim() == 4]
        channels_last = bool(weights) and not weights[0].is_contiguous() and weights[0].is_contiguous(memory_format=torch.channels_last)
        return torch.channels_last if channels_last else torch.contiguous_format

    before = [layout(m) for m in modules]
    for m in modules:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m, memory_format in zip(modules, before):
            m.to(memory_format=memory_format)


def _set_training(module: "nn.Module", batch_size: int) -> None:
    """Train mode; BatchNorm too, unless batches are too small for useful statistics."""
    module.train()
    if batch_size < MIN_BATCHNORM_BATCH:
        for m in _batchnorm_layers(module):
            m.eval()


def augment(batch: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
    """Random horizontal flip (half the images) and a random shift of up to 1/8 of each
    side (edges replicated), drawn independently per image."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = batch.shape
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    pad = max(1, round(min(height, width) * SHIFT_FRACTION))
    padded = F.pad(batch, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets)])


def distillation_loss(student_logits: "torch.Tensor", teacher_logits: "torch.Tensor", temperature: float) -> "torch.Tensor":
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch (the T^2
    keeps gradient sizes comparable across temperatures)."""
    import torch.nn.functional as F

    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def _batches(count: int, batch_size: int, steps: int, generator: "torch.Generator"):
    """Index tensors for ``steps`` batches: shuffled passes over the data, reshuffled each pass."""
    import torch

    size = min(batch_size, count)
    order = torch.randperm(count, generator=generator)
    position = 0
    for _ in range(steps):
        if position + size > count:
            order, position = torch.randperm(count, generator=generator), 0
        yield order[position : position + size]
        position += size


# --------------------------------------------------------------------------- FitNets hints


class Hints:
    """Feature maps of the student and the teacher at the same named layers (captured by
    forward hooks), and one 1x1-conv regressor per layer from the student's channels to
    the teacher's."""

    def __init__(self, student: "nn.Module", teacher: "nn.Module", sample: "torch.Tensor"):
        import torch
        from torch import nn

        self.layers = hint_layers(student, teacher, sample)
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        self._handles = []
        modules_s, modules_t = dict(student.named_modules()), dict(teacher.named_modules())
        for name in self.layers:
            self._handles.append(modules_s[name].register_forward_hook(lambda m, i, o, n=name: self._student.__setitem__(n, o)))
            self._handles.append(modules_t[name].register_forward_hook(lambda m, i, o, n=name: self._teacher.__setitem__(n, o)))
        with torch.no_grad():
            student(sample), teacher(sample)
        self.regressors = nn.ModuleDict({
            name.replace(".", "/"): nn.Conv2d(self._student[name].shape[1], self._teacher[name].shape[1], 1, bias=False)
            for name in self.layers
        }).to(sample.device)
        for name in self.layers:  # start at the identity where the channels agree
            conv = self.regressors[name.replace(".", "/")]
            if conv.in_channels == conv.out_channels:
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(conv.in_channels)[:, :, None, None])

    def loss(self) -> "torch.Tensor":
        total = 0.0
        for name in self.layers:
            target = self._teacher[name].detach()
            predicted = self.regressors[name.replace(".", "/")](self._student[name])
            total = total + ((predicted - target) ** 2).mean() / (target.pow(2).mean() + 1e-8)
        return total / len(self.layers)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def hint_layers(student: "nn.Module", teacher: "nn.Module", sample: "torch.Tensor") -> tuple[str, ...]:
    """The modules both networks share by name whose outputs are 4-D feature maps of the
    same spatial size in both, wider than 1x1 (so not the pooled vector): the one half-way
    through (in forward order) and the last."""
    import torch

    def shapes(module):
        found: dict[str, tuple] = {}

        def record(name: str, output) -> None:  # a hook must return None, or it replaces the output
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                found.setdefault(name, tuple(output.shape))

        handles = [m.register_forward_hook(lambda mod, i, o, n=n: record(n, o))
                   for n, m in module.named_modules() if n and not list(m.children())]
        try:
            with torch.no_grad():
                module(sample)
        finally:
            for h in handles:
                h.remove()
        return found

    s, t = shapes(student), shapes(teacher)
    shared = [n for n in s if n in t and s[n][2:] == t[n][2:] and s[n][2] * s[n][3] > 1]
    if not shared:
        raise UsageError("no layer of the student matches the teacher's by name and feature-map size: hints need the same architecture family")
    picks = {shared[len(shared) // 2], shared[-1]}
    return tuple(n for n in shared if n in picks)


# --------------------------------------------------------------------------- the loop


def _train(student, teacher, x, y, options: DistillOptions, progress: Progress, hints: Optional[Hints] = None) -> list[float]:
    import torch
    import torch.nn.functional as F

    parameters = [p for p in student.parameters() if p.requires_grad]
    if not parameters:
        raise UsageError("the student has no trainable parameters to distil into")
    if hints is not None:
        parameters += list(hints.regressors.parameters())
    optimizer = torch.optim.Adam(parameters, lr=options.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.steps)
    generator = torch.Generator().manual_seed(options.seed)
    losses = []
    _set_training(student, min(options.batch_size, len(x)))
    for step, index in enumerate(_batches(len(x), options.batch_size, options.steps, generator), 1):
        batch = augment(x[index], generator) if options.augment else x[index]
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            targets = teacher(batch)
        logits = student(batch)
        loss = distillation_loss(logits, targets, options.temperature)
        if y is not None:
            loss = (1 - options.label_weight) * loss + options.label_weight * F.cross_entropy(logits, y[index])
        if hints is not None:
            loss = loss + options.hint_weight * hints.loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % PROGRESS_EVERY == 0 or step == options.steps:
            progress("distill", step, options.steps)
    return losses


def distill(
    student: "nn.Module",
    teacher: "nn.Module",
    images: np.ndarray,
    options: DistillOptions = DistillOptions(),
    labels: Optional[np.ndarray] = None,
    progress: Progress = _quiet,
) -> DistillReport:
    """Train ``student`` in place to match ``teacher`` on ``images`` (float32 NCHW, the
    models' preprocessing applied); ``labels`` (int class per image) add cross-entropy.

    The teacher runs in eval mode without gradients (its mode is restored afterwards); the
    student is left in eval mode. Deterministic for a given seed on the same machine and
    torch build; the global random state is left as it was.
    """
    import torch

    x_np = _check_images(images)
    y_np = _check_labels(labels, len(x_np))
    device = next(student.parameters()).device
    x = torch.from_numpy(x_np).to(device)
    y = torch.from_numpy(y_np).to(device) if y_np is not None else None
    teacher_was_training = teacher.training
    teacher.eval()
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]), _channels_last(student, teacher):  # dropout draws from the global generator
            torch.manual_seed(options.seed)
            hints = Hints(student, teacher, x[: min(2, len(x))].contiguous(memory_format=torch.channels_last)) if options.hints else None
            try:
                losses = _train(student, teacher, x, y, options, progress, hints)
            finally:
                if hints is not None:
                    hints.close()
    finally:
        teacher.train(teacher_was_training)
        student.eval()
    window = min(LOSS_WINDOW, len(losses))
    return DistillReport(
        steps=options.steps,
        images=len(x_np),
        labelled=y is not None,
        first_loss=float(np.mean(losses[:window])),
        last_loss=float(np.mean(losses[-window:])),
        seconds=time.perf_counter() - start,
        hint_layers=hints.layers if hints is not None else (),
    )
