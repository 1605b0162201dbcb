"""Results as tables for people: plain text (the on-device runner), Markdown, rich."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from ..core import AccuracyStats, BenchResult, LatencyStats


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


COLUMNS = (
    "backend",
    "precision",
    "batch",
    "p50 ms",
    "speed-up",
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
ROUNDS_COLUMN = "p50 rounds ms"  # after "p50 ms", only where some row was timed in several rounds (--repeats)


POWER_COLUMNS = ("mean W", "mJ/img")  # only where a power source was read (edgekit.telemetry)


def has_power(results: Iterable[BenchResult]) -> bool:
    return any(r.power for r in results)


def has_rounds(results: Iterable[BenchResult]) -> bool:
    return any(len(s.p50_rounds) >= 2 for r in results for s in r.latency)


def table_columns(results: Sequence[BenchResult]) -> tuple[str, ...]:
    columns = COLUMNS
    if has_rounds(results):
        at = columns.index("p50 ms") + 1
        columns = columns[:at] + (ROUNDS_COLUMN,) + columns[at:]
    return columns + POWER_COLUMNS if has_power(results) else columns


# --------------------------------------------------------------------------- the PyTorch reference and speed-ups

REFERENCE_PRECISION = "fp32"  # the PyTorch original runs FP32 whatever the artifact's variant
REFERENCE_MARK = "reference"


def is_reference(result: BenchResult) -> bool:
    """The PyTorch FP32 original: the row every other row of its run is compared with."""
    from ..backends.base import BASELINE_BACKEND

    return result.backend == BASELINE_BACKEND and result.precision == REFERENCE_PRECISION


def find_reference(results: Iterable[BenchResult]) -> Optional[BenchResult]:
    return next((r for r in results if is_reference(r) and not r.error and r.latency), None)


def latency_band(stats: LatencyStats) -> tuple[float, float, str]:
    """How far a p50 may be off: the range of the rounds' p50s where it was timed in several
    rounds (--repeats), else p50..p90 of its one round (a wide, conservative band)."""
    rounds = [r for r in stats.p50_rounds if r > 0]
    if len(rounds) >= 2:
        return min(rounds), max(rounds), "rounds"
    return stats.p50_ms, max(stats.p90_ms, stats.p50_ms), "p90"


@dataclass(frozen=True)
class Speedup:
    """Reference p50 / this p50 at one batch size, with the range the latency spread allows:
    [reference low / this high, reference high / this low] (see latency_band)."""

    value: float
    low: float
    high: float
    basis: str  # "rounds" (both timed in rounds), "p90" (both in one round) or "rounds/p90"

    @property
    def within_noise(self) -> bool:
        """The range includes 1x: no difference from the reference was measured."""
        return self.low <= 1.0 <= self.high


def speedup(reference: Optional[LatencyStats], stats: Optional[LatencyStats]) -> Optional[Speedup]:
    if reference is None or stats is None or reference.p50_ms <= 0 or stats.p50_ms <= 0:
        return None
    value = reference.p50_ms / stats.p50_ms
    ref_low, ref_high, ref_basis = latency_band(reference)
    low, high, basis = latency_band(stats)
    return Speedup(value, min(value, ref_low / high), max(value, ref_high / low), basis if basis == ref_basis else "rounds/p90")


def reference_latency(reference: Optional[BenchResult], batch_size: int) -> Optional[LatencyStats]:
    if reference is None:
        return None
    return next((s for s in reference.latency if s.batch_size == batch_size), None)


def speedup_cell(s: Optional[Speedup]) -> str:
    if s is None:
        return "-"
    text = f"{s.value:.2f}x [{s.low:.2f}, {s.high:.2f}]"
    return text + " noise" if s.within_noise else text


def rounds_cell(stats: Optional[LatencyStats]) -> str:
    rounds = [r for r in stats.p50_rounds if r > 0] if stats else []
    if len(rounds) < 2:
        return "-"
    return f"{min(rounds):.2f}-{max(rounds):.2f} ({len(rounds)} rounds)"


SPEEDUP_NOTE = (
    "speed-up: the PyTorch FP32 reference's p50 / this p50 at the same batch size, in the same run; "
    "[lo, hi]: the range the latency spread allows (the rounds' p50 range where timed in rounds, else p50..p90 of each); "
    "'noise': the range includes 1x, so no difference was measured."
)


def _power_cells(r: BenchResult, batch_size: Optional[int]) -> list[str]:
    power = next((p for p in r.power if p.batch_size == batch_size), None)
    return [_fmt(power.mean_power_w if power else None, ".2f"), _fmt(power.energy_per_inference_mj if power else None, ".3g")]


INTERVAL_NOTE = (
    "[lo, hi]: 95% interval (Wilson; paired Tango score for the drop; views of one photo counted as correlated). "
    "'noise': the drop's interval includes 0, so no change was measured."
)


def _with_interval(value: Optional[float], interval, spec: str, note: Optional[str] = None) -> str:
    if value is None:
        return "n/a" if note else "-"
    text = f"{value:{spec}}"
    if interval:
        lo, hi = interval
        text += f" [{lo:{spec}}, {hi:{spec}}]"
    return text


def drop_cell(acc: Optional[AccuracyStats]) -> str:
    if acc is None:
        return "-"
    text = _with_interval(acc.top1_drop, acc.top1_drop_ci, "+.1f", acc.note)
    return text + " noise" if acc.drop_within_noise else text


def accuracy_cells(acc: Optional[AccuracyStats]) -> list[str]:
    """top-1, top-1 drop, agreement (each with its 95% interval) and mean KL."""
    if acc is None:
        return ["-"] * 4
    return [
        _with_interval(acc.top1, acc.top1_ci, ".1f", acc.note),
        drop_cell(acc),
        _with_interval(acc.agreement, acc.agreement_ci, ".1f"),
        _fmt(acc.mean_kl, ".2e"),
    ]


def backend_cell(r: BenchResult, reference: Optional[BenchResult]) -> str:
    return f"{r.backend} ({REFERENCE_MARK})" if reference is not None and (r is reference or r == reference) else r.backend


def result_rows(results: Iterable[BenchResult], reference: Optional[BenchResult] = None) -> list[list[str]]:
    """One row per result and batch size; speed-ups against ``reference`` (default: the
    PyTorch FP32 row among ``results``), which is marked as the reference."""
    results = list(results)
    reference = reference or find_reference(results)
    with_power, with_rounds = has_power(results), has_rounds(results)
    width = len(table_columns(results))
    rows = []
    for r in results:
        if r.error:
            rows.append([r.backend, "FAILED"] + ["-"] * (width - 2))
            continue
        accuracy = accuracy_cells(r.accuracy)
        for i, lat in enumerate(r.latency or (None,)):
            if reference is not None and (r is reference or r == reference):
                gain = REFERENCE_MARK if lat else "-"
            else:
                gain = speedup_cell(speedup(reference_latency(reference, lat.batch_size), lat) if lat else None)
            rows.append(
                [
                    backend_cell(r, reference) if i == 0 else "",
                    r.precision if i == 0 else "",
                    str(lat.batch_size) if lat else "-",
                    _fmt(lat.p50_ms if lat else None, ".2f"),
                    *([rounds_cell(lat)] if with_rounds else []),
                    gain,
                    _fmt(lat.p90_ms if lat else None, ".2f"),
                    _fmt(lat.p99_ms if lat else None, ".2f"),
                    _fmt(lat.throughput_ips if lat else None, ".1f"),
                    _fmt(r.peak_rss_mb, ".0f") if i == 0 else "",
                    _fmt(r.size_mb, ".1f") if i == 0 else "",
                    *(accuracy if i == 0 else [""] * 4),
                    *(_power_cells(r, lat.batch_size if lat else None) if with_power else []),
                ]
            )
    return rows


def table_notes(results: Sequence[BenchResult], reference: Optional[BenchResult] = None) -> list[str]:
    """Lines under a table: failures, why top-1 does not apply, what the intervals and speed-ups are."""
    notes = [f"{r.backend} failed: {r.error}" for r in results if r.error]
    reasons = dict.fromkeys(r.accuracy.note for r in results if r.accuracy and r.accuracy.note)
    notes += [f"top-1 {reason}" for reason in reasons]
    if any(r.accuracy and (r.accuracy.top1_ci or r.accuracy.agreement_ci) for r in results):
        notes.append(INTERVAL_NOTE)
    reference = reference or find_reference(results)
    if reference is not None:
        notes.append(SPEEDUP_NOTE)
    elif any(not r.error for r in results):
        notes.append("speed-up: no PyTorch FP32 reference in this run")
    return notes


def markdown_table(results: Sequence[BenchResult], reference: Optional[BenchResult] = None) -> str:
    columns = table_columns(results)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in result_rows(results, reference)]
    notes = table_notes(results, reference)
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


# --------------------------------------------------------------------------- on screen: 80 columns

SCREEN_COLUMNS = ("backend", "prec", "b", "p50 ms", "img/s", "RSS MB", "top-1%", "drop", "agree%", "KL")
SCREEN_NOTE = (
    "±: half-width of the 95% interval (Wilson; paired Tango for the drop; views of",
    "one photo count as correlated); ~: the drop is within the noise. Intervals,",
    "p90/p99 and sizes in full: the results JSON and `edgekit report`.",
)
_PRECISION_WORDS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


_FLOAT_STEPS = frozenset(("finetuned", "pruned", "dw-separable"))  # steps that leave a float model (edgekit.steps)
_NUMERIC_WORDS = frozenset(("int8", "fp16", "fp32", "bf16"))


def short_precision(result: BenchResult) -> str:
    """What ran, in a word: int8, fp16, fp32, or bf16 where OpenVINO chose it.

    The precision text begins with the artifact's variant or with what the backend ran
    ('int8 (CPU form: ...)', 'fp16 (TensorRT 11.4)', 'finetuned+int8 (OpenVINO CPU
    inference precision f32)'): the variant's last step decides (int8 and fp16 graphs), an
    INT8 graph stays int8 whatever OpenVINO's inference precision (that is for its float
    layers), and a float graph runs at OpenVINO's inference precision where it says one."""
    text = result.precision.strip().lower()
    if not text:
        return "-"
    head = text.split()[0]
    parts = head.split("+")
    if parts[-1] in _NUMERIC_WORDS:
        numeric = parts[-1]
    elif all(part in _FLOAT_STEPS for part in parts):
        numeric = "fp32"
    else:
        return head  # not a variant: the backend's own word
    if numeric != "int8" and "inference precision" in text:
        words = text.rsplit("inference precision", 1)[1].strip(" )").split()
        if words:
            return _PRECISION_WORDS.get(words[0].rstrip(")"), words[0].rstrip(")"))
    return numeric


