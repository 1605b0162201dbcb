"""One bench session: every backend in a worker process of its own over the same views,
joined on view identity and judged against a baseline.

The same session runs for `edgekit bench` and recipes (the baseline is the PyTorch
original, run as one more worker), inside a bundle on a device (the baseline is the
logits the bundle carries), and so for remote runs, which run a bundle over ssh. A
backend that fails becomes a row that says why; the others are still measured.

Torch-free: the on-device runner imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .backends import BackendOptions
from .backends.base import BASELINE_BACKEND, THREADS, check_devices, get_backend, parse_devices
from .timing import TimingOptions
from .core import Artifact, BenchResult, EdgekitError, UsageError, imagenet_class_set
from .data import HELD_OUT_EVALUATION, ImageRequest, ImageSet, ImageSettings
from .evaluation import BackendParity, LogitsFile
from .judging import judge
from .options import Settings, backend_values, declared
from .progress import BenchProgress
from .files import work_folder
from .worker import WorkerOutput, make_job, spawn, write_views

BASELINE = BASELINE_BACKEND

# (backend, stage, done, total) -> None


def _no_progress(backend: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
    pass


@dataclass(frozen=True)
class BenchRequest:
    backends: tuple[str, ...] = ()
    options: BackendOptions = BackendOptions()
    timing: TimingOptions = TimingOptions()
    images: ImageRequest = HELD_OUT_EVALUATION
    power: str = "auto"  # edgekit.telemetry source read during timing: auto, tegrastats, nvml, rapl, off


@dataclass(frozen=True)
class BenchSettings:
    """The bench group's options that are not timing's (TimingOptions) or a backend's."""

    backends: tuple[str, ...] = declared("backends").field(convert=tuple)
    device: Optional[str] = declared("device").field()
    power: str = declared("power").field()
    batch_sizes: tuple[int, ...] = declared("batch").field(convert=tuple)
    threads: Optional[int] = THREADS.field()  # declared by the backends that honour it; every session reports it


def backend_options(settings: Settings, backends: Sequence[str] = ()) -> BackendOptions:
    """The backends' options from ``settings``; each of ``backends`` parses its own here, so
    a bad value (a workspace size, say) is refused before any work."""
    bench = settings.bind(BenchSettings)
    options = BackendOptions(threads=bench.threads, device=bench.device or "", batch_sizes=bench.batch_sizes, own=backend_values(settings))
    for name in backends:
        backend = get_backend(name)
        if backend.options_type is not None:
            backend.own_options(options)
    return options


def timing_options(settings: Settings) -> TimingOptions:
    return settings.bind(TimingOptions)


def bench_request(settings: Settings, backends: Optional[Sequence[str]] = None) -> BenchRequest:
    """What `bench`, recipes and the device runner time and evaluate, from one Settings."""
    bench = settings.bind(BenchSettings)
    parse_devices(bench.device)  # its form, here or on a device (what a machine has: check_devices)
    chosen = tuple(backends if backends is not None else bench.backends)
    return BenchRequest(
        backends=chosen,
        options=backend_options(settings, chosen),
        timing=timing_options(settings),
        images=settings.bind(ImageSettings).evaluation(),
        power=bench.power,
    )


@dataclass(frozen=True)
class BenchRun:
    artifact: Artifact
    images: ImageSet
    results: tuple[BenchResult, ...]
    parity: tuple[BackendParity, ...] = ()
    image_summary: Optional[dict[str, Any]] = None  # evaluated, skipped (with reasons): the results document's "images"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # document sections of a run elsewhere (bundle, remote command)
    machine: Optional[dict[str, Any]] = None  # where it ran, when not described by the rows

    @property
    def failed(self) -> tuple[BenchResult, ...]:
        return tuple(r for r in self.results if r.error)

    @property
    def evaluated(self) -> int:
        return int((self.image_summary or {}).get("images_evaluated", len(self.images)))


