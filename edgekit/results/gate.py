"""`edgekit check`: compare a new results file with a baseline, for CI, judging evidence
rather than point estimates (the policy, with an example: docs/ci-gate.md).

Cells are matched on (model, variant, backend, batch). Every check has three outcomes:
FAIL when the evidence says the change exceeds the allowance (the whole 95% interval, or
the slowdown beyond the runs' noise, lies past it), PASS when it is within it, and
INCONCLUSIVE (exit 0, said plainly) when the images or the timing cannot tell.

Accuracy (``--max-top1-drop``, points): top-1 where both runs have it, else agreement with
the PyTorch original. The drop's 95% interval comes from what the rows store:

- *paired*: both runs on the same image set (``images.identity``) with the same PyTorch
  original (top-1 + drop agree): the change is the difference of the two rows' paired drops
  against PyTorch (Tango intervals, photos as clusters), combined as independent, which
  is conservative as the two drops share PyTorch's errors;
- *unpaired*: otherwise, two samples (Newcombe's hybrid score interval from each row's
  Wilson interval; recomputed from the counts where a row has none).

A drop fails only when the interval's lower end exceeds the allowance; when its upper end
does too but its lower end does not, the finding is INCONCLUSIVE, and where the interval's
half-width alone is wider than the allowance the message says that the allowance is below
what these images resolve.

Latency (``--max-latency-regression``): each cell's p50 is divided by the p50 of a
reference model's cell (same backend, variant and batch) measured in the same run, so a
machine that is 20% slower today moves both and the ratio stays. The slowdown (in log
space) fails when it exceeds the allowance by more than the runs' noise: a 95% t-interval
from the spread of the rounds (``bench --repeats``) of the cell and of its reference in
both runs, never narrower than the noise floor (``--latency-noise-floor``, the run-to-run
drift that the rounds of one run cannot see). From a single round only the floor applies,
and the message says the verdict rests on one round. A slowdown above the allowance but
within the noise is INCONCLUSIVE.

- The reference model (``--reference``, else the new document's ``reference``, else the
  baseline's) is judged too: its accuracy as usual, its latency as a raw p50 comparison
  (it is the yardstick; raw latency is only comparable on the same machine, and the
  report warns when the machines differ).
- A cell whose reference cell is missing from either run fails its latency check, naming
  the missing reference cell; nothing is normalised by a stand-in.
- Without any reference named, raw p50s are compared, and the report says so.
- A row with an ``error`` (a backend that failed) fails every one of its cells in the new
  run (check "run"); in the baseline it counts as absent, so those cells are "new".
- A check that could only pass vacuously, or one between different things, is refused
  with :class:`GateError` (exit 2): an empty baseline, a new file with nothing in it, no
  cell in common, or runs on different image sets (unless ``allow_different_images``).
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


DEFAULT_NOISE_FLOOR = 0.10  # run-to-run drift of a p50 that one run's rounds cannot see (docs/ci-gate.md)
FAILING = ("fail", "missing")  # statuses that make the check exit 1; "inconclusive" and "new" do not


@dataclass(frozen=True)
class Cell:
    key: CellKey
    p50_ms: float
    top1: Optional[float]
    agreement: Optional[float]
    is_reference: bool = False  # the yardstick itself: its latency is compared raw
    p50_rounds: tuple[float, ...] = ()  # one p50 per round (bench --repeats); () for one round
    accuracy: Optional[dict] = None  # the row's accuracy section: intervals, images, files


@dataclass(frozen=True)
class Finding:
    key: CellKey
    check: str  # "accuracy", "latency", "presence", "run"
    status: str  # "pass", "fail", "inconclusive", "new", "missing"
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
        return not any(f.status in FAILING for f in self.findings)

    @property
    def inconclusive(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.status == "inconclusive")


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
                p50_rounds=tuple(s.get("p50_rounds") or ()), accuracy=acc or None,
            )
    return found


# --------------------------------------------------------------------------- image sets


def image_sets(document: dict) -> dict[str, str]:
    """identity -> description of the image set(s) a document was evaluated on: the
    document's ``images`` section, and each unit's of an ``edgekit run --ray`` document."""
    found: dict[str, str] = {}
    sections = [document.get("images")] + [u.get("images") for u in ((document.get("cluster") or {}).get("units") or []) if isinstance(u, dict)]
    for images in sections:
        if isinstance(images, dict) and images.get("identity"):
            found[str(images["identity"])] = str(images.get("description") or "images")
    return found


def _describe_sets(sets: dict[str, str]) -> str:
    return "; ".join(f"{description} (image set {identity})" for identity, description in sorted(sets.items()))


def check_image_sets(baseline: dict, new: dict, allow_different: bool) -> tuple[bool, list[str]]:
    """(whether both runs are known to be on the same image set, warnings). Raises
    GateError (exit 2) when both documents name their image sets and these differ,
    unless ``allow_different``."""
    old_sets, new_sets = image_sets(baseline), image_sets(new)
    if old_sets and new_sets:
        if old_sets.keys() == new_sets.keys():
            return len(old_sets) == 1, []  # several sets (a --ray run's units): which cell used which is not recorded
        if not allow_different:
            raise GateError(
                f"the baseline was evaluated on {_describe_sets(old_sets)} and the new results on {_describe_sets(new_sets)}: "
                "accuracy on other images is not comparable (pass --allow-different-images to judge anyway)"
            )
        return False, [
            f"the runs used different images (baseline: {_describe_sets(old_sets)}; new: {_describe_sets(new_sets)}); "
            "judged as allowed by --allow-different-images: accuracy as two independent samples (unpaired)"
        ]
    missing = [which for which, sets in (("the baseline", old_sets), ("the new results", new_sets)) if not sets]
    return False, [
        f"{' and '.join(missing)} {'do' if len(missing) > 1 else 'does'} not record the image set: that both runs used the same "
        "images is not checked, and accuracy is compared as two independent samples (unpaired)"
    ]


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


def refuse_duplicate_cells(document: dict, which: str) -> None:
    """GateError (exit 2) when a cell (model, variant, backend, batch) is in ``document``
    more than once: comparing one copy would let the other hide a regression."""
    seen: dict[CellKey, list[int]] = {}
    for i, r in enumerate(document.get("results") or []):
        if not isinstance(r, dict):
            continue
        for s in r.get("latency") or []:
            if isinstance(s, dict):
                key = (r.get("model"), r.get("variant"), r.get("backend"), s.get("batch_size"))
                seen.setdefault(key, []).append(i)
    twice = sorted(((k, rows) for k, rows in seen.items() if len(rows) > 1), key=lambda kr: kr[1])
    if twice:
        key, rows = twice[0]
        more = f" (and {len(twice) - 1} more cell{'s' if len(twice) > 2 else ''})" if len(twice) > 1 else ""
        raise GateError(
            f"{which} has cell {label(key)} more than once (results[{rows[0]}] and results[{rows[1]}]){more}: "
            "one copy could hide a regression in the other; keep one row per model, variant, backend and batch"
        )


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
    *,
    allow_different_images: bool = False,
    latency_noise_floor: float = DEFAULT_NOISE_FLOOR,
    trust_raw_latency: bool = False,
) -> GateReport:
    """Judge ``new`` against ``baseline``.

    ``max_top1_drop``: points of top-1 (or agreement) a cell may lose beyond the noise;
    ``max_latency_regression``: a fraction (0.10 = 10% slower) beyond the noise;
    ``latency_noise_floor``: the least run-to-run noise assumed for a p50 (a fraction);
    ``trust_raw_latency``: a raw p50 (no reference model to divide by) may fail; by default
    it is at most inconclusive, because load that changes between two runs moves raw p50s
    by more than any floor while the rounds of each run agree (benchmarks/results/check_noise.md).
    All must be finite and >= 0 (UsageError, exit 2). Raises GateError (exit 2) when
    nothing could be judged: an empty baseline, a new file with no results, no cell in
    common, a reference model that is in neither run, or runs on different image sets
    (unless ``allow_different_images``).
    """
    max_top1_drop = check_threshold(max_top1_drop, "--max-top1-drop")
    max_latency_regression = check_threshold(max_latency_regression, "--max-latency-regression")
    latency_noise_floor = check_threshold(latency_noise_floor, "--latency-noise-floor")
    if not _rows(baseline):
        raise GateError("the baseline has no results: a check against an empty baseline would pass without judging anything")
    refuse_duplicate_cells(baseline, "the baseline")
    refuse_duplicate_cells(new, "the new results")
    same_images, image_warnings = check_image_sets(baseline, new, allow_different_images)
    name, warnings = choose_reference(baseline, new, reference)
    warnings += image_warnings
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
        findings.append(_accuracy(key, before, cell, max_top1_drop, same_images))
        if name is None:
            findings.append(_latency(key, before, cell, max_latency_regression, None, latency_noise_floor, trust_raw=trust_raw_latency))
        elif cell.is_reference:
            reference_compared = True
            findings.append(_latency(key, before, cell, max_latency_regression, None, latency_noise_floor, yardstick=True, trust_raw=trust_raw_latency))
        else:
            ref_key = (name, key[1], key[2], key[3])
            old_ref, new_ref = old_cells.get(ref_key), new_cells.get(ref_key)
            if old_ref is None or new_ref is None:
                findings.append(_missing_reference(key, ref_key, old_ref is None, new_ref is None, old_failed, new_failures))
            else:
                findings.append(_latency(key, before, cell, max_latency_regression, (old_ref, new_ref), latency_noise_floor))
    for key in sorted(old_cells.keys() - new_keys):
        findings.append(Finding(key, "presence", "missing", "in the baseline but not in the new results"))
    if name is None:
        warnings.append("no reference model named (--reference or the recipe's 'reference'): latencies are compared as raw p50s")
    elif reference_compared and not _same_machine(baseline, new):
        warnings.append(
            f"the reference model {name}'s own latency is compared as raw p50s and the runs come from different machines: "
            "those latency findings do not compare like with like"
        )
    order = {"fail": 0, "missing": 0, "inconclusive": 1}
    return GateReport(tuple(sorted(findings, key=lambda f: (order.get(f.status, 2), f.key))), tuple(warnings))


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


# --------------------------------------------------------------------------- accuracy: the drop's interval


@dataclass(frozen=True)
class Drop:
    """A drop in points (positive: worse) with its 95% interval and how it was made."""

    estimate: float
    low: float
    high: float
    method: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


def _wilson_percent(percent: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a percentage measured on ``n`` observations, in percent."""
    if n <= 0:
        return (0.0, 100.0)
    p = min(max(percent / 100.0, 0.0), 1.0)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (100.0 * max(0.0, min(p, centre - half)), 100.0 * min(1.0, max(p, centre + half)))


