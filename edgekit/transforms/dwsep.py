"""Standard KxK convolutions -> depthwise KxK (channel multiplier r) + pointwise 1x1.

For one input channel c, the trained kernel's slice W[:, c] is a (C_out x K*K) matrix.
A depthwise filter bank with r filters on channel c followed by a pointwise convolution
computes P_c @ D_c, with P_c (C_out x r) and D_c (r x K*K): a rank-r factorisation of
that slice. The truncated SVD gives the best one (Eckart-Young), per input channel, so
the conversion starts from the closest depthwise-separable convolution to the trained
one; with r = K*K it is exact. Stride, padding and dilation move to the depthwise part;
the bias (and any BatchNorm after the conv, which stays where it is) to the pointwise.
"""

from __future__ import annotations

import copy
import functools

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..core import UsageError


@dataclass(frozen=True)
class LayerCandidate:
    name: str
    kernel: tuple[int, int]
    in_channels: int
    out_channels: int
    kernel_error: float  # ||W - W_r|| / ||W|| of the factorised kernel
    macs_before: int  # per image, at the given input size
    macs_after: int

    @property
    def saved(self) -> int:
        return self.macs_before - self.macs_after

    def to_dict(self) -> dict:
        return {**asdict(self), "saved": self.saved}


def is_candidate(conv: Any) -> bool:
    """A plain KxK convolution (groups 1, K > 1): what the conversion applies to."""
    import torch

    return isinstance(conv, torch.nn.Conv2d) and conv.groups == 1 and max(conv.kernel_size) > 1


def factorise(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(depthwise (r*Cin, 1, K, K), pointwise (Cout, r*Cin, 1, 1), relative error).

    Channel j*Cin + c holds input channel c's j-th filter: filter-major, so that the
    depthwise conv reads the input repeated r times (see separable_from)."""
    c_out, c_in, kh, kw = weight.shape
    r = min(rank, kh * kw, c_out)
    depthwise = np.zeros((c_in * r, 1, kh, kw), dtype=np.float64)
    pointwise = np.zeros((c_out, c_in * r, 1, 1), dtype=np.float64)
    residual = 0.0
    for c in range(c_in):
        u, s, vt = np.linalg.svd(weight[:, c].reshape(c_out, kh * kw).astype(np.float64), full_matrices=False)
        depthwise[c::c_in][:r, 0] = vt[:r].reshape(r, kh, kw)
        pointwise[:, c::c_in][:, :r, 0, 0] = u[:, :r] * s[:r]
        residual += float((s[r:] ** 2).sum())
    total = float((weight.astype(np.float64) ** 2).sum())
    error = (residual / total) ** 0.5 if total > 0 else 0.0
    return depthwise.astype(np.float32), pointwise.astype(np.float32), error


@functools.lru_cache(maxsize=1)
def _repeat_channels():
    from torch import nn

    class RepeatChannels(nn.Module):
        """The input r times along channels (a Concat in ONNX)."""

        def __init__(self, times: int):
            super().__init__()
            self.times = times

        def forward(self, x):
            import torch

            return torch.cat([x] * self.times, 1)

    return RepeatChannels


def separable_from(conv: Any, rank: int):
    """nn.Sequential(depthwise, pointwise) initialised from ``conv``, and its kernel error.

    With rank r > 1 the depthwise conv has r filters per input channel. It is built as
    Sequential(RepeatChannels(r), depthwise with one filter per channel, pointwise) rather
    than one conv with channel multiplier r: CPU runtimes have fast kernels for the first
    form only (resnet18, every KxK at r=2: OpenVINO 15.9 -> 8.7 ms, ONNX Runtime 12.1 ->
    9.9 ms, benchmarks/results/dw_rank_layout.md; the extra copy is cheap)."""
    import torch
    from torch import nn

    if not is_candidate(conv):
        raise UsageError("only KxK convolutions with groups=1 can be made depthwise-separable")
    if rank < 1:
        raise UsageError(f"--dw-rank must be >= 1, got {rank}")
    depthwise_w, pointwise_w, error = factorise(conv.weight.detach().cpu().numpy(), rank)
    channels = depthwise_w.shape[0]
    # A copy of the layer itself, so that subclasses keep their own padding rule (timm's
    # Conv2dSame pads TensorFlow-style in forward and has padding=0 in its attributes).
    depthwise = copy.deepcopy(conv)
    depthwise.in_channels = depthwise.out_channels = depthwise.groups = channels
    depthwise.weight = nn.Parameter(torch.from_numpy(depthwise_w).to(conv.weight.dtype))
    depthwise.register_parameter("bias", None)
    pointwise = nn.Conv2d(channels, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        pointwise.weight.copy_(torch.from_numpy(pointwise_w))
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias.detach())
    if channels == conv.in_channels:
        return nn.Sequential(depthwise, pointwise), error
    return nn.Sequential(_repeat_channels()(channels // conv.in_channels), depthwise, pointwise), error


def _output_sizes(module: Any, size: int) -> dict[str, tuple[int, int]]:
    """Spatial size of every candidate conv's output, from one forward pass."""
    import torch

    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, m in module.named_modules():
        if is_candidate(m):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))))
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return sizes


