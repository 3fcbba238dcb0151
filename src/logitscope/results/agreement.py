"""How well attribution patching's estimate of a grid agrees with the exact grid.

Over the grid's cells (mean patched logit difference over prompts): Pearson's and Spearman's
correlation, the largest absolute error, and the cells whose estimate is off by more than
``OFF_FRACTION`` of the clean − corrupted gap (an error of more than 0.1 in TransformerLens's
normalised metric): where the first-order estimate cannot be trusted.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

OFF_FRACTION = 0.1


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's correlation of two equal-length vectors (``None`` when either is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else None


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (what Spearman's correlation correlates)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    return pearson(average_ranks(x), average_ranks(y)) if len(x) >= 2 else None


def agreement(exact: np.ndarray, estimate: np.ndarray, clean: float, corrupted: float,
              label: Callable[[int], str], off_fraction: float = OFF_FRACTION) -> dict[str, Any]:
    """results.json's ``patching.agreement.<grid>``: ``exact`` and ``estimate`` are the grid's cell
    means (any shape, the same); ``label(flat_index)`` names a cell (``L9H6``, ``L9 @ S2``)."""
    a, b = np.asarray(exact, dtype=np.float64).reshape(-1), np.asarray(estimate, dtype=np.float64).reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    idx = np.nonzero(ok)[0]
    err = b[idx] - a[idx]
    gap = abs(clean - corrupted)
    threshold = off_fraction * gap
    off = idx[np.abs(err) > threshold] if gap > 0 else idx[:0]
    off = off[np.argsort(-np.abs(b[off] - a[off]), kind="stable")]
    worst = int(idx[np.argmax(np.abs(err))]) if len(idx) else None
    return {
        "n_cells": int(len(idx)),
        "pearson": pearson(a[idx], b[idx]),
        "spearman": spearman(a[idx], b[idx]),
        "max_abs_error": float(np.abs(err).max()) if len(idx) else None,
        "max_abs_error_at": label(worst) if worst is not None else None,
        "off_fraction": off_fraction,
        "off_threshold": float(threshold),
        "off": [{"cell": label(int(i)), "exact": float(a[i]), "attribution": float(b[i]), "error": float(b[i] - a[i]),
                 "error_fraction": float((b[i] - a[i]) / gap)} for i in off],
    }
