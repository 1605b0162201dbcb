"""`edgekit bundle` and the runner inside it: a bundle runs where torch cannot be imported
(its Python blocks the import), checks its own files, and reports what `edgekit bench` does."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli

# Installed as sitecustomize in every Python the tests start for a bundle (the runner and
# the workers it spawns): imports of EDGEKIT_TEST_BLOCK fail as if the package were
# absent, and with EDGEKIT_TEST_MODULES each process records what it imported.
BLOCKER = '''
import atexit, json, os, sys

_BLOCKED = {name for name in os.environ.get("EDGEKIT_TEST_BLOCK", "").split(",") if name}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
_LOG = os.environ.get("EDGEKIT_TEST_MODULES")
if _LOG:
    def _record():
        edgekit = sys.modules.get("edgekit")
        with open(f"{_LOG}.{os.getpid()}", "w") as f:
            json.dump({"modules": sorted(sys.modules), "edgekit": getattr(edgekit, "__file__", None), "argv": sys.argv}, f)
    atexit.register(_record)
'''


@pytest.fixture(scope="session")
def blocker_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return folder


def run_runner(bundle: Path, blocker_dir: Path, *args: str, block=("torch",), log: Path | None = None) -> subprocess.CompletedProcess:
    """`cd BUNDLE && python -m edgekit.device_runner ...` with nothing of the repository on
    the path and ``block`` unimportable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEKIT_TEST_MODULES")}
    env.update(PYTHONPATH=str(blocker_dir), EDGEKIT_TEST_BLOCK=",".join(block))
    if log is not None:
        env["EDGEKIT_TEST_MODULES"] = str(log)
    return subprocess.run(
        [sys.executable, "-m", "edgekit.device_runner", *args], check=False, cwd=bundle, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="session")
