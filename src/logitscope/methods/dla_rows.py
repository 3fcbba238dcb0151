"""The study on answers of several tokens: each prompt's teacher-forced rows (one per answer token,
:mod:`logitscope.inputs.answers`) run as ordinary prompts, then summed by prompt.

The logit difference of several tokens is Σ_k ℓ(c_k | prompt, c_<k) − Σ_k ℓ(i_k | prompt, i_<k),
each row's own token's logit; it is linear row by row, so every part of its decomposition (embeddings,
layers, heads, biases, the logit lens) is that part's sum over the prompt's rows, and the parts
still add up to the difference. An answer's probability is the product of its rows' (teacher-forced
P(answer | prompt)); what is not a sum (the final norm's scale, routing weights, the token lens's
top tokens) is the prompt's own first row's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from logitscope.errors import ArgumentError
from logitscope.inputs.answers import AnswerRows, answer_rows
from logitscope.inputs.encode import Encoded
from logitscope.inputs.pairs import EncodedPairs
from logitscope.inputs.prompt import Prompt

__all__ = ["answer_ids", "fold_study", "study_inputs"]

SUMMED = ("logit_diff", "direct", "embed", "pos_embed", "attn", "mlp", "heads", "attn_bias", "mlp_bias", "final_bias",
          "lens_recomputed", "logit_diff_softcapped", "experts")
FIRST_ROW = ("scale", "expert_routing", "lens_top_ids", "lens_top_probs")
PRODUCT = {"prob_correct": "correct", "prob_incorrect": "incorrect"}


def fold_study(per: dict[str, np.ndarray | None], rows: AnswerRows) -> dict[str, np.ndarray | None]:
    """The study's per-row arrays (last axis: rows) as per-prompt ones, each field as its kind says."""
    n = rows.n_prompts
    out: dict[str, np.ndarray | None] = {}
    for name, value in per.items():
        if value is None:
            out[name] = None
        elif name in SUMMED:
            out[name] = rows.fold(value, "logit-diff")
        elif name in FIRST_ROW:
            out[name] = value[..., :n]  # rows 0..N-1 are the prompts themselves
        elif name in PRODUCT:
            side = getattr(rows.pairs, PRODUCT[name])
            has = (side >= 0).any(1)
            with np.errstate(divide="ignore"):
                logp = np.where(has, np.log(value), 0.0)
            out[name] = np.exp(rows.fold(logp, "logit-diff"))
        else:  # a new field must say how it adds up over rows
            raise ValueError(f"the study's field {name!r} has no rule for answers of several tokens")
    return out


def study_inputs(prompts: Sequence[Prompt], enc: Encoded, n_ctx: int | None, dla_by_source: Any, neurons: int | None
                 ) -> tuple[AnswerRows | None, list[list[int]], np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """What the study runs: ``(rows, token ids, their lengths, (correct, incorrect))``. Where some
    answer is several tokens, the prompts' teacher-forced rows (one per answer token; :func:`fold_study`
    sums them back), else (``rows`` ``None``) the prompts with their answers, ids ``[N]`` or sets
    ``[N, K]``. DLA by source position and by neuron take one token per answer (a clear error)."""
    first = answer_ids(enc)
    if not enc.several:
        return None, enc.ids, enc.lengths, first
    for name, value in (("dla_by_source", dla_by_source), ("neurons", neurons)):
        if value is not None:
            raise ArgumentError(name, value, "DLA by source position and by neuron take one token per answer; some "
                                "answers here are several tokens (the study decomposes those row by row without it)")
    alone = EncodedPairs(enc.ids, enc.ids, first[0], first[1], enc.lengths, None, False)
    rows = answer_rows(prompts, alone, enc.correct_tokens, enc.incorrect_tokens, first[0], first[1], n_ctx)
    return rows, rows.pairs.clean, rows.pairs.lengths, (rows.pairs.correct, rows.pairs.incorrect)


def answer_ids(enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """The answers the study decomposes: one id per prompt ``[N]``, or where any answer is a set,
    every prompt's sets ``[N, K]`` (``-1`` pads; the mean-logit difference, decomposed exactly)."""
    if enc.correct_set is None:
        return enc.correct, enc.incorrect
    return enc.correct_set, enc.incorrect_set
