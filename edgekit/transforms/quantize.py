"""FP32 ONNX -> INT8 QDQ ONNX that TensorRT, OpenVINO and ONNX Runtime all read.

The graph is the single source of truth for INT8 (see docs/architecture.md): per-channel symmetric
INT8 weights, signed symmetric INT8 activations (zero point 0, as TensorRT's explicit
quantization requires), Q/DQ inserted by ONNX Runtime's quantizer. The procedure, each
phase named in the progress display:

1. calibrating: one batched FP32 pass gives every activation range (minmax, percentile,
   entropy or mse over histograms of |x|) and the reference logits (calibration.py), for
   the tensors placement.py gives Q/DQ (matrix products, and other operators only inside
   integer regions);
2. quantizing: ONNX Runtime's quantizer places Q/DQ with those ranges;
3. layer statistics: one more FP32 pass gathers each layer's quantized-input statistics
   (layer_inputs.py), from which
4. AdaRound (``rounding="adaround"``) learns each weight's up/down rounding (adaround.py) and
5. bias correction folds each layer's weight-induced mean output shift into its INT32
   bias (bias_correction.py), kept only where it lowers the KL vs FP32;
6. only when the budget (by default mean KL vs FP32 on the calibration images) is not met:
   sensitivity (each quantized layer read in float alone, on the hardest images, ranks the
   layers), pricing (what each candidate adds in float on the target backends, measured by
   their profilers: a callable the int8 step passes in) and fallback (layers go back to
   float, the most accuracy per millisecond first, until the budget is met; the set is
   then thinned out and judged again on the exact graph). Random-init weights skip this:
   an accuracy budget means nothing for them.

Graph outputs (the logits) stay in float: quantizing them only adds error.

Everything here works on ONNX files and numpy arrays, so it applies to any exported
model, including the tests' small digits network.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core import AccuracyStats, DataError, UsageError
from ..evaluation import compare_to_baseline
from ..options import declared
from .adaround import AdaRoundOptions, LayerRounding, adaround
from .bias_correction import correct_biases
from .calibration import FloatPass, float_pass, write_calibration_cache
from .layer_inputs import gather_input_stats, quantized_layers
from .placement import QUANTIZABLE_OP_TYPES, nodes_to_quantize
from ..progress import Progress, quiet
from .qdq_graph import shape_arithmetic, bypass_quantization, drop_unread_qdq, fold_activation_qdq, quantized_node_labels, run_logits, strip_output_qdq
from .sensitivity import FloatNode, NodeSensitivity, count_by_type, describe_layers, float_nodes, output_errors, rank_layers

METHODS = declared("calib_method").choices
MIN_CALIBRATION_IMAGES = 8
ROUNDINGS = declared("rounding").choices
SENSITIVITY_IMAGES = 16  # random weights: fidelity is measured on this many calibration images
RANKING_IMAGES = 8  # the hardest images rank layers for fallback; each step is then judged on all
STATISTICS_IMAGES = 32  # images for the layer statistics of bias correction (mean input patches)
ADAROUND_IMAGES = 64  # AdaRound's second moments need more positions per weight
PRICE_FLOOR = 0.002  # a layer priced below 0.2% of the run time counts as that (profilers' noise)
DROP_WORTH = 0.01  # a float layer is dropped again only when it costs at least 1% of the run time





@dataclass(frozen=True)
class Budget:
    """What INT8 may cost, measured against FP32 on the calibration images.

    The default asks for KL alone: agreement on a few dozen images moves in steps of one
    image (1.3 points on the bundled photos' 77 views), so a threshold on it decides on
    noise, where the mean KL moves smoothly with the error."""

    max_top1_drop: Optional[float] = declared("max_drop").field()  # points; used only where labels exist
    min_agreement: Optional[float] = declared("min_agreement").field()  # percent of images with the same top-1
    max_kl: Optional[float] = declared("max_kl").field(default=0.002)  # mean KL(fp32 || int8); 0.002 where no budget is given

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
    method: str = declared("calib_method").field()
    percentile: float = declared("percentile").field(convert=float)
    bias_correction: bool = declared("bias_correction").field()
    fallback: bool = declared("max_fallback").field(convert=bool)  # --max-fallback 0: no fallback
    max_fallback_nodes: int = declared("max_fallback").field()
    budget: Budget = Budget()
    rounding: str = declared("rounding").field()
    float_precision: str = declared("int8_float").field()  # applied by the int8 step after quantizing (transforms/fp16.py)

    def __post_init__(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise UsageError(f"unknown rounding {self.rounding!r}; use one of {', '.join(ROUNDINGS)}")
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_fallback_nodes < 0:
            raise UsageError("max fallback nodes must be >= 0")


@dataclass(frozen=True)
class FallbackStep:
    node: str
    reason: str
    after: AccuracyStats  # the model with this layer and the ones before it in float
    price_ms: dict[str, float] = field(default_factory=dict)  # backend -> what it adds in float (ms per inference)


@dataclass(frozen=True)
class Stage:
    """One phase's result on the calibration images, in the order they ran."""

    name: str
    after: AccuracyStats
    seconds: float


@dataclass(frozen=True)
class QuantizationReport:
    options: QuantizeOptions
    calibration_images: int
    quantized_nodes: int
    float_nodes: dict[str, int]  # op type -> count, from kept_in_float
    initial: AccuracyStats  # every node quantized, nearest rounding, no bias correction
    final: AccuracyStats
    budget_met: bool
    bias_correction_applied: bool
    sensitivity: tuple[NodeSensitivity, ...] = ()
    fallback: tuple[FallbackStep, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    kept_in_float: tuple[FloatNode, ...] = ()  # every node computing in float, and why
    stages: tuple[Stage, ...] = ()
    sensitivity_images: int = 0  # images the sensitivity rows were measured on
    sensitivity_all_int8_kl: Optional[float] = None  # the all-INT8 KL on those same images
    rounding: tuple[LayerRounding, ...] = ()  # AdaRound, per layer
    random_weights: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- quantize


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    # ORT only reads the cache's format from it: an mse range is a range like a percentile's
    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.Percentile}[name]


def calibrate(fp32_model, x: np.ndarray, options: QuantizeOptions, cache: Path, progress: Progress = quiet) -> FloatPass:
    """Activation ranges into ``cache`` (ONNX Runtime's calibration-cache format), with the
    FP32 logits of ``x`` from the same pass."""
    result = float_pass(fp32_model, x, QUANTIZABLE_OP_TYPES, options.method, options.percentile, progress, placement(fp32_model))
    write_calibration_cache(result.thresholds, options.method, cache)
    return result


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

    fp32_model = onnx.load(str(fp32_path), load_external_data=False)
    if not cache.is_file():
        calibrate(fp32_model, x, options, cache)
    shape_nodes = shape_arithmetic(fp32_model)[0]
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
            nodes_to_quantize=sorted(placement(fp32_model) - set(exclude)),
            nodes_to_exclude=[*exclude, *sorted(shape_nodes)],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            calibration_cache_path=str(cache),
        )
    model = onnx.load(str(out_path))
    strip_output_qdq(model)
    drop_unread_qdq(model, placement(fp32_model) - set(exclude))
    fold_activation_qdq(model)
    onnx.save(model, str(out_path))