def _interval(value: float, interval: Any) -> Optional[tuple[float, float]]:
    """A stored interval when it is a pair that holds ``value``; else None (absent, or stale:
    a document edited by hand)."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(isinstance(x, (int, float)) for x in interval):
        low, high = float(interval[0]), float(interval[1])
        if low - 1e-6 <= value <= high + 1e-6:
            return (low, high)
    return None


def newcombe(old: float, old_ci: tuple[float, float], new: float, new_ci: tuple[float, float]) -> tuple[float, float]:
    """95% interval of ``old - new`` from the two estimates' own 95% intervals, taken as
    independent (Newcombe's hybrid score method when the intervals are Wilson's)."""
    drop = old - new
    low = drop - math.sqrt((old - old_ci[0]) ** 2 + (new_ci[1] - new) ** 2)
    high = drop + math.sqrt((old_ci[1] - old) ** 2 + (new - new_ci[0]) ** 2)
    return (low, high)


def _proportion(acc: dict, value_key: str, ci_key: str) -> tuple[float, tuple[float, float], bool]:
    """(value, its 95% interval, whether the interval was stored): stored intervals count
    the views of one photo as correlated; recomputed ones (from ``images``) cannot."""
    value = float(acc[value_key])
    stored = _interval(value, acc.get(ci_key))
    if stored is not None:
        return value, stored, True
    return value, _wilson_percent(value, float(acc.get("images") or 0)), False


def accuracy_drop(before: dict, after: dict, same_images: bool) -> Optional[tuple[str, float, float, Drop]]:
    """(what is compared, its value before and after, the drop) for two rows' accuracy
    sections, or None when they have nothing in common to compare.

    Top-1 where both have it: *paired* through the PyTorch original when both runs used
    the same images and the same original (top-1 + drop equal in both rows): the change is
    the difference of the two paired drops, their Tango intervals combined as independent;
    otherwise *unpaired* from the two rows' top-1 intervals. Else agreement with the
    PyTorch original, unpaired.
    """
    if before.get("top1") is not None and after.get("top1") is not None:
        old, new = float(before["top1"]), float(after["top1"])
        if same_images and before.get("top1_drop") is not None and after.get("top1_drop") is not None:
            old_drop, new_drop = float(before["top1_drop"]), float(after["top1_drop"])
            old_ci, new_ci = _interval(old_drop, before.get("top1_drop_ci")), _interval(new_drop, after.get("top1_drop_ci"))
            if old_ci is not None and new_ci is not None and abs((old + old_drop) - (new + new_drop)) < 1e-6:
                low, high = newcombe(new_drop, new_ci, old_drop, old_ci)
                return "top-1", old, new, Drop(old - new, low, high, "paired through the PyTorch original on the same images")
        name, key, ci_key = "top-1", "top1", "top1_ci"
    elif before.get("agreement") is not None and after.get("agreement") is not None:
        name, key, ci_key = "agreement with PyTorch", "agreement", "agreement_ci"
    else:
        return None
    old, old_ci, old_stored = _proportion(before, key, ci_key)
    new, new_ci, new_stored = _proportion(after, key, ci_key)
    low, high = newcombe(old, old_ci, new, new_ci)
    method = "unpaired" if old_stored and new_stored else "unpaired; views counted as independent where a row stores no interval"
    return name, old, new, Drop(old - new, low, high, method)


def _images(acc: Optional[dict]) -> str:
    acc = acc or {}
    images, files = acc.get("images"), acc.get("files")
    if not images:
        return "these images"
    return f"{images} images" + (f" ({files} photos)" if files and files != images else "")


def _accuracy(key: CellKey, before: Cell, after: Cell, max_drop: float, same_images: bool = False) -> Finding:
    judged = accuracy_drop(before.accuracy or {"top1": before.top1, "agreement": before.agreement},
                           after.accuracy or {"top1": after.top1, "agreement": after.agreement}, same_images)
    if judged is None:
        return Finding(key, "accuracy", "pass", "no accuracy figures to compare")
    name, old, new, drop = judged
    detail = (
        f"{name} {old:.2f}% -> {new:.2f}% ({0.0 - drop.estimate + 0.0:+.2f} points; drop 95% interval {drop.low:+.2f} to {drop.high:+.2f}, "
        f"{drop.method}; allowed -{max_drop:g})"
    )
    if drop.low > max_drop:
        return Finding(key, "accuracy", "fail", f"{detail}: the drop exceeds {max_drop:g} points beyond the noise")
    if drop.high <= max_drop:
        return Finding(key, "accuracy", "pass", detail)
    if drop.half_width > max_drop:
        why = (f"the {max_drop:g}-point allowance is below what {_images(after.accuracy)} resolve (±{drop.half_width:.2f} points): "
               "no regression shown, judged inconclusive (exit 0)")
    else:
        why = f"the drop may exceed {max_drop:g} points but not beyond the noise: judged inconclusive (exit 0)"
    return Finding(key, "accuracy", "inconclusive", f"{detail}: {why}")


# --------------------------------------------------------------------------- latency: the slowdown beyond the noise

# two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond the table)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def t95(df: int) -> float:
    """Student's t 97.5% quantile for ``df`` degrees of freedom (the next smaller tabled df: conservative)."""
    if df < 1:
        return math.inf
    return _T95[max(d for d in _T95 if d <= df)] if df <= 60 else 1.96


