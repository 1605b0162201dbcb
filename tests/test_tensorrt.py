"""TensorRT: engine manifest, rebuild decisions and options everywhere; engines where a GPU is."""

import importlib.util

import pytest

from edgekit.backends.tensorrt import EngineSpec, builder_flags, parse_workspace, profile_batches, why_rebuild
from edgekit.core import UsageError


def _has_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _has_gpu(), reason="TensorRT engines need the tensorrt package and an NVIDIA GPU")

BUILT = {
    "engine_format": 1, "tensorrt": "11.0.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
    "source_sha256": "abc", "flags": ["FP16", "INT8"], "spec": {"precision": "int8", "batch": [1, 128, 128]},
}


def test_an_engine_for_this_machine_is_reused():
    assert why_rebuild(BUILT, dict(BUILT)) is None


@pytest.mark.parametrize(
    "key, value",
    [("tensorrt", "11.1.0"), ("gpu", "NVIDIA A100-SXM4-40GB"), ("compute_capability", "8.7"), ("source_sha256", "def"), ("flags", ["FP16"])],
)
def test_an_engine_built_elsewhere_is_rebuilt_with_the_reason(key, value):
    reason = why_rebuild(BUILT, {**BUILT, key: value})
    assert reason is not None and reason.startswith(f"{key} changed")


def test_no_engine_yet():
    assert why_rebuild(None, BUILT) == "no engine yet"


def test_profiles_workspace_and_flags():
    assert profile_batches([8, 1, 128]) == (1, 128, 128)
    assert profile_batches([1]) == (1, 1, 1)
    with pytest.raises(UsageError):
        profile_batches([0])
    assert parse_workspace("4GiB") == 4 << 30
    assert parse_workspace("512MiB") == 512 << 20
    assert parse_workspace("1024") == 1024
    with pytest.raises(UsageError, match="workspace must look like"):
        parse_workspace("lots")
    assert builder_flags("int8") == ["INT8", "FP16"] and builder_flags("fp32") == []
    assert EngineSpec("int8", 1, 128, 128).name == "int8-b1-128-128"


def test_without_a_gpu_the_backend_says_so(tiny_artifact):
    from edgekit.backends import BackendOptions, get_backend
    from edgekit.core import BackendUnavailableError

    if _has_gpu():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        get_backend("tensorrt").compile(tiny_artifact, BackendOptions())


@needs_gpu
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
    providers = _providers("tensorrt", gpu, tmp_path, fp16=True)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_fp16_enable"] is True and options["trt_engine_cache_path"] == str(tmp_path)
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
