"""Fold into constants what an exported graph computes from its input's fixed size.

torch.onnx's TorchScript exporter records ``x.size()`` as Shape nodes once the batch axis
is dynamic, so every size-derived value becomes a subgraph evaluated at run time: timm's
TF-style "same" padding computes each Pad's amounts from Shape with Cast, Div, Ceil and
Sub (EfficientNet-Lite1/2: 170 such nodes), and ReLU6's bounds arrive as Constant nodes.
The height and width of an edgekit export are fixed, so all of it but what depends on the
batch size is a constant. Left in, it costs on every runtime: the dynamic Pad runs in float
between Q/DQ pairs, and ONNX Runtime fuses a Conv -> Clip -> QuantizeLinear into an integer
convolution only when the Clip's bounds are initializers, so every such Conv of Lite1 ran
in float (23.8 ms as INT8 against 15.8 ms FP32).

The subgraph is evaluated by ONNX Runtime at two batch sizes; a tensor with the same value
at both is independent of the batch and becomes an initializer, and nodes left without a
reader are dropped. Values that change with the batch (a Reshape to [N, -1], ViT's class
token broadcast to N rows) stay computed. The export's parity check against PyTorch then
judges the folded graph.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

FOLD_VERSION = 1  # part of the export key: bump when the folding changes
MAX_FOLDED_ELEMENTS = 1 << 16  # larger size-derived tensors (a broadcast embedding) stay computed
_PROBE_BATCHES = (2, 3)


def constants_to_initializers(model) -> int:
    """Constant nodes -> initializers (the form optimizers and quantizers look for). Returns
    how many were converted."""
    from onnx import helper, numpy_helper

    converted = []
    for node in model.graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        if attribute.name == "value":
            value = numpy_helper.to_array(attribute.t)
        elif attribute.name in ("value_float", "value_int", "value_floats", "value_ints"):
            dtype = np.float32 if "float" in attribute.name else np.int64
            value = np.asarray(helper.get_attribute_value(attribute), dtype=dtype)
        else:  # sparse or string constants: left as they are
            continue
        model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        converted.append(node)
    for node in converted:
        model.graph.node.remove(node)
    return len(converted)


def size_subgraph(model) -> list[str]:
    """Tensors computed only from shapes and constants, in graph order."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    computed: list[str] = []
    derived: set[str] = set()
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape" or (inputs and all(i in derived or i in constants for i in inputs) and any(i in derived for i in inputs)):
            derived.update(node.output)
            computed.extend(o for o in node.output if o)
    return computed


def fold_static_shapes(model, input_size: int) -> int:
    """Fold ``model`` (input [N, 3, input_size, input_size]) in place; returns how many
    tensors became initializers."""
    constants_to_initializers(model)
    tensors = size_subgraph(model)
    if not tensors:
        return 0
    batch = _fixed_batch(model)
    values = [_evaluate(model, tensors, b, input_size) for b in ((batch,) if batch else _PROBE_BATCHES)]
    if any(v is None for v in values):
        return 0
    fixed = {
        name: found[0] for name, *found in zip(tensors, *values)
        if found[0].size <= MAX_FOLDED_ELEMENTS and all(_same(found[0], other) for other in found[1:])
    }
    if not fixed:
        return 0
    from onnx import numpy_helper

    keep = [n for n in model.graph.node if not (n.output and all(o in fixed or not o for o in n.output))]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    # np.array, not np.ascontiguousarray: that one turns a scalar into a 1-element vector
    model.graph.initializer.extend(numpy_helper.from_array(np.array(a), name) for name, a in fixed.items())
    _drop_dead_nodes(model)
    return len(fixed)


def _fixed_batch(model) -> Optional[int]:
    """The input's batch size where the graph fixes it (then every size is a constant)."""
    dim = model.graph.input[0].type.tensor_type.shape.dim
    return dim[0].dim_value if dim and dim[0].HasField("dim_value") else None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _evaluate(model, tensors: list[str], batch: int, input_size: int) -> Optional[list[np.ndarray]]:
    """The values of ``tensors`` for an all-zero input of ``batch`` images (None when the
    graph cannot be run so, e.g. a fixed batch of 1)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))  # ONNX Runtime infers the type
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # values as the graph computes them
    try:
        session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        if len(inputs) != 1:
            return None
        x = np.zeros((batch, 3, input_size, input_size), dtype=np.float32)
        return [np.asarray(v) for v in session.run(tensors, {inputs[0].name: x})]
    except Exception:  # noqa: BLE001 (an unfoldable graph is exported as it is)
        return None


def _drop_dead_nodes(model) -> None:
    """Remove nodes none of whose outputs is read, until none is left; then unread initializers."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        keep = [n for n in model.graph.node if any(o in read for o in n.output if o)]
        if len(keep) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(keep)
    read = {i for n in model.graph.node for i in n.input} | outputs
    used = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)
