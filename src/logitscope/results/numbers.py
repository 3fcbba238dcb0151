"""Numbers for results.json: floats, with ``None`` where a value is not finite (JSON has no NaN); and
how many digits a metric's values get in text. Shared by every patching result (grids, paths,
circuits), which import nothing else of each other."""

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


# Metrics on the logit / log-probability scale (results.json keys): printed with the logit
# difference's four decimals. Probabilities and KL may be ~1e-5: four significant digits.
LOG_SCALE_METRICS = frozenset({"logit_diff", "logit_diff_softcapped", "logprob_diff", "logprob", "loss"})


def metric_format(key: str) -> str:
    """The format spec of a metric's values in text (``".4f"`` or ``".4g"``), by its results.json key,
    so a log-probability line shows as many digits as a logit-difference line."""
    return ".4f" if key in LOG_SCALE_METRICS else ".4g"
