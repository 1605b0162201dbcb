"""OpenVINO: ONNX -> IR (.xml/.bin) kept beside the artifact, run on CPU (or GPU/NPU).

Precision is explicit and checked. On CPUs with bf16 support OpenVINO silently runs "FP32"
models in bf16 (INFERENCE_PRECISION_HINT), and with f32 it computes an FP16 graph in FP32
(its FP16 weights decompressed). So edgekit asks for the graph's own precision (f32; f16 for
a graph with FP16 tensors, where the device has FP16 arithmetic), unless --precision says
otherwise, and before anything is timed reads what the compiled model runs, layer by layer
(its runtime model), against what the graph asks (edgekit.layer_precision): a compute layer
at another precision is an error, one that --precision asked for is a recorded substitution.

Each input shape gets its own compiled model (static shapes are what benchmark_app times
and what the CPU plugin optimises best); they are compiled on first use and kept.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core import Artifact, UsageError, float_parts, numeric_format, sha256_file
from .base import THREADS, BackendBase, BackendOptions, DeployFile, SessionBase, backend_option, require_module
from ..option import Option

IR_FOLDER = "openvino"
IR_FORMAT = 2  # bump when the conversion below changes: cached IRs are rebuilt (2: graph.json)
GRAPH_FACTS = "graph.json"  # what the source graph asks per compute node, and its names: the layer check reads it, not the ONNX file
PRECISIONS = ("f32", "bf16", "f16")

# its own options (edgekit.options collects them into flags, recipe keys and runner arguments)
PRECISION = backend_option("precision", "--precision", "choice", "openvino: inference precision (default: the graph's; another is recorded)", choices=PRECISIONS)
FP16_WEIGHTS = backend_option("ov_fp16_weights", "--ov-fp16-weights", "flag", "OpenVINO: compress the IR's weights to FP16.", False)
THROUGHPUT = Option("throughput", "--throughput", "float", "bench", "Also time OpenVINO's throughput mode (asynchronous requests) this many seconds per batch size.",
                    recipe="bench", commands=("bench",), on_device=True, minimum=0.5)


@dataclass(frozen=True)
class OpenVinoOptions:
    precision: Optional[str] = PRECISION.field()
    compress_fp16: bool = FP16_WEIGHTS.field()
    throughput_seconds: Optional[float] = THROUGHPUT.field()
CPU_FORM_VERSION = 3  # bump when the INT8 CPU form changes: a lowered file recorded with another version is rebuilt
# the INT8 CPU forms: clamped tensors at 0..255 where int8 dot products are exact, else 0..127
CPU_FORM_FILES = {"vnni": "model.ov-cpu-vnni.onnx", "any": "model.ov-cpu.onnx"}
FORM_CPUS = {"vnni": "CPU, x86 with VNNI/AMX", "any": "CPU, others (x86 without VNNI, ARM)"}


def ov_device(device: str) -> str:
    """edgekit's device names (cpu, gpu, npu, gpu.1...) -> OpenVINO's (CPU, GPU, NPU, GPU.1)."""
    return device.upper()


@lru_cache(maxsize=1)
def shared_core():
    """The one ov.Core of this process; every in-process use of OpenVINO goes through it.

    OpenVINO 2026.4's CPU plugin swaps the calling thread's signal stack (sigaltstack) for
    one of its own when a Core first compiles, and puts back the one it found when that
    Core goes. Two Cores whose lives overlap undo each other: the first one gone frees the
    stack the second will put back, so the main thread is left with a signal stack that
    is no longer mapped. The next signal with a Python handler (Ctrl-C, SIGTERM, or the
    SIGCHLD handler PyTorch's DataLoader installs) then kills the process with a
    SIGSEGV and no traceback (tests/test_openvino.py reproduces it with two Cores). One
    Core for the life of the process has nothing to undo."""
    import openvino as ov

    return ov.Core()


@lru_cache(maxsize=1)
def _available_devices() -> tuple[str, ...]:
    return tuple(shared_core().available_devices)


def check_device(core, device: str) -> str:
    name = ov_device(device)
    available = list(core.available_devices)
    if name not in available and name.split(".")[0] not in {d.split(".")[0] for d in available}:
        raise UsageError(f"OpenVINO has no device {name!r} here; available: {', '.join(available)}")
    return name


# --------------------------------------------------------------------------- IR on disk


def ir_folder(artifact: Artifact, compress_fp16: bool) -> Path:
    return artifact.path / IR_FOLDER / ("fp16-weights" if compress_fp16 else "as-exported")


def _ir_manifest(source: Path, compress_fp16: bool) -> dict:
    import openvino

    return {
        "ir_format": IR_FORMAT,
        "openvino": openvino.__version__,
        "source_onnx": source.name,
        "source_sha256": sha256_file(source),
        "compress_to_fp16": compress_fp16,
    }


def ir_is_intact(folder: Path, expected: dict) -> bool:
    """The IR was made from this ONNX the same way (False: rebuild it); TamperedError when
    it was, but its files no longer match the hashes recorded when it was written."""
    from ..files import TamperedError

    try:
        recorded = json.loads((folder / "ir.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if any(recorded.get(k) != v for k, v in expected.items()):
        return False
    files = recorded.get("files", {})
    if not files:
        return False
    changed = [name for name, digest in files.items() if not (folder / name).is_file() or sha256_file(folder / name) != digest]
    if changed:
        raise TamperedError(
            f"{folder / changed[0]} does not match the SHA-256 edgekit recorded when it wrote it; delete {folder} to have the IR rebuilt"
        )
    return True


def build_ir(source: Path, folder: Path, compress_fp16: bool) -> Path:
    """Convert ``source`` to ``folder``/model.xml (+ .bin) unless an intact IR is there.

    Written to a staging folder and renamed, so a half-written IR is never used; an IR made
    from another source or by another version is rebuilt, one whose files were changed
    after they were written is an error.
    """
    import openvino as ov

    expected = _ir_manifest(source, compress_fp16)
    if ir_is_intact(folder, expected):
        return folder / "model.xml"
    from ..files import make_staging_dir, release_staging_dir, writing_derived

    with writing_derived(folder, "OpenVINO's IR folder", export_makes_it=False):  # read-only storage: one line saying what to do
        staging = make_staging_dir(folder.parent, folder.name)
    try:
        model = ov.convert_model(str(source))
        # save_model compresses weights to FP16 unless told not to
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=compress_fp16)
        written = ["model.xml", "model.bin"]
        graph = _graph(source)
        if graph is not None:  # made once with the IR, so no load parses the ONNX file again (memory: the timed process's peak RSS)
            (staging / GRAPH_FACTS).write_text(json.dumps(graph_facts(graph)) + "\n")
            written.append(GRAPH_FACTS)
        files = {name: sha256_file(staging / name) for name in written}
        (staging / "ir.json").write_text(json.dumps({**expected, "files": files}, indent=2) + "\n")
        release_staging_dir(staging)
        shutil.rmtree(folder, ignore_errors=True)  # edgekit's own cache, made from another source
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "model.xml"


def cpu_form_here() -> str:
    """'vnni' on x86 with VNNI/AMX, else 'any' (see CPU_FORM_FILES)."""
    from .int8_cpu_form import x86_with_int8_dot_products

    return "vnni" if x86_with_int8_dot_products() else "any"


def cpu_form(artifact: Artifact, form: str) -> Path:
    """The INT8 graph with uint8 activations, cached beside the artifact and hashed (see
    edgekit.files). Non-negative tensors (ReLU6 outputs) get 0..255 in the 'vnni' form, as
    ONNX Runtime's form gives them: twice the resolution of the portable graph's signed
    0..127 (EfficientNet-Lite2's KL vs FP32: 0.0031 instead of 0.0077). Without VNNI the
    CPU plugin adds pairs of u8 x s8 products in int16, which 0..255 can overflow, so the
    'any' form keeps them at 0..127."""
    from ..files import derived_is_current, record_derived, staged_file, writing_derived

    lowered = artifact.path / CPU_FORM_FILES[form]
    made_from = {"source": artifact.onnx_path.name, "source_sha256": artifact.manifest.get("sha256", {}).get(artifact.onnx_path.name), "lowering": CPU_FORM_VERSION, "form": form}
    if not derived_is_current(lowered, made_from):
        import onnx

        from .int8_cpu_form import lower_qdq_for_cpu

        model = onnx.load(str(artifact.onnx_path))
        lower_qdq_for_cpu(model, "u8s8", widen_clamped=form == "vnni")
        with writing_derived(lowered, "the INT8 CPU form"):  # read-only storage: one line saying what to do
            with staged_file(lowered) as tmp:
                onnx.save(model, str(tmp))
            record_derived(lowered, made_from)
    return lowered


# --------------------------------------------------------------------------- precision

EXPLICIT_PRECISION_DEVICES = ("CPU", "GPU")  # devices told the inference precision even when it is f32 (their own defaults are bf16 / f16)
_HINTS = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}  # --precision -> layer_precision's word


def _graph(onnx_path: Path):
    """The ONNX graph an IR is made from (graph_facts reads it), or None where onnx is not
    installed (a device building the IR from a bundle: its sessions then go unchecked)."""
    try:
        import onnx
    except ImportError:
        return None
    return onnx.load(str(onnx_path), load_external_data=False)


def graph_facts(graph) -> dict:
    """What the layer check needs of an ONNX graph: the precision each compute node asks
    (layer_precision.asked_precision, in graph order) and its names (node or output tensor ->
    node, op type; profiling.OnnxNames)."""
    from ..layer_precision import asked_precision
    from ..profiling import OnnxNames

    return {"asked": asked_precision(graph), "names": {k: list(v) for k, v in OnnxNames.of_model(graph).nodes.items()}}


def read_graph_facts(xml: Path) -> Optional[dict]:
    """graph.json beside the IR (its hash checked with the IR's), None where the IR was built without onnx."""
    path = xml.parent / GRAPH_FACTS
    return json.loads(path.read_text()) if path.is_file() else None


def capabilities(core, device: str) -> tuple[str, ...]:
    """The device's OPTIMIZATION_CAPABILITIES (FP32, FP16, BF16, INT8...)."""
    try:
        return tuple(str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 (a plugin that does not report them: none known)
        return ()


def graph_floats(asked: Optional[dict], artifact: Artifact) -> frozenset:
    """The float precisions the graph's compute nodes ask ('fp32', 'fp16'), from the graph, or
    from the manifest where the graph cannot be read."""
    if asked is None:
        return frozenset({"fp16" if numeric_format(artifact.manifest) == "fp16" else "fp32"})
    return frozenset(word for word in asked.values() if word != "int8") or frozenset({"fp32"})


def choose_precision(core, device: str, wanted: Optional[str], floats: frozenset) -> tuple[str, dict]:
    """(the inference precision to ask, the substitutions it declares). Unasked: the graph's
    own, f32, or f16 for a graph with FP16 compute nodes where the device has FP16 arithmetic
    (else a one-line error naming --precision f32). Asked: that, each difference from the
    graph declared. f16 applies to every layer, so an FP16 graph's FP32 nodes run FP16."""
    if wanted is None:
        if "fp16" in floats and "FP16" not in capabilities(core, device):
            raise UsageError(f"OpenVINO's {device} has no FP16 arithmetic (its OPTIMIZATION_CAPABILITIES: {', '.join(capabilities(core, device)) or 'none'}) "
                             "for this FP16 graph; add --precision f32 to run it in FP32 on purpose")
        wanted = "f16" if "fp16" in floats else "f32"
        why = {("fp32", "fp16"): "OpenVINO's inference precision f16 applies to every layer: the compute nodes the FP16 graph keeps in FP32 "
                                 "run in FP16 (--precision f32 runs the whole graph in FP32)"}
    else:
        why = {(asked, _HINTS[wanted]): f"--precision {wanted}, as asked" + (": FP16 weights decompressed, FP32 arithmetic" if (asked, wanted) == ("fp16", "f32") else "")
               for asked in ("fp32", "fp16")}
    ran = _HINTS[wanted]
    return wanted, {(asked, r): text for (asked, r), text in why.items() if asked in floats and r == ran and asked != ran}


def runtime_layer_report(compiled, device: str, facts_of_graph: dict, substituted: Optional[dict] = None):
    """What a compiled model runs, layer by layer, read from its runtime model: each layer's
    ONNX nodes (its originalLayersNames that name nodes of the graph: ``facts_of_graph``,
    see graph_facts), and what it computed in (its kernel, primitiveType, and runtimePrecision)."""
    from ..layer_precision import LayerFact, LayerReport
    from ..profiling import OnnxNames

    names = OnnxNames({k: tuple(v) for k, v in facts_of_graph["names"].items()})
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        text = {key: str(info[key].astype(str)) for key in ("layerType", "runtimePrecision", "originalLayersNames", "primitiveType") if key in info}
        if text.get("layerType") in ("Const", "Input", "Output"):
            continue
        found = (names.resolve(n) for n in text.get("originalLayersNames", "").split(",") if n)
        covers = tuple(dict.fromkeys(f[0] for f in found if f))
        ran, note = _ran(text.get("primitiveType", ""), text.get("runtimePrecision", ""))
        layers.append(LayerFact(op.get_friendly_name(), text.get("layerType", ""), covers, ran, device, note))
    facts = {"inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}
    layers, unmapped = _pair_unnamed(layers, list(facts_of_graph["asked"]))
    if unmapped:
        facts["compute_nodes_not_named"] = unmapped
    return LayerReport("openvino", device, tuple(layers), (device,), facts, dict(substituted or {}))


_COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")  # the CPU plugin's layer types


def _pair_unnamed(layers: list, judged: list[str]) -> tuple[list, list[str]]:
    """A fusion can leave a compute layer named only after its neighbours (an FP16 graph's
    last Gemm becomes 'logits', the Cast after it). Where the compute layers that cover no
    compute node of the graph are as many as the compute nodes no layer covers, they pair
    in order; otherwise the nodes are listed (returned) and judged nowhere."""
    from dataclasses import replace

    covered = {node for fact in layers for node in fact.covers}
    missing = [n for n in judged if n not in covered]
    unnamed = [i for i, fact in enumerate(layers) if fact.op_type in _COMPUTE_LAYERS and not set(fact.covers) & set(judged)]
    if not missing or len(missing) != len(unnamed):
        return layers, missing
    layers = list(layers)
    for i, node in zip(unnamed, missing):
        fact = layers[i]
        note = f"{fact.note}; " if fact.note else ""
        layers[i] = replace(fact, covers=(*fact.covers, node), note=f"{note}paired with {node} by order: OpenVINO names it after a fused neighbour")
    return layers, []


def _ran(kernel: str, runtime_precision: str) -> tuple[str, str]:
    """(what a layer computed in, how that was read). The kernel's name ends with its
    arithmetic (brgconv_avx512_f32, brgconv_avx512_amx_1x1_I8); runtimePrecision is its
    inputs' precision, weights included, so FP16 weights decompressed inside an FP32 kernel
    read f16 there: the kernel's word wins, the difference is noted."""
    from ..layer_precision import precision_word

    by_kernel = precision_word(kernel.rsplit("_", 1)[-1]) if "_" in kernel else ""
    by_inputs = precision_word(runtime_precision)
    if not by_kernel:
        return by_inputs, f"kernel {kernel}" if kernel else ""
    differs = f" (runtimePrecision {runtime_precision}: its inputs' precision)" if by_inputs and by_inputs != by_kernel else ""
    return by_kernel, f"kernel {kernel}{differs}"


def _refuse_mismatches(found: list[str], device: str) -> None:
    if found:
        more = f" (and {len(found) - 1} more; `edgekit doctor` lists them)" if len(found) > 1 else ""
        raise UsageError(f"OpenVINO on {device} did not run the graph as it asks: {found[0]}{more}")


# --------------------------------------------------------------------------- session


class OpenVinoSession(SessionBase):
    def __init__(self, xml: Path, artifact: Artifact, options: BackendOptions, check: bool = True):
        import openvino as ov

        from ..layer_precision import summary

        own = OpenVinoBackend().own_options(options)
        self._core = shared_core()
        self._device = check_device(self._core, OpenVinoBackend().device_for(options))
        self.device = self._device
        self._model = self._core.read_model(str(xml))
        graph = read_graph_facts(xml)
        self.asked = graph["asked"] if graph is not None else None  # what the graph asks, per compute node
        self._precision_hint, substituted = choose_precision(self._core, self._device, own.precision, graph_floats(self.asked, artifact))
        self.throughput_seconds = own.throughput_seconds
        self._threads = options.threads
        self._compiled: dict[tuple[int, ...], object] = {}
        self._requests: dict[tuple[int, ...], object] = {}
        variant = artifact.manifest.get("variant", "fp32")
        compiled = self._compile((1, *self._input_shape_tail()))
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = f"{variant} (OpenVINO {self._device} inference precision {_type_name(self.inference_precision)})"
        self.providers = (f"openvino {ov.__version__} {self._device}",)
        self.threads = options.threads
        # what ran, layer by layer, against what the graph asks: None where the IR was built without onnx to read the graph
        self.layer_report = runtime_layer_report(compiled, self._device, graph, substituted) if graph is not None else None
        self.layer_summary = summary(self.asked, self.layer_report) if self.layer_report is not None else None
        if check and self.layer_summary is not None:
            _refuse_mismatches(self.layer_summary["mismatches"], self._device)

    def _input_shape_tail(self) -> list[int]:
        shape = self._model.inputs[0].get_partial_shape()
        return [d.get_length() for d in list(shape)[1:]]

    def _config(self, hint: str) -> dict:
        config = {"PERFORMANCE_HINT": hint}
        if self._device.startswith(EXPLICIT_PRECISION_DEVICES) or self._precision_hint != "f32":
            config["INFERENCE_PRECISION_HINT"] = self._precision_hint
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        return config

    def _compile(self, shape: tuple[int, ...], hint: str = "LATENCY"):
        key = (hint, *shape)
        if key not in self._compiled:
            model = self._model.clone()
            model.reshape({model.inputs[0]: list(shape)})
            self._compiled[key] = self._core.compile_model(model, self._device, self._config(hint))
        return self._compiled[key]

    def run(self, batch: np.ndarray) -> np.ndarray:
        key = tuple(batch.shape)
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = self._compile(key).create_infer_request()
        import openvino as ov

        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(batch, dtype=np.float32), shared_memory=True))
        request.infer()
        return request.get_output_tensor(0).data.copy()

    def profile(self, batch: np.ndarray, iterations: int, warmup: int):
        """OpenVINO's own performance counters (PERF_COUNT) on a model compiled as ``run``'s
        is: per executed node of the runtime graph, its mean real time over the timed runs
        (the counters are running means since compilation: read after the warm-up and at
        the end, the difference is the timed runs' own), the precision it ran
        at (the runtime graph's runtimePrecision, and the kernel's name, e.g. brgconv_avx512_I8)
        and the ONNX layers it computes (its originalLayersNames)."""
        import time

        from ..profiling import NodeTime, ProfiledRun

        model = self._model.clone()
        model.reshape({model.inputs[0]: list(batch.shape)})
        compiled = self._core.compile_model(model, self._device, {**self._config("LATENCY"), "PERF_COUNT": True})
        runtime = {op.get_friendly_name(): op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()}
        request = compiled.create_infer_request()
        data = np.ascontiguousarray(batch, dtype=np.float32)
        warmup = max(warmup, 1)
        for _ in range(warmup):
            request.infer({0: data})
        before = _counters(request)
        walls = []
        for _ in range(iterations):
            started = time.perf_counter()
            request.infer({0: data})
            walls.append((time.perf_counter() - started) * 1000.0)
        after = _counters(request)
        # the CPU plugin's counters are running means over every inference since the model
        # was compiled: the timed runs' own mean is what the total grew by, over their count
        totals = {
            name: [(mean * (warmup + iterations) - before.get(name, [0.0])[0] * warmup) / iterations, kind, kernel]
            for name, (mean, kind, kernel) in after.items()
        }
        nodes = []
        for name, (ms, node_type, exec_type) in totals.items():
            info = runtime.get(name, {})
            originals = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
            precision = str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else ""
            covers = tuple(n for n in originals.split(",") if n)
            role = "layout" if node_type == "Reorder" else "qdq" if node_type == "FakeQuantize" else ""
            nodes.append(NodeTime(name, node_type, max(ms, 0.0), f"{precision} ({exec_type})" if exec_type else precision, covers or (name,), role=role))
        return ProfiledRun(tuple(nodes), float(np.median(walls)))

    def throughput(self, batch: np.ndarray, seconds: float, on_step=lambda done, total: None) -> dict:
        """Asynchronous requests, as many as the device asks for, for about ``seconds``."""
        import time

        import openvino as ov

        compiled = self._compile(tuple(batch.shape), "THROUGHPUT")
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, requests)
        data = {0: np.ascontiguousarray(batch, dtype=np.float32)}
        for _ in range(requests):  # warm-up: one round on every request
            queue.start_async(data)
        queue.wait_all()
        started = time.perf_counter()
        deadline = started + seconds
        done = 0
        while time.perf_counter() < deadline:
            queue.start_async(data)
            done += 1
            if done % 50 == 0:
                on_step(min(int(time.perf_counter() - started), int(seconds)), int(seconds))
        queue.wait_all()
        elapsed = time.perf_counter() - started
        return {
            "batch_size": int(batch.shape[0]),
            "requests": requests,
            "streams": int(compiled.get_property("NUM_STREAMS")),
            "inferences": done,
            "seconds": elapsed,
            "throughput_ips": done * batch.shape[0] / elapsed,
        }


def _counters(request) -> dict[str, list]:
    """Executed node -> [mean ms per inference so far, node type, kernel], from the request's counters."""
    found = {}
    for info in request.get_profiling_info():
        if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
            found[info.node_name] = [info.real_time.total_seconds() * 1000.0, info.node_type, info.exec_type]
    return found


def _type_name(element_type) -> str:
    name = getattr(element_type, "get_type_name", lambda: str(element_type))()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


class OpenVinoBackend(BackendBase):
    name = "openvino"
    pip_extra = "openvino"
    runtime_packages = (("openvino", "openvino"),)
    distributions = ("openvino",)
    default_device = "CPU"
    options = (THREADS, PRECISION, FP16_WEIGHTS, THROUGHPUT)
    options_type = OpenVinoOptions
    always_there = ()  # even the CPU plugin is OpenVINO's to list

    def canonical_device(self, device: str) -> str:
        return ov_device(device.strip())

    def devices(self) -> tuple[str, ...]:
        """What OpenVINO lists here: CPU, GPU (GPU.0, GPU.1 with several), NPU."""
        return _available_devices()

    def has_device(self, device: str, have: tuple[str, ...]) -> bool:
        name = ov_device(device)
        return name in have or name.split(".")[0] in {d.split(".")[0] for d in have}

    def deploy_files(self, artifact: Artifact) -> tuple[DeployFile, ...]:
        """INT8: both CPU forms (which one is right depends on the deploying machine's CPU, and
        making them needs onnx, not openvino), and the portable graph for other devices. The
        IR is not deployed: it is built from these, per OpenVINO version."""
        if numeric_format(artifact.manifest) != "int8":
            return super().deploy_files(artifact)
        if float_parts(artifact.manifest) == "fp16":
            return ()  # its frontend cannot read FP16 Q/DQ (check_artifact)
        forms = tuple(DeployFile(self.name, cpu_form(artifact, form).name, FORM_CPUS[form]) for form in CPU_FORM_FILES)
        return (*forms, DeployFile(self.name, artifact.onnx_path.name, "GPU or NPU"))

    def check_available(self) -> None:
        require_module("openvino", self.name, self.pip_extra)

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        """ONNX -> IR in <artifact>/openvino/. FP32 and FP16 graphs convert as they are; an
        INT8 QDQ graph bound for the CPU is first put in its CPU form (see int8_cpu_form)."""
        self.check_available()
        self.check_artifact(artifact, options)
        own = self.own_options(options)
        if own.precision is not None and own.precision not in PRECISIONS:
            raise UsageError(f"unknown OpenVINO precision {own.precision!r}; use one of {', '.join(PRECISIONS)}")
        source = artifact.onnx_path
        if numeric_format(artifact.manifest) == "int8" and self.device_for(options).startswith("CPU"):
            source = cpu_form(artifact, cpu_form_here())
        xml = build_ir(source, ir_folder(artifact, own.compress_fp16), own.compress_fp16)
        files = {**artifact.manifest["files"], "onnx": source.name, "openvino_xml": str(xml.relative_to(artifact.path))}  # onnx: what the IR was made from
        manifest = {**artifact.manifest, "files": files}
        return Artifact(path=artifact.path, manifest=manifest)

    def check_planned(self, numeric: str, floats: str, options: BackendOptions) -> None:
        """INT8 with FP16 float parts (--int8-float fp16) is for GPU targets: OpenVINO's ONNX
        frontend refuses FP16 Q/DQ (a Conv of FP32 data and FP16 filters)."""
        if numeric == "int8" and floats == "fp16":
            raise UsageError("an INT8 artifact with FP16 float parts (--int8-float fp16) is for GPU targets; OpenVINO's ONNX frontend "
                             "cannot read FP16 Q/DQ: leave out --int8-float fp16 for openvino")

    def load(self, artifact: Artifact, options: BackendOptions, check: bool = True) -> OpenVinoSession:
        """The session bench times. Compiling it, OpenVINO says what each layer runs at; a
        compute layer at another precision than the graph asks (and --precision did not ask
        for) is an error here, before any timing (``check``)."""
        self.check_available()
        xml = artifact.path / artifact.manifest["files"].get("openvino_xml", "")
        if not xml.is_file():
            artifact = self.compile(artifact, options)
            xml = artifact.path / artifact.manifest["files"]["openvino_xml"]
        return OpenVinoSession(xml, artifact, options, check)

    def layer_report(self, artifact: Artifact, options: BackendOptions):
        """What the compiled model runs, layer by layer (runtime_layer_report), unchecked;
        None where the IR was built without onnx to read the graph."""
        return self.load(artifact, options, check=False).layer_report

    def machine_facts(self) -> dict:
        """Its version, devices with their names and OPTIMIZATION_CAPABILITIES, each device's
        own default inference precision, and what edgekit asks of it per kind of graph."""
        facts = super().machine_facts()
        if not facts["installed"] or facts["problem"]:
            return facts

        core = shared_core()
        devices = {}
        for device in facts["devices"]:
            capable = capabilities(core, device)
            try:
                default = _type_name(core.get_property(device, "INFERENCE_PRECISION_HINT"))
            except Exception:  # noqa: BLE001 (a plugin without the property)
                default = None
            fp16 = "f16" if "FP16" in capable else "none by default: no FP16 arithmetic here (--precision f32 runs it in FP32)"
            devices[device] = {
                "name": str(core.get_property(device, "FULL_DEVICE_NAME")),
                "optimization_capabilities": list(capable),
                "openvino_default_precision": default,
                "edgekit_asks": {"fp32 graph": "f32", "int8 graph": "f32 (its float parts)", "fp16 graph": fp16}
                if device.startswith(EXPLICIT_PRECISION_DEVICES) else {"any graph": "the device's own default"},
            }
        return {**facts, "device_details": devices}

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """Per node of the runtime graph: OpenVINO's performance counters (OpenVinoSession.profile)."""
        return self.load(artifact, options).profile(batch, iterations, warmup)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        xml = artifact.path / artifact.manifest["files"].get("openvino_xml", "")
        if not xml.is_file():
            return None
        return (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6
