"""Means and seeded bootstrap intervals over prompts."""

from __future__ import annotations

import numpy as np

# Bytes of resample counts held at once: bounds memory for large prompt sets (1,000 resamples of
# 1,000,000 prompts would be 8 GB as one float64 matrix).
_COUNTS_BUDGET = 64 * 2**20


def bootstrap_means(values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The mean over the last axis (prompts) of ``n_resamples`` bootstrap resamples.

    ``values`` is ``[..., n_prompts]``; returns ``[..., n_resamples]`` float64. Resample ``r``
    draws ``n_prompts`` prompt indices uniformly with replacement (``numpy.random.default_rng(seed)
    .integers``, one ``[chunk, n_prompts]`` block after another), the same prompts for every
    component, so the resampled means of a sum are the sums of its parts' resampled means. One row
    is a gather; several rows are one matrix product with each resample's counts.
    """
    values = np.asarray(values, dtype=np.float64)
    lead, n = values.shape[:-1], values.shape[-1]
    flat = values.reshape(-1, n)
    rng = np.random.default_rng(seed)
    means = np.empty((flat.shape[0], n_resamples))
    chunk = int(max(1, min(n_resamples, _COUNTS_BUDGET // (8 * n))))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        if flat.shape[0] == 1:
            means[:, start:stop] = flat[0][idx].mean(-1)[None]
            continue
        counts = np.zeros((stop - start, n))
        for r, row in enumerate(idx):
            counts[r] = np.bincount(row, minlength=n)
        means[:, start:stop] = flat @ counts.T / n
    return means.reshape(*lead, n_resamples)


def percentile_interval(means: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval at ``level`` of resampled means ``[..., n_resamples]``."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=-1)
    return low, high


def bootstrap_ci(
    values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over the last axis (prompts).

    ``values`` is ``[..., n_prompts]``; returns ``(low, high)`` shaped ``values.shape[:-1]``. Every
    component shares the same resamples (:func:`bootstrap_means`), so the intervals of a whole and
    of its parts are consistent.
    """
    return percentile_interval(bootstrap_means(values, n_resamples=n_resamples, seed=seed), level)
