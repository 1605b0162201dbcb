"""FP32 ONNX -> INT8 QDQ ONNX that TensorRT, OpenVINO and ONNX Runtime all read.

The graph is the single source of truth for INT8 (see docs/architecture.md): per-channel symmetric
INT8 weights, signed symmetric INT8 activations (zero point 0, as TensorRT's explicit
quantization requires), Q/DQ inserted by ONNX Runtime's quantizer. On top of plain
post-training quantization, three steps keep accuracy on depthwise networks:

* range calibration by min/max, percentile or entropy (histogram) over real images;
* sensitivity analysis and fallback: each quantized node is read in float in turn (its
  input and weights bypass their Q/DQ) to see how much of the KL divergence vs FP32 it
  causes; the worst go back to float, one at a time, until a stated budget (top-1 drop,
  agreement, KL vs FP32) is met;
* empirical bias correction: layer by layer, in graph order, the mean per-channel output
  shift that quantization leaves on each Conv/Gemm (measured on calibration images
  against FP32) is folded back into its INT32 bias; kept only where it lowers the KL.

Graph outputs (the logits) stay in float: quantizing them only adds error.

Everything here works on ONNX files and numpy arrays, so it applies to any exported
model, including the tests' small digits network.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..evaluation import compare_to_baseline
from ..core import AccuracyStats, DataError, UsageError
from .entropy import kl_threshold
from .qdq_graph import (
    bypass_quantization,
    compute_nodes,
    fold_activation_qdq,
    node_label,
    producers,
    quantized_node_labels,
    run_logits,
    session,
    strip_output_qdq,
    with_outputs,
)

METHODS = ("minmax", "percentile", "entropy")
# Operators given Q/DQ: those with integer kernels (or free requantization) on ONNX
# Runtime, OpenVINO and TensorRT. Anything else (Exp, Erf, Div, Sqrt...) stays in float
# and is listed in the report.
QUANTIZABLE_OP_TYPES = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Pad",
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather", "Softmax",
)
MIN_CALIBRATION_IMAGES = 8
SENSITIVITY_IMAGES = 48  # images used to rank nodes; fewer keeps the analysis quick
BIAS_CORRECTION_IMAGES = 64

# (stage, done, total) -> None
Progress = Callable[[str, Optional[int], Optional[int]], None]


def _quiet(stage: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
    pass


@dataclass(frozen=True)
class Budget:
    """What INT8 may cost, measured against FP32 on the calibration images."""

    max_top1_drop: Optional[float] = None  # points; used only where labels exist
    min_agreement: Optional[float] = 98.0  # percent of images with the same top-1
    max_kl: Optional[float] = 0.004  # mean KL(fp32 || int8)

    def met(self, stats: AccuracyStats) -> bool:
        checks = []
        if self.max_top1_drop is not None and stats.top1_drop is not None:
            checks.append(stats.top1_drop <= self.max_top1_drop)
        if self.min_agreement is not None:
            checks.append(stats.agreement is not None and stats.agreement >= self.min_agreement)
        if self.max_kl is not None:
            checks.append(stats.mean_kl is not None and stats.mean_kl <= self.max_kl)
        return all(checks)

    def describe(self) -> str:
        parts = []
        if self.max_top1_drop is not None:
            parts.append(f"top-1 drop <= {self.max_top1_drop} points")
        if self.min_agreement is not None:
            parts.append(f"agreement >= {self.min_agreement}%")
        if self.max_kl is not None:
            parts.append(f"mean KL <= {self.max_kl}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class QuantizeOptions:
    method: str = "percentile"
    percentile: float = 99.999
    bias_correction: bool = True
    fallback: bool = True
    max_fallback_nodes: int = 8
    budget: Budget = Budget()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_fallback_nodes < 0:
            raise UsageError("max fallback nodes must be >= 0")


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    output_rel_error: float  # ||y_int8 - y_fp32|| / ||y_fp32|| at this node, all nodes quantized
    kl_if_float: Optional[float]  # model KL when only this node reads float (None: not measured)


@dataclass(frozen=True)
class FallbackStep:
    node: str
    reason: str
    after: AccuracyStats


@dataclass(frozen=True)
class QuantizationReport:
    options: QuantizeOptions
    calibration_images: int
    quantized_nodes: int
    float_nodes: dict[str, int]  # op type -> count of nodes computing in float (see float_ops)
    initial: AccuracyStats  # every node quantized, no bias correction
    final: AccuracyStats
    budget_met: bool
    bias_correction_applied: bool
    sensitivity: tuple[NodeSensitivity, ...] = ()
    fallback: tuple[FallbackStep, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- quantize


class _ArrayReader:
    """Feeds images one at a time (ORT's histogram collectors need batch 1)."""

    def __init__(self, input_name: str, x: np.ndarray):
        self._input_name = input_name
        self._x = x
        self._i = 0

    def get_next(self):
        if self._i >= len(self._x):
            return None
        item = {self._input_name: self._x[self._i : self._i + 1]}
        self._i += 1
        return item

    def rewind(self) -> None:
        self._i = 0


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[name]


def calibrate_ranges(fp32_path: Path, x: np.ndarray, options: QuantizeOptions, cache: Path, chunk: int = 16) -> None:
    """Activation ranges into ``cache`` (ONNX Runtime's calibration-cache format).

    The calibrator is fed in chunks, so its memory stays bounded however many images
    there are (ORT's MinMax keeps every intermediate output of one collect call, and its
    max_intermediate_outputs option drops data). Histogram methods get 2048 bins of |x|;
    entropy thresholds are then found by edgekit's TensorRT-style search (see entropy.py).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, save_tensors_data
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator

    histogram_based = options.method in ("percentile", "entropy")
    method = CalibrationMethod.Percentile if histogram_based else CalibrationMethod.MinMax
    extra: dict = {"symmetric": True}
    if histogram_based:
        extra.update(num_bins=2048, percentile=options.percentile)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    reader_type = type("Reader", (_ArrayReader, CalibrationDataReader), {})
    with tempfile.TemporaryDirectory(prefix="edgekit-calibrate-") as tmp, _quiet_quantizer():
        calibrator = create_calibrator(
            Path(fp32_path), list(QUANTIZABLE_OP_TYPES), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method, extra_options=extra,
        )
        for start in range(0, len(x), chunk):
            calibrator.collect_data(reader_type(input_name, x[start : start + chunk]))
        if options.method == "entropy":
            ranges = {}
            for name, (hist, edges, *_) in calibrator.collector.histogram_dict.items():
                t = np.float32(kl_threshold(hist, edges))
                ranges[name] = TensorData(lowest=-t, highest=t)
            data = TensorsData(CalibrationMethod.Entropy, ranges)
        else:
            data = calibrator.compute_data()
        save_tensors_data(data, cache)


@contextlib.contextmanager
def _quiet_quantizer():
    """ORT's quantizer logs advice and histograms, and prints calibration progress."""
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root_logger.setLevel(level)


def quantize_qdq(fp32_path: Path, out_path: Path, x: np.ndarray, options: QuantizeOptions, exclude: Sequence[str], cache: Path) -> None:
    """One QDQ model; activation ranges are calibrated once into ``cache`` and re-used."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not cache.is_file():
        calibrate_ranges(fp32_path, x, options, cache)
    with _quiet_quantizer():
        quantize_static(
            str(fp32_path),
            str(out_path),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_calibration_method(options.method),  # must match the cache's
            op_types_to_quantize=list(QUANTIZABLE_OP_TYPES),
            nodes_to_exclude=list(exclude),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            calibration_cache_path=str(cache),
        )
    model = onnx.load(str(out_path))
    strip_output_qdq(model)
    fold_activation_qdq(model)
    onnx.save(model, str(out_path))


# --------------------------------------------------------------------------- bias correction


def _quantized_biases(model) -> dict[str, tuple]:
    """Node label -> (output tensor, int32 bias initializer, bias scale) for quantized biases."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    made_by = producers(model)
    found = {}
    for node in compute_nodes(model):
        bias_input = node.input[2] if len(node.input) > 2 else None
        dq = made_by.get(bias_input) if bias_input else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        found[node_label(node)] = (node.output[0], inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]]))
    return found


