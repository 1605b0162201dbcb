"""Worker: NVIDIA ModelOpt AutoCast (FP32 ONNX -> mixed FP32/FP16 ONNX); runs inside the ``modelopt`` peer venv.

Called by ``benchmarks/peer_quantizers.py`` (``modelopt_fp16``) with that venv's python,
never imported by edgekit. It calls ``modelopt.onnx.autocast.convert_to_mixed_precision``
the way its AutoCast guide does, with AutoCast's defaults except:

- ``low_precision_type="fp16"`` (the default too; written out);
- ``keep_io_types`` from ``--settings`` (the benchmark passes True: inputs and outputs stay
  FP32 as in edgekit's step and the blind converter; AutoCast's default False would make
  the model read and write FP16);
- ``calibration_data``: the calibration images (``--calibration``, float32 NCHW .npy) saved
  as one ``.npz`` keyed by the model's input name, the form AutoCast's reference runner
  reads; it splits the array into batches of the model's batch size (1 where the batch
  dimension is dynamic) and keeps each tensor's largest |x| over all of them. Without it
  AutoCast measures ranges on one batch of random inputs in [-1, 1].

Left at AutoCast's defaults: ``data_max=512`` (a node whose input or output reached more
than 512 on the calibration data stays FP32), ``init_max=65504`` (a node with a weight
beyond FP16's range stays FP32), ``providers=["cpu"]``, no node or op-type lists, no
depth-of-reduction limit. AutoCast has no rule for values too small for FP16 (underflow).

Writes the converted ONNX to --out and a JSON result to --result: version, settings, wall
time, the nodes AutoCast kept FP32 as read back from the output graph (a node, other than
the Casts AutoCast inserted, that writes a float32 tensor or, writing no float tensor,
reads one) with the reason AutoCast logged for each, and node counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types
SKIPPING = "Skipping node "


class _Reasons(logging.Handler):
    """AutoCast logs 'Skipping node <name>: <reason>' for every node a rule keeps in FP32."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.why: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(SKIPPING):
            name, _, reason = message[len(SKIPPING):].partition(": ")
            self.why.setdefault(name, reason)


def _tensor_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({i.name: i.data_type for i in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def precision_of_nodes(model, inserted: set[str]) -> dict[str, list[dict]]:
    """The output graph's nodes (except AutoCast's Casts) split into FP32 and FP16 by the
    float types they write, or read when they write none."""
    types = _tensor_types(model)
    split: dict[str, list[dict]] = {"fp32": [], "fp16": [], "no_float": []}
    for node in model.graph.node:
        label = node.name or node.output[0]
        if label in inserted:
            continue
        written = {types.get(o) for o in node.output if o} & {FLOAT, FLOAT16}
        read = {types.get(i) for i in node.input if i} & {FLOAT, FLOAT16}
        seen = written or read
        kind = "no_float" if not seen else ("fp32" if FLOAT in seen else "fp16")
        split[kind].append({"node": label, "op_type": node.op_type})
    return split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="FP32 ONNX model")
    parser.add_argument("--calibration", type=Path, required=True, help=".npy float32 NCHW calibration images")
    parser.add_argument("--out", type=Path, required=True, help="mixed-precision ONNX model to write")
    parser.add_argument("--result", type=Path, required=True, help="JSON file for version, settings, timings and kept nodes")
    parser.add_argument("--settings", default="{}", help='JSON request, e.g. {"keep_io_types": true}')
    args = parser.parse_args()
    request = json.loads(args.settings)

    import modelopt
    import numpy as np
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision
    from modelopt.onnx.autocast.convert import DEFAULT_DATA_MAX, DEFAULT_INIT_MAX

    x = np.ascontiguousarray(np.load(args.calibration), dtype=np.float32)
    original = onnx.load(str(args.model))
    input_names = [i.name for i in original.graph.input if i.name not in {t.name for t in original.graph.initializer}]
    if len(input_names) != 1:
        raise SystemExit(f"expected one model input, found {input_names}")
    npz = args.calibration.with_suffix(".npz")
    np.savez(npz, **{input_names[0]: x})

    keep_io_types = bool(request.get("keep_io_types", True))
    settings = {
        "tool": "nvidia-modelopt",
        "api": "modelopt.onnx.autocast.convert_to_mixed_precision",
        "low_precision_type": "fp16",
        "keep_io_types": keep_io_types,
        "data_max": float(DEFAULT_DATA_MAX),
        "init_max": float(DEFAULT_INIT_MAX),
        "providers": ["cpu"],
        "calibration_data": f".npz {{{input_names[0]!r}: float32 {list(x.shape)}}}",
        "calibration_images": len(x),
        "left_at_default": "nodes_to_exclude, op_types_to_exclude, nodes_to_include, op_types_to_include, "
        "init_conversion_max_bytes, max_depth_of_reduction, opset",
    }

    reasons = _Reasons()
    autocast_logger = logging.getLogger("modelopt.onnx.autocast")
    autocast_logger.addHandler(reasons)
    autocast_logger.setLevel(logging.INFO)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    converted = convert_to_mixed_precision(
        onnx_path=str(args.model),
        low_precision_type="fp16",
        keep_io_types=keep_io_types,
        calibration_data=str(npz),
        providers=["cpu"],
    )
    seconds = time.perf_counter() - start
    onnx.save(converted, str(args.out))

    before = {n.name or n.output[0] for n in original.graph.node}
    inserted = {n.name or n.output[0] for n in converted.graph.node if n.op_type == "Cast"} - before
    split = precision_of_nodes(converted, inserted)
    after = {d["node"] for kind in split.values() for d in kind}
    kept = [{**d, "why": reasons.why.get(d["node"], "not logged by a rule (FP32 in the output graph)")} for d in split["fp32"]]
    result = {
        "seconds": seconds,
        "version": modelopt.__version__,
        "onnx_version": onnx.__version__,
        "settings": settings,
        "timings": {"convert_s": seconds},
        "kept_fp32": kept,
        "fp16_nodes": [d["node"] for d in split["fp16"]],
        "no_float_nodes": [d["node"] for d in split["no_float"]],
        "inserted_casts": len(inserted),
        "skipped_by_rules": reasons.why,
        "nodes_not_in_fp32_model": sorted(after - before),
        "fp32_nodes_missing_in_output": sorted(before - after),
        "output_opset": max(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")),
    }
    args.result.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