def placement(fp32_model) -> set[str]:
    """The nodes that get Q/DQ (see placement.nodes_to_quantize)."""
    return nodes_to_quantize(fp32_model, shape_arithmetic(fp32_model)[0])


def float_ops(model) -> dict[str, int]:
    """Op type -> count of nodes that compute in float (see sensitivity.float_nodes)."""
    return count_by_type(float_nodes(model, {}))


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    labels: Optional[Sequence[Optional[tuple[int, ...]]]] = None,
    options: QuantizeOptions = QuantizeOptions(),
    progress: Progress = quiet,
    random_weights: bool = False,
    price: Optional[Callable[[Path, Path, list[str]], Any]] = None,
) -> QuantizationReport:
    """Quantize ``fp32_path`` to ``out_path``, within ``options.budget`` where possible.

    Budget checks and fallback choices are made on the calibration images; judge the
    result on images it has not seen. When the budget cannot be met, the most accurate
    model found is kept and the report says so. ``random_weights``: the model is random-init,
    so no budget search is made (fidelity vs FP32 is still measured and reported).
    ``price(all_int8_path, candidates_in_float_path, candidates)``: what each candidate layer adds in
    float on the backends the model is for (edgekit.profiling.price_float_layers); with it,
    the fallback search buys accuracy where it is cheapest, else by accuracy alone.
    """
    import onnx

    if len(calibration) < MIN_CALIBRATION_IMAGES:
        raise DataError(f"{len(calibration)} calibration images; at least {MIN_CALIBRATION_IMAGES} are needed")
    labels = list(labels) if labels is not None else [None] * len(calibration)
    fp32_model = onnx.load(str(fp32_path))
    notes: list[str] = []
    stages: list[Stage] = []
    started = time.monotonic()
    clock = [started]

    last_logits: list[np.ndarray] = []
    # random weights: no decision rests on the figures, so they are measured on fewer images
    judged = slice(None) if not random_weights else slice(0, SENSITIVITY_IMAGES)

    def judge(model) -> AccuracyStats:
        last_logits[:] = [run_logits(model, calibration[judged])]
        return compare_to_baseline(last_logits[0], reference[judged], labels[judged])

    def judge_quickly(model) -> AccuracyStats:
        """Float convolutions in fast layouts (qdq_graph.session): for the search's steps;
        what it settles on is judged again exactly."""
        return compare_to_baseline(run_logits(model, calibration[judged], float_layouts=True), reference[judged], labels[judged])

    def stage(name: str, stats: AccuracyStats) -> None:
        now = time.monotonic()
        stages.append(Stage(name, stats, round(now - clock[0], 2)))
        clock[0] = now
        progress(f"{name}: agreement {stats.agreement:.1f}%, KL {stats.mean_kl:.4f}", None, None)

    with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
        tmp_dir = Path(tmp)
        if any(not n.name for n in fp32_model.graph.node):  # fallback addresses nodes by name
            for i, n in enumerate(fp32_model.graph.node):
                n.name = n.name or f"{n.op_type}_{i}"
            fp32_path = tmp_dir / "fp32_named.onnx"
            onnx.save(fp32_model, str(fp32_path))
        cache = tmp_dir / "calibration.json"
        reference = calibrate(fp32_model, calibration, options, cache, progress).logits
        progress("quantizing", None, None)
        quantize_qdq(fp32_path, tmp_dir / "all_int8.onnx", calibration, options, (), cache)
        model = onnx.load(str(tmp_dir / "all_int8.onnx"))
        initial = final = judge(model)
        final_logits = last_logits[0]
        stage(f"all INT8 ({options.method} ranges, nearest rounding)", initial)

        rounding: list[LayerRounding] = []
        corrected = False
        if options.rounding == "adaround" or options.bias_correction:
            layers = quantized_layers(model, fp32_model)
            images = ADAROUND_IMAGES if options.rounding == "adaround" else STATISTICS_IMAGES if not random_weights else SENSITIVITY_IMAGES
            stats = gather_input_stats(layers, fp32_model, calibration[:images], progress, second_moments=options.rounding == "adaround")
            if options.rounding == "adaround":
                rounding = adaround(layers, stats, AdaRoundOptions(), progress)
                final = judge(model)
                final_logits = last_logits[0]
                stage("AdaRound", final)
            if options.bias_correction:
                before = copy.deepcopy(model.graph.initializer)
                correct_biases(model, layers, stats)
                stats_bc = judge(model)
                if stats_bc.mean_kl < final.mean_kl:
                    corrected, final, final_logits = True, stats_bc, last_logits[0]
                    stage("bias correction", final)
                else:
                    notes.append(f"bias correction did not lower KL ({stats_bc.mean_kl:.4f} vs {final.mean_kl:.4f}); not applied")
                    del model.graph.initializer[:]
                    model.graph.initializer.extend(before)
                    stage("bias correction (not applied: it did not lower the KL)", final)  # its seconds are accounted for too

        fallback: list[FallbackStep] = []
        hardest = _hardest_images(final_logits, reference[judged], RANKING_IMAGES)  # where the error is
        sample = calibration[hardest]
        baseline_kl: Optional[float] = None
        search = options.fallback and not options.budget.met(final) and not random_weights
        if search:
            report_nodes, baseline_kl = rank_layers(model, fp32_model, sample, reference[hardest], progress)
            candidates = [r for r in report_nodes if r.kl_if_float is not None and r.kl_if_float < baseline_kl][: options.max_fallback_nodes]
            out_of_reach = _out_of_reach(candidates, baseline_kl, final, options)
            if out_of_reach:
                notes.append(out_of_reach)
                candidates = []
            prices = None
            if price is not None and candidates:
                progress("pricing float layers", None, None)
                onnx.save(bypass_quantization(model, fp32_model, [c.node for c in candidates]), str(tmp_dir / "candidates_float.onnx"))
                onnx.save(model, str(tmp_dir / "current.onnx"))
                prices = price(tmp_dir / "current.onnx", tmp_dir / "candidates_float.onnx", [c.node for c in candidates])
                notes += [f"fallback not priced on {b}: {why}" for b, why in getattr(prices, "unavailable", {}).items()]
                stage_seconds = round(time.monotonic() - clock[0], 2)
                notes.append(f"float layers priced on {', '.join(prices.ms) or 'no backend'} ({stage_seconds:.1f} s with the sensitivity ranking)")
            before_search = final
            trial, _, fallback, tried = _fall_back(model, fp32_model, candidates, baseline_kl, final, options, judge_quickly, progress, prices)
            if fallback:
                final = judge(trial)
                if not options.budget.met(final):  # the quick judgement was too kind: search again, judging exactly
                    trial, final, fallback, tried = _fall_back(model, fp32_model, candidates, baseline_kl, before_search, options, judge, progress, prices)
                model = trial
            if fallback:
                stage(f"fallback to float ({len(fallback)} layers)", final)
            elif tried:
                best = min(tried, key=lambda t: t.after.mean_kl)
                notes.append(
                    f"the budget was not reached with up to {len(tried)} layers in float (best: KL {best.after.mean_kl:.4f}, "
                    f"agreement {best.after.agreement:.1f}%); layers in float cost speed, so all stay INT8"
                )
                stage("fallback search (budget not reached: all stay INT8)", final)  # its seconds are accounted for too
            elif out_of_reach:
                stage("fallback search (budget out of reach: all stay INT8)", final)
            else:
                notes.append("no layer read in float alone lowered the KL; all stay INT8")
                stage("fallback search (no layer helps: all stay INT8)", final)
        else:
            # random weights: no decision rests on the figures, and the table would rank noise
            report_nodes = [] if random_weights else describe_layers(model, output_errors(model, fp32_model, sample))
            if random_weights:
                notes.append(
                    f"random-init weights: an accuracy budget means nothing for them, so no fallback search was made, "
                    f"and fidelity vs FP32 was measured on {len(reference[judged])} of the calibration images"
                )
            elif not options.budget.met(final) and not options.fallback:
                notes.append("budget not met and fallback disabled")
        onnx.save(model, str(out_path))

    kept = float_nodes(model, {f.node: f"fell back: {f.reason}" for f in fallback})
    return QuantizationReport(
        options=options,
        calibration_images=len(calibration),
        quantized_nodes=len(quantized_node_labels(model)),
        float_nodes=count_by_type(kept),
        initial=initial,
        final=final,
        budget_met=options.budget.met(final),
        bias_correction_applied=corrected,
        sensitivity=tuple(report_nodes),
        fallback=tuple(fallback),
        notes=tuple(notes),
        kept_in_float=tuple(kept),
        stages=tuple(stages),
        sensitivity_images=len(sample),
        sensitivity_all_int8_kl=baseline_kl,
        rounding=tuple(rounding),
        random_weights=random_weights,
        seconds=round(time.monotonic() - started, 2),
    )


