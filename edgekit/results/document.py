"""The results document: what every run writes and every later tool reads.

Reading: :func:`load_results_document` parses and validates an ``edgekit-results/1``
document and raises :class:`~edgekit.core.DataError` with one line naming the file and the
JSON path of the first bad field (``new.json: results[0].latency[0].p50_ms must be a
positive number, got null``). Everything the gate, the report and
``BenchResult.from_dict`` read is checked; unknown keys are accepted anywhere, so newer
documents still load. :func:`normalise_results_document` returns a copy that today's
``BenchResult.from_dict`` accepts (unknown keys inside latency, accuracy, throughput and
power entries dropped, nulls of list fields made empty, fields a failed row may lack
filled in).

Writing: :func:`results_document` builds a document from results rows (each row carries
the host and run it came from in its environment); :func:`write_json` writes one
atomically (edgekit.files), and :func:`write_results` keeps measured results when the
requested place cannot take them (a full or read-only disk): they go to a fallback file
and the error says where. Non-finite numbers are written as null.

Standard library only (no torch, no numpy): the CLI, the gate and the on-device runner
may all import it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

from ..core import AccuracyStats, BenchResult, DataError, EdgekitError, LatencyStats, PowerStats, ThroughputStats
from ..files import WriteError, atomic_write_text, write_error_reason

RESULTS_FORMAT = "edgekit-results/1"

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "RESULTS_FORMAT",
    "SavedResults",
    "describe_images",
    "dumps_results",
    "load_results_document",
    "load_results_documents",
    "normalise_results_document",
    "results_document",
    "save_results_or_raise",
    "save_results_safely",
    "validate_results_document",
    "write_json",
    "write_json_atomic",
    "write_results",
]


# =========================================================================== reading

_MISSING = object()
_SHOWN_CHARS = 40


def _show(value: Any) -> str:
    """A bad value as the message shows it, JSON-style: null, true, NaN, "high", a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        shown = json.dumps(value[:_SHOWN_CHARS])
        return shown[:-1] + '..."' if len(value) > _SHOWN_CHARS else shown
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --------------------------------------------------------------------------- checks
# A check pairs what the message says is expected with the test of a value; a field says
# whether it is required, may be null, and what it holds (a value, an object, a list).


@dataclasses.dataclass(frozen=True)
class _Check:
    expect: str
    ok: Callable[[Any], bool]
    # a sane range on top of ``ok``: (what the message says, the test); a value that passes
    # ``ok`` but not this is named with the range
    sane: Optional[tuple[str, Callable[[Any], bool]]] = None

    def problem(self, value: Any) -> Optional[str]:
        """What ``value`` must be, or None when it is fine."""
        if not self.ok(value):
            return self.expect
        if self.sane is not None and not self.sane[1](value):
            return self.sane[0]
        return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


NON_EMPTY_STRING = _Check("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
STRING = _Check("a string", lambda v: isinstance(v, str))
POSITIVE_INT = _Check("a positive integer", lambda v: _is_int(v) and v >= 1)
NON_NEGATIVE_INT = _Check("a non-negative integer", lambda v: _is_int(v) and v >= 0)
POSITIVE_NUMBER = _Check("a positive number", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE_NUMBER = _Check("a number >= 0", lambda v: _is_number(v) and v >= 0)
PERCENT = _Check("a percentage from 0 to 100", lambda v: _is_number(v) and 0 <= v <= 100)
# Sane physical ranges: a latency from a nanosecond to about three hours, a rate up to a
# trillion images per second, a size or memory figure up to a petabyte. A value outside
# them is a damaged or hand-edited file (1e308 overflows every ratio and plot axis).
MS_RANGE = (1e-6, 1e7)


def _within(check: _Check, text: str, lo: float, hi: float) -> _Check:
    return dataclasses.replace(check, sane=(text, lambda v: lo <= v <= hi))


LATENCY_MS = _within(POSITIVE_NUMBER, "a latency from 1e-06 to 1e+07 ms", *MS_RANGE)
DURATION_MS = _within(NON_NEGATIVE_NUMBER, "a time from 0 to 1e+07 ms", 0, MS_RANGE[1])
RATE = _within(NON_NEGATIVE_NUMBER, "a rate from 0 to 1e+12 per second", 0, 1e12)
POSITIVE_RATE = _within(POSITIVE_NUMBER, "a rate up to 1e+12 per second", 0, 1e12)
MEGABYTES = _within(NON_NEGATIVE_NUMBER, "a size from 0 to 1e+09 MB", 0, 1e9)
SECONDS = _within(NON_NEGATIVE_NUMBER, "a time from 0 to 1e+07 seconds", 0, 1e7)
POINTS = _Check("a number of points from -100 to 100", lambda v: _is_number(v) and -100 <= v <= 100)


def _interval(lo: float, hi: float) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) and lo <= x <= hi for x in v) and v[0] <= v[1]

    return ok


