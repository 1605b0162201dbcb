"""FP32 ONNX -> mixed-precision FP16 ONNX, the layers kept FP32 chosen by measurement.

TensorRT 11 is strongly typed: FP16 comes from an ONNX graph whose tensors are FP16. This
makes that graph, inputs and outputs kept FP32 (callers need no change):

1. ranges: one FP32 pass over the calibration images gives every float tensor's max |x|
   (a running maximum: memory stays flat). A node whose output or input exceeds
   ``OVERFLOW_BOUND`` stays FP32 ("overflow", with the measured maximum); so does a node
   whose weight does.
2. accuracy: the rest is judged in FP16 against FP32 on the calibration images (top-1
   agreement and mean KL, the INT8 step's metrics). While the criterion is not met, the
   node adding the largest relative error of its own (its output's error minus its
   inputs' largest, measured on the hardest images) stays FP32 too ("accuracy"), up to
   ``MAX_KEPT_FOR_ACCURACY`` nodes.
3. the graph: edgekit's own converter (``converted``; ONNX Runtime's converter still rounds
   a blocked node's output through FP16, which zeroed a random-init MobileNetV2's tail):
   a Cast wherever FP16 and FP32 meet, Resize scales kept FP32, checked by onnx
   (full_check) and loaded by ONNX Runtime.

Why FP16 is judged on an emulation, not on the converted file: ONNX Runtime's CPU provider
has no FP16 kernel for most operators and computes them in FP32, removing the FP32 -> FP16
-> FP32 round trip between two such nodes (a Cast to FP16 followed by two Abs nodes
returns 70000 and 1e-9 unchanged). The converted file would then be judged with FP32
activations. The emulation is the FP32 graph with every FP16 node's weights rounded as the
converter rounds them and every float tensor an FP16 node writes rounded to FP16 by an
explicit Cast pair (ONNX Runtime keeps those): FP16 storage everywhere the file has it,
arithmetic inside a node in FP32, as GPU FP16 convolutions accumulate. The converted file
is run on ONNX Runtime too, and both are reported.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core import AccuracyStats, UsageError
from ..evaluation import compare_to_baseline
from ..module_names import module_path
from ..progress import Progress, quiet
from .qdq_graph import copy_model, node_label, session
from .quantize import Budget

FP16_MAX = 65504.0
# A tensor whose max |x| on the calibration images exceeds 1/16 of FP16's largest value
# stays FP32: images not in the calibration set reach further (lite0's largest activation
# on the bundled photos' held-out views exceeds the calibration views' by up to 1.3x), and
# a runtime's FP16 kernel sums partial products in FP16 before writing the output, so its
# intermediate sums may exceed the output's range. 4 bits of headroom cover both.
OVERFLOW_BOUND = FP16_MAX / 16
# A tensor stored in FP16 keeps about 3 significant digits (relative error 2^-12 = 0.0002
# where it is in FP16's normal range); one that loses more than 1% of itself has most of
# its values below 6.1e-5, where FP16's digits run out, and stays FP32.
UNDERFLOW_ERROR = 0.01
MAX_KEPT_FOR_ACCURACY = 16  # nodes kept FP32 for accuracy at most; beyond, the criterion is reported as not met
RANKING_IMAGES = 8  # the hardest images rank nodes by the error they add
RANGE_BATCH = 4  # images per pass when every tensor is an output (memory: all activations of a batch)
DEFAULT_CRITERION = Budget(max_top1_drop=None, min_agreement=99.5, max_kl=1e-4)
CONVERTER = "edgekit.transforms.fp16 (weights rounded by onnxruntime.transformers.float16)"


@dataclass(frozen=True)
class KeptNode:
    """A node the FP16 graph keeps in FP32, and why (measured)."""

    node: str
    op_type: str
    module: Optional[str]  # the PyTorch module it came from, where its name says so
    why: str  # "overflow" | "underflow" | "accuracy"
    detail: str  # the measurement behind it, for people
    value: float  # overflow: the max |x| measured; underflow: the relative error of FP16 storage; accuracy: the relative error the node added


@dataclass(frozen=True)
class FP16Report:
    criterion: Budget
    calibration_images: int
    overflow_bound: float
    kept_fp32: tuple[KeptNode, ...]
    fp16_nodes: int  # nodes whose float tensors are FP16
    all_fp16: AccuracyStats  # the emulation with no node kept, vs FP32
    final: AccuracyStats  # the emulation of the delivered graph, vs FP32 (what the criterion judges)
    onnxruntime_cpu: AccuracyStats  # the delivered file itself on ONNX Runtime's CPU provider, vs FP32
    criterion_met: bool
    largest_tensor: float  # max |x| over every float tensor of the FP32 graph on the calibration images
    notes: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- graph facts


def float_types(model) -> dict[str, bool]:
    """Tensor name -> whether it is float32, for every typed tensor (shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 (a graph inference cannot read: fall back on what it declares)
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return {name: kind == onnx.TensorProto.FLOAT for name, kind in types.items()}


def float_outputs(model, floats: dict[str, bool]) -> list[str]:
    """The float tensors nodes write, in graph order."""
    return [o for n in model.graph.node for o in n.output if o and floats.get(o)]


def _named(model):
    """``model`` with every node named (kept nodes are addressed by name)."""
    if all(n.name for n in model.graph.node):
        return model
    m = copy_model(model)
    for i, n in enumerate(m.graph.node):
        n.name = n.name or f"{n.op_type}_{i}"
    return m


def _outputs_session(model, names: Sequence[str]):
    import onnx

    m = copy_model(model)
    existing = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in existing)
    return session(m, optimize=True)


