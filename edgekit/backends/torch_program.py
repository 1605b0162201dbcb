"""What the backends that convert from PyTorch share (LiteRT, ExecuTorch): the artifact's
float graph as a torch module, its batch-1 torch.export program, for an INT8 artifact the
images it was calibrated on, and the converted program cached beside the artifact.

The float graph is the artifact's own ONNX (for INT8, its FP32 parent's), run in PyTorch
by the ONNX-to-torch interpreter: whatever made it (fine-tuning, pruning, the
depthwise-separable rewrite) is already in that graph, so every lineage converts the same
way. An INT8 artifact is quantized again in the target's own scheme, calibrated on the
images its manifest records: what edgekit's QDQ graph is compared with.

Torch-free at import (a bundle's runner imports the backends): torch, onnx and the
converters load inside the functions that convert, and the host-only edgekit modules they
use are imported absolutely, so a bundle does not carry them; a bundle carries the
program made on the host, and ``cached_program`` finds it without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..core import Artifact, UsageError, numeric_format, quantize_step

PROGRAM_BATCH = 1  # phones and boards run one image at a time; the programs are made for batch 1


def float_source(artifact: Artifact) -> Artifact:
    """The FP32 artifact whose graph is converted: ``artifact`` itself where it is FP32, its
    FP32 parent where it is INT8 (a one-line UsageError where that parent is gone)."""
    numeric = numeric_format(artifact.manifest)
    if numeric == "fp32":
        return artifact
    if numeric != "int8":
        raise UsageError(f"{artifact.path} is {numeric}; LiteRT and ExecuTorch convert FP32 artifacts, and INT8 ones in their own scheme")
    parent = artifact.manifest.get("parent") or {}
    key = str(parent.get("key", ""))
    for place in (Path(str(parent.get("path", ""))), artifact.path.parent / key):
        if key and (place / "manifest.json").is_file():
            found = Artifact.load(place)
            if found.key == key:
                return found.verified()
    raise UsageError(f"{artifact.path}: its FP32 parent {key or '(unnamed)'} is not at {parent.get('path')} nor beside it; "
                     "the target's INT8 is made from the FP32 graph: rebuild the INT8 artifact where its parent is")


def made_from(artifact: Artifact, converter: str, **more: Any) -> dict[str, Any]:
    """What a converted program depends on, read from manifests only (a device without
    torch can tell whether the program a bundle carries is current)."""
    source = artifact.manifest.get("files", {}).get("onnx", "model.onnx")
    found = {"artifact": artifact.key, "source_sha256": (artifact.manifest.get("sha256") or {}).get(source), "converter": converter, **more}
    if numeric_format(artifact.manifest) == "int8":
        found["calibration"] = quantize_step(artifact.manifest).get("calibration")
    return found


def cached_program(artifact: Artifact, name: str, depends_on: dict[str, Any], make: Callable[[Path], None], what: str) -> Path:
    """``artifact``/``name``, made by ``make(path)`` unless the one there was made from
    ``depends_on`` (a derived cache with its own record, see edgekit.files)."""
    from ..files import derived_is_current, record_derived, staged_file, writing_derived

    path = artifact.path / name
    if derived_is_current(path, depends_on):
        return path
    with writing_derived(path, what, export_makes_it=False):
        with staged_file(path) as tmp:
            make(tmp)
        record_derived(path, depends_on)
    return path


def torch_module(artifact: Artifact):
    """The float graph of ``artifact`` (see float_source) as an eval-mode torch module that
    torch.export can trace."""
    import onnx

    # absolute on purpose: host-only (it needs torch); bundle.runner_modules follows relative
    # imports into what a bundle carries, and a device never converts
    from edgekit.transforms.onnx_to_torch import graph_module

    source = float_source(artifact)
    model = onnx.load(str(source.onnx_path))
    try:
        return graph_module(model, trainable=False, for_export=True).eval()
    except UsageError as e:  # the interpreter names the operator it lacks (its advice is QAT's)
        reason = str(e).split("; use post-training INT8")[0].replace("QAT cannot run", "edgekit's interpreter cannot run")
        raise UsageError(f"cannot convert {source.path} from its ONNX graph: {reason}") from None


def example_input(artifact: Artifact):
    """A batch-1 NCHW float32 input at the artifact's size, for torch.export."""
    import torch

    size = int(artifact.manifest["preprocessing"]["input_size"])
    return torch.zeros(PROGRAM_BATCH, 3, size, size)


def exported_program(module, example):
    """torch.export of ``module`` at ``example``'s shape; an operator export cannot trace is
    one line naming it."""
    import torch

    try:
        return torch.export.export(module, (example,))
    except Exception as e:  # noqa: BLE001 (torch.export raises many kinds; the first line names the operator)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"torch.export could not trace the model: {first}") from None


