"""The catalogue of every option: the core ones declared here, each backend's own declared
in its module (Backend.options) and collected here. The click options of `export`, `bench` and `bundle`, the recipe schema,
the device runner's argument parser and the argv a remote run passes to it are all
generated from these declarations (tests/test_options.py checks each appears everywhere
it should, with the same default).

Values travel as a ``Settings`` mapping (key -> value, defaults filled in), built from a
command line or a recipe the same way; the steps and the bench read it.

No click, torch or numpy at import time: the on-device runner imports this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, TypeVar

from .core import UsageError
from .option import DEVICE_DEFAULTS_FROM_BUNDLE, GROUPS, Finite, Option, bind, grouped_command  # noqa: F401 (re-exported)

T = TypeVar("T")

COMMANDS = ("export", "bench", "bundle", "finetune", "profile")
POWER_SOURCES = ("auto", "tegrastats", "nvml", "rapl", "off")
PRECISIONS = ("f32", "bf16", "f16")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")


# --------------------------------------------------------------------------- the declarations

_MODEL = ("export", "bench", "bundle", "profile", "doctor")  # doctor builds a model name as bench does
_BENCH = ("bench",)
_TIMED = ("bench", "profile")
_ANY_MODEL = (*_MODEL, "finetune")
_DATA = ("bench", "bundle", "export", "finetune", "profile", "doctor")

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
_CALIBRATING = "int8|fp16|pruned|dw-separable"  # the steps that read calibration (or distillation) images

# The options of every command; each backend adds its own (Backend.options, collected below).
CORE_OPTIONS: tuple[Option, ...] = (
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
    Option("calib", "--calib", "path", "int8", "Calibration images, also distillation's (default: --data's training split, else the bundled photos' odd views).", recipe="int8", commands=_MODEL, needs=("int8|fp16|pruned&!distill_data|dw-separable&!distill_data",)),
    Option("calib_labels", "--calib-labels", "path", "int8", "Labels for a flat --calib folder (enables --max-drop).", recipe="int8", commands=_MODEL, needs=("int8", "calib")),
    Option("calib_limit", "--calib-limit", "int", "int8", "At most this many calibration (or distillation) files of a folder (seeded sample).", 200, recipe="int8", commands=_MODEL, minimum=8, needs=(_CALIBRATING, "calib|data|distill_data")),
    Option("calib_method", "--calib-method", "choice", "int8", "Range estimation: percentile, minmax, entropy (TensorRT's KL search; clips ReLU6 nets too hard) or mse (least expected INT8 error).", "percentile", recipe="int8", commands=_MODEL, choices=CALIBRATION_METHODS, needs=_INT8),
    Option("percentile", "--percentile", "float", "int8", "Percentile of --calib-method percentile.", 99.999, recipe="int8", commands=_MODEL, minimum=50.0, maximum=100.0, min_open=True, needs=("int8", "calib_method=percentile")),
    Option("seed", "--seed", "int", "general", "Seed of every sample and training run: --limit, --val-split, --calib-limit, fine-tuning, QAT.", 0, recipe="int8", commands=_ANY_MODEL, minimum=0,
           needs=("limit|val_split|calib|distill_data|qat_epochs|finetuned|int8&data|fp16&data|pruned&data|dw-separable&data",)),
    Option("max_drop", "--max-drop", "float", "int8", "Budget: top-1 drop in points vs FP32 (needs labelled calibration images).", recipe="int8", commands=_MODEL, minimum=0.0, maximum=100.0, needs=_INT8),
    Option("min_agreement", "--min-agreement", "float", "int8", "Budget: top-1 agreement with FP32, percent.", recipe="int8", commands=_MODEL, minimum=0.0, maximum=100.0, needs=_INT8),
    Option("max_kl", "--max-kl", "float", "int8", "Budget: mean KL(FP32 || INT8) on the calibration images (default 0.002 when no budget is given).", recipe="int8", commands=_MODEL, minimum=0.0, needs=_INT8),
    Option("max_fallback", "--max-fallback", "int", "int8", "At most this many nodes go back to float.", 8, recipe="int8", commands=_MODEL, minimum=0, needs=_INT8),
    Option("rounding", "--rounding", "choice", "int8", "Weight rounding: nearest, or adaround (learned up/down per weight against each layer's FP32 output; slower).", "nearest", recipe="int8", commands=_MODEL, choices=("nearest", "adaround"), needs=_INT8),
    Option("bias_correction", "--bias-correction", "switch", "int8", "Fold each layer's mean output shift from INT8 weights into its bias (kept where it lowers the KL).", True, recipe="int8", commands=_MODEL, needs=_INT8),
    Option("qat_epochs", "--qat-epochs", "int", "int8", "Quantization-aware training: epochs over the calibration folder or --data's training split (--qat-limit), distilled from FP32 (0: post-training only).", 0, recipe="int8", commands=_MODEL, minimum=0, maximum=1000, needs=_INT8),
    Option("qat_lr", "--qat-lr", "float", "int8", "QAT learning rate of the weights (Adam, cosine decay to zero).", 3e-4, recipe="int8", commands=_MODEL, minimum=0.0, maximum=1.0, min_open=True, needs=("int8", "qat_epochs")),
    Option("qat_limit", "--qat-limit", "int", "int8", "At most this many QAT images (seeded sample of the calibration folder or --data's training split); a tenth is held back to judge QAT.", 2000, recipe="int8", commands=_MODEL, minimum=8, needs=("int8", "qat_epochs", "calib|data")),
    Option("strict", "--strict", "flag", "int8", "Exit 1 when the budget is not met (the best artifact is still kept).", False, recipe="int8", commands=_MODEL, needs=_INT8),
    Option("int8_float", "--int8-float", "choice", "int8", "Precision of the INT8 graph's float parts (layers left in float): fp16 for GPU targets; auto: fp16 when every backend run is on an NVIDIA GPU.", "auto", recipe="int8", commands=_MODEL, choices=("auto", "fp32", "fp16"), needs=_INT8),
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
    Option("backends", "--backend", "list", "bench", "Backend(s) to run; repeat or comma-separate: {backends}.", (), recipe="", commands=("bench", "bundle", "profile", "doctor"), on_device=True, required_in=("bundle",)),
    Option("batch", "--batch", "list", "bench", "Batch size(s) to time; repeat for several.", (1,), recipe="", commands=("bench", "bundle", "profile"), on_device=True, item="int", minimum=1),
    Option("iterations", "--iterations", "int", "bench", "Timed runs per batch size.", 100, recipe="bench", commands=_TIMED, on_device=True, minimum=1),
    Option("warmup", "--warmup", "int", "bench", "Untimed runs first.", 10, recipe="bench", commands=_TIMED, on_device=True, minimum=0),
    Option("max_seconds", "--max-seconds", "float", "bench", "Time budget per batch size (at least 10 iterations run).", 15.0, recipe="bench", commands=_BENCH, on_device=True, minimum=0.1),
    Option("repeats", "--repeats", "int", "bench", "Rounds of --iterations; the spread of their p50s shows the noise.", 1, recipe="bench", commands=_BENCH, on_device=True, minimum=1),
    Option("power", "--power", "choice", "bench", "Power and energy per image: tegrastats (Jetson), nvml (NVIDIA GPUs), rapl (x86 CPU package), auto (what there is).", "auto", recipe="bench", commands=_BENCH, on_device=True, choices=POWER_SOURCES),
    # backend settings
    Option("device", "--device", "text", "backend", "Where backends run, checked before any work: DEVICE for all but the baseline ({baseline}), or BACKEND:DEVICE pairs, comma-separated (docs/devices.md).", recipe="bench", commands=("bench", "bundle", "profile", "doctor"), on_device=True),
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


_DECLARED = {o.key: o for o in CORE_OPTIONS}


def declared(key: str) -> Option:
    """A core option's declaration, for the dataclass field bound to it (Option.field):
    no backend module is imported."""
    return _DECLARED[key]


_catalogue_cache: dict[tuple, tuple[Option, ...]] = {}


def all_options() -> tuple[Option, ...]:
    """Every option: the core ones, then each registered backend's own (Backend.options).
    An option several backends declare (the same key) is one option that applies to all of
    them (choices joined, help joined); it must agree on everything else."""
    from .backends.base import BACKENDS, BASELINE_BACKEND, default_backends, present_backends

    registered = tuple((name, BACKENDS.get(name)) for name in BACKENDS.names())
    cached = _catalogue_cache.get(registered)
    if cached is not None:
        return cached
    names = ", ".join(BACKENDS.names())
    core = [_fill(o, backends=names, baseline=BASELINE_BACKEND) for o in CORE_OPTIONS]
    core = [dataclasses.replace(o, default=default_backends()) if o.key == "backends" else o for o in core]
    merged: dict[str, Option] = {}
    for name, backend in present_backends().items():
        for option in backend.options:
            option = dataclasses.replace(option, applies_to=(name,))
            merged[option.key] = _merge(merged[option.key], option) if option.key in merged else option
    found = tuple(core) + tuple(merged.values())
    keys = [o.key for o in found]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"option keys declared twice (a backend option may not reuse a core option's key): {', '.join(duplicates)}")
    _catalogue_cache.clear()
    _catalogue_cache[registered] = found
    return found


def _fill(option: Option, **names: str) -> Option:
    return dataclasses.replace(option, help=option.help.format(**names)) if "{" in option.help else option


def _merge(first: Option, second: Option) -> Option:
    """One option declared by two backends: the same flag, kind and places, their choices
    and help joined, applying to both."""
    same = dataclasses.replace(second, help=first.help, choices=first.choices, applies_to=first.applies_to)
    if same != first:
        differ = [f.name for f in dataclasses.fields(Option) if getattr(same, f.name) != getattr(first, f.name)]
        raise ValueError(f"backends {', '.join(first.applies_to)} and {second.applies_to[0]} declare option {first.key!r} differently ({', '.join(differ)})")
    choices = tuple(dict.fromkeys(first.choices + second.choices))
    helps = first.help if second.help in first.help else f"{first.help}; {second.help}"
    return dataclasses.replace(first, choices=choices, help=helps, applies_to=first.applies_to + second.applies_to)


def backend_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The values of every backend's own options (BackendOptions.own): each backend binds
    the ones it declared to its own typed options."""
    return {o.key: settings[o.key] for o in all_options() if o.applies_to}