PERCENT_INTERVAL = _Check("a [low, high] pair of percentages from 0 to 100", _interval(0, 100))
POINTS_INTERVAL = _Check("a [low, high] pair of points from -100 to 100", _interval(-100, 100))
SCALAR = _Check("a string or a number", lambda v: isinstance(v, str) or _is_number(v))


@dataclasses.dataclass(frozen=True)
class _Field:
    check: Optional[_Check] = None  # None: any value of the right container kind
    required: bool = False
    nullable: bool = True
    kind: str = "value"  # "value" | "object" | "list"
    items: Optional[_Check] = None  # for a list of scalars
    spec: Optional[dict[str, "_Field"]] = None  # for an object, or a list of objects


def _req(check: _Check) -> _Field:
    return _Field(check, required=True, nullable=False)


def _opt(check: _Check) -> _Field:
    return _Field(check)


LATENCY_FIELDS = {
    "batch_size": _req(POSITIVE_INT),
    "iterations": _req(POSITIVE_INT),
    "p50_ms": _req(LATENCY_MS),
    "p90_ms": _req(LATENCY_MS),
    "p99_ms": _req(LATENCY_MS),
    "mean_ms": _req(LATENCY_MS),
    "throughput_ips": _req(POSITIVE_RATE),
    "p50_rounds": _Field(kind="list", items=LATENCY_MS),
    "compute_p50_ms": _opt(LATENCY_MS),
    "compute_mean_ms": _opt(LATENCY_MS),
}

PER_CLASS_FIELDS = {
    "class": _req(NON_NEGATIVE_INT),
    "name": _req(STRING),
    "images": _req(POSITIVE_INT),
    "correct": _opt(NON_NEGATIVE_INT),
    "top1": _req(PERCENT),
}

CONFUSION_FIELDS = {
    "true": _req(NON_NEGATIVE_INT),
    "true_name": _opt(STRING),
    "predicted": _req(NON_NEGATIVE_INT),
    "predicted_name": _opt(STRING),
    "count": _req(POSITIVE_INT),
}

CONFUSION_CELL = _Check(
    "a [true, predicted, count] triple of non-negative integers",
    lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(x) and x >= 0 for x in v),
)

ACCURACY_FIELDS = {
    "images": _req(NON_NEGATIVE_INT),
    "top1": _opt(PERCENT),
    "top5": _opt(PERCENT),
    "top1_drop": _opt(POINTS),
    "agreement": _opt(PERCENT),
    "mean_kl": _opt(NON_NEGATIVE_NUMBER),
    "max_abs_diff": _opt(NON_NEGATIVE_NUMBER),
    # newer fields (95% intervals and why top-1 does not apply): core.AccuracyStats reads them
    "files": _opt(NON_NEGATIVE_INT),
    "top1_ci": _opt(PERCENT_INTERVAL),
    "top5_ci": _opt(PERCENT_INTERVAL),
    "top1_drop_ci": _opt(POINTS_INTERVAL),
    "agreement_ci": _opt(PERCENT_INTERVAL),
    "ci_method": _opt(STRING),
    "note": _opt(STRING),
    "classes": _opt(STRING),
    # per class, against the primary label (newer still): absent in older documents
    "per_class": _Field(kind="list", spec=PER_CLASS_FIELDS),
    "top_confusions": _Field(kind="list", spec=CONFUSION_FIELDS),
    "confusion": _Field(kind="list", items=CONFUSION_CELL),
}

