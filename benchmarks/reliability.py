"""Reliability table: every fault of the issue "Results you can trust on real data at real
size", made for real and run through the real `edgekit` commands.

Each row is a case, the command, what is expected (one error line with a given text and
exit code, or a correct result) and what happened. Faults come from tests/faults.py
(truncated JPEGs, swapped models, full and read-only tmpfs mounts, killed writers, bundles
whose paths escape). Mount cases need root (mount -t tmpfs); elsewhere they are reported
as not run, never as passed.

    .venv/bin/python benchmarks/reliability.py

Writes results/reliability.{json,md}; exits 1 when a row is not ok.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import faults  # noqa: E402

from edgekit.timing import machine_info  # noqa: E402
from edgekit.results.document import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# benchmarks/<name>.py modules, each with cases(table, work, artifacts): the second round's areas
SECOND_ROUND = ("reliability_images", "reliability_labels", "reliability_writes", "reliability_runs", "reliability_inputs")
QUICK = ("--iterations", "3", "--warmup", "1", "--power", "off")


@dataclass
class Row:
    case: str
    command: str
    expected: str
    result: str = ""
    ok: Optional[bool] = None  # None: could not run here (said why in result)


def edgekit(*args: str, cwd: Path, env: Optional[dict] = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def shown(args) -> str:
    return "edgekit " + " ".join(str(a) for a in args)


def one_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> tuple[bool, str]:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    ok = proc.returncode == code and len(errors) == 1 and "Traceback" not in proc.stderr and all(f in errors[0] for f in fragments)
    return ok, f"exit {proc.returncode}: {errors[0] if errors else (proc.stderr.strip().splitlines() or ['(no error line)'])[-1]}"[:240]


class Table:
    def __init__(self, work: Path):
        self.work = work
        self.rows: list[Row] = []

    def case(self, case: str, command: str, expected: str, check: Callable[[], tuple[Optional[bool], str]]) -> None:
        row = Row(case, command, expected)
        try:
            ok, row.result = check()
            row.ok = None if ok is None else bool(ok)  # numpy booleans are not JSON
        except Exception as e:  # a broken case is a failed row, never a crashed table
            row.ok, row.result = False, f"{type(e).__name__}: {e}"[:240]
        mark = {True: "ok", False: "FAIL", None: "not run"}[row.ok]
        print(f"[{mark}] {case}: {row.result}", file=sys.stderr, flush=True)
        self.rows.append(row)

    def error_case(self, case: str, args: tuple, code: int, *fragments: str, cwd: Optional[Path] = None, env: Optional[dict] = None) -> None:
        self.case(case, shown(args), f"one error line containing {' / '.join(fragments)!r}, exit {code}",
                  lambda: one_line(edgekit(*args, cwd=cwd or self.work, env=env), code, *fragments))


def build_fixtures(w: Path) -> dict[str, Path]:
    """The artifacts the cases start from, exported once."""
    made = {}
    for name, args in {
        "tiny": ("export", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--artifacts", str(w / "exported")),
        "lite0": ("export", "efficientnet_lite0", "--artifacts", str(w / "exported")),
        "int8": ("export", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--int8", "--calib-method", "minmax",
                 "--max-fallback", "0", "--no-bias-correction", "--artifacts", str(w / "exported")),
    }.items():
        proc = edgekit(*args, cwd=w)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"cannot export the {name} fixture: {proc.stderr[-2000:]}")
        made[name] = Path(proc.stdout.strip().splitlines()[-1])
    return made


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="edgekit-reliability-") as tmp:
        w = Path(tmp)
        art = build_fixtures(w)
        t = Table(w)
        run_cases(t, w, art)
        for name in SECOND_ROUND:  # hostile and huge inputs, second round: one module per area
            importlib.import_module(name).cases(t, w, art)
        rows = t.rows
    command = "python " + " ".join(sys.argv)
    passed = sum(r.ok is True for r in rows)
    failed = [r for r in rows if r.ok is False]
    skipped = [r for r in rows if r.ok is None]
    document = {"format": "edgekit-benchmark/1", "command": command, "machine": machine_info(), "rows": [r.__dict__ for r in rows],
                "ok": passed, "failed": len(failed), "not_run": len(skipped)}
    write_json(document, RESULTS / "reliability.json")
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    md = [
        "# Reliability: every fault, for real",
        "",
        f"Machine: {document['machine']['cpu']}, {document['machine']['logical_cores']} logical cores. Command: `{command}`. "
        f"{passed} of {len(rows)} rows ok" + (f", {len(failed)} FAILED" if failed else "") + (f", {len(skipped)} not run here" if skipped else "") + ".",
        "",
        "| case | command | expected | result | ok |",
        "|---|---|---|---|---|",
        *[f"| {esc(r.case)} | `{esc(r.command)}` | {esc(r.expected)} | {esc(r.result)} | {'ok' if r.ok else ('not run' if r.ok is None else '**FAIL**')} |" for r in rows],
        "",
    ]
    (RESULTS / "reliability.md").write_text("\n".join(md))
    print(f"wrote {RESULTS / 'reliability.md'}: {passed}/{len(rows)} ok", file=sys.stderr)
    return 1 if failed else 0


def run_cases(t: Table, w: Path, art: dict[str, Path]) -> None:
    tiny, lite0, int8 = art["tiny"], art["lite0"], art["int8"]

    # --- a wrong top-1 with no warning
    clean = faults.labelled_class_tree(w / "clean")
    damaged = faults.labelled_class_tree(w / "damaged")
    faults.truncated_jpeg(faults.SAMPLES / "rocket.jpg", next(damaged.rglob("rocket.jpg")).parent / "aaa-broken.jpg")

    def truncated():
        tops = {}
        for name, folder in (("clean", clean), ("damaged", damaged)):
            proc = edgekit("bench", str(lite0), "--data", str(folder), "--views", "1", "--backend", "pytorch,onnxruntime", *QUICK, "--json", f"{name}.json", cwd=w)
            if proc.returncode != 0:
                return False, proc.stderr.strip().splitlines()[-1]
            doc = json.loads((w / f"{name}.json").read_text())
            tops[name] = ({r["backend"]: round(r["accuracy"]["top1"], 2) for r in doc["results"]}, doc["images"])
        same = tops["clean"][0] == tops["damaged"][0]
        images = tops["damaged"][1]
        ok = same and images["images_skipped"] == 1 and images["images_evaluated"] == 7 and "warning: 1 unreadable image skipped" in proc.stderr
        return ok, f"top-1 with the file {tops['damaged'][0]}, without {tops['clean'][0]}; images_skipped {images['images_skipped']} ({images['skipped_files'][0]['reason']})"
    t.case("one truncated JPEG in a labelled class folder", "edgekit bench efficientnet_lite0 --data DIR --views 1 --backend pytorch,onnxruntime",
           "same top-1 as the folder without it; file named in a warning and recorded", truncated)

    # --- sealed artifacts
    swapped = faults.copy_artifact(tiny, w / "swapped")
    faults.swap_model_and_strip_hashes(swapped, lite0 / "model.onnx")
    t.error_case("sha256 deleted from manifest.json, model.onnx replaced", ("bench", str(swapped), *QUICK), 2, "was changed after edgekit wrote it")

    def swapped_cache():
        from edgekit.backends import BackendOptions, get_backend
        from edgekit.core import Artifact

        copy = faults.copy_artifact(int8, w / "int8-cache")
        cpu_form = get_backend("onnxruntime").compile(Artifact.load(copy), BackendOptions()).onnx_path
        shutil.copyfile(copy / "model.onnx", cpu_form)
        proc = edgekit("bench", str(copy), "--backend", "pytorch,onnxruntime,openvino", *QUICK, "--json", "cache.json", cwd=w)
        ok, text = one_line(proc, 1, "onnxruntime failed", cpu_form.name, "does not match the SHA-256")
        rows = {r["backend"]: r for r in json.loads((w / "cache.json").read_text())["results"]}
        kept = rows["pytorch"]["latency"] and rows["openvino"]["latency"] and rows["onnxruntime"]["error"]
        return ok and bool(kept), text + f"; rows kept: {', '.join(b for b, r in rows.items() if r['latency'])}"
    t.case("cached ONNX Runtime CPU form replaced (one backend fails)", "edgekit bench INT8_DIR --backend pytorch,onnxruntime,openvino",
           "onnxruntime row records the error naming the file; pytorch and openvino rows kept; exit 1", swapped_cache)

    def rebuild_keeps_user_files():
        root = w / "rebuild"
        args = ("export", "squeezenet1_1", "--random-init", "--input-size", "64", "--artifacts", str(root))
        first = Path(edgekit(*args, cwd=w).stdout.strip().splitlines()[-1])
        (first / "model.onnx").write_bytes(b"damaged")
        (first / "my-results.json").write_text("{}")
        proc = edgekit(*args, cwd=w)
        aside = [p for p in first.parent.iterdir() if ".damaged-" in p.name]
        ok = proc.returncode == 0 and len(aside) == 1 and (aside[0] / "my-results.json").is_file() and "moved it to" in proc.stderr
        return ok, f"exit {proc.returncode}; " + next((line for line in proc.stderr.splitlines() if "moved it to" in line), "no move message")[:200]
    t.case("damaged artifact named by model, user file inside", "edgekit export squeezenet1_1 --random-init (again)",
           "folder moved aside with the user's file, artifact rebuilt, message says where", rebuild_keeps_user_files)

    # --- recipes and bundles
    marker = w / "pwned"
    (w / "evil.toml").write_text(
        'models = ["mobilenet_v3_small"]\nvariants = ["fp32"]\nbackends = ["onnxruntime"]\n[bench]\nremote = "user@127.0.0.1:1"\n'
        f"ssh_options = [\"ProxyCommand=touch {marker}\"]\n"
    )

    def proxy_command():
        ok, text = one_line(edgekit("run", "evil.toml", cwd=w), 2, "ProxyCommand", "refused")
        return ok and not marker.exists(), text + ("; marker file created!" if marker.exists() else "; no command ran")
    t.case("recipe [bench] ssh_options = ProxyCommand", "edgekit run evil.toml", "refused at load with one line, exit 2; the command never runs", proxy_command)

    bundle = w / "bundle"
    edgekit("bundle", str(tiny), "--backend", "onnxruntime", "--views", "1", "-o", str(bundle), cwd=w)
    pristine = w / "bundle-pristine"
    shutil.copytree(bundle, pristine, symlinks=True)
    for case, change in {
        "artifact '../..'": lambda m: m.update(artifact="../../etc"),
        "absolute artifact path": lambda m: m.update(artifact=str(w)),
        "image '/etc/hostname'": lambda m: m["images"]["views"][0].update(file="/etc/hostname"),
    }.items():
        def escape(change=change):
            shutil.rmtree(bundle)
            shutil.copytree(pristine, bundle, symlinks=True)
            faults.edit_bundle(bundle, change)
            return one_line(faults.run_bundle_runner(bundle, "bench", "--iterations", "2", "--power", "off"), 2, "bundle")
        t.case(f"bundle.json {case}", "python3 -m edgekit.device_runner bench", "refused, one error line, exit 2", escape)

    def symlink_out():
        shutil.rmtree(bundle)
        shutil.copytree(pristine, bundle, symlinks=True)
        meta = json.loads((bundle / "bundle.json").read_text())
        image = bundle / meta["images"]["views"][0]["file"]
        outside = w / "outside.png"
        shutil.copyfile(image, outside)
        image.unlink()
        image.symlink_to(outside)
        return one_line(faults.run_bundle_runner(bundle, "bench", "--iterations", "2", "--power", "off"), 2, "leads outside the bundle")
    t.case("bundle image replaced by a symlink out of the bundle (same bytes)", "python3 -m edgekit.device_runner bench", "refused, one error line, exit 2", symlink_out)

    # --- the gate
    edgekit("bench", str(tiny), "--backend", "onnxruntime", *QUICK, "--json", "gate.json", cwd=w)
    doc = json.loads((w / "gate.json").read_text())
    (w / "empty.json").write_text(json.dumps({**doc, "results": []}))
    (w / "other.json").write_text(json.dumps({**doc, "results": [{**r, "model": "another"} for r in doc["results"]]}))
    t.error_case("gate with an empty baseline", ("check", "gate.json", "--baseline", "empty.json"), 2, "baseline")
    t.error_case("gate with no matching cell", ("check", "gate.json", "--baseline", "other.json"), 2, "no cell")
    t.error_case("gate --max-latency-regression nan", ("check", "gate.json", "--baseline", "gate.json", "--max-latency-regression", "nan"), 2, "max-latency-regression")
    t.error_case("gate --max-top1-drop nan", ("check", "gate.json", "--baseline", "gate.json", "--max-top1-drop", "nan"), 2, "max-top1-drop")

    def plain_status():
        proc = edgekit("check", "gate.json", "--baseline", "gate.json", cwd=w)
        return proc.returncode == 0 and "PASS" in proc.stdout and "[green]" not in proc.stdout, f"exit {proc.returncode}; status column {'plain' if '[green]' not in proc.stdout else 'shows markup'}"
    t.case("gate status column", "edgekit check gate.json --baseline gate.json", "PASS printed as a word, no literal markup", plain_status)

    slowed_ref = json.loads(json.dumps(doc))
    slowed_ref["reference"] = doc["results"][0]["model"]
    (w / "ref-base.json").write_text(json.dumps(slowed_ref))
    for r in slowed_ref["results"]:
        for s in r["latency"]:
            s["p50_ms"] *= 2
    (w / "ref-slow.json").write_text(json.dumps(slowed_ref))
    t.error_case("gate: the reference model itself got 2x slower", ("check", "ref-slow.json", "--baseline", "ref-base.json"), 1, "regression")

    # --- one-line errors instead of tracebacks
    (w / "w.pth").write_text("not weights\n")
    t.error_case("weights file that is text", ("export", "squeezenet1_1", "--weights", "w.pth"), 2, "cannot be loaded with weights_only=True")
    binary = bytes(range(256)) * 8
    (w / "labels.bin").write_bytes(binary)
    (w / "recipe.bin").write_bytes(binary)
    (w / "results.bin").write_bytes(binary)
    flat = w / "flat"
    flat.mkdir()
    shutil.copyfile(faults.SAMPLES / "chelsea.png", flat / "chelsea.png")
    t.error_case("binary labels file", ("bench", str(tiny), "--data", str(flat), "--labels", "labels.bin", *QUICK), 2, "not UTF-8")
    t.error_case("binary recipe file", ("run", "recipe.bin"), 2, "recipe.bin")
    t.error_case("binary results file (check)", ("check", "results.bin", "--baseline", "gate.json"), 2, "results.bin")
    t.error_case("binary results file (report)", ("report", "results.bin", "-o", "rep"), 2, "results.bin")
    for name, change, fragment in (
        ("results: [{}]", lambda d: d.update(results=[{}]), "results[0]"),
        ("a null p50", lambda d: d["results"][0]["latency"][0].update(p50_ms=None), "p50_ms"),
        ("a string top-1", lambda d: d["results"][0]["accuracy"].update(top1="high"), "top1"),
        ("a zero baseline p50", lambda d: d["results"][0]["latency"][0].update(p50_ms=0), "p50_ms"),
    ):
        bad = json.loads(json.dumps(doc))
        change(bad)
        (w / "bad.json").write_text(json.dumps(bad))
        t.error_case(f"malformed results ({name}) given to check", ("check", "gate.json", "--baseline", "bad.json"), 2, "bad.json", fragment)
        t.error_case(f"malformed results ({name}) given to report", ("report", "bad.json", "-o", "rep"), 2, "bad.json", fragment)

    import torch

    torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), (torch.zeros(1, 3, 32, 32),), str(w / "features.onnx"), dynamo=False)
    t.error_case("ONNX whose output is a feature map, not [N, classes]", ("bench", "features.onnx", *QUICK), 2, "[N, classes] logits")

    bombs = faults.labelled_class_tree(w / "bombs", ["chelsea.png", "coffee.png"])
    faults.decompression_bomb(next(bombs.iterdir()) / "bomb.png")

    def bomb_bench():
        proc = edgekit("bench", str(tiny), "--data", str(bombs), "--views", "1", "--backend", "onnxruntime", *QUICK, "--json", "bomb.json", cwd=w)
        ok = proc.returncode == 0 and "pixel limit" in proc.stderr
        return ok, f"exit {proc.returncode}; " + next((line for line in proc.stderr.splitlines() if "pixel limit" in line), "no warning")[:200]
    t.case("image above Pillow's pixel limit (bench)", "edgekit bench TINY --data DIR", "skipped with a warning naming it; the run completes", bomb_bench)

    def bomb_bundle():
        proc = edgekit("bundle", str(tiny), "--backend", "onnxruntime", "--data", str(bombs), "-o", "bomb-bundle", cwd=w)
        return proc.returncode == 0 and "pixel limit" in proc.stderr, f"exit {proc.returncode}; {len(json.loads((w / 'bomb-bundle' / 'bundle.json').read_text())['images']['views']) if proc.returncode == 0 else 0} images bundled"
    t.case("image above Pillow's pixel limit (bundle)", "edgekit bundle TINY --data DIR", "left out with a warning; the bundle is made", bomb_bundle)

    problem = faults.mount_problem()
    mounts = w / "mounts"

    def mounted(case, expected, command, body, size="1m", read_only=False):
        def check():
            if problem is not None:
                return None, f"not run: {problem}"
            with faults.small_mount(mounts / case.replace(" ", "-")[:40], size, read_only) as m:
                return body(m)
        t.case(case, command, expected, check)

    mounted("export to a read-only disk", "one error line naming the folder, exit 1", "edgekit export squeezenet1_1 --artifacts RO",
            lambda m: one_line(edgekit("export", "squeezenet1_1", "--random-init", "--input-size", "64", "--artifacts", str(m / "e"), cwd=w), 1, "Read-only file system"), read_only=True)
    mounted("export to a full disk", "one error line, exit 1, no file left", "edgekit export squeezenet1_1 --artifacts FULL",
            lambda m: _and_empty(one_line(edgekit("export", "squeezenet1_1", "--random-init", "--input-size", "64", "--artifacts", str(m / "e"), cwd=w), 1, "No space left"), m))

    def full_results(m):
        filler = faults.fill(m)
        ok, text = one_line(edgekit("bench", str(tiny), "--backend", "onnxruntime", *QUICK, "--json", str(m / "r.json"), cwd=w), 1, "they were saved to")
        saved = Path(text.rsplit("they were saved to ", 1)[-1])
        ok = ok and saved.is_file() and bool(json.loads(saved.read_text())["results"][0]["latency"]) and faults.files_under(m) == [filler]
        if saved.is_file():
            saved.unlink()
        return ok, text
    mounted("bench results to a full disk", "one error line saying where the measured results went; nothing half-written", "edgekit bench TINY --json FULL/r.json", full_results, size="64k")

    def full_report(m):
        ok, text = one_line(edgekit("report", "gate.json", "-o", str(m / "rep"), cwd=w), 1, "No space left")
        empty = [p for p in faults.files_under(m) if p.stat().st_size == 0]
        return ok and not empty, text + (f"; {len(empty)} empty files left" if empty else "; no empty files")
    mounted("report to a full disk", "one error line, no 0-byte files", "edgekit report r.json -o FULL", full_report, size="64k")
    mounted("bundle to a full disk", "one error line, nothing left", "edgekit bundle TINY -o FULL/b",
            lambda m: _and_empty(one_line(edgekit("bundle", str(tiny), "--backend", "onnxruntime", "-o", str(m / "b"), cwd=w), 1, "No space left"), m))

    # --- leftovers
    def killed_export(sig, expected_code):
        root = w / f"killed-{sig}"
        args = ("export", "squeezenet1_1", "--random-init", "--input-size", "64", "--artifacts", str(root))
        proc = faults.edgekit_process(*args, cwd=w)
        staged = faults.kill_during_staging(proc, root, sig)
        after_kill = [p for p in staged if p.exists()]
        rerun = edgekit(*args, cwd=w)
        left = faults.staging_folders(root)
        ok = proc.returncode == expected_code and rerun.returncode == 0 and not left
        return ok, f"killed: exit {proc.returncode}, {len(after_kill)} staging folder(s) left by the dead writer; rerun exit {rerun.returncode}, {len(left)} left after it"
    t.case("export killed with SIGKILL, then run again", "edgekit export squeezenet1_1 (kill -9, rerun)", "the rerun cleans the dead writer's staging folder and succeeds",
           lambda: killed_export(signal.SIGKILL, -signal.SIGKILL))
    t.case("export stopped with SIGTERM", "edgekit export squeezenet1_1 (kill -TERM)", "exit 130, no staging folder left", lambda: killed_export(signal.SIGTERM, 130))

    def sigterm_bench():
        temp = w / "bench-tmp"
        temp.mkdir()
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp)}
        proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "bench", str(tiny), "--backend", "onnxruntime", "--iterations", "100000", "--max-seconds", "600", "--power", "off"],
                                cwd=w, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        faults.wait_for(lambda: any(temp.glob(".tmp-edgekit-bench-*/onnxruntime.logits.f32")), timeout=300)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        left = list(temp.glob(".tmp-edgekit-*"))
        return proc.returncode == 130 and not left, f"exit {proc.returncode}; {len(left)} work folders left"
    t.case("bench stopped with SIGTERM", "edgekit bench TINY (kill -TERM while timing)", "exit 130, its worker stopped, work folder removed", sigterm_bench)

    def concurrent_writers():
        from edgekit.results.document import write_json_atomic

        target = w / "concurrent.json"
        failures = []

        def writer(n):
            for i in range(50):
                try:
                    write_json_atomic({"writer": n, "i": i, "pad": "x" * 2000}, target)
                except Exception as e:  # counted, not raised: the row reports how many
                    failures.append(e)
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(12)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        leftovers = [p for p in w.iterdir() if p.name.startswith(".concurrent.json.")]
        json.loads(target.read_text())
        return not failures and not leftovers, f"600 writes by 12 writers: {len(failures)} failures, {len(leftovers)} temp files left, final file valid JSON"
    t.case("concurrent results writers", "write_json_atomic x 600 (12 threads)", "no failure, valid file, no temp files", concurrent_writers)

    # --- numbers shown with their precision
    def intervals():
        proc = edgekit("bench", str(lite0), "--backend", "pytorch,onnxruntime", "--views", "2", *QUICK, "--json", "ci.json", cwd=w)
        rows = {r["backend"]: r["accuracy"] for r in json.loads((w / "ci.json").read_text())["results"]}
        ort = rows["onnxruntime"]
        ok = proc.returncode == 0 and ort["top1_ci"] and ort["top1_drop_ci"][0] <= 0 <= ort["top1_drop_ci"][1] and "noise" in proc.stdout
        return ok, f"ORT top-1 {ort['top1']:.1f} [{ort['top1_ci'][0]:.1f}, {ort['top1_ci'][1]:.1f}], drop {ort['top1_drop']:+.1f} [{ort['top1_drop_ci'][0]:+.1f}, {ort['top1_drop_ci'][1]:+.1f}] shown as noise"
    t.case("top-1 on 14 views of 7 photos", "edgekit bench efficientnet_lite0 --views 2", "95% intervals on top-1, drop and agreement; a drop inside the noise is called noise", intervals)

    def random_init():
        proc = edgekit("bench", str(tiny), "--backend", "pytorch,onnxruntime", *QUICK, "--json", "ri.json", cwd=w)
        acc = json.loads((w / "ri.json").read_text())["results"][1]["accuracy"]
        return proc.returncode == 0 and acc["top1"] is None and acc["top1_drop"] is None and "random-init" in (acc["note"] or ""), f"top-1 {acc['top1']}, drop {acc['top1_drop']}, note '{acc['note']}'"
    t.case("random-init weights", "edgekit bench mobilenet_v3_small --random-init", "top-1 and drop not applicable (said so), not +0.00", random_init)

    # --- smaller ones
    t.error_case("--labels without --data", ("bench", "--labels", "labels.bin"), 2, "--labels applies with --data")
    t.error_case("--percentile 120", ("export", "squeezenet1_1", "--int8", "--percentile", "120"), 2, "--percentile")
    t.error_case("--max-kl -1", ("export", "squeezenet1_1", "--int8", "--max-kl", "-1"), 2, "--max-kl")
    t.error_case("--min-agreement 150", ("export", "squeezenet1_1", "--int8", "--min-agreement", "150"), 2, "--min-agreement")
    (w / "bool.toml").write_text('models = ["squeezenet1_1"]\nvariants = ["fp32"]\nbackends = ["onnxruntime"]\nbatch = [true]\n')
    t.error_case("recipe batch = [true]", ("run", "bool.toml"), 2, "batch")

    def sixteen_bit():
        from edgekit.data.decode import _open_rgb

        rgb = __import__("numpy").asarray(_open_rgb(faults.sixteen_bit_png(w / "ramp16.png")))
        return rgb.min() == 0 and rgb.max() == 255 and 100 < rgb[:, 32, 0].mean() < 160, f"pixel range {rgb.min()}..{rgb.max()}, middle column {rgb[:, 32, 0].mean():.0f}"
    t.case("16-bit greyscale PNG", "edgekit bench --data DIR (16-bit PNG)", "scaled to 8 bits (a ramp), not clipped to white", sixteen_bit)

    def ten_classes():
        import torchvision

        torch.onnx.export(torchvision.models.mobilenet_v3_small(num_classes=10).eval(), (torch.zeros(1, 3, 64, 64),), str(w / "ten.onnx"), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
        proc = edgekit("bench", "ten.onnx", "--views", "1", *QUICK, "--json", "ten.json", cwd=w)
        acc = json.loads((w / "ten.json").read_text())["results"][0]["accuracy"]
        return proc.returncode == 0 and acc["top1"] is None and "10 outputs" in acc["note"], f"top-1 {acc['top1']}, note '{acc['note']}'"
    t.case("a 10-class ONNX on ImageNet-labelled photos", "edgekit bench ten.onnx", "top-1 not applicable (10 outputs vs ImageNet labels), not 0%", ten_classes)

    memory = RESULTS / "eval_memory.json"

    def memory_row():
        if not memory.is_file():
            return None, "not run: benchmarks/eval_memory.py has not written its results"
        doc = json.loads(memory.read_text())
        sizes = sorted({r["images"] for r in doc["rows"]})
        return bool(doc["goal_met"]), f"worker RSS growth {', '.join(f'{b} {g:+.0f} MB' for b, g in doc['growth_mb'].items())} from {sizes[0]} to {sizes[-1]:,} images"
    t.case("memory as the data set grows", "benchmarks/eval_memory.py", "every worker flat within 64 MB from 7 to 50,000 images", memory_row)


def _and_empty(result: tuple[bool, str], mount: Path) -> tuple[bool, str]:
    ok, text = result
    left = faults.files_under(mount)
    return ok and not left, text + (f"; {len(left)} files left" if left else "; nothing left")


if __name__ == "__main__":
    sys.exit(main())
