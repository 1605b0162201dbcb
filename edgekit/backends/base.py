"""The contract every backend implements, and the registry of backends."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, TypeVar

import numpy as np

from ..core import Artifact, BackendUnavailableError, UsageError
from ..option import Option, bind
from ..registry import Registry

T = TypeVar("T")


@dataclass(frozen=True)
class BackendOptions:
    """What every backend of a run is given: the generic settings, and the values of every
    backend's own options (Backend.options) by key, which each backend binds to its own
    typed options (Backend.own_options). Plain values only: it travels to worker processes."""

    threads: Optional[int] = None  # intra-op threads; None lets the runtime choose
    device: str = ""  # the --device value as given: '' each backend's own, 'gpu', 'openvino:gpu,onnxruntime:cuda' (Backend.device_for reads it)
    batch_sizes: tuple[int, ...] = ()  # the batch sizes timed (TensorRT's optimization profile covers them)
    own: Mapping[str, Any] = field(default_factory=dict)  # backend option key -> value (edgekit.options.backend_values)


def backend_option(key: str, flag: str, kind: str, help: str, default: Any = None, **more: Any) -> Option:
    """An option of a backend's own: in `bench` and `profile`, the recipe's [bench] table and
    the device runner (Option's other fields as keywords)."""
    return Option(key, flag, kind, "backend", help, default, **{"recipe": "bench", "commands": ("bench", "profile"), "on_device": True, **more})


# Intra-op threads: declared by every backend that honours a thread count (a backend that
# does not leaves it out, and --threads with only such backends is refused).
THREADS = backend_option("threads", "--threads", "int", "Intra-op threads (default: the runtime's choice).", minimum=1, maximum=1024)


@dataclass(frozen=True)
class DeployFile:
    """A file of an artifact that a user's application on ``runtime`` should load, and where."""

    runtime: str
    file: str  # relative to the artifact folder
    when: str = ""  # the device or CPU it is for; "" where the runtime runs at all


class Session(Protocol):
    """A loaded model: ``run`` takes an NCHW float32 batch and returns logits. The extras a
    session may offer (SessionBase has their defaults): the device time of the last run,
    and a throughput mode."""

    precision: str  # what actually runs, e.g. "fp32"
    providers: tuple[str, ...]  # execution providers / devices in use
    device: str  # the device it runs on, in the backend's spelling (a session never runs elsewhere than asked)
    threads: Optional[int]
    last_compute_ms: Optional[float]  # device time of the last run (GPU events), None where not measured
    layer_summary: Optional[dict]  # asked vs ran precision per compute layer (layer_precision.summary), where checked at load
    throughput_seconds: Optional[float]  # seconds per batch size of throughput mode; None: no throughput mode asked or offered

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def throughput(self, batch: np.ndarray, seconds: float, on_step: Callable[[int, int], None]) -> dict:
        """Asynchronous throughput mode over ``batch`` for ``seconds``: a ThroughputStats dict."""


class SessionBase:
    """Defaults of the Session protocol's extras."""

    last_compute_ms: Optional[float] = None
    throughput_seconds: Optional[float] = None
    layer_summary: Optional[dict] = None  # edgekit.layer_precision.summary, where the backend checked its layers at load

    def throughput(self, batch: np.ndarray, seconds: float, on_step: Callable[[int, int], None]) -> dict:
        raise NotImplementedError("this session has no throughput mode")


class Backend(Protocol):
    name: str
    options: tuple[Option, ...]  # its own options; edgekit.options makes them flags, recipe keys and runner arguments
    in_default_run: bool  # run when --backend names none
    pip_extra: Optional[str]  # `pip install edgekit[<extra>]` brings the runtime
    runtime_packages: tuple[tuple[str, str], ...]  # (module to import, pip package) it needs on a device

    def check_available(self) -> None:
        """Raise BackendUnavailableError (naming the extra) when the runtime is missing."""

    def devices(self) -> tuple[str, ...]:
        """The devices it can use on this machine, in its own spelling (cheap: no model)."""

    def device_for(self, options: "BackendOptions") -> str:
        """The device it runs on for ``options.device`` (a --device value, see parse_devices)."""

    def device_problem(self, device: str) -> Optional[str]:
        """Why ``device`` cannot be used here ("<name> has no device 'gpu' here (available: cpu; install ...)"), or None."""

    def own_options(self, options: "BackendOptions") -> Any:
        """Its own options (``options_type``, bound to ``options.own``)."""

    def missing_on_device(self) -> list[str]:
        """pip packages this Python lacks to run the backend from a bundle (no edgekit installed)."""

    def uses_nvidia_gpu(self, options: "BackendOptions") -> bool:
        """Whether NVML's GPU figures (memory, power) describe a run with ``options``."""

    def runtime_version(self) -> str:
        """'<distribution> <version>' of the runtime that ran, for the results."""

    def deploy_files(self, artifact: Artifact) -> tuple[DeployFile, ...]:
        """What an application on this runtime should load from ``artifact``, with the device
        or CPU each file is for; makes the files it names that are derived from the artifact's
        ONNX (cached beside it and hashed, see edgekit.files), so they exist on return."""

    def prepare_bundle(self, artifact: Artifact) -> None:
        """What must be made on the host for a device that lacks the tools (e.g. onnx)."""

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        """Build whatever the backend needs next to the artifact; return what ``load`` reads."""

    def load(self, artifact: Artifact, options: BackendOptions) -> Session: ...

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        """Size of what this backend deploys."""

    def profile(self, artifact: Artifact, options: "BackendOptions", batch: np.ndarray, iterations: int, warmup: int):
        """The runtime's own profiler over ``iterations`` runs: an edgekit.profiling.ProfiledRun
        (per node it executed, and the wall time per run with the profiler on)."""

    def check_planned(self, numeric: str, floats: str, options: "BackendOptions") -> None:
        """Refuse before anything is built what it cannot do with the artifact a cell will build."""

    def check_artifact(self, artifact: Artifact, options: "BackendOptions") -> Any:
        """Refuse before any work (one-line UsageError) what it cannot do with ``artifact``."""

    def layer_report(self, artifact: Artifact, options: "BackendOptions"):
        """What the runtime ran for ``artifact`` (as ``compile`` returned it), layer by layer:
        an edgekit.layer_precision.LayerReport (device or provider, and precision per layer),
        or None where the runtime cannot say."""

    def machine_facts(self) -> dict[str, Any]:
        """What `edgekit doctor` says of this backend on this machine: installed or not, the
        version, devices, and what the backend alone knows (providers, typing mode, CPU form)."""


class BackendBase:
    """Defaults for the Backend protocol; a backend module overrides what differs."""

    name = ""
    options: tuple[Option, ...] = ()  # its own options (flags, recipe keys, runner arguments): edgekit.options collects them
    options_type: Optional[type] = None  # the frozen dataclass its options bind to (Option.field), or None
    in_default_run = False  # run when --backend names none
    pip_extra: Optional[str] = None
    runtime_packages: tuple[tuple[str, str], ...] = ()
    distributions: tuple[str, ...] = ()  # pip distributions whose version names the runtime
    runs_on_cpu = True  # what "every CPU backend" means where the user names none (INT8's fallback prices)
    device_note = ""  # what a bundle's README tells the device's owner about installing it
    default_device = "cpu"  # where it runs when --device names nothing for it
    takes_bare_device = True  # a bare --device (no BACKEND:) applies to it
    always_there: tuple[str, ...] = ("cpu",)  # devices it has wherever its runtime imports (not asked again)
    # its deployed program is converted by its first compile or bundle (seconds of work, and
    # its own extra), not by every export: deploy_files names nothing for it at export
    converts_on_first_use = False

    def devices(self) -> tuple[str, ...]:
        return self.always_there

    def graph_runner(self, onnx_path: Path) -> Callable[[np.ndarray], np.ndarray]:
        """A plain CPU run of a bare ONNX file (no artifact, default settings): what a step
        times while it searches (pruning to a latency target). Not every backend has one."""
        raise UsageError(f"backend {self.name} cannot time a bare ONNX graph")

    def own_options(self, options: BackendOptions) -> Any:
        """Its own options, typed: ``options_type`` bound to the values of ``options.own``."""
        if self.options_type is None:
            raise TypeError(f"backend {self.name} declares no options_type")
        return bind(self.options_type, options.own)

    def canonical_device(self, device: str) -> str:
        """A device name in this backend's spelling."""
        return device.strip().lower()

    def device_for(self, options: BackendOptions) -> str:
        bare, named = parse_devices(options.device)
        if self.name in named:
            return self.canonical_device(named[self.name])
        if bare is not None and self.takes_bare_device:
            return self.canonical_device(bare)
        return self.default_device

    def device_hint(self, have: tuple[str, ...]) -> str:
        """What would add devices (a package, a GPU), for the error that lists ``have``; '' where none."""
        return ""

    def has_device(self, device: str, have: tuple[str, ...]) -> bool:
        return self.canonical_device(device) in {self.canonical_device(d) for d in have}

    def device_problem(self, device: str) -> Optional[str]:
        if self.canonical_device(device) in self.always_there:
            return None
        have = self.devices()
        if self.has_device(device, have):
            return None
        hint = self.device_hint(have)
        listed = f"available: {', '.join(have)}" if have else "none available"
        return f"{self.name} has no device {self.canonical_device(device)!r} here ({listed}{'; ' + hint if hint else ''})"

    def missing_on_device(self) -> list[str]:
        return [package for module, package in self.runtime_packages if not importable(module)]

    def uses_nvidia_gpu(self, options: BackendOptions) -> bool:
        return False

    def runtime_version(self) -> str:
        for distribution in self.distributions:
            version = distribution_version(distribution)
            if version != "unknown":
                return f"{distribution} {version}"
        return "unknown"

    def deploy_files(self, artifact: Artifact) -> tuple[DeployFile, ...]:
        if self.converts_on_first_use:
            return ()
        return (DeployFile(self.name, artifact.onnx_path.relative_to(artifact.path).as_posix()),)

    def prepare_bundle(self, artifact: Artifact) -> None:
        """The files deploy_files names: made here, where onnx is."""
        self.deploy_files(artifact)

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """The runtime's own profiler on what ``compile`` returned: an edgekit.profiling.ProfiledRun
        (per node it executed, and the wall time per run with the profiler on);
        ProfilerUnavailable where it has none."""
        from ..core import ProfilerUnavailable

        raise ProfilerUnavailable(f"backend {self.name} has no per-layer profiler in edgekit")

    def layer_report(self, artifact: Artifact, options: BackendOptions):
        return None

    def check_planned(self, numeric: str, floats: str, options: BackendOptions) -> None:
        """Refuse, before anything is built, what this backend cannot do with the artifact a
        cell will build: ``numeric`` (fp32, fp16, int8: core.numeric_format) and ``floats``
        (the INT8 graph's float parts, fp32 or fp16: core.float_parts). A one-line UsageError,
        e.g. a --precision the graph will not have."""

    def check_artifact(self, artifact: Artifact, options: BackendOptions) -> Any:
        """check_planned on a built artifact's manifest (before any work on it)."""
        from ..core import float_parts, numeric_format

        self.check_planned(numeric_format(artifact.manifest), float_parts(artifact.manifest), options)

    def machine_facts(self) -> dict[str, Any]:
        """installed, version, devices, and why it cannot run here ('' where it can); a
        backend adds its own facts with ``{**super().machine_facts(), ...}``."""
        try:
            self.check_available()
        except BackendUnavailableError as e:
            return {"installed": False, "version": None, "devices": [], "problem": str(e)}
        try:
            devices = list(self.devices())
        except Exception as e:  # noqa: BLE001 (a runtime that imports but cannot list devices: say so, do not stop the report)
            return {"installed": True, "version": self.runtime_version(), "devices": [], "problem": f"listing devices failed: {e}"}
        return {"installed": True, "version": self.runtime_version(), "devices": devices, "problem": ""}


def importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def distribution_version(distribution: str) -> str:
    """The installed version of a pip distribution, or 'unknown'."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def require_module(module: str, backend: str, extra: Optional[str]) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        how = f"pip install 'edgekit[{extra}]'" if extra else f"pip install {module}"
        raise BackendUnavailableError(f"backend {backend} needs {module} ({e.msg}); install it with: {how}") from None


def file_size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


BACKENDS: Registry[str] = Registry("backend", UsageError)
BACKENDS.register("pytorch", "edgekit.backends.pytorch:PyTorchBackend")
BACKENDS.register("onnxruntime", "edgekit.backends.onnxruntime:OnnxRuntimeBackend")
BACKENDS.register("openvino", "edgekit.backends.openvino:OpenVinoBackend")
BACKENDS.register("tensorrt", "edgekit.backends.tensorrt:TensorRTBackend")
BACKENDS.register("litert", "edgekit.backends.litert:LiteRTBackend")
BACKENDS.register("executorch", "edgekit.backends.executorch:ExecuTorchBackend")


def _register_plugins() -> None:
    """Backends other packages provide: entry points of group ``edgekit.backends``
    (``name = "module:Class"``), registered in every process, worker processes too."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="edgekit.backends"):
        if entry.name not in BACKENDS:
            BACKENDS.register(entry.name, entry.value)


_register_plugins()


BASELINE_BACKEND = "pytorch"  # runs where the artifact is made; its logits travel in bundles


def graph_timing_backend() -> Backend:
    """The backend a step times bare graphs with: the first one run by default (after the
    baseline) that can (BackendBase.graph_runner)."""
    for name in default_backends():
        backend = get_backend(name)
        if name != BASELINE_BACKEND and type(backend).graph_runner is not BackendBase.graph_runner:
            return backend
    raise UsageError("no default backend can time a bare ONNX graph")


def present_backends() -> dict[str, Backend]:
    """Every registered backend whose module is here: all of them, except inside a bundle,
    which carries the modules of the backends it can run and not the baseline's."""
    found: dict[str, Backend] = {}
    for name in BACKENDS.names():
        try:
            found[name] = get_backend(name)
        except ModuleNotFoundError as e:
            if e.name != BACKENDS.get(name).split(":")[0]:
                raise  # a module the backend itself imports: a real error
    return found


def default_backends() -> tuple[str, ...]:
    """What runs when --backend names none: the backends that say so (in_default_run)."""
    return tuple(name for name, backend in present_backends().items() if backend.in_default_run)


def deployable_backends() -> tuple[str, ...]:
    """Backends a bundle can carry to a device: every one but the baseline."""
    return tuple(name for name in BACKENDS.names() if name != BASELINE_BACKEND)


def get_backend(name: str) -> Backend:
    module_name, class_name = BACKENDS.get(name).split(":")
    return getattr(importlib.import_module(module_name), class_name)()


# --------------------------------------------------------------------------- --device

DEVICE_FORMS = "one device for every backend (the PyTorch baseline keeps the CPU unless named), or BACKEND:DEVICE pairs, e.g. openvino:gpu,onnxruntime:cuda"


def parse_devices(spec: Optional[str]) -> tuple[Optional[str], dict[str, str]]:
    """A --device value as (the bare device, {backend: device}): 'gpu' -> ('gpu', {}),
    'openvino:GPU,pytorch:cuda' -> (None, {...}), '' or None -> (None, {}) (each backend's
    own). Comma-separated; a prefix before ':' must be a backend."""
    bare: Optional[str] = None
    named: dict[str, str] = {}
    for part in str(spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, colon, device = part.partition(":")
        if not colon:
            if bare is not None and bare != part:
                raise UsageError(f"--device {spec}: {DEVICE_FORMS}")
            bare = part
            continue
        name, device = name.strip().lower(), device.strip()
        if name not in BACKENDS.names():
            try:
                BACKENDS.get(name)
            except UsageError as e:  # unknown backend 'x'; did you mean ...
                raise UsageError(f"--device {spec}: {e}") from None
        if not device:
            raise UsageError(f"--device {spec}: {name}: names no device; {DEVICE_FORMS}")
        if named.get(name, device) != device:
            raise UsageError(f"--device {spec}: {name} is given two devices")
        named[name] = device
    return bare, named


def check_devices(spec: Optional[str], backends: Sequence[str], *, named_must_run: bool = True) -> None:
    """Refuse a --device the chosen backends cannot use on this machine, before any work,
    listing what each has here. ``named_must_run``: a BACKEND:DEVICE for a backend not
    chosen is a mistake (not on a device, where a bundle's default may name more)."""
    bare, named = parse_devices(spec)
    if not bare and not named:
        return
    if named_must_run:
        extra = [name for name in named if name not in backends]
        if extra:
            raise UsageError(f"--device {spec}: {' and '.join(extra)} {'is' if len(extra) == 1 else 'are'} not among the backends ({', '.join(backends)}); add --backend {extra[0]}")
    chosen = [get_backend(name) for name in backends]
    if bare is not None and chosen and not any(b.takes_bare_device for b in chosen):
        raise UsageError(f"--device {bare} applies to no backend here: {', '.join(backends)} keep{'s its' if len(backends) == 1 else ' their'} own device unless named, e.g. --device {backends[0]}:{bare}")
    for backend in chosen:
        backend.check_available()  # a missing runtime names its pip extra (it has no devices to list)
    problems = [p for b in chosen for p in [b.device_problem(b.device_for(BackendOptions(device=str(spec))))] if p]
    if problems:
        raise UsageError(f"--device {spec}: " + "; ".join(problems))
