"""The only place that times anything (accuracy arithmetic lives in edgekit.evaluation).

Every backend is timed the same way, host to host: a numpy batch in, numpy logits out,
``time.perf_counter_ns`` around ``session.run``. Nothing here imports torch.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from .core import LatencyStats, UsageError
from .options import declared

if TYPE_CHECKING:
    from .telemetry import PowerMonitor


@dataclass(frozen=True)
class TimingOptions:
    batch_sizes: tuple[int, ...] = declared("batch").field(convert=tuple)
    warmup: int = declared("warmup").field()
    iterations: int = declared("iterations").field()
    max_seconds: float = declared("max_seconds").field(convert=float)  # per batch size; stops early (after >= min_iterations) past it
    min_iterations: int = 10
    repeats: int = declared("repeats").field()  # rounds of `iterations`; the spread of their p50s shows the noise

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if self.iterations < 1 or self.warmup < 0 or self.repeats < 1:
            raise UsageError("iterations and repeats must be >= 1 and warm-up >= 0")


def make_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """A batch of real preprocessed images, repeating them when there are fewer than asked."""
    reps = -(-batch_size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch_size])


def time_session(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    batch_size: int,
    options: TimingOptions,
    on_step: Callable[[int, int], None] = lambda done, total: None,
    compute_ms: Callable[[], Optional[float]] = lambda: None,
    power: Optional["PowerMonitor"] = None,
) -> LatencyStats:
    """Host-to-host latency of ``run``; ``compute_ms``, where given, reads the device time
    of the inference alone after each run (TensorRT's CUDA events); ``power``, an open
    telemetry monitor, is told where the timed runs start and end (warm-up excluded)."""
    batch = make_batch(images, batch_size)
    for _ in range(options.warmup):
        run(batch)
    if power is not None:
        power.begin()
    samples_ns: list[int] = []
    compute: list[float] = []
    round_p50s: list[float] = []
    total = options.iterations * options.repeats
    for _ in range(options.repeats):
        round_ns: list[int] = []
        deadline = time.perf_counter() + options.max_seconds
        for i in range(options.iterations):
            start = time.perf_counter_ns()
            run(batch)
            round_ns.append(time.perf_counter_ns() - start)
            device_ms = compute_ms()
            if device_ms is not None:
                compute.append(device_ms)
            on_step(len(samples_ns) + i + 1, total)
            if i + 1 >= options.min_iterations and time.perf_counter() > deadline:
                break
        samples_ns += round_ns
        round_p50s.append(float(np.percentile(np.asarray(round_ns, dtype=np.float64) / 1e6, 50)))
    if power is not None:
        power.end()
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    return LatencyStats(
        batch_size=batch_size,
        iterations=len(ms),
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=mean,
        throughput_ips=batch_size * 1000.0 / mean,
        p50_rounds=tuple(round_p50s) if options.repeats > 1 else (),
        compute_p50_ms=float(np.percentile(compute, 50)) if compute else None,
        compute_mean_ms=float(np.mean(compute)) if compute else None,
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far.

    Linux: VmHWM, because ru_maxrss survives exec and would report the parent's peak
    in a freshly spawned worker. Elsewhere ru_maxrss (macOS reports bytes, others KiB).
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if platform.system() == "Darwin" else peak / 1024


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
