import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (setup.cfg: two workers, --dist loadfile) a test file is one unit
    of work, so its module- and session-scoped fixtures (a recipe run, a bench, a bundle)
    are made once, and tests that must not overlap stay in one file, one after another
    (tests/test_cluster.py: xdist_group "ray"). Files holding such a group are handed out
    first, so the longest unit starts at once while the other worker takes the remaining
    files in their usual order (--no-loadscope-reorder). Every worker sorts alike, as xdist
    requires; without xdist nothing moves. (--dist loadgroup would group by the mark alone,
    but pytest-xdist 3.8 cannot rename pytest 9's node ids, so its groups are ignored.)"""
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    grouped = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("xdist_group") is not None}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in grouped)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600, process: bool = False) -> subprocess.CompletedProcess:
    """Run the `edgekit` command line: in this process through click's CliRunner (fast:
    torch is imported once per session), or with ``process=True`` as the real entry point
    in a fresh process (the no-traceback guarantee end to end). Either way a
    CompletedProcess; an exception that escapes in-process is put in stderr as the
    traceback a process would have printed."""
    import os

    if process:
        full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "edgekit.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        )
    import traceback

    from click.testing import CliRunner

    from edgekit.cli import main

    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner(env=env).invoke(main, list(args), prog_name="edgekit")
    finally:
        os.chdir(previous)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["edgekit", *args], result.exit_code, result.stdout, stderr)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int | None = None) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(autouse=True, scope="session")
def _image_cache_in_tmp(tmp_path_factory):
    """Decoded images cached in this run's own folder, never the user's ~/.cache (and no
    entry from an earlier run answers for this one)."""
    os.environ.setdefault("EDGEKIT_CACHE", str(tmp_path_factory.mktemp("edgekit-cache")))


@pytest.fixture(scope="session")
def exported_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exported")


@pytest.fixture(scope="session")
def tiny_artifact(exported_root):
    """A small real torchvision model (random init, 64 px) exported once per session."""
    from edgekit.steps.export import ModelRequest, build_artifact

    artifact, _ = build_artifact(ModelRequest("mobilenet_v3_small", random_init=True, input_size=64), root=exported_root)
    return artifact


@pytest.fixture(scope="session")
def lite0_artifact(exported_root):
    """EfficientNet-Lite0 with its real ImageNet weights."""
    from edgekit.steps.export import ModelRequest, build_artifact

    artifact, _ = build_artifact(ModelRequest("efficientnet_lite0"), root=exported_root)
    return artifact


@pytest.fixture(scope="session")
def int8_artifact(tiny_artifact, exported_root):
    """The tiny model quantized quickly (minmax, one fallback node at most)."""
    from edgekit.data import default_calibration
    from edgekit.transforms.quantize import Budget, QuantizeOptions
    from edgekit.steps.int8 import quantize_artifact

    fast = QuantizeOptions(method="minmax", max_fallback_nodes=1, bias_correction=False, budget=Budget(min_agreement=50.0, max_kl=None))
    artifact, _ = quantize_artifact(tiny_artifact, default_calibration().resolve(), fast, exported_root)
    return artifact


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """A CNN trained on scikit-learn's real digits, exported to ONNX, and its data."""
    from digits import export_digits_onnx, load_digits_split, train_digits_net

    folder = tmp_path_factory.mktemp("digits")
    model, accuracy = train_digits_net(seed=0)
    path = folder / "digits.onnx"
    export_digits_onnx(model, path)
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    assert accuracy >= 95.0
    return path, x_train, y_train, x_test, y_test


@pytest.fixture(scope="session")
def digits_int8(digits, tmp_path_factory):
    from edgekit.transforms.quantize import Budget, QuantizeOptions, quantize_onnx

    path, x_train, y_train, _, _ = digits
    out = tmp_path_factory.mktemp("digits-int8") / "int8.onnx"
    labels = [(int(y),) for y in y_train[:256]]
    budget = Budget(max_top1_drop=0.5, min_agreement=None, max_kl=None)  # on true labels
    report = quantize_onnx(path, out, x_train[:256], labels, QuantizeOptions(method="percentile", budget=budget))
    return out, report