def layer_table(module: Any, rank: int, size: int) -> list[LayerCandidate]:
    """Every convertible layer with its kernel error and the MACs conversion saves."""
    sizes = _output_sizes(module, size)
    table = []
    for name, conv in module.named_modules():
        if name not in sizes:
            continue
        h, w = sizes[name]
        kh, kw = conv.kernel_size
        r = min(rank, kh * kw, conv.out_channels)
        _, _, error = factorise(conv.weight.detach().cpu().numpy(), rank)
        before = conv.in_channels * conv.out_channels * kh * kw * h * w
        after = conv.in_channels * r * kh * kw * h * w + conv.in_channels * r * conv.out_channels * h * w
        table.append(LayerCandidate(name, (kh, kw), conv.in_channels, conv.out_channels, error, before, after))
    return table


def convert(module: Any, names: Sequence[str], rank: int) -> dict[str, float]:
    """Replace the named convolutions in place; returns name -> kernel error."""
    modules = dict(module.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise UsageError(f"no layer named {unknown[0]!r}; convertible layers: {', '.join(n for n, m in modules.items() if is_candidate(m))}")
    errors = {}
    for name in names:
        if not is_candidate(modules[name]):
            raise UsageError(f"{name} is not a KxK convolution with groups=1")
        replacement, errors[name] = separable_from(modules[name], rank)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else module, child, replacement)
    return errors


def rank_by_saving_per_error(table: Sequence[LayerCandidate], min_saving: float = 0.0) -> list[LayerCandidate]:
    """Best MACs saved per unit of kernel error first; layers that save nothing are dropped."""
    useful = [c for c in table if c.saved > min_saving]
    return sorted(useful, key=lambda c: -c.saved / max(c.kernel_error, 1e-6))


def select_within_budget(
    table: Sequence[LayerCandidate],
    measure_error,
    budget: Optional[float],
    progress=lambda done, total: None,
) -> tuple[list[str], list[dict]]:
    """Greedy: add layers in saving-per-error order while ``measure_error(names)`` (the
    model's output error with those layers converted) stays within ``budget``; a layer
    that breaks the budget is skipped and the next one tried. No budget: all of them."""
    ordered = rank_by_saving_per_error(table)
    if budget is None:
        return [c.name for c in ordered], []
    chosen: list[str] = []
    trail = []
    for i, candidate in enumerate(ordered, 1):
        error = measure_error(chosen + [candidate.name])
        kept = error <= budget
        if kept:
            chosen.append(candidate.name)
        trail.append({"layer": candidate.name, "model_error": error, "kept": kept})
        progress(i, len(ordered))
    return chosen, trail
