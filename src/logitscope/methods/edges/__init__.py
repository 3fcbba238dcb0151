"""Edge-level circuit discovery: EAP, EAP-IG, exact edge patching and MIB's faithfulness curves
on Hugging Face models (see :mod:`logitscope.results.edge_graph` for the graph,
:mod:`logitscope.methods.edges.attribute` for the scores and their conventions,
:mod:`logitscope.methods.edges.evaluate` for faithfulness, CPR and CMD,
:mod:`logitscope.results.edges` for the result and its files)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from logitscope.engine import distributed
from logitscope.errors import ArgumentError
from logitscope.inputs.counterparts import with_counterparts
from logitscope.inputs.pairs import encode_pairs
from logitscope.inputs.prompts import GeneratedSet, parse_prompts
from logitscope.engine.metrics import METRICS, Metric, MetricContext, MetricLike, MetricSpec, resolve_metric
from logitscope.methods.edges.attribute import (INTERVENTIONS, METHODS, EdgeData, EdgeEngine, check_options,
                                                edge_batch_size)
from logitscope.methods.edges.evaluate import (FRACTIONS, faithfulness, faithfulness_curve, evaluate_all)
from logitscope.results.edge_graph import EdgeGraph, edges_among, greedy, n_items, prune_edges, top_n, top_n_nodes
from logitscope.results.edges import CircuitEval, Curve, EdgeResult
from logitscope.results.graph_json import read_graph_json, write_graph_json

BY: tuple[str, ...] = ("edge", "node")  # what a circuit's n counts: edges, or heads and MLPs

__all__ = ["BY", "CircuitEval", "EdgeData", "EdgeEngine", "EdgeGraph", "EdgeOptions", "EdgeResult", "Curve", "FRACTIONS", "INTERVENTIONS",
           "METHODS", "METRICS", "Metric", "MetricContext", "MetricLike", "attribute", "check_counts", "edge_batch_size",
           "encode_edge_data", "check_by", "edges_among", "evaluate_all", "faithfulness", "faithfulness_curve", "greedy",
           "prune_edges", "read_graph_json", "top_n", "top_n_nodes", "write_graph_json"]


def encode_edge_data(lm, prompts: Sequence[Any] | str, *, corrupt: str | None = None, intervention: str = "patching",
                     prepend_bos: bool | None = None, seed: int = 0) -> EdgeData:
    """Token ids of ``prompts`` and their counterparts as the rest of logitscope encodes them
    (BOS as the family's default unless ``prepend_bos`` says otherwise; counterparts from JSONL
    ``corrupted`` or ``corrupt='abc'|'flip'`` for IOI; ``zero`` needs none). Answer sets are kept
    whole (``[N, K]`` padded with ``-1``), as every metric measures them."""
    from logitscope.inputs.encode import encode_prompts, tokenize

    parsed = parse_prompts(prompts)
    prompts = parsed.generate(seed=seed, tokenizer=lm.tokenizer) if isinstance(parsed, GeneratedSet) else list(parsed)
    if intervention != "zero" or corrupt is not None:
        prompts = with_counterparts(prompts, corrupt, seed=seed, tokenizer=lm.tokenizer)
    bos = lm.adapter.default_prepend_bos if prepend_bos is None else prepend_bos
    enc = encode_prompts(prompts, lm, prepend_bos=bos, sets=True)
    correct, incorrect = (enc.correct, enc.incorrect) if enc.correct_set is None else (enc.correct_set,
                                                                                        enc.incorrect_set)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (lm.tokenizer.eos_token_id or 0)
    if all(p.corrupted is not None for p in prompts):
        pairs = encode_pairs(prompts, enc.ids, enc.correct, enc.incorrect, lambda t: tokenize(lm.tokenizer, t),
                             lm.tokenizer.bos_token_id if bos else None)
        return EdgeData(pairs.clean, pairs.corrupted, correct, incorrect, pad)
    return EdgeData(enc.ids, None, correct, incorrect, pad)


def check_counts(batch_size: int | None = None, exact_top: int = 0, top_n: int | None = None) -> None:
    """The whole-number options' errors, before any model is loaded."""
    for name, value, least in (("batch_size", batch_size, 1), ("exact_top", exact_top, 0), ("top_n", top_n, 1)):
        if value is None and name != "exact_top":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ArgumentError(name, value, f"must be a whole number, at least {least}")


