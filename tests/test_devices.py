"""--device: what each backend has on this machine, checked before any work; the
per-backend form; the device each row ran on recorded; runs elsewhere keep their own check.

Real backends on this machine's CPU (no GPU needed): a GPU device is what is missing here,
so the tests skip where a machine has one.
"""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, run_cli
from edgekit.backends import BackendOptions, get_backend
from edgekit.backends.base import check_devices, parse_devices
from edgekit.core import BenchResult, EdgekitError, UsageError

TINY = ("mobilenet_v3_small", "--random-init", "--input-size", "64")
QUICK = ("--views", "1", "--iterations", "2", "--warmup", "0", "--power", "off")


def _has(backend: str, device: str) -> bool:
    b = get_backend(backend)
    return b.has_device(device, b.devices())


# --------------------------------------------------------------------------- the form


def test_the_forms_parse_once():
    assert parse_devices(None) == (None, {}) and parse_devices("") == (None, {})
    assert parse_devices("gpu") == ("gpu", {})
    assert parse_devices("openvino:GPU, onnxruntime:cuda") == (None, {"openvino": "GPU", "onnxruntime": "cuda"})
    assert parse_devices("cuda,pytorch:cuda") == ("cuda", {"pytorch": "cuda"})
    with pytest.raises(UsageError, match="one device for every backend.*BACKEND:DEVICE"):
        parse_devices("gpu,npu")
    with pytest.raises(UsageError, match="--device openvno:gpu: unknown backend 'openvno'; did you mean openvino"):
        parse_devices("openvno:gpu")
    with pytest.raises(UsageError, match="openvino is given two devices"):
        parse_devices("openvino:gpu,openvino:npu")


def test_a_bare_device_applies_to_all_but_the_pytorch_baseline():
    bare = BackendOptions(device="cuda")
    assert get_backend("pytorch").device_for(bare) == "cpu"
    assert get_backend("onnxruntime").device_for(bare) == "cuda"
    assert get_backend("tensorrt").device_for(bare) == "cuda"
    named = BackendOptions(device="gpu,pytorch:cuda,onnxruntime:CUDA")
    assert get_backend("pytorch").device_for(named) == "cuda"
    assert get_backend("onnxruntime").device_for(named) == "cuda"
    assert get_backend("openvino").device_for(named) == "GPU"  # OpenVINO's spelling
    default = BackendOptions()
    assert [get_backend(n).device_for(default) for n in ("pytorch", "onnxruntime", "openvino", "tensorrt")] == ["cpu", "cpu", "CPU", "cuda"]


def test_each_backend_lists_its_devices_here():
    assert "cpu" in get_backend("pytorch").devices()
    assert "cpu" in get_backend("onnxruntime").devices()
    assert "CPU" in get_backend("openvino").devices()
    check_devices("cpu", ("pytorch", "onnxruntime", "openvino"))  # the CPU everywhere: nothing to refuse
    check_devices("onnxruntime:cpu,openvino:cpu", ("pytorch", "onnxruntime", "openvino"))


