"""ONNX Runtime: CPU, or CUDA where onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core import Artifact, UsageError, numeric_format
from .base import THREADS, BackendBase, BackendOptions, DeployFile, SessionBase, backend_option, file_size_mb, require_module


CPU_LOWERING_VERSION = 5  # bump when int8_cpu_form changes: a lowered file recorded with another version is rebuilt
PRECISION = backend_option("precision", "--precision", "choice", "onnxruntime: f16 lets its TensorRT provider use FP16",
                           choices=("f32", "f16"))

# the INT8 CPU forms' files, named for the CPUs they are for (int8_cpu_form.FORM_CPUS)
CPU_FORM_FILES = {"u8s8": "model.ort-cpu-vnni-arm.onnx", "u8u8": "model.ort-cpu-avx2.onnx"}


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    precision: Optional[str] = PRECISION.field()


class OnnxRuntimeSession(SessionBase):
    def __init__(self, artifact: Artifact, options: BackendOptions):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # QDQ graphs draw a warning per unused zero point
        if options.threads:
            so.intra_op_num_threads = options.threads
        fp16 = _fp16_engines(artifact, OnnxRuntimeBackend().own_options(options))
        self.device = _device(options)
        providers = _providers(self.device, ort.get_available_providers(), artifact.path / ORT_TRT_CACHE, fp16)
        self._session = ort.InferenceSession(str(artifact.onnx_path), so, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.precision = artifact.manifest.get("variant_detail", artifact.manifest.get("variant", "fp32"))
        self.providers = tuple(self._session.get_providers())
        _check_in_use(self.device, self.providers)
        self.threads = options.threads

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


ORT_TRT_CACHE = "ort-tensorrt-cache"
DEVICE_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}  # edgekit's device names


def _device(options: BackendOptions) -> str:
    return OnnxRuntimeBackend().device_for(options)


def _check_in_use(device: str, in_use: tuple[str, ...]) -> None:
    """ONNX Runtime drops a provider it cannot start (missing CUDA libraries) and runs on the
    next one with a warning: a run on another device than asked is refused, not timed."""
    wanted = DEVICE_PROVIDERS.get(device)
    if wanted is not None and wanted not in in_use:
        raise UsageError(
            f"ONNX Runtime could not start {wanted} for --device {device} (it would run on {', '.join(in_use) or 'nothing'}); "
            "check the CUDA, cuDNN and TensorRT libraries onnxruntime-gpu needs"
        )


def _providers(device: str, available: list[str], cache_dir: Optional[Path] = None, fp16: bool = False) -> list:
    """cpu; cuda (CUDA execution provider); tensorrt (ONNX Runtime's TensorRT execution
    provider, falling back to CUDA, then CPU, for what it does not take). INT8 needs no
    flag on the TensorRT provider: it reads the QDQ nodes (explicit quantization)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}.get(device)
    if wanted is None:
        raise UsageError(f"unknown device {device!r} for onnxruntime; use cpu, cuda or tensorrt")
    if wanted not in available:
        raise UsageError(
            f"ONNX Runtime has no {wanted} here (available: {', '.join(available)}); "
            "install onnxruntime-gpu (pip install 'edgekit[gpu]') on a machine with an NVIDIA GPU"
            + (" and TensorRT" if device == "tensorrt" else "")
        )
    providers: list = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "tensorrt":
        options = {"trt_fp16_enable": fp16}
        if cache_dir is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir), trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
        providers.insert(0, ("TensorrtExecutionProvider", options))
    return providers


