"""Where the milliseconds go: each backend's own profiler, joined to the PyTorch model's modules.

A backend's ``profile`` runs its runtime's own per-node profiler (ONNX Runtime's session
profiling, OpenVINO's performance counters, the PyTorch profiler, TensorRT's layer
profiler) and returns one ``NodeTime`` per node the runtime executed, with the ONNX nodes
of the loaded file that node computes (a fused convolution covers its Conv, its Clip and
the Q/DQ around them). Here those are joined to module paths (torch.onnx's scope names,
see edgekit.module_names): a node's time goes to the module of the
compute node it covers; nodes that cover only quantize/dequantize, layout reorders or
nothing of the file are rows of their own, outside any module, so the rows add up to
what the runtime measured. The end-to-end p50 (edgekit.timing, profiler off) is printed
beside that sum: the two are independent readings of the same inference.

Generic: no backend is named here; each backend module knows its profiler.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .core import ProfilerUnavailable  # raised by a backend's profile (it lives in core: backends sit below this module)

OUTSIDE_QDQ = "(outside: quantize/dequantize)"
OUTSIDE_LAYOUT = "(outside: layout reorders)"
OUTSIDE_OTHER = "(outside any module)"
BETWEEN_NODES = "(between nodes: the runtime's own work)"  # the profiled run's wall time no node accounts for
OUTSIDE_ROWS = (OUTSIDE_QDQ, OUTSIDE_LAYOUT, OUTSIDE_OTHER, BETWEEN_NODES)
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


@dataclass(frozen=True)
class NodeTime:
    """One node the runtime executed, its mean time per inference."""

    name: str  # the runtime's own node name
    op_type: str  # the runtime's kind of node (QLinearConv, Convolution, aten::conv2d...)
    ms: float
    precision: str = ""  # what it computed in, as the runtime reports it (i8, u8, f32, bf16...)
    covers: tuple[str, ...] = ()  # ONNX nodes (or tensors) of the loaded file it computes
    module: Optional[str] = None  # set by backends that time modules directly (PyTorch)
    role: str = ""  # "layout" (a reorder the runtime inserted), "qdq" (a standalone quantize/dequantize), "" otherwise


@dataclass(frozen=True)
class ProfiledRun:
    """What a backend's profiler measured over its runs."""

    nodes: tuple[NodeTime, ...]
    run_ms: float  # wall time per inference with the profiler on (its own cost included)


@dataclass(frozen=True)
class ModuleTime:
    module: str  # PyTorch module path, an ONNX node name (no module map), or an OUTSIDE_* row
    ms: float
    nodes: int  # runtime nodes whose time is counted here
    ops: tuple[str, ...]  # their kinds
    precisions: tuple[str, ...]
    fused_with: tuple[str, ...] = ()  # other modules the same runtime nodes also compute


@dataclass(frozen=True)
class BackendProfile:
    backend: str
    device: str
    runtime: str  # '<distribution> <version>'
    file: str  # what was profiled, relative to the artifact
    variant: str
    batch_size: int
    iterations: int
    e2e_p50_ms: float  # edgekit.timing, profiler off
    nodes: tuple[NodeTime, ...]  # as the profiler measured them
    modules: tuple[ModuleTime, ...]  # rescaled to the end-to-end p50 (see ``scale``)
    joined_by: str  # "module" (PyTorch module paths) or "node" (ONNX node names)
    profiled_run_ms: float = 0.0  # p50 wall time per inference with the profiler on
    note: str = ""

    @property
    def attributed(self) -> float:
        """Share of the profiled run's wall time the profiler's nodes account for."""
        return sum(n.ms for n in self.nodes) / self.profiled_run_ms if self.profiled_run_ms else 0.0

    @property
    def scale(self) -> float:
        """end-to-end p50 / profiled run: the profiler's own cost taken out of every row
        (ONNX Runtime's and PyTorch's profilers slow a small model's run by 30-50%)."""
        return self.e2e_p50_ms / self.profiled_run_ms if self.profiled_run_ms else 1.0

    @property
    def sum_ms(self) -> float:
        return sum(m.ms for m in self.modules)

    def to_dict(self) -> dict:
        return {**asdict(self), "sum_ms": self.sum_ms, "attributed": self.attributed, "scale": self.scale}


