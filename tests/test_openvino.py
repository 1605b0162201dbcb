"""OpenVINO for real: IR on disk, explicit precision, INT8 QDQ, throughput mode, bad input."""

import json
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from edgekit.backends import BackendOptions, get_backend
from edgekit.backends.openvino import ir_folder
from edgekit.core import Artifact, UsageError
from edgekit.data import load_all, resolve_images
from edgekit.transforms.qdq_graph import run_logits

pytest.importorskip("openvino", reason="the openvino extra is not installed")


@pytest.fixture(scope="module")
def images(tiny_artifact):
    x, _ = load_all(resolve_images(views_per_image=2, limit=4), tiny_artifact.preprocessing)
    return x


def test_ir_is_saved_with_the_artifact_and_records_f32(tiny_artifact):
    backend = get_backend("openvino")
    compiled = backend.compile(tiny_artifact, BackendOptions())
    folder = ir_folder(tiny_artifact, compress_fp16=False)
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    recorded = json.loads((folder / "ir.json").read_text())
    assert recorded["compress_to_fp16"] is False and set(recorded["files"]) == {"model.xml", "model.bin", "graph.json"}
    session = backend.load(compiled, BackendOptions())
    assert "inference precision f32" in session.precision
    # what the graph asks, read once with the IR (the layer check at load reads it, not the ONNX file)
    from edgekit.layer_precision import asked_precision

    assert json.loads((folder / "graph.json").read_text())["asked"] == asked_precision(tiny_artifact.onnx_path) == session.asked
    assert session.layer_summary["mismatches"] == [] and session.layer_summary["ran"] == {"fp32": len(session.asked)}


def test_fp16_weight_compression_is_a_separate_smaller_ir(tiny_artifact, images):
    backend = get_backend("openvino")
    full = backend.size_mb(backend.compile(tiny_artifact, BackendOptions()))
    compiled = backend.compile(tiny_artifact, BackendOptions(own={"ov_fp16_weights": True}))
    assert backend.size_mb(compiled) < 0.7 * full
    reference = get_backend("pytorch").load(tiny_artifact, BackendOptions()).run(images)
    logits = backend.load(compiled, BackendOptions()).run(images)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.75
    assert np.abs(logits - reference).max() < 0.05


def test_tampered_ir_is_named_and_half_written_ir_is_rebuilt(tiny_artifact, images):
    from edgekit.files import TamperedError

    backend = get_backend("openvino")
    folder = ir_folder(tiny_artifact, compress_fp16=False)
    backend.compile(tiny_artifact, BackendOptions())
    good = backend.load(backend.compile(tiny_artifact, BackendOptions()), BackendOptions()).run(images)

    blob = bytearray((folder / "model.bin").read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)  # corrupt some weights
    (folder / "model.bin").write_bytes(bytes(blob))
    with pytest.raises(TamperedError, match="model.bin does not match the SHA-256"):
        backend.compile(tiny_artifact, BackendOptions())

    (folder / "ir.json").unlink()  # as if the process died before the IR was complete
    rebuilt = backend.load(backend.compile(tiny_artifact, BackendOptions()), BackendOptions()).run(images)
    np.testing.assert_array_equal(rebuilt, good)
    assert (folder / "ir.json").is_file()
    assert not list(folder.parent.glob(".tmp-*"))

    shutil.rmtree(folder.parent)
    backend.compile(tiny_artifact, BackendOptions())
    assert (folder / "model.xml").is_file()


