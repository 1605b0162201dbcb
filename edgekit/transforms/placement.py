"""Which nodes get Q/DQ: the matrix products, and around them only what keeps integer regions whole.

Every runtime has INT8 kernels for Conv, Gemm and MatMul; those read INT8 inputs and
weights always. Other operators (residual Add, Mul, pooling, Concat, reshapes and
transposes, Relu/Clip) are quantized only where that keeps a region of the graph in INT8
from one matrix product to the next: every input arrives as INT8 (from a matrix product,
another such operator, the graph input or a constant) and every reader takes it as INT8.

Why not everything that has an integer kernel: a quantized operator between float ones
is an island of QuantizeLinear -> DequantizeLinear pairs that only costs. EfficientNet's
residual Adds between convolutions stay INT8 (ONNX Runtime's QLinearAdd, OpenVINO keeps
the residual in u8), but a transformer's GELU (Div, Erf, Add, Mul) between two MatMuls
was cut into four islands, each a round trip of a 197x3072 tensor: a quarter of DeiT-Tiny's
INT8 time on ONNX Runtime went to standalone Q/DQ nodes (`edgekit profile`), and INT8 ran
slower than FP32. Softmax stays in float (its INT8 kernels are not on every runtime; the
attention's second MatMul quantizes its output anyway), and so does whatever only
computes shapes.
"""

from __future__ import annotations

# Operators given Q/DQ: those with integer kernels (or free requantization) on ONNX
# Runtime, OpenVINO and TensorRT. Anything else (Exp, Erf, Div, Sqrt...) stays in float
# and is listed in the report.
QUANTIZABLE_OP_TYPES = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Pad",
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather", "Softmax",
)
COMPUTE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FOLLOWERS = frozenset({
    "Add", "Mul", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "AveragePool", "GlobalAveragePool",
    "MaxPool", "Concat", "Pad", "Resize", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather",
})


def nodes_to_quantize(model, excluded: set[str]) -> set[str]:
    """Names of the nodes to give Q/DQ: every Conv/Gemm/MatMul not in ``excluded`` (shape
    arithmetic, nodes kept in float), and each other quantizable node whose inputs all
    arrive as INT8 and whose readers all take INT8 (a fixed point, see the module doc)."""
    from .qdq_graph import consumers, node_label

    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    graph_inputs = {i.name for i in model.graph.input} - constants
    graph_outputs = {o.name for o in model.graph.output}
    readers = consumers(model)
    made_by = {o: n for n in model.graph.node for o in n.output}
    compute = {node_label(n) for n in model.graph.node if n.op_type in COMPUTE and node_label(n) not in excluded}
    chosen = {node_label(n) for n in model.graph.node if n.op_type in FOLLOWERS and node_label(n) not in excluded}

    def integer_source(tensor: str) -> bool:
        if not tensor or tensor in constants or tensor in graph_inputs:
            return True
        producer = made_by.get(tensor)
        return producer is not None and (node_label(producer) in compute or node_label(producer) in chosen)

    def integer_readers(node) -> bool:
        for output in node.output:
            if output in graph_outputs:
                return False
            for reader in readers.get(output, []):
                label = node_label(reader)
                if label not in compute and label not in chosen:
                    return False
        return True

    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            label = node_label(node)
            if label in chosen and not (all(integer_source(i) for i in _data_inputs(node)) and integer_readers(node)):
                chosen.discard(label)
                changed = True
    return compute | chosen


def _data_inputs(node) -> list[str]:
    """The inputs that carry data (a Reshape's shape, a Slice's bounds, a Pad's amounts and
    a Resize's scales are not activations)."""
    if node.op_type in ("Reshape", "Expand", "Gather", "Pad", "Resize", "Slice", "Split", "Squeeze", "Unsqueeze", "Clip"):
        return list(node.input[:1])
    return list(node.input)
