"""The metrics every causal method measures, defined once: a number per prompt from the model's
logits at the prompt's answer position (its last token).

Answers are token ids ``[N]`` (one token each) or answer sets ``[N, K]`` padded with ``-1`` (see
:func:`logitscope.inputs.encode.encode_prompts`). With ``c`` the correct set, ``i`` the incorrect
set, ``ℓ`` the logits (soft-capped where the model caps, as TransformerLens's) and ``p`` their
softmax, P(set) = Σ p over its members:

- ``logit-diff``: mean ℓ over ``c`` − mean ℓ over ``i`` (one token each: ℓ_c − ℓ_i; today's metric,
  and the only one direct logit attribution decomposes: it is linear in the residual stream);
- ``logprob-diff``: log P(c) − log P(i);
- ``prob-diff``: P(c) − P(i) (greater-than's metric, with year sets);
- ``logprob``: log P(c);
- ``loss``: −log P(c), the cross-entropy of the correct answer;
- ``kl``: KL(clean ‖ this run) of the next-token distribution, summed over the vocabulary (0 on
  the clean run; MIB's ``kl`` averages over the vocabulary instead: 1/vocab of this);
- a callable ``fn(logits, ctx) -> [N]``: ``logits`` ``[N, d_vocab]`` float32 at the answer
  position, ``ctx`` a :class:`MetricContext` (the answer ids and the clean run's logits).

Answers of several tokens are scored by teacher forcing, one row per answer token
(:mod:`logitscope.inputs.answers`): a row predicts one token of one answer, its other side empty (an
empty set counts 0), and each prompt's value is the sum of its rows: ``logit-diff`` Σ_k ℓ(c_k) −
Σ_k ℓ(i_k), ``logprob-diff`` and ``logprob`` the teacher-forced log-probabilities, ``loss`` the mean
per-token cross-entropy of the correct answer (−logprob / m); ``prob-diff``, ``kl`` and callables
are not defined there (:func:`check_several`).

Every method normalises as TransformerLens does, (patched − corrupted) / (clean − corrupted), and
gives bootstrap intervals whatever the metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Union

import torch

from logitscope.errors import ArgumentError, InputError

__all__ = ["METRICS", "Metric", "MetricContext", "MetricSpec", "resolve_metric"]

# name -> (results.json key, description)
METRICS: dict[str, tuple[str, str]] = {
    "logit-diff": ("logit_diff", "logit difference of the clean prompt's answers (correct − incorrect) at each "
                                 "prompt's last token"),
    "logprob-diff": ("logprob_diff", "log P(correct answers) − log P(incorrect answers) after each prompt (P of a "
                                     "set: the sum of its tokens' probabilities; of several tokens: teacher-forced, "
                                     "the product over its tokens)"),
    "prob-diff": ("prob_diff", "P(correct answers) − P(incorrect answers) at each prompt's last token (P of a set: "
                               "the sum of its tokens' probabilities)"),
    "logprob": ("logprob", "log P(correct answers) after each prompt (P of a set: the sum of its tokens' "
                           "probabilities; of several tokens: teacher-forced, the product over its tokens)"),
    "loss": ("loss", "cross-entropy of the correct answers, −log P(correct answers) after each prompt (of several "
                     "tokens: teacher-forced, the mean over its tokens)"),
    "kl": ("kl", "KL(clean ‖ this run) of the next-token distribution at each prompt's last token, summed over "
                 "the vocabulary (0 on the clean prompt)"),
}
DECOMPOSABLE = ("logit-diff",)  # what direct logit attribution (run) splits into components exactly


@dataclass(frozen=True)
class MetricContext:
    """What a metric receives besides the logits (all on the logits' device, rows as the logits'):
    ``correct`` / ``incorrect`` token ids ``[N]`` or sets ``[N, K]`` padded with ``-1``, and
    ``reference``, the clean run's logits at the answer position ``[N, d_vocab]`` float32 (what
    ``kl`` compares with; ``None`` where a method has no clean run)."""

    correct: torch.Tensor
    incorrect: torch.Tensor
    reference: torch.Tensor | None = None


Metric = Callable[[torch.Tensor, MetricContext], torch.Tensor]


def _sets(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, K] with pads at 0, mask [N, K])`` of ids ``[N]`` or ``[N, K]`` (pads ``-1``)."""
    ids = ids if ids.dim() == 2 else ids[:, None]
    mask = ids >= 0
    return ids.clamp(min=0), mask


