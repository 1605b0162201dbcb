"""Cells run one after the other from this process: benched here (LocalLauncher) or, with
ssh.SshLauncher, on a device; both record each cell in the ledger as it finishes."""

from __future__ import annotations

import platform
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..backends.base import check_devices
from ..core import Artifact, EdgekitError
from ..data import ImageSet
from ..plan import Cell, CellLauncher, bench_cell
from ..progress import BenchProgress as Progress
from ..results.document import session_document
from ..session import BenchRequest, BenchRun, bench_request, check_request, run_session
from .ledger import RUNNING, Ledger, RunOutcome, local_units


def check_images(cells: Sequence[Cell]) -> None:
    """Every cell's images, before any work (a bad image folder fails here, for every launcher)."""
    for cell in cells:
        bench_request(cell.settings).images.resolve()


def cell_backends(cells: Sequence[Cell]) -> tuple[str, ...]:
    """Every backend some cell times, in recipe order."""
    return tuple(dict.fromkeys(b for cell in cells for b in cell.backends))


def cell_ledger(cells: Sequence[Cell], output: Path, launcher: str, *, command: Optional[str], extra: dict[str, Any], resume: bool) -> Ledger:
    """The ledger of a run from this process: one unit per cell (kind ``local``)."""
    return Ledger(output, local_units(cells), command, {**extra, "cluster": {"address": None, "launcher": launcher}}, resume, local=True)


def run_in_order(launcher: CellLauncher, where: str, cells: Sequence[Cell], ledger: Ledger, progress: Progress) -> RunOutcome:
    """Every unit ``ledger`` has left, one after the other, benched by ``launcher`` (here or
    over ssh) and recorded as it finishes. A cell that fails is a row per backend with its
    error and the run goes on; Ctrl-C or SIGTERM marks the unfinished cells interrupted,
    writes the file and raises KeyboardInterrupt."""
    node = {"name": where}
    ledger.write()  # the file accounts for every cell from the start (and the output is writable)
    outcome = RunOutcome(ledger)
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
                ledger.record(unit, session_document(run.run), node, time.monotonic() - began, artifact_key=run.artifact.key)
                if run.note:
                    outcome.notes.append(run.note)
                if run.budget_met is False:
                    outcome.budget_missed.append(cell.label)
            ledger.write()
    except BaseException:  # Ctrl-C, SIGTERM (a KeyboardInterrupt here), or a bug: keep what finished
        ledger.interrupt()
        ledger.write()
        raise
    outcome.seconds = time.monotonic() - started
    return outcome


class InOrder:
    """The recipe-level protocol (edgekit.launch.Launcher) of a launcher that benches one
    cell after the other where its ``check`` and ``bench`` say (here, or one ssh device)."""

    name: str

    def where(self) -> str:
        """The node recorded for each cell."""
        raise NotImplementedError

    def check_cells(self, cells: Sequence[Cell]) -> None:
        self.check(cell_backends(cells))  # type: ignore[attr-defined]
        check_images(cells)

    def ledger(self, cells: Sequence[Cell], output: Path, *, command: Optional[str], extra: dict[str, Any], resume: bool) -> Ledger:
        return cell_ledger(cells, output, self.name, command=command, extra=extra, resume=resume)

    def run(self, cells: Sequence[Cell], ledger: Ledger, progress: Progress) -> RunOutcome:
        return run_in_order(self, self.where(), cells, ledger, progress)  # type: ignore[arg-type]


@dataclass
class LocalLauncher(InOrder):
    """Worker processes on this machine."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    name: str = "local"
    device: Optional[str] = None  # --device, checked against what the backends have here
    resume_hint: str = ""

    def check(self, backends: Sequence[str]) -> None:
        from ..backends import get_backend

        for backend in backends:
            get_backend(backend).check_available()
        check_devices(self.device, backends)

    def bench(self, artifact: Artifact, request: BenchRequest, images: ImageSet, progress: Progress) -> BenchRun:
        check_request(artifact, request)
        return run_session(artifact, images, request, progress=progress, host=platform.node(), run=self.run_id)

    def where(self) -> str:
        return platform.node()