def _plus_minus(value: Optional[float], interval, spec: str, note: Optional[str] = None) -> str:
    if value is None:
        return "n/a" if note else "-"
    if not interval:
        return f"{value:{spec}}"
    half = max(value - interval[0], interval[1] - value)
    return f"{value:{spec}}±{half:.1f}" if half < 10 else f"{value:{spec}}±{half:.0f}"


def screen_rows(results: Iterable[BenchResult]) -> list[list[str]]:
    results = list(results)
    with_power = has_power(results)
    rows = []
    for r in results:
        if r.error:
            rows.append([r.backend, "FAILED"] + ["-"] * (len(SCREEN_COLUMNS) - 2 + 2 * with_power))
            continue
        acc = r.accuracy
        accuracy = ["-"] * 4 if acc is None else [
            _plus_minus(acc.top1, acc.top1_ci, ".1f", acc.note),
            _plus_minus(acc.top1_drop, acc.top1_drop_ci, "+.1f", acc.note) + ("~" if acc.drop_within_noise else ""),
            _plus_minus(acc.agreement, acc.agreement_ci, ".1f"),
            _fmt(acc.mean_kl, ".0e"),
        ]
        for i, lat in enumerate(r.latency or (None,)):
            rows.append([
                r.backend if i == 0 else "",
                short_precision(r) if i == 0 else "",
                str(lat.batch_size) if lat else "-",
                _fmt(lat.p50_ms if lat else None, ".2f"),
                _fmt(lat.throughput_ips if lat else None, ".0f"),
                _fmt(r.peak_rss_mb, ".0f") if i == 0 else "",
                *(accuracy if i == 0 else [""] * 4),
                *(_power_cells(r, lat.batch_size if lat else None) if with_power else []),
            ])
    return rows


