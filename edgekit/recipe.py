"""Recipes: a TOML file naming models x variants x backends x batch sizes, data and budgets.

Every `edgekit export`/`bench` flag has a key here (RECIPE_KEY_FOR_FLAG, checked by a
test against the CLI), so a recipe can say anything a command line can. Errors point at
the file, line and key.

    models = ["efficientnet_lite0", "mobilenet_v2"]
    variants = ["fp32", "int8"]
    backends = ["onnxruntime", "openvino"]
    batch = [1]
    reference = "mobilenet_v2"     # latency normaliser for `edgekit check`
    output = "results/run.json"

    [export]                       # every model
    opset = 17
    [model.mobilenet_v2]           # one model (overrides [export])
    random_init = true
    [int8]
    calib_method = "percentile"
    max_kl = 0.004
    [bench]
    iterations = 100
    repeats = 3
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .core import UsageError
from .remote import RECIPE_SSH_OPTIONS, RemoteHost, recipe_safe_ssh_option, remote_dir_problem, remote_python_problem

VARIANTS = ("fp32", "fp16", "int8", "pruned", "pruned+int8", "pruned+fp16", "dw-separable", "dw-separable+int8", "dw-separable+fp16")


class RecipeError(UsageError):
    """A recipe that cannot be run; the message names file, line and key."""


# --------------------------------------------------------------------------- schema

Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML true is a bool, and bool an int


def _is_number(v: Any) -> bool:
    """An int or a finite float (TOML has nan and inf literals), never a bool."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and math.isfinite(v))


def _int(minimum: int, maximum: Optional[int] = None) -> tuple[str, Check]:
    """Counts have only a lower bound, as their CLI flags (click.IntRange(minimum))."""
    if maximum is None:
        return f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum
    return f"an integer in [{minimum}, {maximum}]", lambda v: _is_int(v) and minimum <= v <= maximum


def _text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)  # 100, 0.1, 1000000


def _number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[str, Check]:
    def check(v: Any) -> bool:
        return _is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return f"a number in {'(' if lo_open else '['}{_text(lo)}, {_text(hi)}{')' if hi_open else ']'}", check


def _at_least(lo: float) -> tuple[str, Check]:
    return f"a finite number >= {_text(lo)}", lambda v: _is_number(v) and v >= lo


def _choice(*options: str) -> tuple[str, Check]:
    return "one of " + ", ".join(options), lambda v: isinstance(v, str) and v in options


def _strings(v: Any, non_empty: bool = True) -> bool:
    return isinstance(v, list) and (bool(v) or not non_empty) and all(isinstance(x, str) and x != "" for x in v)


_BOOL = ("true or false", lambda v: isinstance(v, bool))
_STR = ("a string", lambda v: isinstance(v, str) and v != "")

MODEL_KEYS = {
    "weights": _STR,
    "random_init": _BOOL,
    "input_size": _int(16, 2048),  # as --input-size
    "opset": _int(11, 23),  # as --opset
    "static": _BOOL,
    "no_slim": _BOOL,
    "out": _STR,
}
SCHEMA: dict[str, dict[str, tuple[str, Check]]] = {
    "": {
        "models": ("a non-empty list of model names", _strings),
        "variants": ("a list drawn from " + ", ".join(VARIANTS), lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x in VARIANTS for x in v)),
        "backends": ("a non-empty list of backend names", _strings),
        "batch": ("a list of integers >= 1", lambda v: isinstance(v, list) and v and all(_is_int(b) and b >= 1 for b in v)),
        "reference": _STR,
        "output": _STR,
        "name": _STR,
    },
    "export": MODEL_KEYS,
    "int8": {
        "calib": _STR,
        "calib_labels": _STR,
        "calib_limit": _int(8),
        "calib_method": _choice("minmax", "percentile", "entropy"),
        "percentile": _number(50.0, 100.0, lo_open=True),  # as QuantizeOptions; 100 is the maximum
        "seed": _int(0),
        "max_drop": _number(0.0, 100.0),
        "min_agreement": _number(0.0, 100.0),
        "max_kl": _at_least(0.0),
        "max_fallback": _int(0),
        "bias_correction": _BOOL,
        "strict": _BOOL,
    },
    "prune": {
        "ratio": ("a fraction in (0, 1)", lambda v: _is_number(v) and 0 < v < 1),
        "criterion": _choice("l1", "l2", "taylor"),
        "scope": _choice("uniform", "global"),
        "round_to": _int(1),
        "target": _choice("flops", "params", "latency"),
        "sparsity": _STR,
        "distill_steps": _int(0),
        "distill_data": _STR,
    },
    "dw_separable": {
        "rank": _int(1),
        "budget": _at_least(0.0),
        "layers": ("a list of layer names", lambda v: _strings(v, non_empty=False)),
    },
    "bench": {
        "iterations": _int(1),
        "warmup": _int(0),
        "max_seconds": _number(0.1, 1e6),
        "repeats": _int(1),
        "threads": _int(1),
        "device": _STR,
        "data": _STR,
        "labels": _STR,
        "views": _int(1),
        "limit": _int(1),
        "precision": _choice("f32", "bf16", "f16"),
        "ov_fp16_weights": _BOOL,
        "throughput": _number(0.5, 1e6),
        "trt_workspace": _STR,
        "cuda_graph": _BOOL,
        "power": _choice("auto", "tegrastats", "nvml", "rapl", "off"),
        "remote": ("user@host or user@host:port", _STR[1]),
        "remote_python": _STR,
        "remote_dir": _STR,
        "ssh_options": ("a list of ssh -o options (Name=value)", lambda v: _strings(v, non_empty=False)),
    },
}


