"""Every option, declared once: its flag, type, default, range, help, group, recipe key and
where it is used. The click options of `export`, `bench` and `bundle`, the recipe schema,
the device runner's argument parser and the argv a remote run passes to it are all
generated from these declarations (tests/test_options.py checks each appears everywhere
it should, with the same default).

Values travel as a ``Settings`` mapping (key -> value, defaults filled in), built from a
command line or a recipe the same way; the steps and the bench read it.

No click, torch or numpy at import time: the on-device runner imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from .core import UsageError

COMMANDS = ("export", "bench", "bundle", "finetune", "profile")
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
POWER_SOURCES = ("auto", "tegrastats", "nvml", "rapl", "off")
PRECISIONS = ("f32", "bf16", "f16")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")


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


# --------------------------------------------------------------------------- the declarations

_MODEL = ("export", "bench", "bundle", "profile")
_BENCH = ("bench",)
_TIMED = ("bench", "profile")
_ANY_MODEL = (*_MODEL, "finetune")
_DATA = ("bench", "bundle", "export", "finetune", "profile")

# Option.needs: what makes an option do anything. Every entry must hold; an entry is
# alternatives joined by "|", an alternative conditions joined by "&". A condition is a
# step of the variant (finetuned, pruned, dw-separable, int8, fp16), "bench" (the images
# are evaluated: bench, profile, bundle, recipes), KEY (that option is set: not None, False,
# 0 or empty), !KEY (it is not) or KEY=VALUE. check_applicable is the one place that reads it.
_FT = ("finetuned",)
_INT8 = ("int8",)
_PRUNE = ("pruned",)
_DW = ("dw-separable",)
_STRUCTURAL = ("pruned|dw-separable",)
_CALIBRATING = "int8|pruned|dw-separable"  # the steps that read calibration (or distillation) images

OPTIONS: tuple[Option, ...] = (
    # model and export ([export] in recipes, or [model.<name>] for one model)
    Option("weights", "--weights", "path", "model", "Local checkpoint, never executed: a state_dict, a training script's dict or .safetensors; its head sets the classes.", recipe="export", commands=_ANY_MODEL),
    Option("weights_key", "--weights-key", "text", "model", "Which state dict of a checkpoint that holds several (model, model_ema...).", recipe="export", commands=_ANY_MODEL, needs=("weights",)),
    Option("num_classes", "--num-classes", "int", "model", "Outputs of the head (default: the checkpoint's head, else the model's own).", recipe="export", commands=_ANY_MODEL, minimum=1, maximum=100000),
    Option("preprocessing", "--preprocessing", "path", "model", "For an imported ONNX file: JSON with input_size, crop_pct, interpolation, mean, std, classes (default: ImageNet's).", recipe="export", commands=_MODEL),
    Option("classes", "--classes", "path", "model", "Class names in output order, one per line or JSON (default: the checkpoint's, --data's folders, or ImageNet-1k).", recipe="export", commands=_ANY_MODEL),
    Option("random_init", "--random-init", "flag", "model", "Seeded random weights, for architecture-only work.", False, recipe="export", commands=_ANY_MODEL),
    Option("input_size", "--input-size", "int", "model", "Export at this resolution instead of the model's own.", recipe="export", commands=_ANY_MODEL, minimum=16, maximum=2048),
    Option("opset", "--opset", "int", "model", "ONNX opset.", 17, recipe="export", commands=_MODEL, minimum=11, maximum=23),
    Option("static", "--static", "flag", "model", "Fixed batch of 1 instead of a dynamic batch axis.", False, recipe="export", commands=_MODEL),
    Option("no_slim", "--no-slim", "flag", "model", "Keep the exporter's graph as is (no onnxslim folding).", False, recipe="export", commands=_MODEL),
    Option("artifacts", "--artifacts", "path", "model", "Artifact root (relative to the current folder, in recipes too).", "exported", recipe="export", commands=_ANY_MODEL),
    # variants: the steps to build (recipes: variants)
    Option("int8", "--int8", "flag", "variants", "INT8 QDQ artifact for every backend, calibrated on real images ('int8').", False, commands=_MODEL, step="int8"),
    Option("fp16", "--fp16", "flag", "variants", "FP16 artifact, inputs and outputs kept FP32 ('fp16').", False, commands=_MODEL, step="fp16"),
    Option("prune", "--prune", "float", "variants", "Remove this fraction of channels (0-1), then distil ('pruned' and [prune] ratio).", recipe="prune.ratio", commands=_MODEL, minimum=0.0, maximum=1.0, min_open=True, max_open=True, step="pruned"),
    Option("dw_separable", "--dw-separable", "flag", "variants", "KxK convolutions become depthwise KxK + pointwise 1x1 (SVD-initialised), then distil ('dw-separable').", False, commands=_MODEL, step="dw-separable"),
    Option("finetune", "--finetune", "flag", "variants", "First train a new head for --data's classes on its training split ('finetuned'; see edgekit finetune).", False, commands=_MODEL, step="finetuned"),
    # fine-tuning (the 'finetuned' step)
    Option("ft_epochs", "--ft-epochs", "int", "finetune", "Epochs fine-tuning the whole network, after the linear probe.", 6, recipe="finetune.epochs", commands=_ANY_MODEL, minimum=0, maximum=1000, needs=_FT),
    Option("ft_probe_epochs", "--ft-probe-epochs", "int", "finetune", "Epochs training only the new head first (linear probe).", 1, recipe="finetune.probe_epochs", commands=_ANY_MODEL, minimum=0, maximum=1000, needs=_FT),
    Option("ft_freeze", "--ft-freeze-backbone", "flag", "finetune", "Train only the head, every epoch (frozen backbone).", False, recipe="finetune.freeze_backbone", commands=_ANY_MODEL, needs=_FT),
    Option("ft_lr", "--ft-lr", "float", "finetune", "Peak learning rate of full fine-tuning (AdamW, cosine schedule; the probe uses 10x).", 1e-3, recipe="finetune.lr", commands=_ANY_MODEL, minimum=0.0, maximum=1.0, min_open=True, needs=_FT),
    Option("ft_batch", "--ft-batch", "int", "finetune", "Training batch size.", 32, recipe="finetune.batch", commands=_ANY_MODEL, minimum=2, maximum=4096, needs=_FT),
    Option("ft_label_smoothing", "--ft-label-smoothing", "float", "finetune", "Label smoothing of the cross-entropy.", 0.1, recipe="finetune.label_smoothing", commands=_ANY_MODEL, minimum=0.0, maximum=1.0, max_open=True, needs=_FT),
    Option("ft_patience", "--ft-patience", "int", "finetune", "Stop after this many epochs without a better validation top-1.", 3, recipe="finetune.patience", commands=_ANY_MODEL, minimum=1, needs=_FT),
    Option("ft_augment", "--ft-augment", "choice", "finetune", "Training augmentation: random resized crops and flips (standard), without flips (for text, digits, arrows), or none.", "standard", recipe="finetune.augment", commands=_ANY_MODEL, choices=("standard", "no-flip", "none"), needs=_FT),
    # INT8
    Option("calib", "--calib", "path", "int8", "Calibration images, also distillation's (default: --data's training split, else the bundled photos' odd views).", recipe="int8", commands=_MODEL, needs=("int8|pruned&!distill_data|dw-separable&!distill_data",)),
    Option("calib_labels", "--calib-labels", "path", "int8", "Labels for a flat --calib folder (enables --max-drop).", recipe="int8", commands=_MODEL, needs=("int8", "calib")),
    Option("calib_limit", "--calib-limit", "int", "int8", "At most this many calibration (or distillation) files of a folder (seeded sample).", 200, recipe="int8", commands=_MODEL, minimum=8, needs=(_CALIBRATING, "calib|data|distill_data")),
    Option("calib_method", "--calib-method", "choice", "int8", "Range estimation: percentile, minmax, entropy (TensorRT's KL search; clips ReLU6 nets too hard) or mse (least expected INT8 error).", "percentile", recipe="int8", commands=_MODEL, choices=CALIBRATION_METHODS, needs=_INT8),
    Option("percentile", "--percentile", "float", "int8", "Percentile of --calib-method percentile.", 99.999, recipe="int8", commands=_MODEL, minimum=50.0, maximum=100.0, min_open=True, needs=("int8", "calib_method=percentile")),
    Option("seed", "--seed", "int", "general", "Seed of every sample and training run: --limit, --val-split, --calib-limit, fine-tuning, QAT.", 0, recipe="int8", commands=_ANY_MODEL, minimum=0,
           needs=("limit|val_split|calib|distill_data|qat_epochs|finetuned|int8&data|pruned&data|dw-separable&data",)),
    Option("max_drop", "--max-drop", "float", "int8", "Budget: top-1 drop in points vs FP32 (needs labelled calibration images).", recipe="int8", commands=_MODEL, minimum=0.0, maximum=100.0, needs=_INT8),
    Option("min_agreement", "--min-agreement", "float", "int8", "Budget: top-1 agreement with FP32, percent.", recipe="int8", commands=_MODEL, minimum=0.0, maximum=100.0, needs=_INT8),
    Option("max_kl", "--max-kl", "float", "int8", "Budget: mean KL(FP32 || INT8) on the calibration images (default 0.002 when no budget is given).", recipe="int8", commands=_MODEL, minimum=0.0, needs=_INT8),
    Option("max_fallback", "--max-fallback", "int", "int8", "At most this many nodes go back to float.", 8, recipe="int8", commands=_MODEL, minimum=0, needs=_INT8),
    Option("rounding", "--rounding", "choice", "int8", "Weight rounding: nearest, or adaround (learned up/down per weight against each layer's FP32 output; slower).", "nearest", recipe="int8", commands=_MODEL, choices=("nearest", "adaround"), needs=_INT8),
    Option("bias_correction", "--bias-correction", "switch", "int8", "Fold each layer's mean output shift from INT8 weights into its bias (kept where it lowers the KL).", True, recipe="int8", commands=_MODEL, needs=_INT8),
    Option("qat_epochs", "--qat-epochs", "int", "int8", "Quantization-aware training: epochs over the calibration images, distilled from FP32 (0: post-training only).", 0, recipe="int8", commands=_MODEL, minimum=0, maximum=1000, needs=_INT8),
    Option("qat_lr", "--qat-lr", "float", "int8", "QAT learning rate of the weights (Adam, cosine decay to zero).", 1e-5, recipe="int8", commands=_MODEL, minimum=0.0, maximum=1.0, min_open=True, needs=("int8", "qat_epochs")),
    Option("strict", "--strict", "flag", "int8", "Exit 1 when the budget is not met (the best artifact is still kept).", False, recipe="int8", commands=_MODEL, needs=_INT8),
    # structured pruning
    Option("prune_criterion", "--prune-criterion", "choice", "prune", "Channel importance.", "l2", recipe="prune.criterion", commands=_MODEL, choices=("l1", "l2", "taylor"), needs=_PRUNE),
    Option("prune_scope", "--prune-scope", "choice", "prune", "Same ratio per layer, or one ranking over all layers.", "uniform", recipe="prune.scope", commands=_MODEL, choices=("uniform", "global"), needs=_PRUNE),
    Option("prune_round_to", "--prune-round-to", "int", "prune", "Keep a multiple of this many channels per pruned layer (1: no rounding).", 8, recipe="prune.round_to", commands=_MODEL, minimum=1, needs=_PRUNE),
    Option("prune_target", "--prune-target", "choice", "prune", "Prune in small steps until this measured quantity falls by the --prune fraction.", recipe="prune.target", commands=_MODEL, choices=("flops", "params", "latency"), needs=_PRUNE),
    Option("sparsity", "--sparsity", "text", "prune", "Also zero weights: a fraction (0.5, unstructured magnitude) or 2:4 (semi-structured).", recipe="prune", commands=_MODEL, needs=_PRUNE),
    # depthwise-separable conversion
    Option("dw_rank", "--dw-rank", "int", "dw_separable", "Depthwise filters per input channel (K*K reproduces the conv exactly).", 1, recipe="dw_separable.rank", commands=_MODEL, minimum=1, needs=_DW),
    Option("dw_budget", "--dw-budget", "float", "dw_separable", "Convert layers (best MACs saved per error first) while the mean KL vs the original stays below this.", recipe="dw_separable.budget", commands=_MODEL, minimum=0.0, needs=("dw-separable", "!dw_layers")),
    Option("dw_layers", "--dw-layer", "list", "dw_separable", "A layer to convert (instead of --dw-budget); repeat or comma-separate for several.", (), recipe="dw_separable.layers", commands=_MODEL, needs=_DW),
    # distillation, shared by pruning and conversion
    Option("distill_steps", "--distill-steps", "int", "distill", "Distillation steps after pruning or conversion (0: no recovery).", 200, recipe="distill.steps", commands=_MODEL, minimum=0, needs=_STRUCTURAL),
    Option("distill_hints", "--distill-hints", "flag", "distill", "FitNets hints: also regress the original's middle and last feature maps.", False, recipe="distill.hints", commands=_MODEL, needs=(*_STRUCTURAL, "distill_steps")),
    Option("distill_data", "--distill-data", "path", "distill", "Unlabelled images for distillation (default: the calibration views).", recipe="distill.data", commands=_MODEL, needs=_STRUCTURAL),
    # evaluation images
    Option("data", "--data", "path", "data", "Labelled images: class folders, a flat folder with --labels, or train/ and val/ (evaluated on val/, trains and calibrates on the rest). Default: bundled photos.", recipe="bench", commands=_DATA, on_device=True,
           needs=("bench|finetuned|int8|pruned|dw-separable",)),
    Option("labels", "--labels", "path", "data", "Labels for a flat --data folder: '<file> <class>' lines, CSV (LOC_val_solution.csv too) or ImageNet devkit ground truth.", recipe="bench", commands=_DATA, on_device=True, needs=("data",)),
    Option("val_split", "--val-split", "float", "data", "For --data without train/ and val/: this fraction of each class (seeded) is the validation split.", recipe="bench", commands=_DATA, on_device=True, minimum=0.0, maximum=1.0, min_open=True, max_open=True, needs=("data",)),
    Option("views", "--views", "int", "data", "Deterministic crops/flips per image (default: 1 for --data, the 11 held-out views of the bundled photos).", recipe="bench", commands=("bench", "bundle", "profile"), minimum=1),
    Option("limit", "--limit", "int", "data", "Use at most this many image files (a seeded sample, see --seed).", recipe="bench", commands=("bench", "bundle", "profile"), minimum=1),
    # benchmark
    Option("backends", "--backend", "list", "bench", "Backend(s) to run; repeat or comma-separate: pytorch, onnxruntime, openvino, tensorrt.", ("pytorch", "onnxruntime"), recipe="", commands=("bench", "bundle", "profile"), on_device=True, required_in=("bundle",)),
    Option("batch", "--batch", "list", "bench", "Batch size(s) to time; repeat for several.", (1,), recipe="", commands=("bench", "bundle", "profile"), on_device=True, item="int", minimum=1),
    Option("iterations", "--iterations", "int", "bench", "Timed runs per batch size.", 100, recipe="bench", commands=_TIMED, on_device=True, minimum=1),
    Option("warmup", "--warmup", "int", "bench", "Untimed runs first.", 10, recipe="bench", commands=_TIMED, on_device=True, minimum=0),
    Option("max_seconds", "--max-seconds", "float", "bench", "Time budget per batch size (at least 10 iterations run).", 15.0, recipe="bench", commands=_BENCH, on_device=True, minimum=0.1),
    Option("repeats", "--repeats", "int", "bench", "Rounds of --iterations; the spread of their p50s shows the noise.", 1, recipe="bench", commands=_BENCH, on_device=True, minimum=1),
    Option("throughput", "--throughput", "float", "bench", "Also time OpenVINO's throughput mode (asynchronous requests) this many seconds per batch size.", recipe="bench", commands=_BENCH, on_device=True, minimum=0.5, applies_to=("openvino",)),
    Option("power", "--power", "choice", "bench", "Power and energy per image: tegrastats (Jetson), nvml (NVIDIA GPUs), rapl (x86 CPU package), auto (what there is).", "auto", recipe="bench", commands=_BENCH, on_device=True, choices=POWER_SOURCES),
    # backend settings
    Option("device", "--device", "text", "backend", "Where backends run, checked before any work: DEVICE for all but the PyTorch baseline, or pairs such as openvino:gpu,pytorch:cuda (docs/devices.md).", recipe="bench", commands=("bench", "bundle", "profile"), on_device=True),
    Option("threads", "--threads", "int", "backend", "Intra-op threads (default: the runtime's choice); TensorRT has none.", recipe="bench", commands=_TIMED, on_device=True, minimum=1, maximum=1024, applies_to=("pytorch", "onnxruntime", "openvino")),
    Option("precision", "--precision", "choice", "backend", "OpenVINO inference precision (default f32, not the CPU's bf16); f16: FP16 TensorRT engines from an FP32 artifact.", recipe="bench", commands=_TIMED, on_device=True, choices=PRECISIONS, applies_to=("openvino", "tensorrt", "onnxruntime")),
    Option("ov_fp16_weights", "--ov-fp16-weights", "flag", "backend", "OpenVINO: compress the IR's weights to FP16.", False, recipe="bench", commands=_TIMED, on_device=True, applies_to=("openvino",)),
    Option("trt_workspace", "--trt-workspace", "text", "backend", "TensorRT builder workspace limit, e.g. 4GiB.", recipe="bench", commands=_TIMED, on_device=True, applies_to=("tensorrt",)),
    Option("cuda_graph", "--cuda-graph", "flag", "backend", "TensorRT: replay inference from a captured CUDA graph.", False, recipe="bench", commands=_TIMED, on_device=True, applies_to=("tensorrt",)),
    # remote device
    Option("remote", "--remote", "text", "remote", "Run on another machine over ssh (user@host[:port]): a bundle is copied there and run; PyTorch runs here.", recipe="bench", commands=_BENCH),
    Option("remote_python", "--remote-python", "text", "remote", "The Python on the remote machine (needs numpy, Pillow and the backend's runtime).", "python3", recipe="bench", commands=_BENCH, needs=("remote",)),
    Option("remote_dir", "--remote-dir", "text", "remote", "Where bundles go on the remote machine (relative: under its home).", "edgekit-bundles", recipe="bench", commands=_BENCH, needs=("remote",)),
    Option("ssh_options", "--ssh-option", "list", "remote", "Passed to ssh as -o, e.g. IdentityFile=~/.ssh/jetson; repeat for several (EDGEKIT_SSH_OPTS: raw arguments).", (), recipe="bench", commands=_BENCH, needs=("remote",)),
    # Ray cluster (recipe-only: `edgekit run RECIPE --ray`)
    Option("device_kinds", None, "list", "cluster", "Which nodes time the cells: a device kind (a Ray resource, e.g. jetson_orin_nano), or BACKEND=KIND, several for several; default: nodes offering 'host'.", (), recipe="ray.kinds"),
    Option("retries", None, "int", "cluster", "Times a cell whose node died is run again elsewhere before it is marked failed.", 2, recipe="ray", minimum=0),
    Option("wait_for_kind", None, "float", "cluster", "Seconds a cell waits for a node of its kind to come back after the last one left the cluster, before it is marked failed.", 30.0, recipe="ray", minimum=0.0),
    Option("shared", None, "path", "cluster", "A folder every node can read (NFS, a mounted bucket): bundles travel through it instead of Ray's object store.", recipe="ray"),
)

# Runner arguments whose default is "what the bundle was made with" rather than a value.
DEVICE_DEFAULTS_FROM_BUNDLE = frozenset({"backends", "batch", "device"})  # the runner's default: the bundle's

BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
assert len(BY_KEY) == len(OPTIONS), "option keys must be unique"
BY_STEP: dict[str, Option] = {o.step: o for o in OPTIONS if o.step}  # the flag that asks for each step


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if command in o.commands)


def click_options(command: str):
    """Decorator adding every option ``command`` takes, in declaration order."""

    def decorate(f):
        for option in reversed(options_for(command)):
            f = option.click_option(command)(f)
        return f

    return decorate


def device_options() -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if o.on_device)


def recipe_options() -> dict[str, dict[str, Option]]:
    """section -> key -> option, for the recipe schema ('' is the top level)."""
    found: dict[str, dict[str, Option]] = {}
    for option in OPTIONS:
        if option.recipe_path is not None:
            section, key = option.recipe_path
            found.setdefault(section, {})[key] = option
    return found


PER_MODEL_SECTIONS = ("export", "ray")  # what a recipe's [model.<name>] table may override


def per_model_options() -> dict[str, Option]:
    """key -> option for a recipe's [model.<name>] tables: export settings and device kinds."""
    sections = recipe_options()
    return {key: option for section in PER_MODEL_SECTIONS for key, option in sections.get(section, {}).items()}


