"""Quantization-aware training: the same QDQ graph comes out, it runs, it keeps true-label accuracy."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from digits import onnx_accuracy
from edgekit.core import UsageError
from edgekit.transforms.onnx_to_torch import graph_module
from edgekit.transforms.qat import SELECTION_FROM, SELECTION_MIN, QATOptions, chosen_epoch, float_weights, qat_onnx, selection_split, simulate, write_qdq
from edgekit.transforms.qdq_graph import compute_nodes, node_label, quantized_node_labels, run_logits
from edgekit.transforms.quantize import QuantizeOptions, float_ops, quantize_qdq

FAST = QATOptions(epochs=2, lr=3e-4, learn_scales=False, selection=0.0)  # judged on the training images: nothing held back


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
    # ranges clipped at the 90th percentile: a PTQ graph with much to recover (QAT must show a gain to be written)
    ptq_path = tmp_path / "ptq.onnx"
    quantize_qdq(path, ptq_path, x_train[:64], QuantizeOptions(percentile=90.0), [], tmp_path / "calibration.json")
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
    assert report.images == 256 and report.selection_images == 0 and report.steps == 2 * 8 and not report.labelled  # distillation only
    assert report.best_epoch == 2 and report.after.mean_kl < report.before.mean_kl
    assert report.after.top1 is not None and report.simulation_max_abs_diff < 1.0
    assert report.scales == "calibrated (kept)"


def test_fallback_nodes_stay_float_and_train_in_float(digits, tmp_path):
    path, x_train, _, x_test, _ = digits
    fp32 = onnx.load(str(path))
    fallback = node_label(compute_nodes(fp32)[1])  # the first depthwise convolution
    ptq_path = tmp_path / "ptq.onnx"
    quantize_qdq(path, ptq_path, x_train[:64], QuantizeOptions(percentile=90.0), [fallback], tmp_path / "calibration.json")
    out = tmp_path / "qat.onnx"
    report = qat_onnx(path, ptq_path, out, x_train[:128], None, QATOptions(epochs=2, lr=3e-4, learn_scales=True, selection=0.0))  # judged on what it trained on: nothing held back
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


def test_the_held_back_images_are_a_seeded_disjoint_tenth():
    train, held = selection_split(256, QATOptions())
    assert len(held) == 26 and not set(train) & set(held) and sorted({*train, *held}) == list(range(256))
    assert np.array_equal(held, selection_split(256, QATOptions())[1])  # seeded
    assert not np.array_equal(held, selection_split(256, QATOptions(seed=1))[1])
    assert len(selection_split(SELECTION_FROM, QATOptions())[1]) == SELECTION_MIN  # never fewer than can tell epochs apart
    train, held = selection_split(SELECTION_FROM - 1, QATOptions())  # too few images: all train
    assert len(train) == SELECTION_FROM - 1 and not len(held)
    assert not len(selection_split(256, QATOptions(selection=0.0))[1])


def test_the_last_epoch_is_written_when_it_beats_the_start_on_the_held_back_images():
    rng = np.random.default_rng(0)
    start, noise = rng.gamma(2.0, 0.05, 200), rng.normal(0, 0.02, (4, 200))
    # epoch 2 has the lowest mean; the last, where the schedule ends, is written
    curve = [start, start - 0.05 + noise[0], start - 0.08 + noise[1], start - 0.05 + noise[2]]
    assert np.argmin([v.mean() for v in curve]) == 2 and chosen_epoch(curve) == 3
    # an early epoch was better but the last is worse than the start: nothing QAT did is kept
    assert chosen_epoch([start, start - 0.05 + noise[0], start + noise[1], start + 0.1 + noise[2]]) == 0
    assert chosen_epoch([start]) == 0
    # a gain carried by a few hard images while the easy ones got slightly worse still counts
    few = start.copy()
    few[:10] += 2.0
    later = start + 0.01
    later[:10] = start[:10] + 0.1
    assert chosen_epoch([few, later]) == 1


def test_a_learning_rate_that_ruins_the_model_writes_the_post_training_values(digits, digits_int8, tmp_path):
    """The last epoch is judged against the start (PTQ) on held-back images: a training
    run that only makes things worse changes nothing, and says so."""
    path, x_train, _, _, _ = digits
    out = tmp_path / "qat.onnx"
    report = qat_onnx(path, digits_int8[0], out, x_train[:128], None, QATOptions(epochs=2, lr=0.5))  # scales learned too
    assert report.best_epoch == 0 and all(kl > report.epoch_kl[0] for kl in report.epoch_kl[1:])
    assert any("no better than post-training INT8 on the 13 held-back images" in note and "post-training values are kept" in note for note in report.notes), report.notes
    before, after = _initializers(onnx.load(str(digits_int8[0]))), _initializers(onnx.load(str(out)))
    assert all(np.array_equal(after[k], v) for k, v in before.items())


def test_qat_samples_its_own_images_up_to_qat_limit(tmp_path):
    """QAT reads far more images than range estimation: --qat-limit, not --calib-limit."""
    from digits import write_digits_folders
    from edgekit.options import Settings
    from edgekit.steps.int8 import calibration_images, qat_images

    write_digits_folders(tmp_path / "digits")
    data = tmp_path / "digits" / "train"
    assert qat_images(Settings(int8=True, calib=data)) is None  # no QAT asked
    calibration = calibration_images(Settings(int8=True, calib=data)).resolve()
    qat = qat_images(Settings(int8=True, calib=data, qat_epochs=1)).resolve()
    assert len(calibration) == 200 and len(qat) == 1257
    assert len(qat_images(Settings(int8=True, calib=data, qat_epochs=1, qat_limit=300)).resolve()) == 300


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
