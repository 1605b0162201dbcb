"""A report folder people would rather look at than read: Markdown, CSV, HTML and plots.

Input is one or more parsed results documents (``edgekit-results/1``, see ``document.py``):
bench rows, and `edgekit profile`'s per-layer ``profile`` sections (a document may hold
either or both). matplotlib is imported only inside the plotting functions, so importing
this module stays cheap.
"""

from __future__ import annotations

import csv
import html
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..classes import display_name
from ..core import BenchResult, DataError, LatencyStats
from ..backends.base import BASELINE_BACKEND
from ..files import atomic_write_bytes, atomic_write_text, ensure_dir
from . import profile_view
from .document import RESULTS_FORMAT, describe_images
from .tables import (
    Speedup,
    find_reference,
    is_reference,
    markdown_table,
    latency_band,
    reference_latency,
    result_rows,
    speedup,
    table_columns,
    table_notes,
)

CSV_FIELDS = (
    "model",
    "variant",
    "backend",
    "precision",
    "batch",
    "p50_ms",
    "p50_rounds",
    "p50_rounds_min",
    "p50_rounds_max",
    "p90_ms",
    "p99_ms",
    "throughput_ips",
    "size_mb",
    "peak_rss_mb",
    "top1",
    "top1_low",
    "top1_high",
    "top1_drop",
    "top1_drop_low",
    "top1_drop_high",
    "top1_drop_within_noise",
    "agreement",
    "agreement_low",
    "agreement_high",
    "mean_kl",
    "speedup_vs_pytorch",
    "speedup_low",
    "speedup_high",
    "speedup_within_noise",
    "speedup_basis",
    "reference",
    "mean_power_w",
    "energy_per_inference_mj",
    "machine_cpu",
    "host",
    "run",
    "run_label",
    "source",
    "command",
    "created",
    "images",
    "error",
)

FIGSIZE = (8.0, 5.0)
DPI = 120
LOG_SCALE_SPAN = 10.0  # latency axes go logarithmic when max / min exceeds this
TICK_CHARS_PER_ROW = 60  # about what fits side by side under an 8-inch plot before labels collide
VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
REFERENCE_MARKER, REFERENCE_MARKER_NAME = "*", "the large star"  # the PyTorch FP32 reference in accuracy-vs-latency plots
PER_CLASS_ROWS = 50  # classes a page lists per row, worst first (all of them in per_class.csv)
NAMED_AXES_CLASSES = 30  # a confusion picture names its classes on the axes up to this many
COUNTED_CELLS_CLASSES = 15  # ...and writes each cell's count up to this many
PER_CLASS_FIELDS = ("model", "variant", "backend", "host", "run", "class", "name", "images", "correct", "top1")
PROFILE_TOP = 15  # modules a per-layer profile's tables and plots show per backend (the results file has all)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Run:
    """One results document: its number, the tag its rows carry when several are merged, and
    what tells it apart from the others (file, time, command, host, run id, images)."""

    number: int
    tag: str  # "" for a single document, else "run N"
    document: dict[str, Any]
    source: Optional[str] = None  # the results file's name, where the caller knows it

    @property
    def label(self) -> str:
        d, machine = self.document, self.document.get("machine") or {}
        parts = [self.source, _when(d.get("created")), f"`{d['command']}`" if d.get("command") else "unknown command"]
        where = machine.get("host")
        parts.append(f"host {where}" if where else None)
        parts.append(_machine_short(machine) if machine else None)
        parts.append(f"run id {machine['run']}" if machine.get("run") else None)
        text = "; ".join(str(x) for x in parts if x)
        return f"{self.tag or 'run'}: {text}"

    @property
    def images(self) -> Optional[str]:
        images = self.document.get("images")
        if not images or not images.get("description"):
            return None
        return describe_images(images)


def _when(created: Optional[str]) -> str:
    return created.replace("T", " ") if created else "unknown time"


@dataclass(frozen=True)
class _Entry:
    """One result, with where and when its document says it ran."""

    result: BenchResult
    machine: dict[str, Any]
    created: str
    series: str  # "model variant", plus the machine when documents come from several, plus the run when merged
    reference: Optional[BenchResult]  # the PyTorch FP32 row of the same model (same variant first), same document
    run: _Run

    @property
    def is_baseline(self) -> bool:
        return _is_baseline(self.result)

    @property
    def is_reference(self) -> bool:
        """This row is the one its run's speed-ups are measured against."""
        return self.reference is not None and self.result is self.reference

    def latency_at(self, batch_size: int) -> Optional[LatencyStats]:
        return next((s for s in self.result.latency if s.batch_size == batch_size), None)

    def speedup_range(self, stats: LatencyStats) -> Optional[Speedup]:
        return speedup(reference_latency(self.reference, stats.batch_size), stats)

    def speedup(self, stats: LatencyStats) -> Optional[float]:
        found = self.speedup_range(stats)
        return None if found is None else found.value


def _is_baseline(result: BenchResult) -> bool:
    return is_reference(result)


def _document_results(document: dict[str, Any]) -> list[BenchResult]:
    if document.get("format") != RESULTS_FORMAT:
        raise DataError(f"not an edgekit results document: format {document.get('format')!r}, expected {RESULTS_FORMAT!r}")
    return [BenchResult.from_dict(d) for d in document.get("results", ())]


def _reference_for(results: Sequence[BenchResult], model: str, variant: str) -> Optional[BenchResult]:
    """The PyTorch FP32 row of ``model`` in one document: the one labelled with the same
    variant (the same bench cell) where there is one, else the model's first."""
    of_model = [r for r in results if r.model == model]
    return find_reference([r for r in of_model if r.variant == variant]) or find_reference(of_model)


def _machine_key(machine: dict[str, Any]) -> tuple[Any, Any]:
    return machine.get("cpu"), machine.get("logical_cores")


def _machine_short(machine: dict[str, Any]) -> str:
    return f"{machine.get('cpu') or 'unknown CPU'}, {machine.get('logical_cores') or '?'} cores"


def _machine_label(machine: dict[str, Any]) -> str:
    details = [machine.get(k) for k in ("os", "machine")] + [f"Python {machine['python']}" if machine.get("python") else None]
    return "; ".join([_machine_short(machine).replace(" cores", " logical cores")] + [str(d) for d in details if d])


