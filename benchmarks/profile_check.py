"""edgekit's per-layer profiler (``edgekit profile``) against independent readings.

For each model and variant, on PyTorch (FP32 only), ONNX Runtime and OpenVINO CPU:

1. sum vs end-to-end: ``edgekit.api.profile(...)`` returns per backend the profile's rows
   (``.profiles[i].sum_ms``: what the runtime's own profiler says the layers took) and the
   end-to-end p50 measured with the profiler off (``.e2e_p50_ms``, edgekit.timing). Goal:
   the sum within 10% of the p50. Each figure is the median over ``--repeats`` calls.
2. OpenVINO per layer: OpenVINO's own ``benchmark_app`` (from the openvino wheel) on the
   very IR edgekit compiled and profiled (``<artifact>/openvino/as-exported/model.xml``,
   checked against the ``ir.json`` beside it: made from the ONNX file the profile names),
   with edgekit's settings: CPU, latency hint, f32 inference precision, f32 input (by
   default benchmark_app feeds image-shaped inputs as u8, adding a Convert), sync API,
   batch 1 at the model's input size, ``-niter 200``, ``-pc -report_type
   detailed_counters``, ``--ba-runs`` runs after each profile call; each layer's figure is
   the median over all those runs. What benchmark_app writes per layer is what the CPU
   plugin's counters hold at the end of the run: each node's running average over every
   inference of that compiled model (its first inference included), each inference's
   duration cut to whole microseconds (``intel_cpu/src/perf_count.h``: total_duration +=
   duration_cast<microseconds>; avg() = total_duration / num). edgekit's figure is its
   profile node's time (median over the repeats). A third reading, "counters, timed runs
   only": the same counters read directly with edgekit's compile configuration, once after
   the warm-up and once after the timed runs, so each node's mean over exactly the timed
   inferences is (avg_end * n_end - avg_warm * n_warm) / iterations; with it the wall time
   of those inferences (PERF_COUNT on). Recorded: the top-10 layers by benchmark_app's time
   with edgekit's time for the same runtime layer name and their relative difference
   (goal: within 15%), the totals (sums of the executed layers) of all three, benchmark_app's
   own median latency, and the compiled model's properties in benchmark_app (its step 8)
   and in edgekit's configuration, so a settings mismatch shows.

Models: efficientnet_lite0 (real weights; FP32 and INT8), mobilenet_v2 and resnet50
(random init; FP32 and INT8), timm/deit_tiny_patch16_224 (random init; INT8). INT8 is
edgekit's default quantizer calibrated on the bundled photos. Each (model, variant) runs
its repeats in turn: a profile call over all its backends, then the benchmark_app runs,
then the next repeat, so both readings see the same stretch of machine load.

    .venv/bin/python benchmarks/profile_check.py                                   # everything
    .venv/bin/python benchmarks/profile_check.py --models efficientnet_lite0 --quick # smoke run

Writes results/profile_check.{json,md} (a --quick run: a temporary folder unless --out).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from run_facts import CPU_FLAGS, git_state, log  # noqa: E402

# model -> (random init, variants)
MODELS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "efficientnet_lite0": (False, ("fp32", "int8")),
    "mobilenet_v2": (True, ("fp32", "int8")),
    "resnet50": (True, ("fp32", "int8")),
    "timm/deit_tiny_patch16_224": (True, ("int8",)),
}
FP32_BACKENDS = ("pytorch", "onnxruntime", "openvino")
INT8_BACKENDS = ("onnxruntime", "openvino")  # the PyTorch baseline runs FP32 only
SUM_GOAL = 0.10  # |sum / e2e p50 - 1|
LAYER_GOAL = 0.15  # |edgekit / benchmark_app - 1| per layer
TOP = 10
# compiled-model properties that decide how the CPU plugin runs; compared between benchmark_app and edgekit
PROPERTIES = ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERF_COUNT",
              "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE",
              "CPU_DENORMALS_OPTIMIZATION", "OPTIMAL_NUMBER_OF_INFER_REQUESTS")




def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 6:
        lines = lines[:1] + ["..."] + lines[-4:]
    return " | ".join(lines)[:600]


def median(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


# --------------------------------------------------------------------------- machine


def cpu_description() -> dict[str, Any]:
    from edgekit.timing import machine_info

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split(":", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        flags = set()
    ids = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model", "stepping", "microcode") and key.strip() not in ids:
                ids[key.strip()] = value.strip()
    except OSError:
        pass
    return {**machine_info(), "platform": platform.platform(), "cpu_id": ids, "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "all_cpu_flags": " ".join(sorted(flags))}




def versions() -> dict[str, str]:
    import onnxruntime
    import openvino
    import torch

    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__, "torch": torch.__version__}


# --------------------------------------------------------------------------- edgekit's profile


def profile_once(model: str, variant: str, random_init: bool, backends: tuple[str, ...], iterations: int, warmup: int, root: Path):
    import edgekit.api as api

    def progress(stage, done, total):
        if done is None:
            log(f"    {stage}")

    return api.profile(model, backends=list(backends), int8=(variant == "int8"), random_init=random_init, iterations=iterations,
                       warmup=warmup, accuracy=False, artifacts=str(root), progress=progress)


def backend_reading(p) -> dict[str, Any]:
    from edgekit import profiling

    return {"file": p.file, "runtime": p.runtime, "variant": p.variant, "iterations": p.iterations, "sum_ms": p.sum_ms,
            "e2e_p50_ms": p.e2e_p50_ms, "ratio": p.sum_ms / p.e2e_p50_ms if p.e2e_p50_ms else None, "nodes": len(p.nodes),
            "joined_by": p.joined_by, "note": p.note, "inside_nodes": p.attributed, "profiled_run_ms": p.profiled_run_ms,
            "between_nodes_ms": next((m.ms for m in p.modules if m.module == profiling.BETWEEN_NODES), 0.0)}


# --------------------------------------------------------------------------- benchmark_app


def benchmark_app_path() -> Path:
    found = Path(sys.executable).parent / "benchmark_app"
    if not found.is_file():
        raise SystemExit(f"benchmark_app is not in {found.parent} (it comes with the openvino wheel)")
    return found


def ir_of(artifact_path: Path, profiled_file: str) -> tuple[Path, dict]:
    """The IR edgekit compiled and profiled on the CPU, and its ir.json, checked to be made
    from the ONNX file the profile names."""
    folder = artifact_path / "openvino" / "as-exported"
    xml = folder / "model.xml"
    recorded = json.loads((folder / "ir.json").read_text())
    if recorded.get("source_onnx") != profiled_file:
        raise RuntimeError(f"{folder} was made from {recorded.get('source_onnx')}, but the OpenVINO profile names {profiled_file}")
    return xml, recorded


def input_shape(xml: Path) -> list[int]:
    from edgekit.backends.openvino import shared_core

    shape = shared_core().read_model(str(xml)).inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else 1 for d in shape]
    dims[0] = 1  # batch 1, as edgekit's profile
    return dims


def parse_counters(text: str) -> tuple[dict[str, dict], float]:
    """benchmark_app's detailed_counters CSV: one section per infer request (sync: one),
    'layerName;execStatus;layerType;execType;realTime (ms);cpuTime (ms)', then a Total row.
    EXECUTED layers only, averaged over the sections; and the mean of their Total rows."""
    sections: list[dict[str, dict]] = []
    totals: list[float] = []
    current: Optional[dict[str, dict]] = None
    for row in csv.reader(io.StringIO(text), delimiter=";"):
        if not row or not any(cell.strip() for cell in row):
            continue
        if row[0] == "layerName":
            current = {}
            sections.append(current)
            continue
        if row[0] == "Total" and current is not None:
            totals.append(float(row[4]))
            current = None
            continue
        if current is None or len(row) < 5 or not row[1].endswith("EXECUTED") or row[1].endswith("NOT_EXECUTED"):
            continue
        current[row[0]] = {"type": row[2], "exec_type": row[3], "ms": float(row[4])}
    layers: dict[str, dict] = {}
    for section in sections:
        for name, layer in section.items():
            entry = layers.setdefault(name, {"type": layer["type"], "exec_type": layer["exec_type"], "ms": 0.0})
            entry["ms"] += layer["ms"] / len(sections)
    return layers, (sum(totals) / len(totals) if totals else sum(v["ms"] for v in layers.values()))


def parse_report(text: str) -> dict[str, Any]:
    """benchmark_app's benchmark_report.csv: its execution results (latency median etc.)."""
    found: dict[str, Any] = {}
    for row in csv.reader(io.StringIO(text), delimiter=";"):
        if len(row) >= 2 and row[0] in ("latency (ms)", "avg latency", "min latency", "max latency", "throughput", "total number of iterations",
                                        "compile model time (ms)", "first inference time (ms)", "inference_only", "precision"):
            try:
                found[row[0]] = float(row[1])
            except ValueError:
                found[row[0]] = row[1]
    return found


