"""Hostile and huge inputs (issue 28; faults made by tests/faults_inputs.py): each is a
correct result or one error line, never a traceback, a hang, gigabytes of memory or a
wrong number."""

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest

import faults
import faults_inputs
from conftest import assert_one_line_error, run_cli

QUICK = ("--iterations", "3", "--warmup", "1", "--power", "off", "--views", "1")


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    return faults_inputs.checkpoint_zip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.pt")


def test_checkpoint_zip_bomb_is_refused_before_it_is_inflated(zip_bomb, tmp_path):
    """2 MB on disk, 2 GiB once inflated: refused from the zip's central directory, and the
    CLI process never holds it (its peak RSS was 2.7 GiB when torch.load inflated it)."""
    assert zip_bomb.stat().st_size < 4 << 20
    proc, rss = faults_inputs.peak_rss_of(
        [sys.executable, "-m", "edgekit.cli", "export", "squeezenet1_1", "--weights", str(zip_bomb), "--artifacts", str(tmp_path / "exported")],
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "declares 2.0 GiB of data but squeezenet1_1 needs", "refused before loading", code=2)
    # against the same command refused for a missing file: the imports alone are 630-1,100 MiB
    # resident, depending on the environment (pip's CUDA torch), so only what the bomb adds is bounded
    base, base_rss = faults_inputs.peak_rss_of(
        [sys.executable, "-m", "edgekit.cli", "export", "squeezenet1_1", "--weights", str(tmp_path / "missing.pt"), "--artifacts", str(tmp_path / "exported")],
        cwd=tmp_path,
    )
    assert base.returncode == 2, base.stderr
    assert rss < base_rss + (128 << 20), f"peak RSS {rss / 2**20:.0f} MiB, {base_rss / 2**20:.0f} MiB refusing a missing file"
    assert not list((tmp_path / "exported").rglob("manifest.json"))


def test_a_checkpoint_of_the_right_size_still_loads(tmp_path):
    import torch

    from edgekit.models import get_entry, load_model

    module = get_entry("squeezenet1_1").build(num_classes=1000)
    torch.save({"state_dict": module.state_dict(), "optimizer": {"step": torch.tensor(3)}}, tmp_path / "ok.pt")
    loaded = load_model("squeezenet1_1", weights_file=tmp_path / "ok.pt")
    assert loaded.weights_desc.startswith("checkpoint")


