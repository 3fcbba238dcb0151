"""Edge-level circuit discovery: EAP, EAP-IG, exact edge patching and MIB's faithfulness curves
on Hugging Face models (see :mod:`logitscope.methods.edges.graph` for the graph,
:mod:`logitscope.methods.edges.attribute` for the scores and their conventions,
:mod:`logitscope.methods.edges.evaluate` for faithfulness, CPR and CMD)."""

from __future__ import annotations

from typing import Any, Sequence

from logitscope.methods.edges.attribute import (INTERVENTIONS, METHODS, METRICS, EdgeData, EdgeEngine, Metric,
                                        MetricContext, check_options)
from logitscope.methods.edges.evaluate import FRACTIONS, Curve, faithfulness, faithfulness_curve
from logitscope.methods.edges.graph import EdgeGraph, greedy, prune_edges, top_n
from logitscope.methods.edges.graph_file import read_graph_json, write_graph_json
from logitscope.methods.edges.result import EdgeResult
from logitscope.errors import ArgumentError
from logitscope.inputs.pairs import encode_pairs
from logitscope.inputs.counterparts import with_counterparts
from logitscope.inputs.prompts import GeneratedSet, parse_prompts

__all__ = ["EdgeData", "EdgeEngine", "EdgeGraph", "EdgeResult", "Curve", "FRACTIONS", "INTERVENTIONS", "METHODS",
           "METRICS", "Metric", "MetricContext", "attribute", "encode_edge_data", "faithfulness",
           "faithfulness_curve", "greedy", "prune_edges", "read_graph_json", "top_n", "write_graph_json"]


def encode_edge_data(lm, prompts: Sequence[Any] | str, *, corrupt: str | None = None, intervention: str = "patching",
                     prepend_bos: bool | None = None, seed: int = 0) -> EdgeData:
    """Token ids of ``prompts`` and their counterparts as the rest of logitscope encodes them
    (BOS as the family's default unless ``prepend_bos`` says otherwise; counterparts from JSONL
    ``corrupted`` or ``corrupt='abc'|'flip'`` for IOI; ``zero`` needs none)."""
    from logitscope.inputs.encode import encode_prompts, tokenize

    parsed = parse_prompts(prompts)
    prompts = parsed.generate(seed=seed, tokenizer=lm.tokenizer) if isinstance(parsed, GeneratedSet) else list(parsed)
    if intervention != "zero" or corrupt is not None:
        prompts = with_counterparts(prompts, corrupt, seed=seed, tokenizer=lm.tokenizer)
    bos = lm.adapter.default_prepend_bos if prepend_bos is None else prepend_bos
    enc = encode_prompts(prompts, lm, prepend_bos=bos)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (lm.tokenizer.eos_token_id or 0)
    if all(p.corrupted is not None for p in prompts):
        pairs = encode_pairs(prompts, enc.ids, enc.correct, enc.incorrect, lambda t: tokenize(lm.tokenizer, t),
                             lm.tokenizer.bos_token_id if bos else None)
        return EdgeData(pairs.clean, pairs.corrupted, pairs.correct, pairs.incorrect, pad)
    return EdgeData(enc.ids, None, enc.correct, enc.incorrect, pad)


def attribute(lm, prompts: Sequence[Any] | str | EdgeData, *, method: str = "eap-ig-inputs", steps: int | None = None,
              intervention: str = "patching", metric: str | Metric = "logit-diff", corrupt: str | None = None,
              batch_size: int = 8, curve: bool = False, exact_top: int = 0, prepend_bos: bool | None = None,
              seed: int = 0) -> EdgeResult:
    """Score every edge of ``lm`` (a :class:`logitscope.models.LoadedModel`) on ``prompts``.

    ``method``: one of :data:`METHODS` (``steps``: IG steps, default 5). ``intervention``: one of
    :data:`INTERVENTIONS`. ``metric``: ``logit-diff``, ``prob-diff``, ``kl`` or a callable
    ``(logits [b, pos, vocab], MetricContext) -> [b]``. ``curve``: also MIB's faithfulness curves
    (by |score| and signed) with CPR and CMD. ``exact_top``: also the exact effect of the top that
    many edges, beside their estimates. Options are checked before any forward pass.
    """
    used_steps = check_options(method, steps, intervention)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError("batch_size", batch_size, "must be a whole number, at least 1")
    if isinstance(exact_top, bool) or not isinstance(exact_top, int) or exact_top < 0:
        raise ArgumentError("exact_top", exact_top, "must be a whole number, 0 or more")
    data = prompts if isinstance(prompts, EdgeData) else encode_edge_data(
        lm, prompts, corrupt=corrupt, intervention=intervention, prepend_bos=prepend_bos, seed=seed)
    engine = EdgeEngine(lm, data, intervention=intervention, metric=metric, batch_size=batch_size)
    scores = engine.scores(method, steps=used_steps)
    result = EdgeResult(engine.graph, scores, method, used_steps, intervention,
                        metric if isinstance(metric, str) else getattr(metric, "__name__", "callable"), data.n)
    if curve:
        result.curve = faithfulness_curve(engine, scores, absolute=True, seed=seed)
        result.curve_signed = faithfulness_curve(engine, scores, absolute=False, seed=seed)
    if exact_top:
        g = engine.graph
        names = [n for n, _ in result.top_edges(exact_top)]
        lookup, (src, dst) = g.edge_lookup(), g.edge_index
        circuits = []
        for n in names:
            c = g.real.clone()
            c[src[lookup[n]], dst[lookup[n]]] = False
            circuits.append(c)
        values, clean = engine.evaluate(circuits)
        result.exact_top = {n: float((values[i] - clean).mean()) for i, n in enumerate(names)}
    return result
