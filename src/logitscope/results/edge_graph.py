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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

QKV = "qkv"


@dataclass(frozen=True)
class EdgeGraph:
    """The graph of a model shape: ``n_layers`` layers of ``n_heads`` (query) heads and an MLP."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    d_model: int = 0
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, lm: Any) -> "EdgeGraph":
        """The graph of a loaded model (:class:`logitscope.models.LoadedModel`)."""
        shape = lm.shape
        return cls(shape.n_layers, shape.n_heads, bool(lm.adapter.parallel_attn_mlp(lm.model.config)), shape.d_model)

    @property
    def cfg(self) -> dict[str, Any]:
        """The ``cfg`` of a graph file, as the library writes it."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads,
                "parallel_attn_mlp": self.parallel_attn_mlp, "d_model": self.d_model}

    # ------------------------------------------------------------------ indices
    @property
    def n_forward(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_backward(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_index(self, layer: int, head: int = 0) -> int:
        """Forward index of ``a{layer}.h{head}``."""
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_index(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def qkv_index(self, layer: int, letter: str, head: int = 0) -> int:
        """Backward index of ``a{layer}.h{head}<letter>``."""
        return layer * (3 * self.n_heads + 1) + QKV.index(letter) * self.n_heads + head

    def mlp_in_index(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_index(self) -> int:
        return self.n_backward - 1

    def attn_prev(self, layer: int) -> int:
        """How many forward nodes (the first ones) feed the heads of ``layer``."""
        return self.head_index(layer)

    def mlp_prev(self, layer: int) -> int:
        return self.head_index(layer) if self.parallel_attn_mlp else self.mlp_index(layer)

    @property
    def logits_prev(self) -> int:
        return self.n_forward

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
    def prev(self) -> np.ndarray:
        """``[n_backward]``: the number of forward nodes that feed each backward slot."""
        if "prev" not in self._cache:
            out = np.empty(self.n_backward, dtype=np.int64)
            for layer in range(self.n_layers):
                for x in QKV:
                    out[self.qkv_index(layer, x): self.qkv_index(layer, x) + self.n_heads] = self.attn_prev(layer)
                out[self.mlp_in_index(layer)] = self.mlp_prev(layer)
            out[-1] = self.n_forward
            self._cache["prev"] = out
        return self._cache["prev"]

    @property
    def real(self) -> torch.Tensor:
        """``[n_forward, n_backward]`` bool: which entries are edges."""
        if "real" not in self._cache:
            self._cache["real"] = torch.arange(self.n_forward)[:, None] < torch.as_tensor(self.prev)[None, :]
        return self._cache["real"]

    @property
    def forward_to_backward(self) -> torch.Tensor:
        """``[n_forward, n_backward]`` bool: the backward slots of each forward node (a head's three
        inputs, an MLP's one); ``input`` has none, ``logits`` is no forward node."""
        if "f2b" not in self._cache:
            m = torch.zeros(self.n_forward, self.n_backward, dtype=torch.bool)
            for layer in range(self.n_layers):
                for h in range(self.n_heads):
                    for x in QKV:
                        m[self.head_index(layer, h), self.qkv_index(layer, x, h)] = True
                m[self.mlp_index(layer), self.mlp_in_index(layer)] = True
            self._cache["f2b"] = m
        return self._cache["f2b"]

    def _edge_list(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Edges in the library's order: layer by layer, every earlier node to each head's q, k, v
        (node-major), then to the MLP; last every node to ``logits``."""
        if "edges" in self._cache:
            return self._cache["edges"]
        fn, bn = self.forward_names, self.backward_names
        names, src, dst = [], [], []

        def add(f: int, b: int) -> None:
            names.append(f"{fn[f]}->{bn[b]}")
            src.append(f)
            dst.append(b)

        stream = [0]
        for layer in range(self.n_layers):
            heads = [self.head_index(layer, h) for h in range(self.n_heads)]
            for f in stream:
                for h in range(self.n_heads):
                    for x in QKV:
                        add(f, self.qkv_index(layer, x, h))
                if self.parallel_attn_mlp:
                    add(f, self.mlp_in_index(layer))
            stream += heads
            if not self.parallel_attn_mlp:
                for f in stream:
                    add(f, self.mlp_in_index(layer))
            stream.append(self.mlp_index(layer))
        for f in stream:
            add(f, self.logits_index)
        self._cache["edges"] = (names, np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64))
        return self._cache["edges"]

    @property
    def edge_names(self) -> list[str]:
        return self._edge_list()[0]

    @property
    def edge_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) index of each edge, in :attr:`edge_names`' order."""
        _, src, dst = self._edge_list()
        return src, dst

    @property
    def n_edges(self) -> int:
        return len(self.edge_names)

    @property
    def n_scored_nodes(self) -> int:
        """The nodes a circuit by node ranks: every head and MLP, L·(H + 1) (``input`` and ``logits``
        are always kept, as the EAP-IG library keeps a node whose score is NaN)."""
        return self.n_layers * (self.n_heads + 1)

    def edge_lookup(self) -> dict[str, int]:
        if "lookup" not in self._cache:
            self._cache["lookup"] = {n: i for i, n in enumerate(self.edge_names)}
        return self._cache["lookup"]

    # ------------------------------------------------------------------ vectors <-> matrices
    def edge_vector(self, matrix: torch.Tensor) -> torch.Tensor:
        """The entries of a ``[n_forward, n_backward]`` matrix, edge by edge."""
        src, dst = self.edge_index
        return matrix[torch.as_tensor(src), torch.as_tensor(dst)]

    def matrix(self, vector: torch.Tensor | np.ndarray, fill: Any = 0) -> torch.Tensor:
        """The ``[n_forward, n_backward]`` matrix of a per-edge vector."""
        vector = torch.as_tensor(vector)
        out = torch.full((self.n_forward, self.n_backward), fill, dtype=vector.dtype)
        src, dst = self.edge_index
        out[torch.as_tensor(src), torch.as_tensor(dst)] = vector
        return out

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
