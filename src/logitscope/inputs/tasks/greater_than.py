"""Greater-than (Hanna, Liu & Variengien 2023, "How does GPT-2 compute greater-than?", arXiv 2305.00586).

The prompt is "The {noun} lasted from the year XXYY to the year XX": a model that has the task puts
its probability on the two-digit years above YY. The nouns, the template and the counterpart are the
paper's (its code: ``dataset.py`` and ``cache/potential_nouns.txt`` in hannamw/gpt2-greater-than,
which samples years 1000-1899). The counterpart is the same prompt with the start year XX01, so that
every two-digit year but 00 and 01 is "greater". The metric is the paper's probability difference:
P(YY+1 .. 99) - P(00 .. YY) at the last position (``prob-diff`` over the answer sets).

The task needs each year's last two digits as one token, as GPT-2's tokenizer writes " 1732"
(" 17", "32"). A tokenizer that writes digits one by one (SmolLM2's) has no such token:
the generator says so instead of making prompts whose answers the model cannot give in one step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.prompt import Prompt
from logitscope.inputs.tasks.base import Task, check_count, check_seed, encode, tokenizer_label

__all__ = ["CENTURIES", "NOUNS", "TASK", "TEMPLATE", "iter_greater_than", "valid_years"]

TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"

# The paper's 120 nouns (cache/potential_nouns.txt), in its order.
NOUNS: tuple[str, ...] = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack", "attempts",
    "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma", "competition",
    "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact", "contract",
    "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations", "development",
    "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment", "endeavor",
    "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition", "experiments",
    "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness", "impact",
    "imprisonment", "improvement", "incarceration", "increase", "insurgency", "invasion", "investigation",
    "journey", "kingdom", "marriage", "modernization", "negotiation", "notoriety", "obstruction", "operation",
    "order", "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice", "process",
    "program", "progress", "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship",
    "retaliation", "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump",
    "stature", "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour", "tradition", "treaty",
    "trial", "trip", "unemployment", "voyage", "warfare", "work",
)  # fmt: skip

CENTURIES = tuple(range(10, 19))  # the paper samples years 1000-1899
FIRST_YY, LAST_YY = 2, 98  # YY from 02 to 98: some year is above it, and XX01 below it


def _split_as_two(tokenizer: Any, century: int, yy: int) -> bool:
    """True if " XXYY" is the two tokens " XX" and "YY" (the paper's ``is_valid_year``)."""
    ids = encode(tokenizer, f" {century}{yy:02d}")
    return len(ids) == 2 and encode(tokenizer, f"{yy:02d}") == ids[1:]


def valid_years(tokenizer: Any = None) -> dict[int, tuple[int, ...]]:
    """For each YY from 02 to 98, the centuries XX whose year XXYY *and* counterpart year XX01 the
    tokenizer splits as (" XX", "YY") (all of them without a tokenizer). An :class:`InputError` if the
    tokenizer does not write every two-digit number 00-99 as one token."""
    if tokenizer is None:
        return {yy: CENTURIES for yy in range(FIRST_YY, LAST_YY + 1)}
    split = [f"{y:02d}" for y in range(100) if len(encode(tokenizer, f"{y:02d}")) != 1]
    if split:
        pieces = [tokenizer.decode([t]) for t in encode(tokenizer, " 1732")]
        raise InputError(
            f"greater-than needs every two-digit year 00-99 as one token, as GPT-2's tokenizer writes ' 1732' "
            f"(' 17', '32'); {tokenizer_label(tokenizer)} writes ' 1732' as {pieces} and {len(split)} of the 100 "
            f"two-digit numbers ({', '.join(repr(s) for s in split[:3])}, ...) as several tokens, so the task's "
            "answers are not single tokens for this model: use a model with a GPT-2-style tokenizer (gpt2, "
            "distilgpt2), or give prompts of your own in a JSONL file"
        )
    ok_01 = {c for c in CENTURIES if _split_as_two(tokenizer, c, 1)}
    out = {yy: tuple(c for c in CENTURIES if c in ok_01 and _split_as_two(tokenizer, c, yy))
           for yy in range(FIRST_YY, LAST_YY + 1)}
    if not any(out.values()):
        raise InputError(f"greater-than: {tokenizer_label(tokenizer)} splits no year 1002-1898 as (' XX', 'YY'); "
                         "use a model with a GPT-2-style tokenizer, or prompts of your own in a JSONL file")
    return out


def iter_greater_than(n: int, *, seed: int = 0, tokenizer: Any = None) -> Iterator[Prompt]:
    """``n`` greater-than prompts, e.g. ``"The war lasted from the year 1732 to the year 17"`` with
    ``correct`` the two-digit years ``("33", ..., "99")``, ``incorrect`` ``("00", ..., "32")`` and the
    counterpart ``"The war lasted from the year 1701 to the year 17"``.

    Balanced over YY as the paper's ``balanced=True``: prompt i has YY = 02 + (i mod 97); a private
    ``random.Random(seed)`` then draws the century (among those :func:`valid_years` keeps for that YY;
    a YY with none is passed over) and the noun. ``meta``: ``task``, ``metric``, ``noun``, ``year``
    and ``yy``. Arguments are checked now; prompts are made as they are taken."""
    check_count(n, "greater-than")
    check_seed(seed)
    years = valid_years(tokenizer)
    return _sample(n, seed, years)


def _sample(n: int, seed: int, years: dict[int, tuple[int, ...]]) -> Iterator[Prompt]:
    rng = random.Random(seed)
    cycle = [yy for yy in range(FIRST_YY, LAST_YY + 1) if years[yy]]
    answers = {yy: (tuple(f"{y:02d}" for y in range(yy + 1, 100)), tuple(f"{y:02d}" for y in range(yy + 1)))
               for yy in cycle}
    for i in range(n):
        yy = cycle[i % len(cycle)]
        century = rng.choice(years[yy])
        noun = rng.choice(NOUNS)
        correct, incorrect = answers[yy]
        meta = {"task": TASK.name, "metric": TASK.metric, "noun": noun, "year": century * 100 + yy, "yy": yy}
        yield Prompt(TEMPLATE.format(noun=noun, century=century, yy=yy), correct, incorrect, meta,
                     corrupted=TEMPLATE.format(noun=noun, century=century, yy=1))


TASK = Task(
    name="greater-than",
    generate=iter_greater_than,
    metric="prob-diff",
    counterpart="the same prompt with the start year XX01",
    source="Hanna, Liu & Variengien 2023, How does GPT-2 compute greater-than? (arXiv 2305.00586); "
           "code and nouns: github.com/hannamw/gpt2-greater-than",
)