def _remote_problem(value: str) -> Optional[str]:
    try:
        RemoteHost.parse(value)
    except UsageError:
        return f"'remote' must be user@host or user@host:port (names of letters, digits, '.', '_' and '-', not beginning with '-'), got {value!r}"
    return None


def _ssh_options_problem(options: list[str]) -> Optional[str]:
    for option in options:
        reason = recipe_safe_ssh_option(option)
        if reason:
            return (
                f"[bench] ssh_options: {option!r} is refused: {reason}. A recipe cannot run commands on this machine; "
                'pass such an option on the command line yourself (--ssh-option NAME=VALUE for edgekit bench, '
                'or EDGEKIT_SSH_OPTS="-o NAME=VALUE" for edgekit run and bench). A recipe may set only ' + ", ".join(RECIPE_SSH_OPTIONS)
            )
    return None


def _remote_value_problem(key: str, check: Callable[[str], Optional[str]]) -> Callable[[str], Optional[str]]:
    def problem(value: str) -> Optional[str]:
        reason = check(value)
        return f"'{key}' cannot be {value!r}: {reason}" if reason else None

    return problem


# Checks beyond the type and range, by (section, key): a message, or None when fine.
PROBLEMS: dict[tuple[str, str], Callable[[Any], Optional[str]]] = {
    ("bench", "remote"): _remote_problem,
    ("bench", "ssh_options"): _ssh_options_problem,
    ("bench", "remote_python"): _remote_value_problem("remote_python", remote_python_problem),
    ("bench", "remote_dir"): _remote_value_problem("remote_dir", remote_dir_problem),
}

# CLI flag -> recipe key ("section.key"; every [export] key can also sit in [model.<name>])
RECIPE_KEY_FOR_FLAG = {
    "--weights": "model.<name>.weights",
    "--random-init": "export.random_init",
    "--input-size": "export.input_size",
    "--opset": "export.opset",
    "--static": "export.static",
    "--no-slim": "export.no_slim",
    "--out": "export.out",
    "--int8": "variants",
    "--fp16": "variants",
    "--calib": "int8.calib",
    "--calib-labels": "int8.calib_labels",
    "--calib-limit": "int8.calib_limit",
    "--calib-method": "int8.calib_method",
    "--percentile": "int8.percentile",
    "--seed": "int8.seed",
    "--max-drop": "int8.max_drop",
    "--min-agreement": "int8.min_agreement",
    "--max-kl": "int8.max_kl",
    "--max-fallback": "int8.max_fallback",
    "--no-bias-correction": "int8.bias_correction",
    "--strict": "int8.strict",
    "--prune": "prune.ratio",
    "--prune-criterion": "prune.criterion",
    "--prune-scope": "prune.scope",
    "--prune-round-to": "prune.round_to",
    "--prune-target": "prune.target",
    "--sparsity": "prune.sparsity",
    "--dw-separable": "variants",
    "--dw-rank": "dw_separable.rank",
    "--dw-budget": "dw_separable.budget",
    "--dw-layers": "dw_separable.layers",
    "--distill-steps": "prune.distill_steps",
    "--distill-data": "prune.distill_data",
    "--backend": "backends",
    "--batch": "batch",
    "--iterations": "bench.iterations",
    "--warmup": "bench.warmup",
    "--max-seconds": "bench.max_seconds",
    "--threads": "bench.threads",
    "--device": "bench.device",
    "--precision": "bench.precision",
    "--ov-fp16-weights": "bench.ov_fp16_weights",
    "--throughput": "bench.throughput",
    "--trt-workspace": "bench.trt_workspace",
    "--cuda-graph": "bench.cuda_graph",
    "--power": "bench.power",
    "--remote": "bench.remote",
    "--remote-python": "bench.remote_python",
    "--remote-dir": "bench.remote_dir",
    "--ssh-option": "bench.ssh_options",
    "--data": "bench.data",
    "--labels": "bench.labels",
    "--views": "bench.views",
    "--limit": "bench.limit",
    "--json": "output",
}


