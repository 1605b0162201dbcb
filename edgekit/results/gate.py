"""`edgekit check`: compare a new results file with a baseline, for CI.

Cells are matched on (model, variant, backend, batch). Accuracy is compared on top-1
where both runs had labels, else on top-1 agreement with the PyTorch original. Latency is
compared noise-aware: each cell's p50 is divided by the p50 of a reference model's cell
(same backend, variant and batch) measured in the same run, so a machine that is 20%
slower today moves both and the ratio stays; only a cell that slowed relative to its
neighbours counts as a regression.

- The reference model (``--reference``, else the new document's ``reference``, else the
  baseline's) is judged too: its accuracy as usual, its latency as a raw p50 comparison
  (it is the yardstick; raw latency is only comparable on the same machine, and the
  report warns when the machines differ).
- A cell whose reference cell is missing from either run fails its latency check, naming
  the missing reference cell; nothing is normalised by a stand-in.
- Without any reference named, raw p50s are compared, and the report says so.
- A row with an ``error`` (a backend that failed) fails every one of its cells in the new
  run (check "run"); in the baseline it counts as absent, so those cells are "new".
- A check that could only pass vacuously is refused with :class:`GateError` (exit 2): an
  empty baseline, a new file with nothing in it, or no cell in common.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..core import EdgekitError, UsageError

CellKey = tuple[str, str, str, int]  # model, variant, backend, batch


class GateError(EdgekitError):
    """The two runs cannot be compared (a check would pass vacuously): exit 2, not 1."""

    exit_code = 2


@dataclass(frozen=True)
class Cell:
    key: CellKey
    p50_ms: float
    top1: Optional[float]
    agreement: Optional[float]
    is_reference: bool = False  # the yardstick itself: its latency is compared raw


@dataclass(frozen=True)
class Finding:
    key: CellKey
    check: str  # "accuracy", "latency", "presence", "run"
    status: str  # "pass", "fail", "new", "missing"
    message: str

    @property
    def label(self) -> str:
        return label(self.key)


@dataclass(frozen=True)
class GateReport:
    findings: tuple[Finding, ...]
    warnings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not any(f.status in ("fail", "missing") for f in self.findings)


def label(key: CellKey) -> str:
    model, variant, backend, batch = key
    return f"{model} {variant} {backend} b{batch}"


# --------------------------------------------------------------------------- thresholds


def parse_percent(text: Union[str, float]) -> float:
    """'10%', '10' or '0.1' (a fraction when below 1) -> fraction 0.10.

    Raises ValueError for anything else: empty, not a number, negative, NaN or infinite.
    """
    raw = str(text).strip()
    number = raw[:-1].strip() if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a percentage such as 10%, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite percentage, got {text!r}")
    if value < 0:
        raise ValueError(f"must not be negative, got {text!r}")
    if raw.endswith("%") or value >= 1:
        value /= 100.0
    return value


def check_threshold(value: Any, name: str) -> float:
    """``value`` as a float when it is a finite number >= 0, else UsageError (exit 2) naming ``name``."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise UsageError(f"{name}: expected a finite number >= 0, got {value!r}")
    return number


# --------------------------------------------------------------------------- reading documents


def _rows(document: dict) -> list[dict]:
    return [r for r in document.get("results") or [] if isinstance(r, dict)]


def _failed(row: dict) -> bool:
    return bool(row.get("error"))


def _models(document: dict) -> set[str]:
    return {r.get("model") for r in _rows(document)}


def _reference_name(document: dict, reference: Optional[str]) -> Optional[str]:
    return reference or document.get("reference")


def choose_reference(baseline: dict, new: dict, reference: Optional[str] = None) -> tuple[Optional[str], list[str]]:
    """The reference model for both runs, and a warning when the two documents disagree:
    ``reference`` (--reference) wins, else the new document's, else the baseline's."""
    if reference:
        return reference, []
    old, now = baseline.get("reference"), new.get("reference")
    if old and now and old != now:
        return now, [f"the baseline names reference model {old!r} and the new results {now!r}: using {now!r} (choose with --reference)"]
    return now or old, []


def reference_p50s(document: dict, reference: Optional[str]) -> dict[tuple[str, str, int], float]:
    """(variant, backend, batch) -> the reference model's p50 in this run (failed rows left out)."""
    name = _reference_name(document, reference)
    found = {}
    for r in _rows(document):
        if r.get("model") == name and not _failed(r):
            for s in r.get("latency") or []:
                found[(r["variant"], r["backend"], s["batch_size"])] = s["p50_ms"]
    return found


def cells(document: dict, reference: Optional[str]) -> dict[CellKey, Cell]:
    """Every timed cell of the rows that did not fail."""
    name = _reference_name(document, reference)
    found: dict[CellKey, Cell] = {}
    for r in _rows(document):
        if _failed(r):
            continue
        acc = r.get("accuracy") or {}
        for s in r.get("latency") or []:
            key = (r["model"], r["variant"], r["backend"], s["batch_size"])
            found[key] = Cell(
                key=key, p50_ms=s["p50_ms"], top1=acc.get("top1"), agreement=acc.get("agreement"), is_reference=r["model"] == name,
            )
    return found


