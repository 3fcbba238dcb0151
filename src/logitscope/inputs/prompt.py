"""One prompt and its two answers, and the checks every source of prompts shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from logitscope.errors import InputError

FIELDS = ("prompt", "correct", "incorrect")
OPTIONAL_FIELDS = ("corrupted",)  # the counterpart prompt, for activation patching
ANSWER_RULE = "a non-empty string (' Mary') or a token id (a whole number, 0 or more)"
SET_RULE = "or a non-empty list of such alternatives ([\"1718\", \"1719\"])"


@dataclass(frozen=True)
class Prompt:
    """One prompt and its two candidate answers.

    Each answer is text that is exactly one token for the model's tokenizer (``" Mary"``), or a
    token id (``5335``), used as given; or a set of such alternatives, a tuple (a list is stored as
    a tuple): ``correct=(" 1718", " 1719")``. The causal methods' metrics read a set as a whole
    (:mod:`logitscope.engine.metrics`: its mean logit, or its summed probability). ``meta`` carries provenance that results keep beside the
    prompt, e.g. ``{"template": 3, "order": "ABBA"}`` for generated IOI prompts or
    ``{"line": 12}`` for a JSONL row. ``corrupted``: the prompt's counterpart for activation
    patching (same number of tokens, the answer changed; a JSONL row's ``"corrupted"``), or ``None``.
    """

    text: str
    correct: str | int | tuple[str | int, ...]
    incorrect: str | int | tuple[str | int, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    corrupted: str | None = None

    def __post_init__(self) -> None:
        for name in ("correct", "incorrect"):
            if isinstance(getattr(self, name), list):  # a JSONL list: stored as a tuple (hashable)
                object.__setattr__(self, name, tuple(getattr(self, name)))


def members(answer: Any) -> tuple:
    """An answer's alternatives: the set's members, or the single answer alone."""
    return tuple(answer) if isinstance(answer, (tuple, list)) else (answer,)


def is_set(answer: Any) -> bool:
    """Whether an answer is given as a set (a tuple or list of alternatives)."""
    return isinstance(answer, (tuple, list))


def is_token_id(answer: Any) -> bool:
    """True for an answer given as a token id (an int, not a bool, 0 or more)."""
    return isinstance(answer, int) and not isinstance(answer, bool) and answer >= 0


def check_prompt(prompt: Prompt, where: str) -> Prompt:
    """``prompt`` if its text is a string with more than whitespace and each answer :data:`ANSWER_RULE`; else an
    :class:`InputError` that starts with ``where`` (``file.jsonl:3``, ``prompts[3]``)."""
    if not isinstance(prompt.text, str) or not prompt.text:
        raise InputError(f"{where}: field 'prompt' must be a non-empty string, not {_shown(prompt.text)}")
    if not prompt.text.strip():
        raise InputError(f"{where}: field 'prompt' is only whitespace ({prompt.text[:20]!r}); give the text the answer "
                         "follows")
    for name, answer in (("correct", prompt.correct), ("incorrect", prompt.incorrect)):
        if is_set(answer) and not answer:
            raise InputError(f"{where}: field {name!r} is an empty set of answers; give at least one alternative, "
                             f"each {ANSWER_RULE}")
        for k, member in enumerate(members(answer)):
            if not ((isinstance(member, str) and member) or is_token_id(member)):
                what = f"field {name!r}" if not is_set(answer) else f"field {name!r}, alternative {k}"
                raise InputError(f"{where}: {what} must be {ANSWER_RULE}{'' if is_set(answer) else ' ' + SET_RULE}, "
                                 f"not {_shown(member)}")
    if not isinstance(prompt.meta, dict):
        raise InputError(f"{where}: meta must be a dict, not {_shown(prompt.meta)}")
    if prompt.corrupted is not None and (not isinstance(prompt.corrupted, str) or not prompt.corrupted.strip()):
        raise InputError(f"{where}: field 'corrupted' must be a non-empty string (not only whitespace), "
                         f"not {_shown(prompt.corrupted)}")
    return prompt


def prompt_from_row(row: dict[str, Any], where: str, **meta: Any) -> Prompt:
    """A :class:`Prompt` from a ``{"prompt", "correct", "incorrect", ...}`` row (a JSONL line, or a
    dict a notebook passes); extra keys go to ``meta``, then ``meta`` given here."""
    missing = [k for k in FIELDS if k not in row]
    if missing:
        raise InputError(f"{where}: missing field {', '.join(repr(m) for m in missing)}")
    extra = {k: v for k, v in row.items() if k not in FIELDS and k not in OPTIONAL_FIELDS}
    return check_prompt(Prompt(row["prompt"], row["correct"], row["incorrect"], {**extra, **meta},
                               row.get("corrupted")), where)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
