"""`edgekit doctor`: what runs where, at what precision, on this machine.

Without an artifact: the machine (CPU and the instruction sets inference kernels pick
from, cores, memory, GPUs, a Jetson board, the power sources a bench could read) and each
registered backend as its own ``machine_facts`` says (installed, version, devices and what
only it knows). With one: each backend that can run it compiles and loads it, and its
``layer_report`` (where each compute node ran, at what precision) is compared with what
the graph it read asks (edgekit.layer_precision). This module names no backend: it walks
the registry and renders what each returns.

``DoctorReport.to_dict()`` is what ``edgekit doctor --json`` prints (format
``edgekit-doctor/1``); its keys are the same on every machine:

- ``format``, ``edgekit`` (version)
- ``machine``: ``cpu``, ``machine``, ``os``, ``python``, ``logical_cores``, ``usable_cores``,
  ``memory_total_gb``, ``memory_available_gb`` (null where unknown), ``cpu_flags_checked``
  (the instruction sets that matter for inference on this architecture, as the kernel
  spells them), ``cpu_flags`` (those of them this CPU has), ``board`` (the device tree's
  model, or null), ``jetson`` (null, or ``model``, ``l4t``, ``jetpack``)
- ``gpus``: a list of ``name``, ``driver``, ``cuda``, ``memory_gb``, ``compute_capability``,
  ``source`` (nvml or nvidia-smi); ``gpu_problem``: why none is listed ('' where one is)
- ``power``: source -> ``{"available": bool, "problem": str}`` (tegrastats, nvml, rapl)
- ``backends``: name -> the backend's ``machine_facts()`` (at least ``installed``,
  ``version``, ``devices``, ``problem``)
- ``artifact``: null, or ``path``, ``model``, ``key``, ``variant``, ``numeric_format``,
  ``kept_fp32`` (nodes the manifest says were kept FP32, or null), ``asked`` (compute
  nodes per precision the graph asks), ``backends``: a list of ``backend``, ``device``,
  ``status`` (ok, failed, skipped), ``reason``, ``file`` (what it loaded, relative to the
  artifact), ``variant_detail``, ``session`` (``precision``, ``device``, ``providers``,
  ``threads``, as the loaded session says), ``precision`` (null where the runtime does not
  report layers, else layer_precision.summary's ``asked``, ``ran`` (layers per precision),
  ``mismatches``, ``substitutions`` (one line each), and the report's ``device``,
  ``expected_where`` and ``facts``, and ``problem``: why the report failed, '' where it did not),
  ``layers`` (every layer it reported, or null)
- ``mismatches``: every mismatch, one line each, prefixed by its backend
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .board import board_model, jetson
from .core import Artifact, BackendUnavailableError, EdgekitError, numeric_format
from .progress import Progress

FORMAT = "edgekit-doctor/1"

# the instruction sets inference kernels dispatch on, as /proc/cpuinfo spells them
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
# ARM: asimd is NEON on 64-bit (neon on 32-bit), asimddp the int8 dot product, asimdhp FP16 arithmetic
ARM_FLAGS = ("neon", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")
X86 = ("x86_64", "amd64", "i386", "i686")
POWER_SOURCES = ("tegrastats", "nvml", "rapl")
NVIDIA_SMI_TIMEOUT_S = 10
GIB = 2**30


# --------------------------------------------------------------------------- the machine


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo"), machine: Optional[str] = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the flags checked on this architecture, those the CPU has), from the first
    ``flags`` (x86) or ``Features`` (ARM) line; nothing present where it cannot be read."""
    arch = (machine or platform.machine()).lower()
    checked = X86_FLAGS if arch in X86 else ARM_FLAGS if arch.startswith(("arm", "aarch")) else ()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return checked, ()
    line = next((row for row in text.splitlines() if row.split(":")[0].strip().lower() in ("flags", "features")), "")
    have = set(line.partition(":")[2].split())
    return checked, tuple(flag for flag in checked if flag in have)


def memory_gb(meminfo: Path = Path("/proc/meminfo")) -> tuple[Optional[float], Optional[float]]:
    """(total, available) GiB; the available part is None where the system does not say."""
    try:
        fields = {row.split(":")[0]: int(row.split()[1]) * 1024 for row in meminfo.read_text().splitlines() if row.strip().endswith("kB")}
        return round(fields["MemTotal"] / GIB, 2), round(fields["MemAvailable"] / GIB, 2) if "MemAvailable" in fields else None
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB, 2), None
    except (ValueError, OSError, AttributeError):
        return None, None