# --------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Recipe:
    path: Path
    models: tuple[str, ...]
    variants: tuple[str, ...]
    backends: tuple[str, ...]
    batch: tuple[int, ...] = (1,)
    reference: Optional[str] = None
    output: Optional[Path] = None
    name: Optional[str] = None
    export: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)
    prune: dict[str, Any] = field(default_factory=dict)
    dw_separable: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)

    def model_settings(self, model: str) -> dict[str, Any]:
        """[export] with the model's own [model.<name>] table on top."""
        return {**self.export, **self.per_model.get(model, {})}

    def resolve(self, value: Optional[str]) -> Optional[Path]:
        """Paths in a recipe are relative to the recipe file."""
        return None if value is None else (self.path.parent / value)


def load_recipe(path: Path) -> Recipe:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")  # TOML is UTF-8, whatever the locale
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not a TOML text file (invalid UTF-8 at byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    locate = _Locator(path, text)
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    _validate(top, SCHEMA[""], "", locate)
    for section, values in tables.items():
        if section == "model":  # [model.<name>] tables
            continue
        if section not in SCHEMA:
            raise RecipeError(locate.at(section, "", f"unknown table [{section}]" + _did_you_mean(section, SCHEMA)))
        _validate(values, SCHEMA[section], section, locate)
    for missing in ("models", "variants", "backends"):
        if missing not in top:
            raise RecipeError(f"{path}: missing key '{missing}' (top level)")
    per_model: dict[str, dict[str, Any]] = {}
    for name, values in tables.get("model", {}).items():
        if name not in top["models"]:
            raise RecipeError(locate.at(name, "model", f"[model.{name}] names a model that is not in 'models'"))
        if not isinstance(values, dict):
            raise RecipeError(locate.at(name, "model", f"[model.{name}] must be a table"))
        _validate(values, MODEL_KEYS, f"model.{name}", locate)
        per_model[name] = values
    if any(v.startswith("pruned") for v in top["variants"]) and "ratio" not in tables.get("prune", {}):
        raise RecipeError(locate.at("variants", "", "a 'pruned' variant needs [prune] ratio"))
    if top.get("reference") and top["reference"] not in top["models"]:
        raise RecipeError(locate.at("reference", "", f"reference {top['reference']!r} must be one of the recipe's models"))
    return Recipe(
        path=path,
        models=tuple(top["models"]),
        variants=tuple(top["variants"]),
        backends=tuple(top["backends"]),
        batch=tuple(top.get("batch", [1])),
        reference=top.get("reference"),
        output=(path.parent / top["output"]) if top.get("output") else None,
        name=top.get("name", path.stem),
        export=tables.get("export", {}),
        per_model=per_model,
        int8=tables.get("int8", {}),
        prune=tables.get("prune", {}),
        dw_separable=tables.get("dw_separable", {}),
        bench=tables.get("bench", {}),
    )


def _validate(values: dict[str, Any], schema: dict[str, tuple[str, Check]], section: str, locate: "_Locator") -> None:
    for key, value in values.items():
        if key not in schema:
            where = f"[{section}]" if section else "the top level"
            raise RecipeError(locate.at(key, section, f"unknown key '{key}' in {where}" + _did_you_mean(key, schema)))
        expected, check = schema[key]
        if not check(value):
            raise RecipeError(locate.at(key, section, f"'{key}' must be {expected}, got {value!r}"))
        problem = PROBLEMS.get((section, key))
        message = problem(value) if problem else None
        if message:
            raise RecipeError(locate.at(key, section, message))


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, [o for o in options if o], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Locator:
    """Finds the line of a key inside its table, for error messages."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str, section: str) -> Optional[int]:
        name = rf"""(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')"""  # bare or quoted
        table = rf"""(?:{re.escape(section)}|"{re.escape(section)}"|'{re.escape(section)}')"""
        current, inline = "", None
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            header = re.match(r"^\[([^\]]+)\]", stripped)
            if header:
                current = header.group(1).strip()
                if current == key or current == f"{section}.{key}".strip("."):
                    return number
                continue
            if current == section and re.match(rf"^{name}\s*=", stripped):
                return number
            if section and current == "":
                if re.match(rf"^{table}\s*\.\s*{name}\s*=", stripped):  # bench.ssh_options = [...]
                    return number
                if inline is None and re.match(rf"^{table}\s*=", stripped):  # bench = { ... }
                    inline = number
        return inline

    def at(self, key: str, section: str, message: str) -> str:
        line = self.line_of(key, section)
        return f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}"
