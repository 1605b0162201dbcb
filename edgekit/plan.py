"""Requests become cells, cells become artifacts and bench runs: the one place that chains
steps and decides where a bench runs.

A cell is a model (a name, an artifact folder or an ONNX file), a variant (``fp32``,
``pruned+int8``...), the backends to time and the Settings they all read. The CLI makes
one cell from its flags, a recipe makes models x variants of them; both build them with
``build`` and bench them with a launcher: ``LocalLauncher`` (worker processes here) or
``SshLauncher`` (a bundle copied to a device and run there by its own Python).
"""

from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from .backends.base import check_devices, parse_devices
from .core import Artifact, BenchResult, EdgekitError, UsageError
from .data import ImageSet
from .evaluation import BackendParity
from .options import Settings, check_applicable, runner_argv
from .session import BASELINE, BenchRequest, BenchRun, bench_request, check_request, evaluation_set, has_original, run_session
from .steps import build_variant, parse_variant, variant_from_settings
from .steps.export import open_target

# (label, stage, done, total) -> None
Progress = Callable[[str, str, Optional[int], Optional[int]], None]


def _no_progress(label: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
    pass


@dataclass(frozen=True)
class Cell:
    model: str  # a model name, an artifact folder or an ONNX file
    variant: str
    backends: tuple[str, ...]
    settings: Settings

    @property
    def label(self) -> str:
        return f"{self.model} {self.variant}"


def command_cell(target: str, settings: Settings, backends: Optional[Sequence[str]] = None) -> Cell:
    """The one cell a command line asks for (the variant from --prune/--dw-separable/--int8/--fp16).
    A --device the backends cannot use here fails now, before anything is built (a --remote
    run's device checks its own)."""
    cell = Cell(target, variant_from_settings(settings), tuple(backends if backends is not None else settings["backends"]), settings)
    if cell.backends and settings["remote"] is None:
        check_devices(settings["device"], cell.backends)
    return cell


def recipe_cells(recipe) -> tuple[Cell, ...]:
    """models x variants; PyTorch runs the FP32 original, so it is timed with the fp32 cell only."""
    cells = []
    for model in recipe.models:
        settings = recipe.settings_for(model)
        check_applicable(settings, recipe.backends, recipe.variants, recipe=True)
        for variant in recipe.variants:
            parse_variant(variant)  # an illegal chain fails before any work
            backends = tuple(b for b in recipe.backends if b != BASELINE or variant == "fp32")
            cells.append(Cell(model, variant, backends, settings))
    return tuple(cells)


def build(cell: Cell, progress: Callable[[str, Optional[int], Optional[int]], None] = lambda s, d, t: None,
          announce: Callable[[Artifact, bool], None] = lambda artifact, reused: None) -> tuple[Artifact, bool]:
    """Export (or open) the cell's model, then apply its variant's steps; the built
    artifact's manifest names the file each runtime loads (edgekit.deploy), whichever
    command built it."""
    from .deploy import SECTION, record_deploy_files
    from .files import TamperedError

    artifact, reused = open_target(cell.model, cell.settings, lambda stage, done, total: progress(f"export: {stage}", done, total))
    artifact, reused = build_variant(artifact, cell.variant, cell.settings, Path(cell.settings["artifacts"]), progress, announce, reused)
    if SECTION not in artifact.manifest:
        try:
            artifact = record_deploy_files(artifact)
        except TamperedError:  # a changed CPU form fails only the backend that reads it (and `edgekit export` names it)
            pass
    return artifact, reused


def runnable_backends(artifact: Artifact, backends: Sequence[str]) -> tuple[tuple[str, ...], Optional[str]]:
    """An imported ONNX has no PyTorch original: drop that backend, saying so (the same
    rule for commands and recipes)."""
    if has_original(artifact) or BASELINE not in backends:
        return tuple(backends), None
    kept = tuple(b for b in backends if b != BASELINE)
    if not kept:
        raise UsageError(f"{artifact.path} was imported from an ONNX file: there is no PyTorch original to run; name another backend")
    return kept, f"{artifact.model_name} has no PyTorch original; accuracy is judged on labels only"


# --------------------------------------------------------------------------- where a bench runs


class Launcher(Protocol):
    name: str

    def check(self, backends: Sequence[str]) -> None:
        """Refuse what cannot run, before anything is built."""

    def bench(self, artifact: Artifact, request: BenchRequest, images: ImageSet, progress: Progress) -> BenchRun: ...


@dataclass
class LocalLauncher:
    """Worker processes on this machine."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    name: str = "local"
    device: Optional[str] = None  # --device, checked against what the backends have here

    def check(self, backends: Sequence[str]) -> None:
        from .backends import get_backend

        for backend in backends:
            get_backend(backend).check_available()
        check_devices(self.device, backends)

    def bench(self, artifact: Artifact, request: BenchRequest, images: ImageSet, progress: Progress) -> BenchRun:
        check_request(artifact, request)
        return run_session(artifact, images, request, progress=progress, host=platform.node(), run=self.run_id)


@dataclass
class SshLauncher:
    """A bundle copied to another machine over ssh and run there by its own Python; PyTorch
    runs here, once, for the reference logits the bundle carries."""

    remote: Any  # edgekit.remote.RemoteRequest
    settings: Settings
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    name: str = "ssh"
    python_version: Optional[str] = None

    def check(self, backends: Sequence[str]) -> None:
        from .bundle import check_backends
        from .remote import check_connection

        deployed = [b for b in backends if b != BASELINE]
        if not deployed:
            raise UsageError("--remote runs deployment backends (a bundle on the device); add one with --backend")
        check_backends(deployed)
        spec = self.settings["device"]
        away = [name for name in parse_devices(spec)[1] if name not in deployed]  # what the device has, its runner checks
        if away:
            raise UsageError(f"--device {spec}: {' and '.join(away)} {'does' if len(away) == 1 else 'do'} not run on {self.remote.host} (there: {', '.join(deployed)}; PyTorch runs here, on the CPU, for the reference logits)")
        self.python_version = check_connection(self.remote.host, self.remote.settings, self.remote.python)

    def bench(self, artifact: Artifact, request: BenchRequest, images: ImageSet, progress: Progress) -> BenchRun:
        from .remote import bench_remote
        from .results.document import validate_results_document

        host = str(self.remote.host)
        document = bench_remote(
            artifact, request.backends, images, self.remote, request.options.device or None, request.timing.batch_sizes,
            runner_argv(self.settings), progress=lambda stage, done, total: progress(host, stage, done, total),
        )
        validate_results_document(document, f"{host}: results")
        results = tuple(BenchResult.from_dict({**r, "environment": {**r.get("environment", {}), "run": self.run_id}}) for r in document["results"])
        parity = tuple(BackendParity(**p) for p in document.get("parity", []))
        extra = {k: document[k] for k in ("bundle", "remote_command") if k in document}
        return BenchRun(artifact, images, results, parity, document["images"], extra=extra, machine=document.get("machine"))


def launcher_for(settings: Settings) -> Launcher:
    """SshLauncher for --remote (checked for form here, for reachability in check()), else local."""
    if settings["remote"] is None:
        if settings["ssh_options"]:
            raise UsageError("--ssh-option applies to --remote runs")
        return LocalLauncher(device=settings["device"])
    from .remote import RemoteRequest

    remote = RemoteRequest.parse(settings["remote"], settings["ssh_options"], settings["remote_python"], settings["remote_dir"])
    return SshLauncher(remote, settings)


# --------------------------------------------------------------------------- whole runs


@dataclass(frozen=True)
class CellRun:
    cell: Cell
    artifact: Artifact
    run: BenchRun
    note: Optional[str] = None  # e.g. an INT8 budget not met
    reused: bool = True  # the artifact was already built


def budget_note(cell: Cell, artifact: Artifact) -> Optional[str]:
    quantization = artifact.manifest.get("quantization")
    return f"{cell.label}: INT8 budget not met on the calibration images" if quantization and not quantization["budget_met"] else None


def bench_artifact(cell: Cell, artifact: Artifact, launcher: Launcher, progress: Callable[[str, str, Optional[int], Optional[int]], None]) -> tuple[BenchRun, Optional[str]]:
    """Bench ``cell``'s built artifact where ``launcher`` says; progress is (backend, stage,
    done, total). Returns the run and a note (an INT8 budget not met, no PyTorch original)."""
    backends, note = runnable_backends(artifact, cell.backends)
    request = bench_request(cell.settings, backends)
    images = evaluation_set(artifact, request.images)
    return launcher.bench(artifact, request, images, progress), budget_note(cell, artifact) or note


def bench_cell(cell: Cell, launcher: Launcher, progress: Progress = _no_progress, announce=lambda artifact, reused: None) -> CellRun:
    """Build the cell's artifact and bench it where ``launcher`` says."""
    artifact, reused = build(cell, lambda stage, done, total: progress(cell.label, stage, done, total), announce)
    run, note = bench_artifact(cell, artifact, launcher, lambda backend, stage, done, total: progress(f"{cell.label} {backend}", stage, done, total))
    return CellRun(cell, artifact, run, note, reused)


