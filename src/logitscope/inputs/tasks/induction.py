"""Induction: a random sequence of words, then the same sequence again, cut off mid-way.

Olsson et al. 2022 ("In-context Learning and Induction Heads", Transformer Circuits Thread) find
induction heads with random token sequences repeated: after "... A B ... A" the model predicts
"B" by copying what followed "A" the first time. Here the sequence is ten distinct common words,
each one token for the tokenizer with or without a leading space (so the text re-tokenizes into one
token per word); the second half repeats the first ``k`` words (``k`` from 3 to 9) and the answer is
the word that followed the last of them in the first half.

Counterpart: the second half shuffled (the same words, so the same length) so that it ends on a
different word: the first half still holds every bigram, but the last word now points elsewhere.
``incorrect`` is that word's successor in the first half, the answer induction gives on the
counterpart. Metric: ``logprob`` of the answer, the per-token log-probability (loss) Olsson et al.
measure on repeated sequences; ``logit-diff`` against ``incorrect`` is the other natural choice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.prompt import Prompt
from logitscope.inputs.tasks.base import Task, check_count, check_seed, encode, tokenizer_label

__all__ = ["LENGTH", "TASK", "WORDS", "iter_induction", "word_pool"]

LENGTH = 10  # words in the first half
MIN_REPEAT = 3  # the second half repeats 3 to LENGTH - 1 of them

# Common short English words; those a tokenizer does not write as one token are left out.
WORDS: tuple[str, ...] = (
    "apple", "river", "table", "green", "house", "music", "paper", "light", "water", "stone", "cloud", "horse",
    "money", "night", "plant", "bread", "chair", "glass", "dream", "field", "train", "ocean", "sugar", "smile",
    "north", "south", "winter", "summer", "garden", "window", "market", "silver", "doctor", "letter", "forest",
    "island", "bridge", "camera", "castle", "engine", "finger", "flower", "hammer", "jacket", "ladder", "mirror",
    "pencil", "pocket", "rabbit", "rocket", "salt", "seed", "ship", "shoe", "snow", "song", "star", "sun", "tree",
    "wall", "wind", "wolf", "bird", "boat", "book", "cake", "coin", "door", "fish", "gold", "hand", "king",
    "lake", "milk", "moon", "nose", "rain", "ring", "road", "rock", "rose", "sand", "shop", "sky", "city",
    "tower", "queen", "spring", "orange", "purple", "yellow", "black", "white", "brown",
)  # fmt: skip


def word_pool(tokenizer: Any = None) -> tuple[str, ...]:
    """The :data:`WORDS` that ``tokenizer`` writes as one token both alone and after a space (all of
    them without a tokenizer)."""
    if tokenizer is None:
        return WORDS
    return tuple(w for w in WORDS if len(encode(tokenizer, w)) == 1 and len(encode(tokenizer, " " + w)) == 1)


def iter_induction(n: int, *, seed: int = 0, tokenizer: Any = None) -> Iterator[Prompt]:
    """``n`` induction prompts, e.g. ``"moon ship apple ... ring moon ship apple"`` with ``correct``
    the word after "apple" in the first half.

    For each prompt a private ``random.Random(seed)`` draws :data:`LENGTH` distinct words, the
    repeat length ``k`` (uniform, :data:`MIN_REPEAT` to ``LENGTH - 1``) and the counterpart's order
    of the repeated words (shuffled again until it ends on another word). With a ``tokenizer``, a
    draw whose text does not tokenize into one token per word is drawn again. ``meta``: ``task``,
    ``metric``, ``repeat`` (``k``) and ``answer_at`` (the answer's word index in the first half)."""
    check_count(n, "induction")
    check_seed(seed)
    pool = word_pool(tokenizer)
    if len(pool) < LENGTH:
        raise InputError(f"induction: {tokenizer_label(tokenizer)} writes only {len(pool)} of the task's "
                         f"{len(WORDS)} words as one token, and a sequence needs {LENGTH}; give prompts of your "
                         "own in a JSONL file")
    return _sample(n, seed, pool, tokenizer)


def _one_per_word(tokenizer: Any, words: list[str]) -> bool:
    return tokenizer is None or len(encode(tokenizer, " ".join(words))) == len(words)


def _sample(n: int, seed: int, pool: tuple[str, ...], tokenizer: Any) -> Iterator[Prompt]:
    rng = random.Random(seed)
    made = 0
    while made < n:
        first = rng.sample(pool, LENGTH)
        k = rng.randint(MIN_REPEAT, LENGTH - 1)
        shuffled = first[:k]
        while shuffled[-1] == first[k - 1]:
            shuffled = rng.sample(first[:k], k)
        clean, corrupt = first + first[:k], first + shuffled
        if not (_one_per_word(tokenizer, clean) and _one_per_word(tokenizer, corrupt)):
            continue  # a merge across words: draw again (the pool's words make this rare)
        meta = {"task": TASK.name, "metric": TASK.metric, "repeat": k, "answer_at": k}
        yield Prompt(" ".join(clean), " " + first[k], " " + first[first.index(shuffled[-1]) + 1], meta,
                     corrupted=" ".join(corrupt))
        made += 1


TASK = Task(
    name="induction",
    generate=iter_induction,
    metric="logprob",
    counterpart="the second half shuffled (same words, same length), ending on another word",
    source="Olsson et al. 2022, In-context Learning and Induction Heads (Transformer Circuits Thread): "
           "repeated random sequences",
)
