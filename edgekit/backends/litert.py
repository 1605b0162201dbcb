"""LiteRT (formerly TensorFlow Lite): the artifact's float graph converted by litert-torch to
a .tflite program, run by ai-edge-litert's interpreter with the XNNPACK delegate (the CPU
path phones and boards use), one image at a time.

INT8 is LiteRT's own full-integer scheme, not edgekit's QDQ graph: litert-torch's PT2E
quantizer (per-channel symmetric INT8 weights, per-tensor INT8 activations from histogram
observers), calibrated on the images the INT8 artifact records, then converted. What
comes out is checked by reading the program: a compute op left float is an error, a
compute op the delegate did not take is a recorded fact (it runs, on TFLite's built-in
kernels).

Torch-free at import: a device runs the .tflite a bundle carries with ai-edge-litert alone.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..core import Artifact, BackendUnavailableError, UsageError, numeric_format, quantize_step
from .base import THREADS, BackendBase, BackendOptions, SessionBase, backend_option, distribution_version, file_size_mb, require_module
from .torch_program import check_convertible, program_path

DELEGATES = ("xnnpack", "none")
DELEGATE = backend_option("litert_delegate", "--litert-delegate", "choice",
                          "LiteRT: xnnpack (default), or none (TFLite's built-in kernels, to see what the delegate buys).",
                          "xnnpack", choices=DELEGATES)

CONVERTER = "litert-torch"
PROGRAM_VERSION = 3  # bump when the conversion below changes: a program recorded with another is remade
PROGRAMS = {"fp32": "model.litert.tflite", "int8": "model.litert-int8.tflite"}
INT8_SCHEME = "litert-torch PT2E quantizer: per-channel symmetric int8 weights, per-tensor int8 activations (histogram observers)"
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "CONV_3D")


@dataclass(frozen=True)
class LiteRTOptions:
    litert_delegate: str = DELEGATE.field()


# --------------------------------------------------------------------------- conversion (host only: torch, litert-torch)


def _require_converter() -> None:
    try:
        import litert_torch  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(f"converting to LiteRT needs litert-torch ({e.msg}); install it with: pip install 'edgekit[litert]' "
                                      "(a device that runs a bundle needs only ai-edge-litert)") from None


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch prints a progress tree to the console; edgekit shows its own progress."""
    name = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(name)
    os.environ[name] = "n"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


_LOWERING = re.compile(r"Lowering not found: (\S+)")


def _conversion_error(e: Exception, source: str) -> UsageError:
    """One line naming the operator litert-torch could not lower (its first line otherwise)."""
    text = str(e).strip()
    found = _LOWERING.search(text)
    if found:
        return UsageError(f"litert-torch cannot convert {source}: it has no LiteRT lowering for operator {found.group(1)}")
    first = text.splitlines()[0] if text else type(e).__name__
    return UsageError(f"litert-torch could not convert {source}: {first}")


def convert_module(module, example, path: Path, quant_config=None, source: str = "the model") -> None:
    """``module`` (a torch module, or a PT2E-quantized graph module) converted to a .tflite at ``path``."""
    import litert_torch

    with _quiet_converter():
        try:
            program = litert_torch.convert(module, (example,), quant_config=quant_config)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 (the converter raises many kinds; the message names the operator)
            raise _conversion_error(e, source) from None
        program.export(str(path))


def quantized_module(artifact: Artifact, calibration: np.ndarray):
    """The float graph, PT2E-quantized with litert-torch's quantizer and calibrated on
    ``calibration`` one image at a time (the program is batch 1), and its QuantConfig."""
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .torch_program import quantizable_graph

    gm = quantizable_graph(artifact)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(calibration.shape[0]):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i : i + 1])))
    quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    quantized.training = False  # the converter reads the flag (and warns), which move_exported_model_to_eval leaves
    return quantized, QuantConfig(pt2e_quantizer=quantizer)


def make_program(artifact: Artifact, path: Path) -> None:
    """The .tflite of ``artifact``: its float graph converted (FP32), or quantized in LiteRT's
    scheme on its recorded calibration images, then converted (INT8)."""
    from .torch_program import calibration_batch, example_input, float_source, torch_module

    source = str(float_source(artifact).path)
    if numeric_format(artifact.manifest) == "int8":
        module, config = quantized_module(artifact, calibration_batch(artifact))
        convert_module(module, example_input(artifact), path, config, source)
        check_integer(path, f"{PROGRAMS['int8']} of {artifact.path}")
    else:
        convert_module(torch_module(artifact), example_input(artifact), path, None, source)


def _calibration_count(artifact: Artifact) -> Optional[int]:
    count = (quantize_step(artifact.manifest).get("calibration") or {}).get("count")
    return int(count) if isinstance(count, int) else None


