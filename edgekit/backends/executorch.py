"""ExecuTorch: the artifact's float graph exported with torch.export, lowered to a .pte
program with the XNNPACK delegate (or none: the portable reference kernels), run by the
pip package's runtime. INT8 is ExecuTorch's own PT2E scheme (XNNPACKQuantizer), calibrated
on the images edgekit's INT8 artifact was calibrated on.

What users meet is named: an operator that cannot be exported or lowered, compute layers
that fell out of the XNNPACK delegate onto portable kernels (a recorded fact), an INT8
program whose compute layers stayed float (an error), a kernel the runtime here lacks.
Torch-free at import (a bundle's runner imports it); the pip runtime itself imports torch.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core import Artifact, BackendUnavailableError, UsageError, numeric_format
from .base import THREADS, BackendBase, BackendOptions, SessionBase, backend_option, distribution_version, file_size_mb, require_module

DELEGATES = ("xnnpack", "none")
DELEGATE = backend_option("executorch_delegate", "--executorch-delegate", "choice",
                          "ExecuTorch: xnnpack (the XNNPACK CPU delegate) or none (the portable reference kernels, to see what the delegate buys).",
                          "xnnpack", choices=DELEGATES)

PROGRAM_VERSION = 4  # bump when the conversion below changes: programs made by older code are remade
XNNPACK_ID = "XnnpackBackend"  # the delegate's id in a .pte and in the runtime's backend registry
INT8_SCHEME = "ExecuTorch PT2E XNNPACKQuantizer: per-channel symmetric INT8 weights, per-tensor INT8 activations"
# kernels outside a delegate that compute a layer (the rest move or combine values)
COMPUTE_KERNELS = ("aten::convolution", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")


@dataclass(frozen=True)
class ExecuTorchOptions:
    delegate: str = DELEGATE.field()


def program_name(int8: bool, delegate: str) -> str:
    """The program file beside the artifact: model.xnnpack.pte, model.portable.pte, model.int8.xnnpack.pte."""
    return f"model.{'int8.' if int8 else ''}{'xnnpack' if delegate == 'xnnpack' else 'portable'}.pte"



def require_converter(backend: str) -> None:
    """The host-side tools (executorch.exir, torchao's PT2E); a device only loads programs."""
    for module in ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner", "torchao.quantization.pt2e"):
        try:
            __import__(module)
        except ImportError as e:
            raise BackendUnavailableError(f"backend {backend} converts models with {module} ({e.msg}); "
                                          "install it with: pip install 'edgekit[executorch]'") from None


# --------------------------------------------------------------------------- conversion


def _quantized(module, example, images: np.ndarray):
    """ExecuTorch's own INT8 (PT2E, XNNPACKQuantizer, per-channel symmetric weights),
    calibrated one image at a time (the program is batch 1) on ``images``."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for i in range(images.shape[0]):
            prepared(torch.from_numpy(np.ascontiguousarray(images[i : i + 1])))
    converted = convert_pt2e(prepared)
    stayed_float(converted)
    return converted


_DEQUANTIZE = re.compile(r"quantized_decomposed\.dequantize_per_(tensor|channel)")


def stayed_float(module) -> None:
    """A one-line UsageError where the quantizer left compute layers (convolutions, linear
    layers) float: their weight is not read through a dequantize node."""
    import torch

    aten = torch.ops.aten
    compute = [n for n in module.graph.nodes if n.target in (aten.conv1d.default, aten.conv2d.default, aten.linear.default, aten.conv_transpose2d.input)]
    left = [n.name for n in compute if not _DEQUANTIZE.search(str(getattr(n.args[1], "target", "")))]
    if left:
        raise UsageError(f"ExecuTorch's XNNPACKQuantizer left {len(left)} of {len(compute)} compute layers float ({', '.join(left[:4])}"
                         f"{', ...' if len(left) > 4 else ''}): the INT8 program would not be INT8")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_OPERATOR = re.compile(r"(aten|quantized_decomposed|dim_order_ops)[.:]+[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")


def _conversion_error(stage: str, e: Exception) -> UsageError:
    """An exception of ExecuTorch's lowering as one line naming the operator where it says one."""
    found = _OPERATOR.search(str(e))
    named = f" (operator {found.group(0)})" if found else ""
    return UsageError(f"ExecuTorch cannot {stage} this model{named}: {_first_line(e)}")


def make_program(artifact: Artifact, delegate: str, path: Path) -> None:
    """Export, (for INT8) quantize, lower and serialize the program to ``path``."""
    from executorch.exir import to_edge_transform_and_lower

    from .torch_program import calibration_batch, example_input, exported_program, quantizable_graph

    int8 = numeric_format(artifact.manifest) == "int8"
    example = example_input(artifact)
    module = quantizable_graph(artifact)
    if int8:
        module = _quantized(module, example, calibration_batch(artifact))
    program = exported_program(module, example)
    partitioners = []
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners = [XnnpackPartitioner()]
    try:
        edge = to_edge_transform_and_lower(program, partitioner=partitioners)
    except Exception as e:  # noqa: BLE001 (lowering raises many kinds; the message names the operator)
        raise _conversion_error("lower", e) from None
    try:
        buffer = edge.to_executorch().buffer
    except Exception as e:  # noqa: BLE001
        raise _conversion_error("serialize", e) from None
    path.write_bytes(buffer)


# --------------------------------------------------------------------------- reading a program


@dataclass(frozen=True)
class ProgramFacts:
    """What a .pte program runs: its operators outside any delegate (count per kernel) and its delegates."""

    kernels: tuple[tuple[str, int], ...]
    delegates: tuple[str, ...]

    def outside(self) -> dict[str, int]:
        """The compute kernels that run outside every delegate, with their counts."""
        return {name: n for name, n in self.kernels if name.split(".")[0] in COMPUTE_KERNELS}


def program_facts(path: Path) -> ProgramFacts:
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(path.read_bytes()).program.execution_plan[0]
    names = [f"{op.name}.{op.overload}" if op.overload else op.name for op in plan.operators]
    calls: Counter = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            op_index = getattr(instruction.instr_args, "op_index", None)
            if op_index is not None:
                calls[names[op_index]] += 1
    return ProgramFacts(tuple(sorted(calls.items())), tuple(d.id for d in plan.delegates))


def outside_delegate_line(facts: ProgramFacts) -> Optional[str]:
    """The substitution a session records where compute layers run on portable kernels."""
    outside = facts.outside()
    if not outside:
        return None
    listed = ", ".join(f"{name} x{n}" for name, n in sorted(outside.items()))
    return (f"{sum(outside.values())} compute ops ran outside the XNNPACK delegate on ExecuTorch's portable kernels "
            f"(slower; the rest in {len(facts.delegates)} XNNPACK subgraph{'s' if len(facts.delegates) != 1 else ''}): {listed}")


def check_runnable(facts: ProgramFacts, delegate: str, program: Path) -> None:
    """Refuse a program this runtime cannot run as asked: the XNNPACK delegate asked and absent
    (from the program, or from the runtime here), or a kernel the runtime lacks."""
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    if delegate == "xnnpack":
        if XNNPACK_ID not in facts.delegates:
            raise UsageError(f"{program.name}: no layer was delegated to XNNPACK (asked --executorch-delegate xnnpack); "
                             "use --executorch-delegate none to run portable kernels on purpose")
        if not runtime.backend_registry.is_available(XNNPACK_ID):
            raise UsageError(f"this ExecuTorch runtime has no XNNPACK delegate (it has: {', '.join(runtime.backend_registry.registered_backend_names)})")
    have = runtime.operator_registry.operator_names
    missing = [name for name, _ in facts.kernels if name not in have]
    if missing:
        raise UsageError(f"{program.name} calls {len(missing)} operator(s) this ExecuTorch runtime has no kernel for: {', '.join(missing[:4])}")


# --------------------------------------------------------------------------- session


class ExecuTorchSession(SessionBase):

    def __init__(self, compiled: Artifact, options: BackendOptions, delegate: str):
        import torch
        from executorch.runtime import Runtime

        from .torch_program import program_path

        program = program_path(compiled)
        facts = program_facts(program)
        check_runnable(facts, delegate, program)
        if options.threads:
            _set_threads(options.threads)
        try:
            self._method = Runtime.get().load_program(program).load_method("forward")
        except RuntimeError as e:
            raise UsageError(f"ExecuTorch could not load {program.name}: {_first_line(e)} (the runtime's log above names the layer)") from None
        self._tensor = torch.from_numpy  # the pip runtime takes torch tensors (it is built on torch)
        self.precision = compiled.manifest.get("variant_detail", "fp32")
        version = distribution_version("executorch")
        self.providers = (f"executorch {version} XNNPACK delegate",) if delegate == "xnnpack" else (f"executorch {version} portable kernels (no delegate)",)
        self.device = "cpu"
        self.threads = options.threads
        line = outside_delegate_line(facts) if delegate == "xnnpack" else None
        if line is not None:
            self.layer_summary = {"substitutions": [line]}
            self.providers += ("executorch portable kernels (layers outside the delegate)",)

    def run_one(self, x: np.ndarray) -> np.ndarray:
        return self._method.execute([self._tensor(x)])[0].numpy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        from .torch_program import run_one_by_one

        return run_one_by_one(self.run_one, np.asarray(batch, dtype=np.float32)).astype(np.float32, copy=False)


def _set_threads(threads: int) -> None:
    """XNNPACK's thread pool in the pip runtime follows the process-wide threadpool size."""
    from executorch.extension.pybindings import portable_lib

    setter = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if setter is None:
        raise UsageError(f"--threads {threads}: this ExecuTorch runtime cannot set its thread count")
    setter(threads)


# --------------------------------------------------------------------------- profiler (ETDump)

_NOT_OPERATORS = ("DELEGATE_CALL", "OPERATOR_CALL", "Method::execute", "Method::init", "Program::load_method")
_XNNPACK_TAGS = re.compile(r"\(([^)]*)\)")  # "Fully Connected (NC, QS8, QC8W) GEMM #3" -> NC, QS8, QC8W
_XNNPACK_COMPUTE = ("Convolution", "Fully Connected", "Deconvolution", "Batch Matrix Multiply")


def _precision_of(name: str, delegated: bool) -> str:
    """What an ETDump event computed in: XNNPACK names its operators' datatypes (F32, F16,
    QS8/QC8/QD8 for INT8); a portable kernel of these programs runs float32."""
    if not delegated:
        return "f32"
    found = _XNNPACK_TAGS.search(name)
    tags = [t.strip() for t in found.group(1).split(",")] if found else []
    if any(t.startswith("Q") for t in tags):
        return "int8"
    return "f16" if "F16" in tags else "f32" if "F32" in tags else ""


def _role_of(name: str) -> str:
    if name.startswith(("Transpose", "Copy")) or "_to_dim_order_copy" in name or "permute_copy" in name:
        return "layout"
    return "qdq" if name.startswith("Convert") or "quantize" in name.lower() else ""  # XNNPACK's Convert: float <-> int8


def _compute_nodes(artifact: Artifact) -> Optional[list[str]]:
    """The ONNX compute nodes (Conv, Gemm, MatMul) of the artifact's float graph in graph
    order, or None where onnx is not here (a device)."""
    try:
        import onnx
    except ImportError:
        return None
    from ..profiling import COMPUTE_OPS
    from .torch_program import float_source

    model = onnx.load(str(float_source(artifact).onnx_path), load_external_data=False)
    return [n.name or n.output[0] for n in model.graph.node if n.op_type in COMPUTE_OPS]


def etdump_events(program: Path, batch: np.ndarray, iterations: int, warmup: int) -> tuple[list[tuple[str, bool, float]], float]:
    """(event name, delegated, mean ms over the timed runs) per operator ETDump recorded, and
    the median wall time per run with ETDump on."""
    import tempfile
    import time
    import warnings

    import torch
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    from ..core import ProfilerUnavailable

    x = torch.from_numpy(np.ascontiguousarray(batch[:1], dtype=np.float32))
    loaded = Runtime.get().load_program(program, enable_etdump=True)
    method = loaded.load_method("forward")
    for _ in range(warmup):
        method.execute([x])
    walls = []
    for _ in range(iterations):
        started = time.perf_counter()
        method.execute([x])
        walls.append((time.perf_counter() - started) * 1000.0)
    with tempfile.TemporaryDirectory(prefix="edgekit-etdump-") as tmp:
        dump = Path(tmp) / "run.etdp"
        try:
            loaded.write_etdump_result_to_file(str(dump), str(Path(tmp) / "debug.bin"))
            with warnings.catch_warnings():  # "Output Buffer not found": no debug data is asked for, only times
                warnings.simplefilter("ignore")
                blocks = Inspector(etdump_path=str(dump)).event_blocks
        except Exception as e:  # noqa: BLE001 (a runtime built without its event tracer fails in several ways)
            raise ProfilerUnavailable(f"ExecuTorch's ETDump could not be read here ({_first_line(e)}); the runtime needs EXECUTORCH_ENABLE_EVENT_TRACER") from None
    events = []
    for block in blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            raw = list(event.perf_data.raw) if event.perf_data is not None else []
            if event.name in _NOT_OPERATORS or not raw:
                continue
            timed = raw[-iterations:]
            events.append((event.name, bool(event.is_delegated_op), float(sum(timed)) / len(timed)))
    return events, float(np.median(walls))


def profiled_run(events: list[tuple[str, bool, float]], run_ms: float, compute_nodes: Optional[list[str]]):
    """ETDump's events as a ProfiledRun. XNNPACK runs the graph's convolutions and linear
    layers in graph order (1x1 convolutions as Fully Connected), so where their count is the
    graph's each covers the ONNX compute node at its position; otherwise none is joined."""
    from ..profiling import NodeTime, ProfiledRun

    compute = [i for i, (name, delegated, _) in enumerate(events) if (name.startswith(_XNNPACK_COMPUTE) if delegated else "convolution" in name or name.startswith(("native_call_mm", "native_call_addmm", "native_call_linear")))]
    joined = dict(zip(compute, compute_nodes)) if compute_nodes is not None and len(compute_nodes) == len(compute) else {}
    seen: Counter = Counter()
    nodes = []
    for i, (name, delegated, ms) in enumerate(events):
        seen[name] += 1
        unique = name if delegated else f"{name} #{seen[name]}"  # XNNPACK's names are numbered already
        op_type = re.sub(r" #\d+$", "", name).removeprefix("native_call_")
        covers = (joined[i],) if i in joined else ()
        nodes.append(NodeTime(unique, op_type, ms, _precision_of(name, delegated), covers, role=_role_of(name)))
    return ProfiledRun(tuple(nodes), run_ms)


# --------------------------------------------------------------------------- backend


class ExecuTorchBackend(BackendBase):
    name = "executorch"
    options = (THREADS, DELEGATE)
    options_type = ExecuTorchOptions
    in_default_run = False
    pip_extra = "executorch"
    runtime_packages = (("executorch.runtime", "executorch"),)
    distributions = ("executorch",)
    device_note = "ExecuTorch: the bundle carries the .pte program made on the host; pip install executorch (it brings torch) only runs it"
    converts_on_first_use = True

    def check_available(self) -> None:
        require_module("executorch.runtime", self.name, self.pip_extra)

    def check_planned(self, numeric: str, floats: str, options: BackendOptions) -> None:
        from .torch_program import check_convertible

        check_convertible(self.name, numeric, floats, options.batch_sizes)
        if numeric == "int8" and self.own_options(options).delegate != "xnnpack":
            raise UsageError("executorch --executorch-delegate none: the pip runtime's portable kernels have no quantized operators; "
                             "INT8 runs through the XNNPACK delegate")

    def program(self, artifact: Artifact, delegate: str) -> tuple[Path, str]:
        """The program for ``artifact`` (made once, cached beside it) and the precision it runs."""
        from .torch_program import cached_program, made_from

        int8 = numeric_format(artifact.manifest) == "int8"
        # no installed versions: a device (no converter, perhaps other versions) must find the bundled program current
        converter = "executorch PT2E + XNNPACK partitioner"
        depends_on = made_from(artifact, converter, delegate=delegate, scheme=INT8_SCHEME if int8 else "fp32", version=PROGRAM_VERSION)

        def make(path: Path) -> None:
            require_converter(self.name)
            make_program(artifact, delegate, path)

        path = cached_program(artifact, program_name(int8, delegate), depends_on, make, "the ExecuTorch program")
        return path, self._detail(int8, delegate, depends_on.get("calibration"))

    @staticmethod
    def _detail(int8: bool, delegate: str, calibration: Optional[dict]) -> str:
        if not int8:
            return f"fp32 (ExecuTorch, {'XNNPACK' if delegate == 'xnnpack' else 'portable kernels, no delegate'})"
        count = (calibration or {}).get("count")
        return f"int8 ({INT8_SCHEME}; {f'{count} calibration images' if count else 'the INT8 artifact calibration images'})"

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        from .torch_program import compiled_artifact

        self.check_available()
        self.check_artifact(artifact, options)
        program, detail = self.program(artifact, self.own_options(options).delegate)
        return compiled_artifact(artifact, program, detail)

    def load(self, artifact: Artifact, options: BackendOptions) -> ExecuTorchSession:
        self.check_available()
        return ExecuTorchSession(artifact, options, self.own_options(options).delegate)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        from .torch_program import program_path

        return file_size_mb(program_path(artifact))

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """ExecuTorch's ETDump over ``iterations`` runs of the program ``compile`` made: per
        XNNPACK operator (or portable kernel), its mean time, its datatype, and the ONNX
        compute node it runs where the order joins them (see profiled_run)."""
        from .torch_program import program_path

        self.check_available()
        program = program_path(artifact)
        check_runnable(program_facts(program), self.own_options(options).delegate, program)
        if options.threads:
            _set_threads(options.threads)
        events, run_ms = etdump_events(program, batch, iterations, warmup)
        return profiled_run(events, run_ms, _compute_nodes(artifact))

    def prepare_bundle(self, artifact: Artifact) -> None:
        """The XNNPACK program, made here (the device has the runtime, not the converter)."""
        self.program(artifact, "xnnpack")

    def machine_facts(self) -> dict:
        facts = super().machine_facts()
        if not facts["installed"]:
            return facts
        from executorch.runtime import Runtime

        try:
            require_converter(self.name)
            converter = f"executorch.exir {distribution_version('executorch')}, torchao {distribution_version('torchao')}"
        except BackendUnavailableError as e:
            converter = f"missing: {e}"
        backends = Runtime.get().backend_registry.registered_backend_names
        return {**facts, "converter": converter, "delegates": list(backends), "xnnpack": XNNPACK_ID in backends,
                "default_delegate": DELEGATE.default}
