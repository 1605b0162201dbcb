"""Which layers the INT8 error comes from, which stay in float, and why.

* ``output_errors``: each quantized layer's relative output error vs FP32 (one pass).
* ``rank_layers``: the model's KL vs FP32 when one layer alone reads float, per layer, on a
  few images (a proxy: the exact graph then confirms each fallback step on every image).
  The all-INT8 KL on the same images is returned with it, so the two compare.
* ``float_nodes``: one list of every node that computes in float in the final graph, with
  the reason (fell back, no INT8 kernel, input arrives in float), and the PyTorch module it
  came from where the exporter's node name says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..evaluation import compare_to_baseline
from .qdq_graph import CLAMPING_ACTIVATIONS, FUSING_PRODUCERS, bypass_quantization, compute_nodes, copy_model, dequantized, with_weights_dequantized, node_label, producers, quantized_node_labels, run_logits, session, with_outputs
from ..module_names import module_path  # noqa: F401 (the report's module names; imported from here before)
from .placement import QUANTIZABLE_OP_TYPES
from ..progress import Progress

_SHAPE_OPS = {"QuantizeLinear", "DequantizeLinear", "Flatten", "Reshape", "Shape", "Gather", "Unsqueeze", "Concat", "Constant"}


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    module: Optional[str]  # the PyTorch module the node came from, when its name says so
    op_type: str
    output_rel_error: float  # ||y_int8 - y_fp32|| / ||y_fp32|| at this node, all nodes quantized
    kl_if_float: Optional[float]  # model KL when only this node reads float (None: not measured)


@dataclass(frozen=True)
class FloatNode:
    node: str
    module: Optional[str]
    op_type: str
    reason: str


def output_errors(model, fp32_model, x: np.ndarray) -> dict[str, float]:
    """Relative L2 error of every quantized compute node's output vs FP32."""
    q_nodes = {node_label(n): n.output[0] for n in compute_nodes(model)}
    f_nodes = {node_label(n): n.output[0] for n in compute_nodes(fp32_model)}
    labels = [k for k in q_nodes if k in f_nodes and k in quantized_node_labels(model)]
    q_sess = session(with_outputs(with_weights_dequantized(model), [q_nodes[k] for k in labels]))
    f_sess = session(with_outputs(fp32_model, [f_nodes[k] for k in labels]), optimize=True)
    input_name = q_sess.get_inputs()[0].name
    err2 = dict.fromkeys(labels, 0.0)
    ref2 = dict.fromkeys(labels, 0.0)
    for i in range(0, len(x), 8):
        batch = {input_name: x[i : i + 8]}
        for k, q, f in zip(labels, q_sess.run([q_nodes[k] for k in labels], batch), f_sess.run([f_nodes[k] for k in labels], batch)):
            err2[k] += float(((q - f).astype(np.float64) ** 2).sum())
            ref2[k] += float((f.astype(np.float64) ** 2).sum())
    return {k: float(np.sqrt(err2[k] / max(ref2[k], 1e-30))) for k in labels}


def describe_layers(model, errors: dict[str, float], kl_if_float: Optional[dict[str, float]] = None) -> list[NodeSensitivity]:
    types = {node_label(n): n.op_type for n in compute_nodes(model)}
    rows = [NodeSensitivity(k, module_path(k), types[k], v, (kl_if_float or {}).get(k)) for k, v in errors.items()]
    if kl_if_float:
        return sorted(rows, key=lambda r: (r.kl_if_float if r.kl_if_float is not None else float("inf"), -r.output_rel_error))
    return sorted(rows, key=lambda r: -r.output_rel_error)


def rank_layers(model, fp32_model, x: np.ndarray, reference: np.ndarray, progress: Progress) -> tuple[list[NodeSensitivity], float]:
    """Per quantized layer, the model's KL vs FP32 on ``x`` when that layer alone reads float;
    with the all-INT8 KL on the same images. Most helpful first."""
    errors = output_errors(model, fp32_model, x)
    # a ranking, so computed quickly: float convolutions in fast layouts (see
    # qdq_graph.session); the search judges each step again
    model = with_weights_dequantized(model)  # once, not once per layer
    baseline = compare_to_baseline(run_logits(model, x, float_layouts=True), reference, [None] * len(x)).mean_kl
    labels = [k for k in (node_label(n) for n in compute_nodes(model)) if k in errors]
    kl: dict[str, float] = {}
    for i, label in enumerate(labels):
        progress("sensitivity", i, len(labels))
        logits = run_logits(bypass_quantization(model, fp32_model, [label]), x, float_layouts=True)
        kl[label] = compare_to_baseline(logits, reference, [None] * len(x)).mean_kl
    progress("sensitivity", len(labels), len(labels))
    return describe_layers(model, errors, kl), baseline


