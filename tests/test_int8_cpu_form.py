"""The CPU form of the INT8 graph (int8_cpu_form) where DequantizeLinear nodes are shared.

A bias (or weight) DequantizeLinear read by several Conv nodes happens for real: the
exporter deduplicates equal biases (zeros, after BatchNorm folding with random init), ORT's
quantizer duplicates a bias only for the nodes it quantizes, and a node left in float by
fallback keeps reading the quantized bias of another. `edgekit bench resnet50 --random-init
--int8` ended in KeyError: 'onnx::Conv_540_quantized__cpu' there.

Every check runs the graphs for real on ONNX Runtime's CPU provider: the lowered graph as
written (no graph optimizations) and with ORT's fused integer kernels (QLinearConv), which
read the INT32 bias as if its scale were input_scale * weight_scale, so a bias rescaled for
the wrong consumer shows up as a wrong output there.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.int8_cpu_form import lower_qdq_for_cpu

FORMS = ("u8s8", "u8u8")
ACT_SCALE = np.float32(4.0 / 127)  # activations saturate at +-4
WEIGHT_LEVELS = 63  # |int8 weight| <= 63: 2 * 255 * 63 < 32767, so U8S8 kernels of CPUs without VNNI (int16 pair sums) stay exact
WEIGHT_SCALE = np.float32(0.5 / WEIGHT_LEVELS)  # weights in [-0.5, 0.5]
OUT_SCALE = np.float32(10.0 / 127)  # conv outputs saturate at +-10
CHANNELS, OUT_CHANNELS, SIZE = 4, 6, 6

# Tolerances, in output quantization steps (OUT_SCALE): every output passes through Q, so
# the graphs differ by whole steps. The lowered graph rounds a Relu'd input to the finer grid
# scale * 127/255 where the portable graph rounds it to scale; everything else is the same
# numbers (signed activations: uint8, zero point 128, same scale; weights + 128; the
# rescaled INT32 bias is off by half a bias step, ~1e-4). Measured on these graphs before
# the output Q, the difference is at most 0.53 of a step, so the outputs land at most one
# step apart, and that is what was measured (1 step exactly, in every case and both forms).
# ORT's fused integer kernels matched the lowered graph run as written exactly (0 steps);
# one step is allowed there for a requantization that rounds a tie the other way. The
# worst case from first principles (0.749 * input scale * sum |weights|, plus one step)
# is ~4.2 steps, so these bounds rest on the measured half step, with a 2x margin. A bias
# rescaled for the wrong consumer moves its outputs by >= 1.5 (19 steps): far outside.
STEP = float(OUT_SCALE)
AS_WRITTEN_TOLERANCE = 1.001 * STEP  # lowered graph run as written vs the portable graph
FUSED_TOLERANCE = 1.001 * STEP  # ORT's fused kernels vs the lowered graph as written


class QDQGraph:
    """A small portable QDQ graph as edgekit's quantizer writes it: int8 activations with zero
    point 0, per-channel symmetric int8 weights, INT32 biases with scale input * weight scale."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.weights: dict[str, np.ndarray] = {}  # weight DQ output -> int8 values
        self.weight_inputs: dict[str, tuple[str, str]] = {}  # weight DQ output -> (values, zero point) names
        self.biases: dict[str, np.ndarray] = {}  # bias DQ output -> INT32 values
        self._n = 0
        self.init("zp", np.int8(0))
        self.init("act_scale", ACT_SCALE)
        self.init("out_scale", OUT_SCALE)

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def init(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def input(self, channels: int = CHANNELS) -> str:
        name = self.name("x")
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, SIZE, SIZE]))
        return name

    def activation(self, source: str, relu: bool) -> str:
        """(Relu ->) its own Q -> DQ; after a Relu the CPU form scales it by 127/255."""
        if relu:
            r = self.name("relu")
            self.nodes.append(helper.make_node("Relu", [source], [r]))
            source = r
        q, dq = self.name("q"), self.name("dq")
        self.nodes.append(helper.make_node("QuantizeLinear", [source, "act_scale", "zp"], [q]))
        self.nodes.append(helper.make_node("DequantizeLinear", [q, "act_scale", "zp"], [dq]))
        return dq

    def weight(self, values: str | None = None, zero_point: str | None = None, in_channels: int = CHANNELS) -> str:
        """A weight DQ; ``values`` / ``zero_point`` name existing initializers to share them."""
        if values is None:
            w = self.rng.integers(-WEIGHT_LEVELS, WEIGHT_LEVELS + 1, (OUT_CHANNELS, in_channels, 3, 3)).astype(np.int8)
            values = self.init(self.name("w"), w)
        if zero_point is None:
            zero_point = self.init(self.name("w_zp"), np.zeros(OUT_CHANNELS, np.int8))
        scale = self.init(self.name("w_scale"), np.full(OUT_CHANNELS, WEIGHT_SCALE, np.float32))
        dq = self.name("w_dq")
        self.nodes.append(helper.make_node("DequantizeLinear", [values, scale, zero_point], [dq], axis=0))
        self.weights[dq] = numpy_helper.to_array(next(i for i in self.inits if i.name == values))
        self.weight_inputs[dq] = (values, zero_point)
        return dq

    def bias(self) -> str:
        """An INT32 bias of +-1.5..3 in float: rescaled for the wrong consumer, it moves that
        consumer's outputs by ~1.0 * |bias| (255/127 - 1), far outside the tolerances above."""
        scale = np.full(OUT_CHANNELS, ACT_SCALE * WEIGHT_SCALE, np.float32)
        values = self.rng.uniform(1.5, 3.0, OUT_CHANNELS) * self.rng.choice([-1.0, 1.0], OUT_CHANNELS)
        b = self.init(self.name("b"), np.round(values / scale).astype(np.int32))
        dq = self.name("b_dq")
        self.biases[dq] = numpy_helper.to_array(self.inits[-1])
        inputs = [b, self.init(self.name("b_scale"), scale), self.init(self.name("b_zp"), np.zeros(OUT_CHANNELS, np.int32))]
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [dq], axis=0))
        return dq

    def conv(self, x_dq: str, w_dq: str, b_dq: str | None = None, group: int = 1) -> str:
        """Conv -> Q -> DQ -> graph output (the output Q lets ORT fuse it into QLinearConv)."""
        y, q, out = self.name("y"), self.name("yq"), self.name("out")
        inputs = [x_dq, w_dq] + ([b_dq] if b_dq else [])
        self.nodes.append(helper.make_node("Conv", inputs, [y], name=self.name("conv"), pads=[1, 1, 1, 1], group=group))
        self.nodes.append(helper.make_node("QuantizeLinear", [y, "out_scale", "zp"], [q]))
        self.nodes.append(helper.make_node("DequantizeLinear", [q, "out_scale", "zp"], [out]))
        self.outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", OUT_CHANNELS, SIZE, SIZE]))
        return out

    def model(self):
        graph = helper.make_graph(self.nodes, "shared_dq", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        return model

    def feeds(self, batch: int = 2) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1)
        return {i.name: (1.5 * rng.standard_normal((batch, *[d.dim_value for d in i.type.tensor_type.shape.dim][1:]))).astype(np.float32) for i in self.inputs}