THROUGHPUT_FIELDS = {
    "batch_size": _req(POSITIVE_INT),
    "requests": _req(POSITIVE_INT),
    "streams": _req(NON_NEGATIVE_INT),
    "inferences": _req(NON_NEGATIVE_INT),
    "seconds": _req(SECONDS),
    "throughput_ips": _req(RATE),
}

POWER_FIELDS = {
    "source": _req(STRING),
    "rail": _req(STRING),
    "samples": _req(NON_NEGATIVE_INT),
    "seconds": _req(NON_NEGATIVE_NUMBER),
    "mean_power_w": _req(NON_NEGATIVE_NUMBER),
    "energy_j": _req(NON_NEGATIVE_NUMBER),
    "energy_per_inference_mj": _req(NON_NEGATIVE_NUMBER),
    "energy_method": _Field(STRING, nullable=False),
    "batch_size": _opt(POSITIVE_INT),
    "peak_ram_mb": _opt(MEGABYTES),
    "mean_gpu_load_pct": _opt(PERCENT),
    "gpu_memory_mb": _opt(MEGABYTES),
}

# a row that did not fail; a failed row (a non-null "error") may lack the timing fields
ROW_FIELDS = {
    "model": _req(NON_EMPTY_STRING),
    "backend": _req(NON_EMPTY_STRING),
    "variant": _req(NON_EMPTY_STRING),
    "artifact_key": _req(STRING),
    "precision": _req(STRING),
    "providers": _Field(kind="list", items=STRING),
    "threads": _opt(NON_NEGATIVE_INT),
    "latency": _Field(required=True, nullable=False, kind="list", spec=LATENCY_FIELDS),
    "peak_rss_mb": _Field(MEGABYTES, required=True),
    "size_mb": _opt(MEGABYTES),
    "accuracy": _Field(kind="object", spec=ACCURACY_FIELDS),
    "environment": _Field(kind="object"),
    "throughput": _Field(kind="list", spec=THROUGHPUT_FIELDS),
    "power": _Field(kind="list", spec=POWER_FIELDS),
    "gpu_memory_mb": _opt(MEGABYTES),
    "error": _opt(NON_EMPTY_STRING),
    "layers": _Field(kind="object"),  # layer_precision.summary: asked, ran, mismatches, substitutions
}
FAILED_ROW_OPTIONAL = ("artifact_key", "precision", "latency", "peak_rss_mb")

MACHINE_FIELDS = {k: _opt(SCALAR) for k in ("cpu", "logical_cores", "platform", "os", "machine", "python")}

# `edgekit profile`'s section (edgekit.profiling.ArtifactProfile.to_dict): what the report
# reads (results/profile_view.py and its plot); the per-node lists are not read, not checked
NUMBER = _Check("a number", _is_number)
STRINGS = _Field(required=True, nullable=False, kind="list", items=STRING)

PROFILE_PRICE_FIELDS = {
    "module": _req(NON_EMPTY_STRING),
    "ms": _req(DURATION_MS),
    "float_ms": _Field(DURATION_MS, required=True),  # null: not in the FP32 parent
    "precisions": STRINGS,
    "ops": STRINGS,
    "fused_with": STRINGS,
    "kl_if_only_int8": _Field(NUMBER, required=True),
    "saved_ms": _opt(NUMBER),
}

PROFILE_BACKEND_FIELDS = {
    "backend": _req(NON_EMPTY_STRING),
    "device": _req(STRING),
    "runtime": _req(STRING),
    "file": _req(STRING),
    "variant": _opt(STRING),
    "batch_size": _req(POSITIVE_INT),
    "iterations": _req(POSITIVE_INT),
    "e2e_p50_ms": _req(DURATION_MS),
    "sum_ms": _req(DURATION_MS),
    "note": _opt(STRING),
    "prices": _Field(required=True, nullable=False, kind="list", spec=PROFILE_PRICE_FIELDS),
    "float": _Field(kind="object"),  # the FP32 parent's profile on the same backend, or null
}

PROFILE_FIELDS = {
    "artifact": _req(STRING),
    "model": _req(STRING),
    "variant": _req(STRING),
    "backends": _Field(required=True, nullable=False, kind="list", spec=PROFILE_BACKEND_FIELDS),
    "kl_by_module": _Field(kind="object"),
    "kl_images": _opt(NON_NEGATIVE_INT),
    "kl_note": _opt(STRING),
    "unavailable": _Field(kind="object"),
}

