"""TensorRT: engines built from the artifact's ONNX, at the precision the graph asks (an
FP32 graph makes an FP32 engine, an ``--fp16`` graph an FP16 one, an INT8 QDQ graph INT8
where its Q/DQ nodes are and float elsewhere), run with execute_async_v3 on a CUDA stream.

Typing (``typing_of``): TensorRT 11 builds only strongly typed networks (its BuilderFlag
FP16/INT8/BF16/FP8, the INT8 calibrators and the precision constraints are gone, and
NetworkDefinitionCreationFlag.STRONGLY_TYPED is kept but ignored); TensorRT 10 builds them
when asked with that flag, which edgekit does; only a TensorRT without strong typing
(8.x) builds weakly typed, with the builder flags the graph's precision needs. TF32 is
cleared where the flag exists: an FP32 graph runs in FP32. After each build and on each
load the engine inspector says what every layer ran (``engine_report``); a compute layer
at another precision than the graph asks is an error before any timing.

UNVERIFIED ON HARDWARE: written and unit-tested (typing against the real 10.16 and 11.4
Python API, inspector JSON, manifest, rebuild and option logic) on a machine without an
NVIDIA GPU; the build and run paths have not executed yet (benchmarks/gpu_check.sh runs
them first where a GPU is lent).

Device buffers, stream, events and CUDA graphs come from torch where it is installed with
CUDA, else from cuda-python's runtime API (``cuda.bindings.runtime``), so a Jetson bundle
runs without torch. The cuda-python path is unverified on hardware too.

Engines are not portable: each is stored with a manifest of what it was built for
(TensorRT version, typing, GPU name and compute capability, driver and CUDA versions,
builder flags, source ONNX hash) and what it ran per layer. An engine whose manifest does
not match the machine is rebuilt instead of failing to deserialize. A timing cache
persists beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..core import Artifact, BackendUnavailableError, UsageError, sha256_file
from .base import BackendBase, BackendOptions, SessionBase, backend_option, importable, require_module

ENGINE_FOLDER = "tensorrt"
ENGINE_FORMAT = 3  # 2: DETAILED profiling verbosity; 3: typing from the graph, TF32 off, layer report in the manifest
GRAPH_FACTS = "graph_precision.json"  # beside the engines: what the graph asks, for a device without onnx
DEFAULT_WORKSPACE = 4 << 30
FP16_HOW = "an --fp16 artifact: edgekit export MODEL --fp16, or edgekit bench MODEL --fp16 --backend tensorrt"


# --------------------------------------------------------------------------- typing


@dataclass(frozen=True)
class Typing:
    """How a TensorRT types a network: 'strong' (each tensor's type comes from the graph)
    or 'weak' (the builder picks precisions the builder flags allow)."""

    mode: str
    network_flags: int  # create_network's argument
    how: str  # what decided it, for manifests and `edgekit doctor`

    @property
    def words(self) -> str:
        return f"{self.mode}ly typed"


def typing_of(trt: Any) -> Typing:
    """The typing a TensorRT module builds with (a pure function of its API, no GPU needed).

    Seen in the real Python API: 11.4 has no BuilderFlag.FP16/INT8/BF16/FP8 and keeps
    NetworkDefinitionCreationFlag.STRONGLY_TYPED (value 0) "deprecated, ignored: strongly
    typed mode is always enabled", so it gets 0; 10.16 has STRONGLY_TYPED (value 1) beside
    the weak-typing builder flags, so it gets 1 << 1; 8.x has no STRONGLY_TYPED: weak."""
    major = _major(getattr(trt, "__version__", ""))
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly = getattr(creation, "STRONGLY_TYPED", None)
    weak_flags = hasattr(getattr(trt, "BuilderFlag", None), "FP16")
    if (major is not None and major >= 11) or not weak_flags:
        return Typing("strong", 0, "always strongly typed (TensorRT 11 removed weak typing)")
    if strongly is not None:
        return Typing("strong", 1 << int(strongly), "strongly typed network (NetworkDefinitionCreationFlag.STRONGLY_TYPED)")
    explicit = getattr(creation, "EXPLICIT_BATCH", None)  # 8.x builds implicit-batch networks without it
    return Typing("weak", (1 << int(explicit)) if explicit is not None else 0, "weakly typed (this TensorRT has no strong typing): builder flags allow the graph's precisions")


def _major(version: str) -> Optional[int]:
    match = re.match(r"\s*(\d+)\.", str(version))
    return int(match.group(1)) if match else None


def builder_flags(typing: Typing, precision: str, floats: str, trt: Any = None) -> tuple[str, ...]:
    """The BuilderFlags a build sets: none when strongly typed (the graph's types decide);
    weakly typed, the ones that allow the graph's precisions (INT8 for Q/DQ, FP16 or BF16
    for half-precision float parts). With ``trt``, each must exist there, or it is an error
    (never a flag silently left out)."""
    if typing.mode == "strong":
        return ()
    wanted = (["INT8"] if precision == "int8" else []) + ({"fp16": ["FP16"], "bf16": ["BF16"]}.get(floats, []))
    missing = [flag for flag in wanted if trt is not None and not hasattr(trt.BuilderFlag, flag)]
    if missing:
        version = getattr(trt, "__version__", "?")
        raise UsageError(f"TensorRT {version} builds weakly typed networks and has no BuilderFlag.{missing[0]}: it cannot build this {precision} graph as asked")
    return tuple(wanted)


# --------------------------------------------------------------------------- what the graph asks


@dataclass(frozen=True)
class GraphPrecision:
    """What an artifact's ONNX graph asks, read from the graph (precision lives there)."""

    asked: Mapping[str, str]  # compute node -> fp32 / fp16 / bf16 / int8 (edgekit.layer_precision.asked_precision)
    floats: str  # the float tensors' type: fp16 or bf16 where the graph has any, else fp32

    @property
    def word(self) -> str:
        """The engine's precision in a word (EngineSpec.precision): int8 where any compute
        node is quantized, else fp16 / bf16 where any asks it, else fp32."""
        words = set(self.asked.values())
        for word in ("int8", "fp16", "bf16"):
            if word in words:
                return word
        return self.floats if not self.asked else "fp32"

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for word in self.asked.values():
            counts[word] = counts.get(word, 0) + 1
        return counts


def read_graph_precision(onnx_path: Path) -> GraphPrecision:
    """asked_precision of the graph, and the type of its float tensors (needs onnx)."""
    import onnx

    from ..layer_precision import asked_precision

    model = onnx.load(str(onnx_path), load_external_data=False)
    kinds = {init.data_type for init in model.graph.initializer}
    kinds |= {info.type.tensor_type.elem_type for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    kinds |= {a.i for node in model.graph.node if node.op_type == "Cast" for a in node.attribute if a.name == "to"}
    floats = "fp16" if onnx.TensorProto.FLOAT16 in kinds else "bf16" if onnx.TensorProto.BFLOAT16 in kinds else "fp32"
    return GraphPrecision(asked_precision(model), floats)


def graph_precision(artifact: Artifact) -> GraphPrecision:
    """What ``artifact``'s graph asks, cached beside its engines (keyed by the ONNX file's
    hash): a bundle carries the cache, so a device without onnx still checks its engines."""
    from ..results.document import atomic_write_text

    cache = artifact.path / ENGINE_FOLDER / GRAPH_FACTS
    source = sha256_file(artifact.onnx_path)
    try:
        recorded = json.loads(cache.read_text())
        if recorded.get("source_sha256") == source:
            return GraphPrecision(dict(recorded["asked"]), str(recorded["floats"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if not importable("onnx"):
        raise BackendUnavailableError(f"tensorrt needs onnx to read what {artifact.onnx_path.name} asks per layer (or the bundle's {ENGINE_FOLDER}/{GRAPH_FACTS}); pip install onnx")
    found = read_graph_precision(artifact.onnx_path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"source_sha256": source, "asked": dict(found.asked), "floats": found.floats}, indent=1) + "\n")
    return found


def check_precision_option(option: Optional[str], graph: GraphPrecision, variant: str) -> None:
    """--precision names the float precision the graph must have; TensorRT cannot change it
    (engines follow the graph), so one that differs is a one-line error saying what would."""
    if option is None:
        return
    has = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}.get(graph.floats, graph.floats)
    if option == has:
        return
    if option == "f16":
        raise UsageError(f"--precision f16: TensorRT engines follow the graph's precision and the {variant} artifact's floats are {graph.floats}; FP16 comes from {FP16_HOW}")
    raise UsageError(f"--precision {option}: TensorRT engines follow the graph's precision and the {variant} artifact's floats are {graph.floats}; bench an artifact built at {option} instead")


# --------------------------------------------------------------------------- engines


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built with; every field enters its file name and manifest."""

    precision: str  # the graph's (GraphPrecision.word): fp32, fp16, bf16, int8 (float parts at the graph's float type)
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_bytes: int = DEFAULT_WORKSPACE

    @property
    def name(self) -> str:
        return f"{self.precision}-b{self.min_batch}-{self.opt_batch}-{self.max_batch}"


STREAM_BATCH = 8  # edgekit.worker.EVAL_BATCH: the views stream through at up to this batch, the last one smaller


def profile_batches(batch_sizes: Sequence[int]) -> tuple[int, int, int]:
    """(min, opt, max) of the optimization profile: kernels tuned for the largest batch
    timed (throughput runs), every batch from 1 up to it and the evaluation's batches run."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be positive, got {list(batch_sizes)}")
    largest = max(batch_sizes)
    return 1, largest, max(largest, STREAM_BATCH)


REBUILD_KEYS = ("engine_format", "tensorrt", "typing", "gpu", "compute_capability", "source_sha256", "flags", "cleared_flags", "spec")


def why_rebuild(recorded: Optional[dict], current: dict) -> Optional[str]:
    """None when an engine built under ``recorded`` can run here, else the reason."""
    if recorded is None:
        return "no engine yet"
    for key in REBUILD_KEYS:
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


def driver_version() -> Optional[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        found = pynvml.nvmlSystemGetDriverVersion()
        return found.decode() if isinstance(found, bytes) else str(found)
    except Exception:  # noqa: BLE001 (NVML is optional: the driver version is informative only)
        return None


def machine_fingerprint() -> dict[str, Any]:
    """TensorRT version and typing, GPU, compute capability, driver and CUDA versions (needs a GPU)."""
    import tensorrt as trt

    return {"tensorrt": trt.__version__, "typing": typing_of(trt).mode, **gpu_facts(), "driver": driver_version()}


def engine_manifest(spec: EngineSpec, source: Path, fingerprint: dict, flags: Sequence[str], cleared: Sequence[str] = ()) -> dict:
    return {
        "engine_format": ENGINE_FORMAT,
        **fingerprint,
        "source_sha256": sha256_file(source),
        "flags": sorted(flags),
        "cleared_flags": sorted(cleared),
        "spec": {"precision": spec.precision, "batch": [spec.min_batch, spec.opt_batch, spec.max_batch], "workspace_bytes": spec.workspace_bytes},
    }


# --------------------------------------------------------------------------- what the engine ran

# The engine inspector's JSON (ICudaEngine.create_engine_inspector().get_engine_information(
# LayerInformationFormat.JSON), DETAILED profiling verbosity), as relied on here; from
# TensorRT's docs (IEngineInspector: format information needs an execution context with its
# input shapes set where shapes are dynamic) and NVIDIA's own reader of it, TREx
# (github.com/NVIDIA/TensorRT tools/experimental/trt-engine-explorer/trex/layer.py and
# activations.py):
#   {"Layers": [{"Name": str, "LayerType": "CaskConvolution" | "Reformat" | "Myelin" | ...,
#                "ParameterType": "Convolution" | ... (optional), "Metadata": "[ONNX Layer: a]\x1e[ONNX Layer: b]",
#                "Inputs": [{"Name", "Location", "Dimensions", "Format/Datatype"}], "Outputs": [same],
#                "Weights": {"Type": "Int8" | "Half" | "Float", "Count": n} (optional), "TacticName": ...}, ...],
#    "Bindings": [names]}
# "Format/Datatype" is a short type without an execution context ("Int8", "Half", "Float",
# "BFloat16", "FP8") and a long description with one ("Thirty-two wide channel vectorized
# row major Int8 format", "Channel major FP16 format where channel % 8 == 0", "Row major
# linear FP32"): the type is the word read anywhere in it.
_DATATYPE = re.compile(r"(?<![a-z0-9])(uint8|int8|fp8|int4|fp4|half|fp16|bfloat16|bf16|float|fp32)(?![a-z0-9])", re.IGNORECASE)
_DATATYPE_WORDS = {"uint8": "int8", "int8": "int8", "fp8": "fp8", "int4": "int4", "fp4": "fp4", "half": "fp16", "fp16": "fp16",
                   "bfloat16": "bf16", "bf16": "bf16", "float": "fp32", "fp32": "fp32"}
NOT_JUDGED = frozenset({"Reformat", "NoOp", "Quantize", "Dequantize", "Shuffle", "Cast", "Constant"})


def datatype_word(text: Any) -> str:
    """'Half', 'Channel major FP16 format where channel % 8 == 0' -> 'fp16'; 'Int8 NC/32HW32' -> 'int8'; '' for none."""
    match = _DATATYPE.search(str(text or ""))
    return _DATATYPE_WORDS[match.group(1).lower()] if match else ""


def covered_nodes(layer: Mapping[str, Any]) -> tuple[str, ...]:
    """The ONNX nodes an engine layer computes: '[ONNX Layer: ...]' entries of its metadata
    (DETAILED engines), else the parts of a fused name 'A + B'."""
    metadata = str(layer.get("Metadata", "") or "")
    found = tuple(part.split("]")[0].strip() for part in metadata.split("[ONNX Layer: ")[1:])
    return found or tuple(part.strip() for part in str(layer.get("Name", "")).split(" + ") if part.strip())


def layer_fact(layer: Mapping[str, Any]):
    """One inspector layer as a LayerFact: the precision a compute layer ran is its
    weights' type where it has weights (convolutions, matrix products: 'Int8', 'Half',
    'Float'), else its first input's. Layout and Q/DQ layers compute none of the nodes their
    metadata names, and a fused region without weights (Myelin: a cast and the layers after
    it in one kernel graph) has no one precision: those are reported, not judged."""
    from ..layer_precision import LayerFact

    name = str(layer.get("Name", ""))
    kind = str(layer.get("LayerType") or layer.get("ParameterType") or "")
    covers = covered_nodes(layer)
    if {kind, str(layer.get("ParameterType", ""))} & NOT_JUDGED or name.startswith("Reformatting"):
        return LayerFact(name, kind, (), "", "cuda", note=f"layout or Q/DQ layer for {', '.join(covers)}: not judged")
    inputs = [str(t.get("Format/Datatype", "")) for t in layer.get("Inputs") or () if isinstance(t, Mapping)]
    weights = layer.get("Weights") if isinstance(layer.get("Weights"), Mapping) else {}
    if weights and datatype_word(weights.get("Type")):
        return LayerFact(name, kind, covers, datatype_word(weights.get("Type")), "cuda", note=f"weights {weights.get('Type')}; inputs {', '.join(inputs)}")
    if kind.lower() in ("myelin", "kgen") or name.startswith("{ForeignNode"):
        return LayerFact(name, kind, covers, "", "cuda", note=f"fused region, inputs {', '.join(inputs) or 'unreported'}: no one precision, not judged")
    read = datatype_word(inputs[0]) if inputs else ""
    return LayerFact(name, kind, covers, read, "cuda", note=f"input {inputs[0]}" if read else "precision unreported")


def engine_report(described: Mapping[str, Any], device: str, facts: Mapping[str, Any]):
    """The inspector's JSON (parsed) as an edgekit.layer_precision.LayerReport."""
    from ..layer_precision import LayerReport

    layers = tuple(layer_fact(layer) for layer in described.get("Layers", ()) if isinstance(layer, Mapping))
    return LayerReport("tensorrt", device, layers, expected_where=(), facts=dict(facts))


def raise_on_mismatch(found: Sequence[str], what: str) -> None:
    """A UsageError naming the first layers (edgekit.layer_precision.mismatches) that ran at
    another precision than the graph asks; nothing where there are none."""
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise UsageError(f"TensorRT built {what} unlike its graph: {'; '.join(found[:3])}{more}")


def precision_summary(asked: Mapping[str, str], report) -> dict[str, Any]:
    """What the engine manifest records of the layer report: counts, mismatches, and the
    judged layers (engine layer -> ONNX nodes, precision)."""
    from ..layer_precision import summary

    judged = [f for f in report.layers if any(node in asked for node in f.covers)]
    return {**summary(asked, report), "layers": [{"layer": f.layer, "type": f.op_type, "covers": list(f.covers), "ran": f.ran} for f in judged]}


def inspect_engine(engine: Any, input_name: str) -> dict[str, Any]:
    """The engine inspector's JSON, read with an execution context at the profile's opt
    shape (format information needs concrete shapes); without one where that fails."""
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    context = None
    try:
        context = engine.create_execution_context()
        context.set_input_shape(input_name, tuple(engine.get_tensor_profile_shape(input_name, 0)[1]))
        for attribute in ("execution_context", "context"):  # 10.x/11.x name it execution_context, 8.x context
            if hasattr(inspector, attribute):
                setattr(inspector, attribute, context)
                break
        text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    except Exception:  # noqa: BLE001 (some GPUs refuse the inspector a context: the short types still come without one)
        inspector = engine.create_engine_inspector()
        text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del context
    return read_inspector_json(text)


def read_inspector_json(text: str) -> dict[str, Any]:
    """The inspector's JSON; raw control characters (the metadata's \\x1e separators) and
    stray backslashes in layer names (seen from other producers' node names) allowed."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        pass
    try:
        return json.loads(re.sub(r'\\(?!["\\/bfnrtu])', r"\\\\", text), strict=False)
    except json.JSONDecodeError as e:
        raise UsageError(f"TensorRT's engine inspector wrote JSON edgekit cannot read ({e}); the engine's layers cannot be checked against the graph") from None


def build_engine(source: Path, folder: Path, spec: EngineSpec, input_name: str, input_shape: Sequence[int], graph: GraphPrecision) -> tuple[Path, dict]:
    """Build (or reuse) ``folder``/<spec>.engine; rebuilt when its manifest no longer fits.
    Returns the engine and its manifest (with the layer report's summary)."""
    import tensorrt as trt

    folder.mkdir(parents=True, exist_ok=True)
    engine_path = folder / f"{spec.name}.engine"
    manifest_path = engine_path.with_suffix(".json")
    typing = typing_of(trt)
    flags = builder_flags(typing, spec.precision, graph.floats, trt)
    cleared = ("TF32",) if hasattr(trt.BuilderFlag, "TF32") else ()  # FP32 stays FP32: TF32 is on by default
    fingerprint = machine_fingerprint()
    current = engine_manifest(spec, source, fingerprint, flags, cleared)
    try:
        recorded = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    except (OSError, json.JSONDecodeError):
        recorded = None
    if engine_path.is_file() and why_rebuild(recorded, current) is None:
        if recorded.get("engine_sha256") != sha256_file(engine_path):
            from ..files import TamperedError

            raise TamperedError(f"{engine_path} does not match the SHA-256 edgekit recorded when it built it; delete it to have it rebuilt")
        return engine_path, recorded

    import time

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(typing.network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"TensorRT cannot parse {source.name}: {errors.splitlines()[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the engine inspector then names each layer's ONNX nodes
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))  # builder_flags checked each exists
    for flag in cleared:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    cache_path = folder / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    chw = tuple(input_shape[1:])
    profile.set_shape(input_name, (spec.min_batch, *chw), (spec.opt_batch, *chw), (spec.max_batch, *chw))
    config.add_optimization_profile(profile)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - started
    if serialized is None:
        raise UsageError(f"TensorRT could not build an engine from {source.name} ({spec.precision}, {typing.words})")
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    report = engine_report(inspect_engine(engine, input_name), fingerprint["gpu"], {"tensorrt": trt.__version__, "typing": typing.mode})
    del engine
    from ..files import atomic_write_bytes
    from ..results.document import atomic_write_text

    atomic_write_bytes(engine_path, bytes(serialized))  # a half-written engine is never read
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    manifest = {**current, "typing_how": typing.how, "build_seconds": round(build_seconds, 3), "precision": precision_summary(graph.asked, report),
                "engine_sha256": sha256_file(engine_path)}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return engine_path, manifest


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
        self.typing = typing_of(trt)
        self._stream_handle = int(stream_handle)
        self._use_cuda_graph = use_cuda_graph
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._buffers: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self.precision = f"{precision} (TensorRT {trt.__version__}, {self.typing.words})"
        self.providers = (f"tensorrt {trt.__version__} {device} ({self.typing.words})",)
        self._gpu = device
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

    def layer_report(self):
        """What this engine runs per layer, from its inspector (an edgekit.layer_precision.LayerReport)."""
        import tensorrt as trt

        return engine_report(inspect_engine(self._engine, self._input), self._gpu, {"tensorrt": trt.__version__, "typing": self.typing.mode})

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
            facts = layers.get(name, {"Name": name})
            covers = covered_nodes(facts)
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
# --precision names the float precision the graph has (check_precision_option): engines follow the graph
PRECISION = backend_option("precision", "--precision", "choice", "tensorrt: as onnxruntime", choices=("f32", "f16"))
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
    distributions = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings")
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

    def check_planned(self, numeric: str, floats: str, options: BackendOptions) -> None:
        """A --precision the planned graph will not have (its floats: FP16 for an --fp16
        artifact or --int8-float fp16, else FP32) is refused before anything is built."""
        planned = "fp16" if "fp16" in (numeric, floats) else "fp32"
        check_precision_option(self.own_options(options).precision, GraphPrecision({}, planned), numeric)

    def check_artifact(self, artifact: Artifact, options: BackendOptions) -> GraphPrecision:
        """What the graph asks, and the refusal of a --precision it does not have (no GPU
        needed: this can run before any work)."""
        graph = graph_precision(artifact)
        check_precision_option(self.own_options(options).precision, graph, str(artifact.manifest.get("variant", "fp32")))
        return graph

    def _build(self, artifact: Artifact, options: BackendOptions, graph: GraphPrecision) -> tuple[Path, dict]:
        self.check_available()
        self._check_device(options)
        lo, opt, hi = profile_batches(options.batch_sizes or (1,))
        spec = EngineSpec(graph.word, lo, opt, hi, self.own_options(options).workspace_bytes or DEFAULT_WORKSPACE)
        shape = artifact.manifest["input"]["shape"]
        return build_engine(artifact.onnx_path, artifact.path / ENGINE_FOLDER, spec, artifact.manifest["input"]["name"], shape, graph)

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        """The engine for the graph's precision; an engine whose layers ran otherwise than the
        graph asks (its manifest's layer report) is an error before any timing."""
        graph = self.check_artifact(artifact, options)
        engine, manifest = self._build(artifact, options, graph)
        raise_on_mismatch(manifest.get("precision", {}).get("mismatches", ()), engine.name)
        files = {**artifact.manifest["files"], "tensorrt_engine": str(engine.relative_to(artifact.path))}
        return Artifact(path=artifact.path, manifest={**artifact.manifest, "files": files, "variant_detail": graph.word})

    def load(self, artifact: Artifact, options: BackendOptions) -> TensorRTSession:
        """The engine compile built, checked once more against the graph from the loaded
        engine's own inspector."""
        if artifact.manifest["files"].get("tensorrt_engine") is None:
            artifact = self.compile(artifact, options)
        graph = self.check_artifact(artifact, options)
        self.check_available()
        self._check_device(options)
        engine = artifact.path / artifact.manifest["files"]["tensorrt_engine"]
        session_type = TensorRTSession if torch_cuda() else CudaPythonTensorRTSession
        session = session_type(engine, artifact.manifest.get("variant_detail", graph.word), self.own_options(options).cuda_graph)
        from ..layer_precision import mismatches, summary

        report = session.layer_report()
        raise_on_mismatch(mismatches(graph.asked, report), engine.name)
        session.layer_summary = summary(graph.asked, report)
        judged = [f for f in report.layers if any(node in graph.asked for node in f.covers)]
        if judged and not any(f.ran for f in judged):  # said, not silently passed
            session.precision = session.precision[:-1] + "; the inspector reports no layer precision: not checked)"
        return session

    def layer_report(self, artifact: Artifact, options: BackendOptions):
        """The engine's inspector for ``artifact`` (built if need be) as a LayerReport, with
        the typing, flags and build time it was made with. GPU only."""
        import tensorrt as trt

        graph = graph_precision(artifact)
        engine_path, manifest = self._build(artifact, options, graph)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise UsageError(f"TensorRT cannot load {engine_path}; delete it to rebuild")
        facts = {key: manifest.get(key) for key in ("tensorrt", "typing", "typing_how", "flags", "cleared_flags", "build_seconds")}
        return engine_report(inspect_engine(engine, artifact.manifest["input"]["name"]), str(manifest.get("gpu")), facts)

    def prepare_bundle(self, artifact: Artifact) -> None:
        """What the graph asks, cached in the bundle: the device may lack onnx to read it."""
        super().prepare_bundle(artifact)
        graph_precision(artifact)

    def machine_facts(self) -> dict[str, Any]:
        """The TensorRT here and its typing (no GPU needed), the GPU, driver and CUDA where
        one shows, and what a Jetson means for it (edgekit.board reads the board); None where unknown."""
        from ..board import jetson

        facts = {**super().machine_facts(), **tensorrt_facts(), **visible_gpu_facts()}
        return {**facts, "jetson_note": jetson_note(jetson(), facts["tensorrt"])}

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """Per engine layer: TensorRT's layer profiler (TensorRTSession.profile). GPU only."""
        return self.load(artifact, options).profile(batch, iterations, warmup)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        engine = artifact.manifest["files"].get("tensorrt_engine")
        return (artifact.path / engine).stat().st_size / 1e6 if engine else None


# --------------------------------------------------------------------------- `edgekit doctor`


def tensorrt_facts() -> dict[str, Any]:
    """The TensorRT version and the typing it builds with; import_problem says why not where it does not import."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 (a wheel without its libraries raises ImportError or OSError: a fact, not a failure)
        return {"tensorrt": _distribution_version(), "typing": None, "typing_how": None, "import_problem": str(e).splitlines()[0] if str(e) else type(e).__name__}
    typing = typing_of(trt)
    return {"tensorrt": str(trt.__version__), "typing": typing.mode, "typing_how": typing.how, "import_problem": None}


def _distribution_version() -> Optional[str]:
    from importlib import metadata

    for name in TensorRTBackend.distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def visible_gpu_facts() -> dict[str, Any]:
    """GPU 0's name, compute capability, CUDA runtime and driver versions, each None where unknown."""
    found: dict[str, Any] = {"gpu": None, "compute_capability": None, "cuda_runtime": None}
    try:
        found.update(gpu_facts())
    except Exception:  # noqa: BLE001 (no GPU, no CUDA runtime: the facts stay None)
        pass
    return {**found, "driver": driver_version()}


def jetson_note(board: Optional[dict[str, Any]], version: Optional[str]) -> Optional[str]:
    """What a Jetson means for TensorRT: JetPack ships 10.x, and 11.3/11.4 do not support it."""
    if board is None:
        return None
    major = int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else None
    if major is not None and major >= 11:
        return f"TensorRT {version} on a Jetson: JetPack is not supported by TensorRT 11.3/11.4; use the 10.x JetPack brings"
    return "on a Jetson, TensorRT comes with JetPack (10.x)"