def _session(model, optimize: bool, saved=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if saved is not None:
        so.optimized_model_filepath = str(saved)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _assert_within(got: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    worst = float(np.abs(got - expected).max())
    assert worst <= tolerance, f"off by {worst / STEP:.2f} output steps, {tolerance / STEP:.2f} allowed"


def _run(model, feeds, optimize: bool, saved=None) -> list[np.ndarray]:
    return _session(model, optimize, saved).run(None, feeds)


def _lowered(model, form: str):
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    lower_qdq_for_cpu(lowered, form)
    onnx.checker.check_model(lowered, full_check=True)
    return lowered


def _check_lowering(g: QDQGraph, form: str, tmp_path, fused_convs: int):
    """The lowered graph computes what the portable one does, as written and fused."""
    model, feeds = g.model(), g.feeds()
    lowered = _lowered(model, form)
    reference = _run(model, feeds, optimize=False)
    as_written = _run(lowered, feeds, optimize=False)
    saved = tmp_path / f"{form}_optimized.onnx"
    fused = _run(lowered, feeds, optimize=True, saved=saved)
    ops = [n.op_type for n in onnx.load(str(saved)).graph.node]
    assert ops.count("QLinearConv") == fused_convs, ops  # else the fused check below proves nothing
    for ref, plain, fast in zip(reference, as_written, fused):
        _assert_within(plain, ref, AS_WRITTEN_TOLERANCE)
        _assert_within(fast, plain, FUSED_TOLERANCE)
        _assert_within(fast, ref, AS_WRITTEN_TOLERANCE + FUSED_TOLERANCE)
    return lowered


# which activations the Convs sharing one bias read: Relu'd ones need the bias rescaled by
# 255/127, the others keep it
BIAS_READERS = {
    "two_relu": (True, True),  # the KeyError: the second Conv looked the renamed bias up
    "relu_and_signed": (True, False),  # one needs the rescale, the other must not get it
    "signed_relu_relu": (False, True, True),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("readers", BIAS_READERS.values(), ids=BIAS_READERS.keys())
def test_shared_bias_dequantize_feeding_several_convs(readers, form, tmp_path):
    g = QDQGraph()
    x, bias = g.input(), g.bias()
    for relu in readers:
        g.conv(g.activation(x, relu), g.weight(), bias)
    lowered = _check_lowering(g, form, tmp_path, fused_convs=len(readers))

    inits = {i.name: numpy_helper.to_array(i) for i in lowered.graph.initializer}
    made_by = {o: n for n in lowered.graph.node for o in n.output}
    original_bias = g.biases[bias]
    convs = [n for n in lowered.graph.node if n.op_type == "Conv"]
    for relu, conv in zip(readers, convs):
        bias_dq = made_by[conv.input[2]]
        values = inits[bias_dq.input[0]]
        assert values.dtype == np.int32
        expected = np.round(original_bias / (127 / 255)) if relu else original_bias
        np.testing.assert_array_equal(values, expected)
    # the Relu'd readers read a bias of their own; the signed ones share the untouched one
    assert len({made_by[c.input[2]].output[0] for c, relu in zip(convs, readers) if relu}) == sum(readers)
    dqs = [n for n in lowered.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int32]
    assert len(dqs) == sum(readers) + (not all(readers))  # a shared node nobody reads is gone


# how two non-depthwise Convs come to read the same int8 weights
WEIGHT_SHARING = {
    "one_dequantize": "one weight DequantizeLinear read by both Convs",
    "shared_initializers": "two DequantizeLinear nodes reading the same weight and zero-point initializers",
}


@pytest.mark.parametrize("sharing", WEIGHT_SHARING, ids=WEIGHT_SHARING.keys())
def test_shared_weight_dequantize_is_shifted_once(sharing, tmp_path):
    g = QDQGraph()
    x = g.input()
    w1 = g.weight()
    w2 = w1 if sharing == "one_dequantize" else g.weight(*g.weight_inputs[w1])
    g.conv(g.activation(x, relu=True), w1, g.bias())
    g.conv(g.activation(x, relu=False), w2, g.bias())
    lowered = _check_lowering(g, "u8u8", tmp_path, fused_convs=2)

    inits = {i.name: numpy_helper.to_array(i) for i in lowered.graph.initializer}
    made_by = {o: n for n in lowered.graph.node for o in n.output}
    original = g.weights[w1].astype(np.int16)
    for conv in (n for n in lowered.graph.node if n.op_type == "Conv"):
        dq = made_by[conv.input[1]]
        assert inits[dq.input[0]].dtype == np.uint8
        np.testing.assert_array_equal(inits[dq.input[0]], original + 128)  # shifted once, not twice
        np.testing.assert_array_equal(inits[dq.input[2]], np.full(OUT_CHANNELS, 128, np.uint8))
    # one uint8 copy of the shared int8 weights and one of their zero point
    uint8 = [name for name, v in inits.items() if v.dtype == np.uint8 and v.shape in (original.shape, (OUT_CHANNELS,))]
    assert len(uint8) == 2, uint8


def test_weight_dequantize_shared_with_a_depthwise_conv():
    """A depthwise Conv keeps int8 weights (its own kernel) while the other reader of the
    same DequantizeLinear gets the uint8 form: the shared node is not changed under it."""
    g = QDQGraph()
    one_channel, x = g.input(channels=1), g.input(channels=OUT_CHANNELS)
    w = g.weight(in_channels=1)  # (6, 1, 3, 3): a 1 -> 6 Conv and a 6-channel depthwise Conv
    g.conv(g.activation(one_channel, relu=False), w)
    g.conv(g.activation(x, relu=True), w, group=OUT_CHANNELS)
    model, feeds = g.model(), g.feeds()
    lowered = _lowered(model, "u8u8")
    inits = {i.name: numpy_helper.to_array(i) for i in lowered.graph.initializer}
    made_by = {o: n for n in lowered.graph.node for o in n.output}
    dense, depthwise = (n for n in lowered.graph.node if n.op_type == "Conv")
    assert inits[made_by[dense.input[1]].input[0]].dtype == np.uint8
    assert inits[made_by[depthwise.input[1]].input[0]].dtype == np.int8
    reference = _run(model, feeds, optimize=False)
    for ref, plain, fast in zip(reference, _run(lowered, feeds, optimize=False), _run(lowered, feeds, optimize=True)):
        _assert_within(plain, ref, AS_WRITTEN_TOLERANCE)
        _assert_within(fast, ref, AS_WRITTEN_TOLERANCE + FUSED_TOLERANCE)


def test_resnet18_with_a_fallback_node_lowers_in_both_forms(tmp_path):
    """A real torchvision resnet18 (random init, 64 px), exported as edgekit exports it
    (torch.onnx.export with dynamo=False, opset 17, do_constant_folding=True, then onnxslim:
    ExportOptions' default), quantized quickly (minmax, no fallback, no bias correction).

    Random init folds every BatchNorm into a zero bias; the exporter shares the equal ones
    through Identity nodes and onnxslim merges them, so one float bias feeds five Convs.
    ORT's quantizer gives each Conv it quantizes a copy of its own, so the all-INT8 graph
    has no bias DequantizeLinear read by two Convs (checked by hand; not asserted, it is
    ORT's choice). A Conv excluded from quantization, which is what fallback does, keeps
    reading the quantized bias of the first Conv of its group through that Conv's
    DequantizeLinear, and with a Relu'd (127/255) input: the graph of the bug report, where
    the lowering raised KeyError: 'onnx::Conv_194_quantized__cpu'. That one is asserted.
    """
    import torch
    import torchvision

    from edgekit.onnx_export import ExportOptions, torch_export_module
    from edgekit.transforms.qdq_graph import run_logits
    from edgekit.transforms.quantize import Budget, QuantizeOptions, quantize_onnx, quantize_qdq

    torch.manual_seed(0)
    fp32 = tmp_path / "resnet18.onnx"
    torch_export_module(torchvision.models.resnet18(weights=None).eval(), 64, fp32, ExportOptions(opset=17), "resnet18")
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)

    fast = QuantizeOptions(method="minmax", fallback=False, bias_correction=False, budget=Budget(min_agreement=None, max_kl=None))
    quantize_onnx(fp32, tmp_path / "int8.onnx", x, None, fast)
    # what fallback builds when it leaves two Convs reading Relu'd inputs in float
    # (quantize_qdq with nodes_to_exclude, as quantize_onnx's fallback calls it)
    by_bias: dict[str, list] = {}
    for node in onnx.load(str(fp32)).graph.node:
        if node.op_type == "Conv" and len(node.input) > 2:
            by_bias.setdefault(node.input[2], []).append(node.name)
    group = max(by_bias.values(), key=len)
    assert len(group) >= 3, by_bias  # the equal zero biases were merged
    excluded = [name for name in group if name.endswith("conv2/Conv")][:2]
    assert len(excluded) == 2, group
    quantize_qdq(fp32, tmp_path / "fallback.onnx", x, fast, excluded, tmp_path / "calibration.json")

    for variant in ("int8", "fallback"):
        model = onnx.load(str(tmp_path / f"{variant}.onnx"))
        made_by = {o: n for n in model.graph.node for o in n.output}
        readers: dict[str, int] = {}
        for conv in (n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2):
            dq = made_by.get(conv.input[2])
            if dq is not None and dq.op_type == "DequantizeLinear":
                readers[dq.output[0]] = readers.get(dq.output[0], 0) + 1
        if variant == "fallback":
            assert max(readers.values()) == 3, readers  # the first Conv and the two left in float
        portable = run_logits(model, x[:4])  # as written, no ORT graph optimizations
        for form in FORMS:
            lowered = onnx.ModelProto()
            lowered.CopyFrom(model)
            lower_qdq_for_cpu(lowered, form)
            onnx.checker.check_model(lowered)
            for optimize in (False, True):
                logits = run_logits(lowered, x[:4], optimize=optimize)
                # Relative L2 error of the logits. Measured: 0.027 (as written) and 0.027
                # (fused) for both variants and forms, all of it from the finer grid of the
                # Relu'd tensors (the lowered graph is the more accurate one); 0.05 leaves a
                # 1.8x margin, and a lowering that broke a layer would be off by far more.
                # (Wrongly rescaled biases would not show here: these biases are all zero;
                # test_shared_bias_dequantize_feeding_several_convs covers them.)
                error = np.linalg.norm(logits - portable) / np.linalg.norm(portable)
                assert error < 0.05, (variant, form, optimize, error)