def parse_properties(log_text: str) -> dict[str, str]:
    """The compiled model's properties benchmark_app prints in step 8."""
    props: dict[str, str] = {}
    in_step = False
    for line in log_text.splitlines():
        if line.startswith("[Step 8/"):
            in_step = True
            continue
        if in_step and line.startswith("[Step"):
            break
        match = re.match(r"\[ INFO \]\s+([A-Z_]+):\s*(.*)$", line)
        if in_step and match:
            props[match.group(1)] = match.group(2).strip()
    return props


def run_benchmark_app(xml: Path, shape: list[int], niter: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)  # benchmark_app does not create it
    command = [str(benchmark_app_path()), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync", "-nireq", "1",
               "-shape", "[" + ",".join(map(str, shape)) + "]", "-ip", "f32", "-infer_precision", "f32", "-niter", str(niter),
               "-pc", "-report_type", "detailed_counters", "-report_folder", str(folder), "-dump_config", str(folder / "config.json")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"benchmark_app exited {done.returncode}: {output[-2000:]}")
    layers, total = parse_counters((folder / "benchmark_detailed_counters_report.csv").read_text())
    return {
        "command": " ".join(command),
        "layers": layers,
        "total_ms": total,
        "report": parse_report((folder / "benchmark_report.csv").read_text()),
        "config": json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None,
        "properties": parse_properties(output),
        "input_line": next((line.strip() for line in output.splitlines() if "(node:" in line and "input" in line.lower() and "[1," in line), None),
    }


