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
