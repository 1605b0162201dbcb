"""Decoding one view into a model input (CHW float32) under the process's one decode budget; unreadable files are UnreadableImage."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

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
_BOMB_WARNING_FILTERED = False
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


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Pillow's and the file system's errors as UnreadableImage with the decoder's words."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, f"larger than Pillow's pixel limit ({str(e).split('(')[0].strip()})") from None
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
    from PIL import Image

    global _BOMB_WARNING_FILTERED
    if not _BOMB_WARNING_FILTERED:  # the budget decides below; Pillow's warning under its hard limit would only repeat it
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _BOMB_WARNING_FILTERED = True
    path = Path(path)
    with _reading(path):
        f = open(path, "rb")
    with f:
        with _reading(path):
            im = Image.open(f)
            cost = decode_cost(im.size, im.mode, prep, scale, extra_per_pixel)
            if cost > _DECODE_BUDGET and im.format == "JPEG" and prep is not None:
                im.draft("RGB", _draft_request(im.size, prep, scale))  # libjpeg's DCT scaling: 1/2, 1/4 or 1/8
                cost = decode_cost(im.size, im.mode, prep, scale, extra_per_pixel)
            if cost > _DECODE_BUDGET:
                raise _over_budget(path, im.size, cost, prep, scale)
        with _BUDGET.hold(cost):
            with _reading(path):
                image = _to_rgb(im)
            del im
            yield image


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


def _to_rgb(im):
    """8-bit RGB. Pillow's convert() clips 16-bit and 32-bit greyscale to 0..255 (a 16-bit
    PNG turns white), so those are scaled to 8 bits first (in place: one float copy)."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and values.max(initial=0) > 255):
            values /= 257.0  # 0..65535 -> 0..255
        elif im.mode == "F" and values.max(initial=0) <= 1.0:
            values *= 255.0
        np.clip(np.rint(values, out=values), 0, 255, out=values)
        im = Image.fromarray(values.astype(np.uint8), mode="L")
        del values
    if im.mode == "RGB":
        im.load()  # the pixels, read before the file closes
        return im
    return im.convert("RGB")


def preprocess(view: ImageView, prep: Preprocessing) -> np.ndarray:
    """One view as a CHW float32 array ready for the model (within the decode budget)."""
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
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


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
