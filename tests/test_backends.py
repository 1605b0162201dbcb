"""One contract for every registered backend, run for real on a real exported model."""

import numpy as np
import pytest

from edgekit.backends import BACKENDS, BackendOptions, get_backend
from edgekit.backends.base import deployable_backends, require_module
from edgekit.core import BackendUnavailableError, UsageError
from edgekit.data import load_all, resolve_images


@pytest.fixture(scope="module")
def images(tiny_artifact):
    x, _ = load_all(resolve_images(views_per_image=2, limit=4), tiny_artifact.preprocessing)
    return x


@pytest.fixture(scope="module")
def pytorch_logits(tiny_artifact, images):
    session = get_backend("pytorch").load(tiny_artifact, BackendOptions())
    return session.run(images)


@pytest.mark.parametrize("name", BACKENDS.names())
def test_backend_contract(name, tiny_artifact, images, pytorch_logits):
    backend = get_backend(name)
    try:
        backend.check_available()
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    compiled = backend.compile(tiny_artifact, BackendOptions(threads=1))
    session = backend.load(compiled, BackendOptions(threads=1))
    assert session.precision and session.providers
    one = session.run(images[:1])
    many = session.run(images)
    assert one.shape == (1, 1000) and many.shape == (len(images), 1000)
    assert many.dtype == np.float32
    np.testing.assert_allclose(many, pytorch_logits, atol=1e-3)
    np.testing.assert_allclose(one[0], many[0], atol=1e-4)
    size = backend.size_mb(compiled)
    assert size is None or size > 0


@pytest.mark.parametrize("name", deployable_backends())
def test_deploy_files_are_files_of_the_artifact(name, tiny_artifact, int8_artifact):
    """What each backend tells an application to load exists in the artifact (made where it
    is derived), for FP32 (model.onnx) and INT8 (CPU forms where the backend has them); a
    backend that converts on first use names nothing at export."""
    if get_backend(name).converts_on_first_use:
        assert get_backend(name).deploy_files(tiny_artifact) == ()
        return
    for artifact in (tiny_artifact, int8_artifact):
        files = get_backend(name).deploy_files(artifact)
        assert files and all(f.runtime == name and (artifact.path / f.file).is_file() for f in files)
    assert [f.file for f in get_backend(name).deploy_files(tiny_artifact)] == ["model.onnx"]


def test_missing_runtime_names_the_extra():
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgekit\[openvino\]'"):
        require_module("edgekit_no_such_runtime", "openvino", "openvino")


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(UsageError, match="known: pytorch, onnxruntime, openvino, tensorrt|did you mean"):
        get_backend("tensorrtt")


def test_onnxruntime_without_cuda_says_so(tiny_artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(UsageError, match="no CUDAExecutionProvider here.*onnxruntime-gpu"):
        get_backend("onnxruntime").load(tiny_artifact, BackendOptions(device="cuda"))
