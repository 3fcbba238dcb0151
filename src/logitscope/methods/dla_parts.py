"""The study's options beyond the logit difference: the token lens, DLA by source position and by
neuron. Their checks (before and after the model is loaded) and the naming of source positions."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from logitscope.errors import ArgumentError
from logitscope.inputs.pairs import IOI_POSITIONS, ioi_positions
from logitscope.inputs.prompt import Prompt
from logitscope.labels import parse_heads
from logitscope.results.decomposition import rank_heads

# END, END-1, ...: the positions named for prompts that are not IOI prompts (then "earlier").
N_FROM_END = 4


def _whole(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ArgumentError(name, value, f"must be a whole number, at least {least}")
    return int(value)


def check_options(lens_top_k: Any, dla_by_source: Any, neurons: Any) -> None:
    """What can be checked without the model (a typo costs no model load)."""
    if lens_top_k is not None:
        _whole("lens_top_k", lens_top_k, 1)
    if neurons is not None:
        _whole("neurons", neurons, 0)
    if dla_by_source is not None:
        _top_count(dla_by_source)
        if not _is_top(dla_by_source):
            try:
                heads = parse_heads(_specs(dla_by_source))
            except ValueError as e:
                raise ArgumentError("dla_by_source", dla_by_source, f"{e} (or top:N, the study's top N heads)") from None
            if not heads:
                raise ArgumentError("dla_by_source", dla_by_source, "names no head: give heads (L9H9,L9H6) or top:N")


def _specs(spec: Any) -> Any:
    """A comma-separated string of heads (the command line's ``L9H9,L9H6``) as a list."""
    return [x.strip() for x in spec.split(",") if x.strip()] if isinstance(spec, str) else spec


def _is_top(spec: Any) -> bool:
    return isinstance(spec, str) and spec.strip().lower().startswith("top:")


def _top_count(spec: Any) -> int | None:
    if not _is_top(spec):
        return None
    text = spec.strip()[4:]
    if not text.isdigit() or int(text) < 1:
        raise ArgumentError("dla_by_source", spec, "top:N needs a whole number N of at least 1 (top:3)")
    return int(text)


def check_with_model(lens_top_k: int | None, dla_by_source: Any, neurons: int | None, *, n_layers: int,
                     n_heads: int, vocab: int) -> list[tuple[int, int]] | None:
    """The checks that need the model's shape; returns the named heads (``None`` for ``top:N``,
    which is known only after the study's pass, or when no split by source was asked)."""
    if lens_top_k is not None and lens_top_k > vocab:
        raise ArgumentError("lens_top_k", lens_top_k, f"this model's vocabulary has {vocab} tokens; ask for at most that")
    if neurons is not None and neurons >= n_layers:
        raise ArgumentError("neurons", neurons, f"this model has MLP layers 0-{n_layers - 1}")
    if dla_by_source is None:
        return None
    n = _top_count(dla_by_source)
    if n is not None:
        if n > n_layers * n_heads:
            raise ArgumentError("dla_by_source", dla_by_source, f"this model has {n_layers * n_heads} heads")
        return None
    try:
        return list(dict.fromkeys(parse_heads(_specs(dla_by_source), n_layers, n_heads)))
    except ValueError as e:
        raise ArgumentError("dla_by_source", dla_by_source, str(e)) from None


def source_heads(dla_by_source: Any, named: list[tuple[int, int]] | None,
                 head_attribution: np.ndarray) -> list[tuple[int, int]]:
    """The heads split by source: those named, or ``top:N``: the N heads of largest ``|mean|``."""
    if named is not None:
        return named
    n = _top_count(dla_by_source)
    return [(l, h) for l, h, _ in rank_heads(np.abs(head_attribution), n, 1)]


def role_sums(parts: np.ndarray, prompts: Sequence[Prompt], ids: list[list[int]], correct: np.ndarray,
              incorrect: np.ndarray, lengths: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``parts`` ``[n_heads, T_max, N]`` summed by named source position: ``(names, [n_heads,
    n_names, N])``. IOI prompts: the IOI paper's word positions (IO, S1, S1+1, S2, END) and "other";
    otherwise END, END-1, ... (as many as the shortest prompt has, at most ``N_FROM_END``) and
    "earlier". Every position falls in exactly one row, so the rows add up to the head's part."""
    n = parts.shape[-1]
    at = ioi_positions(prompts, ids, correct, incorrect)
    if at is not None and any(len(set(x)) < len(IOI_POSITIONS) for x in np.stack(list(at.values())).T):
        at = None  # two names on one token (S1+1 = IO): not a partition, name positions from the end
    if at is not None:
        names = list(IOI_POSITIONS)
        where = np.stack([at[k] for k in names])  # [n_named, N]
    else:
        m = int(min(N_FROM_END, lengths.min()))
        names = ["END"] + [f"END-{i}" for i in range(1, m)]
        where = np.stack([lengths - 1 - i for i in range(m)])
    cols = np.arange(n)
    named = parts[:, where, cols]  # [n_heads, n_named, N]
    rest = parts.sum(1) - named.sum(1)
    return names + ["other" if at is not None else "earlier"], np.concatenate([named, rest[:, None]], axis=1)
