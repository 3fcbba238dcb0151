"""Warnings for prompt habits that silently change results (not errors: they may be intended)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from logitscope.tasks.prompt import Prompt


def _where(p: Prompt, i: int) -> str:
    line = p.meta.get("line")
    return f"line {line}" if line is not None else f"prompt {i}"


def _answer_word(answer: str) -> str:
    return answer.strip()


def _in_prompt(p: Prompt, answer: str) -> bool:
    word = _answer_word(answer)
    return bool(word) and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", p.text) is not None


_CHECKS: list[tuple[str, Callable[[Prompt], bool], str]] = [
    (
        "double space",
        lambda p: "  " in p.text,
        "contain a double space, which tokenizes differently from a single one"
        " (the seed notebook's own prompts have one: 'shops,  John'; use --prompts arena for the"
        " single-space version)",
    ),
    (
        "answer without leading space",
        lambda p: not p.correct.startswith(" ") or not p.incorrect.startswith(" "),
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
        "one answer in prompt",
        lambda p: _in_prompt(p, p.correct) != _in_prompt(p, p.incorrect),
        "have one answer word in the prompt and the other not; where the answers are names from the"
        " prompt (IOI-style), that is usually a typo",
    ),
]


def lint_prompts(prompts: Sequence[Prompt], *, max_examples: int = 3) -> list[str]:
    """One warning line per kind of problem, with a count and the first few places."""
    warnings = []
    for _name, check, message in _CHECKS:
        hits = [i for i, p in enumerate(prompts) if check(p)]
        if hits:
            where = ", ".join(_where(prompts[i], i) for i in hits[:max_examples])
            more = ", ..." if len(hits) > max_examples else ""
            warnings.append(f"{len(hits)} of {len(prompts)} prompts {message} [{where}{more}]")
    return warnings
