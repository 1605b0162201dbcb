"""INT8 and FP16 artifacts: lineage, reuse, the CLI, held-out evaluation, bad calibration input."""

import json

import numpy as np
from PIL import Image

from conftest import assert_one_line_error, run_cli
from edgekit.backends import BackendOptions, get_backend
from edgekit.data import load_all
from edgekit.data import HELD_OUT_EVALUATION, default_calibration
from edgekit.transforms.quantize import Budget, QuantizeOptions
from edgekit.steps.fp16 import fp16_artifact
from edgekit.steps.int8 import quantize_artifact

FAST = QuantizeOptions(method="minmax", max_fallback_nodes=1, bias_correction=False, budget=Budget(min_agreement=50.0, max_kl=None))


def test_int8_artifact_records_its_lineage(int8_artifact, tiny_artifact):
    m = int8_artifact.manifest
    assert m["variant"] == "int8" and m["parent"]["key"] == tiny_artifact.key
    assert [s["step"] for s in m["steps"]] == ["export", "quantize"]
    calibration = m["steps"][-1]["calibration"]
    assert calibration["count"] == 77 and calibration["description"].startswith("bundled photos")
    assert calibration["files_hash"] and calibration["preprocessing"]["input_size"] == 64
    assert m["quantization"]["random_weights"] and m["quantization"]["sensitivity"] == []  # no ranking of noise
    assert int8_artifact.problems() == []


def test_int8_artifact_is_reused(int8_artifact, tiny_artifact, exported_root):
    again, reused = quantize_artifact(tiny_artifact, default_calibration().resolve(), FAST, exported_root)
    assert reused and again.path == int8_artifact.path


def test_calibration_and_held_out_views_are_disjoint():
    calibration = {(v.image.path.name, v.view) for v in default_calibration().resolve().views}
    held_out = {(v.image.path.name, v.view) for v in HELD_OUT_EVALUATION.resolve().views}
    assert calibration and held_out and not calibration & held_out


def test_onnxruntime_runs_int8_through_its_cpu_form(int8_artifact, tiny_artifact):
    backend = get_backend("onnxruntime")
    compiled = backend.compile(int8_artifact, BackendOptions())
    assert compiled.onnx_path.name.startswith("model.ort-cpu-") and compiled.onnx_path.is_file()
    x, _ = load_all(HELD_OUT_EVALUATION.resolve(), tiny_artifact.preprocessing)
    int8 = backend.load(compiled, BackendOptions()).run(x[:8])
    fp32 = backend.load(tiny_artifact, BackendOptions()).run(x[:8])
    assert int8.shape == fp32.shape and np.isfinite(int8).all()


def test_fp16_artifact_matches_fp32(tiny_artifact, exported_root):
    artifact, _ = fp16_artifact(tiny_artifact, exported_root)
    assert artifact.manifest["variant"] == "fp16"
    backend = get_backend("onnxruntime")
    x, _ = load_all(HELD_OUT_EVALUATION.resolve(), tiny_artifact.preprocessing)
    fp16 = backend.load(artifact, BackendOptions()).run(x[:8])
    fp32 = backend.load(tiny_artifact, BackendOptions()).run(x[:8])
    np.testing.assert_allclose(fp16, fp32, atol=5e-2)


def test_cli_int8_bench_uses_held_out_views_and_strict_exits(tmp_path):
    out = tmp_path / "r.json"
    model = ["mobilenet_v3_small", "--random-init", "--input-size", "64", "--int8", "--calib-method", "minmax", "--max-fallback", "0", "--no-bias-correction"]
    proc = run_cli("bench", *model, "--iterations", "3", "--warmup", "1", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "random-init weights" in proc.stderr and "layers with the largest output error" not in proc.stderr
    document = json.loads(out.read_text())
    assert "even views" in document["images"]["description"]  # calibration saw the odd ones
    rows = {r["backend"]: r for r in document["results"]}
    assert rows["onnxruntime"]["variant"] == "int8" and rows["onnxruntime"]["accuracy"]["images"] == 77
    strict = run_cli("export", *model, "--min-agreement", "100", "--max-kl", "0", "--strict", cwd=tmp_path)
    assert_one_line_error(strict, "budget not met")
    kept = list((tmp_path / "exported" / "mobilenet_v3_small").glob("*/manifest.json"))
    assert len(kept) == 3  # fp32, int8, and the strict run's int8 (another budget) all kept


def test_cli_too_few_calibration_images(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (80, 60), (40 * i, 90, 200)).save(folder / f"{i}.png")
    proc = run_cli("export", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--int8", "--calib", str(folder), cwd=tmp_path)
    assert_one_line_error(proc, "at least 8")
    assert len(list((tmp_path / "exported" / "mobilenet_v3_small").glob("*/manifest.json"))) == 1  # only FP32


def test_cli_unreadable_calibration_folder(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(10):
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    proc = run_cli("export", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--int8", "--calib", str(folder), cwd=tmp_path)
    assert_one_line_error(proc, "could be read")


def test_cli_inspect_shows_the_sensitivity_report(int8_artifact, tmp_path):
    proc = run_cli("inspect", str(int8_artifact.path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "step quantize" in proc.stdout and "INT8 (minmax ranges" in proc.stdout and "random-init weights" in proc.stdout
