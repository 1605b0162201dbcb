"""One option's declaration: its flag, type, default, range, help, group, recipe key and
where it is used, how it checks a value, and how it appears as a click option, a device-runner
argument and runner argv. The catalogue of every option (edgekit.options) and each backend's
own options (declared in its module) are made of these.

No click, torch or numpy at import time: the on-device runner imports this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

T = TypeVar("T")

# Help sections, in the order `--help` prints them: what people reach for first (what to
# time, where, on which images, which variant), then the model, then each step's options.
GROUPS = {
    "bench": "Benchmark",
    "backend": "Backend settings",
    "data": "Images",
    "variants": "Variants (recipes: 'variants')",
    "model": "Model and export",
    "general": "General",
    "finetune": "Fine-tuning (--finetune; transfer learning to your classes)",
    "int8": "INT8 quantization (--int8)",
    "prune": "Structured pruning (--prune)",
    "dw_separable": "Depthwise-separable conversion (--dw-separable)",
    "distill": "Distillation (after --prune or --dw-separable)",
    "remote": "Remote device (ssh)",
    "cluster": "Ray cluster (edgekit run --ray)",
}
# Runner arguments whose default is "what the bundle was made with" rather than a value.
DEVICE_DEFAULTS_FROM_BUNDLE = frozenset({"backends", "batch", "device"})  # the runner's default: the bundle's


@dataclass(frozen=True)
class Option:
    key: str  # the value's name everywhere: Settings key, click parameter, recipe key in its section
    flag: Optional[str]  # command-line flag; None for recipe-only keys
    kind: str  # flag | switch | int | float | choice | text | path | list
    group: str
    help: str = ""
    default: Any = None
    recipe: Optional[str] = None  # "section" (key = self.key), "section.key", "" (top level); None: not in recipes
    commands: tuple[str, ...] = ()
    on_device: bool = False  # also an argument of the on-device runner
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] = ()
    item: str = "text"  # for kind "list": int or text
    short: Optional[str] = None
    applies_to: tuple[str, ...] = ()  # the backends that read it (empty: all)
    required_in: tuple[str, ...] = ()  # commands where it has no default and must be given
    step: Optional[str] = None  # the variant step this flag asks for (int8, pruned...)
    needs: tuple[str, ...] = ()  # what makes it do anything (see above OPTIONS); set without it: an error

    @property
    def recipe_path(self) -> Optional[tuple[str, str]]:
        """(section, key) of this option in a recipe ('' section: the top level)."""
        if self.recipe is None:
            return None
        section, _, key = self.recipe.partition(".")
        return section, key or self.key

    def field(self, convert: Optional[Callable[[Any], Any]] = None, default: Any = dataclasses.MISSING) -> Any:
        """A dataclass field bound to this option: ``bind`` fills it from the option's value
        (through ``convert`` where the consumer wants another form, e.g. a size in bytes or a
        negated flag); its default is the option's own, converted, so it is stated once."""
        if default is dataclasses.MISSING:
            value = self.default
            if isinstance(value, list):
                value = tuple(value)
            default = convert(value) if convert is not None and value is not None else value
        return dataclasses.field(default=default, metadata={"option": self.key, "convert": convert})

    # ------------------------------------------------------------------ checking values

    def describe(self) -> str:
        """What a value must be, for error messages."""
        if self.kind in ("flag", "switch"):
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind in ("text", "path"):
            return "a string"
        if self.kind == "list":
            return f"a list of {'integers >= ' + _num(self.minimum) if self.item == 'int' else 'strings'}"
        if self.kind == "int":
            return "an integer" + _range_text(self)
        return ("a number" if self.maximum is not None else "a finite number") + _range_text(self)

    def check(self, value: Any) -> bool:
        """Whether ``value`` (from a recipe, or any caller) is valid for this option."""
        if value is None:
            return True
        if self.kind in ("flag", "switch"):
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind in ("text", "path"):
            return isinstance(value, str) and value != ""
        if self.kind == "list":
            if self.item == "int":
                return isinstance(value, list) and bool(value) and all(_is_int(v) and _in_range(self, v) for v in value)
            return isinstance(value, list) and all(isinstance(v, str) and v != "" for v in value)
        if self.kind == "int":
            return _is_int(value) and _in_range(self, value)
        return _is_number(value) and _in_range(self, value)

    # ------------------------------------------------------------------ generated interfaces

    def click_option(self, command: str = ""):
        import click

        decls = [d for d in (self.short, self.flag) if d]
        kwargs: dict[str, Any] = {"help": self.help, "cls": _click_classes()[1], "group": self.group}
        if self.kind == "flag":
            kwargs.update(is_flag=True, default=bool(self.default))
        elif self.kind == "switch":
            name = self.flag[2:]
            decls = [f"--{name}/--no-{name}"]
            kwargs.update(default=bool(self.default), show_default=True)
        elif self.kind == "list":
            kwargs.update(multiple=True, default=tuple(self.default or ()), show_default=bool(self.default), type=int if self.item == "int" else str)
            if command in self.required_in:
                kwargs.update(required=True, default=(), show_default=False)
        else:
            kwargs.update(type=self._click_type(), default=self.default, show_default=self.default is not None)
        return click.option(*decls, self.key, **kwargs)

    def _click_type(self):
        import click

        if self.kind == "int":
            return click.IntRange(_int_or_none(self.minimum), _int_or_none(self.maximum))
        if self.kind == "float":
            return Finite(self.minimum, self.maximum, min_open=self.min_open, max_open=self.max_open)
        if self.kind == "choice":
            return click.Choice(list(self.choices))
        if self.kind == "path":
            return click.Path(path_type=Path)
        return str

    def add_argument(self, parser) -> None:
        """The same option in the device runner's argparse parser."""
        kwargs: dict[str, Any] = {"dest": self.key, "help": self.help}
        default = None if self.key in DEVICE_DEFAULTS_FROM_BUNDLE else self.default
        if self.kind == "flag":
            kwargs.update(action="store_true")
        elif self.kind == "switch":
            import argparse

            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif self.kind == "list":
            kwargs.update(action="append", type=_positive_int if self.item == "int" else str, default=None)
        else:
            kwargs.update(type=self._argparse_type(), default=default)
            if self.kind == "choice":
                kwargs["choices"] = self.choices
        parser.add_argument(self.flag, **kwargs)

    def _argparse_type(self):
        if self.kind == "int":
            return lambda text: _checked(self, int(text))
        if self.kind == "float":
            return lambda text: _checked(self, float(text))
        if self.kind == "path":
            return Path
        return str

    def to_argv(self, value: Any) -> list[str]:
        """``value`` as the device runner's arguments (empty where it is the runner's default)."""
        default = None if self.key in DEVICE_DEFAULTS_FROM_BUNDLE else self.default
        if value is None or value == default or (self.kind == "list" and tuple(value) == tuple(default or ())):
            return []
        if self.kind == "flag":
            return [self.flag] if value else []
        if self.kind == "switch":
            return [self.flag if value else f"--no-{self.flag[2:]}"]
        if self.kind == "list":
            return [a for v in value for a in (self.flag, str(v))]
        return [self.flag, str(value)]


