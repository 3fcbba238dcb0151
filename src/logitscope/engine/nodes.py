"""The edge graph's node layout: which row and column of a ``[n_forward, n_backward]`` matrix each
node and each input is, and which entries are edges. Pure index arithmetic, with no names or files
(those are :class:`logitscope.results.edge_graph.EdgeGraph`'s, built on this), so that the engine's
edge runs may use it: the results layer sits above the engine.

Forward nodes (they write into the residual stream), in this order: ``input``, then per layer the
``n_heads`` query heads and the MLP. Backward slots (they read it): per layer each head's ``q``
inputs, then its ``k``, then its ``v`` inputs, then the MLP's; last ``logits``. An edge runs from
every forward node to every later backward slot; where attention and MLP read the same residual
stream (``parallel_attn_mlp``), the MLP of layer L does not receive layer L's heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

QKV = "qkv"


@dataclass(frozen=True)
class NodeLayout:
    """The node layout of a model shape: ``n_layers`` layers of ``n_heads`` (query) heads and an MLP."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    d_model: int = 0
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_model(cls, lm: Any):
        """The layout (or the graph, called on :class:`~logitscope.results.edge_graph.EdgeGraph`) of a
        loaded model (:class:`logitscope.models.LoadedModel`)."""
        shape = lm.shape
        return cls(shape.n_layers, shape.n_heads, bool(lm.adapter.parallel_attn_mlp(lm.model.config)), shape.d_model)

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

    def _edge_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) index of each edge in the library's order: layer by layer, every
        earlier node to each head's q, k, v (node-major), then to the MLP; last every node to ``logits``."""
        if "edges" in self._cache:
            return self._cache["edges"]
        src, dst = [], []

        def add(f: int, b: int) -> None:
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
        self._cache["edges"] = (np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64))
        return self._cache["edges"]

    @property
    def edge_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) index of each edge, in the library's order (the graph's ``edge_names``')."""
        return self._edge_pairs()

    @property
    def n_edges(self) -> int:
        return len(self._edge_pairs()[0])

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
