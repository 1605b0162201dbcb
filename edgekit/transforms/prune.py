"""Make a PyTorch classifier smaller: structured channel pruning, or zeroed weights (sparsity).

Channel pruning removes whole output channels of Conv/Linear layers, so the pruned model
is a smaller dense model that every backend runs faster. Which layers must lose the same
channels (both sides of a residual add, the inputs of a concatenation, a depthwise conv
and the conv feeding it, a squeeze-excite gate and the tensor it scales) is worked out by
torch-pruning's dependency graph, traced from one forward pass; nothing here tracks
dependencies by hand. Channels are ranked by the L1 or L2 norm of their weights, or by a
first-order Taylor estimate of the loss change (which needs images).

Sparsity zeroes weights in place and keeps shapes: unstructured (a fraction of the
smallest-magnitude weights of every layer) or N:M semi-structured (in every run of M
consecutive weights along the input dimension, only the N largest survive; 2:4 is what
sparse tensor cores accelerate). The tensors stay dense: only a backend with sparse
kernels gains speed from it, though the zeros compress well.

A pruned model no longer matches its architecture's constructor. ``pruned_state_dict``
records the shapes and the integer attributes (channel counts, groups) that changed, as
plain tensors, numbers and strings, so ``torch.load(path, weights_only=True)`` reads it
and ``load_pruned`` rebuilds the model from a freshly built, unpruned one.

By default the stem (first Conv2d) and the classifier keep their output channels: the
stem is cheap and everything downstream depends on its features; the classifier's
outputs are the classes. The classifier's *input* features still follow the layer that
feeds it, and layers whose channels are tied to a protected layer (a depthwise conv right
after the stem, residual stages joined to the stem by an add) are left whole as well.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..core import CheckpointMismatchError, DataError, EdgekitError, UsageError
from ..options import declared
from ..progress import Progress
from ..progress import quiet as _quiet

if TYPE_CHECKING:
    import torch
    from torch import nn

CRITERIA = declared("prune_criterion").choices
SCOPES = declared("prune_scope").choices
TAYLOR_BATCH = 32
PRUNED_STATE_FORMAT = "edgekit-pruned-state/1"


# --------------------------------------------------------------------------- options and report


@dataclass(frozen=True)
class PruneOptions:
    """``ratio``: fraction of the output channels removed from each prunable group
    (``uniform``), or from all of them ranked together (``global``, which takes more from
    layers whose channels matter less). ``iterative_steps`` > 1 reaches the ratio in
    equal steps, re-ranking after each (with ``taylor``, on fresh gradients).
    ``round_to``: every pruned layer keeps a multiple of this many channels. CPU and GPU
    convolution kernels work on blocks of 8 or 16 channels; odd counts fall off their fast
    paths, and a pruned model can then run slower than the original (measured on ONNX
    Runtime, MobileNetV2 pruned 30%, see benchmarks/results/prune.md)."""

    ratio: float = declared("prune").field()
    criterion: str = declared("prune_criterion").field()
    scope: str = declared("prune_scope").field()
    protect_stem: bool = True
    protect_classifier: bool = True
    iterative_steps: int = 1
    round_to: int = declared("prune_round_to").field()

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            raise UsageError(f"pruning ratio must be between 0 and 1 (exclusive), got {self.ratio!r}")
        if self.criterion not in CRITERIA:
            raise UsageError(f"unknown pruning criterion {self.criterion!r}; use one of {', '.join(CRITERIA)}")
        if self.scope not in SCOPES:
            raise UsageError(f"unknown pruning scope {self.scope!r}; use one of {', '.join(SCOPES)}")
        if isinstance(self.iterative_steps, bool) or not isinstance(self.iterative_steps, int) or self.iterative_steps < 1:
            raise UsageError(f"iterative steps must be a whole number >= 1, got {self.iterative_steps!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise UsageError(f"channel rounding must be a whole number >= 1, got {self.round_to!r}")


@dataclass(frozen=True)
class PruneReport:
    options: PruneOptions
    ratio: float  # asked
    params_before: int
    params_after: int
    macs_before: int  # multiply-accumulates for one example input (its batch size included)
    macs_after: int
    layers: tuple[tuple[str, int, int], ...]  # (module name, output channels before, after), pruned layers only
    skipped: tuple[tuple[str, str], ...]  # (module name, why its output channels were kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.options),
            "ratio": self.ratio,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_kept": self.params_after / self.params_before if self.params_before else None,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_kept": self.macs_after / self.macs_before if self.macs_before else None,
            "layers": [{"name": n, "before": b, "after": a} for n, b, a in self.layers],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }


# --------------------------------------------------------------------------- finding layers


def weight_layers(module: "nn.Module") -> list[tuple[str, "nn.Module"]]:
    """(name, layer) of every Conv (any dimension) and Linear, in module order."""
    from torch import nn

    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def find_stem(module: "nn.Module") -> Optional[tuple[str, "nn.Module"]]:
    """The first Conv2d in module order."""
    from torch import nn

    return next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)


def find_classifier(module: "nn.Module", num_classes: Optional[int] = None) -> Optional[tuple[str, "nn.Module"]]:
    """The last Linear or Conv2d with ``num_classes`` outputs; without a match (or without
    ``num_classes``), the last Linear."""
    from torch import nn

    named = list(module.named_modules())
    if num_classes is not None:
        matches = [
            (n, m) for n, m in named
            if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)
        ]
        if matches:
            return matches[-1]
    linears = [(n, m) for n, m in named if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def protected_layers(
    module: "nn.Module", protect_stem: bool, protect_classifier: bool, num_classes: Optional[int] = None
) -> dict["nn.Module", tuple[str, str]]:
    """Layer -> (name, role) for the stem and classifier asked to be protected."""
    found: dict = {}
    if protect_stem and (stem := find_stem(module)) is not None:
        found[stem[1]] = (stem[0], "stem")
    if protect_classifier and (head := find_classifier(module, num_classes)) is not None:
        found.setdefault(head[1], (head[0], "classifier"))
    return found


def _output_channels(module: "nn.Module") -> dict[str, int]:
    from torch import nn

    return {n: (m.out_features if isinstance(m, nn.Linear) else m.out_channels) for n, m in weight_layers(module)}


# --------------------------------------------------------------------------- structured pruning


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _as_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or len(images) == 0:
        shape = getattr(images, "shape", None)
        raise DataError(f"expected a non-empty NCHW image array, got {type(images).__name__} of shape {shape}")
    return np.ascontiguousarray(images, dtype=np.float32)


def _forward(module: "nn.Module", example_input: "torch.Tensor") -> "torch.Tensor":
    import torch

    with torch.no_grad():
        return module(example_input)


def _count(module: "nn.Module", example_input: "torch.Tensor") -> tuple[int, int]:
    """(MACs, parameters) as torch-pruning counts them."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, example_input)
    return int(macs), int(params)


