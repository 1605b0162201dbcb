"""Worker: NVIDIA TensorRT Model Optimizer (ModelOpt) ONNX INT8 PTQ; runs inside the ``modelopt`` peer venv.

Called by ``benchmarks/peer_quantizers.py`` (``modelopt_int8``) with that venv's python,
never imported by edgekit. It calls ``modelopt.onnx.quantization.quantize`` the way its
ONNX PTQ guide does, with the calibration images as one numpy array, and only what a
CPU-only machine needs changed from the defaults:

- ``quantize_mode="int8"``, ``calibration_method`` left at its INT8 default ("entropy");
- ``calibration_eps=["cpu"]`` (the default list starts with "cuda:0" and "trt");
- ``high_precision_dtype="fp32"``: the default "fp16" turns every op that stays in float
  (and the model's float weights) into FP16, a TensorRT habit that CPU runtimes only
  emulate; FP32 keeps the non-quantized parts as the FP32 model has them.

Everything else (Q/DQ placement for TensorRT, per-channel symmetric INT8 weights,
per-tensor symmetric INT8 activations, opset raised to 19) is ModelOpt's default.
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
    args = parser.parse_args()

    import modelopt
    import numpy as np
    from modelopt.onnx.quantization import quantize

    x = np.ascontiguousarray(np.load(args.calibration), dtype=np.float32)
    settings = {
        "tool": "nvidia-modelopt",
        "api": "modelopt.onnx.quantization.quantize",
        "quantize_mode": "int8",
        "calibration_method": "entropy (ModelOpt's INT8 default)",
        "calibration_eps": ["cpu"],
        "high_precision_dtype": "fp32",
        "calibration_data": f"numpy array {list(x.shape)} float32",
        "calibration_images": len(x),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    quantize(
        onnx_path=str(args.model),
        quantize_mode="int8",
        calibration_data=x,
        calibration_eps=["cpu"],
        high_precision_dtype="fp32",
        output_path=str(args.out),
        log_level="WARNING",
    )
    seconds = time.perf_counter() - start
    if not args.out.is_file():
        raise RuntimeError(f"modelopt quantize returned without writing {args.out}")
    result = {"seconds": seconds, "version": modelopt.__version__, "settings": settings, "timings": {"quantize_s": seconds}}
    args.result.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
