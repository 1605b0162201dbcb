"""What board this is: a device-tree model, and a Jetson's L4T and JetPack releases (read
from the files JetPack installs; None elsewhere). Generic: doctor reports it, a backend
that depends on the board (TensorRT on JetPack) asks it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

DPKG_TIMEOUT_S = 10


def board_model(device_tree: Path = Path("/proc/device-tree/model")) -> Optional[str]:
    try:
        return device_tree.read_bytes().rstrip(b"\x00").decode(errors="replace").strip() or None
    except OSError:
        return None


def jetson(release: Path = Path("/etc/nv_tegra_release"), device_tree: Path = Path("/proc/device-tree/model")) -> Optional[dict[str, Any]]:
    """A Jetson board: its model, the L4T release ('# R35 (release), REVISION: 4.1' ->
    '35.4.1') and the JetPack version where the nvidia-jetpack package says; None elsewhere."""
    model = board_model(device_tree)
    try:
        text = release.read_text(errors="replace")
    except OSError:
        text = ""
    if not text and not (model and "jetson" in model.lower()):
        return None
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return {"model": model, "l4t": f"{found.group(1)}.{found.group(2)}" if found else None, "jetpack": _jetpack_version()}


def _jetpack_version() -> Optional[str]:
    if shutil.which("dpkg-query") is None:
        return None
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True, timeout=DPKG_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip().split("-")[0] or None
