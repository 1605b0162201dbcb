"""Decoding one view into a model input (CHW float32) under the process's one decode budget; unreadable files are UnreadableImage."""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from ..core import DataError, Preprocessing
from .images import VIEW_GRID, ImageView

_RESAMPLING = {
    "nearest": 0,  # PIL.Image.Resampling values, spelled out to import PIL lazily
    "bilinear": 2,
    "bicubic": 3,
    "lanczos": 1,
    "box": 4,
    "hamming": 5,
}


class UnreadableImage(DataError):
    """A file that cannot be decoded; ``reason`` is the decoder's own words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_UNSUPPORTED_HINTS = {".avif": "this Pillow cannot read AVIF (Pillow 11.3 or later can)"}

# The decode budget: the one rule every path that reads images goes through (evaluation
# workers, calibration, distillation, pruning, bundles, the on-device runner, fine-tuning).
# A file is measured from its header before any pixel is decoded: the estimated peak
# memory of decoding it and making its view (the decoded file, its RGB copy, the view's
# crop, the resized image, whose long side grows with the aspect ratio: a 317-byte
# 1 x 60,000 PNG resized to a short side of 256 is 15.4 million pixels tall). One image
# over the budget is skipped, named, with the reason; a JPEG over it is first decoded at
# a reduced DCT scale that keeps its short side at least the resize size. The decode
# threads of a process share the budget, so memory stays bounded however many threads
# decode at once.
DECODE_BUDGET_MB = 128
_DECODE_BUDGET = DECODE_BUDGET_MB * 2**20

# Bytes per pixel of Pillow's decoded modes, with the 16-bit and 32-bit greyscale
# scaling of _to_rgb (float64 values + 8-bit result); RGB conversion adds 4 where the mode is not RGB.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 12, "I;16B": 12, "I;16L": 12, "I;16N": 12, "I": 14, "F": 14}


class _Budget:
    """Bytes that decode threads of this process may hold at once; an image waits until
    its estimate fits beside the others' (one over the whole budget never gets here)."""

    def __init__(self, total: int):
        import threading

        self.total, self.free, self.cond = total, total, threading.Condition()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        cost = min(max(cost, 0), self.total)
        with self.cond:
            self.cond.wait_for(lambda: self.free >= cost)
            self.free -= cost
        try:
            yield
        finally:
            with self.cond:
                self.free += cost
                self.cond.notify_all()


_BUDGET = _Budget(_DECODE_BUDGET)
if hasattr(os, "register_at_fork"):  # a forked data-loader worker starts with its own, empty budget
    os.register_at_fork(after_in_child=lambda: globals().__setitem__("_BUDGET", _Budget(_DECODE_BUDGET)))


