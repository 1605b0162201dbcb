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
    from .plan import bench_cell, launcher_for
    from .session import bench_request

    settings, cell = _requested_cell(target, backends, variant, options)
    launcher = launcher_for(settings)
    launcher.check(cell.backends)  # missing runtimes, an unreachable device: before any work
    bench_request(settings).images.resolve()  # a bad image folder too
    return bench_cell(cell, launcher, progress, announce)


def _requested_cell(target: PathLike, backends: Optional[Sequence[str]], variant: Optional[str], options: dict[str, Any]):
    """(settings, the one cell) that `bench` and `profile` run, checked before any work."""
    from .options import check_applicable
    from .plan import command_cell
    from .steps import parse_variant

    if backends is not None:
        options["backends"] = tuple(backends)
    settings = _settings(options)
    cell = command_cell(str(target), settings)
    if variant is not None:
        parse_variant(variant)
        cell = dataclasses.replace(cell, variant=variant)
    check_applicable(settings, cell.backends)
    return settings, cell


def profile(
    target: PathLike,
    backends: Optional[Sequence[str]] = None,
    *,
    variant: Optional[str] = None,
    accuracy: bool = True,
    progress: Callable[[str, Optional[int], Optional[int]], None] = lambda stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
):
    """Build ``target`` (as ``export``) and time it per layer on ``backends`` with each
    runtime's own profiler, joined to the PyTorch model's modules (edgekit.profiling). For
    an INT8 artifact, each module's time in the FP32 parent on the same backend and, with
    ``accuracy``, its KL vs FP32 when it alone is INT8 (on the calibration images) come
    beside it. Returns an ``ArtifactProfile``; ``.to_dict()`` is the results file's
    ``profile`` section."""
    from .core import numeric_format
    from .data import load_all
    from .plan import build
    from .profiling import parent_of, profile_artifact
    from .session import backend_options, bench_request, evaluation_set

    settings, cell = _requested_cell(target, backends, variant, options)
    if len(settings["batch"]) != 1:
        raise UsageError("profile one batch size at a time (--batch N)")
    from .backends import get_backend

    for name in cell.backends:
        get_backend(name).check_available()
    request = bench_request(settings)
    request.images.resolve()  # a bad image folder fails before any work
    artifact, _ = build(cell, progress, announce)
    images = evaluation_set(artifact, request.images)
    timing_views = dataclasses.replace(images, views=images.views[:16])  # bench times the first 16 readable views too
    x, _ = load_all(timing_views, artifact.preprocessing)
    kl, kl_images, kl_note = {}, 0, ""
    if numeric_format(artifact.manifest) == "int8":
        parent = parent_of(artifact)
        calibration = _calibration_images(artifact, settings) if accuracy and parent is not None else None
        if calibration is not None:
            kl, kl_images = _kl_by_module(artifact, parent, calibration, progress), len(calibration)
        else:
            kl_note = (
                "skipped (--no-accuracy)" if not accuracy else "its FP32 parent artifact is not on disk" if parent is None
                else "the calibration images it was made with were not given (pass the same --calib and --calib-limit)"
            )
    return profile_artifact(
        artifact, cell.backends, backend_options(settings), x, settings["batch"][0], settings["iterations"], settings["warmup"],
        kl, kl_images, kl_note, progress,
    )


def _kl_by_module(artifact: Artifact, parent: Artifact, x, progress) -> dict[str, float]:
    """Per module: the model's KL vs FP32 on ``x`` when that module alone is INT8."""
    import onnx

    from .module_names import module_path
    from .transforms.qdq_graph import run_logits
    from .transforms.sensitivity import kl_if_only_quantized

    int8_model, fp32_model = onnx.load(str(artifact.onnx_path)), onnx.load(str(parent.onnx_path))
    reference = run_logits(fp32_model, x, optimize=True)
    return kl_if_only_quantized(int8_model, fp32_model, x, reference, progress, group=module_path)


def _calibration_images(artifact: Artifact, settings):
    """The calibration images an INT8 artifact was made with (the first 32), or None when
    the settings name another set than its manifest records."""
    from .data import load_all
    from .steps.int8 import calibration_images
    from .steps.lineage import calibration_identity

    recorded = next((s.get("calibration") for s in reversed(artifact.manifest.get("steps", [])) if s.get("step") == "quantize"), None)
    image_set = calibration_images(settings).resolve(artifact.classes)
    if recorded is None or calibration_identity(image_set, artifact.manifest["preprocessing"])["files_hash"] != recorded.get("files_hash"):
        return None
    x, _ = load_all(dataclasses.replace(image_set, views=image_set.views[:PROFILE_KL_IMAGES]), artifact.preprocessing)
    return x


PROFILE_KL_IMAGES = 32  # calibration images each module's INT8 KL is measured on


def load_results(path: PathLike) -> dict[str, Any]:
    """A results file, validated (one-line DataError naming the file and the bad field)."""
    from .results.document import load_results_document

    if not str(path):
        raise UsageError("name a results file")
    return load_results_document(Path(path))
