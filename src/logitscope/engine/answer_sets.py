"""The study's answers as one id per prompt (``[B]``) or answer sets (``[B, K]``, padded with ``-1``):
the unembedding rows, logits and probabilities the direct logit attribution needs of them.

A set's logit is the mean of its members' logits (the ``logit-diff`` of :mod:`logitscope.engine.metrics`),
which is linear in the final residual with direction the mean of their unembedding rows; a set's
probability is its members' probability mass. One id per prompt takes the single-token path (the
same operations as before sets existed, so those results are bit-identical)."""

from __future__ import annotations

import torch

from logitscope.engine import metrics

__all__ = ["answer_rows", "member_logits", "set_mean", "set_prob"]


def answer_rows(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each prompt's row of ``table`` (``W_U`` ``[V, d]`` or ``b_U`` ``[V]``) in float32: its answer's
    row, or for a set the mean of its members' rows."""
    if ids.dim() == 1:
        return table[ids].float()
    mask = (ids >= 0).float()
    rows = table[ids.clamp(min=0)].float()  # [B, K, ...]
    weights = mask / mask.sum(-1, keepdim=True).clamp(min=1)  # an empty set (a teacher-forced row's other side): 0
    return (rows * weights.view(*weights.shape, *([1] * (rows.dim() - 2)))).sum(1)


def member_logits(normed: torch.Tensor, ids: torch.Tensor, W_U: torch.Tensor, b_U: torch.Tensor | None) -> torch.Tensor:
    """The linear logits (before any soft-cap) of each prompt's answer ``[B]`` or set's members ``[B, K]``
    (pads: any value) from the final normed residual ``[B, d]``."""
    if ids.dim() == 1:
        out = (normed * W_U[ids].float()).sum(-1)
        return out if b_U is None else out + b_U[ids].float()
    idx = ids.clamp(min=0)
    out = (normed[:, None] * W_U[idx].float()).sum(-1)
    return out if b_U is None else out + b_U[idx].float()


def set_mean(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``values`` ``[B]`` as they are, or ``[B, K]`` averaged over each set's members."""
    return values if ids.dim() == 1 else metrics.set_mean(values, ids >= 0)  # an empty set: 0


def set_prob(logits: torch.Tensor, lse: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The probability ``[B]`` of one answer, or a set's probability mass (the sum over its members),
    from the model's own logits of the answer(s) and the log-sum-exp ``[B]`` over the vocabulary."""
    if ids.dim() == 1:
        return (logits - lse).exp()
    member = (logits - lse[:, None]).masked_fill(ids < 0, float("-inf"))
    return torch.logsumexp(member, dim=-1).exp()
