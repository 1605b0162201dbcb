"""The torchvision source: every torchvision classification model, its preprocessing and its downloaded weights (torch hub cache)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from ..core import ModelSpec, Preprocessing, Reference, WeightsUnavailableError
from .entry import OFFLINE_ALTERNATIVES, ModelEntry


def _torchvision_entry(name: str) -> ModelEntry:
    import torchvision.models as tvm

    builder = tvm.get_model_builder(name)
    weights_enum = tvm.get_model_weights(name)
    default = weights_enum.DEFAULT
    kw = getattr(default.transforms, "keywords", {})
    crop = int(kw.get("crop_size", 224))
    resize = int(kw.get("resize_size", 256))
    interp = kw.get("interpolation")
    metrics = default.meta.get("_metrics", {}).get("ImageNet-1K", {})
    spec = ModelSpec(
        name=name,
        family=builder.__module__.rsplit(".", 1)[-1],
        source="torchvision",
        preprocessing=Preprocessing(
            input_size=crop,
            resize_size=resize,
            interpolation=interp.value if interp is not None else "bilinear",
        ),
        reference=Reference(
            params_m=default.meta["num_params"] / 1e6,
            gflops=default.meta.get("_ops"),
            top1=metrics.get("acc@1"),
            source=f"torchvision {default}",
        ),
        offline_weights=_torchvision_weights_cached(default),
    )

    def load_pretrained(module: Any) -> str:
        state = _download_torchvision_weights(name, default)
        own = module.state_dict()
        # Auxiliary training heads (GoogLeNet) are in the checkpoint but not in the deployed model.
        state = {k: v for k, v in state.items() if k in own or not k.startswith(_AUX_PREFIXES)}
        module.load_state_dict(state)
        return f"torchvision:{default}"

    def build(num_classes: int = 1000) -> Any:
        return builder(weights=None, num_classes=num_classes, **_torchvision_build_kwargs(name, crop))

    return ModelEntry(spec=spec, build=build, load_pretrained=load_pretrained)


_AUX_PREFIXES = ("aux1.", "aux2.")


def _torchvision_build_kwargs(name: str, crop: int) -> dict[str, Any]:
    """What torchvision's builders would set themselves when given the default weights."""
    if name == "googlenet":
        return {"aux_logits": False, "init_weights": True}
    if name == "inception_v3":
        return {"init_weights": True}  # keeps AuxLogits, as the pretrained model does
    if name.startswith("vit_") and crop != 224:
        return {"image_size": crop}
    return {}


def _torchvision_weights_cached(weights: Any) -> bool:
    import torch.hub

    filename = weights.url.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()


def _download_torchvision_weights(name: str, weights: Any) -> dict:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # an offline machine should fail fast, not hang
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as e:  # URLError, timeouts, DNS failures are all OSErrors
        raise WeightsUnavailableError(
            f"cannot download torchvision weights {weights} for {name} ({_short_reason(e)}); "
            + OFFLINE_ALTERNATIVES
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _short_reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return str(reason).splitlines()[0][:120]
