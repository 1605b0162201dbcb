"""The portable INT8 graph in the form ONNX Runtime's CPU kernels run fast.

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

Weights stay int8. The result is at least as accurate as the portable graph; edgekit
measures each backend against PyTorch on its own, so the figures stay honest.
"""

from __future__ import annotations

import numpy as np

from ..transforms.qdq_graph import drop_unused_initializers

ZERO_CLAMPS = ("Relu", "Clip")


def _clip_min(node, inits) -> float | None:
    from onnx import numpy_helper

    if node.op_type == "Relu":
        return 0.0
    if node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in inits:
        return float(numpy_helper.to_array(inits[node.input[1]]))
    return None


def lower_qdq_for_cpu(model) -> int:
    """Rewrite ``model`` in place; returns how many activation quantizers changed."""
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
        ratio = 127.0 / 255.0 if non_negative else 1.0
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
    drop_unused_initializers(model)
    return len(new_params)
