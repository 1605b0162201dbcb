"""Metrics joined on view identity, streamed from disk, with 95% intervals."""

import numpy as np
import pytest

from edgekit.data import read_views_file, resolve_images
from edgekit.evaluation import LogitsFile, LogitsWriter, ViewTable, compare_to_baseline, evaluate
from edgekit.uncertainty import paired_difference_interval, proportion_interval, tango, wilson


def _write(tmp_path, name, rows, logits):
    writer = LogitsWriter(tmp_path / f"{name}.f32", tmp_path / f"{name}.rows.npy")
    for start in range(0, len(rows), 3):  # several appends, as a worker streams batches
        writer.append(rows[start : start + 3], logits[start : start + 3])
    return LogitsFile.from_worker(writer.close())


def _one_hot(classes, width=5):
    logits = np.full((len(classes), width), -5.0, np.float32)
    logits[np.arange(len(classes)), classes] = 5.0
    return logits


def test_rows_join_on_view_identity_not_position(tmp_path):
    """Backend b could not read view 2: every metric uses views 0, 1, 3, 4 of both, so b's
    rows are not shifted onto the next view's label (which would score 0%)."""
    labels = np.array([[0], [1], [2], [3], [4]])
    views = ViewTable(files=np.arange(5), labels=labels, file_names=tuple("abcde"))
    right = [0, 1, 2, 3, 4]
    a = _write(tmp_path, "a", [0, 1, 2, 3, 4], _one_hot(right))
    b = _write(tmp_path, "b", [0, 1, 3, 4], _one_hot([0, 1, 3, 4]))
    result = evaluate({"a": a, "b": b}, views, baseline="a")
    assert result.evaluated == 4
    assert result.accuracy["a"].top1 == 100.0 and result.accuracy["b"].top1 == 100.0
    assert result.accuracy["b"].agreement == 100.0 and result.accuracy["b"].top1_drop == 0.0
    zipped_by_position = (np.argmax(_one_hot([0, 1, 3, 4]), 1) == labels[:4, 0]).mean() * 100
    assert zipped_by_position == 50.0  # what the old positional zip reported


def test_streaming_equals_in_memory_figures(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(700, 10)).astype(np.float32)  # more rows than one chunk
    other = (base + rng.normal(scale=0.5, size=base.shape)).astype(np.float32)
    labels = rng.integers(0, 10, size=700)
    files = np.repeat(np.arange(140), 5)
    views = ViewTable(files=files, labels=labels[:, None], file_names=tuple(map(str, range(140))))
    rows = list(range(700))
    result = evaluate({"base": _write(tmp_path, "base", rows, base), "other": _write(tmp_path, "other", rows, other)}, views, baseline="base")
    memory = compare_to_baseline(other, base, [(int(y),) for y in labels], files)
    streamed = result.accuracy["other"]
    for field in ("top1", "top5", "top1_drop", "agreement", "mean_kl", "max_abs_diff", "top1_ci", "top1_drop_ci", "agreement_ci"):
        assert getattr(streamed, field) == pytest.approx(getattr(memory, field)), field
    assert streamed.files == 140 and streamed.images == 700


def test_npy_reference_is_read_by_offset(tmp_path):
    logits = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.save(tmp_path / "ref.npy", logits)
    ref = LogitsFile.from_npy(tmp_path / "ref.npy")
    np.testing.assert_array_equal(ref.read(np.array([1, 2, 4])), logits[[1, 2, 4]])


def test_wilson_and_tango_match_published_values():
    # Wilson (1927) / Newcombe (1998) example: 81 of 263 -> 25.5% .. 36.3%
    interval = wilson(81, 263)
    assert (interval.low, interval.high) == pytest.approx((0.2553, 0.3662), abs=5e-4)
    # no discordant pair among 77: the interval stays open (about +-4.75 points), never [0, 0]
    assert tango(0, 0, 77).high == pytest.approx(0.0475, abs=5e-4)
    assert tango(0, 0, 77).low == pytest.approx(-tango(0, 0, 77).high)
    # a real shift: 12 pairs lost, 1 gained among 200
    shifted = tango(12, 1, 200)
    assert shifted.low > 0 and shifted.contains(11 / 200)


def test_views_of_one_photo_count_as_correlated():
    """Seven photos x 11 views, each photo entirely right or wrong: effectively seven
    observations, so the interval is far wider than 77 independent views would give."""
    counts = np.full(7, 11)
    hits = np.array([11, 11, 11, 11, 0, 0, 0])
    clustered = proportion_interval(hits, counts)
    independent = wilson(44, 77)
    assert clustered.high - clustered.low > 1.8 * (independent.high - independent.low)
    assert proportion_interval(np.ones(77), np.ones(77)) == wilson(77, 77)  # one view per photo: the plain interval
    drop = paired_difference_interval(np.array([2, 0, 0, 0, 0, 0, 0]), np.zeros(7), counts)
    assert drop.contains(0.0)  # two views of one photo flipped: not a measured drop


def test_views_file_streams_every_view_with_its_identity(tmp_path):
    images = resolve_images(views_per_image=2, limit=3)
    path = images.write_views_file(tmp_path / "views.jsonl")
    header, views = read_views_file(path)
    listed = list(views)
    assert header["count"] == 6 and [v.index for v in listed] == list(range(6))
    assert [v.file for v in listed] == [0, 0, 1, 1, 2, 2]
    assert [v.view.key for v in listed] == [v.key for v in images.views]
