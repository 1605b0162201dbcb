"""The Python API: what the command line does, as three functions (the CLI calls them too).

    import edgekit

    artifact = edgekit.export("efficientnet_lite0", variant="int8", calib="photos/")
    run = edgekit.bench(artifact.path, backends=["pytorch", "onnxruntime"], data="val/", views=1)
    for row in run.results:
        print(row.backend, row.latency[0].p50_ms, row.accuracy.top1, row.accuracy.top1_ci)
    document = edgekit.load_results("exported/efficientnet_lite0/<key>/results.json")

Keyword options are the keys of edgekit.options (the same names, types, ranges and
defaults as the command-line flags: ``calib_method="minmax"``, ``prune=0.3``,
``iterations=50``...); an unknown key is an error naming it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .core import Artifact, UsageError
from .options import Settings

PathLike = Union[str, Path]
Announce = Callable[[Artifact, bool], None]


def _settings(options: dict[str, Any]) -> Settings:
    return Settings(options)


def export(
    model: PathLike,
    variant: Optional[str] = None,
    *,
    progress: Callable[[str, Optional[int], Optional[int]], None] = lambda stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
) -> Artifact:
    """Export ``model`` (a model name, an artifact folder or an ONNX file) and build
    ``variant`` from it (``fp32``, ``int8``, ``pruned+int8``...; default: what the options
    ask for, as the flags would: ``int8=True``, ``prune=0.3``...). Artifacts are
    content-addressed: an identical request returns the artifact already built. The
    manifest's ``deploy`` section names the file each runtime should load (for INT8, the
    CPU forms made beside model.onnx; see edgekit.deploy)."""
    from .deploy import record_deploy_files
    from .plan import build, command_cell
    from .steps import parse_variant

    cell = command_cell(str(model), _settings(options), backends=())
    if variant is not None:
        parse_variant(variant)
        cell = dataclasses.replace(cell, variant=variant)
    artifact, _ = build(cell, progress, announce)
    return record_deploy_files(artifact)


def bench(
    target: PathLike,
    backends: Optional[Sequence[str]] = None,
    *,
    variant: Optional[str] = None,
    progress: Callable[[str, str, Optional[int], Optional[int]], None] = lambda label, stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
):
    """Build ``target`` (as ``export``) and benchmark it on ``backends`` (default pytorch and
    onnxruntime) here, or on ``remote="user@host"`` over ssh. Returns the cell's run
    (``.artifact``, ``.run.results``, ``.run.parity``, ``.run.image_summary``); a backend
    that failed is a row with its ``error``, never an exception."""
    from .plan import bench_cell, command_cell, launcher_for
    from .session import bench_request
    from .steps import parse_variant

    from .options import check_applicable

    if backends is not None:
        options["backends"] = tuple(backends)
    settings = _settings(options)
    cell = command_cell(str(target), settings)
    if variant is not None:
        parse_variant(variant)
        cell = dataclasses.replace(cell, variant=variant)
    check_applicable(settings, cell.backends)
    launcher = launcher_for(settings)
    launcher.check(cell.backends)  # missing runtimes, an unreachable device: before any work
    bench_request(settings).images.resolve()  # a bad image folder too
    return bench_cell(cell, launcher, progress, announce)


def load_results(path: PathLike) -> dict[str, Any]:
    """A results file, validated (one-line DataError naming the file and the bad field)."""
    from .results.document import load_results_document

    if not str(path):
        raise UsageError("name a results file")
    return load_results_document(Path(path))
