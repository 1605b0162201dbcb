"""What ran where, at what precision: the graph's request (asked_precision) against ONNX
Runtime's profiler and OpenVINO's runtime model, on the real EfficientNet-Lite0 (FP32, its
INT8 QDQ graph, an FP16 conversion)."""

import shutil
from collections import Counter

import numpy as np
import pytest

from edgekit.backends import BackendOptions, get_backend
from edgekit.core import Artifact, UsageError
from edgekit.layer_precision import JUDGED_OPS, LayerReport, asked_precision, mismatches, substitutions, summary

CPU = BackendOptions(threads=1)


@pytest.fixture(scope="module")
def lite0_int8(lite0_artifact, exported_root):
    """Lite0's INT8 QDQ graph, quantized quickly (minmax, no fallback search)."""
    from edgekit.data import default_calibration
    from edgekit.steps.int8 import quantize_artifact
    from edgekit.transforms.quantize import Budget, QuantizeOptions

    fast = QuantizeOptions(method="minmax", max_fallback_nodes=0, bias_correction=False, budget=Budget(min_agreement=None, max_kl=None))
    artifact, _ = quantize_artifact(lite0_artifact, default_calibration().resolve(), fast, exported_root)
    return artifact


@pytest.fixture(scope="module")
def lite0_fp16(lite0_artifact, tmp_path_factory):
    """Lite0 with FP16 tensors (inputs and outputs FP32), made with ONNX Runtime's converter."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folder = tmp_path_factory.mktemp("lite0-fp16")
    onnx.save(convert_float_to_float16(onnx.load(str(lite0_artifact.onnx_path)), keep_io_types=True), str(folder / "model.onnx"))
    return Artifact(path=folder, manifest={"files": {"onnx": "model.onnx"}, "variant": "fp16", "model": "efficientnet_lite0"})


@pytest.fixture(scope="module")
def views(lite0_artifact):
    from edgekit.data import load_all, resolve_images

    x, _ = load_all(resolve_images(views_per_image=1, limit=8), lite0_artifact.preprocessing)
    return x


def judged_nodes(path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in JUDGED_OPS]


def covered_once(report: LayerReport, path) -> None:
    """Every compute node of the file is covered by exactly one layer the runtime ran."""
    count = Counter(node for fact in report.layers for node in fact.covers)
    judged = judged_nodes(path)
    assert judged and {node: count[node] for node in judged} == {node: 1 for node in judged}


# --------------------------------------------------------------------------- the graph's request


def test_asked_precision_reads_real_graphs(lite0_artifact, lite0_int8, lite0_fp16):
    fp32 = asked_precision(lite0_artifact.onnx_path)
    assert len(fp32) == len(judged_nodes(lite0_artifact.onnx_path)) >= 50 and set(fp32.values()) == {"fp32"}
    assert set(asked_precision(lite0_int8.onnx_path).values()) == {"int8"}
    assert asked_precision(lite0_fp16.onnx_path) == {node: "fp16" for node in fp32}
    # the CPU forms the runtimes load ask the same of the same nodes (their names join)
    ort_form = get_backend("onnxruntime").compile(lite0_int8, CPU)
    assert ort_form.onnx_path != lite0_int8.onnx_path
    assert asked_precision(ort_form.onnx_path) == asked_precision(lite0_int8.onnx_path)


# --------------------------------------------------------------------------- ONNX Runtime


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_onnxruntime_cpu_runs_every_compute_node_as_asked(which, lite0_artifact, lite0_int8):
    backend = get_backend("onnxruntime")
    compiled = backend.compile(lite0_artifact if which == "fp32" else lite0_int8, CPU)
    report = backend.layer_report(compiled, CPU)
    asked = asked_precision(compiled.onnx_path)
    assert mismatches(asked, report) == [] and substitutions(asked, report) == []
    covered_once(report, compiled.onnx_path)
    computing = [f for f in report.layers if set(f.covers) & set(asked)]
    assert {f.where for f in computing} == {"CPUExecutionProvider"} and report.expected_where == ("CPUExecutionProvider",)
    assert summary(asked, report)["ran"] == {which: len(computing)}
    if which == "int8":  # integer kernels, not float ones around Q/DQ
        assert {f.op_type for f in computing} <= {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def test_onnxruntime_cpu_fp16_is_a_declared_substitution(lite0_fp16, lite0_artifact, views):
    """ONNX Runtime's CPU provider computes an FP16 graph's convolutions in FP32 (it inserts
    casts): recorded as a substitution with its reason, and the graph still computes right."""
    from edgekit.backends.onnxruntime import fp16_conv_on_cpu

    backend = get_backend("onnxruntime")
    compiled = backend.compile(lite0_fp16, CPU)
    report = backend.layer_report(compiled, CPU)
    asked = asked_precision(compiled.onnx_path)
    covered_once(report, compiled.onnx_path)
    ran = {f.ran for f in report.layers if set(f.covers) & set(asked)}
    assert ran == {fp16_conv_on_cpu()}
    assert mismatches(asked, report) == []
    if ran == {"fp32"}:
        lines = substitutions(asked, report)
        assert len(lines) == 1 and lines[0].startswith(f"{len(asked)} compute node(s) asked fp16 ran fp32: ONNX Runtime")
        undeclared = LayerReport(report.backend, report.device, report.layers, report.expected_where)
        assert len(mismatches(asked, undeclared)) == len(asked)  # the judgement is real: undeclared, each one is named
        assert any(name.startswith("InsertedPrecisionFreeCast_") for name in map(str, report.facts["inserted_by_onnxruntime"]))
    session = backend.load(compiled, CPU)
    assert ("FP32 arithmetic" in session.precision) == (ran == {"fp32"})  # the results row says so
    logits = session.run(views)
    reference = backend.load(lite0_artifact, CPU).run(views)
    assert logits.dtype == np.float32 and (logits.argmax(1) == reference.argmax(1)).mean() >= 0.75


def test_onnxruntime_precision_lives_in_the_graph(lite0_artifact, lite0_fp16):
    backend = get_backend("onnxruntime")
    f16 = BackendOptions(own={"precision": "f16"})
    with pytest.raises(UsageError, match="--precision f16.*artifact is fp32.*--fp16"):
        backend.compile(lite0_artifact, f16)
    with pytest.raises(UsageError, match="--fp16"):
        backend.load(lite0_artifact, f16)
    assert backend.load(backend.compile(lite0_fp16, f16), f16).providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize("flags, says", [
    (("--precision", "f16", "--backend", "onnxruntime"), "--precision f16.*--fp16"),
    (("--int8", "--int8-float", "fp16", "--backend", "onnxruntime"), "FP16 float parts.*ONNX Runtime's CPU provider"),
    (("--int8", "--int8-float", "fp16", "--backend", "openvino"), "FP16 float parts.*OpenVINO's ONNX frontend"),
])
def test_what_a_backend_cannot_run_is_refused_before_anything_is_built(tmp_path, flags, says):
    import re

    from conftest import run_cli

    done = run_cli("bench", "efficientnet_lite0", *flags, "--artifacts", str(tmp_path / "exported"), cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and re.search(says, lines[0]), done.stderr
    assert not (tmp_path / "exported").exists()  # refused before the export


def test_onnxruntime_tensorrt_provider_reads_precision_from_the_graph(tmp_path):
    """Engine and timing caches beside the artifact; none of TensorRT's weak-typing flags."""
    from edgekit.backends.onnxruntime import _providers

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    (name, options), *rest = _providers("tensorrt", gpu, tmp_path)
    assert name == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert not {"trt_fp16_enable", "trt_int8_enable", "trt_bf16_enable"} & set(options)


