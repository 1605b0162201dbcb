"""The Python API: what the command line does, as functions (the CLI calls them too).

    import edgekit

    artifact = edgekit.export("efficientnet_lite0", int8=True, calib="photos/")
    report = edgekit.bench(artifact.path, backend=["pytorch", "onnxruntime"], data="val/", views=1)
    for row in report.rows:
        print(row.backend, row.latency[0].p50_ms, row.accuracy.top1, row.accuracy.top1_ci)
    path = report.write()  # results.json beside the artifact, as `edgekit bench` writes it
    document = edgekit.load_results(path)  # what `edgekit report` and `edgekit check` read

Keyword options are the options of the command of the same name (edgekit.options: the
same types, ranges and defaults as its flags), spelled as the flag (``backend=``,
``dw_layer=``, ``ft_freeze_backbone=``, ``calib_method="minmax"``...) or as the recipe key
(``backends=``, ``dw_layers=``, ``ft_freeze=``). A value the flag would refuse, or an
unknown name, is a one-line ``edgekit.core.UsageError``. See docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

from .core import Artifact, BenchResult, UsageError
from .options import Option, Settings, keyword_options

if TYPE_CHECKING:
    from .evaluation import BackendParity
    from .plan import Cell, CellRun
    from .profiling import ArtifactProfile

PathLike = Union[str, Path]
Announce = Callable[[Artifact, bool], None]
BuildProgress = Callable[[str, Optional[int], Optional[int]], None]  # (stage, done, total)
BenchProgress = Callable[[str, str, Optional[int], Optional[int]], None]  # (label, stage, done, total)

# The commands whose options each function takes. `edgekit bundle` passes its own values
# (backends, batch, views...) through export, so export accepts them too.
COMMANDS_OF = {"export": ("export", "finetune", "bundle"), "bench": ("bench",), "profile": ("profile",)}


# --------------------------------------------------------------------------- keyword options


def _checked_value(option: Option, name: str, value: Any) -> None:
    """Raise UsageError when ``value`` is not what ``option``'s flag accepts. Python forms
    are taken as their flag's: a path for a text, one item for a list."""
    candidate = str(value) if isinstance(value, PurePath) else value
    if option.kind == "list":
        if isinstance(value, (str, int, PurePath)) and not isinstance(value, bool):
            candidate = [str(value) if isinstance(value, PurePath) else value]
        elif isinstance(value, (list, tuple)):
            candidate = [str(v) if isinstance(v, PurePath) else v for v in value]
    if not option.check(candidate):
        raise UsageError(f"{name} must be {option.describe()}, got {value!r}")


def _unknown(function: str, name: str, accepted: Mapping[str, Option]) -> UsageError:
    elsewhere = [f for f, commands in COMMANDS_OF.items() if f != function and name in keyword_options(commands)]
    if elsewhere:
        return UsageError(f"edgekit.{function} takes no option {name!r} (an option of {' and '.join('edgekit.' + f for f in elsewhere)})")
    close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
    return UsageError(f"unknown option {name!r} for edgekit.{function}" + (f"; did you mean {close[0]!r}?" if close else ""))


def _settings(function: str, given: Mapping[str, Any]) -> Settings:
    """Keyword arguments (flag names or keys; None: not given) -> Settings, every value
    checked against its declaration first."""
    accepted = keyword_options(COMMANDS_OF[function])
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for name, value in given.items():
        option = accepted.get(name)
        if option is None:
            raise _unknown(function, name, accepted)
        if value is None or (option.kind == "list" and isinstance(value, (list, tuple)) and not value):
            continue  # not given (what click passes for an option left out)
        if option.key in spelled:
            raise UsageError(f"{spelled[option.key]}= and {name}= are the same option ({option.flag}); give one")
        _checked_value(option, name, value)
        spelled[option.key] = name
        values[option.key] = value
    return Settings(values)


def _given(options: Mapping[str, Any], **explicit: Any) -> dict[str, Any]:
    """The function's explicit option parameters (None: not given) merged with ``**options``."""
    return {**{k: v for k, v in explicit.items() if v is not None}, **options}