def layer_notes(results: Sequence[BenchResult]) -> list[str]:
    """The precision substitutions a backend declared for its layers (recorded, not errors)."""
    return [f"{r.backend}: {line}" for r in results if r.layers for line in r.layers.get("substitutions") or ()]


def screen_notes(results: Sequence[BenchResult]) -> list[str]:
    notes = [f"{r.backend} failed: {r.error}" for r in results if r.error]
    notes += layer_notes(results)
    notes += [f"top-1 {reason}" for reason in dict.fromkeys(r.accuracy.note for r in results if r.accuracy and r.accuracy.note)]
    if any(r.accuracy and (r.accuracy.top1_ci or r.accuracy.agreement_ci) for r in results):
        notes += SCREEN_NOTE
    return notes + class_notes(results)


# --------------------------------------------------------------------------- per class, on screen

SCREEN_WIDTH = 80
CLASS_NAME_CHARS = 20  # a longer class name is cut to this many characters on screen


def class_notes_row(results: Sequence[BenchResult]) -> Optional[BenchResult]:
    """The row whose classes the screen notes name: the first that is not the baseline,
    else the baseline; only rows with per-class figures."""
    from ..backends.base import BASELINE_BACKEND

    rows = [r for r in results if not r.error and r.accuracy is not None and r.accuracy.per_class]
    return next((r for r in rows if r.backend != BASELINE_BACKEND), rows[0] if rows else None)


