"""The readout: from the final residual stream to the metric, as the model computes its logits.

The model's own final norm, unembedding (and bias) and final logit soft-cap, at the answer positions
only: two unembedding rows (or each answer set's rows) for the logit difference, the full logits for
every other metric (:mod:`logitscope.engine.metrics`). The :class:`~logitscope.engine.core.Engine`
is a readout with forward passes; the study's :class:`~logitscope.engine.capture.Recorder` keeps its
own form of the answers' logits (``answer_sets``): the two forms are the same math in a different
float order, so each run keeps the one it has always used.
"""

from __future__ import annotations

import torch

from logitscope.engine.metrics import MetricContext, MetricLike, resolve_metric
from logitscope.models.load import LoadedModel
from logitscope.models.modules import Modules


class Readout:
    """The final norm, unembedding and soft-cap of one model, and the metric read through them."""

    def __init__(self, lm: LoadedModel, metric: MetricLike = None):
        self.metric = resolve_metric(metric)
        m = Modules.of(lm)  # the one resolver: the study's Recorder reads the same modules
        self.final_norm = m.final_norm
        unembed = m.unembed
        self.W_U, self.b_U = unembed.weight, getattr(unembed, "bias", None)
        self.softcap = m.softcap

    def logit_diff(self, resid: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        """logit(correct) − logit(incorrect) from final residual vectors ``[N, d]``: the model's final
        norm, its two unembedding rows (and bias, and soft-cap where it has them), in float32."""
        return self.logit_diff_of_normed(self.final_norm(resid.to(self.W_U.device)).float(), correct, incorrect)

    def logit_diff_of_normed(self, normed: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        """The same from vectors already through a final norm ``[N, d]`` (float32). Answer sets
        (``[N, K]``, ``-1`` pads): each set's mean (capped) logit."""
        if correct.dim() == 2 or incorrect.dim() == 2:
            return self._set_logit(normed, correct) - self._set_logit(normed, incorrect)
        lc = (normed * self.W_U[correct].float()).sum(-1)
        li = (normed * self.W_U[incorrect].float()).sum(-1)
        if self.b_U is not None:
            lc, li = lc + self.b_U[correct].float(), li + self.b_U[incorrect].float()
        if self.softcap:
            lc, li = (torch.tanh(x / self.softcap) * self.softcap for x in (lc, li))
        return lc - li

    def _set_logit(self, normed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Each row's mean logit over its answer set (``[N]`` or ``[N, K]``, ``-1`` pads)."""
        ids = ids if ids.dim() == 2 else ids[:, None]
        mask = ids >= 0
        safe = ids.clamp(min=0)
        logit = torch.einsum("nd,nkd->nk", normed, self.W_U[safe].float())
        if self.b_U is not None:
            logit = logit + self.b_U[safe].float()
        if self.softcap:
            logit = torch.tanh(logit / self.softcap) * self.softcap
        return (logit * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # an empty set (a teacher-forced row): 0

    def logits_of_normed(self, normed: torch.Tensor) -> torch.Tensor:
        """The full logits ``[N, d_vocab]`` (float32, soft-capped where the model caps) of vectors
        through the final norm: computed at answer positions only."""
        logits = torch.nn.functional.linear(normed.to(self.W_U.dtype), self.W_U, self.b_U).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def measure(self, resid: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        """The engine's metric ``[N]`` of final residual vectors ``[N, d]`` (through the final norm)."""
        return self.measure_normed(self.final_norm(resid.to(self.W_U.device)).float(), correct, incorrect, reference)

    def measure_normed(self, normed: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor,
                       reference: torch.Tensor | None = None) -> torch.Tensor:
        """The engine's metric ``[N]`` of vectors already through the final norm: the logit
        difference from the answers' unembedding rows (fast), any other metric from the full logits;
        ``reference``: the clean run's logits at the answer position (``kl``; ``None``: these logits)."""
        dev = normed.device
        correct, incorrect = correct.to(dev), incorrect.to(dev)
        if self.metric.is_logit_diff:
            return self.logit_diff_of_normed(normed, correct, incorrect)
        logits = self.logits_of_normed(normed)
        ref = logits.detach() if reference is None else reference.to(dev)
        return self.metric(logits, MetricContext(correct, incorrect, ref))