def ov_direct(artifact_path: Path, shape: list[int], warmup: int, iterations: int) -> dict[str, Any]:
    """The model compiled as edgekit's OpenVINO profile compiles it (its session's
    configuration for the latency hint, PERF_COUNT on: OpenVinoSession.profile), its
    properties, and the CPU plugin's counters read directly: once after ``warmup``
    inferences and once after ``iterations`` more, so each node's mean over exactly the
    timed inferences is (avg_end * n_end - avg_warm * n_warm) / iterations (the counters
    hold running averages over every inference, in whole microseconds). Random input, as
    benchmark_app's."""
    import numpy as np

    from edgekit.backends import BackendOptions, get_backend
    from edgekit.core import Artifact

    artifact = Artifact.load(artifact_path)
    backend = get_backend("openvino")
    compiled = backend.compile(artifact, BackendOptions())
    session = backend.load(compiled, BackendOptions())
    model = session._model.clone()
    model.reshape({model.inputs[0]: shape})
    config = {**session._config("LATENCY"), "PERF_COUNT": True}
    done = session._core.compile_model(model, session._device, config)
    props = {}
    for name in PROPERTIES:
        try:
            props[name] = str(done.get_property(name))
        except Exception as exc:  # noqa: BLE001
            props[name] = f"n/a ({type(exc).__name__})"
    request = done.create_infer_request()
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def counters() -> dict[str, float]:
        return {i.node_name: i.real_time.total_seconds() * 1000.0 for i in request.get_profiling_info()
                if str(i.status).endswith("EXECUTED") and not str(i.status).endswith("NOT_EXECUTED")}

    started = time.perf_counter()
    request.infer({0: data})
    first_ms = (time.perf_counter() - started) * 1000.0
    for _ in range(max(warmup - 1, 0)):
        request.infer({0: data})
    n_warm = max(warmup, 1)
    warm = counters()
    walls = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        request.infer({0: data})
        walls.append((time.perf_counter_ns() - started) / 1e6)
    end = counters()
    n_end = n_warm + iterations
    nodes = {name: max((ms * n_end - warm.get(name, 0.0) * n_warm) / iterations, 0.0) for name, ms in end.items()}
    return {"config": {k: str(v) for k, v in config.items()}, "properties": props, "nodes": nodes, "total_ms": sum(nodes.values()),
            "running_average_total_ms": sum(end.values()), "first_inference_ms": first_ms,
            "wall_p50_ms": float(np.median(walls)), "wall_mean_ms": float(np.mean(walls)), "warmup": n_warm, "iterations": iterations}