def _importance(criterion: str):
    import torch_pruning as tp

    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)


def _build_pruner(module: "nn.Module", example_input: "torch.Tensor", options: PruneOptions, ignored: list):
    """torch-pruning's pruner (it traces ``module`` into a dependency graph); a model it
    cannot trace becomes an EdgekitError."""
    import torch_pruning as tp

    try:
        with warnings.catch_warnings():
            # Bare nn.Parameters are reported in PruneReport.skipped instead (see _kept_whole).
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.pruner.BasePruner(
                module,
                example_input,
                importance=_importance(options.criterion),
                global_pruning=options.scope == "global",
                pruning_ratio=options.ratio,
                iterative_steps=options.iterative_steps,
                ignored_layers=ignored,
                round_to=options.round_to if options.round_to > 1 else None,
            )
    except Exception as e:
        raise EdgekitError(f"torch-pruning cannot trace {type(module).__name__} for pruning: {_first_line(e)}") from e


def _group_members(graph, group) -> tuple[list, list]:
    """(layers whose output channels the group removes, bare nn.Parameters it touches)."""
    from torch_pruning import ops

    layers, parameters = [], []
    for dep, _ in group:
        target = dep.target
        if target.type == ops.OPTYPE.PARAMETER:
            parameters.append(target.module)
        elif graph.is_out_channel_pruning_fn(dep.handler):
            layers.append(target.module)
    return layers, parameters


def _kept_whole(graph, module: "nn.Module", protected: dict) -> dict["nn.Module", str]:
    """Layer -> reason, for layers whose output channels must not change: the protected
    ones, those tied to them, and those tied to a bare nn.Parameter (a tensor that no
    registered layer owns: torch-pruning can only guess which of its axes holds channels)."""
    import torch_pruning as tp

    parameter_names = {id(p): n for n, p in module.named_parameters()}
    reasons = {layer: f"protected {role}" for layer, (_, role) in protected.items()}
    root_types = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]
    for group in graph.get_all_groups(ignored_layers=[], root_module_types=root_types):
        layers, parameters = _group_members(graph, group)
        tied_to = [protected[m] for m in layers if m in protected]
        for layer in layers:
            if layer in reasons:
                continue
            if tied_to:
                name, role = tied_to[0]
                reasons[layer] = f"shares its channels with the protected {role} {name}"
            elif parameters:
                names = ", ".join(parameter_names.get(id(p), "?") for p in parameters)
                reasons[layer] = f"its channels reach the bare parameter {names}, whose channel axis torch-pruning only guesses"
    return reasons