@dataclass(frozen=True)
class OnnxNames:
    """What the loaded ONNX file's names mean: node or tensor name -> (node name, op type)."""

    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    has_modules: bool = False  # whether the node names carry torch.onnx's module scopes

    @classmethod
    def of(cls, onnx_path: Path) -> "OnnxNames":
        import onnx

        return cls.of_model(onnx.load(str(onnx_path), load_external_data=False))

    @classmethod
    def of_model(cls, model) -> "OnnxNames":
        found: dict[str, tuple[str, str]] = {}
        for i, node in enumerate(model.graph.node):
            name = node.name or f"{node.op_type}_{i}"
            found.setdefault(name, (name, node.op_type))
            for output in node.output:
                found.setdefault(output, (name, node.op_type))
        from .module_names import module_path

        scoped = sum(1 for n in model.graph.node if n.op_type in COMPUTE_OPS and module_path(n.name or ""))
        computes = sum(1 for n in model.graph.node if n.op_type in COMPUTE_OPS)
        return cls(found, has_modules=computes > 0 and scoped >= computes / 2)

    def resolve(self, name: str) -> Optional[tuple[str, str]]:
        """(ONNX node, op type) for a name a runtime reports: the name itself, or with what
        runtimes append stripped ('/WithoutBiases', '_token_12', '/duplicated', '_nchwc')."""
        candidates = [name]
        trimmed = re.sub(r"(_token_\d+|/duplicated|_nchwc)+$", "", name)
        candidates.append(trimmed)
        parts = trimmed.split("/")
        candidates += ["/".join(parts[:k]) for k in range(len(parts) - 1, 1, -1)]
        for candidate in candidates:
            if candidate in self.nodes:
                return self.nodes[candidate]
        return None


def module_of(node: str) -> Optional[str]:
    from .module_names import module_path

    return module_path(node)


def attribute(nodes: tuple[NodeTime, ...], names: OnnxNames) -> tuple[tuple[ModuleTime, ...], str]:
    """Per-module rows (largest first) and how they are joined ("module" or "node")."""
    by_module = names.has_modules or any(n.module for n in nodes)
    rows: dict[str, dict] = {}

    def add(key: str, node: NodeTime, fused: list[str]) -> None:
        row = rows.setdefault(key, {"ms": 0.0, "nodes": 0, "ops": [], "precisions": [], "fused": []})
        row["ms"] += node.ms
        row["nodes"] += 1
        for bucket, value in (("ops", node.op_type), ("precisions", node.precision)):
            if value and value not in row[bucket]:
                row[bucket].append(value)
        row["fused"] += [f for f in fused if f != key and f not in row["fused"]]

    for node in nodes:
        if node.module:
            add(node.module, node, [])
            continue
        covered = [r for r in (names.resolve(c) for c in (node.covers or (node.name,))) if r is not None]
        if not covered:
            add({"layout": OUTSIDE_LAYOUT, "qdq": OUTSIDE_QDQ}.get(node.role, OUTSIDE_OTHER), node, [])
            continue
        real = [(n, op) for n, op in covered if op not in QDQ_OPS]
        if not real:
            add(OUTSIDE_QDQ, node, [])
            continue
        if all(op in LAYOUT_OPS for _, op in real):
            add(OUTSIDE_LAYOUT, node, [])
            continue
        primary = next(((n, op) for n, op in real if op in COMPUTE_OPS), real[0])
        keys = [(module_of(n) or OUTSIDE_OTHER) if by_module else n for n, _ in real]
        main = (module_of(primary[0]) or OUTSIDE_OTHER) if by_module else primary[0]
        add(main, node, list(dict.fromkeys(k for k in keys if k not in OUTSIDE_ROWS)))
    modules = tuple(
        ModuleTime(key, row["ms"], row["nodes"], tuple(row["ops"]), tuple(row["precisions"]), tuple(row["fused"]))
        for key, row in sorted(rows.items(), key=lambda kv: -kv[1]["ms"])
    )
    return modules, "module" if by_module else "node"


