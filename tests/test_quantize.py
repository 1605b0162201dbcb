"""INT8 (and FP16) against true labels, TensorRT's QDQ rules, the CPU lowering, bad input."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from digits import onnx_accuracy
from edgekit.backends.int8_cpu_form import lower_qdq_for_cpu, weight_form
from edgekit.core import DataError, UsageError
from edgekit.transforms.qdq_graph import run_logits
from edgekit.transforms.quantize import Budget, QuantizeOptions, float_ops, quantize_onnx


def test_int8_keeps_true_label_accuracy(digits, digits_int8):
    path, _, _, x_test, y_test = digits
    int8_path, report = digits_int8
    fp32_top1 = onnx_accuracy(path, x_test, y_test)
    int8_top1 = onnx_accuracy(int8_path, x_test, y_test)
    assert fp32_top1 >= 95.0
    assert fp32_top1 - int8_top1 <= 1.5, (fp32_top1, int8_top1)  # 540 held-out, truly labelled digits
    assert report.budget_met and report.final.top1_drop <= 0.5
    assert report.quantized_nodes >= 5


def test_qdq_graph_follows_tensorrt_rules(digits_int8):
    model = onnx.load(str(digits_int8[0]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantizers
    for q in quantizers:  # signed INT8 activations, zero point 0
        assert inits[q.input[2]].dtype == np.int8 and not inits[q.input[2]].any()
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8]
    assert weight_dqs
    for dq in weight_dqs:  # per-channel symmetric weights
        weights, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert scale.shape == (weights.shape[0],) and not inits[dq.input[2]].any()
    # logits stay in float
    made_by = {o: n for n in model.graph.node for o in n.output}
    assert made_by[model.graph.output[0].name].op_type in ("Gemm", "MatMul", "Add")


def test_cpu_lowering_keeps_accuracy_and_uses_uint8(digits, digits_int8):
    _, _, _, x_test, y_test = digits
    model = onnx.load(str(digits_int8[0]))
    changed = lower_qdq_for_cpu(model)
    assert changed > 0
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert inits[q.input[2]].dtype == np.uint8
    portable = run_logits(digits_int8[0], x_test).argmax(1)
    lowered = run_logits(model, x_test, optimize=True).argmax(1)  # ORT's fused integer kernels
    assert (portable == lowered).mean() >= 0.97
    assert (lowered == y_test).mean() * 100 >= onnx_accuracy(digits_int8[0], x_test, y_test) - 1.0


def _conv_that_saturates_int16_pairs():
    """Clip(0, 6) -> Q/DQ -> 1x1 Conv (64 -> 8, every weight the int8 maximum) -> Q/DQ.

    After lowering, inputs at the clamp become uint8 255; each pair of products is
    2 * 255 * 127 = 64,770, beyond int16, where U8S8 kernels without VNNI add pairs.
    """
    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    channels = 64
    weight = np.full((8, channels, 1, 1), 127, np.int8)
    out_scale = np.float32(channels * 6.0 * 0.01 / 127)
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["a"]),
        helper.make_node("QuantizeLinear", ["a", "a_s", "zp"], ["a_q"]),
        helper.make_node("DequantizeLinear", ["a_q", "a_s", "zp"], ["a_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["a_dq", "w"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "y_s", "zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "zp"], ["out"]),
    ]
    inits = [
        init("lo", np.float32(0)), init("hi", np.float32(6)), init("a_s", np.float32(6 / 127)),
        init("zp", np.int8(0)), init("w_q", weight), init("w_s", np.full(8, 0.01 / 127, np.float32)),
        init("w_zp", np.zeros(8, np.int8)), init("y_s", out_scale),
    ]
    graph = helper.make_graph(
        nodes, "saturation", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cpu_lowering_avoids_int16_saturation():
    model = _conv_that_saturates_int16_pairs()
    x = np.full((1, 64, 4, 4), 6.0, np.float32)
    exact = run_logits(model, x)
    assert np.allclose(exact, 3.84, atol=0.05)
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    lower_qdq_for_cpu(lowered, "u8u8")
    assert np.allclose(run_logits(lowered, x, optimize=True), exact, atol=0.05)
    if weight_form() == "u8u8":  # this CPU lacks VNNI: the int8-weight form is wrong here
        lowered_s8 = onnx.ModelProto()
        lowered_s8.CopyFrom(model)
        lower_qdq_for_cpu(lowered_s8, "u8s8")
        assert not np.allclose(run_logits(lowered_s8, x, optimize=True), exact, atol=0.5)


def test_unmeetable_budget_keeps_every_layer_int8_and_says_so(digits, tmp_path):
    path, x_train, _, _, _ = digits
    out = tmp_path / "int8.onnx"
    options = QuantizeOptions(method="minmax", budget=Budget(min_agreement=100.0, max_kl=0.0), max_fallback_nodes=2)
    report = quantize_onnx(path, out, x_train[:64], None, options)
    assert not report.budget_met and out.is_file()
    assert not report.fallback and any("not reached with up to 2 layers" in n for n in report.notes)
    assert report.final.mean_kl <= report.initial.mean_kl
    assert len(report.sensitivity) >= report.quantized_nodes
    assert report.sensitivity_all_int8_kl is not None and report.sensitivity_images == 8  # the hardest images rank the layers
    assert report.stages[0].after == report.initial and report.stages[-1].after == report.final


def test_reachable_budget_falls_back_and_lists_what_stayed_in_float(digits, tmp_path):
    path, x_train, _, _, _ = digits
    plain = quantize_onnx(path, tmp_path / "plain.onnx", x_train[:64], None, QuantizeOptions(method="minmax", max_fallback_nodes=0, budget=Budget(min_agreement=None, max_kl=None)))
    # every layer in float is FP32 itself: some prefix of the ranking reaches half the KL
    options = QuantizeOptions(method="minmax", budget=Budget(min_agreement=None, max_kl=plain.final.mean_kl / 2), max_fallback_nodes=20)
    out = tmp_path / "int8.onnx"
    report = quantize_onnx(path, out, x_train[:64], None, options)
    assert report.budget_met and report.fallback, report.notes
    assert {f.node for f in report.fallback} <= {s.node for s in report.sensitivity}
    kept = {n.node: n for n in report.kept_in_float}
    assert {f.node for f in report.fallback} <= set(kept)
    assert all(kept[f.node].reason.startswith("fell back") for f in report.fallback)
    assert sum(report.float_nodes.values()) == len(report.kept_in_float)
    assert report.stages[-1].name.startswith("fallback") and report.stages[-1].after == report.final


def test_too_few_calibration_images(digits, tmp_path):
    path, x_train, _, _, _ = digits
    with pytest.raises(DataError, match="at least 8"):
        quantize_onnx(path, tmp_path / "x.onnx", x_train[:3])


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="entropy"):
        QuantizeOptions(method="kmeans")


def test_operators_left_in_float_are_reported(tmp_path):
    """An Exp the quantizer does not handle stays in float and is named in the report."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Exp", ["c"], ["s"], name="exp"),
            helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["logits"], name="flatten"),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        [w],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    report = quantize_onnx(path, tmp_path / "q.onnx", rng.normal(size=(16, 3, 8, 8)).astype(np.float32), options=QuantizeOptions(method="minmax", max_fallback_nodes=0))
    assert report.quantized_nodes == 1
    assert report.float_nodes.get("Exp") == 1
    assert "Conv" not in float_ops(onnx.load(str(tmp_path / "q.onnx")))


