"""Power, energy and memory while a benchmark times: Jetson ``tegrastats``, NVML, RAPL.

A monitor is opened around one timed loop (``with open_power_monitor(...) as m``);
``bench.time_session`` marks the window it times (``m.begin()`` after the warm-up,
``m.end()`` after the last run), and ``m.summary(inferences)`` turns what was read in that
window into a :class:`~edgekit.core.PowerStats`. Energy comes from a hardware counter
where there is one (NVML's total-energy counter, RAPL's ``energy_uj``), else from power
samples integrated over the window (tegrastats, NVML's power reading on older GPUs).

Sampling stays out of the timed code: tegrastats is a process of its own read by a
thread, NVML is polled by a thread every 50 ms, and RAPL counters are read at the two
marks (plus a slow poll that only catches wraparound).

Only the standard library and numpy are imported here; ``pynvml`` (the ``nvidia-ml-py``
package) is imported where NVML is used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .core import BackendUnavailableError, PowerStats, UsageError

POWER_SOURCES = ("auto", "tegrastats", "nvml", "rapl", "off")
NVML_PACKAGE = "nvidia-ml-py"
RAPL_ROOT = Path("/sys/class/powercap")
TEGRASTATS = "tegrastats"

# --------------------------------------------------------------------------- tegrastats lines

# Rails that measure the module's whole input: Xavier NX / Orin NX / Orin Nano / TX2 print
# VDD_IN, Nano and TX1 POM_5V_IN. AGX Xavier (GPU, CPU, SOC, CV, VDDRQ, SYS5V) and AGX Orin
# (VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, and as root VDDQ_VDD2_1V8AO) print only the
# module's separate supplies, so there the total is their sum and PowerStats.rail names
# every rail that went into it.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")

_TIMESTAMP = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU_LOAD = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]", re.IGNORECASE)
_CPU_LOAD = re.compile(r"^\s*(\d+)%")
# "NAME now/average", optionally with mW (JetPack 5+); values are mW either way. The
# lookahead rejects "RAM 775/7620MB", "SWAP 0/3810MB" and "IRAM 0/252kB(...".
_RAIL = re.compile(r"(?<![\w@/])([A-Za-z][A-Za-z0-9_]*) (-?\d+)(?:mW)?/(-?\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


@dataclass(frozen=True)
class TegraSample:
    """One tegrastats line: what edgekit uses of it."""

    timestamp: Optional[datetime]  # printed by JetPack 5+ (MM-DD-YYYY HH:MM:SS, 1 s resolution)
    ram_used_mb: Optional[int]
    ram_total_mb: Optional[int]
    rails_mw: tuple[tuple[str, int], ...]  # instantaneous mW per rail, in printed order
    gpu_load_pct: Optional[int]
    cpu_load_pct: tuple[Optional[int], ...]  # per core; None for a core that is off

    @property
    def total(self) -> Optional[tuple[str, float]]:
        """(rail, mW) of the module's input power: VDD_IN or POM_5V_IN where printed,
        else the sum of all rails, named "A+B+C"."""
        rails = dict(self.rails_mw)
        for name in TOTAL_RAILS:
            if name in rails:
                return name, float(rails[name])
        if not rails:
            return None
        return "+".join(rails), float(sum(rails.values()))


def parse_tegrastats_line(line: str) -> Optional[TegraSample]:
    """The fields of one tegrastats line, or None for a line with none of them."""
    stamp = _TIMESTAMP.match(line)
    ram = _RAM.search(line)
    gpu = _GPU_LOAD.search(line)
    cpu = _CPU.search(line)
    rails = tuple((m.group(1), int(m.group(2))) for m in _RAIL.finditer(line) if m.group(1) not in _NOT_RAILS)
    if not (ram or rails or gpu or cpu):
        return None
    loads: tuple[Optional[int], ...] = ()
    if cpu:
        loads = tuple(int(m.group(1)) if (m := _CPU_LOAD.match(core)) else None for core in cpu.group(1).split(","))
    return TegraSample(
        timestamp=datetime.strptime(stamp.group(1), "%m-%d-%Y %H:%M:%S") if stamp else None,
        ram_used_mb=int(ram.group(1)) if ram else None,
        ram_total_mb=int(ram.group(2)) if ram else None,
        rails_mw=rails,
        gpu_load_pct=int(gpu.group(1)) if gpu else None,
        cpu_load_pct=loads,
    )


# --------------------------------------------------------------------------- arithmetic


def integrate_power(times: Sequence[float], watts: Sequence[float], t0: float, t1: float) -> float:
    """Joules between t0 and t1 from power samples: linear between samples, held at the
    first/last sample outside their span (trapezoid rule)."""
    t = np.asarray(times, dtype=np.float64)
    w = np.asarray(watts, dtype=np.float64)
    if t.size == 0 or t1 <= t0:
        return 0.0
    order = np.argsort(t, kind="stable")
    t, w = t[order], w[order]
    inside = t[(t > t0) & (t < t1)]
    ts = np.concatenate([[t0], inside, [t1]])
    ws = np.interp(ts, t, w)
    return float(((ws[1:] + ws[:-1]) / 2 * np.diff(ts)).sum())


def counter_delta(before: int, after: int, wrap: int) -> int:
    """Increase of a counter that restarts from 0 past ``wrap`` (RAPL's max_energy_range_uj);
    read often enough that it wraps at most once between two reads."""
    delta = after - before
    return delta + wrap if delta < 0 else delta


def _stats(
    source: str, rail: str, samples: int, seconds: float, energy_j: float, inferences: int, method: str, **extra
) -> PowerStats:
    return PowerStats(
        source=source,
        rail=rail,
        samples=samples,
        seconds=seconds,
        mean_power_w=energy_j / seconds if seconds > 0 else 0.0,
        energy_j=energy_j,
        energy_per_inference_mj=energy_j * 1000.0 / inferences if inferences > 0 else 0.0,
        energy_method=method,
        **extra,
    )


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def summarise_tegrastats(
    readings: Sequence[tuple[float, TegraSample]], t0: float, t1: float, inferences: int
) -> Optional[PowerStats]:
    """PowerStats over [t0, t1] from (time, sample) pairs; None without a power reading."""
    powered = [(t, s, s.total) for t, s in readings if s.total is not None]
    if not powered:
        return None
    in_window = [(t, s, total) for t, s, total in powered if t0 <= t <= t1]
    # the window's rail; a root/non-root change mid-run would show as a second name
    rails = list(dict.fromkeys(total[0] for _, _, total in (in_window or powered)))
    energy = integrate_power([t for t, _, _ in powered], [total[1] / 1000.0 for _, _, total in powered], t0, t1)
    described = in_window or [min(powered, key=lambda r: min(abs(r[0] - t0), abs(r[0] - t1)))]
    ram = [s.ram_used_mb for _, s, _ in described if s.ram_used_mb is not None]
    return _stats(
        TEGRASTATS,
        " | ".join(rails),
        len(in_window) or 1,
        t1 - t0,
        energy,
        inferences,
        "sampled",
        peak_ram_mb=float(max(ram)) if ram else None,
        mean_gpu_load_pct=_mean([s.gpu_load_pct for _, s, _ in described]),
    )


# --------------------------------------------------------------------------- monitors


class PowerMonitor:
    """Reads nothing; the base of the real monitors (``source = "off"``)."""

    source = "off"

    def __init__(self) -> None:
        self._opened: Optional[float] = None
        self._closed: Optional[float] = None
        self._begin: Optional[float] = None
        self._end: Optional[float] = None

    def __enter__(self) -> "PowerMonitor":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._opened = time.perf_counter()

    def stop(self) -> None:
        self._closed = time.perf_counter()

    def begin(self) -> None:
        """The timed window starts (called by bench.time_session after the warm-up)."""
        self._begin = time.perf_counter()

    def end(self) -> None:
        self._end = time.perf_counter()

    def window(self) -> tuple[float, float]:
        t0 = self._begin if self._begin is not None else self._opened
        t1 = self._end if self._end is not None else self._closed
        if t0 is None or t1 is None:
            raise RuntimeError("power monitor used outside its with-block")
        return t0, t1

    def summary(self, inferences: int) -> Optional[PowerStats]:
        """Power and energy over the timed window; ``inferences`` is the number of images
        run in it. None where this monitor measured nothing."""
        return None


class TegrastatsMonitor(PowerMonitor):
    """Runs ``tegrastats --interval MS`` as a process of its own and parses its lines."""

    source = TEGRASTATS

    def __init__(self, interval_ms: int = 100, executable: str = TEGRASTATS) -> None:
        super().__init__()
        self.interval_ms = interval_ms
        self.executable = executable
        self.readings: list[tuple[float, TegraSample]] = []
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self) -> None:
        path = shutil.which(self.executable)
        if path is None:
            raise BackendUnavailableError(f"no {self.executable} on PATH (it comes with JetPack on Jetson boards)")
        command = [path, "--interval", str(self.interval_ms)]
        stdbuf = shutil.which("stdbuf")
        if stdbuf:  # lines as they are printed, not in 4 KB blocks, when stdout is a pipe
            command = [stdbuf, "-oL", *command]
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._reader.start()
        super().start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            received = time.perf_counter()
            sample = parse_tegrastats_line(line)
            if sample is not None:
                with self._lock:
                    self.readings.append((received, sample))

    def stop(self) -> None:
        super().stop()
        if self._proc is None:
            return
        # a window shorter than one interval still gets the next line
        deadline = time.perf_counter() + max(2.0, 3 * self.interval_ms / 1000)
        while not self._has_reading_after(self.window()[1]) and time.perf_counter() < deadline and self._proc.poll() is None:
            time.sleep(0.01)
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _has_reading_after(self, t: float) -> bool:
        with self._lock:
            return bool(self.readings) and self.readings[-1][0] >= t

    @property
    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    def summary(self, inferences: int) -> Optional[PowerStats]:
        t0, t1 = self.window()
        with self._lock:
            readings = list(self.readings)
        return summarise_tegrastats(readings, t0, t1, inferences)


class NvmlMonitor(PowerMonitor):
    """An NVIDIA GPU through NVML: the total-energy counter where the GPU has one (Volta
    and newer), else power readings every ``period_s`` integrated; device memory in use
    and GPU utilisation from the same polls."""

    source = "nvml"

    def __init__(self, device_index: int = 0, period_s: float = 0.05) -> None:
        super().__init__()
        self.device_index = device_index
        self.period_s = period_s
        self.name = f"GPU {device_index}"
        self._nvml = None
        self._handle = None
        self._energy: dict[str, Optional[int]] = {"begin": None, "end": None}
        self._polls: list[tuple[float, Optional[float], Optional[float], Optional[float]]] = []  # t, W, MB, util %
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self) -> None:
        nvml = _nvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise BackendUnavailableError(f"NVML found no usable NVIDIA GPU or driver ({e})") from None
        self._nvml = nvml
        self._handle = nvml_handle(nvml, self.device_index)
        name = nvml.nvmlDeviceGetName(self._handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self._thread = threading.Thread(target=self._poll, name="nvml-poller", daemon=True)
        self._thread.start()
        super().start()

    def _read_energy_mj(self) -> Optional[int]:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError:  # not supported before Volta
            return None

    def _read(self, what: Callable[[], float]) -> Optional[float]:
        try:
            return float(what())
        except self._nvml.NVMLError:
            return None

    def _poll(self) -> None:
        nvml, handle = self._nvml, self._handle
        while not self._stop.is_set():
            reading = (
                time.perf_counter(),
                self._read(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
                self._read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20),
                self._read(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            )
            with self._lock:
                self._polls.append(reading)
            self._stop.wait(self.period_s)

    def begin(self) -> None:
        self._energy["begin"] = self._read_energy_mj()
        super().begin()

    def end(self) -> None:
        super().end()
        self._energy["end"] = self._read_energy_mj()

    def stop(self) -> None:
        super().stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass

    def summary(self, inferences: int) -> Optional[PowerStats]:
        t0, t1 = self.window()
        with self._lock:
            polls = list(self._polls)
        in_window = [p for p in polls if t0 <= p[0] <= t1] or polls
        begin, end = self._energy["begin"], self._energy["end"]
        if begin is not None and end is not None:
            energy, method, samples = (end - begin) / 1000.0, "counter", 2
        else:
            powered = [(t, w) for t, w, _, _ in polls if w is not None]
            if not powered:
                return None
            energy = integrate_power([t for t, _ in powered], [w for _, w in powered], t0, t1)
            method, samples = "sampled", max(1, sum(1 for t, _ in powered if t0 <= t <= t1))
        memory = [m for _, _, m, _ in in_window if m is not None]
        return _stats(
            "nvml", self.name, samples, t1 - t0, energy, inferences, method,
            gpu_memory_mb=max(memory) if memory else None,
            mean_gpu_load_pct=_mean([u for _, _, _, u in in_window]),
        )


@dataclass(frozen=True)
class RaplDomain:
    name: str  # "package-0", ...
    energy_path: Path
    max_energy_range_uj: int


def rapl_domains(root: Path = RAPL_ROOT) -> list[RaplDomain]:
    """The readable package domains (intel-rapl:N; AMD's kernel driver uses the same
    names). Subdomains (intel-rapl:N:M: core, uncore, dram) are parts of a package and
    are left out; so is psys, which overlaps the packages, unless it is all there is."""
    domains = []
    for folder in sorted(Path(root).glob("intel-rapl:*")):
        if folder.name.count(":") != 1:
            continue
        try:
            name = (folder / "name").read_text().strip()
            int((folder / "energy_uj").read_text())
            wrap = int((folder / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        domains.append(RaplDomain(name, folder / "energy_uj", wrap))
    packages = [d for d in domains if d.name.startswith("package")]
    return packages or domains


def rapl_unavailable(root: Path = RAPL_ROOT) -> Optional[str]:
    """Why RAPL cannot be read here, or None when it can."""
    if rapl_domains(root):
        return None
    if not list(Path(root).glob("intel-rapl:*")):
        return f"no RAPL domains under {root} (x86 Linux with the intel_rapl powercap driver; virtual machines rarely have them)"
    return f"{root}/intel-rapl:*/energy_uj is not readable (often root-only); run as root to measure package energy"


class RaplMonitor(PowerMonitor):
    """CPU package energy from the powercap counters, read at the window's marks; a slow
    poll in between only keeps a wrapping counter from being missed."""

    source = "rapl"

    def __init__(self, root: Path = RAPL_ROOT, period_s: float = 1.0) -> None:
        super().__init__()
        self.root = Path(root)
        self.period_s = period_s
        self.domains: list[RaplDomain] = []
        self._last: list[int] = []
        self._total_uj = 0
        self._marks: dict[str, int] = {}
        self._reads = 0
        self._in_window = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.domains = rapl_domains(self.root)
        if not self.domains:
            raise BackendUnavailableError(rapl_unavailable(self.root) or "RAPL unreadable")
        self._last = [int(d.energy_path.read_text()) for d in self.domains]
        self._thread = threading.Thread(target=self._poll, name="rapl-poller", daemon=True)
        self._thread.start()
        super().start()

    def read(self) -> int:
        """Microjoules since start, all domains, wraparound undone."""
        with self._lock:
            for i, domain in enumerate(self.domains):
                raw = int(domain.energy_path.read_text())
                self._total_uj += counter_delta(self._last[i], raw, domain.max_energy_range_uj)
                self._last[i] = raw
            self._reads += 1
            if "begin" in self._marks and "end" not in self._marks:
                self._in_window += 1
            return self._total_uj

    def _poll(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.read()
            except (OSError, ValueError):
                return

    def begin(self) -> None:
        super().begin()
        self._marks["begin"] = self.read()

    def end(self) -> None:
        self._marks["end"] = self.read()
        super().end()

    def stop(self) -> None:
        super().stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self, inferences: int) -> Optional[PowerStats]:
        if "begin" not in self._marks or "end" not in self._marks:
            return None
        t0, t1 = self.window()
        energy = (self._marks["end"] - self._marks["begin"]) / 1e6
        rail = "+".join(d.name for d in self.domains)
        return _stats("rapl", rail, self._in_window + 1, t1 - t0, energy, inferences, "counter")


# --------------------------------------------------------------------------- NVML helpers


def _nvml():
    try:
        import pynvml
    except ImportError:
        raise BackendUnavailableError(f"NVML power readings need its Python bindings: pip install {NVML_PACKAGE}") from None
    return pynvml


def nvml_handle(nvml, cuda_index: int = 0):
    """NVML's handle for CUDA device ``cuda_index``. NVML ignores CUDA_VISIBLE_DEVICES and
    counts in PCI order, so the variable (indices or GPU-/MIG- UUIDs) is applied here;
    CUDA's own order matches only with CUDA_DEVICE_ORDER=PCI_BUS_ID or a single GPU."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if cuda_index < len(visible):
        entry = visible[cuda_index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(cuda_index)


def nvml_unavailable(device_index: int = 0) -> Optional[str]:
    """Why NVML cannot be read here, or None when it can."""
    try:
        nvml = _nvml()
    except BackendUnavailableError as e:
        return str(e)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        return f"NVML found no usable NVIDIA GPU or driver ({e})"
    try:
        nvml_handle(nvml, device_index)
    except nvml.NVMLError as e:
        return f"NVML has no GPU {device_index} ({e})"
    finally:
        nvml.nvmlShutdown()
    return None


def gpu_memory_mb(device_index: int = 0, pid: Optional[int] = None) -> Optional[float]:
    """GPU memory in use, MiB: by process ``pid`` where given (None if NVML does not list
    it, as inside some containers), else by the whole device. None without NVML or a GPU
    (Jetson boards have no full NVML). For the TensorRT backend after loading an engine."""
    try:
        nvml = _nvml()
    except BackendUnavailableError:
        return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    try:
        handle = nvml_handle(nvml, device_index)
        if pid is None:
            return nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        for list_processes in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
            for process in list_processes(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    return process.usedGpuMemory / 2**20
        return None
    except nvml.NVMLError:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


# --------------------------------------------------------------------------- choosing a source


def power_source_problem(source: str, *, rapl_root: Path = RAPL_ROOT, tegrastats: str = TEGRASTATS) -> Optional[str]:
    """Why ``source`` (tegrastats, nvml, rapl) cannot be read here, or None where it can."""
    if source == "tegrastats" and shutil.which(tegrastats) is None:
        return f"no {tegrastats} on PATH (it comes with JetPack on Jetson boards)"
    if source == "nvml":
        return nvml_unavailable()
    if source == "rapl":
        return rapl_unavailable(rapl_root)
    return None


def check_power_source(source: str, *, rapl_root: Path = RAPL_ROOT, tegrastats: str = TEGRASTATS) -> None:
    """Fail in one line when ``source`` was asked for explicitly and cannot be read here;
    "auto" and "off" always pass."""
    if source not in POWER_SOURCES:
        raise UsageError(f"unknown power source {source!r}; choose from {', '.join(POWER_SOURCES)}")
    reason = power_source_problem(source, rapl_root=rapl_root, tegrastats=tegrastats)
    if reason:
        raise BackendUnavailableError(f"--power {source}: {reason}")


def open_power_monitor(
    source: str = "auto",
    *,
    gpu: bool = True,
    interval_ms: int = 100,
    rapl_root: Path = RAPL_ROOT,
    tegrastats: str = TEGRASTATS,
) -> PowerMonitor:
    """A monitor for ``source`` (use it as a context manager). "auto" takes tegrastats
    where the binary exists, else NVML when the benchmark runs on an NVIDIA GPU (``gpu``)
    and NVML answers, else RAPL where readable, else a monitor that reads nothing. An
    explicitly named source that cannot be read raises BackendUnavailableError."""
    check_power_source(source, rapl_root=rapl_root, tegrastats=tegrastats)
    if source == "auto":
        if shutil.which(tegrastats):
            source = "tegrastats"
        elif gpu and nvml_unavailable() is None:
            source = "nvml"
        elif rapl_unavailable(rapl_root) is None:
            source = "rapl"
        else:
            source = "off"
    if source == "tegrastats":
        return TegrastatsMonitor(interval_ms, tegrastats)
    if source == "nvml":
        return NvmlMonitor()
    if source == "rapl":
        return RaplMonitor(rapl_root)
    return PowerMonitor()