DOCUMENT_FIELDS = {
    "created": _opt(STRING),
    "command": _opt(STRING),
    "machine": _Field(kind="object", spec=MACHINE_FIELDS),
    "reference": _opt(NON_EMPTY_STRING),
    "parity": _Field(kind="list"),
    "artifact": _Field(kind="object"),
    "images": _Field(kind="object"),
    "results": _Field(required=True, nullable=False, kind="list", spec=ROW_FIELDS),
    "profile": _Field(kind="object", spec=PROFILE_FIELDS),
}


class _Problems:
    """Every problem found, in document order; the error shows the first and counts the rest."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def bad(self, path: str, expect: str, value: Any) -> None:
        if value is _MISSING:
            self.items.append(f"{path} is missing (expected {expect})")
        else:
            self.items.append(f"{path} must be {expect}, got {_show(value)}")

    def missing_many(self, path: str, names: Sequence[str]) -> None:
        self.items.append(f"{path} is missing required fields {', '.join(names)}")

    def note(self, text: str) -> None:
        self.items.append(text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expect(field: _Field) -> str:
    if field.kind == "object":
        base = "an object"
    elif field.kind == "list":
        inner = field.items.expect if field.items else ("objects" if field.spec else None)
        base = "a list" + (f" of {_plural(inner)}" if inner else "")
    else:
        base = field.check.expect if field.check else "a value"
    return base + (" or null" if field.nullable else "")


def _plural(expect: str) -> str:
    """'a positive number' -> 'positive numbers', 'a string' -> 'strings'."""
    for article in ("an ", "a "):
        if expect.startswith(article):
            expect = expect[len(article):]
            break
    for noun in ("number", "string", "integer", "percentage", "object"):
        expect = re.sub(rf"\b{noun}\b", noun + "s", expect, count=1)
    return expect


def _check_object(obj: dict, spec: dict[str, _Field], path: str, problems: _Problems, optional: Sequence[str] = ()) -> None:
    missing = [k for k, f in spec.items() if f.required and k not in optional and k not in obj]
    if len(missing) > 1:
        problems.missing_many(path or "the document", missing)
    for key, field in spec.items():
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            if len(missing) == 1 and key in missing:
                problems.bad(_join(path, key), _expect(field).replace(" or null", ""), _MISSING)
            continue
        _check_value(value, field, _join(path, key), problems, required=field.required and key not in optional)


def _check_value(value: Any, field: _Field, path: str, problems: _Problems, required: bool = True) -> None:
    if value is None:
        # null is absent for a field this object may leave out (a failed row's latency)
        if not field.nullable and required:
            problems.bad(path, _expect(field), value)
        return
    if field.kind == "object":
        if not isinstance(value, dict):
            problems.bad(path, _expect(field), value)
        elif field.spec:
            _check_object(value, field.spec, path, problems)
        return
    if field.kind == "list":
        if not isinstance(value, (list, tuple)):  # a tuple: an in-memory document, before json makes it a list
            problems.bad(path, _expect(field), value)
            return
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if field.items is not None:
                wrong = field.items.problem(item)
                if wrong is not None:
                    problems.bad(item_path, wrong, item)
            elif field.spec is not None:
                if not isinstance(item, dict):
                    problems.bad(item_path, "an object", item)
                else:
                    _check_object(item, field.spec, item_path, problems)
        return
    if field.check is not None and not field.check.ok(value):
        problems.bad(path, _expect(field), value)
    elif field.check is not None and field.check.problem(value) is not None:
        problems.bad(path, field.check.problem(value), value)


def _check_row(row: Any, path: str, problems: _Problems) -> None:
    if not isinstance(row, dict):
        problems.bad(path, "an object (one backend's results)", row)
        return
    failed = isinstance(row.get("error"), str) and row["error"].strip() != ""
    _check_object(row, ROW_FIELDS, path, problems, optional=FAILED_ROW_OPTIONAL if failed else ())
    latency = row.get("latency")
    if isinstance(latency, (list, tuple)):
        seen: dict[int, int] = {}
        for i, stats in enumerate(latency):
            batch = stats.get("batch_size") if isinstance(stats, dict) else None
            if _is_int(batch):
                if batch in seen:
                    problems.note(f"{path}.latency[{i}].batch_size {batch} repeats {path}.latency[{seen[batch]}]: one entry per batch size")
                seen.setdefault(batch, i)


def _check_document(document: Any, problems: _Problems) -> None:
    if not isinstance(document, dict):
        raise _NotResults(f"the top level is {_show(document)}, expected a JSON object")
    fmt = document.get("format", _MISSING)
    if fmt is _MISSING:
        raise _NotResults(f'format is missing; expected "{RESULTS_FORMAT}"')
    if fmt != RESULTS_FORMAT:
        newer = isinstance(fmt, str) and fmt.startswith("edgekit-results/")
        hint = "; written by a newer edgekit?" if newer else ""
        raise _NotResults(f'format must be "{RESULTS_FORMAT}", got {_show(fmt)}{hint}')
    results = document.get("results", _MISSING)
    if not isinstance(results, (list, tuple)):
        problems.bad("results", "a list of result rows", results)
        return
    for key, field in DOCUMENT_FIELDS.items():
        if key != "results" and key in document:
            _check_value(document[key], field, key, problems, required=False)
    for i, row in enumerate(results):
        _check_row(row, f"results[{i}]", problems)


class _NotResults(Exception):
    pass


def validate_results_document(document: Any, source: Union[PathLike, str] = "results document") -> None:
    """Raise DataError (one line: source, JSON path, what was expected, what was found)
    unless ``document`` is a well-formed ``edgekit-results/1`` document."""
    problems = _Problems()
    try:
        _check_document(document, problems)
    except _NotResults as e:
        raise DataError(f"{source}: not an edgekit results file ({e})") from None
    if problems.items:
        more = len(problems.items) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise DataError(f"{source}: {problems.items[0]}{suffix}")


def _parse(data: bytes, source: str) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{source}: not a text file (byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8); "
            "expected an edgekit results JSON file"
        ) from None
    if not text.strip():
        raise DataError(f"{source}: the file is empty; expected an edgekit results JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{source}: not a results file (JSON nested too deeply to read)") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise DataError(f"{source}: not valid JSON ({str(e).splitlines()[0]})") from None


def load_results_document(path: PathLike, *, normalise: bool = True) -> dict[str, Any]:
    """Read, parse and validate one results file.

    Raises DataError (exit 1) with one line naming ``path`` as given and, for a bad field,
    its JSON path. With ``normalise`` (the default) the document comes back through
    :func:`normalise_results_document`, ready for ``BenchResult.from_dict``, the gate and
    the report; ``normalise=False`` returns it exactly as parsed.
    """
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read results file {source}: {e.strerror or e}") from None
    document = _parse(data, source)
    validate_results_document(document, source)
    return normalise_results_document(document) if normalise else document


def load_results_documents(paths: Sequence[PathLike], *, normalise: bool = True) -> list[dict[str, Any]]:
    """:func:`load_results_document` for each path, in order (a drop-in for cli._load_results)."""
    return [load_results_document(p, normalise=normalise) for p in paths]


# --------------------------------------------------------------------------- normalising


def _field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _known(entry: dict, cls) -> dict:
    names = _field_names(cls)
    return {k: v for k, v in entry.items() if k in names}


def _normalise_row(row: dict) -> dict:
    row = dict(row)
    failed = bool(row.get("error"))
    for key in ("providers", "throughput", "power", "environment"):
        if key in row and row[key] is None:
            del row[key]  # from_dict's default (empty) applies
    if failed:
        if row.get("latency") is None:
            row["latency"] = []
        if row.get("artifact_key") is None:
            row["artifact_key"] = ""
        if row.get("precision") is None:
            row["precision"] = "-"  # as BenchResult.failed writes it
        row.setdefault("peak_rss_mb", None)
    latency = []
    for stats in row.get("latency") or []:
        stats = _known(stats, LatencyStats)
        if stats.get("p50_rounds", ()) is None:
            del stats["p50_rounds"]
        latency.append(stats)
    row["latency"] = latency
    accuracy = row.get("accuracy")
    if isinstance(accuracy, dict):
        row["accuracy"] = {name: accuracy.get(name) for name in _field_names(AccuracyStats)}
    if "throughput" in row:
        row["throughput"] = [_known(x, ThroughputStats) for x in row["throughput"]]
    if "power" in row:
        row["power"] = [_known(x, PowerStats) for x in row["power"]]
    return row


def normalise_results_document(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a *validated* document that today's ``BenchResult.from_dict`` accepts.

    Keys unknown to LatencyStats, AccuracyStats, ThroughputStats and PowerStats are dropped
    from those entries (fields that core.py learns later are kept automatically); accuracy
    fields a document lacks become null; null ``providers``/``throughput``/``power``/
    ``environment``/``p50_rounds`` become absent (from_dict's empty default); a failed row
    (``error`` set) gets ``latency: []``, ``artifact_key: ""`` and ``precision: "-"`` where
    it had none; a null ``machine`` becomes ``{}``. Row-level and top-level keys, ``error``
    included, are kept as they are. The input is not modified.
    """
    out = dict(document)
    if out.get("machine") is None and "machine" in out:
        out["machine"] = {}
    out["results"] = [_normalise_row(row) for row in document.get("results") or []]
    return out


