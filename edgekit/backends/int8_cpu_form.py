"""The portable INT8 graph in the form CPU runtimes (ONNX Runtime, OpenVINO) run fast and exactly.

edgekit's QDQ artifact uses signed INT8 activations with zero point 0 because TensorRT
requires it. ONNX Runtime's x86 CPU kernels prefer unsigned activations (U8S8), and
they can fuse Conv -> Relu/Clip -> Q into one integer convolution only when the Q's zero
point equals the type's minimum, so the activation's clamp at 0 comes for free. Hence:

* tensors that are clamped at 0 anyway (outputs of Relu or Clip(min >= 0), or a Q whose
  only consumers are such clamps) become uint8 with zero point 0 over the same range:
  scale * 127 / 255, i.e. the same saturation point with twice the resolution;
* every other activation becomes uint8 with zero point 128 and the same scale, which is
  numerically identical to int8 with zero point 0;
* INT32 biases are rescaled to the new input scale (ONNX Runtime's fusion needs
  bias_scale = input_scale * weight_scale).

On x86 CPUs without VNNI (AVX2 / AVX-512F only), ONNX Runtime's U8S8 kernels add pairs
of uint8 x int8 products in int16 (vpmaddubsw), which saturates as soon as two large
activations meet two large weights: EfficientNet-Lite0 went from 93.5% to 42.9% top-1
agreement. There the weights of every non-depthwise Conv/Gemm/MatMul become uint8 with
zero point 128 (the same values, shifted), which routes them to the U8U8 kernels that
widen to int16 before multiplying. Depthwise convolutions have their own kernel and keep
int8 weights. On CPUs with VNNI (or ARM), weights stay int8.

OpenVINO's CPU plugin has the same int16 overflow on such CPUs when it reads the signed
activations as they are (EfficientNet-Lite0: 80.5% agreement vs 94.8% for the exact graph);
given uint8 activations with non-negative tensors kept at 0..127 it computes the graph
faithfully at the same speed, so its CPU form is that (``widen_clamped=False``).

The result is at least as accurate as the portable graph; edgekit measures each backend
against PyTorch on its own, so the figures stay honest.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..transforms.qdq_graph import drop_unused_initializers

ZERO_CLAMPS = ("Relu", "Clip")
INTEGER_MATMUL_OPS = ("Conv", "Gemm", "MatMul")
_INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@lru_cache(maxsize=1)
def weight_form() -> str:
    """'u8s8' where int8 dot products do not saturate (VNNI, AMX, non-x86), else 'u8u8'."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "u8s8"
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "u8u8"  # cannot tell: the form that is always exact
    return "u8s8" if any(f in flags for f in _INT8_DOT_PRODUCT_FLAGS) else "u8u8"


def _clip_min(node, inits) -> float | None:
    from onnx import numpy_helper

    if node.op_type == "Relu":
        return 0.0
    if node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in inits:
        return float(numpy_helper.to_array(inits[node.input[1]]))
    return None


def lower_qdq_for_cpu(model, form: str | None = None, widen_clamped: bool = True) -> int:
    """Rewrite ``model`` in place for ``form`` ('u8s8' or 'u8u8', default: this CPU's
    weight_form()); returns how many activation quantizers changed.

    ``widen_clamped`` gives non-negative tensors all 256 uint8 levels (ONNX Runtime, whose
    Relu/Clip fusion needs it). OpenVINO gets False: it keeps them at 0..127, which its
    kernels multiply by int8 weights without int16 overflow on CPUs without VNNI.
    """
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def clamped_at_zero(node) -> bool:
        m = _clip_min(node, inits) if node is not None else None
        return m is not None and m >= 0.0

    new_params: dict[str, tuple[str, str, float]] = {}  # Q output -> (scale name, zp name, scale ratio)
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        if len(q.input) < 3 or q.input[2] not in inits or inits[q.input[2]].data_type != TensorProto.INT8:
            continue
        zero_point = numpy_helper.to_array(inits[q.input[2]])
        if np.any(zero_point != 0):
            continue
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        dqs = consumers.get(q.output[0], [])
        after = [c for dq in dqs for c in consumers.get(dq.output[0], [])]
        non_negative = clamped_at_zero(made_by.get(q.input[0])) or (after and all(clamped_at_zero(c) for c in after))
        ratio = 127.0 / 255.0 if non_negative and widen_clamped else 1.0
        zp_value = 0 if non_negative else 128
        scale_name, zp_name = f"{q.output[0]}__cpu_scale", f"{q.output[0]}__cpu_zp"
        model.graph.initializer.append(numpy_helper.from_array((scale * ratio).astype(np.float32), scale_name))
        model.graph.initializer.append(numpy_helper.from_array(np.full(zero_point.shape, zp_value, np.uint8), zp_name))
        q.input[1], q.input[2] = scale_name, zp_name
        for dq in dqs:
            if dq.op_type == "DequantizeLinear":
                dq.input[1], dq.input[2] = scale_name, zp_name
                new_params[dq.output[0]] = (scale_name, zp_name, ratio)

    # Bias scale must follow the input scale.
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        changed = new_params.get(node.input[0])
        bias_dq = made_by.get(node.input[2])
        if not changed or changed[2] == 1.0 or bias_dq is None or bias_dq.op_type != "DequantizeLinear":
            continue
        ratio = changed[2]
        bias = numpy_helper.to_array(inits[bias_dq.input[0]]).astype(np.float64)
        bias_scale = numpy_helper.to_array(inits[bias_dq.input[1]]).astype(np.float32)
        new_bias = np.clip(np.round(bias / ratio), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        bias_name, bias_scale_name = f"{bias_dq.input[0]}__cpu", f"{bias_dq.input[1]}__cpu"
        model.graph.initializer.append(numpy_helper.from_array(new_bias, bias_name))
        model.graph.initializer.append(numpy_helper.from_array((bias_scale * ratio).astype(np.float32), bias_scale_name))
        bias_dq.input[0], bias_dq.input[1] = bias_name, bias_scale_name
    if (form or weight_form()) == "u8u8":
        _shift_weights_to_uint8(model, made_by, inits)
    drop_unused_initializers(model)
    return len(new_params)


def _is_depthwise(node) -> bool:
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def _shift_weights_to_uint8(model, made_by, inits) -> None:
    """int8 weights (zero point z) -> uint8 weights + 128 (zero point z + 128): same values."""
    from onnx import TensorProto, numpy_helper

    for node in model.graph.node:
        if node.op_type not in INTEGER_MATMUL_OPS or _is_depthwise(node) or len(node.input) < 2:
            continue
        dq = made_by.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        weight, zero_point = inits.get(dq.input[0]), inits.get(dq.input[2])
        if weight is None or zero_point is None or weight.data_type != TensorProto.INT8:
            continue
        for name, tensor in ((dq.input[0], weight), (dq.input[2], zero_point)):
            shifted = (numpy_helper.to_array(tensor).astype(np.int16) + 128).astype(np.uint8)
            model.graph.initializer.append(numpy_helper.from_array(shifted, f"{name}__u8"))
        dq.input[0], dq.input[2] = f"{dq.input[0]}__u8", f"{dq.input[2]}__u8"
