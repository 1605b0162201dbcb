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

    def size_mb(self, artifact: Artifact) -> Optional[float]:
        return None  # the eager model is not a deployable file
