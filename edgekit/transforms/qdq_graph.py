"""Small ONNX graph utilities shared by the quantization steps (onnx + onnxruntime only)."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

COMPUTE_OP_TYPES = ("Conv", "Gemm", "MatMul")


def session(model_or_path, threads: Optional[int] = None, optimize: bool = False, float_layouts: bool = False):
    """A CPU session; by default it computes a QDQ graph exactly as written (float ops
    between Q/DQ), the model's meaning on every backend.

    Graph optimizations stay off unless asked for: with them ONNX Runtime fuses Q/DQ into
    integer kernels whose int16 intermediate sums saturate on x86 CPUs without VNNI, and
    the quantizer would be judging that CPU's kernels instead of the quantized model.
    ``float_layouts``: every optimization but those on Q/DQ (ONNX Runtime's own switch),
    so float convolutions run in its blocked layout, several times faster; their sums then
    round differently, and a value on a rounding boundary of the next quantizer can land in
    the neighbouring level (EfficientNet-Lite0: KL 0.0054 instead of 0.0051). Good enough to
    rank layers; budgets are judged on the exact graph.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if float_layouts:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    elif not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3  # ORT warns about every unused zero-point initializer
    if threads:
        so.intra_op_num_threads = threads
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def run_logits(model_or_path, x: np.ndarray, batch_size: int = 16, optimize: bool = False, float_layouts: bool = False) -> np.ndarray:
    """Logits of ``x``. Unoptimized (the default): the QDQ graph computed exactly as written,
    its constant DequantizeLinear nodes (weights, biases) folded to float beforehand, which
    gives the same values and spares dequantizing every weight on every run."""
    if not optimize:
        import onnx

        model_or_path = with_weights_dequantized(model_or_path if hasattr(model_or_path, "graph") else onnx.load(str(model_or_path)))
    sess = session(model_or_path, optimize=optimize, float_layouts=float_layouts)
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch_size
    return np.concatenate([sess.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)])


def dequantized(dq, inits) -> np.ndarray:
    """The float value of a DequantizeLinear whose inputs are initializers (per-tensor or per-axis)."""
    from onnx import numpy_helper

    values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
    if scale.ndim == 1 and values.ndim > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((values - zero) * scale).astype(np.float32)


def with_weights_dequantized(model):
    """``model`` with its DequantizeLinear nodes that read only initializers turned into float
    initializers (the same values): a copy, or ``model`` itself when it has none."""
    from onnx import numpy_helper

    names = {i.name for i in model.graph.initializer}
    if not any(n.op_type == "DequantizeLinear" and all(i in names for i in n.input if i) for n in model.graph.node):
        return model
    m = copy_model(model)
    inits = {i.name: i for i in m.graph.initializer}
    constant = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and all(i in inits for i in n.input if i)]
    folded = [numpy_helper.from_array(dequantized(n, inits), n.output[0]) for n in constant]
    gone = {id(n) for n in constant}
    keep = [n for n in m.graph.node if id(n) not in gone]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(folded)
    drop_unused_initializers(m)
    return m


def compute_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type in COMPUTE_OP_TYPES]


def node_label(node) -> str:
    return node.name or node.output[0]


def producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def quantized_node_labels(model) -> set[str]:
    """Compute nodes whose activation input comes through DequantizeLinear."""
    made_by = producers(model)
    labels = set()
    for node in compute_nodes(model):
        producer = made_by.get(node.input[0])
        if producer is not None and producer.op_type == "DequantizeLinear":
            labels.add(node_label(node))
    return labels