# =========================================================================== writing


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers and the loader refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps_results(document: dict[str, Any]) -> str:
    """The text every results file holds (non-finite numbers written as null)."""
    return json.dumps(_finite(document), indent=2) + "\n"


def write_json_atomic(document: dict[str, Any], path: PathLike) -> Path:
    """Write a JSON document atomically (see :func:`atomic_write_bytes`); return the path.

    Serialises before touching the disk, so a document json cannot encode raises TypeError
    and leaves no file behind.
    """
    return atomic_write_text(path, dumps_results(document))


# --------------------------------------------------------------------------- results that must not be lost


class SavedResults(NamedTuple):
    """Where results went, and why not where asked (None when they went where asked)."""

    path: Path
    error: Optional[str]


def _fallback_name() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"edgekit-results-{stamp}-{os.getpid()}.json"


def _default_fallback_dirs() -> list[Path]:
    dirs = []
    try:
        dirs.append(Path(tempfile.gettempdir()))
    except (OSError, FileNotFoundError):
        pass
    try:
        dirs.append(Path.cwd())
    except OSError:
        pass
    return dirs


def _free_name(folder: Path, name: str) -> Path:
    candidate = folder / name
    stem, suffix = candidate.stem, candidate.suffix
    n = 1
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def save_results_safely(
    document: dict[str, Any], path: PathLike, fallback_dirs: Optional[Sequence[PathLike]] = None
) -> SavedResults:
    """Write measured results to ``path``; if that fails, to a fallback file, never losing them.

    Returns ``SavedResults(path, None)`` when ``path`` was written, else
    ``SavedResults(fallback_path, reason)`` where ``reason`` is why ``path`` failed
    (e.g. "No space left on device"). Fallbacks are tried in order: ``fallback_dirs``,
    by default ``tempfile.gettempdir()`` and then the current folder, each as
    ``edgekit-results-<UTC time>-<pid>.json`` (never overwriting a file). Raises
    :class:`WriteError` naming ``path`` and its reason (and the fallbacks' reasons) when
    nothing could be written.
    """
    text = dumps_results(document)
    path = Path(path)
    try:
        return SavedResults(atomic_write_text(path, text), None)
    except WriteError as first:
        failure = first
    tried = []
    name = _fallback_name()
    folders = [Path(d) for d in (fallback_dirs if fallback_dirs is not None else _default_fallback_dirs())]
    for folder in folders:
        try:
            target = _free_name(folder, name)
            if target.resolve() == path.resolve():
                continue
            return SavedResults(atomic_write_text(target, text), failure.reason)
        except WriteError as e:
            tried.append(f"{folder}: {e.reason}")
        except OSError as e:  # resolve() on an unreadable folder
            tried.append(f"{folder}: {write_error_reason(e)}")
    detail = f"; no fallback location could take them either ({'; '.join(tried)})" if tried else "; no fallback location to try"
    raise WriteError(path, failure.reason, failure.errno, f"cannot write results to {path} ({failure.reason}){detail}")


