"""Counterpart ("corrupted") prompts for activation patching.

A counterpart has the same number of tokens as its prompt and changes what the answer should be;
patching measures how much of the clean answer's logit difference each component carries over.

- ``seed`` / ``arena``: each prompt's name-swapped partner, as TransformerLens's demo pairs them
  ("..., John gave the bag to" with "..., Mary gave the bag to"), found by what the prompt is (its
  text and answers in the built-in set), not by where it sits in the list: a slice, filter or
  shuffle of a built-in set keeps every prompt's own partner.
- IOI prompts, ``"abc"``: the IOI paper's ABC distribution, the same template, place and object with
  the three name occurrences (IO, S1, S2) replaced by three distinct other names, so no name repeats.
- IOI prompts, ``"flip"``: the name-flipped prompt, S2 replaced by IO, so the other name repeats
  and the answer flips.
- JSONL rows carry their own ``"corrupted"`` field, and the built-in tasks' prompts their task's
  standard counterpart (:mod:`logitscope.inputs.tasks`).
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any, Sequence

from logitscope.errors import ArgumentError, InputError
from logitscope.inputs.prompt import Prompt

CORRUPTIONS = ("abc", "flip")


def _word(name: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")


def _occurrences(text: str, name: str) -> list[re.Match]:
    return list(_word(name).finditer(text))


def _substitute(text: str, spans: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, stop, new in sorted(spans):
        out.append(text[last:start])
        out.append(new)
        last = stop
    return "".join(out) + text[last:]


def ioi_counterpart(prompt: Prompt, kind: str, rng: random.Random, names: Sequence[str]) -> str:
    """The ``kind`` ("abc" or "flip") counterpart text of an IOI prompt (meta ``io`` and ``s``)."""
    io, s = prompt.meta["io"], prompt.meta["s"]
    io_at, s_at = _occurrences(prompt.text, io), _occurrences(prompt.text, s)
    if len(io_at) != 1 or len(s_at) != 2:
        raise InputError(
            f"prompt {prompt.text!r}: an IOI prompt names IO ({io!r}) once and S ({s!r}) twice; "
            f"this one has {len(io_at)} and {len(s_at)}"
        )
    s1, s2 = s_at
    if kind == "flip":
        return _substitute(prompt.text, [(s2.start(), s2.end(), io)])
    pool = [n for n in names if n not in (io, s)]
    if len(pool) < 3:
        raise InputError("the ABC counterpart needs at least 3 names besides the prompt's own; too few are single tokens")
    x, y, z = rng.sample(pool, 3)
    return _substitute(prompt.text, [(io_at[0].start(), io_at[0].end(), x), (s1.start(), s1.end(), y), (s2.start(), s2.end(), z)])


def builtin_partner(prompt: Prompt, i: int) -> str:
    """The text of a ``seed`` / ``arena`` prompt's name-swapped partner: the prompt of the same set
    with the same format and the two names swapped (answers exchanged). Found by identity, so a
    slice or shuffle of the set cannot pair a prompt with another's partner; a prompt that says it
    is from the set but is not one of its prompts is an error, never paired with a guess."""
    from logitscope.inputs.prompts import builtin_prompts

    source = prompt.meta["source"]
    full = builtin_prompts(source)
    for j, q in enumerate(full):
        if (q.text, q.correct, q.incorrect) == (prompt.text, prompt.correct, prompt.incorrect):
            partner = full[j ^ 1]  # the set lists each prompt beside its partner
            assert (partner.correct, partner.incorrect) == (q.incorrect, q.correct)
            return partner.text
    raise InputError(
        f"prompt {i} ({prompt.text[:50]!r}, answers {prompt.correct!r} / {prompt.incorrect!r}) says it is from the "
        f"{source} set (meta source={source!r}) but is not one of its prompts, so it has no name-swapped partner: "
        'give it a "corrupted" counterpart of its own, or drop meta["source"]'
    )


def with_counterparts(prompts: Sequence[Prompt], corrupt: str | None = None, *, seed: int = 0, tokenizer: Any = None) -> list[Prompt]:
    """``prompts`` with a ``corrupted`` counterpart each, or a clear error naming the first that has none.

    Prompts that already carry one (JSONL ``"corrupted"``) keep it. ``corrupt`` ("abc" or "flip")
    chooses the counterpart of IOI prompts (default "abc", the IOI paper's); prompts of the built-in
    ``seed`` and ``arena`` sets get their own name-swapped partner (:func:`builtin_partner`, whatever
    their order in ``prompts``). Deterministic for a ``seed``."""
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ArgumentError("corrupt", corrupt, f"use one of {', '.join(CORRUPTIONS)}")
    prompts = list(prompts)
    out: list[Prompt] = []
    rng = random.Random(seed)
    names: Sequence[str] | None = None
    for i, p in enumerate(prompts):
        if p.corrupted is not None:
            if corrupt is not None and ("io" in p.meta or "task" in p.meta):  # IOI's or a built-in task's own
                raise ArgumentError("corrupt", corrupt, "these prompts already carry their counterparts ('corrupted')")
            out.append(p)
        elif p.meta.get("source") in ("seed", "arena"):
            if corrupt is not None:
                raise ArgumentError("corrupt", corrupt, f"is for IOI prompts; the {p.meta['source']} set pairs each "
                                    "prompt with its name-swapped partner")
            out.append(replace(p, corrupted=builtin_partner(p, i)))
        elif "io" in p.meta and "s" in p.meta:
            if names is None:
                from logitscope.inputs.ioi import ioi_word_lists

                names = ioi_word_lists(tokenizer)["names"]
            out.append(replace(p, corrupted=ioi_counterpart(p, corrupt or "abc", rng, names)))
        else:
            line = p.meta.get("line")
            where = f"line {line}" if line is not None else f"prompt {i}"
            raise InputError(
                f"{where} ({p.text[:50]!r}) has no counterpart for patching: give every JSONL row a "
                '"corrupted" prompt (same number of tokens, answer changed), or use seed, arena or ioi:N'
            )
    return out
