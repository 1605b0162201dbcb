"""Recipes: a TOML file naming models x variants x backends x batch sizes, data and budgets.

Every key of a recipe is an option declared once in edgekit.options (the same name,
type, range and default as the command-line flag); this module only reads the file,
checks it against those declarations and says where a mistake is (file, line, key).

    models = ["efficientnet_lite0", "mobilenet_v2"]
    variants = ["fp32", "int8"]          # fp32, int8, fp16, pruned, dw-separable, pruned+int8...
    backends = ["onnxruntime", "openvino"]
    batch = [1]
    reference = "mobilenet_v2"           # latency normaliser for `edgekit check`
    output = "results/run.json"

    [export]                             # every model
    opset = 17
    [model.mobilenet_v2]                 # one model (overrides [export])
    random_init = true
    [int8]
    calib_method = "percentile"
    max_kl = 0.002
    [distill]                            # after pruning or depthwise-separable conversion
    steps = 200
    [bench]
    iterations = 100
    repeats = 3

Paths to data (weights, calib, calib_labels, data, labels, distill data) are relative to
the recipe file; the artifact root ([export] artifacts) to the current folder, as on the
command line, so every recipe reuses the same artifacts.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .core import UsageError
from .session import BenchSettings
from .options import BY_KEY, PER_MODEL_SECTIONS, Settings, applicability_problem, check_recipe_value, per_model_options, recipe_options, settings_from_recipe
from .remote import RECIPE_SSH_OPTIONS, RemoteHost, recipe_safe_ssh_option, remote_dir_problem, remote_python_problem

# top-level keys that are not options: what a recipe runs, and how its results are named
RECIPE_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "models": ("a non-empty list of model names", lambda v: isinstance(v, list) and bool(v) and all(isinstance(m, str) and m for m in v)),
    "variants": ("a non-empty list of variants (fp32, int8, fp16, pruned, dw-separable, pruned+int8...)", lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)),
    "reference": ("a string", lambda v: isinstance(v, str) and v != ""),
    "output": ("a string", lambda v: isinstance(v, str) and v != ""),
    "name": ("a string", lambda v: isinstance(v, str) and v != ""),
}
PER_MODEL = "model"  # [model.<name>] tables override export settings and device kinds
RELATIVE_TO_RECIPE = frozenset(o.key for o in BY_KEY.values() if o.kind == "path" and o.key != "artifacts")


class RecipeError(UsageError):
    """A recipe that cannot be run; the message names file, line and key."""


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

@dataclass(frozen=True)
class Recipe:
    path: Path
    models: tuple[str, ...]
    variants: tuple[str, ...]
    tables: dict[str, dict[str, Any]]  # '' (top level) and each section, as written
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: Optional[str] = None
    output: Optional[Path] = None
    name: Optional[str] = None

    @property
    def backends(self) -> tuple[str, ...]:
        return self.settings_for(self.models[0]).bind(BenchSettings).backends

    @property
    def batch(self) -> tuple[int, ...]:
        return self.settings_for(self.models[0]).bind(BenchSettings).batch_sizes

    def settings_for(self, model: str) -> Settings:
        """Every option for one model: the recipe's tables, [model.<name>] on top, paths
        resolved against the recipe's folder."""
        settings = settings_from_recipe(self.tables, self.per_model.get(model, {}))
        resolved = {key: self.path.parent / settings[key] for key in RELATIVE_TO_RECIPE if settings[key] is not None}
        return settings.replace(**resolved) if resolved else settings