def _distinct_machines(documents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    machines: dict[tuple[Any, Any], dict[str, Any]] = {}
    for document in documents:
        machine = document.get("machine") or {}
        machines.setdefault(_machine_key(machine), machine)
    return list(machines.values())


def row_host(result: BenchResult) -> str:
    """Where a row ran: the remote device, else the host that ran it."""
    env = result.environment
    return str(env.get("remote") or env.get("host") or "?")


def _runs_of(documents: Sequence[dict[str, Any]], sources: Optional[Sequence[str]] = None) -> list[_Run]:
    """A run per document; tagged "run N" when more than one document holds bench rows, so
    rows of different runs are never mixed in one table, plot series or headline."""
    merged = sum(1 for d in documents if d.get("results")) > 1
    names = list(sources) if sources is not None else [None] * len(documents)
    if len(names) != len(documents):
        raise ValueError(f"{len(names)} source names for {len(documents)} documents")
    return [_Run(i, f"run {i}" if merged else "", d, name) for i, (d, name) in enumerate(zip(documents, names), start=1)]


def _collect_entries(runs: Sequence[_Run], mixed_machines: bool) -> list[_Entry]:
    """Rows with their series: model and variant, where they ran when the documents come
    from several machines or hosts (a bundle's rows beside the host's), and their run
    when several documents are merged."""
    loaded = [(run, _document_results(run.document)) for run in runs]
    hosts = {row_host(r) for _, results in loaded for r in results}
    entries = []
    for run, results in loaded:
        machine = run.document.get("machine") or {}
        for r in results:
            where = f" @ {row_host(r)}" if len(hosts) > 1 else ""
            where += f" ({_machine_short(machine)})" if mixed_machines else ""
            tag = f" [{run.tag}]" if run.tag else ""
            series = f"{r.model} {r.variant}{where}{tag}"
            reference = _reference_for(results, r.model, r.variant)
            entries.append(_Entry(r, machine, str(run.document.get("created") or ""), series, reference, run))
    return entries


def _mixed_machine_warning(machines: Sequence[dict[str, Any]]) -> Optional[str]:
    if len(machines) < 2:
        return None
    names = "; ".join(_machine_short(m) for m in machines)
    return f"results come from {len(machines)} different machines ({names}): latencies are not comparable across them"


# --------------------------------------------------------------------------- CSV


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def _csv_rows(entries: Sequence[_Entry]) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        r, acc = e.result, e.result.accuracy
        shared = {
            "model": r.model,
            "variant": r.variant,
            "backend": r.backend,
            "precision": r.precision,
            "size_mb": r.size_mb,
            "peak_rss_mb": r.peak_rss_mb,
            "top1": acc.top1 if acc else None,
            **_interval("top1", acc.top1_ci if acc else None),
            "top1_drop": acc.top1_drop if acc else None,
            **_interval("top1_drop", acc.top1_drop_ci if acc else None),
            "top1_drop_within_noise": acc.drop_within_noise if acc else None,
            "agreement": acc.agreement if acc else None,
            **_interval("agreement", acc.agreement_ci if acc else None),
            "mean_kl": acc.mean_kl if acc else None,
            "machine_cpu": e.machine.get("cpu"),
            "host": row_host(r),
            "run": r.environment.get("run"),
            "run_label": e.run.tag,
            "source": e.run.source,
            "command": e.run.document.get("command"),
            "created": e.created,
            "images": e.run.images,
            "reference": e.is_reference,
            "error": r.error,
        }
        for stats in r.latency or (None,):
            timing = {} if stats is None else {
                "batch": stats.batch_size,
                "p50_ms": stats.p50_ms,
                **_rounds(stats),
                "p90_ms": stats.p90_ms,
                "p99_ms": stats.p99_ms,
                "throughput_ips": stats.throughput_ips,
                **_speedup_fields(e, stats),
                **next(
                    ({"mean_power_w": p.mean_power_w, "energy_per_inference_mj": p.energy_per_inference_mj}
                     for p in r.power if p.batch_size == stats.batch_size),
                    {},
                ),
            }
            row = {**shared, **timing}
            rows.append({name: _csv_value(row.get(name)) for name in CSV_FIELDS})
    return rows


def _rounds(stats: LatencyStats) -> dict[str, Any]:
    rounds = [r for r in stats.p50_rounds if r > 0]
    if not rounds:
        return {}
    return {"p50_rounds": len(rounds), "p50_rounds_min": min(rounds), "p50_rounds_max": max(rounds)}


def _speedup_fields(e: _Entry, stats: LatencyStats) -> dict[str, Any]:
    if e.is_reference:
        return {"speedup_vs_pytorch": 1.0}
    found = e.speedup_range(stats)
    if found is None:
        return {}
    return {
        "speedup_vs_pytorch": found.value, "speedup_low": found.low, "speedup_high": found.high,
        "speedup_within_noise": found.within_noise, "speedup_basis": found.basis,
    }


def _interval(name: str, interval) -> dict[str, Any]:
    return {f"{name}_low": interval[0] if interval else None, f"{name}_high": interval[1] if interval else None}


def _write_csv(entries: Sequence[_Entry], path: Path) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(_csv_rows(entries))
    return atomic_write_text(path, buffer.getvalue())


def _write_per_class_csv(sections: Sequence["_ClassSection"], path: Path) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=PER_CLASS_FIELDS)
    writer.writeheader()
    for section in sections:
        r = section.entry.result
        shared = {"model": r.model, "variant": r.variant, "backend": r.backend, "host": row_host(r), "run": r.environment.get("run")}
        for c in section.per_class:
            writer.writerow({name: _csv_value({**shared, **c}.get(name)) for name in PER_CLASS_FIELDS})
    return atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------- tables and pages


@dataclass(frozen=True)
class _Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class _Group:
    """The rows of one table: one model + variant (+ machine) of one run, and its reference."""

    series: str
    results: tuple[BenchResult, ...]
    reference: Optional[BenchResult]


def _table_groups(entries: Sequence[_Entry]) -> list[_Group]:
    """One table per model + variant (+ machine) (+ run): the shared table has no such columns."""
    groups: dict[str, list[_Entry]] = {}
    for e in entries:
        groups.setdefault(e.series, []).append(e)
    return [_Group(series, tuple(e.result for e in members), members[0].reference) for series, members in groups.items()]


# --------------------------------------------------------------------------- the headline


