"""Quantization-aware training (QAT) of an INT8 QDQ graph, exported as the same QDQ graph.

Post-training quantization (``quantize.py``) decides everything about the INT8 model:
which tensors carry a QuantizeLinear/DequantizeLinear pair and with what scale, which
nodes fall back to float, the per-channel symmetric INT8 weights, the INT32 biases. QAT
keeps the graph (placements, fallbacks, formats) and learns better float weights, biases
and activation scales under that exact quantization, then writes them back into it.

How (the choices, and why):

* **The graph is the model that trains.** The PTQ QDQ graph is run in PyTorch by a small
  interpreter (``onnx_to_torch.graph_module``): every ONNX node becomes the equivalent torch call, a
  QuantizeLinear becomes ``clamp(round(x / s) + zp, qmin, qmax)`` with a straight-through
  round, a DequantizeLinear ``(q - zp) * s``. So the fake quantization sits on every
  tensor the deployed graph quantizes (convolution inputs, residual adds, pooling
  outputs...), fallback nodes stay float, and nothing has to be matched between torch
  modules and ONNX nodes. Where TensorRT Model Optimizer and NNCF insert fake quantizers
  into the torch module and export QDQ from it afterwards, here the QDQ graph exists
  first and the training reproduces it; the export cannot drift from it.
* **BatchNorm is folded.** The exported FP32 graph already has BatchNorm folded into the
  convolutions, and INT8 quantizes those folded weights; QAT trains the folded weights
  directly (BatchNorm statistics are frozen, the usual last phase of QAT).
* **Weights**: trainable float tensors, started from the FP32 graph's values (matched by
  node name, the way the quantizer's fallback reads them); in every forward pass each
  output channel is quantized symmetrically to [-127, 127] with scale ``max|w| / 127``,
  recomputed from the current weights (ONNX Runtime's formula), gradient straight through.
  Biases start from the PTQ graph's dequantized INT32 biases (bias correction included),
  so training starts exactly at the PTQ model, and are quantized to the INT32 grid
  ``s_in * s_w`` as the graph will store them. Fallback nodes' float weights train too.
* **Activation scales** (signed INT8, zero point 0, one per tensor as calibrated) start
  at the calibrated values and are learned by default, LSQ-style: the straight-through
  round gives LSQ's gradient; the parameter is log(scale), so it stays positive and
  Adam's steps are relative. A tensor whose range calibration set by a few outlier
  channels gets a finer scale that clips them, which fixed scales cannot do (see
  benchmarks/results/qat.md). ``learn_scales=False`` keeps every calibrated scale as is.
* **Training**: distillation from the FP32 graph (the same interpreter without Q/DQ):
  ``T^2 * KL`` on logits, optionally mixed with cross-entropy on labels; Adam, cosine
  decay, the augmentation and batching of ``distill.py``.
* **What is written** is decided on images it did not train on: a seeded tenth of the
  images (``selection``; at least SELECTION_MIN of them) is held back from training, and
  the KL vs FP32 on them is measured at the start and after every epoch. The last epoch
  is written if its KL there is lower than the start's (the PTQ values), else the PTQ
  values are kept (``chosen_epoch``): QAT does not write a model that did worse than
  post-training INT8 on images it has not seen. Judged on the training images, as before, QAT
  wrote overfitted models: on EfficientNet-Lite0's 77 photos the training KL kept
  falling while the KL on other views of the same photos rose (0.0045 -> 0.57 at lr
  3e-4, 0.30 at 1e-4).
* **Export**: a copy of the PTQ graph with new initializer values only: INT8 weights and
  their per-channel scales from the trained weights (the scale fake quantization used),
  INT32 biases on the new ``s_in * s_w`` grid, float weights of fallback nodes, the
  learned activation scales. No bias correction afterwards: training already
  corrected the biases. Same nodes, same Q/DQ placements, same fallbacks: one INT8 format.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..core import AccuracyStats, DataError, UsageError
from ..options import declared
from ..evaluation import compare_to_baseline, kl_rows
from .distill import check_training_options
from .onnx_to_torch import TRAINABLE_OPS, WEIGHT_QMAX, graph_module
from .qdq_graph import node_label, producers, quantized_node_labels, run_logits
from ..progress import Progress
from ..progress import quiet as _quiet

if TYPE_CHECKING:
    from torch import nn

PROGRESS_EVERY = 5  # steps
SELECTION_MIN = 8  # held-back images at the least (fewer cannot judge anything)
SELECTION_FROM = 40  # images; below this nothing is held back (each one is worth more for training)
LOSS_WINDOW = 10
SIMULATION_CHECK_IMAGES = 64


@dataclass(frozen=True)
class QATOptions:
    """``epochs`` passes over the training images in batches of ``batch_size``; Adam at
    ``lr`` (weights and biases) and ``scale_lr`` (log activation scales, when
    ``learn_scales``), decayed to zero on a cosine. Loss ``T^2 * KL(fp32_T || int8_T)``,
    mixed with cross-entropy (weight ``label_weight``) where every image has a label.

    Why these defaults (benchmarks/results/qat.md, and development runs on the digits with
    outlier channels, 3 seeds, 12 epochs, test top-1 vs FP32): lr 3e-4 on the whole
    training split (1,257 images) left the INT8 model 0.37, 0.37 and 0.74 points below
    FP32 where 1e-4 left 0.19, 1.11 and 0.93, and 200 images left 1.2 (hence --qat-limit).
    A real pretrained network with few images is where a large lr overfits (EfficientNet-
    Lite0, 62 photos: KL vs FP32 on other views 0.0045 -> 0.57 at 3e-4, 0.30 at 1e-4, and
    0.0082 at 1e-5, still worse than post-training INT8's 0.0048); the held-back tenth
    catches it and keeps the post-training values (``chosen_epoch``). Learned scales: on
    the digits with 200 images, 1.23 points below FP32 against 2.53 with the calibrated
    scales kept. Distillation only (label_weight 0): cross-entropy mixed in at 0.5 left the
    digits 0.6-2.8 points below FP32 (one seed's QAT worse than its start), and on a few
    hundred labelled (and flipped) digits pulled the INT8 model away from FP32 in every run."""

    epochs: int = declared("qat_epochs").field(default=4)  # --qat-epochs 0 (its default) asks for no QAT at all
    lr: float = declared("qat_lr").field(convert=float)
    selection: float = 0.1  # the share of the images held back to judge the last epoch against the start (0: judged on the training images)
    batch_size: int = 32
    temperature: float = 1.0
    label_weight: float = 0.0
    learn_scales: bool = True
    scale_lr: float = 1e-2  # Adam's lr for learned activation scales (on log(scale): about 1% a step)
    augment: bool = True
    seed: int = declared("seed").field()

    def __post_init__(self) -> None:
        check_training_options("QAT", self, whole=("epochs", "batch_size"), positive=("lr", "scale_lr", "temperature"))
        if not 0.0 <= self.selection < 1.0:
            raise UsageError(f"QAT selection share must be in [0, 1), got {self.selection}")


@dataclass(frozen=True)
class QATReport:
    options: QATOptions
    images: int  # all of them: trained on, or held back for the choice of epoch
    selection_images: int  # held back: the epoch written is the one with the lowest KL on these (0: chosen on the training images)
    labelled: bool  # cross-entropy on labels was part of the loss
    steps: int
    best_epoch: int  # the epoch whose weights were written (0: the post-training values)
    epoch_kl: tuple[float, ...]  # simulated KL vs FP32 on the selection images (else the training images), epoch 0 first
    quantized_weights: int  # INT8 weight tensors trained under fake quantization
    float_weights: int  # weights and biases of fallback nodes, trained in float
    activation_scales: int  # distinct activation scales (kept, or learned)
    scales: str  # "calibrated (kept)" or "learned from calibration (LSQ)"
    first_loss: float  # mean over the first LOSS_WINDOW steps
    last_loss: float
    seconds: float
    before: AccuracyStats  # the PTQ graph vs FP32 on all the images (ONNX Runtime)
    after: AccuracyStats  # the QAT graph vs FP32 on the same images
    selection_before: Optional[AccuracyStats]  # on the held-back images only (None without them)
    selection_after: Optional[AccuracyStats]
    simulation_max_abs_diff: float  # |torch simulation - ONNX Runtime| logits of the written graph
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)




# --------------------------------------------------------------------------- starting values and export


def _name_nodes(model) -> None:
    """Unnamed nodes get the names quantize_onnx gives them (fallback addresses nodes by name)."""
    if any(not n.name for n in model.graph.node):
        for i, n in enumerate(model.graph.node):
            n.name = n.name or f"{n.op_type}_{i}"


def float_weights(qdq_model, fp32_model) -> dict[str, np.ndarray]:
    """Quantized weight initializer of ``qdq_model`` -> the float weight it was made from:
    the FP32 graph's weight of the node with the same name (else the initializer ONNX
    Runtime's quantizer named ``<weight>_quantized``)."""
    from onnx import numpy_helper

    fp32_nodes = {node_label(n): n for n in fp32_model.graph.node if n.op_type in TRAINABLE_OPS}
    fp32_inits = {i.name: i for i in fp32_model.graph.initializer}
    made_by = producers(qdq_model)
    found = {}
    for node in qdq_model.graph.node:
        if node.op_type not in TRAINABLE_OPS or len(node.input) < 2:
            continue
        dq = made_by.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        source = fp32_nodes.get(node_label(node))
        name = source.input[1] if source is not None and len(source.input) > 1 else None
        if name not in fp32_inits:
            name = dq.input[0].removesuffix("_quantized")
        if name in fp32_inits:
            found[dq.input[0]] = numpy_helper.to_array(fp32_inits[name])
    return found


def _ort_weight_scale(w: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """ONNX Runtime's symmetric INT8 scale: 2 max|w| / 254 in float64, stored as float32;
    1 where that is below the smallest normal float32."""
    a = np.abs(w.astype(np.float64))
    amax = a.max() if axis is None else np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1)
    scale = (2 * amax / (2 * WEIGHT_QMAX)).astype(np.float32)
    return np.where(scale < np.finfo(np.float32).tiny, np.float32(1.0), scale).astype(np.float32)


def write_qdq(module: "nn.Module", qdq_model):
    """A copy of ``qdq_model`` holding ``module``'s trained values: INT8 weights with their
    per-channel scales, INT32 biases on the ``s_in * s_w`` grid, float weights of fallback
    nodes, learned activation scales. Nodes are untouched."""
    from onnx import numpy_helper

    from .qdq_graph import copy_model

    model = copy_model(qdq_model)
    inits = {i.name: i for i in model.graph.initializer}
    scale_of = {n.input[0]: n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    old = {name: numpy_helper.to_array(inits[name]) for name in inits}

    def put(name: str, array: np.ndarray) -> None:
        array = np.asarray(array).astype(old[name].dtype).reshape(old[name].shape)
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    def value(name: str) -> np.ndarray:
        return module.tensor(name).detach().cpu().numpy()

    for name in module.scale_params:
        put(name, np.maximum(value(name), np.float32(1e-12)))
    for name in module.float_params:
        put(name, value(name))
    new_scales = {}
    for q_name, axis in module.weight_axes.items():
        w = value(q_name)
        scale = _ort_weight_scale(w, axis)
        s = scale if axis is None else scale.reshape([-1 if d == axis % w.ndim else 1 for d in range(w.ndim)])
        q = np.clip(np.round(w.astype(np.float32) / s), -WEIGHT_QMAX, WEIGHT_QMAX)
        put(q_name, q)
        put(scale_of[q_name], scale)
        new_scales[q_name] = scale
    for q_name, (_, input_scale, beta, bias_scale_name, weight_q_name) in module.bias_links.items():
        s_in = value(input_scale) if input_scale in module.scale_params else old[input_scale]
        bias_scale = (np.asarray(s_in, np.float32) * new_scales[weight_q_name] * np.float32(beta)).astype(np.float32)
        bias_scale = np.where(bias_scale == 0, np.float32(1.0), bias_scale)
        b = value(q_name).astype(np.float64)
        q = np.clip(np.round(b / bias_scale.astype(np.float64)), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        put(q_name, q)
        put(bias_scale_name, np.broadcast_to(bias_scale, old[bias_scale_name].shape))
    return model


# --------------------------------------------------------------------------- training


def _training_labels(labels, count: int, classes: int) -> tuple[Optional[np.ndarray], list, Optional[str]]:
    """(one int class per image for cross-entropy or None, labels as compare_to_baseline
    reads them, a note when labels were given but not used)."""
    if labels is None:
        return None, [None] * count, None
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        labels = [(int(v),) for v in labels]
    labels = list(labels)
    if len(labels) != count:
        raise DataError(f"{len(labels)} labels for {count} images")
    if not all(labels):
        return None, labels, ("labels missing for some images: distillation only" if any(labels) else None)
    primary = np.array([label[0] for label in labels], dtype=np.int64)
    if primary.min() < 0 or primary.max() >= classes:
        return None, labels, f"labels outside the model's {classes} outputs: distillation only"
    return primary, labels, None


def chosen_epoch(per_image: Sequence[np.ndarray]) -> int:
    """The epoch to write, from each epoch's per-image KL vs FP32 on the held-back images
    (epoch 0: the start, the post-training values): the last one, where the cosine
    schedule ends, if its mean is lower than the start's; else the start. Earlier epochs
    are not candidates: picking the lowest point of a noisy curve chose early epochs by
    chance (digits with outlier channels: epoch 1 of 12 chosen on 126 held-back images,
    96.1% top-1 on the test digits, where the last epoch gave 98.5%). Nor is a test of
    significance the judge: per-image KL is heavy-tailed, a few hard images carry the
    mean, and both a t-test and a signed-rank test turned down six- to fifteenfold gains
    (0.043 -> 0.007 on 126 images, 0.27 -> 0.018 on 20). QATReport keeps both means."""
    last = len(per_image) - 1
    return last if last and float(per_image[last].mean()) < float(per_image[0].mean()) else 0


def _train(student, teacher, x, y, options: QATOptions, judged: np.ndarray, reference: np.ndarray, progress: Progress) -> tuple[list[float], list[float], int]:
    """Train ``student`` in place on ``x``; returns (loss per step, simulated KL vs
    ``reference`` on the un-augmented images ``judged`` after each epoch, epoch 0 = the
    starting point, the epoch whose weights ``student`` holds: see chosen_epoch)."""
    import copy

    import torch
    import torch.nn.functional as F

    from .distill import _batches, augment, distillation_loss

    scales = {id(p) for p in student.scale_parameters()}
    weights = [p for p in student.parameters() if p.requires_grad and id(p) not in scales]
    if not weights:
        raise UsageError("the quantized graph has no Conv/Gemm/MatMul weights to train")
    per_epoch = math.ceil(len(x) / min(options.batch_size, len(x)))
    steps = options.epochs * per_epoch
    groups = [{"params": weights, "lr": options.lr}]
    if scales:
        groups.append({"params": student.scale_parameters(), "lr": options.scale_lr})
    optimizer = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(options.seed)
    losses: list[float] = []
    per_image = [kl_rows(reference, simulate(student, judged))]
    start = copy.deepcopy(student.state_dict())
    student.train()
    for step, index in enumerate(_batches(len(x), options.batch_size, steps, generator), 1):
        batch = augment(x[index], generator) if options.augment else x[index]
        with torch.no_grad():
            targets = teacher(batch)
        logits = student(batch)
        loss = distillation_loss(logits, targets, options.temperature)
        if y is not None:
            loss = (1 - options.label_weight) * loss + options.label_weight * F.cross_entropy(logits, y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % PROGRESS_EVERY == 0 or step == steps:
            progress("quantization-aware training", step, steps)
        if step % per_epoch == 0:
            student.eval()
            per_image.append(kl_rows(reference, simulate(student, judged)))
            student.train()
    student.eval()
    epoch = chosen_epoch(per_image)
    if epoch == 0:
        student.load_state_dict(start)
    return losses, [max(0.0, float(v.mean())) for v in per_image], epoch


def selection_split(count: int, options: QATOptions) -> tuple[np.ndarray, np.ndarray]:
    """(indices trained on, indices held back to choose the epoch): a seeded
    ``options.selection`` share held back, none below SELECTION_FROM images."""
    every = np.arange(count)
    held_count = max(SELECTION_MIN, round(count * options.selection)) if options.selection and count >= SELECTION_FROM else 0
    if not held_count:
        return every, every[:0]
    held = np.sort(np.random.default_rng(options.seed).permutation(count)[:held_count])
    return np.setdiff1d(every, held), held


def simulate(module: "nn.Module", x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits of a graph module on ``x`` (no gradients)."""
    import torch

    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy() for i in range(0, len(x), batch_size)])


def qat_onnx(
    fp32_path: Path,
    qdq_path: Path,
    out_path: Path,
    images: np.ndarray,
    labels: Optional[Sequence[Optional[tuple[int, ...]]]] = None,
    options: QATOptions = QATOptions(),
    progress: Progress = _quiet,
) -> QATReport:
    """Fine-tune the INT8 QDQ graph at ``qdq_path`` (made from ``fp32_path`` by
    ``quantize_onnx``) on ``images`` (float32 NCHW, preprocessed) and write the same graph
    with the trained values to ``out_path``. ``labels`` as for ``quantize_onnx`` (or one
    int per image) add cross-entropy when every image has one.

    A seeded ``options.selection`` share of ``images`` is held back from training to
    choose the epoch written. Fidelity before and after is measured on all ``images``
    (mostly the training images) and on the held-back ones alone: judge the result on
    images none of this has seen.
    """
    import onnx
    import torch

    from .distill import _check_images

    x_np = _check_images(images)
    fp32_model = onnx.load(str(fp32_path))
    _name_nodes(fp32_model)
    qdq_model = onnx.load(str(qdq_path))
    notes: list[str] = []
    progress(f"QAT: FP32 and PTQ logits on {len(x_np)} images", None, None)
    reference = run_logits(fp32_model, x_np)
    y_np, label_list, note = _training_labels(labels, len(x_np), reference.shape[1])
    if note:
        notes.append(note)
    if options.label_weight == 0:
        y_np = None  # labels only measure
    before_logits = run_logits(qdq_model, x_np)
    before = compare_to_baseline(before_logits, reference, label_list)
    teacher = graph_module(fp32_model, trainable=False).eval()
    starting = float_weights(qdq_model, fp32_model)
    student = graph_module(qdq_model, starting, options.learn_scales)
    missing = [k for k in student.weight_axes if k not in starting]
    if missing:
        notes.append(f"{len(missing)} quantized weights not found in the FP32 graph; they start from their INT8 values")

    train, held = selection_split(len(x_np), options)
    if options.selection and not len(held):
        notes.append(f"{len(x_np)} images: too few to hold some back, so the epoch written is chosen on the training images")
    judged = held if len(held) else train
    start = time.perf_counter()
    x = torch.from_numpy(x_np[train])
    y = torch.from_numpy(y_np[train]) if y_np is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        losses, epoch_kl, best_epoch = _train(student, teacher, x, y, options, x_np[judged], reference[judged], progress)
    seconds = time.perf_counter() - start
    if best_epoch == 0:
        where = f"the {len(held)} held-back images" if len(held) else "the training images"
        notes.append(f"the last epoch was no better than post-training INT8 on {where} (KL vs FP32 {epoch_kl[0]:.4f} -> {epoch_kl[-1]:.4f}): "
                     "the post-training values are kept (more images, or a lower learning rate where the KL rose)")

    # kept means kept: writing the start back through the module would round learned log-scales
    model = write_qdq(student, qdq_model) if best_epoch else qdq_model
    if quantized_node_labels(model) != quantized_node_labels(qdq_model):  # cannot happen: only values change
        raise RuntimeError("QAT changed which nodes are quantized")
    onnx.save(model, str(out_path))
    after_logits = run_logits(model, x_np)
    after = compare_to_baseline(after_logits, reference, label_list)
    on_held = (lambda logits: compare_to_baseline(logits[held], reference[held], [label_list[i] for i in held])) if len(held) else (lambda logits: None)
    check = min(SIMULATION_CHECK_IMAGES, len(x_np))
    sim_diff = float(np.abs(simulate(student, x_np[:check]) - after_logits[:check]).max())
    window = min(LOSS_WINDOW, len(losses))
    return QATReport(
        options=options,
        images=len(x_np),
        selection_images=len(held),
        labelled=y is not None,
        steps=len(losses),
        best_epoch=best_epoch,
        epoch_kl=tuple(epoch_kl),
        quantized_weights=len(student.weight_axes),
        float_weights=len(student.float_params),
        activation_scales=len(student.activation_scales),
        scales="learned from calibration (LSQ)" if options.learn_scales else "calibrated (kept)",
        first_loss=float(np.mean(losses[:window])),
        last_loss=float(np.mean(losses[-window:])),
        seconds=seconds,
        before=before,
        after=after,
        selection_before=on_held(before_logits),
        selection_after=on_held(after_logits),
        simulation_max_abs_diff=sim_diff,
        notes=tuple(notes),
    )
