"""TensorRT: typing against the real TensorRT Python API where it imports, the engine
inspector's JSON, precision checks, engine manifest, rebuild decisions and options
everywhere; engines where a GPU is."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.backends.tensorrt import (
    EngineSpec,
    GraphPrecision,
    Typing,
    builder_flags,
    check_precision_option,
    covered_nodes,
    datatype_word,
    engine_report,
    jetson_note,
    parse_workspace,
    precision_summary,
    profile_batches,
    raise_on_mismatch,
    typing_of,
    why_rebuild,
)
from edgekit.core import UsageError
from edgekit.layer_precision import mismatches

REPO = Path(__file__).resolve().parent.parent


def _has_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _has_gpu(), reason="TensorRT engines need the tensorrt package and an NVIDIA GPU")

BUILT = {
    "engine_format": 3, "tensorrt": "11.4.0.106", "typing": "strong", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
    "source_sha256": "abc", "flags": [], "cleared_flags": ["TF32"], "spec": {"precision": "int8", "batch": [1, 128, 128]},
}


def test_an_engine_for_this_machine_is_reused():
    assert why_rebuild(BUILT, dict(BUILT)) is None


@pytest.mark.parametrize(
    "key, value",
    [("tensorrt", "10.16.1.11"), ("typing", "weak"), ("gpu", "NVIDIA A100-SXM4-40GB"), ("compute_capability", "8.7"), ("source_sha256", "def"),
     ("flags", ["FP16"]), ("cleared_flags", []), ("engine_format", 2)],
)
def test_an_engine_built_elsewhere_is_rebuilt_with_the_reason(key, value):
    reason = why_rebuild(BUILT, {**BUILT, key: value})
    assert reason is not None and reason.startswith(f"{key} changed")


def test_no_engine_yet():
    assert why_rebuild(None, BUILT) == "no engine yet"


def test_profiles_and_workspace():
    assert profile_batches([8, 1, 128]) == (1, 128, 128)
    assert profile_batches([1]) == (1, 1, 8)  # the views stream through at batch 8 before timing
    assert profile_batches([32]) == (1, 32, 32)  # and the last one is smaller
    from edgekit.backends.tensorrt import STREAM_BATCH
    from edgekit.worker import EVAL_BATCH

    assert STREAM_BATCH == EVAL_BATCH
    with pytest.raises(UsageError):
        profile_batches([0])
    assert parse_workspace("4GiB") == 4 << 30
    assert parse_workspace("512MiB") == 512 << 20
    assert parse_workspace("1024") == 1024
    with pytest.raises(UsageError, match="workspace must look like"):
        parse_workspace("lots")
    assert EngineSpec("int8", 1, 128, 128).name == "int8-b1-128-128"


# ----------------------------------------------------------------------------- typing

# The API surfaces below are the names the real Python bindings define (listed from
# tensorrt_cu13_bindings 10.16.1.11 and 11.4.0.106): typing_of reads names only, so these
# describe each release for the pure decision; test_typing_on_a_real_tensorrt checks the
# real modules wherever they import.
API_8 = SimpleNamespace(__version__="8.6.1", BuilderFlag=SimpleNamespace(FP16=0, INT8=1, TF32=2), NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0))
API_10 = SimpleNamespace(__version__="10.16.1.11", BuilderFlag=SimpleNamespace(FP16=0, INT8=1, BF16=17, TF32=2),
                         NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1))
API_11 = SimpleNamespace(__version__="11.4.0.106", BuilderFlag=SimpleNamespace(TF32=2), NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0))


def test_typing_follows_the_api():
    assert typing_of(API_11) == Typing("strong", 0, typing_of(API_11).how)  # always strong; the deprecated flag is not passed
    assert typing_of(API_10).mode == "strong" and typing_of(API_10).network_flags == 1 << 1
    weak = typing_of(API_8)
    assert weak.mode == "weak" and weak.network_flags == 1 << 0  # explicit batch, as 8.x needs
    for api in (API_10, API_11):  # strongly typed: the graph decides, no builder flag
        assert builder_flags(typing_of(api), "int8", "fp16", api) == ()
    assert builder_flags(weak, "fp32", "fp32", API_8) == ()
    assert builder_flags(weak, "fp16", "fp16", API_8) == ("FP16",)
    assert builder_flags(weak, "int8", "fp32", API_8) == ("INT8",)  # float parts stay FP32 as the graph asks
    assert builder_flags(weak, "int8", "fp16", API_8) == ("INT8", "FP16")
    with pytest.raises(UsageError, match="no BuilderFlag.BF16"):  # never a flag silently left out
        builder_flags(weak, "bf16", "bf16", API_8)
    assert "\n" not in typing_of(API_8).how


def _trt_places() -> list:
    """Where a real TensorRT may import: this venv, and each folder of EDGEKIT_TRT_PATHS
    (e.g. pip install --no-deps --target /work/trt/11 tensorrt_cu13_bindings tensorrt_cu13_libs ...)."""
    places = [""] if importlib.util.find_spec("tensorrt") is not None else []
    places += [p for p in os.environ.get("EDGEKIT_TRT_PATHS", "").split(os.pathsep) if p]
    return places or [None]


TYPING_PROBE = textwrap.dedent("""
    import json
    try:
        import tensorrt as trt
    except Exception as e:
        print(json.dumps({"import_problem": f"{type(e).__name__}: {e}".splitlines()[0]}))
        raise SystemExit(0)
    from edgekit.backends.tensorrt import builder_flags, typing_of
    typing = typing_of(trt)
    print(json.dumps({
        "version": trt.__version__, "mode": typing.mode, "network_flags": typing.network_flags,
        "strongly_typed_flag": int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") else None,
        "weak_flags": [f for f in ("FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS") if hasattr(trt.BuilderFlag, f)],
        "calibrators": [n for n in dir(trt) if n.startswith("IInt8") and "Calibrator" in n],
        "tf32": hasattr(trt.BuilderFlag, "TF32"),
        "flags_for_fp16": list(builder_flags(typing, "fp16", "fp16", trt)),
    }))
