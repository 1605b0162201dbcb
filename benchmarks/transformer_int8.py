"""Transformer INT8 latency: is edgekit's INT8 faster than FP32 for ViT, Swin and DeiT on CPU?

Goal checked: for vit_b_16, swin_t and timm/deit_tiny_patch16_224, INT8 p50 below FP32 p50
on both backends (ONNX Runtime CPU and OpenVINO CPU).

Per model (random init: the goal is about speed, and there are no weights offline):

- the FP32 artifact as ``edgekit export MODEL --random-init`` makes it, and the INT8 child as
  ``edgekit export MODEL --random-init --int8`` makes it: ``quantize_artifact`` with edgekit's
  default options (percentile ranges, bias correction on; random weights make edgekit skip
  the fallback search by itself), the default calibration images (the bundled photos' odd
  views) and the default pricing backends, into a fresh artifact root (``--artifacts`` to
  keep or reuse one);
- each (variant, backend) entry compiled and loaded through edgekit's own backends, as bench
  does (``get_backend(b).compile`` / ``.load`` with ``BackendOptions(batch_sizes=(1,))``;
  INT8 runs in the CPU form each backend makes for this CPU);
- latency: batch 1, a real preprocessed photo, ``edgekit.timing.time_session``, in
  ``--rounds`` alternating rounds over the model's four entries (round 1 in order, round 2
  reversed, ...), each round one p50 of ``--iterations`` runs after ``--warmup`` runs; the
  figure is the median of the rounds' p50s, with their range; the 1-minute load average is
  recorded before every round;
- verdict per model x backend: INT8 median p50 < FP32 median p50, the ratio INT8/FP32, and
  "within noise" where the two entries' round ranges overlap.

At most one model's sessions are alive at a time.

    .venv/bin/python benchmarks/transformer_int8.py
    .venv/bin/python benchmarks/transformer_int8.py --models timm/test_vit --iterations 10 --rounds 2 --out /tmp/tr_smoke

Writes results/transformer_int8.{json,md} (or --out's).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from run_facts import CPU_FLAGS, cpu_flags, git_state, log  # noqa: E402

MODELS = ("vit_b_16", "swin_t", "timm/deit_tiny_patch16_224")
BACKENDS = ("onnxruntime", "openvino")
BACKEND_LABELS = {"onnxruntime": "ONNX Runtime CPU", "openvino": "OpenVINO CPU"}
VARIANTS = ("fp32", "int8")
GOAL = "for vit_b_16, swin_t and timm/deit_tiny_patch16_224, INT8 p50 below FP32 p50 on both backends (ONNX Runtime and OpenVINO, CPU)"

DEFAULT_ROUNDS = 3
DEFAULT_ITERATIONS = 100
DEFAULT_WARMUP = 10
DEFAULT_MAX_SECONDS = 120.0  # per entry and round; vit_b_16 FP32 is ~0.25 s a run on 2 cores


def short_error(exc: BaseException) -> str:
    lines = [line for line in f"{type(exc).__name__}: {exc}".strip().splitlines() if line.strip()]
    if len(lines) > 6:
        lines = lines[:1] + ["..."] + lines[-4:]
    return " | ".join(lines)[:600]


# --------------------------------------------------------------------------- machine






def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("onnxruntime", "openvino", "onnx", "torch", "torchvision", "timm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------- building


def export_settings():
    """The Settings `edgekit export MODEL --random-init --int8` builds from its flags."""
    from edgekit.options import Settings

    return Settings(random_init=True, int8=True)


def build_model(name: str, root: Path) -> tuple[Any, Any, dict]:
    """The FP32 artifact and its INT8 child, each as `edgekit export` makes them."""
    from edgekit.steps.export import build_artifact, export_options, model_request
    from edgekit.steps.int8 import calibration_images, pricing_backends, quantize_artifact, quantize_options

    settings = export_settings()
    info: dict[str, Any] = {}
    start = time.perf_counter()
    fp32, reused = build_artifact(model_request(name, settings), export_options(settings), root)
    info["export"] = {"seconds": time.perf_counter() - start, "reused": reused, "params_m": fp32.manifest["model"].get("params_m"),
                      "gmacs": fp32.manifest["model"].get("gmacs"), "input_size": fp32.preprocessing.input_size}
    log(f"  FP32 artifact {'reused' if reused else 'exported'} in {info['export']['seconds']:.0f} s")

    options = quantize_options(settings)
    calibration = calibration_images(settings).resolve(fp32.classes)
    last = [0.0]

    def progress(stage: str, done: Optional[int], total: Optional[int]) -> None:
        now = time.perf_counter()
        if done is None or done == total or now - last[0] > 15:
            last[0] = now
            log(f"    int8: {stage}" + (f" {done}/{total}" if done is not None else ""))

    start = time.perf_counter()
    int8, reused = quantize_artifact(fp32, calibration, options, root, progress, None, pricing_backends(settings))
    wall = time.perf_counter() - start
    q = int8.manifest["quantization"]
    info["int8"] = {
        "wall_seconds": wall,
        "reused": reused,
        "settings": dataclasses.asdict(options),
        "priced_on": q.get("priced_on"),
        "calibration": calibration.description if hasattr(calibration, "description") else None,
        "summary": quantization_summary(q),
    }
    log(f"  INT8 artifact {'reused' if reused else 'quantized'} in {wall:.0f} s (quantizer's own {q.get('seconds')} s, "
        f"{q.get('quantized_nodes')} quantized nodes)")
    return fp32, int8, info


def quantization_summary(q: dict) -> dict[str, Any]:
    """The parts of the manifest's quantization report this benchmark records."""
    return {
        "seconds": q.get("seconds"),
        "quantized_nodes": q.get("quantized_nodes"),
        "float_nodes": q.get("float_nodes"),
        "calibration_images": q.get("calibration_images"),
        "bias_correction_applied": q.get("bias_correction_applied"),
        "random_weights": q.get("random_weights"),
        "fallback": [f.get("node") for f in q.get("fallback") or []],
        "stages": [{"name": s.get("name"), "seconds": s.get("seconds"), "mean_kl": (s.get("after") or {}).get("mean_kl"),
                    "agreement": (s.get("after") or {}).get("agreement")} for s in q.get("stages") or []],
        "notes": list(q.get("notes") or []),
    }


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Entry:
    variant: str
    backend: str
    result: dict
    session: Any = None

    @property
    def label(self) -> str:
        return f"{self.variant} / {self.backend}"