def _python_call(function: str, target: Any, given: Mapping[str, Any]) -> str:
    """The call as the results document's ``command``: edgekit.bench('resnet18', iterations=10)."""
    shown = [repr(str(target))] + [f"{k}={str(v) if isinstance(v, PurePath) else v!r}" for k, v in given.items() if v not in (None, ())]
    return f"edgekit.{function}({', '.join(shown)})"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BenchReport:
    """What ``edgekit.bench`` measured: one row per backend (a failed backend is a row with
    its ``error``), the images they were judged on and where it ran.

    ``to_document()`` is the results document ``edgekit bench`` writes, and ``write()``
    writes it (readable by ``edgekit.load_results``, ``edgekit report`` and ``edgekit check``).
    """

    artifact: Artifact  # the artifact benched (built or reused)
    rows: tuple[BenchResult, ...]  # per backend: latency per batch size, accuracy vs PyTorch, memory, size
    images: dict[str, Any]  # the evaluation images: description, images_evaluated, skipped (the document's "images")
    machine: dict[str, Any]  # where it ran (host, CPU, runtime versions)
    evaluated: int  # images every backend was judged on
    parity: tuple["BackendParity", ...] = ()  # cross-backend agreement on the same images
    note: Optional[str] = None  # e.g. an INT8 budget not met, no PyTorch original
    remote: Optional[str] = None  # user@host when it ran over ssh
    command: Optional[str] = None  # what produced it, for the document
    reused: bool = True  # the artifact was already built
    extra: dict[str, Any] = field(default_factory=dict)  # document sections of a run elsewhere (bundle, remote command)

    @classmethod
    def from_cell_run(cls, run: "CellRun", remote: Optional[str] = None, command: Optional[str] = None) -> "BenchReport":
        bench_run = run.run
        rows = tuple(bench_run.results)
        return cls(
            run.artifact, rows, dict(bench_run.image_summary or {}), dict(bench_run.machine or (rows[0].environment if rows else {})),
            bench_run.evaluated, tuple(bench_run.parity), run.note, remote, command, run.reused, dict(bench_run.extra),
        )

    @property
    def failed(self) -> tuple[BenchResult, ...]:
        """The rows of backends that failed."""
        return tuple(r for r in self.rows if r.error)

    def row(self, backend: str) -> BenchResult:
        """The row of ``backend``."""
        for r in self.rows:
            if r.backend == backend:
                return r
        raise KeyError(f"no {backend} row (rows: {', '.join(r.backend for r in self.rows)})")

    @property
    def default_path(self) -> Path:
        """Where ``edgekit bench`` writes the document: results.json beside the artifact
        (results-<host>.json for a remote run)."""
        if self.remote:
            from .remote import RemoteHost

            return self.artifact.path / f"results-{RemoteHost.parse(self.remote).host}.json"
        return self.artifact.path / "results.json"

    def to_document(self, command: Optional[str] = None) -> dict[str, Any]:
        """The results document (format edgekit-results/1) as `edgekit bench` writes it."""
        from .results.document import results_document

        artifact = self.artifact
        return results_document(
            self.rows,
            parity=[dataclasses.asdict(p) for p in self.parity],
            artifact={"path": str(artifact.path), "key": artifact.key, "model": artifact.model_name, "parity": artifact.manifest.get("parity")},
            images=self.images,
            command=command or self.command,
            extra=self.extra,
            machine=self.machine,
        )

    def write(self, path: Optional[PathLike] = None, *, command: Optional[str] = None) -> Path:
        """Write the results document atomically to ``path`` (default: ``default_path``) and
        return where it went. When that place cannot be written the results go to a
        fallback file and the EdgekitError says where: measurements are never lost."""
        from .results.document import write_results

        return write_results(self.to_document(command), Path(path) if path is not None else self.default_path)


# --------------------------------------------------------------------------- the functions


def export(
    model: PathLike,
    variant: Optional[str] = None,
    *,
    int8: Optional[bool] = None,
    fp16: Optional[bool] = None,
    prune: Optional[float] = None,
    calib: Optional[PathLike] = None,
    data: Optional[PathLike] = None,
    weights: Optional[PathLike] = None,
    random_init: Optional[bool] = None,
    input_size: Optional[int] = None,
    artifacts: Optional[PathLike] = None,
    progress: BuildProgress = lambda stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
) -> Artifact:
    """Export ``model`` (a model name, an artifact folder or an ONNX file) and build
    ``variant`` from it (``fp32``, ``int8``, ``pruned+int8``...; default: what the options
    ask for, as the flags would: ``int8=True``, ``prune=0.3``...). ``**options``: the other
    options of ``edgekit export`` by flag name or key (``calib_method="minmax"``,
    ``dw_layer=[...]``). Artifacts are content-addressed: an identical request returns the
    artifact already built. The manifest's ``deploy`` section names the file each runtime
    should load (for INT8, the CPU forms made beside model.onnx; see edgekit.deploy)."""
    settings = _settings("export", _given(
        options, int8=int8, fp16=fp16, prune=prune, calib=calib, data=data, weights=weights,
        random_init=random_init, input_size=input_size, artifacts=artifacts,
    ))
    from .deploy import record_deploy_files
    from .plan import build, command_cell
    from .steps import parse_variant

    cell = command_cell(str(model), settings, backends=())
    if variant is not None:
        parse_variant(variant)
        cell = dataclasses.replace(cell, variant=variant)
    from .options import check_applicable

    check_applicable(settings, settings["backends"] if settings.given("backends") else (), None if variant is None else (variant,))  # bundle: its backends
    artifact, _ = build(cell, progress, announce)
    return record_deploy_files(artifact)


