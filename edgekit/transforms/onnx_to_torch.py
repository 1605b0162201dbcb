"""ONNX graph -> torch module interpreter: runs a float or QDQ ONNX graph in PyTorch with straight-through fake quantization, weights as parameters."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..core import UsageError
from .qdq_graph import COMPUTE_OP_TYPES, node_label, producers

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHT_QMAX = 127  # symmetric INT8 weights: [-127, 127] (ONNX Runtime's symmetric range)
TRAINABLE_OPS = (*COMPUTE_OP_TYPES, "ConvTranspose")


# --------------------------------------------------------------------------- fake quantization


def _round_ste(x: "torch.Tensor") -> "torch.Tensor":
    """Round half to even (as QuantizeLinear does) with a straight-through gradient."""
    import torch

    return x + (torch.round(x) - x).detach()


def _per_axis(t: "torch.Tensor", ndim: int, axis: int) -> "torch.Tensor":
    """A 1-D per-channel tensor shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    if t.dim() != 1 or ndim == 0:
        return t
    shape = [1] * ndim
    shape[axis % ndim] = t.numel()
    return t.reshape(shape)


def weight_scale(w: "torch.Tensor", axis: Optional[int]) -> "torch.Tensor":
    """Symmetric INT8 scale ``max|w| / 127`` per channel along ``axis`` (all of w when
    None), 1 where a channel is all zero (ONNX Runtime's rule); 1-D or 0-D, no gradient."""
    import torch

    a = w.detach().abs()
    if axis is None:
        amax = a.max()
    else:
        axis = axis % w.dim()
        amax = a.transpose(0, axis).reshape(a.shape[axis], -1).max(dim=1).values
    return torch.where(amax > 0, amax / WEIGHT_QMAX, torch.ones_like(amax))


def fake_quant_weight(w: "torch.Tensor", axis: Optional[int]) -> "torch.Tensor":
    import torch

    s = weight_scale(w, axis)
    s = s if axis is None else _per_axis(s, w.dim(), axis)
    return torch.clamp(_round_ste(w / s), -WEIGHT_QMAX, WEIGHT_QMAX) * s


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


# --------------------------------------------------------------------------- the interpreter


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    name: str
    special: Optional[tuple] = None  # ("weight", key, axis) | ("bias", key, weight key, input scale, weight axis, beta)


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    found = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        found[a.name] = value.decode() if isinstance(value, bytes) else value
    return found


def _topological(nodes: list, available: set[str]) -> list:
    """Nodes in an order where every input exists before it is read (graphs should
    already be sorted; this makes sure)."""
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            missing = sorted({i for n in rest for i in n.input if i not in ready})[:3]
            raise UsageError(f"QAT cannot order the graph: inputs {missing} are never produced")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    return ordered


_TORCH_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def graph_module(model, float_weights: Optional[dict[str, np.ndarray]] = None, learn_scales: bool = False, trainable: bool = True,
                 for_export: bool = False) -> "nn.Module":
    """A torch module that computes ``model`` (an ONNX ModelProto, float or QDQ) as ONNX
    Runtime does, with the weights of Conv/Gemm/MatMul nodes as parameters.

    ``float_weights``: quantized weight initializer name -> float starting value (else the
    dequantized INT8 values). ``learn_scales``: activation scales become parameters too.
    ``trainable=False``: nothing needs gradients (the FP32 teacher).
    ``for_export``: for torch.export: the graph's other constants (shapes, Clip bounds, pads)
    stay plain tensors, not buffers, so export reads their values instead of tracing them.
    """
    return _module_class()(model, float_weights, learn_scales, trainable, for_export)