def _pseudo_labels(module: "nn.Module", images: np.ndarray) -> "torch.Tensor":
    """The unpruned model's own top-1 classes: the targets for Taylor gradients.

    Not the KL to the unpruned model: before the first step the model *is* the unpruned
    one, the KL is at its minimum and every gradient is zero.
    """
    import torch

    with torch.no_grad():
        return torch.cat([
            module(torch.from_numpy(images[i : i + TAYLOR_BATCH])).argmax(dim=1)
            for i in range(0, len(images), TAYLOR_BATCH)
        ])


def _taylor_gradients(module: "nn.Module", images: np.ndarray, targets: "torch.Tensor") -> None:
    """Leave in every parameter's .grad the gradient of the mean cross-entropy on the
    pseudo-labels (BatchNorm statistics fixed: the module is in eval mode here)."""
    import torch
    import torch.nn.functional as F

    module.zero_grad(set_to_none=True)
    for i in range(0, len(images), TAYLOR_BATCH):
        logits = module(torch.from_numpy(images[i : i + TAYLOR_BATCH]))
        loss = F.cross_entropy(logits, targets[i : i + TAYLOR_BATCH], reduction="sum") / len(images)
        loss.backward()


def _prune_steps(pruner, module, options: PruneOptions, images, targets, progress: Progress) -> None:
    graph = pruner.DG
    for step in range(1, options.iterative_steps + 1):
        if targets is not None:
            _taylor_gradients(module, images, targets)
        for group in pruner.step(interactive=True):
            if _group_members(graph, group)[1]:  # touches a bare parameter; see _kept_whole
                continue
            group.prune()
        progress("prune", step, options.iterative_steps)
    module.zero_grad(set_to_none=True)


def _check_still_runs(module: "nn.Module", example_input: "torch.Tensor", expected_shape: tuple[int, ...]) -> None:
    try:
        shape = tuple(_forward(module, example_input).shape)
    except Exception as e:
        raise EdgekitError(f"pruning left {type(module).__name__} unable to run: {_first_line(e)}") from e
    if shape != expected_shape:
        raise EdgekitError(f"pruning changed the output of {type(module).__name__} from {tuple(expected_shape)} to {shape}")


def prune_module(
    module: "nn.Module",
    example_input: "torch.Tensor",
    options: PruneOptions,
    images: Optional[np.ndarray] = None,
    progress: Progress = _quiet,
) -> PruneReport:
    """Remove output channels from ``module`` in place; return what changed.

    ``example_input`` (e.g. ``torch.zeros(1, 3, 224, 224)``) is traced to find the
    channel dependencies and used to count MACs. ``images`` (float32 NCHW, the model's
    preprocessing already applied) are needed by the ``taylor`` criterion only. The
    module's train/eval mode is restored afterwards; its BatchNorm statistics are kept
    for the channels that remain (recalibrate or distil to recover accuracy).
    """
    import torch

    if options.criterion == "taylor" and images is None:
        raise UsageError("the taylor pruning criterion needs images for its gradients; pass images or use l1/l2")
    images = _as_images(images) if options.criterion == "taylor" else None
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():  # torch-pruning traces through autograd
            return _prune_in_eval_mode(module, example_input, options, images, progress)
    finally:
        module.train(was_training)


def _run_once(module: "nn.Module", example_input: "torch.Tensor") -> tuple[tuple[int, ...], list[str]]:
    """(output shape, names of the Conv/Linear layers the forward pass calls)."""
    import torch

    called: list[str] = []
    hooks = [
        layer.register_forward_hook(lambda *_, name=name: called.append(name))
        for name, layer in weight_layers(module)
    ]
    try:
        output = _forward(module, example_input)
    except Exception as e:
        raise EdgekitError(f"{type(module).__name__} does not run on the example input: {_first_line(e)}") from e
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(output, torch.Tensor):
        raise EdgekitError(f"{type(module).__name__} returns {type(output).__name__}, not a tensor of logits; it cannot be pruned")
    return tuple(output.shape), called


