"""Checkpoint files: reading a state dict without running code (safetensors, weights_only torch.load, training-script dicts, DDP prefixes), size limits, fitting it to a module."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..core import CheckpointMismatchError, WeightsUnavailableError
from .entry import ModelEntry

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
