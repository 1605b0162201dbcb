"""ONNX Runtime: CPU, or CUDA where onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from ..core import Artifact, UsageError, float_parts, numeric_format
from .base import THREADS, BackendBase, BackendOptions, DeployFile, SessionBase, backend_option, file_size_mb, require_module


CPU_LOWERING_VERSION = 5  # bump when int8_cpu_form changes: a lowered file recorded with another version is rebuilt
# Precision lives in the graph: ONNX Runtime runs what the artifact's tensors say (an FP16
# artifact comes from --fp16). The option only states it; one that differs is an error.
PRECISION = backend_option("precision", "--precision", "choice", "onnxruntime: must be the graph's (FP16 comes from --fp16)",
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
        self.device = _device(options)
        providers = _providers(self.device, ort.get_available_providers(), artifact.path / ORT_TRT_CACHE)
        self._session = ort.InferenceSession(str(artifact.onnx_path), so, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.precision = artifact.manifest.get("variant_detail", artifact.manifest.get("variant", "fp32"))
        if self.device == "cpu" and numeric_format(artifact.manifest) == "fp16" and fp16_conv_on_cpu() == "fp32":
            self.precision += " (CPU provider: FP32 arithmetic and activations on FP16 weights)"  # a substitution by design, said in the row
            # and printed under the table (the per-node count is `edgekit doctor`'s: it costs a profiled run)
            self.layer_summary = {"substitutions": [f"compute nodes asked fp16 ran fp32: {cpu_fp16_substitution()}"]}
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


def _providers(device: str, available: list[str], cache_dir: Optional[Path] = None) -> list:
    """cpu; cuda (CUDA execution provider); tensorrt (ONNX Runtime's TensorRT execution
    provider, falling back to CUDA, then CPU, for what it does not take), its engines and
    timing cache kept in ``cache_dir``. No precision flag: the TensorRT provider reads the
    precision from the graph (FP16 tensors, QDQ nodes), as TensorRT 11's strong typing
    requires; its weak-typing flags (trt_fp16_enable, trt_int8_enable) are never set."""
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
        options: dict = {}
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


def _profiling_session(path: Path, options: BackendOptions, folder: Path, cache_dir: Optional[Path] = None):
    """A session on ``path`` as bench loads it, with ONNX Runtime's profiler on, writing its
    events and (where no provider compiles nodes, which cannot be saved) the graph it
    optimized into ``folder``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(folder / "ort")
    device = _device(options)
    if device != "tensorrt":
        so.optimized_model_filepath = str(folder / OPTIMIZED)
    if options.threads:
        so.intra_op_num_threads = options.threads
    session = ort.InferenceSession(str(path), so, providers=_providers(device, ort.get_available_providers(), cache_dir))
    _check_in_use(device, tuple(session.get_providers()))
    return session


OPTIMIZED = "optimized.onnx"


def _optimized(folder: Path):
    import onnx

    path = folder / OPTIMIZED
    return onnx.load(str(path), load_external_data=False) if path.is_file() else None


_RENAMED = re.compile(r"^(InsertedPrecisionFreeCast_)+|(_nchwc|_token_\d+)+$")
_COMPUTE_KERNEL = re.compile("Conv|Gemm|MatMul")  # ONNX Runtime's convolution and matrix product kernels, fused and integer ones too
_LAYOUT_KERNELS = ("ReorderInput", "ReorderOutput")  # NCHWc reorders ONNX Runtime inserts: they compute nothing of the graph


def _original_name(name: str) -> str:
    """A tensor or node name as the loaded file spells it: without what ONNX Runtime's
    passes add (the NCHWc layout's '_nchwc', '_token_N', the FP16 cast pass's prefix)."""
    return _RENAMED.sub("", name)