def check_by(by: str, greedy: bool = False) -> None:
    """``by``'s errors (and greedy by node, which the library does not define), before any model is loaded."""
    if by not in BY:
        raise ArgumentError("by", by, "use 'edge' (circuits of the top n edges) or 'node' (of the top n heads and "
                            "MLPs, every edge among them)")
    if by == "node" and greedy:
        raise ArgumentError("greedy", greedy, "the greedy selection grows a circuit edge by edge; it has no node "
                            "form (nor in the EAP-IG library): use by='edge' with greedy, or by='node' without")


@dataclass(frozen=True, eq=False)
class EdgeOptions:
    """What :func:`attribute` computes and how it reads the prompts, checked when made (before any
    forward pass); the fields are :func:`attribute`'s options, at their defaults. ``used_steps``: the
    IG steps run (``steps``, or the method's default); ``spec``: the resolved ``metric``."""

    method: str = "eap-ig-inputs"
    steps: int | None = None
    intervention: str = "patching"
    metric: MetricLike = None
    corrupt: str | None = None
    batch_size: int | None = None
    curve: bool = False
    top_n: int | None = None
    greedy: bool = False
    exact_top: int = 0
    circuit: Any = None
    prepend_bos: bool | None = None
    seed: int = 0
    by: str = "edge"
    used_steps: int = field(init=False)
    spec: MetricSpec = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "used_steps", check_options(self.method, self.steps, self.intervention))
        object.__setattr__(self, "spec", resolve_metric(self.metric))
        check_counts(self.batch_size, self.exact_top, self.top_n)
        check_by(self.by, self.greedy)


def attribute(lm, prompts: Sequence[Any] | str | EdgeData, options: EdgeOptions | None = None, *,
              progress: Callable[[str, int], Callable[[int], None] | None] | None = None, **given: Any) -> EdgeResult:
    """Score every edge of ``lm`` (a :class:`logitscope.models.LoadedModel`) on ``prompts``, with
    ``options`` (an :class:`EdgeOptions`), or its fields given by name (``attribute(lm, prompts,
    method="eap", curve=True)``).

    ``method``: one of :data:`METHODS` (``steps``: IG steps, default 5). ``intervention``: one of
    :data:`INTERVENTIONS`. ``metric``: a name of :data:`METRICS` (None: ``logit-diff``) or a callable
    ``(logits [b, d_vocab] at the answer position, MetricContext) -> [b]``
    (:mod:`logitscope.engine.metrics`, the one definition every method uses). ``curve``: also MIB's faithfulness curves
    (by |score| and signed) with CPR and CMD. ``top_n``: also the faithfulness of the top-``top_n``
    circuit (by |score|), marked ``in_graph`` in graph.json. ``greedy``: circuits by the library's
    greedy selection instead of top-n. ``exact_top``: also the exact effect of the top that many
    edges, beside their estimates. ``by``: ``"edge"`` (default) or ``"node"``: circuits of the top n
    heads and MLPs by node score (``input`` and ``logits`` always kept; every edge among the kept
    nodes), ``top_n`` then counting nodes and the curves taking fractions of the L·(H + 1) nodes. ``circuit``: a graph file (EAP-IG/MIB format) or a
    ``[n_forward, n_backward]`` bool matrix whose circuit (``in_graph``) is evaluated instead of the
    top-``top_n`` one (a file for another model shape is refused). ``batch_size``: default from free memory
    (:func:`edge_batch_size`). ``progress(phase, total)``: a callback per phase (``scores``,
    ``circuits``, ``exact``) returning a step function (called with each batch's prompts), or None.
    In a process group (torchrun) each rank runs its share of the batches and every rank returns
    the single process's result. Options are checked before any forward pass.
    """
    if options is not None and given:
        raise TypeError(f"attribute takes options or their names, not both (got {', '.join(sorted(given))})")
    o = EdgeOptions(**given) if options is None else options
    data = prompts if isinstance(prompts, EdgeData) else encode_edge_data(
        lm, prompts, corrupt=o.corrupt, intervention=o.intervention, prepend_bos=o.prepend_bos, seed=o.seed)
    ranks = distributed.current()
    graph = EdgeGraph.from_model(lm)
    given_circuit = _checked_against(graph, o)
    B = o.batch_size or edge_batch_size(lm, graph, int(data.lengths.max()), o.method)
    if o.batch_size is None and ranks is not None:  # every rank runs the batches one process would
        B = ranks.agree_min(B, "the choice of the edges' batch size")
    share = data.n if ranks is None else ranks.shares(data.n, B)[ranks.rank]
    engine = EdgeEngine(lm, data, intervention=o.intervention, metric=o.spec, batch_size=B, graph=graph, ranks=ranks)
    timing: dict[str, Any] = {"batch_size": B, "world_size": 1 if ranks is None else ranks.world_size,
                              "prompts_per_rank": [data.n] if ranks is None else ranks.shares(data.n, B)}

    def phase(name: str, runs: int) -> None:
        engine.progress = progress(name, share * runs) if progress is not None else None

    t = time.perf_counter()
    phase("scores", 1)
    scores = engine.scores(o.method, steps=o.used_steps)
    timing["scores_s"] = time.perf_counter() - t
    result = EdgeResult(graph, scores, o.method, o.used_steps, o.intervention,
                        o.spec.name, data.n,
                        greedy=o.greedy, by=o.by, seed=o.seed,
                        prepend_bos=lm.adapter.default_prepend_bos if o.prepend_bos is None else o.prepend_bos)
    if o.curve or o.top_n is not None or given_circuit is not None:
        t = time.perf_counter()
        phase("circuits", 1)
        c, cs, ce, per_prompt = evaluate_all(engine, scores, curve=o.curve, top_n=o.top_n, use_greedy=o.greedy,
                                             given=given_circuit, seed=o.seed, by=o.by)
        result = replace(result, curve=c, curve_signed=cs, circuit_eval=ce, per_prompt=per_prompt)
        timing["circuits_s"] = time.perf_counter() - t
    if o.exact_top:
        t = time.perf_counter()
        phase("exact", 1)
        result = replace(result, exact_top=exact_effects(engine, result, o.exact_top))
        timing["exact_s"] = time.perf_counter() - t
    engine.progress = None
    return replace(result, timing=timing)


