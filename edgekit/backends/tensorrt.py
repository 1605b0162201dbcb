"""TensorRT: engines built from the artifact's ONNX (FP32, FP16, or INT8 from the QDQ graph:
explicit quantization), run with execute_async_v3 on a CUDA stream.

UNVERIFIED ON HARDWARE: written and unit-tested (manifest, rebuild and option logic) on a
machine without an NVIDIA GPU; the build and run paths have not executed yet.

Engines are not portable: each is stored with a manifest of what it was built for
(TensorRT version, GPU name and compute capability, driver and CUDA versions, builder
flags, source ONNX hash). An engine whose manifest does not match the machine is rebuilt
instead of failing to deserialize. A timing cache persists beside it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..core import Artifact, BackendUnavailableError, UsageError, numeric_format, sha256_file
from .base import BackendOptions, require_module

ENGINE_FOLDER = "tensorrt"
ENGINE_FORMAT = 1
DEFAULT_WORKSPACE = 4 << 30


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built with; every field enters its file name and manifest."""

    precision: str  # fp32, fp16, int8 (from QDQ)
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_bytes: int = DEFAULT_WORKSPACE

    @property
    def name(self) -> str:
        return f"{self.precision}-b{self.min_batch}-{self.opt_batch}-{self.max_batch}"


def profile_batches(batch_sizes: Sequence[int]) -> tuple[int, int, int]:
    """(min, opt, max) of the optimization profile for the batch sizes to be run."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be positive, got {list(batch_sizes)}")
    ordered = sorted(batch_sizes)
    return ordered[0], ordered[-1], ordered[-1]  # kernels tuned for the largest: throughput runs


def parse_workspace(text: str) -> int:
    """'4GiB', '512MiB', '1073741824' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise UsageError(f"workspace must look like 4GiB or 512MiB, got {text!r}")
    value, unit = float(match.group(1)), (match.group(2) or "B").upper().replace("I", "")
    return int(value * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[unit])


def why_rebuild(recorded: Optional[dict], current: dict) -> Optional[str]:
    """None when an engine built under ``recorded`` can run here, else the reason."""
    if recorded is None:
        return "no engine yet"
    for key in ("engine_format", "tensorrt", "gpu", "compute_capability", "source_sha256", "flags", "spec"):
        if recorded.get(key) != current.get(key):
            return f"{key} changed: {recorded.get(key)} -> {current.get(key)}"
    return None


