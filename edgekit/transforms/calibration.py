"""One FP32 pass over the calibration images: activation ranges and reference logits, from
one batched session.

ONNX Runtime's own calibrator feeds one image per run to an augmented model and merges a
numpy histogram per tensor per image; on EfficientNet-Lite0 that took 22 s for 77 images.
Here one session with every tensor to calibrate as an extra output runs in batches, and
each tensor's histogram of |x| is a ``bincount`` over fixed-width bins: the first batch
sets the width (its max / 2048), later batches that reach further add bins of the same
width, as ONNX Runtime's collector does. Memory stays bounded by one batch of tensors.

Thresholds, per method:
* minmax: max |x|;
* percentile: the left edge of the bin where the cumulative share of |x| reaches the
  percentile (ONNX Runtime's rule), never above max |x|;
* entropy: TensorRT's KL search over the same histogram (see entropy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .entropy import kl_threshold
from .qdq_graph import shape_arithmetic, session, with_outputs
from ..progress import Progress, quiet

NUM_BINS = 2048
MAX_BINS = 8 * NUM_BINS  # beyond this, neighbouring bins are merged (AbsHistogram)
BATCH = 8
MAX_SAMPLES = 1 << 20  # values per tensor and batch that enter its histogram (all enter its max)


@dataclass
class AbsHistogram:
    """Histogram of |x| over bins of one width, extended as larger values arrive.

    The first batch with a non-zero value sets the width (its max / NUM_BINS); a later
    batch reaching further adds bins of the same width, as ONNX Runtime's collector does.
    A tensor whose first batches are tiny and later ones large (random-init RegNet's
    squeeze-excite gates) would need billions of such bins: past MAX_BINS the width is
    multiplied by a whole factor and neighbouring bins merged, so every edge stays an
    edge of the finer histogram and memory stays bounded.
    """

    counts: Optional[np.ndarray] = None
    width: float = 0.0
    max_abs: float = 0.0
    zeros: int = 0  # values seen before any non-zero one (they go to the first bin)

    def add(self, values: np.ndarray) -> None:
        flat = values.reshape(-1)
        if flat.size > MAX_SAMPLES:  # the extreme value from every element, the shape of the rest from a sample
            top = max(float(flat.max()), -float(flat.min()))  # no temporary the size of the tensor
            if not np.isfinite(top):
                finite = flat[np.isfinite(flat)]
                top = float(np.abs(finite).max()) if finite.size else 0.0
            self.max_abs = max(self.max_abs, top)
            flat = _sample(flat)
        a = np.abs(flat, dtype=np.float32)
        if a.size == 0:
            return
        top = float(a.max())
        if not np.isfinite(top):
            a = a[np.isfinite(a)]
            top = float(a.max()) if a.size else 0.0
        if a.size == 0:
            return
        self.max_abs = max(self.max_abs, top)
        if self.counts is None:
            if top == 0.0:
                self.zeros += a.size
                return
            self.width = top / NUM_BINS
            self.counts = np.zeros(NUM_BINS, dtype=np.int64)
            self.counts[0] += self.zeros
        bins = int(np.floor(top / self.width)) + 1
        if bins > MAX_BINS:
            self._coarsen(-(-bins // MAX_BINS))
            bins = int(np.floor(top / self.width)) + 1
        if bins > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(bins - len(self.counts), dtype=np.int64)])
        np.multiply(a, np.float32(1.0 / self.width), out=a)
        np.minimum(a, np.float32(len(self.counts) - 1), out=a)
        self.counts += np.bincount(a.astype(np.intp), minlength=len(self.counts))

    def mse_threshold(self, levels: int = 127) -> float:
        """The range t minimising the expected squared error of symmetric INT8 with step
        t / levels: rounding (step^2 / 12 per value inside) plus clipping ((|x| - t)^2 per
        value beyond), over the histogram's bin centres."""
        counts = self.counts.astype(np.float64)
        centres = (np.arange(len(counts)) + 0.5) * self.width
        cum = np.cumsum(counts)
        cum_x = np.cumsum(counts * centres)
        cum_x2 = np.cumsum(counts * centres**2)
        total, total_x, total_x2 = cum[-1], cum_x[-1], cum_x2[-1]
        candidates = np.arange(max(len(counts) // 16, 1), len(counts)) + 1  # t = the right edge of bin k - 1
        t = candidates * self.width
        inside = cum[candidates - 1]
        beyond_n, beyond_x, beyond_x2 = total - inside, total_x - cum_x[candidates - 1], total_x2 - cum_x2[candidates - 1]
        error = inside * (t / levels) ** 2 / 12.0 + beyond_x2 - 2.0 * t * beyond_x + beyond_n * t**2
        return min(float(t[int(np.argmin(error))]), self.max_abs)

    def _coarsen(self, factor: int) -> None:
        """Bins ``factor`` times wider, each the sum of ``factor`` old ones."""
        self.counts = np.add.reduceat(self.counts, np.arange(0, len(self.counts), factor))
        self.width *= factor

    @property
    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1, dtype=np.float64) * self.width

    def threshold(self, method: str, percentile: float) -> float:
        if self.counts is None or self.max_abs == 0.0:
            return 0.0
        if method == "minmax":
            return self.max_abs
        if method == "entropy":
            return min(float(kl_threshold(self.counts, self.edges)), self.max_abs)
        if method == "mse":
            return self.mse_threshold()
        cdf = np.cumsum(self.counts) / self.counts.sum()
        index = int(np.searchsorted(cdf, percentile / 100.0))
        return min(float(self.edges[min(index, len(self.counts) - 1)]), self.max_abs)


def _sample(flat: np.ndarray) -> np.ndarray:
    """About MAX_SAMPLES elements of ``flat`` at a fixed stride from a seeded offset (a view,
    so runs repeat and nothing is copied): large tensors' histograms come from a sample,
    which keeps the calibration pass in the model's time rather than the histograms'."""
    step = -(-flat.size // MAX_SAMPLES)
    return flat[int(np.random.default_rng(flat.size).integers(step)) :: step]


@dataclass
class FloatPass:
    """What the FP32 model showed on the calibration images."""

    thresholds: dict[str, float]  # tensor -> symmetric range |x| <= t
    logits: np.ndarray


def tensors_to_calibrate(model, op_types: Sequence[str], nodes: Optional[set[str]] = None) -> list[str]:
    """Float inputs and outputs of the nodes to quantize (the tensors ONNX Runtime's
    quantizer looks up in a calibration cache), initializers excluded.

    Nodes of the shape subgraph are never quantized, but a tensor it computes can feed one
    that is (a class token broadcast by Expand to the batch size, an attention scale computed
    as Sqrt of a dimension): such a tensor needs a range like any other."""
    import onnx

    from .qdq_graph import node_label

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    initializers = {i.name for i in model.graph.initializer}
    shape_nodes = shape_arithmetic(model)[0]
    wanted = set(op_types)
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type not in wanted or node_label(node) in shape_nodes or (nodes is not None and node_label(node) not in nodes):
            continue
        for name in [*node.input, *node.output]:
            info = infos.get(name)
            if not name or name in initializers or name in names or info is None:
                continue
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                names.append(name)
    return names


def float_pass(fp32_model, x: np.ndarray, op_types: Sequence[str], method: str, percentile: float, progress: Progress = quiet,
               nodes: Optional[set[str]] = None) -> FloatPass:
    """Ranges of every tensor to calibrate (of ``nodes`` only, where given), and the reference logits."""
    tensors = tensors_to_calibrate(fp32_model, op_types, nodes)
    logits_name = fp32_model.graph.output[0].name
    fetch = list(dict.fromkeys([logits_name, *tensors]))
    sess = session(with_outputs(fp32_model, fetch), optimize=True)  # FP32: fusing changes no value fetched
    input_name = sess.get_inputs()[0].name
    histograms = {t: AbsHistogram() for t in tensors}
    logits = []
    steps = (len(x) + BATCH - 1) // BATCH
    for step, start in enumerate(range(0, len(x), BATCH)):
        progress("calibrating", step, steps)
        values = dict(zip(fetch, sess.run(fetch, {input_name: x[start : start + BATCH]})))
        logits.append(values[logits_name])
        for t in tensors:
            histograms[t].add(values[t])
        del values
    progress("calibrating", steps, steps)
    return FloatPass({t: h.threshold(method, percentile) for t, h in histograms.items()}, np.concatenate(logits))


def write_calibration_cache(thresholds: dict[str, float], method: str, cache: Path) -> None:
    """The ranges in ONNX Runtime's calibration-cache format (symmetric)."""
    from onnxruntime.quantization import CalibrationMethod, save_tensors_data
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    kind = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.Percentile}[method]
    data = {name: TensorData(lowest=np.float32(-t), highest=np.float32(t)) for name, t in thresholds.items()}
    save_tensors_data(TensorsData(kind, data), cache)
