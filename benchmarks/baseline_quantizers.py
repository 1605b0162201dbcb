"""Baseline INT8 quantizers that edgekit's own INT8 quantization is compared with.

Each function quantizes the same FP32 ONNX file with the same calibration images the way a
typical user of that tool would, and writes the INT8 ONNX model to ``out``:

- ``ort_default_int8``: ONNX Runtime's static quantizer (QDQ, per-channel QInt8 weights,
  QUInt8 asymmetric activations, MinMax calibration), batches of 8;
- ``nncf_default_int8``: NNCF post-training quantization with all defaults, one image per
  calibration sample and ``subset_size`` = every calibration image.

Benchmark support only: edgekit itself never imports or uses this module, and ``nncf`` is
needed only here (it is imported when ``nncf_default_int8`` is first called).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

ORT_CALIBRATION_BATCH = 8


def _input_name(model: onnx.ModelProto) -> str:
    """Name of the model's first graph input that is not an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def _as_nchw_float32(calibration: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(calibration, dtype=np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"calibration must be a non-empty NCHW array, got shape {x.shape}")
    return x


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence stdout/stderr (progress bars) and Python logging below ERROR for the block."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def ort_default_int8(fp32_onnx: Path, out: Path, calibration: np.ndarray) -> None:
    """ONNX Runtime ``quantize_static`` as a typical user calls it; writes the QDQ INT8 model to ``out``.

    Settings are passed explicitly because ORT's defaults changed across versions: QDQ format,
    per-channel QInt8 weights, QUInt8 (unsigned, asymmetric) activations, MinMax calibration,
    no reduce_range, no pre-processing. ``calibration`` (float32 NCHW) is fed in batches of 8.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    x = _as_nchw_float32(calibration)
    name = _input_name(onnx.load(str(fp32_onnx), load_external_data=False))

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._start = 0

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            if self._start >= len(x):
                return None
            batch = x[self._start : self._start + ORT_CALIBRATION_BATCH]
            self._start += ORT_CALIBRATION_BATCH
            return {name: batch}

        def rewind(self) -> None:
            self._start = 0

    with _quiet():
        quantize_static(
            str(fp32_onnx),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def nncf_default_int8(fp32_onnx: Path, out: Path, calibration: np.ndarray) -> None:
    """NNCF's default post-training quantization of the ONNX model; writes the INT8 model to ``out``.

    ``nncf.quantize`` with every default (preset, target device, fast bias correction, no
    ignored scope) except ``subset_size``, set to ``len(calibration)`` so NNCF sees exactly the
    images ORT does; each calibration sample is one image (1x3xHxW). NNCF's usage telemetry is
    turned off (via its ``NNCF_CI`` switch, unless nncf was already imported) so benchmarks
    make no network calls.
    """
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's own switch; it only disables telemetry
    import nncf

    nncf.set_log_level(logging.ERROR)
    x = _as_nchw_float32(calibration)
    model = onnx.load(str(fp32_onnx))
    name = _input_name(model)
    dataset = nncf.Dataset([x[i : i + 1] for i in range(len(x))], lambda item: {name: item})
    with _quiet():
        quantized = nncf.quantize(model, dataset, subset_size=len(x))
    onnx.save(quantized, str(out))
