"""The gradient runs of the edge engine: ``eap``, ``eap-ig-inputs``, ``eap-ig-activations`` and
``clean-corrupted`` scores of one batch (the conventions: :mod:`logitscope.methods.edges.attribute`)."""

from __future__ import annotations

import torch

from logitscope.engine.metrics import MetricContext
from logitscope.methods.edges.batches import Batch
from logitscope.methods.edges.runs import EdgeRuns
from logitscope.methods.edges.sums import ExactSum


class GradientScores(EdgeRuns):
    """One forward and backward per gradient; each adds ``diff · ∂metric/∂(child input)`` to the scores."""

    # ------------------------------------------------------------ gradients
    def _gradient(self, batch: Batch, diff: torch.Tensor, scores: ExactSum, ctx: MetricContext | None,
                  keep: torch.Tensor | None, *, ids: torch.Tensor | None = None, replace: dict | None = None,
                  record=None) -> None:
        """One forward and backward; adds ``diff · ∂Σmetric/∂(child input)`` to ``scores``.

        ``diff`` ``[n_forward, b, pos, d]``: corrupted − clean outputs, complete by the backward
        (``record``, called with this run's node outputs, may finish it during the forward).
        ``ctx`` None: the metric's clean logits are this run's own."""
        g = self.graph
        flat = diff.view(g.n_forward, -1)
        flat = flat if flat.dtype == torch.float32 else None
        parts = {"flat": flat}

        def on_grad(kind: str, layer: int, letter: str, grad: torch.Tensor) -> None:
            if kind == "qkv":
                prev, b0 = g.attn_prev(layer), g.qkv_index(layer, letter)
            elif kind == "mlp":
                prev, b0 = g.mlp_prev(layer), g.mlp_in_index(layer)
            else:
                prev, b0 = g.logits_prev, g.logits_index
            if parts["flat"] is None:  # a half-precision model: the products in float32, converted once
                parts["flat"] = diff.view(g.n_forward, -1).float()
            n = grad.shape[0]
            s = parts["flat"][:prev] @ grad.float().reshape(n, -1).T
            scores.add(s, (slice(0, prev), slice(b0, b0 + n)))

        with torch.enable_grad(), self.runner.attach(grads=on_grad, replace=replace, input_leaf=True,
                                                     record=record) as state:
            logits = self._forward(batch.clean if ids is None else ids, batch.mask, keep)
            if ctx is None:
                ctx = self._context(batch, logits.detach(), keep)
            value = self._measure(logits, batch, ctx, keep).sum()
            torch.autograd.grad(value, [state["leaf"]], allow_unused=True)


    @staticmethod
    def _into(diff: torch.Tensor, sign: float):
        """A record function that adds ``sign ×`` each node output to ``diff`` (in place)."""
        def record(f0: int, out: torch.Tensor) -> None:
            diff[f0:f0 + out.shape[2]].add_(out.permute(2, 0, 1, 3), alpha=sign)
        return record

    def _score_batch(self, method: str, steps: int, batch: Batch, total: ExactSum) -> None:
        """One batch's scores. The clean (or, for IG, corrupted) outputs are recorded in the first
        gradient run itself, so that EAP costs one recording run and one gradient run."""
        keep = self._answer_keep(batch)
        if method == "eap":  # diff = corrupted, minus the clean outputs as the gradient run makes them
            diff = self.corrupted_outputs(batch)
            self._gradient(batch, diff, total, None, keep, record=self._into(diff, -1.0))
            return
        clean_outs, clean_logits = self._record(batch, batch.clean, keep)
        ctx = self._context(batch, clean_logits, keep)
        if method == "eap-ig-activations":
            diff = self.corrupted_outputs(batch).sub_(clean_outs)
            for key, sl in self._node_groups():
                c, dx = clean_outs[sl], diff[sl]
                for k in range(1, steps + 1):
                    value = c + (1 - k / steps) * dx  # (k/m)·clean + (1 − k/m)·corrupted
                    value = value.sum(0) if key != "input" and key[0] == "attn" else value[0]
                    self._gradient(batch, diff, total, ctx, keep, replace={key: value})
            return
        diff = clean_outs.neg_()  # − clean; the corrupted outputs are added by the first gradient run
        if method == "clean-corrupted":
            self._gradient(batch, diff, total, ctx, keep, ids=batch.corrupted, record=self._into(diff, 1.0))
            self._gradient(batch, diff, total, ctx, keep)
        elif method == "eap-ig-inputs":  # corrupted + (k/m)(clean − corrupted); k = 0 is the corrupted run
            with torch.no_grad():
                e_corr = self.runner.embed(batch.corrupted)
            for k in range(steps):
                value = e_corr if k == 0 else e_corr - (k / steps) * diff[0]
                self._gradient(batch, diff, total, ctx, keep, replace={"input": value},
                               record=self._into(diff, 1.0) if k == 0 else None)

    def _node_groups(self) -> list[tuple]:
        g = self.graph
        out: list[tuple] = [("input", slice(0, 1))]
        for layer in range(g.n_layers):
            out.append((("attn", layer), slice(g.head_index(layer), g.head_index(layer) + g.n_heads)))
            out.append((("mlp", layer), slice(g.mlp_index(layer), g.mlp_index(layer) + 1)))
        return out