def normalise_property(value: str) -> str:
    """'<Type: 'float32'>', 'f32' and 'float32'; 'ExecutionMode.PERFORMANCE' and 'PERFORMANCE'; 'True' and 'YES'."""
    v = value.strip().strip("'\"")
    v = re.sub(r"^<Type: '([^']+)'>$", r"\1", v)
    v = v.split(".")[-1] if re.match(r"^[A-Za-z]+\.[A-Z_]+$", v) else v
    return {"float32": "f32", "yes": "true", "no": "false", "bf16": "bf16", "bfloat16": "bf16", "float16": "f16"}.get(v.lower(), v.lower())


# --------------------------------------------------------------------------- one model and variant


def check_case(model: str, variant: str, random_init: bool, args, root: Path, scratch: Path) -> dict[str, Any]:
    backends = FP32_BACKENDS if variant == "fp32" else INT8_BACKENDS
    case: dict[str, Any] = {"model": model, "variant": variant, "weights": "random init" if random_init else "real weights",
                            "backends": list(backends), "repeats": []}
    ov_nodes: list[dict[str, float]] = []  # per repeat: edgekit's OpenVINO node -> ms
    ov_types: dict[str, str] = {}
    ba_runs: list[dict] = []
    direct: list[dict] = []
    for r in range(args.repeats):
        log(f"  {model} {variant}: repeat {r + 1}/{args.repeats}: edgekit profile on {', '.join(backends)}")
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = profile_once(model, variant, random_init, backends, args.iterations, args.warmup, root)
        repeat: dict[str, Any] = {"load_average_1min_before": load, "seconds": time.perf_counter() - started,
                                  "artifact": str(result.path), "artifact_key": result.artifact,
                                  "backends": {p.backend: backend_reading(p) for p in result.profiles},
                                  "unavailable": dict(result.unavailable),
                                  "fp32_parent": {p.backend: backend_reading(p) for p in result.float_profiles}}
        case["artifact"] = str(result.path)
        for p in result.profiles:
            log(f"    {p.backend}: sum {p.sum_ms:.2f} ms vs e2e p50 {p.e2e_p50_ms:.2f} ms = {p.sum_ms / p.e2e_p50_ms:.3f}")
        ov = next((p for p in result.profiles if p.backend == "openvino"), None)
        if ov is not None:
            ov_nodes.append({n.name: n.ms for n in ov.nodes})
            ov_types.update({n.name: n.op_type for n in ov.nodes})
            try:
                xml, ir = ir_of(Path(result.path), ov.file)
                case["openvino_ir"] = {"xml": str(xml.relative_to(result.path)), "source_onnx": ir.get("source_onnx"), "source_sha256": ir.get("source_sha256")}
                shape = input_shape(xml)
                case["input_shape"] = shape
                for k in range(args.ba_runs):
                    run = run_benchmark_app(xml, shape, args.niter, scratch / f"ba-{model.replace('/', '_')}-{variant}-{r}-{k}")
                    run["load_average_1min_before"] = os.getloadavg()[0]
                    ba_runs.append(run)
                    log(f"    benchmark_app run {k + 1}/{args.ba_runs}: layers total {run['total_ms']:.2f} ms, "
                        f"median latency {run['report'].get('latency (ms)')} ms")
                d = ov_direct(Path(result.path), shape, args.warmup, args.iterations)
                direct.append(d)
                log(f"    counters read directly (timed runs only): layers total {d['total_ms']:.2f} ms, wall p50 {d['wall_p50_ms']:.2f} ms "
                    f"(PERF_COUNT on; running averages' total {d['running_average_total_ms']:.2f} ms, first inference {d['first_inference_ms']:.1f} ms)")
            except Exception as exc:  # noqa: BLE001 (recorded, the run goes on)
                case["benchmark_app_error"] = short_error(exc)
                log(f"    benchmark_app FAILED: {case['benchmark_app_error']}")
        case["repeats"].append(repeat)

    # (1) per backend: medians over the repeats
    summary = {}
    for backend in backends:
        readings = [rep["backends"][backend] for rep in case["repeats"] if backend in rep["backends"]]
        if not readings:
            reasons = [rep["unavailable"].get(backend) for rep in case["repeats"] if rep["unavailable"].get(backend)]
            summary[backend] = {"error": reasons[0] if reasons else "no profile"}
            continue
        s, e = median(x["sum_ms"] for x in readings), median(x["e2e_p50_ms"] for x in readings)
        ratio = median(x["ratio"] for x in readings)
        summary[backend] = {"file": readings[0]["file"], "sum_ms": s, "e2e_p50_ms": e, "ratio": ratio,
                            "inside_nodes": median(x.get("inside_nodes") or 0.0 for x in readings),
                            "between_nodes_ms": median(x.get("between_nodes_ms") or 0.0 for x in readings),
                            "ratios": [x["ratio"] for x in readings], "sums_ms": [x["sum_ms"] for x in readings],
                            "e2e_p50s_ms": [x["e2e_p50_ms"] for x in readings], "ok": abs(ratio - 1.0) <= SUM_GOAL}
    case["sum_vs_e2e"] = summary

    # (2) OpenVINO per layer: benchmark_app vs edgekit
    if ov_nodes and ba_runs:
        case["benchmark_app"] = compare_layers(ov_nodes, ov_types, ba_runs, direct, summary.get("openvino", {}))
        if direct:
            case["benchmark_app"]["edgekit_compile"] = {"config": direct[0]["config"], "properties": direct[0]["properties"]}
            case["benchmark_app"]["settings_match"] = settings_match(ba_runs[0]["properties"], direct[0]["properties"])
    return case