@dataclass(frozen=True)
class TensorFacts:
    """What one FP32 pass over the calibration images says about every float tensor."""

    peaks: dict[str, float]  # max |x|
    rounding: dict[str, float]  # relative L2 error of the tensor stored in FP16 (underflow shows here)
    logits: np.ndarray


def tensor_facts(model, x: np.ndarray, progress: Progress = quiet) -> TensorFacts:
    """Max |x| of every float tensor a node writes, its relative error when stored in FP16,
    and the FP32 logits, on ``x``: one pass, running sums per tensor (no activation is kept)."""
    floats = float_types(model)
    names = float_outputs(model, floats)
    sess = _outputs_session(model, names)
    input_name, logits_name = sess.get_inputs()[0].name, model.graph.output[0].name
    wanted = list(dict.fromkeys([logits_name, *names]))
    peaks = dict.fromkeys(names, 0.0)
    err2, ref2 = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    logits = []
    for i in range(0, len(x), RANGE_BATCH):
        progress("measuring ranges in FP32", i, len(x))
        values = sess.run(wanted, {input_name: x[i : i + RANGE_BATCH]})
        logits.append(values[0])
        for name, value in zip(wanted, values):
            if name in peaks and value.size:
                v = value.astype(np.float64)
                peaks[name] = max(peaks[name], float(np.nanmax(np.abs(v))))
                with np.errstate(over="ignore"):
                    stored = value.astype(np.float16).astype(np.float64)
                err2[name] += float(np.nan_to_num((stored - v) ** 2, posinf=1e300).sum())
                ref2[name] += float((v**2).sum())
    progress("measuring ranges in FP32", len(x), len(x))
    rounding = {n: min(float(np.sqrt(err2[n] / ref2[n])), 1e6) if ref2[n] > 0 else 0.0 for n in names}
    return TensorFacts(peaks, rounding, np.concatenate(logits))


