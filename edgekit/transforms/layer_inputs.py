"""The quantized layers of a QDQ graph and statistics of their inputs on real images.

A "layer" is a Conv/Gemm/MatMul whose weights are an INT8 initializer read through a
DequantizeLinear of its own, and whose activation input is quantized too. For each, one
FP32 pass gathers statistics of x_q = the layer's own input quantizer applied to its FP32
input x: the mean input patch (for bias correction) and, when asked, second moments of
x_q and of e = x_q - x (for AdaRound). Upstream layers' errors are deliberately left out:
each layer answers for its own weights and its own input's quantization, so no two layers
correct the same error (correcting every layer at once from the quantized graph's own
inputs over-corrects: each layer cancels an upstream error its upstream layer cancels too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .qdq_graph import compute_nodes, node_label, producers, session, with_outputs
from ..progress import Progress

BATCH = 8


@dataclass
class QuantizedLayer:
    label: str
    op_type: str
    groups: int
    weight: np.ndarray  # float weights as (groups, out per group, d)
    scale: np.ndarray  # (groups, out per group, 1)
    to_stored: Callable[[np.ndarray], np.ndarray]  # (groups, out, d) integers -> stored layout
    from_stored: Callable[[np.ndarray], np.ndarray]  # stored layout -> (groups, out, d)
    patches: Callable  # torch tensor input -> (groups, d, n) columns
    sums: Callable  # torch tensor input -> ((groups, d) column sums, n)
    q_init: object  # the INT8 weight initializer (TensorProto)
    q_shape: tuple
    input_quantizer: tuple  # (scale, zero point, qmin, qmax) of the activation input
    float_input: str

    def integers(self) -> np.ndarray:
        from onnx import numpy_helper

        return self.from_stored(numpy_helper.to_array(self.q_init))

    def write_integers(self, ints: np.ndarray) -> None:
        from onnx import numpy_helper

        self.q_init.CopyFrom(numpy_helper.from_array(self.to_stored(ints).astype(np.int8), self.q_init.name))


def _attr(node, name, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _conv_patches(node, kernel):
    """Input -> (groups, d, n) columns, d = channels per group * kernel area; and input ->
    (groups, d) column sums (cheap: k*k strided window sums, no im2col)."""
    import torch.nn.functional as F

    groups = _attr(node, "group", 1)
    strides = list(_attr(node, "strides", [1, 1]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    pointwise = tuple(kernel) == (1, 1) and strides == [1, 1] and not any(pads)

    def patches(t):
        if pointwise:
            n, c, h, w = t.shape
            return t.reshape(n, groups, c // groups, h * w).permute(1, 2, 0, 3).reshape(groups, c // groups, n * h * w)
        t = F.pad(t, (pads[1], pads[3], pads[0], pads[2]))
        cols = F.unfold(t, kernel, dilation=dilations, stride=strides)  # (n, c*kh*kw, L)
        n, rows, length = cols.shape
        return cols.view(n, groups, rows // groups, length).permute(1, 2, 0, 3).reshape(groups, rows // groups, n * length)

    def sums(t):
        import torch

        n = t.shape[0]
        image_sum = F.pad(t.sum(dim=0, dtype=torch.float64), (pads[1], pads[3], pads[0], pads[2]))  # (c, H, W)
        out_h = (image_sum.shape[1] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
        out_w = (image_sum.shape[2] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
        per_offset = [
            image_sum[:, i * dilations[0] : i * dilations[0] + strides[0] * (out_h - 1) + 1 : strides[0],
                      j * dilations[1] : j * dilations[1] + strides[1] * (out_w - 1) + 1 : strides[1]].sum(dim=(1, 2))
            for i in range(kernel[0]) for j in range(kernel[1])
        ]
        total = torch.stack(per_offset, dim=1)  # (c, kh*kw), channel-major like the weights
        return total.reshape(groups, -1), n * out_h * out_w

    return patches, sums


def _dense_patches(t):
    return t.reshape(-1, t.shape[-1]).T.unsqueeze(0)  # (1, d, n)


def _dense_sums(t):
    import torch

    flat = t.reshape(-1, t.shape[-1])
    return flat.sum(dim=0, dtype=torch.float64).unsqueeze(0), flat.shape[0]


def quantized_layers(model, fp32_model) -> list[QuantizedLayer]:
    """Compute nodes with an INT8 weight initializer (read through a DequantizeLinear of their
    own) and a quantized activation input, paired with the FP32 node of the same label."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    fp32_inits = {i.name: i for i in fp32_model.graph.initializer}
    fp32_nodes = {node_label(n): n for n in compute_nodes(fp32_model)}
    made_by = producers(model)
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    found = []
    for node in compute_nodes(model):
        label = node_label(node)
        source = fp32_nodes.get(label)
        act_dq, w_dq = made_by.get(node.input[0]), made_by.get(node.input[1]) if len(node.input) > 1 else None
        if source is None or act_dq is None or act_dq.op_type != "DequantizeLinear":
            continue
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits or readers.get(w_dq.output[0], 0) != 1:
            continue
        if len(source.input) < 2 or source.input[1] not in fp32_inits:
            continue
        q_init = inits[w_dq.input[0]]
        q = numpy_helper.to_array(q_init)
        if q.dtype != np.int8:
            continue
        w = numpy_helper.to_array(fp32_inits[source.input[1]]).astype(np.float32)
        s = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float32)
        axis = _attr(w_dq, "axis", 1)
        if w.shape != q.shape:
            continue
        layer = _describe(node, w, s, axis, q.shape)
        if layer is None:
            continue
        zp = numpy_helper.to_array(inits[act_dq.input[2]]) if len(act_dq.input) > 2 and act_dq.input[2] in inits else np.zeros((), np.int8)
        act_scale = numpy_helper.to_array(inits[act_dq.input[1]]) if act_dq.input[1] in inits else None
        if act_scale is None or act_scale.size != 1:
            continue
        info = np.iinfo(zp.dtype)
        quantizer = (float(act_scale), float(zp), float(info.min), float(info.max))
        found.append(QuantizedLayer(label, node.op_type, *layer, q_init=q_init, q_shape=q.shape, input_quantizer=quantizer,
                            float_input=source.input[0]))
    return found


