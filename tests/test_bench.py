"""Timing statistics and the accuracy arithmetic against a baseline."""

import time

import numpy as np
import pytest

from edgekit.timing import TimingOptions, make_batch, time_session
from edgekit.evaluation import compare_to_baseline, mean_kl, topk_accuracy
from edgekit.core import UsageError


def test_time_session_measures_what_runs():
    def run(batch):
        time.sleep(0.002)
        return batch

    stats = time_session(run, np.zeros((3, 3, 8, 8), np.float32), 4, TimingOptions(warmup=1, iterations=20))
    assert stats.iterations == 20 and stats.batch_size == 4
    assert 2.0 <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.throughput_ips == pytest.approx(4000 / stats.mean_ms)


def test_device_time_is_summarised_beside_host_time():
    device_ms = iter(np.linspace(1.0, 3.0, 25))  # what a backend's CUDA events would read
    stats = time_session(lambda b: time.sleep(0.001), np.zeros((1, 3, 4, 4), np.float32), 8,
                         TimingOptions(warmup=5, iterations=20), compute_ms=lambda: next(device_ms))
    timed = np.linspace(1.0, 3.0, 25)[:20]  # read after timed runs only, not after warm-up ones
    assert stats.compute_p50_ms == pytest.approx(float(np.median(timed)))
    assert stats.compute_throughput_ips == pytest.approx(8000 / timed.mean())
    plain = time_session(lambda b: b, np.zeros((1, 3, 4, 4), np.float32), 1, TimingOptions(warmup=0, iterations=5))
    assert plain.compute_p50_ms is None and plain.compute_throughput_ips is None


def test_time_budget_stops_early_but_keeps_a_minimum():
    stats = time_session(lambda b: time.sleep(0.01), np.zeros((1, 3, 4, 4), np.float32), 1,
                         TimingOptions(warmup=0, iterations=1000, max_seconds=0.05, min_iterations=10))
    assert 10 <= stats.iterations < 1000


def test_make_batch_repeats_real_images():
    images = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    batch = make_batch(images, 5)
    assert batch.shape == (5, 3, 2, 2)
    np.testing.assert_array_equal(batch[2], images[0])


def test_bad_timing_options():
    with pytest.raises(UsageError):
        TimingOptions(batch_sizes=(0,))


def test_identical_logits_agree_fully():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(10, 1000)).astype(np.float32)
    labels = [(int(i),) for i in logits.argmax(1)]
    stats = compare_to_baseline(logits, logits, labels)
    assert stats.top1 == 100 and stats.top1_drop == 0 and stats.agreement == 100
    assert stats.mean_kl == 0 and stats.max_abs_diff == 0


def test_kl_and_agreement_detect_differences():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(8, 10))
    other = base.copy()
    other[0] = base[0][::-1]  # a different top-1 for the first image
    stats = compare_to_baseline(other, base, [None] * 8)
    assert stats.agreement == pytest.approx(100 * 7 / 8)
    assert stats.mean_kl > 0 and stats.top1 is None
    # KL(p || q) by hand for one row
    p = np.exp(base[:1]) / np.exp(base[:1]).sum()
    q = np.exp(other[:1]) / np.exp(other[:1]).sum()
    assert mean_kl(base[:1], other[:1]) == pytest.approx(float((p * np.log(p / q)).sum()))


def test_topk_accepts_any_of_several_labels():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert topk_accuracy(logits, [(2, 1), (2,)], 1) == 50.0
    assert topk_accuracy(logits, [(2, 1), (2,)], 3) == 100.0
    assert topk_accuracy(logits, [(1,), None], 1) is None