def machine() -> dict[str, Any]:
    """The machine's facts (the ``machine`` section): timing.machine_info's, then cores,
    memory, CPU flags and the board."""
    from .timing import machine_info

    checked, present = cpu_flags()
    total, available = memory_gb()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        **machine_info(),
        "usable_cores": usable,
        "memory_total_gb": total,
        "memory_available_gb": available,
        "cpu_flags_checked": list(checked),
        "cpu_flags": list(present),
        "board": board_model(),
        "jetson": jetson(),
    }


def gpus() -> tuple[list[dict[str, Any]], str]:
    """NVIDIA GPUs (NVML, else nvidia-smi) and why none is listed ('' where one is)."""
    found, nvml_problem = _nvml_gpus()
    if found:
        return found, ""
    found, smi_problem = _smi_gpus()
    if found:
        return found, ""
    return [], f"NVML: {nvml_problem}; nvidia-smi: {smi_problem}"


def _nvml_gpus() -> tuple[list[dict[str, Any]], str]:
    from .telemetry import nvml_unavailable

    problem = nvml_unavailable()
    if problem:
        return [], problem
    import pynvml as nvml

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    nvml.nvmlInit()
    try:
        driver = text(nvml.nvmlSystemGetDriverVersion())
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        found = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                capability: Optional[str] = "%d.%d" % nvml.nvmlDeviceGetCudaComputeCapability(handle)
            except nvml.NVMLError:
                capability = None
            found.append({
                "name": text(nvml.nvmlDeviceGetName(handle)), "driver": driver, "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
                "memory_gb": round(nvml.nvmlDeviceGetMemoryInfo(handle).total / GIB, 2), "compute_capability": capability, "source": "nvml",
            })
        return found, "" if found else "NVML lists no GPU"
    except nvml.NVMLError as e:
        return [], f"NVML failed ({e})"
    finally:
        nvml.nvmlShutdown()


def _smi_gpus(executable: str = "nvidia-smi") -> tuple[list[dict[str, Any]], str]:
    if shutil.which(executable) is None:
        return [], f"no {executable} on PATH"
    query = ["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader,nounits"]
    try:
        listed = subprocess.run([executable, *query], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
        header = subprocess.run([executable], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        return [], f"{executable} failed ({e})"
    if listed.returncode != 0:
        said = ((listed.stderr or listed.stdout).strip().splitlines() or [f"exit {listed.returncode}"])[0]
        return [], f"{executable} failed: {said}"
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header.stdout)
    found = []
    for row in listed.stdout.strip().splitlines():
        name, driver, memory, capability = ([part.strip() for part in row.split(",")] + ["", "", "", ""])[:4]
        try:
            memory_gb: Optional[float] = round(float(memory) / 1024, 2)  # MiB
        except ValueError:
            memory_gb = None
        found.append({"name": name, "driver": driver or None, "cuda": cuda.group(1) if cuda else None, "memory_gb": memory_gb,
                      "compute_capability": capability if re.fullmatch(r"\d+\.\d+", capability) else None, "source": "nvidia-smi"})
    return found, "" if found else f"{executable} lists no GPU"


def power_sources() -> dict[str, dict[str, Any]]:
    """Each power source `edgekit bench --power` can read, and why not where it cannot
    (telemetry's own check)."""
    from .telemetry import power_source_problem

    found = {}
    for source in POWER_SOURCES:
        problem = power_source_problem(source)
        found[source] = {"available": problem is None, "problem": problem or ""}
    return found


def backend_facts(backends: Mapping[str, Any], progress: Progress) -> dict[str, dict[str, Any]]:
    """name -> the backend's machine_facts(); a hook that fails is a fact too (its problem)."""
    found = {}
    for done, (name, backend) in enumerate(backends.items()):
        progress("backend facts", done, len(backends))
        try:
            facts = dict(backend.machine_facts())
        except Exception as e:  # noqa: BLE001 (one backend's broken hook must not hide the others)
            facts = {"installed": None, "version": None, "devices": [], "problem": f"machine_facts failed: {one_line(e)}"}
        found[name] = facts
    progress("backend facts", len(backends), len(backends))
    return found


def one_line(error: BaseException) -> str:
    """An error as one line: an EdgekitError's message, else its type and first line."""
    text = str(error) if isinstance(error, EdgekitError) else f"{type(error).__name__}: {error}"
    return (text.strip().splitlines() or [type(error).__name__])[0]


# --------------------------------------------------------------------------- an artifact


@dataclass(frozen=True)
class BackendCheck:
    """What one backend did with the artifact here."""

    backend: str
    device: str
    status: str  # ok, failed (compile or load), skipped (not installed, no such device)
    reason: str = ""  # why failed or skipped, one line
    file: Optional[str] = None  # the file it loaded, relative to the artifact
    variant_detail: Optional[str] = None  # the compiled artifact's variant_detail (a CPU form...)
    session: Optional[Mapping[str, Any]] = None  # precision, device, providers, threads, as the loaded session says
    precision: Optional[Mapping[str, Any]] = None  # layer_precision.summary with the report's facts; None: the runtime does not report layers
    layers: Optional[tuple[Mapping[str, Any], ...]] = None  # every layer it reported

    @property
    def mismatches(self) -> list[str]:
        return list((self.precision or {}).get("mismatches") or [])

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "device": self.device, "status": self.status, "reason": self.reason, "file": self.file,
            "variant_detail": self.variant_detail, "session": None if self.session is None else dict(self.session),
            "precision": None if self.precision is None else dict(self.precision),
            "layers": None if self.layers is None else [dict(layer) for layer in self.layers],
        }