def _headline_batch(reference: Optional[BenchResult], rows: Sequence[BenchResult]) -> Optional[int]:
    """Batch 1 where the reference (else any row) was timed at it, else the smallest batch timed."""
    sizes = {s.batch_size for s in reference.latency} if reference is not None else {s.batch_size for r in rows for s in r.latency}
    return None if not sizes else 1 if 1 in sizes else min(sizes)


def _spread_words(basis: str) -> str:
    return {"rounds": "the rounds' p50 range", "p90": "the p50..p90 spread"}.get(basis, "the rounds' p50 range and p50..p90 spread")


def _speed_text(backend: str, s: Speedup, batch: int, reference: LatencyStats, stats: LatencyStats) -> str:
    numbers = (
        f"p50 {stats.p50_ms:.2f} ms vs {reference.p50_ms:.2f} ms at batch {batch}; "
        f"{s.low:.2f}x-{s.high:.2f}x within {_spread_words(s.basis)}"
    )
    if s.within_noise:
        return f"{backend} as fast as PyTorch FP32 within noise ({s.value:.2f}x; {numbers})"
    if s.value >= 1.0:
        return f"{backend} {s.value:.2f}x faster than PyTorch FP32 ({numbers})"
    return f"{backend} {1.0 / s.value:.2f}x slower than PyTorch FP32 ({numbers})"


def _accuracy_text(acc) -> str:
    """The top-1 change against the reference: within noise, or the drop (gain) with its interval."""
    if acc is None:
        return "accuracy not measured"
    drop, interval = acc.top1_drop, acc.top1_drop_ci
    if drop is not None:
        if interval is None:
            return f"top-1 drop {drop:+.1f} points (no interval recorded: noise cannot be told apart)"
        bounds = f"95% interval {interval[0]:+.1f} to {interval[1]:+.1f}"
        if acc.drop_within_noise:
            return f"top-1 within noise (drop {drop:+.1f} points, {bounds})"
        if drop > 0:
            return f"top-1 drop {drop:.1f} points ({bounds})"
        return f"top-1 gain {-drop:.1f} points (drop {bounds})"
    if acc.top1 is not None:
        return f"top-1 {acc.top1:.1f}% (no reference top-1 to compare with)"
    text = f"top-1 {acc.note}" if acc.note else "top-1 not measured (no labels)"
    if acc.agreement is not None:
        agreement = f"{acc.agreement:.1f}%"
        if acc.agreement_ci:
            agreement += f" (95% interval {acc.agreement_ci[0]:.1f}-{acc.agreement_ci[1]:.1f}%)"
        text += f"; top-1 agreement with PyTorch FP32 {agreement}"
    return text


def _size_text(result: BenchResult) -> str:
    return "file size not recorded" if result.size_mb is None else f"{result.size_mb:.1f} MB"


def headline(results: Sequence[BenchResult], reference: Optional[BenchResult]) -> str:
    """The answer for one model/artifact of one run: the fastest backend's speed-up over the
    PyTorch FP32 reference with the range its latency spread allows (a range that includes
    1x is called noise), its top-1 change (within noise, or the drop with its 95% interval)
    and its file size."""
    timed = [r for r in results if not r.error and r.latency]
    failed = [r.backend for r in results if r.error]
    others = [r for r in timed if r is not reference]
    batch = _headline_batch(reference, others or timed)
    at_batch = [(r, s) for r in others for s in r.latency if s.batch_size == batch]
    tail = [f"failed: {', '.join(failed)}"] if failed else []
    if not at_batch:
        if reference is not None and batch is not None:
            ref = reference_latency(reference, batch)
            return "; ".join([f"only the PyTorch FP32 reference was timed (p50 {ref.p50_ms:.2f} ms at batch {batch})"] + tail)
        return "; ".join(["nothing was timed"] + tail)
    fastest, stats = min(at_batch, key=lambda pair: pair[1].p50_ms)
    ref_stats = reference_latency(reference, batch)
    found = speedup(ref_stats, stats)
    if found is None:
        speed = f"fastest: {fastest.backend}, p50 {stats.p50_ms:.2f} ms at batch {batch}; no PyTorch FP32 reference in this run, so no speed-up"
    else:
        speed = _speed_text(fastest.backend, found, batch, ref_stats, stats)
    if len({r.backend for r, _ in at_batch}) > 1:
        speed = speed.replace(fastest.backend, f"{fastest.backend} (the fastest of {len({r.backend for r, _ in at_batch})})", 1)
    return "; ".join([speed, _accuracy_text(fastest.accuracy), _size_text(fastest)] + tail)


def _image_lines(runs: Sequence[_Run]) -> list[str]:
    """The image set each run measured on; once when every run used the same."""
    measured = [run for run in runs if run.document.get("results")]
    if not measured:
        return []
    texts = [run.images for run in measured]
    if len(set(texts)) == 1:
        return [f"Images: {texts[0] or 'not recorded in the results file'}"]
    return [f"Images ({run.tag}): {text or 'not recorded in the results file'}" for run, text in zip(measured, texts)]


def _headlines(groups: Sequence[_Group]) -> list[tuple[str, str]]:
    return [(g.series, headline(g.results, g.reference)) for g in groups]


def _markdown(
    title: str,
    runs: Sequence[_Run],
    machines: Sequence[dict[str, Any]],
    warning: Optional[str],
    entries: Sequence[_Entry],
    figures: Sequence[_Figure],
    sections: Sequence["_ClassSection"] = (),
    profiles: Sequence["_ProfileSection"] = (),
) -> str:
    lines = [f"# {title}", ""]
    groups = _table_groups(entries)
    if groups:
        lines += ["## Summary", ""] + [f"- **{series}**: {text}" for series, text in _headlines(groups)] + [""]
        lines += [part for line in _image_lines(runs) for part in (line, "")]
    if warning:
        lines += [f"> **Warning:** {warning}.", ""]
    lines += ["## Machines", ""] + [f"- {_machine_label(m)}" for m in machines] + [""]
    lines += ["## Runs", ""] + [f"- {run.label}" for run in runs] + [""]
    if groups:
        lines += ["## Results", ""]
        for g in groups:
            lines += [f"### {g.series}", "", markdown_table(g.results, g.reference)]
    if sections:
        lines += ["## Per-class accuracy", "", PER_CLASS_INTRO, ""]
        for section in sections:
            lines += _markdown_section(section)
    for profile in profiles:
        lines += _markdown_profile(profile)
    if figures:
        lines += ["## Plots", ""]
        lines += [line for fig in figures for line in (f"![{fig.caption}]({fig.path.name})", "")]
    if entries:
        lines += ["All numbers, one row per batch size, with the speed-up over PyTorch FP32: [report.csv](report.csv)", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: .6rem 1rem; font-weight: 600; }