def compare_layers(ov_nodes: list[dict[str, float]], ov_types: dict[str, str], ba_runs: list[dict], direct: list[dict], ov_summary: dict) -> dict[str, Any]:
    names = set().union(*(run["layers"] for run in ba_runs))
    ba = {}
    for name in names:
        values = [run["layers"][name]["ms"] for run in ba_runs if name in run["layers"]]
        first = next(run["layers"][name] for run in ba_runs if name in run["layers"])
        ba[name] = {"ms": median(values), "runs": len(values), "type": first["type"], "exec_type": first["exec_type"], "all_ms": values}
    mine = {name: median(r.get(name) for r in ov_nodes) for name in set().union(*ov_nodes)}
    counted = {name: median(d["nodes"].get(name) for d in direct) for name in set().union(*(d["nodes"] for d in direct))} if direct else {}
    top = sorted(ba.items(), key=lambda kv: -kv[1]["ms"])[:TOP]
    rows = []
    for name, layer in top:
        e = mine.get(name)
        diff = (e - layer["ms"]) / layer["ms"] if e is not None and layer["ms"] else None
        rows.append({"layer": name, "type": layer["type"], "exec_type": layer["exec_type"], "benchmark_app_ms": layer["ms"],
                     "benchmark_app_runs_ms": layer["all_ms"], "edgekit_ms": e, "edgekit_type": ov_types.get(name),
                     "counters_timed_runs_ms": counted.get(name),
                     "relative_difference": diff, "ok": diff is not None and abs(diff) <= LAYER_GOAL})
    totals_ba = [run["total_ms"] for run in ba_runs]
    latency_ba = [run["report"].get("latency (ms)") for run in ba_runs]
    only_ba = sorted(set(ba) - set(mine))
    only_mine = sorted(set(mine) - set(ba))
    return {
        "runs": len(ba_runs),
        "niter": ba_runs[0]["report"].get("total number of iterations"),
        "command": ba_runs[0]["command"],
        "input_line": ba_runs[0]["input_line"],
        "config": ba_runs[0]["config"],
        "properties": ba_runs[0]["properties"],
        "top": rows,
        "top_ok": sum(1 for r in rows if r["ok"]),
        "total_ms": median(totals_ba),
        "totals_ms": totals_ba,
        "median_latency_ms": median(latency_ba),
        "median_latencies_ms": latency_ba,
        "edgekit_total_ms": sum(v for v in mine.values() if v is not None),
        "edgekit_sum_ms": ov_summary.get("sum_ms"),
        "edgekit_e2e_p50_ms": ov_summary.get("e2e_p50_ms"),
        "counters_timed_runs_total_ms": median(d["total_ms"] for d in direct),
        "counters_running_average_total_ms": median(d["running_average_total_ms"] for d in direct),
        "counters_wall_p50_ms": median(d["wall_p50_ms"] for d in direct),
        "counters_wall_mean_ms": median(d["wall_mean_ms"] for d in direct),
        "first_inference_ms": median(d["first_inference_ms"] for d in direct),
        "settings_match": {"same": None, "differ": {}, "compared": []},
        "layers_only_in_benchmark_app": only_ba[:50],
        "layers_only_in_edgekit": only_mine[:50],
        "layers": {name: {"benchmark_app_ms": ba[name]["ms"] if name in ba else None, "edgekit_ms": mine.get(name), "counters_timed_runs_ms": counted.get(name)}
                   for name in sorted(set(ba) | set(mine))},
    }