def rounds_noise(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Optional[tuple[float, int]]:
    """(95% half-width in log space, rounds per run) of a log p50 ratio whose terms are the
    (baseline rounds, new rounds) ``pairs`` (the cell; its reference cell too when
    normalised), or None when a term has fewer than 2 rounds in either run.

    Each term's variance of a round's log p50 is pooled over its two runs; the ratio's
    standard error sums var * (1/k_old + 1/k_new) over the terms; Student's t with the
    pooled degrees of freedom makes it a 95% half-width.
    """
    se2, df, fewest = 0.0, 0, math.inf
    for old, new in pairs:
        if len(old) < 2 or len(new) < 2 or min(old) <= 0 or min(new) <= 0:
            return None
        squares = 0.0
        for rounds in (old, new):
            logs = [math.log(x) for x in rounds]
            mean = sum(logs) / len(logs)
            squares += sum((x - mean) ** 2 for x in logs)
        term_df = len(old) + len(new) - 2
        se2 += squares / term_df * (1.0 / len(old) + 1.0 / len(new))
        df += term_df
        fewest = min(fewest, len(old), len(new))
    return t95(df) * math.sqrt(se2), int(fewest)


def _allowed(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def _latency(
    key: CellKey,
    before: Cell,
    after: Cell,
    max_regression: float,
    references: Optional[tuple[Cell, Cell]],
    noise_floor: float = DEFAULT_NOISE_FLOOR,
    yardstick: bool = False,
    trust_raw: bool = False,
) -> Finding:
    pairs = [(before.p50_rounds, after.p50_rounds)]
    if references is not None:
        old_ref, new_ref = references
        old_ratio, new_ratio = before.p50_ms / old_ref.p50_ms, after.p50_ms / new_ref.p50_ms
        change = new_ratio / old_ratio - 1.0
        basis = f"relative to the reference: {old_ratio:.3f} -> {new_ratio:.3f}"
        pairs.append((old_ref.p50_rounds, new_ref.p50_rounds))
    elif yardstick:
        change = after.p50_ms / before.p50_ms - 1.0
        basis = "raw p50: the reference model is the yardstick, so it is compared raw"
    else:
        change = after.p50_ms / before.p50_ms - 1.0
        basis = "raw p50"
    floor = math.log1p(noise_floor)
    measured = rounds_noise(pairs)
    if measured is None:
        margin = floor
        within = "within" if abs(math.log1p(change)) <= floor else "beyond"
        noise = f"one round per run: the verdict rests on a single round, {within} the {_allowed(noise_floor)} noise floor"
    else:
        half_width, rounds = measured
        margin = max(half_width, floor)
        counts = {len(r) for pair in pairs for r in pair}
        noise = f"{rounds}{'' if len(counts) == 1 else '+'} rounds per run: noise ±{math.expm1(half_width):.1%}" + (
            f", floor {_allowed(noise_floor)} applies" if half_width < floor else "")
    slowdown, allowed = math.log1p(change), math.log1p(max_regression)
    detail = f"p50 {before.p50_ms:.2f} -> {after.p50_ms:.2f} ms, {change:+.1%} {basis} ({noise}; allowed +{_allowed(max_regression)})"
    if slowdown - margin > allowed and (references is not None or trust_raw):
        return Finding(key, "latency", "fail", f"{detail}: slower beyond the noise")
    if slowdown - margin > allowed:
        return Finding(key, "latency", "inconclusive", f"{detail}: slower beyond the rounds' noise, but a raw p50 also moves with "
                       "the machine's load between runs, which no round sees: judged inconclusive (exit 0; name a --reference "
                       "model, or pass --trust-raw-latency on a dedicated runner)")
    if slowdown > allowed:
        return Finding(key, "latency", "inconclusive", f"{detail}: above the allowance but within the noise, judged inconclusive (exit 0)")
    return Finding(key, "latency", "pass", detail)


# --------------------------------------------------------------------------- output


def write_junit(report: GateReport, path: Path) -> Path:
    """JUnit XML, written atomically (one-line WriteError, exit 1, when it cannot be)."""
    from ..files import atomic_write_bytes

    suite = ET.Element("testsuite", name="edgekit check", tests=str(len(report.findings)))
    failures = 0
    for f in report.findings:
        case = ET.SubElement(suite, "testcase", classname=f"edgekit.{f.check}", name=f.label)
        if f.status in FAILING:
            failures += 1
            ET.SubElement(case, "failure", message=f.message).text = f.message
        elif f.status == "new":
            ET.SubElement(case, "skipped", message=f.message)
        elif f.status == "inconclusive":  # passes; the reason travels with the test case
            ET.SubElement(case, "system-out").text = f"INCONCLUSIVE: {f.message}"
    suite.set("failures", str(failures))
    for w in report.warnings:
        ET.SubElement(suite, "system-out").text = w
    return atomic_write_bytes(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))


_STATUS_STYLES = {"fail": "red", "missing": "red", "new": "yellow", "inconclusive": "yellow", "pass": "green"}


def status_style(status: str) -> str:
    """The rich style for a finding's status ('fail'/'FAIL' -> 'red', 'missing' -> 'red',
    'new' and 'inconclusive' -> 'yellow', 'pass' -> 'green'; anything else -> '' i.e. unstyled)."""
    return _STATUS_STYLES.get(str(status).lower(), "")


def summary_rows(report: GateReport) -> Sequence[tuple[str, str, str, str]]:
    return [(f.status.upper(), f.label, f.check, f.message) for f in report.findings]