class _Covers:
    """The ONNX nodes of the loaded file that each node ONNX Runtime ran computes. A node
    whose name (read back to the file's spelling) names a node of the file covers that node
    and its fusion group; what else it covers is walked in the graph ONNX Runtime optimized,
    stopping at what other nodes compute (the layout passes rename tensors, so tensors alone
    do not say where a node's work starts)."""

    def __init__(self, original, optimized, kernels: list[tuple[str, str]]):
        from ..profiling import OnnxNames

        self.original = original
        names = OnnxNames.of_model(original)
        self.runtime_nodes = {n.name: n for n in optimized.graph.node} if optimized is not None else {}
        self.claims = {}
        for name, op_type in kernels:
            found = names.resolve(_original_name(name)) if op_type not in _LAYOUT_KERNELS else None
            if found is None:
                self.claims[name] = ()
            else:  # a compute kernel may be named after the activation fused into it; any other covers its node
                self.claims[name] = _fusion_group(original, found[0]) if _COMPUTE_KERNEL.search(op_type) else (found[0],)
        outputs = {n.name or n.output[0]: list(n.output) for n in original.graph.node}
        self.claimed_outputs = {name: [o for node in claim for o in outputs.get(node, ())] for name, claim in self.claims.items()}
        self.stop = {_original_name(o) for n in self.runtime_nodes.values() for o in n.output}
        self.stop |= {o for found in self.claimed_outputs.values() for o in found}

    def __call__(self, name: str, op_type: str = "") -> tuple[str, ...]:
        from ..profiling import covered_by_walk

        if op_type in _LAYOUT_KERNELS:
            return ()
        claim = self.claims.get(name, ())
        node = self.runtime_nodes.get(name)
        walked = ()
        if node is not None:
            outputs = [_original_name(o) for o in node.output] + self.claimed_outputs.get(name, [])
            walked = covered_by_walk(self.original, [_original_name(i) for i in node.input], outputs, self.stop)
        return tuple(dict.fromkeys((*claim, *walked)))


def _kernel_events(events: list, since: float = 0.0) -> list[tuple[str, dict, float]]:
    """(node name, its args, its duration in microseconds) per kernel event from ``since``."""
    suffix = "_kernel_time"
    return [(e["name"][: -len(suffix)], e.get("args", {}), e.get("dur", 0.0)) for e in events
            if e.get("cat") == "Node" and e.get("name", "").endswith(suffix) and e.get("ts", 0) >= since]


def profile_session(path: Path, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
    """ONNX Runtime's own session profiler on ``path`` (the session bench loads, profiling
    on): per node the runtime executed, its mean kernel time over ``iterations`` runs after
    ``warmup``, what it computes in (its integer kernels are named so) and the ONNX nodes
    of the file it computes (from the graph ONNX Runtime optimized, saved beside)."""
    import json
    import tempfile
    import time

    import onnx

    from ..profiling import NodeTime, ProfiledRun

    with tempfile.TemporaryDirectory(prefix="edgekit-ort-profile-") as tmp:
        session = _profiling_session(path, options, Path(tmp))
        feed = {session.get_inputs()[0].name: batch}
        for _ in range(warmup):
            session.run(None, feed)
        walls = []
        for _ in range(iterations):
            started = time.perf_counter()
            session.run(None, feed)
            walls.append((time.perf_counter() - started) * 1000.0)
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = _optimized(Path(tmp))
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-iterations:]
    if not runs:
        return ProfiledRun((), float(np.median(walls)))
    totals: dict[str, list] = {}
    for name, args, micros in _kernel_events(events, runs[0]["ts"]):
        entry = totals.setdefault(name, [0.0, args.get("op_name", "")])
        entry[0] += micros
    covered = _Covers(onnx.load(str(path), load_external_data=False), optimized, [(name, op_type) for name, (_, op_type) in totals.items()])
    nodes = [NodeTime(name, op_type, micros / 1000.0 / len(runs), _precision_of(op_type), covered(name, op_type) or (name,), role=_role_of(op_type))
             for name, (micros, op_type) in totals.items()]
    return ProfiledRun(tuple(nodes), float(np.median(walls)))


# --------------------------------------------------------------------------- layer report

TRT_PROVIDER = "TensorrtExecutionProvider"
EXPECTED_WHERE = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider",), "tensorrt": (TRT_PROVIDER, "CUDAExecutionProvider")}
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def cpu_fp16_substitution() -> str:
    """Why an FP16 graph's compute nodes run FP32 on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    return (f"ONNX Runtime {ort.__version__}'s CPU provider has no FP16 kernel for them on this CPU: it casts their FP16 inputs "
            "and weights to FP32 and computes in FP32, and removes the casts between such nodes, so activations are not rounded to FP16 "
            "either (FP16-rounded weights, FP32 arithmetic and activations; the fp16 step judges FP16 accuracy on its own emulation)")


@lru_cache(maxsize=1)
def fp16_conv_on_cpu() -> str:
    """What the CPU provider computes an FP16 Conv in here, measured on a one-Conv graph:
    'fp16', or 'fp32' where it casts around it; '' where onnx (to make the graph) is missing."""
    import tempfile

    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return ""
    weight = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float16), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "fp16_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-fp16-") as tmp:
        path = Path(tmp) / "conv.onnx"
        path.write_bytes(model.SerializeToString())
        report = layer_report_of(path, BackendOptions())
    return next((fact.ran for fact in report.layers if "conv" in fact.covers), "")


def _zeros(node_arg) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in node_arg.shape]
    return np.zeros(shape, _NUMPY_TYPES.get(node_arg.type, np.float32))


def layer_report_of(path: Path, options: BackendOptions, cache_dir: Optional[Path] = None):
    """Which execution provider ran each node of ``path`` and at what precision, from one
    inference under ONNX Runtime's profiler (a session of its own: never a timed one)."""
    import json
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="edgekit-ort-layers-") as tmp:
        session = _profiling_session(path, options, Path(tmp), cache_dir)
        session.run(None, {i.name: _zeros(i) for i in session.get_inputs()})
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = _optimized(Path(tmp))
    return report_from_events(events, onnx.load(str(path), load_external_data=False), optimized, _device(options))


