"""Means and seeded bootstrap intervals over prompts."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(
    values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95, chunk: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over the last axis (prompts).

    ``values`` is ``[..., n_prompts]``; returns ``(low, high)`` shaped ``values.shape[:-1]``.
    Resampling is done by multinomial counts, so every component shares the same resamples
    (intervals of a sum and of its parts are consistent) and the work is one matrix product.
    """
    values = np.asarray(values, dtype=np.float64)
    lead, n = values.shape[:-1], values.shape[-1]
    flat = values.reshape(-1, n)
    rng = np.random.default_rng(seed)
    means = np.empty((flat.shape[0], n_resamples))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start).astype(np.float64)
        means[:, start:stop] = flat @ counts.T / n
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=1)
    return low.reshape(lead), high.reshape(lead)