def results_for(runs: Sequence[CellRun]) -> tuple[list[BenchResult], list[dict]]:
    """Every row of every cell, and the parity rows marked with their cell."""
    import dataclasses

    results: list[BenchResult] = []
    parity: list[dict] = []
    for r in runs:
        results += r.run.results
        parity += [{"model": r.cell.model, "variant": r.cell.variant, **dataclasses.asdict(p)} for p in r.run.parity]
    return results, parity


def run_here(cells: Sequence[Cell], launcher: Launcher, output: Path, *, resume: bool, command: Optional[str], extra: dict[str, Any],
             progress: Progress = _no_progress):
    """Every cell of a recipe, one after the other, where ``launcher`` says (here or over
    ssh), each recorded in the results file at ``output`` as it finishes (the ledger the Ray
    path writes, cluster/ledger.py). A cell that fails is a row per backend with its error
    and the run goes on; Ctrl-C or SIGTERM marks the unfinished cells interrupted, writes
    the file and raises KeyboardInterrupt. With ``resume``, the cells the file holds as
    done are kept. Returns a ledger.RunOutcome."""
    import dataclasses
    import time

    from .cluster.ledger import RUNNING, Ledger, RunOutcome, local_units
    from .results.document import results_document

    where = str(launcher.remote.host) if isinstance(launcher, SshLauncher) else platform.node()
    node = {"name": where}
    ledger = Ledger(output, local_units(cells), command, {**extra, "cluster": {"address": None, "launcher": launcher.name}}, resume, local=True)
    ledger.write()  # the file accounts for every cell from the start (and the output is writable)
    notes: list[str] = []
    started = time.monotonic()
    try:
        for unit in ledger.to_run:
            cell = cells[unit.cell]
            ledger.entries[unit.id] = {"state": RUNNING, "node": where}
            ledger.write()  # the file says which cell runs
            began = time.monotonic()
            try:
                run = bench_cell(cell, launcher, progress)
            except EdgekitError as e:  # this cell's model, weights or build: its rows say why, the others go on
                ledger.fail(unit, str(e))
                progress(cell.label, f"failed: {e}", None, None)
            else:
                document = results_document(list(run.run.results), images=run.run.image_summary, parity=[dataclasses.asdict(x) for x in run.run.parity])
                ledger.record(unit, document, node, time.monotonic() - began, artifact_key=run.artifact.key)
                if run.note:
                    notes.append(run.note)
            ledger.write()
    except BaseException:  # Ctrl-C, SIGTERM (a KeyboardInterrupt here), or a bug: keep what finished
        ledger.interrupt()
        ledger.write()
        raise
    return RunOutcome(ledger, notes, time.monotonic() - started)
