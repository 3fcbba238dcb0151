"""Clean and corrupted prompts as token ids, pair by pair, with the positions patches are put at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from logitscope.errors import InputError
from logitscope.inputs.lint import where_in_set, warn_prompts
from logitscope.inputs.prompt import Prompt

# The IOI paper's word positions (its code's word_idx): the indirect object, the subject's first
# occurrence, the token after it, the subject's second occurrence, and the last token.
IOI_POSITIONS = ("IO", "S1", "S1+1", "S2", "END")


@dataclass
class EncodedPairs:
    """Token ids of each clean prompt and its counterpart (same length), the clean answers' ids,
    and the positions a per-position grid can be indexed by."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    correct: np.ndarray  # [N] clean answer ids: the metric is their logit difference in every run
    incorrect: np.ndarray
    lengths: np.ndarray  # [N]
    positions: dict[str, np.ndarray] | None  # named positions, [N] each, or None
    equal_length: bool

    @property
    def identical(self) -> np.ndarray:
        """[N] bool: the pair's counterpart is its prompt, token for token (clean − corrupted = 0)."""
        return np.fromiter((c == x for c, x in zip(self.clean, self.corrupted)), dtype=bool, count=self.n)

    @property
    def n(self) -> int:
        return len(self.clean)


def encode_pairs(prompts: Sequence[Prompt], clean_ids: list[list[int]], correct: np.ndarray,
                 incorrect: np.ndarray, tokenize, bos: int | None) -> EncodedPairs:
    """Tokenize the counterparts like the prompts (``tokenize(texts)``, then BOS if ``bos`` is not
    None) and check each has its prompt's number of tokens, naming the first that does not."""
    corrupted = tokenize([p.corrupted for p in prompts])
    if bos is not None:
        corrupted = [[bos] + x for x in corrupted]
    for i, (c, x) in enumerate(zip(clean_ids, corrupted)):
        if len(c) != len(x):
            p = prompts[i]
            line = p.meta.get("line")
            where = f"line {line}: " if line is not None else f"prompt {i}: "
            with_bos = " (with BOS)" if bos is not None else ""
            raise InputError(
                f"{where}the corrupted prompt {p.corrupted!r} is {len(x)} tokens{with_bos} but the prompt {p.text!r} is "
                f"{len(c)}; a counterpart must have the same number of tokens so that positions align"
            )
    lengths = np.array([len(c) for c in clean_ids], dtype=np.int64)
    pairs = EncodedPairs(clean_ids, corrupted, correct, incorrect, lengths,
                        ioi_positions(prompts, clean_ids, correct, incorrect), bool((lengths == lengths[0]).all()))
    _warn_identical(prompts, pairs.identical)
    return pairs


UNDEFINED = ("every corrupted prompt is its clean prompt, token for token: clean − corrupted = 0, so the normalised "
             "metric (patched − corrupted) / (clean − corrupted) is undefined (no value: null in results.json); give "
             "counterparts that change the answer")


def _warn_identical(prompts: Sequence[Prompt], identical: np.ndarray) -> None:
    """A :class:`PromptWarning` when pairs' counterparts are their prompts: such a pair measures
    nothing, and when every pair is one the normalised metric divides by zero."""
    hits = np.nonzero(identical)[0]
    if not hits.size:
        return
    if hits.size == len(prompts):
        warn_prompts(UNDEFINED)
        return
    where = ", ".join(where_in_set(prompts[i], int(i)) for i in hits[:3]) + (", ..." if hits.size > 3 else "")
    warn_prompts(f"{hits.size} of {len(prompts)} pairs have a corrupted prompt equal to the clean one, token for token "
                 f"[{where}]: patching changes nothing for them (clean − corrupted = 0): they count in every mean logit "
                 "difference but add nothing to the normalised metric")


def ioi_positions(prompts: Sequence[Prompt], ids: list[list[int]], correct: np.ndarray,
                  incorrect: np.ndarray) -> dict[str, np.ndarray] | None:
    """The IOI word positions of every prompt, found as the tokens of its answers (IO once, S twice,
    before the last position), or ``None`` unless every prompt is an IOI prompt that has them."""
    if not all("io" in p.meta and "s" in p.meta for p in prompts):
        return None
    out = {name: np.empty(len(ids), dtype=np.int64) for name in IOI_POSITIONS}
    for i, (x, io, s) in enumerate(zip(ids, correct, incorrect)):
        x = np.asarray(x[:-1])  # the answer itself is not in the prompt
        io_at, s_at = np.nonzero(x == io)[0], np.nonzero(x == s)[0]
        if len(io_at) != 1 or len(s_at) != 2:
            return None
        out["IO"][i], out["S1"][i], out["S2"][i] = io_at[0], s_at[0], s_at[1]
        out["S1+1"][i] = s_at[0] + 1
        out["END"][i] = len(ids[i]) - 1
    return out
