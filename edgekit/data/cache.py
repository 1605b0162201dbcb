"""An on-disk cache of decoded images, shared by fine-tuning, calibration and evaluation.

Decoding and resizing a large photo costs far more than what the model does with it, and
fine-tuning reads every file once per epoch. So edgekit keeps two kinds of entry:

* a view exactly as ``preprocess`` makes it, as uint8 HWC pixels before the float
  normalisation (reading one back and normalising gives bit-identical inputs);
* a training source: the decoded RGB image box-reduced as fine-tuning reduces it (a
  photo far larger than the crop: ``reduce(k)``), which its random crops start from.

An entry's key is the file's content (SHA-256 of its bytes, hashed at most once per
process and file version), the preprocessing, the entry kind, the decode budget, the
format and the decoder (Pillow's version, the decoding modules' source): a changed file
or decoder gets a new key and the old entries age out. Entries live in
``$EDGEKIT_CACHE/decoded`` (default ``~/.cache/edgekit/decoded``) under a byte budget,
``EDGEKIT_IMAGE_CACHE`` (``4GiB`` by default; ``off`` or ``0`` turns the cache off); the
least recently used entries go first when it is over. Entries are written atomically and
carry their CRC-32, so a crash or a concurrent writer never leaves a half entry, and a
corrupt one is a miss that is rewritten. Unreadable images are never cached: they are
decoded (and refused) again every time.

numpy and Pillow only: the device runner imports this package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..core import DataError, EdgekitError, Preprocessing, UsageError

FORMAT = 1
MAGIC = b"EKIMG\x00\x01\x00"
_HEADER = struct.Struct("<IIII")  # height, width, channels, CRC-32 of the pixels
SUFFIX = ".px"
DIR_ENV, SIZE_ENV = "EDGEKIT_CACHE", "EDGEKIT_IMAGE_CACHE"
DEFAULT_BUDGET = 4 * 2**30
_LOW_WATER = 0.9  # eviction frees down to this fraction of the budget, so it runs seldom
_STALE_TMP_S = 3600  # a writer's temporary file this old is one that died
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """'4GiB', '500MB', '2G', '1048576' -> bytes; 'off' -> 0."""
    text = text.strip().lower()
    if text in ("off", "no", "none", "false"):
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not m or m.group(2) not in _UNITS:
        raise UsageError(f"{SIZE_ENV}={text!r} is not a size: give bytes with a unit (4GiB, 500MB) or off")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def cache_root() -> Path:
    base = os.environ.get(DIR_ENV)
    if base:
        return Path(base).expanduser() / "decoded"
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        base_dir = Path(xdg) if xdg else Path.home() / ".cache"
    except RuntimeError:  # no home folder (a service account)
        import tempfile

        base_dir = Path(tempfile.gettempdir())
    return base_dir / "edgekit" / "decoded"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- file content

_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return (str(path), st.st_size, st.st_mtime_ns)


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes, computed once per process for each (path, size, mtime)."""
    key = _stat_key(path)
    with _HASH_LOCK:
        known = _HASHES.get(key)
    if known is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        known = h.hexdigest()
        with _HASH_LOCK:
            _HASHES[key] = known
    return known


_DECODER: list[str] = []


def _decoder_identity() -> str:
    """What makes the pixels: Pillow's version and the source of the modules that decode
    (decode.py, batches.py: read, not imported), so an upgrade never reads older pixels."""
    if not _DECODER:
        import PIL

        h = hashlib.sha256(PIL.__version__.encode())
        for name in ("decode.py", "batches.py"):
            try:
                h.update(Path(__file__).with_name(name).read_bytes())
            except OSError:
                h.update(name.encode())
        _DECODER.append(h.hexdigest()[:16])
    return _DECODER[0]


# --------------------------------------------------------------------------- entries


def encode_entry(pixels: np.ndarray) -> bytes:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    data = pixels.tobytes()
    return MAGIC + _HEADER.pack(h, w, c, zlib.crc32(data)) + data


def decode_entry(blob: bytes) -> Optional[np.ndarray]:
    """The pixels, or None for a truncated, corrupt or foreign entry."""
    start = len(MAGIC) + _HEADER.size
    if len(blob) < start or not blob.startswith(MAGIC):
        return None
    h, w, c, crc = _HEADER.unpack_from(blob, len(MAGIC))
    data = memoryview(blob)[start:]
    if len(data) != h * w * c or zlib.crc32(data) != crc:
        return None
    return np.frombuffer(blob, np.uint8, count=h * w * c, offset=start).reshape(h, w, c)


def view_entry(view: int) -> str:
    return f"view:{view}"


TRAIN_SOURCE = "train-source"


@dataclass(frozen=True)
class CacheStats:
    files: int
    hits: int
    misses: int
    unreadable: int
    decode_seconds: float
    bytes_on_disk: int
    budget: int
    problem: str = ""  # why entries could not be kept (a read-only or full disk)

    def summary(self) -> str:
        if self.budget <= 0:
            return f"image cache: off ({SIZE_ENV}=off): every read decodes its file"
        unread = f", {self.unreadable:,} unreadable" if self.unreadable else ""
        problem = f"; entries not kept: {self.problem}" if self.problem else ""
        return (f"image cache: {self.files:,} files, {self.hits:,} hit, {self.misses:,} decoded in {self.decode_seconds:.0f} s{unread}; "
                f"{_gib(self.bytes_on_disk)} of {_gib(self.budget)}{problem}")