def out_of_range(model, facts: TensorFacts, bound: float = OVERFLOW_BOUND) -> list[KeptNode]:
    """The nodes that write or read a tensor (or weight) beyond ``bound`` ("overflow"), or a
    tensor that loses more than ``UNDERFLOW_ERROR`` of itself stored in FP16 ("underflow":
    its values sit below FP16's normal range), with the measurement."""
    from onnx import numpy_helper

    weights = {i.name: float(np.abs(numpy_helper.to_array(i)).max(initial=0.0)) for i in model.graph.initializer
               if i.data_type == 1}  # float32 initializers
    found = []
    for node in model.graph.node:
        label = node_label(node)
        seen = [(facts.peaks.get(t, 0.0), t, "writes") for t in node.output] + [(facts.peaks.get(t, 0.0), t, "reads") for t in node.input]
        seen += [(weights.get(t, 0.0), t, "weight") for t in node.input]
        value, tensor, how = max(seen, key=lambda s: s[0], default=(0.0, "", ""))
        if value > bound:
            what = f"its weight {tensor}" if how == "weight" else f"the tensor it {how} ({tensor})"
            found.append(KeptNode(label, node.op_type, module_path(label), "overflow",
                                  f"max |x| of {what} is {value:.4g} on the calibration images (FP16 bound used: {bound:.0f})", value))
            continue
        lost = [(facts.rounding.get(t, 0.0), t, "writes") for t in node.output] + [(facts.rounding.get(t, 0.0), t, "reads") for t in node.input]
        error, tensor, how = max(lost, key=lambda s: s[0], default=(0.0, "", ""))
        if error > UNDERFLOW_ERROR:
            found.append(KeptNode(label, node.op_type, module_path(label), "underflow",
                                  f"the tensor it {how} ({tensor}, max |x| {facts.peaks.get(tensor, 0.0):.3g}) loses {error:.1%} of itself stored in FP16", error))
    return found


# --------------------------------------------------------------------------- the FP16 graph and its emulation


# inputs that stay FP32 in an FP16 node (the operator's type constraint asks float32 there)
ALWAYS_FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
TYPE_AGNOSTIC = {"Shape", "Size"}  # read any tensor type: their float input is left as it comes


def converted(model, kept: Sequence[str], floats: Optional[dict[str, bool]] = None):
    """The FP16 graph: every float tensor FP16 except the graph's inputs and outputs and what
    the ``kept`` nodes read and write, which stay FP32; a Cast wherever the two meet; checked
    by onnx. (ONNX Runtime's converter is not used: with a node block list it still rounds
    each blocked node's output through FP16, measured on random-init MobileNetV2, whose
    blocked tail then computed zeros.)"""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.transformers.float16 import convert_np_to_float16

    from ..core import ExportError

    floats = floats if floats is not None else float_types(model)
    keep = set(kept)
    m = copy_model(model)
    inits = {i.name: i for i in m.graph.initializer}
    half: dict[str, bool] = {}  # float tensor -> stored as FP16
    casts: dict[tuple[str, int], str] = {}
    nodes: list = []

    def as_type(name: str, fp16: bool) -> str:
        if name in inits:
            if not fp16 or inits[name].data_type != TensorProto.FLOAT:
                return name
            if (name, 1) not in casts:
                array = numpy_helper.to_array(inits[name])
                values = convert_np_to_float16(np.atleast_1d(array)).reshape(array.shape)
                casts[(name, 1)] = f"{name}__fp16"
                m.graph.initializer.append(numpy_helper.from_array(values, casts[(name, 1)]))
            return casts[(name, 1)]
        if half.get(name, False) == fp16:
            return name
        key = (name, TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT)
        if key not in casts:
            casts[key] = f"{name}__{'fp16' if fp16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], name=f"{casts[key]}__cast", to=key[1]))
        return casts[key]

    for node in m.graph.node:
        fp16 = node_label(node) not in keep
        if node.op_type not in TYPE_AGNOSTIC:
            for k, name in enumerate(node.input):
                if name and floats.get(name) and k not in ALWAYS_FP32_INPUTS.get(node.op_type, ()):
                    node.input[k] = as_type(name, fp16)
        if fp16 and node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
        if fp16 and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    array = numpy_helper.to_array(a.t)
                    a.t.CopyFrom(numpy_helper.from_array(convert_np_to_float16(np.atleast_1d(array)).reshape(array.shape), a.t.name))
        nodes.append(node)
        for out in node.output:
            if out and floats.get(out):
                half[out] = fp16
    for output in m.graph.output:  # outputs stay FP32: the producer writes a renamed tensor, a Cast the output
        if half.get(output.name):
            producer = next(n for n in nodes if output.name in n.output)
            inner = f"{output.name}__fp16"
            producer.output[list(producer.output).index(output.name)] = inner
            for n in nodes:
                n.input[:] = [inner if i == output.name else i for i in n.input]
            nodes.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}__cast", to=TensorProto.FLOAT))
    del m.graph.node[:]
    m.graph.node.extend(_topologically_sorted(m.graph, nodes))
    del m.graph.value_info[:]
    drop = {name for (name, kind) in casts if kind == 1 and name in inits and all(name not in n.input for n in m.graph.node)}
    kept_inits = [i for i in m.graph.initializer if i.name not in drop]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept_inits)
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001 (onnx raises several kinds)
        raise ExportError(f"the FP16 graph is not valid ONNX: {str(e).splitlines()[0]}") from None
    return m