def settings_match(ba_props: dict[str, str], mine: dict[str, str]) -> dict[str, Any]:
    differ = {}
    for name in PROPERTIES:
        a, b = ba_props.get(name), mine.get(name)
        if a is None or b is None or b.startswith("n/a"):
            continue
        if normalise_property(a) != normalise_property(b):
            differ[name] = {"benchmark_app": a, "edgekit": b}
    return {"same": not differ, "differ": differ, "compared": [n for n in PROPERTIES if n in ba_props and n in mine]}


# --------------------------------------------------------------------------- markdown


def _f(value: Optional[float], spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(doc: dict) -> str:
    m = doc["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on) or "none of " + ", ".join(CPU_FLAGS)
    s = doc["settings"]
    lines = [
        "# edgekit profile vs independent readings",
        "",
        f"Machine: {m['cpu']}" + (f" (family {m['cpu_id'].get('cpu family')} model {m['cpu_id'].get('model')} stepping {m['cpu_id'].get('stepping')})" if m.get("cpu_id") else "")
        + f", {m['logical_cores']} logical cores, CPU flags {flags} (all flags in the JSON); {m['os']}. "
        f"Command: `{doc['command']}`. Created {doc['created']}; the run took {doc['run_seconds'] / 60:.1f} min.",
        f"edgekit: commit {doc['git']['commit'][:10]}"
        + (f" with uncommitted changes in edgekit/ (source sha256 {doc['git']['edgekit_source_sha256'][:12]})" if doc["git"]["edgekit_uncommitted_changes"] else "")
        + f". ONNX Runtime {doc['versions']['onnxruntime']}, OpenVINO {doc['versions']['openvino']}, PyTorch {doc['versions']['torch']}.",
        "",
        f"(1) Sum vs end-to-end: `edgekit.api.profile(..., iterations={s['iterations']}, warmup={s['warmup']}, accuracy=False)`, batch 1, "
        f"{s['repeats']} call(s) per model and variant; sum = the profile's rows (`sum_ms`), p50 = its end-to-end p50 with the profiler "
        f"off (`e2e_p50_ms`); each the median over the calls, ratio = median of the calls' sum / p50. Goal: ratio within 1 +/- {SUM_GOAL:.2f}. "
        "The rows include one for the profiled runs' wall time no node accounts for (the runtime's own work between nodes: the call, "
        "input and output copies, scheduling), measured, not fitted; the share of the profiled run inside the runtime's nodes is the column before the verdict.",
        f"(2) OpenVINO per layer: `benchmark_app` on the IR edgekit profiled, `{s['benchmark_app_flags']}`, {s['ba_runs']} run(s) after "
        "each profile call; per layer, the median over all runs of what benchmark_app reports: the CPU plugin's running average over "
        "every inference of the run (its first included), in whole microseconds. edgekit's figure: its profile node's time (median "
        f"over the calls, {s['iterations']} inferences each). Top {TOP} layers by benchmark_app's time, relative difference "
        f"(edgekit - benchmark_app) / benchmark_app; goal within +/-{LAYER_GOAL:.0%}. Last column: the same counters read directly "
        f"with edgekit's configuration after {s['warmup']} warm-up and after {s['iterations']} timed inferences, their difference: each "
        "node's mean over the timed inferences alone. Totals: the sums of all executed layers.",
        f"1-minute load average before the profile calls: {_load_range(doc)} (2 cores: above ~2 something else was running).",
        "",
        "## Sum vs end-to-end p50",
        "",
        "| model | variant | backend | file | sum ms | of it between nodes | p50 ms | ratio | per call | inside the runtime's nodes | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in doc["cases"]:
        if "error" in case:
            lines.append(f"| {case['model']} | {case['variant']} | - | - | failed: {case['error'][:200]} | | | | |")
            continue
        for backend, r in case["sum_vs_e2e"].items():
            if "error" in r:
                lines.append(f"| {case['model']} | {case['variant']} | {backend} | - | {r['error'][:200]} | | | | |")
                continue
            per_call = ", ".join(_f(x, ".3f") for x in r["ratios"])
            verdict = "ok" if r["ok"] else ("sum OVER p50" if r["ratio"] > 1 else "sum UNDER p50") + f" by {abs(r['ratio'] - 1):.0%}"
            inside = r.get("inside_nodes")
            lines.append(f"| {case['model']} | {case['variant']} | {backend} | {r['file']} | {_f(r['sum_ms'])} | {_f(r.get('between_nodes_ms'))} | "
                         f"{_f(r['e2e_p50_ms'])} | {_f(r['ratio'], '.3f')} | {per_call} | {f'{inside:.0%}' if inside else '-'} | {verdict} |")
    lines += ["", "## OpenVINO: benchmark_app vs edgekit per layer", ""]
    for case in doc["cases"]:
        ba = case.get("benchmark_app")
        if ba is None:
            if "error" not in case:
                lines += [f"### {case['model']} {case['variant']}", "", f"not compared: {case.get('benchmark_app_error', 'no OpenVINO profile')}", ""]
            continue
        settings = ba["settings_match"]
        lines += [
            f"### {case['model']} {case['variant']}",
            "",
            f"IR `{case['openvino_ir']['xml']}` (made from `{case['openvino_ir']['source_onnx']}`), input {case['input_shape']}; benchmark_app's input: "
            f"`{ba['input_line']}`. Totals: benchmark_app {_f(ba['total_ms'])} ms (its median latency {_f(ba['median_latency_ms'])} ms), "
            f"edgekit {_f(ba['edgekit_total_ms'])} ms (its rows' sum {_f(ba['edgekit_sum_ms'])} ms, e2e p50 {_f(ba['edgekit_e2e_p50_ms'])} ms); "
            f"edgekit / benchmark_app totals = {_f(ba['edgekit_total_ms'] / ba['total_ms'] if ba['total_ms'] else None, '.3f')}; "
            f"counters read directly over the timed runs only: {_f(ba['counters_timed_runs_total_ms'])} ms (their running averages: "
            f"{_f(ba['counters_running_average_total_ms'])} ms; wall p50 of those runs {_f(ba['counters_wall_p50_ms'])} ms, mean "
            f"{_f(ba['counters_wall_mean_ms'])} ms; first inference {_f(ba['first_inference_ms'], '.1f')} ms). "
            f"Compiled-model settings: " + ("not compared" if settings["same"] is None else "the same" if settings["same"] else "DIFFER: " + json.dumps(settings["differ"]))
            + f" ({', '.join(settings['compared'])}). Top {TOP}: {ba['top_ok']} of {len(ba['top'])} within {LAYER_GOAL:.0%}.",
            "",
            "| layer | type (exec) | benchmark_app ms | edgekit ms | difference | verdict | counters, timed runs only, ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in ba["top"]:
            diff = row["relative_difference"]
            verdict = "not in edgekit's profile" if diff is None else "ok" if row["ok"] else f"OFF by {diff:+.0%}"
            lines.append(f"| `{row['layer']}` | {row['type']} ({row['exec_type']}) | {_f(row['benchmark_app_ms'], '.3f')} | "
                         f"{_f(row['edgekit_ms'], '.3f')} | {_f(None if diff is None else diff * 100, '+.1f')}% | {verdict} | "
                         f"{_f(row.get('counters_timed_runs_ms'), '.3f')} |")
        if ba["layers_only_in_benchmark_app"] or ba["layers_only_in_edgekit"]:
            lines += ["", f"Executed layers only benchmark_app reports: {len(ba['layers_only_in_benchmark_app'])}; only edgekit: "
                      f"{len(ba['layers_only_in_edgekit'])} (names in the JSON)."]
        lines.append("")
    lines += ["## Verdicts", ""]
    for v in doc["verdicts"]:
        lines.append(f"- **{v['goal']}**: {'MET' if v['met'] else 'MISSED' if v['met'] is False else 'not checked'}. {v['detail']}")
    return "\n".join(lines) + "\n"


def _load_range(doc: dict) -> str:
    loads = [rep["load_average_1min_before"] for c in doc["cases"] for rep in c.get("repeats", [])]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"


def verdicts(doc: dict) -> list[dict]:
    sums = [(c, b, r) for c in doc["cases"] for b, r in c.get("sum_vs_e2e", {}).items() if "error" not in r]
    missed = [f"{c['model']} {c['variant']} {b} {r['ratio']:.3f}" for c, b, r in sums if not r["ok"]]
    out = [{"goal": f"profile rows' sum within {SUM_GOAL:.0%} of the end-to-end p50 (profiler off), every model x variant x backend",
            "met": (not missed) if sums else None,
            "detail": (f"{len(sums) - len(missed)} of {len(sums)} within; outside: " + "; ".join(missed)) if missed else f"all {len(sums)} within"}]
    layers = [(c, row) for c in doc["cases"] if c.get("benchmark_app") for row in c["benchmark_app"]["top"]]
    off = [f"{c['model']} {c['variant']} `{row['layer']}` " + ("missing" if row["relative_difference"] is None else f"{row['relative_difference']:+.0%}")
           for c, row in layers if not row["ok"]]
    out.append({"goal": f"OpenVINO: edgekit's per-layer time within {LAYER_GOAL:.0%} of benchmark_app's on its top {TOP} layers",
                "met": (not off) if layers else None,
                "detail": (f"{len(layers) - len(off)} of {len(layers)} within; outside: " + "; ".join(off)) if off else f"all {len(layers)} within"})
    mismatched = [f"{c['model']} {c['variant']}: {json.dumps(c['benchmark_app']['settings_match']['differ'])}" for c in doc["cases"]
                  if c.get("benchmark_app") and c["benchmark_app"]["settings_match"]["same"] is False]
    out.append({"goal": "benchmark_app compiled the model with edgekit's settings (latency hint, f32 precision, streams, threads)",
                "met": (not mismatched) if any(c.get("benchmark_app") for c in doc["cases"]) else None,
                "detail": "; ".join(mismatched) or "the same on every model"})
    return out


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    parser.add_argument("--variants", nargs="+", choices=("fp32", "int8"), default=None, help="only these variants (of those each model has)")
    parser.add_argument("--quick", action="store_true", help="smoke run: efficientnet_lite0 unless --models, 20 iterations, 1 repeat, 2 benchmark_app runs of 50")
    parser.add_argument("--iterations", type=int, default=None, help="edgekit profile iterations (default 200; --quick 20)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=None, help="edgekit profile calls per model and variant (default 3; --quick 1)")
    parser.add_argument("--ba-runs", type=int, default=None, help="benchmark_app runs after each profile call (default 3; --quick 2)")
    parser.add_argument("--niter", type=int, default=None, help="benchmark_app -niter (default 200; --quick 50)")
    parser.add_argument("--artifacts", type=Path, default=None, help="artifact root to build into and reuse (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="results/profile_check (default); a --quick run: a temporary folder")
    args = parser.parse_args()
    args.iterations = args.iterations or (20 if args.quick else 200)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.ba_runs = args.ba_runs or (2 if args.quick else 3)
    args.niter = args.niter or (50 if args.quick else 200)
    models = args.models or (["efficientnet_lite0"] if args.quick else list(MODELS))
    out = args.out or (Path(tempfile.mkdtemp(prefix="profile-check-quick-")) / "profile_check" if args.quick else RESULTS / "profile_check")
    benchmark_app_path()

    from edgekit.artifacts import now_iso
    from edgekit.results.document import write_json

    started = time.perf_counter()
    document: dict[str, Any] = {
        "created": now_iso(),
        "command": "python " + " ".join(sys.argv),
        "machine": cpu_description(),
        "versions": versions(),
        "git": git_state(),
        "settings": {"iterations": args.iterations, "warmup": args.warmup, "repeats": args.repeats, "ba_runs": args.ba_runs, "niter": args.niter,
                     "batch_size": 1, "sum_goal": SUM_GOAL, "layer_goal": LAYER_GOAL, "top": TOP,
                     "benchmark_app_flags": f"-d CPU -hint latency -api sync -nireq 1 -shape [1,3,H,W] -ip f32 -infer_precision f32 -niter {args.niter} "
                                            "-pc -report_type detailed_counters"},
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="profile-check-") as tmp:
        scratch = Path(tmp)
        root = args.artifacts or scratch / "artifacts"
        for model in models:
            random_init, variants = MODELS[model]
            for variant in variants:
                if args.variants and variant not in args.variants:
                    continue
                log(f"{model} {variant}")
                try:
                    case = check_case(model, variant, random_init, args, root, scratch)
                except Exception as exc:  # noqa: BLE001 (recorded, the run goes on)
                    case = {"model": model, "variant": variant, "error": short_error(exc), "traceback": traceback.format_exc()[-4000:]}
                    log(f"  FAILED: {case['error']}")
                document["cases"].append(case)
                document["run_seconds"] = time.perf_counter() - started
                document["verdicts"] = verdicts(document)
                write_json(document, out.with_suffix(".json"))  # after every case: a crash keeps what was measured
    document["run_seconds"] = time.perf_counter() - started
    document["verdicts"] = verdicts(document)
    write_json(document, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(document))
    log(f"wrote {out.with_suffix('.json')} and .md in {document['run_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
