'''Docstring (Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer
attention-only transformer", Alignment Forum; the data generator is in ACDC, Conmy et al. 2023,
``acdc/docstring/prompts.py`` in ArthurConmy/Automatic-Circuit-Discovery).

A function definition with six arguments, a docstring whose ``:param`` lines name the 3rd and 4th
of them, then a bare ``:param``: the answer is the 5th argument, the next one the docstring has not
named yet::

    def item(self, files, count, port, state, mode, ref):
        """bank picture pool

        :param port: dust sample
        :param state: flower river
        :param

answer `` mode``. The layout is the one ACDC's experiments use (two arguments before the three that
matter, one after; a three-word description; two words per parameter). ``incorrect`` is the other
five argument names (Heimersheim & Janiak's logit difference is the answer against the best of
them; over the set, logitscope's answer sets aggregate them as they define). Counterpart: their
``random_random`` corruption, which ACDC patches with: the three middle arguments in the def and
the two in the docstring replaced by five new random names, so neither the answer nor its
predecessors appear. Metric: ``logit-diff``.
'''

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.prompt import Prompt
from logitscope.inputs.tasks.base import Task, check_count, check_seed, encode, one_token, tokenizer_label

__all__ = ["DESCRIPTION_WORDS", "TASK", "VARIABLE_NAMES", "docstring_text", "iter_docstring"]

# The argument names of the paper's generator (ACDC's ``variable_names``), in its order.
VARIABLE_NAMES: tuple[str, ...] = tuple(
    "data name file value test new result line user key default request path output node item url model response "
    "text version function log string field start number values sub index error current context image message "
    "check json create size event state row obj parser end files form query fields instance label run action "
    "target array code num table source msg config first required options ret update module status group content "
    "client filename results last read command val base format color settings order found count match tag title "
    "parent call session token server host date description mode expected project info valid page header option "
    "task shape load names port old resource root".split()
)
# Words for the descriptions: common nouns that are one token with a leading space (a selection
# from the generator's ``common_single_token_nouns``).
DESCRIPTION_WORDS: tuple[str, ...] = (
    "price", "control", "action", "cost", "issue", "process", "position", "course", "minute", "type", "research",
    "subject", "girl", "age", "father", "force", "order", "value", "matter", "health", "street", "patient", "class",
    "mind", "church", "paper", "bank", "century", "section", "table", "building", "sense", "staff", "team",
    "student", "language", "town", "plan", "morning", "product", "practice", "ground", "letter", "foot", "boy",
    "game", "food", "union", "role", "event", "land", "art", "support", "range", "stage", "trade", "voice", "arm",
    "club", "field", "history", "account", "care", "project", "record", "window", "air", "light", "wife",
    "quality", "rule", "story", "tax", "worker", "model", "nature", "bed", "hospital", "method", "unit", "wall",
    "computer", "amount", "picture", "river", "flower", "sample", "dust", "pool", "king", "music", "tree",
)  # fmt: skip

N_DEF_PREFIX, N_MATCHING, N_DEF_SUFFIX = 2, 3, 1  # ACDC's layout: 2 + 3 + 1 arguments in the def
DESCRIPTION_LENGTH, PARAM_DESCRIPTION_LENGTH = 3, 2


def docstring_text(function: str, def_args: list[str], description: list[str], doc_args: list[str],
                   param_descriptions: list[list[str]]) -> str:
    """The prompt: a newline, the def, the docstring's first line, a blank line, one ``:param`` line
    per documented argument, then a bare ``:param`` (the answer follows it)."""
    params = "".join(f"    :param {arg}: {' '.join(words)}\n" for arg, words in zip(doc_args, param_descriptions))
    return f'\ndef {function}(self, {", ".join(def_args)}):\n    """{" ".join(description)}\n\n{params}    :param'


def _single_tokens(words: tuple[str, ...], tokenizer: Any) -> tuple[str, ...]:
    return tuple(w for w in words if one_token(tokenizer, " " + w, after=":param"))


def iter_docstring(n: int, *, seed: int = 0, tokenizer: Any = None) -> Iterator[Prompt]:
    """``n`` docstring prompts (the layout of this module's docstring), ``correct`` the next argument
    name with its leading space, ``incorrect`` the def's other five.

    For each prompt a private ``random.Random(seed)`` draws, as the paper's generator: the function
    name and eleven distinct argument names (six for the def, five new ones for the counterpart),
    the description words and two words per ``:param`` line. With a ``tokenizer``, only names and
    words that are one token with a leading space are used, and a draw whose counterpart has another
    number of tokens than the prompt is drawn again. ``meta``: ``task``, ``metric``, ``function``,
    ``def_args``."""
    check_count(n, "docstring")
    check_seed(seed)
    names, words = _single_tokens(VARIABLE_NAMES, tokenizer), _single_tokens(DESCRIPTION_WORDS, tokenizer)
    needed = 1 + N_DEF_PREFIX + 2 * N_MATCHING + (N_MATCHING - 1) + N_DEF_SUFFIX
    if len(names) < needed or len(words) < DESCRIPTION_LENGTH:
        raise InputError(f"docstring: {tokenizer_label(tokenizer)} writes only {len(names)} of the task's argument "
                         f"names as one token, and a prompt needs {needed}; give prompts of your own in a JSONL file")
    return _sample(n, seed, names, words, tokenizer)


def _sample(n: int, seed: int, names: tuple[str, ...], words: tuple[str, ...], tokenizer: Any) -> Iterator[Prompt]:
    rng = random.Random(seed)
    made = 0
    while made < n:
        function, *args = rng.sample(names, 1 + N_DEF_PREFIX + N_MATCHING + N_DEF_SUFFIX + 2 * N_MATCHING - 1)
        prefix, rest = args[:N_DEF_PREFIX], args[N_DEF_PREFIX:]
        matching, rest = rest[:N_MATCHING], rest[N_MATCHING:]
        suffix, rest = rest[:N_DEF_SUFFIX], rest[N_DEF_SUFFIX:]
        new_def, new_doc = rest[:N_MATCHING], rest[N_MATCHING:]
        description = rng.sample(words, DESCRIPTION_LENGTH)
        param_words = [rng.sample(words, PARAM_DESCRIPTION_LENGTH) for _ in range(N_MATCHING - 1)]
        def_args = prefix + matching + suffix
        text = docstring_text(function, def_args, description, matching[:-1], param_words)
        corrupted = docstring_text(function, prefix + new_def + suffix, description, new_doc, param_words)
        if tokenizer is not None and len(encode(tokenizer, text)) != len(encode(tokenizer, corrupted)):
            continue  # a merge the names make in one text only: draw again
        answer = matching[-1]
        meta = {"task": TASK.name, "metric": TASK.metric, "function": function, "def_args": def_args}
        yield Prompt(text, " " + answer, tuple(" " + a for a in def_args if a != answer), meta, corrupted=corrupted)
        made += 1


TASK = Task(
    name="docstring",
    generate=iter_docstring,
    metric="logit-diff",
    counterpart="random_random: the three middle def arguments and the two documented ones replaced by new names",
    source="Heimersheim & Janiak 2023, A circuit for Python docstrings in a 4-layer attention-only transformer "
           "(Alignment Forum); generator as in ACDC, Conmy et al. 2023 (github.com/ArthurConmy/"
           "Automatic-Circuit-Discovery, acdc/docstring/prompts.py)",
)
