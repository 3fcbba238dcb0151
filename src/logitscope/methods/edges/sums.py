"""Sums whose value does not depend on the order of their terms, so that ranks that each sum their
share of the batches give, added up, the same float64 as one process summing every batch.

Each entry is kept as an unevaluated pair ``hi + lo`` of float64 (Knuth's error-free TwoSum: ``hi``
the rounded running sum, ``lo`` the exact rounding errors). Terms here are float32 values (or
per-batch sums computed identically on every rank); their sum then needs far fewer than the ~106
bits the pair holds, so the pair is the exact sum, and :meth:`ExactSum.value` (``hi + lo`` rounded
once) is the correctly rounded sum, whatever the order of the terms and however they were split
between ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


class ExactSum:
    """An order-independent float64 sum of tensors of one shape (on the CPU)."""

    def __init__(self, shape: tuple[int, ...]):
        self.hi = torch.zeros(shape, dtype=torch.float64)
        self.lo = torch.zeros(shape, dtype=torch.float64)

    def add(self, x: torch.Tensor, index: Any = ...) -> None:
        """Add ``x`` to the entries ``index`` (default: all)."""
        x = x.detach().to(device="cpu", dtype=torch.float64)
        s, e = _two_sum(self.hi[index], x)
        self.hi[index] = s
        self.lo[index] += e

    def value(self) -> torch.Tensor:
        return self.hi + self.lo

    def merge(self, other: "ExactSum") -> None:
        s, e = _two_sum(self.hi, other.hi)
        self.hi, self.lo = s, self.lo + other.lo + e

    def across(self, ranks, step: str) -> None:
        """Replace this rank's partial sum by the sum over every rank (every rank gets it)."""
        if ranks is None:
            return

        def total(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
            out = ExactSum(parts[0][0].shape)
            for hi, lo in parts:
                part = ExactSum(hi.shape)
                part.hi, part.lo = torch.from_numpy(hi), torch.from_numpy(lo)
                out.merge(part)
            return out.hi.numpy(), out.lo.numpy()

        hi, lo = ranks.exchange((self.hi.numpy(), self.lo.numpy()), step, combine=total)
        self.hi, self.lo = torch.from_numpy(hi.copy()), torch.from_numpy(lo.copy())
