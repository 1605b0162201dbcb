"""Which file to deploy where: `edgekit export --int8` writes the CPU forms beside the
portable QDQ graph and names, in the manifest, the file each runtime loads; bench and
bundles use those very files. Real ONNX Runtime and OpenVINO on the digits network
(trained on scikit-learn's digits, so top-1 means something), imported as an ONNX file."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from digits import DIGIT_NAMES, write_digits_folders
from test_bundle import blocker_dir, run_runner  # noqa: F401 (a fixture)

QUICK_INT8 = ("--calib-method", "minmax", "--max-fallback", "0", "--no-bias-correction")
QUICK_BENCH = ("--iterations", "2", "--warmup", "0", "--power", "off")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, digits) -> Path:
    """The digits ONNX, its preprocessing JSON and a train/val tree of its images."""
    folder = tmp_path_factory.mktemp("deploy")
    onnx_path = folder / "digits.onnx"
    onnx_path.write_bytes(Path(digits[0]).read_bytes())
    (folder / "pre.json").write_text(json.dumps({
        "input_size": 16, "resize_size": 16, "interpolation": "nearest", "mean": [0.5] * 3, "std": [0.5] * 3, "classes": list(DIGIT_NAMES),
    }))
    write_digits_folders(folder / "tree", size=16, per_class=20, resample="nearest")  # the pixels the net trained on
    return folder


def export(workspace: Path, *flags: str):
    return run_cli("export", "digits.onnx", "--preprocessing", "pre.json", "--artifacts", "exported", *flags, cwd=workspace)


@pytest.fixture(scope="module")
def exported(workspace):
    """`edgekit export --int8`: (the artifact, what the command printed)."""
    from edgekit.core import Artifact

    proc = export(workspace, "--int8", "--data", "tree", *QUICK_INT8)
    assert proc.returncode == 0, proc.stderr
    return Artifact.load(workspace / proc.stdout.strip().splitlines()[-1]), proc


def listed(artifact, runtime: str) -> dict[str, str]:
    """file -> where, for one runtime of the manifest's deploy section."""
    return {e["file"]: e["when"] for e in artifact.manifest["deploy"][runtime]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_writes_the_cpu_forms_and_names_them(exported):
    artifact, proc = exported
    assert artifact.problems() == []  # the manifest, sealed again, still verifies
    ort = listed(artifact, "onnxruntime")
    assert set(ort) == {"model.ort-cpu-vnni-arm.onnx", "model.ort-cpu-avx2.onnx", "model.onnx"}
    assert "VNNI/AMX, or ARM" in ort["model.ort-cpu-vnni-arm.onnx"] and "without VNNI" in ort["model.ort-cpu-avx2.onnx"]
    assert ort["model.onnx"] == "CUDA or TensorRT provider"
    assert listed(artifact, "openvino") == {
        "model.ov-cpu-vnni.onnx": "CPU, x86 with VNNI/AMX", "model.ov-cpu.onnx": "CPU, others (x86 without VNNI, ARM)", "model.onnx": "GPU or NPU",
    }
    assert listed(artifact, "tensorrt") == {"model.onnx": ""}
    sealed = artifact.manifest["sha256"]
    for entries in artifact.manifest["deploy"].values():
        for entry in entries:
            path = artifact.path / entry["file"]
            if entry["file"] in sealed:  # the portable graph: sealed in the manifest
                assert sha256(path) == sealed[entry["file"]]
            else:  # a CPU form: a derived cache with its own record
                record = json.loads((artifact.path / (entry["file"] + ".edgekit.json")).read_text())
                assert sha256(path) == record["sha256"] and record["made_from"]["source_sha256"] == sealed["model.onnx"]
    # one short block after the artifact's path: a file per runtime and device
    block = proc.stderr[proc.stderr.index("deploy: the file each runtime loads"):].splitlines()[:8]
    assert [line.split()[:2] for line in block[1:]] == [[r, e["file"]] for r, entries in artifact.manifest["deploy"].items() for e in entries]


def test_inspect_shows_the_deploy_files_and_their_state(exported, workspace, tmp_path):
    import shutil

    artifact, _ = exported
    proc = run_cli("inspect", str(artifact.path), cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("  onnxruntime", "  openvino", "  tensorrt"))]
    assert len(lines) == 7 and all(line.endswith("[hash verified]") for line in lines)

    copy = Path(shutil.copytree(artifact.path, tmp_path / "copy"))
    (copy / "model.ort-cpu-avx2.onnx").write_bytes((copy / "model.onnx").read_bytes())  # another graph under the deployed name
    (copy / "model.ov-cpu.onnx").unlink()
    proc = run_cli("inspect", str(copy), cwd=workspace)
    assert "integrity: intact" in proc.stdout  # derived caches: the artifact itself is fine
    assert any(
        line.split()[:2] == ["onnxruntime", "model.ort-cpu-avx2.onnx"] and "CPU, x86 without VNNI" in line and line.endswith("[changed since edgekit wrote it]")
        for line in proc.stdout.splitlines()
    ), proc.stdout
    assert "[missing]" in proc.stdout
    # exporting it again refuses the changed form in one line, and writes nothing
    manifest = (copy / "manifest.json").read_bytes()
    assert_one_line_error(run_cli("export", str(copy), cwd=workspace), "model.ort-cpu-avx2.onnx does not match the SHA-256 edgekit recorded")
    assert (copy / "manifest.json").read_bytes() == manifest and not (copy / "model.ov-cpu.onnx").exists()
    # once it is deleted, export makes both again; the manifest already names them
    (copy / "model.ort-cpu-avx2.onnx").unlink()
    assert run_cli("export", str(copy), cwd=workspace).returncode == 0
    assert (copy / "manifest.json").read_bytes() == manifest
    assert sha256(copy / "model.ort-cpu-avx2.onnx") == sha256(artifact.path / "model.ort-cpu-avx2.onnx")
    assert sha256(copy / "model.ov-cpu.onnx") == sha256(artifact.path / "model.ov-cpu.onnx")


