"""trtexec, TensorRT's own benchmark, run on an engine edgekit built: the yardstick that
edgekit's TensorRT timings are checked against (benchmarks/tensorrt_gpu.py).

UNVERIFIED ON HARDWARE: the parser is tested on a performance summary trtexec printed
(tests/data/trtexec); running trtexec needs an NVIDIA GPU, which the machine this was
written on did not have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..core import BackendUnavailableError, EdgekitError

# JetPack installs trtexec here, outside PATH
KNOWN_LOCATIONS = (Path("/usr/src/tensorrt/bin/trtexec"),)

_METRIC = re.compile(r"\]?\s*(?P<name>Latency|Enqueue Time|H2D Latency|GPU Compute Time|D2H Latency): (?P<values>.*)$")
_VALUE = re.compile(r"(?P<key>min|max|mean|median|percentile\((?P<pct>[\d.]+)%\))\s*=?\s*(?P<value>[\d.eE+-]+)\s*ms")
_THROUGHPUT = re.compile(r"Throughput: (?P<qps>[\d.eE+-]+) qps")


@dataclass(frozen=True)
class TrtexecSummary:
    """trtexec's performance summary; times in ms, keyed min/max/mean/median/p90/p95/p99."""

    throughput_qps: Optional[float]
    metrics: dict[str, dict[str, float]]  # "GPU Compute Time" -> {"median": ...}

    def median_ms(self, metric: str = "GPU Compute Time") -> float:
        try:
            return self.metrics[metric]["median"]
        except KeyError:
            raise EdgekitError(f"trtexec printed no median for {metric!r}") from None


def parse_summary(text: str) -> TrtexecSummary:
    """Reads the '=== Performance summary ===' lines of trtexec's output."""
    metrics: dict[str, dict[str, float]] = {}
    throughput = None
    for line in text.splitlines():
        if (m := _THROUGHPUT.search(line)) is not None:
            throughput = float(m.group("qps"))
        elif (m := _METRIC.search(line)) is not None:
            values = {}
            for v in _VALUE.finditer(m.group("values")):
                key = f"p{float(v.group('pct')):g}" if v.group("pct") else v.group("key")
                values[key] = float(v.group("value"))
            if values:
                metrics[m.group("name")] = values
    if not metrics:
        raise EdgekitError("no performance summary in trtexec's output")
    return TrtexecSummary(throughput, metrics)


def find_trtexec() -> Optional[Path]:
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    return next((p for p in KNOWN_LOCATIONS if p.is_file()), None)


def run_trtexec(engine: Path, input_name: str, shape: Sequence[int], seconds: float = 10.0, cuda_graph: bool = False) -> TrtexecSummary:
    """Time ``engine`` at ``shape`` with trtexec (spin-wait, no host<->device copies, so its
    GPU Compute Time matches edgekit's compute-only figure)."""
    binary = find_trtexec()
    if binary is None:
        raise BackendUnavailableError("trtexec not found (it ships with TensorRT's tar/deb packages, not the pip wheel)")
    command = [
        str(binary), f"--loadEngine={engine}", f"--shapes={input_name}:{'x'.join(map(str, shape))}",
        f"--duration={seconds:g}", "--warmUp=500", "--useSpinWait", "--noDataTransfers",
    ]
    if cuda_graph:
        command.append("--useCudaGraph")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise EdgekitError(f"trtexec failed on {engine.name}: {tail[0]}")
    return parse_summary(done.stdout)
