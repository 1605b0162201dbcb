"""Quantization-aware training: the same QDQ graph comes out, it runs, it keeps true-label accuracy."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from digits import onnx_accuracy
from edgekit.core import UsageError
from edgekit.transforms.onnx_to_torch import graph_module
from edgekit.transforms.qat import QATOptions, float_weights, qat_onnx, simulate, write_qdq
from edgekit.transforms.qdq_graph import compute_nodes, node_label, quantized_node_labels, run_logits
from edgekit.transforms.quantize import QuantizeOptions, float_ops, quantize_qdq

FAST = QATOptions(epochs=2, lr=3e-4, learn_scales=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _initializers(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _structure(model) -> list[tuple]:
    return [(n.op_type, n.name, tuple(n.input), tuple(n.output)) for n in model.graph.node]


def _activation_scales(model) -> dict[str, np.ndarray]:
    inits = _initializers(model)
    return {n.input[1]: inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_the_torch_simulation_computes_what_onnx_runtime_computes(digits, digits_int8):
    path, _, _, x_test, _ = digits
    fp32, qdq = onnx.load(str(path)), onnx.load(str(digits_int8[0]))
    teacher = graph_module(fp32, trainable=False)
    assert np.abs(simulate(teacher, x_test) - run_logits(fp32, x_test)).max() < 1e-4
    student = graph_module(qdq, float_weights(qdq, fp32))
    simulated, exact = simulate(student, x_test), run_logits(qdq, x_test)
    # a value right at a rounding boundary may land one INT8 step apart; nothing more
    assert (simulated.argmax(1) == exact.argmax(1)).mean() >= 0.998
    assert np.median(np.abs(simulated - exact)) < 1e-4
    # before any training, writing the module back gives the PTQ graph, value for value
    written = write_qdq(student, qdq)
    assert _structure(written) == _structure(qdq)
    before, after = _initializers(qdq), _initializers(written)
    for name, value in before.items():
        assert after[name].dtype == value.dtype and after[name].shape == value.shape, name
        assert np.array_equal(after[name], value), name


def test_qat_writes_the_same_qdq_graph_and_keeps_true_label_accuracy(digits, tmp_path):
    path, x_train, y_train, x_test, y_test = digits
    # ranges clipped at the 99th percentile: a PTQ graph with something to recover
    ptq_path = tmp_path / "ptq.onnx"
    quantize_qdq(path, ptq_path, x_train[:64], QuantizeOptions(percentile=99.0), [], tmp_path / "calibration.json")
    out = tmp_path / "qat.onnx"
    labels = [(int(y),) for y in y_train[:256]]
    report = qat_onnx(path, ptq_path, out, x_train[:256], labels, FAST)
    onnx.checker.check_model(str(out))
    ptq, qat = onnx.load(str(ptq_path)), onnx.load(str(out))
    # same nodes, same Q/DQ placements, same fallbacks, same activation scales
    assert _structure(qat) == _structure(ptq)
    assert quantized_node_labels(qat) == quantized_node_labels(ptq)
    assert float_ops(qat) == float_ops(ptq)
    scales_before, scales_after = _activation_scales(ptq), _activation_scales(qat)
    assert scales_before.keys() == scales_after.keys()
    assert all(np.array_equal(scales_before[k], scales_after[k]) for k in scales_before)
    # the weights did train, and are still per-channel symmetric INT8 with zero point 0
    inits, old = _initializers(qat), _initializers(ptq)
    weight_dqs = [n for n in qat.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8]
    assert weight_dqs and any(not np.array_equal(inits[dq.input[0]], old[dq.input[0]]) for dq in weight_dqs)
    for dq in weight_dqs:
        w, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert scale.shape == (w.shape[0],) and not inits[dq.input[2]].any() and np.abs(w.astype(int)).max() <= 127
    # it runs in ONNX Runtime and keeps the accuracy on 540 held-out, truly labelled digits
    ptq_top1, qat_top1 = onnx_accuracy(ptq_path, x_test, y_test), onnx_accuracy(out, x_test, y_test)
    assert qat_top1 >= ptq_top1 - 1.0, (ptq_top1, qat_top1)
    assert report.steps == 2 * 8 and report.images == 256 and not report.labelled  # distillation only
    assert report.best_epoch > 0 and report.after.mean_kl < report.before.mean_kl
    assert report.after.top1 is not None and report.simulation_max_abs_diff < 1.0
    assert report.scales == "calibrated (kept)"


def test_fallback_nodes_stay_float_and_train_in_float(digits, tmp_path):
    path, x_train, _, x_test, _ = digits
    fp32 = onnx.load(str(path))
    fallback = node_label(compute_nodes(fp32)[1])  # the first depthwise convolution
    ptq_path = tmp_path / "ptq.onnx"
    quantize_qdq(path, ptq_path, x_train[:64], QuantizeOptions(percentile=99.0), [fallback], tmp_path / "calibration.json")
    out = tmp_path / "qat.onnx"
    report = qat_onnx(path, ptq_path, out, x_train[:128], None, QATOptions(epochs=2, lr=3e-4, learn_scales=True))
    assert report.best_epoch > 0
    ptq, qat = onnx.load(str(ptq_path)), onnx.load(str(out))
    assert _structure(qat) == _structure(ptq) and quantized_node_labels(qat) == quantized_node_labels(ptq)
    assert float_ops(qat) == float_ops(ptq)
    assert report.float_weights == 2 and not report.labelled  # the excluded conv's float weight and bias (BatchNorm folded)
    node = next(n for n in qat.graph.node if node_label(n) == fallback)
    before, after = _initializers(ptq), _initializers(qat)
    for name in node.input[1:]:  # still float initializers, read directly, and trained
        assert after[name].dtype == np.float32 and not np.array_equal(after[name], before[name])
    # learned activation scales are written back, still one scale per tensor and zero point 0
    assert report.scales.startswith("learned")
    assert any(not np.array_equal(before[k], after[k]) for k in _activation_scales(ptq))
    assert np.isfinite(run_logits(out, x_test[:16])).all()


def test_int8_step_with_qat_epochs(tiny_artifact, int8_artifact, exported_root):
    """mobilenet_v3_small (HardSwish, squeeze-excitation Mul...) through the int8 step."""
    from edgekit.data import default_calibration
    from edgekit.options import Settings
    from edgekit.steps.int8 import qat_options, quantize_artifact
    from edgekit.transforms.quantize import Budget

    assert qat_options(Settings()) is None
    options = qat_options(Settings(qat_epochs=1, qat_lr=1e-4))
    assert options.epochs == 1 and options.lr == 1e-4
    # the options of conftest's int8_artifact: its PTQ graph is the one QAT starts from
    fast = QuantizeOptions(method="minmax", max_fallback_nodes=1, bias_correction=False, budget=Budget(min_agreement=50.0, max_kl=None))
    calibration = default_calibration().resolve()
    ptq = int8_artifact
    qat, reused = quantize_artifact(tiny_artifact, calibration, fast, exported_root, qat=options)
    assert not reused and qat.key != ptq.key and qat.manifest["variant"] == "int8"
    step = qat.manifest["steps"][-1]
    assert step["qat"]["epochs"] == 1 and step["qat"]["images"] == len(calibration)
    assert {"agreement", "mean_kl"} <= set(step["qat"]["fidelity_before"]) and qat.manifest["qat"]["steps"] >= 1
    assert _structure(onnx.load(str(qat.onnx_path))) == _structure(onnx.load(str(ptq.onnx_path)))
    again, reused = quantize_artifact(tiny_artifact, calibration, fast, exported_root, qat=options)
    assert reused and again.key == qat.key


def test_bad_qat_options_and_unsupported_operators(tmp_path):
    with pytest.raises(UsageError, match="epochs"):
        QATOptions(epochs=0)
    with pytest.raises(UsageError, match="learning rate"):
        QATOptions(lr=0.0)
    graph = helper.make_graph(
        [helper.make_node("LpNormalization", ["input"], ["logits"], name="norm")],
        "odd", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(UsageError, match="LpNormalization"):
        graph_module(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