def test_every_deployed_cpu_file_gives_the_portable_graphs_top1(exported, workspace):
    """Each ONNX Runtime file loads in a default ONNX Runtime CPU session (its fused integer
    kernels, what an application gets) and gives the top-1 of that same file computed as
    written, on every test image; the OpenVINO form in OpenVINO's CPU plugin gives the
    portable graph's. The ONNX Runtime forms give clamped tensors (ReLU6 outputs) all 256
    uint8 levels where the portable graph has 128, so they may differ from it on an image
    whose top two classes nearly tie: at most 2 of the 200, and never less accurate."""
    import onnxruntime as ort

    from edgekit.backends.onnxruntime import plain_session
    from edgekit.data import evaluation_images, load_all

    artifact, _ = exported
    x, labels = load_all(evaluation_images(workspace / "tree").resolve(artifact.classes), artifact.preprocessing)
    assert len(x) == 200  # the val split
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact.log_severity_level = 3
    portable = ort.InferenceSession(str(artifact.onnx_path), exact, providers=["CPUExecutionProvider"])
    expected = portable.run(None, {"input": x})[0].argmax(axis=1)
    assert np.mean(expected == np.array([label[0] for label in labels])) > 0.9  # a real classifier
    truth = np.array([label[0] for label in labels])
    for name in listed(artifact, "onnxruntime"):
        top1 = plain_session(artifact.path / name).run(None, {"input": x})[0].argmax(axis=1)
        as_written = ort.InferenceSession(str(artifact.path / name), exact, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].argmax(axis=1)
        assert np.array_equal(top1, as_written), name
        assert np.sum(top1 != expected) <= 2 and np.sum(top1 == truth) >= np.sum(expected == truth), name
    from edgekit.backends.openvino import cpu_form_here, shared_core

    # OpenVINO's CPU plugin computes the form for this CPU exactly as written; the 'vnni' form
    # (0..255 for clamped tensors) differs from the portable graph like ONNX Runtime's forms
    here = artifact.path / {"vnni": "model.ov-cpu-vnni.onnx", "any": "model.ov-cpu.onnx"}[cpu_form_here()]
    compiled = shared_core().compile_model(str(here), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    top1 = compiled(x)[0].argmax(axis=1)
    as_written = ort.InferenceSession(str(here), exact, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].argmax(axis=1)
    assert np.array_equal(top1, as_written)
    if cpu_form_here() == "any":
        assert np.array_equal(top1, expected)
    else:
        assert np.sum(top1 != expected) <= 2 and np.sum(top1 == truth) >= np.sum(expected == truth)


def test_bench_reuses_the_export_time_forms(exported, workspace):
    """bench picks the ONNX Runtime form for this CPU and OpenVINO's form: the very files
    export wrote (not rewritten: same inode, same bytes, same record)."""
    from edgekit.backends import BackendOptions, get_backend
    from edgekit.backends.int8_cpu_form import FORM_CPUS, weight_form

    artifact, _ = exported
    deployed = [artifact.path / e["file"] for entries in artifact.manifest["deploy"].values() for e in entries]
    before = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns, sha256(p)) for p in deployed}
    this_cpu = get_backend("onnxruntime").compile(artifact, BackendOptions()).onnx_path
    assert listed(artifact, "onnxruntime")[this_cpu.name] == f"CPU, {FORM_CPUS[weight_form()]}"

    proc = run_cli("bench", str(artifact.path), "--backend", "onnxruntime,openvino", "--data", "tree", *QUICK_BENCH, "--json", "r.json", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    rows = {r["backend"]: r for r in json.loads((workspace / "r.json").read_text())["results"]}
    assert "CPU form" in rows["onnxruntime"]["precision"] and rows["onnxruntime"]["accuracy"]["top1"] > 90
    assert rows["openvino"]["accuracy"]["top1"] > 90
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns, sha256(p)) for p in deployed} == before
    ir = json.loads(next((artifact.path / "openvino").glob("*/ir.json")).read_text())
    from edgekit.backends.openvino import CPU_FORM_FILES, cpu_form_here

    assert ir["source_onnx"] == CPU_FORM_FILES[cpu_form_here()]  # OpenVINO's IR was made from the deployed form for this CPU
    assert sorted(p.name for p in artifact.path.glob("model.*.onnx")) == [
        "model.ort-cpu-avx2.onnx", "model.ort-cpu-vnni-arm.onnx", "model.ov-cpu-vnni.onnx", "model.ov-cpu.onnx",
    ]