def save_results_or_raise(document: dict[str, Any], path: PathLike, fallback_dirs: Optional[Sequence[PathLike]] = None) -> Path:
    """:func:`save_results_safely` for a CLI command: return ``path`` when written there;
    when the results had to go elsewhere, raise WriteError (exit 1) with the line
    ``cannot write results to X (REASON); they were saved to Y``."""
    saved, reason = save_results_safely(document, path, fallback_dirs)
    if reason is not None:
        raise WriteError(path, reason, None, f"cannot write results to {path} ({reason}); they were saved to {saved}")
    return saved


# --------------------------------------------------------------------------- building one


def results_document(
    results: Sequence[BenchResult],
    *,
    artifact: Optional[dict[str, Any]] = None,
    images: Optional[dict[str, Any]] = None,
    command: Optional[str] = None,
    parity: Optional[list[dict[str, Any]]] = None,
    extra: Optional[dict[str, Any]] = None,
    machine: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    machine = machine or (results[0].environment if results else {})
    return {
        "format": RESULTS_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {k: v for k, v in machine.items() if k not in ("runtime", "device")},  # per row, not per machine
        "artifact": artifact,
        "images": images,
        "results": [r.to_dict() for r in results],
        "parity": parity or [],
        **(extra or {}),
    }


def write_json(document: dict[str, Any], path: Path) -> Path:
    """Atomically, through a temporary file of its own: concurrent writers never clash and
    a failed write leaves nothing behind (one-line EdgekitError naming the path)."""
    return write_json_atomic(document, Path(path))


def write_results(document: dict[str, Any], path: Path) -> Path:
    """Measured results must not be lost: when ``path`` cannot be written (full or
    read-only disk), they go to a fallback file and the error says where."""
    written, reason = save_results_safely(document, Path(path))
    if reason is not None:
        raise EdgekitError(f"cannot write results to {path} ({reason}); they were saved to {written}")
    return written


def describe_images(images: dict[str, Any]) -> str:
    """'bundled photos (7) x 11 even views: 77 images evaluated (1 file skipped, unreadable)'."""
    evaluated = images.get("images_evaluated", images.get("count"))
    text = f"{images.get('description')}: {evaluated} images evaluated"
    skipped = images.get("images_skipped") or 0
    if skipped:
        files = images.get("files_skipped", len(images.get("skipped_files") or ()))
        text += f" ({skipped} skipped: {files} unreadable file{'s' if files != 1 else ''})"
    flattening = images.get("flattening") or {}
    if flattening.get("counts"):
        rule = str(flattening.get("rule", "")).split(":")[0]
        text += f"; flattened to RGB ({rule}): " + ", ".join(f"{n} {kind}" for kind, n in flattening["counts"].items())
    return text


# --------------------------------------------------------------------------- the documents each command writes


def artifact_section(artifact: Any) -> dict[str, Any]:
    """The document's ``artifact``: the artifact benched (an edgekit.core.Artifact)."""
    return {"path": str(artifact.path), "key": artifact.key, "model": artifact.model_name, "parity": artifact.manifest.get("parity")}


def _parity_rows(parity: Sequence[Any]) -> list[dict[str, Any]]:
    return [p if isinstance(p, dict) else dataclasses.asdict(p) for p in parity]


def bench_document(
    rows: Sequence[BenchResult], *, artifact: Any, images: dict[str, Any], parity: Sequence[Any] = (), command: Optional[str] = None,
    extra: Optional[dict[str, Any]] = None, machine: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """What `edgekit bench` (and edgekit.BenchReport.write) writes: one cell's rows, its artifact and images."""
    return results_document(rows, parity=_parity_rows(parity), artifact=artifact_section(artifact), images=images, command=command,
                            extra=extra, machine=machine)


def session_document(run: Any) -> dict[str, Any]:
    """One bench session (a session.BenchRun: rows, image summary, parity) as a run's ledger
    records a cell or a unit, here or on a node."""
    return results_document(list(run.results), images=run.image_summary, parity=_parity_rows(run.parity))


def profile_document(section: dict[str, Any], *, command: Optional[str], machine: dict[str, Any]) -> dict[str, Any]:
    """What `edgekit profile` writes: no rows, the ``profile`` section (profiling.ArtifactProfile.to_dict())."""
    return results_document([], command=command, machine=machine, extra={"profile": section})
