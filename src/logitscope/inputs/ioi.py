"""Indirect-object-identification (IOI) prompts, generated the way the IOI paper does it.

Wang et al. 2022 ("Interpretability in the Wild", arXiv 2211.00593, App. E) build the IOI
distribution from 15 templates, a list of English first names and short lists of places and
objects. Its code (``easy_transformer/ioi_dataset.py`` in redwoodresearch/Easy-Transformer) holds
the word lists reproduced below (99 names, 8 places, 8 objects; the paper's text says 100 names
and 20 places/objects, the code is what produced its numbers).

Template notation: ``[A]`` is the indirect object (IO, the right answer), ``[B]`` the subject (S,
the wrong answer). The paper's templates are all in *BABA* order: the first clause names S, then
IO ("When [B] and [A] ..., [B] gave ... to [A]"). The *ABBA* version of each one swaps the first
``[B]`` and the first ``[A]``, so its first clause names IO, then S. The last ``[A]`` is the answer
and is cut off: every prompt ends with "to", and the model should continue with " IO".
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.prompt import Prompt

__all__ = [
    "ABBA_TEMPLATES",
    "BABA_TEMPLATES",
    "NAMES",
    "OBJECTS",
    "ORDERS",
    "PLACES",
    "abba_from_baba",
    "generate_ioi_prompts",
    "iter_ioi_prompts",
    "ioi_word_lists",
]

# First names, in the order of the paper's code (99 of them; the paper's text says 100).
NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda",
    "Daniel", "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason",
    "Justin", "Sarah", "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas",
    "Anthony", "Heather", "Eric", "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven",
    "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren", "Amber", "Brittany",
    "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen",
    "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul",
    "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis",
    "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie",
    "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison",
    "Bradley", "Samuel",
)  # fmt: skip

PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
)  # fmt: skip

OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
)  # fmt: skip

# The paper's 15 templates, verbatim and in its order (template k is BABA_TEMPLATES[k - 1]).
BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",  # noqa: E501
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)

ORDERS = ("mixed", "ABBA", "BABA")

_TOKENS = ("[A]", "[B]", "[PLACE]", "[OBJECT]")
_PLACEHOLDER = re.compile(r"\[[^\[\]]*\]")
_ANSWER_SUFFIX = " [A]"


def abba_from_baba(template: str) -> str:
    """The ABBA version of a BABA template: swap its first ``[B]`` and its first ``[A]``.

    ``"When [B] and [A] went ..., [B] gave ... to [A]"`` becomes
    ``"When [A] and [B] went ..., [B] gave ... to [A]"``.
    """
    b = template.find("[B]")
    a = template.find("[A]")
    if b < 0 or a < 0 or b > a:
        raise InputError(
            f"IOI template {template!r} is not in BABA form: its first clause must name [B] "
            "(the subject) before [A] (the indirect object)"
        )
    return template[:b] + "[A]" + template[b + 3 : a] + "[B]" + template[a + 3 :]


ABBA_TEMPLATES: tuple[str, ...] = tuple(abba_from_baba(t) for t in BABA_TEMPLATES)


@dataclass(frozen=True)
class _Template:
    number: int  # what meta["template"] reports
    order: str  # "ABBA" or "BABA"
    fmt: str  # str.format pattern with {io}, {s}, {place}, {object}; answer already cut off
    uses_place: bool
    uses_object: bool


def _check_baba(template: str, label: str) -> None:
    if not isinstance(template, str):
        raise InputError(f"IOI {label} must be a string, got {type(template).__name__}")
    unknown = sorted({p for p in _PLACEHOLDER.findall(template) if p not in _TOKENS})
    if unknown:
        raise InputError(
            f"IOI {label} {template!r} uses unknown placeholder(s) {', '.join(unknown)}: "
            "use [A] (indirect object), [B] (subject), [PLACE] and [OBJECT]"
        )
    if template.count("[A]") != 2 or template.count("[B]") != 2:
        raise InputError(
            f"IOI {label} {template!r} must contain [A] twice and [B] twice, "
            'e.g. "When [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]"'
        )
    if not template.endswith(_ANSWER_SUFFIX):
        raise InputError(f"IOI {label} {template!r} must end with ' [A]' (the answer)")
    abba_from_baba(template)  # raises unless the first clause reads [B] ... [A]
    if template.find("[B]", template.find("[A]")) < 0:
        raise InputError(f"IOI {label} {template!r}: the second [B] must come after the first [A]")


def _compile(template: str, number: int, order: str) -> _Template:
    body = template[: -len(_ANSWER_SUFFIX)]
    fmt = body.replace("{", "{{").replace("}", "}}")
    for token, field in zip(_TOKENS, ("{io}", "{s}", "{place}", "{object}")):
        fmt = fmt.replace(token, field)
    return _Template(number, order, fmt, "[PLACE]" in body, "[OBJECT]" in body)


def _resolve_templates(templates: Any) -> list[tuple[int, str]]:
    """``(number, BABA template)`` pairs to sample from."""
    if templates is None:
        return list(enumerate(BABA_TEMPLATES, start=1))
    if isinstance(templates, (str, int)) or not isinstance(templates, Iterable):
        raise InputError(
            "templates must be a list of paper template numbers (1-15) or of BABA template "
            f"strings, got {templates!r}"
        )
    items = list(templates)
    if not items:
        raise InputError("templates is empty: give at least one template number (1-15) or string")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        bad = [t for t in items if not 1 <= t <= len(BABA_TEMPLATES)]
        if bad:
            raise InputError(
                f"IOI template number {bad[0]} does not exist: the paper has templates "
                f"1-{len(BABA_TEMPLATES)}"
            )
        return [(t, BABA_TEMPLATES[t - 1]) for t in items]
    if all(isinstance(t, str) for t in items):
        for i, t in enumerate(items, start=1):
            _check_baba(t, f"template {i}")
        return list(enumerate(items, start=1))
    raise InputError(
        "templates must be all paper template numbers (1-15) or all BABA template strings, "
        "not a mix"
    )


def _single_token_words(words: Sequence[str], tokenizer: Any) -> tuple[str, ...]:
    """The words ``tokenizer`` encodes as exactly one token when written with a leading space (or,
    for tokenizers with their own word-boundary marker, as one token continuing a sentence)."""
    keep = []
    for w in words:
        try:
            ids = tokenizer.encode(" " + w, add_special_tokens=False)
        except (AttributeError, TypeError) as e:
            raise InputError(
                "tokenizer must be a Hugging Face tokenizer with "
                f".encode(text, add_special_tokens=False) ({e})"
            ) from None
        if len(ids) == 1 or _one_token_after_a_word(tokenizer, w):
            keep.append(w)
    return tuple(keep)


def _one_token_after_a_word(tokenizer: Any, word: str) -> bool:
    """SentencePiece-style tokenizers split " Mary" alone into ['▁', '▁Mary'] but continue a
    sentence with one token; that is the token an IOI prompt asks for."""
    base = tokenizer.encode("the", add_special_tokens=False)
    full = tokenizer.encode("the " + word, add_special_tokens=False)
    return len(full) == len(base) + 1 and full[: len(base)] == base


def ioi_word_lists(tokenizer: Any = None) -> dict[str, tuple[str, ...]]:
    """``{"names", "places", "objects"}`` the generator samples from.

    With a ``tokenizer``, only the words it encodes as one token with a leading space
    (``len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1``), in the lists' order.
    """
    if tokenizer is None:
        return {"names": NAMES, "places": PLACES, "objects": OBJECTS}
    return {
        "names": _single_token_words(NAMES, tokenizer),
        "places": _single_token_words(PLACES, tokenizer),
        "objects": _single_token_words(OBJECTS, tokenizer),
    }


def _tokenizer_label(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", None)
    return f"tokenizer {name!r}" if name else f"this tokenizer ({type(tokenizer).__name__})"


def generate_ioi_prompts(
    n: int,
    *,
    order: str = "mixed",
    seed: int = 0,
    tokenizer: Any = None,
    templates: Sequence[int] | Sequence[str] | None = None,
) -> list[Prompt]:
    """``n`` IOI prompts sampled as in the IOI paper, as a list: :func:`iter_ioi_prompts`' prompts
    (see there for the sampling and every argument)."""
    return list(iter_ioi_prompts(n, order=order, seed=seed, tokenizer=tokenizer, templates=templates))


def iter_ioi_prompts(
    n: int,
    *,
    order: str = "mixed",
    seed: int = 0,
    tokenizer: Any = None,
    templates: Sequence[int] | Sequence[str] | None = None,
) -> Iterator[Prompt]:
    """``n`` IOI prompts sampled as in the IOI paper, one at a time, e.g.
    ``Prompt("Then, Mary and John went to the store. John gave a ring to", " Mary", " John")``.

    For each prompt, in this order, a private ``random.Random(seed)`` draws: a template (uniform),
    the IO name, the S name (a uniform ordered pair of two *different* names), a place and an
    object (uniform; drawn even when the template doesn't use them, so every prompt consumes the
    same draws). The prompt is the template with its final " [A]" cut off, so it ends with "to";
    ``correct`` is " " + IO and ``incorrect`` is " " + S. The same arguments give the same
    prompts in the same order; with the same seed, ``order="ABBA"`` and ``order="BABA"`` give
    matched prompts that differ only in which name the first clause mentions first, and a
    shorter ``n`` gives a prefix of a longer one.

    Args:
        n: number of prompts, at least 1.
        order: ``"BABA"`` (first clause names S then IO: "When John and Mary ..., John gave ...
            to"), ``"ABBA"`` (IO then S: "When Mary and John ..., John gave ... to") or
            ``"mixed"``: prompts alternate ABBA, BABA, ABBA, ... so exactly half are each when
            ``n`` is even (ABBA has one more when ``n`` is odd). Unlike the paper's code, whose
            "mixed" samples from only 14 templates (BABA and ABBA templates 1-7), this uses all
            15 templates in both orders.
        seed: seed for the private random generator; global random state is never touched.
        tokenizer: a Hugging Face tokenizer. If given, only names, places and objects it encodes
            as a single token with a leading space are used (filtered before sampling, keeping
            the lists' order). Raises :class:`InputError` if fewer than 2 names survive.
        templates: restrict sampling to some of the paper's templates, by number (1-15), or
            give your own BABA-form templates as strings (``[A]`` = IO, ``[B]`` = S, each twice,
            ending with " [A]"; ``[PLACE]`` and ``[OBJECT]`` optional). Default: all 15.

    Each prompt's ``meta`` is ``{"template": k, "order": "ABBA" | "BABA", "io": name,
    "s": name, "place": word, "object": word}``, where ``k`` is the paper's template number
    (for custom template strings, the 1-based position in ``templates``); "place" and "object"
    are left out when the template doesn't use them.

    The arguments are checked when this is called; the prompts are made as they are taken, so
    memory holds only what the caller keeps.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise InputError(f"number of IOI prompts must be a whole number, got {n!r}")
    if n < 1:
        raise InputError(f"number of IOI prompts must be at least 1, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be a whole number, got {seed!r}")
    canonical = {o.lower(): o for o in ORDERS}
    if not isinstance(order, str) or order.lower() not in canonical:
        raise InputError(f"IOI order must be one of {', '.join(ORDERS)}, got {order!r}")
    order = canonical[order.lower()]

    chosen = _resolve_templates(templates)
    # compiled[k] = (ABBA version, BABA version) of the k-th template to sample from
    compiled = [
        (_compile(abba_from_baba(t), num, "ABBA"), _compile(t, num, "BABA")) for num, t in chosen
    ]

    words = ioi_word_lists(tokenizer)
    names, places, objects = words["names"], words["places"], words["objects"]
    if len(names) < 2:
        raise InputError(
            f"{_tokenizer_label(tokenizer)} can't represent IOI names as single tokens: "
            f"{len(names)} of the {len(NAMES)} names encode to one token with a leading space, "
            "and IOI needs at least 2; use prompts from a JSONL file whose answers are single "
            "tokens for this model"
        )
    for kind, pool, full, needed in (
        ("place", places, PLACES, any(c[1].uses_place for c in compiled)),
        ("object", objects, OBJECTS, any(c[1].uses_object for c in compiled)),
    ):
        if needed and not pool:
            free = [c[1].number for c in compiled if not getattr(c[1], f"uses_{kind}")]
            raise InputError(
                f"{_tokenizer_label(tokenizer)} can't represent any IOI {kind} "
                f"({', '.join(full)}) as a single token with a leading space; "
                + (f"use only templates {free}" if free else "no chosen template works without one")
            )

    return _sample(n, order, seed, compiled, names, places, objects)


def _sample(n: int, order: str, seed: int, compiled: list[tuple[_Template, _Template]], names: Sequence[str],
            places: Sequence[str], objects: Sequence[str]) -> Iterator[Prompt]:
    rng = random.Random(seed)
    randrange = rng.randrange
    n_templates, n_names, n_places, n_objects = len(compiled), len(names), len(places), len(objects)
    spaced = [" " + name for name in names]  # one answer string per name, shared by its prompts
    side = {"ABBA": 0, "BABA": 1}
    for i in range(n):
        pair = compiled[randrange(n_templates)]
        io_i = randrange(n_names)
        s_i = randrange(n_names - 1)
        if s_i >= io_i:
            s_i += 1
        place = places[randrange(n_places)] if n_places else ""
        obj = objects[randrange(n_objects)] if n_objects else ""
        tpl = pair[i % 2] if order == "mixed" else pair[side[order]]
        io, s = names[io_i], names[s_i]
        meta: dict[str, Any] = {"template": tpl.number, "order": tpl.order, "io": io, "s": s}
        if tpl.uses_place:
            meta["place"] = place
        if tpl.uses_object:
            meta["object"] = obj
        yield Prompt(tpl.fmt.format(io=io, s=s, place=place, object=obj), spaced[io_i], spaced[s_i], meta)
