"""Classifier heads: finding the head layer, and a fresh head of another width for transfer learning."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core import CheckpointMismatchError, ClassSet
from .catalog import get_entry
from .entry import RANDOM_INIT_SEED, LoadedModel


def with_new_head(loaded: LoadedModel, classes: ClassSet) -> LoadedModel:
    """The same network with a freshly initialised ``classes.count``-way head: every other
    weight copied from ``loaded`` (transfer learning starts here)."""
    import torch

    entry = get_entry(loaded.spec.name)
    torch.manual_seed(RANDOM_INIT_SEED)
    module = entry.build(num_classes=classes.count)
    own = module.state_dict()
    kept = {k: v for k, v in loaded.module.state_dict().items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    fresh = [k for k in own if k not in kept]
    head = find_head(module, classes.count)
    if any(not k.startswith(head + ".") for k in fresh):
        raise CheckpointMismatchError(f"{loaded.spec.name}: more than the head would change ({[k for k in fresh if not k.startswith(head + '.')][:2]})")
    module.load_state_dict(kept, strict=False)
    layer = dict(module.named_modules())[head]
    with torch.no_grad():  # a zero head starts at the uniform prediction: no large first gradients into pretrained features
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
    module.eval()
    spec = dataclasses.replace(loaded.spec, num_classes=classes.count)
    return dataclasses.replace(loaded, spec=spec, module=module, classes=classes)


def find_head(module: Any, count: int) -> str:
    """The dotted name of the classifier layer with ``count`` outputs."""
    from ..transforms.prune import find_classifier

    head = find_classifier(module, count)
    if head is None:
        raise CheckpointMismatchError("cannot find the classifier layer of the model")
    return head[0]
