"""PyTorch eager vs ONNX Runtime FP32 at batch 1, all figures from one run.

efficientnet_lite0 uses its real ImageNet weights and 16 views of each bundled photo, so
its fidelity figures (agreement, KL, top-1) are meaningful; mobilenet_v2 and resnet50 run
with random init (torchvision weights cannot be downloaded offline) and are here for
latency. Writes results/fp32_onnxruntime.{json,md}.

    .venv/bin/python benchmarks/fp32_onnxruntime.py [--iterations 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from edgekit.timing import TimingOptions
from edgekit.session import BenchRequest, run_bench
from edgekit.data import ImageRequest
from edgekit.steps.export import ModelRequest, build_artifact
from edgekit.results.document import results_document, write_json

RESULTS = Path(__file__).parent / "results"
CASES = [
    (ModelRequest("efficientnet_lite0"), 16),
    (ModelRequest("mobilenet_v2", random_init=True), 4),
    (ModelRequest("resnet50", random_init=True), 4),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "fp32_onnxruntime")
    args = parser.parse_args()
    console = Console(stderr=True)
    results, lines = [], []
    for model, views in CASES:
        console.print(f"[bold]{model.name}[/] ({'random init' if model.random_init else 'pretrained'})")
        artifact, _ = build_artifact(model)
        request = BenchRequest(
            backends=("pytorch", "onnxruntime"),
            timing=TimingOptions(batch_sizes=(1,), warmup=20, iterations=args.iterations, max_seconds=60),
            images=ImageRequest(views_per_image=views),
        )
        run = run_bench(artifact, request, lambda b, stage, done, total: None)
        rows = {r.backend: r for r in run.results}
        torch_row, ort_row = rows["pytorch"], rows["onnxruntime"]
        results += run.results
        t, o = torch_row.latency[0], ort_row.latency[0]
        acc = ort_row.accuracy
        lines.append(
            f"| {model.name} | {'real' if not model.random_init else 'random init'} | {t.p50_ms:.2f} | {o.p50_ms:.2f} | "
            f"**{t.p50_ms / o.p50_ms:.2f}x** | {o.p90_ms:.2f} | {o.p99_ms:.2f} | {torch_row.peak_rss_mb:.0f} | {ort_row.peak_rss_mb:.0f} | "
            f"{len(run.images)} | {acc.agreement:.1f} | {acc.mean_kl:.1e} | {acc.max_abs_diff:.1e} | "
            + (f"{acc.top1:.1f} / {torch_row.accuracy.top1:.1f} |" if not model.random_init else "n/a (random init) |")
        )
        console.print(lines[-1])
    command = "python " + " ".join(sys.argv)
    document = results_document(results, command=command)
    write_json(document, args.out.with_suffix(".json"))
    machine = document["machine"]
    md = [
        "# PyTorch eager vs ONNX Runtime, FP32, batch 1",
        "",
        f"Machine: {machine.get('cpu')}, {machine.get('logical_cores')} logical cores, {machine.get('os')}; "
        f"runtime default threads. Command: `{command}`. Created {document['created']}.",
        "",
        "Latency is host-to-host `session.run` on real preprocessed photos, median (p50) of "
        f"{args.iterations} iterations after 20 warm-up runs; each backend ran in its own process "
        "(peak RSS is that process's high-water mark). Speed-up = PyTorch p50 / ONNX Runtime p50, same run. "
        "Fidelity compares ONNX Runtime with PyTorch logits on the same views of the bundled photos; "
        "top-1 uses the photos' ImageNet labels (meaningful for real weights only).",
        "",
        "| model | weights | PyTorch p50 ms | ORT p50 ms | speed-up | ORT p90 ms | ORT p99 ms | PyTorch RSS MB | ORT RSS MB | images | top-1 agreement % | mean KL | max abs logit diff | top-1 % ORT / PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    console.print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
