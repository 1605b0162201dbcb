"""The decoded-image cache (edgekit.data.cache): same pixels as decoding, hits, invalidation by
content, corrupt entries, the byte budget, concurrent writers. Real files only: the bundled
photos and PNG/JPEG files written here with Pillow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit import data
from edgekit.core import Preprocessing, UsageError
from edgekit.data import batches, cache, decode

PREP = Preprocessing(input_size=224, resize_size=256, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(cache.SIZE_ENV, raising=False)
    c = cache.image_cache()
    c.reset_counters()
    return c


def _photo(path: Path, size=(900, 640), seed=0, quality=None) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    image.save(path, **({"quality": quality} if quality else {}))
    return path


def _view(path: Path, v: int = 0) -> data.ImageView:
    return data.ImageView(data.LabelledImage(path, None), v)


def _entries(c: cache.ImageCache) -> list[Path]:
    return sorted(p for _, _, p in c._entries())


def test_views_through_the_cache_are_bit_identical_and_hit_the_second_time(store):
    path = data.bundled_images()[0].path
    for v in (0, 3, 7):
        view = _view(path, v)
        direct = decode.normalise(decode.view_pixels(view, PREP), PREP)
        first = data.preprocess(view, PREP)
        second = data.preprocess(view, PREP)
        assert first.dtype == np.float32 and first.shape == (3, 224, 224)
        assert np.array_equal(direct, first) and np.array_equal(direct, second)
        assert direct.tobytes() == second.tobytes()
    stats = store.stats()
    assert (stats.misses, stats.hits, stats.files) == (3, 3, 1)
    assert len(_entries(store)) == 3 and stats.bytes_on_disk >= 3 * 224 * 224 * 3
    assert "1 files, 3 hit, 3 decoded" in stats.summary()


def test_training_source_is_the_reduced_decode(store, tmp_path):
    big = _photo(tmp_path / "big.jpg", (1400, 1100), quality=90)  # short side 1100 // 256 = 4: reduced
    small = _photo(tmp_path / "small.png", (500, 300))  # 300 // 256 = 1: as decoded
    for path, expected_size in ((big, (350, 275)), (small, (500, 300))):
        with decode.decoded_rgb(path, PREP) as image:
            k = min(image.size) // 256
            reference = np.asarray(image.reduce(k) if k >= 2 else image)
        got = batches.cached_train_source(path, PREP)
        again = batches.cached_train_source(path, PREP)
        assert (got.shape[1], got.shape[0]) == expected_size
        assert np.array_equal(got, reference) and np.array_equal(again, reference)
    assert (store.misses, store.hits) == (2, 2)


def test_a_changed_file_is_a_miss_and_gives_its_new_pixels(store, tmp_path):
    path = _photo(tmp_path / "x.png", seed=1)
    old = data.preprocess(_view(path), PREP)
    _photo(path, seed=2)  # same path, new content
    os.utime(path, ns=(1, 1))  # even with an old timestamp the size/mtime memo changes
    new = data.preprocess(_view(path), PREP)
    assert not np.array_equal(old, new)
    assert np.array_equal(new, decode.normalise(decode.view_pixels(_view(path), PREP), PREP))
    assert (store.misses, store.hits) == (2, 0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_corrupt_entry_is_a_miss_and_is_rewritten(store, tmp_path, damage):
    path = _photo(tmp_path / "x.jpg", quality=85)
    good = data.preprocess(_view(path), PREP)
    (entry,) = _entries(store)
    blob = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        entry.write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
    else:
        entry.write_bytes(b"")
    again = data.preprocess(_view(path), PREP)
    assert np.array_equal(good, again)
    assert (store.misses, store.hits) == (2, 0)
    assert entry.read_bytes() == blob  # rewritten whole
    data.preprocess(_view(path), PREP)
    assert store.hits == 1


def test_unreadable_images_are_not_cached(store, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for _ in range(2):
        with pytest.raises(data.UnreadableImage):
            data.preprocess(_view(bad), PREP)
    assert store.unreadable == 2 and _entries(store) == []
    x, labels = data.load_all(data.make_image_set([data.LabelledImage(_photo(tmp_path / "ok.png"), (1,))], 1, "one"), PREP)
    assert x.shape == (1, 3, 224, 224) and labels == [(1,)]


def test_the_budget_evicts_the_least_recently_used(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path / "cache"))
    entry = 224 * 224 * 3 + 24
    monkeypatch.setenv(cache.SIZE_ENV, str(int(3.5 * entry)))  # three entries fit
    store = cache.image_cache()
    paths = [_photo(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    files = [store.entry_path(store.key(cache.content_hash(p), "view:0", PREP, decode._DECODE_BUDGET)) for p in paths]
    for i, path in enumerate(paths[:3]):
        data.preprocess(_view(path), PREP)
        os.utime(files[i], (100 + i, 100 + i))  # written in this order, a second apart
    data.preprocess(_view(paths[0]), PREP)  # a hit: now the most recently used
    assert store.hits == 1 and os.path.getmtime(files[0]) > 1000
    data.preprocess(_view(paths[3]), PREP)  # a fourth entry: over the budget
    assert sorted(_entries(store)) == sorted([files[0], files[2], files[3]])  # the least recently used went
    assert store.stats().bytes_on_disk == 3 * entry


def test_off_and_bad_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(cache.SIZE_ENV, "off")
    path = _photo(tmp_path / "x.png")
    assert np.array_equal(data.preprocess(_view(path), PREP), decode.normalise(decode.view_pixels(_view(path), PREP), PREP))
    assert not (tmp_path / "cache").exists()
    assert cache.summary().startswith("image cache: off")
    assert cache.parse_size("4GiB") == 4 * 2**30 and cache.parse_size("500MB") == 500 * 10**6 and cache.parse_size("0") == 0
    monkeypatch.setenv(cache.SIZE_ENV, "lots")
    with pytest.raises(UsageError, match="EDGEKIT_IMAGE_CACHE='lots' is not a size"):
        data.preprocess(_view(path), PREP)


def test_warm_up_in_processes_learns_the_hashes(store, tmp_path):
    paths = [str(_photo(tmp_path / f"{i}.jpg", (1200, 800), seed=i, quality=90)) for i in range(4)]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    jobs = [batches.WarmJob(p) for p in paths] + [batches.WarmJob(paths[0], 0), batches.WarmJob(str(tmp_path / "bad.jpg"))]
    seen = []
    stats = batches.warm_image_cache(jobs, PREP, workers=2, progress=lambda s, d, t: seen.append((d, t)))
    assert (stats.misses, stats.hits, stats.unreadable, stats.files) == (5, 0, 1, 5)
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    assert all((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) in cache._HASHES for p in paths)
    again = batches.warm_image_cache(jobs, PREP, workers=2)
    assert (again.misses, again.hits, again.unreadable) == (0, 5, 1)
    assert "5 hit, 0 decoded" in again.summary() and "1 unreadable" in again.summary()


def test_two_processes_writing_the_same_entry_leave_one_whole_file(store, tmp_path):
    path = _photo(tmp_path / "x.png", (2000, 1500))
    script = textwrap.dedent(f"""
        from pathlib import Path
        from edgekit import data
        from edgekit.core import Preprocessing
        prep = Preprocessing(**{PREP.to_dict()!r})
        for _ in range(5):
            for f in Path({str(store.root)!r}).rglob("*.px"):
                f.unlink(missing_ok=True)
            data.preprocess(data.ImageView(data.LabelledImage(Path({str(path)!r}), None), 0), prep)
    """)
    env = {**os.environ, cache.DIR_ENV: str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".px"  # no temporary file left beside it
    pixels = cache.decode_entry(files[0].read_bytes())
    assert pixels is not None and np.array_equal(pixels, decode.view_pixels(_view(path), PREP))


def test_fine_tuning_warms_its_images_and_reads_the_same_pixels(store, tmp_path):
    from edgekit.transforms.finetune import _TrainImages, _ValImages, _warm_image_cache

    train = [(str(_photo(tmp_path / f"t{i}.jpg", (1300, 900), seed=i, quality=90)), i % 2) for i in range(3)]
    val = [(str(_photo(tmp_path / "v.png", seed=9)), 1)]
    said = []
    line = _warm_image_cache(train, val, PREP, lambda stage, done, total: said.append((stage, done, total)))
    assert line.startswith("image cache: 4 files, 0 hit, 4 decoded in") and (line, None, None) in said
    assert ("decoding images into the image cache", 4, 4) in said
    items = _TrainImages(train, PREP, "none")
    x, label = items[0]
    with decode.decoded_rgb(Path(train[0][0]), PREP) as image:  # the reading fine-tuning did before the cache
        before = items.transform(image.reduce(min(image.size) // 256))
    assert label == 0 and x.shape == (3, 224, 224) and bool((x == before).all())
    v, _ = _ValImages(val, PREP)[0]
    assert np.array_equal(v, decode.normalise(decode.view_pixels(_view(Path(val[0][0])), PREP), PREP))
    assert (store.hits, store.misses) == (2, 4)
