"""What every benchmark here records about the run: the CPU's INT8-relevant flags, the git
state of the edgekit/ source it imported, and timestamped progress lines on stderr."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "amx_tile")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_flags() -> dict[str, bool]:
    """Which of the INT8-relevant instruction sets the CPU reports."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return {}
    return {f: f in flags for f in CPU_FLAGS}


def git_state() -> dict[str, Any]:
    """Read-only (no index lock): the commit, the uncommitted changes in edgekit/, and a hash
    of the edgekit/ source as this run imported it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.rstrip()

    digest = hashlib.sha256()
    for path in sorted((REPO / "edgekit").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return {
        "commit": git("rev-parse", "HEAD"),
        "edgekit_uncommitted_changes": [line for line in git("status", "--short", "--", "edgekit").splitlines() if line.strip()],
        "edgekit_source_sha256": digest.hexdigest(),
    }
