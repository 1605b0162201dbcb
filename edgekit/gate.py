"""`edgekit check`: compare a new results file with a baseline, for CI.

Cells are matched on (model, variant, backend, batch). Accuracy is compared on top-1
where both runs had labels, else on top-1 agreement with the PyTorch original. Latency is
compared noise-aware: each cell's p50 is divided by the p50 of a reference model's cell
(same backend, variant and batch) measured in the same run, so a machine that is 20%
slower today moves both and the ratio stays; only a cell that slowed relative to its
neighbours counts as a regression. Without a reference in both runs the raw p50s are
compared, and the report says so.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .core import BenchResult, DataError

CellKey = tuple[str, str, str, int]  # model, variant, backend, batch


@dataclass(frozen=True)
class Cell:
    key: CellKey
    p50_ms: float
    top1: Optional[float]
    agreement: Optional[float]
    is_reference: bool = False  # the yardstick itself: its latency is not judged


@dataclass(frozen=True)
class Finding:
    key: CellKey
    check: str  # "accuracy", "latency", "presence"
    status: str  # "pass", "fail", "new", "missing"
    message: str

    @property
    def label(self) -> str:
        model, variant, backend, batch = self.key
        return f"{model} {variant} {backend} b{batch}"


@dataclass(frozen=True)
class GateReport:
    findings: tuple[Finding, ...]
    warnings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not any(f.status in ("fail", "missing") for f in self.findings)


def parse_percent(text: str) -> float:
    """'10%', '10' or '0.1' (a fraction when below 1) -> fraction 0.10."""
    value = float(str(text).strip().rstrip("%"))
    if str(text).strip().endswith("%") or value >= 1:
        value /= 100.0
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _reference_name(document: dict, reference: Optional[str]) -> Optional[str]:
    return reference or document.get("reference")


def reference_p50s(document: dict, reference: Optional[str]) -> dict[tuple[str, str, int], float]:
    """(variant, backend, batch) -> the reference model's p50 in this run."""
    name = _reference_name(document, reference)
    found = {}
    for r in document.get("results", []):
        if r["model"] == name:
            for s in r["latency"]:
                found[(r["variant"], r["backend"], s["batch_size"])] = s["p50_ms"]
    return found


def cells(document: dict, reference: Optional[str]) -> dict[CellKey, Cell]:
    name = _reference_name(document, reference)
    found: dict[CellKey, Cell] = {}
    for r in (BenchResult.from_dict(d) for d in document.get("results", [])):
        acc = r.accuracy
        for s in r.latency:
            key = (r.model, r.variant, r.backend, s.batch_size)
            found[key] = Cell(
                key=key, p50_ms=s.p50_ms, top1=acc.top1 if acc else None, agreement=acc.agreement if acc else None,
                is_reference=r.model == name,
            )
    return found


def _normalisers(key: CellKey, old_refs: dict, new_refs: dict) -> Optional[tuple[float, float]]:
    """The same reference cell in both runs: same variant if both have it, else FP32."""
    _, variant, backend, batch = key
    for ref_key in ((variant, backend, batch), ("fp32", backend, batch)):
        if ref_key in old_refs and ref_key in new_refs:
            return old_refs[ref_key], new_refs[ref_key]
    return None


def machine_warnings(baseline: dict, new: dict) -> list[str]:
    a, b = baseline.get("machine", {}), new.get("machine", {})
    keys = ("cpu", "logical_cores", "platform")
    differing = [k for k in keys if a.get(k) != b.get(k)]
    if differing:
        return [
            "baseline and new results come from different machines ("
            + "; ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in differing)
            + "): latency ratios are only meaningful with a reference model"
        ]
    return []


def compare(
    baseline: dict,
    new: dict,
    max_top1_drop: float,
    max_latency_regression: float,
    reference: Optional[str] = None,
) -> GateReport:
    old_cells, new_cells = cells(baseline, reference), cells(new, reference)
    old_refs, new_refs = reference_p50s(baseline, reference), reference_p50s(new, reference)
    if not new_cells:
        raise DataError("the new results file has no timed results")
    warnings = machine_warnings(baseline, new)
    findings: list[Finding] = []
    raw = False
    for key, cell in new_cells.items():
        before = old_cells.get(key)
        if before is None:
            findings.append(Finding(key, "presence", "new", "not in the baseline"))
            continue
        findings.append(_accuracy(key, before, cell, max_top1_drop))
        normalisers = None if cell.is_reference else _normalisers(key, old_refs, new_refs)
        raw = raw or (normalisers is None and not cell.is_reference)
        findings.append(_latency(key, before, cell, max_latency_regression, normalisers))
    for key in old_cells.keys() - new_cells.keys():
        findings.append(Finding(key, "presence", "missing", "in the baseline but not in the new results"))
    if raw:
        warnings.append("no reference model in both runs for some cells: their latencies are compared as raw p50s")
    return GateReport(tuple(sorted(findings, key=lambda f: (f.status != "fail", f.key))), tuple(warnings))


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


def _latency(key: CellKey, before: Cell, after: Cell, max_regression: float, normalisers: Optional[tuple[float, float]]) -> Finding:
    if after.is_reference:
        return Finding(key, "latency", "pass", f"reference model (the yardstick): p50 {before.p50_ms:.2f} -> {after.p50_ms:.2f} ms, not judged")
    if normalisers is not None:
        old_ratio, new_ratio = before.p50_ms / normalisers[0], after.p50_ms / normalisers[1]
        change = new_ratio / old_ratio - 1.0
        basis = f"relative to the reference: {old_ratio:.3f} -> {new_ratio:.3f}"
    else:
        change = after.p50_ms / before.p50_ms - 1.0
        basis = "raw p50"
    status = "fail" if change > max_regression else "pass"
    return Finding(
        key, "latency", status,
        f"p50 {before.p50_ms:.2f} -> {after.p50_ms:.2f} ms, {change:+.1%} {basis} (allowed +{max_regression:.0%})",
    )


def write_junit(report: GateReport, path: Path) -> Path:
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
    return path


def summary_rows(report: GateReport) -> Sequence[tuple[str, str, str, str]]:
    return [(f.status.upper(), f.label, f.check, f.message) for f in report.findings]
