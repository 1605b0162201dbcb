"""Where a bench runs: one protocol at recipe level, three launchers.

    local.py     LocalLauncher: worker processes on this machine
    ssh.py       SshLauncher: a bundle copied to a device over ssh, run there by its own Python
    ledger.py    the one results file of a run, written as each unit finishes; --resume reads it
    cluster/launcher.py (edgekit.cluster, the only package that imports Ray): RayLauncher

Every launcher runs a recipe's cells the same way (``Launcher``): ``check_cells`` refuses
what cannot run before any work, ``ledger`` names the units it records (one per cell here
and over ssh, one per cell and device kind on Ray) in the results file, and ``run`` runs
the units the ledger has left, recording each as it finishes, so that ``--resume`` works
whichever launcher ran. LocalLauncher and SshLauncher also bench one cell
(``plan.CellLauncher``: `edgekit bench`, ``edgekit.bench``); ``launcher_for`` picks one of
them from the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

from ..progress import BenchProgress as RunProgress  # (label, stage, done, total)

if TYPE_CHECKING:
    from ..options import Settings
    from ..plan import Cell
    from .ledger import Ledger, RunOutcome


class Launcher(Protocol):
    """Where a recipe's cells run."""

    name: str  # "local", "ssh", "ray": the results file's cluster.launcher
    resume_hint: str  # what `edgekit run` takes again to go on (" --ray"), for the interrupted line

    def check_cells(self, cells: Sequence["Cell"]) -> None:
        """Refuse what cannot run (runtimes, the device, the images), before any work."""

    def ledger(self, cells: Sequence["Cell"], output: Path, *, command: Optional[str], extra: dict[str, Any], resume: bool) -> "Ledger":
        """The results file this launcher records its units in (with ``resume``: the units it
        already holds as done are kept)."""

    def run(self, cells: Sequence["Cell"], ledger: "Ledger", progress: RunProgress) -> "RunOutcome":
        """Run every unit ``ledger`` has left, each recorded as it finishes; Ctrl-C or SIGTERM
        marks the unfinished ones interrupted, writes the file and raises KeyboardInterrupt."""


def launcher_for(settings: "Settings"):
    """SshLauncher for --remote (checked for form here, for reachability in check()), else local."""
    from ..core import UsageError
    from ..remote import RemoteSettings
    from ..session import BenchSettings

    remote = settings.bind(RemoteSettings)
    if remote.host is None:
        if remote.ssh_options:
            raise UsageError("--ssh-option applies to --remote runs")
        from .local import LocalLauncher

        return LocalLauncher(device=settings.bind(BenchSettings).device)
    from ..remote import RemoteRequest
    from .ssh import SshLauncher

    return SshLauncher(RemoteRequest.parse(remote.host, remote.ssh_options, remote.python, remote.folder), settings)


def run_recipe(cells: Sequence["Cell"], launcher: Launcher, output: Path, *, resume: bool, command: Optional[str],
               extra: dict[str, Any], progress: RunProgress = lambda label, stage, done, total: None) -> "RunOutcome":
    """Every cell where ``launcher`` says, into the one results file at ``output``: the same
    path for every launcher. A cell that fails is a row per backend with its error and the
    run goes on; with ``resume``, the units the file holds as done are kept."""
    ledger = launcher.ledger(cells, Path(output), command=command, extra=extra, resume=resume)
    return launcher.run(cells, ledger, progress)