.summary { background: #eef6ee; border-left: 4px solid #3a8a3a; padding: .4rem 1rem; }
.summary li { margin: .3rem 0; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; }
th { background: #f3f3f3; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:nth-child(-n+2) { text-align: left; }
td.num, th { white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
.note { color: #555; font-size: .85rem; margin: -1rem 0 1.5rem; }
.profile-heading { font-weight: 600; margin-bottom: .2rem; }
table.profile td:last-child { text-align: left; }
"""

NUMERIC_FROM = 2  # results-table columns from here on hold numbers: kept on one line (white-space: nowrap)


def _html_table(results: Sequence[BenchResult], reference: Optional[BenchResult] = None) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table_columns(results))
    numeric = ' class="num"'
    body = "\n".join(
        "<tr>" + "".join(f"<td{numeric if i >= NUMERIC_FROM else ''}>{html.escape(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in result_rows(results, reference)
    )
    notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in table_notes(results, reference))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>{notes}"


def _html_list(items: Sequence[str]) -> str:
    return "<ul>\n" + "\n".join(f"<li>{html.escape(item)}</li>" for item in items) + "\n</ul>"


def _html_figure(fig: _Figure) -> str:
    name, caption = html.escape(fig.path.name), html.escape(fig.caption)
    return f'<figure><img src="{name}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _html(
    title: str,
    runs: Sequence[_Run],
    machines: Sequence[dict[str, Any]],
    warning: Optional[str],
    entries: Sequence[_Entry],
    figures: Sequence[_Figure],
    sections: Sequence["_ClassSection"] = (),
    profiles: Sequence["_ProfileSection"] = (),
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>',
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    groups = _table_groups(entries)
    if groups:
        items = "\n".join(f"<li><strong>{html.escape(series)}</strong>: {html.escape(text)}</li>" for series, text in _headlines(groups))
        images = "".join(f"<p>{html.escape(line)}</p>" for line in _image_lines(runs))
        parts += ['<section class="summary">', "<h2>Summary</h2>", f"<ul>\n{items}\n</ul>", images, "</section>"]
    if warning:
        parts.append(f'<p class="warning">Warning: {html.escape(warning)}.</p>')
    parts += ["<h2>Machines</h2>", _html_list([_machine_label(m) for m in machines])]
    parts += ["<h2>Runs</h2>", _html_list([run.label for run in runs])]
    if groups:
        parts.append("<h2>Results</h2>")
        for g in groups:
            parts += [f"<h3>{html.escape(g.series)}</h3>", _html_table(g.results, g.reference)]
    if sections:
        parts += ["<h2>Per-class accuracy</h2>", f"<p>{html.escape(PER_CLASS_INTRO)}</p>"]
        parts += [part for section in sections for part in _html_section(section)]
    parts += [part for profile in profiles for part in _html_profile(profile)]
    if figures:
        parts += ["<h2>Plots</h2>"] + [_html_figure(fig) for fig in figures]
    if entries:
        parts.append('<p>All numbers, one row per batch size, with the speed-up over PyTorch FP32: <a href="report.csv">report.csv</a></p>')
    parts += [
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- per class

PER_CLASS_INTRO = (
    "Top-1 of each class against each image's primary label, worst first, and the most frequent "
    "confusions (true class -> predicted class); every class of every row in per_class.csv."
)
PER_CLASS_COLUMNS = ("class", "name", "images", "correct", "top-1 %")


@dataclass(frozen=True)
class _ClassSection:
    """One row's per-class figures: its table, its confusions and its confusion picture."""

    entry: _Entry
    title: str
    per_class: tuple[dict[str, Any], ...]
    confusions: tuple[dict[str, Any], ...]
    figure: Optional[_Figure]

    @property
    def worst_first(self) -> list[dict[str, Any]]:
        return sorted(self.per_class, key=lambda c: (c["top1"], -c["images"], c["class"]))


def _per_class_cells(c: dict[str, Any]) -> list[str]:
    correct = c.get("correct")
    return [str(c["class"]), display_name(str(c["name"])), str(c["images"]), "-" if correct is None else str(correct), f"{c['top1']:.1f}"]


def _listed_note(section: _ClassSection) -> Optional[str]:
    total = len(section.per_class)
    return f"the {PER_CLASS_ROWS} worst of {total} classes; all in per_class.csv" if total > PER_CLASS_ROWS else None


def _confusion_text(c: dict[str, Any]) -> str:
    return f"{display_name(str(c.get('true_name', c['true'])))} -> {display_name(str(c.get('predicted_name', c['predicted'])))}: {c['count']}"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_section(section: _ClassSection) -> list[str]:
    lines = [f"### {section.title}", "", "| " + " | ".join(PER_CLASS_COLUMNS) + " |", "|" + "---|" * len(PER_CLASS_COLUMNS)]
    lines += ["| " + " | ".join(_markdown_cell(x) for x in _per_class_cells(c)) + " |" for c in section.worst_first[:PER_CLASS_ROWS]]
    lines.append("")
    note = _listed_note(section)
    if note:
        lines.append(f"- {note}")
    if section.confusions:
        lines.append("- top confusions: " + "; ".join(_markdown_cell(_confusion_text(c)) for c in section.confusions))
    if note or section.confusions:
        lines.append("")
    if section.figure is not None:
        lines += [f"![{section.figure.caption}]({section.figure.path.name})", ""]
    return lines


def _html_section(section: _ClassSection) -> list[str]:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in PER_CLASS_COLUMNS)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _per_class_cells(c)) + "</tr>" for c in section.worst_first[:PER_CLASS_ROWS]
    )
    parts = [f"<h3>{html.escape(section.title)}</h3>", f'<table class="per-class">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>']
    note = _listed_note(section)
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    if section.confusions:
        parts.append(f'<p class="note">top confusions: {html.escape("; ".join(_confusion_text(c) for c in section.confusions))}</p>')
    if section.figure is not None:
        parts.append(_html_figure(section.figure))
    return parts


def _file_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "row"


def _class_sections(entries: Sequence[_Entry], out_dir: Path) -> list[_ClassSection]:
    """A section for every row with per-class figures, with its confusion picture where
    the row holds the whole matrix (at most 100 classes)."""
    sections, used = [], set()
    for e in entries:
        acc = e.result.accuracy
        if e.result.error or acc is None or not acc.per_class:
            continue
        title = f"{e.series}: {e.result.backend}"
        slug = _file_slug(f"{e.series}_{e.result.backend}")
        name, n = f"confusion_{slug}.png", 2
        while name in used:
            name, n = f"confusion_{slug}_{n}.png", n + 1
        used.add(name)
        figure = _plot_confusion(acc, title, out_dir / name) if acc.confusion else None
        sections.append(_ClassSection(e, title, tuple(acc.per_class), tuple(acc.top_confusions or ()), figure))
    return sections


def _confusion_classes(acc) -> tuple[list[int], dict[int, str]]:
    """The classes a picture shows (those with an image or predicted for one) and their names."""
    names = {int(c["class"]): str(c["name"]) for c in acc.per_class or ()}
    for c in acc.top_confusions or ():
        names.setdefault(int(c["true"]), str(c.get("true_name", c["true"])))
        names.setdefault(int(c["predicted"]), str(c.get("predicted_name", c["predicted"])))
    shown = sorted({int(t) for t, _, _ in acc.confusion} | {int(p) for _, p, _ in acc.confusion} | {int(c["class"]) for c in acc.per_class or ()})
    return shown, {c: display_name(names.get(c, str(c))) for c in shown}


def _plot_confusion(acc, title: str, path: Path) -> _Figure:
    import numpy as np

    shown, names = _confusion_classes(acc)
    position = {c: i for i, c in enumerate(shown)}
    counts = np.zeros((len(shown), len(shown)), dtype=np.int64)
    for t, p, count in acc.confusion:
        counts[position[int(t)], position[int(p)]] += int(count)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    named = len(shown) <= NAMED_AXES_CLASSES
    fig, ax = _new_axes()
    side = min(12.0, max(FIGSIZE[1], 3.0 + 0.3 * len(shown))) if named else 7.0
    fig.set_size_inches(side + 1.5, side)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of the true class's images")
    if named:
        labels = [names[c] for c in shown]
        size = 8 if len(shown) <= COUNTED_CELLS_CLASSES else 6
        ax.set_xticks(range(len(shown)), labels, rotation=90, fontsize=size)
        ax.set_yticks(range(len(shown)), labels, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if len(shown) <= COUNTED_CELLS_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (primary label)")
    ax.set_title(f"{title}: confusion matrix")
    caption = f"{title}: confusion matrix of {len(shown)} classes (rows: true class, shaded by the share of its images)"
    return _save(fig, path, caption)


# --------------------------------------------------------------------------- per-layer profiles


@dataclass(frozen=True)
class _ProfileSection:
    """One `edgekit profile` section (edgekit.profiling.ArtifactProfile.to_dict) and its
    plots, one per backend."""

    profile: dict[str, Any]
    figures: tuple[_Figure, ...]


def _profile_title(profile: dict[str, Any]) -> str:
    return f"Per-layer profile: {profile['model']} {profile['variant']} [{profile['artifact']}]"  # as profile_view.markdown


def _markdown_profile(section: _ProfileSection) -> list[str]:
    lines = [profile_view.markdown(section.profile, PROFILE_TOP)]
    notes = [f"- note: {b['backend']}: {b['note']}" for b in section.profile["backends"] if b.get("note")]
    if notes:
        lines += notes + [""]
    lines += [line for fig in section.figures for line in (f"![{fig.caption}]({fig.path.name})", "")]
    return lines


def _html_profile(section: _ProfileSection) -> list[str]:
    """The tables profile_view.markdown writes, as HTML: one per backend, the same columns and rows."""
    profile = section.profile
    with_kl = bool(profile.get("kl_by_module"))
    parts = [f"<h2>{html.escape(_profile_title(profile))}</h2>"]
    for backend in profile["backends"]:
        head = "".join(f"<th>{html.escape(name)}</th>" for name in profile_view.columns(backend, with_kl))
        body = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in profile_view.cells(row, backend, with_kl)) + "</tr>"
            for row in profile_view.rows(backend, PROFILE_TOP)
        )
        parts += [
            f'<p class="profile-heading">{html.escape(profile_view.heading(backend, profile["variant"]))}</p>',
            f'<table class="profile">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>',
        ]
        if backend.get("note"):
            parts.append(f'<p class="note">note: {html.escape(backend["note"])}</p>')
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in profile_view.notes(profile)]
    parts += [_html_figure(fig) for fig in section.figures]
    return parts


