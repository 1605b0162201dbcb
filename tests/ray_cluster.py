"""A real Ray cluster on loopback for the tests: a head and worker nodes, each a
`ray start --block` process, so one can be killed outright (its raylet, its workers and
what they started) the way a machine dies."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
ENV = {
    "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_BACKEND_LOG_LEVEL": "error",
    # The GCS declares a node dead after this many failed health checks this far apart
    # (Ray's defaults, 5 x 3 s, leave a killed worker "alive" for 15-25 s of each test).
    # A killed raylet refuses the connection at once, so a live but busy node on 2 cores
    # still has the full health_check_timeout_ms (10 s) per check to answer.
    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    folder: Path
    port: int = field(default_factory=_free_port)
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **ENV}

    def start(self, name: str, resources: str, ip: str = "127.0.0.1", head: bool = False) -> None:
        """A node on loopback address ``ip`` (127.0.0.x: each worker its own, so rows name it)."""
        args = [RAY, "start", "--block", "--num-cpus", "1", "--resources", resources, "--object-store-memory", str(100 * 2**20), "--node-ip-address", ip]
        if head:
            self.ray_dir = tempfile.mkdtemp(prefix="ekray-", dir="/tmp")  # sockets: AF_UNIX paths stay under 108 bytes
            args += ["--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir", self.ray_dir, "--disable-usage-stats"]
        else:
            args += ["--address", self.address]
        log = open(self.folder / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        if head:
            self._wait_for_head()

    def _wait_for_head(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.nodes["head"].poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the Ray head did not start: {(self.folder / 'head.log').read_text()[-2000:]}")

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, node in self.nodes.items():
                if node.poll() is not None:
                    raise RuntimeError(f"Ray node {name} exited: {(self.folder / f'{name}.log').read_text()[-1500:]}")
            proc = subprocess.run([RAY, "status", "--address", self.address], capture_output=True, text=True, env=self.env)
            active = proc.stdout.split("Active:")[-1].split("Pending:")[0] if "Active:" in proc.stdout else ""
            if sum(1 for line in active.splitlines() if line.strip().startswith("1 node_")) >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"{count} Ray nodes did not come up: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")

    def node_of(self, pid: int) -> str | None:
        """The node that ``pid`` runs under (Ray starts its workers in process groups of
        their own, so the parent chain says, not the group)."""
        leaders = {proc.pid: name for name, proc in self.nodes.items()}
        for _ in range(12):
            if pid in leaders:
                return leaders[pid]
            pid = _parent(pid)
            if pid <= 1:
                return None
        return None

    def kill(self, name: str) -> None:
        """SIGKILL the node and everything under it at once, as when its machine goes."""
        root = self.nodes[name].pid
        for pid in [root, *_descendants(root)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.nodes[name].wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.nodes):
            self.kill(name)
        if getattr(self, "ray_dir", None):
            shutil.rmtree(self.ray_dir, ignore_errors=True)


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_running(fragment: str) -> list[int]:
    """PIDs whose command line holds ``fragment``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