def test_int8_qdq_artifact_runs_as_quantized(digits, digits_int8, tmp_path):
    """OpenVINO reads the TensorRT-legal QDQ graph of a really trained CNN, agrees with the
    graph's exact meaning and keeps its true-label accuracy."""
    _, _, _, x_test, y_test = digits
    folder = tmp_path / "digits-int8"
    folder.mkdir()
    shutil.copyfile(digits_int8[0], folder / "model.onnx")
    artifact = Artifact(path=folder, manifest={"files": {"onnx": "model.onnx"}, "variant": "int8"})
    backend = get_backend("openvino")
    session = backend.load(backend.compile(artifact, BackendOptions()), BackendOptions())
    assert session.precision.startswith("int8")
    logits = session.run(x_test)
    exact = run_logits(artifact.onnx_path, x_test)
    assert (logits.argmax(1) == exact.argmax(1)).mean() >= 0.98
    assert abs((logits.argmax(1) == y_test).mean() - (exact.argmax(1) == y_test).mean()) <= 0.01


SIGNALS_AFTER_TWO_SESSIONS = """
import gc, signal, subprocess, sys
import numpy as np
from edgekit.backends import BackendOptions, get_backend
from edgekit.core import Artifact

backend = get_backend("openvino")
compiled = backend.compile(Artifact.load(sys.argv[1]), BackendOptions())
first = backend.load(compiled, BackendOptions())
second = backend.load(compiled, BackendOptions())
first.run(np.load(sys.argv[2])); second.run(np.load(sys.argv[2]))
del first; gc.collect()
del second; gc.collect()  # not in the reverse order of their making
signal.signal(signal.SIGCHLD, lambda *_: None)  # as PyTorch's DataLoader leaves it
subprocess.run(["true"])
print("alive")
"""


def test_a_signal_after_two_sessions_does_not_kill_the_process(tiny_artifact, images, tmp_path):
    """Two OpenVINO sessions in one process (profile, pricing, layer checks), released in
    any order, leave the main thread a signal stack that exists: a handled signal
    afterwards (here SIGCHLD, as in a test worker that once fine-tuned; Ctrl-C in a user's
    notebook) used to end the process with SIGSEGV and no traceback (see shared_core)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    np.save(tmp_path / "x.npy", images[:1])
    proc = subprocess.run(
        [sys.executable, "-c", SIGNALS_AFTER_TWO_SESSIONS, str(tiny_artifact.path), str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", (proc.returncode, proc.stderr[-2000:])


def test_throughput_mode_uses_asynchronous_requests(tiny_artifact, images):
    backend = get_backend("openvino")
    session = backend.load(backend.compile(tiny_artifact, BackendOptions()), BackendOptions())
    stats = session.throughput(images[:2], seconds=0.5)
    assert stats["requests"] >= 1 and stats["inferences"] > 0 and stats["throughput_ips"] > 0
    assert stats["batch_size"] == 2


def test_unknown_device_lists_the_available_ones(tiny_artifact):
    backend = get_backend("openvino")
    with pytest.raises(UsageError, match="no device 'NPU7'.*available: CPU"):
        backend.load(backend.compile(tiny_artifact, BackendOptions()), BackendOptions(device="npu7"))


def test_cli_bench_on_openvino_reports_parity_and_throughput(tmp_path):
    out = tmp_path / "results.json"
    proc = run_cli(
        "bench", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--backend", "onnxruntime,openvino",
        "--views", "1", "--iterations", "5", "--warmup", "1", "--throughput", "0.5", "--json", str(out),
        "--artifacts", str(tmp_path / "exported"), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cross-backend parity" in proc.stdout and "onnxruntime vs openvino" in proc.stdout
    document = json.loads(out.read_text())
    openvino = next(r for r in document["results"] if r["backend"] == "openvino")
    assert "inference precision f32" in openvino["precision"]
    assert openvino["throughput"][0]["throughput_ips"] > 0
    assert {(p["first"], p["second"]) for p in document["parity"]} >= {("onnxruntime", "openvino")}


def test_cli_unknown_device_is_one_line(tmp_path):
    proc = run_cli(
        "bench", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--backend", "openvino",
        "--device", "npu7", "--views", "1", "--iterations", "2", "--artifacts", str(tmp_path / "exported"), cwd=tmp_path,
    )
    assert_one_line_error(proc, "no device 'NPU7'", "available")