def test_the_error_lists_what_each_backend_has():
    if _has("openvino", "gpu") or _has("onnxruntime", "cuda"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(UsageError) as e:
        check_devices("gpu", ("pytorch", "onnxruntime", "openvino"))
    message = str(e.value)
    assert message.startswith("--device gpu: ") and "\n" not in message
    assert "onnxruntime has no device 'gpu' here (available: cpu; install onnxruntime-gpu for cuda" in message
    assert "openvino has no device 'GPU' here (available: CPU)" in message
    assert "pytorch" not in message  # the baseline stays on the CPU: nothing to refuse
    with pytest.raises(UsageError, match="applies to no backend here: pytorch keeps its own device unless named, e.g. --device pytorch:cuda"):
        check_devices("cuda", ("pytorch",))
    with pytest.raises(UsageError, match="openvino is not among the backends \\(onnxruntime\\); add --backend openvino"):
        check_devices("openvino:cpu", ("onnxruntime",))
    check_devices("openvino:npu", ("onnxruntime",), named_must_run=False)  # on a device: a bundle's default may name more


# --------------------------------------------------------------------------- before any work


@pytest.mark.parametrize("extra", [(), ("--int8",)])
def test_gpu_here_fails_before_any_build(tmp_path, extra):
    """The reported case: `bench ... --device gpu` built (and quantized) first, then printed
    FAILED rows. Now nothing is exported: the artifacts folder is never made."""
    if _has("openvino", "gpu"):
        pytest.skip("OpenVINO sees a GPU here")
    artifacts = tmp_path / "artifacts"
    proc = run_cli("bench", *TINY, *extra, "--backend", "pytorch,openvino", "--device", "gpu", *QUICK, "--artifacts", str(artifacts), cwd=tmp_path)
    assert_one_line_error(proc, "--device gpu: openvino has no device 'GPU' here (available: CPU)", code=2)
    assert not artifacts.exists() and not list(tmp_path.glob("**/*.json"))


def test_a_named_device_for_a_backend_not_run_is_refused(tmp_path):
    artifacts = tmp_path / "artifacts"
    proc = run_cli("bench", *TINY, "--backend", "onnxruntime", "--device", "openvino:cpu", *QUICK, "--artifacts", str(artifacts), cwd=tmp_path)
    assert_one_line_error(proc, "openvino is not among the backends", code=2)
    assert not artifacts.exists()


def test_profile_checks_too(tmp_path):
    if _has("onnxruntime", "cuda"):
        pytest.skip("ONNX Runtime has CUDA here")
    artifacts = tmp_path / "artifacts"
    proc = run_cli("profile", *TINY, "--backend", "onnxruntime", "--device", "onnxruntime:cuda", "--artifacts", str(artifacts), cwd=tmp_path)
    assert_one_line_error(proc, "--device onnxruntime:cuda: onnxruntime has no device 'cuda' here (available: cpu; install onnxruntime-gpu", code=2)
    assert not artifacts.exists()


# --------------------------------------------------------------------------- the rows say where they ran


def test_the_per_backend_form_runs_and_each_row_records_its_device(tiny_artifact):
    from edgekit.data import ImageRequest
    from edgekit.session import BenchRequest, run_bench
    from edgekit.timing import TimingOptions

    request = BenchRequest(
        backends=("pytorch", "onnxruntime", "openvino"), options=BackendOptions(device="cpu,openvino:cpu"),
        timing=TimingOptions(iterations=2, warmup=0), images=ImageRequest(views_per_image=1, view_stride=2), power="off",
    )
    run = run_bench(tiny_artifact, request)
    rows = {r.backend: r for r in run.results}
    assert not run.failed, [r.error for r in run.failed]
    assert {name: r.environment["device"] for name, r in rows.items()} == {"pytorch": "cpu", "onnxruntime": "cpu", "openvino": "CPU"}
    assert rows["onnxruntime"].providers == ("CPUExecutionProvider",)


def test_a_device_missing_on_the_machine_that_times_fails_before_timing(tiny_artifact):
    """Where the far side checks (a bundle's runner, a Ray node): check_request and the worker
    refuse before anything is compiled or timed, with the same one line."""
    from edgekit.data import ImageRequest
    from edgekit.session import BenchRequest, check_request, evaluation_set, run_session

    if _has("openvino", "npu"):
        pytest.skip("OpenVINO sees an NPU here")
    request = BenchRequest(backends=("openvino",), options=BackendOptions(device="openvino:npu"), images=ImageRequest(views_per_image=1, view_stride=3), power="off")
    with pytest.raises(UsageError, match="--device openvino:npu: openvino has no device 'NPU' here \\(available: CPU\\)"):
        check_request(tiny_artifact, request)
    run = run_session(tiny_artifact, evaluation_set(tiny_artifact, request.images), request, run_original=False)
    (row,) = run.results
    assert row.error and "openvino has no device 'NPU' here" in row.error and not row.latency


def test_onnxruntime_refuses_a_provider_it_dropped():
    """onnxruntime-gpu without its CUDA libraries falls back to the CPU with a warning: that
    session is refused, not timed as 'cuda'."""
    from edgekit.backends.onnxruntime import _check_in_use

    _check_in_use("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(UsageError, match="could not start CUDAExecutionProvider for --device cuda.*CPUExecutionProvider"):
        _check_in_use("cuda", ("CPUExecutionProvider",))


# --------------------------------------------------------------------------- elsewhere: remote, bundles


def test_a_remote_run_leaves_the_device_to_the_device(tmp_path):
    from edgekit.options import Settings
    from edgekit.launch import launcher_for
    from edgekit.plan import command_cell

    settings = Settings(remote="me@jetson.local", device="onnxruntime:tensorrt", backends=("pytorch", "onnxruntime"))
    command_cell("mobilenet_v3_small", settings)  # not checked here: this machine is not the device
    with pytest.raises(UsageError, match="--device pytorch:cuda: pytorch does not run on me@jetson.local"):
        launcher_for(settings.replace(device="pytorch:cuda")).check(("pytorch", "onnxruntime"))


def test_the_runner_argv_carries_the_per_backend_form():
    from edgekit.device_runner import _bundle_device, _parser
    from edgekit.options import Settings, runner_argv

    settings = Settings(device="openvino:GPU,onnxruntime:cuda")
    argv = runner_argv(settings)
    assert argv[argv.index("--device") + 1] == "openvino:GPU,onnxruntime:cuda"
    assert _parser().parse_args(["bench", *argv]).device == "openvino:GPU,onnxruntime:cuda"
    assert "--device" not in runner_argv(Settings())  # none given: the bundle's own
    # a bundle made before per-backend devices recorded 'cpu' for "none given"
    assert _bundle_device({"device": "cpu"}) is None and _bundle_device({}) is None
    assert _bundle_device({"device": "openvino:gpu"}) == "openvino:gpu"


# --------------------------------------------------------------------------- the failure line


def _document(path, rows):
    path.write_text(json.dumps({"results": [r.to_dict() for r in rows]}))
    return path


def test_failed_rows_never_claim_saved_rows_that_are_not_there(tmp_path):
    from edgekit.api import raise_if_failed as _exit_if_failed

    failed = [BenchResult.failed("m", name, "fp32", "k", "no GPU") for name in ("pytorch", "openvino")]
    path = _document(tmp_path / "none.json", failed)
    with pytest.raises(EdgekitError) as e:
        _exit_if_failed(failed, path)
    assert "no row was measured" in str(e.value) and "were saved" not in str(e.value)

    ok = BenchResult.from_dict({**failed[0].to_dict(), "backend": "onnxruntime", "error": None})
    path = _document(tmp_path / "one.json", [ok, failed[1]])
    with pytest.raises(EdgekitError, match="the other rows were saved to .*one.json: 1 measured"):
        _exit_if_failed(failed[1:], path)
