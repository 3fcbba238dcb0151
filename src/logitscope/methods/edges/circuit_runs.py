"""Runs with edges corrupted: circuits' metrics (``evaluate``) and exact edge patching (each edge alone)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from logitscope.methods.edges.batches import Batch
from logitscope.methods.edges.runs import EdgeRuns
from logitscope.methods.edges.sums import ExactSum


class CircuitRuns(EdgeRuns):
    """Runs of the clean prompts in which chosen edges carry their parent's corrupted output."""

    @torch.no_grad()
    def _circuit_logits(self, batch: Batch, corr: torch.Tensor, ablate: torch.Tensor,
                        keep: torch.Tensor | None) -> torch.Tensor:
        """Logits of the clean prompts with every edge in ``ablate`` (``[n_forward, n_backward]``)
        carrying its parent's corrupted output (``corr`` ``[n_forward, b, pos, d]``): a child's input
        is the residual stream plus, for each ablated edge, (corrupted − this run's output of the parent).

        The sum runs over the fewer of the child's ablated and kept parents: with most parents
        ablated (a small circuit), it is the sum over every parent so far (kept as the run goes)
        minus the kept ones' terms; only the parents with a term are read."""
        g = self.graph
        diff = torch.empty_like(corr)  # every parent is written before a child reads it
        flat = diff.view(g.n_forward, -1)
        total = torch.zeros(corr.shape[1:], dtype=corr.dtype, device=corr.device)  # Σ diff of the parents so far
        done = [0]
        binary = ablate.dtype == torch.bool
        ab = ablate.to(device=self.device, dtype=corr.dtype)

        def record(f0: int, out: torch.Tensor) -> None:
            n = out.shape[2]
            torch.sub(corr[f0:f0 + n], out.permute(2, 0, 1, 3), out=diff[f0:f0 + n])
            total.add_(diff[f0:f0 + n].sum(0))
            done[0] = f0 + n

        def weighted(m: torch.Tensor, prev: int) -> torch.Tensor:
            """``Σ_f m[f, i] diff[f]`` for each child i: ``[n, b·pos·d]``, reading only the rows with a term."""
            rows = m.any(1).nonzero().squeeze(1)
            if len(rows) == prev:
                return m.T @ flat[:prev]
            return m[rows].T @ flat.index_select(0, rows)

        def deltas(kind: str, layer: int) -> torch.Tensor | None:
            if kind == "qkv":
                prev, b0, n = g.attn_prev(layer), g.qkv_index(layer, "q"), 3 * g.n_heads
            elif kind == "mlp":
                prev, b0, n = g.mlp_prev(layer), g.mlp_in_index(layer), 1
            else:
                prev, b0, n = g.logits_prev, g.logits_index, 1
            m = ab[:prev, b0:b0 + n]
            count = int(torch.count_nonzero(m))
            if count == 0:
                return None
            shape = (n, *diff.shape[1:])
            if binary and done[0] == prev and 2 * count > m.numel():  # mostly ablated: all minus the kept
                kept = 1 - m
                d = total.expand(shape) if not bool(kept.any()) else total - weighted(kept, prev).view(shape)
            else:
                d = weighted(m, prev).view(shape)  # [n, b, pos, d]
            if kind == "qkv":
                return d.reshape(3, g.n_heads, *d.shape[1:]).permute(0, 2, 3, 1, 4)
            return d[0]

        with self.runner.attach(record=record, deltas=deltas):
            return self._forward(batch.clean, batch.mask, keep)

    def evaluate(self, circuits: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt, the metric with each circuit's complement corrupted (``[n_circuits, n]``),
        and the clean metric (``[n]``). A circuit is a ``[n_forward, n_backward]`` bool matrix.
        In a process group, every rank gets every prompt's values.

        A circuit with every edge (nothing corrupted) is the clean run: its values are the clean
        run's, not run again (the circuit run with no edge corrupted is the same computation)."""
        self._prepare()
        real = self.graph.real
        ablates = [real & ~c.bool() for c in circuits]
        out = np.zeros((len(ablates), self.data.n))
        clean = np.zeros(self.data.n)
        rows = []
        for batch in self._batches():
            rows.append(batch.index)
            keep = self._answer_keep(batch)
            with torch.no_grad():
                clean_logits = self._forward(batch.clean, batch.mask, keep)
            corr = self.corrupted_outputs(batch)
            ctx = self._context(batch, clean_logits, keep)
            clean[batch.index] = self._measure(clean_logits, batch, ctx, keep).double().cpu().numpy()
            for i, ab in enumerate(ablates):
                if not bool(ab.any()):
                    out[i, batch.index] = clean[batch.index]
                    continue
                logits = self._circuit_logits(batch, corr, ab, keep)
                out[i, batch.index] = self._measure(logits, batch, ctx, keep).double().cpu().numpy()
        if self.ranks is not None:
            out, clean = self._everyone(rows, out, clean)
        return out, clean

    def _everyone(self, rows: list[np.ndarray], *arrays: np.ndarray) -> list[np.ndarray]:
        """Per-prompt arrays (prompt axis last) with every rank's rows filled in, on every rank."""
        mine = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)

        def stitch(parts):
            full = [a.copy() for a in arrays]
            for r, cols in parts:
                for a, c in zip(full, cols):
                    a[..., r] = c
            return full

        return self.ranks.exchange((mine, [a[..., mine] for a in arrays]), "the gather of the circuits' metrics",
                                   combine=stitch)

    def _exact(self) -> torch.Tensor:
        """Each edge corrupted alone: the mean change of the metric."""
        g = self.graph
        src, dst = g.edge_index
        total = ExactSum((g.n_edges,))
        for batch in self._batches():
            keep = self._answer_keep(batch)
            with torch.no_grad():
                clean_logits = self._forward(batch.clean, batch.mask, keep)
            corr = self.corrupted_outputs(batch)
            ctx = self._context(batch, clean_logits, keep)
            base = self._measure(clean_logits, batch, ctx, keep).double()
            changes = torch.zeros(g.n_edges, dtype=torch.float64)
            for e in range(g.n_edges):
                ab = torch.zeros(g.n_forward, g.n_backward, dtype=torch.bool)
                ab[src[e], dst[e]] = True
                logits = self._circuit_logits(batch, corr, ab, keep)
                changes[e] = (self._measure(logits, batch, ctx, keep).double() - base).sum().cpu()
            total.add(changes)
        total.across(self.ranks, "the sum of the exact edge effects")
        return g.matrix(total.value() / self.data.n)
