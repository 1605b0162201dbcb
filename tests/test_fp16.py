"""FP16 in the graph: the fp16 step's kept-FP32 layers chosen by measurement, and INT8 graphs
whose float parts are FP16 (--int8-float fp16). Real weights, real photos, real ONNX Runtime."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends import BackendOptions, get_backend
from edgekit.data import HELD_OUT_EVALUATION, default_calibration, load_all
from edgekit.evaluation import compare_to_baseline
from edgekit.layer_precision import asked_precision
from edgekit.options import Settings
from edgekit.steps import describe
from edgekit.steps.fp16 import fp16_artifact
from edgekit.steps.int8 import quantize_artifact, quantize_options
from edgekit.transforms.fp16 import OVERFLOW_BOUND, logits_of, to_fp16
from edgekit.transforms.quantize import Budget, QuantizeOptions

FAST = QuantizeOptions(method="minmax", max_fallback_nodes=1, bias_correction=False, budget=Budget(min_agreement=50.0, max_kl=None))


def test_lite0_fp16_artifact_agrees_with_fp32_on_held_out_photos(lite0_artifact, exported_root):
    artifact, _ = fp16_artifact(lite0_artifact, exported_root)
    m = artifact.manifest
    assert m["variant"] == "fp16" and m["steps"][-1]["calibration"]["count"] == 77
    report = m["fp16"]
    assert report["criterion_met"] and report["final"]["agreement"] >= 99.5 and report["final"]["mean_kl"] <= 1e-4
    assert m["steps"][-1]["kept_fp32"] == [{"node": k["node"], "op_type": k["op_type"], "why": k["why"]} for k in report["kept_fp32"]]
    # the goal, on views the calibration did not see, with the file itself on ONNX Runtime
    backend = get_backend("onnxruntime")
    x, _ = load_all(HELD_OUT_EVALUATION.resolve(), lite0_artifact.preprocessing)
    fp16 = backend.load(artifact, BackendOptions()).run(x)
    fp32 = backend.load(lite0_artifact, BackendOptions()).run(x)
    stats = compare_to_baseline(fp16, fp32, [None] * len(x))
    assert stats.agreement >= 99.5 and stats.mean_kl < 1e-3, stats
    # the graph asks fp16 everywhere but on the kept compute nodes
    asked = asked_precision(artifact.onnx_path)
    kept = {k["node"] for k in report["kept_fp32"]}
    assert asked and {n for n, p in asked.items() if p == "fp32"} == kept & set(asked)
    assert all(p == "fp16" for n, p in asked.items() if n not in kept)
    text = "\n".join(line for line in describe(artifact) if isinstance(line, str))
    assert "FP16 (77 calibration images" in text and "criterion (agreement >= 99.5%, mean KL <= 0.0001) met" in text


def test_a_criterion_fp16_misses_keeps_the_nodes_that_add_the_most_error(lite0_artifact, tmp_path):
    """A KL budget tighter than lite0's all-FP16 KL (3e-5): nodes are kept FP32 for accuracy,
    each with its measured error, one judgement each, up to the count allowed."""
    x, _ = load_all(default_calibration().resolve(), lite0_artifact.preprocessing)
    strict = Budget(max_top1_drop=None, min_agreement=None, max_kl=1e-7)
    report = to_fp16(lite0_artifact.onnx_path, tmp_path / "fp16.onnx", x[:16], strict, max_kept_for_accuracy=2)
    kept = [k for k in report.kept_fp32 if k.why == "accuracy"]
    assert len(kept) == 2 and all(k.value > 0 and "kept FP32, KL" in k.detail for k in kept)
    assert not report.criterion_met and "not met with 2 nodes kept FP32 for accuracy" in report.notes[0]
    assert report.final.mean_kl < report.all_fp16.mean_kl  # what was kept helped, measured
    asked = asked_precision(tmp_path / "fp16.onnx")
    assert all(p == ("fp32" if n in {k.node for k in kept} else "fp16") for n, p in asked.items())


def _huge_activation_model():
    """x (N, 8) in [0, 1] -> MatMul (weights 20000: up to 160000, beyond FP16's 65504) ->
    Mul 0.001 -> MatMul -> logits (N, 4)."""
    rng = np.random.default_rng(0)
    a = numpy_helper.from_array(np.full((8, 8), 20000.0, np.float32), "A")
    s = numpy_helper.from_array(np.array(1e-3, np.float32), "s")
    b = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "A"], ["huge"], name="big"),
             helper.make_node("Mul", ["huge", "s"], ["scaled"], name="shrink"),
             helper.make_node("MatMul", ["scaled", "B"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])], [a, s, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_tensor_beyond_the_fp16_bound_keeps_its_nodes_fp32(tmp_path):
    fp32_path, out = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    onnx.save(_huge_activation_model(), str(fp32_path))
    x = np.random.default_rng(1).uniform(0, 1, size=(16, 8)).astype(np.float32)
    report = to_fp16(fp32_path, out, x)
    kept = {k.node: k for k in report.kept_fp32}
    assert set(kept) == {"big", "shrink"} and all(k.why == "overflow" for k in kept.values())
    assert kept["big"].value > 65504 > OVERFLOW_BOUND  # the measured max is recorded
    assert asked_precision(out) == {"big": "fp32", "head": "fp16"}
    reference = logits_of(fp32_path, x)
    assert report.all_fp16.agreement < 50 and not report.all_fp16.mean_kl <= 1e-3  # every node FP16: inf, KL nan
    assert report.criterion_met and report.final.max_abs_diff < 0.5
    delivered = logits_of(out, x)
    assert np.isfinite(delivered).all() and np.abs(delivered - reference).max() < 0.5


def test_int8_float_fp16_artifact_has_fp16_float_parts_and_records_its_accuracy(tiny_artifact, exported_root):
    assert quantize_options(Settings({"int8": True, "int8_float": "fp16"})).float_precision == "fp16"
    options = dataclasses.replace(FAST, float_precision="fp16")
    artifact, _ = quantize_artifact(tiny_artifact, default_calibration().resolve(), options, exported_root)
    plain, _ = quantize_artifact(tiny_artifact, default_calibration().resolve(), FAST, exported_root)
    assert artifact.key != plain.key and "int8_float" not in plain.manifest
    floats = artifact.manifest["int8_float"]
    assert floats["precision"] == "fp16" and floats["opset"] == [17, 19]
    for name in ("int8_fp32_floats", "emulated", "onnxruntime_cpu"):
        assert floats[name]["images"] == 77 and floats[name]["agreement"] is not None and floats[name]["mean_kl"] is not None
    kept = {k["node"] for k in floats["kept_fp32"]}
    model = onnx.load(str(artifact.onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    scales = {n.name: inits[n.input[1]].data_type for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert len(set(scales) - kept) > 10  # Q/DQ read and write FP16 but where a node was kept FP32 (measured)
    assert all(t == (TensorProto.FLOAT if n in kept else TensorProto.FLOAT16) for n, t in scales.items())
    assert {o.type.tensor_type.elem_type for o in (*model.graph.input, *model.graph.output)} == {TensorProto.FLOAT}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert all(z.data_type == TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in zero_points)  # TensorRT's form
    asked = asked_precision(artifact.onnx_path)
    assert "int8" in asked.values()
    assert all(p == ("fp32" if n in kept else "fp16") for n, p in asked.items() if p != "int8")
    x, _ = load_all(HELD_OUT_EVALUATION.resolve(), tiny_artifact.preprocessing)
    logits = logits_of(artifact.onnx_path, x[:8], exact=True)  # ONNX Runtime's CPU provider reads it
    assert logits.shape == (8, 1000) and np.isfinite(logits).all()


@pytest.mark.parametrize("given, floats", [
    ({}, "fp32"),  # no backend named (export): CPU runtimes may read it
    ({"backends": ("tensorrt",)}, "fp16"),
    ({"backends": ("pytorch", "tensorrt")}, "fp16"),  # the baseline runs the FP32 original anyway
    ({"backends": ("onnxruntime",), "device": "cuda"}, "fp16"),
    ({"backends": ("onnxruntime",)}, "fp32"),
    ({"backends": ("tensorrt", "openvino")}, "fp32"),  # one CPU runtime in the run: it cannot read FP16 Q/DQ
    ({"backends": ("tensorrt",), "int8_float": "fp32"}, "fp32"),  # said explicitly
])
def test_int8_float_auto_is_fp16_only_when_every_backend_is_on_an_nvidia_gpu(given, floats):
    assert quantize_options(Settings(given)).float_precision == floats