@functools.lru_cache(maxsize=1)
def _module_class():
    import torch
    from torch import nn

    class _GraphModuleImpl(nn.Module):
        """Runs an ONNX graph (float, or QDQ) in PyTorch; weights of Conv/Gemm/MatMul
        nodes are trainable parameters (see the module docstring)."""

        def __init__(self, model, float_weights: Optional[dict[str, np.ndarray]] = None, learn_scales: bool = False, trainable: bool = True,
                     for_export: bool = False):
            from onnx import numpy_helper

            super().__init__()
            graph = model.graph
            inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
            self.input_name = next(i.name for i in graph.input if i.name not in inits)
            self.output_name = graph.output[0].name
            made_by = producers(model)
            self._keys: dict[str, str] = {}  # initializer name -> parameter attribute
            self.weight_axes: dict[str, Optional[int]] = {}  # quantized weight initializer -> channel axis
            self.bias_links: dict[str, tuple] = {}  # quantized bias -> (weight key, input scale name, beta, its scale initializer)
            self.float_params: list[str] = []
            self.scale_params: list[str] = []
            self._int_dtypes: dict[str, np.dtype] = {}
            self._constants: dict[str, "torch.Tensor"] = {}  # for_export: initializer name -> plain tensor
            float_weights = float_weights or {}
            nodes: list[_Node] = []

            def add_param(name: str, value: np.ndarray) -> str:
                if name not in self._keys:
                    key = f"p{len(self._keys)}"
                    self.register_parameter(key, nn.Parameter(torch.from_numpy(np.array(value, dtype=np.float32)), requires_grad=trainable))
                    self._keys[name] = key
                return self._keys[name]

            special: dict[str, tuple] = {}  # DQ output name -> its special role
            for node in graph.node:
                if node.op_type not in TRAINABLE_OPS:
                    continue
                attrs = _attributes(node)
                weight_name = node.input[1] if len(node.input) > 1 else ""
                weight_dq = made_by.get(weight_name)
                if weight_dq is not None and weight_dq.op_type == "DequantizeLinear" and weight_dq.input[0] in inits:
                    q_name, s_name = weight_dq.input[0], weight_dq.input[1]
                    scale = inits[s_name]
                    w0 = float_weights.get(q_name)
                    if w0 is None or w0.shape != inits[q_name].shape:
                        zp = inits[weight_dq.input[2]] if len(weight_dq.input) > 2 and weight_dq.input[2] else np.zeros((), np.int8)
                        axis = _attributes(weight_dq).get("axis", 1)
                        w0 = _dequantize(inits[q_name], scale, zp, axis)
                    axis = _attributes(weight_dq).get("axis", 1) if scale.size > 1 else None
                    key = add_param(q_name, w0)
                    self.weight_axes[q_name] = axis
                    special[weight_dq.output[0]] = ("weight", key, axis)
                elif weight_name in inits and inits[weight_name].dtype == np.float32:
                    add_param(weight_name, inits[weight_name])
                    self.float_params.append(weight_name)
                bias_name = node.input[2] if len(node.input) > 2 else ""
                bias_dq = made_by.get(bias_name)
                if bias_dq is not None and bias_dq.op_type == "DequantizeLinear" and bias_dq.input[0] in inits:
                    q_name = bias_dq.input[0]
                    input_dq = made_by.get(node.input[0])
                    weight_key = special.get(weight_name)
                    if input_dq is None or input_dq.op_type != "DequantizeLinear" or weight_key is None or weight_key[0] != "weight":
                        continue  # an unusual bias: kept as the constant it is
                    beta = float(attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
                    zp = inits[bias_dq.input[2]] if len(bias_dq.input) > 2 and bias_dq.input[2] else np.zeros((), np.int32)
                    b0 = _dequantize(inits[q_name], inits[bias_dq.input[1]], zp, 0)
                    key = add_param(q_name, b0)
                    self.bias_links[q_name] = (weight_key[1], input_dq.input[1], beta, bias_dq.input[1], weight_dq.input[0])
                    special[bias_dq.output[0]] = ("bias", key, weight_key[1], input_dq.input[1], weight_key[2], beta)
                elif bias_name in inits and inits[bias_name].dtype == np.float32:
                    add_param(bias_name, inits[bias_name])
                    self.float_params.append(bias_name)

            activation_scales = set()
            for node in graph.node:
                if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
                    activation_scales.add(node.input[1])
                elif node.op_type == "DequantizeLinear" and node.input[0] not in inits and node.output[0] not in special:
                    activation_scales.add(node.input[1])
            self.activation_scales = sorted(activation_scales)
            for name in self.activation_scales:
                if learn_scales and trainable:  # learned as log(scale): positive, and Adam's steps are relative
                    add_param(name, np.log(np.maximum(inits[name], np.finfo(np.float32).tiny)))
                    self.scale_params.append(name)

            constants = 0
            for name, value in inits.items():
                if name in self._keys:
                    continue
                if value.dtype.kind in "iu" and value.dtype != np.int64:
                    self._int_dtypes[name] = value.dtype
                tensor = torch.from_numpy(np.array(value))
                if for_export:
                    self._constants[name] = tensor
                    continue
                key = f"c{constants}"
                constants += 1
                self.register_buffer(key, tensor, persistent=False)
                self._keys[name] = key

            for node in _topological(list(graph.node), {self.input_name, *inits}):
                role = special.get(node.output[0]) if node.op_type == "DequantizeLinear" else None
                nodes.append(_Node(node.op_type, list(node.input), list(node.output), _attributes(node), node_label(node), role))
                if role is None and node.op_type not in _OPS:
                    raise UsageError(f"QAT cannot run ONNX operator {node.op_type} (node {node_label(node)}); use post-training INT8 (--qat-epochs 0)")
            self.nodes = nodes

        def tensor(self, name: str) -> "torch.Tensor":
            """The value an initializer has now (a learned scale: exp of its parameter)."""
            value = getattr(self, self._keys[name])
            return value.exp() if name in self.scale_params else value

        def scale_parameters(self) -> list:
            return [getattr(self, self._keys[name]) for name in self.scale_params]

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            env: dict[str, Any] = {self.input_name: x, "": None}
            for name in self._keys:
                env[name] = self.tensor(name)
            env.update(self._constants)
            for node in self.nodes:
                if node.special is not None:
                    env[node.outputs[0]] = self._special(node.special, env)
                    continue
                args = [env[i] if i else None for i in node.inputs]
                result = _OPS[node.op](node, self, *args)
                if isinstance(result, (tuple, list)):
                    for name, value in zip(node.outputs, result):
                        env[name] = value
                else:
                    env[node.outputs[0]] = result
            return env[self.output_name]

        def _special(self, role: tuple, env: dict) -> "torch.Tensor":
            if role[0] == "weight":
                return fake_quant_weight(getattr(self, role[1]), role[2])
            _, bias_key, weight_key, input_scale, axis, beta = role
            s_w = weight_scale(getattr(self, weight_key), axis)
            scale = (env[input_scale].detach() * s_w * beta).clamp_min(1e-30)
            bias = getattr(self, bias_key)
            return _round_ste(bias / scale) * scale

        def int_dtype(self, name: str) -> Optional[np.dtype]:
            return self._int_dtypes.get(name)

    return _GraphModuleImpl


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """``(q - zp) * scale`` of an initializer, per channel along ``axis`` where scale is 1-D."""
    q = q.astype(np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    zp = np.asarray(zp, dtype=np.float64)
    if scale.ndim == 1 and scale.size > 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
    return ((q - zp) * scale).astype(np.float32)


# --------------------------------------------------------------------------- ONNX operators in torch


def _ints(value) -> list[int]:
    return [int(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]


def _pads_for(node: _Node, x, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    nd = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(node.attrs.get("pads", [0] * 2 * nd))
    if auto == "VALID":
        return [0] * 2 * nd
    begin, end = [], []
    for i in range(nd):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


def _pad_input(x, pads: list[int], value: float = 0.0):
    """Explicit padding when begin and end differ; returns (x, symmetric padding)."""
    import torch.nn.functional as F

    nd = len(pads) // 2
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return x, begin
    flat = []
    for i in reversed(range(nd)):
        flat += [begin[i], end[i]]
    return F.pad(x, flat, value=value), [0] * nd


def _conv(node: _Node, module, x, w, b=None):
    import torch.nn.functional as F

    nd = w.dim() - 2
    strides = node.attrs.get("strides", [1] * nd)
    dilations = node.attrs.get("dilations", [1] * nd)
    kernel = node.attrs.get("kernel_shape", list(w.shape[2:]))
    x, padding = _pad_input(x, _pads_for(node, x, kernel, strides, dilations))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, strides, padding, dilations, node.attrs.get("group", 1))


def _conv_transpose(node: _Node, module, x, w, b=None):
    import torch.nn.functional as F

    nd = w.dim() - 2
    if "output_shape" in node.attrs or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise UsageError(f"QAT cannot run ConvTranspose {node.name} with output_shape or auto_pad")
    pads = node.attrs.get("pads", [0] * 2 * nd)
    if pads[:nd] != pads[nd:]:
        raise UsageError(f"QAT cannot run ConvTranspose {node.name} with asymmetric pads")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    return fn(x, w, b, node.attrs.get("strides", [1] * nd), pads[:nd], node.attrs.get("output_padding", [0] * nd),
              node.attrs.get("group", 1), node.attrs.get("dilations", [1] * nd))


def _gemm(node: _Node, module, a, b, c=None):
    import torch

    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    out = b.shape[0] if node.attrs.get("transB", 0) else b.shape[-1]
    if a.dim() == 2 and not node.attrs.get("transA", 0) and alpha == 1.0 and beta == 1.0 and (c is None or c.numel() == out):
        # a fully connected layer as torch.export's consumers know it (quantizers and
        # delegates take aten.linear, and leave a matmul with a transposed constant float)
        weight = b if node.attrs.get("transB", 0) else b.transpose(0, 1)
        return torch.nn.functional.linear(a, weight, c if c is None or c.dim() == 1 else c.reshape(-1))
    if node.attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if node.attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = a @ b
    y = y * alpha if alpha != 1.0 else y
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _quantize(node: _Node, module, x, scale, zp=None):
    import torch

    axis = node.attrs.get("axis", 1)
    dtype = module.int_dtype(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.dtype(np.uint8)
    qmin, qmax = _int_range(dtype or np.dtype(np.uint8))
    s = _per_axis(scale.clamp_min(1e-30), x.dim(), axis)
    q = _round_ste(x / s)
    if zp is not None:
        q = q + _per_axis(zp.to(x.dtype), x.dim(), axis)
    return torch.clamp(q, qmin, qmax)


def _dequantize_op(node: _Node, module, q, scale, zp=None):
    axis = node.attrs.get("axis", 1)
    q = q.float() if not q.is_floating_point() else q
    if zp is not None:
        q = q - _per_axis(zp.float(), q.dim(), axis)
    return q * _per_axis(scale, q.dim(), axis)


def _clip(node: _Node, module, x, lo=None, hi=None):
    import torch

    lo = lo if lo is not None else node.attrs.get("min")
    hi = hi if hi is not None else node.attrs.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(x, lo, hi)


def _pool(node: _Node, module, x, kind: str):
    import torch.nn.functional as F

    kernel = node.attrs["kernel_shape"]
    nd = len(kernel)
    strides = node.attrs.get("strides", [1] * nd)
    dilations = node.attrs.get("dilations", [1] * nd)
    pads = _pads_for(node, x, kernel, strides, dilations)
    ceil = bool(node.attrs.get("ceil_mode", 0))
    if kind == "max":
        x, padding = _pad_input(x, pads, float("-inf"))
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(x, kernel, strides, padding, dilations, ceil)
    if pads[:nd] != pads[nd:]:
        raise UsageError(f"QAT cannot run AveragePool {node.name} with asymmetric pads")
    if any(d != 1 for d in dilations):
        raise UsageError(f"QAT cannot run AveragePool {node.name} with dilations")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(x, kernel, strides, pads[:nd], ceil, bool(node.attrs.get("count_include_pad", 0)))


def _reshape(node: _Node, module, x, shape):
    dims = _ints(shape)
    if not node.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(node: _Node, module, x):
    axis = node.attrs.get("axis", 1) % max(x.dim(), 1) if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _axes(node: _Node, given) -> Optional[list[int]]:
    if given is not None:
        return _ints(given)
    return node.attrs.get("axes")


def _squeeze(node: _Node, module, x, axes=None):
    axes = _axes(node, axes)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(node: _Node, module, x, axes=None):
    axes = _axes(node, axes)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _concat(node: _Node, module, *xs):
    import torch

    xs = [v for v in xs if v is not None]
    if any(v.is_floating_point() for v in xs):
        xs = [v if v.is_floating_point() else v.float() for v in xs]
    return torch.cat(xs, dim=node.attrs["axis"])


def _split(node: _Node, module, x, split=None):
    axis = node.attrs.get("axis", 0)
    sizes = _ints(split) if split is not None else node.attrs.get("split")
    if sizes is None:
        parts = node.attrs.get("num_outputs", len(node.outputs))
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return list(x.split(sizes, dim=axis))


def _slice(node: _Node, module, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 1:
            raise UsageError(f"edgekit's ONNX interpreter cannot run Slice {node.name} with step {step}")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis % x.dim()] = slice(start, end, step)
    return x[tuple(index)]


def _gather(node: _Node, module, x, indices):
    import torch

    axis = node.attrs.get("axis", 0) % x.dim()
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))  # a tuple: () for a scalar index into a 1-D tensor


def _shape(node: _Node, module, x):
    import torch

    dims = list(x.shape)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


def _constant(node: _Node, module):
    import torch
    from onnx import numpy_helper

    for key, value in node.attrs.items():
        if key == "value":
            return torch.from_numpy(np.array(numpy_helper.to_array(value)))
        if key in ("value_float", "value_floats"):
            return torch.tensor(value, dtype=torch.float32)
        if key in ("value_int", "value_ints"):
            return torch.tensor(value, dtype=torch.int64)
    raise UsageError(f"QAT cannot read Constant {node.name}")


def _reduce(fn: str):
    def run(node: _Node, module, x, axes=None):
        dims = _axes(node, axes)
        keep = bool(node.attrs.get("keepdims", 1))
        if not dims:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        if fn == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if fn == "sum":
            return x.sum(dim=dims, keepdim=keep)
        return x.amax(dim=dims, keepdim=keep) if fn == "max" else x.amin(dim=dims, keepdim=keep)

    return run


def _pad(node: _Node, module, x, pads=None, value=None, axes=None):
    import torch.nn.functional as F

    pads = _ints(pads) if pads is not None else node.attrs["pads"]
    nd = len(pads) // 2
    dims = _ints(axes) if axes is not None else list(range(x.dim() - nd, x.dim()))
    if dims != list(range(x.dim() - nd, x.dim())):
        begin, end = [0] * x.dim(), [0] * x.dim()
        for i, a in enumerate(dims):
            begin[a % x.dim()], end[a % x.dim()] = pads[i], pads[nd + i]
        pads, nd = begin + end, x.dim()
    begin, end = pads[:nd], pads[nd:]
    while nd and begin[0] == 0 and end[0] == 0 and nd > x.dim() - 2:
        begin, end, nd = begin[1:], end[1:], nd - 1
    flat = []
    for i in reversed(range(nd)):
        flat += [begin[i], end[i]]
    mode = node.attrs.get("mode", "constant")
    if mode == "constant":
        return F.pad(x, flat, value=float(value) if value is not None else 0.0)
    return F.pad(x, flat, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])


def _resize(node: _Node, module, x, roi=None, scales=None, sizes=None):
    import torch.nn.functional as F

    mode = node.attrs.get("mode", "nearest")
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
        kwargs: dict[str, Any] = {"size": size}
    else:
        factors = [float(v) for v in scales.tolist()][2:]
        kwargs = {"scale_factor": factors}
    transform = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        return F.interpolate(x, mode="nearest" if transform == "asymmetric" else "nearest-exact", **kwargs)
    if mode == "linear":
        return F.interpolate(x, mode="bilinear" if x.dim() == 4 else "linear", align_corners=transform == "align_corners", **kwargs)
    raise UsageError(f"QAT cannot run Resize {node.name} in mode {mode}")


def _cast(node: _Node, module, x):
    import torch

    dtype = getattr(torch, _TORCH_DTYPES.get(node.attrs["to"], "float32"))
    return x.to(dtype)


def _layer_norm(node: _Node, module, x, scale, bias=None):
    """ONNX LayerNormalization: normalized over the axes from ``axis`` to the last."""
    import torch.nn.functional as F

    axis = int(node.attrs.get("axis", -1)) % x.dim()
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, float(node.attrs.get("epsilon", 1e-5)))


