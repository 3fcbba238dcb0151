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

By node (``by="node"``): the circuit of the top n heads and MLPs by node score (the sum of a node's
outgoing edges' scores), ``input`` and ``logits`` always kept, is every edge among the kept nodes,
pruned the same way; its curve takes n = ⌊fraction × L·(H + 1)⌋ nodes. This is not MIB's node
level: MIB counts 1 + L·(H + 1) scored nodes (``input`` included, and droppable) and EAP-IG scores a
node by its own output's difference times the gradient there, not by its outgoing edges (docs/edges.md).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from logitscope.results.edge_graph import n_items, select
from logitscope.results.edges import CircuitEval, Curve
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


def circuits_for(graph, scores: torch.Tensor, fractions: Sequence[float] = FRACTIONS, *, absolute: bool = True,
                 use_greedy: bool = False, by: str = "edge") -> tuple[list[int], list[torch.Tensor]]:
    """For each fraction, n = ⌊fraction × edges⌋ and the pruned circuit of the top n edges (or of
    the library's greedy selection); ``by="node"``: n = ⌊fraction × heads and MLPs⌋ and the pruned
    circuit among the top n nodes."""
    total = n_items(graph, by)
    ns = [int(math.floor(fr * total + 1e-9)) for fr in fractions]
    return ns, [select(graph, scores, n, absolute=absolute, by=by, use_greedy=use_greedy) for n in ns]


def _quantiles(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = (1 - LEVEL) / 2
    return np.nanquantile(values, q, axis=0), np.nanquantile(values, 1 - q, axis=0)


def _bootstrap(m_c: np.ndarray, m_empty: np.ndarray, clean: np.ndarray, seed: int, n_resamples: int) -> np.ndarray:
    """f of each circuit on each resample of the prompts: ``[n_resamples, k]``."""
    boots = []
    for block in resample_indices(len(clean), n_resamples=n_resamples, seed=seed):
        for idx in block:
            boots.append(faithfulness_values(m_c[:, idx], m_empty[idx], clean[idx]))
    return np.array(boots)


def curve_of(order: str, fractions: Sequence[float], ns: list[int], kept: list[int], m_c: np.ndarray,
             m_empty: np.ndarray, clean: np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES) -> Curve:
    """The curve from per-prompt metrics: ``m_c`` ``[n_fractions, n]`` (each circuit), ``m_empty``,
    ``clean`` ``[n]``; f, CPR and CMD with 95% percentile-bootstrap intervals (one set of resamples)."""
    f = faithfulness_values(m_c, m_empty, clean)
    boots = _bootstrap(m_c, m_empty, clean, seed, n_resamples)
    low, high = _quantiles(boots)
    cpr, cmd = areas(fractions, f)
    b_cpr, b_cmd = areas(fractions, boots)
    cpr_iv, cmd_iv = _quantiles(b_cpr), _quantiles(b_cmd)
    return Curve(order, tuple(fractions), list(ns), list(kept), f, low, high, float(cpr),
                 (float(cpr_iv[0]), float(cpr_iv[1])), float(cmd), (float(cmd_iv[0]), float(cmd_iv[1])),
                 float(clean.mean()), float(m_empty.mean()))


def circuit_eval_of(order: str, n_requested: int, kept: int, m_c: np.ndarray, m_empty: np.ndarray,
                    clean: np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
                    edges: Any = None) -> CircuitEval:
    """One circuit's faithfulness with its 95% percentile-bootstrap interval."""
    f = float(faithfulness_values(m_c[None], m_empty, clean)[0])
    low, high = _quantiles(_bootstrap(m_c[None], m_empty, clean, seed, n_resamples)[:, 0])
    return CircuitEval(order, n_requested, kept, f, float(low), float(high), float(m_c.mean()), float(clean.mean()),
                       float(m_empty.mean()), edges)


def _order(absolute: bool, use_greedy: bool, by: str = "edge") -> str:
    prefix = "node-" if by == "node" else "greedy-" if use_greedy else ""
    return prefix + ("abs" if absolute else "signed")


def faithfulness_curve(engine, scores: torch.Tensor, *, absolute: bool = True, use_greedy: bool = False,
                       fractions: Sequence[float] = FRACTIONS, seed: int = 0, n_resamples: int = N_RESAMPLES,
                       by: str = "edge") -> Curve:
    """The faithfulness curve of ``scores`` on ``engine``'s model and prompts (see the module)."""
    g = engine.graph
    ns, circuits = circuits_for(g, scores, fractions, absolute=absolute, use_greedy=use_greedy, by=by)
    values, clean = engine.evaluate([torch.zeros_like(g.real)] + circuits)
    return curve_of(_order(absolute, use_greedy, by), fractions, ns, [int(c.sum()) for c in circuits], values[1:],
                    values[0], clean, seed=seed, n_resamples=n_resamples)


def evaluate_all(engine, scores: torch.Tensor, *, curve: bool = True, top_n: int | None = None,
                 use_greedy: bool = False, given: torch.Tensor | None = None, seed: int = 0,
                 n_resamples: int = N_RESAMPLES, by: str = "edge"
                 ) -> tuple[Curve | None, Curve | None, CircuitEval | None, dict[str, np.ndarray]]:
    """MIB's two curves (by |score| and signed; ``curve``) and the top-``top_n`` circuit (by |score|),
    all in one pass over the prompts (the empty circuit run once for all): (curve, curve_signed,
    circuit, per-prompt metrics ``clean``, ``empty``, ``curve``, ``curve_signed``, ``circuit``).
    ``given``: a circuit (``[n_forward, n_backward]`` bool, e.g. a graph file's ``in_graph``) to
    evaluate as it is instead of the top-``top_n`` one. ``by="node"``: circuits of the top n heads
    and MLPs (``top_n`` counts nodes; the curves' n are fractions of the nodes)."""
    g = engine.graph
    circuits: list[torch.Tensor] = [torch.zeros_like(g.real)]
    parts: dict[str, tuple[list[int], list[torch.Tensor]]] = {}
    if curve:
        parts["curve"] = circuits_for(g, scores, FRACTIONS, absolute=True, use_greedy=use_greedy, by=by)
        parts["curve_signed"] = circuits_for(g, scores, FRACTIONS, absolute=False, use_greedy=use_greedy, by=by)
    if top_n is not None:
        parts["circuit"] = ([top_n], [select(g, scores, top_n, absolute=True, by=by, use_greedy=use_greedy)])
    elif given is not None:
        given = given.bool() & g.real
        parts["circuit"] = ([int(given.sum())], [given])
    for _, cs in parts.values():
        circuits += cs
    values, clean = engine.evaluate(circuits)
    per_prompt = {"clean": clean, "empty": values[0]}
    at = 1
    for name, (ns, cs) in parts.items():
        per_prompt[name] = values[at:at + len(cs)] if name != "circuit" else values[at]
        at += len(cs)
    kw = {"seed": seed, "n_resamples": n_resamples}
    out_curves = [curve_of(_order(name == "curve", use_greedy, by), FRACTIONS, parts[name][0],
                           [int(c.sum()) for c in parts[name][1]], per_prompt[name], values[0], clean, **kw)
                  if name in parts else None for name in ("curve", "curve_signed")]
    circuit = None
    if "circuit" in parts:
        order = _order(True, use_greedy, by) if top_n is not None else "given"
        circuit = circuit_eval_of(order, parts["circuit"][0][0], int(parts["circuit"][1][0].sum()),
                                  per_prompt["circuit"], values[0], clean, edges=parts["circuit"][1][0], **kw)
    return out_curves[0], out_curves[1], circuit, per_prompt


def faithfulness(engine, circuit: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """f of one circuit, with the per-prompt metrics m(C), m(∅), m(N)."""
    values, clean = engine.evaluate([circuit, torch.zeros_like(engine.graph.real)])
    return float(faithfulness_values(values[:1], values[1], clean)[0]), values[0], values[1], clean
