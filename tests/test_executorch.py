"""ExecuTorch backend: real programs made by executorch.exir, run by the pip runtime."""

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("executorch.runtime")
pytest.importorskip("executorch.exir")
pytest.importorskip("torchao.quantization.pt2e")

from edgekit.backends import BackendOptions, get_backend  # noqa: E402
from edgekit.backends import executorch as et  # noqa: E402
from edgekit.backends.torch_program import program_path  # noqa: E402
from edgekit.core import Artifact, UsageError  # noqa: E402
from edgekit.data import load_all, resolve_images  # noqa: E402

ONE_THREAD = BackendOptions(threads=1)
PORTABLE = BackendOptions(threads=1, own={"executorch_delegate": "none"})


@pytest.fixture(scope="module")
def backend():
    return get_backend("executorch")


@pytest.fixture(scope="module")
def fp32_program(backend, tiny_artifact):
    return backend.compile(tiny_artifact, ONE_THREAD)


def test_fp32_agrees_with_pytorch_on_real_photos(backend, lite0_artifact):
    """Real EfficientNet-Lite0 weights, every bundled photo (two views each): the XNNPACK
    program gives PyTorch's top-1 and logits within float rounding."""
    x, _ = load_all(resolve_images(views_per_image=2), lite0_artifact.preprocessing)
    reference = get_backend("pytorch").load(lite0_artifact, BackendOptions()).run(x)
    compiled = backend.compile(lite0_artifact, ONE_THREAD)
    session = backend.load(compiled, ONE_THREAD)
    logits = session.run(x)
    assert len(x) >= 14 and logits.shape == reference.shape and logits.dtype == np.float32
    assert (logits.argmax(1) == reference.argmax(1)).all()
    assert np.abs(logits - reference).max() < 1e-3
    assert session.precision == "fp32 (ExecuTorch, XNNPACK)" and "XNNPACK delegate" in session.providers[0]
    assert session.layer_summary is None  # every convolution and the classifier inside the delegate
    assert compiled.manifest["input"]["shape"][0] == 1 and program_path(compiled).name == "model.xnnpack.pte"


def test_int8_program_is_integer_and_names_its_scheme(backend, int8_artifact, tiny_artifact, fp32_program):
    compiled = backend.compile(int8_artifact, ONE_THREAD)
    detail = compiled.manifest["variant_detail"]
    assert "PT2E XNNPACKQuantizer" in detail and "per-channel symmetric" in detail and "calibration images" in detail
    facts = et.program_facts(program_path(compiled))
    assert facts.delegates and set(facts.delegates) == {et.XNNPACK_ID} and facts.outside() == {}
    assert backend.size_mb(compiled) < 0.4 * backend.size_mb(fp32_program)  # INT8 weights: about a quarter of FP32's
    x, _ = load_all(resolve_images(views_per_image=1, limit=3), int8_artifact.preprocessing)
    logits = backend.load(compiled, ONE_THREAD).run(x)
    assert logits.shape == (3, 1000) and np.isfinite(logits).all()
    # what the runtime ran, from its own profiler: every convolution and linear layer in INT8
    ran = [n.precision for n in backend.profile(compiled, ONE_THREAD, x, iterations=1, warmup=0).nodes if n.covers]
    assert len(ran) == 54 and set(ran) == {"int8"}  # mobilenet_v3_small: 52 convolutions, 2 linear layers


def test_a_graph_the_quantizer_left_float_is_refused(tiny_artifact):
    """The check compile runs on the quantized graph, on one that was never quantized."""
    from edgekit.backends.torch_program import example_input, exported_program, torch_module

    module = exported_program(torch_module(tiny_artifact), example_input(tiny_artifact)).module()
    with pytest.raises(UsageError, match=r"left \d+ of \d+ compute layers float .*would not be INT8"):
        et.stayed_float(module)


def test_program_is_reused(backend, tiny_artifact, fp32_program, monkeypatch):
    path = program_path(fp32_program)
    before = path.stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(et, "make_program", no_conversion)
    again = backend.compile(tiny_artifact, ONE_THREAD)
    assert program_path(again) == path and path.stat().st_mtime_ns == before