def failed_cells(document: dict, baseline_cells: Optional[dict[CellKey, Any]] = None) -> dict[CellKey, str]:
    """Cell -> error message for the rows with an ``error``. A failed row covers the batch
    sizes it timed before failing and those the baseline has for its model, variant and
    backend; failing with neither, the batch sizes the rest of its run timed (else 1)."""
    baseline_cells = baseline_cells or {}
    timed_batches = {s["batch_size"] for r in _rows(document) if not _failed(r) for s in r.get("latency") or []}
    found: dict[CellKey, str] = {}
    for r in _rows(document):
        if not _failed(r):
            continue
        triple = (r["model"], r["variant"], r["backend"])
        batches = {s["batch_size"] for s in r.get("latency") or [] if isinstance(s, dict) and "batch_size" in s}
        batches |= {k[3] for k in baseline_cells if k[:3] == triple}
        for batch in batches or timed_batches or {1}:
            found[(*triple, batch)] = str(r["error"])
    return found


def _duplicate_warnings(document: dict, which: str) -> list[str]:
    seen: dict[CellKey, int] = {}
    for r in _rows(document):
        for s in r.get("latency") or []:
            key = (r["model"], r["variant"], r["backend"], s["batch_size"])
            seen[key] = seen.get(key, 0) + 1
    twice = sorted(k for k, n in seen.items() if n > 1)
    if not twice:
        return []
    shown = ", ".join(label(k) for k in twice[:3]) + (" ..." if len(twice) > 3 else "")
    return [f"{which} has {len(twice)} cell(s) more than once ({shown}): the last one is compared"]


def machine_warnings(baseline: dict, new: dict) -> list[str]:
    a, b = baseline.get("machine") or {}, new.get("machine") or {}
    differing = [k for k in _MACHINE_KEYS if a.get(k) != b.get(k)]
    if differing:
        return [
            "baseline and new results come from different machines ("
            + "; ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in differing)
            + "): latency ratios are only meaningful with a reference model"
        ]
    return []


_MACHINE_KEYS = ("cpu", "logical_cores", "platform")


def _same_machine(baseline: dict, new: dict) -> bool:
    a, b = baseline.get("machine") or {}, new.get("machine") or {}
    return all(a.get(k) == b.get(k) for k in _MACHINE_KEYS)


# --------------------------------------------------------------------------- comparing


