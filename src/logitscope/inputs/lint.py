"""Warnings for prompt habits that silently change results (not errors: they may be intended).

:func:`lint_prompts` returns one line per kind of problem; ``run_study`` issues each as a
:class:`~logitscope.errors.PromptWarning` through :mod:`warnings` (so Python code can filter it),
and the command line prints them (``--quiet`` silences them).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import Any, Callable, Sequence

from logitscope.inputs.prompt import Prompt


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # .../logitscope/


def warn_prompts(message: str) -> None:
    """Issue ``message`` as a :class:`~logitscope.errors.PromptWarning` attributed to the user's
    line: the first frame outside logitscope, however deep in the library it was raised (a fixed
    ``stacklevel`` points inside the library when ``run_patching`` calls ``run_study``)."""
    from logitscope.errors import PromptWarning

    level, frame = 1, sys._getframe(0)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PromptWarning, stacklevel=level)


def where_in_set(p: Prompt, i: int) -> str:
    line = p.meta.get("line")
    return f"line {line}" if line is not None else f"prompt {i}"


def _text_answers(p: Prompt) -> list[str]:
    """The answers given as text (answers given as token ids have no spelling to check)."""
    return [a for a in (p.correct, p.incorrect) if isinstance(a, str)]


def _in_prompt(p: Prompt, answer: str) -> bool:
    word = answer.strip()
    return bool(word) and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", p.text) is not None


def _one_answer_in_prompt(p: Prompt) -> bool:
    if not (isinstance(p.correct, str) and isinstance(p.incorrect, str)):
        return False
    return _in_prompt(p, p.correct) != _in_prompt(p, p.incorrect)


_CHECKS: list[tuple[str, Callable[[Prompt], bool], str]] = [
    (
        "double space",
        lambda p: "  " in p.text,
        "contain a double space, which tokenizes differently from a single one",
    ),
    (
        "answer without leading space",
        lambda p: any(not a.startswith(" ") for a in _text_answers(p)),
        "have an answer without a leading space; after a word the next token usually starts with"
        " one (' Mary', not 'Mary')",
    ),
    (
        "trailing space",
        lambda p: p.text.endswith(" "),
        "end in a space; GPT-style tokenizers put the space in the next token, so the answer's"
        " leading-space token is then unlikely",
    ),
    (
        "trailing newline",
        lambda p: p.text.endswith(("\n", "\r")),
        "end in a newline, so the answer is asked for at the start of a new line; a prompt that"
        " continues on the same line should not end in one",
    ),
    (
        "one answer in prompt",
        _one_answer_in_prompt,
        "have one answer word in the prompt and the other not; where the answers are names from the"
        " prompt (IOI-style), that is usually a typo",
    ),
]

SEED_DOUBLE_SPACE = ("the seed's prompts contain a double space ('shops,  John'), kept byte for byte as in the seed"
                     " notebook (the 'arena' set is the single-space version)")


def _special_tokens(tokenizer: Any) -> list[str]:
    """The special tokens the tokenizer reads as themselves when they appear in text."""
    if tokenizer is None or getattr(tokenizer, "split_special_tokens", False):
        return []
    tokens = getattr(tokenizer, "all_special_tokens", None) or []
    return sorted({t for t in tokens if isinstance(t, str) and len(t) > 1}, key=len, reverse=True)


def lint_prompts(prompts: Sequence[Prompt], *, tokenizer: Any = None, max_examples: int = 3) -> list[str]:
    """One warning line per kind of problem, with a count and the first few places. With the
    model's ``tokenizer``, also special tokens written in the prompt text (``<|endoftext|>``)."""
    warnings = []
    for name, check, message in _CHECKS:
        hits = [i for i, p in enumerate(prompts) if check(p)]
        if not hits:
            continue
        if name == "double space" and all(prompts[i].meta.get("source") == "seed" for i in hits):
            warnings.append(SEED_DOUBLE_SPACE)
            continue
        warnings.append(_line(prompts, hits, message, max_examples))
    for token in _special_tokens(tokenizer):
        hits = [i for i, p in enumerate(prompts) if token in p.text]
        if hits:
            ids = tokenizer.convert_tokens_to_ids([token])
            message = (f"contain the special token {token!r} written as text; the tokenizer reads it as that token"
                       f" (id {ids[0]}), not as characters")
            warnings.append(_line(prompts, hits, message, max_examples))
    return warnings


def _line(prompts: Sequence[Prompt], hits: list[int], message: str, max_examples: int) -> str:
    where = ", ".join(where_in_set(prompts[i], i) for i in hits[:max_examples])
    more = ", ..." if len(hits) > max_examples else ""
    return f"{len(hits)} of {len(prompts)} prompts {message} [{where}{more}]"


def special_answer(prompts: Sequence[Prompt], correct: Sequence[int], incorrect: Sequence[int],
                   tokenizer: Any) -> tuple[int, str | int, int] | None:
    """The first ``(prompt index, answer, token id)`` whose answer is one of the tokenizer's special
    tokens (``<|endoftext|>``, BOS, padding, unknown), as text or as an id, or ``None``. Such an
    answer is not a word the model predicts after the prompt's text, so its logit difference means
    nothing for the question asked (an error, not a warning)."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    if not special:
        return None
    for i, (p, c, x) in enumerate(zip(prompts, correct, incorrect)):
        for answer, token in ((p.correct, int(c)), (p.incorrect, int(x))):
            if token in special:
                return i, answer, token
    return None
