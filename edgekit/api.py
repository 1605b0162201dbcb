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

from .core import Artifact, BenchResult, EdgekitError, UsageError
from .options import Option, Settings, keyword_options
from .progress import BenchProgress
from .progress import Progress as BuildProgress

if TYPE_CHECKING:
    from .evaluation import BackendParity
    from .doctor import DoctorReport
    from .launch import Launcher
    from .launch.ledger import RunOutcome
    from .plan import Cell, CellRun
    from .profiling import ArtifactProfile
    from .recipe import Recipe
    from .results.gate import GateReport

PathLike = Union[str, Path]
Announce = Callable[[Artifact, bool], None]

# The commands whose options each function takes. `edgekit bundle` passes its own values
# (backends, batch, views...) through export, so export accepts them too.
COMMANDS_OF = {"export": ("export", "finetune", "bundle"), "bench": ("bench",), "profile": ("profile",), "doctor": ("doctor",)}


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
    budget_met: Optional[bool] = None  # an INT8 artifact's budget on the calibration images; None: not INT8
    baseline_missing: bool = False  # PyTorch was asked for but the artifact has none (an imported ONNX): labels only
    strict: bool = False  # --strict: a missed INT8 budget fails the run (raise_for_failures)

    @classmethod
    def from_cell_run(cls, run: "CellRun", remote: Optional[str] = None, command: Optional[str] = None, strict: bool = False) -> "BenchReport":
        bench_run = run.run
        rows = tuple(bench_run.results)
        return cls(
            run.artifact, rows, dict(bench_run.image_summary or {}), dict(bench_run.machine or (rows[0].environment if rows else {})),
            bench_run.evaluated, tuple(bench_run.parity), run.note, remote, command, run.reused, dict(bench_run.extra),
            run.budget_met, run.baseline_missing, strict,
        )

    @property
    def baseline_note(self) -> Optional[str]:
        """Why accuracy is judged on labels only (no PyTorch original), or None."""
        from .plan import no_original_note

        return no_original_note(self.artifact) if self.baseline_missing else None

    @property
    def compared(self) -> bool:
        """Whether accuracy was judged against PyTorch on the same images (else on labels only)."""
        return any(r.accuracy is not None and r.accuracy.agreement is not None for r in self.rows)

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
        from .results.document import bench_document

        return bench_document(self.rows, artifact=self.artifact, images=self.images, parity=self.parity, command=command or self.command,
                              extra=self.extra, machine=self.machine)

    def write(self, path: Optional[PathLike] = None, *, command: Optional[str] = None) -> Path:
        """Write the results document atomically to ``path`` (default: ``default_path``) and
        return where it went. When that place cannot be written the results go to a
        fallback file and the EdgekitError says where: measurements are never lost."""
        from .results.document import write_results

        return write_results(self.to_document(command), Path(path) if path is not None else self.default_path)

    def raise_for_failures(self, path: PathLike) -> None:
        """After the document went to ``path``: an EdgekitError (exit 1) when a backend failed
        (saying how many measured rows ``path`` holds), or, under ``strict``, when the INT8
        budget was not met."""
        raise_if_failed(self.failed, path)
        raise_if_budget_missed(self.artifact, self.strict)


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
    from .session import BenchSettings

    check_applicable(settings, settings.bind(BenchSettings).backends if settings.given("backends") else (), None if variant is None else (variant,))  # bundle: its backends
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
    from .launch import launcher_for
    from .plan import bench_cell
    from .session import bench_request

    cell = _requested_cell(target, variant, settings)
    launcher = launcher_for(settings)
    launcher.check(cell.backends)  # missing runtimes, an unreachable device: before any work
    bench_request(settings).images.resolve()  # a bad image folder too
    run = bench_cell(cell, launcher, progress, announce)
    call = _python_call("bench", target, {**({"variant": variant} if variant else {}), **given})
    from .remote import RemoteSettings
    from .steps.int8 import Int8Policy

    return BenchReport.from_cell_run(run, remote=settings.bind(RemoteSettings).host, command=call, strict=settings.bind(Int8Policy).strict)


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
    from .timing import TimingOptions

    timing = settings.bind(TimingOptions)
    if len(timing.batch_sizes) != 1:
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
        artifact, cell.backends, backend_options(settings), x, timing.batch_sizes[0], timing.iterations, timing.warmup,
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

    from .core import quantize_step

    recorded = quantize_step(artifact.manifest).get("calibration")
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