def _topologically_sorted(graph, nodes) -> list:
    """``nodes``, each after the producers of its inputs (a stable order otherwise)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(nodes), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            return ordered + pending  # a cycle or a missing tensor: the checker says which
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if not any(n is r for r in ready)]
    return ordered


def emulated(model, kept: set[str], floats: Optional[dict[str, bool]] = None):
    """The FP32 graph computing what the FP16 graph stores: for every node not in ``kept``,
    its float weights rounded as the converter rounds them and every float tensor it writes
    rounded to FP16 by a Cast pair; the graph input rounded where an FP16 node reads it."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.transformers.float16 import convert_np_to_float16

    floats = floats if floats is not None else float_types(model)
    m = copy_model(model)
    inits = {i.name: i for i in m.graph.initializer}
    rounded: dict[str, str] = {}
    graph_inputs = {i.name for i in m.graph.input if floats.get(i.name)}
    nodes = []
    for name in graph_inputs:
        nodes += _round_trip(name, f"{name}__fp16")
    for node in m.graph.node:
        if node_label(node) in kept:
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name in graph_inputs:
                node.input[k] = f"{name}__fp16"
            elif name in inits and inits[name].data_type == onnx.TensorProto.FLOAT and node.op_type != "Resize":
                if name not in rounded:
                    array = numpy_helper.to_array(inits[name])
                    values = convert_np_to_float16(np.atleast_1d(array)).astype(np.float32).reshape(array.shape)
                    rounded[name] = f"{name}__fp16"
                    m.graph.initializer.append(numpy_helper.from_array(values, rounded[name]))
                node.input[k] = rounded[name]
        nodes.append(node)
        for k, out in enumerate(node.output):
            if out and floats.get(out):
                node.output[k] = f"{out}__fp32"
                nodes += _round_trip(f"{out}__fp32", out)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _round_trip(source: str, target: str) -> list:
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [source], [f"{target}__half"], name=f"{target}__to_fp16", to=TensorProto.FLOAT16),
            helper.make_node("Cast", [f"{target}__half"], [target], name=f"{target}__to_fp32", to=TensorProto.FLOAT)]


def logits_of(model, x: np.ndarray, batch: int = 16, exact: bool = False) -> np.ndarray:
    """Logits on ONNX Runtime's CPU provider; ``exact``: no graph optimization (a QDQ graph
    computed as written, not fused into integer kernels)."""
    sess = session(model, optimize=not exact)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def added_errors(model, emulation, x: np.ndarray, floats: dict[str, bool]) -> dict[str, float]:
    """Per node: the relative L2 error of its output vs FP32 minus the largest of its float
    inputs' (the error the node adds itself), on ``x``."""
    names = float_outputs(model, floats)
    ref_sess, fp16_sess = _outputs_session(model, names), _outputs_session(emulation, names)
    input_name = ref_sess.get_inputs()[0].name
    err2, ref2 = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for i in range(0, len(x), RANGE_BATCH):
        batch = {input_name: x[i : i + RANGE_BATCH]}
        for name, a, b in zip(names, ref_sess.run(names, batch), fp16_sess.run(names, batch)):
            err2[name] += float(((b.astype(np.float64) - a) ** 2).sum())
            ref2[name] += float((a.astype(np.float64) ** 2).sum())
    rel = {n: min(float(np.sqrt(err2[n] / ref2[n])), 1e6) if ref2[n] > 0 else 0.0 for n in names}
    added = {}
    for node in model.graph.node:
        outs = [rel[o] for o in node.output if o in rel]
        if outs:
            added[node_label(node)] = max(outs) - max((rel.get(i, 0.0) for i in node.input), default=0.0)
    return added