@dataclass(frozen=True)
class ArtifactCheck:
    """The artifact's own request, and what each backend made of it."""

    path: str
    model: str
    key: str
    variant: str
    numeric_format: str
    kept_fp32: Optional[tuple[str, ...]]
    asked: Mapping[str, int]  # compute nodes per precision its graph asks
    backends: tuple[BackendCheck, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "model": self.model, "key": self.key, "variant": self.variant, "numeric_format": self.numeric_format,
            "kept_fp32": None if self.kept_fp32 is None else list(self.kept_fp32), "asked": dict(self.asked),
            "backends": [check.to_dict() for check in self.backends],
        }


@dataclass(frozen=True)
class DoctorReport:
    edgekit: str
    machine: Mapping[str, Any]
    gpus: tuple[Mapping[str, Any], ...]
    gpu_problem: str
    power: Mapping[str, Mapping[str, Any]]
    backends: Mapping[str, Mapping[str, Any]]
    artifact: Optional[ArtifactCheck] = None
    named: tuple[str, ...] = field(default=())  # backends the user named (--backend): one that fails is a failure

    @property
    def mismatches(self) -> list[str]:
        checks = self.artifact.backends if self.artifact is not None else ()
        return [f"{check.backend}: {line}" for check in checks for line in check.mismatches]

    @property
    def failed(self) -> list[BackendCheck]:
        """Named backends that could not compile or load the artifact."""
        checks = self.artifact.backends if self.artifact is not None else ()
        return [check for check in checks if check.status == "failed" and check.backend in self.named]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "edgekit": self.edgekit,
            "machine": dict(self.machine),
            "gpus": [dict(gpu) for gpu in self.gpus],
            "gpu_problem": self.gpu_problem,
            "power": {source: dict(state) for source, state in self.power.items()},
            "backends": {name: dict(facts) for name, facts in self.backends.items()},
            "artifact": None if self.artifact is None else self.artifact.to_dict(),
            "mismatches": self.mismatches,
        }


def kept_fp32(manifest: Mapping[str, Any]) -> Optional[tuple[str, ...]]:
    """The nodes a manifest says were kept FP32 (its own ``kept_fp32``, else its last step's
    that has one), or None where it says nothing."""
    found = manifest.get("kept_fp32")
    if found is None:
        found = next((s["kept_fp32"] for s in reversed(manifest.get("steps") or []) if isinstance(s, Mapping) and "kept_fp32" in s), None)
    return None if found is None else tuple(str(node) for node in found)