def _ran(op_type: str, args: dict) -> str:
    """What a kernel computed in: its integer kernels by name, else its first input's type."""
    from ..layer_precision import precision_word

    if _precision_of(op_type) == "int8":
        return "int8"
    types = [next(iter(t)) for t in args.get("input_type_shape", []) if isinstance(t, dict) and t]
    return precision_word(types[0]) if types else ""


def report_from_events(events: list, original, optimized, device: str):
    """A LayerReport from ONNX Runtime's profiler events of one run (``original``: the file
    loaded; ``optimized``: the graph ONNX Runtime saved, None where it could not). A TensorRT
    subgraph is one kernel to ONNX Runtime's profiler: it covers the nodes no other kernel
    ran, and its layers' precision is TensorRT's (strongly typed: the graph's)."""
    import onnxruntime as ort

    from ..layer_precision import JUDGED_OPS, LayerFact, LayerReport

    kernels = [(name, args) for name, args, _ in _kernel_events(events)]  # one run: one event per node
    covered = _Covers(original, optimized, [(name, args.get("op_name", "")) for name, args in kernels])
    layers, engines, inserted, on_cpu = [], [], [], []
    judged = {n.name for n in original.graph.node if n.op_type in JUDGED_OPS}
    for name, args in kernels:
        op_type, provider = args.get("op_name", ""), args.get("provider", "")
        if provider == TRT_PROVIDER:
            engines.append((name, op_type))
            continue
        covers = covered(name, op_type)
        if not covers:
            inserted.append(f"{name} ({op_type}, {provider})")
        elif device != "cpu" and provider == "CPUExecutionProvider" and not judged & set(covers):
            on_cpu.append(f"{name} ({op_type})")
        layers.append(LayerFact(name, op_type, covers, _ran(op_type, args), provider))
    if engines:
        done = {node for fact in layers for node in fact.covers}
        rest = tuple(n.name or n.output[0] for n in original.graph.node if (n.name or n.output[0]) not in done)
        note = "a TensorRT engine: ONNX Runtime's profiler names neither its layers nor their precision; it covers what no other provider ran"
        layers += [LayerFact(name, op_type, rest if i == 0 else (), "", TRT_PROVIDER, note) for i, (name, op_type) in enumerate(engines)]
    providers: dict[str, int] = {}
    for fact in layers:
        providers[fact.where] = providers.get(fact.where, 0) + 1
    facts = {"onnxruntime": ort.__version__, "kernels_per_provider": providers, "inserted_by_onnxruntime": inserted}
    if device != "cpu":
        facts["non_compute_on_cpu"] = on_cpu
    if len(engines) > 1:
        facts["tensorrt_subgraphs"] = len(engines)
    substituted = {("fp16", "fp32"): cpu_fp16_substitution()} if device == "cpu" else {}
    return LayerReport("onnxruntime", device, tuple(layers), EXPECTED_WHERE.get(device, ()), facts, substituted)


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


def check_precision(graph: str, own: OnnxRuntimeOptions, device: str) -> None:
    """--precision on ONNX Runtime states the graph's precision (``graph``: fp32, fp16,
    int8), which no flag changes here (the TensorRT provider's FP16 flag is weak typing,
    gone in TensorRT 11): one that differs is a one-line error naming how to get it."""
    if own.precision == "f16" and graph != "fp16":
        raise UsageError(f"onnxruntime --precision f16: ONNX Runtime runs the precision in the graph, and this artifact is {graph}; "
                         "build an FP16 artifact with --fp16 (a graph with FP16 tensors, which every provider runs as such)")
    if own.precision == "f32" and graph == "fp16" and device != "cpu":
        raise UsageError(f"onnxruntime --precision f32: this artifact's graph is FP16 and the {device} provider runs it in FP16; "
                         "bench its FP32 parent (without --fp16) for FP32")


