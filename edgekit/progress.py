"""Progress callbacks: the one signature of builds and transforms, the one of bench runs (stdlib only: the device runner imports it).

``done``/``total`` are None for a one-off message; the CLI turns counted stages into a
line with the rate and ETA.
"""

from __future__ import annotations

from typing import Callable, Optional

# (stage, done, total) -> None: builds, steps, transforms, bundles
Progress = Callable[[str, Optional[int], Optional[int]], None]

# (backend or cell label, stage, done, total) -> None: bench sessions, runs, the device runner
BenchProgress = Callable[[str, str, Optional[int], Optional[int]], None]


def quiet(stage: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
    pass