def machine_fingerprint() -> dict[str, Any]:
    """TensorRT version, GPU, compute capability, driver and CUDA versions (needs a GPU)."""
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("backend tensorrt needs an NVIDIA GPU with CUDA; none is visible here")
    props = torch.cuda.get_device_properties(0)
    fingerprint = {
        "tensorrt": trt.__version__,
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda_runtime": torch.version.cuda,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        fingerprint["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML is optional: the driver version is informative only
        fingerprint["driver"] = None
    return fingerprint


def engine_manifest(spec: EngineSpec, source: Path, fingerprint: dict, flags: Sequence[str]) -> dict:
    return {
        "engine_format": ENGINE_FORMAT,
        **fingerprint,
        "source_sha256": sha256_file(source),
        "flags": sorted(flags),
        "spec": {"precision": spec.precision, "batch": [spec.min_batch, spec.opt_batch, spec.max_batch], "workspace_bytes": spec.workspace_bytes},
    }


def builder_flags(precision: str) -> list[str]:
    """INT8 comes from the QDQ nodes (explicit quantization); FP16 lets the layers TensorRT
    keeps in float run in half precision."""
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


def build_engine(source: Path, folder: Path, spec: EngineSpec, input_name: str, input_shape: Sequence[int]) -> Path:
    """Build (or reuse) ``folder``/<spec>.engine; rebuilt when its manifest no longer fits."""
    import tensorrt as trt

    folder.mkdir(parents=True, exist_ok=True)
    engine_path = folder / f"{spec.name}.engine"
    manifest_path = engine_path.with_suffix(".json")
    flags = builder_flags(spec.precision)
    current = engine_manifest(spec, source, machine_fingerprint(), flags)
    recorded = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if engine_path.is_file() and why_rebuild(recorded, current) is None:
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"TensorRT cannot parse {source.name}: {errors.splitlines()[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    for flag in flags:
        if hasattr(trt.BuilderFlag, flag):
            config.set_flag(getattr(trt.BuilderFlag, flag))
    cache_path = folder / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    chw = tuple(input_shape[1:])
    profile.set_shape(input_name, (spec.min_batch, *chw), (spec.opt_batch, *chw), (spec.max_batch, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError(f"TensorRT could not build an engine from {source.name} ({spec.precision})")
    tmp = engine_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    manifest_path.write_text(json.dumps(current, indent=2) + "\n")
    return engine_path


class TensorRTSession:
    """Device buffers are torch CUDA tensors; one CUDA stream; optional CUDA graph."""

    def __init__(self, engine_path: Path, precision: str, use_cuda_graph: bool = False):
        import tensorrt as trt
        import torch

        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._stream = torch.cuda.Stream()
        self._use_cuda_graph = use_cuda_graph
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._buffers: dict[tuple[int, ...], tuple[Any, Any]] = {}
        self.precision = f"{precision} (TensorRT {trt.__version__})"
        self.providers = (f"tensorrt {trt.__version__} {torch.cuda.get_device_name(0)}",)
        self.threads = None
        self.last_compute_ms: Optional[float] = None

    def _buffers_for(self, shape: tuple[int, ...]):
        torch = self._torch
        if shape not in self._buffers:
            self._context.set_input_shape(self._input, shape)
            out_shape = tuple(self._context.get_tensor_shape(self._output))
            x = torch.empty(shape, dtype=torch.float32, device="cuda")
            y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
            self._buffers[shape] = (x, y)
        x, y = self._buffers[shape]
        self._context.set_input_shape(self._input, shape)
        self._context.set_tensor_address(self._input, x.data_ptr())
        self._context.set_tensor_address(self._output, y.data_ptr())
        return x, y

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """End to end: host -> device copy, inference, device -> host copy. The compute-only
        time (CUDA events around the inference alone) is kept in ``last_compute_ms``."""
        torch = self._torch
        shape = tuple(batch.shape)
        x, y = self._buffers_for(shape)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self._stream):
            x.copy_(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)), non_blocking=False)
            start.record(self._stream)
            if self._use_cuda_graph:
                self._graph_for(shape).replay()
            else:
                self._enqueue()
            end.record(self._stream)
            out = y.cpu()
        self._stream.synchronize()
        self.last_compute_ms = start.elapsed_time(end)
        return out.numpy()

    def _graph_for(self, shape: tuple[int, ...]):
        torch = self._torch
        if shape not in self._graphs:
            self._enqueue()  # one plain run first: TensorRT allocates lazily
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue()
            self._graphs[shape] = graph
        return self._graphs[shape]


class TensorRTBackend:
    name = "tensorrt"
    pip_extra = "tensorrt"

    def check_available(self) -> None:
        require_module("tensorrt", self.name, self.pip_extra)
        require_module("torch", self.name, self.pip_extra)
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("backend tensorrt needs an NVIDIA GPU with CUDA; none is visible here")

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        self.check_available()
        precision = numeric_format(artifact.manifest)  # INT8 only from the QDQ graph
        if precision == "fp32" and options.precision == "f16":
            precision = "fp16"  # --precision f16: an FP16 engine from the FP32 ONNX
        elif options.precision not in (None, "f32", "f16"):
            raise UsageError(f"TensorRT runs f32 or f16 (INT8 comes from an --int8 artifact), got {options.precision!r}")
        lo, opt, hi = profile_batches(options.batch_sizes or (1,))
        spec = EngineSpec(precision, lo, opt, hi, options.workspace_bytes or DEFAULT_WORKSPACE)
        shape = artifact.manifest["input"]["shape"]
        engine = build_engine(artifact.onnx_path, artifact.path / ENGINE_FOLDER, spec, artifact.manifest["input"]["name"], shape)
        manifest = {**artifact.manifest, "files": {**artifact.manifest["files"], "tensorrt_engine": str(engine.relative_to(artifact.path))}}
        manifest["variant_detail"] = precision
        return Artifact(path=artifact.path, manifest=manifest)

    def load(self, artifact: Artifact, options: BackendOptions) -> TensorRTSession:
        self.check_available()
        engine = artifact.manifest["files"].get("tensorrt_engine")
        if engine is None:
            artifact = self.compile(artifact, options)
            engine = artifact.manifest["files"]["tensorrt_engine"]
        return TensorRTSession(artifact.path / engine, artifact.manifest.get("variant_detail", "fp32"), options.cuda_graph)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        engine = artifact.manifest["files"].get("tensorrt_engine")
        return (artifact.path / engine).stat().st_size / 1e6 if engine else None