def bench(
    target: PathLike,
    backend: Union[str, Sequence[str], None] = None,
    *,
    variant: Optional[str] = None,
    int8: Optional[bool] = None,
    batch: Union[int, Sequence[int], None] = None,
    iterations: Optional[int] = None,
    warmup: Optional[int] = None,
    data: Optional[PathLike] = None,
    views: Optional[int] = None,
    limit: Optional[int] = None,
    device: Optional[str] = None,
    remote: Optional[str] = None,
    random_init: Optional[bool] = None,
    artifacts: Optional[PathLike] = None,
    progress: BenchProgress = lambda label, stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
) -> BenchReport:
    """Build ``target`` (as ``export``) and benchmark it on ``backend`` (one name or several;
    default pytorch and onnxruntime) here, or on ``remote="user@host"`` over ssh, against
    the PyTorch original on the same images. ``**options``: the other options of
    ``edgekit bench`` by flag name or key (``max_seconds=5``, ``power="off"``...).

    Returns a :class:`BenchReport`; a backend that failed is a row with its ``error``,
    never an exception. Nothing is written: ``report.write()`` writes the results file."""
    given = _given(
        options, backend=backend, int8=int8, batch=batch, iterations=iterations, warmup=warmup, data=data, views=views,
        limit=limit, device=device, remote=remote, random_init=random_init, artifacts=artifacts,
    )
    settings = _settings("bench", given)
    from .plan import bench_cell, launcher_for
    from .session import bench_request

    cell = _requested_cell(target, variant, settings)
    launcher = launcher_for(settings)
    launcher.check(cell.backends)  # missing runtimes, an unreachable device: before any work
    bench_request(settings).images.resolve()  # a bad image folder too
    run = bench_cell(cell, launcher, progress, announce)
    call = _python_call("bench", target, {**({"variant": variant} if variant else {}), **given})
    return BenchReport.from_cell_run(run, remote=settings["remote"], command=call)


def _requested_cell(target: PathLike, variant: Optional[str], settings: Settings, profiling: bool = False) -> "Cell":
    """The one cell that `bench` and `profile` run, checked before any work (``profiling``:
    an artifact folder's own steps count, as profile reads an INT8 one's calibration options)."""
    from .options import check_applicable
    from .plan import command_cell
    from .steps import parse_variant

    cell = command_cell(str(target), settings)
    if variant is not None:
        parse_variant(variant)
        cell = dataclasses.replace(cell, variant=variant)
    variants = None if variant is None else (variant,)
    if profiling and Path(str(target)).is_dir():
        variants = (cell.variant, Artifact.load(Path(str(target))).manifest.get("variant", "fp32"))
    check_applicable(settings, cell.backends, variants)
    return cell


def profile(
    target: PathLike,
    backend: Union[str, Sequence[str], None] = None,
    *,
    variant: Optional[str] = None,
    accuracy: bool = True,
    batch: Union[int, Sequence[int], None] = None,
    iterations: Optional[int] = None,
    warmup: Optional[int] = None,
    data: Optional[PathLike] = None,
    views: Optional[int] = None,
    device: Optional[str] = None,
    artifacts: Optional[PathLike] = None,
    progress: BuildProgress = lambda stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
) -> "ArtifactProfile":
    """Build ``target`` (as ``export``) and time it per layer on ``backend`` with each
    runtime's own profiler, joined to the PyTorch model's modules (edgekit.profiling). For
    an INT8 artifact, each module's time in the FP32 parent on the same backend and, with
    ``accuracy``, its KL vs FP32 when it alone is INT8 (on the calibration images) come
    beside it. ``**options``: the other options of ``edgekit profile`` by flag name or key.
    Returns an ``ArtifactProfile``; ``.to_dict()`` is the results file's ``profile`` section."""
    if not isinstance(accuracy, bool):
        raise UsageError(f"accuracy must be true or false, got {accuracy!r}")
    settings = _settings("profile", _given(
        options, backend=backend, batch=batch, iterations=iterations, warmup=warmup, data=data, views=views,
        device=device, artifacts=artifacts,
    ))
    from .core import numeric_format
    from .data import load_all
    from .plan import build
    from .profiling import parent_of, profile_artifact
    from .session import backend_options, bench_request, evaluation_set

    cell = _requested_cell(target, variant, settings, profiling=True)
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
    """A results file (``edgekit bench``'s, ``BenchReport.write``'s, a recipe run's),
    validated: a one-line DataError names the file and the bad field. Returns the document
    as a dict (``document["results"]``: one row per backend, as ``BenchResult.to_dict``)."""
    from .results.document import load_results_document

    if not str(path):
        raise UsageError("name a results file")
    return load_results_document(Path(path))