def _short_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``size`` (torchvision's truncation)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def decode_cost(size: tuple[int, int], mode: str, prep: Optional[Preprocessing] = None, scale: float = 1.0, extra_per_pixel: int = 0) -> int:
    """Estimated peak bytes of decoding an image of ``size`` and ``mode`` and making one
    view of it (``scale``: the view's crop; ``extra_per_pixel``: a caller's own copies)."""
    w, h = max(1, size[0]), max(1, size[1])
    pixels = w * h
    cost = pixels * (_MODE_BYTES.get(mode, 4) + (0 if mode == "RGB" else 4) + extra_per_pixel)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    if scale < 1.0:
        cost += 4 * cw * ch
    if prep is not None:
        rw, rh = _short_side_size(cw, ch, max(prep.resize_size, prep.input_size))
        cost += 4 * (rw * rh + rw * ch)  # the horizontal pass, then the resized image
    return cost


def _over_budget(path: Path, size: tuple[int, int], cost: int, prep: Optional[Preprocessing], scale: float) -> "UnreadableImage":
    w, h = size
    what = f"{w} x {h} pixels"
    if prep is not None:
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        rw, rh = _short_side_size(cw, ch, max(prep.resize_size, prep.input_size))
        if 4 * rw * rh > cost // 2:
            what += f", {rw} x {rh} once its short side is resized to {max(prep.resize_size, prep.input_size)}"
    return UnreadableImage(path, f"decoding it would take about {cost / 2**20:,.0f} MB ({what}), over edgekit's {DECODE_BUDGET_MB} MB decode budget")


def _bomb_reason(message: str) -> str:
    """Pillow's 'Image size (1600000000 pixels) exceeds limit of 178956970 pixels, ...' as
    'larger than Pillow's pixel limit (1,600,000,000 pixels, limit 178,956,970)'."""
    import re

    numbers = [int(n) for n in re.findall(r"\d+", message)[:2]]
    return "larger than Pillow's pixel limit" + (f" ({numbers[0]:,} pixels, limit {numbers[1]:,})" if len(numbers) == 2 else "")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Pillow's and the file system's errors as UnreadableImage with the decoder's words."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, _bomb_reason(str(e))) from None
    except UnidentifiedImageError as e:
        hint = _UNSUPPORTED_HINTS.get(path.suffix.lower())
        raise UnreadableImage(path, hint or str(e).splitlines()[0]) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableImage(path, reason) from None


@contextmanager
def decoded_rgb(path: Path, prep: Optional[Preprocessing] = None, scale: float = 1.0, extra_per_pixel: int = 0) -> Iterator:
    """The file as an 8-bit RGB PIL image, within the decode budget: its header is read
    first, and a file whose view (``prep``'s resize of its ``scale`` crop) would cost more
    than the budget is an UnreadableImage naming why; the bytes stay reserved until the
    block ends. GIF and other animations: the first frame."""
    quiet_pillow()
    path = Path(path)
    with _reading(path):
        f = open(path, "rb")
    with f:
        im, cost, _ = _open_within_budget(f, path, prep, scale, extra_per_pixel)
        with _BUDGET.hold(cost):
            with _reading(path):
                image = _to_rgb(im)
            del im
            yield image


def _open_within_budget(f, path: Path, prep: Optional[Preprocessing], scale: float, extra_per_pixel: int) -> tuple:
    """(image opened from its header, its decode cost, whether it is a JPEG reduced by
    libjpeg's DCT scaling to fit); UnreadableImage when it is over the budget."""
    from PIL import Image

    with _reading(path):
        im = Image.open(f)
        cost = decode_cost(im.size, im.mode, prep, scale, extra_per_pixel)
        reduced = cost > _DECODE_BUDGET and im.format == "JPEG" and prep is not None
        if reduced:
            im.draft("RGB", _draft_request(im.size, prep, scale))  # libjpeg's DCT scaling: 1/2, 1/4 or 1/8
            cost = decode_cost(im.size, im.mode, prep, scale, extra_per_pixel)
        if cost > _DECODE_BUDGET:
            raise _over_budget(path, im.size, cost, prep, scale)
    return im, cost, reduced


def _draft_request(size: tuple[int, int], prep: Preprocessing, scale: float) -> tuple[int, int]:
    """The smallest size a JPEG may be decoded at and still give its view a short side of
    at least the resize size."""
    w, h = size
    factor = max(prep.resize_size, prep.input_size) / max(1e-9, scale * min(w, h))
    return (min(w, int(np.ceil(w * factor)) + 1), min(h, int(np.ceil(h * factor)) + 1))


def _open_rgb(path: Path, prep: Optional[Preprocessing] = None):
    """The file as 8-bit RGB (the decode budget applied to the file, and to ``prep``'s
    resize when given); UnreadableImage when it cannot be read."""
    with decoded_rgb(path, prep) as image:
        return image


# --------------------------------------------------------------------------- the flattening rule

# How every image becomes 8-bit RGB, here and on a device (the device runner decodes through
# this module too). Pillow's convert("RGB"), as torchvision's ImageFolder (pil_loader) and
# timm's datasets read images, and as TensorFlow's decode_png(channels=3) does through
# libpng: alpha is dropped, not composited, so a fine-tuned model sees the inputs the
# common training pipelines give it. A deployment that composites transparent images onto
# a background feeds the model other pixels: match this rule there, or flatten the files first.
FLATTEN_RULE = "edgekit-rgb/1: drop alpha (Pillow convert('RGB'), as torchvision ImageFolder and timm)"

# What the rule does to each kind of file (the keys are counted per image, see census).
FLATTEN_KINDS = {
    "alpha": "alpha dropped (RGBA, LA, PA, a transparent colour): the colour under transparent pixels is kept",
    "palette transparency": "palette transparency dropped: the palette colours are kept (read through RGBA)",
    "16-bit": "16-bit samples reduced to their high byte (v >> 8, as Pillow reads 16-bit colour and libpng strips 16 bits)",
    "32-bit": "32-bit integer or float greyscale scaled to 0..255 (values over 255 as 16-bit, floats up to 1.0 times 255)",
    "CMYK": "CMYK converted by Pillow (R = (255 - C)(255 - K) / 255 and alike; no ICC profile is applied)",
    "other colour mode": "LAB, HSV or YCbCr converted by Pillow",
    "reduced JPEG": "a JPEG over the decode budget, decoded at libjpeg's 1/2, 1/4 or 1/8 scale",
}
# Greyscale (1, L) is replicated to three channels and P without transparency takes its
# palette colours: nothing is lost, so neither is counted. EXIF orientation and ICC
# profiles are not applied (as in torchvision's and timm's loaders).

_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_LOSSLESS_MODES = ("RGB", "L", "1", "P")


def flatten_kinds(im) -> tuple[str, ...]:
    """The FLATTEN_KINDS that apply to an image opened by Pillow (from its header: call it
    before the pixels are loaded)."""
    kinds = []
    transparent = "transparency" in im.info
    if im.mode in _ALPHA_MODES or (transparent and im.mode != "P"):
        kinds.append("alpha")
    if im.mode == "P" and transparent:
        kinds.append("palette transparency")
    args = im.tile[0][3] if im.tile else ""
    rawmode = args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else ""
    if im.mode in _SIXTEEN_BIT_MODES or rawmode.startswith(("RGB;16", "RGBA;16", "LA;16")):  # 16-bit colour: Pillow keeps the high byte
        kinds.append("16-bit")
    elif im.mode in ("I", "F"):
        kinds.append("32-bit")
    if im.mode == "CMYK":
        kinds.append("CMYK")
    elif im.mode not in _LOSSLESS_MODES + _ALPHA_MODES + _SIXTEEN_BIT_MODES + ("I", "F"):
        kinds.append("other colour mode")
    return tuple(kinds)


def _to_rgb(im):
    """8-bit RGB by FLATTEN_RULE. Pillow's convert() clips 16-bit and 32-bit greyscale to
    0..255 (a 16-bit PNG turns white), so those are reduced to 8 bits first; and its direct
    P -> RGB warns about palette transparency, so such a palette goes through RGBA (the same
    colours)."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES:
        im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8), mode="L")
    elif im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode == "I" and values.max(initial=0) > 255:
            values /= 256.0  # 16-bit values in 32 bits: their high byte, as above
        elif im.mode == "F" and values.max(initial=0) <= 1.0:
            values *= 255.0
        np.clip(np.floor(values, out=values) if im.mode == "I" else np.rint(values, out=values), 0, 255, out=values)
        im = Image.fromarray(values.astype(np.uint8), mode="L")
        del values
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGB":
        im.load()  # the pixels, read before the file closes
        return im
    return im.convert("RGB")


_QUIET = threading.Lock()
# Pillow's warnings while it reads a file, silenced process-wide (thread-safe, unlike
# catch_warnings around each decode): the decompression-bomb warning (the decode budget
# decides, and says so), the palette-transparency one (_to_rgb never triggers it), and the
# image plugins' notes on damaged metadata (EXIF, TIFF tags, MPO, APNG: the pixels still
# decode). What changes a model input is counted instead (census, FLATTEN_KINDS).
_PILLOW_FILTERS = (
    ("ignore", r"Image size \(\d+ pixels\) exceeds limit", Warning, ""),
    ("ignore", "Palette images with Transparency expressed in bytes", Warning, ""),
    ("ignore", "", Warning, r"PIL\.\w+ImagePlugin$"),
)


def quiet_pillow() -> None:
    """Install the filters above where they are missing (a test's or a caller's
    catch_warnings may have put the filter list back)."""
    import re

    wanted = [(a, re.compile(m, re.I) if m else None, c, re.compile(mod) if mod else None, 0) for a, m, c, mod in _PILLOW_FILTERS]
    if all(f in warnings.filters for f in wanted):
        return
    with _QUIET:
        for action, message, category, module in _PILLOW_FILTERS:
            warnings.filterwarnings(action, message=message, category=category, module=module)


@dataclass(frozen=True)
class ImageCensus:
    """What reading some files will do, from their headers: those that cannot be read
    (file, reason) and, per FLATTEN_KINDS key, the files the flattening rule changes."""

    unreadable: tuple[tuple[str, str], ...]
    flattened: tuple[tuple[str, tuple[str, ...]], ...]  # (kind, files), in FLATTEN_KINDS order

    def counts(self) -> dict[str, int]:
        return {kind: len(files) for kind, files in self.flattened}

    def to_dict(self, shown: int = 3) -> dict:
        """The rule, the count of each kind and its first ``shown`` file names (for reports)."""
        return {
            "rule": FLATTEN_RULE, "counts": self.counts(),
            "examples": {kind: [Path(f).name for f in files[:shown]] for kind, files in self.flattened},
        }

    def summary(self, shown: int = 3) -> str:
        """'12 images flattened to RGB (edgekit-rgb/1: ...): 10 alpha dropped (a.png, b.png, c.png and 7 more); ...'"""
        total = len({f for _, files in self.flattened for f in files})
        if not total:
            return ""
        parts = []
        for kind, files in self.flattened:
            names = ", ".join(Path(f).name for f in files[:shown]) + (f" and {len(files) - shown:,} more" if len(files) > shown else "")
            parts.append(f"{len(files):,} {kind} ({names})")
        return f"{total:,} image{'s' if total != 1 else ''} flattened to RGB by {FLATTEN_RULE}: " + "; ".join(parts)


def census(paths: Iterable, prep: Optional[Preprocessing] = None) -> ImageCensus:
    """Read each file's header once: the files over the decode budget or not images at all,
    and what the flattening rule does to the others (a truncated file shows only when its
    pixels are decoded)."""
    quiet_pillow()
    unreadable: list[tuple[str, str]] = []
    kinds: dict[str, list[str]] = {kind: [] for kind in FLATTEN_KINDS}
    for path in paths:
        path = Path(path)
        try:
            with _reading(path):
                f = open(path, "rb")
            with f:
                im, _, reduced = _open_within_budget(f, path, prep, 1.0, 0)
                for kind in flatten_kinds(im) + (("reduced JPEG",) if reduced else ()):
                    kinds[kind].append(str(path))
        except UnreadableImage as e:
            unreadable.append((str(path), e.reason))
    return ImageCensus(tuple(unreadable), tuple((k, tuple(files)) for k, files in kinds.items() if files))


def preprocess(view: ImageView, prep: Preprocessing) -> np.ndarray:
    """One view as a CHW float32 array ready for the model (within the decode budget),
    its pixels read through the image cache (edgekit.data.cache) when they are there."""
    from .cache import image_cache, view_entry

    pixels = image_cache().get(view.image.path, view_entry(view.view), prep, _DECODE_BUDGET, lambda: view_pixels(view, prep))
    return normalise(pixels, prep)


def normalise(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """A view's uint8 HWC pixels -> the model's CHW float32 input."""
    array = np.asarray(pixels, dtype=np.float32) / 255.0
    array = (array - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def view_pixels(view: ImageView, prep: Preprocessing) -> np.ndarray:
    """One view decoded, cropped, flipped, resized and centre-cropped: uint8 HWC."""
    from PIL import Image

    scale, fx, fy, flip = VIEW_GRID[view.view]
    with decoded_rgb(view.image.path, prep, scale) as image:
        if scale < 1.0:
            w, h = image.size
            cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
            left, top = int(round(fx * (w - cw))), int(round(fy * (h - ch)))
            image = image.crop((left, top, left + cw, top + ch))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = _resize_short_side(image, prep.resize_size, _RESAMPLING[prep.interpolation])
        image = _center_crop(image, prep.input_size)
    return np.asarray(image, dtype=np.uint8)


def _resize_short_side(image, size: int, resample: int):
    w, h = image.size
    new_w, new_h = _short_side_size(w, h, size)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), resample=resample)


def _center_crop(image, size: int):
    w, h = image.size
    if w < size or h < size:
        image = _resize_short_side(image, size, _RESAMPLING["bilinear"])
        w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))
