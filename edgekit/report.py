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


POWER_COLUMNS = ("mean W", "mJ/img")  # only where a power source was read (edgekit.telemetry)


def has_power(results: Iterable[BenchResult]) -> bool:
    return any(r.power for r in results)


def table_columns(results: Sequence[BenchResult]) -> tuple[str, ...]:
    return COLUMNS + POWER_COLUMNS if has_power(results) else COLUMNS


def _power_cells(r: BenchResult, batch_size: Optional[int]) -> list[str]:
    power = next((p for p in r.power if p.batch_size == batch_size), None)
    return [_fmt(power.mean_power_w if power else None, ".2f"), _fmt(power.energy_per_inference_mj if power else None, ".3g")]


def result_rows(results: Iterable[BenchResult]) -> list[list[str]]:
    results = list(results)
    with_power = has_power(results)
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
                    *(_power_cells(r, lat.batch_size if lat else None) if with_power else []),
                ]
            )
    return rows


def markdown_table(results: Sequence[BenchResult]) -> str:
    columns = table_columns(results)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in result_rows(results)]
    return "\n".join(lines) + "\n"


def text_table(results: Sequence[BenchResult], title: str) -> str:
    """The same table in plain aligned text, for machines without rich (the on-device runner)."""
    rows = [list(table_columns(results))] + result_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {COLUMNS.index("backend"), COLUMNS.index("precision")}
    lines = [title]
    for row in rows:
        lines.append(" ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines) + "\n"


def rich_table(results: Sequence[BenchResult], title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in table_columns(results):
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


def has_device_time(results: Sequence[BenchResult]) -> bool:
    return any(lat.compute_p50_ms is not None for r in results for lat in r.latency)


def device_time_table(results: Sequence[BenchResult]):
    """Compute-only device time (CUDA events around the inference alone) beside the
    end-to-end host-to-host time that includes the copies."""
    from rich.table import Table

    table = Table(title="device time (inference alone) vs end to end (with host<->device copies)", title_justify="left")
    for name in ("backend", "precision", "batch", "compute p50 ms", "end-to-end p50 ms", "compute img/s", "end-to-end img/s", "GPU memory MB"):
        table.add_column(name, justify="left" if name in ("backend", "precision") else "right")
    for r in results:
        for i, lat in enumerate(lat for lat in r.latency if lat.compute_p50_ms is not None):
            table.add_row(
                r.backend, r.precision, str(lat.batch_size), f"{lat.compute_p50_ms:.3f}", f"{lat.p50_ms:.3f}",
                _fmt(lat.compute_throughput_ips, ".0f"), f"{lat.throughput_ips:.0f}", _fmt(r.gpu_memory_mb, ".0f") if i == 0 else "",
            )
    return table