def _hardest(logits: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    from ..evaluation import kl_rows

    return np.sort(np.argsort(-kl_rows(reference, logits), kind="stable")[:k])


# --------------------------------------------------------------------------- the whole conversion


def to_fp16(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    criterion: Budget = DEFAULT_CRITERION,
    progress: Progress = quiet,
    bound: float = OVERFLOW_BOUND,
    max_kept_for_accuracy: int = MAX_KEPT_FOR_ACCURACY,
) -> FP16Report:
    """Write the mixed-precision FP16 graph of ``fp32_path`` to ``out_path`` (see the module)."""
    import onnx

    if len(calibration) == 0:
        raise UsageError("no calibration images for the FP16 conversion")
    started = time.monotonic()
    model = _named(onnx.load(str(fp32_path)))
    floats = float_types(model)
    facts = tensor_facts(model, calibration, progress)
    reference, peaks = facts.logits, facts.peaks
    labels = [None] * len(calibration)
    kept = {k.node: k for k in out_of_range(model, facts, bound)}
    stored = {node_label(n): max((facts.rounding.get(o, 0.0) for o in n.output), default=0.0) for n in model.graph.node}

    def judge(names: set[str]) -> tuple[AccuracyStats, np.ndarray, object]:
        emulation = emulated(model, names, floats)
        logits = logits_of(emulation, calibration)
        return compare_to_baseline(logits, reference, labels), logits, emulation

    progress("judging FP16", None, None)
    blind = judge(set())
    all_fp16 = blind[0]
    stats, logits, emulation = judge(set(kept)) if kept else blind
    notes: list[str] = []
    while not criterion.met(stats):
        accuracy_kept = sum(k.why == "accuracy" for k in kept.values())
        if accuracy_kept >= max_kept_for_accuracy:
            notes.append(f"criterion ({criterion.describe()}) not met with {accuracy_kept} nodes kept FP32 for accuracy (the most allowed)")
            break
        progress("keeping FP32 for accuracy", accuracy_kept, max_kept_for_accuracy)
        hardest = _hardest(logits, reference, RANKING_IMAGES)
        # the error a node adds of its own in the FP16 graph, or storing its output in FP16
        # alone costs (a tensor below FP16's normal range loses its digits: underflow)
        added = added_errors(model, emulation, calibration[hardest], floats)
        candidates = sorted(((max(v, stored.get(n, 0.0)), n) for n, v in added.items() if n not in kept and max(v, stored.get(n, 0.0)) > 0), reverse=True)
        if not candidates:
            notes.append(f"criterion ({criterion.describe()}) not met and no FP16 node adds error of its own")
            break
        value, label = candidates[0]
        node = next(n for n in model.graph.node if node_label(n) == label)
        before = stats
        stats, logits, emulation = judge({*kept, label})
        kept[label] = KeptNode(label, node.op_type, module_path(label), "accuracy",
                               f"adds relative error {value:.3g} of its own in FP16 (its output stored in FP16 alone: {stored.get(label, 0.0):.3g}); kept FP32, KL {before.mean_kl:.3g} -> {stats.mean_kl:.3g}, "
                               f"agreement {before.agreement:.1f}% -> {stats.agreement:.1f}%", value)
    progress("converting", None, None)
    fp16_model = converted(model, list(kept), floats)
    onnx.save(fp16_model, str(out_path))
    delivered = compare_to_baseline(logits_of(fp16_model, calibration), reference, labels)
    fp16_nodes = sum(1 for n in model.graph.node if node_label(n) not in kept and any(floats.get(o) for o in n.output))
    return FP16Report(
        criterion=criterion,
        calibration_images=len(calibration),
        overflow_bound=bound,
        kept_fp32=tuple(kept.values()),
        fp16_nodes=fp16_nodes,
        all_fp16=all_fp16,
        final=stats,
        onnxruntime_cpu=delivered,
        criterion_met=criterion.met(stats),
        largest_tensor=max(peaks.values(), default=0.0),
        notes=tuple(notes),
        seconds=round(time.monotonic() - started, 2),
    )


# --------------------------------------------------------------------------- INT8 graphs with FP16 float parts

QDQ_FP16_OPSET = 19  # DequantizeLinear writes, and QuantizeLinear reads, FP16 from opset 19


@dataclass(frozen=True)
class FloatPartsReport:
    """An INT8 QDQ graph whose float tensors became FP16, judged against FP32."""

    opset: tuple[int, int]  # (before, after)
    kept_fp32: tuple[KeptNode, ...]
    folded_biases: int  # INT32 bias DequantizeLinear nodes folded to FP16 constants
    int8_fp32_floats: AccuracyStats  # the QDQ graph before, vs FP32 (same images)
    emulated: AccuracyStats  # FP16 storage emulated (see the module), vs FP32
    onnxruntime_cpu: AccuracyStats  # the delivered file on ONNX Runtime's CPU provider, vs FP32
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def fold_int32_biases(model) -> int:
    """Replace each DequantizeLinear of a constant INT32 tensor (a bias) by its FP32 value: its
    scale (input scale x weight scale, often below 1e-6) would underflow in FP16, where the
    bias itself does not. Returns how many were folded."""
    from onnx import TensorProto, numpy_helper

    from .qdq_graph import dequantized, drop_unused_initializers

    inits = {i.name: i for i in model.graph.initializer}
    folded = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and inits[n.input[0]].data_type == TensorProto.INT32 and all(i in inits for i in n.input if i)]
    for n in folded:
        model.graph.initializer.append(numpy_helper.from_array(dequantized(n, inits), n.output[0]))
        model.graph.node.remove(n)
    drop_unused_initializers(model)
    return len(folded)