def _num(x: Optional[float]) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else repr(x)


def _range_text(option: Option) -> str:
    lo, hi = option.minimum, option.maximum
    if lo is not None and hi is not None:
        return f" in {'(' if option.min_open else '['}{_num(lo)}, {_num(hi)}{')' if option.max_open else ']'}"
    if lo is not None:
        return f" {'>' if option.min_open else '>='} {_num(lo)}"
    if hi is not None:
        return f" {'<' if option.max_open else '<='} {_num(hi)}"
    return ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML true is a bool, and bool an int


def _is_number(v: Any) -> bool:
    """An int or a finite float (TOML has nan and inf literals), never a bool."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _in_range(option: Option, v: float) -> bool:
    lo, hi = option.minimum, option.maximum
    if lo is not None and (v <= lo if option.min_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if option.max_open else v > hi))


def _int_or_none(x: Optional[float]) -> Optional[int]:
    return None if x is None else int(x)


def _checked(option: Option, value: Any) -> Any:
    import argparse

    if not option.check(value):
        raise argparse.ArgumentTypeError(f"expected {option.describe()}, got {value}")
    return value


def _positive_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


# --------------------------------------------------------------------------- click helpers (imported lazily)


@lru_cache(maxsize=1)
def _click_classes():
    import click

    class Finite(click.FloatRange):
        """A float range that also refuses nan and inf (click's FloatRange lets nan through)."""

        name = "finite number"

        def convert(self, value, param, ctx):
            number = super().convert(value, param, ctx)
            if not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
            return number

    class GroupedOption(click.Option):
        def __init__(self, *args, group: str = "", **kwargs):
            super().__init__(*args, **kwargs)
            self.group = group

    class GroupedCommand(click.Command):
        """`--help` with the options in sections (model, int8, prune, bench, remote...)."""

        def format_options(self, ctx, formatter) -> None:
            sections: dict[str, list] = {}
            for param in self.get_params(ctx):
                record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
                if record is not None:
                    sections.setdefault(GROUPS.get(getattr(param, "group", ""), "Options"), []).append(record)
            order = ["Options", *GROUPS.values()]
            for title in sorted(sections, key=lambda t: order.index(t) if t in order else len(order)):
                with formatter.section(title):
                    formatter.write_dl(sections[title])

    return Finite, GroupedOption, GroupedCommand


def Finite(*args, **kwargs):  # noqa: N802 (a click type, named like one)
    return _click_classes()[0](*args, **kwargs)


def grouped_command():
    """The click command class whose --help prints the option groups."""
    return _click_classes()[2]


def bind(cls: type[T], values: Mapping[str, Any], **given: Any) -> T:
    """An instance of the dataclass ``cls`` from option ``values`` (a Settings, or a
    backend's own values): each field bound with ``Option.field`` reads its option (through
    its converter); ``given`` fills others; the rest keep their defaults. The one place
    settings become the typed options a module takes."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in given:
            continue
        key = f.metadata.get("option")
        if key is None or key not in values:
            continue
        value = values[key]
        convert = f.metadata.get("convert")
        kwargs[f.name] = convert(value) if convert is not None and value is not None else value
    return cls(**kwargs, **given)