def load_recipe(path: Path) -> Recipe:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        with open(path, "rb") as f:  # never more than MAX_RECIPE_BYTES, whatever the file (or a FIFO, /dev/zero) holds
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe names what to build and measure, not data")
        text = raw.decode("utf-8")  # TOML is UTF-8, whatever the locale
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not a TOML text file (invalid UTF-8 at byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise RecipeError(f"{path}: not valid TOML for edgekit: arrays or tables nested too deeply (a recipe needs two levels)") from None
    locate = _Locator(path, text)
    sections = recipe_options()
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    _validate(top, "", locate)
    for section, values in tables.items():
        if section == "model":  # [model.<name>] tables
            continue
        if section not in sections or section == "":
            raise RecipeError(locate.at(section, "", f"unknown table [{section}]" + _did_you_mean(section, [s for s in sections if s] + ["model"])))
        _validate(values, section, locate)
    for missing in ("models", "variants", "backends"):
        if missing not in top:
            raise RecipeError(f"{path}: missing key '{missing}' (top level)")
    per_model: dict[str, dict[str, Any]] = {}
    for name, values in tables.get("model", {}).items():
        if name not in top["models"]:
            raise RecipeError(locate.at(name, "model", f"[model.{name}] names a model that is not in 'models'"))
        if not isinstance(values, dict):
            raise RecipeError(locate.at(name, "model", f"[model.{name}] must be a table"))
        _validate(values, PER_MODEL, locate, shown=f"model.{name}")
        per_model[name] = values
    from .steps import parse_variant

    for variant in top["variants"]:
        try:
            parse_variant(variant)
        except UsageError as e:
            raise RecipeError(locate.at("variants", "", str(e))) from None
    if any("pruned" in v.split("+") for v in top["variants"]) and "ratio" not in tables.get("prune", {}):
        raise RecipeError(locate.at("variants", "", "a 'pruned' variant needs [prune] ratio"))
    if top.get("reference") and top["reference"] not in top["models"]:
        raise RecipeError(locate.at("reference", "", f"reference {top['reference']!r} must be one of the recipe's models"))
    recipe = Recipe(
        path=path,
        models=tuple(top["models"]),
        variants=tuple(top["variants"]),
        tables={"": top, **{k: v for k, v in tables.items() if k != "model"}},
        per_model=per_model,
        reference=top.get("reference"),
        output=_output_path(path, top["output"], locate) if top.get("output") else None,
        name=top.get("name", path.stem),
    )
    for model in recipe.models:  # a key no variant or backend reads is a mistake (edgekit.options.check_applicable)
        settings = recipe.settings_for(model)
        problem = applicability_problem(settings, settings.bind(BenchSettings).backends, recipe.variants, recipe=True)
        if problem is not None:
            option, message = problem
            section, key = option.recipe_path or ("", option.key)
            overridden = key in per_model.get(model, {}) and section in PER_MODEL_SECTIONS
            raise RecipeError(locate.at(key, f"model.{model}" if overridden else section, message))
    _check_inputs_exist(recipe, locate)
    _check_models(recipe, locate)
    return recipe


# --------------------------------------------------------------------------- what a recipe names must be there

MAX_RECIPE_BYTES = 1024 * 1024
# Paths a recipe names that must exist before the first cell runs ([ray] shared is made by the nodes).
MUST_EXIST = tuple(sorted(RELATIVE_TO_RECIPE - {"shared"}))


def _check_inputs_exist(recipe: Recipe, locate: "_Locator") -> None:
    """Weights, classes, preprocessing, calibration, evaluation, label and distillation
    paths are there: a misspelt path fails now, not after other cells were measured."""
    for model in recipe.models:
        settings = recipe.settings_for(model)
        for key in MUST_EXIST:
            if settings[key] is None or Path(settings[key]).exists():
                continue
            option = BY_KEY[key]
            section, name = option.recipe_path or ("", key)
            overridden = name in recipe.per_model.get(model, {})
            raise RecipeError(locate.at(name, f"model.{model}" if overridden else section, f"'{name}' names {settings[key]}, which does not exist (paths are relative to the recipe's folder)"))


def _check_models(recipe: Recipe, locate: "_Locator") -> None:
    """Every model is a registered name, a timm/ name timm knows, or a file or folder
    (an ONNX file, an artifact): a misspelt name fails before any cell runs."""
    for model in recipe.models:
        if Path(model).exists():
            continue
        from .core import UnknownModelError
        from .models import get_entry, model_registry

        try:
            if model.startswith("timm/"):
                get_entry(model)
            else:
                model_registry().get(model)
        except UnknownModelError as e:
            raise RecipeError(locate.at("models", "", f"{e} (and no file or folder {model!r} exists)")) from None
        except ImportError as e:  # timm/ names need timm
            raise RecipeError(locate.at("models", "", f"model {model!r}: {e}")) from None


def _output_path(recipe_path: Path, output: str, locate: "_Locator") -> Path:
    """Where a recipe may write its results: a relative path inside the recipe's folder
    (no '..', no absolute path, not through a symlink leading out), and not over a file
    that is not an edgekit results file. A recipe from someone else must not be able to
    overwrite ~/.bashrc; the --json flag, typed by the user, may name any path."""
    problem = output_problem(recipe_path, output)
    if problem:
        raise RecipeError(locate.at("output", "", f"'output' cannot be {output!r}: {problem}"))
    return recipe_path.parent / output


def output_problem(recipe_path: Path, output: str) -> Optional[str]:
    """Why ``output`` cannot be a recipe's results path, or None."""
    import os
    import stat

    from pathlib import PurePosixPath, PureWindowsPath

    if any(ord(c) < 32 or ord(c) == 127 for c in output):
        return "it holds a control character"
    if PurePosixPath(output).is_absolute() or PureWindowsPath(output).is_absolute() or PureWindowsPath(output).drive or output.startswith("~"):
        return "a recipe writes only inside its own folder (a relative path, e.g. results/run.json); pass --json PATH to write elsewhere"
    if ".." in PurePosixPath(output.replace("\\", "/")).parts:
        return "'..' leaves the recipe's folder; pass --json PATH to write elsewhere"
    target = recipe_path.parent / output
    folder = recipe_path.parent.resolve()
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return "it cannot be resolved (a symlink loop)"
    if resolved == folder or folder not in resolved.parents:
        return f"it leads out of the recipe's folder (to {resolved}, through a symlink); pass --json PATH to write elsewhere"
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"it cannot be checked ({e.strerror or e})"
    if stat.S_ISLNK(mode):
        return "it is a symlink; a recipe's results file is a plain file"
    if not stat.S_ISREG(mode):
        return "it exists and is not a plain file"
    if not is_results_file(target):
        return "it exists and is not an edgekit results file (edgekit replaces only its own results)"
    return None


def is_results_file(path: Path) -> bool:
    """Whether ``path`` holds an edgekit results document (its first key says so)."""
    import re

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return re.match(rb'\s*\{\s*"format"\s*:\s*"edgekit-results/', head) is not None


_MOVED = {("prune", "distill_steps"): "[distill] steps", ("prune", "distill_data"): "[distill] data", ("export", "out"): "[export] artifacts"}


def _validate(values: dict[str, Any], section: str, locate: "_Locator", shown: Optional[str] = None) -> None:
    known = per_model_options() if section == PER_MODEL else recipe_options().get(section, {})
    where = f"[{shown or section}]" if section else "the top level"
    for key, value in values.items():
        if (section, key) in _MOVED:
            raise RecipeError(locate.at(key, shown or section, f"'{key}' in [{section}] is now {_MOVED[(section, key)]}"))
        if section == "" and key in RECIPE_KEYS:
            expected, check = RECIPE_KEYS[key]
            if not check(value):
                raise RecipeError(locate.at(key, section, f"'{key}' must be {expected}, got {value!r}"))
            continue
        if key not in known:
            options = list(known) + (list(RECIPE_KEYS) if section == "" else [])
            raise RecipeError(locate.at(key, shown or section, f"unknown key '{key}' in {where}" + _did_you_mean(key, options)))
        message = check_recipe_value(section, key, value)
        if message is None:
            problem = PROBLEMS.get((section, key))
            message = problem(value) if problem else None
        if message:
            raise RecipeError(locate.at(key, shown or section, message))


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
