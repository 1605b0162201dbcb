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

__all__ = [
    "__version__",
    "AccuracyStats",
    "Artifact",
    "BenchResult",
    "EdgekitError",
    "LatencyStats",
    "ModelSpec",
    "Preprocessing",
]