# --------------------------------------------------------------------------- what a result means for the exit code


def raise_if_failed(failed: Sequence[BenchResult], path: PathLike) -> None:
    """One EdgekitError (exit 1) for failed rows, saying how many measured rows the results
    file at ``path`` holds (it is read back: never a claim that rows were saved when none were)."""
    if not failed:
        return
    import json

    names = ", ".join(r.backend for r in failed)
    try:
        rows = json.loads(Path(path).read_text())["results"]
        measured: Optional[int] = sum(1 for r in rows if not r.get("error"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        measured = None
    if measured is None:
        saved = f"see {path}"
    elif measured:
        saved = f"the other rows were saved to {path}: {measured} measured"
    else:
        saved = f"no row was measured; {path} records the failure{'s' if len(failed) != 1 else ''}"
    raise EdgekitError(f"{names} failed: {failed[0].error} ({saved})")


def raise_if_budget_missed(artifact: Artifact, strict: bool) -> None:
    """Under ``strict`` (--strict), an INT8 artifact that missed its budget is an EdgekitError
    (exit 1); the artifact is kept either way."""
    from .plan import budget_met

    if strict and budget_met(artifact) is False:
        raise EdgekitError(f"INT8 budget not met (kept the best artifact: {artifact.path})")


# --------------------------------------------------------------------------- profile, bundle


def write_profile(found: "ArtifactProfile", path: Optional[PathLike] = None, *, command: Optional[str] = None) -> Path:
    """Write what ``profile`` found as a results document with a ``profile`` section (default:
    profile.json beside the artifact) and return where it went; an EdgekitError when no
    backend could be profiled (nothing is written then)."""
    from .results.document import profile_document, write_results
    from .timing import machine_info

    if not found.profiles:
        raise EdgekitError("no backend could be profiled: " + "; ".join(f"{k}: {v}" for k, v in found.unavailable.items()))
    document = profile_document(found.to_dict(), command=command, machine=machine_info())
    return write_results(document, Path(path) if path is not None else found.path / "profile.json")


@dataclass(frozen=True)
class BundleInfo:
    """A bundle written by ``bundle``: its folder and what its bundle.json says."""

    path: Path
    meta: dict[str, Any]  # bundle.json
    size_mb: float

    @property
    def run_command(self) -> str:
        """What to run inside it on the device."""
        from .device_runner import RUN_COMMAND

        return RUN_COMMAND


def bundle(
    target: PathLike,
    out: PathLike,
    *,
    progress: BenchProgress = lambda label, stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
) -> BundleInfo:
    """Build ``target`` (as ``export``) and write a self-contained bundle folder at ``out`` (an
    old bundle there is replaced) that benches it on a device with numpy, Pillow and the
    backends' runtimes only: the ONNX, the evaluation images, the PyTorch FP32 logits for
    them and a torch-free runner. ``**options``: the options of ``edgekit bundle``; progress
    is (label, stage, done, total) with labels 'build' and 'bundle'."""
    import json

    from .bundle import check_backends, make_bundle
    from .session import bench_request, evaluation_set

    settings = _settings("export", options)
    from .session import BenchSettings

    bench_settings = settings.bind(BenchSettings)
    names = check_backends(bench_settings.backends)
    request = bench_request(settings)
    request.images.resolve()  # a bad image folder fails before any export work
    artifact = export(target, progress=lambda stage, done, total: progress("build", stage, done, total), announce=announce, **options)
    image_set = evaluation_set(artifact, request.images)
    folder = make_bundle(
        artifact, names, image_set, Path(out), device=bench_settings.device, batch_sizes=bench_settings.batch_sizes,
        progress=lambda stage, done, total: progress("bundle", stage, done, total),
    )
    meta = json.loads((folder / "bundle.json").read_text())
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    return BundleInfo(folder, meta, size)


# --------------------------------------------------------------------------- doctor


def doctor(
    target: Optional[PathLike] = None,
    backend: Union[str, Sequence[str], None] = None,
    *,
    variant: Optional[str] = None,
    device: Optional[str] = None,
    progress: BuildProgress = lambda stage, done, total: None,
    announce: Announce = lambda artifact, reused: None,
    **options: Any,
) -> "DoctorReport":
    """What runs where, at what precision, on this machine (`edgekit doctor`): the machine
    and every registered backend's ``machine_facts``; with ``target`` (an artifact folder,
    an ONNX file, or a model name, built as ``bench`` builds it, with the same options), each
    backend (those named by ``backend``, else every one that can run here) compiles and
    loads it, and its layer report is compared with what the graph asks. Returns an
    edgekit.doctor.DoctorReport (``to_dict()``: the --json document);
    ``raise_if_unhealthy`` says what it means for the exit code."""
    settings = _settings("doctor", _given(options, backend=backend, device=device))
    from . import doctor as checks
    from .backends.base import present_backends

    if target is None:
        _refuse_without_artifact(settings, variant)
        return checks.machine_report(present_backends(), progress)
    from .options import check_applicable
    from .plan import build, command_cell
    from .session import BenchSettings, backend_options
    from .steps import parse_variant

    bench = settings.bind(BenchSettings)
    chosen, named = checks.choose_backends(bench.backends if settings.given("backends") else (), bench.device)
    cell = command_cell(str(target), settings, backends=())
    if variant is not None:
        parse_variant(variant)
        cell = dataclasses.replace(cell, variant=variant)
    check_applicable(settings, (), None if variant is None else (variant,))  # images are only read to build
    run_options = backend_options(settings, tuple(chosen))
    artifact, _ = build(cell, lambda stage, done, total: progress(f"build: {stage}", done, total), announce)
    report = checks.machine_report(present_backends(), progress)
    return checks.with_artifact(report, artifact, chosen, run_options, named, progress)


def _refuse_without_artifact(settings: Settings, variant: Optional[str]) -> None:
    from .options import by_key

    given = [by_key()[key].flag or key for key in settings if settings.given(key)] + (["variant"] if variant is not None else [])
    if given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to an artifact; name one: edgekit doctor ARTIFACT {given[0]} ...")


def raise_if_unhealthy(found: "DoctorReport", strict: bool = False) -> None:
    """After `doctor` printed: an EdgekitError (exit 1) when a backend ran a compute node at
    another precision, or on another device, than the artifact's graph asks (a declared
    substitution is not one), or a backend named with --backend could not compile or load
    it; under ``strict`` (--strict), an INT8 artifact that missed its budget."""
    mismatches = found.mismatches
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise EdgekitError(f"{len(mismatches)} precision mismatch(es): {mismatches[0]}{more}")
    failed = found.failed
    if failed:
        raise EdgekitError(f"{', '.join(c.backend for c in failed)} could not run the artifact: {failed[0].reason}")
    if found.artifact is not None:
        raise_if_budget_missed(Artifact.load(Path(found.artifact.path)), strict)


# --------------------------------------------------------------------------- models, artifacts


def model_names(pattern: Optional[str] = None) -> list[str]:
    """Registered names containing ``pattern`` (any case); a pattern that matches none is
    refused in one line, with the closest names."""
    from . import models

    names = models.list_model_names()
    if not pattern:
        return names
    found = [n for n in names if pattern.lower() in n.lower()]
    if found:
        return found
    close = models.model_registry().close_matches(pattern)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `edgekit models` lists them all"
    timm = "" if pattern.startswith(models.TIMM_PREFIX) else " (timm models are not listed: use timm/<name>)"
    from .classes import shown  # a 20 MB pattern is quoted in part

    raise UsageError(f"no registered model name contains {shown(pattern)}{hint}{timm}")


def model_record(name: str, spec: Any, measured: Optional[dict]) -> dict:
    """One model for `edgekit models --json`: the same keys for every model (docs/cli.md)."""
    ref = spec.reference
    return {
        "name": name,
        "family": spec.family,
        "source": spec.source,
        "input_size": spec.preprocessing.input_size,
        "params_m": ref.params_m,
        "gmacs": ref.gflops,
        "top1": ref.top1,
        "reference": ref.source,
        "offline_weights": bool(spec.offline_weights),
        "measured": measured,
    }


def _measured(name: str) -> dict:
    """Params and GMACs counted from the built model (``error``: why not)."""
    from . import models

    try:
        params, gmacs = models.complexity_of(name)
        return {"params_m": round(params, 4), "gmacs": round(gmacs, 4), "error": None}
    except Exception as e:  # a model that cannot run on meta still keeps its row
        return {"params_m": None, "gmacs": None, "error": type(e).__name__}


def models(
    pattern: Optional[str] = None, *, offline_only: bool = False, measure: bool = False,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict[str, Any]]:
    """The registered models whose name contains ``pattern``, as `edgekit models --json` lists
    them (published params, GMACs, top-1); ``measure``: counted from each built model too
    (on the meta device; ``progress`` is (done, total) as they are built)."""
    from . import models as registry

    names = model_names(pattern)
    rows = []
    for done, name in enumerate(names, 1):
        spec = registry.get_spec(name)
        if not (offline_only and not spec.offline_weights):
            rows.append(model_record(name, spec, _measured(name) if measure else None))
        if measure:
            progress(done, len(names))
    return rows


def artifact_facts(artifact: Artifact) -> dict:
    """What `edgekit inspect --json` prints: the same keys for every artifact (docs/cli.md);
    the manifest's own sections (steps, parity, quantization) as they are."""
    from .deploy import SECTION, file_state

    manifest = artifact.manifest
    problems = artifact.problems()
    section = manifest.get(SECTION)
    deploy = None
    if isinstance(section, dict):
        deploy = {
            runtime: [{"file": str(e.get("file")), "when": str(e.get("when") or ""), "state": file_state(artifact, str(e.get("file"))) or "ok"} for e in entries]
            for runtime, entries in section.items()
        }
    model = manifest.get("model") or {}
    return {
        "path": str(artifact.path),
        "key": artifact.key,
        "model": artifact.model_name,
        "variant": manifest.get("variant", "fp32"),
        "weights": model.get("weights"),
        "integrity": {"intact": not problems, "problems": problems, "sealed_files": len(manifest.get("sha256") or {})},
        "steps": manifest.get("steps", []),
        "parity": manifest.get("parity"),
        "quantization": manifest.get("quantization"),
        "deploy": deploy,
    }


def raise_if_not_intact(artifact: Artifact, facts: Mapping[str, Any]) -> None:
    """An InvalidModelFileError (exit 2) naming the first problem of an artifact that is not intact."""
    from .core import InvalidModelFileError

    problems = facts["integrity"]["problems"]
    if problems:
        raise InvalidModelFileError(f"{artifact.path} is not intact: {problems[0]}; export it again")


# --------------------------------------------------------------------------- reports and the gate


def report(results: Sequence[PathLike], out: PathLike = "report", title: str = "edgekit report") -> list[Path]:
    """Markdown, CSV and HTML tables and PNG plots from results files into the folder ``out``;
    returns the paths written."""
    from .results.document import load_results_documents
    from .results.site import write_report

    return write_report(load_results_documents(results), Path(out), title, sources=[str(p) for p in results])


def check(
    new: PathLike, baseline: PathLike, *, max_top1_drop: float = 0.5, max_latency_regression: float = 0.10,
    latency_noise_floor: float = 0.10, reference: Optional[str] = None, allow_different_images: bool = False,
    trust_raw_latency: bool = False,
) -> "GateReport":
    """Compare the results file ``new`` with ``baseline`` (docs/ci-gate.md): each finding PASS,
    FAIL, INCONCLUSIVE, NEW or MISSING; ``raise_if_regressed`` says what it means for the exit."""
    from .results.document import load_results_documents
    from .results.gate import compare

    old_doc, new_doc = load_results_documents([baseline, new])
    return compare(old_doc, new_doc, max_top1_drop, max_latency_regression, reference, allow_different_images=allow_different_images,
                   latency_noise_floor=latency_noise_floor, trust_raw_latency=trust_raw_latency)


def raise_if_regressed(found: "GateReport") -> None:
    """An EdgekitError (exit 1) when a finding failed or a baseline cell is missing."""
    failed = [f for f in found.findings if f.status in ("fail", "missing")]
    if failed:
        raise EdgekitError(f"{len(failed)} regression(s): " + "; ".join(f"{f.label} {f.check}" for f in failed[:5]) + (" ..." if len(failed) > 5 else ""))


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class RunPlan:
    """A recipe read and checked for form, its cells, where its results go and the launcher
    that runs them: what ``run`` does, before any work."""

    recipe: "Recipe"
    cells: tuple["Cell", ...]
    output: Path
    launcher: "Launcher"

    @property
    def summary(self) -> str:
        recipe = self.recipe
        return (f"recipe {recipe.name}: {len(recipe.models)} models x {len(recipe.variants)} variants x backends "
                f"{', '.join(recipe.backends)} x batch {', '.join(map(str, recipe.batch))}")

    @property
    def notes(self) -> tuple[str, ...]:
        """What the plan ignores, said before it runs."""
        from .cluster.placement import ClusterSettings

        if self.launcher.name != "ray" and any(c.settings.bind(ClusterSettings).kinds for c in self.cells):
            return ("[ray] kinds apply to --ray runs; every cell runs here",)
        return ()

    @property
    def strict(self) -> bool:
        """--strict ([int8] strict): a cell's missed INT8 budget fails the run."""
        from .steps.int8 import Int8Policy

        return self.cells[0].settings.bind(Int8Policy).strict

    def check(self) -> None:
        """Refuse what cannot run (runtimes, the device or cluster, the images), before any work."""
        self.launcher.check_cells(self.cells)

    def run(self, *, resume: bool = False, command: Optional[str] = None,
            progress: BenchProgress = lambda label, stage, done, total: None) -> "RunOutcome":
        """Build and bench every cell into the results file, written as each finishes (a failed
        cell is a row with its error; Ctrl-C keeps the finished ones and raises
        KeyboardInterrupt); ``resume``: keep the cells the file holds as done."""
        from .launch import run_recipe

        extra = {"recipe": str(self.recipe.path), "reference": self.recipe.reference}
        return run_recipe(self.cells, self.launcher, self.output, resume=resume, command=command, extra=extra, progress=progress)

    def raise_for_failures(self, outcome: "RunOutcome") -> None:
        """After the run: an EdgekitError (exit 1) when a row failed, or, under ``strict``,
        when a cell missed its INT8 budget."""
        raise_if_failed(outcome.failed, outcome.ledger.path)
        if outcome.budget_missed and self.strict:
            raise EdgekitError("INT8 budget not met for " + "; ".join(outcome.budget_missed) + " (strict)")


def plan_run(recipe: PathLike, output: Optional[PathLike] = None, ray: Optional[str] = None) -> RunPlan:
    """Read the recipe (a TOML file: names, paths and the output checked, so nothing runs for
    a recipe that cannot) and plan its cells: here or over ssh as its [bench] remote says,
    or, with ``ray`` ('local', 'auto' or the head's address), as Ray tasks on a cluster.
    Results go to ``output``, else the recipe's 'output', else <recipe>.results.json."""
    from .launch import launcher_for
    from .plan import recipe_cells
    from .recipe import load_recipe

    path = Path(recipe)
    loaded = load_recipe(path)
    cells = recipe_cells(loaded)
    target = Path(output) if output is not None else loaded.output or path.with_suffix(".results.json")
    if ray is not None:
        from .cluster.launcher import RayLauncher

        launcher: "Launcher" = RayLauncher(ray)
    else:
        launcher = launcher_for(cells[0].settings)
    return RunPlan(loaded, cells, Path(target), launcher)


def run(recipe: PathLike, output: Optional[PathLike] = None, *, ray: Optional[str] = None, resume: bool = False,
        command: Optional[str] = None, progress: BenchProgress = lambda label, stage, done, total: None) -> "RunOutcome":
    """`edgekit run RECIPE`: plan (``plan_run``), check, then build and bench every cell into
    one results file. Returns the outcome (``outcome.ledger.path``: the file; its rows,
    notes and the cells that missed their INT8 budget)."""
    planned = plan_run(recipe, output, ray)
    planned.check()
    return planned.run(resume=resume, command=command, progress=progress)
