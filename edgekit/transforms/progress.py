"""The progress callback every transform reports through: (phase, done, total) -> None.

``done``/``total`` are None for a one-off message; the CLI turns counted phases into a
line with the rate and ETA.
"""

from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[[str, Optional[int], Optional[int]], None]


def quiet(stage: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
    pass
