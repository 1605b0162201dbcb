"""Hostile and huge inputs (issue 28), for benchmarks/reliability.py: a checkpoint zip bomb
(peak resident memory measured), non-finite preprocessing, absurd --threads, a duplicated
cell, absurd latencies, malformed results from a --remote device, tampered bundle.json
views, and resealed manifests (the seal is an unkeyed integrity check, so the fields are
validated). Fault makers: tests/faults_inputs.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import faults  # tests/ is on the path (reliability.py puts it there)
import faults_inputs as fin
from reliability import QUICK, edgekit, one_line, shown

SQ = ("squeezenet1_1", "--random-init")
Q = (*QUICK, "--views", "1")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def cases(t, w: Path, art: dict[str, Path]) -> None:
    tiny, int8 = art["tiny"], art["int8"]
    root = w / "inputs28"
    root.mkdir(parents=True, exist_ok=True)

    # --- 1. a checkpoint zip bomb: refused from the zip's central directory, never inflated
    def bomb():
        path = fin.checkpoint_zip_bomb(root / "bomb.pt")
        args = ("export", "squeezenet1_1", "--weights", str(path), "--artifacts", str(root / "exported"))
        proc, rss = fin.peak_rss_of([sys.executable, "-m", "edgekit.cli", *args], cwd=root)
        ok, said = one_line(proc, 2, "refused before loading")
        return ok and rss < 1 << 30, f"{said[:170]}; file {_mb(path.stat().st_size)}, CLI peak RSS {_mb(rss)} (2,736 MB when torch.load inflated it)"
    t.case("checkpoint zip bomb (2 MB file, one 2 GiB tensor deflated)", "edgekit export squeezenet1_1 --weights bomb.pt",
           "one error line, exit 2, before loading; peak RSS of the CLI below 1 GB", bomb)

    # --- 2. non-finite or zero mean/std in --preprocessing
    onnx = root / "model.onnx"
    shutil.copyfile(tiny / "model.onnx", onnx)
    for name, mean, std, fragment in (
        ("NaN in the mean", "NaN, 0.456, 0.406", "0.229, 0.224, 0.225", "mean must be finite numbers"),
        ("Infinity in the std", "0.485, 0.456, 0.406", "0.229, Infinity, 0.225", "std must be finite numbers"),
        ("zero in the std", "0.485, 0.456, 0.406", "0.229, 0, 0.225", "std must be positive"),
    ):
        prep = root / f"prep-{name.split()[0].lower()}.json"
        prep.write_text(f'{{"input_size": 64, "mean": [{mean}], "std": [{std}]}}')
        t.error_case(f"--preprocessing with {name}", ("export", str(onnx), "--preprocessing", str(prep), "--artifacts", str(root / "exported")), 2, fragment)

    # --- 3. --threads far beyond any machine (hung in session creation)
    t.error_case("--threads 100000", ("bench", *SQ, "--backend", "onnxruntime", "--threads", "100000", *Q, "--artifacts", str(root / "exported")), 2, "--threads", "1024")

    # --- 4. a duplicated cell that hides a regression
    good = fin.results_document([fin.results_row(), fin.results_row("resnet18", p50=10.0)])
    baseline = fin.write(good, root / "baseline.json")
    duplicated = fin.write(fin.with_duplicate_cell(good), root / "duplicated.json")
    t.error_case("results with a duplicated cell (the other copy 4x slower)", ("check", str(duplicated), "--baseline", str(baseline)), 2, "more than once")

    # --- 6. report on absurd latencies (the validator took them; the plot crashed)
    for p50 in (1e308, 5e-324):
        path = fin.write(fin.with_p50(good, p50), root / f"p50-{p50}.json")
        t.error_case(f"report on p50 {p50}", ("report", str(path), "-o", str(root / "site")), 2, "p50_ms must be a latency from 1e-06 to 1e+07 ms")

    # --- 6. malformed results coming back from a --remote device (a stand-in ssh serves them)
    bin_dir = fin.fake_ssh(root / "bin")
    for variant, text in fin.malformed_remote_results().items():
        payload = root / f"remote-{variant.replace(' ', '-')}.json"
        payload.write_text(text)
        args = ("bench", str(tiny), "--remote", "me@device", "--backend", "onnxruntime", *Q, "--json", str(root / "remote-out.json"))
        t.error_case(f"--remote device sends back results: {variant}", args, 1, "me@device: ", env=fin.remote_env(bin_dir, payload))

    # --- 6. bundle.json's views edited by hand (bundle.json is not among its hashed files)
    made = edgekit("bundle", str(tiny), "--backend", "onnxruntime", "--views", "1", "-o", str(root / "bundle"), cwd=root)
    for variant, change in fin.TAMPERED_VIEWS.items():
        def tampered(variant=variant, change=change):
            if made.returncode != 0:
                return False, f"cannot make the bundle: {made.stderr.strip().splitlines()[-1]}"
            copy = root / f"bundle-{variant.replace(' ', '-')}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(root / "bundle", copy)
            fin.edit_bundle_json(copy, change)
            ok, said = one_line(faults.run_bundle_runner(copy, "bench", "--iterations", "3", "--warmup", "1"), 2, "bundle.json images.views")
            return ok and not (copy / "results.json").exists(), said
        t.case(f"bundle.json views tampered: {variant}", "python -m edgekit.device_runner bench (in the bundle)",
               "one error line naming the bundle.json field, exit 2, no results", tampered)

    # --- 5/6. resealed manifests: the seal is unkeyed, so the fields are checked after it
    for variant, change in fin.RESEALED_MANIFESTS.items():
        copy = faults.copy_artifact(tiny, root / f"resealed-{variant.replace(' ', '-')}")
        fin.reseal(copy, change)
        t.error_case(f"manifest edited and resealed: {variant}", ("bench", str(copy), "--backend", "onnxruntime", *Q), 2, "manifest.json: ")

    def swapped_and_resealed():
        copy = faults.copy_artifact(tiny, root / "resealed-swap")
        shutil.copyfile(int8 / "model.onnx", copy / "model.onnx")
        fin.reseal(copy, lambda m: m["sha256"].update({"model.onnx": __import__("edgekit.core", fromlist=["sha256_file"]).sha256_file(copy / "model.onnx")}))
        proc = edgekit("bench", str(copy), "--backend", "onnxruntime", *Q, "--json", str(root / "swap.json"), cwd=root)
        return proc.returncode == 0, f"exit {proc.returncode}: runs, as documented (docs/reliability.md#artifacts-are-sealed)"
    t.case("model.onnx swapped, hashes and seal recomputed", shown(("bench", "ART", "--backend", "onnxruntime")),
           "runs: the seal is an integrity check, not a signature; sign the folder where authenticity matters", swapped_and_resealed)