def bundle_dir(tiny_artifact, tmp_path_factory) -> Path:
    """The tiny model bundled for all three backends, one view of each bundled photo."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime,openvino", "--backend", "tensorrt", "-o", str(out), "--views", "1", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[0] == str(out)
    assert "cd tiny && python3 -m edgekit.device_runner bench" in proc.stderr
    return out


def pristine_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("results*.json", "openvino", "__pycache__"))
    return dest


def test_bundle_lists_every_file_with_its_hash(bundle_dir, tiny_artifact):
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert set(meta["files"]) | {"bundle.json"} >= on_disk - {"results.json"}
    for name, digest in meta["files"].items():
        assert hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest() == digest, name
    assert meta["backends"] == ["onnxruntime", "openvino", "tensorrt"]
    assert meta["artifact_key"] == tiny_artifact.key and meta["preprocessing"]["input_size"] == 64
    assert json.loads((bundle_dir / "preprocessing.json").read_text()) == tiny_artifact.manifest["preprocessing"]
    # the held-out (even) views, one per bundled photo, with their licences, in order
    views = meta["images"]["views"]
    assert len(views) == 7 and {v["view"] for v in views} == {0} and all(v["labels"] for v in views)
    assert (bundle_dir / "images" / "LICENCES.md").is_file()
    assert meta["reference"]["shape"] == [7, 1000] and meta["reference"]["backend"] == "pytorch"
    # the runner is edgekit's own torch-free modules, copied; nothing that needs torch
    vendored = {p.relative_to(bundle_dir / "edgekit").as_posix() for p in (bundle_dir / "edgekit").rglob("*.py")}
    assert {"core.py", "data/__init__.py", "data/decode.py", "timing.py", "session.py", "results/tables.py", "results/document.py", "worker.py", "device_runner.py", "backends/tensorrt.py"} <= vendored
    assert not {"models/__init__.py", "onnx_export.py", "plan.py", "steps/export.py", "cli.py", "backends/pytorch.py", "bundle.py", "results/site.py"} & vendored
    for name in vendored:
        assert (bundle_dir / "edgekit" / name).read_bytes() == (Path(__file__).parent.parent / "edgekit" / name).read_bytes()
    assert "python3 -m edgekit.device_runner bench" in (bundle_dir / "README.txt").read_text()


def test_runner_without_torch_reports_like_local_bench(bundle_dir, blocker_dir, tiny_artifact, tmp_path):
    from edgekit.backends import BackendOptions
    from edgekit.timing import TimingOptions
    from edgekit.core import BenchResult
    from edgekit.session import BenchRequest, run_bench
    from edgekit.data import ImageRequest
    from edgekit.results.document import results_document, write_json

    device_json = tmp_path / "device.json"
    proc = run_runner(bundle_dir, blocker_dir, "bench", "--backend", "onnxruntime", "--iterations", "3", "--warmup", "1", "--batch", "1", "--batch", "2",
                      "--power", "off", "--json", str(device_json), log=tmp_path / "modules")
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" in proc.stdout and "p50 ms" in proc.stdout
    processes = [json.loads(p.read_text()) for p in tmp_path.glob("modules.*")]
    assert len(processes) == 2  # the runner and the onnxruntime worker it spawned
    for loaded in processes:
        assert "torch" not in loaded["modules"] and "click" not in loaded["modules"] and "rich" not in loaded["modules"]
        assert Path(loaded["edgekit"]).resolve().is_relative_to(bundle_dir.resolve())  # the bundle's copy, not the repository
    assert any("onnxruntime" in loaded["modules"] for loaded in processes)

    device = json.loads(device_json.read_text())
    (row,) = [BenchResult.from_dict(r) for r in device["results"]]
    assert row.backend == "onnxruntime" and [lat.batch_size for lat in row.latency] == [1, 2]
    assert row.accuracy.images == 7 and row.accuracy.agreement == 100.0 and row.accuracy.mean_kl < 1e-9
    assert row.environment["host"] and row.environment["bundle"] == json.loads((bundle_dir / "bundle.json").read_text())["id"]
    assert device["parity"][0]["first"] == "pytorch" and device["parity"][0]["agreement"] == 100.0

    # The same images, the same figures as `edgekit bench` measures here with live PyTorch.
    local_run = run_bench(tiny_artifact, BenchRequest(
        backends=("onnxruntime",), options=BackendOptions(), timing=TimingOptions(iterations=3, warmup=1),
        images=ImageRequest(views_per_image=1, view_stride=2), power="off",
    ))
    local = local_run.results[0]
    assert device["images"]["identity"] == local_run.images.identity and device["images"]["count"] == len(local_run.images)
    assert local.accuracy.agreement == row.accuracy.agreement and local.accuracy.top1 == row.accuracy.top1
    assert row.accuracy.max_abs_diff == pytest.approx(local.accuracy.max_abs_diff, abs=1e-5)
    local_json = write_json(results_document(local_run.results, images={"identity": local_run.images.identity}), tmp_path / "local.json")

    report = run_cli("report", str(local_json), str(device_json), "-o", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    with open(tmp_path / "report" / "report.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["backend"] == "onnxruntime"]
    assert sorted(r["batch"] for r in rows) == ["1", "1", "2"]  # here (batch 1) and "on the device" (1, 2), side by side


def test_openvino_bundle_runs_without_torch(bundle_dir, blocker_dir, tmp_path):
    from edgekit.core import BenchResult

    out = tmp_path / "ov.json"
    proc = run_runner(bundle_dir, blocker_dir, "bench", "--backend", "openvino", "--iterations", "3", "--warmup", "1", "--power", "off", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    (row,) = [BenchResult.from_dict(r) for r in json.loads(out.read_text())["results"]]
    assert row.backend == "openvino" and "f32" in row.precision
    assert row.accuracy.agreement == 100.0 and row.accuracy.mean_kl < 1e-6
    # the IR it built is a cache inside the bundle; the bundle still verifies
    assert (bundle_dir / "artifact" / "openvino").is_dir()
    proc = run_runner(bundle_dir, blocker_dir, "verify")
    assert proc.returncode == 0 and "files match bundle.json" in proc.stdout, proc.stderr


def test_a_changed_file_is_named(bundle_dir, blocker_dir, tmp_path):
    copy = pristine_copy(bundle_dir, tmp_path / "bundle")
    image = min((copy / "images").glob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")
    proc = run_runner(copy, blocker_dir, "bench", "--backend", "onnxruntime")
    assert_one_line_error(proc, f"images/{image.name}", "does not match the sha256 in bundle.json")

    copy = pristine_copy(bundle_dir, tmp_path / "bundle2")
    with open(copy / "edgekit" / "timing.py", "a") as f:
        f.write("\n# edited on the device\n")
    proc = run_runner(copy, blocker_dir, "verify")
    assert_one_line_error(proc, "edgekit/timing.py does not match")
    (copy / "reference" / "pytorch_fp32_logits.npy").unlink()
    proc = run_runner(copy, blocker_dir, "verify")
    assert_one_line_error(proc, "reference/pytorch_fp32_logits.npy missing")


def test_missing_runtimes_name_the_pip_package(bundle_dir, blocker_dir):
    proc = run_runner(bundle_dir, blocker_dir, "bench", "--backend", "onnxruntime", block=("torch", "onnxruntime"))
    assert_one_line_error(proc, "backend onnxruntime", "pip install onnxruntime")
    proc = run_runner(bundle_dir, blocker_dir, "bench", "--backend", "openvino", block=("torch", "openvino"))
    assert_one_line_error(proc, "pip install openvino")
    proc = run_runner(bundle_dir, blocker_dir, "bench", "--backend", "tensorrt", block=("torch", "tensorrt"))
    assert_one_line_error(proc, "pip install tensorrt")
    proc = run_runner(bundle_dir, blocker_dir, "bench", block=("torch", "numpy"))
    assert_one_line_error(proc, "pip install numpy")


def test_not_a_bundle(bundle_dir, blocker_dir, tmp_path):
    copy = pristine_copy(bundle_dir, tmp_path / "bundle")
    (copy / "bundle.json").unlink()
    proc = run_runner(copy, blocker_dir, "bench")
    assert_one_line_error(proc, "has no bundle.json", "not an edgekit bundle")

    copy = pristine_copy(bundle_dir, tmp_path / "other")
    meta = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**meta, "backends": ["tensorrtx"]}))
    proc = run_runner(copy, blocker_dir, "bench")
    assert_one_line_error(proc, "unknown backend 'tensorrtx'", code=2)
    proc = run_runner(bundle_dir, blocker_dir, "bench", "--backend", "coreml")
    assert_one_line_error(proc, "this bundle was made for", "not coreml", code=2)


def test_bundle_refuses_unknown_backends_and_foreign_folders(tiny_artifact, tmp_path):
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "tensorrtx", "-o", str(tmp_path / "b"), cwd=tmp_path)
    assert_one_line_error(proc, "unknown backend 'tensorrtx'", "tensorrt", code=2)
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "pytorch", "-o", str(tmp_path / "b"), cwd=tmp_path)
    assert_one_line_error(proc, "baseline", code=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "-o", str(tmp_path / "mine"), cwd=tmp_path)
    assert_one_line_error(proc, "is not an edgekit bundle", code=2)
    assert not (tmp_path / "b").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_runner_modules_are_found_from_edgekit_imports():
    from edgekit.bundle import runner_modules

    modules = set(runner_modules())
    assert {"", "core", "data", "data.decode", "data.batches", "timing", "session", "results.tables", "results.document", "worker", "device_runner", "registry",
            "backends", "backends.base", "backends.int8_cpu_form", "transforms.qdq_graph", "options"} <= modules
    assert not {"models", "onnx_export", "plan", "steps", "cli", "backends.pytorch", "transforms.quantize", "results.site"} & modules


def test_tensorrt_without_torch_uses_cuda_python(monkeypatch):
    """Where TensorRT is installed but torch is not, the buffers come from cuda-python; with
    no GPU visible the backend says so in one line (the GPU path itself is unverified)."""
    import types

    pytest.importorskip("cuda.bindings.runtime")
    from edgekit.backends import tensorrt
    from edgekit.core import BackendUnavailableError

    if importlib_find("tensorrt") is None:
        monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(tensorrt, "torch_cuda", lambda: False)
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("a GPU is visible here")
    with pytest.raises(BackendUnavailableError, match="none is visible here"):
        tensorrt.TensorRTBackend().check_available()
    assert tensorrt.cuda_call((0, 5)) == 5 and tensorrt.cuda_call((0,)) is None
    with pytest.raises(RuntimeError, match="CUDA runtime call failed"):
        tensorrt.cuda_call((35, None))


def importlib_find(name):
    import importlib.util

    return importlib.util.find_spec(name)
