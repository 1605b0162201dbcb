"""LiteRT and ExecuTorch beside ONNX Runtime and OpenVINO: agreement with PyTorch, INT8 KL
in each target's own scheme next to edgekit's QDQ graph, and batch-1 latency on this CPU.

For each model, one FP32 artifact and one INT8 artifact (edgekit's QDQ graph, calibrated on
the bundled photos' odd views). Every backend runs the same held-out views (the even views)
through the same bench session, joined on view identity with PyTorch FP32:

- FP32: PyTorch, ONNX Runtime, OpenVINO, LiteRT (XNNPACK), ExecuTorch (XNNPACK).
- INT8: ONNX Runtime and OpenVINO run edgekit's QDQ graph; LiteRT and ExecuTorch quantize
  the FP32 parent in their own default scheme, calibrated on the very images edgekit's
  graph was (the artifact's recorded calibration views).

Latency: batch 1, p50 per round; the rounds alternate the backends' order (forwards, then
backwards), and each row's ratio to ONNX Runtime is taken within each round (this machine
is shared and noisy). EfficientNet-Lite0 has real ImageNet weights; mobilenet_v2 and
mobilenet_v3_large are random init (no offline weights): their agreement checks the
conversion, not a classifier.

Writes results/mobile_runtimes.{json,md}.

    .venv/bin/python benchmarks/mobile_runtimes.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from rich.console import Console

from edgekit.artifacts import now_iso
from edgekit.backends import BackendOptions
from edgekit.data import HELD_OUT_EVALUATION, default_calibration
from edgekit.results.document import write_json
from edgekit.session import BenchRequest, run_bench
from edgekit.steps.export import ModelRequest, build_artifact
from edgekit.steps.int8 import quantize_artifact
from edgekit.timing import TimingOptions, machine_info
from edgekit.transforms.quantize import Budget, QuantizeOptions

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)
MODELS = (("efficientnet_lite0", False), ("mobilenet_v2", True), ("mobilenet_v3_large", True))
# Random-init models have no accuracy to keep: quantized quickly, everything INT8.
SPEED_ONLY_INT8 = QuantizeOptions(method="minmax", fallback=False, bias_correction=False, budget=Budget(min_agreement=None, max_kl=None))
BACKENDS = {"fp32": ("onnxruntime", "openvino", "litert", "executorch"), "int8": ("onnxruntime", "openvino", "litert", "executorch")}
SCHEME = {"onnxruntime": "edgekit QDQ", "openvino": "edgekit QDQ", "litert": "LiteRT's own", "executorch": "ExecuTorch's own", "pytorch": "-"}


def run_rounds(artifact, backends: tuple[str, ...], timing: TimingOptions, rounds: int, threads: int) -> dict:
    """``rounds`` bench runs, the backends' order reversed every other round; each run's
    rows (accuracy is the same every round: the first is kept)."""
    runs = []
    for i in range(rounds):
        order = backends if i % 2 == 0 else tuple(reversed(backends))
        console.print(f"    round {i + 1}/{rounds}: {', '.join(order)}")
        request = BenchRequest(backends=order, options=BackendOptions(threads=threads), timing=timing, images=HELD_OUT_EVALUATION)
        run = run_bench(artifact, request)
        runs.append({r.backend: r.to_dict() for r in run.results})
    return {"rounds": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=[m for m, _ in MODELS])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="every runtime's thread count (default: the logical cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "mobile_runtimes")
    args = parser.parse_args()
    document = {"created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(), "threads": args.threads, "models": []}
    calibration = default_calibration().resolve()
    timing = TimingOptions(batch_sizes=(1,), warmup=10, iterations=args.iterations, max_seconds=30)
    for name, random_init in MODELS:
        if name not in args.models:
            continue
        console.print(f"[bold]{name}[/] ({'random init' if random_init else 'real weights'})")
        fp32, _ = build_artifact(ModelRequest(name, random_init=random_init))
        int8, _ = quantize_artifact(fp32, calibration, SPEED_ONLY_INT8 if random_init else QuantizeOptions(), progress=lambda *a: None)
        entry = {"model": name, "random_init": random_init, "calibration_images": len(calibration), "variants": {}}
        for variant, artifact in (("fp32", fp32), ("int8", int8)):
            console.print(f"  {variant}")
            entry["variants"][variant] = {"artifact": artifact.key, **run_rounds(artifact, BACKENDS[variant], timing, args.rounds, args.threads)}
        document["models"].append(entry)
        write_json(document, args.out.with_suffix(".json"))  # what is done survives an interruption
    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document))
    console.print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


def _cell(row: dict, key: str, digits: int) -> str:
    acc = row.get("accuracy") or {}
    value = acc.get(key)
    if value is None:
        return "-"
    ci = acc.get(f"{key}_ci") or acc.get(f"{key}_interval")
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "")


def summary_rows(entry: dict, variant: str) -> list[dict]:
    """Per backend: accuracy (first round), p50 per round, and the ratio to ONNX Runtime's
    p50 within each round."""
    rounds = entry["variants"][variant]["rounds"]
    rows = []
    for backend in rounds[0]:
        first = rounds[0][backend]
        if first.get("error"):
            rows.append({"backend": backend, "error": first["error"]})
            continue
        p50s = [r[backend]["latency"][0]["p50_ms"] for r in rounds if r[backend].get("latency")]
        ratios = [r[backend]["latency"][0]["p50_ms"] / r["onnxruntime"]["latency"][0]["p50_ms"]
                  for r in rounds if r[backend].get("latency") and r.get("onnxruntime", {}).get("latency")]
        rows.append({"backend": backend, "row": first, "p50s": p50s, "ratios": ratios})
    return rows


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# Phones' and boards' runtimes on this CPU: LiteRT and ExecuTorch beside ONNX Runtime and OpenVINO",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}.",
        "Accuracy: the bundled photos' held-out (even) views, joined on view identity with PyTorch FP32; agreement",
        "is top-1 agreement with PyTorch, KL the mean KL(PyTorch FP32 || backend), 95% intervals in brackets where",
        f"the results carry them. Latency: batch 1, {doc.get('threads')} threads on every runtime, p50 of each round; the ratio is to ONNX Runtime's p50 in the",
        "same round (rounds alternate the backends' order). INT8: ONNX Runtime and OpenVINO run edgekit's QDQ",
        "graph; LiteRT and ExecuTorch run their own quantizer's output, calibrated on the same images.",
        "Random-init models: their logits are nearly equal, so the targets' INT8 programs, which quantize the",
        "logits themselves to 8 bits, tie them and top-1 agreement falls to chance; edgekit's QDQ graph keeps the",
        "logits float. Their rows check conversion and speed, not a classifier.",
        "",
        "| model | weights | variant | backend | INT8 scheme | precision as run | agreement % | mean KL | p50 ms per round | ratio to ONNX Runtime |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in doc["models"]:
        weights = "random init" if e["random_init"] else "real"
        for variant in e["variants"]:
            for r in summary_rows(e, variant):
                if "error" in r:
                    lines.append(f"| {e['model']} | {weights} | {variant} | {r['backend']} | - | error: {r['error'][:120]} | | | | |")
                    continue
                row = r["row"]
                scheme = SCHEME.get(r["backend"], "?") if variant == "int8" else "-"
                p50s = " / ".join(f"{v:.2f}" for v in r["p50s"])
                ratio = f"{statistics.median(r['ratios']):.2f}" if r["ratios"] else "-"
                lines.append(f"| {e['model']} | {weights} | {variant} | {r['backend']} | {scheme} | {row.get('precision', '')} | "
                             f"{_cell(row, 'agreement', 1)} | {_cell(row, 'mean_kl', 4)} | {p50s} | {ratio} |")
    said = [f"- {e['model']} {variant} on {r['backend']}: {line}" for e in doc["models"] for variant in e["variants"]
            for r in summary_rows(e, variant) if "row" in r for line in ((r["row"].get("layers") or {}).get("substitutions") or ())]
    if said:
        lines += ["", "What each runtime said it did differently (the session's recorded substitutions):", "", *said]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
