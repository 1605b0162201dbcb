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
  bias_scale = input_scale * weight_scale). A bias DequantizeLinear that other nodes read
  as well (equal biases merged at export, and a node left in float by fallback still
  reading the quantized one) is left as it is: each Conv/Gemm that needs its bias
  rescaled gets a DequantizeLinear and initializers of its own.

On x86 CPUs without VNNI (AVX2 / AVX-512F only), ONNX Runtime's U8S8 kernels add pairs
of uint8 x int8 products in int16 (vpmaddubsw), which saturates as soon as two large
activations meet two large weights: EfficientNet-Lite0 went from 93.5% to 42.9% top-1
agreement. There the weights of every non-depthwise Conv/Gemm/MatMul become uint8 with
zero point 128 (the same values, shifted), which routes them to the U8U8 kernels that
widen to int16 before multiplying. Depthwise convolutions have their own kernel and keep
int8 weights. Each weight DequantizeLinear is shifted once however many nodes read it;
where a depthwise Conv reads it too, the others read a shifted copy. On CPUs with VNNI
(or ARM), weights stay int8.

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
from typing import Optional

import numpy as np

from ..transforms.qdq_graph import drop_unused_initializers

# ops whose output is non-negative wherever their (first) input is
SIGN_PRESERVING = ("MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize", "Slice", "Gather", "Split")
INTEGER_MATMUL_OPS = ("Conv", "Gemm", "MatMul")
_INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# the CPUs each weight form is for (what weight_form() decides), as a deployment reads it
FORM_CPUS = {"u8s8": "x86 with VNNI/AMX, or ARM", "u8u8": "x86 without VNNI"}
# what each form means for the arithmetic (`edgekit doctor` prints it)
FORM_MEANS = {
    "u8s8": "uint8 activations x int8 weights, summed exactly in int32 (VNNI/AMX dot products, or ARM)",
    "u8u8": "uint8 activations x uint8 weights (int8 + 128): widened to int16 before multiplying, "
            "since x86 without VNNI adds u8 x s8 pairs in saturating int16 (vpmaddubsw)",
}
_X86 = ("x86_64", "amd64", "i386", "i686")


def x86_with_int8_dot_products() -> bool:
    """An x86 CPU with VNNI or AMX: int8 dot products sum exactly in int32."""
    return platform.machine().lower() in _X86 and weight_form() == "u8s8"