def runner_argv(settings: Mapping[str, Any]) -> list[str]:
    """A bench's settings as the device runner's arguments (backends excluded: the remote
    launcher names them)."""
    return [a for o in device_options() if o.key != "backends" for a in o.to_argv(settings.get(o.key))]


# --------------------------------------------------------------------------- settings


class Settings(Mapping[str, Any]):
    """Every option's value, defaults filled in, whichever way it was given.

    List options given on a command line may be comma-separated (``--backend a,b``);
    they are split here, once.
    """

    def __init__(self, values: Optional[Mapping[str, Any]] = None, **more: Any):
        given = {**(values or {}), **more}
        unknown = set(given) - set(BY_KEY)
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
        self._given = {k: v for k, v in given.items() if v is not None and not (BY_KEY[k].kind == "list" and v == ())}
        self._values = {o.key: _normalise(o, self._given.get(o.key, o.default)) for o in OPTIONS}

    DEFAULTS: Mapping[str, Any] = {}  # every option's default, normalised (filled in below)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def given(self, key: str) -> bool:
        """Whether the value was set explicitly (not the default)."""
        return key in self._given

    def replace(self, **values: Any) -> "Settings":
        return Settings({**self._given, **values})

    def __repr__(self) -> str:
        return f"Settings({self._given!r})"


