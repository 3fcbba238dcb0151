"""Subject-verb agreement (SVA), as Marks et al. 2024 build it from Finlayson et al. 2021.

Finlayson et al. 2021 ("Causal Analysis of Syntactic Agreement Mechanisms in Neural Language
Models", ACL) ask for the verb after a subject whose number is singular or plural; Marks et al.
2024 ("Sparse Feature Circuits", arXiv 2403.19647; data ``data/{simple,nounpp,within_rc}_*.json`` in
saprmarks/feature-circuits) use three of their templates, the nouns and prepositions below and the
verbs is/are, has/have, does/do, goes/go, with the counterpart "the same prompt, the agreeing noun in
the other number". Here the answers are the whole verb sets: ``correct`` the four forms that agree
with the subject, ``incorrect`` the four that do not, in matching order.

Metric: ``logit-diff`` over the verb sets, not ``prob-diff``. Both sources measure a verb *pair*:
Finlayson et al. the ratio p(wrong verb) / p(right verb), Marks et al. the logit difference between
the two forms, and for a pair the log of that ratio is the logit difference. Over the sets, the mean
logit of the agreeing verbs minus the mean of the others is the mean of the four pairs' logit
differences, each pair counted once; a probability difference would be mostly " is" / " are".
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.prompt import Prompt
from logitscope.inputs.tasks.base import Task, check_count, check_seed, encode, one_token, tokenizer_label

__all__ = ["NOUNS", "OBJECTS", "PREPOSITIONS", "PLURAL_VERBS", "SINGULAR_VERBS", "TASK", "TEMPLATES", "iter_sva"]

# (singular, plural): the animate nouns of Marks et al.'s three data sets.
NOUNS: tuple[tuple[str, str], ...] = (
    ("architect", "architects"), ("assistant", "assistants"), ("athlete", "athletes"), ("aunt", "aunts"),
    ("boy", "boys"), ("carpenter", "carpenters"), ("chef", "chefs"), ("dancer", "dancers"), ("doctor", "doctors"),
    ("driver", "drivers"), ("executive", "executives"), ("farmer", "farmers"), ("father", "fathers"),
    ("friend", "friends"), ("girl", "girls"), ("guard", "guards"), ("guy", "guys"), ("kid", "kids"),
    ("lawyer", "lawyers"), ("man", "men"), ("minister", "ministers"), ("mother", "mothers"), ("parent", "parents"),
    ("poet", "poets"), ("singer", "singers"), ("skater", "skaters"), ("teacher", "teachers"), ("uncle", "uncles"),
    ("victim", "victims"), ("woman", "women"),
)  # fmt: skip
# (singular, plural): the objects of the prepositional phrase (the "nounpp" set's attractors).
OBJECTS: tuple[tuple[str, str], ...] = (
    ("bike", "bikes"), ("car", "cars"), ("cat", "cats"), ("chair", "chairs"), ("desk", "desks"), ("dog", "dogs"),
    ("table", "tables"), ("tree", "trees"), ("truck", "trucks"), ("window", "windows"),
)  # fmt: skip
PREPOSITIONS = ("near", "behind", "beside")
SINGULAR_VERBS = (" is", " has", " does", " goes")
PLURAL_VERBS = (" are", " have", " do", " go")

# Marks et al.'s three templates. {subject} is the noun the verb agrees with: the head noun in
# "simple" and "nounpp" (across a prepositional phrase whose object may have the other number), the
# relative clause's own subject in "within_rc" ("The fathers that the chef" -> " does").
TEMPLATES: dict[str, str] = {
    "simple": "The {subject}",
    "nounpp": "The {subject} {prep} the {other}",
    "within_rc": "The {other} that the {subject}",
}


def _same_length_pairs(pairs: tuple[tuple[str, str], ...], tokenizer: Any) -> tuple[tuple[str, str], ...]:
    """The (singular, plural) pairs whose two forms have the same number of tokens after "The"."""
    if tokenizer is None:
        return pairs
    return tuple(p for p in pairs if len(encode(tokenizer, "The " + p[0])) == len(encode(tokenizer, "The " + p[1])))


def _check_verbs(tokenizer: Any) -> None:
    bad = [v for v in SINGULAR_VERBS + PLURAL_VERBS if not one_token(tokenizer, v, after="The man")]
    if bad:
        raise InputError(f"sva: {tokenizer_label(tokenizer)} writes the verb(s) {', '.join(map(repr, bad))} as "
                         "several tokens; the task's answers must be single tokens: give prompts of your own "
                         "in a JSONL file")


def iter_sva(n: int, *, seed: int = 0, tokenizer: Any = None) -> Iterator[Prompt]:
    """``n`` SVA prompts, e.g. ``"The teachers near the desk"`` with ``correct`` the plural verbs
    ``(" are", " have", " do", " go")``, ``incorrect`` the singular ones, and the counterpart
    ``"The teacher near the desk"``.

    Prompts alternate singular, plural, singular, ... subjects (half each for even ``n``). For each, a
    private ``random.Random(seed)`` draws a template (uniform over :data:`TEMPLATES`), the subject
    noun, the other noun (a different animate noun for "within_rc", an object for "nounpp"; drawn
    for "simple" too, so every prompt takes the same draws), its number, and the preposition. With a
    ``tokenizer``, only nouns whose two forms have the same number of tokens are used, so the
    counterpart has the prompt's length. ``meta``: ``task``, ``metric``, ``template``, ``number``
    ("singular" / "plural", the subject's) and ``subject``."""
    check_count(n, "sva")
    check_seed(seed)
    _check_verbs(tokenizer)
    nouns, objects = _same_length_pairs(NOUNS, tokenizer), _same_length_pairs(OBJECTS, tokenizer)
    if len(nouns) < 2 or not objects:
        raise InputError(f"sva: {tokenizer_label(tokenizer)} writes too few of the task's nouns with the same "
                         "number of tokens in the singular and the plural; give prompts of your own in a JSONL file")
    return _sample(n, seed, nouns, objects)


def _sample(n: int, seed: int, nouns: tuple[tuple[str, str], ...],
            objects: tuple[tuple[str, str], ...]) -> Iterator[Prompt]:
    rng = random.Random(seed)
    names = tuple(TEMPLATES)
    for i in range(n):
        template = names[rng.randrange(len(names))]
        s = rng.randrange(len(nouns))
        o = rng.randrange(len(nouns) - 1)
        o += o >= s  # a different noun: "The fathers that the father" is no test
        obj = objects[rng.randrange(len(objects))]
        other_number = rng.randrange(2)
        prep = PREPOSITIONS[rng.randrange(len(PREPOSITIONS))]
        number = i % 2  # 0 singular, 1 plural
        other = (obj if template == "nounpp" else nouns[o])[other_number]
        fmt = TEMPLATES[template]
        text = fmt.format(subject=nouns[s][number], other=other, prep=prep)
        corrupted = fmt.format(subject=nouns[s][1 - number], other=other, prep=prep)
        correct, incorrect = (SINGULAR_VERBS, PLURAL_VERBS)[:: 1 - 2 * number]
        meta = {"task": TASK.name, "metric": TASK.metric, "template": template,
                "number": ("singular", "plural")[number], "subject": nouns[s][number]}
        yield Prompt(text, correct, incorrect, meta, corrupted=corrupted)


TASK = Task(
    name="sva",
    generate=iter_sva,
    metric="logit-diff",
    counterpart="the same prompt with the agreeing noun in the other number",
    source="Finlayson et al. 2021, Causal Analysis of Syntactic Agreement Mechanisms in Neural Language Models "
           "(ACL); templates, nouns and verbs as Marks et al. 2024, Sparse Feature Circuits (arXiv 2403.19647), "
           "data in github.com/saprmarks/feature-circuits",
)
