"""The one results file of a cluster run, rewritten (atomically) each time a unit finishes.

At every moment the file is a valid results document: the rows of the units finished so
far, and a ``cluster`` section that accounts for every unit (done, failed with its reason,
running, waiting, or interrupted by Ctrl-C). ``--resume`` reads it back and keeps the rows
of the units that are done; failed ones run again.

Ray-free and torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..core import BenchResult, DataError
from .placement import Unit

DONE, FAILED, WAITING, RUNNING, INTERRUPTED = "done", "failed", "waiting", "running", "interrupted"


class Ledger:
    def __init__(self, path: Path, units: Sequence[Unit], command: Optional[str], extra: dict[str, Any], resume: bool = False):
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

    def record(self, unit: Unit, document: dict[str, Any], node: dict[str, Any], seconds: float, attempts: int = 1) -> None:
        """A finished unit: its rows (some may carry their backend's error), marked with the
        node that timed them and the unit."""
        where = {"node": node.get("name"), "node_ip": node.get("ip"), "ray_node": node.get("ray_node"), "kind": unit.kind, "unit": unit.id}
        self.rows[unit.id] = [{**row, "environment": {**(row.get("environment") or {}), **where}} for row in document.get("results", [])]
        self.parity[unit.id] = [{"model": unit.model, "variant": unit.variant, "unit": unit.id, **p} for p in document.get("parity", [])]
        failed = [r["backend"] for r in self.rows[unit.id] if r.get("error")]
        self.nodes[node["ray_node"]] = {k: v for k, v in node.items() if k != "ray_node"}
        self.entries[unit.id] = {
            "state": DONE, "node": node.get("name"), "ray_node": node.get("ray_node"), "seconds": round(seconds, 2),
            "images": document.get("images"), **({"failed_backends": failed} if failed else {}),
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
            machine={"cluster": self.extra.get("cluster", {}).get("address")},
            extra={**self.extra, "cluster": {**self.extra.get("cluster", {}), "nodes": self.nodes, "units": units, "counts": self.counts()}},
        )
        document["results"] = rows  # as the nodes wrote them (BenchResult dicts), in recipe order
        return document

    def write(self) -> Path:
        from ..results.document import validate_results_document, write_results

        document = self.document()
        validate_results_document(document, self.path)
        return write_results(document, self.path)