def _checked_against(graph: EdgeGraph, o: EdgeOptions):
    """The options that need the model's graph (``top_n``, ``circuit``, ``exact_top``) checked against
    it; the circuit to evaluate (None: the top-n one)."""
    if o.top_n is not None and o.top_n > n_items(graph, o.by):
        what = f"{graph.n_edges} edges" if o.by == "edge" else f"{graph.n_scored_nodes} heads and MLPs (by node)"
        raise ArgumentError("top_n", o.top_n, f"the model's graph has {what}; ask for at most that many")
    given = _given_circuit(o.circuit, graph)
    if given is not None and o.top_n is not None:
        raise ArgumentError("top_n", o.top_n, "a circuit is given to evaluate; give either top_n or circuit")
    if o.exact_top > graph.n_edges:
        raise ArgumentError("exact_top", o.exact_top, f"the model's graph has {graph.n_edges} edges")
    return given


def exact_effects(engine: EdgeEngine, result: EdgeResult, k: int) -> dict[str, float]:
    """The exact effect (mean change of the metric with the edge alone corrupted) of the top ``k``
    edges by |score|, in one pass over the prompts."""
    g = engine.graph
    names = [n for n, _ in result.top_edges(k)]
    lookup, (src, dst) = g.edge_lookup(), g.edge_index
    circuits = []
    for n in names:
        c = g.real.clone()
        c[src[lookup[n]], dst[lookup[n]]] = False
        circuits.append(c)
    values, clean = engine.evaluate(circuits)
    return {n: float((values[i] - clean).mean()) for i, n in enumerate(names)}


def _given_circuit(circuit: Any, graph: EdgeGraph):
    """A circuit to evaluate: ``None``, a graph file (checked against the model's graph) or a bool matrix."""
    import torch

    if circuit is None:
        return None
    if isinstance(circuit, torch.Tensor):
        if tuple(circuit.shape) != (graph.n_forward, graph.n_backward):
            raise ArgumentError("circuit", tuple(circuit.shape), f"a circuit matrix of this model is "
                                f"[{graph.n_forward}, {graph.n_backward}] (forward nodes × inputs)")
        return circuit.bool()
    return read_graph_json(circuit, expected=graph)[2]