def set_logits(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's logits of its set ``[N, K]`` and the set's mask."""
    idx, mask = _sets(ids.to(logits.device))
    return logits.gather(1, idx), mask


def set_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's mean over its set; 0 for an empty set (a teacher-forced row of the other answer)."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def set_logprob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log P(set) = logsumexp of the set's log-probabilities, ``[N]``; 0 for an empty set (a
    teacher-forced row of the other answer: it adds nothing to this answer's sum)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    member, mask = set_logits(logp, ids)
    out = torch.logsumexp(member.masked_fill(~mask, float("-inf")), dim=-1)
    return out.masked_fill(~mask.any(-1), 0.0)


def logit_diff(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    c, cm = set_logits(logits, ctx.correct)
    i, im = set_logits(logits, ctx.incorrect)
    return set_mean(c, cm) - set_mean(i, im)


def logprob_diff(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    return set_logprob(logits, ctx.correct) - set_logprob(logits, ctx.incorrect)


def prob_diff(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    return set_logprob(logits, ctx.correct).exp() - set_logprob(logits, ctx.incorrect).exp()


def logprob(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    return set_logprob(logits, ctx.correct)


def loss(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    return -set_logprob(logits, ctx.correct)


def kl(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    if ctx.reference is None:
        raise ValueError("kl needs the clean run's logits (MetricContext.reference)")
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref = torch.log_softmax(ctx.reference.to(logits.device).float(), dim=-1)
    return (ref.exp() * (ref - logp)).sum(-1)


_FUNCTIONS: dict[str, Metric] = {"logit-diff": logit_diff, "logprob-diff": logprob_diff, "prob-diff": prob_diff,
                                 "logprob": logprob, "loss": loss, "kl": kl}


@dataclass(frozen=True)
class MetricSpec:
    """A resolved metric: its name (``logit-diff``, ... or the callable's name), results.json key,
    description and function."""

    name: str
    key: str
    description: str
    fn: Metric
    builtin: bool

    @property
    def is_logit_diff(self) -> bool:
        """Whether the engine's fast path (two unembedding rows, no full logits) computes it."""
        return self.builtin and self.name == "logit-diff"

    @property
    def needs_reference(self) -> bool:
        """Whether it reads the clean run's logits (``kl``, and any callable: it may)."""
        return self.name == "kl" or not self.builtin

    def __call__(self, logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
        """The metric ``[N]`` of ``logits`` ``[N, d_vocab]``; a callable's output is checked."""
        out = self.fn(logits, ctx)
        if self.builtin:
            return out
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (logits.shape[0],):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"metric {self.name!r} returned {got} for logits of shape {tuple(logits.shape)}; it must "
                             f"return a tensor of one number per row, shape ({logits.shape[0]},)")
        return out.float()


MetricLike = Union[str, Metric, MetricSpec, None]


def resolve_metric(metric: MetricLike) -> MetricSpec:
    """A :class:`MetricSpec` from a name (``None``: ``logit-diff``), a callable or a spec; a clear
    error naming the metrics otherwise."""
    if isinstance(metric, MetricSpec):
        return metric
    if metric is None:
        metric = "logit-diff"
    if isinstance(metric, str):
        name = metric.replace("_", "-")
        if name not in METRICS:
            raise ArgumentError("metric", metric, f"unknown metric; use one of {', '.join(METRICS)} (or, from "
                                "Python, a function fn(logits, ctx) -> [batch])")
        key, description = METRICS[name]
        return MetricSpec(name, key, description, _FUNCTIONS[name], True)
    if callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)
        key = "metric_" + (re.sub(r"\W+", "_", name).strip("_") or "custom")
        return MetricSpec(name, key, f"the function {name}(logits, ctx) at each prompt's last token", metric, False)
    raise ArgumentError("metric", metric, f"use one of {', '.join(METRICS)} or a function fn(logits, ctx) -> [batch]")


def check_several(metric: MetricLike, defined: tuple[str, ...]) -> None:
    """A clear error for a metric that is not defined on answers of several tokens (``defined``:
    those that are, a sum over teacher-forced rows)."""
    spec = resolve_metric(metric)
    if spec.builtin and spec.name in defined:
        return
    raise ArgumentError("metric", spec.name, "not defined for answers of several tokens (teacher-forced, one "
                        f"position per answer token); use {', '.join(defined)}, or single-token answers",
                        fix="logprob-diff")


def check_decomposable(metric: MetricLike, what: str = "run") -> None:
    """Direct logit attribution splits the logit difference only: other metrics are a clear error."""
    spec = resolve_metric(metric)
    if spec.name not in DECOMPOSABLE or not spec.builtin:
        raise ArgumentError("metric", spec.name, f"{what} (direct logit attribution) decomposes the logit difference "
                            "only, a linear function of the residual stream; patch, ablate, paths and circuit take "
                            "other metrics", fix="logit-diff")
