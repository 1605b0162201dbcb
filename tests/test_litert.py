"""The LiteRT backend (edgekit/backends/litert.py) for real: litert-torch converts, ai-edge-litert
runs with its XNNPACK delegate; EfficientNet-Lite0's real weights on the bundled photos."""

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert.interpreter")
pytest.importorskip("litert_torch")

from edgekit.backends import BackendOptions, get_backend  # noqa: E402
from edgekit.backends import litert  # noqa: E402
from edgekit.backends.torch_program import program_path  # noqa: E402
from edgekit.core import UsageError  # noqa: E402
from edgekit.data import evaluation_images, load_all  # noqa: E402


def _options(delegate: str = "xnnpack", **more) -> BackendOptions:
    return BackendOptions(threads=2, own={"litert_delegate": delegate}, **more)


@pytest.fixture(scope="module")
def backend():
    return get_backend("litert")


@pytest.fixture(scope="module")
def tiny_int8(tiny_artifact, exported_root):
    """The tiny model's INT8 artifact calibrated on two views of four bundled photos (8 images, the fewest edgekit takes):
    litert-torch's histogram observers cost about a second per image here."""
    from edgekit.data.requests import ImageRequest
    from edgekit.steps.int8 import quantize_artifact
    from edgekit.transforms.quantize import Budget, QuantizeOptions

    fast = QuantizeOptions(method="minmax", max_fallback_nodes=0, bias_correction=False, budget=Budget(min_agreement=0.0, max_kl=None))
    artifact, _ = quantize_artifact(tiny_artifact, ImageRequest(views_per_image=2, limit=4, view_offset=1, view_stride=2).resolve(), fast, exported_root)
    return artifact


@pytest.fixture(scope="module")
def tiny_program(backend, tiny_artifact):
    return backend.compile(tiny_artifact, _options())


def test_fp32_agrees_with_pytorch_on_the_bundled_photos(backend, lite0_artifact):
    """Real EfficientNet-Lite0: every held-out crop gets PyTorch's top-1, logits within 1e-3,
    every compute op inside the XNNPACK delegate."""
    x, _ = load_all(evaluation_images(views=2).resolve(), lite0_artifact.preprocessing)
    expected = get_backend("pytorch").load(lite0_artifact, BackendOptions(threads=2)).run(x)
    compiled = backend.compile(lite0_artifact, _options())
    session = backend.load(compiled, _options())
    got = session.run(x)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-3
    assert session.precision == "fp32" and "XNNPACK delegate" in session.providers[0]
    assert session.layer_summary is None  # no compute op fell out of the delegate
    assert program_path(compiled).name == "model.litert.tflite" and backend.size_mb(compiled) > 10


def test_int8_program_is_integer_and_names_its_scheme(backend, tiny_int8, tiny_program):
    """(The random-init model's logits are about 1e-10: its INT8 output rounds them to 0; the
    fidelity of LiteRT's INT8 on real weights is measured in benchmarks, not here.)"""
    compiled = backend.compile(tiny_int8, _options())
    detail = compiled.manifest["variant_detail"]
    assert detail.startswith("int8 (litert-torch PT2E quantizer: per-channel symmetric int8 weights") and "; 8 calibration images)" in detail
    path = program_path(compiled)
    assert path.name == "model.litert-int8.tflite"
    assert not litert.float_compute_ops(path) and litert.compute_op_count(path) >= 50
    assert backend.size_mb(compiled) < 0.5 * backend.size_mb(tiny_program)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 64, 64)).astype(np.float32)
    session = backend.load(compiled, _options())
    assert session.precision.endswith("; int8 input and int8 output, converted here as an application does)")
    logits = session.run(x)
    assert logits.shape == (2, 1000) and logits.dtype == np.float32 and np.isfinite(logits).all()


def test_a_float_program_is_refused_as_int8(tiny_program):
    with pytest.raises(UsageError, match=r"has \d+ of \d+ compute ops still float \(CONV_2D x\d+ DEPTHWISE_CONV_2D x\d+ FULLY_CONNECTED x2\)"):
        litert.check_integer(program_path(tiny_program))


