"""Numbers for results.json: floats, with ``None`` where a value is not finite (JSON has no NaN).
Shared by every patching result (grids, paths, circuits), which import nothing else of each other."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_number(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def json_nested(a: np.ndarray) -> Any:
    """A float64 array as nested lists, ``None`` for values that are not finite."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return json_number(a)
    if np.isfinite(a).all():
        return a.tolist()
    return [json_nested(x) for x in a]
