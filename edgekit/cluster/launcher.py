"""`edgekit run RECIPE --ray [ADDRESS]`: a recipe's cells as Ray tasks on a cluster.

Ray places, retries and moves the work; edgekit only says what each piece needs:

- a build (export, the variant's steps, a bundle) asks for one ``edgekit_build``;
- a timed unit asks for one unit of its device kind, which its node offers once (so no
  two timed units share a node), and takes the build's output as an argument: Ray starts
  it when the build is done and brings the bytes to its node (the artifact, for nodes
  with the full edgekit; a bundle for the others, see placement.py);
- a task whose node dies is retried elsewhere (``[ray] retries``), then its unit is a
  failed row with the reason. A unit whose kind no node offers any more fails after
  ``[ray] wait_for_kind`` seconds instead of waiting forever.

Results go into the one results file as units finish (edgekit.launch.ledger); progress
shows what each node is doing. ``RayLauncher`` is the recipe-level launcher of
edgekit.launch (the same protocol as a run here or over ssh).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core import BackendUnavailableError, EdgekitError, UsageError
from ..options import BY_KEY, runner_argv
from . import on_device
from ..launch.ledger import Ledger, RunOutcome
from ..remote import RemoteSettings
from .placement import BUILD_RESOURCE, DEFAULT_KIND, ClusterSettings, Node, Unit, cluster_problems, full_edgekit, plan_units, timing_resources

LOCAL = "local"  # `--ray` alone: a Ray instance on this machine, for trying it out
POLL_S = 0.5
# The instance `--ray` starts here builds and times: one build slot, which each timed cell
# takes too (placement.py), so nothing builds beside a timing.
LOCAL_RESOURCES = {BUILD_RESOURCE: 1, DEFAULT_KIND: 1}
ORPHAN_CHECK_S = 2.0  # how often the driver asks Ray which nodes are alive
_DATA_SELECTION = ("data", "labels", "val_split")  # the bundle carries the images it was built with

# (label, stage, done, total) -> None, as the CLI's progress display takes it
from ..progress import BenchProgress as Progress  # (label, stage, done, total)


def _ray():
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("--ray needs Ray: pip install 'edgekit[ray]' (every node needs the same Ray version)") from None
    return ray


def connect(address: str) -> None:
    """Join the cluster at ``address`` ('auto', host:port, ray://host:port), or start a
    Ray instance here for LOCAL."""
    ray = _ray()
    quiet = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's C++ warnings would interleave with progress
    if address == LOCAL:
        ray.init(num_cpus=os.cpu_count() or 1, resources=LOCAL_RESOURCES, **quiet)
        return
    _check_reachable(address)
    try:
        ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except (ConnectionError, RuntimeError, ValueError) as e:
        if address == "auto":
            raise EdgekitError("--ray auto: this machine has joined no Ray cluster (ray start --address HEAD:PORT), or name the head: --ray HEAD:PORT") from None
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(
            f"cannot join the Ray cluster at {address}: {message} (a cluster started with Ray's token authentication, "
            "the default of `ray start --head`, needs RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token)"
        ) from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray waits minutes for a head that is not there; a TCP connect says so in seconds."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise EdgekitError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def alive_nodes() -> list[Node]:
    return [Node.from_ray(n) for n in _ray().nodes() if n.get("Alive")]


def absolute(cell: Any) -> Any:
    """The cell with every path made absolute here: tasks run in other folders."""
    import dataclasses

    paths = {o.key: Path(cell.settings[o.key]).resolve() for o in BY_KEY.values() if o.kind == "path" and cell.settings[o.key] is not None}
    return dataclasses.replace(cell, settings=cell.settings.replace(**paths)) if paths else cell


def runner_args(settings) -> list[str]:
    return runner_argv(settings.replace(**{k: None for k in _DATA_SELECTION}))


def failure_reason(error: BaseException, retries: int) -> str:
    """One line for a unit's rows, from what Ray raised."""
    ray = _ray()
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if cause is not None:  # the task's own exception: its message
            return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return (str(error).strip().splitlines() or [type(error).__name__])[-1]  # a traceback: its last line
    lost = (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, lost):
        return f"lost after {retries + 1} tries ({type(error).__name__}: {first})"
    if isinstance(error, ray.exceptions.TaskCancelledError):
        return "cancelled"
    return f"{type(error).__name__}: {first}"


@dataclass
class _Board:
    """Progress from the tasks: an actor on this node that they report to, drained here."""

    actor: Any

    @classmethod
    def start(cls) -> "_Board":
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        class Board:
            def __init__(self):
                self.events: list[tuple] = []

            def report(self, *event) -> None:
                self.events.append(event)

            def drain(self) -> list[tuple]:
                events, self.events = self.events, []
                return events

        here = ray.get_runtime_context().get_node_id()
        actor = ray.remote(Board).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        return cls(actor)

    def drain(self) -> list[tuple]:
        return _ray().get(self.actor.drain.remote())


@dataclass
class RayLauncher:
    """A recipe's units as Ray tasks on the cluster at ``address`` ('auto', host:port,
    ray://host:port, or LOCAL: an instance started here)."""

    address: str
    name: str = "ray"
    resume_hint: str = " --ray"

    def check_cells(self, cells: Sequence[Any]) -> None:
        from ..launch.local import check_images

        if any(c.settings.bind(RemoteSettings).host for c in cells):
            raise UsageError("--ray and [bench] remote are two ways to reach devices; with --ray, a device is a node of the cluster")
        check_images(cells)

    def ledger(self, cells: Sequence[Any], output: Path, *, command: Optional[str], extra: dict[str, Any], resume: bool) -> Ledger:
        """One unit per cell and device kind (placement.plan_units)."""
        ray = _ray()
        shown = "a local Ray instance" if self.address == LOCAL else self.address
        return Ledger(output, plan_units(cells), command, {**extra, "cluster": {"address": shown, "ray": ray.__version__}}, resume)

    def run(self, cells: Sequence[Any], ledger: Ledger, progress: Progress) -> RunOutcome:
        """Build and time every unit ``ledger`` has left on the cluster; the results file is
        written after each one. Ctrl-C cancels what is running, marks it interrupted in the
        file and raises KeyboardInterrupt."""
        ray = _ray()
        address = self.address
        started = time.monotonic()
        connect(address)
        timing = ledger.extra["cluster"]["seconds"] = {"connect": round(time.monotonic() - started, 2)}
        try:
            nodes = alive_nodes()
            problems = cluster_problems(nodes, ledger.to_run, "HEAD:PORT" if address in (LOCAL, "auto") else address)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise UsageError(f"the Ray cluster cannot run this recipe: {problems[0]}{more}")
            outcome = _Run(ray, cells, ledger, progress, nodes).run()
        finally:
            stopping = time.monotonic()
            ray.shutdown()  # a local instance stops; from a cluster, this driver leaves (its unfinished tasks go with it)
            timing["disconnect"] = round(time.monotonic() - stopping, 2)
        timing["cells"] = round(outcome.seconds, 2)
        ledger.write()  # with the time Ray itself took, for the overhead benchmark
        return outcome


class _Run:
    def __init__(self, ray, cells: Sequence[Any], ledger: Ledger, progress: Progress, nodes: Sequence[Node]):
        from .on_node import code_digest

        self.nodes = nodes
        self.ray, self.ledger, self.progress = ray, ledger, progress
        self.cells = [absolute(c) for c in cells]
        self.code = code_digest()
        self.notes: list[str] = []
        self.budget_missed: list[str] = []  # cell labels
        self.pending: dict[Any, tuple[str, Any]] = {}  # ref -> ("build", cell index) | ("unit", Unit)
        self.attempts: dict[str, int] = {}  # unit id -> task starts seen (retries after a node died)
        self.kind_gone: dict[str, float] = {}
        self.checked = 0.0  # when the driver last asked Ray which nodes are alive
        self.by_id = {u.id: u for u in ledger.units}
        self.done_per_node: dict[str, int] = {}

    def submit(self) -> None:
        ray = self.ray
        ray.cloudpickle.register_pickle_by_value(on_device)  # bundle nodes need no edgekit install
        from . import on_node

        build = ray.remote(on_node.build_cell)
        in_place = ray.remote(on_node.time_artifact)
        from_bundle = ray.remote(on_device.time_bundle)
        self.board = _Board.start()
        to_run = self.ledger.to_run
        for index in dict.fromkeys(u.cell for u in to_run):
            cell, units = self.cells[index], [u for u in to_run if u.cell == index]
            full = [u for u in units if full_edgekit(u.kind, self.nodes)]
            bundle_for = tuple(dict.fromkeys(b for u in units if u not in full for b in u.backends))
            ray_settings = cell.settings.bind(ClusterSettings)
            retries, shared = ray_settings.retries, ray_settings.shared
            meta, artifact, bundle, images = build.options(num_cpus=1, resources={BUILD_RESOURCE: 1}, max_retries=retries, num_returns=4, name=f"build {cell.label}").remote(
                cell, bundle_for, bool(full), shared, self.code, self.board.actor, f"build:{index}")
            self.pending[meta] = ("build", index)
            for unit in units:
                options = {"num_cpus": 1, "resources": timing_resources(unit.kind, self.nodes), "max_retries": retries, "name": f"time {unit.label}"}
                if unit in full:
                    ref = in_place.options(**options).remote(meta, artifact, cell, unit.backends, self.code, self.board.actor, unit.id)
                else:
                    ref = from_bundle.options(**options).remote(meta, bundle, [images], unit.backends, runner_args(cell.settings), self.board.actor, unit.id)
                self.pending[ref] = ("unit", unit)

    def run(self) -> RunOutcome:
        """Submit everything, then collect as units finish. Ctrl-C and SIGTERM only set a
        flag the loop reads (Ray's blocking calls may swallow an interrupt raised inside
        them); the loop then cancels what runs, records it and raises KeyboardInterrupt."""
        import signal

        started = time.monotonic()
        self.ledger.write()  # the file accounts for every unit from the start
        stop: list[int] = []
        previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.submit()
            while self.pending and not stop:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
                self.show_progress()
                for ref in ready:
                    self.finish(ref)
                self.fail_orphans()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if stop:
            for ref in self.pending:
                self.ray.cancel(ref, force=True)
            self.ledger.interrupt()
            self.ledger.write()
            raise KeyboardInterrupt
        return RunOutcome(self.ledger, self.notes, time.monotonic() - started, self.budget_missed)

    def finish(self, ref) -> None:
        what, item = self.pending.pop(ref)
        if what == "build":
            try:
                meta = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                return  # its units fail with the reason, through their own refs
            if meta.get("note"):
                self.notes.append(meta["note"])
            if meta.get("budget_met") is False:
                self.budget_missed.append(self.cells[item].label)
            return
        unit: Unit = item
        retries = self.cells[unit.cell].settings.bind(ClusterSettings).retries
        try:
            outcome = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            self.ledger.fail(unit, failure_reason(e, retries))
            self.progress(f"unit {unit.id[:6]}", f"{unit.label}: failed: {self.ledger.entries[unit.id]['error']}", None, None)
        else:
            self.ledger.record(unit, outcome["document"], outcome["node"], outcome["seconds"], attempts=max(1, self.attempts.get(unit.id, 0)))
            node = outcome["node"]["name"]
            self.done_per_node[node] = self.done_per_node.get(node, 0) + 1
            self.progress(node, f"{unit.label}: done ({self.done_per_node[node]} on this node)", None, None)
        self.ledger.write()

    def show_progress(self) -> None:
        for unit_id, node_id, node_name, stage, done, total in self.board.drain():
            unit = self.by_id.get(unit_id)
            if unit is not None:
                if stage == on_device.STARTED:  # a first attempt, or a retry on another node
                    self.attempts[unit_id] = self.attempts.get(unit_id, 0) + 1
                    self.ledger.running(unit, {"name": node_name, "ray_node": node_id})
                    self.ledger.write()
                label = unit.label
            else:
                cell = self.cells[int(unit_id.split(":")[1])]
                label = f"build {cell.label}"
            self.progress(node_name, f"{label}: {stage}", done, total)

    def fail_orphans(self) -> None:
        """Units whose device kind (or any build node) has left the cluster, for longer
        than their ``wait_for_kind``, fail rather than wait for ever."""
        if not self.pending:
            return
        now = time.monotonic()
        if now - self.checked < ORPHAN_CHECK_S:
            return
        self.checked = now
        nodes = alive_nodes()
        for ref, (what, item) in list(self.pending.items()):
            if what != "unit":
                continue
            unit: Unit = item
            building = any(w == "build" and i == unit.cell for w, i in self.pending.values())
            needed = [unit.kind] + ([BUILD_RESOURCE] if building else [])
            missing = [r for r in needed if not any(n.offers(r) for n in nodes)]
            if not missing:
                self.kind_gone.pop(unit.id, None)
                continue
            since = self.kind_gone.setdefault(unit.id, now)
            wait = self.cells[unit.cell].settings.bind(ClusterSettings).wait_for_kind
            if now - since >= wait:
                self.ray.cancel(ref, force=True)
                del self.pending[ref]
                self.ledger.fail(unit, f"no node in the cluster offers {', '.join(repr(m) for m in missing)} any more (waited {wait:g} s)")
                self.progress(f"unit {unit.id[:6]}", f"{unit.label}: failed: {self.ledger.entries[unit.id]['error']}", None, None)
                self.ledger.write()