def program_detail(artifact: Artifact) -> str:
    if numeric_format(artifact.manifest) != "int8":
        return "fp32"
    count = _calibration_count(artifact)
    return f"int8 ({INT8_SCHEME}; {count if count is not None else 'its recorded'} calibration images)"


# --------------------------------------------------------------------------- reading a program (ai-edge-litert only)


def _interpreter(path: Path, delegate: str, threads: Optional[int] = None):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegate == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"ai-edge-litert cannot load {path}: {first}") from None
    return interpreter


def _ops(interpreter) -> list[dict]:
    return interpreter._get_ops_details()  # the only op listing the Python interpreter offers


def float_compute_ops(path: Path) -> Counter:
    """Compute ops of the program (before any delegate) whose activations or weights are
    float, by kind."""
    interpreter = _interpreter(path, "none")
    tensors = interpreter.get_tensor_details()
    found: Counter = Counter()
    for op in _ops(interpreter):
        if op["op_name"] in COMPUTE_OPS:
            types = [tensors[i]["dtype"] for i in op["inputs"][:2] if i >= 0]
            if any(np.dtype(t).kind == "f" for t in types):
                found[op["op_name"]] += 1
    return found


def compute_op_count(path: Path) -> int:
    return sum(op["op_name"] in COMPUTE_OPS for op in _ops(_interpreter(path, "none")))


def _kinds(counter: Counter) -> str:
    return " ".join(f"{kind} x{n}" for kind, n in sorted(counter.items()))


def check_integer(path: Path, name: str = "") -> None:
    """An INT8 program whose compute ops came out float (the quantizer left them) is refused."""
    floats = float_compute_ops(path)
    if floats:
        total = compute_op_count(path)
        raise UsageError(f"the LiteRT INT8 program {name or path.name} has {sum(floats.values())} of {total} compute ops still float "
                         f"({_kinds(floats)}): litert-torch's PT2E quantizer did not quantize them")