def _is_outside(row: dict[str, Any]) -> bool:
    return row["module"].startswith(profile_view.OUTSIDE_PREFIX)


def _profile_bars(backend: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a backend's table shows: its PROFILE_TOP slowest modules, then every row
    outside any module (they say where the rest of the time goes)."""
    modules = sorted((p for p in backend["prices"] if not _is_outside(p)), key=lambda p: -p["ms"])
    return modules[:PROFILE_TOP] + [p for p in backend["prices"] if _is_outside(p)]


def _plot_profile(profile: dict[str, Any], backend: dict[str, Any], path: Path) -> Optional[_Figure]:
    """Milliseconds per module on one backend, largest first; for an INT8 artifact the FP32
    parent's time for the same module on the same backend beside each bar."""
    from matplotlib.patches import Patch

    bars = _profile_bars(backend)
    if not bars:
        return None
    name, variant = backend["backend"], profile["variant"]
    paired = backend.get("float") is not None
    original = name == BASELINE_BACKEND  # PyTorch runs the FP32 original, whatever the artifact
    what = "FP32 original (PyTorch)" if original else f"{variant} ({backend['file']})" if backend.get("file") else variant
    colour, float_colour = _palette(["profiled", "fp32 parent"], "tab10").values()
    height = 0.4 if paired else 0.7
    shift = height / 2 if paired else 0.0
    fig, ax = _new_axes()
    fig.set_figheight(max(FIGSIZE[1], 1.5 + (0.45 if paired else 0.3) * len(bars)))
    drawn = ax.barh([i - shift for i in range(len(bars))], [b["ms"] for b in bars], height, color=colour, zorder=3)
    ax.bar_label(drawn, labels=[f"{b['ms']:.3f}" for b in bars], padding=2, fontsize=7)
    handles = [Patch(color=colour, label=what)]
    hatched = [bar for bar, b in zip(drawn, bars) if _is_outside(b)]
    if paired:
        placed = [(i, b["float_ms"]) for i, b in enumerate(bars) if b["float_ms"] is not None]
        if placed:
            parent = ax.barh([i + shift for i, _ in placed], [ms for _, ms in placed], height, color=float_colour, zorder=3)
            ax.bar_label(parent, labels=[f"{ms:.3f}" for _, ms in placed], padding=2, fontsize=7)
            hatched += [bar for (i, _), bar in zip(placed, parent) if _is_outside(bars[i])]
        handles.append(Patch(color=float_colour, label="FP32 parent, same module"))
    for bar in hatched:
        bar.set_hatch("//")
    outside = [i for i, b in enumerate(bars) if _is_outside(b)]
    if outside:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="outside any module"))
        if outside[0] > 0:
            ax.axhline(outside[0] - 0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(bars)), [b["module"] for b in bars], fontsize=8)
    ax.invert_yaxis()  # slowest module at the top, as in the table
    longest = max([b["ms"] for b in bars] + [b["float_ms"] for b in bars if paired and b["float_ms"] is not None])
    ax.set_xlim(0, (longest or 1.0) * 1.2)  # room for the value labels
    ax.set_xlabel(f"ms per inference in {backend['runtime']}'s profiler (batch {backend['batch_size']}, mean of {backend['iterations']} runs)")
    ax.set_title(f"{name}: ms per module, {profile['model']} {'FP32 original' if original else variant}" + (" vs its FP32 parent" if paired else ""))
    ax.grid(True, axis="x", alpha=0.3, zorder=0)
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    modules = len(bars) - len(outside)
    caption = (
        f"{name}: milliseconds per module of {profile['model']} {'(the FP32 original)' if original else variant} [{profile['artifact']}], "
        f"the {modules} slowest module{'s' if modules != 1 else ''}" + (" and the time outside any module" if outside else "")
        + (", each beside the FP32 parent's time for the same module on the same backend" if paired else "")
        + f"; all rows sum to {backend['sum_ms']:.3f} ms, end-to-end p50 {backend['e2e_p50_ms']:.3f} ms"
    )
    return _save(fig, path, caption)


