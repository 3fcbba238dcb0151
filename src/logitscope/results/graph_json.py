"""``graph.json`` in the EAP-IG / MIB format, written and read.

The layout is the EAP-IG library's ``Graph.to_json``: ``{"cfg": {n_layers, n_heads,
parallel_attn_mlp, d_model}, "nodes": {name: {"in_graph": bool[, "score": float]}}, "edges":
{name: {"score": float, "in_graph": bool}}}``, nodes and edges in the library's order, which its
``Graph.from_json`` reads and MIB's circuit track accepts as a submission. Scores are written with
logitscope's sign (the change of the metric); MIB's own files hold −1/20 of that for its batches
of 20 with a loss (see :mod:`logitscope.methods.edges.attribute`), which changes no ranking by |score|.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from logitscope.results.edge_graph import EdgeGraph, nodes_of
from logitscope.errors import InputError
from logitscope.results.io import write_text_atomic


def graph_dict(graph: EdgeGraph, scores: torch.Tensor, in_graph: torch.Tensor | None = None,
               node_scores: torch.Tensor | None = None) -> dict[str, Any]:
    """The file's content. ``in_graph``: the circuit (default: no edge); ``node_scores``
    ``[n_forward]`` (optional)."""
    in_graph = torch.zeros_like(graph.real) if in_graph is None else in_graph.bool() & graph.real
    used = nodes_of(graph, in_graph)
    nodes: dict[str, dict[str, Any]] = {}
    for f, name in enumerate(graph.forward_names):
        nodes[name] = {"in_graph": bool(used[f])}
        if node_scores is not None:
            nodes[name]["score"] = float(node_scores[f])
    nodes["logits"] = {"in_graph": True}
    src, dst = graph.edge_index
    edges = {name: {"score": float(scores[s, d]), "in_graph": bool(in_graph[s, d])}
             for name, s, d in zip(graph.edge_names, src, dst)}
    return {"cfg": graph.cfg, "nodes": nodes, "edges": edges}


def write_graph_json(path: str | Path, graph: EdgeGraph, scores: torch.Tensor, in_graph: torch.Tensor | None = None,
                     node_scores: torch.Tensor | None = None) -> Path:
    """Write ``path`` atomically (:func:`logitscope.results.io.write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(graph_dict(graph, scores, in_graph, node_scores)))


def read_graph_json(path: str | Path, expected: EdgeGraph | None = None) -> tuple[EdgeGraph, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(graph, scores, in_graph, node scores or None) of a graph file written by logitscope, the
    EAP-IG library or MIB. ``expected``: the model's graph, which the file's shape must match."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read a graph file ({err})") from err
    missing = [k for k in ("cfg", "nodes", "edges") if not isinstance(d, dict) or k not in d]
    if missing:
        raise InputError(f"{path}: not a graph file in the EAP-IG/MIB format (no {', '.join(missing)}); it needs "
                         "'cfg', 'nodes' and 'edges'")
    cfg = d["cfg"]
    try:
        graph = EdgeGraph(int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg.get("parallel_attn_mlp", False)),
                          int(cfg.get("d_model", 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: its cfg needs n_layers and n_heads ({err})") from err
    if expected is not None and (graph.n_layers, graph.n_heads, graph.parallel_attn_mlp) != (
            expected.n_layers, expected.n_heads, expected.parallel_attn_mlp):
        raise InputError(f"{path}: a graph of {graph.n_layers} layers × {graph.n_heads} heads"
                         f"{' (parallel attention/MLP)' if graph.parallel_attn_mlp else ''}, but the model has "
                         f"{expected.n_layers} × {expected.n_heads}"
                         f"{' (parallel attention/MLP)' if expected.parallel_attn_mlp else ''}: it was made for "
                         "another model")
    lookup = graph.edge_lookup()
    src, dst = graph.edge_index
    scores = torch.zeros(graph.n_forward, graph.n_backward, dtype=torch.float64)
    in_graph = torch.zeros(graph.n_forward, graph.n_backward, dtype=torch.bool)
    for name, info in d["edges"].items():
        e = lookup.get(name)
        if e is None:
            raise InputError(f"{path}: edge {name!r} is not an edge of a {graph.n_layers}-layer, {graph.n_heads}-head graph")
        score = info.get("score")
        scores[src[e], dst[e]] = float("nan") if score is None else float(score)
        in_graph[src[e], dst[e]] = bool(info.get("in_graph", False))
    node_scores = None
    names = graph.forward_names
    if any("score" in v for k, v in d["nodes"].items() if k != "logits"):
        node_scores = torch.full((graph.n_forward,), float("nan"), dtype=torch.float64)
        index = {n: i for i, n in enumerate(names)}
        for k, v in d["nodes"].items():
            if k in index and v.get("score") is not None:
                node_scores[index[k]] = float(v["score"])
    return graph, scores, in_graph, node_scores
