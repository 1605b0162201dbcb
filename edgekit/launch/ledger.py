"""The one results file of `edgekit run`, rewritten (atomically) each time a unit finishes,
whichever launcher runs it: here, over ssh (launch/local.py) or on a Ray cluster
(cluster/launcher.py).

At every moment the file is a valid results document: the rows of the units finished so
far, and a ``cluster`` section that accounts for every unit (done, failed with its reason,
running, waiting, or interrupted by Ctrl-C or SIGTERM). ``--resume`` reads it back and
keeps the rows of the units that are done; failed ones run again. A run's units are its
launcher's: here and over ssh one per cell (kind ``local``), on Ray one per cell and device
kind; so a file resumes with the launcher that wrote it.

Ray-free and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..core import BenchResult, DataError, stable_hash

DONE, FAILED, WAITING, RUNNING, INTERRUPTED = "done", "failed", "waiting", "running", "interrupted"
LOCAL_KIND = "local"  # the kind of every unit of a run without Ray: this machine (or its --remote device)


@dataclass(frozen=True)
class Unit:
    """One piece of timed work: ``backends`` of cell ``cell`` (an index into the recipe's
    cells) on a node of ``kind``. ``id`` names it in the results file across runs."""

    cell: int
    model: str
    variant: str
    kind: str
    backends: tuple[str, ...]
    id: str

    @property
    def label(self) -> str:
        return f"{self.model} {self.variant} [{', '.join(self.backends)}] on {self.kind}"


def settings_digest(settings: Mapping[str, Any]) -> str:
    return stable_hash({k: settings[k] for k in sorted(settings)}, 16)


def local_units(cells: Sequence[Any]) -> tuple[Unit, ...]:
    """A run here: one unit per cell, every backend of the cell, in recipe order ([ray]
    kinds do not apply). Ids are stable across runs of the same recipe, as on Ray."""
    units = []
    for index, cell in enumerate(cells):
        backends = list(cell.backends)
        digest = settings_digest(cell.settings)
        unit_id = stable_hash({"model": cell.model, "variant": cell.variant, "kind": LOCAL_KIND, "backends": backends, "settings": digest}, 16)
        units.append(Unit(index, cell.model, cell.variant, LOCAL_KIND, tuple(backends), unit_id))
    return tuple(units)


class Ledger:
    def __init__(self, path: Path, units: Sequence[Unit], command: Optional[str], extra: dict[str, Any], resume: bool = False, local: bool = False):
        self.local = local  # no Ray: the document's machine is this one, rows carry no Ray node
        self.path = Path(path)
        self.units = tuple(units)
        self.command = command
        self.extra = dict(extra)
        self.nodes: dict[str, dict[str, Any]] = {}  # ray node id -> what it is, as recorded
        self.entries: dict[str, dict[str, Any]] = {u.id: {"state": WAITING} for u in units}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.parity: dict[str, list[dict[str, Any]]] = {}
        self.resumed: set[str] = set()
        if resume:
            self._read_back()

    # ------------------------------------------------------------------ resuming

    def _read_back(self) -> None:
        from ..results.document import load_results_document

        if not self.path.exists():
            return
        try:
            previous = load_results_document(self.path, normalise=False)
        except DataError as e:
            raise DataError(f"--resume: {e}") from None
        finished = {e["id"]: e for e in (previous.get("cluster") or {}).get("units", []) if isinstance(e, dict) and e.get("state") == DONE}
        for unit in self.units:
            if unit.id not in finished:
                continue
            rows = [r for r in previous.get("results", []) if (r.get("environment") or {}).get("unit") == unit.id]
            if not rows:
                continue
            self.rows[unit.id] = rows
            self.parity[unit.id] = [p for p in previous.get("parity", []) if p.get("unit") == unit.id]
            self.entries[unit.id] = {**finished[unit.id], "resumed": True}
            self.resumed.add(unit.id)
            node = finished[unit.id].get("ray_node")
            if node and node in (previous.get("cluster") or {}).get("nodes", {}):
                self.nodes[node] = previous["cluster"]["nodes"][node]

    @property
    def to_run(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if u.id not in self.resumed)

    # ------------------------------------------------------------------ recording

    def running(self, unit: Unit, node: dict[str, Any]) -> None:
        if self.entries[unit.id]["state"] in (WAITING, RUNNING):
            self.entries[unit.id] = {"state": RUNNING, "node": node.get("name"), "ray_node": node.get("ray_node")}

    def record(self, unit: Unit, document: dict[str, Any], node: dict[str, Any], seconds: float, attempts: int = 1, artifact_key: Optional[str] = None) -> None:
        """A finished unit: its rows (some may carry their backend's error), marked with the
        node that timed them and the unit."""
        where = {"node": node.get("name"), "node_ip": node.get("ip"), "ray_node": node.get("ray_node"), "kind": unit.kind, "unit": unit.id}
        if self.local:
            where = {k: v for k, v in where.items() if v is not None}
        self.rows[unit.id] = [{**row, "environment": {**(row.get("environment") or {}), **where}} for row in document.get("results", [])]
        self.parity[unit.id] = [{"model": unit.model, "variant": unit.variant, "unit": unit.id, **p} for p in document.get("parity", [])]
        failed = [r["backend"] for r in self.rows[unit.id] if r.get("error")]
        if node.get("ray_node") is not None:
            self.nodes[node["ray_node"]] = {k: v for k, v in node.items() if k != "ray_node"}
        self.entries[unit.id] = {
            "state": DONE, "node": node.get("name"), **({"ray_node": node.get("ray_node")} if not self.local else {}),
            "seconds": round(seconds, 2), "images": document.get("images"),
            **({"artifact_key": artifact_key} if artifact_key else {}), **({"failed_backends": failed} if failed else {}),
            **({"attempts": attempts} if attempts > 1 else {}),
        }

    def fail(self, unit: Unit, reason: str, artifact_key: str = "-") -> None:
        """A unit that produced nothing: a row per backend saying why."""
        self.rows[unit.id] = [
            BenchResult.failed(unit.model, b, unit.variant, artifact_key, reason, {"kind": unit.kind, "unit": unit.id}).to_dict()
            for b in unit.backends
        ]
        self.parity[unit.id] = []
        self.entries[unit.id] = {"state": FAILED, "error": reason}

    def interrupt(self) -> None:
        for entry in self.entries.values():
            if entry["state"] in (WAITING, RUNNING):
                entry.update(state=INTERRUPTED)

    # ------------------------------------------------------------------ the file

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries.values():
            counts[entry["state"]] = counts.get(entry["state"], 0) + 1
        return counts

    def results(self) -> list[BenchResult]:
        return [BenchResult.from_dict(r) for u in self.units for r in self.rows.get(u.id, [])]

    def document(self) -> dict[str, Any]:
        from ..results.document import results_document

        units = [{"id": u.id, "model": u.model, "variant": u.variant, "kind": u.kind, "backends": list(u.backends), **self.entries[u.id]} for u in self.units]
        rows = [r for u in self.units for r in self.rows.get(u.id, [])]
        document = results_document(
            [], command=self.command, parity=[p for u in self.units for p in self.parity.get(u.id, [])],
            machine=self._local_machine(rows) if self.local else {"cluster": self.extra.get("cluster", {}).get("address")},
            extra={**self.extra, "cluster": {**self.extra.get("cluster", {}), "nodes": self.nodes, "units": units, "counts": self.counts()}},
        )
        document["results"] = rows  # as the nodes wrote them (BenchResult dicts), in recipe order
        return document

    @staticmethod
    def _local_machine(rows: list[dict[str, Any]]) -> dict[str, Any]:
        """This machine, as its first measured row describes it (a run's results document
        always did so), else as timing.machine_info() does."""
        for row in rows:
            if not row.get("error") and (row.get("environment") or {}).get("cpu"):
                return {k: v for k, v in row["environment"].items() if k not in ("unit", "kind", "node")}
        from ..timing import machine_info

        return machine_info()

    def write(self) -> Path:
        from ..results.document import validate_results_document, write_results

        document = self.document()
        validate_results_document(document, self.path)
        return write_results(document, self.path)


@dataclass
class RunOutcome:
    """What a whole `edgekit run` leaves, whichever launcher ran it: the ledger (rows and
    states, the file written), notes to print, the seconds the cells took, and the cells
    (labels) whose INT8 budget was not met on the calibration images."""

    ledger: Ledger
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    budget_missed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[BenchResult]:
        """The rows that carry an error."""
        return [r for r in self.ledger.results() if r.error]
