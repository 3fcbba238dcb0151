"""Answers of several tokens, scored by teacher forcing: each prompt expanded into rows.

An answer a_1..a_m (tokenised in context: the tokens of prompt+answer after those of the prompt) is
scored as log P(answer | prompt) = Σ_k log P(a_k | prompt, a_<k). Every causal method measures one
position per run, so each prompt becomes one ROW per answer token: row k is the prompt (and, for
the patched runs, its counterpart) followed by the answer's first k−1 tokens, predicting a_k. The
first row of a prompt is the prompt itself and predicts the first token of both answers (one-token
answers and answer sets are that row only); then one row per further token of the correct answer
(its incorrect side empty), then one per further token of the incorrect answer (its correct side
empty). Counterparts are teacher-forced with the clean answer. A metric's value on a row with an
empty side counts that side as 0 (:mod:`logitscope.engine.metrics`), and :meth:`AnswerRows.fold`
sums each prompt's rows into its value before normalisation, means and intervals, which stay over
prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from logitscope.errors import InputError
from logitscope.inputs.pairs import EncodedPairs
from logitscope.inputs.prompt import Prompt

__all__ = ["SEVERAL_METRICS", "AnswerRows", "answer_rows", "tokens_in_context"]

# The built-in metrics defined on answers of several tokens (a sum over rows is their definition).
SEVERAL_METRICS = ("logit-diff", "logprob-diff", "logprob", "loss")


def tokens_in_context(tok: Any, texts: Sequence[str], answer: str, tokenize) -> list[list[int]] | None:
    """The tokens ``answer`` adds after each text (``tokenize(prompt + answer)`` after
    ``tokenize(prompt)``), or ``None`` where, for some text, appending it changes the prompt's own
    tokens (the answer merges with the prompt's last token: no teacher forcing is the model's)."""
    base = tokenize(list(texts))
    full = tokenize([t + answer for t in texts])
    out = []
    for b, f in zip(base, full):
        if len(f) <= len(b) or f[: len(b)] != b:
            return None
        out.append(list(f[len(b):]))
    return out


@dataclass
class AnswerRows:
    """The rows of a prompt set whose answers may be several tokens.

    ``pairs``: every row as a clean/corrupted pair (rows ``0..N-1`` are the prompts themselves, in
    order; ``pairs.positions`` are each row's prompt's named positions); ``prompt_of`` ``[R]``: the
    prompt of each row; ``correct_length`` / ``incorrect_length`` ``[N]``: tokens of each answer (m)."""

    pairs: EncodedPairs
    prompt_of: np.ndarray
    correct_length: np.ndarray
    incorrect_length: np.ndarray
    row_prompts: list[Prompt]  # each row's prompt (its template marked with the answer tokens it carries)

    @property
    def n_prompts(self) -> int:
        return len(self.correct_length)

    def weights(self, metric: str) -> np.ndarray:
        """``[R]``: each row's weight in its prompt's sum (``loss``: 1/m, the mean per-token
        cross-entropy over the correct answer; every other metric: 1)."""
        if metric == "loss":
            return 1.0 / self.correct_length[self.prompt_of]
        return np.ones(len(self.prompt_of))

    def fold(self, values: np.ndarray, metric: str) -> np.ndarray:
        """``[..., R]`` per row → ``[..., N]`` per prompt: the weighted sum of each prompt's rows
        (a row not computed, ``NaN``, makes its prompt ``NaN``)."""
        values = np.asarray(values, dtype=np.float64)
        rows = np.moveaxis(values * self.weights(metric), -1, 0)
        out = np.zeros((self.n_prompts, *rows.shape[1:]))
        np.add.at(out, self.prompt_of, rows)
        return np.moveaxis(out, 0, -1)


def answer_rows(prompts: Sequence[Prompt], pairs: EncodedPairs, correct: list[tuple[int, ...]],
                incorrect: list[tuple[int, ...]], first_correct: np.ndarray, first_incorrect: np.ndarray,
                n_ctx: int | None) -> AnswerRows:
    """Expand ``pairs`` (prompt level) into rows. ``correct[i]`` / ``incorrect[i]``: prompt i's
    answer tokens in context (one token: length 1); ``first_correct`` / ``first_incorrect``:
    what the first row predicts, ``[N]`` ids or ``[N, K]`` sets padded with ``-1`` (one-token sets)."""
    n = pairs.n
    sides = [_as_sets(first_correct), _as_sets(first_incorrect)]
    width = max(sides[0].shape[1], sides[1].shape[1])
    sides = [np.pad(s, ((0, 0), (0, width - s.shape[1])), constant_values=-1) for s in sides]
    clean, corrupted = list(pairs.clean), list(pairs.corrupted)
    c_rows, i_rows = [sides[0][k] for k in range(n)], [sides[1][k] for k in range(n)]
    prompt_of = list(range(n))
    row_prompts = list(prompts)
    empty = np.full(width, -1, dtype=np.int64)
    for which, answers in ((0, correct), (1, incorrect)):
        for i, seq in enumerate(answers):
            for k in range(1, len(seq)):
                clean.append(pairs.clean[i] + list(seq[:k]))
                corrupted.append(pairs.corrupted[i] + list(seq[:k]))
                target = empty.copy()
                target[0] = seq[k]
                c_rows.append(target if which == 0 else empty)
                i_rows.append(empty if which == 0 else target)
                prompt_of.append(i)
                row_prompts.append(_row_prompt(prompts[i], k))
    lengths = np.array([len(x) for x in clean], dtype=np.int64)
    if n_ctx is not None and (lengths > n_ctx).any():
        r = int(np.argmax(lengths > n_ctx))
        p = prompts[prompt_of[r]]
        raise InputError(f"prompt {p.text[:57]!r}{_line(p)}: with its answer's tokens before the last "
                         f"(teacher forcing) it is {lengths[r]} tokens, longer than the model's context of {n_ctx}; "
                         "shorten the prompt or the answer")
    of = np.array(prompt_of, dtype=np.int64)
    positions = None if pairs.positions is None else {k: v[of] for k, v in pairs.positions.items()}
    rows = EncodedPairs(clean, corrupted, np.stack(c_rows), np.stack(i_rows), lengths, positions,
                        bool((lengths == lengths[0]).all()))
    m = [np.array([len(s) for s in side], dtype=np.int64) for side in (correct, incorrect)]
    return AnswerRows(rows, of, m[0], m[1], row_prompts)


def _as_sets(ids: np.ndarray) -> np.ndarray:
    return ids[:, None] if ids.ndim == 1 else ids


def _row_prompt(p: Prompt, k: int) -> Prompt:
    """Row k's prompt: mean ablation groups rows by template, and row k has k more tokens."""
    if "template" not in p.meta:
        return p
    return replace(p, meta={**p.meta, "template": f"{p.meta['template']} +{k} answer token{'s' if k > 1 else ''}"})


def _line(p: Prompt) -> str:
    line = p.meta.get("line")
    return f" (line {line})" if line is not None else ""
