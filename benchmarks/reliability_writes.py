"""Reliability rows for writes (issue 28, hostile and huge inputs): what sits at the path a
result is written to (device nodes, FIFOs, symbolic links, links planted in shared
folders), re-bundling into a folder a device wrote to, ONNX files with external data, INT8
artifacts on read-only storage. One row per case, through the real CLI; called by
benchmarks/reliability.py as ``cases(table, work, artifacts)``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import faults  # noqa: E402
import faults_writes as fw  # noqa: E402
from reliability import QUICK, edgekit, one_line  # noqa: E402

SQ = ("squeezenet1_1", "--random-init")
Q = (*QUICK, "--views", "1")


def cases(t, w: Path, art: dict[str, Path]) -> None:
    tiny, int8 = art["tiny"], art["int8"]
    root = w / "writes"
    root.mkdir(exist_ok=True)
    bench_sq = ("bench", *SQ, "--backend", "onnxruntime", *Q, "--json")

    # --- what sits at the path
    def full_device():
        if not fw.IS_ROOT:
            return None, "not run: mknod needs root"
        node = fw.char_device(root / "full", "full")
        proc = edgekit(*bench_sq, str(node), cwd=w)
        ok, text = one_line(proc, 1, "No space left on device", "they were saved to")
        saved = Path(text.rsplit("they were saved to ", 1)[-1])
        ok = ok and fw.is_char_device(node) and fw.results_document(saved) is not None
        if saved.is_file():
            saved.unlink()
        return ok, text + ("; still a character device" if fw.is_char_device(node) else "; THE NODE WAS REPLACED")
    t.case("--json to a device node like /dev/full (as root)", "edgekit bench SQ Q --json FULL (mknod 1,7)",
           "one error line 'No space left on device', results saved elsewhere, the node still a character device", full_device)

    def null_device():
        if not fw.IS_ROOT:
            return None, "not run: mknod needs root"
        node = fw.char_device(root / "null", "null")
        proc = edgekit(*bench_sq, str(node), cwd=w)
        return proc.returncode == 0 and fw.is_char_device(node), f"exit {proc.returncode}; " + ("still a character device" if fw.is_char_device(node) else "THE NODE WAS REPLACED")
    t.case("--json to a /dev/null node (as root)", "edgekit bench SQ Q --json NULL (mknod 1,3)", "exit 0, the node still a character device", null_device)

    def dev_stdout():
        proc = edgekit(*bench_sq, "/dev/stdout", cwd=w)
        try:
            document, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index('{\n  "format"'):])
        except ValueError:
            return False, f"exit {proc.returncode}: no results document on stdout"
        return proc.returncode == 0, f"exit {proc.returncode}; stdout holds the document ({document['results'][0]['backend']} row)"
    t.case("--json /dev/stdout", "edgekit bench SQ Q --json /dev/stdout", "exit 0, the results document on stdout", dev_stdout)

    def symlinked():
        target = root / "kept" / "results.json"
        target.parent.mkdir(exist_ok=True)
        target.write_text("old")
        link = fw.symlink(root / "linked.json", Path("kept") / "results.json")
        proc = edgekit(*bench_sq, str(link), cwd=w)
        written = fw.results_document(target)
        ok = proc.returncode == 0 and link.is_symlink() and written is not None
        return ok, f"exit {proc.returncode}; link {'kept' if link.is_symlink() else 'REPLACED'}, target {'holds the results' if written else 'untouched'}"
    t.case("--json is a symbolic link", "edgekit bench SQ Q --json LINK (-> kept/results.json)", "the link stays, its target gets the results", symlinked)

    def fifo():
        path = root / "results.fifo"
        with fw.fifo_reader(path) as got:
            proc = edgekit(*bench_sq, str(path), cwd=w)
        still = stat.S_ISFIFO(os.lstat(path).st_mode)
        try:
            read = json.loads(got[0])["results"][0]["backend"] if got else None
        except ValueError:
            read = None
        return proc.returncode == 0 and still and read == "onnxruntime", f"exit {proc.returncode}; reader got {'the document' if read else 'nothing'}; {'still a FIFO' if still else 'FIFO REPLACED'}"
    t.case("--json is a FIFO with a reader", "mkfifo F; cat F & edgekit bench SQ Q --json F", "the reader gets the document, the FIFO stays, no hang", fifo)

    def planted():
        if not fw.IS_ROOT:
            return None, "not run: making another user's link needs root"
        victim = root / "victim.txt"
        victim.write_text("precious")
        link = fw.planted_link(root / "shared", "results.json", victim)
        proc = edgekit(*bench_sq, str(link), cwd=w)
        ok, text = one_line(proc, 1, "another user", "they were saved to")
        saved = Path(text.rsplit("they were saved to ", 1)[-1])
        if saved.is_file():
            saved.unlink()
        return ok and victim.read_text() == "precious" and link.is_symlink(), text
    t.case("--json is another user's link in a shared sticky folder (as root)", "edgekit bench SQ Q --json /tmp-like/results.json (-> root's file)",
           "not followed: one error line, results saved elsewhere, the victim file untouched", planted)

    # --- bundles
    def rebundle_keeps():
        out = root / "bundle"
        first = edgekit("bundle", str(tiny), "--backend", "onnxruntime", "-o", str(out), cwd=w)
        if first.returncode != 0:
            return False, f"first bundle: exit {first.returncode}"
        made = fw.device_wrote(out)  # a log and notes/
        run = faults.run_bundle_runner(out, "bench", *QUICK)  # the device's own results.json, written by the bundle's runner
        if run.returncode != 0:
            return False, f"the bundle's runner failed: exit {run.returncode}"
        made["results.json"] = (out / "results.json").read_text()
        proc = edgekit("bundle", str(tiny), "--backend", "onnxruntime", "--batch", "2", "-o", str(out), cwd=w)
        kept = [name for name, text in made.items() if (out / name).is_file() and (out / name).read_text() == text]
        verify = faults.run_bundle_runner(out, "verify")
        ok = proc.returncode == 0 and len(kept) == len(made) and verify.returncode == 0 and not fw.leftovers_beside(out)
        return ok, f"exit {proc.returncode}; {len(kept)} of {len(made)} device files kept ({', '.join(sorted(made))}); verify exit {verify.returncode}"
    t.case("re-bundle into a folder the device wrote to", "edgekit bundle TINY -o B; (device: results.json, notes/); edgekit bundle TINY -o B",
           "the new bundle verifies; the device's files are kept", rebundle_keeps)

    def rebundle_clash():
        out = root / "bundle-clash"
        a = fw.flat_photos(root / "photos-a", ["chelsea.png"])
        ab = fw.flat_photos(root / "photos-ab", ["chelsea.png", "coffee.png"])
        if edgekit("bundle", str(tiny), "--backend", "onnxruntime", "--data", str(a), "-o", str(out), cwd=w).returncode != 0:
            return False, "first bundle failed"
        before = (out / "bundle.json").read_bytes()
        shutil.copyfile(faults.SAMPLES / "coffee.png", out / "images" / "coffee.png")
        ok, text = one_line(edgekit("bundle", str(tiny), "--backend", "onnxruntime", "--data", str(ab), "-o", str(out), cwd=w), 2, "images/coffee.png", "not from the previous bundle")
        return ok and (out / "bundle.json").read_bytes() == before and (out / "images" / "coffee.png").is_file(), text
    t.case("re-bundle where the new bundle would overwrite a file of yours", "edgekit bundle TINY --data A -o B; cp x.png B/images/; edgekit bundle TINY --data A+x -o B",
           "one error line naming the file, exit 2, the old bundle as it was", rebundle_clash)

    def not_a_bundle():
        mine = root / "thesis"
        mine.mkdir(exist_ok=True)
        (mine / "thesis.tex").write_text("keep me")
        ok, text = one_line(edgekit("bundle", str(tiny), "--backend", "onnxruntime", "-o", str(mine), cwd=w), 2, "is not an edgekit bundle")
        return ok and (mine / "thesis.tex").read_text() == "keep me", text
    t.case("bundle into a non-empty folder that is not a bundle", "edgekit bundle TINY -o ~/thesis", "one error line, exit 2, nothing touched", not_a_bundle)

    # --- ONNX with external data
    def external_ok():
        from edgekit.core import Artifact

        onnx_path, data = fw.save_with_external_data(tiny / "model.onnx", root / "ext" / "tiny.onnx", "weights.bin")
        proc = edgekit("export", str(onnx_path), "--artifacts", str(root / "imported"), cwd=w)
        if proc.returncode != 0:
            return False, f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"
        (folder,) = (root / "imported" / "tiny").iterdir()
        artifact = Artifact.load(folder).verified()
        files = sorted(p.name for p in folder.iterdir())
        bench = edgekit("bench", str(folder), "--backend", "onnxruntime", *Q, "--json", str(root / "ext.json"), cwd=w)
        ok = files == ["manifest.json", "model.onnx"] and artifact.onnx_path.stat().st_size > data.stat().st_size and bench.returncode == 0
        return ok, f"artifact files {files}, model.onnx {artifact.onnx_path.stat().st_size} bytes (weights.bin {data.stat().st_size}) sealed; bench exit {bench.returncode}"
    t.case("import an ONNX saved with external data", "onnx.save(m, 'tiny.onnx', save_as_external_data=True); edgekit export tiny.onnx; edgekit bench DIR",
           "the weights inlined into the sealed model.onnx; bench runs", external_ok)

    def external_missing():
        onnx_path, data = fw.save_with_external_data(tiny / "model.onnx", root / "ext-missing" / "tiny.onnx", "weights.bin")
        data.unlink()
        return one_line(edgekit("export", str(onnx_path), "--artifacts", str(root / "imported-missing"), cwd=w), 2, "weights.bin", "missing")
    t.case("import an ONNX whose external data file is missing", "edgekit export tiny.onnx (weights.bin gone)", "one error line naming weights.bin, exit 2", external_missing)

    def external_escape():
        onnx_path, _ = fw.save_with_external_data(tiny / "model.onnx", root / "ext-escape" / "tiny.onnx", "weights.bin")
        fw.point_external_data(onnx_path, "../../etc/passwd")
        return one_line(edgekit("export", str(onnx_path), "--artifacts", str(root / "imported-escape"), cwd=w), 2, "../../etc/passwd", "own folder")
    t.case("import an ONNX whose external data points outside its folder", "edgekit export evil.onnx (location ../../etc/passwd)", "refused: one error line, exit 2", external_escape)

    # --- read-only INT8 artifacts
    problem = faults.mount_problem()

    def read_only_int8():
        if problem is not None:
            return None, f"not run: {problem}"
        with fw.read_only_copy(int8, root / "ro-mount") as copy:
            return one_line(edgekit("bench", str(copy), "--backend", "onnxruntime", *Q, "--json", str(root / "ro.json"), cwd=w), 1,
                            "cannot write the INT8 CPU form", "make the folder writable")
    t.case("INT8 artifact on read-only storage, CPU forms missing", "edgekit bench RO_INT8 --backend onnxruntime",
           "one error line naming the folder and what to do, exit 1, no traceback", read_only_int8)

    def read_only_int8_ready():
        if problem is not None:
            return None, f"not run: {problem}"
        writable = shutil.copytree(int8, root / "int8-ready" / int8.name)
        made = edgekit("export", str(writable), cwd=w)
        with fw.read_only_copy(writable, root / "ro-mount-ready", keep_cpu_forms=True) as copy:
            proc = edgekit("bench", str(copy), "--backend", "onnxruntime", *Q, "--json", str(root / "ro-ready.json"), cwd=w)
        return made.returncode == 0 and proc.returncode == 0, f"export (writable) exit {made.returncode}; bench on read-only exit {proc.returncode}"
    t.case("INT8 artifact on read-only storage with its CPU forms made", "edgekit export INT8 (writable); then read-only: edgekit bench RO_INT8",
           "runs, exit 0 (nothing written beside it)", read_only_int8_ready)