def test_the_program_is_reused(backend, tiny_artifact, tiny_program, monkeypatch):
    path = program_path(tiny_program)
    before = path.stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(litert, "make_program", no_conversion)
    assert program_path(backend.compile(tiny_artifact, _options())) == path
    assert path.stat().st_mtime_ns == before


def test_fp16_and_batch_two_are_refused(backend):
    with pytest.raises(UsageError, match="litert converts FP32 artifacts"):
        backend.check_planned("fp16", "fp16", _options())
    with pytest.raises(UsageError, match="--batch 1, not --batch 2"):
        backend.check_planned("fp32", "fp32", _options(batch_sizes=(1, 2)))
    backend.check_planned("int8", "fp32", _options(batch_sizes=(1,)))


def test_an_operator_litert_cannot_lower_is_one_line_naming_it(tmp_path):
    import torch

    class Determinant(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.det(x)

    with pytest.raises(UsageError) as e:
        litert.convert_module(Determinant().eval(), torch.rand(1, 3, 4, 4), tmp_path / "det.tflite", source="det")
    assert "no LiteRT lowering for operator aten._linalg_det" in str(e.value) and "\n" not in str(e.value)


def test_compute_ops_outside_the_delegate_are_counted(tmp_path):
    """A convolution whose filter is computed at run time is one XNNPACK does not take."""
    import torch

    class RuntimeFilter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            return self.conv(x) + torch.nn.functional.conv2d(x, self.w * x.mean())

    path = tmp_path / "runtime_filter.tflite"
    litert.convert_module(RuntimeFilter().eval(), torch.rand(1, 3, 8, 8), path)
    outside, total, pieces = litert.outside_delegate(litert._interpreter(path, "xnnpack"))
    assert (outside["CONV_2D"], total) == (1, 2)
    lines = litert.outside_lines(outside, total, pieces)
    assert lines[0].startswith("1 of 2 compute ops ran outside the XNNPACK delegate on TFLite's built-in kernels: CONV_2D x1")


def test_delegate_none_runs_the_built_in_kernels_and_says_so(backend, tiny_program):
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 64, 64)).astype(np.float32)
    plain = backend.load(tiny_program, _options("none"))
    delegated = backend.load(tiny_program, _options())
    assert plain.providers == (f"ai-edge-litert {litert.distribution_version('ai-edge-litert')} built-in kernels (no delegate)",)
    assert not any(op["op_name"] == "DELEGATE" for op in litert._ops(plain._interpreter))
    np.testing.assert_allclose(plain.run(x), delegated.run(x), atol=1e-3)


def test_machine_facts_name_the_converter_and_delegate(backend):
    facts = backend.machine_facts()
    assert facts["installed"] and facts["converter"].startswith("litert-torch ") and "XNNPACK" in facts["delegate"]


def test_profile_names_the_tool_that_has_an_op_profiler(backend, tiny_program):
    from edgekit.core import ProfilerUnavailable

    with pytest.raises(ProfilerUnavailable, match="benchmark_model --enable_op_profiling"):
        backend.profile(tiny_program, _options(), np.zeros((1, 3, 64, 64), np.float32), 2, 1)


def test_a_bundle_carries_the_program_and_runs_it_without_torch_or_the_converter(tiny_artifact, tmp_path):
    import json

    from conftest import run_cli
    from test_bundle import BLOCKER, run_runner

    from edgekit.core import BenchResult

    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "tiny"
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "litert", "-o", str(out), "--views", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "artifact" / "model.litert.tflite").is_file()
    result = tmp_path / "device.json"
    proc = run_runner(out, tmp_path / "blocker", "bench", "--backend", "litert", "--iterations", "3", "--warmup", "1", "--power", "off",
                      "--json", str(result), block=("torch", "litert_torch", "onnx"))
    assert proc.returncode == 0, proc.stderr
    (row,) = [BenchResult.from_dict(r) for r in json.loads(result.read_text())["results"]]
    assert row.backend == "litert" and row.precision == "fp32" and row.accuracy.agreement == 100.0
    assert run_runner(out, tmp_path / "blocker", "verify").returncode == 0