def _softmax(log: bool):
    def run(node: _Node, module, x):
        import torch

        axis = node.attrs.get("axis", -1)
        return torch.log_softmax(x, axis) if log else torch.softmax(x, axis)

    return run


def _elementwise(fn):
    return lambda node, module, *args: fn(*args)


def _build_ops() -> dict[str, Any]:
    import operator

    def torch_fn(name):
        def call(*args):
            import torch

            return getattr(torch, name)(*args)

        return call

    def functional(name, **kwargs):
        def call(node, module, x):
            import torch.nn.functional as F

            return getattr(F, name)(x, **{k: node.attrs.get(k, v) for k, v in kwargs.items()})

        return call

    def variadic(name):
        def call(node, module, *xs):
            import torch

            result = xs[0]
            for v in xs[1:]:
                result = getattr(torch, name)(result, v)
            return result

        return call

    def hard_sigmoid(node, module, x):
        import torch

        return torch.clamp(x * float(node.attrs.get("alpha", 0.2)) + float(node.attrs.get("beta", 0.5)), 0.0, 1.0)

    def leaky_relu(node, module, x):
        import torch.nn.functional as F

        return F.leaky_relu(x, float(node.attrs.get("alpha", 0.01)))

    def elu(node, module, x):
        import torch.nn.functional as F

        return F.elu(x, float(node.attrs.get("alpha", 1.0)))

    def gelu(node, module, x):
        import torch.nn.functional as F

        return F.gelu(x, approximate=node.attrs.get("approximate", "none"))

    def transpose(node, module, x):
        return x.permute(*node.attrs.get("perm", list(reversed(range(x.dim())))))

    def expand(node, module, x, shape):
        import torch

        return x * torch.ones(_ints(shape), dtype=x.dtype) if x.is_floating_point() else x.expand(*_ints(shape))

    def where(node, module, c, a, b):
        import torch

        return torch.where(c.bool(), a, b)

    def constant_of_shape(node, module, shape):
        import torch
        from onnx import numpy_helper

        value = node.attrs.get("value")
        fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
        return torch.full(_ints(shape), fill.reshape(-1)[0].item(), dtype=torch.from_numpy(np.array(fill)).dtype)

    return {
        "Conv": _conv,
        "ConvTranspose": _conv_transpose,
        "Gemm": _gemm,
        "MatMul": _elementwise(operator.matmul),
        "QuantizeLinear": _quantize,
        "DequantizeLinear": _dequantize_op,
        "Add": _elementwise(operator.add),
        "Sub": _elementwise(operator.sub),
        "Mul": _elementwise(operator.mul),
        "Div": _elementwise(operator.truediv),
        "Pow": _elementwise(operator.pow),
        "Neg": _elementwise(operator.neg),
        "Abs": _elementwise(torch_fn("abs")),
        "Sqrt": _elementwise(torch_fn("sqrt")),
        "Reciprocal": _elementwise(torch_fn("reciprocal")),
        "Exp": _elementwise(torch_fn("exp")),
        "Log": _elementwise(torch_fn("log")),
        "Erf": _elementwise(torch_fn("erf")),
        "Tanh": _elementwise(torch_fn("tanh")),
        "Sigmoid": _elementwise(torch_fn("sigmoid")),
        "Relu": _elementwise(torch_fn("relu")),
        "Max": variadic("maximum"),
        "Min": variadic("minimum"),
        "Sum": variadic("add"),
        "Clip": _clip,
        "LeakyRelu": leaky_relu,
        "Elu": elu,
        "Gelu": gelu,
        "HardSigmoid": hard_sigmoid,
        "HardSwish": functional("hardswish"),
        "Softplus": functional("softplus"),
        "LayerNormalization": _layer_norm,
        "Softmax": _softmax(False),
        "LogSoftmax": _softmax(True),
        "Identity": lambda node, module, x: x,
        "Dropout": lambda node, module, x, *rest: x,
        "Cast": _cast,
        "GlobalAveragePool": lambda node, module, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda node, module, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "MaxPool": lambda node, module, x: _pool(node, module, x, "max"),
        "AveragePool": lambda node, module, x: _pool(node, module, x, "average"),
        "Flatten": _flatten,
        "Reshape": _reshape,
        "Transpose": transpose,
        "Concat": _concat,
        "Split": _split,
        "Slice": _slice,
        "Squeeze": _squeeze,
        "Unsqueeze": _unsqueeze,
        "Gather": _gather,
        "Shape": _shape,
        "Constant": _constant,
        "ConstantOfShape": constant_of_shape,
        "Expand": expand,
        "Where": where,
        "ReduceMean": _reduce("mean"),
        "ReduceSum": _reduce("sum"),
        "ReduceMax": _reduce("max"),
        "ReduceMin": _reduce("min"),
        "Pad": _pad,
        "Resize": _resize,
    }


_OPS = _build_ops()