def outside_delegate(interpreter) -> tuple[Counter, int, int]:
    """Ops the XNNPACK delegate did not take (by kind), all compute ops, and the delegate's
    pieces (DELEGATE nodes). A DELEGATE node replaced the ops between its inputs and
    outputs: walked back from its outputs."""
    ops = _ops(interpreter)
    made_by = {t: op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    taken: set[int] = set()
    for delegate in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = set(int(t) for t in delegate["inputs"])
        todo = [int(t) for t in delegate["outputs"]]
        while todo:
            op = made_by.get(todo.pop())
            if op is None or op["index"] in taken:
                continue
            taken.add(op["index"])
            todo += [int(t) for t in op["inputs"] if t >= 0 and int(t) not in boundary]
    pieces = sum(op["op_name"] == "DELEGATE" for op in ops)
    outside = Counter(op["op_name"] for op in ops if op["op_name"] != "DELEGATE" and op["index"] not in taken)
    return outside, sum(op["op_name"] in COMPUTE_OPS for op in ops), pieces


def outside_lines(outside: Counter, compute: int, pieces: int) -> list[str]:
    """What a session records of the ops the delegate left to TFLite's built-in kernels:
    compute ops, and (where the delegate took the graph in pieces) the others, which cost
    a hand-over between the delegate and the interpreter each."""
    lines = []
    left = Counter({kind: n for kind, n in outside.items() if kind in COMPUTE_OPS})
    if left:
        lines.append(f"{sum(left.values())} of {compute} compute ops ran outside the XNNPACK delegate on TFLite's built-in kernels: {_kinds(left)}")
    rest = outside - left
    if rest and pieces > 1:
        lines.append(f"the XNNPACK delegate took the graph in {pieces} pieces; {sum(rest.values())} other ops ran between them on "
                     f"TFLite's built-in kernels: {_kinds(rest)}")
    return lines


# --------------------------------------------------------------------------- the backend


class LiteRTSession(SessionBase):
    """The .tflite on ai-edge-litert's interpreter: XNNPACK (checked to be applied), or none."""

    def __init__(self, artifact: Artifact, options: BackendOptions, delegate: str):
        path = program_path(artifact)
        self._interpreter = _interpreter(path, delegate, options.threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.precision = artifact.manifest.get("variant_detail") or numeric_format(artifact.manifest)
        integer = [f"{np.dtype(d['dtype']).name} {what}" for what, d in (("input", self._input), ("output", self._output)) if np.dtype(d["dtype"]).kind != "f"]
        if integer:  # the converter folded the first quantize and the last dequantize into the program's ends
            said = f"{' and '.join(integer)}, converted here as an application does"
            self.precision = f"{self.precision[:-1]}; {said})" if self.precision.endswith(")") else f"{self.precision} ({said})"
        self.device = "cpu"
        self.threads = options.threads or 1  # without --threads LiteRT's interpreter runs one thread (measured: as fast as 1, half as fast as 2 on 2 cores)
        self.providers = (_provider(delegate),)
        self._check_delegate(path, delegate)

    def _check_delegate(self, path: Path, delegate: str) -> None:
        delegated = any(op["op_name"] == "DELEGATE" for op in _ops(self._interpreter))
        if delegate == "none":
            if delegated:
                raise UsageError(f"ai-edge-litert applied a delegate to {path.name} though --litert-delegate none was asked")
            return
        if not delegated:
            raise UsageError(f"ai-edge-litert did not apply the XNNPACK delegate to {path.name} (this build may lack it); "
                             "use --litert-delegate none to time TFLite's built-in kernels")
        lines = outside_lines(*outside_delegate(self._interpreter))
        if lines:
            self.layer_summary = {"substitutions": lines}
            self.providers += ("TFLite built-in kernels",)

    def run(self, batch: np.ndarray) -> np.ndarray:
        from .torch_program import run_one_by_one

        return run_one_by_one(self._run_one, batch)

    def _run_one(self, image: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], _to_tensor(image, self._input))
        self._interpreter.invoke()
        return _from_tensor(self._interpreter.get_tensor(self._output["index"]), self._output)


def _to_tensor(x: np.ndarray, detail: dict) -> np.ndarray:
    """A float image as the program's input: a full-integer program's input is INT8 (the
    converter folds the first quantize into it), quantized here as an application does."""
    if np.dtype(detail["dtype"]).kind == "f":
        return x.astype(detail["dtype"], copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _from_tensor(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _provider(delegate: str) -> str:
    return f"ai-edge-litert {distribution_version('ai-edge-litert')} " + ("XNNPACK delegate" if delegate == "xnnpack" else "built-in kernels (no delegate)")


class LiteRTBackend(BackendBase):
    name = "litert"
    options = (THREADS, DELEGATE)
    options_type = LiteRTOptions
    in_default_run = False
    pip_extra = "litert"
    runtime_packages = (("ai_edge_litert", "ai-edge-litert"),)
    distributions = ("ai-edge-litert",)
    device_note = "LiteRT runs the .tflite made on the host: the device needs only ai-edge-litert (XNNPACK delegate built in)"
    converts_on_first_use = True

    def check_available(self) -> None:
        require_module("ai_edge_litert.interpreter", self.name, self.pip_extra)

    def check_planned(self, numeric: str, floats: str, options: BackendOptions) -> None:
        check_convertible(self.name, numeric, floats, options.batch_sizes)

    def program(self, artifact: Artifact) -> Path:
        """The .tflite beside ``artifact``, made unless the one there is current."""
        from .torch_program import cached_program, made_from

        numeric = numeric_format(artifact.manifest)
        depends_on = made_from(artifact, CONVERTER, program=PROGRAM_VERSION, scheme=INT8_SCHEME if numeric == "int8" else "fp32")

        def make(path: Path) -> None:
            _require_converter()
            make_program(artifact, path)

        return cached_program(artifact, PROGRAMS.get(numeric, PROGRAMS["fp32"]), depends_on, make, "the LiteRT program")

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        from .torch_program import compiled_artifact

        self.check_artifact(artifact, options)
        return compiled_artifact(artifact, self.program(artifact), program_detail(artifact))

    def prepare_bundle(self, artifact: Artifact) -> None:
        self.program(artifact)

    def load(self, artifact: Artifact, options: BackendOptions) -> LiteRTSession:
        self.check_available()
        self.check_artifact(artifact, options)
        return LiteRTSession(artifact, options, self.own_options(options).litert_delegate)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        return file_size_mb(program_path(artifact))

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """ai-edge-litert's Python interpreter exposes no op profiler (checked in 2.3.0: neither
        Interpreter nor CompiledModel returns per-op times)."""
        from ..core import ProfilerUnavailable

        raise ProfilerUnavailable(f"ai-edge-litert {distribution_version('ai-edge-litert')}'s Python interpreter has no per-op profiler; "
                                  f"LiteRT's benchmark_model --enable_op_profiling=true --graph={program_path(artifact)} has one")

    def machine_facts(self) -> dict[str, Any]:
        from .base import importable

        facts = super().machine_facts()
        converter = importable("litert_torch")
        return {**facts, "converter": f"litert-torch {distribution_version('litert-torch')}" if converter else "not installed (pip install 'edgekit[litert]')",
                "delegate": "XNNPACK (default), or --litert-delegate none", "program": "batch-1 .tflite, NCHW input, made on first use"}

