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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .core import UsageError

VARIANTS = ("fp32", "fp16", "int8", "pruned", "pruned+int8", "pruned+fp16", "dw-separable", "dw-separable+int8", "dw-separable+fp16")


class RecipeError(UsageError):
    """A recipe that cannot be run; the message names file, line and key."""


# --------------------------------------------------------------------------- schema

Check = Callable[[Any], bool]


def _int(minimum: int) -> tuple[str, Check]:
    return f"an integer >= {minimum}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(lo: float, hi: float) -> tuple[str, Check]:
    return f"a number in [{lo}, {hi}]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _choice(*options: str) -> tuple[str, Check]:
    return "one of " + ", ".join(options), lambda v: v in options


_BOOL = ("true or false", lambda v: isinstance(v, bool))
_STR = ("a string", lambda v: isinstance(v, str) and v != "")

MODEL_KEYS = {
    "weights": _STR,
    "random_init": _BOOL,
    "input_size": _int(16),
    "opset": _int(11),
    "static": _BOOL,
    "no_slim": _BOOL,
    "out": _STR,
}
SCHEMA: dict[str, dict[str, tuple[str, Check]]] = {
    "": {
        "models": ("a non-empty list of model names", lambda v: isinstance(v, list) and v and all(isinstance(m, str) for m in v)),
        "variants": ("a list drawn from " + ", ".join(VARIANTS), lambda v: isinstance(v, list) and v and all(x in VARIANTS for x in v)),
        "backends": ("a non-empty list of backend names", lambda v: isinstance(v, list) and v and all(isinstance(b, str) for b in v)),
        "batch": ("a list of integers >= 1", lambda v: isinstance(v, list) and v and all(isinstance(b, int) and b >= 1 for b in v)),
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
        "percentile": _number(50.0, 100.0),
        "seed": _int(0),
        "max_drop": _number(0.0, 100.0),
        "min_agreement": _number(0.0, 100.0),
        "max_kl": _number(0.0, 1e9),
        "max_fallback": _int(0),
        "bias_correction": _BOOL,
        "strict": _BOOL,
    },
    "prune": {
        "ratio": ("a fraction in (0, 1)", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1),
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
        "budget": _number(0.0, 1e9),
        "layers": ("a list of layer names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
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
        "remote": ("user@host or user@host:port", lambda v: isinstance(v, str) and v != ""),
        "remote_python": _STR,
        "remote_dir": _STR,
        "ssh_options": ("a list of ssh -o options", lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v)),
    },
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
        text = path.read_text()
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror or e}") from None
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


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, [o for o in options if o], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Locator:
    """Finds the line of a key inside its table, for error messages."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str, section: str) -> Optional[int]:
        current = ""
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            header = re.match(r"^\[([^\]]+)\]", stripped)
            if header:
                current = header.group(1).strip()
                if current == key or current == f"{section}.{key}".strip("."):
                    return number
                continue
            if current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
                return number
        return None

    def at(self, key: str, section: str, message: str) -> str:
        line = self.line_of(key, section)
        return f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}"
