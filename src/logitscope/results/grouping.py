"""Per-template grouping: the mean logit difference of each (template, order) group of prompts.

IOI prompts carry ``template`` and ``order`` in their metadata; so may any JSONL row (its extra
keys are kept). Prompts without a ``template`` are in no group.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from logitscope.stats import bootstrap_ci
from logitscope.inputs.prompt import Prompt


def _key_part(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) else json.dumps(v)


def _order_key(key: tuple) -> tuple:
    """Numbers in numeric order, then text."""
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in key)


def by_template(prompts: Sequence[Prompt], logit_diff: np.ndarray, *, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (template, order) group, in template order: ``template``, ``order`` (``""`` when
    the prompts have none), ``n``, ``logit_diff_mean``, its seeded 95% bootstrap interval
    (``ci95_low``, ``ci95_high``, over the group's prompts) and ``frac_correct`` (the fraction
    whose logit difference is positive). A template that is not text or a number is keyed by its JSON."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        if "template" in p.meta:
            key = (_key_part(p.meta["template"]), _key_part(p.meta.get("order", "")))
            groups.setdefault(key, []).append(i)
    rows = []
    for (template, order), idx in sorted(groups.items(), key=lambda kv: _order_key(kv[0])):
        ld = logit_diff[idx]
        lo, hi = bootstrap_ci(ld[None], seed=seed)
        rows.append({
            "template": template,
            "order": order,
            "n": len(idx),
            "logit_diff_mean": float(ld.mean()),
            "ci95_low": float(lo[0]),
            "ci95_high": float(hi[0]),
            "frac_correct": float((ld > 0).mean()),
        })
    return rows
