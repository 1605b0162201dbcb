"""The only place that knows stage order: model -> artifact (cached) -> backends -> results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .backends import BackendOptions, get_backend
from .bench import TimingOptions
from .core import Artifact, BenchResult, EdgekitError, UsageError
from .data import EVEN_VIEWS, ODD_VIEWS, ImageSet, bundled_images, make_image_set, resolve_images
from .evaluation import BackendParity
from .export import ExportOptions, WeightsSource, export_model
from .judging import judge
from .staging import work_folder
from .telemetry import check_power_source
from .worker import WorkerOutput, make_job, spawn, write_views

BASELINE = "pytorch"
PARITY_VIEWS = 2  # views per bundled photo used for the export parity check

# (backend, stage, done, total) -> None
Progress = Callable[[str, str, Optional[int], Optional[int]], None]


def _no_progress(backend: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
    pass


@dataclass(frozen=True)
class ModelRequest:
    name: str
    weights_file: Optional[Path] = None
    random_init: bool = False
    input_size: Optional[int] = None  # export at another resolution than the model's own

    @property
    def weights_source(self) -> WeightsSource:
        if self.weights_file is not None:
            return WeightsSource("file", str(Path(self.weights_file).resolve()))
        return WeightsSource("random-init" if self.random_init else "pretrained")


@dataclass(frozen=True)
class ImageRequest:
    data_dir: Optional[Path] = None
    labels_file: Optional[Path] = None
    views_per_image: int = 16
    limit: Optional[int] = None
    view_offset: int = 0
    view_stride: int = 1
    seed: int = 0

    def resolve(self) -> ImageSet:
        return resolve_images(
            self.data_dir, self.labels_file, self.views_per_image, self.limit, self.view_offset, self.view_stride, self.seed
        )


def default_calibration(data_dir: Optional[Path] = None, labels_file: Optional[Path] = None, limit: int = 200, seed: int = 0) -> ImageRequest:
    """Bundled photos: their odd views (bench holds out the even ones). A folder: one
    centre crop per image, a seeded sample of at most ``limit`` files."""
    if data_dir is None:
        return ImageRequest(views_per_image=11, view_offset=ODD_VIEWS[0], view_stride=ODD_VIEWS[1])
    return ImageRequest(data_dir, labels_file, views_per_image=1, limit=limit, seed=seed)


HELD_OUT_EVALUATION = ImageRequest(views_per_image=11, view_offset=EVEN_VIEWS[0], view_stride=EVEN_VIEWS[1])


@dataclass(frozen=True)
class BenchRequest:
    backends: tuple[str, ...] = ("pytorch", "onnxruntime")
    options: BackendOptions = BackendOptions()
    timing: TimingOptions = TimingOptions()
    images: ImageRequest = ImageRequest()
    throughput_seconds: Optional[float] = None  # also time asynchronous throughput mode where a backend has one
    power: str = "auto"  # edgekit.telemetry source read during timing: auto, tegrastats, nvml, rapl, off


@dataclass(frozen=True)
class BenchRun:
    artifact: Artifact
    images: ImageSet
    results: tuple[BenchResult, ...]
    parity: tuple[BackendParity, ...] = ()
    image_summary: Optional[dict[str, Any]] = None  # evaluated, skipped (with reasons): the results document's "images"

    @property
    def failed(self) -> tuple[BenchResult, ...]:
        return tuple(r for r in self.results if r.error)

    @property
    def evaluated(self) -> int:
        return int((self.image_summary or {}).get("images_evaluated", len(self.images)))


def build_artifact(
    model: ModelRequest,
    export_options: ExportOptions = ExportOptions(),
    root: Path = Path("exported"),
    progress: Progress = _no_progress,
) -> tuple[Artifact, bool]:
    from .models import load_model

    progress("export", f"loading {model.name}", None, None)
    loaded = load_model(model.name, weights_file=model.weights_file, random_init=model.random_init)
    if model.input_size is not None:
        loaded = loaded.at_input_size(model.input_size)
    parity_images = make_image_set(bundled_images(), PARITY_VIEWS, "bundled photos (parity)")
    return export_model(
        loaded,
        model.weights_source,
        parity_images,
        export_options,
        root,
        progress=lambda message: progress("export", message, None, None),
    )


def run_bench(artifact: Artifact, request: BenchRequest, progress: Progress = _no_progress) -> BenchRun:
    """Run every requested backend (each in its own process) and compare with PyTorch."""
    for name in request.backends:
        get_backend(name).check_available()  # unknown names and missing runtimes fail before any work starts
    shape = artifact.manifest["input"]["shape"]
    if isinstance(shape[0], int) and any(b != shape[0] for b in request.timing.batch_sizes):
        raise UsageError(f"artifact {artifact.key} has a static batch of {shape[0]}; export without --static")
    has_original = artifact.manifest["model"].get("weights_source") is not None
    if not has_original and BASELINE in request.backends:
        raise UsageError(f"{artifact.path} was imported from an ONNX file: there is no PyTorch original to run")
    check_power_source(request.power)  # an explicitly named source that cannot be read fails before any work
    images = request.images.resolve()
    with work_folder("bench") as tmp:
        views = write_views(images, Path(tmp))
        outputs: dict[str, WorkerOutput] = {}
        errors: dict[str, str] = {}
        order = ([BASELINE] if has_original else []) + [b for b in request.backends if b != BASELINE]
        for name in order:
            try:
                outputs[name] = _run_worker(artifact, name, request, views, Path(tmp), name in request.backends, progress)
            except EdgekitError as e:  # the other backends still run, and this row says why it has no figures
                errors[name] = str(e)
                progress(name, f"failed: {e}", None, None)
        baseline = (BASELINE, outputs[BASELINE].logits) if BASELINE in outputs else None
        judged = judge(artifact, images, request.backends, outputs, errors, baseline)
    return BenchRun(artifact=artifact, images=images, results=judged.results, parity=judged.parity, image_summary=judged.images)


def _run_worker(
    artifact: Artifact,
    backend: str,
    request: BenchRequest,
    views: Path,
    tmp: Path,
    timed: bool,
    progress: Progress,
) -> WorkerOutput:
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
    if artifact.manifest["model"].get("weights_source") is None:
        raise UsageError(f"{artifact.path} was imported from an ONNX file: there is no PyTorch original to run")
    request = BenchRequest(backends=(BASELINE,), options=BackendOptions(threads=threads))
    views = write_views(images, folder)
    return _run_worker(artifact, BASELINE, request, views, folder, False, progress)