""")


@pytest.mark.parametrize("place", _trt_places())
def test_typing_on_a_real_tensorrt(place):
    """The typing decision and the builder flags against a real TensorRT (no GPU needed
    to import it, only its libraries); each in a process of its own."""
    if place is None:
        pytest.skip("no TensorRT here: pip install tensorrt, or list folders holding one in EDGEKIT_TRT_PATHS")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (place, str(REPO)) if p)}
    done = subprocess.run([sys.executable, "-c", TYPING_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if "import_problem" in found:
        pytest.skip(f"TensorRT in {place or 'this venv'} does not import: {found['import_problem']}")
    major = int(found["version"].split(".")[0])
    assert found["mode"] == "strong" and found["flags_for_fp16"] == []
    if major >= 11:  # weak typing, the calibrators and the precision constraints are gone
        assert found["weak_flags"] == [] and found["calibrators"] == [] and found["network_flags"] == 0
    elif major == 10:  # strong typing is asked for with the creation flag
        assert found["strongly_typed_flag"] is not None and found["network_flags"] == 1 << found["strongly_typed_flag"]
        assert "FP16" in found["weak_flags"] and "INT8" in found["weak_flags"]
    assert found["tf32"]  # cleared so that FP32 graphs build FP32 engines


# --------------------------------------------------------------------------- the engine inspector

# Written to the engine inspector's JSON schema as TensorRT documents it and its own
# TREx reader parses it (github.com/NVIDIA/TensorRT tools/experimental/trt-engine-explorer,
# trex/layer.py and trex/activations.py): "Layers" of Name, LayerType, ParameterType,
# Metadata ("[ONNX Layer: ...]" per node, separated by \x1e), Inputs/Outputs with
# "Format/Datatype" (long descriptions with an execution context), Weights {Type, Count}.
INT8_ENGINE = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /features/0/Conv + /features/0/Relu", "LayerType": "Reformat",
         "Metadata": "[ONNX Layer: /features/0/Conv]",
         "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [8, 3, 64, 64], "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "x_q", "Location": "Device", "Dimensions": [8, 3, 64, 64], "Format/Datatype": "Four wide channel vectorized row major Int8 format"}]},
        {"Name": "/features/0/Conv + /features/0/Relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Metadata": "[ONNX Layer: /features/0/Conv]\x1e[ONNX Layer: /features/0/Relu]",
         "Inputs": [{"Name": "x_q", "Location": "Device", "Dimensions": [8, 3, 64, 64], "Format/Datatype": "Four wide channel vectorized row major Int8 format"}],
         "Outputs": [{"Name": "a", "Location": "Device", "Dimensions": [8, 16, 32, 32], "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Weights": {"Type": "Int8", "Count": 432}, "Bias": {"Type": "Float", "Count": 16}, "TacticName": "sm90_xmma_fprop_implicit_gemm_i8i8_i8i32_f32"},
        {"Name": "/features/1/DequantizeLinear", "LayerType": "Scale", "ParameterType": "Dequantize",
         "Metadata": "[ONNX Layer: /features/1/DequantizeLinear]",
         "Inputs": [{"Name": "a", "Location": "Device", "Dimensions": [8, 16, 32, 32], "Format/Datatype": "Int8"}],
         "Outputs": [{"Name": "b", "Location": "Device", "Dimensions": [8, 16, 32, 32], "Format/Datatype": "Half"}]},
        {"Name": "/classifier/Gemm", "LayerType": "CaskGemmConvolution", "ParameterType": "Convolution",
         "Metadata": "[ONNX Layer: /classifier/Gemm]",
         "Inputs": [{"Name": "b", "Location": "Device", "Dimensions": [8, 16, 1, 1], "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Outputs": [{"Name": "logits", "Location": "Device", "Dimensions": [8, 10], "Format/Datatype": "Row major linear FP32"}],
         "Weights": {"Type": "Half", "Count": 160}},
        {"Name": "{ForeignNode[/head/Cast.../head/MatMul]}", "LayerType": "Myelin",
         "Metadata": "[ONNX Layer: /head/Cast]\x1e[ONNX Layer: /head/MatMul]",
         "Inputs": [{"Name": "logits", "Location": "Device", "Dimensions": [8, 10], "Format/Datatype": "Float"}],
         "Outputs": [{"Name": "out", "Location": "Device", "Dimensions": [8, 10], "Format/Datatype": "Float"}]},
    ],
    "Bindings": ["x", "logits"],
}
ASKED = {"/features/0/Conv": "int8", "/classifier/Gemm": "fp16", "/head/MatMul": "fp16"}


def test_datatype_words_from_short_and_long_formats():
    cases = {"Half": "fp16", "Int8": "int8", "Float": "fp32", "BFloat16": "bf16", "FP8": "fp8", "Int8 NC/32HW32": "int8",
             "Channel major FP16 format where channel % 8 == 0": "fp16", "Row major linear FP32": "fp32",
             "Thirty-two wide channel vectorized row major Int8 format": "int8", "Row major linear Int32": "", "": "", None: ""}
    assert {text: datatype_word(text) for text in cases} == cases


def test_the_inspector_report_names_nodes_and_precisions():
    report = engine_report(INT8_ENGINE, "NVIDIA H100", {"typing": "strong"})
    by_name = {f.layer: f for f in report.layers}
    conv = by_name["/features/0/Conv + /features/0/Relu"]
    assert conv.covers == ("/features/0/Conv", "/features/0/Relu") and conv.ran == "int8" and "Int8" in conv.note
    assert by_name["/classifier/Gemm"].ran == "fp16"
    assert by_name["/features/1/DequantizeLinear"].ran == ""  # Q/DQ and reformats are not judged
    assert by_name["/features/1/DequantizeLinear"].covers == ()
    region = by_name["{ForeignNode[/head/Cast.../head/MatMul]}"]  # a fused region has no one precision: reported, not judged
    assert region.ran == "" and region.covers == ("/head/Cast", "/head/MatMul") and "not judged" in region.note
    assert by_name["Reformatting CopyNode for Input Tensor 0 to /features/0/Conv + /features/0/Relu"].ran == ""
    assert mismatches(ASKED, report) == []
    summary = precision_summary(ASKED, report)
    assert summary["asked"] == {"int8": 1, "fp16": 2} and summary["ran"] == {"int8": 1, "fp16": 1, "unreported": 1} and summary["mismatches"] == []
    assert [layer["ran"] for layer in summary["layers"]] == ["int8", "fp16", ""]
    json.dumps(summary)  # it goes into the engine manifest
    raise_on_mismatch(mismatches(ASKED, report), "int8-b1-8-8.engine")  # nothing to raise


def test_inspector_json_with_raw_separators_is_read():
    from edgekit.backends.tensorrt import read_inspector_json

    text = '{"Layers": [{"Name": "a", "Metadata": "[ONNX Layer: /a/Conv]\x1e[ONNX Layer: /a/Relu]"}]}'  # a raw control character
    assert covered_nodes(read_inspector_json(text)["Layers"][0]) == ("/a/Conv", "/a/Relu")
    assert read_inspector_json('{"Layers": [{"Name": "C:\\x\\y"}]}')["Layers"][0]["Name"] == "C:\\x\\y"
    with pytest.raises(UsageError, match="cannot read"):
        read_inspector_json('{"Layers": [')


def test_covered_nodes_fall_back_to_the_fused_name():
    assert covered_nodes({"Name": "/a/Conv + /a/Relu"}) == ("/a/Conv", "/a/Relu")
    assert covered_nodes({"Name": "x", "Metadata": "[ONNX Layer: /b/MatMul]"}) == ("/b/MatMul",)


def test_a_layer_at_another_precision_than_the_graph_asks_raises():
    engine = json.loads(json.dumps(INT8_ENGINE))
    conv = engine["Layers"][1]
    conv["Inputs"][0]["Format/Datatype"] = "Channel major FP16 format where channel % 8 == 0"
    conv["Weights"]["Type"] = "Half"
    found = mismatches(ASKED, engine_report(engine, "NVIDIA H100", {}))
    assert found == ["/features/0/Conv + /features/0/Relu (/features/0/Conv) ran in fp16; the graph asks int8"]
    with pytest.raises(UsageError, match=r"^TensorRT built int8-b1-8-8.engine unlike its graph: /features/0/Conv \+ /features/0/Relu") as raised:
        raise_on_mismatch(found, "int8-b1-8-8.engine")
    assert "\n" not in str(raised.value)
    many = [f"layer{i} (n{i}) ran in fp32; the graph asks fp16" for i in range(7)]
    with pytest.raises(UsageError, match="and 4 more$"):
        raise_on_mismatch(many, "fp16-b1-1-1.engine")


# --------------------------------------------------------------------------- the graph decides


def test_graph_precision_and_the_precision_option(tiny_artifact, int8_artifact, exported_root):
    from edgekit.backends.tensorrt import graph_precision
    from edgekit.steps.fp16 import fp16_artifact

    fp16, _ = fp16_artifact(tiny_artifact, exported_root)
    fp32_graph, fp16_graph, int8_graph = graph_precision(tiny_artifact), graph_precision(fp16), graph_precision(int8_artifact)
    assert (fp32_graph.word, fp32_graph.floats) == ("fp32", "fp32") and set(fp32_graph.asked.values()) == {"fp32"}
    assert fp16_graph.word == "fp16" and fp16_graph.floats == "fp16" and fp16_graph.counts().get("fp16", 0) > 0
    assert int8_graph.word == "int8" and int8_graph.counts()["int8"] > 0
    assert graph_precision(fp16) == fp16_graph  # the second read comes from the cache beside the engines
    check_precision_option(None, fp32_graph, "fp32")
    check_precision_option("f32", fp32_graph, "fp32")
    check_precision_option("f16", fp16_graph, "fp16")
    with pytest.raises(UsageError, match="edgekit export MODEL --fp16") as raised:
        check_precision_option("f16", fp32_graph, "fp32")
    assert "\n" not in str(raised.value)
    with pytest.raises(UsageError, match="--precision f32"):
        check_precision_option("f32", fp16_graph, "fp16")


def test_precision_f16_on_an_fp32_artifact_is_refused_before_any_build(tiny_artifact):
    from edgekit.backends import BackendOptions, get_backend

    with pytest.raises(UsageError, match="FP16 comes from an --fp16 artifact"):
        get_backend("tensorrt").compile(tiny_artifact, BackendOptions(own={"precision": "f16"}))


def test_a_weakly_typed_graph_precision_needs_its_flags():
    graph = GraphPrecision({"/c": "int8", "/g": "fp16"}, "fp16")
    assert graph.word == "int8" and builder_flags(typing_of(API_8), graph.word, graph.floats, API_8) == ("INT8", "FP16")


# --------------------------------------------------------------------------- `edgekit doctor`


def test_machine_facts_are_plain_values_without_a_gpu():
    from edgekit.backends import get_backend

    facts = get_backend("tensorrt").machine_facts()
    json.dumps(facts)
    for key in ("installed", "version", "devices", "problem", "tensorrt", "typing", "gpu", "compute_capability", "cuda_runtime", "driver",
                "jetson_note"):
        assert key in facts, key
    if importlib.util.find_spec("tensorrt") is None:
        assert facts["installed"] is False and facts["typing"] is None and facts["import_problem"]
    if not _has_gpu():
        assert facts["devices"] == []


def test_a_jetson_note_says_which_tensorrt_jetpack_supports():
    board = {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3", "jetpack": None}
    assert "not supported by TensorRT 11" in jetson_note(board, "11.4.0.106")
    assert "JetPack (10.x)" in jetson_note(board, "10.3.0")
    assert jetson_note(None, "11.4.0.106") is None


def test_without_a_gpu_the_backend_says_so(tiny_artifact):
    from edgekit.backends import BackendOptions, get_backend
    from edgekit.core import BackendUnavailableError

    if _has_gpu():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        get_backend("tensorrt").compile(tiny_artifact, BackendOptions())


# --------------------------------------------------------------------------- on a GPU


@needs_gpu
@pytest.mark.gpu
def test_int8_engine_from_the_qdq_artifact_matches_pytorch(int8_artifact):
    import numpy as np

    from edgekit.backends import BackendOptions, get_backend
    from edgekit.data import load_all, resolve_images

    backend = get_backend("tensorrt")
    compiled = backend.compile(int8_artifact, BackendOptions(batch_sizes=(1, 8)))
    session = backend.load(compiled, BackendOptions(batch_sizes=(1, 8)))
    x, _ = load_all(resolve_images(views_per_image=2, limit=4), int8_artifact.preprocessing)
    logits = session.run(x)
    assert logits.shape == (len(x), 1000) and np.isfinite(logits).all()
    assert session.last_compute_ms is not None and session.last_compute_ms > 0
    assert "strongly typed" in session.precision


@needs_gpu
@pytest.mark.gpu
def test_int8_engine_runs_its_quantized_convolutions_in_int8(int8_artifact):
    from edgekit.backends import BackendOptions, get_backend
    from edgekit.backends.tensorrt import graph_precision

    asked = graph_precision(int8_artifact).asked
    report = get_backend("tensorrt").layer_report(int8_artifact, BackendOptions(batch_sizes=(1, 8)))
    quantized = [f for f in report.layers if f.ran and any(asked.get(node) == "int8" for node in f.covers)]
    assert quantized and all(f.ran == "int8" for f in quantized), [(f.layer, f.ran) for f in quantized if f.ran != "int8"]
    assert mismatches(asked, report) == [] and report.facts["typing"] == "strong"


@needs_gpu
@pytest.mark.gpu
def test_fp16_engine_from_an_fp16_artifact_runs_half_except_the_kept_fp32_nodes(tiny_artifact, exported_root):
    from edgekit.backends import BackendOptions, get_backend
    from edgekit.backends.tensorrt import graph_precision
    from edgekit.steps.fp16 import fp16_artifact

    fp16, _ = fp16_artifact(tiny_artifact, exported_root)
    asked = graph_precision(fp16).asked
    report = get_backend("tensorrt").layer_report(fp16, BackendOptions(batch_sizes=(1, 8)))
    judged = [(f, {asked[node] for node in f.covers if node in asked}) for f in report.layers if f.ran and any(node in asked for node in f.covers)]
    half = [f for f, wanted in judged if wanted == {"fp16"}]
    kept = [f for f, wanted in judged if wanted == {"fp32"}]  # the nodes the fp16 step kept in FP32
    assert half and all(f.ran == "fp16" for f in half), [(f.layer, f.ran) for f in half if f.ran != "fp16"]
    assert all(f.ran == "fp32" for f in kept), [(f.layer, f.ran) for f in kept if f.ran != "fp32"]
    assert mismatches(asked, report) == []
    session = get_backend("tensorrt").load(get_backend("tensorrt").compile(fp16, BackendOptions(batch_sizes=(1,))), BackendOptions(batch_sizes=(1,)))
    assert session.precision.startswith("fp16 (TensorRT") and "strongly typed" in session.precision


@needs_gpu
@pytest.mark.gpu
def test_an_engine_unlike_the_graph_is_refused_on_load(tiny_artifact, exported_root):
    """The FP16 artifact's engine loaded as if it were its FP32 parent's: every compute layer
    ran fp16 where the FP32 graph asks fp32, so load refuses it before any timing."""
    import shutil

    from edgekit.backends import BackendOptions, get_backend
    from edgekit.core import Artifact
    from edgekit.steps.fp16 import fp16_artifact

    backend, options = get_backend("tensorrt"), BackendOptions(batch_sizes=(1,))
    fp16, _ = fp16_artifact(tiny_artifact, exported_root)
    engine = fp16.path / backend.compile(fp16, options).manifest["files"]["tensorrt_engine"]
    swapped = tiny_artifact.path / "tensorrt" / "swapped-for-test.engine"
    swapped.parent.mkdir(exist_ok=True)
    shutil.copyfile(engine, swapped)
    pretending = Artifact(path=tiny_artifact.path, manifest={**tiny_artifact.manifest, "files": {**tiny_artifact.manifest["files"], "tensorrt_engine": "tensorrt/swapped-for-test.engine"}})
    try:
        with pytest.raises(UsageError, match="unlike its graph: .*ran in fp16; the graph asks fp32"):
            backend.load(pretending, options)
    finally:
        swapped.unlink()


@needs_gpu
@pytest.mark.gpu
def test_tensorrt_layer_profile_maps_engine_layers_to_modules(int8_artifact):
    """TensorRT's layer profiler with the engine inspector's facts: every engine layer timed,
    fused layers naming the ONNX nodes they compute, rows joined to PyTorch modules."""
    from edgekit.backends import BackendOptions
    from edgekit.data import load_all, resolve_images
    from edgekit.profiling import profile_backend

    x, _ = load_all(resolve_images(views_per_image=1, limit=4), int8_artifact.preprocessing)
    profile = profile_backend(int8_artifact, "tensorrt", BackendOptions(device="cuda"), x, 1, 20, 5)
    assert profile.nodes and all(n.ms >= 0 for n in profile.nodes)
    assert any(len(n.covers) > 1 for n in profile.nodes)  # fusions name what they cover
    assert profile.joined_by == "module" and any(m.module.startswith("features.") for m in profile.modules)
    assert 0.5 < profile.attributed <= 1.1


# ------------------------------------------------- ONNX Runtime's CUDA / TensorRT providers


def test_onnxruntime_tensorrt_provider_options(tmp_path):
    from edgekit.backends.onnxruntime import _providers

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = _providers("tensorrt", gpu, tmp_path)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_engine_cache_path"] == str(tmp_path)
    assert not {"trt_fp16_enable", "trt_int8_enable"} & set(options)  # precision comes from the graph (TensorRT 11: strongly typed)
    assert _providers("cuda", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(UsageError, match="cpu, cuda or tensorrt"):
        _providers("gpu", gpu)


def test_missing_gpu_providers_name_the_package():
    import onnxruntime as ort

    from edgekit.backends.onnxruntime import _providers

    available = ort.get_available_providers()
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if provider in available:
            continue
        with pytest.raises(UsageError, match="onnxruntime-gpu"):
            _providers(device, available)


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-gpu and an NVIDIA GPU",
)
def test_onnxruntime_cuda_provider_matches_cpu(tiny_artifact):
    import numpy as np

    from edgekit.backends import BackendOptions, get_backend

    backend = get_backend("onnxruntime")
    x = np.random.default_rng(0).standard_normal((2, *tiny_artifact.manifest["input"]["shape"][1:])).astype(np.float32)
    cpu = backend.load(tiny_artifact, BackendOptions()).run(x)
    cuda = backend.load(tiny_artifact, BackendOptions(device="cuda"))
    assert "CUDAExecutionProvider" in cuda.providers
    assert np.allclose(cuda.run(x), cpu, atol=1e-3)


# --------------------------------------------------------------------------- trtexec


def test_trtexec_summary_is_parsed_from_a_real_log():
    from pathlib import Path

    from edgekit.backends.trtexec import parse_summary

    summary = parse_summary((Path(__file__).parent / "data" / "trtexec" / "tensorrt_issue_4177.txt").read_text())
    assert summary.throughput_qps == 130.298
    compute = summary.metrics["GPU Compute Time"]
    assert compute["median"] == 7.14139 and compute["mean"] == 7.58404 and compute["p99"] == 12.9485 and compute["p90"] == 10.2881
    assert summary.median_ms() == 7.14139 and summary.median_ms("Latency") == 7.16092
    assert set(summary.metrics) == {"Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency"}


def test_trtexec_without_a_summary_is_an_error():
    from edgekit.backends.trtexec import parse_summary
    from edgekit.core import EdgekitError

    with pytest.raises(EdgekitError, match="no performance summary"):
        parse_summary("&&&& FAILED TensorRT.trtexec [TensorRT v100200]\n")


def test_device_time_is_reported_beside_end_to_end_time():
    from rich.console import Console

    from edgekit.core import BenchResult, LatencyStats
    from edgekit.results.tables import device_time_table, has_device_time

    latency = LatencyStats(batch_size=128, iterations=100, p50_ms=2.4, p90_ms=2.5, p99_ms=2.6, mean_ms=2.45, throughput_ips=128000 / 2.45,
                           compute_p50_ms=1.6, compute_mean_ms=1.6)
    result = BenchResult(model="resnet50", backend="tensorrt", variant="int8", artifact_key="k", precision="int8", providers=(), threads=None,
                         latency=(latency,), peak_rss_mb=900.0, size_mb=26.0, accuracy=None, gpu_memory_mb=1234.0)
    assert has_device_time([result]) and BenchResult.from_dict(result.to_dict()) == result
    console = Console(record=True, width=200)
    console.print(device_time_table([result]))
    text = console.export_text()
    assert "1.600" in text and "2.400" in text and "80000" in text and "1234" in text  # 128 / 1.6 ms = 80,000 img/s
