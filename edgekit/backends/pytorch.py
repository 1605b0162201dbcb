"""PyTorch eager: the baseline every other backend is compared against.

It rebuilds the exact module the artifact was exported from (same name, same weights),
so the comparison needs no pickled model.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..core import Artifact, UsageError
from .base import BackendBase, BackendOptions, require_module


class PyTorchSession:
    def __init__(self, module, threads: Optional[int], device: str):
        import torch

        self._torch = torch
        self._module = module.to(device)
        self._device = device
        self.precision = "fp32"
        self.providers = (f"torch {torch.__version__} eager ({device})",)
        self.threads = torch.get_num_threads()

    def profile(self, batch: np.ndarray, iterations: int, warmup: int) -> list:
        """The PyTorch profiler over ``iterations`` forward passes: every operator's own CPU
        time goes to the innermost module running it (each module's forward is a
        record_function range named after its path, whose own time is the Python around its
        operators); what the top-level forward runs itself is outside any module."""
        import os

        from ..profiling import OUTSIDE_OTHER, NodeTime

        os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own start/stop lines on stderr
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
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(iterations):
                        self._module(x)
        finally:
            for handle in handles:
                handle.remove()
        totals: dict[str, float] = {}
        for event in prof.events():  # self times: each microsecond counted once
            owner = event
            while owner is not None and not owner.name.startswith(label):
                owner = owner.cpu_parent
            module = owner.name[len(label):] if owner is not None else ""
            totals[module] = totals.get(module, 0.0) + event.self_cpu_time_total / 1000.0
        modules = dict(self._module.named_modules())
        return [
            NodeTime(module or "(top-level forward)", type(modules.get(module, self._module)).__name__, ms / iterations, "f32", (), module=module or OUTSIDE_OTHER)
            for module, ms in totals.items()
        ]

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._module(torch.from_numpy(batch).to(self._device))
        return out.float().cpu().numpy()


class PyTorchBackend(BackendBase):
    name = "pytorch"
    pip_extra = None
    distributions = ("torch",)

    def uses_nvidia_gpu(self, options: BackendOptions) -> bool:
        return str(options.device).lower().startswith("cuda")

    def check_available(self) -> None:
        require_module("torch", self.name, None)

    def compile(self, artifact: Artifact, options: BackendOptions) -> Artifact:
        return artifact

    def load(self, artifact: Artifact, options: BackendOptions) -> PyTorchSession:
        import torch

        from ..models import load_from_manifest

        if options.device not in ("cpu", "cuda"):
            raise UsageError(f"unknown device {options.device!r} for pytorch; use cpu or cuda")
        if options.threads:
            torch.set_num_threads(options.threads)
        loaded = load_from_manifest(artifact.manifest)
        return PyTorchSession(loaded.module, options.threads, options.device)

    def profile(self, artifact: Artifact, options: BackendOptions, batch: np.ndarray, iterations: int, warmup: int) -> list:
        """Per module: the PyTorch profiler (PyTorchSession.profile)."""
        return self.load(artifact, options).profile(batch, iterations, warmup)

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        return None  # the eager model is not a deployable file
