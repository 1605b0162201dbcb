"""The documented Python API: edgekit.export, edgekit.bench, edgekit.profile, edgekit.load_results."""

import dataclasses
import json
from pathlib import Path

import pytest

import edgekit
from conftest import run_cli
from edgekit.core import BenchResult, UsageError


def test_export_and_bench_as_the_cli_does(tmp_path, exported_root):
    artifact = edgekit.export("mobilenet_v3_small", random_init=True, input_size=64, artifacts=exported_root)
    assert artifact.problems() == [] and artifact.manifest["variant"] == "fp32"
    report = edgekit.bench(artifact.path, backend=["onnxruntime"], iterations=3, warmup=1, views=1, power="off")
    assert isinstance(report, edgekit.BenchReport) and report.artifact.key == artifact.key
    (row,) = report.rows
    assert isinstance(row, BenchResult) and report.row("onnxruntime") is row and report.failed == ()
    assert row.backend == "onnxruntime" and row.latency[0].p50_ms > 0 and row.error is None
    assert row.accuracy.agreement == 100.0 and row.accuracy.note.startswith("not applicable")  # random init: no top-1
    assert row.environment["host"] and row.environment["run"]  # every row says where and in which run
    assert report.evaluated > 0 and report.images["description"] and report.machine
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.rows = ()

    # the document the CLI writes, from Python: load_results, report and check read it
    document = report.to_document()
    assert document["artifact"]["key"] == artifact.key and document["command"].startswith("edgekit.bench(")
    path = report.write(tmp_path / "results.json")
    assert path == tmp_path / "results.json" and report.default_path == artifact.path / "results.json"
    loaded = edgekit.load_results(path)
    assert [r["backend"] for r in loaded["results"]] == ["onnxruntime"] and loaded["images"] == report.images
    shown = run_cli("report", str(path), "-o", str(tmp_path / "report"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert (tmp_path / "report" / "report.csv").exists()
    gate = run_cli("check", str(path), "--baseline", str(path), cwd=tmp_path)
    assert gate.returncode == 0 and "check passed" in gate.stderr, gate.stderr


def test_bench_command_writes_through_the_api(tmp_path, exported_root):
    artifact = edgekit.export("mobilenet_v3_small", random_init=True, input_size=64, artifacts=exported_root)
    out = tmp_path / "cli.json"
    proc = run_cli("bench", str(artifact.path), "--backend", "onnxruntime", "--iterations", "2", "--warmup", "0", "--views", "1",
                   "--limit", "2", "--power", "off", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    document = edgekit.load_results(out)
    assert document["command"].startswith("edgekit bench ") and document["artifact"]["key"] == artifact.key


def test_names_are_discoverable():
    import pydoc

    for name in ("export", "bench", "profile", "load_results", "BenchReport", "ArtifactProfile", "UsageError"):
        assert name in edgekit.__all__ and name in dir(edgekit) and getattr(edgekit, name) is not None
    text = pydoc.render_doc(edgekit, renderer=pydoc.plaintext)
    for name in ("export(", "bench(", "profile(", "load_results(", "class BenchReport"):
        assert name in text
    assert (Path(edgekit.__file__).parent / "py.typed").exists()
    assert "py.typed" in (Path(edgekit.__file__).parent.parent / "setup.cfg").read_text().split("[options.package_data]")[1].split("[")[0]
    import inspect

    signature = inspect.signature(edgekit.bench)
    assert signature.return_annotation in ("BenchReport", edgekit.BenchReport)
    assert {"target", "backend", "int8", "batch", "iterations", "options"} <= set(signature.parameters)


def test_importing_edgekit_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, edgekit; assert 'torch' not in sys.modules and 'edgekit.api' not in sys.modules; "
        "assert 'bench' in dir(edgekit); edgekit.bench; edgekit.BenchReport; "
        "assert 'edgekit.api' in sys.modules and 'torch' not in sys.modules and 'numpy' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- options (no work is done: all refused first)


@pytest.mark.parametrize("call, message", [
    (lambda: edgekit.bench("mobilenet_v2", iterations="ten"), "iterations must be an integer >= 1, got 'ten'"),
    (lambda: edgekit.bench("mobilenet_v2", iterations=True), "iterations must be an integer >= 1, got True"),
    (lambda: edgekit.bench("mobilenet_v2", batch=[1, 0]), "batch must be a list of integers >= 1, got [1, 0]"),
    (lambda: edgekit.bench("mobilenet_v2", power="solar"), "power must be one of auto, tegrastats, nvml, rapl, off, got 'solar'"),
    (lambda: edgekit.bench("mobilenet_v2", max_seconds=float("nan")), "max_seconds must be a finite number >= 0.1, got nan"),
    (lambda: edgekit.export("mobilenet_v2", prune=1.5), "prune must be a number in (0, 1), got 1.5"),
    (lambda: edgekit.export("mobilenet_v2", dw_layer=[3]), "dw_layer must be a list of strings, got [3]"),
    (lambda: edgekit.export("mobilenet_v2", ft_freeze_backbone="yes"), "ft_freeze_backbone must be true or false, got 'yes'"),
    (lambda: edgekit.profile("mobilenet_v2", warmup=-1), "warmup must be an integer >= 0, got -1"),
    (lambda: edgekit.bench("mobilenet_v2", iteration=10), "unknown option 'iteration' for edgekit.bench; did you mean 'iterations'?"),
    (lambda: edgekit.bench("mobilenet_v2", backendz="onnxruntime"), "did you mean 'backend"),
    (lambda: edgekit.export("squeezenet1_1", calibration="x"), "unknown option 'calibration' for edgekit.export"),
    (lambda: edgekit.export("mobilenet_v2", iterations=10), "edgekit.export takes no option 'iterations' (an option of edgekit.bench and edgekit.profile)"),
    (lambda: edgekit.bench("mobilenet_v2", backend="onnxruntime", backends=["pytorch"]), "backend= and backends= are the same option"),
    (lambda: edgekit.bench("mobilenet_v2", retries=2), "unknown option 'retries'"),  # recipe-only: not a bench option
])
def test_values_are_checked_as_the_flags_check_them(call, message):
    with pytest.raises(UsageError) as caught:
        call()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_flag_names_and_keys_are_the_same_options():
    from edgekit.api import _settings
    from edgekit.options import OPTIONS, keyword_options

    by_flag = _settings("export", {"dw_layer": ["features.1", "features.2"], "ft_freeze_backbone": True, "calib": Path("photos")})
    by_key = _settings("export", {"dw_layers": ["features.1", "features.2"], "ft_freeze": True, "calib": "photos"})
    assert by_flag["dw_layers"] == by_key["dw_layers"] == ("features.1", "features.2") and by_flag["ft_freeze"] is by_key["ft_freeze"] is True
    bench = _settings("bench", {"backend": "onnxruntime,pytorch", "batch": 4, "ssh_option": ["IdentityFile=k"]})
    assert bench["backends"] == ("onnxruntime", "pytorch") and bench["batch"] == (4,) and bench["ssh_options"] == ("IdentityFile=k",)
    # every flag's Python name reaches its own option, and no flag name is another option's key
    names = keyword_options()
    for option in OPTIONS:
        if option.flag and option.commands:
            assert names[option.flag[2:].replace("-", "_")] is option and names[option.key] is option
    # what click passes for options left out (None, empty tuples, False) is "not given"
    assert not _settings("bench", {"iterations": None, "backends": (), "int8": False}).given("iterations")


def test_options_are_the_declared_ones():
    with pytest.raises(UsageError, match="int8 and fp16 exclude each other|--int8 and --fp16"):
        edgekit.export("squeezenet1_1", int8=True, fp16=True)
    with pytest.raises(UsageError, match="comes before"):
        edgekit.export("squeezenet1_1", variant="int8+pruned")
    with pytest.raises(UsageError, match="--trt-workspace applies to the tensorrt backend"):
        edgekit.bench("squeezenet1_1", backend="onnxruntime", trt_workspace="4GiB")


def test_load_results_validates(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"format": "edgekit-results/1", "results": [{}]}))
    with pytest.raises(Exception, match=r"r.json: results\[0\]"):
        edgekit.load_results(tmp_path / "r.json")
