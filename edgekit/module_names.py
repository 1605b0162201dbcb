"""PyTorch module paths from the node names torch.onnx writes (its scope names).

Torch-free and dependency-free: the profiler's tables and the quantizer's report both name
layers this way, and bundles carry it.
"""

from __future__ import annotations

from typing import Optional


def module_path(node_name: str) -> Optional[str]:
    """'/blocks/blocks.0/blocks.0.0/conv_dw/Conv' -> 'blocks.0.0.conv_dw' (torch.onnx's scope
    names: each level is an attribute name, or the previous level's name extended by an index)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return None
    qualified = last = ""
    for part in parts[:-1]:
        if last and part.startswith(last + "."):  # the same chain, one level deeper
            qualified = qualified[: len(qualified) - len(last)] + part
        else:
            qualified = f"{qualified}.{part}" if qualified else part
        last = part
    return qualified or None