def _profile_sections(documents: Sequence[dict[str, Any]], out_dir: Path) -> list[_ProfileSection]:
    """A section for every document with a ``profile``, with a plot per profiled backend."""
    sections, used = [], set()
    for document in documents:
        profile = document.get("profile")
        if not profile:
            continue
        figures = []
        for backend in profile["backends"]:
            slug = _file_slug(f"{profile['model']}_{profile['variant']}_{profile['artifact']}_{backend['backend']}")
            name, n = f"profile_{slug}.png", 2
            while name in used:
                name, n = f"profile_{slug}_{n}.png", n + 1
            used.add(name)
            figure = _plot_profile(profile, backend, out_dir / name)
            if figure is not None:
                figures.append(figure)
        sections.append(_ProfileSection(profile, tuple(figures)))
    return sections


# --------------------------------------------------------------------------- plots


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both (lower latency, higher
    accuracy), sorted by latency; duplicates appear once."""
    front: list[tuple[float, float]] = []
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((latency, accuracy))
    return front


def _new_axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch or figure registry.
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: Path, caption: str) -> _Figure:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())  # a full disk leaves no 0-byte PNG behind
    return _Figure(path, caption)


def _palette(names: Sequence[str], colormap: str) -> dict[str, Any]:
    from matplotlib import colormaps

    colours = colormaps[colormap].colors
    return {name: colours[i % len(colours)] for i, name in enumerate(names)}


@dataclass(frozen=True)
class _ParetoPoint:
    latency_ms: float
    accuracy: float  # what the front is drawn with: top-1, with a change inside the noise credited as none
    model: str
    variant: str
    label: str
    interval: Optional[tuple[float, float]] = None  # 95% interval of the measured value, drawn as an error bar
    measured: Optional[float] = None  # the measured value, where it differs from ``accuracy``
    reference: bool = False  # the PyTorch FP32 original every speed-up is measured against
    spread: Optional[tuple[float, float]] = None  # the p50's band (rounds' range, else p50..p90), drawn as an error bar


def _pareto_points(entries: Sequence[_Entry]) -> tuple[list[_ParetoPoint], bool]:
    """Batch-1 points of one backend (and the PyTorch FP32 references among ``entries``,
    marked as such), and whether accuracy is top-1 (else agreement).

    Top-1 where any row has it, and then only those rows: rows where it does not apply
    (random-init weights, another label space, no labels) stay off the plot rather than
    sit at 0%. Without any top-1, the plot shows agreement with the PyTorch original.
    A top-1 that differs from the original's by less than the noise (its drop's 95%
    interval includes 0) is placed at the original's top-1: the data show no change, so
    no variant is crowned for a gain that is noise.
    """
    timed = [(e, e.latency_at(1)) for e in entries]
    timed = [(e, stats) for e, stats in timed if stats is not None and (e.result.accuracy is not None or e.is_reference)]
    use_top1 = any(e.result.accuracy is not None and e.result.accuracy.top1 is not None for e, _ in timed)
    if use_top1:
        timed = [(e, stats) for e, stats in timed if e.result.accuracy is not None and e.result.accuracy.top1 is not None]
    points = []
    for e, stats in timed:
        acc = e.result.accuracy
        if use_top1:
            value, interval = acc.top1, acc.top1_ci
        elif acc is None or acc.agreement is None:  # the reference agrees with itself
            value, interval = (100.0, None) if e.is_reference else (None, None)
        else:
            value, interval = acc.agreement, acc.agreement_ci
        if value is None:
            continue
        credited = value
        if use_top1 and acc.top1_drop is not None and acc.drop_within_noise:
            credited = value + acc.top1_drop  # the original's top-1 on the same images
        label = f"{e.series} (reference)" if e.is_reference else e.series
        low, high, _ = latency_band(stats)
        points.append(_ParetoPoint(
            stats.p50_ms, credited, e.result.model, e.result.variant, label, interval, value if credited != value else None,
            e.is_reference, (low, high),
        ))
    return points, use_top1


def _use_log_scale(values: Sequence[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) > LOG_SCALE_SPAN


def _pareto_legends(fig, colours: dict[str, Any], markers: dict[str, str], with_reference: bool = False) -> None:
    from matplotlib.lines import Line2D

    model_handles = [Line2D([], [], marker="o", linestyle="", color=c, markersize=8, label=m) for m, c in colours.items()]
    variant_handles = [
        Line2D([], [], marker=marker, linestyle="", color="grey", markersize=8, label=v) for v, marker in markers.items()
    ]
    if with_reference:
        variant_handles.append(Line2D(
            [], [], marker=REFERENCE_MARKER, linestyle="", color="grey", markeredgecolor="black", markersize=13, label="PyTorch FP32 (reference)",
        ))
    frontier = Line2D([], [], color="black", linestyle="--", label="Pareto frontier")
    # figure legends "outside": constrained layout makes room for them, so nothing is clipped
    fig.legend(handles=model_handles, title="model", loc="outside right upper")
    fig.legend(handles=variant_handles + [frontier], title="variant", loc="outside right lower")


def _multiline(series: str) -> str:
    """Model, variant and machine on lines of their own, for narrow tick labels."""
    return series.replace(" @ ", "\n@ ").replace(" ", "\n", 1)


def _annotate_points(ax, points: Sequence[_ParetoPoint]) -> None:
    """Label each point, to its left when it sits in the right part of the axes so the text stays inside."""
    ax.autoscale_view()
    to_axes = ax.transData + ax.transAxes.inverted()
    for p in points:
        on_right = to_axes.transform((p.latency_ms, p.accuracy))[0] > 0.6
        ax.annotate(
            p.label.replace(" @ ", "\n@ "),
            (p.latency_ms, p.accuracy),
            xytext=(-7 if on_right else 7, 5),
            textcoords="offset points",
            ha="right" if on_right else "left",
            va="bottom",
            fontsize=8,
        )


def _plot_pareto(entries: Sequence[_Entry], backend: str, out_dir: Path) -> Optional[_Figure]:
    points, use_top1 = _pareto_points(entries)
    if not points:
        return None
    colours = _palette(sorted({p.model for p in points}), "tab10")
    markers = {v: VARIANT_MARKERS[i % len(VARIANT_MARKERS)] for i, v in enumerate(sorted({p.variant for p in points if not p.reference}))}
    fig, ax = _new_axes()
    for p in points:
        shown = p.accuracy if p.measured is None else p.measured
        marker, size = (REFERENCE_MARKER, 220) if p.reference else (markers[p.variant], 70)
        if p.interval is not None:
            ax.errorbar(p.latency_ms, shown, yerr=[[max(0.0, shown - p.interval[0])], [max(0.0, p.interval[1] - shown)]], color=colours[p.model], alpha=0.5, capsize=3, linewidth=1, zorder=2)
        if p.spread is not None and p.spread[1] > p.spread[0]:
            ax.errorbar(p.latency_ms, shown, xerr=[[max(0.0, p.latency_ms - p.spread[0])], [max(0.0, p.spread[1] - p.latency_ms)]], color=colours[p.model], alpha=0.5, capsize=3, linewidth=1, zorder=2)
        if p.measured is not None:  # measured value (hollow) and where the front counts it (filled)
            ax.scatter(p.latency_ms, p.measured, s=size * 0.7, facecolors="none", edgecolors=colours[p.model], marker=marker, zorder=3)
        ax.scatter(p.latency_ms, p.accuracy, s=size, color=colours[p.model], marker=marker, edgecolor="black", linewidth=0.8 if p.reference else 0.5, zorder=4 if p.reference else 3)
    front = pareto_front([(p.latency_ms, p.accuracy) for p in points])
    ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", linestyle="--", linewidth=1, zorder=2)
    log = _use_log_scale([p.latency_ms for p in points])
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.1, y=0.12)  # room for the annotations at the edges
    _annotate_points(ax, points)
    ax.set_xlabel("p50 latency at batch 1 (ms" + (", log scale)" if log else ")"))
    ax.set_ylabel(("top-1 accuracy (%)" if use_top1 else "top-1 agreement with PyTorch FP32 (%)") + ", 95% interval")
    ax.set_title(f"{backend}: accuracy vs latency (up and to the left is better)")
    ax.grid(True, which="both", alpha=0.3)
    with_reference = any(p.reference for p in points)
    _pareto_legends(fig, colours, markers, with_reference)
    caption = f"{backend}: accuracy vs batch-1 latency, with the Pareto frontier, 95% intervals and the latency spread (the rounds' p50 range, else p50..p90)"
    if with_reference:
        caption += f"; {REFERENCE_MARKER_NAME}: the PyTorch FP32 reference"
    if any(p.measured is not None for p in points):
        caption += "; a hollow marker is a measured top-1 whose difference from the original is within the noise, counted at the original's top-1 (filled)"
    return _save(fig, out_dir / f"pareto_{backend}.png", caption)


def _grouped_speedups(entries: Sequence[_Entry]) -> dict[str, dict[str, Speedup]]:
    """series -> backend -> batch-1 speed-up over PyTorch FP32 (a re-run replaces an earlier one)."""
    groups: dict[str, dict[str, Speedup]] = {}
    for e in entries:
        stats = e.latency_at(1)
        found = e.speedup_range(stats) if stats and not e.is_baseline else None
        if found is not None:
            groups.setdefault(e.series, {})[e.result.backend] = found
    return groups


def _plot_speedup(entries: Sequence[_Entry], out_dir: Path) -> Optional[_Figure]:
    groups = _grouped_speedups(entries)
    if not groups:
        return None
    backends = sorted({b for values in groups.values() for b in values})
    colours = _palette(backends, "Dark2")
    width = 0.8 / len(backends)
    fig, ax = _new_axes()
    handles = []
    for i, backend in enumerate(backends):
        placed = [(g, values[backend]) for g, values in enumerate(groups.values()) if backend in values]
        offset = (i - (len(backends) - 1) / 2) * width
        spread = [[v.value - v.low for _, v in placed], [v.high - v.value for _, v in placed]]
        bars = ax.bar(
            [g + offset for g, _ in placed], [v.value for _, v in placed], width, yerr=spread, capsize=3,
            error_kw={"elinewidth": 1, "alpha": 0.6}, color=colours[backend], label=backend, zorder=3,
        )
        ax.bar_label(bars, labels=[f"{v.value:.2f}x" + ("~" if v.within_noise else "") for _, v in placed], padding=2, fontsize=8)
        handles.append(bars)
    handles.append(ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="PyTorch FP32 (1x)", zorder=4))
    stacked = [_multiline(g) for g in groups]
    crowded = len(groups) * max(len(line) for label in stacked for line in label.splitlines()) > TICK_CHARS_PER_ROW
    labels = list(groups) if crowded else stacked  # crowded labels go on one slanted line each
    ax.set_xticks(
        range(len(groups)),
        labels,
        rotation=25 if crowded else 0,
        ha="right" if crowded else "center",
        rotation_mode="anchor",
        fontsize=8 if crowded else None,
    )
    ax.set_ylim(0, max(v.high for values in groups.values() for v in values.values()) * 1.15)
    ax.set_xlabel("model and variant")
    ax.set_ylabel("speed-up over PyTorch FP32 (x, batch-1 p50)")
    ax.set_title("Speed-up over PyTorch FP32 at batch 1 (higher is better)")
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    fig.legend(handles=handles, title="backend", loc="outside right upper")
    caption = (
        "Speed-up of each backend over PyTorch FP32 at batch 1, with the range the latency spread allows "
        "(the rounds' p50 range, else p50..p90); ~: the range includes 1x (noise)"
    )
    return _save(fig, out_dir / "speedup.png", caption)


def _size_bars(entries: Sequence[_Entry]) -> list[tuple[str, float, str]]:
    """(label, size MB, model): one bar per model + variant, one per backend where they differ."""
    sizes: dict[str, dict[str, float]] = {}
    models: dict[str, str] = {}
    for e in entries:
        if e.result.size_mb is not None:
            sizes.setdefault(e.series, {})[e.result.backend] = e.result.size_mb
            models[e.series] = e.result.model
    bars = []
    for series, by_backend in sizes.items():
        if len({f"{s:.1f}" for s in by_backend.values()}) == 1:  # equal as the tables print them
            bars.append((series, next(iter(by_backend.values())), models[series]))
        else:
            bars += [(f"{series} ({backend})", size, models[series]) for backend, size in sorted(by_backend.items())]
    return bars


def _plot_size(entries: Sequence[_Entry], out_dir: Path) -> Optional[_Figure]:
    from matplotlib.patches import Patch

    bars = _size_bars(entries)
    if not bars:
        return None
    colours = _palette(sorted({model for _, _, model in bars}), "tab10")
    fig, ax = _new_axes()
    fig.set_figheight(max(FIGSIZE[1], 1.5 + 0.35 * len(bars)))
    drawn = ax.barh(range(len(bars)), [size for _, size, _ in bars], color=[colours[m] for _, _, m in bars], zorder=3)
    ax.bar_label(drawn, labels=[f"{size:.1f} MB" for _, size, _ in bars], padding=3, fontsize=8)
    ax.set_yticks(range(len(bars)), [label.replace(" @ ", "\n@ ") for label, _, _ in bars])
    ax.invert_yaxis()  # first series at the top, as in the tables
    ax.set_xlim(0, max(size for _, size, _ in bars) * 1.25)  # room for the value labels
    ax.set_xlabel("model file size (MB)")
    ax.set_ylabel("model and variant")
    ax.set_title("Model size on disk (smaller is better)")
    ax.grid(True, axis="x", alpha=0.3, zorder=0)
    fig.legend(handles=[Patch(color=c, label=m) for m, c in colours.items()], title="model", loc="outside right upper")
    return _save(fig, out_dir / "size.png", "Model file size per model and variant")


def _with_references(entries: Sequence[_Entry], backend: str) -> list[_Entry]:
    """A backend's rows and the PyTorch FP32 references of the same models and runs."""
    rows = [e for e in entries if e.result.backend == backend and not e.is_reference]
    compared = {(e.run.number, id(e.reference)) for e in rows if e.reference is not None}
    references = [e for e in entries if e.is_reference and (e.run.number, id(e.result)) in compared]
    return references + rows


