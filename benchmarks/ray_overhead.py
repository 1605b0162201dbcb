"""What running a recipe through Ray costs, against the same recipe run here.

One machine, three ways, interleaved R times (these 2 cores are shared and noisy):

- ``local``: ``edgekit run RECIPE`` (no Ray);
- ``ray``: ``edgekit run RECIPE --ray`` (a Ray instance that edgekit starts here);
- ``ray-2node``: ``edgekit run RECIPE --ray 127.0.0.1:PORT`` on a two-node cluster
  started here: a head that builds (``edgekit_build``) and a worker on 127.0.0.2 that
  builds and times (``edgekit_build`` + ``host``), so every artifact built on the head
  travels to the worker through Ray's object store.

Artifacts are built once before the runs (a warm store, as in a lab that sweeps again),
so the difference is what Ray adds: connecting, placing, shipping, streaming the results
file. Figures:

- overhead per cell: (wall(mode) - wall(local)) / cells, with and without the fixed cost
  of starting/joining and leaving Ray (recorded by edgekit in the results file);
- accuracy: every row's images, agreement, KL and top-1 must be identical to the local run's;
- latency: each row's p50 per mode (median over the R runs) against the spread of the
  local runs' p50s (min-max) and the within-run spread of repeats.

    .venv/bin/python benchmarks/ray_overhead.py             # 8 cells, 3 rounds, ~15 min
    .venv/bin/python benchmarks/ray_overhead.py --rounds 1 --quick

Writes results/ray_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
from ray_cluster import Cluster  # noqa: E402  (the same loopback cluster the tests start)

RECIPE = """\
name = "ray-overhead"
models = {models}
variants = ["fp32", "int8"]
backends = ["pytorch", "onnxruntime"]
batch = [1]

[export]
artifacts = "{artifacts}"

