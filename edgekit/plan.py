"""Requests become cells, cells become artifacts and bench runs: the one place that chains
steps.

A cell is a model (a name, an artifact folder or an ONNX file), a variant (``fp32``,
``pruned+int8``...), the backends to time and the Settings they all read. The CLI makes
one cell from its flags, a recipe makes models x variants of them; both build them with
``build`` and bench them with a launcher (edgekit.launch: ``LocalLauncher``, worker
processes here, or ``SshLauncher``, a bundle copied to a device and run there by its own
Python; a whole recipe on Ray: cluster/launcher.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from .backends.base import check_devices
from .core import Artifact, UsageError
from .data import ImageSet
from .options import Settings, check_applicable
from .session import BASELINE, BenchRequest, BenchRun, BenchSettings, bench_request, evaluation_set, has_original
from .steps import build_variant, parse_variant, variant_from_settings
from .steps.export import ModelSettings, open_target

# (label, stage, done, total) -> None
from .progress import BenchProgress as Progress  # (label, stage, done, total)


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
    from .remote import RemoteSettings

    bench = settings.bind(BenchSettings)
    cell = Cell(target, variant_from_settings(settings), tuple(backends if backends is not None else bench.backends), settings)
    if cell.backends and settings.bind(RemoteSettings).host is None:
        check_devices(bench.device, cell.backends)
    check_planned(cell)
    return cell


def check_planned(cell: Cell) -> None:
    """What each backend of ``cell`` cannot do with the artifact the cell will build (a
    --precision its graph will not have, FP16 float parts a CPU runtime cannot read),
    refused before anything is built."""
    from .backends import get_backend
    from .core import numeric_format
    from .session import backend_options
    from .steps.int8 import quantize_options

    numeric = numeric_format({"variant": cell.variant})
    floats = quantize_options(cell.settings).float_precision if numeric == "int8" else "fp32"
    options = backend_options(cell.settings)
    for name in cell.backends:
        get_backend(name).check_planned(numeric, floats, options)


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
            check_planned(cells[-1])
    return tuple(cells)


def build(cell: Cell, progress: Callable[[str, Optional[int], Optional[int]], None] = lambda s, d, t: None,
          announce: Callable[[Artifact, bool], None] = lambda artifact, reused: None) -> tuple[Artifact, bool]:
    """Export (or open) the cell's model, then apply its variant's steps; the built
    artifact's manifest names the file each runtime loads (edgekit.deploy), whichever
    command built it."""
    from .deploy import SECTION, record_deploy_files
    from .files import TamperedError

    artifact, reused = open_target(cell.model, cell.settings, lambda stage, done, total: progress(f"export: {stage}", done, total))
    artifact, reused = build_variant(artifact, cell.variant, cell.settings, cell.settings.bind(ModelSettings).artifacts, progress, announce, reused)
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
    return kept, no_original_note(artifact)


def no_original_note(artifact: Artifact) -> str:
    return f"{artifact.model_name} has no PyTorch original; accuracy is judged on labels only"


# --------------------------------------------------------------------------- one cell, where a launcher says


class CellLauncher(Protocol):
    """Where one cell's bench runs (edgekit.launch: here, or a device over ssh)."""

    name: str

    def check(self, backends: Sequence[str]) -> None:
        """Refuse what cannot run, before anything is built."""

    def bench(self, artifact: Artifact, request: BenchRequest, images: ImageSet, progress: Progress) -> BenchRun: ...


@dataclass(frozen=True)
class CellRun:
    cell: Cell
    artifact: Artifact
    run: BenchRun
    note: Optional[str] = None  # for people: an INT8 budget not met, else no PyTorch original
    reused: bool = True  # the artifact was already built
    budget_met: Optional[bool] = None  # the INT8 budget on the calibration images; None: not INT8
    baseline_missing: bool = False  # PyTorch was asked for, but the artifact has no PyTorch original (an imported ONNX)


def budget_met(artifact: Artifact) -> Optional[bool]:
    """Whether an INT8 artifact met its budget on the calibration images; None for another format."""
    quantization = artifact.manifest.get("quantization")
    return bool(quantization["budget_met"]) if quantization else None


def budget_note(cell: Cell, artifact: Artifact) -> Optional[str]:
    return f"{cell.label}: INT8 budget not met on the calibration images" if budget_met(artifact) is False else None


def bench_artifact(cell: Cell, artifact: Artifact, launcher: CellLauncher, progress: Callable[[str, str, Optional[int], Optional[int]], None]) -> tuple[BenchRun, Optional[str]]:
    """Bench ``cell``'s built artifact where ``launcher`` says; progress is (backend, stage,
    done, total). Returns the run and a note (an INT8 budget not met, no PyTorch original)."""
    backends, note = runnable_backends(artifact, cell.backends)
    request = bench_request(cell.settings, backends)
    images = evaluation_set(artifact, request.images)
    return launcher.bench(artifact, request, images, progress), budget_note(cell, artifact) or note


def bench_cell(cell: Cell, launcher: CellLauncher, progress: Progress = _no_progress, announce=lambda artifact, reused: None) -> CellRun:
    """Build the cell's artifact and bench it where ``launcher`` says."""
    artifact, reused = build(cell, lambda stage, done, total: progress(cell.label, stage, done, total), announce)
    run, note = bench_artifact(cell, artifact, launcher, lambda backend, stage, done, total: progress(f"{cell.label} {backend}", stage, done, total))
    missing = BASELINE in cell.backends and not has_original(artifact)
    return CellRun(cell, artifact, run, note, reused, budget_met(artifact), missing)