def _channel_means(model, names: Sequence[str], x: np.ndarray, chunk: int = 8) -> list[np.ndarray]:
    """Per-channel (axis 1) mean of each named tensor over ``x``, streamed in chunks."""
    if not names:
        return []
    sess = session(with_outputs(model, names))
    input_name = sess.get_inputs()[0].name
    sums: list = [0.0] * len(names)
    count = [0] * len(names)
    for i in range(0, len(x), chunk):
        for j, y in enumerate(sess.run(list(names), {input_name: x[i : i + chunk]})):
            axes = tuple(a for a in range(y.ndim) if a != 1)
            sums[j] = sums[j] + y.astype(np.float64).sum(axis=axes)
            count[j] += y.size // y.shape[1]
    return [s / c for s, c in zip(sums, count)]


def bias_correct(model, fp32_model, x: np.ndarray, progress: Progress = _quiet) -> int:
    """Fold each quantized node's mean per-channel output error into its INT32 bias, in graph
    order, so every node is corrected with the nodes before it already corrected. In place;
    returns how many nodes were corrected.
    """
    from onnx import numpy_helper

    fp32_outputs = {node_label(n): n.output[0] for n in compute_nodes(fp32_model)}
    targets = {k: v for k, v in _quantized_biases(model).items() if k in fp32_outputs}
    labels = list(targets)
    reference = dict(zip(labels, _channel_means(fp32_model, [fp32_outputs[k] for k in labels], x)))
    for i, label in enumerate(labels, 1):
        progress("bias correction", i, len(labels))
        output, initializer, scale = targets[label]
        (mean_q,) = _channel_means(model, [output], x)  # ORT runs only what this output needs
        shift = mean_q - reference[label]
        bias_q = numpy_helper.to_array(initializer).astype(np.int64)
        corrected = bias_q - np.round(shift / np.broadcast_to(scale, shift.shape)).astype(np.int64)
        corrected = np.clip(corrected, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        initializer.CopyFrom(numpy_helper.from_array(corrected, initializer.name))
    return len(labels)


# --------------------------------------------------------------------------- sensitivity


def output_errors(model, fp32_model, x: np.ndarray) -> dict[str, float]:
    """Relative L2 error of every quantized compute node's output vs FP32."""
    q_nodes = {node_label(n): n.output[0] for n in compute_nodes(model)}
    f_nodes = {node_label(n): n.output[0] for n in compute_nodes(fp32_model)}
    labels = [k for k in q_nodes if k in f_nodes]
    q_sess = session(with_outputs(model, [q_nodes[k] for k in labels]))
    f_sess = session(with_outputs(fp32_model, [f_nodes[k] for k in labels]))
    input_name = q_sess.get_inputs()[0].name
    err2 = dict.fromkeys(labels, 0.0)
    ref2 = dict.fromkeys(labels, 0.0)
    for i in range(0, len(x), 8):
        batch = {input_name: x[i : i + 8]}
        for k, q, f in zip(labels, q_sess.run([q_nodes[k] for k in labels], batch), f_sess.run([f_nodes[k] for k in labels], batch)):
            err2[k] += float(((q - f).astype(np.float64) ** 2).sum())
            ref2[k] += float((f.astype(np.float64) ** 2).sum())
    return {k: float(np.sqrt(err2[k] / max(ref2[k], 1e-30))) for k in labels}


def sensitivity(model, fp32_model, x: np.ndarray, reference: np.ndarray, progress: Progress = _quiet) -> list[NodeSensitivity]:
    """For each quantized node: the model's KL vs FP32 when that node alone reads float."""
    errors = output_errors(model, fp32_model, x)
    types = {node_label(n): n.op_type for n in compute_nodes(model)}
    labels = sorted(quantized_node_labels(model), key=list(types).index)
    results = []
    for i, label in enumerate(labels, 1):
        progress("sensitivity analysis", i, len(labels))
        logits = run_logits(bypass_quantization(model, fp32_model, [label]), x)
        kl = compare_to_baseline(logits, reference, [None] * len(x)).mean_kl
        results.append(NodeSensitivity(label, types[label], errors.get(label, float("nan")), kl))
    return results


# --------------------------------------------------------------------------- the whole procedure


_SHAPE_OPS = {"QuantizeLinear", "DequantizeLinear", "Flatten", "Reshape", "Shape", "Gather", "Unsqueeze", "Concat", "Constant"}


def float_ops(model) -> dict[str, int]:
    """Op type -> count of nodes that compute in float: operators outside
    QUANTIZABLE_OP_TYPES (a backend dequantizes around them), and quantizable ones whose
    input does not arrive through DequantizeLinear (left out, e.g. by fallback)."""
    made_by = producers(model)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        dequantized_input = bool(node.input) and getattr(made_by.get(node.input[0]), "op_type", None) == "DequantizeLinear"
        if node.op_type not in QUANTIZABLE_OP_TYPES or not dequantized_input:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    labels: Optional[Sequence[Optional[tuple[int, ...]]]] = None,
    options: QuantizeOptions = QuantizeOptions(),
    progress: Progress = _quiet,
) -> QuantizationReport:
    """Quantize ``fp32_path`` to ``out_path``, within ``options.budget`` where possible.

    Budget checks and fallback choices are made on the calibration images; judge the
    result on images it has not seen. When the budget cannot be met, the most accurate
    model found is kept and the report says so.
    """
    import onnx

    if len(calibration) < MIN_CALIBRATION_IMAGES:
        raise DataError(f"{len(calibration)} calibration images; at least {MIN_CALIBRATION_IMAGES} are needed")
    labels = list(labels) if labels is not None else [None] * len(calibration)
    fp32_model = onnx.load(str(fp32_path))
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
        tmp_dir = Path(tmp)
        if any(not n.name for n in fp32_model.graph.node):  # fallback addresses nodes by name
            for i, n in enumerate(fp32_model.graph.node):
                n.name = n.name or f"{n.op_type}_{i}"
            fp32_path = tmp_dir / "fp32_named.onnx"
            onnx.save(fp32_model, str(fp32_path))
        reference = run_logits(fp32_model, calibration)
        cache = tmp_dir / "calibration.json"
        counter = iter(range(1_000_000))

        def build(exclude: Sequence[str]) -> tuple[Path, AccuracyStats]:
            path = tmp_dir / f"candidate{next(counter)}.onnx"
            quantize_qdq(fp32_path, path, calibration, options, exclude, cache)
            return path, compare_to_baseline(run_logits(path, calibration), reference, labels)

        progress(f"calibrating ({options.method}) on {len(calibration)} images", None, None)
        best_path, initial = build(())
        final = initial
        progress(f"all nodes INT8: agreement {initial.agreement:.1f}%, KL {initial.mean_kl:.4f}", None, None)
        model = onnx.load(str(best_path))
        sample = calibration[:SENSITIVITY_IMAGES]
        fallback: list[FallbackStep] = []
        if options.budget.met(initial) or not options.fallback:
            # no decision rests on it, so only the cheap per-node output error is reported
            types = {node_label(n): n.op_type for n in compute_nodes(model)}
            errors = output_errors(model, fp32_model, sample)
            quantized_now = quantized_node_labels(model)
            report_nodes = [NodeSensitivity(k, types[k], v, None) for k, v in errors.items() if k in quantized_now]
        else:
            report_nodes = sensitivity(model, fp32_model, sample, reference[:SENSITIVITY_IMAGES], progress)
        if not options.budget.met(initial) and options.fallback:
            # Greedy and cumulative: nodes interact (two neighbours may only help together),
            # so a node that does not help yet stays in the set; the best prefix is kept.
            plain_kl = compare_to_baseline(run_logits(model, sample), reference[:SENSITIVITY_IMAGES], [None] * len(sample)).mean_kl
            ranked = sorted((s for s in report_nodes if s.kl_if_float is not None), key=lambda s: s.kl_if_float)
            ranked = [s for s in ranked if s.kl_if_float < plain_kl][: options.max_fallback_nodes]
            tried: list[FallbackStep] = []
            kept = 0
            for step, entry in enumerate(ranked, 1):
                progress("fallback to float", step, len(ranked))
                path, stats = build([t.node for t in tried] + [entry.node])
                reason = f"reading it in float alone takes KL from {plain_kl:.4f} to {entry.kl_if_float:.4f}"
                tried.append(FallbackStep(entry.node, reason, stats))
                if options.budget.met(stats) or stats.mean_kl < final.mean_kl:
                    best_path, final, kept = path, stats, step
                if options.budget.met(stats):
                    break
            fallback = tried[:kept]
            if ranked and not fallback:
                notes.append("no fallback improved on the all-INT8 model; it is kept")
        elif not options.budget.met(initial):
            notes.append("budget not met and fallback disabled")

        corrected = False
        if options.bias_correction:
            candidate = onnx.load(str(best_path))
            bias_correct(candidate, fp32_model, calibration[:BIAS_CORRECTION_IMAGES], progress)
            stats = compare_to_baseline(run_logits(candidate, calibration), reference, labels)
            if stats.mean_kl < final.mean_kl:
                corrected, final = True, stats
                best_path = tmp_dir / "bias_corrected.onnx"
                onnx.save(candidate, str(best_path))
            else:
                notes.append(f"bias correction did not lower KL ({stats.mean_kl:.4f} vs {final.mean_kl:.4f}); not applied")
        shutil.copyfile(best_path, out_path)

    final_model = onnx.load(str(out_path))
    quantized = quantized_node_labels(final_model)
    float_nodes = float_ops(final_model)
    return QuantizationReport(
        options=options,
        calibration_images=len(calibration),
        quantized_nodes=len(quantized),
        float_nodes=float_nodes,
        initial=initial,
        final=final,
        budget_met=options.budget.met(final),
        bias_correction_applied=corrected,
        sensitivity=tuple(sorted(report_nodes, key=lambda s: (s.kl_if_float if s.kl_if_float is not None else 0.0, -s.output_rel_error))),
        fallback=tuple(fallback),
        notes=tuple(notes),
    )
