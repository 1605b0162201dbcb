"""The documented Python API: edgekit.export, edgekit.bench, edgekit.load_results."""

import pytest

import edgekit
from edgekit.core import UsageError


def test_export_and_bench_as_the_cli_does(tmp_path, exported_root):
    artifact = edgekit.export("mobilenet_v3_small", random_init=True, input_size=64, artifacts=exported_root)
    assert artifact.problems() == [] and artifact.manifest["variant"] == "fp32"
    run = edgekit.bench(artifact.path, backends=["onnxruntime"], iterations=3, warmup=1, views=1, power="off")
    (row,) = run.run.results
    assert row.backend == "onnxruntime" and row.latency[0].p50_ms > 0 and row.error is None
    assert row.accuracy.agreement == 100.0 and row.accuracy.note.startswith("not applicable")  # random init: no top-1
    assert row.environment["host"] and row.environment["run"]  # every row says where and in which run


def test_options_are_the_declared_ones():
    with pytest.raises(UsageError, match="unknown option"):
        edgekit.export("squeezenet1_1", calibration="x")
    with pytest.raises(UsageError, match="int8 and fp16 exclude each other|--int8 and --fp16"):
        edgekit.export("squeezenet1_1", int8=True, fp16=True)
    with pytest.raises(UsageError, match="comes before"):
        edgekit.export("squeezenet1_1", variant="int8+pruned")


def test_load_results_validates(tmp_path):
    (tmp_path / "r.json").write_text('{"format": "edgekit-results/1", "results": [{}]}')
    with pytest.raises(Exception, match=r"r.json: results\[0\]"):
        edgekit.load_results(tmp_path / "r.json")


def test_importing_edgekit_stays_light():
    import subprocess
    import sys

    code = "import sys, edgekit; assert 'torch' not in sys.modules and 'edgekit.api' not in sys.modules; edgekit.load_results; assert 'edgekit.api' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