def copy_model(model):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def with_outputs(model, names: Iterable[str]):
    import onnx

    m = copy_model(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def strip_output_qdq(model) -> int:
    """Keep graph outputs (logits) in float: drop a Q->DQ pair that feeds a graph output."""
    made_by = producers(model)
    removed = 0
    for output in model.graph.output:
        dq = made_by.get(output.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = made_by.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = made_by.get(q.input[0])
        if source is None:
            continue
        source.output[list(source.output).index(q.input[0])] = output.name
        model.graph.node.remove(dq)
        model.graph.node.remove(q)
        removed += 1
    drop_unused_initializers(model)
    return removed


def drop_unread_qdq(model, quantized: set[str]) -> int:
    """Drop each activation Q -> DQ pair that no node of ``quantized`` reads: ONNX Runtime's
    quantizer also quantizes what a quantized node writes, and a MatMul's output going into
    GELU or Softmax would be rounded for nothing. Returns the number of pairs dropped."""
    made_by = producers(model)
    used_by = consumers(model)
    outputs = {o.name for o in model.graph.output}
    dropped = 0
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        if q.input[0] not in made_by and q.input[0] not in {i.name for i in model.graph.input}:
            continue  # a weight or constant
        dqs = used_by.get(q.output[0], [])
        if not dqs or any(dq.op_type != "DequantizeLinear" or dq.output[0] in outputs for dq in dqs):
            continue
        readers = [r for dq in dqs for r in used_by.get(dq.output[0], [])]
        if any(node_label(r) in quantized or r.op_type in ("QuantizeLinear", "DequantizeLinear") for r in readers):
            continue
        for dq in dqs:
            for reader in used_by.get(dq.output[0], []):
                reader.input[:] = [q.input[0] if i == dq.output[0] else i for i in reader.input]
            model.graph.node.remove(dq)
        model.graph.node.remove(q)
        dropped += 1
    drop_unused_initializers(model)
    return dropped


def drop_unused_initializers(model) -> None:
    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def bypass_quantization(model, fp32_model, labels: Sequence[str]):
    """A copy of the QDQ ``model`` where the named compute nodes read float inputs and weights.

    Used to measure what leaving a node in float would buy without re-quantizing.
    """
    m = copy_model(model)
    made_by = producers(m)
    fp32_nodes = {node_label(n): n for n in compute_nodes(fp32_model)}
    fp32_inits = {i.name: i for i in fp32_model.graph.initializer}
    wanted = set(labels)
    for node in compute_nodes(m):
        label = node_label(node)
        if label not in wanted or label not in fp32_nodes:
            continue
        dq = made_by.get(node.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = made_by.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[0] = q.input[0]
        source = fp32_nodes[label]
        for k in range(1, min(len(source.input), len(node.input))):
            if source.input[k] in fp32_inits:
                copy = type(fp32_inits[source.input[k]])()
                copy.CopyFrom(fp32_inits[source.input[k]])
                copy.name = f"{source.input[k]}__float_{label}"
                m.graph.initializer.append(copy)
                node.input[k] = copy.name
    return m


CLAMPING_ACTIVATIONS = ("Relu", "Clip")
FUSING_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")


def consumers(model) -> dict:
    found: dict = {}
    for n in model.graph.node:
        for name in n.input:
            found.setdefault(name, []).append(n)
    return found


def fold_activation_qdq(model) -> int:
    """Drop the Q/DQ pair between a Conv/Gemm/MatMul/Add and the Relu/Clip it feeds.

    Backends fuse the activation into the producer and quantize only its output
    (TensorRT's placement rule), and a pre-activation tensor's range can be tens of times
    the clamped one: quantizing it as well wastes most of the INT8 levels. Returns the
    number of pairs removed.
    """
    made_by = producers(model)
    used_by = consumers(model)
    outputs = {o.name for o in model.graph.output}
    removed = 0
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        source = made_by.get(q.input[0])
        readers = used_by.get(q.output[0], [])
        if source is None or source.op_type not in FUSING_PRODUCERS or len(readers) != 1:
            continue
        dq = readers[0]
        activations = used_by.get(dq.output[0], [])
        if dq.op_type != "DequantizeLinear" or dq.output[0] in outputs or not activations:
            continue
        if any(a.op_type not in CLAMPING_ACTIVATIONS for a in activations):
            continue
        for activation in activations:
            activation.input[0] = q.input[0]
        model.graph.node.remove(q)
        model.graph.node.remove(dq)
        removed += 1
    drop_unused_initializers(model)
    return removed


def shape_arithmetic(model) -> tuple[set[str], set[str]]:
    """(node names, tensor names) of the subgraph that computes shapes: Shape nodes and every
    node whose inputs are all shapes or constants (TF-style "same" padding computes its pads
    in float from the input's size). Quantizing it rounds pad sizes: never quantize it."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    tensors: set[str] = set()
    nodes: set[str] = set()
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape" or (inputs and all(i in tensors or i in constants for i in inputs) and any(i in tensors for i in inputs)):
            tensors.update(node.output)
            nodes.add(node_label(node))
    return nodes, tensors