def _check_traced(module: "nn.Module", called: list[str], traced: set) -> None:
    """torch-pruning follows autograd from the output back: a layer run without autograd,
    or whose result never reaches the output, is invisible to it, and silently so.
    Pruning around such a layer would break the model."""
    layers = dict(module.named_modules())
    unseen = [name for name in dict.fromkeys(called) if layers[name] not in traced]
    if unseen:
        more = f" and {len(unseen) - 3} more" if len(unseen) > 3 else ""
        raise EdgekitError(
            f"torch-pruning cannot trace {type(module).__name__}: it does not see {', '.join(unseen[:3])}{more} "
            "(run without autograd, or not reaching the output)"
        )


def _prune_in_eval_mode(module, example_input, options: PruneOptions, images, progress: Progress) -> PruneReport:
    output_shape, called = _run_once(module, example_input)
    num_classes = output_shape[-1] if len(output_shape) >= 2 else None
    protected = protected_layers(module, options.protect_stem, options.protect_classifier, num_classes)
    macs_before, params_before = _count(module, example_input)
    channels_before = _output_channels(module)
    targets = _pseudo_labels(module, images) if images is not None else None

    progress("prune", 0, options.iterative_steps)
    pruner = _build_pruner(module, example_input, options, ignored=list(protected))
    kept_whole = _kept_whole(pruner.DG, module, protected)
    traced = set(pruner.DG.module2node)
    _check_traced(module, called, traced)
    _prune_steps(pruner, module, options, images, targets, progress)
    _check_still_runs(module, example_input, output_shape)

    macs_after, params_after = _count(module, example_input)
    channels_after = _output_channels(module)
    layers_by_name = dict(module.named_modules())
    pruned, skipped = [], []
    for name, before in channels_before.items():
        after = channels_after[name]
        if after < before:
            pruned.append((name, before, after))
            continue
        layer = layers_by_name[name]
        if layer in kept_whole:
            reason = kept_whole[layer]
        elif layer not in traced:
            reason = "not called by the forward pass"
        else:
            reason = f"torch-pruning removed none of its {before} channels"
        skipped.append((name, reason))
    return PruneReport(
        options=options,
        ratio=float(options.ratio),
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        layers=tuple(pruned),
        skipped=tuple(skipped),
    )


# --------------------------------------------------------------------------- sparsity


def parse_sparsity(spec: str) -> tuple[int, int] | float:
    """``"0.5"`` -> 0.5 (unstructured fraction); ``"2:4"`` -> (2, 4) (keep N of every M)."""
    text = str(spec).strip()
    problem = f"sparsity {spec!r}: use a fraction between 0 and 1 such as 0.5, or N:M such as 2:4"
    if ":" in text:
        try:
            n, m = (int(part) for part in text.split(":"))
        except ValueError:
            raise UsageError(problem) from None
        if not 0 < n < m:
            raise UsageError(problem)
        return n, m
    try:
        fraction = float(text)
    except ValueError:
        raise UsageError(problem) from None
    if not 0.0 < fraction < 1.0:
        raise UsageError(problem)
    return fraction


def _magnitude_mask(weight: "torch.Tensor", fraction: float) -> "torch.Tensor":
    """1 everywhere except the round(fraction * size) smallest |weight| (exactly that many, ties included)."""
    import torch

    mask = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
    count = int(round(weight.numel() * fraction))
    if count:
        mask[torch.topk(weight.abs().flatten(), count, largest=False).indices] = 0
    return mask.view_as(weight)


def _n_m_mask(weight: "torch.Tensor", n: int, m: int) -> "torch.Tensor":
    """Keep the n largest |weight| of every m consecutive weights along dimension 1 (the inputs)."""
    import torch

    by_input = weight.movedim(1, -1)  # (out, *kernel, in): runs of m along the inputs
    runs = by_input.abs().reshape(-1, m)
    mask = torch.zeros_like(runs)
    mask.scatter_(1, torch.topk(runs, n, dim=1).indices, 1.0)
    return mask.reshape(by_input.shape).movedim(-1, 1)


