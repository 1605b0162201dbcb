"""Writes that respect what is at the path (issue 28; fault makers in tests/faults_writes.py):
a device node, a FIFO or a symbolic link given as --json is written, never replaced;
re-bundling keeps what the device wrote; an ONNX with external data makes a whole
artifact; an INT8 artifact on read-only storage is one error line, never a traceback."""

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

import faults
import faults_writes as fw
from conftest import assert_one_line_error, run_cli

QUICK = ("--iterations", "3", "--warmup", "1", "--power", "off", "--views", "1")
MOUNT_PROBLEM = faults.mount_problem()
needs_mount = pytest.mark.skipif(MOUNT_PROBLEM is not None, reason=f"a real read-only target needs a tmpfs mount: {MOUNT_PROBLEM}")
needs_root = pytest.mark.skipif(not fw.IS_ROOT, reason="device nodes (mknod) and other users' links (lchown) need root")


def _bench(artifact, json_path, cwd, process=False):
    return run_cli("bench", str(artifact.path), "--backend", "onnxruntime", *QUICK, "--json", str(json_path), cwd=cwd, process=process)


# --------------------------------------------------------------------------- what sits at the path


@needs_root
def test_json_to_a_full_device_is_one_line_and_the_node_stays(tiny_artifact, tmp_path):
    """`--json /dev/full` turned the device node into a regular file (as root). Now: written
    in place, "No space left on device" in one line, the results saved elsewhere, the node
    still a character device. /dev/null takes them and stays a device too."""
    full = fw.char_device(tmp_path / "full", "full")
    proc = _bench(tiny_artifact, full, tmp_path)
    line = assert_one_line_error(proc, f"cannot write results to {full} (No space left on device)", "they were saved to", code=1)
    saved = Path(line.rsplit("they were saved to ", 1)[1])
    assert fw.results_document(saved)["results"][0]["latency"]
    saved.unlink()
    assert fw.is_char_device(full)

    null = fw.char_device(tmp_path / "null", "null")
    proc = _bench(tiny_artifact, null, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert fw.is_char_device(null)


def test_json_to_dev_stdout_continues_the_stream(tiny_artifact, tmp_path):
    proc = _bench(tiny_artifact, "/dev/stdout", tmp_path, process=True)
    assert proc.returncode == 0, proc.stderr
    start = proc.stdout.index('{\n  "format"')
    document, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
    assert document["results"][0]["backend"] == "onnxruntime"


def test_json_through_a_symbolic_link_writes_its_target(tiny_artifact, tmp_path):
    """A symlinked --json was replaced by a regular file (its target untouched); now the
    target gets the results and the link stays a link. A dangling link makes its target."""
    target = tmp_path / "kept" / "results.json"
    target.parent.mkdir()
    target.write_text("old")
    link = fw.symlink(tmp_path / "r.json", Path("kept") / "results.json")
    proc = _bench(tiny_artifact, link, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and fw.results_document(target)["results"][0]["backend"] == "onnxruntime"

    dangling = fw.symlink(tmp_path / "d.json", tmp_path / "made" / "by-link.json")
    proc = _bench(tiny_artifact, dangling, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dangling.is_symlink() and fw.results_document(tmp_path / "made" / "by-link.json") is not None


def test_json_to_a_fifo_is_read_by_its_reader(tiny_artifact, tmp_path):
    """A FIFO was replaced by a regular file while its reader hung; now the reader gets the
    document and the FIFO stays."""
    fifo = tmp_path / "results.fifo"
    with fw.fifo_reader(fifo) as got:
        proc = _bench(tiny_artifact, fifo, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got[0])["results"][0]["backend"] == "onnxruntime"


def test_fifo_without_a_reader_folder_and_socket_are_one_line(tmp_path, monkeypatch):
    import edgekit.files as files

    monkeypatch.setattr(files, "FIFO_WAIT_S", 0.2)
    os.mkfifo(tmp_path / "nobody.fifo")
    with pytest.raises(files.WriteError, match="no process opened it for reading"):
        files.atomic_write_text(tmp_path / "nobody.fifo", "x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "nobody.fifo").st_mode)
    with pytest.raises(files.WriteError, match="Is a directory"):
        files.atomic_write_text(tmp_path, "x")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s.sock"))
        with pytest.raises(files.WriteError, match="it is a socket"):
            files.atomic_write_text(tmp_path / "s.sock", "x")
        assert stat.S_ISSOCK(os.lstat(tmp_path / "s.sock").st_mode)
    finally:
        sock.close()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(files.WriteError, match="too many levels of symbolic links"):
        files.atomic_write_text(tmp_path / "loop", "x")


@needs_root
def test_link_planted_in_a_shared_folder_is_not_followed(tmp_path):
    """/tmp/results.json -> a file of root's, made by another user: root's write must not
    land on the victim (the kernel's protected_symlinks rule). The user's own link is."""
    from edgekit.files import WriteError, atomic_write_text

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = fw.planted_link(tmp_path / "shared", "results.json", victim)
    with pytest.raises(WriteError, match="another user"):
        atomic_write_text(link, "{}")
    assert victim.read_text() == "precious" and link.is_symlink()
    own = fw.symlink(tmp_path / "shared" / "mine.json", victim)
    atomic_write_text(own, "{}")
    assert victim.read_text() == "{}" and own.is_symlink()


def test_atomic_write_through_a_link_keeps_the_mode(tmp_path):
    from edgekit.files import atomic_write_text

    target = tmp_path / "t.txt"
    target.write_text("a")
    target.chmod(0o640)
    link = fw.symlink(tmp_path / "l.txt", target)
    atomic_write_text(link, "b")
    assert target.read_text() == "b" and stat.S_IMODE(target.stat().st_mode) == 0o640 and link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- bundles


def test_rebundling_keeps_what_the_device_wrote(tiny_artifact, tmp_path):
    out = tmp_path / "b"
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = json.loads((out / "bundle.json").read_text())
    made = fw.device_wrote(out)
    (out / "edgekit" / "__pycache__").mkdir(exist_ok=True)  # python's cache of the bundled runner: the bundle's own
    (out / "edgekit" / "__pycache__" / "core.cpython.pyc").write_bytes(b"\0")
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "--batch", "2", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, text in made.items():
        assert (out / name).read_text() == text, name
    second = json.loads((out / "bundle.json").read_text())
    assert second["id"] != first["id"] and not (out / "edgekit" / "__pycache__").exists()
    assert fw.leftovers_beside(out) == []
    proc = faults.run_bundle_runner(out, "verify")
    assert proc.returncode == 0, proc.stderr


def test_rebundling_over_a_file_of_yours_is_one_line(tiny_artifact, tmp_path):
    """A photo you put in images/ that the new bundle brings too: refused before anything
    changes (nothing silently overwritten, the old bundle as it was)."""
    out = tmp_path / "b"
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "--data", str(fw.flat_photos(tmp_path / "a", ["chelsea.png"])), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = (out / "bundle.json").read_bytes()
    shutil.copyfile(faults.SAMPLES / "coffee.png", out / "images" / "coffee.png")
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "--data", str(fw.flat_photos(tmp_path / "ab", ["chelsea.png", "coffee.png"])), "-o", str(out), cwd=tmp_path)
    assert_one_line_error(proc, "images/coffee.png is not from the previous bundle", "move it out", code=2)
    assert (out / "bundle.json").read_bytes() == before and (out / "images" / "coffee.png").is_file()
    assert fw.leftovers_beside(out) == []


def test_bundle_into_a_folder_that_is_not_a_bundle_is_one_line(tiny_artifact, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "-o", str(mine), cwd=tmp_path)
    assert_one_line_error(proc, "is not an edgekit bundle", code=2)
    (mine / "bundle.json").write_text("{not json")
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "-o", str(mine), cwd=tmp_path)
    assert_one_line_error(proc, "cannot tell its files from yours", code=2)
    assert sorted(p.name for p in mine.iterdir()) == ["bundle.json", "thesis.tex"]


def test_bundle_through_a_link_to_a_folder_keeps_the_link(tiny_artifact, tmp_path):
    (tmp_path / "real").mkdir()
    link = fw.symlink(tmp_path / "b", Path("real"))
    proc = run_cli("bundle", str(tiny_artifact.path), "--backend", "onnxruntime", "-o", str(link), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and (tmp_path / "real" / "bundle.json").is_file()


# --------------------------------------------------------------------------- ONNX with external data


def test_import_with_external_data_makes_a_whole_artifact(tiny_artifact, tmp_path):
    """`onnx.save(model, path, save_as_external_data=True)`: the .bin was neither copied nor
    hashed (a broken artifact). Now the weights are inlined into the sealed model.onnx and
    the .bin is part of the key."""
    from edgekit.core import Artifact

    onnx_path, data = fw.save_with_external_data(tiny_artifact.onnx_path, tmp_path / "ext" / "tiny.onnx", "weights.bin")
    assert data.stat().st_size > 10 * onnx_path.stat().st_size
    proc = run_cli("export", str(onnx_path), "--artifacts", "e", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "e" / "tiny").iterdir()
    artifact = Artifact.load(folder).verified()
    assert sorted(p.name for p in artifact.path.iterdir()) == ["manifest.json", "model.onnx"]
    assert artifact.onnx_path.stat().st_size > data.stat().st_size
    assert artifact.manifest["steps"][0]["external_data_inlined"] == ["weights.bin"]
    proc = _bench(artifact, tmp_path / "r.json", tmp_path)
    assert proc.returncode == 0, proc.stderr

    # other weights in the .bin: another artifact, never the first one reused
    raw = bytearray(data.read_bytes())
    raw[100:104] = b"\x00\x00\x80\x3f"
    data.write_bytes(bytes(raw))
    proc = run_cli("export", str(onnx_path), "--artifacts", "e", cwd=tmp_path)
    assert proc.returncode == 0 and "reused" not in proc.stdout, proc.stdout + proc.stderr
    assert len(list((tmp_path / "e" / "tiny").iterdir())) == 2


def test_import_with_missing_or_escaping_external_data_is_one_line(tiny_artifact, tmp_path):
    onnx_path, data = fw.save_with_external_data(tiny_artifact.onnx_path, tmp_path / "ext" / "tiny.onnx", "weights.bin")
    data.rename(tmp_path / "elsewhere.bin")
    assert_one_line_error(run_cli("export", str(onnx_path), "--artifacts", "e", cwd=tmp_path), "weights.bin", "missing", code=2)
    (tmp_path / "elsewhere.bin").rename(data)
    data.write_bytes(data.read_bytes()[:1000])
    assert_one_line_error(run_cli("export", str(onnx_path), "--artifacts", "e", cwd=tmp_path), "weights.bin", "truncated", code=2)
    fw.point_external_data(onnx_path, "../elsewhere.bin")
    assert_one_line_error(run_cli("export", str(onnx_path), "--artifacts", "e", cwd=tmp_path), "'../elsewhere.bin'", "own folder", code=2)
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").rglob("model.onnx"))


# --------------------------------------------------------------------------- read-only artifacts


@needs_mount
def test_int8_on_read_only_storage_is_one_line(int8_artifact, tmp_path):
    """The CPU form cannot be written beside a read-only INT8 artifact: the backend's row
    and the command's error say which folder and what to do; no traceback."""
    with fw.read_only_copy(int8_artifact.path, tmp_path / "ro") as copy:
        proc = run_cli("bench", str(copy), "--backend", "onnxruntime", *QUICK, "--json", str(tmp_path / "r.json"), cwd=tmp_path)
        assert_one_line_error(proc, "cannot write the INT8 CPU form", str(copy), "make the folder writable", code=1)
        document = fw.results_document(tmp_path / "r.json")  # none when the build (its deploy section) stopped first
        assert document is None or "Read-only file system" in document["results"][0]["error"]
        proc = run_cli("export", str(copy), cwd=tmp_path)
        assert_one_line_error(proc, "cannot write the INT8 CPU form", f"edgekit export {copy}", code=1)


@needs_mount
def test_int8_on_read_only_storage_with_its_cpu_forms_runs(int8_artifact, tmp_path):
    """Made writable once (`edgekit export DIR`, as the error says), then read-only: runs."""
    writable = shutil.copytree(int8_artifact.path, tmp_path / "w" / int8_artifact.path.name)
    proc = run_cli("export", str(writable), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with fw.read_only_copy(writable, tmp_path / "ro", keep_cpu_forms=True) as copy:
        proc = run_cli("bench", str(copy), "--backend", "onnxruntime", *QUICK, "--json", str(tmp_path / "r.json"), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert fw.results_document(tmp_path / "r.json")["results"][0]["latency"]
