"""TensorRT: engines built from the artifact's ONNX (FP32, FP16, or INT8 from the QDQ graph:
explicit quantization), run with execute_async_v3 on a CUDA stream.

UNVERIFIED ON HARDWARE: written and unit-tested (manifest, rebuild and option logic) on a
machine without an NVIDIA GPU; the build and run paths have not executed yet.

Device buffers, stream, events and CUDA graphs come from torch where it is installed with
CUDA, else from cuda-python's runtime API (``cuda.bindings.runtime``), so a Jetson bundle
runs without torch. The cuda-python path is unverified on hardware too.

Engines are not portable: each is stored with a manifest of what it was built for
(TensorRT version, GPU name and compute capability, driver and CUDA versions, builder
flags, source ONNX hash). An engine whose manifest does not match the machine is rebuilt
instead of failing to deserialize. A timing cache persists beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..core import Artifact, BackendUnavailableError, UsageError, numeric_format, sha256_file
from .base import BackendBase, BackendOptions, SessionBase, backend_option, importable, require_module

ENGINE_FOLDER = "tensorrt"
ENGINE_FORMAT = 2  # 2: DETAILED profiling verbosity (layer facts for the profiler)
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


def why_rebuild(recorded: Optional[dict], current: dict) -> Optional[str]:
    """None when an engine built under ``recorded`` can run here, else the reason."""
    if recorded is None:
        return "no engine yet"
    for key in ("engine_format", "tensorrt", "gpu", "compute_capability", "source_sha256", "flags", "spec"):
        if recorded.get(key) != current.get(key):
            return f"{key} changed: {recorded.get(key)} -> {current.get(key)}"
    return None


NO_GPU = "backend tensorrt needs an NVIDIA GPU with CUDA; none is visible here"


@lru_cache(maxsize=1)
def torch_cuda() -> bool:
    """Device buffers from torch (installed with CUDA), else from cuda-python."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def cudart():
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python >= 12.6) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def cuda_call(result):
    """cuda-python returns (error, *values): raise on an error, else the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA runtime call failed: {error}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def gpu_facts() -> dict[str, Any]:
    """Name, compute capability and CUDA runtime version of GPU 0 (the same strings either way)."""
    if torch_cuda():
        import torch

        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}", "cuda_runtime": torch.version.cuda}
    rt = cudart()
    try:
        props = cuda_call(rt.cudaGetDeviceProperties(0))
        version = cuda_call(rt.cudaRuntimeGetVersion())
    except RuntimeError:
        raise BackendUnavailableError(NO_GPU) from None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.split("\x00")[0], "compute_capability": f"{props.major}.{props.minor}", "cuda_runtime": f"{version // 1000}.{version % 1000 // 10}"}


def machine_fingerprint() -> dict[str, Any]:
    """TensorRT version, GPU, compute capability, driver and CUDA versions (needs a GPU)."""
    import tensorrt as trt

    fingerprint = {"tensorrt": trt.__version__, **gpu_facts()}
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
    try:
        recorded = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    except (OSError, json.JSONDecodeError):
        recorded = None
    if engine_path.is_file() and why_rebuild(recorded, current) is None:
        if recorded.get("engine_sha256") != sha256_file(engine_path):
            from ..files import TamperedError

            raise TamperedError(f"{engine_path} does not match the SHA-256 edgekit recorded when it built it; delete it to have it rebuilt")
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"TensorRT cannot parse {source.name}: {errors.splitlines()[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the engine inspector then names each layer's ONNX nodes
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
    from ..files import atomic_write_bytes
    from ..results.document import atomic_write_text

    atomic_write_bytes(engine_path, bytes(serialized))  # a half-written engine is never read
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    atomic_write_text(manifest_path, json.dumps({**current, "engine_sha256": sha256_file(engine_path)}, indent=2) + "\n")
    return engine_path


class TensorRTSession(SessionBase):
    """Device buffers are torch CUDA tensors; one CUDA stream; optional CUDA graph."""

    def __init__(self, engine_path: Path, precision: str, use_cuda_graph: bool = False):
        import torch

        self._torch = torch
        self._stream = torch.cuda.Stream()
        self._start(engine_path, precision, use_cuda_graph, self._stream.cuda_stream, torch.cuda.get_device_name(0))

    def _start(self, engine_path: Path, precision: str, use_cuda_graph: bool, stream_handle: int, device: str) -> None:
        """What both kinds of session share: the engine, its context, caches, descriptions."""
        import tensorrt as trt

        self._open_engine(engine_path)
        self._stream_handle = int(stream_handle)
        self._use_cuda_graph = use_cuda_graph
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._buffers: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self.precision = f"{precision} (TensorRT {trt.__version__})"
        self.providers = (f"tensorrt {trt.__version__} {device}",)
        self.device = "cuda"  # GPU 0, the one engines are built for
        self.threads = None
        self.last_compute_ms: Optional[float] = None

    def _open_engine(self, engine_path: Path) -> None:
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise UsageError(f"TensorRT cannot load {engine_path}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._context.set_input_shape(self._input, shape)
        return tuple(self._context.get_tensor_shape(self._output))

    def _bind(self, shape: tuple[int, ...], input_address: int, output_address: int) -> None:
        self._context.set_input_shape(self._input, shape)
        self._context.set_tensor_address(self._input, int(input_address))
        self._context.set_tensor_address(self._output, int(output_address))

    def _buffers_for(self, shape: tuple[int, ...]):
        torch = self._torch
        if shape not in self._buffers:
            x = torch.empty(shape, dtype=torch.float32, device="cuda")
            y = torch.empty(self._output_shape(shape), dtype=torch.float32, device="cuda")
            self._buffers[shape] = (x, y)
        x, y = self._buffers[shape]
        self._bind(shape, x.data_ptr(), y.data_ptr())
        return x, y

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream_handle):
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

    def profile(self, batch: np.ndarray, iterations: int, warmup: int):
        """TensorRT's layer profiler (IProfiler, one report per enqueue; CUDA graphs off) with
        the engine inspector's layer facts: per engine layer, its mean time, the ONNX nodes it
        fuses (TensorRT names a fused layer 'A + B', and DETAILED engines list each
        '[ONNX Layer: ...]' in its metadata) and its output format."""
        import json
        import time

        import tensorrt as trt

        from ..profiling import NodeTime, ProfiledRun

        class Collector(trt.IProfiler):
            def __init__(self) -> None:
                super().__init__()
                self.totals: dict[str, float] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.totals[layer_name] = self.totals.get(layer_name, 0.0) + ms

        graphs, self._use_cuda_graph = self._use_cuda_graph, False
        try:
            for _ in range(warmup):
                self.run(batch)
            collector = Collector()
            self._context.profiler = collector
            walls = []
            for _ in range(iterations):
                started = time.perf_counter()
                self.run(batch)
                walls.append((time.perf_counter() - started) * 1000.0)
        finally:
            self._use_cuda_graph = graphs
        layers = {}
        try:
            inspector = self._engine.create_engine_inspector()
            described = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
            layers = {layer.get("Name"): layer for layer in described.get("Layers", []) if isinstance(layer, dict)}
        except Exception:  # noqa: BLE001 (an engine built without DETAILED verbosity names layers only)
            pass
        nodes = []
        for name, ms in collector.totals.items():
            facts = layers.get(name, {})
            metadata = str(facts.get("Metadata", ""))
            covers = tuple(m.split("]")[0] for m in metadata.split("[ONNX Layer: ")[1:]) or tuple(p.strip() for p in name.split(" + "))
            outputs = facts.get("Outputs") or [{}]
            precision = str(outputs[0].get("Format/Datatype", "")) if isinstance(outputs[0], dict) else ""
            kind = str(facts.get("LayerType", ""))
            role = "layout" if kind == "Reformat" or name.startswith("Reformatting") else "qdq" if kind in ("Quantize", "Dequantize") else ""
            nodes.append(NodeTime(name, kind, ms / iterations, precision, covers, role=role))
        return ProfiledRun(tuple(nodes), float(np.median(walls)))

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


class CudaPythonTensorRTSession(TensorRTSession):
    """The same session with device memory, stream, events and CUDA graphs from
    cuda-python's runtime API instead of torch: what a Jetson bundle without torch runs.

    UNVERIFIED ON HARDWARE: written on a machine without a GPU, where only its import and
    its no-GPU error ran. Host arrays are pageable numpy memory (copies stay correct; pinned
    memory would make them faster)."""

    def __init__(self, engine_path: Path, precision: str, use_cuda_graph: bool = False):
        self._rt = rt = cudart()
        self._stream = cuda_call(rt.cudaStreamCreate())
        self._events = (cuda_call(rt.cudaEventCreate()), cuda_call(rt.cudaEventCreate()))
        self._start(engine_path, precision, use_cuda_graph, int(self._stream), f"{gpu_facts()['gpu']} (cuda-python buffers)")

    def _buffers_for(self, shape: tuple[int, ...]):
        rt = self._rt
        if shape not in self._buffers:
            host_out = np.empty(self._output_shape(shape), dtype=np.float32)
            x = cuda_call(rt.cudaMalloc(int(np.prod(shape)) * 4))
            y = cuda_call(rt.cudaMalloc(host_out.nbytes))
            self._buffers[shape] = (x, y, host_out)
        x, y, host_out = self._buffers[shape]
        self._bind(shape, x, y)
        return x, y, host_out

    def run(self, batch: np.ndarray) -> np.ndarray:
        rt = self._rt
        host_in = np.ascontiguousarray(batch, dtype=np.float32)
        shape = tuple(host_in.shape)
        x, y, host_out = self._buffers_for(shape)
        start, end = self._events
        cuda_call(rt.cudaMemcpyAsync(x, host_in.ctypes.data, host_in.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
        cuda_call(rt.cudaEventRecord(start, self._stream))
        if self._use_cuda_graph:
            cuda_call(rt.cudaGraphLaunch(self._graph_for(shape), self._stream))
        else:
            self._enqueue()
        cuda_call(rt.cudaEventRecord(end, self._stream))
        cuda_call(rt.cudaMemcpyAsync(host_out.ctypes.data, y, host_out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
        cuda_call(rt.cudaStreamSynchronize(self._stream))
        self.last_compute_ms = float(cuda_call(rt.cudaEventElapsedTime(start, end)))
        return host_out.copy()

    def _graph_for(self, shape: tuple[int, ...]):
        rt = self._rt
        if shape not in self._graphs:
            self._enqueue()  # one plain run first: TensorRT allocates lazily
            cuda_call(rt.cudaStreamSynchronize(self._stream))
            cuda_call(rt.cudaStreamBeginCapture(self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self._enqueue()
            graph = cuda_call(rt.cudaStreamEndCapture(self._stream))
            self._graphs[shape] = cuda_call(rt.cudaGraphInstantiate(graph, 0))
        return self._graphs[shape]


def parse_workspace(text: str) -> int:
    """A size for a backend's memory limits (TensorRT's builder workspace). '4GiB', '512MiB', '1073741824' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise UsageError(f"workspace must look like 4GiB or 512MiB, got {text!r}")
    value, unit = float(match.group(1)), (match.group(2) or "B").upper().replace("I", "")
    return int(value * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[unit])



