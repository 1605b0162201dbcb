"""TensorRT-style entropy calibration: the vectorised search against a plain loop, and its behaviour."""

import numpy as np

from edgekit.transforms.entropy import kl_threshold


def _kl_by_loop(hist, levels):
    """Direct transcription: for each prefix, build P and Q bin by bin."""
    hist = hist.astype(np.float64)
    total = hist.sum()
    best, best_kl = None, np.inf
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        bounds = [g * i // levels for g in range(levels + 1)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            chunk = hist[a:b]
            nonzero = chunk > 0
            if nonzero.any():
                q[a:b][nonzero] = chunk.sum() / nonzero.sum()
        pn, qn = p / total, q / q.sum()
        mask = pn > 0
        kl = np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12 / q.sum())))
        if kl < best_kl - 1e-12:
            best, best_kl = i, kl
    return best


def test_vectorised_search_matches_the_loop():
    rng = np.random.default_rng(0)
    for trial in range(5):
        values = np.abs(rng.standard_t(df=3, size=20_000))
        hist, edges = np.histogram(values, bins=200)
        expected = edges[_kl_by_loop(hist, 16)]
        assert kl_threshold(hist, edges, levels=16) == expected


def test_gaussian_with_outliers_is_clipped_but_uniform_is_not():
    rng = np.random.default_rng(1)
    gaussian = np.abs(np.concatenate([rng.normal(size=200_000), [40.0, -55.0]]))
    hist, edges = np.histogram(gaussian, bins=2048)
    t = kl_threshold(hist, edges)
    assert 2.5 < t < 10.0  # far below the 55 outlier, beyond the bulk
    uniform = rng.uniform(0, 3, size=200_000)
    hist, edges = np.histogram(uniform, bins=2048)
    assert kl_threshold(hist, edges) > 2.9
