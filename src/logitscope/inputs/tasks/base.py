"""What every built-in task shares: the :class:`Task` entry of the registry, the metric names, and
the argument and tokenizer checks the generators run before they make a prompt."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.prompt import Prompt

__all__ = ["METRICS", "Task", "check_count", "check_seed", "encode", "one_token", "same_length", "tokenizer_label"]

# The metric names the methods take (issue 22, part 2); each task names one of them as its standard.
METRICS = ("logit-diff", "logprob-diff", "prob-diff", "logprob", "kl", "loss")


@dataclass(frozen=True)
class Task:
    """One built-in task: ``generate(arg, seed=, tokenizer=)`` gives its prompts one at a time
    (``arg`` is the ``N`` of ``name:N``, or the path of ``name:FILE``), each with its standard
    counterpart as ``Prompt.corrupted`` and ``meta["task"]`` = ``name``; ``metric`` is the metric its
    source measures with, ``counterpart`` says in words what the counterpart changes, ``source``
    cites where the task comes from."""

    name: str
    generate: Callable[..., Iterator[Prompt]]
    metric: str
    counterpart: str
    source: str
    argument: str = "N"  # "N": a number of prompts; "FILE": a path to the user's rows

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.argument not in ("N", "FILE"):
            raise ValueError(f"task {self.name!r}: argument must be 'N' or 'FILE', not {self.argument!r}")


def check_count(n: Any, task: str) -> int:
    """``n`` if it is a whole number of prompts, at least 1; else an :class:`InputError` naming ``task``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InputError(f"number of {task} prompts must be a whole number, got {n!r}")
    if n < 1:
        raise InputError(f"number of {task} prompts must be at least 1, got {n}")
    return n


def check_seed(seed: Any) -> int:
    """``seed`` if it is a whole number; else an :class:`InputError`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be a whole number, got {seed!r}")
    return seed


def tokenizer_label(tokenizer: Any) -> str:
    """``tokenizer 'gpt2'`` (its name or path), for errors that say which tokenizer refused a word."""
    name = getattr(tokenizer, "name_or_path", None)
    return f"tokenizer {name!r}" if name else f"this tokenizer ({type(tokenizer).__name__})"


def encode(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids without special tokens, or an :class:`InputError` if ``tokenizer`` is not
    a Hugging Face tokenizer."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except (AttributeError, TypeError) as e:
        raise InputError(f"tokenizer must be a Hugging Face tokenizer with .encode(text, add_special_tokens=False) "
                         f"({e})") from None


def one_token(tokenizer: Any, word: str, *, after: str = "the") -> bool:
    """True if ``word`` (written with its leading space, if any) is one token when it continues
    ``after``: the token a prompt ending in ``after`` asks for. Looked at in context because
    SentencePiece-style tokenizers split a lone " Mary" into two pieces but continue a sentence with
    one; a tokenizer of ``None`` accepts every word."""
    if tokenizer is None:
        return True
    base = encode(tokenizer, after)
    full = encode(tokenizer, after + word)
    return len(full) == len(base) + 1 and full[: len(base)] == base


def same_length(tokenizer: Any, texts: Sequence[str]) -> bool:
    """True if every text has the same number of tokens (always, without a tokenizer): a prompt and its
    counterpart must, for patching to pair their positions."""
    if tokenizer is None:
        return True
    return len({len(encode(tokenizer, t)) for t in texts}) == 1