def _normalise(option: Option, value: Any) -> Any:
    if option.kind != "list" or value is None:
        return value
    items = [value] if isinstance(value, (str, int)) else list(value)
    if option.item == "int":
        return tuple(int(v) for v in items)
    return tuple(dict.fromkeys(part.strip() for v in items for part in str(v).split(",") if part.strip()))


Settings.DEFAULTS = {o.key: _normalise(o, o.default) for o in OPTIONS}


def settings_from_recipe(tables: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> Settings:
    """Settings from a recipe's parsed tables ({'': top-level, 'int8': {...}, ...}), with
    per-model ``overrides`` (PER_MODEL_SECTIONS' keys) on top."""
    values: dict[str, Any] = {}
    for section, keys in recipe_options().items():
        table = tables.get(section, {})
        for key, option in keys.items():
            if key in table:
                values[option.key] = table[key]
    for key, value in (overrides or {}).items():
        values[per_model_options()[key].key] = value
    return Settings(values)


def check_recipe_value(section: str, key: str, value: Any) -> Optional[str]:
    """Why ``value`` cannot be recipe key ``section.key``, or None (None too for keys the
    schema does not know: the caller reports those)."""
    option = (per_model_options() if section == "model" else recipe_options().get(section, {})).get(key)
    if option is None or option.check(value):
        return None
    return f"'{key}' must be {option.describe()}, got {value!r}"


# --------------------------------------------------------------------------- what an option needs

STEP_TEXT = {"finetuned": "fine-tuning", "pruned": "pruning", "dw-separable": "depthwise-separable conversion", "int8": "INT8", "fp16": "FP16"}
BENCH = "bench"  # the condition "the images are evaluated" (Option.needs)


def is_set(settings: Settings, key: str) -> bool:
    """Whether ``key`` differs from its default: a default asks for nothing, so only a set
    option can be ignored."""
    return settings[key] != Settings.DEFAULTS[key]


def check_applicable(settings: Settings, backends: Sequence[str], variants: Optional[Sequence[str]] = None, *, recipe: bool = False) -> None:
    """An option set while nothing reads it is a mistake, not a no-op: a one-line
    UsageError naming what enables it. ``backends``: the ones that run (none: nothing is
    evaluated, as in export); ``variants``: the variants built (default: the one the flags
    ask for); ``recipe``: name recipe keys and variants instead of flags."""
    problem = applicability_problem(settings, backends, variants, recipe=recipe)
    if problem is not None:
        raise UsageError(problem[1])


def applicability_problem(settings: Settings, backends: Sequence[str], variants: Optional[Sequence[str]] = None, *, recipe: bool = False) -> Optional[tuple[Option, str]]:
    """(the first option set in vain, why), or None: each set option's step, Option.needs
    and Option.applies_to, read against the variants' steps and the backends that run."""
    if variants is None:
        steps = {o.step for o in OPTIONS if o.step and settings[o.key]}
    else:
        steps = {part for variant in variants for part in variant.split("+")}
    context = _Context(settings, frozenset(steps), bool(backends) or recipe, recipe, variants is not None)
    for option in OPTIONS:
        if not is_set(settings, option.key):
            continue
        for clause in ((option.step,) if option.step else ()) + option.needs:
            alternatives = [alternative.split("&") for alternative in clause.split("|")]
            if not any(all(context.holds(c) for c in alternative) for alternative in alternatives):
                return option, context.message(option, alternatives)
        if option.applies_to and not set(option.applies_to) & set(backends):
            plural = "s" if len(option.applies_to) > 1 else ""
            fix = f"add '{option.applies_to[0]}' to 'backends'" if recipe else f"add --backend {option.applies_to[0]}"
            return option, f"{context.name(option)} applies to the {_or(option.applies_to).replace(' or ', ' and ')} backend{plural}; {fix}"
    return None


@dataclass(frozen=True)
class _Context:
    """What the conditions of Option.needs are read against, and how they are named."""

    settings: Settings
    steps: frozenset
    bench: bool
    recipe: bool
    variant_given: bool

    def holds(self, condition: str) -> bool:
        if condition in STEP_TEXT:
            return condition in self.steps
        if condition == BENCH:
            return self.bench
        if condition.startswith("!"):
            return not self.settings[condition[1:]]
        key, _, value = condition.partition("=")
        return str(self.settings[key]) == value if value else bool(self.settings[key])

    def name(self, option: Option) -> str:
        if not self.recipe:
            return option.flag or option.key
        section, key = option.recipe_path or ("", option.key)
        return f"[{section}] {key}" if section else f"'{key}'"

    def _describe(self, condition: str) -> str:
        if condition in STEP_TEXT:
            return STEP_TEXT[condition]
        if condition == BENCH:
            return "a bench (bench, profile, bundle)"
        key, _, value = condition.lstrip("!").partition("=")
        name = self.name(BY_KEY[key])
        return name if not value else f'{name} = "{value}"' if self.recipe else f"{name} {value}"

    def _fix(self, condition: str) -> str:
        if condition in STEP_TEXT:
            if self.recipe:
                return f"add a variant with {condition} to 'variants'"
            return f"use a variant with {condition}" if self.variant_given else f"add {BY_STEP[condition].flag}"
        if condition == BENCH:
            return "use bench, profile or bundle"
        if condition.startswith("!"):
            return f"drop {self._describe(condition)}"
        return ("set " if "=" in condition or self.recipe else "add ") + self._describe(condition)

    def message(self, option: Option, alternatives: list[list[str]]) -> str:
        texts = []
        for alternative in alternatives:
            positive = [self._describe(c) for c in alternative if not c.startswith("!")]
            negative = [f"without {self._describe(c)}" for c in alternative if c.startswith("!")]
            texts.append(" ".join([" with ".join(positive), *negative]).strip())
        by_a_step = any(c in STEP_TEXT or c == BENCH for alternative in alternatives for c in alternative)
        verb = "applies" if texts[0].startswith("without") else "applies to" if by_a_step else "applies with"
        unmet = [frozenset(c for c in alternative if not self.holds(c)) for alternative in alternatives]
        fewest = min(len(u) for u in unmet)  # suggest the smallest changes
        fixes = list(dict.fromkeys(" and ".join(self._fix(c) for c in a if c in u) for a, u in zip(alternatives, unmet) if len(u) == fewest))
        adds = [f[4:] for f in fixes if f.startswith("add ") and " and " not in f]
        others = [f for f in fixes if not (f.startswith("add ") and " and " not in f)]
        return f"{self.name(option)} {verb} {_or(texts)}; " + " or ".join(([f"add {_or(adds)}"] if adds else []) + others)


def _or(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def parse_list(values: Sequence[str]) -> tuple[str, ...]:
    """`--backend a,b --backend c` -> (a, b, c), duplicates dropped."""
    return _normalise(Option("x", None, "list", "bench"), values)


def keyword_options(commands: Sequence[str] = COMMANDS) -> dict[str, Option]:
    """Python keyword -> option, for the options of ``commands``: each option's key (the
    Settings and recipe name) and its flag in Python form (``--dw-layer`` -> ``dw_layer``,
    ``--backend`` -> ``backend``), so the Python API takes the names ``--help`` shows too."""
    names: dict[str, Option] = {}
    for option in OPTIONS:
        if set(commands) & set(option.commands):
            names[option.key] = option
            if option.flag:
                names.setdefault(option.flag[2:].replace("-", "_"), option)
    return names