def load_entry(artifact, variant: str, backend_name: str, x: np.ndarray) -> Entry:
    """Compile and load as bench does; record what was loaded and that it runs."""
    from edgekit.backends import BackendOptions, get_backend

    options = BackendOptions(batch_sizes=(1,))
    result: dict[str, Any] = {"variant": variant, "backend": backend_name}
    try:
        backend = get_backend(backend_name)
        start = time.perf_counter()
        compiled = backend.compile(artifact, options)
        result["compile_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        session = backend.load(compiled, options)
        result["load_seconds"] = time.perf_counter() - start
        result["file"] = compiled.manifest["files"].get("openvino_xml") if backend_name == "openvino" else compiled.onnx_path.name
        result["precision"] = getattr(session, "precision", None)
        result["output_shape"] = list(np.asarray(session.run(x[:1])).shape)
        return Entry(variant, backend_name, result, session)
    except Exception as exc:  # noqa: BLE001 (recorded; the other entries go on)
        result["error"] = short_error(exc)
        result["traceback"] = traceback.format_exc()[-3000:]
        log(f"    {variant} / {backend_name}: FAILED {result['error']}")
        return Entry(variant, backend_name, result, None)


def time_rounds(entries: list[Entry], x: np.ndarray, timing, rounds: int) -> None:
    """Every live entry once per round; odd rounds in order, even rounds reversed."""
    from edgekit.timing import time_session

    live = [e for e in entries if e.session is not None]
    for r in range(rounds):
        order = live if r % 2 == 0 else live[::-1]
        log(f"  round {r + 1}/{rounds}: " + ", ".join(e.label for e in order))
        for e in order:
            if "timing_error" in e.result:
                continue
            e.result.setdefault("load_average_1min_before_rounds", []).append(os.getloadavg()[0])
            try:
                stats = time_session(e.session.run, x, 1, timing)
            except Exception as exc:  # noqa: BLE001
                e.result["timing_error"] = short_error(exc)
                log(f"    {e.label}: timing FAILED {e.result['timing_error']}")
                continue
            e.result.setdefault("rounds", []).append(dataclasses.asdict(stats))
            log(f"    {e.label}: p50 {stats.p50_ms:.2f} ms ({stats.iterations} runs)")
    for e in entries:
        done = e.result.get("rounds") or []
        if done:
            p50s = [float(s["p50_ms"]) for s in done]
            e.result["latency"] = {"p50_ms": float(np.median(p50s)), "p50_rounds": p50s, "p50_min_ms": min(p50s), "p50_max_ms": max(p50s),
                                   "iterations": [s["iterations"] for s in done], "figure": "median over the rounds of each round's p50"}


def verdict_cells(model_entry: dict) -> list[dict]:
    by = {(e["variant"], e["backend"]): e for e in model_entry.get("entries", [])}
    cells = []
    for backend in BACKENDS:
        fp32, int8 = by.get(("fp32", backend)) or {}, by.get(("int8", backend)) or {}
        f, i = fp32.get("latency"), int8.get("latency")
        cell: dict[str, Any] = {"model": model_entry["model"], "backend": backend}
        if not f or not i:
            why = [f"{v}: {e.get('error') or e.get('timing_error') or 'not timed'}" for v, e, lat in (("FP32", fp32, f), ("INT8", int8, i)) if not lat]
            cell.update(met=None, detail="not measured (" + "; ".join(why) + ")")
        else:
            several = len(f["p50_rounds"]) > 1 and len(i["p50_rounds"]) > 1
            overlap = max(f["p50_min_ms"], i["p50_min_ms"]) <= min(f["p50_max_ms"], i["p50_max_ms"])
            cell.update(
                fp32_ms=f["p50_ms"], int8_ms=i["p50_ms"], ratio=i["p50_ms"] / f["p50_ms"],
                fp32_rounds=f["p50_rounds"], int8_rounds=i["p50_rounds"],
                met=i["p50_ms"] < f["p50_ms"], within_noise=overlap if several else None,
            )
        cells.append(cell)
    return cells


def summarize(doc: dict) -> dict:
    """The goal, judged over its own models only (another model, a smoke run's, is shown but not counted)."""
    cells = [c for m in doc["models"] if m["model"] in MODELS for c in (m.get("verdicts") or [])]
    missing_models = [name for name in MODELS if name not in {m["model"] for m in doc["models"] if "error" not in m}]
    checked = [c for c in cells if c["met"] is not None]
    unmeasured = [c for c in cells if c["met"] is None]
    if checked and not all(c["met"] for c in checked):
        met: Optional[bool] = False
    elif not checked or unmeasured or missing_models:
        met = None
    else:
        met = True
    noisy = [c for c in checked if c.get("within_noise")]
    return {"goal": GOAL, "met": met, "cells_checked": len(checked), "cells_met": sum(bool(c["met"]) for c in checked),
            "cells_within_noise": len(noisy), "cells_not_measured": len(unmeasured),
            "goal_models_not_measured": missing_models,
            "other_models": [m["model"] for m in doc["models"] if m["model"] not in MODELS]}


# --------------------------------------------------------------------------- markdown


def _spread(values: list[float]) -> str:
    return f" [{min(values):.2f}-{max(values):.2f}]" if len(values) > 1 else ""


def markdown(doc: dict) -> str:
    m = doc["machine"]
    flags = ", ".join(f for f, on in (m.get("cpu_flags") or {}).items() if on) or "none of " + ", ".join(CPU_FLAGS)
    t = doc["timing"]
    s = doc["summary"]
    state = ("not checked" if not s["cells_checked"] else "not fully checked") if s["met"] is None else "MET" if s["met"] else "MISSED"
    git = doc["git"]
    lines = [
        "# Transformer INT8 vs FP32 latency on CPU (ONNX Runtime, OpenVINO)",
        "",
        f"Goal: {GOAL}. **{state}**: INT8 faster in {s['cells_met']} of {s['cells_checked']} model x backend cells"
        + (f", {s['cells_within_noise']} of them within noise" if s["cells_within_noise"] else "")
        + (f"; {s['cells_not_measured']} not measured" if s["cells_not_measured"] else "")
        + (f"; not measured: {', '.join(s['goal_models_not_measured'])}" if s["goal_models_not_measured"] else "") + "."
        + (f" Also in this run, not counted for the goal: {', '.join(s['other_models'])}." if s["other_models"] else ""),
        "",
        "| model | backend | FP32 ms | INT8 ms | ratio | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for entry in doc["models"]:
        if "error" in entry:
            lines.append(f"| {entry['model']} | - | - | - | - | failed at {entry.get('failed_at')}: {entry['error'][:200]} |")
            continue
        for c in entry.get("verdicts") or []:
            label = BACKEND_LABELS[c["backend"]]
            if c["met"] is None:
                lines.append(f"| {c['model']} | {label} | - | - | - | {c['detail'][:200]} |")
                continue
            noise = "" if c["within_noise"] is None else " (within noise)" if c["within_noise"] else ""
            verdict = ("INT8 faster" if c["met"] else "INT8 NOT faster") + noise
            lines.append(f"| {c['model']} | {label} | {c['fp32_ms']:.2f}{_spread(c['fp32_rounds'])} | {c['int8_ms']:.2f}{_spread(c['int8_rounds'])} | "
                         f"{c['ratio']:.2f} | {verdict} |")
    loads = [v for e in doc["models"] for x in e.get("entries", []) for v in x.get("load_average_1min_before_rounds", [])]
    lines += [
        "",
        "## Notes",
        "",
        f"- Latency: batch 1 (one preprocessed bundled photo), `edgekit.timing.time_session`, {t['rounds']} alternating rounds over a model's "
        f"four entries (FP32 and INT8 on each backend; odd rounds in order, even rounds reversed), each round a p50 of {t['iterations']} runs "
        f"after {t['warmup']} warm-up runs (a round stops early after {t['max_seconds']:.0f} s, at least 10 runs). Cells: the median of the "
        "rounds' p50s, their range in brackets; ratio = INT8 / FP32. \"Within noise\": the two entries' round ranges overlap.",
        f"- 1-minute load average before each round: {min(loads):.1f} to {max(loads):.1f} ({m['logical_cores']} logical cores: above ~{m['logical_cores']} "
        "something else was running)." if loads else "- No round was timed.",
        "- Models are random init (`--random-init`): the goal is about speed. The INT8 artifact is built as `edgekit export MODEL --random-init --int8` "
        "builds it: edgekit's default quantization options (" + _options_text(doc) + ", the default calibration images (the bundled photos' odd views); "
        "with random weights edgekit makes no fallback search by itself. ONNX Runtime and OpenVINO load the INT8 CPU form each backend makes for this CPU "
        f"(ONNX Runtime weight form here: {m.get('edgekit_ort_weight_form')}), through edgekit's backends with default threads.",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores, CPU flags {flags}; {m.get('platform', '')}. Runtimes: ONNX Runtime "
        f"{doc['versions'].get('onnxruntime')}, OpenVINO {doc['versions'].get('openvino')}; torch {doc['versions'].get('torch')}, timm {doc['versions'].get('timm')}.",
        f"- edgekit: commit {git['commit'][:10]}" + (f", with uncommitted changes in edgekit/ (source sha256 {git['edgekit_source_sha256'][:12]})"
                                                     if git["edgekit_uncommitted_changes"] else "") + f". Created {doc['created']}; the run took {doc.get('run_seconds', 0) / 60:.1f} min.",
    ]
    for entry in doc["models"]:
        if "error" in entry:
            continue
        q = entry["build"]["int8"]["summary"]
        stages = ", ".join(f"{st['name']} {st['seconds']:.1f} s" + (f" (KL {st['mean_kl']:.4f})" if st.get("mean_kl") is not None else "") for st in q["stages"])
        floats = ", ".join(f"{k} {v}" for k, v in sorted((q.get("float_nodes") or {}).items())) or "none"
        lines.append(
            f"- {entry['model']} ({entry['build']['export'].get('params_m') or 0:.1f} M params, {entry['build']['export'].get('gmacs') or 0:.2f} GMACs, "
            f"input {entry['build']['export'].get('input_size')} px): quantized in {entry['build']['int8']['wall_seconds']:.1f} s wall"
            + (" (reused from --artifacts)" if entry["build"]["int8"]["reused"] else "")
            + f", the quantizer's own {q['seconds']} s; {q['quantized_nodes']} quantized nodes, {q['calibration_images']} calibration images, "
            f"bias correction {'applied' if q['bias_correction_applied'] else 'not applied'}, fallback {len(q['fallback'])} nodes; stages: {stages or 'none'}; "
            f"nodes kept in float by type: {floats}."
        )
        failed = [e for e in entry.get("entries", []) if "error" in e]
        for e in failed:
            lines.append(f"- {entry['model']} {e['variant']} on {e['backend']} failed: {e['error'][:300]}")
    lines += ["", "Command:", "", f"    {doc['command']}", ""]
    return "\n".join(lines)


def _options_text(doc: dict) -> str:
    for entry in doc["models"]:
        opts = (entry.get("build") or {}).get("int8", {}).get("settings")
        if opts:
            return (f"{opts['method']} ranges at {opts['percentile']}, bias correction {'on' if opts['bias_correction'] else 'off'}, "
                    f"{opts['rounding']} rounding, fallback search allowed up to {opts['max_fallback_nodes']} nodes)")
    return "n/a)"


# --------------------------------------------------------------------------- main


def run_model(name: str, root: Path, timing, rounds: int) -> dict:
    from edgekit.data import ImageRequest, load_all

    entry: dict[str, Any] = {"model": name}
    stage = "build"
    started = time.perf_counter()
    try:
        fp32, int8, entry["build"] = build_model(name, root)
        stage = "images"
        x, _ = load_all(ImageRequest(views_per_image=1).resolve(), fp32.preprocessing)
        entry["images"] = {"count": len(x), "timed": "the first image, batch 1", "shape": list(x.shape)}
        stage = "load"
        entries = [load_entry(artifact, variant, backend, x) for variant, artifact in (("fp32", fp32), ("int8", int8)) for backend in BACKENDS]
        for e in entries:
            if e.session is not None:
                log(f"  loaded {e.label}: {e.result.get('file')} ({e.result.get('precision')})")
        stage = "timing"
        time_rounds(entries, x, timing, rounds)
        entry["entries"] = [e.result for e in entries]
        for e in entries:
            e.session = None  # at most one model's sessions alive
        del entries
        gc.collect()
        entry["verdicts"] = verdict_cells(entry)
    except Exception as exc:  # noqa: BLE001 (recorded; the next model goes on)
        entry.update(error=short_error(exc), failed_at=stage, traceback=traceback.format_exc()[-4000:])
        log(f"  {name} FAILED at {stage}: {entry['error']}")
    gc.collect()
    entry["seconds"] = time.perf_counter() - started
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"model names (default: {' '.join(MODELS)})")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help=f"timed runs per round (default {DEFAULT_ITERATIONS})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"alternating rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed runs before each round's timed ones (default {DEFAULT_WARMUP})")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"a round of one entry stops early past this (after >= 10 runs; default {DEFAULT_MAX_SECONDS:.0f})")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="artifact root to build into (and reuse from); default: a fresh temporary one, so nothing is reused")
    parser.add_argument("--out", type=Path, default=RESULTS / "transformer_int8",
                        help="where to write: a path without suffix (default results/transformer_int8), or an existing folder (FOLDER/transformer_int8.{json,md})")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    args = parser.parse_args()
    if args.out.is_dir():
        args.out = args.out / "transformer_int8"
    if args.markdown_only:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return 0
    if args.rounds < 1 or args.iterations < 1 or args.warmup < 0:
        parser.error("--rounds and --iterations must be >= 1, --warmup >= 0")

    from edgekit.artifacts import now_iso
    from edgekit.backends.int8_cpu_form import weight_form
    from edgekit.results.document import write_json
    from edgekit.timing import TimingOptions, machine_info

    timing = TimingOptions(batch_sizes=(1,), warmup=args.warmup, iterations=args.iterations, max_seconds=args.max_seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    document: dict[str, Any] = {
        "created": now_iso(),
        "command": "python " + " ".join(sys.argv),
        "goal": GOAL,
        "machine": {**machine_info(), "cpu_flags": cpu_flags(), "edgekit_ort_weight_form": weight_form(), "platform": platform.platform()},
        "versions": versions(),
        "git": git_state(),
        "timing": {"batch_size": 1, "warmup": timing.warmup, "iterations": timing.iterations, "max_seconds": timing.max_seconds,
                   "min_iterations": timing.min_iterations, "rounds": args.rounds,
                   "order": "per model: fp32/onnxruntime, fp32/openvino, int8/onnxruntime, int8/openvino; odd rounds in order, even rounds reversed",
                   "figure": "median of the rounds' p50s", "sessions": "loaded once per model, kept across its rounds, released before the next model"},
        "models_requested": args.models,
        "artifacts": str(args.artifacts) if args.artifacts else "fresh temporary root (nothing reused)",
        "models": [],
    }

    with tempfile.TemporaryDirectory(prefix="transformer-int8-") as tmp:
        root = args.artifacts or Path(tmp) / "exported"
        for name in args.models:
            log(f"{name}")
            entry = run_model(name, root, timing, args.rounds)
            document["models"].append(entry)
            for c in entry.get("verdicts") or []:
                if c["met"] is not None:
                    log(f"  {c['backend']}: FP32 {c['fp32_ms']:.2f} ms, INT8 {c['int8_ms']:.2f} ms, ratio {c['ratio']:.2f}"
                        + ("" if c["within_noise"] is None else " (within noise)" if c["within_noise"] else ""))
            log(f"{name} done in {entry['seconds']:.0f} s")
            document["run_seconds"] = time.perf_counter() - started
            document["summary"] = summarize(document)
            write_json(document, args.out.with_suffix(".json"))  # after every model: a crash keeps what was measured
            args.out.with_suffix(".md").write_text(markdown(document))
    log(f"wrote {args.out.with_suffix('.json')} and .md in {document['run_seconds'] / 60:.1f} min: {document['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
