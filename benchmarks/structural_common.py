"""Shared by the pruning and depthwise-separable benchmarks: latency of several artifacts
on ONNX Runtime and OpenVINO, measured in alternating rounds so that drift on a shared
machine hits every artifact alike, and fidelity vs the original on held-out views."""

from __future__ import annotations

import statistics

import numpy as np

from edgekit.backends import BackendOptions, get_backend
from edgekit.timing import TimingOptions, time_session
from edgekit.evaluation import compare_to_baseline
from edgekit.core import Artifact

BACKENDS = ("onnxruntime", "openvino")


def interleaved_p50(artifacts: dict[str, Artifact], x: np.ndarray, iterations: int = 50, rounds: int = 3) -> dict[str, dict[str, float]]:
    """name -> backend -> median over rounds of the batch-1 p50 (ms)."""
    sessions = {}
    for name, artifact in artifacts.items():
        for backend_name in BACKENDS:
            backend = get_backend(backend_name)
            compiled = backend.compile(artifact, BackendOptions())
            sessions[(name, backend_name)] = backend.load(compiled, BackendOptions())
    timing = TimingOptions(warmup=10, iterations=iterations, max_seconds=60)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            samples[key].append(time_session(session.run, x[:1], 1, timing).p50_ms)
    result: dict[str, dict[str, float]] = {}
    for (name, backend_name), values in samples.items():
        result.setdefault(name, {})[backend_name] = statistics.median(values)
    return result


def fidelity(artifact: Artifact, x: np.ndarray, reference: np.ndarray, labels) -> dict:
    session = get_backend("onnxruntime").load(artifact, BackendOptions())
    logits = np.concatenate([session.run(x[i : i + 16]) for i in range(0, len(x), 16)])
    stats = compare_to_baseline(logits, reference, labels)
    return {"agreement": stats.agreement, "mean_kl": stats.mean_kl, "top1": stats.top1, "top1_drop": stats.top1_drop}


def pytorch_reference(artifact: Artifact, x: np.ndarray) -> np.ndarray:
    session = get_backend("pytorch").load(artifact, BackendOptions())
    return np.concatenate([session.run(x[i : i + 16]) for i in range(0, len(x), 16)])