{random}
[bench]
iterations = {iterations}
warmup = 10
repeats = 3
"""
FULL = ["efficientnet_lite0", "efficientnet_lite1", "mobilenet_v3_small", "squeezenet1_1"]
QUICK = ["efficientnet_lite0", "squeezenet1_1"]


def run(args: list[str], cwd: Path, env: dict) -> float:
    started = time.monotonic()
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "edgekit"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"edgekit {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return wall


def rows(path: Path) -> dict[tuple, dict]:
    document = json.loads(path.read_text())
    return {(r["model"], r["variant"], r["backend"]): r for r in document["results"]}, document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 models (4 cells), 30 iterations")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    options = parser.parse_args()
    models = QUICK if options.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    recipe = work / "recipe.toml"
    random = "".join(f"[model.{m}]\nrandom_init = true\n" for m in models if not m.startswith("efficientnet_lite"))
    recipe.write_text(RECIPE.format(models=json.dumps(models), artifacts=work / "exported", iterations=30 if options.quick else 100, random=random))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    print(f"building the artifacts once ({len(models) * 2} cells)...", flush=True)
    run(["run", str(recipe), "--json", str(work / "warm.json")], work, env)

    cluster = Cluster(work)
    cluster.start("head", '{"edgekit_build": 1}', head=True)
    cluster.start("worker", '{"edgekit_build": 1, "host": 1}', ip="127.0.0.2")
    cluster.wait_for_nodes(2)
    modes = {
        "local": [],
        "ray": ["--ray"],
        "ray-2node": ["--ray", cluster.address],
    }
    walls: dict[str, list[float]] = {m: [] for m in modes}
    documents: dict[str, list[tuple[dict, dict]]] = {m: [] for m in modes}
    try:
        for round_ in range(options.rounds):
            for mode, extra in modes.items():
                out = work / f"{mode}-{round_}.json"
                wall = run(["run", str(recipe), "--json", str(out), *extra], work, env)
                walls[mode].append(wall)
                documents[mode].append(rows(out))
                print(f"round {round_ + 1}/{options.rounds} {mode}: {wall:.1f} s", flush=True)
    finally:
        cluster.stop()

    cells = len(models) * 2
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
              "models": models, "cells": cells, "rounds": options.rounds, "walls": walls, "overhead": {}, "accuracy": {}, "latency": []}
    local_wall = statistics.median(walls["local"])
    for mode in ("ray", "ray-2node"):
        fixed = [d["cluster"]["seconds"]["connect"] + d["cluster"]["seconds"]["disconnect"] for _, d in documents[mode]]
        total = statistics.median(walls[mode]) - local_wall
        report["overhead"][mode] = {
            "wall_median_s": round(statistics.median(walls[mode]), 2), "local_median_s": round(local_wall, 2),
            "per_cell_s": round(total / cells, 3), "fixed_s": round(statistics.median(fixed), 2),
            "per_cell_without_fixed_s": round((total - statistics.median(fixed)) / cells, 3),
        }
    reference, _ = documents["local"][0]
    for mode in modes:
        differences = []
        for table, _ in documents[mode]:
            assert set(table) == set(reference), (mode, set(table) ^ set(reference))
            for key, row in table.items():
                for figure in ("images", "agreement", "kl_mean", "top1", "top5"):
                    a, b = (row["accuracy"] or {}).get(figure), (reference[key]["accuracy"] or {}).get(figure)
                    if a != b:
                        differences.append({"row": list(key), "figure": figure, "mode": a, "local": b})
        report["accuracy"][mode] = {"identical": not differences, "differences": differences[:20]}
    for key in sorted(reference):
        p50 = {m: [t[key]["latency"][0]["p50_ms"] for t, _ in documents[m]] for m in modes}
        within = [max(r["latency"][0]["p50_rounds"]) / min(r["latency"][0]["p50_rounds"]) - 1 for t, _ in documents["local"] for r in [t[key]]]
        local = p50["local"]
        entry = {"row": list(key), "p50_ms": {m: round(statistics.median(v), 4) for m, v in p50.items()},
                 "local_min_max": [round(min(local), 4), round(max(local), 4)], "local_repeat_spread": round(max(within), 4)}
        noise = max(max(local) / min(local) - 1, max(within))
        entry["ratio"] = {m: round(statistics.median(p50[m]) / statistics.median(local), 3) for m in ("ray", "ray-2node")}
        entry["within_noise"] = {m: abs(entry["ratio"][m] - 1) <= noise for m in ("ray", "ray-2node")}
        entry["noise"] = round(noise, 4)
        report["latency"].append(entry)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "ray_overhead.json").write_text(json.dumps(report, indent=1) + "\n")
    (options.out / "ray_overhead.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "# Recipes through Ray: overhead and agreement (benchmarks/ray_overhead.py)", "",
        f"{report['cells']} cells ({', '.join(report['models'])} x fp32, int8; pytorch + onnxruntime), "
        f"{report['rounds']} interleaved rounds, warm artifact store; {report['machine']['cores']} cores.", "",
        "| mode | wall median s | local median s | overhead per cell s | Ray start+stop s | per cell without it s |",
        "|---|---|---|---|---|---|",
    ]
    for mode, o in report["overhead"].items():
        lines.append(f"| {mode} | {o['wall_median_s']} | {o['local_median_s']} | {o['per_cell_s']} | {o['fixed_s']} | {o['per_cell_without_fixed_s']} |")
    lines += ["", "Accuracy identical to the local run (images, agreement, KL, top-1, top-5 of every row): "
              + ", ".join(f"{m}: {'yes' if a['identical'] else 'NO'}" for m, a in report["accuracy"].items()), "",
              "| row | local p50 ms (min-max over rounds) | ray | ray-2node | ratio ray / 2node | noise | within noise |", "|---|---|---|---|---|---|---|"]
    for e in report["latency"]:
        p = e["p50_ms"]
        lines.append(f"| {' '.join(e['row'])} | {p['local']} ({e['local_min_max'][0]}-{e['local_min_max'][1]}) | {p['ray']} | {p['ray-2node']} | "
                     f"{e['ratio']['ray']} / {e['ratio']['ray-2node']} | {e['noise'] * 100:.1f}% | {'yes' if all(e['within_noise'].values()) else 'no'} |")
    lines += ["", "noise: the larger of the local rounds' p50 spread (max/min - 1) and the largest within-run spread of the 3 repeats.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