def test_bias_correction_lowers_kl_and_is_kept_only_when_it_does(digits, tmp_path):
    path, x_train, _, x_test, _ = digits
    plain = quantize_onnx(path, tmp_path / "plain.onnx", x_train[:64], None, QuantizeOptions(method="minmax", bias_correction=False, max_fallback_nodes=0))
    corrected = quantize_onnx(path, tmp_path / "bc.onnx", x_train[:64], None, QuantizeOptions(method="minmax", max_fallback_nodes=0))
    reference = run_logits(path, x_test)
    from edgekit.evaluation import compare_to_baseline

    held_out = {name: compare_to_baseline(run_logits(tmp_path / f"{name}.onnx", x_test), reference, [None] * len(x_test)).mean_kl for name in ("plain", "bc")}
    if corrected.bias_correction_applied:
        assert corrected.final.mean_kl < plain.final.mean_kl
        assert held_out["bc"] <= held_out["plain"] * 1.1, held_out  # and it generalises
    else:
        assert any("bias correction did not lower KL" in n for n in corrected.notes)


def test_adaround_writes_plain_int8_weights_and_keeps_accuracy(digits, tmp_path):
    path, x_train, _, x_test, y_test = digits
    out = tmp_path / "ada.onnx"
    report = quantize_onnx(path, out, x_train[:64], None, QuantizeOptions(method="minmax", rounding="adaround", max_fallback_nodes=0))
    assert report.rounding and any(r.kept for r in report.rounding)
    for r in report.rounding:  # a layer keeps learned rounding only where it reconstructs better
        assert (r.error_adaround < r.error_nearest) == r.kept
    assert any(r.flipped > 0 for r in report.rounding if r.kept)
    assert [s.name for s in report.stages][:2] == [report.stages[0].name, "AdaRound"]
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim > 1]
    assert weights and all(w.min() >= -127 for w in weights)  # symmetric range, same scheme
    assert onnx_accuracy(path, x_test, y_test) - onnx_accuracy(out, x_test, y_test) <= 1.5