def quantizable_graph(artifact: Artifact):
    """The float graph of ``artifact`` traced by torch.export (a graph module, batch 1) as
    the PT2E quantizers and the XNNPACK partitioner take it (see tidy_parameters)."""
    example = example_input(artifact)
    tidied = tidy_parameters(exported_program(torch_module(artifact), example).module())
    return exported_program(tidied, example).module()  # traced again: quantizers and partitioners read each node's shape


def tidy_parameters(module):
    """``module`` (an exported graph module) with what keeps layers float or outside a
    delegate undone: a parameter reshaped, viewed or transposed in the graph is stored so
    (a linear layer's bias or weight must be a constant), and a parameter read by several
    layers is copied per layer (ONNX exporters merge equal initializers into one; a PT2E
    quantizer annotates it for its first reader and leaves every later one float)."""
    import torch

    aten, graph = torch.ops.aten, module.graph
    views = {aten.reshape.default: lambda t, *a: t.reshape(a[0]), aten.view.default: lambda t, *a: t.reshape(a[0]),
             aten.transpose.int: lambda t, *a: t.transpose(*a), aten.t.default: lambda t, *a: t.t(),
             aten.permute.default: lambda t, *a: t.permute(a[0])}
    for node in list(graph.nodes):
        if node.target not in views or getattr(node.args[0], "op", None) != "get_attr":
            continue
        value = views[node.target](getattr(module, node.args[0].target).detach(), *node.args[1:]).contiguous().clone()
        name = f"{node.args[0].target}_as_{node.name}"
        setattr(module, name, torch.nn.Parameter(value, requires_grad=False))
        with graph.inserting_before(node):
            node.replace_all_uses_with(graph.get_attr(name))
        graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        if not node.users:
            graph.erase_node(node)
            continue
        for i, user in enumerate(list(node.users)[1:]):
            name = f"{node.target}_copy{i}"
            setattr(module, name, torch.nn.Parameter(getattr(module, node.target).detach().clone(), requires_grad=False))
            with graph.inserting_before(user):
                user.replace_input_with(node, graph.get_attr(name))
    graph.lint()
    module.recompile()
    return module


def calibration_batch(artifact: Artifact, progress: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """The images the INT8 ``artifact`` was calibrated on, preprocessed as its model reads
    them (N, 3, H, W): the target's quantizer sees exactly what edgekit's did."""
    from ..data import load_all
    from edgekit.steps.lineage import recorded_calibration  # host-only, absolute: see torch_module

    images = recorded_calibration(artifact)
    if progress is not None:
        progress(f"loading {len(images)} calibration images")
    x, _ = load_all(images, artifact.preprocessing)
    return x


def check_convertible(name: str, numeric: str, floats: str, batch_sizes: tuple[int, ...]) -> None:
    """What a converting backend refuses before anything is built: a precision other than
    FP32 or INT8 (with FP32 float parts), a timed batch size other than 1."""
    if numeric not in ("fp32", "int8"):
        raise UsageError(f"{name} converts FP32 artifacts, and INT8 ones in its own scheme, not {numeric}: bench the FP32 parent of this artifact")
    if numeric == "int8" and floats != "fp32":
        raise UsageError(f"{name} makes its INT8 program from the FP32 graph; an INT8 artifact with {floats} float parts (--int8-float {floats}) "
                         "is for GPU targets: leave out --int8-float")
    check_batch_one(name, batch_sizes)


def check_batch_one(name: str, batch_sizes: tuple[int, ...]) -> None:
    """The converted programs take one image; another timed batch size is refused."""
    other = [b for b in batch_sizes if b != PROGRAM_BATCH]
    if other:
        raise UsageError(f"{name} runs a batch-{PROGRAM_BATCH} program (phones and boards run one image at a time); "
                         f"time it with --batch {PROGRAM_BATCH}, not --batch {other[0]}")


def compiled_artifact(artifact: Artifact, program: Path, detail: str) -> Artifact:
    """``artifact`` as ``load`` reads it: its program named, its input batch 1 (evaluation
    then streams one image at a time), ``detail`` the precision a row shows."""
    manifest = {**artifact.manifest, "files": {**artifact.manifest["files"], "program": program.name}, "variant_detail": detail}
    manifest["input"] = {**manifest["input"], "shape": [PROGRAM_BATCH, *manifest["input"]["shape"][1:]]}
    return Artifact(path=artifact.path, manifest=manifest)


def program_path(artifact: Artifact) -> Path:
    """The program file ``compiled_artifact`` named."""
    return artifact.file(artifact.manifest["files"]["program"])


def run_one_by_one(run_one: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """Logits of an NCHW batch from a batch-1 program, one image at a time."""
    return np.concatenate([run_one(np.ascontiguousarray(batch[i : i + 1])) for i in range(batch.shape[0])], axis=0)
