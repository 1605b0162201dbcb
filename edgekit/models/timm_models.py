"""The timm source: any timm model as ``timm/<name>``, its weights read only from the local Hugging Face cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..core import ModelSpec, Preprocessing, UnknownModelError, WeightsUnavailableError, sha256_file
from .checkpoints import _fit_state, read_checkpoint
from .entry import OFFLINE_ALTERNATIVES, ModelEntry

TIMM_PREFIX = "timm/"


def _timm_entry(name: str) -> ModelEntry:
    import timm

    arch = name[len(TIMM_PREFIX):]
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown timm model {arch!r}{hint}")
    cfg = timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875))
    spec = ModelSpec(
        name=name,
        family=timm.models.get_arch_name(arch) if hasattr(timm.models, "get_arch_name") else arch,
        source="timm",
        preprocessing=Preprocessing(
            input_size=size,
            resize_size=int(size / crop_pct),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        ),
        num_classes=int(cfg.get("num_classes", 1000)),
        offline_weights=_timm_cached_weights(cfg) is not None,
    )

    def load_pretrained(module: Any) -> str:
        path = _timm_cached_weights(cfg)
        if path is None:
            raise WeightsUnavailableError(
                f"timm weights for {arch} ({cfg.get('hf_hub_id') or 'no hub id'}) are not in the local Hugging Face "
                "cache and edgekit does not download them; " + OFFLINE_ALTERNATIVES
            )
        state, _ = read_checkpoint(path)
        _fit_state(module, state, path, name)
        return f"timm:{cfg.get('hf_hub_id')}:{sha256_file(path)[:16]}"

    def build(num_classes: int = spec.num_classes) -> Any:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)

    return ModelEntry(spec=spec, build=build, load_pretrained=load_pretrained)


def _timm_cached_weights(cfg: dict) -> Optional[Path]:
    """timm's pretrained file for ``cfg`` when it is already in the local Hugging Face
    cache (read without any network access), else None."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None