# its own options (edgekit.options collects them into flags, recipe keys and runner arguments)
PRECISION = backend_option("precision", "--precision", "choice", "tensorrt: f16 makes FP16 engines of FP32 artifacts", choices=("f32", "f16"))
WORKSPACE = backend_option("trt_workspace", "--trt-workspace", "text", "TensorRT builder workspace limit, e.g. 4GiB.")
CUDA_GRAPH = backend_option("cuda_graph", "--cuda-graph", "flag", "TensorRT: replay inference from a captured CUDA graph.", False)


@dataclass(frozen=True)
class TensorRTOptions:
    precision: Optional[str] = PRECISION.field()
    workspace_bytes: Optional[int] = WORKSPACE.field(convert=parse_workspace)
    cuda_graph: bool = CUDA_GRAPH.field()


class TensorRTBackend(BackendBase):
    name = "tensorrt"
    options = (PRECISION, WORKSPACE, CUDA_GRAPH)
    options_type = TensorRTOptions
    runs_on_cpu = False
    pip_extra = "tensorrt"
    runtime_packages = (("tensorrt", "tensorrt"),)  # on Jetson, TensorRT's bindings come with JetPack
    distributions = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")
    device_note = "TensorRT on Jetson: its Python bindings come with JetPack; without torch, also pip install cuda-python."

    def missing_on_device(self) -> list[str]:
        missing = super().missing_on_device()
        if not (importable("torch") or importable("cuda.bindings") or importable("cuda.cudart")):
            missing.append("cuda-python")  # device buffers without torch
        return missing

    default_device = "cuda"
    always_there = ()

    def devices(self) -> tuple[str, ...]:
        """cuda (GPU 0: engines are built and run there) where TensorRT imports and a GPU shows."""
        try:
            self.check_available()
        except BackendUnavailableError:
            return ()
        return ("cuda",)

    def device_hint(self, have: tuple[str, ...]) -> str:
        return "" if have else "it needs TensorRT and an NVIDIA GPU"

    def _check_device(self, options: BackendOptions) -> None:
        device = self.device_for(options)
        if device != "cuda":
            raise UsageError(f"--device {device}: tensorrt runs on cuda (GPU 0) only")

    def uses_nvidia_gpu(self, options: BackendOptions) -> bool:
        return True

    def check_available(self) -> None:
        require_module("tensorrt", self.name, self.pip_extra)
        if torch_cuda():
            return
        try:
            rt = cudart()
        except ImportError:
            raise BackendUnavailableError(
                "backend tensorrt needs torch with CUDA or cuda-python for device buffers; install it with: pip install cuda-python"
            ) from None
        error, count = rt.cudaGetDeviceCount()
        if int(error) != 0 or not count:
            raise BackendUnavailableError(NO_GPU)

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        self.check_available()
        self._check_device(options)
        own = self.own_options(options)
        precision = numeric_format(artifact.manifest)  # INT8 only from the QDQ graph
        if precision == "fp32" and own.precision == "f16":
            precision = "fp16"  # --precision f16: an FP16 engine from the FP32 ONNX
        elif own.precision not in (None, "f32", "f16"):
            raise UsageError(f"TensorRT runs f32 or f16 (INT8 comes from an --int8 artifact), got {own.precision!r}")
        lo, opt, hi = profile_batches(options.batch_sizes or (1,))
        spec = EngineSpec(precision, lo, opt, hi, own.workspace_bytes or DEFAULT_WORKSPACE)
        shape = artifact.manifest["input"]["shape"]
        engine = build_engine(artifact.onnx_path, artifact.path / ENGINE_FOLDER, spec, artifact.manifest["input"]["name"], shape)
        manifest = {**artifact.manifest, "files": {**artifact.manifest["files"], "tensorrt_engine": str(engine.relative_to(artifact.path))}}
        manifest["variant_detail"] = precision
        return Artifact(path=artifact.path, manifest=manifest)

    def load(self, artifact: Artifact, options: BackendOptions) -> TensorRTSession:
        self.check_available()
        self._check_device(options)
        engine = artifact.manifest["files"].get("tensorrt_engine")
        if engine is None:
            artifact = self.compile(artifact, options)
            engine = artifact.manifest["files"]["tensorrt_engine"]
        session = TensorRTSession if torch_cuda() else CudaPythonTensorRTSession
        return session(artifact.path / engine, artifact.manifest.get("variant_detail", "fp32"), self.own_options(options).cuda_graph)

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """Per engine layer: TensorRT's layer profiler (TensorRTSession.profile). GPU only."""
        return self.load(artifact, options).profile(batch, iterations, warmup)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        engine = artifact.manifest["files"].get("tensorrt_engine")
        return (artifact.path / engine).stat().st_size / 1e6 if engine else None
