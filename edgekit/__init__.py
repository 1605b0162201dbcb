"""edgekit: take pretrained image classifiers to edge hardware, and measure what it cost.

Importing the package imports no framework (torch, onnx, runtimes): those load inside
the functions that need them.
"""

__version__ = "0.1.0"

from .core import (  # noqa: E402
    AccuracyStats,
    Artifact,
    BenchResult,
    EdgekitError,
    LatencyStats,
    ModelSpec,
    Preprocessing,
)

API = ("export", "bench", "load_results")  # edgekit.api, loaded on first use


def __getattr__(name: str):
    if name in API:
        import importlib

        # by name, not `from . import api`: bundles copy what edgekit imports, and the API
        # (export, plan, steps) is not part of the torch-free runner
        return getattr(importlib.import_module("edgekit.api"), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


__all__ = [
    "__version__",
    *API,
    "AccuracyStats",
    "Artifact",
    "BenchResult",
    "EdgekitError",
    "LatencyStats",
    "ModelSpec",
    "Preprocessing",
]