def _sample(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(label(k) for k in keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def compare(
    baseline: dict,
    new: dict,
    max_top1_drop: float,
    max_latency_regression: float,
    reference: Optional[str] = None,
) -> GateReport:
    """Judge ``new`` against ``baseline``.

    ``max_top1_drop``: points of top-1 (or agreement) a cell may lose; ``max_latency_regression``:
    a fraction (0.10 = 10% slower). Both must be finite and >= 0 (UsageError, exit 2).
    Raises GateError (exit 2) when nothing could be judged: an empty baseline, a new file
    with no results, no cell in common, or a reference model that is in neither run.
    """
    max_top1_drop = check_threshold(max_top1_drop, "--max-top1-drop")
    max_latency_regression = check_threshold(max_latency_regression, "--max-latency-regression")
    if not _rows(baseline):
        raise GateError("the baseline has no results: a check against an empty baseline would pass without judging anything")
    name, warnings = choose_reference(baseline, new, reference)
    old_cells = cells(baseline, name)
    if not old_cells:
        raise GateError("the baseline has no timed results (every row failed or has no latency): nothing to compare against")
    new_cells = cells(new, name)
    new_failures = failed_cells(new, old_cells)
    new_cells = {k: c for k, c in new_cells.items() if k not in new_failures}
    new_keys = new_cells.keys() | new_failures.keys()
    if not new_keys:
        raise GateError("the new results file has no timed results: nothing to judge")
    if not new_keys & old_cells.keys():
        raise GateError(
            "no cell of the new results matches a cell of the baseline (cells match on model, variant, backend and batch; "
            f"new: {_sample(new_keys)}; baseline: {_sample(old_cells)})"
        )
    if name is not None and name not in _models(baseline) | _models(new):
        models = ", ".join(sorted(m for m in _models(baseline) | _models(new) if m))
        raise GateError(f"reference model {name!r} is in neither run (models: {models})")

    warnings += machine_warnings(baseline, new)
    warnings += _duplicate_warnings(baseline, "the baseline") + _duplicate_warnings(new, "the new results")
    old_failed = {k[:3]: e for k, e in failed_cells(baseline, {}).items()}
    findings: list[Finding] = []
    reference_compared = False
    for key in sorted(new_keys):
        if key in new_failures:
            findings.append(Finding(key, "run", "fail", new_failures[key]))
            continue
        cell, before = new_cells[key], old_cells.get(key)
        if before is None:
            findings.append(Finding(key, "presence", "new", "not in the baseline"))
            continue
        findings.append(_accuracy(key, before, cell, max_top1_drop))
        if name is None:
            findings.append(_latency(key, before, cell, max_latency_regression, None))
        elif cell.is_reference:
            reference_compared = True
            findings.append(_latency(key, before, cell, max_latency_regression, None, yardstick=True))
        else:
            ref_key = (name, key[1], key[2], key[3])
            old_ref, new_ref = old_cells.get(ref_key), new_cells.get(ref_key)
            if old_ref is None or new_ref is None:
                findings.append(_missing_reference(key, ref_key, old_ref is None, new_ref is None, old_failed, new_failures))
            else:
                findings.append(_latency(key, before, cell, max_latency_regression, (old_ref.p50_ms, new_ref.p50_ms)))
    for key in sorted(old_cells.keys() - new_keys):
        findings.append(Finding(key, "presence", "missing", "in the baseline but not in the new results"))
    if name is None:
        warnings.append("no reference model named (--reference or the recipe's 'reference'): latencies are compared as raw p50s")
    elif reference_compared and not _same_machine(baseline, new):
        warnings.append(
            f"the reference model {name}'s own latency is compared as raw p50s and the runs come from different machines: "
            "those latency findings do not compare like with like"
        )
    return GateReport(tuple(sorted(findings, key=lambda f: (f.status != "fail", f.key))), tuple(warnings))


def _missing_reference(
    key: CellKey, ref_key: CellKey, old_missing: bool, new_missing: bool, old_failed: dict, new_failures: dict
) -> Finding:
    where = "in both runs" if old_missing and new_missing else ("in the baseline" if old_missing else "in the new run")
    why = []
    if new_missing and ref_key in new_failures:
        why.append(f"it failed in the new run: {new_failures[ref_key]}")
    if old_missing and ref_key[:3] in old_failed:
        why.append(f"it failed in the baseline: {old_failed[ref_key[:3]]}")
    detail = f" ({'; '.join(why)})" if why else ""
    return Finding(key, "latency", "fail", f"reference cell {label(ref_key)} missing {where}{detail}: latency cannot be judged against it")


def _accuracy(key: CellKey, before: Cell, after: Cell, max_drop: float) -> Finding:
    if before.top1 is not None and after.top1 is not None:
        name, old, new = "top-1", before.top1, after.top1
    elif before.agreement is not None and after.agreement is not None:
        name, old, new = "agreement with PyTorch", before.agreement, after.agreement
    else:
        return Finding(key, "accuracy", "pass", "no accuracy figures to compare")
    drop = old - new
    status = "fail" if drop > max_drop else "pass"
    return Finding(key, "accuracy", status, f"{name} {old:.2f}% -> {new:.2f}% ({-drop:+.2f} points; allowed -{max_drop:g})")


def _allowed(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def _latency(
    key: CellKey,
    before: Cell,
    after: Cell,
    max_regression: float,
    normalisers: Optional[tuple[float, float]],
    yardstick: bool = False,
) -> Finding:
    if normalisers is not None:
        old_ratio, new_ratio = before.p50_ms / normalisers[0], after.p50_ms / normalisers[1]
        change = new_ratio / old_ratio - 1.0
        basis = f"relative to the reference: {old_ratio:.3f} -> {new_ratio:.3f}"
    elif yardstick:
        change = after.p50_ms / before.p50_ms - 1.0
        basis = "raw p50: the reference model is the yardstick, so it is compared raw"
    else:
        change = after.p50_ms / before.p50_ms - 1.0
        basis = "raw p50"
    status = "fail" if change > max_regression else "pass"
    return Finding(
        key, "latency", status,
        f"p50 {before.p50_ms:.2f} -> {after.p50_ms:.2f} ms, {change:+.1%} {basis} (allowed +{_allowed(max_regression)})",
    )


# --------------------------------------------------------------------------- output


def write_junit(report: GateReport, path: Path) -> Path:
    """JUnit XML, written atomically (one-line WriteError, exit 1, when it cannot be)."""
    from ..files import atomic_write_bytes

    suite = ET.Element("testsuite", name="edgekit check", tests=str(len(report.findings)))
    failures = 0
    for f in report.findings:
        case = ET.SubElement(suite, "testcase", classname=f"edgekit.{f.check}", name=f.label)
        if f.status in ("fail", "missing"):
            failures += 1
            ET.SubElement(case, "failure", message=f.message).text = f.message
        elif f.status == "new":
            ET.SubElement(case, "skipped", message=f.message)
    suite.set("failures", str(failures))
    for w in report.warnings:
        ET.SubElement(suite, "system-out").text = w
    return atomic_write_bytes(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))


_STATUS_STYLES = {"fail": "red", "missing": "red", "new": "yellow", "pass": "green"}


def status_style(status: str) -> str:
    """The rich style for a finding's status ('fail'/'FAIL' -> 'red', 'missing' -> 'red',
    'new' -> 'yellow', 'pass' -> 'green'; anything else -> '' i.e. unstyled)."""
    return _STATUS_STYLES.get(str(status).lower(), "")


def summary_rows(report: GateReport) -> Sequence[tuple[str, str, str, str]]:
    return [(f.status.upper(), f.label, f.check, f.message) for f in report.findings]
