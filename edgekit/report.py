"""Results out: the JSON file every later tool reads, and tables for people."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .core import BenchResult

RESULTS_FORMAT = "edgekit-results/1"


def results_document(
    results: Sequence[BenchResult],
    *,
    artifact: Optional[dict[str, Any]] = None,
    images: Optional[dict[str, Any]] = None,
    command: Optional[str] = None,
    parity: Optional[list[dict[str, Any]]] = None,
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    machine = results[0].environment if results else {}
    return {
        "format": RESULTS_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {k: v for k, v in machine.items() if k != "runtime"},
        "artifact": artifact,
        "images": images,
        "results": [r.to_dict() for r in results],
        "parity": parity or [],
        **(extra or {}),
    }


def write_json(document: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
    return path


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


COLUMNS = (
    "backend",
    "precision",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "img/s",
    "peak RSS MB",
    "size MB",
    "top-1 %",
    "top-1 drop",
    "agree %",
    "mean KL",
)


def result_rows(results: Iterable[BenchResult]) -> list[list[str]]:
    rows = []
    for r in results:
        acc = r.accuracy
        accuracy_cells = [
            _fmt(acc.top1 if acc else None, ".1f"),
            _fmt(acc.top1_drop if acc else None, "+.2f"),
            _fmt(acc.agreement if acc else None, ".1f"),
            _fmt(acc.mean_kl if acc else None, ".2e"),
        ]
        for i, lat in enumerate(r.latency or (None,)):
            rows.append(
                [
                    r.backend if i == 0 else "",
                    r.precision if i == 0 else "",
                    str(lat.batch_size) if lat else "-",
                    _fmt(lat.p50_ms if lat else None, ".2f"),
                    _fmt(lat.p90_ms if lat else None, ".2f"),
                    _fmt(lat.p99_ms if lat else None, ".2f"),
                    _fmt(lat.throughput_ips if lat else None, ".1f"),
                    _fmt(r.peak_rss_mb, ".0f") if i == 0 else "",
                    _fmt(r.size_mb, ".1f") if i == 0 else "",
                    *(accuracy_cells if i == 0 else [""] * 4),
                ]
            )
    return rows


def markdown_table(results: Sequence[BenchResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in result_rows(results)]
    return "\n".join(lines) + "\n"


def rich_table(results: Sequence[BenchResult], title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("backend", "precision") else "right")
    for row in result_rows(results):
        table.add_row(*row)
    return table


def throughput_table(results: Sequence[BenchResult]):
    """Asynchronous-request (throughput mode) figures beside the latency-mode ones."""
    from rich.table import Table

    table = Table(title="throughput mode (asynchronous requests)", title_justify="left")
    for name in ("backend", "batch", "requests", "streams", "img/s", "latency-mode img/s"):
        table.add_column(name, justify="left" if name == "backend" else "right")
    for r in results:
        latency_mode = {s.batch_size: s.throughput_ips for s in r.latency}
        for t in r.throughput:
            table.add_row(r.backend, str(t.batch_size), str(t.requests), str(t.streams), f"{t.throughput_ips:.1f}", _fmt(latency_mode.get(t.batch_size), ".1f"))
    return table


def parity_table(parity, title: str):
    """Pairwise top-1 agreement and max logit difference between backends."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("backends", "top-1 agreement %", "max |logit diff|"):
        table.add_column(name, justify="left" if name == "backends" else "right")
    for p in parity:
        table.add_row(f"{p.first} vs {p.second}", f"{p.agreement:.1f}", f"{p.max_abs_diff:.4g}")
    return table
