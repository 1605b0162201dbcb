"""The only place that times anything, and the accuracy arithmetic against a baseline.

Every backend is timed the same way, host to host: a numpy batch in, numpy logits out,
``time.perf_counter_ns`` around ``session.run``. Nothing here imports torch.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from .core import AccuracyStats, LatencyStats, UsageError

if TYPE_CHECKING:
    from .telemetry import PowerMonitor


@dataclass(frozen=True)
class TimingOptions:
    batch_sizes: tuple[int, ...] = (1,)
    warmup: int = 10
    iterations: int = 100
    max_seconds: float = 15.0  # per batch size; stops early (after >= min_iterations) past it
    min_iterations: int = 10
    repeats: int = 1  # rounds of `iterations`; the spread of their p50s shows the noise

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


# --------------------------------------------------------------------------- accuracy


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mean_kl(baseline: np.ndarray, other: np.ndarray) -> float:
    """Mean over images of KL(softmax(baseline) || softmax(other))."""
    lp, lq = _log_softmax(baseline), _log_softmax(other)
    return max(0.0, float((np.exp(lp) * (lp - lq)).sum(axis=1).mean()))  # clamp rounding below 0


def topk_accuracy(logits: np.ndarray, labels: Sequence[Optional[tuple[int, ...]]], k: int) -> Optional[float]:
    """Percent of images whose top-k predictions include one of their acceptable labels."""
    if not labels or any(lab is None for lab in labels):
        return None
    topk = np.argsort(-logits, axis=1)[:, :k]
    hits = [bool(set(row.tolist()) & set(lab)) for row, lab in zip(topk, labels)]  # type: ignore[arg-type]
    return float(np.mean(hits) * 100)


def compare_to_baseline(
    logits: np.ndarray,
    baseline: Optional[np.ndarray],
    labels: Sequence[Optional[tuple[int, ...]]],
) -> AccuracyStats:
    top1 = topk_accuracy(logits, labels, 1)
    top5 = topk_accuracy(logits, labels, 5)
    if baseline is None:
        return AccuracyStats(len(logits), top1, top5, None, None, None, None)
    if baseline.shape != logits.shape:
        raise ValueError(f"logits {logits.shape} and baseline {baseline.shape} differ in shape")
    base_top1 = topk_accuracy(baseline, labels, 1)
    return AccuracyStats(
        images=len(logits),
        top1=top1,
        top5=top5,
        top1_drop=None if top1 is None or base_top1 is None else base_top1 - top1,
        agreement=float((logits.argmax(1) == baseline.argmax(1)).mean() * 100),
        mean_kl=mean_kl(baseline, logits),
        max_abs_diff=float(np.abs(logits.astype(np.float64) - baseline).max()),
    )


@dataclass(frozen=True)
class BackendParity:
    """Two backends' outputs for one artifact on the same images."""

    first: str
    second: str
    agreement: float  # percent of images with the same top-1
    max_abs_diff: float  # largest logit difference


def cross_parity(logits: dict[str, np.ndarray]) -> tuple[BackendParity, ...]:
    names = list(logits)
    return tuple(
        BackendParity(
            a, b,
            float((logits[a].argmax(1) == logits[b].argmax(1)).mean() * 100),
            float(np.abs(logits[a].astype(np.float64) - logits[b]).max()),
        )
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    )
