"""A bundle copied to another machine over ssh and run there by its own Python."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..backends.base import parse_devices
from ..core import Artifact, BenchResult, UsageError
from ..data import ImageSet
from ..evaluation import BackendParity
from ..options import Settings, runner_argv
from ..progress import BenchProgress as Progress
from ..session import BASELINE, BenchRequest, BenchRun, BenchSettings
from .local import InOrder


@dataclass
class SshLauncher(InOrder):
    """A bundle copied to another machine over ssh and run there by its own Python; PyTorch
    runs here, once, for the reference logits the bundle carries. A recipe's cells run one
    after the other, each recorded in the ledger as it finishes (as LocalLauncher's)."""

    remote: Any  # edgekit.remote.RemoteRequest
    settings: Settings
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    name: str = "ssh"
    python_version: Optional[str] = None
    resume_hint: str = ""

    def check(self, backends: Sequence[str]) -> None:
        from ..bundle import check_backends
        from ..remote import check_connection

        deployed = [b for b in backends if b != BASELINE]
        if not deployed:
            raise UsageError("--remote runs deployment backends (a bundle on the device); add one with --backend")
        check_backends(deployed)
        spec = self.settings.bind(BenchSettings).device
        away = [name for name in parse_devices(spec)[1] if name not in deployed]  # what the device has, its runner checks
        if away:
            raise UsageError(f"--device {spec}: {' and '.join(away)} {'does' if len(away) == 1 else 'do'} not run on {self.remote.host} (there: {', '.join(deployed)}; PyTorch runs here, on the CPU, for the reference logits)")
        self.python_version = check_connection(self.remote.host, self.remote.settings, self.remote.python)

    def bench(self, artifact: Artifact, request: BenchRequest, images: ImageSet, progress: Progress) -> BenchRun:
        from ..remote import bench_remote
        from ..results.document import validate_results_document

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

    def where(self) -> str:
        return str(self.remote.host)
