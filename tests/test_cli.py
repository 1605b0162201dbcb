"""The `edgekit` command end to end, and one clear line for each kind of bad input."""

import json

import pytest

from conftest import assert_one_line_error, run_cli


def test_help_is_instant_and_lists_commands(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("models", "export", "bench"):
        assert command in proc.stdout


def test_models_lists_measured_params_and_offline_weights(tmp_path):
    proc = run_cli("models", "mobilenet_v", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mobilenet_v2" in proc.stdout and "mobilenet_v3_large" in proc.stdout
    assert "3.50" in proc.stdout  # MobileNetV2 params, counted from the built model
    proc = run_cli("models", "lite", "--offline-only", cwd=tmp_path)
    assert proc.stdout.count("yes") == 3


@pytest.mark.slow
def test_bench_default_model_end_to_end(tmp_path):
    """The README's main job, shortened: real weights, real photos, both backends."""
    out = tmp_path / "results.json"
    proc = run_cli("bench", "--iterations", "5", "--warmup", "1", "--views", "2", "--batch", "1", "--batch", "2", "--json", str(out), cwd=tmp_path, process=True)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" in proc.stdout and "p50 ms" in proc.stdout
    document = json.loads(out.read_text())
    rows = {r["backend"]: r for r in document["results"]}
    assert set(rows) == {"pytorch", "onnxruntime"}
    ort, torch_row = rows["onnxruntime"], rows["pytorch"]
    assert [lat["batch_size"] for lat in ort["latency"]] == [1, 2]
    assert ort["accuracy"]["images"] == 14
    assert ort["accuracy"]["agreement"] == 100.0
    assert ort["accuracy"]["top1_drop"] == 0.0
    assert ort["accuracy"]["top1"] >= 70  # real weights on real photos
    assert ort["accuracy"]["mean_kl"] < 1e-6
    assert ort["size_mb"] > 10
    # Each backend ran in its own process: ONNX Runtime's peak memory excludes PyTorch's.
    assert ort["peak_rss_mb"] < torch_row["peak_rss_mb"]
    assert (tmp_path / "exported" / "efficientnet_lite0").is_dir()


def test_unknown_model_suggests_and_exits_2(tmp_path):
    proc = run_cli("export", "mobilenet_v4", cwd=tmp_path, process=True)  # the real entry point: one line, no traceback
    assert_one_line_error(proc, "unknown model", "mobilenet_v2", code=2)
    assert not (tmp_path / "exported").exists()


def test_torchvision_weights_offline_name_the_alternatives(tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "torch-home"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = run_cli("export", "resnet18", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "cannot download torchvision weights", "--random-init", "efficientnet_lite0")
    assert not any(p.is_file() for p in (tmp_path / "exported").rglob("*")) if (tmp_path / "exported").exists() else True


def test_corrupt_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not ONNX")
    proc = run_cli("bench", str(bad), cwd=tmp_path)
    assert_one_line_error(proc, "not a valid ONNX model")
    assert not (tmp_path / "exported").exists()


def test_empty_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    proc = run_cli("bench", "--data", str(tmp_path / "images"), cwd=tmp_path)
    assert_one_line_error(proc, "no images")
    assert not (tmp_path / "exported").exists()  # refused before any export work


def test_unreadable_image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    proc = run_cli("bench", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--data", str(folder), "--iterations", "2", cwd=tmp_path)
    assert_one_line_error(proc, "could be read")


def test_checkpoint_that_does_not_fit(tmp_path):
    import torch
    import torchvision

    ckpt = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    proc = run_cli("export", "resnet34", "--weights", str(ckpt), cwd=tmp_path)
    assert_one_line_error(proc, "does not fit resnet34", "missing")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"nope")
    proc = run_cli("export", "resnet18", "--weights", str(garbage), cwd=tmp_path)
    assert_one_line_error(proc, "weights_only=True")
    assert not (tmp_path / "exported").exists() or not any(p.is_file() for p in (tmp_path / "exported").rglob("*"))


def test_local_checkpoint_round_trip(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(3)
    ckpt = tmp_path / "mine.pth"
    torch.save({"state_dict": torchvision.models.squeezenet1_1().state_dict()}, ckpt)
    proc = run_cli("export", "squeezenet1_1", "--weights", str(ckpt), "--input-size", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / proc.stdout.strip().splitlines()[-1] / "manifest.json").read_text())
    assert manifest["model"]["weights_id"].startswith("file:")
    assert manifest["parity"]["top1_agreement"] == 100.0


def test_unknown_backend(tmp_path):
    proc = run_cli("bench", "--backend", "tensorrtx", cwd=tmp_path)
    assert_one_line_error(proc, "unknown backend", code=2)


def test_tampered_artifact_folder_is_refused(tmp_path, tiny_artifact):
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact.path, copy)
    (copy / "model.onnx").write_bytes(b"changed")
    proc = run_cli("bench", str(copy), cwd=tmp_path)
    assert_one_line_error(proc, "model.onnx does not match its SHA-256")
