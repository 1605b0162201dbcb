"""Model complexity: parameters and GMACs, counted on the meta device."""

from __future__ import annotations

from typing import Any

from .catalog import get_entry


def measure_complexity(module: Any, input_size: int) -> tuple[float, float]:
    """(params in millions, GMACs for one image) of a module, on whatever device it lives.

    Build it under ``torch.device("meta")`` to count without memory or compute. GMACs
    follow torchvision's "GFLOPS" convention: one multiply-add counts once.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(module.parameters()).device
    params = sum(p.numel() for p in module.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(torch.empty(1, 3, input_size, input_size, device=device))
    return params / 1e6, counter.get_total_flops() / 2e9


def complexity_of(name: str) -> tuple[float, float]:
    """Params (M) and GMACs of a registered model at its own input size, built on meta."""
    import torch

    entry = get_entry(name)
    size = entry.spec.preprocessing.input_size
    try:
        with torch.device("meta"):
            return measure_complexity(entry.build(), size)
    except (NotImplementedError, RuntimeError):  # a few builders (RegNet) need real tensors
        return measure_complexity(entry.build(), size)