def float_nodes(model, fell_back: dict[str, str]) -> list[FloatNode]:
    """Every node of the final graph that computes in float, with why. An activation
    (Relu/Clip) right after an INT8 Conv/Gemm/MatMul/Add is fused into it by every backend
    and is not listed; neither are Q/DQ and shape-only nodes."""
    made_by = producers(model)
    in_float: set[str] = set()
    found = []
    for node in model.graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        label = node_label(node)
        source = made_by.get(node.input[0]) if node.input else None
        dequantized_input = getattr(source, "op_type", None) == "DequantizeLinear"
        fused = (
            node.op_type in CLAMPING_ACTIVATIONS and source is not None and source.op_type in FUSING_PRODUCERS
            and node_label(source) not in in_float
        )
        if label in fell_back:
            reason = fell_back[label]
        elif node.op_type not in QUANTIZABLE_OP_TYPES:
            reason = f"{node.op_type} has no INT8 kernel on every backend"
        elif dequantized_input or fused:
            continue
        elif source is not None and node_label(source) in fell_back:
            reason = "its input arrives in float (after a layer that fell back)"
        elif source is not None:
            reason = "between float neighbours: Q/DQ here would only add a round trip (see placement)"
        else:
            reason = "reads a graph input or constant"
        in_float.add(label)
        found.append(FloatNode(label, module_path(label), node.op_type, reason))
    return found


def count_by_type(nodes: list[FloatNode]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def only_quantized(int8_model, fp32_model, labels):
    """A copy of ``fp32_model`` where the compute nodes ``labels`` alone read their input
    through the INT8 model's quantizer for it and compute with their INT8 weights and bias
    (as dequantized values): what quantizing those layers costs, everything else in float.
    None when none of them is quantized in ``int8_model``."""
    from onnx import numpy_helper

    made_by = producers(int8_model)
    inits = {i.name: i for i in int8_model.graph.initializer}
    quantized = {node_label(n): n for n in compute_nodes(int8_model)}
    m = copy_model(fp32_model)
    added, inserted = [], {}  # inserted: position in m's nodes -> the Q/DQ pair to put before it
    for position, target in enumerate(m.graph.node):
        label = node_label(target)
        node = quantized.get(label)
        if label not in labels or node is None or node.op_type != target.op_type:
            continue
        input_dq = made_by.get(node.input[0])
        if input_dq is None or input_dq.op_type != "DequantizeLinear":
            continue
        for k, name in enumerate(node.input):
            dq = made_by.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or k >= len(target.input):
                continue
            if k == 0:  # the activation: Q -> DQ with the INT8 model's scale and zero point
                q = made_by.get(dq.input[0])
                if q is None or q.op_type != "QuantizeLinear" or not all(p in inits for p in q.input[1:3]):
                    break
                params = [f"{p}__only_{label}" for p in q.input[1:3]]
                for source, copy in zip(q.input[1:3], params):
                    tensor = type(inits[source])()
                    tensor.CopyFrom(inits[source])
                    tensor.name = copy
                    added.append(tensor)
                inserted[position] = [
                    _node("QuantizeLinear", [target.input[0], *params], f"{label}__only_q", q),
                    _node("DequantizeLinear", [f"{label}__only_q", *params], f"{label}__only_dq", dq),
                ]
                target.input[0] = f"{label}__only_dq"
            elif all(i in inits for i in dq.input if i):  # weights and bias: their INT8 values, dequantized
                added.append(numpy_helper.from_array(dequantized(dq, inits), f"{name}__only_{label}"))
                target.input[k] = added[-1].name
    if not inserted:
        return None
    m.graph.initializer.extend(added)
    nodes = []
    for position, n in enumerate(m.graph.node):  # each pair right before its node: the graph stays sorted
        nodes += inserted.get(position, [])
        copy = type(n)()
        copy.CopyFrom(n)
        nodes.append(copy)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def kl_if_only_quantized(int8_model, fp32_model, x: np.ndarray, reference: np.ndarray, progress: Optional[Progress] = None, group=None) -> dict[str, float]:
    """The model's mean KL vs FP32 on ``x`` when one layer alone is INT8 (see only_quantized),
    per quantized compute node, or per ``group(node)`` (e.g. its module) when given: the
    group's nodes quantized together."""
    groups: dict[str, list[str]] = {}
    quantized = quantized_node_labels(int8_model)
    for label in (node_label(n) for n in compute_nodes(int8_model)):
        if label in quantized:
            groups.setdefault((group(label) if group else None) or label, []).append(label)
    found: dict[str, float] = {}
    for i, (key, labels) in enumerate(groups.items()):
        if progress is not None:
            progress("accuracy per layer", i, len(groups))
        model = only_quantized(int8_model, fp32_model, set(labels))
        if model is not None:
            found[key] = compare_to_baseline(run_logits(model, x), reference, [None] * len(x)).mean_kl
    if progress is not None:
        progress("accuracy per layer", len(groups), len(groups))
    return found


def _node(op_type: str, inputs: list[str], output: str, like):
    from onnx import helper

    node = helper.make_node(op_type, inputs, [output], name=output)
    node.attribute.extend(a for a in like.attribute if a.name == "axis")
    return node