def test_onnxruntime_machine_facts_name_the_int8_cpu_form():
    from edgekit.backends.int8_cpu_form import FORM_MEANS, int8_dot_product_flags, weight_form

    facts = get_backend("onnxruntime").machine_facts()
    assert facts["installed"] and "CPUExecutionProvider" in facts["providers"] and "cpu" in facts["devices"]
    form = facts["int8_cpu_form"]
    assert form["form"] == weight_form() and form["means"] == FORM_MEANS[weight_form()]
    assert all(flag in form["decided_by"] for flag in int8_dot_product_flags())
    assert facts["fp16_conv_on_cpu"] in ("fp16", "fp32")


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_onnxruntime_gpu_providers_run_every_compute_node_on_the_gpu(device, lite0_artifact, lite0_int8, lite0_fp16):
    import onnxruntime as ort

    from edgekit.backends.onnxruntime import DEVICE_PROVIDERS

    if DEVICE_PROVIDERS[device] not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no {DEVICE_PROVIDERS[device]}")
    backend = get_backend("onnxruntime")
    options = BackendOptions(device=device)
    for artifact in (lite0_artifact, lite0_int8, lite0_fp16):
        compiled = backend.compile(artifact, options)
        report = backend.layer_report(compiled, options)
        asked = asked_precision(compiled.onnx_path)
        assert mismatches(asked, report) == [] and substitutions(asked, report) == []
        assert all(f.where in report.expected_where for f in report.layers if set(f.covers) & set(asked))
        backend.load(compiled, options)  # the same check, before timing


# --------------------------------------------------------------------------- OpenVINO


