"""OpenVINO on this CPU: edgekit's timer vs benchmark_app, and FP32/INT8 vs PyTorch eager.

One run, one machine, every ratio taken within the run:

1. Timer fidelity: for each IR, edgekit's batch-1 latency (p50, OpenVINO session, latency
   hint, f32) next to benchmark_app's median on the same IR with the same hint, precision
   and iteration count, alternated three times (the ratio is of the two medians, so
   drift on this shared machine hits both sides).
2. Speed-ups: PyTorch eager FP32 vs ONNX Runtime and OpenVINO at FP32 and edgekit INT8,
   batch 1 latency mode, plus OpenVINO's throughput mode (asynchronous requests).
   EfficientNet-Lite0 has real weights (accuracy on held-out views recorded);
   mobilenet_v2 and resnet50 are random init (no offline weights): speed only.

Writes results/openvino_cpu.{json,md}.

    .venv/bin/python benchmarks/openvino_cpu.py
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from edgekit.artifacts import now_iso
from edgekit.backends import BackendOptions, get_backend
from edgekit.timing import TimingOptions, machine_info, time_session
from edgekit.data import load_all
from edgekit.data import HELD_OUT_EVALUATION, default_calibration
from edgekit.session import BenchRequest, run_bench
from edgekit.steps.export import ModelRequest, build_artifact
from edgekit.results.document import write_json
from edgekit.transforms.quantize import Budget, QuantizeOptions
from edgekit.steps.int8 import quantize_artifact

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)
# Random-init models have no accuracy to keep: quantize them quickly, everything INT8.
SPEED_ONLY_INT8 = QuantizeOptions(method="minmax", fallback=False, bias_correction=False, budget=Budget(min_agreement=None, max_kl=None))
MODELS = (("efficientnet_lite0", False), ("mobilenet_v2", True), ("resnet50", True))


def benchmark_app_median_ms(xml: Path, shape: tuple[int, ...], iterations: int) -> float:
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    command = [
        tool, "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync", "-infer_precision", "f32",
        "-niter", str(iterations), "-shape", "[" + ",".join(map(str, shape)) + "]",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Median:\s+([\d.]+)\s*ms", out)
    if not match:
        raise RuntimeError("benchmark_app printed no median latency:\n" + out[-2000:])
    return float(match.group(1))


def timer_fidelity(artifact, x, iterations: int, rounds: int = 3) -> dict:
    """Alternate edgekit's timer and benchmark_app ``rounds`` times; compare the medians."""
    import statistics

    backend = get_backend("openvino")
    compiled = backend.compile(artifact, BackendOptions())
    xml = artifact.path / compiled.manifest["files"]["openvino_xml"]
    session = backend.load(compiled, BackendOptions())
    timing = TimingOptions(warmup=20, iterations=iterations, max_seconds=120)
    batch = x[:1]
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(time_session(session.run, batch, 1, timing).p50_ms)
        theirs.append(benchmark_app_median_ms(xml, tuple(batch.shape), iterations))
    ratio = statistics.median(ours) / statistics.median(theirs)
    return {"xml": str(xml), "edgekit_p50_ms": ours, "benchmark_app_median_ms": theirs, "ratio": ratio, "precision": session.precision}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "openvino_cpu")
    args = parser.parse_args()
    document = {"created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(), "models": []}
    calibration = default_calibration().resolve()
    timing = TimingOptions(batch_sizes=(1,), warmup=20, iterations=args.iterations, max_seconds=60)

    for name, random_init in MODELS:
        console.print(f"[bold]{name}[/] ({'random init' if random_init else 'real weights'})")
        fp32, _ = build_artifact(ModelRequest(name, random_init=random_init))
        options = SPEED_ONLY_INT8 if random_init else QuantizeOptions()
        int8, _ = quantize_artifact(fp32, calibration, options, progress=lambda *a: None)
        x, _ = load_all(HELD_OUT_EVALUATION.resolve(), fp32.preprocessing)
        entry = {"model": name, "random_init": random_init, "runs": {}, "timer_fidelity": {}}
        for variant, artifact in (("fp32", fp32), ("int8", int8)):
            console.print(f"  {variant}: PyTorch / ONNX Runtime / OpenVINO")
            backends = ("pytorch", "onnxruntime", "openvino") if variant == "fp32" else ("onnxruntime", "openvino")
            request = BenchRequest(backends=backends, timing=timing, images=HELD_OUT_EVALUATION, throughput_seconds=args.throughput_seconds)
            run = run_bench(artifact, request)
            entry["runs"][variant] = [r.to_dict() for r in run.results]
            console.print(f"  {variant}: edgekit timer vs benchmark_app")
            entry["timer_fidelity"][variant] = timer_fidelity(artifact, x, args.iterations)
        document["models"].append(entry)

    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document))
    console.print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


def _find(runs: list[dict], backend: str) -> dict:
    return next(r for r in runs if r["backend"] == backend)


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# OpenVINO on the CPU: timer fidelity and speed-ups",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}.",
        "Latency: batch 1, p50, each backend in its own process, default threads; OpenVINO with the latency hint",
        "and inference precision f32 (explicit). Throughput mode: OpenVINO's throughput hint and as many",
        "asynchronous requests as it asks for. Accuracy: held-out views of the bundled photos vs PyTorch FP32.",
        "",
        "## edgekit's OpenVINO timer vs benchmark_app (same IR, hint, precision, iterations)",
        "",
        "| model | variant | edgekit p50 ms (3 rounds) | benchmark_app median ms (3 rounds) | ratio of medians |",
        "|---|---|---|---|---|",
    ]
    for e in doc["models"]:
        for variant, f in e["timer_fidelity"].items():
            ours = " / ".join(f"{v:.2f}" for v in f["edgekit_p50_ms"])
            theirs = " / ".join(f"{v:.2f}" for v in f["benchmark_app_median_ms"])
            lines.append(f"| {e['model']} | {variant} | {ours} | {theirs} | {f['ratio']:.3f} |")
    lines += [
        "",
        "## Speed-up over PyTorch eager FP32 (batch 1)",
        "",
        "| model | weights | PyTorch FP32 ms | ORT FP32 ms | OpenVINO FP32 ms | ORT INT8 ms | OpenVINO INT8 ms | OpenVINO INT8 vs PyTorch | OpenVINO img/s FP32 / INT8 (throughput mode) | INT8 agreement % / KL on OpenVINO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in doc["models"]:
        fp32, int8 = e["runs"]["fp32"], e["runs"]["int8"]
        torch_ms = _find(fp32, "pytorch")["latency"][0]["p50_ms"]
        cells = [_find(runs, b)["latency"][0]["p50_ms"] for runs, b in ((fp32, "onnxruntime"), (fp32, "openvino"), (int8, "onnxruntime"), (int8, "openvino"))]
        tput = [_find(runs, "openvino")["throughput"][0]["throughput_ips"] for runs in (fp32, int8)]
        acc = _find(int8, "openvino")["accuracy"]
        acc_cell = "random init" if e["random_init"] else f"{acc['agreement']:.1f} / {acc['mean_kl']:.4f}"
        lines.append(
            f"| {e['model']} | {'random init' if e['random_init'] else 'real'} | {torch_ms:.2f} | "
            + " | ".join(f"{c:.2f}" for c in cells)
            + f" | {torch_ms / cells[3]:.1f}x | {tput[0]:.0f} / {tput[1]:.0f} | {acc_cell} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
