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
from typing import Any, Callable, Optional, Sequence

from .backends import BackendOptions
from .backends.base import BASELINE_BACKEND, check_devices, parse_devices, parse_workspace
from .timing import TimingOptions
from .core import Artifact, BenchResult, EdgekitError, UsageError, imagenet_class_set
from .data import HELD_OUT_EVALUATION, ImageRequest, ImageSet, evaluation_images
from .evaluation import BackendParity, LogitsFile
from .judging import judge
from .options import BY_KEY, Settings
from .files import work_folder
from .worker import WorkerOutput, make_job, spawn, write_views

BASELINE = BASELINE_BACKEND

# (backend, stage, done, total) -> None
Progress = Callable[[str, str, Optional[int], Optional[int]], None]


def _no_progress(backend: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
    pass


@dataclass(frozen=True)
class BenchRequest:
    backends: tuple[str, ...] = BY_KEY["backends"].default
    options: BackendOptions = BackendOptions()
    timing: TimingOptions = TimingOptions()
    images: ImageRequest = HELD_OUT_EVALUATION
    throughput_seconds: Optional[float] = None  # also time asynchronous throughput mode where a backend has one
    power: str = "auto"  # edgekit.telemetry source read during timing: auto, tegrastats, nvml, rapl, off


def backend_options(settings: Settings) -> BackendOptions:
    return BackendOptions(
        threads=settings["threads"], device=settings["device"] or "", precision=settings["precision"],
        compress_fp16=settings["ov_fp16_weights"], batch_sizes=tuple(settings["batch"]),
        workspace_bytes=parse_workspace(settings["trt_workspace"]) if settings["trt_workspace"] else None,
        cuda_graph=settings["cuda_graph"],
    )


def timing_options(settings: Settings) -> TimingOptions:
    return TimingOptions(
        batch_sizes=tuple(settings["batch"]), warmup=settings["warmup"], iterations=settings["iterations"],
        max_seconds=float(settings["max_seconds"]), repeats=settings["repeats"],
    )


def bench_request(settings: Settings, backends: Optional[Sequence[str]] = None) -> BenchRequest:
    """What `bench`, recipes and the device runner time and evaluate, from one Settings."""
    parse_devices(settings["device"])  # its form, here or on a device (what a machine has: check_devices)
    return BenchRequest(
        backends=tuple(backends if backends is not None else settings["backends"]),
        options=backend_options(settings),
        timing=timing_options(settings),
        images=evaluation_images(settings["data"], settings["labels"], settings["views"], settings["limit"], settings["seed"], settings["val_split"]),
        throughput_seconds=settings["throughput"],
        power=settings["power"],
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
    progress: Progress = _no_progress,
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


def run_bench(artifact: Artifact, request: BenchRequest, progress: Progress = _no_progress) -> BenchRun:
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


def _run_worker(artifact: Artifact, backend: str, request: BenchRequest, views: Path, tmp: Path, timed: bool, progress: Progress) -> WorkerOutput:
    # the untimed PyTorch reference always runs on the CPU, whatever device is benchmarked
    options = dataclasses.replace(request.options, batch_sizes=request.timing.batch_sizes) if timed else BackendOptions(threads=request.options.threads)
    job = make_job(
        backend, artifact, options, views, tmp,
        timing=request.timing if timed else None, throughput_seconds=request.throughput_seconds, power=request.power,
    )
    return spawn(job, tmp, lambda stage, done, total: progress(backend, stage, done, total))


def reference_logits(artifact: Artifact, images: ImageSet, folder: Path, threads: Optional[int] = None, progress: Progress = _no_progress) -> WorkerOutput:
    """The PyTorch original's logits on ``images`` (untimed, CPU, in a process of its own),
    written under ``folder``: the baseline a bundle carries to a device without PyTorch."""
    if not has_original(artifact):
        raise UsageError(f"{artifact.path} was imported from an ONNX file: there is no PyTorch original to run")
    request = BenchRequest(backends=(BASELINE,), options=BackendOptions(threads=threads))
    views = write_views(images, folder)
    return _run_worker(artifact, BASELINE, request, views, folder, False, progress)