def test_a_bundle_ships_the_export_time_forms_and_its_runner_uses_them(exported, workspace, blocker_dir, tmp_path):  # noqa: F811
    artifact, _ = exported
    out = tmp_path / "bundle"
    proc = run_cli("bundle", str(artifact.path), "--backend", "onnxruntime,openvino", "--data", "tree", "--limit", "20", "-o", str(out), cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    shipped = out / "artifact"
    for name in ("model.ort-cpu-vnni-arm.onnx", "model.ort-cpu-avx2.onnx", "model.ov-cpu-vnni.onnx", "model.ov-cpu.onnx"):
        assert (shipped / name).read_bytes() == (artifact.path / name).read_bytes(), name
        assert (shipped / (name + ".edgekit.json")).read_bytes() == (artifact.path / (name + ".edgekit.json")).read_bytes()
    stats = {p.name: os.stat(p).st_ino for p in shipped.glob("model.*.onnx")}
    proc = run_runner(out, blocker_dir, "bench", "--backend", "onnxruntime,openvino", "--iterations", "2", "--warmup", "0", "--power", "off", "--json", str(tmp_path / "d.json"))
    assert proc.returncode == 0, proc.stderr
    rows = {r["backend"]: r for r in json.loads((tmp_path / "d.json").read_text())["results"]}
    assert "CPU form" in rows["onnxruntime"]["precision"] and rows["openvino"]["error"] is None
    assert {p.name: os.stat(p).st_ino for p in shipped.glob("model.*.onnx")} == stats  # used as shipped, not made again
    assert run_runner(out, blocker_dir, "verify").returncode == 0


def test_fp32_export_names_model_onnx_for_every_runtime(workspace):
    from edgekit.core import Artifact

    proc = export(workspace)
    assert proc.returncode == 0, proc.stderr
    artifact = Artifact.load(workspace / proc.stdout.strip().splitlines()[-1])
    assert {runtime: [e["file"] for e in entries] for runtime, entries in artifact.manifest["deploy"].items()} == {
        "onnxruntime": ["model.onnx"], "openvino": ["model.onnx"], "tensorrt": ["model.onnx"],
    }
    assert "deploy: model.onnx on every runtime (onnxruntime, openvino, tensorrt)" in proc.stderr
    assert artifact.problems() == [] and sorted(p.name for p in artifact.path.iterdir()) == ["manifest.json", "model.onnx"]
