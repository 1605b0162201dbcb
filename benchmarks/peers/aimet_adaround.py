"""Worker: AIMET-ONNX INT8 PTQ with AdaRound; runs inside the ``aimet`` peer venv.

Called by ``benchmarks/peer_quantizers.py`` (``aimet_adaround_int8``) with that venv's
python, never imported by edgekit. It follows AIMET's own AdaRound recipe for ONNX
(docs: "Adaptive rounding", aimet_onnx API):

1. ``QuantizationSimModel(model, param_type=int8, activation_type=int8,
   quant_scheme=min_max, config_file="default")``: the default config is AIMET's
   per-channel one (symmetric per-output-channel INT8 weights for Conv/Gemm/MatMul,
   asymmetric per-tensor INT8 activations at op outputs and the model input, bias not
   quantized), CPU execution provider;
2. ``aimet_onnx.apply_adaround(sim, batches, num_iterations=N)``: learns the rounding of
   each Conv/Gemm weight on the calibration batches, then freezes those weight encodings;
3. ``sim.compute_encodings(batches)``: activation encodings (min/max) with the
   AdaRounded weights in place;
4. ``sim.to_onnx_qdq(prequantize_constants=True)``: a standard QuantizeLinear /
   DequantizeLinear model (int8 weights + DequantizeLinear, uint8 activations) that ONNX
   Runtime and OpenVINO load, written to --out.

Writes a JSON result (version, settings, timings) to --result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="FP32 ONNX model")
    parser.add_argument("--calibration", type=Path, required=True, help=".npy float32 NCHW calibration images")
    parser.add_argument("--out", type=Path, required=True, help="QDQ ONNX model to write")
    parser.add_argument("--result", type=Path, required=True, help="JSON file for version, settings and timings")
    parser.add_argument("--iterations", type=int, required=True, help="AdaRound iterations per layer")
    parser.add_argument("--batch-size", type=int, required=True, help="images per calibration batch")
    args = parser.parse_args()

    import aimet_onnx
    import numpy as np
    import onnx
    from aimet_onnx import QuantizationSimModel

    model = onnx.load(str(args.model))
    x = np.ascontiguousarray(np.load(args.calibration), dtype=np.float32)
    initializers = {i.name for i in model.graph.initializer}
    input_name = next(i.name for i in model.graph.input if i.name not in initializers)
    batches = [{input_name: x[i : i + args.batch_size]} for i in range(0, len(x), args.batch_size)]
    batch_norms = sum(n.op_type == "BatchNormalization" for n in model.graph.node)

    timings = {}
    start = time.perf_counter()
    if batch_norms:  # AIMET's documented first step; edgekit's exports have none left
        from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight

        fold_all_batch_norms_to_weight(model)
    sim = QuantizationSimModel(
        model,
        param_type=aimet_onnx.int8,
        activation_type=aimet_onnx.int8,
        quant_scheme="min_max",
        config_file="default",
        providers=["CPUExecutionProvider"],
    )
    timings["quantsim_s"] = time.perf_counter() - start

    t = time.perf_counter()
    aimet_onnx.apply_adaround(sim, batches, num_iterations=args.iterations)
    timings["adaround_s"] = time.perf_counter() - t

    t = time.perf_counter()
    sim.compute_encodings(batches)
    timings["compute_encodings_s"] = time.perf_counter() - t

    t = time.perf_counter()
    qdq = sim.to_onnx_qdq(prequantize_constants=True)
    timings["export_s"] = time.perf_counter() - t
    seconds = time.perf_counter() - start

    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(qdq, str(args.out))

    result = {
        "seconds": seconds,
        "version": aimet_onnx.__version__,
        "settings": {
            "tool": "aimet-onnx",
            "recipe": "QuantizationSimModel -> apply_adaround -> compute_encodings -> to_onnx_qdq",
            "param_type": "int8",
            "activation_type": "int8",
            "quant_scheme": "min_max",
            "config_file": "default (AIMET's per-channel config: symmetric per-channel weights, "
            "asymmetric per-tensor activations, bias unquantized)",
            "adaround_num_iterations": args.iterations,
            "adaround_num_iterations_documented_default": 10000,
            "batch_size": args.batch_size,
            "calibration_batches": len(batches),
            "calibration_images": len(x),
            "batch_norms_folded": batch_norms,
            "export": "to_onnx_qdq(prequantize_constants=True, force_activation_as='unsigned')",
            "providers": ["CPUExecutionProvider"],
            "torch_threads": _torch_threads(),
        },
        "timings": timings,
    }
    args.result.write_text(json.dumps(result, indent=2))
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
