"""PyTorch eager: the baseline every other backend is compared against.

It rebuilds the exact module the artifact was exported from (same name, same weights),
so the comparison needs no pickled model.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

import numpy as np

from ..core import Artifact, UsageError
from .base import THREADS, BackendBase, BackendOptions, SessionBase, require_module


class PyTorchSession(SessionBase):
    def __init__(self, module, threads: Optional[int], device: str):
        import torch

        self._torch = torch
        self._module = module.to(device)
        self._device = device
        self.device = device
        self.precision = "fp32"
        self.providers = (f"torch {torch.__version__} eager ({device})",)
        self.threads = torch.get_num_threads()

    def profile(self, batch: np.ndarray, iterations: int, warmup: int):
        """The PyTorch profiler over ``iterations`` forward passes: every operator's own CPU
        time goes to the innermost module running it (each module's forward is a
        record_function range named after its path, whose own time is the Python around its
        operators); what the top-level forward runs itself is outside any module."""
        import time

        from ..profiling import OUTSIDE_OTHER, NodeTime, ProfiledRun

        torch = self._torch
        label = "edgekit.module:"
        handles, ranges = [], {}
        for name, module in self._module.named_modules():
            def enter(mod, args, name=name):
                ranges.setdefault(name, []).append(torch.profiler.record_function(label + name))
                ranges[name][-1].__enter__()

            def leave(mod, args, output, name=name):
                ranges[name].pop().__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        x = torch.from_numpy(batch).to(self._device)
        try:
            with torch.inference_mode():
                for _ in range(warmup):
                    self._module(x)
                walls = []
                with _native_stderr_quiet():  # Kineto prints its own start and stop lines to fd 2
                    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    prof.__enter__()
                try:
                    for _ in range(iterations):
                        started = time.perf_counter()
                        self._module(x)
                        walls.append((time.perf_counter() - started) * 1000.0)
                finally:
                    with _native_stderr_quiet():
                        prof.__exit__(None, None, None)
        finally:
            for handle in handles:
                handle.remove()
        # each module's own time: its range's duration less the ranges of the modules it
        # calls (ranges nest strictly), so every microsecond of a forward counts once
        ranges = sorted(
            ((e.time_range.start, e.time_range.end, e.name[len(label):]) for e in prof.events() if e.name.startswith(label)),
            key=lambda r: (r[0], -r[1]),
        )
        totals: dict[str, float] = {}
        open_ranges: list[list] = []  # [start, end, module, time spent in nested ranges]
        for start, end, module in [*ranges, (float("inf"), float("inf"), None)]:
            while open_ranges and open_ranges[-1][1] <= start:
                done = open_ranges.pop()
                own = (done[1] - done[0]) - done[3]
                totals[done[2]] = totals.get(done[2], 0.0) + own / 1000.0
                if open_ranges:
                    open_ranges[-1][3] += done[1] - done[0]
            if module is not None:
                open_ranges.append([start, end, module, 0.0])
        modules = dict(self._module.named_modules())
        nodes = tuple(
            NodeTime(module or "(top-level forward)", type(modules.get(module, self._module)).__name__, ms / iterations, "f32", (), module=module or OUTSIDE_OTHER)
            for module, ms in totals.items()
        )
        return ProfiledRun(nodes, float(np.median(walls)))

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._module(torch.from_numpy(batch).to(self._device))
        return out.float().cpu().numpy()


def _onednn_version(torch) -> Optional[str]:
    """oneDNN's version from torch's build configuration ('Intel(R) MKL-DNN v3.12.0 (...)')."""
    import re

    found = re.search(r"(?:MKL-DNN|oneDNN)\s+v?([\d.]+)", torch.__config__.show())
    return found.group(1) if found else None


@contextlib.contextmanager
def _native_stderr_quiet():
    """File descriptor 2 pointed at /dev/null for a moment: what native code writes there
    (not Python's warnings or exceptions) is dropped."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class PyTorchBackend(BackendBase):
    name = "pytorch"
    pip_extra = None
    options = (THREADS,)
    in_default_run = True
    distributions = ("torch",)
    takes_bare_device = False  # the baseline stays on the CPU unless --device pytorch:cuda names it

    def devices(self) -> tuple[str, ...]:
        import torch

        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def device_hint(self, have: tuple[str, ...]) -> str:
        return "" if "cuda" in have else "cuda needs a CUDA build of torch and an NVIDIA GPU"

    def uses_nvidia_gpu(self, options: BackendOptions) -> bool:
        return self.device_for(options) == "cuda"

    def check_available(self) -> None:
        require_module("torch", self.name, None)

    def machine_facts(self) -> dict[str, Any]:
        """The CUDA build and GPUs torch sees, its CPU kernels (oneDNN, the instruction set
        its ATen kernels picked) and its thread pools, for `edgekit doctor`."""
        facts = super().machine_facts()
        if not facts["installed"]:
            return facts
        import torch

        cuda = torch.cuda.is_available()
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
        return {
            **facts,
            "cuda_build": torch.version.cuda,  # None: a CPU-only build
            "cuda_available": cuda,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "cudnn_build": torch.backends.cudnn.version() if torch.version.cuda and torch.backends.cudnn.is_available() else None,
            "cpu_capability": capability,  # ATen's CPU kernels: DEFAULT, AVX2, AVX512 (x86), SVE256 (ARM)...
            "mkldnn_available": torch.backends.mkldnn.is_available(),
            "onednn_version": _onednn_version(torch) if torch.backends.mkldnn.is_available() else None,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        }

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        return artifact

    def load(self, artifact: Artifact, options: BackendOptions) -> PyTorchSession:
        import torch

        from ..models import load_from_manifest

        device = self.device_for(options)
        problem = self.device_problem(device)
        if problem:
            raise UsageError(f"--device pytorch:{device}: {problem}")
        if options.threads:
            torch.set_num_threads(options.threads)
        loaded = load_from_manifest(artifact.manifest)
        return PyTorchSession(loaded.module, options.threads, device)

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int):
        """Per module: the PyTorch profiler (PyTorchSession.profile)."""
        return self.load(artifact, options).profile(batch, iterations, warmup)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        return None  # the eager model is not a deployable file
