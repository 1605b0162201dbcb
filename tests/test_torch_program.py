"""What the backends that convert from PyTorch share (edgekit/backends/torch_program.py):
the artifact's float graph traced by torch.export, the INT8 artifact's FP32 parent and its
recorded calibration images. Needs neither LiteRT nor ExecuTorch."""

import dataclasses
import json

import numpy as np
import pytest

from edgekit.backends.torch_program import calibration_batch, check_batch_one, exported_program, float_source, example_input, torch_module
from edgekit.core import Artifact, UsageError
from edgekit.data import default_calibration, load_all


def test_the_float_graph_traces_and_computes_what_onnx_runtime_does(lite0_artifact):
    """EfficientNet-Lite0's ReLU6 is a Clip whose bounds are graph constants: traced as
    buffers, torch.export would refuse to read them (a data-dependent float)."""
    import torch

    from edgekit.backends.onnxruntime import plain_session

    program = exported_program(torch_module(lite0_artifact), example_input(lite0_artifact))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        traced = program.module()(torch.from_numpy(x)).numpy()
    session = plain_session(lite0_artifact.onnx_path)
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(traced, expected, atol=1e-4)
    inputs = [n.name for n in program.graph.nodes if n.op == "placeholder"]
    assert inputs[-1] == "x" and all(name.startswith("p_") for name in inputs[:-1])  # weights, then the image


def test_an_int8_artifact_converts_from_its_fp32_parent_on_its_own_calibration_images(tiny_artifact, int8_artifact):
    assert float_source(int8_artifact).key == tiny_artifact.key
    assert float_source(tiny_artifact) is tiny_artifact
    expected, _ = load_all(default_calibration().resolve(), tiny_artifact.preprocessing)
    np.testing.assert_array_equal(calibration_batch(int8_artifact), expected)


def test_an_int8_artifact_without_its_calibration_record_or_parent_is_one_line(int8_artifact, tmp_path):
    manifest = json.loads((int8_artifact.path / "manifest.json").read_text())
    older = {**manifest, "steps": [{k: v for k, v in s.items() if k != "calibration_views"} for s in manifest["steps"]]}
    with pytest.raises(UsageError, match="does not record its calibration images"):
        calibration_batch(Artifact(int8_artifact.path, older))
    orphan = {**manifest, "parent": {"key": "0123456789ab", "path": str(tmp_path / "gone")}}
    with pytest.raises(UsageError, match="FP32 parent 0123456789ab is not at"):
        float_source(Artifact(tmp_path, orphan))


def test_other_precisions_and_batch_sizes_are_refused(tiny_artifact):
    fp16 = dataclasses.replace(tiny_artifact, manifest={**tiny_artifact.manifest, "variant": "fp16", "steps": [*tiny_artifact.manifest["steps"], {"step": "fp16"}]})
    with pytest.raises(UsageError, match="fp16"):
        float_source(fp16)
    check_batch_one("litert", (1,))
    with pytest.raises(UsageError, match="--batch 1, not --batch 8"):
        check_batch_one("litert", (1, 8))


def test_the_interpreter_runs_layer_norm_strided_slices_and_scalar_gathers(tmp_path):
    """What ConvNeXt and Swin need (LayerNormalization, Slice with step 2) and a scalar
    index into a shape, checked against ONNX Runtime on a small graph."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.backends.onnxruntime import plain_session
    from edgekit.transforms.onnx_to_torch import graph_module

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([0], np.int64), "starts"), numpy_helper.from_array(np.array([8], np.int64), "ends"),
             numpy_helper.from_array(np.array([2], np.int64), "axes"), numpy_helper.from_array(np.array([2], np.int64), "steps"),
             numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array([-1], np.int64), "rest")]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["ln"], axis=-1, epsilon=1e-5),
             helper.make_node("Slice", ["ln", "starts", "ends", "axes", "steps"], ["sliced"]),
             helper.make_node("Shape", ["sliced"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["channels"], axis=0),
             helper.make_node("Unsqueeze", ["channels", "starts"], ["dims"]),
             helper.make_node("Concat", ["dims", "rest"], ["new_shape"], axis=0),
             helper.make_node("Reshape", ["sliced", "new_shape"], ["y"])]
    graph = helper.make_graph(nodes, "families", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ours = graph_module(model, trainable=False, for_export=True)(torch.from_numpy(x)).numpy()
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    session = plain_session(path)
    np.testing.assert_allclose(ours, session.run(None, {"x": x})[0], atol=1e-5)
