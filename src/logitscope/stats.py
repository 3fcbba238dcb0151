"""Means and seeded bootstrap intervals over prompts.

The resamples depend only on ``(seed, n_prompts, n_resamples)``: any two results over the same
prompts with the same seed (the study's attributions, or a later kind of result over the same
prompts) draw the very same resamples, so their intervals are consistent with each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95

# Bytes of resample counts held at once: bounds memory for large prompt sets (1,000 resamples of
# 1,000,000 prompts would be 8 GB as one float64 matrix). The indices and counts of a block take
# about three times this at the peak; 16 MB is all 1,000 resamples of 2,000 prompts, so a run's
# peak memory stays flat above that (64 MB added ~200 MB at 20,000 prompts: bench/memory_report.py).
_COUNTS_BUDGET = 16 * 2**20


def resample_indices(n_prompts: int, *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Iterator[np.ndarray]:
    """The bootstrap's prompt indices, ``[block, n_prompts]`` blocks of resamples in order: resample
    ``r`` draws ``n_prompts`` indices uniformly with replacement (``numpy.random.default_rng(seed)
    .integers``, one block after another). A block holds as many resamples as fit the memory budget."""
    rng = np.random.default_rng(seed)
    block = int(max(1, min(n_resamples, _COUNTS_BUDGET // (8 * n_prompts))))
    for start in range(0, n_resamples, block):
        yield rng.integers(0, n_prompts, size=(min(block, n_resamples - start), n_prompts))


def bootstrap_means(values: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """The mean over the last axis (prompts) of each of :func:`resample_indices`'s resamples.

    ``values`` is ``[..., n_prompts]``; returns ``[..., n_resamples]`` float64. Every component
    shares the resamples, so the resampled means of a sum are the sums of its parts' resampled
    means. One row is a gather; several rows are one matrix product with each resample's counts.
    """
    values = np.asarray(values, dtype=np.float64)
    lead, n = values.shape[:-1], values.shape[-1]
    flat = values.reshape(-1, n)
    means = np.empty((flat.shape[0], n_resamples))
    start = 0
    for idx in resample_indices(n, n_resamples=n_resamples, seed=seed):
        stop = start + idx.shape[0]
        if flat.shape[0] == 1:
            means[:, start:stop] = flat[0][idx].mean(-1)[None]
        else:
            counts = np.zeros((idx.shape[0], n))
            for r, row in enumerate(idx):
                counts[r] = np.bincount(row, minlength=n)
            means[:, start:stop] = flat @ counts.T / n
        start = stop
    return means.reshape(*lead, n_resamples)


def percentile_interval(means: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval at ``level`` of resampled means ``[..., n_resamples]``."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=-1)
    return low, high


def bootstrap_ci(
    values: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over the last axis (prompts).

    ``values`` is ``[..., n_prompts]``; returns ``(low, high)`` shaped ``values.shape[:-1]``. Every
    component shares the same resamples (:func:`bootstrap_means`), so the intervals of a whole and
    of its parts are consistent.
    """
    return percentile_interval(bootstrap_means(values, n_resamples=n_resamples, seed=seed), level)


def shared_intervals(parts: Mapping[str, np.ndarray], *, seed: int = 0, n_resamples: int = N_RESAMPLES,
                     level: float = LEVEL) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`bootstrap_ci` of several named ``[..., n_prompts]`` arrays over the same prompts, in
    one pass over one set of resamples; each ``(low, high)`` has its array's leading shape."""
    flat = [np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1]) for a in parts.values()]
    low, high = bootstrap_ci(np.concatenate(flat), seed=seed, n_resamples=n_resamples, level=level)
    out, start = {}, 0
    for (key, arr), rows in zip(parts.items(), flat):
        stop = start + rows.shape[0]
        shape = np.shape(arr)[:-1]
        lo, hi = low[start:stop].reshape(shape), high[start:stop].reshape(shape)
        out[key] = (lo[()], hi[()]) if not shape else (lo, hi)  # a 1-D array's interval: two numbers
        start = stop
    return out