def _hardest_images(logits: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` images with the largest KL(FP32 || INT8), in ascending order."""
    def log_softmax(z):
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p_log, q_log = log_softmax(reference), log_softmax(logits)
    kl = (np.exp(p_log) * (p_log - q_log)).sum(axis=1)
    return np.sort(np.argsort(-kl, kind="stable")[:k])


def _fall_back(model, fp32_model, candidates: list[NodeSensitivity], baseline_kl: float, current: AccuracyStats, options: QuantizeOptions, judge, progress, prices=None):
    """Greedy and cumulative: candidate layers go back to float one at a time, each step
    judged by ``judge`` on every calibration image, until the budget is met (nodes interact:
    two neighbours may only help together, so a layer that does not help yet stays in the
    set). Order: with ``prices``, the most accuracy per share of run time first (what a
    layer buys read in float alone, over what it adds in float on the target backends);
    without, the most accuracy first. Once the budget is met, each layer of the set is
    dropped again, the dearest first, where the rest still meet it. Layers in float cost
    speed on every backend, so they are kept only when they meet the budget; otherwise
    every layer stays INT8 and the steps tried are returned for the report.
    Returns (model, stats, kept steps, tried steps)."""
    def gain(entry) -> float:
        return max(baseline_kl - entry.kl_if_float, 0.0)

    def cost(entry) -> float:
        return max(prices.share(entry.node), PRICE_FLOOR) if prices is not None else 1.0

    def priced(entry) -> dict[str, float]:
        return {b: round(ms.get(entry.node, 0.0), 4) for b, ms in prices.ms.items()} if prices is not None else {}

    ordered = sorted(candidates, key=lambda e: -gain(e) / cost(e))
    # the first judgement takes as many layers as their gains, added up, predict it needs
    # (gains do not add up exactly: later steps add one layer at a time, and the set is
    # thinned out again once the budget is met)
    first = 1
    if options.budget.max_kl is not None and options.budget.min_agreement is None and options.budget.max_top1_drop is None and baseline_kl > 0:
        needed, predicted = max(current.mean_kl - options.budget.max_kl, 0.0) / current.mean_kl, 0.0
        for first, entry in enumerate(ordered, 1):
            predicted += gain(entry) / baseline_kl
            if predicted >= needed:
                break
    tried: list[FallbackStep] = []
    for step, entry in enumerate(ordered, 1):
        if step < first:  # judged together with the rest of the first group
            tried.append(FallbackStep(entry.node, f"read in float alone, it takes KL from {baseline_kl:.4f} to {entry.kl_if_float:.4f}", current, priced(entry)))
            continue
        progress("fallback to float", step - 1, len(ordered))
        trial = bypass_quantization(model, fp32_model, [t.node for t in tried] + [entry.node])
        stats = judge(trial)
        reason = f"read in float alone, it takes KL from {baseline_kl:.4f} to {entry.kl_if_float:.4f}"
        tried = [dataclasses.replace(t, after=stats) if t.after is current else t for t in tried]
        tried.append(FallbackStep(entry.node, reason, stats, priced(entry)))
        if options.budget.met(stats):
            progress("fallback to float", len(ordered), len(ordered))
            kept, trial, stats = _drop_unneeded(tried, model, fp32_model, stats, options, judge, cost, {e.node: e for e in ordered})
            return trial, stats, kept, tried
    progress("fallback to float", len(ordered), len(ordered))
    return model, current, [], tried


REACH_MARGIN = 0.8  # gains measured on the hardest images overstate what they buy on all of them


def _out_of_reach(candidates: list[NodeSensitivity], baseline_kl: float, current: AccuracyStats, options: QuantizeOptions) -> Optional[str]:
    """Why a KL budget cannot be reached with these candidates (None: worth searching): what
    they buy read in float one by one, added up, falls well short of the gap to close."""
    budget = options.budget
    if not candidates or budget.max_kl is None or budget.min_agreement is not None or budget.max_top1_drop is not None or baseline_kl <= 0:
        return None
    needed = max(current.mean_kl - budget.max_kl, 0.0) / current.mean_kl
    predicted = sum(max(baseline_kl - c.kl_if_float, 0.0) for c in candidates) / baseline_kl
    if predicted >= REACH_MARGIN * needed:
        return None
    return (
        f"the budget is out of reach: the {len(candidates)} most helpful layers, each read in float alone, would lower the KL by "
        f"{predicted:.0%} together at best, and {needed:.0%} is needed; no search was made, all stay INT8"
    )


def _drop_unneeded(steps: list[FallbackStep], model, fp32_model, stats: AccuracyStats, options: QuantizeOptions, judge, cost, entries):
    """The set of float layers with each one dropped again, the dearest first, where the rest
    still meet the budget (an early pick can be made unnecessary by later ones)."""
    kept = list(steps)
    trial = bypass_quantization(model, fp32_model, [s.node for s in kept])
    for step in sorted(steps, key=lambda s: -cost(entries[s.node])):
        if len(kept) == 1 or cost(entries[step.node]) < DROP_WORTH:
            break  # the rest are too cheap to be worth another judgement
        rest = [s for s in kept if s.node != step.node]
        candidate = bypass_quantization(model, fp32_model, [s.node for s in rest])
        candidate_stats = judge(candidate)
        if options.budget.met(candidate_stats):
            kept, trial, stats = rest, candidate, candidate_stats
    return kept, trial, stats
