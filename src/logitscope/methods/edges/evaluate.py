"""Faithfulness of circuits, and MIB's faithfulness curve with its CPR and CMD.

A circuit is a set of edges; it is run with every other edge corrupted (the same intervention as
the scores: its child's input is the residual stream plus corrupted − this run's output of the
parent). Its faithfulness is f(C) = (m(C) − m(∅)) / (m(N) − m(∅)), m the metric averaged over
prompts, N the whole model (every edge in) and ∅ no edge (every edge corrupted).

MIB's curve: at each of the fractions 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %, 50 %, 100 % of
the edges, the top n = ⌊fraction × edges⌋ edges (by |score|, or by signed score), pruned to the
edges on a path from ``input`` to ``logits``. CPR is the area under f over those fractions and CMD
the area of |1 − f|, both by trapezoids on a linear scale (``evaluate_area_under_curve`` of
``hannamw/MIB-circuit-track``). MIB's leaderboard takes CMD from the curve by |score| and CPR from
the curve by signed score. Intervals: 95 % percentile bootstrap over prompts (the same resamples
for every point, :mod:`logitscope.stats`), of f, CPR and CMD alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from logitscope.methods.edges.graph import greedy, top_n
from logitscope.stats import LEVEL, N_RESAMPLES, resample_indices

FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def areas(fractions: Sequence[float], f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CPR, CMD) of faithfulness values ``f`` ``[..., n_fractions]``: trapezoids on a linear scale."""
    x = np.asarray(fractions, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    dx = np.diff(x)
    cpr = ((f[..., 1:] + f[..., :-1]) / 2 * dx).sum(-1)
    gap = np.abs(1.0 - f)
    cmd = ((gap[..., 1:] + gap[..., :-1]) / 2 * dx).sum(-1)
    return cpr, cmd


def faithfulness_values(m_circuits: np.ndarray, m_empty: np.ndarray, m_full: np.ndarray) -> np.ndarray:
    """f of each circuit from per-prompt metrics (``[k, n]``, ``[n]``, ``[n]``)."""
    return (m_circuits.mean(-1) - m_empty.mean()) / (m_full.mean() - m_empty.mean())


@dataclass
class Curve:
    """A faithfulness curve: per fraction, the edges asked for and kept after pruning, f and its
    interval; CPR and CMD with theirs."""

    order: str  # "abs" (top-n by |score|), "signed", or "greedy-abs" / "greedy-signed"
    fractions: tuple[float, ...]
    n_requested: list[int]
    n_edges: list[int]
    faithfulness: np.ndarray
    low: np.ndarray
    high: np.ndarray
    cpr: float
    cpr_interval: tuple[float, float]
    cmd: float
    cmd_interval: tuple[float, float]
    m_full: float
    m_empty: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": self.order, "fractions": list(self.fractions), "n_requested": list(self.n_requested),
            "n_edges": list(self.n_edges), "faithfulness": self.faithfulness.tolist(), "low": self.low.tolist(),
            "high": self.high.tolist(), "cpr": self.cpr, "cpr_interval": list(self.cpr_interval), "cmd": self.cmd,
            "cmd_interval": list(self.cmd_interval), "m_full": self.m_full, "m_empty": self.m_empty,
        }


def circuits_for(graph, scores: torch.Tensor, fractions: Sequence[float] = FRACTIONS, *, absolute: bool = True,
                 use_greedy: bool = False) -> tuple[list[int], list[torch.Tensor]]:
    """For each fraction, n = ⌊fraction × edges⌋ and the pruned circuit of the top n edges (or of
    the library's greedy selection)."""
    select = greedy if use_greedy else top_n
    ns = [int(math.floor(fr * graph.n_edges + 1e-9)) for fr in fractions]
    return ns, [select(graph, scores, n, absolute=absolute) for n in ns]


def faithfulness_curve(engine, scores: torch.Tensor, *, absolute: bool = True, use_greedy: bool = False,
                       fractions: Sequence[float] = FRACTIONS, seed: int = 0,
                       n_resamples: int = N_RESAMPLES) -> Curve:
    """The faithfulness curve of ``scores`` on ``engine``'s model and prompts (see the module)."""
    g = engine.graph
    ns, circuits = circuits_for(g, scores, fractions, absolute=absolute, use_greedy=use_greedy)
    empty = torch.zeros_like(g.real)
    values, clean = engine.evaluate([empty] + circuits)
    m_empty, m_c = values[0], values[1:]
    f = faithfulness_values(m_c, m_empty, clean)
    boots = []
    for block in resample_indices(engine.data.n, n_resamples=n_resamples, seed=seed):
        for idx in block:
            boots.append(faithfulness_values(m_c[:, idx], m_empty[idx], clean[idx]))
    boots = np.array(boots)  # [n_resamples, n_fractions]
    q = (1 - LEVEL) / 2
    low, high = np.nanquantile(boots, q, axis=0), np.nanquantile(boots, 1 - q, axis=0)
    cpr, cmd = areas(fractions, f)
    b_cpr, b_cmd = areas(fractions, boots)
    order = ("greedy-" if use_greedy else "") + ("abs" if absolute else "signed")
    return Curve(order, tuple(fractions), ns, [int(c.sum()) for c in circuits], f, low, high, float(cpr),
                 (float(np.nanquantile(b_cpr, q)), float(np.nanquantile(b_cpr, 1 - q))), float(cmd),
                 (float(np.nanquantile(b_cmd, q)), float(np.nanquantile(b_cmd, 1 - q))),
                 float(clean.mean()), float(m_empty.mean()))


def faithfulness(engine, circuit: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """f of one circuit, with the per-prompt metrics m(C), m(∅), m(N)."""
    values, clean = engine.evaluate([circuit, torch.zeros_like(engine.graph.real)])
    return float(faithfulness_values(values[:1], values[1], clean)[0]), values[0], values[1], clean