def check_request(artifact: Artifact, request: BenchRequest) -> None:
    """Everything that can be refused before any work starts."""
    from .backends import get_backend
    from .telemetry import check_power_source

    for name in request.backends:
        get_backend(name).check_available()  # unknown names and missing runtimes name their pip extra
    check_devices(request.options.device, request.backends, named_must_run=False)  # what this machine has
    for name in request.backends:
        get_backend(name).check_artifact(artifact, request.options)  # e.g. a --precision the graph does not have
    shape = artifact.manifest["input"]["shape"]
    if isinstance(shape[0], int) and any(b != shape[0] for b in request.timing.batch_sizes):
        raise UsageError(f"artifact {artifact.key} has a static batch of {shape[0]}; export without --static to time other batch sizes")
    if not has_original(artifact) and BASELINE in request.backends:
        raise UsageError(f"{artifact.path} was imported from an ONNX file: there is no PyTorch original to run")
    check_power_source(request.power)  # an explicitly named source that cannot be read fails here


def has_original(artifact: Artifact) -> bool:
    return artifact.manifest["model"].get("weights_source") is not None


def run_session(
    artifact: Artifact,
    images: ImageSet,
    request: BenchRequest,
    baseline: Optional[LogitsFile] = None,
    progress: BenchProgress = _no_progress,
    run_original: bool = True,
    **environment: Any,
) -> BenchRun:
    """Every backend of ``request`` on ``images``. The baseline is ``baseline`` (logits
    already computed, e.g. carried by a bundle), else the PyTorch original run as a worker
    where the artifact has one and ``run_original`` allows it, else none (accuracy against
    labels only)."""
    with work_folder("bench") as tmp:
        views = write_views(images, tmp)
        outputs: dict[str, WorkerOutput] = {}
        errors: dict[str, str] = {}
        run_baseline = baseline is None and run_original and has_original(artifact)
        order = ([BASELINE] if run_baseline else []) + [b for b in request.backends if b != BASELINE]
        for name in order:
            try:
                outputs[name] = _run_worker(artifact, name, request, views, tmp, timed=name in request.backends, progress=progress)
            except EdgekitError as e:  # the other backends still run, and this row says why it has no figures
                errors[name] = str(e)
                progress(name, f"failed: {e}", None, None)
        reference = baseline if baseline is not None else (outputs[BASELINE].logits if BASELINE in outputs else None)
        judged = judge(artifact, images, request.backends, outputs, errors, (BASELINE, reference) if reference is not None else None, **environment)
    return BenchRun(artifact=artifact, images=images, results=judged.results, parity=judged.parity, image_summary=judged.images)


def run_bench(artifact: Artifact, request: BenchRequest, progress: BenchProgress = _no_progress) -> BenchRun:
    """Check the request, list the images, run the session here."""
    check_request(artifact, request)
    return run_session(artifact, evaluation_set(artifact, request.images), request, progress=progress)


def evaluation_set(artifact: Artifact, images: ImageRequest) -> ImageSet:
    """The evaluation images, labelled in the artifact's classes; user data that names
    another number of classes than the model has outputs is refused here."""
    from .classes import check_labels_fit

    image_set = images.resolve(artifact.classes)
    if images.data_dir is not None and image_set.labelled:
        check_labels_fit(image_set.label_space or imagenet_class_set(), artifact.classes.count, artifact.model_name)
    return image_set


def _run_worker(artifact: Artifact, backend: str, request: BenchRequest, views: Path, tmp: Path, timed: bool, progress: BenchProgress) -> WorkerOutput:
    # the untimed PyTorch reference always runs on the CPU, whatever device is benchmarked
    options = dataclasses.replace(request.options, batch_sizes=request.timing.batch_sizes) if timed else BackendOptions(threads=request.options.threads)
    job = make_job(
        backend, artifact, options, views, tmp,
        timing=request.timing if timed else None, power=request.power,
    )
    return spawn(job, tmp, lambda stage, done, total: progress(backend, stage, done, total))


def reference_logits(artifact: Artifact, images: ImageSet, folder: Path, threads: Optional[int] = None, progress: BenchProgress = _no_progress) -> WorkerOutput:
    """The PyTorch original's logits on ``images`` (untimed, CPU, in a process of its own),
    written under ``folder``: the baseline a bundle carries to a device without PyTorch."""
    if not has_original(artifact):
        raise UsageError(f"{artifact.path} was imported from an ONNX file: there is no PyTorch original to run")
    request = BenchRequest(backends=(BASELINE,), options=BackendOptions(threads=threads))
    views = write_views(images, folder)
    return _run_worker(artifact, BASELINE, request, views, folder, False, progress)