def test_batched_calibration_ranges_follow_the_histogram_rules():
    from edgekit.transforms.calibration import AbsHistogram

    rng = np.random.default_rng(0)
    values = rng.normal(size=200_000).astype(np.float32)
    h = AbsHistogram()
    for chunk in np.array_split(values, 7):  # later chunks extend the bins at the same width
        h.add(chunk)
    assert h.counts.sum() == values.size
    assert h.threshold("minmax", 99.0) == pytest.approx(np.abs(values).max())
    exact = np.percentile(np.abs(values), 99.0)
    assert abs(h.threshold("percentile", 99.0) - exact) <= 2 * h.width
    assert 0 < h.threshold("entropy", 99.0) <= np.abs(values).max()


def test_random_init_weights_skip_the_budget_search(digits, tmp_path):
    path, x_train, _, _, _ = digits
    options = QuantizeOptions(method="minmax", budget=Budget(min_agreement=100.0, max_kl=0.0), max_fallback_nodes=2)
    report = quantize_onnx(path, tmp_path / "q.onnx", x_train[:32], None, options, random_weights=True)
    assert report.random_weights and not report.fallback and report.sensitivity_all_int8_kl is None
    assert report.final.images == 16  # figures on fewer images: no decision rests on them
    assert any("random-init" in n for n in report.notes)
    assert all(s.kl_if_float is None for s in report.sensitivity)


def test_module_paths_map_onnx_node_names_to_pytorch_modules():
    from edgekit.transforms.sensitivity import module_path

    assert module_path("/blocks/blocks.0/blocks.0.0/conv_dw/Conv") == "blocks.0.0.conv_dw"
    assert module_path("/features/features.3/conv/conv.0/conv.0.0/Conv") == "features.3.conv.0.0"
    assert module_path("/classifier/Gemm") == "classifier"
    assert module_path("Conv_3") is None


def test_shape_arithmetic_is_never_quantized(tmp_path):
    """Pads computed in float from the input's Shape (TF-style 'same' padding) must keep
    their exact values: quantized, they rounded 60x60 feature maps to 59x59."""
    from edgekit.transforms.qdq_graph import shape_arithmetic

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    consts = [
        numpy_helper.from_array(np.array([3], dtype=np.int64), "h_axis"),
        numpy_helper.from_array(np.array(7.0, dtype=np.float32), "seven"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0], dtype=np.int64), "zeros6"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 0, 1], dtype=np.int64), "mask"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["input"], ["shape"], name="shape"),
            helper.make_node("Gather", ["shape", "h_axis"], ["width"], name="width"),
            helper.make_node("Cast", ["width"], ["width_f"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Div", ["width_f", "seven"], ["ratio"], name="div"),  # 8 / 7: rounds badly in INT8
            helper.make_node("Ceil", ["ratio"], ["pad_f"], name="ceil"),
            helper.make_node("Cast", ["pad_f"], ["pad"], name="cast_pad", to=TensorProto.INT64),
            helper.make_node("Mul", ["mask", "pad"], ["pads"], name="pads"),
            helper.make_node("Pad", ["input", "pads"], ["padded"], name="pad"),
            helper.make_node("Conv", ["padded", "w"], ["c"], name="conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["logits"], name="flatten"),
        ],
        "padded",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [w, *consts],
    )
    path = tmp_path / "padded.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    nodes, tensors = shape_arithmetic(model)
    assert {"shape", "width", "cast", "div", "ceil", "cast_pad", "pads"} <= nodes and "pad" not in nodes and "conv" not in nodes
    assert {"width_f", "ratio", "pad_f"} <= tensors
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    report = quantize_onnx(path, tmp_path / "q.onnx", x, options=QuantizeOptions(method="minmax", max_fallback_nodes=0))
    q = onnx.load(str(tmp_path / "q.onnx"))
    quantized_inputs = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized_inputs & tensors
    assert report.quantized_nodes == 1
    assert np.allclose(run_logits(q, x), run_logits(path, x), atol=0.2)