def test_safetensors_header_declaring_huge_tensors_is_refused_unread(tmp_path):
    from edgekit.core import CheckpointMismatchError
    from edgekit.models import get_entry, read_checkpoint
    from edgekit.models.checkpoints import _checkpoint_limit

    header = json.dumps({"features.0.weight": {"dtype": "F32", "shape": [1 << 29], "data_offsets": [0, 1 << 31]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointMismatchError, match=r"declares 2\.0 GiB of data but squeezenet1_1 needs .* refused before loading"):
        read_checkpoint(path, limit=_checkpoint_limit(get_entry("squeezenet1_1"), "squeezenet1_1"))


# --------------------------------------------------------------------------- preprocessing and threads


@pytest.mark.parametrize("mean, std, expected", [
    ("NaN, 0.456, 0.406", "0.229, 0.224, 0.225", "mean must be finite numbers"),
    ("0.485, 0.456, 0.406", "0.229, Infinity, 0.225", "std must be finite numbers"),
    ("0.485, 0.456, 0.406", "0.229, 0, 0.225", "std must be positive"),
])
def test_non_finite_or_zero_preprocessing_is_refused(tiny_artifact, tmp_path, mean, std, expected):
    (tmp_path / "prep.json").write_text(f'{{"input_size": 64, "mean": [{mean}], "std": [{std}]}}')
    onnx = tmp_path / "model.onnx"
    shutil.copyfile(tiny_artifact.onnx_path, onnx)
    proc = run_cli("export", str(onnx), "--preprocessing", "prep.json", "--artifacts", "exported", cwd=tmp_path)
    assert_one_line_error(proc, f"preprocessing file prep.json: {expected}", code=2)
    assert not (tmp_path / "exported").exists() or not list((tmp_path / "exported").rglob("manifest.json"))


def test_threads_beyond_any_machine_are_refused(tiny_artifact, tmp_path):
    proc = run_cli("bench", str(tiny_artifact.path), "--backend", "onnxruntime", "--threads", "100000", *QUICK, cwd=tmp_path)
    assert_one_line_error(proc, "--threads", "100000", "1024", code=2)


# --------------------------------------------------------------------------- results documents


def test_duplicate_cell_hiding_a_regression_is_refused_by_check(tmp_path):
    good = faults_inputs.results_document([faults_inputs.results_row(), faults_inputs.results_row("resnet18", p50=10.0)])
    baseline = faults_inputs.write(good, tmp_path / "baseline.json")
    new = faults_inputs.write(faults_inputs.with_duplicate_cell(good), tmp_path / "new.json")
    proc = run_cli("check", str(new), "--baseline", str(baseline), cwd=tmp_path)
    assert_one_line_error(proc, "the new results has cell mobilenet_v2 fp32 onnxruntime b1 more than once (results[0] and results[2])", code=2)
    assert "check passed" not in proc.stdout + proc.stderr
    proc = run_cli("check", str(baseline), "--baseline", str(new), cwd=tmp_path)
    assert_one_line_error(proc, "the baseline has cell mobilenet_v2 fp32 onnxruntime b1 more than once", code=2)


@pytest.mark.parametrize("p50", [1e308, 5e-324])
def test_report_on_absurd_latencies_is_one_line(tmp_path, p50):
    good = faults_inputs.results_document([faults_inputs.results_row(), faults_inputs.results_row("resnet18", p50=10.0)])
    path = faults_inputs.write(faults_inputs.with_p50(good, p50), tmp_path / "r.json")
    proc = run_cli("report", str(path), "-o", "site", cwd=tmp_path)
    assert_one_line_error(proc, "r.json: results[0].latency[0].p50_ms must be a latency from 1e-06 to 1e+07 ms", code=2)


def test_report_at_the_edges_of_the_sane_ranges_works(tmp_path):
    good = faults_inputs.results_document([faults_inputs.results_row(), faults_inputs.results_row("resnet18", p50=10.0)])
    for name, p50 in (("slow", 1e7), ("fast", 1e-6)):
        doc = faults_inputs.with_p50(good, p50)
        doc["results"][0]["latency"][0]["throughput_ips"] = 1e12 if p50 < 1 else 1e-4
        doc["results"][0]["size_mb"] = doc["results"][0]["peak_rss_mb"] = 1e9
        proc = run_cli("report", str(faults_inputs.write(doc, tmp_path / f"{name}.json")), "-o", f"site-{name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / f"site-{name}" / "report.html").is_file()


def test_out_of_range_sizes_are_named():
    from edgekit.core import DataError
    from edgekit.results.document import validate_results_document

    doc = faults_inputs.results_document([faults_inputs.results_row()])
    doc["results"][0]["size_mb"] = 1e300
    with pytest.raises(DataError, match=r"results\[0\]\.size_mb must be a size from 0 to 1e\+09 MB, got 1e\+300"):
        validate_results_document(doc, "x.json")


# --------------------------------------------------------------------------- a remote device that answers badly


@pytest.mark.parametrize("variant, expected", [
    ("not JSON", "the results file is not valid JSON"),
    ("wrong types", "results[0].latency must be a list of objects"),
    ("missing keys", "results is missing"),
    ("huge numbers", "results[0].latency[0].p50_ms must be a latency from 1e-06 to 1e+07 ms, got 1e+308"),
    ("huge integer", "the results file is not valid JSON (Exceeds the limit"),
])
def test_malformed_results_from_a_remote_device_are_one_line(tiny_artifact, tmp_path, variant, expected):
    payload = tmp_path / "sent.json"
    payload.write_text(faults_inputs.malformed_remote_results()[variant])
    env = faults_inputs.remote_env(faults_inputs.fake_ssh(tmp_path / "bin"), payload)
    proc = run_cli("bench", str(tiny_artifact.path), "--remote", "me@device", "--backend", "onnxruntime", *QUICK, "--json", "r.json", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "me@device: ", expected, code=1)
    assert not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------- bundles and manifests


@pytest.fixture(scope="module")
def bundle(tiny_artifact, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "--views", "1", "-o", str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("variant, expected", [
    ("views not a list", "images.views must be a non-empty list"),
    ("a view index out of range", "images.views[0].view must be a view number from 0 to"),
    ("a view without labels key", "images.views[0] must be an object with file, labels and view"),
    ("labels as a string", "images.views[0].labels must be null or a list of class indices"),
])
def test_tampered_bundle_views_are_one_line(bundle, tmp_path, variant, expected):
    copy = shutil.copytree(bundle, tmp_path / "b")
    faults_inputs.edit_bundle_json(copy, faults_inputs.TAMPERED_VIEWS[variant])
    proc = faults.run_bundle_runner(copy, "bench", "--iterations", "3", "--warmup", "1")
    assert_one_line_error(proc, "bundle.json " + expected, code=2)
    assert not (copy / "results.json").exists()


@pytest.mark.parametrize("variant, expected", [
    ("files not an object", "manifest.json: files must be an object of file names"),
    ("input shape of strings", "manifest.json: input.shape must be [batch, channels, height, width]"),
    ("preprocessing mean of text", 'manifest.json: preprocessing.mean must be three finite numbers, got "imagenet"'),
])
def test_resealed_manifest_with_bad_fields_is_one_line(tiny_artifact, tmp_path, variant, expected):
    """The seal is unkeyed: recomputed after the edit it matches, and the fields are then
    checked like any untrusted input."""
    copy = faults.copy_artifact(tiny_artifact.path, tmp_path / "art")
    faults_inputs.reseal(copy, faults_inputs.RESEALED_MANIFESTS[variant])
    for command in (("bench", str(copy), "--backend", "onnxruntime", *QUICK), ("inspect", str(copy))):
        assert_one_line_error(run_cli(*command, cwd=tmp_path), expected, code=2)