def _checked_summary(report, onnx_path: Path) -> dict:
    """layer_precision.summary of ``report`` against the graph; a one-line UsageError naming
    the first mismatch (and how many there are) where there is one."""
    from ..layer_precision import asked_precision, summary

    found = summary(asked_precision(onnx_path), report)
    problems = found["mismatches"]
    if problems:
        more = f" (and {len(problems) - 1} more; `edgekit doctor` lists them)" if len(problems) > 1 else ""
        raise UsageError(f"onnxruntime on {report.device} did not run the graph as it asks: {problems[0]}{more}")
    return found


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
        and making them needs onnx), and the portable graph for the GPU providers (only
        that, for INT8 with FP16 float parts: the CPU provider cannot run it)."""
        if numeric_format(artifact.manifest) != "int8":
            return super().deploy_files(artifact)
        if float_parts(artifact.manifest) == "fp16":
            return (DeployFile(self.name, artifact.onnx_path.name, "CUDA or TensorRT provider"),)
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
        self.check_artifact(artifact, options)
        if numeric_format(artifact.manifest) != "int8" or self.device_for(options) != "cpu":
            return artifact
        from .int8_cpu_form import weight_form

        form = weight_form()
        lowered = write_cpu_form(artifact, form)
        manifest = {**artifact.manifest, "files": {**artifact.manifest["files"], "onnx": lowered.name}}
        weights = "int8 weights" if form == "u8s8" else "uint8 weights: no VNNI"
        manifest["variant_detail"] = f"int8 (CPU form: uint8 activations, {weights})"
        return Artifact(path=artifact.path, manifest=manifest)

    def check_planned(self, numeric: str, floats: str, options: BackendOptions) -> None:
        """--precision must be the graph's; INT8 with FP16 float parts is for the GPU providers
        (the CPU provider's QuantizeLinear takes FP32 only, so its integer form cannot be made)."""
        device = self.device_for(options)
        check_precision(numeric, self.own_options(options), device)
        if device == "cpu" and numeric == "int8" and floats == "fp16":
            raise UsageError("an INT8 artifact with FP16 float parts (--int8-float fp16) is for GPU targets; ONNX Runtime's CPU provider "
                             "cannot run its integer kernels on it: use --device cuda or tensorrt, or leave out --int8-float fp16")

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """Per node: ONNX Runtime's session profiler (see profile_session) on what ``compile`` chose."""
        self.check_available()
        return profile_session(artifact.onnx_path, options, batch, iterations, warmup)

    def layer_report(self, artifact: Artifact, options: BackendOptions):
        """Which provider ran each node of what ``compile`` returned, at what precision (see
        layer_report_of): one inference under the profiler, in a session of its own."""
        self.check_available()
        return layer_report_of(artifact.onnx_path, options, artifact.path / ORT_TRT_CACHE)

    def load(self, artifact: Artifact, options: BackendOptions) -> OnnxRuntimeSession:
        """The session bench times. On the CUDA and TensorRT providers, where ONNX Runtime
        places each node is checked first (a compute node that fell back to the CPU, or ran
        at another precision than the graph asks, is an error before any timing); on the CPU
        provider nothing is placed elsewhere, so no check costs a load (`edgekit doctor` asks
        for the report)."""
        self.check_available()
        device = self.device_for(options)
        check_precision(numeric_format(artifact.manifest), self.own_options(options), device)
        checked = _checked_summary(self.layer_report(artifact, options), artifact.onnx_path) if device != "cpu" else None
        session = OnnxRuntimeSession(artifact, options)
        if checked is not None:
            session.layer_summary = checked
        return session

    def machine_facts(self) -> dict:
        """Its version, the execution providers this build has, and the INT8 CPU form edgekit
        uses on this CPU (what it means and the instruction sets that decided it)."""
        facts = super().machine_facts()
        if not facts["installed"]:
            return facts
        import onnxruntime as ort

        from .int8_cpu_form import form_facts

        return {**facts, "providers": list(ort.get_available_providers()), "int8_cpu_form": form_facts(),
                "fp16_conv_on_cpu": fp16_conv_on_cpu()}

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        return file_size_mb(artifact.onnx_path)