def int8_floats_to_fp16(qdq_path: Path, out_path: Path, x: np.ndarray, reference: np.ndarray, progress: Progress = quiet) -> FloatPartsReport:
    """Write ``qdq_path`` with every float tensor FP16 (DequantizeLinear with FP16 scales writes
    FP16, QuantizeLinear reads it; INT8 values, zero points and Q/DQ placement unchanged),
    inputs and outputs FP32, nodes beyond FP16's range kept FP32 (see ``out_of_range``); the
    opset is raised to 19 where it is lower."""
    import onnx
    from onnx import version_converter

    started = time.monotonic()
    model = _named(onnx.load(str(qdq_path)))
    before = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if before < QDQ_FP16_OPSET:
        try:
            model = version_converter.convert_version(model, QDQ_FP16_OPSET)
        except Exception as e:  # noqa: BLE001 (onnx raises several kinds)
            raise UsageError(f"--int8-float fp16 needs opset {QDQ_FP16_OPSET} (FP16 Q/DQ scales); onnx could not raise this graph's opset {before}: {str(e).splitlines()[0]}") from None
    folded = fold_int32_biases(model)
    labels = [None] * len(x)
    floats = float_types(model)
    progress("measuring ranges of the float parts", None, None)
    facts = tensor_facts(model, x)
    kept = out_of_range(model, facts)
    names = {k.node for k in kept}
    int8_stats = compare_to_baseline(logits_of(model, x, exact=True), reference, labels)
    emulated_stats = compare_to_baseline(logits_of(emulated(model, names, floats), x), reference, labels)
    fp16_model = converted(model, sorted(names), floats)
    onnx.save(fp16_model, str(out_path))
    delivered = compare_to_baseline(logits_of(fp16_model, x, exact=True), reference, labels)
    return FloatPartsReport((before, max(before, QDQ_FP16_OPSET)), tuple(kept), folded, int8_stats, emulated_stats, delivered,
                            round(time.monotonic() - started, 2))
