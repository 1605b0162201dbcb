"""`edgekit profile`: each backend's own profiler, joined to the PyTorch model's modules, on
real runtimes (ONNX Runtime's session profiler, OpenVINO's performance counters, the
PyTorch profiler). Whether the rows add up to the end-to-end time is a measurement, not a
unit test: benchmarks/profile_check.py records it, with benchmark_app beside OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error, run_cli

QUICK = ("--iterations", "3", "--warmup", "1")


def test_an_int8_artifact_gets_a_price_list_on_every_cpu_backend(int8_artifact, tmp_path):
    out = tmp_path / "profile.json"
    proc = run_cli("profile", str(int8_artifact.path), "--backend", "onnxruntime,openvino,pytorch", *QUICK, "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    section = json.loads(out.read_text())["profile"]
    backends = {b["backend"]: b for b in section["backends"]}
    assert set(backends) == {"onnxruntime", "openvino", "pytorch"}
    for name, b in backends.items():
        assert b["joined_by"] == "module" and b["e2e_p50_ms"] > 0 and b["sum_ms"] > 0, name
        modules = [m["module"] for m in b["modules"]]
        assert any(m.startswith("features.") for m in modules), (name, modules[:5])  # torchvision's module paths
        assert abs(sum(m["ms"] for m in b["modules"]) - b["sum_ms"]) < 1e-6
    for name in ("onnxruntime", "openvino"):  # the INT8 file beside its FP32 parent, module by module
        b = backends[name]
        assert b["float"] is not None and b["float"]["variant"] == "fp32"
        assert any(p["float_ms"] is not None and not p["module"].startswith("(") for p in b["prices"]), name
    ov_precisions = {p for m in backends["openvino"]["modules"] for p in m["precisions"]}
    assert any(p.startswith(("i8", "u8")) for p in ov_precisions), ov_precisions  # what each node actually ran at
    assert backends["pytorch"]["variant"] == "int8" and "FP32 original" in proc.stdout
    # each module's accuracy cost, on the calibration images it was quantized with
    assert section["kl_by_module"] and section["kl_images"] > 0, section.get("kl_note")
    assert all(v >= 0 for v in section["kl_by_module"].values())
    assert "KL if only it is INT8" in proc.stdout and "inside the runtime's nodes" in proc.stdout and "end-to-end p50" in proc.stdout


def test_an_imported_onnx_profiles_by_node_name_and_says_so(tmp_path):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], name="conv_a", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu_a"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["logits"], name="flatten"),
        ],
        "plain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")],
    )
    path = tmp_path / "plain.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    proc = run_cli("profile", str(path), "--backend", "onnxruntime", *QUICK, "--artifacts", "exported", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rows are ONNX nodes" in proc.stdout and "conv_a" in proc.stdout


def test_a_backend_that_is_not_installed_names_its_extra(int8_artifact, tmp_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert_one_line_error(run_cli("profile", str(int8_artifact.path), "--backend", "tensorrt", *QUICK, cwd=tmp_path), "edgekit[tensorrt]")
    else:
        pytest.skip("TensorRT is installed here")
