"""edgekit: take pretrained image classifiers to edge hardware, and measure what it cost.

    import edgekit

    report = edgekit.bench("mobilenet_v3_small", backend="onnxruntime", iterations=20)
    print(report.row("onnxruntime").latency[0].p50_ms)
    edgekit.load_results(report.write("results.json"))  # what `edgekit report` reads

The functions (export, bench, profile, load_results) take the options of the command of
the same name, spelled as the flag (``backend=``, ``dw_layer=``) or as the recipe key;
see docs/python-api.md. Importing the package imports no framework (torch, onnx,
runtimes): the functions load what they need when called.
"""

__version__ = "0.1.0"

from .core import (  # noqa: E402
    AccuracyStats,
    Artifact,
    BenchResult,
    DataError,
    EdgekitError,
    LatencyStats,
    ModelSpec,
    Preprocessing,
    UsageError,
)

# name -> the module it comes from, imported on first use: `import edgekit` stays light,
# and bundles (which copy what edgekit imports) never carry the API (export, plan, steps)
_LAZY = {
    "export": "edgekit.api",
    "bench": "edgekit.api",
    "profile": "edgekit.api",
    "load_results": "edgekit.api",
    "BenchReport": "edgekit.api",
    "ArtifactProfile": "edgekit.profiling",
}
API = ("export", "bench", "profile", "load_results")  # kept for callers of the old tuple


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # once loaded, an ordinary attribute
        return value
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "export",
    "bench",
    "profile",
    "load_results",
    "BenchReport",
    "ArtifactProfile",
    "AccuracyStats",
    "Artifact",
    "BenchResult",
    "DataError",
    "EdgekitError",
    "LatencyStats",
    "ModelSpec",
    "Preprocessing",
    "UsageError",
]
