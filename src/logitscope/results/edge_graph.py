"""The computational graph of a transformer as EAP-IG and MIB draw it, and circuits in it.

Nodes that write into the residual stream (*forward* nodes, in this order): ``input`` (the token
embeddings), then per layer ``a{L}.h0 … a{L}.h{H-1}`` (each query head's output, ``hook_result``;
with grouped-query attention still one node per query head) and ``m{L}`` (the MLP's output,
``hook_mlp_out``). Inputs that read it (*backward* slots): per layer each head's ``<q>`` inputs,
then its ``<k>``, then its ``<v>`` inputs, then ``m{L}``; last ``logits`` (the final
``resid_post``). An edge runs from every forward node to every later backward slot:
``a0.h1->a2.h3<q>``, ``m0->m1``, ``input->logits``. Where attention and MLP read the same residual
stream (GPT-J, GPT-NeoX's parallel residual), the MLP of layer L does not receive layer L's heads.

Scores and circuits are ``[n_forward, n_backward]`` matrices, as the EAP-IG library keeps them
(entries that are not edges stay 0 / False); :attr:`EdgeGraph.edge_names` lists the edges in the
library's order (the order of its ``Graph.edges``, and of its ``graph.json``).

Sublayer post-norms (Gemma 2/3, OLMo-2): a node's output is what it adds to the residual stream,
after the norm. The MLP is one node, so ``m{L}`` is the norm's output. The heads share their
layer's norm: head h's output is its ``hook_result`` times the norm's per-position factor
``weight / rms(Σ_h result_h)`` of the same run, so the heads' outputs still sum to what the layer
adds; a head's output then also moves when a sibling's input changes (the shared rms), as in the
model. The residual stream is thus exactly ``input + Σ node outputs + constants`` (position
embeddings and output biases, which no intervention changes) in every family.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import torch

from logitscope.engine.nodes import QKV, NodeLayout

__all__ = ["QKV", "EdgeGraph", "NodeLayout", "edges_among", "greedy", "n_items", "nodes_of", "prune_edges", "select",
           "top_n", "top_n_nodes"]


@dataclass(frozen=True)
class EdgeGraph(NodeLayout):
    """The graph of a model shape: ``n_layers`` layers of ``n_heads`` (query) heads and an MLP, its
    nodes' and edges' names and its circuits' counts (the index arithmetic is
    :class:`~logitscope.engine.nodes.NodeLayout`'s)."""

    @property
    def cfg(self) -> dict[str, Any]:
        """The ``cfg`` of a graph file, as the library writes it."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads,
                "parallel_attn_mlp": self.parallel_attn_mlp, "d_model": self.d_model}

    @property
    def forward_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @property
    def backward_names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<{x}>" for x in QKV for h in range(self.n_heads)] + [f"m{layer}"]
        return names + ["logits"]

    @property
    def edge_names(self) -> list[str]:
        """Each edge's name, ``parent->child``, in the library's order (:attr:`edge_index`')."""
        if "names" not in self._cache:
            fn, bn = self.forward_names, self.backward_names
            src, dst = self.edge_index
            self._cache["names"] = [f"{fn[f]}->{bn[b]}" for f, b in zip(src, dst)]
        return self._cache["names"]

    @property
    def n_scored_nodes(self) -> int:
        """The nodes a circuit by node ranks: every head and MLP, L·(H + 1) (``input`` and ``logits``
        are always kept, as the EAP-IG library keeps a node whose score is NaN)."""
        return self.n_layers * (self.n_heads + 1)

    def edge_lookup(self) -> dict[str, int]:
        if "lookup" not in self._cache:
            self._cache["lookup"] = {n: i for i, n in enumerate(self.edge_names)}
        return self._cache["lookup"]


    def node_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """``[n_forward]``: each node's outgoing edges' scores summed (to first order, the change
        of the metric when the node's whole output is corrupted)."""
        return (scores * self.real).sum(dim=1)


# ---------------------------------------------------------------------- circuits from scores
def _key(scores: torch.Tensor, absolute: bool) -> torch.Tensor:
    return scores.abs() if absolute else scores


def top_n(graph: EdgeGraph, scores: torch.Tensor, n: int, *, absolute: bool = True, prune: bool = True) -> torch.Tensor:
    """The ``n`` edges of highest (absolute) score as a ``[n_forward, n_backward]`` bool matrix,
    pruned (:func:`prune`) unless ``prune=False``. Ties go to the earlier entry of the matrix."""
    if not 0 <= n <= graph.n_edges:
        raise ValueError(f"n={n}: must be between 0 and the graph's {graph.n_edges} edges")
    key = _key(scores.detach().float().cpu(), absolute).masked_fill(~graph.real, -torch.inf)
    order = torch.argsort(key.reshape(-1), descending=True, stable=True)
    keep = torch.zeros(graph.n_forward * graph.n_backward, dtype=torch.bool)
    keep[order[:n]] = True
    keep = keep.view(graph.n_forward, graph.n_backward)
    return prune_edges(graph, keep) if prune else keep


def top_n_nodes(graph: EdgeGraph, scores: torch.Tensor, n: int, *, absolute: bool = True,
                prune: bool = True) -> torch.Tensor:
    """The circuit of the ``n`` heads and MLPs of highest (absolute) node score (the sum of a node's
    outgoing edges' scores, :meth:`EdgeGraph.node_scores`), ``input`` and ``logits`` always kept:
    every edge between kept nodes, as the EAP-IG library's ``apply_topn(level='node')`` (``input``
    unscored), pruned unless ``prune=False``. Ties go to the earlier node."""
    if not 0 <= n <= graph.n_scored_nodes:
        raise ValueError(f"n={n}: must be between 0 and the graph's {graph.n_scored_nodes} heads and MLPs")
    key = _key(graph.node_scores(scores.detach().double().cpu()), absolute)
    order = torch.argsort(key[1:], descending=True, stable=True) + 1  # input is not ranked
    kept = torch.zeros(graph.n_forward, dtype=torch.bool)
    kept[0] = True
    kept[order[:n]] = True
    edges = edges_among(graph, kept)
    return prune_edges(graph, edges) if prune else edges


def edges_among(graph: EdgeGraph, nodes: torch.Tensor) -> torch.Tensor:
    """Every edge whose parent and child are both among ``nodes`` (``[n_forward]`` bool; ``logits``,
    no forward node, always counts as kept)."""
    slots = (nodes.float() @ graph.forward_to_backward.float()) > 0
    slots[-1] = True
    return graph.real & nodes[:, None] & slots[None, :]


def select(graph: EdgeGraph, scores: torch.Tensor, n: int, *, absolute: bool = True, by: str = "edge",
           use_greedy: bool = False) -> torch.Tensor:
    """The pruned circuit of ``n`` items: the top ``n`` edges (or the library's greedy selection of
    ``n`` edges) for ``by="edge"``, the top ``n`` heads and MLPs for ``by="node"``."""
    if by == "node":
        if use_greedy:
            raise ValueError("the greedy selection is defined over edges only (as in the EAP-IG library)")
        return top_n_nodes(graph, scores, n, absolute=absolute)
    if by != "edge":
        raise ValueError(f"by={by!r}: use 'edge' or 'node'")
    return (greedy if use_greedy else top_n)(graph, scores, n, absolute=absolute)


def n_items(graph: EdgeGraph, by: str) -> int:
    """How many items a circuit ``by`` edge or node chooses among: the edges, or the heads and MLPs."""
    return graph.n_scored_nodes if by == "node" else graph.n_edges


def greedy(graph: EdgeGraph, scores: torch.Tensor, n: int, *, absolute: bool = True, prune: bool = True) -> torch.Tensor:
    """The library's greedy selection: start from the edges into ``logits``; repeatedly take the
    best-scoring edge whose child is already in the circuit, and when its parent joins, every edge
    into the parent becomes a candidate. Ties go to the candidate that became one first."""
    if not 0 <= n <= graph.n_edges:
        raise ValueError(f"n={n}: must be between 0 and the graph's {graph.n_edges} edges")
    key = _key(scores.detach().float().cpu(), absolute)
    src, dst = graph.edge_index
    into: dict[int, list[int]] = {}  # forward node -> edges into any of its backward slots
    f2b = graph.forward_to_backward
    owner = {int(b): int(f) for f, b in zip(*torch.nonzero(f2b, as_tuple=True))}
    for e, b in enumerate(dst):
        into.setdefault(owner.get(int(b), -1), []).append(e)  # -1: logits
    heap: list[tuple[float, int, int]] = []
    counter = 0

    def push(edges: list[int]) -> None:
        nonlocal counter
        for e in sorted(edges, key=lambda e: -float(key[src[e], dst[e]])):
            heapq.heappush(heap, (-float(key[src[e], dst[e]]), counter, e))
            counter += 1

    keep = torch.zeros(graph.n_forward, graph.n_backward, dtype=torch.bool)
    in_circuit = {-1}
    push(into[-1])
    for _ in range(n):
        _, _, e = heapq.heappop(heap)
        keep[src[e], dst[e]] = True
        parent = int(src[e])
        if parent not in in_circuit:
            in_circuit.add(parent)
            push(into.get(parent, []))
    return prune_edges(graph, keep) if prune else keep


def prune_edges(graph: EdgeGraph, edges: torch.Tensor) -> torch.Tensor:
    """Only the edges on a path from ``input`` to ``logits``: repeatedly drop nodes without an
    incoming or an outgoing edge (``input`` needs none coming in) and the edges of dropped nodes,
    as the library's ``Graph.prune``."""
    edges = edges.clone() & graph.real
    f2b = graph.forward_to_backward.float()
    while True:
        outgoing = edges.any(dim=1)
        incoming = (f2b @ edges.any(dim=0).float()) > 0
        incoming[0] = True
        nodes = outgoing & incoming
        slots = (nodes.float() @ f2b) > 0
        slots[-1] = True
        pruned = edges & nodes[:, None] & slots[None, :]
        if torch.equal(pruned, edges):
            return pruned
        edges = pruned


def nodes_of(graph: EdgeGraph, edges: torch.Tensor) -> torch.Tensor:
    """``[n_forward]`` bool: the nodes a (pruned) circuit uses."""
    return edges.any(dim=1)
