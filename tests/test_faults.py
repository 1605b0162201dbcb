"""Real faults (see tests/faults.py): each is a correct result or one error line, never a
traceback, a wrong number or a half-written file."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import faults
from conftest import assert_one_line_error, run_cli

QUICK = ("--iterations", "3", "--warmup", "1", "--power", "off")
MOUNT_PROBLEM = faults.mount_problem()
needs_mount = pytest.mark.skipif(MOUNT_PROBLEM is not None, reason=f"a real read-only or full target needs a tmpfs mount: {MOUNT_PROBLEM}")


def _results(path: Path) -> dict:
    return json.loads(path.read_text())


def _top1(document: dict) -> dict:
    return {r["backend"]: r["accuracy"]["top1"] for r in document["results"]}


# --------------------------------------------------------------------------- images


def test_truncated_jpeg_changes_no_figure(lite0_artifact, tmp_path):
    """One truncated JPEG in a labelled class folder: skipped by every backend alike, named,
    recorded, and the top-1 equals that of the same folder without the file (it was 0%
    when labels were zipped with the rows that survived)."""
    clean = faults.labelled_class_tree(tmp_path / "clean")
    damaged = faults.labelled_class_tree(tmp_path / "damaged")
    rocket_class = next(p.parent for p in damaged.rglob("rocket.jpg"))
    faults.truncated_jpeg(faults.SAMPLES / "rocket.jpg", rocket_class / "aaa-broken.jpg")  # sorts first: shifts every later row

    runs = {}
    for name, folder in (("clean", clean), ("damaged", damaged)):
        out = tmp_path / f"{name}.json"
        proc = run_cli("bench", str(lite0_artifact.path), "--data", str(folder), "--views", "1", "--backend", "pytorch,onnxruntime", *QUICK, "--json", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        runs[name] = (proc, _results(out))
    proc, damaged_doc = runs["damaged"]
    assert "warning: 1 unreadable image skipped: aaa-broken.jpg (image file is truncated" in proc.stderr
    assert "excluded from every backend alike" in proc.stderr
    images = damaged_doc["images"]
    assert images["images_evaluated"] == 7 and images["images_skipped"] == 1 and images["count"] == 8
    assert images["skipped_files"][0]["file"].endswith("aaa-broken.jpg") and "truncated" in images["skipped_files"][0]["reason"]
    clean_top1 = _top1(runs["clean"][1])
    assert _top1(damaged_doc) == clean_top1 and all(v > 0 for v in clean_top1.values())
    assert "7 images evaluated (1 skipped: 1 unreadable file)" in " ".join(runs["damaged"][0].stdout.split())  # the title, however wrapped


def test_image_above_the_pixel_limit_is_skipped_not_fatal(tiny_artifact, tmp_path):
    folder = faults.labelled_class_tree(tmp_path / "data", ["chelsea.png", "coffee.png"])
    faults.decompression_bomb(next(folder.iterdir()) / "bomb.png")
    proc = run_cli("bench", str(tiny_artifact.path), "--data", str(folder), "--views", "1", "--backend", "onnxruntime", *QUICK, "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bomb.png (larger than Pillow's pixel limit" in proc.stderr
    assert _results(tmp_path / "r.json")["images"]["images_evaluated"] == 2

    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "--data", str(folder), "-o", "b", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bomb.png" in proc.stderr and json.loads((tmp_path / "b" / "bundle.json").read_text())["images"]["count"] == 2


def test_unreadable_label_file_and_labels_without_data_are_one_line(tmp_path):
    folder = faults.labelled_class_tree(tmp_path / "flat", ["chelsea.png"])
    flat = tmp_path / "flat2"
    flat.mkdir()
    shutil.copyfile(next(folder.rglob("chelsea.png")), flat / "chelsea.png")
    (tmp_path / "labels.bin").write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(run_cli("bench", "--data", str(flat), "--labels", "labels.bin", cwd=tmp_path), "not UTF-8 text", code=2)
    assert_one_line_error(run_cli("bench", "--labels", "labels.bin", cwd=tmp_path), "--labels applies with --data", code=2)


# --------------------------------------------------------------------------- sealed artifacts


def test_swapped_model_with_its_hashes_deleted_is_refused(tiny_artifact, digits, tmp_path):
    other_onnx = digits[0]
    copy = faults.copy_artifact(tiny_artifact.path, tmp_path / "artifact")
    faults.swap_model_and_strip_hashes(copy, other_onnx)
    proc = run_cli("bench", str(copy), "--backend", "onnxruntime", *QUICK, cwd=tmp_path)
    assert_one_line_error(proc, "manifest.json was changed after edgekit wrote it", code=2)

    copy2 = faults.copy_artifact(tiny_artifact.path, tmp_path / "artifact2")
    shutil.copyfile(other_onnx, copy2 / "model.onnx")  # hashes kept: the file betrays itself
    assert_one_line_error(run_cli("bench", str(copy2), "--backend", "onnxruntime", *QUICK, cwd=tmp_path), "model.onnx does not match its SHA-256", code=2)


def test_one_failing_backend_keeps_the_others_rows(int8_artifact, tmp_path):
    """A swapped ONNX Runtime CPU form (a derived cache, hashed when written) fails that
    backend with one line naming the file; the PyTorch and OpenVINO rows are kept."""
    from edgekit.backends import BackendOptions, get_backend

    copy = faults.copy_artifact(int8_artifact.path, tmp_path / "int8")
    from edgekit.core import Artifact

    compiled = get_backend("onnxruntime").compile(Artifact.load(copy), BackendOptions())
    cpu_form = compiled.onnx_path
    assert cpu_form.name.startswith("model.ort-cpu-") and (cpu_form.parent / (cpu_form.name + ".edgekit.json")).is_file()
    shutil.copyfile(copy / "model.onnx", cpu_form)  # another graph under the cached name

    proc = run_cli("bench", str(copy), "--backend", "pytorch,onnxruntime,openvino", *QUICK, "--json", "r.json", cwd=tmp_path)
    error = assert_one_line_error(proc, "onnxruntime failed", cpu_form.name, "the other rows were saved to", code=1)
    assert "does not match the SHA-256 edgekit recorded" in error
    rows = {r["backend"]: r for r in _results(tmp_path / "r.json")["results"]}
    assert set(rows) == {"pytorch", "onnxruntime", "openvino"}
    assert rows["onnxruntime"]["error"] and not rows["onnxruntime"]["latency"]
    assert rows["openvino"]["error"] is None and rows["openvino"]["latency"] and rows["openvino"]["accuracy"]["agreement"] is not None
    assert "FAILED" in proc.stdout


# --------------------------------------------------------------------------- killed writers


def test_killed_export_leaves_no_staging_behind_after_a_rerun(tmp_path):
    root = tmp_path / "exported"
    args = ("export", "squeezenet1_1", "--random-init", "--input-size", "64", "--artifacts", str(root))
    proc = faults.edgekit_process(*args, cwd=tmp_path)
    staged = faults.kill_during_staging(proc, root, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and all(p.exists() for p in staged)  # what a dead writer leaves

    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert faults.staging_folders(root) == []
    from edgekit.core import Artifact

    assert Artifact.load(Path(rerun.stdout.strip().splitlines()[-1])).problems() == []

    proc = faults.edgekit_process("export", "squeezenet1_1", "--random-init", "--input-size", "72", "--artifacts", str(root), cwd=tmp_path)
    faults.kill_during_staging(proc, root, signal.SIGTERM)
    assert proc.returncode == 130 and "interrupted" in proc.stderr.read()
    assert faults.staging_folders(root) == []


def test_sigterm_during_bench_stops_the_worker_and_removes_its_work_folder(tiny_artifact, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(faults.REPO), "TMPDIR": str(temp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "bench", str(tiny_artifact.path), "--backend", "onnxruntime", "--iterations", "100000", "--max-seconds", "600", "--power", "off"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert faults.wait_for(lambda: any(temp.glob(".tmp-edgekit-bench-*/onnxruntime.job.json")), timeout=120)
    job = next(temp.glob(".tmp-edgekit-bench-*/onnxruntime.job.json"))
    faults.wait_for(lambda: (job.parent / "onnxruntime.logits.f32").exists(), timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert list(temp.glob(".tmp-edgekit-*")) == []
    ps = subprocess.run(["pgrep", "-f", str(job)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # its worker went with it


def test_stale_staging_of_dead_writers_is_cleaned_live_ones_kept(tmp_path):
    from edgekit import files as staging

    live = staging.make_staging_dir(tmp_path, "live")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / ".tmp-dead-x"
    dead.mkdir()
    (dead / staging.OWNER_FILE).write_text(json.dumps({**staging.writer_identity(), "pid": int(child.stdout), "start": "1"}))
    orphan = tmp_path / ".tmp-orphan-y"
    orphan.mkdir()
    os.utime(orphan, (0, 0))
    young_orphan = tmp_path / ".tmp-young-z"
    young_orphan.mkdir()
    removed = staging.clean_stale(tmp_path)
    assert set(removed) == {dead, orphan} and live.exists() and young_orphan.exists()
    assert staging.clean_stale(tmp_path, remove_orphans=False) == []


# --------------------------------------------------------------------------- full and read-only disks


@needs_mount
def test_export_to_a_read_only_or_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    with faults.small_mount(tmp_path / "ro", read_only=True) as ro:
        proc = run_cli("export", "squeezenet1_1", "--random-init", "--input-size", "64", "--artifacts", str(ro / "exported"), cwd=tmp_path)
        assert_one_line_error(proc, str(ro), "Read-only file system", code=1)
    with faults.small_mount(tmp_path / "full", "1m") as full:
        proc = run_cli("export", "squeezenet1_1", "--random-init", "--input-size", "64", "--artifacts", str(full / "exported"), cwd=tmp_path)
        assert_one_line_error(proc, "No space left on device", code=1)
        assert faults.files_under(full) == []


@needs_mount
def test_results_on_a_full_disk_are_saved_elsewhere_and_said_so(tiny_artifact, tmp_path):
    with faults.small_mount(tmp_path / "full", "64k") as full:
        filler = faults.fill(full)
        proc = run_cli("bench", str(tiny_artifact.path), "--backend", "onnxruntime", *QUICK, "--json", str(full / "r.json"), cwd=tmp_path)
        error = assert_one_line_error(proc, f"cannot write results to {full / 'r.json'}", "No space left on device", "they were saved to", code=1)
        assert faults.files_under(full) == [filler]
    saved = Path(error.rsplit("they were saved to ", 1)[1].strip())
    assert _results(saved)["results"][0]["latency"]  # the measured figures, not lost
    saved.unlink()


@needs_mount
def test_report_and_bundle_on_a_full_disk_leave_no_empty_files(tiny_artifact, tmp_path):
    proc = run_cli("bench", str(tiny_artifact.path), "--backend", "onnxruntime", *QUICK, "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with faults.small_mount(tmp_path / "full", "64k") as full:
        assert_one_line_error(run_cli("report", "r.json", "-o", str(full / "report"), cwd=tmp_path), "No space left on device", code=1)
        assert all(p.stat().st_size > 0 for p in faults.files_under(full))
        for p in faults.files_under(full):
            p.unlink()
        assert_one_line_error(run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "-o", str(full / "b"), cwd=tmp_path), "No space left on device", code=1)
        assert faults.files_under(full) == [] and not (full / "b").exists()


# --------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def pristine_bundle(tiny_artifact, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "--views", "1", "-o", "bundle", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder / "bundle"


@pytest.fixture
def bundle(pristine_bundle, tmp_path):
    """A fresh copy of one bundle, for each test to damage."""
    return Path(shutil.copytree(pristine_bundle, tmp_path / "bundle", symlinks=True))


def _escaping_cases(outside: Path):
    return {
        "artifact with ..": lambda m: m.update(artifact="../outside"),
        "absolute artifact": lambda m: m.update(artifact=str(outside)),
        "absolute image": lambda m: m["images"]["views"][0].update(file="/etc/hostname"),
        "image with ..": lambda m: m["images"]["views"][0].update(file="images/../../outside/x.png"),
        "reference with ..": lambda m: m["reference"].update(file="../outside/ref.npy"),
        "listed file with ..": lambda m: m["files"].update({"../outside/x": "0" * 64}),
    }


@pytest.mark.parametrize("case", list(_escaping_cases(Path("/x"))))
def test_bundle_paths_cannot_leave_the_bundle(bundle, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    faults.edit_bundle(bundle, _escaping_cases(outside)[case])
    proc = faults.run_bundle_runner(bundle, "bench", "--iterations", "2", "--power", "off")
    assert_one_line_error(proc, "bundle", code=2)
    assert "inside the bundle" in proc.stderr or "outside the bundle" in proc.stderr


def test_bundle_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    meta = json.loads((bundle / "bundle.json").read_text())
    image = bundle / meta["images"]["views"][0]["file"]
    outside = tmp_path / "elsewhere.png"
    shutil.copyfile(image, outside)  # same bytes: the hash alone would not notice
    image.unlink()
    image.symlink_to(outside)
    proc = faults.run_bundle_runner(bundle, "bench", "--iterations", "2", "--power", "off")
    assert_one_line_error(proc, "leads outside the bundle", code=2)


# --------------------------------------------------------------------------- models that are not ImageNet classifiers


def test_onnx_without_classifier_output_or_with_ten_classes(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(0)
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    torch.onnx.export(features, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "features.onnx"), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    assert_one_line_error(run_cli("bench", "features.onnx", *QUICK, cwd=tmp_path), "[N, classes] logits", code=2)

    ten = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    torch.onnx.export(ten, (torch.zeros(1, 3, 64, 64),), str(tmp_path / "ten.onnx"), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    proc = run_cli("bench", "ten.onnx", "--views", "1", *QUICK, "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = _results(tmp_path / "r.json")["results"]
    assert row["accuracy"]["top1"] is None and "10 outputs" in row["accuracy"]["note"]
    assert "n/a" in proc.stdout and "the model has 10 outputs" in proc.stdout


def test_weights_file_that_is_text_is_one_line(tmp_path):
    (tmp_path / "w.pth").write_text("these are not weights\n")
    assert_one_line_error(run_cli("export", "squeezenet1_1", "--weights", "w.pth", cwd=tmp_path), "cannot be loaded with weights_only=True", code=2)


# --------------------------------------------------------------------------- the gate


def test_gate_refuses_to_pass_on_nothing_and_prints_plain_status(tiny_artifact, tmp_path):
    proc = run_cli("bench", str(tiny_artifact.path), "--backend", "onnxruntime", *QUICK, "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    document = _results(tmp_path / "r.json")
    (tmp_path / "empty.json").write_text(json.dumps({**document, "results": []}))
    assert_one_line_error(run_cli("check", "r.json", "--baseline", "empty.json", cwd=tmp_path), "baseline", code=2)
    assert_one_line_error(run_cli("check", "r.json", "--baseline", "r.json", "--max-latency-regression", "nan", cwd=tmp_path), "max-latency-regression", code=2)
    other = {**document, "results": [{**r, "model": "another"} for r in document["results"]]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert_one_line_error(run_cli("check", "r.json", "--baseline", "other.json", cwd=tmp_path), "no cell", code=2)
    passed = run_cli("check", "r.json", "--baseline", "r.json", cwd=tmp_path)
    assert passed.returncode == 0 and "PASS" in passed.stdout and "[green]" not in passed.stdout