def covered_by_walk(original, inputs: list[str], outputs: list[str], present: set[str]) -> tuple[str, ...]:
    """ONNX nodes of ``original`` that a runtime node with these input and output tensors
    computes: walking back from its outputs through tensors the runtime's graph no longer
    has (``present``: the tensors it still has) until its inputs. Empty when its outputs are
    not tensors of the original (renamed by the runtime)."""
    made_by = {o: n for n in original.graph.node for o in n.output}
    stop = set(inputs) | {i.name for i in original.graph.initializer}
    own = set(outputs)
    found: list[str] = []
    seen: set[int] = set()
    frontier = [o for o in outputs if o in made_by]
    while frontier:
        tensor = frontier.pop()
        if tensor in stop or (tensor in present and tensor not in own):
            continue  # an input of this node, or another runtime node's output
        node = made_by.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node.name or node.output[0])
        frontier += [i for i in node.input if i]
    return tuple(reversed(found))


# --------------------------------------------------------------------------- one backend


def profile_backend(artifact, backend_name: str, options, images, batch_size: int = 1, iterations: int = 50, warmup: int = 10) -> BackendProfile:
    """``artifact`` on one backend, as bench runs it (the same compile, the same file):
    the end-to-end p50 first (profiler off), then the runtime's per-node profile, joined
    to modules. ProfilerUnavailable where the backend (or device) has no profiler."""
    import dataclasses

    import numpy as np

    from .backends import get_backend
    from .timing import TimingOptions, make_batch, time_session

    backend = get_backend(backend_name)
    backend.check_available()
    options = dataclasses.replace(options, batch_sizes=(batch_size,))
    compiled = backend.compile(artifact, options)
    session = backend.load(compiled, options)
    timing = TimingOptions(batch_sizes=(batch_size,), warmup=warmup, iterations=max(iterations // 2, 5), max_seconds=60.0, repeats=2)
    before = time_session(session.run, images, batch_size, timing)
    run = backend.profile(compiled, options, make_batch(images, batch_size), iterations, warmup)
    after = time_session(session.run, images, batch_size, timing)
    e2e = float(np.median([*before.p50_rounds, *after.p50_rounds]))  # before and after: a drifting machine shows in neither alone
    del session
    file = compiled.manifest.get("files", {}).get("onnx", "")
    names = OnnxNames.of(compiled.onnx_path) if file else OnnxNames()
    scale = e2e / run.run_ms if run.run_ms else 1.0
    modules, joined_by = attribute(tuple(dataclasses.replace(n, ms=n.ms * scale) for n in run.nodes), names)
    between = (run.run_ms - sum(n.ms for n in run.nodes)) * scale
    if between > 0:  # the call, input and output copies, scheduling: measured as the wall time no node accounts for
        modules = (*modules, ModuleTime(BETWEEN_NODES, between, 0, (), ()))
    note = "" if joined_by == "module" else "no PyTorch module names in this graph (an imported ONNX file?): rows are ONNX nodes"
    return BackendProfile(
        backend=backend_name, device=backend.device_for(options), runtime=backend.runtime_version(), file=file,
        variant=str(artifact.manifest.get("variant", "fp32")), batch_size=batch_size, iterations=iterations,
        e2e_p50_ms=e2e, nodes=run.nodes, modules=modules, joined_by=joined_by, profiled_run_ms=run.run_ms, note=note,
    )


# --------------------------------------------------------------------------- an artifact's price list


@dataclass(frozen=True)
class LayerPrice:
    """One row of an INT8 artifact's price list on one backend."""

    module: str
    ms: float  # as the artifact runs (INT8 where quantized)
    float_ms: Optional[float]  # the same module in the FP32 parent on the same backend
    precisions: tuple[str, ...]
    ops: tuple[str, ...]
    fused_with: tuple[str, ...]
    kl_if_only_int8: Optional[float]  # the model's KL vs FP32 when this module alone is INT8

    @property
    def saved_ms(self) -> Optional[float]:
        return None if self.float_ms is None else self.float_ms - self.ms


@dataclass(frozen=True)
class ArtifactProfile:
    artifact: str  # the artifact's key
    path: Path  # its folder
    model: str
    variant: str
    profiles: tuple[BackendProfile, ...]  # the artifact on each backend
    float_profiles: tuple[BackendProfile, ...] = ()  # an INT8 artifact's FP32 parent, same backends
    kl_by_module: dict[str, float] = field(default_factory=dict)
    kl_images: int = 0  # calibration images the per-layer KL was measured on
    unavailable: dict[str, str] = field(default_factory=dict)  # backend -> why it has no profile
    kl_note: str = ""  # why an INT8 artifact's per-module KL is missing

    def prices(self, backend: str) -> tuple[LayerPrice, ...]:
        profile = next(p for p in self.profiles if p.backend == backend)
        float_profile = next((p for p in self.float_profiles if p.backend == backend), None)
        float_ms = {m.module: m.ms for m in float_profile.modules} if float_profile else {}
        return tuple(
            LayerPrice(m.module, m.ms, float_ms.get(m.module) if float_profile else None, m.precisions, m.ops, m.fused_with, self.kl_by_module.get(m.module))
            for m in profile.modules
        )

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact, "path": str(self.path), "model": self.model, "variant": self.variant,
            "backends": [
                {**p.to_dict(), "prices": [{**asdict(r), "saved_ms": r.saved_ms} for r in self.prices(p.backend)],
                 "float": next((f.to_dict() for f in self.float_profiles if f.backend == p.backend), None)}
                for p in self.profiles
            ],
            "kl_by_module": self.kl_by_module, "kl_images": self.kl_images, "kl_note": self.kl_note, "unavailable": self.unavailable,
        }


def profile_artifact(artifact, backends, options, images, batch_size: int = 1, iterations: int = 50, warmup: int = 10,
                     kl_by_module: Optional[dict[str, float]] = None, kl_images: int = 0, kl_note: str = "",
                     progress=lambda stage, done, total: None) -> ArtifactProfile:
    """``artifact`` on each of ``backends``; for an INT8 artifact also its FP32 parent (see
    ``parent_of``) on the same backends. ``kl_by_module``: each module's accuracy cost,
    measured by the caller (transforms.sensitivity.kl_if_only_quantized). The PyTorch
    baseline runs the FP32 original, as in bench. A backend without a profiler is listed in
    ``unavailable`` with the reason."""
    from .core import numeric_format

    int8 = numeric_format(artifact.manifest) == "int8"
    parent = parent_of(artifact) if int8 else None
    profiles, floats, unavailable = [], [], {}
    for name in backends:
        progress(f"profiling on {name}", None, None)
        try:
            profiles.append(profile_backend(artifact, name, options, images, batch_size, iterations, warmup))
            if parent is not None and name != _baseline():
                progress(f"profiling the FP32 parent on {name}", None, None)
                floats.append(profile_backend(parent, name, options, images, batch_size, iterations, warmup))
        except ProfilerUnavailable as e:
            unavailable[name] = str(e)
    return ArtifactProfile(
        artifact.key, artifact.path, artifact.model_name, str(artifact.manifest.get("variant", "fp32")), tuple(profiles), tuple(floats),
        dict(kl_by_module or {}), kl_images if kl_by_module else 0, unavailable, kl_note,
    )


def _baseline() -> str:
    from .backends.base import BASELINE_BACKEND

    return BASELINE_BACKEND


def parent_of(artifact):
    """The FP32 artifact an INT8 one was quantized from, where it is still on disk."""
    from .core import Artifact, InvalidModelFileError

    recorded = (artifact.manifest.get("parent") or {}).get("path")
    for candidate in (artifact.path.parent / str((artifact.manifest.get("parent") or {}).get("key", "")), Path(str(recorded))):
        try:
            parent = Artifact.load(candidate)
        except InvalidModelFileError:
            continue
        if parent.key == (artifact.manifest.get("parent") or {}).get("key"):
            return parent
    return None


# --------------------------------------------------------------------------- what a float layer costs


@dataclass(frozen=True)
class FloatLayerPrices:
    """What leaving each layer in float adds, per backend, measured by its own profiler."""

    ms: dict[str, dict[str, float]]  # backend -> compute node -> milliseconds added per inference
    totals: dict[str, float]  # backend -> the all-INT8 graph's profiled time
    unavailable: dict[str, str] = field(default_factory=dict)  # backend -> why it was not priced

    def share(self, node: str) -> float:
        """The node's added time as a fraction of each backend's INT8 time, summed over backends."""
        return sum(self.ms[b].get(node, 0.0) / self.totals[b] for b in self.ms if self.totals.get(b))


def price_float_layers(int8_path: Path, float_path: Path, backends, options, images, iterations: int = 30, warmup: int = 5,
                       float_nodes: Sequence[str] = ()) -> FloatLayerPrices:
    """Profile the all-INT8 graph and the same graph with the candidate layers ``float_nodes``
    in float on each backend (each made into the form it loads, as bench does) and charge
    each compute node the difference of the runtime nodes that compute it, its Q/DQ included;
    what the candidates cost outside their own nodes is shared out among them."""
    import dataclasses
    import tempfile

    import onnx

    from .backends import get_backend
    from .core import Artifact
    from .timing import TimingOptions, make_batch, time_session

    prices: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    batch = make_batch(images, 1)
    options = dataclasses.replace(options, batch_sizes=(1,))
    shape = [d.dim_value or "batch" for d in onnx.load(str(int8_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    for name in backends:
        backend = get_backend(name)
        times = []
        try:
            for source in (int8_path, float_path):
                with tempfile.TemporaryDirectory(prefix="edgekit-price-") as tmp:
                    folder = Path(tmp)
                    (folder / "model.onnx").write_bytes(Path(source).read_bytes())
                    scratch = Artifact(folder, {"variant": "int8", "files": {"onnx": "model.onnx"}, "input": {"shape": shape}, "model": {"name": "pricing"}})
                    compiled = backend.compile(scratch, options)
                    run = backend.profile(compiled, options, batch, iterations, warmup)
                    if not times:  # the profiler's own cost: prices in milliseconds of a run without it
                        timed = time_session(backend.load(compiled, options).run, batch, 1, TimingOptions(warmup=warmup, iterations=iterations))
                        scale = timed.p50_ms / run.run_ms if run.run_ms else 1.0
                    nodes = [dataclasses.replace(n, ms=n.ms * scale) for n in run.nodes]
                    times.append(_by_compute_node(nodes, onnx.load(str(compiled.onnx_path), load_external_data=False)))
        except ProfilerUnavailable as e:
            unavailable[name] = str(e)
            continue
        int8, floated = times
        totals[name] = sum(int8.values())
        charged = {node: floated.get(node, 0.0) - int8.get(node, 0.0) for node in set(int8) | set(floated) if node}
        # what the float layers cost outside their own nodes (layout reorders around them, Q/DQ
        # the runtime could not place): the graphs' difference left uncharged, shared out among
        # the layers put in float in proportion to what each was charged
        rest = (sum(floated.values()) - totals[name]) - sum(charged.values())
        floated_nodes = [n for n in charged if n in float_nodes]
        weights = {n: abs(charged[n]) for n in floated_nodes}
        total_weight = sum(weights.values())
        for n in floated_nodes:
            charged[n] += rest * (weights[n] / total_weight if total_weight else 1.0 / len(floated_nodes))
        prices[name] = charged
    return FloatLayerPrices(prices, totals, unavailable)


def _by_compute_node(nodes, model) -> dict[str, float]:
    """Runtime node times charged to the compute node (Conv/Gemm/MatMul) each one computes,
    or whose input it dequantizes or whose output (after a Relu/Clip) it quantizes; the
    rest under ''."""
    def node_label(n) -> str:
        return n.name or n.output[0]

    names = OnnxNames.of_model(model)
    by_name = {node_label(n): n for n in model.graph.node}
    made_by = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def owner(node) -> Optional[str]:
        if node.op_type in COMPUTE_OPS:
            return node_label(node)
        if node.op_type == "DequantizeLinear":
            computes = [r for r in readers.get(node.output[0], []) if r.op_type in COMPUTE_OPS]
            return node_label(computes[0]) if len(computes) == 1 else None
        source = made_by.get(node.input[0]) if node.input else None
        if node.op_type in ("QuantizeLinear", "Relu", "Clip") and source is not None:
            if source.op_type in ("Relu", "Clip"):
                source = made_by.get(source.input[0])
            return node_label(source) if source is not None and source.op_type in COMPUTE_OPS else None
        return None

    found: dict[str, float] = {}
    for time in nodes:
        owners = []
        for name in time.covers or (time.name,):
            resolved = names.resolve(name)
            node = by_name.get(resolved[0]) if resolved else None
            label = owner(node) if node is not None else None
            if label:
                owners.append(label)
        key = owners[0] if owners else ""
        found[key] = found.get(key, 0.0) + time.ms
    return found
