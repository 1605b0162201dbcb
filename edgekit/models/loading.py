"""Building a named model in eval mode with its weights (pretrained, a checkpoint, or seeded random) and the class set its head predicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ..core import CheckpointMismatchError, ClassSet, UsageError, imagenet_class_set, sha256_file
from .catalog import get_entry
from .checkpoints import _checkpoint_limit, _fit_state, read_checkpoint
from .entry import RANDOM_INIT_SEED, LoadedModel, ModelEntry


def load_from_manifest(manifest: dict) -> "LoadedModel":
    """The exact module an artifact was exported from (its model section), at its input size."""
    model = manifest["model"]
    source = model["weights_source"]
    classes = ClassSet.from_dict(model.get("classes"), model.get("num_classes"))
    loaded = load_model(
        model["name"],
        weights_file=Path(source["path"]) if source["kind"] == "file" else None,
        random_init=source["kind"] == "random-init",
        classes=classes,
        weights_key=source.get("key"),
    )
    size = int(manifest["preprocessing"]["input_size"])
    return loaded if size == loaded.spec.preprocessing.input_size else loaded.at_input_size(size)


def load_model(
    name: str,
    *,
    weights_file: Optional[Path] = None,
    random_init: bool = False,
    classes: Optional[ClassSet] = None,
    weights_key: Optional[str] = None,
) -> LoadedModel:
    """Build ``name`` in eval mode with the requested weights.

    The head's size comes from the checkpoint (``weights_file``), else from ``classes``
    (--num-classes / --classes), else the model's own (ImageNet-1k for pretrained weights).
    """
    import torch

    entry = get_entry(name)
    default = entry.spec.num_classes
    torch.manual_seed(RANDOM_INIT_SEED)  # random init (and anything stochastic in build) repeats
    if weights_file is not None:
        weights_file = Path(weights_file)
        state, meta = read_checkpoint(weights_file, weights_key, limit=_checkpoint_limit(entry, name))
        head = _head_width(entry, state)
        classes = _checkpoint_classes(classes, head, meta, weights_file, default)
        torch.manual_seed(RANDOM_INIT_SEED)
        module = entry.build(num_classes=classes.count)
        _fit_state(module, state, weights_file, name)
        weights_id = f"file:{sha256_file(weights_file)[:16]}" + (f":{weights_key}" if weights_key else "")
        desc = f"checkpoint {weights_file}"
    elif random_init:
        classes = classes or _default_classes(default)
        module = entry.build(num_classes=classes.count)
        weights_id = f"random-init:seed{RANDOM_INIT_SEED}"
        desc = "random init (no pretrained weights)"
    else:
        if classes is not None and classes.count != default:
            raise UsageError(
                f"the pretrained weights of {name} have {default} classes, not {classes.count}: give a checkpoint "
                f"with a {classes.count}-class head (--weights), or train one with `edgekit finetune {name} --data DIR`"
            )
        classes = classes or _default_classes(default)
        module = entry.build(num_classes=default)
        weights_id = entry.load_pretrained(module)
        desc = weights_id.split(":")[0] + " pretrained"
    module.eval()
    spec = entry.spec if classes.count == default else dataclasses.replace(entry.spec, num_classes=classes.count)
    return LoadedModel(spec=spec, module=module, weights_id=weights_id, weights_desc=desc, classes=classes)


def _default_classes(count: int) -> ClassSet:
    return imagenet_class_set() if count == 1000 else ClassSet(count, "unnamed head")


def _checkpoint_classes(asked: Optional[ClassSet], head: Optional[int], meta: dict, path: Path, default: int) -> ClassSet:
    """The class set of a checkpoint: what the user asked for, checked against the head's
    width; else the names the checkpoint carries (edgekit finetune writes them); else the
    head's width."""
    count = head if head is not None else default
    if asked is not None:
        if asked.count != count:
            raise CheckpointMismatchError(
                f"{asked.describe()} asked for, but the head of checkpoint {path} has {count} outputs"
            )
        if asked.named or not meta.get("classes"):
            return asked
    names = tuple(meta.get("classes") or ())
    if names and len(names) == count:
        return ClassSet(count, f"checkpoint {path.name}", names)
    return _default_classes(count) if count == default else ClassSet(count, f"head of checkpoint {path.name}")


def _head_width(entry: ModelEntry, state: dict) -> Optional[int]:
    """Output count of the checkpoint's classifier (the default model's head, found by name)."""
    import torch

    from ..transforms.prune import find_classifier

    with torch.device("meta"):
        try:
            probe = entry.build(num_classes=entry.spec.num_classes)
        except (NotImplementedError, RuntimeError):
            probe = None
    if probe is None:
        probe = entry.build(num_classes=entry.spec.num_classes)
    head = find_classifier(probe, entry.spec.num_classes)
    if head is None:
        return None
    key = f"{head[0]}.weight"
    tensor = state.get(key)
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim >= 1 else None
