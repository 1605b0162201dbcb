"""Model names -> entries: the registry of torchvision and EfficientNet-Lite names, and the ``timm/`` prefix."""

from __future__ import annotations

import functools
from typing import Callable

from ..core import ModelSpec, UnknownModelError
from ..registry import Registry
from .efficientnet_lite import _LITE_FACTS, _efficientnet_lite_entry
from .entry import ModelEntry
from .timm_models import TIMM_PREFIX, _timm_entry
from .torchvision_models import _torchvision_entry


@functools.lru_cache(maxsize=1)
def model_registry() -> Registry[Callable[[], ModelEntry]]:
    """Names -> lazy entry factories (building a spec imports torchvision)."""
    import torchvision.models as tvm

    registry: Registry[Callable[[], ModelEntry]] = Registry("model", UnknownModelError)
    for n in _LITE_FACTS:
        registry.register(f"efficientnet_lite{n}", functools.partial(_efficientnet_lite_entry, n))
    for name in sorted(tvm.list_models(module=tvm)):
        registry.register(name, functools.partial(_torchvision_entry, name))
    return registry


@functools.lru_cache(maxsize=None)
def get_entry(name: str) -> ModelEntry:
    if name.startswith(TIMM_PREFIX):
        return _timm_entry(name)
    return model_registry().get(name)()


def get_spec(name: str) -> ModelSpec:
    return get_entry(name).spec


def list_model_names() -> list[str]:
    return model_registry().names()
