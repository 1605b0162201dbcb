"""Why rank r > 1 is built as RepeatChannels(r) + a one-filter-per-channel depthwise conv:
resnet18 (random init) with every KxK conv converted at rank 2, in edgekit's layout and
as a single depthwise conv with channel multiplier 2 (the same function, checked), timed
on ONNX Runtime and OpenVINO in alternating rounds, with the original alongside.

Writes results/dw_rank_layout.{json,md}.

    .venv/bin/python benchmarks/dw_rank_layout.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from edgekit.artifacts import now_iso
from edgekit.timing import TimingOptions, machine_info, time_session
from edgekit.onnx_export import ExportOptions, torch_export_module
from edgekit.results.document import write_json
from edgekit.transforms.dwsep import convert, is_candidate

RESULTS = Path(__file__).parent / "results"
SIZE = 224


def with_channel_multiplier(model: nn.Module) -> nn.Module:
    """The same model with each (repeat, depthwise, pointwise) as (depthwise with channel
    multiplier r, pointwise): filters reordered from filter-major to channel-major."""
    model = copy.deepcopy(model)
    for name, seq in list(model.named_modules()):
        if not (isinstance(seq, nn.Sequential) and len(seq) == 3 and hasattr(seq[0], "times")):
            continue
        r, depthwise, pointwise = seq[0].times, seq[1], seq[2]
        c = depthwise.in_channels // r
        order = [j * c + ch for ch in range(c) for j in range(r)]  # channel-major position -> filter-major index
        multiplied = nn.Conv2d(c, c * r, depthwise.kernel_size, depthwise.stride, depthwise.padding, depthwise.dilation, groups=c, bias=False)
        mixed = nn.Conv2d(c * r, pointwise.out_channels, 1, bias=pointwise.bias is not None)
        with torch.no_grad():
            multiplied.weight.copy_(depthwise.weight[order])
            mixed.weight.copy_(pointwise.weight[:, order])
            if pointwise.bias is not None:
                mixed.bias.copy_(pointwise.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Sequential(multiplied, mixed))
    return model


def sessions(path: Path) -> dict:
    import onnxruntime as ort
    from edgekit.backends.openvino import shared_core

    ort_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = ort_session.get_inputs()[0].name
    request = shared_core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    return {"onnxruntime": lambda b: ort_session.run(None, {name: b}), "openvino": lambda b: request.infer([b])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "dw_rank_layout")
    args = parser.parse_args()
    torch.manual_seed(0)
    original = torchvision.models.resnet18().eval()
    repeated = copy.deepcopy(original)
    convert(repeated, [n for n, m in original.named_modules() if is_candidate(m)], 2)
    multiplied = with_channel_multiplier(repeated)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        same = float((repeated(x) - multiplied(x)).abs().max())
    models = {"original": original, "rank 2, channel multiplier 2": multiplied, "rank 2, repeat + one filter per channel (edgekit)": repeated}
    timing = TimingOptions(warmup=5, iterations=30, max_seconds=60)
    samples: dict = {label: {"onnxruntime": [], "openvino": []} for label in models}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for i, (label, model) in enumerate(models.items()):
            path = Path(tmp) / f"{i}.onnx"
            torch_export_module(model, SIZE, path, ExportOptions(slim=False), "probe")
            runners[label] = sessions(path)
        batch = x.numpy()
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
            for label, backends in runners.items():
                for backend, run in backends.items():
                    samples[label][backend].append(time_session(run, batch, 1, timing).p50_ms)
    document = {
        "created": now_iso(), "command": "python " + " ".join(sys.argv), "machine": machine_info(),
        "max_abs_diff_between_layouts": same,
        "p50_ms": {label: {b: statistics.median(v) for b, v in per.items()} for label, per in samples.items()},
        "p50_rounds": samples,
    }
    write_json(document, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text(markdown(document))
    print(f"wrote {args.out.with_suffix('.json')} and .md", file=sys.stderr)
    return 0


def markdown(doc: dict) -> str:
    m = doc["machine"]
    base = doc["p50_ms"]["original"]
    lines = [
        "# Depthwise-separable rank 2: two layouts of the same function",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores. Command: `{doc['command']}`. Created {doc['created']}.",
        "resnet18 (random init), every KxK conv converted at rank 2. Batch-1 p50, median of alternating rounds of 30 runs;",
        f"the two layouts' logits differ by at most {doc['max_abs_diff_between_layouts']:.1e}.",
        "",
        "| model | ORT ms | ORT speed-up | OpenVINO ms | OpenVINO speed-up |",
        "|---|---|---|---|---|",
    ]
    for label, p in doc["p50_ms"].items():
        lines.append(
            f"| {label} | {p['onnxruntime']:.2f} | {base['onnxruntime'] / p['onnxruntime']:.2f}x | "
            f"{p['openvino']:.2f} | {base['openvino'] / p['openvino']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