@lru_cache(maxsize=1)
def _cpu_flags() -> Optional[frozenset]:
    """The x86 CPU's instruction set flags (/proc/cpuinfo), None where they cannot be read."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def int8_dot_product_flags() -> tuple[str, ...]:
    """The instruction sets on this CPU that make int8 dot products exact (what decided weight_form)."""
    flags = _cpu_flags() or frozenset()
    return tuple(f for f in _INT8_DOT_PRODUCT_FLAGS if f in flags)


@lru_cache(maxsize=1)
def weight_form() -> str:
    """'u8s8' where int8 dot products do not saturate (VNNI, AMX, non-x86), else 'u8u8'."""
    if platform.machine().lower() not in _X86:
        return "u8s8"
    if _cpu_flags() is None:
        return "u8u8"  # cannot tell: the form that is always exact
    return "u8s8" if int8_dot_product_flags() else "u8u8"


def form_facts() -> dict:
    """The INT8 CPU form edgekit uses on this CPU, what it means, and what decided it."""
    form = weight_form()
    if platform.machine().lower() not in _X86:
        why = f"{platform.machine()}: not x86, its int8 dot products do not saturate"
    elif _cpu_flags() is None:
        why = "/proc/cpuinfo unreadable: the form that is exact on every x86 CPU"
    else:
        found = int8_dot_product_flags()
        why = f"found {', '.join(found)}" if found else f"none of {', '.join(_INT8_DOT_PRODUCT_FLAGS)} found"
    return {"form": form, "means": FORM_MEANS[form], "for": FORM_CPUS[form], "decided_by": why}


def _clip_min(node, inits) -> float | None:
    """The lower bound of a Relu or Clip, read from an initializer or a Constant node
    (``inits`` maps both kinds of name to a TensorProto)."""
    from onnx import numpy_helper

    if node.op_type == "Relu":
        return 0.0
    if node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in inits:
        return float(numpy_helper.to_array(inits[node.input[1]]))
    return None


def _constant_tensors(model) -> dict:
    """Name -> TensorProto of every initializer and tensor-valued Constant node."""
    found = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            found.setdefault(node.output[0], node.attribute[0].t)
    return found


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
    graph_outputs = {o.name for o in model.graph.output}
    fresh = _name_maker(model)
    added_after: dict[str, list] = {}  # output of a node -> new nodes to insert right after it

    constants = _constant_tensors(model)

    def clamped_at_zero(node) -> bool:
        m = _clip_min(node, constants) if node is not None else None
        return m is not None and m >= 0.0

    known: dict[str, bool] = {}

    def non_negative(tensor: str) -> bool:
        """Clamped at 0 by a Relu/Clip, or moved or pooled from such values only (ResNet's
        MaxPool after its stem: its input and output quantizers must match for ONNX Runtime
        to pool in INT8)."""
        if tensor not in known:
            known[tensor] = False  # a cycle cannot happen in a DAG; this guards the recursion
            node = made_by.get(tensor)
            if node is None:
                found = False
            elif clamped_at_zero(node):
                found = True
            elif node.op_type == "DequantizeLinear":
                q = made_by.get(node.input[0])
                found = q is not None and q.op_type == "QuantizeLinear" and non_negative(q.input[0])
            elif node.op_type in SIGN_PRESERVING:
                found = non_negative(node.input[0])
            elif node.op_type == "Concat":
                found = all(non_negative(i) for i in node.input)
            else:
                found = False
            known[tensor] = found
        return known[tensor]

    def read_elsewhere(tensor: str, reader) -> bool:
        """Whether a node other than ``reader`` (or the graph's outputs) reads ``tensor``."""
        return tensor in graph_outputs or any(list(c.output) != list(reader.output) for c in consumers.get(tensor, []))

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
        unsigned = non_negative(q.input[0]) or (after and all(clamped_at_zero(c) for c in after))
        ratio = 127.0 / 255.0 if unsigned and widen_clamped else 1.0
        zp_value = 0 if unsigned else 128
        scale_name, zp_name = fresh(f"{q.output[0]}__cpu_scale"), fresh(f"{q.output[0]}__cpu_zp")
        model.graph.initializer.append(numpy_helper.from_array((scale * ratio).astype(np.float32), scale_name))
        model.graph.initializer.append(numpy_helper.from_array(np.full(zero_point.shape, zp_value, np.uint8), zp_name))
        q.input[1], q.input[2] = scale_name, zp_name
        for dq in dqs:
            if dq.op_type == "DequantizeLinear":
                dq.input[1], dq.input[2] = scale_name, zp_name
                new_params[dq.output[0]] = (scale_name, zp_name, ratio)

    # Bias scale must follow the input scale. A bias DequantizeLinear that other nodes read
    # too (the exporter deduplicates equal biases, e.g. zeros, and a node left in float by
    # fallback keeps reading the quantized one) is never changed: their inputs may have
    # changed by other ratios, or not at all. Each Conv/Gemm that needs a rescaled bias then
    # reads its own copy, made from the shared node's untouched initializers.
    shared_bias_dqs = set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        changed = new_params.get(node.input[0])
        bias_dq = made_by.get(node.input[2])
        if not changed or changed[2] == 1.0 or bias_dq is None or bias_dq.op_type != "DequantizeLinear":
            continue
        bias_init, bias_scale_init = inits.get(bias_dq.input[0]), inits.get(bias_dq.input[1])
        if bias_init is None or bias_scale_init is None or bias_init.data_type != TensorProto.INT32:
            continue
        ratio = changed[2]
        bias = numpy_helper.to_array(bias_init).astype(np.float64)
        bias_scale = numpy_helper.to_array(bias_scale_init).astype(np.float32)
        new_bias = np.clip(np.round(bias / ratio), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        bias_name, bias_scale_name = fresh(f"{bias_dq.input[0]}__cpu"), fresh(f"{bias_dq.input[1]}__cpu")
        model.graph.initializer.append(numpy_helper.from_array(new_bias, bias_name))
        model.graph.initializer.append(numpy_helper.from_array((bias_scale * ratio).astype(np.float32), bias_scale_name))
        if not read_elsewhere(bias_dq.output[0], node):
            bias_dq.input[0], bias_dq.input[1] = bias_name, bias_scale_name
            continue
        own = _copy_node(bias_dq, [bias_name, bias_scale_name, *bias_dq.input[2:]], fresh(f"{bias_dq.output[0]}__cpu"))
        added_after.setdefault(bias_dq.output[0], []).append(own)
        shared_bias_dqs.add(bias_dq.output[0])
        node.input[2] = own.output[0]
    if (form or weight_form()) == "u8u8":
        _shift_weights_to_uint8(model, made_by, inits, consumers, fresh, added_after)
    # a shared bias DequantizeLinear whose readers all got their own copy is dead
    unread = {t for t in shared_bias_dqs if t not in graph_outputs and not any(t in c.input for c in consumers[t])}
    _insert_and_remove(model, added_after, unread)
    drop_unused_initializers(model)
    return len(new_params)


def _name_maker(model):
    """A function that returns a tensor name unused in ``model`` (``base`` itself if free)."""
    graph = model.graph
    taken = {i.name for i in graph.initializer} | {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    taken |= {name for n in graph.node for name in (*n.input, *n.output)}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    return fresh


def _copy_node(node, inputs, output: str):
    """A copy of the single-output ``node`` (attributes included) reading ``inputs``."""
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(inputs)
    copy.output[0] = output
    copy.name = f"{node.name or node.op_type}__{output}"
    return copy


def _insert_and_remove(model, added_after: dict[str, list], removed: set[str]) -> None:
    """Insert new nodes right after the node producing each key of ``added_after`` (copies of
    it that read initializers, or what it reads: the graph stays topologically sorted), and
    drop the nodes whose first output is in ``removed``."""
    from onnx import NodeProto

    if not added_after and not removed:
        return
    nodes = []
    for n in model.graph.node:
        key = n.output[0] if n.output else None
        if key not in removed:
            kept = NodeProto()
            kept.CopyFrom(n)
            nodes.append(kept)
        nodes.extend(added_after.get(key, []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _is_depthwise(node) -> bool:
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def _shift_weights_to_uint8(model, made_by, inits, consumers, fresh, added_after) -> None:
    """int8 weights (zero point z) -> uint8 weights + 128 (zero point z + 128): same values.

    Each weight DequantizeLinear is shifted once, however many nodes read it, and each int8
    initializer gets one uint8 copy, however many DequantizeLinear nodes read it. Where a
    depthwise Conv (which keeps int8 weights) reads the same DequantizeLinear, that node is
    left as it is and the other readers share one shifted copy of it.
    """
    from onnx import TensorProto, numpy_helper

    uint8_copy: dict[str, str] = {}  # int8 initializer -> its uint8 (+128) copy

    def shifted(name: str) -> str:
        if name not in uint8_copy:
            uint8_copy[name] = fresh(f"{name}__u8")
            values = (numpy_helper.to_array(inits[name]).astype(np.int16) + 128).astype(np.uint8)
            model.graph.initializer.append(numpy_helper.from_array(values, uint8_copy[name]))
        return uint8_copy[name]

    done: dict[str, str | None] = {}  # weight DQ output -> what a shifted reader reads (None: unchanged)
    for node in model.graph.node:
        if node.op_type not in INTEGER_MATMUL_OPS or _is_depthwise(node) or len(node.input) < 2:
            continue
        dq = made_by.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        source = dq.output[0]
        if source not in done:
            weight, zero_point = inits.get(dq.input[0]), inits.get(dq.input[2])
            if weight is None or zero_point is None or weight.data_type != TensorProto.INT8:
                done[source] = None
                continue
            inputs = [shifted(dq.input[0]), dq.input[1], shifted(dq.input[2]), *dq.input[3:]]
            if any(_is_depthwise(c) and c.input[1] == source for c in consumers.get(source, [])):
                own = _copy_node(dq, inputs, fresh(f"{source}__u8"))
                added_after.setdefault(source, []).append(own)
                done[source] = own.output[0]
            else:
                dq.input[0], dq.input[2] = inputs[0], inputs[2]
                done[source] = source
        if done[source] is not None:
            node.input[1] = done[source]