def _short_name(name: str, limit: int = CLASS_NAME_CHARS) -> str:
    from ..classes import display_name  # control characters escaped: a name cannot drive the terminal

    name = display_name(str(name))
    return name if len(name) <= limit else name[: limit - 1] + "~"


def _fitted(head: str, items: Sequence[str], width: int = SCREEN_WIDTH) -> str:
    """``head`` and as many ``items`` as fit in ``width`` columns, with ', ...' when some are left out."""
    line = head
    for i, item in enumerate(items):
        candidate = line + (", " if i else "") + item
        more = ", ..." if i + 1 < len(items) else ""
        if i and len(candidate + more) > width:
            line += ", ..."
            break
        line = candidate
    return line if len(line) <= width else line[: width - 3] + "..."


def class_notes(results: Sequence[BenchResult]) -> list[str]:
    """At most two lines under the screen table: the classes the chosen row (see
    class_notes_row) got most wrong, and its most frequent confusions, by name."""
    row = class_notes_row(results)
    if row is None or row.accuracy is None:
        return []
    acc = row.accuracy
    worst = sorted((c for c in acc.per_class or () if c["top1"] < 100.0), key=lambda c: (c["top1"], -c["images"], c["class"]))
    lines = []
    if worst:
        items = [f"{_short_name(c['name'])} {c['top1']:.1f}% ({c['images']})" for c in worst]
        lines.append(_fitted(f"worst classes ({row.backend}): ", items))
    elif acc.per_class:
        lines.append(f"per class ({row.backend}): all {len(acc.per_class)} classes 100% top-1")
    if acc.top_confusions:
        items = [f"{_short_name(c['true_name'])}->{_short_name(c['predicted_name'])} {c['count']}" for c in acc.top_confusions]
        lines.append(_fitted("top confusions: ", items))
    return lines


def _screen_columns(results: Sequence[BenchResult]) -> tuple[str, ...]:
    return SCREEN_COLUMNS + (("W", "mJ/img") if has_power(results) else ())


def text_table(results: Sequence[BenchResult], title: str) -> str:
    """The screen table in plain aligned text, for machines without rich (the on-device runner)."""
    rows = [list(_screen_columns(results))] + screen_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title]
    for row in rows:
        lines.append(" ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    lines += screen_notes(results)
    return "\n".join(lines) + "\n"


def rich_table(results: Sequence[BenchResult], title: Optional[str] = None):
    """The screen table: within 80 columns without power figures (print screen_notes after it)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    for name in _screen_columns(results):
        table.add_column(name, justify="left" if name in ("backend", "prec") else "right", no_wrap=True)
    for row in screen_rows(results):
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