def _describe(node, w, s, axis, shape):
    """Weights as (groups, out, d) with matching scales, or None for layouts not handled."""
    if node.op_type == "Conv":
        if w.ndim != 4 or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or (s.size > 1 and axis != 0):
            return None
        groups = _attr(node, "group", 1)
        cout = w.shape[0]
        weight = w.reshape(groups, cout // groups, -1)
        scale = np.broadcast_to(s.reshape(-1), (cout,)).reshape(groups, cout // groups, 1)
        return (groups, weight, scale, lambda q: q.reshape(shape), lambda q: q.reshape(weight.shape), *_conv_patches(node, tuple(w.shape[2:])))
    if w.ndim != 2:
        return None
    transposed = node.op_type == "Gemm" and _attr(node, "transB", 0) == 1
    if node.op_type == "Gemm" and _attr(node, "transA", 0) != 0:
        return None
    out_axis = 0 if transposed else 1
    if s.size > 1 and axis != out_axis:
        return None
    weight = (w if transposed else w.T)[None]
    scale = np.broadcast_to(s.reshape(-1), (weight.shape[1],)).reshape(1, -1, 1)
    to_stored = (lambda q: q[0]) if transposed else (lambda q: q[0].T)
    from_stored = (lambda q: q[None]) if transposed else (lambda q: q.T[None])
    return (1, weight, scale, to_stored, from_stored, _dense_patches, _dense_sums)


class InputStats:
    """E[xq xq^T], E[xq e^T], E[e e^T] per group (float64 sums; e = xq - x), and the mean input patch."""

    def __init__(self) -> None:
        self.qq = self.qe = self.ee = None
        self.sum_q = None
        self.n = 0

    def add_sums(self, sum_q, n: int) -> None:
        self.sum_q = sum_q if self.sum_q is None else self.sum_q + sum_q
        self.n += n

    def add(self, xq, xf) -> None:
        """Second moments of x_q and of the input error e = x_q - x, never of x itself: the
        layer's error is then a sum of small terms, not a difference of large ones (which
        float32 sums over a million positions cannot resolve)."""
        import torch

        e = xq - xf
        qq, qe, ee = (torch.bmm(a, b.transpose(1, 2)).double() for a, b in ((xq, xq), (xq, e), (e, e)))
        self.n += xq.shape[2]
        self.sum_q = xq.sum(dim=2, dtype=torch.float64) if self.sum_q is None else self.sum_q + xq.sum(dim=2, dtype=torch.float64)
        if self.qq is None:
            self.qq, self.qe, self.ee = qq, qe, ee
        else:
            self.qq += qq
            self.qe += qe
            self.ee += ee

    @property
    def mean_q(self):
        return self.sum_q / self.n  # (groups, d)


def _fake_quant(t, quantizer):
    import torch

    scale, zero, lo, hi = quantizer
    return (torch.clamp(torch.round(t / scale) + zero, lo, hi) - zero) * scale


def gather_input_stats(layers: list[QuantizedLayer], fp32_model, x: np.ndarray, progress: Progress, second_moments: bool = True) -> list[InputStats]:
    """Per layer, statistics of its FP32 input x and of x_q = the input's own INT8 quantizer
    applied to x (no error from upstream layers: each layer answers for its own weights and
    its own input's quantization, so no two layers correct the same error)."""
    import torch

    f_names = [l.float_input for l in layers]
    f_sess = session(with_outputs(fp32_model, f_names), optimize=True)  # FP32: fusing changes nothing
    input_name = f_sess.get_inputs()[0].name
    grams = [InputStats() for _ in layers]
    steps = (len(x) + BATCH - 1) // BATCH
    with torch.no_grad():
        for step, start in enumerate(range(0, len(x), BATCH)):
            progress("layer statistics", step, steps)
            f_values = f_sess.run(f_names, {input_name: x[start : start + BATCH]})
            for layer, g, xf in zip(layers, grams, f_values):
                xf = torch.from_numpy(xf)
                xq = _fake_quant(xf, layer.input_quantizer)
                if second_moments:
                    g.add(layer.patches(xq), layer.patches(xf))
                else:
                    g.add_sums(*layer.sums(xq))
    progress("layer statistics", steps, steps)
    return grams