@pytest.fixture(scope="module")
def openvino():
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    return get_backend("openvino")


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_openvino_runs_every_compute_node_as_asked(which, openvino, lite0_artifact, lite0_int8):
    compiled = openvino.compile(lite0_artifact if which == "fp32" else lite0_int8, CPU)
    session = openvino.load(compiled, CPU)  # checked at load: a mismatch would have raised
    report = session.layer_report
    asked = asked_precision(compiled.onnx_path)
    assert session.asked == asked and "inference precision f32" in session.precision
    assert mismatches(asked, report) == [] and substitutions(asked, report) == []
    covered_once(report, compiled.onnx_path)
    computing = [f for f in report.layers if set(f.covers) & set(asked)]
    assert {f.ran for f in computing} == {which} and {f.where for f in computing} == {"CPU"}
    if which == "int8":  # integer kernels (brgconv_avx512_amx_1x1_I8, brgemm_avx512_amx_I8 here)
        assert all("i8" in f.note.lower() for f in computing)


def test_openvino_default_bf16_is_a_mismatch_and_asked_bf16_a_substitution(openvino, lite0_artifact):
    """OpenVINO left to itself runs an FP32 graph in bf16 on CPUs that have it: reported as
    a mismatch; --precision bf16 asks for it, so it is a declared substitution."""

    from edgekit.backends.openvino import capabilities, read_graph_facts, runtime_layer_report, shared_core

    core = shared_core()
    if "BF16" not in capabilities(core, "CPU"):
        pytest.skip("this CPU has no bf16 arithmetic: OpenVINO's default is f32 here")
    compiled = openvino.compile(lite0_artifact, CPU)
    xml = compiled.path / compiled.manifest["files"]["openvino_xml"]
    graph = read_graph_facts(xml)  # made with the IR
    asked = asked_precision(compiled.onnx_path)
    assert graph["asked"] == asked
    report = runtime_layer_report(core.compile_model(str(xml), "CPU"), "CPU", graph)  # no INFERENCE_PRECISION_HINT: OpenVINO's own choice
    found = mismatches(asked, report)
    assert len(found) == len(asked) and all("ran in bf16; the graph asks fp32" in line for line in found)

    bf16 = BackendOptions(threads=1, own={"precision": "bf16"})
    session = openvino.load(openvino.compile(lite0_artifact, bf16), bf16)
    assert mismatches(asked, session.layer_report) == []
    assert substitutions(asked, session.layer_report) == [f"{len(asked)} compute node(s) asked fp32 ran bf16: --precision bf16, as asked"]


def test_openvino_runs_an_fp16_graph_in_fp16(openvino, lite0_fp16, lite0_artifact, views):

    from edgekit.backends.openvino import capabilities, shared_core

    if "FP16" not in capabilities(shared_core(), "CPU"):
        with pytest.raises(UsageError, match="no FP16 arithmetic.*--precision f32"):
            openvino.load(openvino.compile(lite0_fp16, CPU), CPU)
        return
    session = openvino.load(openvino.compile(lite0_fp16, CPU), CPU)
    asked = session.asked
    assert "inference precision f16" in session.precision
    assert {f.ran for f in session.layer_report.layers if set(f.covers) & set(asked)} == {"fp16"}
    assert mismatches(asked, session.layer_report) == []
    reference = get_backend("onnxruntime").load(lite0_artifact, CPU).run(views)
    assert (session.run(views).argmax(1) == reference.argmax(1)).mean() >= 0.75

    f32 = BackendOptions(threads=1, own={"precision": "f32"})
    as_f32 = openvino.load(openvino.compile(lite0_fp16, f32), f32)
    assert "inference precision f32" in as_f32.precision and mismatches(asked, as_f32.layer_report) == []
    assert substitutions(asked, as_f32.layer_report) == [f"{len(asked)} compute node(s) asked fp16 ran fp32: --precision f32, as asked: FP16 weights decompressed, FP32 arithmetic"]


def test_openvino_machine_facts_name_devices_and_capabilities(openvino):
    facts = openvino.machine_facts()
    cpu = facts["device_details"]["CPU"]
    assert facts["installed"] and "CPU" in facts["devices"] and cpu["name"]
    assert "FP32" in cpu["optimization_capabilities"]
    assert cpu["edgekit_asks"]["fp32 graph"] == "f32"
    assert cpu["edgekit_asks"]["fp16 graph"] == ("f16" if "FP16" in cpu["optimization_capabilities"] else cpu["edgekit_asks"]["fp16 graph"])


def test_openvino_report_needs_no_copy_of_the_ir(openvino, lite0_artifact, tmp_path):
    """The backend's layer_report (what `edgekit doctor` reads) is the unchecked report of the same compiled model."""
    folder = tmp_path / "lite0"
    shutil.copytree(lite0_artifact.path, folder, ignore=shutil.ignore_patterns("openvino"))
    artifact = Artifact(path=folder, manifest=lite0_artifact.manifest)
    report = openvino.layer_report(openvino.compile(artifact, CPU), CPU)
    assert report.backend == "openvino" and report.facts["inference_precision"] == "f32"
    covered_once(report, artifact.onnx_path)