def plain_session(path: Path):
    """A default CPU session on an ONNX file (quiet about unused initializers)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def write_cpu_form(artifact: Artifact, form: str) -> Path:
    """The INT8 QDQ graph lowered for the CPU provider in ``form`` ('u8s8' or 'u8u8', see
    int8_cpu_form), cached beside the artifact by name and hashed (see edgekit.files);
    `edgekit export` writes both and a bundle ships both ready-made."""
    from ..files import derived_is_current, record_derived, staged_file, writing_derived

    lowered = artifact.path / CPU_FORM_FILES[form]
    made_from = {"source": artifact.onnx_path.name, "source_sha256": artifact.manifest.get("sha256", {}).get(artifact.onnx_path.name), "lowering": CPU_LOWERING_VERSION, "form": form}
    if not derived_is_current(lowered, made_from):
        import onnx

        from .int8_cpu_form import lower_qdq_for_cpu

        model = onnx.load(str(artifact.onnx_path))
        lower_qdq_for_cpu(model, form)
        with writing_derived(lowered, "the INT8 CPU form"):  # read-only storage: one line saying what to do
            with staged_file(lowered) as tmp:  # atomic: a half-written file is never read
                onnx.save(model, str(tmp))
            record_derived(lowered, made_from)
    return lowered


def profile_session(path: Path, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int, fp16: bool = False):
    """ONNX Runtime's own session profiler on ``path`` (the session bench loads, profiling
    on): per node the runtime executed, its mean kernel time over ``iterations`` runs after
    ``warmup``, what it computes in (its integer kernels are named so) and the ONNX nodes
    of the file it computes (from the graph ONNX Runtime optimized, saved beside)."""
    import json
    import tempfile
    import time

    import onnx
    import onnxruntime as ort

    from ..profiling import NodeTime, OnnxNames, ProfiledRun, covered_by_walk

    with tempfile.TemporaryDirectory(prefix="edgekit-ort-profile-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        if options.threads:
            so.intra_op_num_threads = options.threads
        device = _device(options)
        providers = _providers(device, ort.get_available_providers(), None, fp16)
        session = ort.InferenceSession(str(path), so, providers=providers)
        _check_in_use(device, tuple(session.get_providers()))
        feed = {session.get_inputs()[0].name: batch}
        for _ in range(warmup):
            session.run(None, feed)
        walls = []
        for _ in range(iterations):
            started = time.perf_counter()
            session.run(None, feed)
            walls.append((time.perf_counter() - started) * 1000.0)
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False) if (Path(tmp) / "optimized.onnx").is_file() else None
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-iterations:]
    if not runs:
        return ProfiledRun((), float(np.median(walls)))
    start = runs[0]["ts"]
    totals: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        name = e["name"][: -len("_kernel_time")]
        entry = totals.setdefault(name, [0.0, e.get("args", {}).get("op_name", "")])
        entry[0] += e["dur"]
    original = onnx.load(str(path), load_external_data=False)
    names = OnnxNames.of(path)
    runtime_nodes = {n.name: n for n in optimized.graph.node} if optimized is not None else {}
    present = {o for n in (optimized.graph.node if optimized is not None else ()) for o in n.output}
    nodes = []
    for name, (micros, op_type) in totals.items():
        node = runtime_nodes.get(name)
        covers = covered_by_walk(original, list(node.input), list(node.output), present) if node is not None else ()
        if not covers:  # outputs renamed (the NHWC and NCHWc layout passes): the node its name comes from, with its fusion group
            found = names.resolve(name)
            covers = _fusion_group(original, found[0]) if found else (name,)
        nodes.append(NodeTime(name, op_type, micros / 1000.0 / len(runs), _precision_of(op_type), covers, role=_role_of(op_type)))
    return ProfiledRun(tuple(nodes), float(np.median(walls)))


_INTEGER_KERNELS = ("QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention")


def _precision_of(op_type: str) -> str:
    """What an ONNX Runtime CPU kernel computes in, from its kind (its integer kernels are named so)."""
    if op_type.startswith("QLinear") or op_type in _INTEGER_KERNELS:
        return "int8"
    if op_type in ("QuantizeLinear", "DequantizeLinear"):
        return "f32->int8" if op_type == "QuantizeLinear" else "int8->f32"
    return "f32"


def _role_of(op_type: str) -> str:
    """Layout nodes ONNX Runtime inserts (its NCHWc reorders, NHWC transposes) and standalone Q/DQ."""
    if op_type in ("ReorderInput", "ReorderOutput", "Transpose"):
        return "layout"
    return "qdq" if op_type in ("QuantizeLinear", "DequantizeLinear") else ""


def _fusion_group(model, name: str) -> tuple[str, ...]:
    """What ONNX Runtime fuses into one kernel around node ``name`` (or around the compute
    node that feeds it, when it names an activation's output): the DequantizeLinear nodes
    the compute node reads, the node, a Relu/Clip it alone feeds and the QuantizeLinear after."""
    from ..profiling import COMPUTE_OPS

    made_by = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    node = next((n for n in model.graph.node if n.name == name), None)
    if node is None:
        return (name,)
    if node.op_type not in COMPUTE_OPS and node.input and getattr(made_by.get(node.input[0]), "op_type", None) in COMPUTE_OPS:
        node = made_by[node.input[0]]
    if node.op_type not in COMPUTE_OPS:
        return (name,)
    group = [made_by[i].name for i in node.input if i in made_by and made_by[i].op_type == "DequantizeLinear"] + [node.name]
    tail = node
    for wanted in (("Relu", "Clip"), ("QuantizeLinear",)):
        after = readers.get(tail.output[0], [])
        if len(after) == 1 and after[0].op_type in wanted:
            tail = after[0]
            group.append(tail.name)
    return tuple(group)


def _fp16_engines(artifact: Artifact, own: OnnxRuntimeOptions) -> bool:
    """Whether the TensorRT provider may build FP16 engines: asked for, or an INT8 QDQ
    graph (TensorRT's own rule for the layers it leaves in float)."""
    return own.precision == "f16" or numeric_format(artifact.manifest) == "int8"


class OnnxRuntimeBackend(BackendBase):
    name = "onnxruntime"
    options = (THREADS, PRECISION)
    options_type = OnnxRuntimeOptions
    in_default_run = True
    pip_extra = None  # a core dependency
    runtime_packages = (("onnxruntime", "onnxruntime"),)
    distributions = ("onnxruntime", "onnxruntime-gpu")

    def devices(self) -> tuple[str, ...]:
        """cpu, and cuda / tensorrt where onnxruntime-gpu's providers are built in (whether a
        GPU is there shows when a session starts: one that falls back is refused)."""
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        return tuple(device for device, provider in DEVICE_PROVIDERS.items() if provider in available)

    def device_hint(self, have: tuple[str, ...]) -> str:
        return "" if "cuda" in have else "install onnxruntime-gpu for cuda and tensorrt"

    def uses_nvidia_gpu(self, options: BackendOptions) -> bool:
        return self.device_for(options) in ("cuda", "tensorrt")

    def deploy_files(self, artifact: Artifact) -> tuple[DeployFile, ...]:
        """INT8: both CPU forms (which one is right depends on the deploying machine's CPU,
        and making them needs onnx), and the portable graph for the GPU providers."""
        if numeric_format(artifact.manifest) != "int8":
            return super().deploy_files(artifact)
        from .int8_cpu_form import FORM_CPUS

        forms = tuple(DeployFile(self.name, write_cpu_form(artifact, form).name, f"CPU, {cpus}") for form, cpus in FORM_CPUS.items())
        return (*forms, DeployFile(self.name, artifact.onnx_path.name, "CUDA or TensorRT provider"))

    def check_available(self) -> None:
        require_module("onnxruntime", self.name, None)

    def graph_runner(self, onnx_path: Path):
        session = plain_session(onnx_path)
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})[0]

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        """FP32/FP16 graphs run as they are; an INT8 QDQ graph is lowered to the form the
        CPU provider fuses into integer kernels (see int8_cpu_form), cached beside it."""
        if numeric_format(artifact.manifest) != "int8" or self.device_for(options) != "cpu":
            return artifact
        from .int8_cpu_form import weight_form

        form = weight_form()
        lowered = write_cpu_form(artifact, form)
        manifest = {**artifact.manifest, "files": {**artifact.manifest["files"], "onnx": lowered.name}}
        weights = "int8 weights" if form == "u8s8" else "uint8 weights: no VNNI"
        manifest["variant_detail"] = f"int8 (CPU form: uint8 activations, {weights})"
        return Artifact(path=artifact.path, manifest=manifest)

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """Per node: ONNX Runtime's session profiler (see profile_session) on what ``compile`` chose."""
        self.check_available()
        fp16 = _fp16_engines(artifact, self.own_options(options))
        return profile_session(artifact.onnx_path, options, batch, iterations, warmup, fp16)

    def load(self, artifact: Artifact, options: BackendOptions) -> OnnxRuntimeSession:
        self.check_available()
        return OnnxRuntimeSession(artifact, options)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        return file_size_mb(artifact.onnx_path)