def apply_sparsity(
    module: "nn.Module", spec: str, protect_stem: bool = True, protect_classifier: bool = True
) -> dict[str, Any]:
    """Zero weights of every Conv/Linear in place (dense tensors, same shapes); return the
    sparsity reached, for a manifest.

    ``spec`` ``"0.5"``: the 50% smallest-magnitude weights of each layer. ``"2:4"``: in
    every 4 consecutive weights along the input dimension, the 2 largest survive; layers
    whose inputs per group are not a multiple of 4 (a 3-channel stem, depthwise convs)
    are skipped. Fractions count every zero, including any that were there before.
    """
    import torch

    pattern = parse_sparsity(spec)
    protected = protected_layers(module, protect_stem, protect_classifier)
    layers: dict[str, float] = {}
    skipped: dict[str, str] = {}
    zeros = total = all_zeros = all_total = 0
    with torch.no_grad():
        for name, layer in weight_layers(module):
            weight = layer.weight
            if layer in protected:
                skipped[name] = f"protected {protected[layer][1]}"
            elif isinstance(pattern, tuple) and weight.shape[1] % pattern[1]:
                skipped[name] = f"{weight.shape[1]} inputs per output are not a multiple of {pattern[1]}"
            else:
                mask = _n_m_mask(weight, *pattern) if isinstance(pattern, tuple) else _magnitude_mask(weight, pattern)
                weight.mul_(mask)
                layer_zeros = int((weight == 0).sum())
                layers[name] = layer_zeros / weight.numel()
                zeros += layer_zeros
                total += weight.numel()
            all_zeros += int((weight == 0).sum())
            all_total += weight.numel()
    return {
        "spec": str(spec).strip(),
        "pattern": "unstructured" if isinstance(pattern, float) else f"{pattern[0]}:{pattern[1]}",
        "sparsity": zeros / total if total else 0.0,  # over the layers sparsified
        "sparsity_all_weights": all_zeros / all_total if all_total else 0.0,  # every Conv/Linear weight
        "weights_sparsified": total,
        "layers": layers,
        "skipped": skipped,
    }


# --------------------------------------------------------------------------- saving a pruned model


def _is_whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _structural_attributes(layer: "nn.Module") -> dict[str, Any]:
    """Public integer attributes (and tuples of them) set on the instance: channel counts,
    groups, kernel sizes. Pruning changes some of them; forward() reads them."""
    found = {}
    for key, value in vars(layer).items():
        if key.startswith("_"):
            continue
        if _is_whole_number(value) or (isinstance(value, tuple) and value and all(_is_whole_number(v) for v in value)):
            found[key] = value
    return found


def pruned_state_dict(module: "nn.Module") -> dict[str, Any]:
    """Everything needed to rebuild a pruned ``module`` from its unpruned architecture, as
    tensors, ints, strs, tuples and dicts only (``torch.load(..., weights_only=True)`` reads it)."""
    return {
        "format": PRUNED_STATE_FORMAT,
        "module_type": type(module).__qualname__,
        "tensors": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "attributes": {name: attrs for name, m in module.named_modules() if (attrs := _structural_attributes(m))},
    }


def _resize_tensor_slots(base: "nn.Module", tensors: dict[str, "torch.Tensor"]) -> None:
    """Give every parameter and buffer of ``base`` the saved shape (values come later)."""
    import torch
    from torch import nn

    owners = dict(base.named_modules())
    for key, saved in tensors.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = owners.get(owner_name)
        if owner is not None and leaf in owner._parameters:
            old = owner._parameters[leaf]
            if old is None or old.shape != saved.shape:
                requires_grad = True if old is None else old.requires_grad
                owner._parameters[leaf] = nn.Parameter(torch.empty_like(saved), requires_grad=requires_grad)
        elif owner is not None and leaf in owner._buffers:
            old = owner._buffers[leaf]
            if old is None or old.shape != saved.shape:
                owner._buffers[leaf] = torch.empty_like(saved)
        else:
            raise CheckpointMismatchError(f"pruned state holds {key}, which {type(base).__name__} does not have")


def load_pruned(base_module: "nn.Module", state: dict[str, Any]) -> "nn.Module":
    """Reshape a freshly built, unpruned ``base_module`` to the saved pruned one and load
    its weights, in place; returns it. ``state`` is what ``pruned_state_dict`` returned."""
    if not isinstance(state, dict) or state.get("format") != PRUNED_STATE_FORMAT:
        raise CheckpointMismatchError(f"not an edgekit pruned state (expected format {PRUNED_STATE_FORMAT})")
    if state["module_type"] != type(base_module).__qualname__:
        raise CheckpointMismatchError(
            f"pruned state is for a {state['module_type']}, not a {type(base_module).__qualname__}"
        )
    modules = dict(base_module.named_modules())
    for name, attrs in state["attributes"].items():
        if name not in modules:
            raise CheckpointMismatchError(f"pruned state names module {name!r}, which {type(base_module).__name__} lacks")
        for key, value in attrs.items():
            if key in vars(modules[name]):
                setattr(modules[name], key, value)
    _resize_tensor_slots(base_module, state["tensors"])
    try:
        base_module.load_state_dict(state["tensors"], strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(f"pruned state does not fit {type(base_module).__name__}: {_first_line(e)}") from None
    return base_module
