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
