"""Where a recipe's work goes on a cluster, decided before anything runs.

A device kind is a Ray custom resource that a node offers (``ray start ... --resources
'{"jetson_orin_nano": 1}'``). A recipe names the kind each backend is timed on
(``[ray] kinds = ["x86_avx512", "tensorrt=jetson_orin_nano"]``, per model in
``[model.<name>]``); a backend named under several kinds is timed on each.

Work comes in units: one build per cell (export and the variant's steps, on a node
offering BUILD_RESOURCE), and one timed unit per cell and kind. How a unit is timed
depends on its kind's nodes:

- nodes that offer BUILD_RESOURCE have the full edgekit (PyTorch too): the unit receives
  the built artifact and runs the same bench session as `edgekit run` here, the PyTorch
  original included;
- other nodes (a Jetson with Ray, numpy, Pillow and its runtime) receive a bundle and run
  its torch-free runner, judged against the PyTorch logits the bundle carries.

A timed unit asks for one unit of its kind, and every node that offers a recipe's kind
offers exactly one unit of exactly one of them: so no two timed units share a node at
once, while builds run wherever BUILD_RESOURCE has room. On a node that both builds and
times, a timed unit takes the node's one build slot too: nothing builds beside a timing.

Ray-free and torch-free, so it is tested without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..backends.base import BASELINE_BACKEND
from ..core import UsageError, stable_hash
from ..launch.ledger import Unit, settings_digest
from ..options import declared

DEFAULT_KIND = "host"  # the kind of a backend the recipe gives none
BUILD_RESOURCE = "edgekit_build"  # nodes with the full edgekit install (PyTorch): builds, PyTorch timing
BASELINE = BASELINE_BACKEND
_KIND = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_RAY_OWN = {"CPU", "GPU", "TPU", "memory", "object_store_memory", BUILD_RESOURCE}


def parse_kinds(entries: Sequence[str], backends: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """backend -> the kinds it is timed on, from ``KIND`` (every backend without its own
    entry) and ``BACKEND=KIND`` entries."""
    from ..backends import BACKENDS

    general: list[str] = []
    specific: dict[str, list[str]] = {}
    for entry in entries:
        backend, _, kind = entry.rpartition("=")
        if backend and backend not in BACKENDS:
            raise UsageError(f"[ray] kinds: {entry!r} names backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        if not _KIND.match(kind) or kind in _RAY_OWN or kind.startswith("node:"):
            raise UsageError(
                f"[ray] kinds: {kind!r} cannot name a device kind (letters, digits, '_', '.', '-', "
                f"starting with a letter or '_'; not one of {', '.join(sorted(_RAY_OWN))})"
            )
        target = specific.setdefault(backend, []) if backend else general
        if kind not in target:
            target.append(kind)
    for backend in specific:
        if backend not in backends:
            raise UsageError(f"[ray] kinds names {backend}, which the recipe does not run (backends: {', '.join(backends)})")
    return {b: tuple(specific.get(b) or general or [DEFAULT_KIND]) for b in backends}


@dataclass(frozen=True)
class ClusterSettings:
    """The [ray] table: which nodes time the cells, retries, waits, a shared folder."""

    kinds: tuple[str, ...] = declared("device_kinds").field(convert=tuple)
    retries: int = declared("retries").field()
    wait_for_kind: float = declared("wait_for_kind").field(convert=float)
    shared: Optional[str] = declared("shared").field(convert=str)


def plan_units(cells: Sequence[Any]) -> tuple[Unit, ...]:
    """Every cell's timed units, in recipe order: one per kind, with the backends timed there."""
    units = []
    for index, cell in enumerate(cells):
        kinds = parse_kinds(cell.settings.bind(ClusterSettings).kinds, cell.backends)
        by_kind: dict[str, list[str]] = {}
        for backend in cell.backends:
            for kind in kinds[backend]:
                by_kind.setdefault(kind, []).append(backend)
        digest = settings_digest(cell.settings)
        for kind, backends in by_kind.items():
            unit_id = stable_hash({"model": cell.model, "variant": cell.variant, "kind": kind, "backends": backends, "settings": digest}, 16)
            units.append(Unit(index, cell.model, cell.variant, kind, tuple(backends), unit_id))
    return tuple(units)


# --------------------------------------------------------------------------- the cluster as it is


@dataclass(frozen=True)
class Node:
    id: str
    address: str
    resources: Mapping[str, float]

    @classmethod
    def from_ray(cls, entry: Mapping[str, Any]) -> "Node":
        """An alive node from ``ray.nodes()``."""
        return cls(entry["NodeID"], entry.get("NodeManagerAddress", "?"), dict(entry.get("Resources") or {}))

    @property
    def name(self) -> str:
        return f"{self.address}/{self.id[:6]}"

    def offers(self, resource: str) -> bool:
        return self.resources.get(resource, 0) > 0


def full_edgekit(kind: str, nodes: Sequence[Node]) -> bool:
    """Whether the nodes of ``kind`` have the full edgekit (they offer BUILD_RESOURCE)."""
    return any(n.offers(kind) and n.offers(BUILD_RESOURCE) for n in nodes)


def timing_resources(kind: str, nodes: Sequence[Node]) -> dict[str, float]:
    """What a timed unit of ``kind`` asks Ray for: its kind, and the build slot where the
    kind's nodes also build (so no build runs beside the timing)."""
    return {kind: 1, BUILD_RESOURCE: 1} if full_edgekit(kind, nodes) else {kind: 1}


def cluster_problems(nodes: Sequence[Node], units: Sequence[Unit], address: str) -> list[str]:
    """Why these units cannot run on these nodes: each is one line saying what to change."""
    problems = []
    kinds = sorted({u.kind for u in units})
    join = f"ray start --address {address}"
    if not any(n.offers(BUILD_RESOURCE) for n in nodes):
        problems.append(
            f"no node offers {BUILD_RESOURCE!r}, so nothing can build: on a machine with edgekit and PyTorch installed, "
            f"{join} --resources '{{\"{BUILD_RESOURCE}\": 1}}'"
        )
    for kind in kinds:
        needed_by = sorted({b for u in units if u.kind == kind for b in u.backends})
        if not any(n.offers(kind) for n in nodes):
            problems.append(f"no node offers device kind {kind!r} (needed by {', '.join(needed_by)}): {join} --resources '{{\"{kind}\": 1}}'")
        elif BASELINE in needed_by and not full_edgekit(kind, nodes):
            problems.append(
                f"pytorch is timed on {kind!r}, whose nodes run bundles without PyTorch (none offers {BUILD_RESOURCE!r}): "
                f"time pytorch on another kind ([ray] kinds = [..., \"pytorch=KIND\"])"
            )
    for kind in kinds:
        timing = [n for n in nodes if n.offers(kind)]
        building = [n for n in timing if n.offers(BUILD_RESOURCE)]
        if building and (len(building) < len(timing) or any(n.resources[BUILD_RESOURCE] != 1 for n in building)):
            problems.append(
                f"the {kind!r} nodes must all offer {BUILD_RESOURCE!r}: 1 or none of them offer it "
                "(a node that builds and times gives its one build slot to each timed cell, so nothing builds beside the timing)"
            )
    for node in nodes:
        offered = [k for k in kinds if node.offers(k)]
        if len(offered) > 1 or any(node.resources[k] != 1 for k in offered):
            shown = ", ".join(f"{k}: {node.resources[k]:g}" for k in offered)
            problems.append(
                f"node {node.name} offers {shown}: a timing node offers one unit of one device kind, "
                "so that no two timed cells share it (restart it with one kind, 1)"
            )
    return problems