_by_key_cache: dict[int, dict[str, Option]] = {}


def by_key() -> dict[str, Option]:
    """key -> option of the catalogue, made once per catalogue (Settings and every check read it)."""
    found = all_options()
    if id(found) not in _by_key_cache:
        _by_key_cache.clear()
        _by_key_cache[id(found)] = {o.key: o for o in found}
    return _by_key_cache[id(found)]


def by_step() -> dict[str, Option]:
    """The flag that asks for each step."""
    return {o.step: o for o in CORE_OPTIONS if o.step}


BY_STEP: dict[str, Option] = by_step()


def __getattr__(name: str) -> Any:
    # OPTIONS and BY_KEY follow the registry (a backend registered later adds its options)
    if name == "OPTIONS":
        return all_options()
    if name == "BY_KEY":
        return by_key()
    raise AttributeError(name)


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(o for o in all_options() if command in o.commands)


def click_options(command: str):
    """Decorator adding every option ``command`` takes, in declaration order."""

    def decorate(f):
        for option in reversed(options_for(command)):
            f = option.click_option(command)(f)
        return f

    return decorate


def device_options() -> tuple[Option, ...]:
    return tuple(o for o in all_options() if o.on_device)


def recipe_options() -> dict[str, dict[str, Option]]:
    """section -> key -> option, for the recipe schema ('' is the top level)."""
    found: dict[str, dict[str, Option]] = {}
    for option in all_options():
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
        known = by_key()
        unknown = set(given) - set(known)
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
        self._given = {k: v for k, v in given.items() if v is not None and not (known[k].kind == "list" and v == ())}
        self._values = {o.key: _normalise(o, self._given.get(o.key, o.default)) for o in known.values()}

    def bind(self, cls: type[T], **given: Any) -> T:
        """These settings as the typed options dataclass ``cls`` consumes (edgekit.option.bind)."""
        return bind(cls, self, **given)

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


def defaults() -> dict[str, Any]:
    """Every option's default, normalised."""
    return {o.key: _normalise(o, o.default) for o in all_options()}


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
    option = by_key()[key]
    return settings[key] != _normalise(option, option.default)


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
        steps = {o.step for o in CORE_OPTIONS if o.step and settings[o.key]}
    else:
        steps = {part for variant in variants for part in variant.split("+")}
    context = _Context(settings, frozenset(steps), bool(backends) or recipe, recipe, variants is not None)
    for option in all_options():
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
        name = self.name(by_key()[key])
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


def keyword_options(commands: Sequence[str] = COMMANDS) -> dict[str, Option]:
    """Python keyword -> option, for the options of ``commands``: each option's key (the
    Settings and recipe name) and its flag in Python form (``--dw-layer`` -> ``dw_layer``,
    ``--backend`` -> ``backend``), so the Python API takes the names ``--help`` shows too."""
    names: dict[str, Option] = {}
    for option in all_options():
        if set(commands) & set(option.commands):
            names[option.key] = option
            if option.flag:
                names.setdefault(option.flag[2:].replace("-", "_"), option)
    return names
