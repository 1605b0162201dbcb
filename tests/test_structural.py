"""Pruned and depthwise-separable artifacts through the CLI: manifest, savings, bad input."""

import json
from pathlib import Path

from conftest import assert_one_line_error, run_cli

TINY = ("--random-init", "--input-size", "64")


def _artifact(proc):
    return proc.stdout.strip().splitlines()[-1]


def test_export_prune_then_int8_and_bench_against_the_original(tmp_path):
    proc = run_cli("export", "resnet18", *TINY, "--prune", "0.3", "--distill-steps", "3", "--int8", "--calib-method", "minmax",
                   "--max-fallback", "0", "--no-bias-correction", "--artifacts", str(tmp_path / "exported"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pruned: params" in proc.stderr
    manifest = json.loads((Path(_artifact(proc)) / "manifest.json").read_text())
    assert manifest["variant"] == "pruned+int8"
    steps = [s["step"] for s in manifest["steps"]]
    assert steps == ["export", "prune", "quantize"]
    prune_step = manifest["steps"][1]
    assert prune_step["params_m"][1] < 0.75 * prune_step["params_m"][0]


def test_export_dw_separable_by_layer_names(tmp_path):
    proc = run_cli("export", "resnet18", *TINY, "--dw-separable", "--dw-layer", "layer1.0.conv1,layer1.0.conv2",
                   "--distill-steps", "0", "--artifacts", str(tmp_path / "exported"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "depthwise-separable conversion" in proc.stdout + proc.stderr
    manifests = list((tmp_path / "exported").rglob("manifest.json"))
    converted = [json.loads(m.read_text()) for m in manifests if json.loads(m.read_text())["variant"] == "dw-separable"]
    assert len(converted) == 1
    d = converted[0]["dw_separable"]
    assert {c["name"] for c in d["layers"] if c["converted"]} == {"layer1.0.conv1", "layer1.0.conv2"}
    assert d["gmacs"]["after"] < d["gmacs"]["before"]
    assert converted[0]["parity"]["max_abs_diff"] < 1e-3  # the exported ONNX is the converted module


def test_structural_bad_input_is_one_line(tmp_path):
    out = ("--artifacts", str(tmp_path / "exported"))
    assert_one_line_error(run_cli("export", "resnet18", *TINY, "--prune", "1.5", *out, cwd=tmp_path), "'--prune'", "0.0<x<1.0", code=2)
    assert_one_line_error(run_cli("export", "resnet18", *TINY, "--prune", "0.3", "--dw-separable", *out, cwd=tmp_path), "exclude each other", code=2)
    proc = run_cli("export", "resnet18", *TINY, "--dw-separable", "--dw-layer", "layer9.conv", "--distill-steps", "0", *out, cwd=tmp_path)
    assert_one_line_error(proc, "no layer named 'layer9.conv'", code=2)
    assert not [m for m in (tmp_path / "exported").rglob("manifest.json") if "dw-separable" in m.read_text()]