class ImageCache:
    """The entries under ``root`` within ``budget`` bytes (0: no cache, every read decodes)."""

    def __init__(self, root: Path, budget: int):
        self.root, self.budget = Path(root), budget
        self._lock = threading.Lock()
        self._bytes: Optional[int] = None
        self._files: set[str] = set()
        self.hits = self.misses = self.unreadable = 0
        self.decode_seconds = 0.0
        self.problem = ""

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def key(self, content: str, entry: str, prep: Preprocessing, decode_budget: int) -> str:
        payload = {"format": FORMAT, "code": _decoder_identity(), "content": content, "entry": entry, "prep": prep.to_dict(), "decode_budget": decode_budget}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / (key[2:] + SUFFIX)

    def get(self, path: Path, entry: str, prep: Preprocessing, decode_budget: int, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The entry's pixels (``entry``: TRAIN_SOURCE or a view_entry, made under
        ``decode_budget`` bytes), made by ``make`` and kept on a miss; its DataError
        (UnreadableImage) passes through and nothing is kept."""
        with self._lock:
            self._files.add(str(path))
        if not self.enabled:
            return self._make(make)
        try:
            key = self.key(content_hash(Path(path)), entry, prep, decode_budget)
        except OSError:
            return self._make(make)  # the decoder names why the file cannot be read
        file = self.entry_path(key)
        pixels = self._read(file)
        if pixels is not None:
            with self._lock:
                self.hits += 1
            return pixels
        pixels = self._make(make)
        self._write(file, pixels)
        return pixels

    def _make(self, make: Callable[[], np.ndarray]) -> np.ndarray:
        begin = time.perf_counter()
        try:
            pixels = make()
        except DataError:  # UnreadableImage: decoded (and refused) again next time
            with self._lock:
                self.unreadable += 1
            raise
        with self._lock:
            self.misses += 1
            self.decode_seconds += time.perf_counter() - begin
        return pixels

    def _read(self, file: Path) -> Optional[np.ndarray]:
        try:
            blob = file.read_bytes()
        except OSError:
            return None
        pixels = decode_entry(blob)
        if pixels is not None:
            try:
                os.utime(file)  # least recently used goes first
            except OSError:
                pass
        return pixels

    def _write(self, file: Path, pixels: np.ndarray) -> None:
        from ..files import atomic_write_bytes

        blob = encode_entry(pixels)
        if len(blob) > self.budget * _LOW_WATER:
            return
        try:
            atomic_write_bytes(file, blob)
        except EdgekitError as e:  # the cache is an optimisation: the pixels are still right
            with self._lock:
                self.problem = str(e)
            return
        with self._lock:
            self._bytes = (self.bytes_on_disk() if self._bytes is None else self._bytes) + len(blob)
            over = self._bytes > self.budget
        if over:
            self.evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        now = time.time()
        try:
            folders = [d for d in os.scandir(self.root) if d.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        for folder in folders:
            try:
                items = list(os.scandir(folder.path))
            except OSError:
                continue
            for item in items:
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if item.name.endswith(SUFFIX) and not item.name.startswith("."):
                    found.append((st.st_mtime, st.st_size, Path(item.path)))
                elif item.name.startswith(".") and item.name.endswith(".tmp") and now - st.st_mtime > _STALE_TMP_S:
                    _remove(Path(item.path))  # a writer that died mid-entry
        return found

    def bytes_on_disk(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self) -> None:
        """Remove the least recently used entries until the cache is under its low-water mark."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, file in entries:
            if total <= self.budget * _LOW_WATER:
                break
            if _remove(file):
                total -= size
        with self._lock:
            self._bytes = total

    def stats(self) -> CacheStats:
        on_disk = self.bytes_on_disk() if self.enabled else 0
        with self._lock:
            self._bytes = on_disk if self.enabled else None
            return CacheStats(len(self._files), self.hits, self.misses, self.unreadable, self.decode_seconds, on_disk, self.budget, self.problem)

    def record(self, path: str, hit: bool, seconds: float, unreadable: bool) -> None:
        """Count a read another process made (the warm-up's workers)."""
        with self._lock:
            self._files.add(path)
            self.hits += hit
            self.unreadable += unreadable
            self.misses += not hit and not unreadable
            self.decode_seconds += seconds

    def reset_counters(self) -> None:
        with self._lock:
            self._files.clear()
            self.hits = self.misses = self.unreadable = 0
            self.decode_seconds = 0.0


def _remove(file: Path) -> bool:
    try:
        file.unlink()
        return True
    except OSError:
        return False


_CACHES: dict[tuple[str, int], ImageCache] = {}
_CACHES_LOCK = threading.Lock()


def image_cache() -> ImageCache:
    """This process's cache, as the environment sets it now (EDGEKIT_CACHE, EDGEKIT_IMAGE_CACHE)."""
    budget = parse_size(os.environ.get(SIZE_ENV, "")) if os.environ.get(SIZE_ENV, "").strip() else DEFAULT_BUDGET
    where = (str(cache_root()), budget)
    with _CACHES_LOCK:
        cache = _CACHES.get(where)
        if cache is None:
            cache = _CACHES[where] = ImageCache(Path(where[0]), budget)
        return cache


def known_hash(path: Path) -> Optional[tuple[tuple[str, int, int], str]]:
    """(stat key, content hash) of a file this process has hashed; None otherwise."""
    try:
        key = _stat_key(Path(path))
    except OSError:
        return None
    with _HASH_LOCK:
        digest = _HASHES.get(key)
    return None if digest is None else (key, digest)


def learn_hash(key: tuple[str, int, int], digest: str) -> None:
    """A content hash another process computed (so readers forked from this one reuse it)."""
    with _HASH_LOCK:
        _HASHES[key] = digest


def summary() -> str:
    """One line for the screen: files, hits, what was decoded and how long it took, bytes kept."""
    return image_cache().stats().summary()