def asked_counts(asked: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in asked.values():
        counts[word] = counts.get(word, 0) + 1
    return counts


def check_artifact(artifact: Artifact, backends: Mapping[str, Any], options: Any, facts: Mapping[str, Mapping[str, Any]],
                   progress: Progress) -> ArtifactCheck:
    """Each backend of ``backends`` (name -> backend) on ``artifact`` with ``options`` (a
    BackendOptions); ``facts``: their machine_facts (a backend not installed is skipped)."""
    from .layer_precision import asked_precision
    from .plan import runnable_backends

    runnable, _ = runnable_backends(artifact, tuple(backends))  # bench's rule: an imported ONNX has no original for the baseline
    checks = []
    for done, (name, backend) in enumerate(backends.items()):
        progress("compile, load, layer report", done, len(backends))
        if name in runnable:
            checks.append(check_backend(name, backend, artifact, options, facts.get(name, {})))
        else:
            checks.append(BackendCheck(name, backend.device_for(options), "skipped", "the artifact was imported from an ONNX file: there is no original model for this backend to run"))
    progress("compile, load, layer report", len(backends), len(backends))
    return ArtifactCheck(
        str(artifact.path), artifact.model_name, artifact.key, str(artifact.manifest.get("variant", "fp32")), numeric_format(artifact.manifest),
        kept_fp32(artifact.manifest), asked_counts(asked_precision(artifact.onnx_path)), tuple(checks),
    )


def check_backend(name: str, backend: Any, artifact: Artifact, options: Any, facts: Mapping[str, Any]) -> BackendCheck:
    """Compile and load ``artifact`` on one backend, then read its layer report."""
    device = backend.device_for(options)
    if facts.get("installed") is False:
        return BackendCheck(name, device, "skipped", str(facts.get("problem") or "not installed"))
    problem = backend.device_problem(device)
    if problem:
        return BackendCheck(name, device, "skipped", problem)
    try:
        compiled = backend.compile(artifact, options)
    except Exception as e:  # noqa: BLE001 (what a runtime raises while compiling is the answer, in one line)
        return BackendCheck(name, device, "failed", f"compile: {one_line(e)}")
    file = _relative(compiled.onnx_path, artifact.path)
    detail = compiled.manifest.get("variant_detail")
    try:
        session = backend.load(compiled, options)
    except Exception as e:  # noqa: BLE001
        return BackendCheck(name, device, "failed", f"load: {one_line(e)}", file, detail)
    ran = {"precision": getattr(session, "precision", None), "device": getattr(session, "device", None),
           "providers": list(getattr(session, "providers", ()) or ()), "threads": getattr(session, "threads", None)}
    del session  # let the runtime free it before the next backend loads
    precision, layers = layer_precision(backend, compiled, options)
    return BackendCheck(name, device, "ok", "", file, detail, ran, precision, layers)


def layer_precision(backend: Any, compiled: Artifact, options: Any) -> tuple[Optional[dict[str, Any]], Optional[tuple[dict[str, Any], ...]]]:
    """(summary of the backend's layer report against the graph it read, its layers); (None,
    None) where the runtime does not report layers; a report that fails is a ``problem``."""
    from .layer_precision import asked_precision, summary

    try:
        report = backend.layer_report(compiled, options)
    except Exception as e:  # noqa: BLE001 (the artifact loaded; only the per-layer view failed: say so)
        asked = asked_counts(asked_precision(compiled.onnx_path))
        return {"asked": asked, "ran": {}, "mismatches": [], "substitutions": [], "device": None, "expected_where": [], "facts": {},
                "problem": f"layer report failed: {one_line(e)}"}, None
    if report is None:
        return None, None
    details = report.to_dict()
    found = {**summary(asked_precision(compiled.onnx_path), report), "device": report.device, "expected_where": list(report.expected_where),
             "facts": details["facts"], "problem": ""}
    return found, tuple(details["layers"])


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- the report


def machine_report(backends: Mapping[str, Any], progress: Progress = lambda stage, done, total: None) -> DoctorReport:
    """The machine and every backend of ``backends`` (name -> backend): no artifact."""
    from . import __version__

    progress("machine", None, None)
    facts = machine()
    found, problem = gpus()
    power = power_sources()
    return DoctorReport(__version__, facts, tuple(found), problem, power, backend_facts(backends, progress))


def with_artifact(report: DoctorReport, artifact: Artifact, backends: Mapping[str, Any], options: Any, named: Sequence[str],
                  progress: Progress = lambda stage, done, total: None) -> DoctorReport:
    """``report`` with ``artifact`` checked on ``backends``; ``named``: the ones the user asked for."""
    import dataclasses

    checked = check_artifact(artifact, backends, options, report.backends, progress)
    return dataclasses.replace(report, artifact=checked, named=tuple(named))



def choose_backends(named: Sequence[str], device_spec: Optional[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(the backends to check, name -> backend; the ones the user named). Named ones (with
    --backend, or in a BACKEND:DEVICE pair) must run here: a missing runtime or device is
    refused before any work, as bench refuses it. With none named every registered backend
    is checked, and one that cannot run here is skipped with its reason; a bare --device
    that none of them can use is refused."""
    from .backends.base import BackendOptions, check_devices, get_backend, parse_devices, present_backends
    from .core import UsageError

    bare, pairs = parse_devices(device_spec)
    backends = {name: get_backend(name) for name in named} if named else present_backends()
    strict = tuple(named) if named else tuple(pairs)
    for name in strict:
        (backends.get(name) or get_backend(name)).check_available()
    if strict:
        check_devices(device_spec, strict)
    if bare is not None and not named:
        options = BackendOptions(device=str(device_spec))
        problems = [_device_problem(backend, options) for backend in backends.values() if backend.takes_bare_device]
        if problems and all(problems):
            raise UsageError(f"--device {device_spec}: no backend can use it here: " + "; ".join(problems))
    return backends, strict


def _device_problem(backend: Any, options: Any) -> str:
    """Why ``backend`` cannot run on the device ``options`` give it here ('' where it can)."""
    try:
        backend.check_available()
    except BackendUnavailableError as e:
        return str(e)
    return backend.device_problem(backend.device_for(options)) or ""