def _write_plots(entries: Sequence[_Entry], out_dir: Path) -> list[_Figure]:
    backends = sorted({e.result.backend for e in entries} - {BASELINE_BACKEND})
    figures = [_plot_pareto(_with_references(entries, b), b, out_dir) for b in backends]
    figures += [_plot_speedup(entries, out_dir), _plot_size(entries, out_dir)]
    return [f for f in figures if f is not None]


# --------------------------------------------------------------------------- entry point


def write_report(
    documents: Sequence[dict], out_dir: Path, title: str = "edgekit report", sources: Optional[Sequence[str]] = None,
) -> list[Path]:
    """Write report.md, report.csv, report.html and PNG plots into out_dir; return the paths written.

    A document may hold bench rows, a per-layer ``profile`` section (`edgekit profile`), or
    both; report.csv holds the bench rows and is not written when there are none. The pages
    open with a headline per model/artifact (see :func:`headline`) and the image set; when
    several documents hold bench rows, each is a run of its own ("run N", labelled with
    ``sources`` (e.g. file names, one per document) where given, time, command, host and
    run id), and its rows get tables, plot series and headlines of their own."""
    machines = _distinct_machines([d for d in documents if d.get("results") or d.get("profile")])
    warning = _mixed_machine_warning(machines)
    runs = _runs_of(documents, sources)
    entries = _collect_entries(runs, mixed_machines=warning is not None)
    if not entries and not any(d.get("profile") for d in documents):
        raise DataError(f"no results to report in {len(documents)} document(s)")
    if warning:
        warnings.warn(warning, stacklevel=2)
    out_dir = ensure_dir(Path(out_dir))
    figures = _write_plots(entries, out_dir)
    sections = _class_sections(entries, out_dir)
    profiles = _profile_sections(documents, out_dir)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, _markdown(title, runs, machines, warning, entries, figures, sections, profiles))
    atomic_write_text(html_path, _html(title, runs, machines, warning, entries, figures, sections, profiles))
    csv_path = [_write_csv(entries, out_dir / "report.csv")] if entries else []  # bench rows only; a profile's numbers are in its results file
    per_class = [_write_per_class_csv(sections, out_dir / "per_class.csv")] if sections else []
    pictures = [section.figure.path for section in sections if section.figure is not None]
    profile_plots = [fig.path for section in profiles for fig in section.figures]
    return [md_path, *csv_path, html_path, *(f.path for f in figures), *per_class, *pictures, *profile_plots]