def test_delegate_none_runs_portable_kernels_and_says_so(backend, tiny_artifact, fp32_program):
    compiled = backend.compile(tiny_artifact, PORTABLE)
    session = backend.load(compiled, PORTABLE)
    assert program_path(compiled).name == "model.portable.pte"
    assert "portable kernels" in compiled.manifest["variant_detail"] and "portable kernels (no delegate)" in session.providers[0]
    x, _ = load_all(resolve_images(views_per_image=1, limit=2), tiny_artifact.preprocessing)
    xnnpack = backend.load(fp32_program, ONE_THREAD).run(x)
    np.testing.assert_allclose(session.run(x), xnnpack, atol=1e-4)
    # the same program reader that records layers outside the delegate sees every convolution on portable kernels
    line = et.outside_delegate_line(et.program_facts(program_path(compiled)))
    assert line is not None and "aten::convolution.out x" in line
    assert et.outside_delegate_line(et.program_facts(program_path(fp32_program))) is None


def test_delegate_none_program_refused_as_xnnpack(backend, tiny_artifact):
    """A program without the XNNPACK delegate is not run as if it had it."""
    portable = backend.compile(tiny_artifact, PORTABLE)
    with pytest.raises(UsageError, match="no layer was delegated to XNNPACK"):
        backend.load(portable, ONE_THREAD)


@pytest.mark.parametrize("numeric, floats, options, message", [
    ("fp16", "", ONE_THREAD, "converts FP32 artifacts, and INT8 ones in its own scheme, not fp16"),
    ("fp32", "", BackendOptions(batch_sizes=(1, 2)), "--batch 1, not --batch 2"),
    ("int8", "fp32", PORTABLE, "portable kernels have no quantized operators"),
    ("int8", "fp16", ONE_THREAD, "float parts \\(--int8-float fp16\\)"),
])
def test_refused_before_any_work(backend, numeric, floats, options, message):
    with pytest.raises(UsageError, match=message):
        backend.check_planned(numeric, floats, options)


def test_an_operator_that_cannot_convert_is_named(backend, tiny_artifact, tmp_path):
    import onnx

    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact.path, copy, ignore=shutil.ignore_patterns("*.pte*"))
    model = onnx.load(str(copy / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Relu")
    node.op_type = "Celu"  # a real ONNX operator no converter path here takes
    onnx.save(model, str(copy / "model.onnx"))
    artifact = Artifact(path=copy, manifest=tiny_artifact.manifest)
    with pytest.raises(UsageError, match=f"ONNX operator Celu \\(node {node.name}") as raised:
        backend.compile(artifact, ONE_THREAD)
    assert "\n" not in str(raised.value)
    assert not [p for p in os.listdir(copy) if p.endswith(".pte")]


def test_lowering_errors_name_the_operator():
    """What ExecuTorch raises for a quantized graph with no delegate to take it (its message as seen)."""
    error = et._conversion_error("serialize", RuntimeError("Missing out variants: {'quantized_decomposed::dequantize_per_channel'}\nmore"))
    assert str(error) == ("ExecuTorch cannot serialize this model (operator quantized_decomposed::dequantize_per_channel): "
                          "Missing out variants: {'quantized_decomposed::dequantize_per_channel'}")


def test_machine_facts_name_converter_and_delegate(backend):
    facts = backend.machine_facts()
    assert facts["installed"] and facts["version"].startswith("executorch ")
    assert facts["xnnpack"] is True and facts["default_delegate"] == "xnnpack" and facts["converter"].startswith("executorch.exir")


def test_etdump_prices_every_compute_layer(backend, tiny_artifact, fp32_program):
    """ExecuTorch's own profiler: one event per XNNPACK operator, each ONNX convolution and
    Gemm of the graph joined to its XNNPACK operator, in order."""
    import onnx

    from edgekit.profiling import COMPUTE_OPS

    x, _ = load_all(resolve_images(views_per_image=1, limit=1), tiny_artifact.preprocessing)
    run = backend.profile(fp32_program, ONE_THREAD, x, iterations=3, warmup=1)
    graph = [n.name for n in onnx.load(str(tiny_artifact.onnx_path)).graph.node if n.op_type in COMPUTE_OPS]
    joined = [n for n in run.nodes if n.covers]
    assert [n.covers[0] for n in joined] == graph
    assert all(n.precision == "f32" and n.op_type.startswith(("Convolution", "Fully Connected")) for n in joined)
    assert run.run_ms > 0 and all(n.ms >= 0 for n in run.nodes) and sum(n.ms for n in joined) > 0
    assert any(n.role == "layout" for n in run.nodes)  # XNNPACK's NCHW <-> NHWC transposes, not charged to a layer
