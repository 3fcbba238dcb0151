"""The IOI prompt generator (logitscope.inputs.ioi)."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from logitscope.errors import InputError
from logitscope.inputs.ioi import (
    ABBA_TEMPLATES,
    BABA_TEMPLATES,
    NAMES,
    OBJECTS,
    PLACES,
    abba_from_baba,
    generate_ioi_prompts,
    ioi_word_lists,
)
from logitscope.inputs.prompts import load_prompts

GPT2_TOKENIZER = Path(__file__).parent / "data" / "gpt2-tokenizer"


@pytest.fixture(scope="module")
def gpt2_tok():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))


def _full(prompts):
    """Prompt equality ignores meta; compare everything."""
    return [(p.text, p.correct, p.incorrect, p.meta) for p in prompts]


def _positions(text, name):
    return [m.start() for m in re.finditer(rf"\b{re.escape(name)}\b", text)]


# --- the paper's data ----------------------------------------------------------------------------


def test_templates_match_the_paper():
    assert len(BABA_TEMPLATES) == 15
    assert len(ABBA_TEMPLATES) == 15
    assert BABA_TEMPLATES[0] == "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert BABA_TEMPLATES[4] == (
        "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]"
    )
    assert BABA_TEMPLATES[13] == (
        "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]"
    )
    assert BABA_TEMPLATES[14] == (
        "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]"
    )
    # ABBA: the first [B] and the first [A] (the first clause) swap; the rest is unchanged.
    assert ABBA_TEMPLATES[0] == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert ABBA_TEMPLATES[13] == (
        "The [PLACE] [A] and [B] went to had a [OBJECT]. [B] gave it to [A]"
    )
    for baba, abba in zip(BABA_TEMPLATES, ABBA_TEMPLATES):
        assert abba_from_baba(baba) == abba
        assert baba.endswith(" to [A]") and abba.endswith(" to [A]")
        assert baba.count("[A]") == baba.count("[B]") == 2
        assert baba.index("[B]") < baba.index("[A]")  # BABA: S first
        assert abba.index("[A]") < abba.index("[B]")  # ABBA: IO first


def test_word_lists_are_the_paper_codes():
    assert len(NAMES) == 99 and len(set(NAMES)) == 99
    assert NAMES[0] == "Michael" and NAMES[-1] == "Samuel"
    assert "Mary" in NAMES and "John" in NAMES
    assert PLACES == (
        "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
    )  # fmt: skip
    assert OBJECTS == (
        "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
    )  # fmt: skip
    assert ioi_word_lists() == {"names": NAMES, "places": PLACES, "objects": OBJECTS}


def test_all_words_are_single_gpt2_tokens(gpt2_tok):
    words = ioi_word_lists(gpt2_tok)
    assert words == {"names": NAMES, "places": PLACES, "objects": OBJECTS}


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_prompts_and_seeds_differ():
    a = generate_ioi_prompts(200, seed=7)
    b = generate_ioi_prompts(200, seed=7)
    c = generate_ioi_prompts(200, seed=8)
    assert _full(a) == _full(b)
    assert [p.text for p in a] != [p.text for p in c]
    assert generate_ioi_prompts(5) == generate_ioi_prompts(5, seed=0)


def test_global_random_state_is_neither_used_nor_changed():
    random.seed(123)
    state = random.getstate()
    a = generate_ioi_prompts(50, seed=3)
    assert random.getstate() == state
    random.seed(999)
    assert _full(generate_ioi_prompts(50, seed=3)) == _full(a)


def test_shorter_n_is_a_prefix():
    long = generate_ioi_prompts(101, seed=5)
    assert _full(generate_ioi_prompts(40, seed=5)) == _full(long[:40])


def test_abba_and_baba_with_one_seed_are_matched():
    abba = generate_ioi_prompts(100, order="ABBA", seed=2)
    baba = generate_ioi_prompts(100, order="BABA", seed=2)
    mixed = generate_ioi_prompts(100, order="mixed", seed=2)
    for a, b, m in zip(abba, baba, mixed):
        assert (a.correct, a.incorrect) == (b.correct, b.incorrect)
        assert a.meta["template"] == b.meta["template"]
        assert a.text != b.text
        assert m.text in (a.text, b.text)


# --- ABBA / BABA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 10, 1000, 1001, 7, 1])
def test_mixed_is_exactly_half(n):
    counts = Counter(p.meta["order"] for p in generate_ioi_prompts(n, order="mixed", seed=1))
    assert counts["ABBA"] == (n + 1) // 2
    assert counts["BABA"] == n // 2


@pytest.mark.parametrize("order", ["ABBA", "BABA", "mixed"])
def test_first_clause_order(order):
    for p in generate_ioi_prompts(500, order=order, seed=11):
        io, s = p.meta["io"], p.meta["s"]
        io_at, s_at = _positions(p.text, io), _positions(p.text, s)
        assert len(io_at) == 1, p.text  # IO once (its second mention is the answer)
        assert len(s_at) == 2, p.text  # S twice
        if order != "mixed":
            assert p.meta["order"] == order
        if p.meta["order"] == "BABA":  # "When John and Mary ..., John gave ... to" -> " Mary"
            assert s_at[0] < io_at[0] < s_at[1]
        else:  # ABBA: "When Mary and John ..., John gave ... to" -> " Mary"
            assert io_at[0] < s_at[0] < s_at[1]


def test_exact_text_for_template_1():
    (baba,) = generate_ioi_prompts(1, order="BABA", seed=4, templates=[1])
    (abba,) = generate_ioi_prompts(1, order="ABBA", seed=4, templates=[1])
    m = baba.meta
    io, s, place, obj = m["io"], m["s"], m["place"], m["object"]
    assert baba.text == f"Then, {s} and {io} went to the {place}. {s} gave a {obj} to"
    assert abba.text == f"Then, {io} and {s} went to the {place}. {s} gave a {obj} to"
    assert (baba.correct, baba.incorrect) == (" " + m["io"], " " + m["s"])
    assert m["template"] == 1 and m["order"] == "BABA"


@pytest.mark.parametrize("order", ["ABBA", "BABA", "mixed"])
def test_all_15_templates_in_each_order(order):
    prompts = generate_ioi_prompts(1000, order=order, seed=0)
    seen = {(p.meta["order"], p.meta["template"]) for p in prompts}
    orders = ["ABBA", "BABA"] if order == "mixed" else [order]
    assert seen == {(o, k) for o in orders for k in range(1, 16)}


# --- prompt shape ------------------------------------------------------------------------------


def test_prompt_shape_and_meta():
    for p in generate_ioi_prompts(1000, seed=9):
        assert p.text.endswith(" to") and p.text == p.text.strip()
        assert "[" not in p.text and "{" not in p.text
        io, s = p.meta["io"], p.meta["s"]
        assert io != s and io in NAMES and s in NAMES
        assert p.correct == " " + io and p.incorrect == " " + s
        k = p.meta["template"]
        uses_place = "[PLACE]" in BABA_TEMPLATES[k - 1]
        uses_object = "[OBJECT]" in BABA_TEMPLATES[k - 1]
        expected = {"template", "order", "io", "s"}
        expected |= {"place"} if uses_place else set()
        expected |= {"object"} if uses_object else set()
        assert set(p.meta) == expected
        if uses_place:
            assert p.meta["place"] in PLACES and f" {p.meta['place']}" in p.text
        if uses_object:
            assert p.meta["object"] in OBJECTS and f" {p.meta['object']}" in p.text


def test_answers_are_single_gpt2_tokens(gpt2_tok):
    for order in ("ABBA", "BABA", "mixed"):
        for p in generate_ioi_prompts(300, order=order, seed=1, tokenizer=gpt2_tok):
            assert len(gpt2_tok.encode(p.correct, add_special_tokens=False)) == 1
            assert len(gpt2_tok.encode(p.incorrect, add_special_tokens=False)) == 1
    # GPT-2 keeps every word, so filtering changes nothing.
    assert _full(generate_ioi_prompts(200, seed=3, tokenizer=gpt2_tok)) == _full(
        generate_ioi_prompts(200, seed=3)
    )


def test_all_names_and_pairs_can_occur():
    prompts = generate_ioi_prompts(20000, seed=0)
    assert {p.meta["io"] for p in prompts} == set(NAMES)
    assert {p.meta["s"] for p in prompts} == set(NAMES)


def test_template_subset_and_custom_templates():
    prompts = generate_ioi_prompts(200, templates=[5, 13], seed=0)
    assert {p.meta["template"] for p in prompts} == {5, 13}
    assert all(set(p.meta) == {"template", "order", "io", "s"} for p in prompts)
    custom = ["Yesterday [B] and [A] met at the [PLACE], and [B] handed a [OBJECT] to [A]"]
    for p in generate_ioi_prompts(20, templates=custom, order="ABBA", seed=0):
        m = p.meta
        assert p.text == (
            f"Yesterday {m['io']} and {m['s']} met at the {m['place']}, and {m['s']} "
            f"handed a {m['object']} to"
        )
        assert m["template"] == 1


# --- tokenizer filtering ----------------------------------------------------------------------


class _FakeTokenizer:
    """Encodes the given words as one token, everything else as two."""

    name_or_path = "fake"

    def __init__(self, single):
        self.single = set(single)

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return [1] if text.startswith(" ") and text[1:] in self.single else [1, 2]


def test_tokenizer_filter_restricts_words():
    tok = _FakeTokenizer({"Mary", "John", "Amy", "store", "ring"})
    prompts = generate_ioi_prompts(300, seed=0, tokenizer=tok)
    used = {p.meta["io"] for p in prompts} | {p.meta["s"] for p in prompts}
    assert used == {"Mary", "John", "Amy"}
    assert {p.meta.get("place") for p in prompts} <= {"store", None}
    assert {p.meta.get("object") for p in prompts} <= {"ring", None}
    assert _full(generate_ioi_prompts(300, seed=0, tokenizer=tok)) == _full(prompts)


def test_tokenizer_without_single_token_names_is_an_input_error():
    with pytest.raises(InputError, match="can't represent IOI names as single tokens"):
        generate_ioi_prompts(10, tokenizer=_FakeTokenizer({"Mary", "store", "ring"}))


def test_tokenizer_without_places():
    tok = _FakeTokenizer(set(NAMES) | set(OBJECTS))
    with pytest.raises(InputError, match="place"):
        generate_ioi_prompts(10, tokenizer=tok)
    # Templates 5 and 13 need neither a place nor an object.
    assert len(generate_ioi_prompts(10, tokenizer=tok, templates=[5, 13])) == 10


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_positive(n):
    with pytest.raises(InputError, match="at least 1"):
        generate_ioi_prompts(n)


@pytest.mark.parametrize("n", ["5", 2.0, True, None])
def test_n_must_be_an_int(n):
    with pytest.raises(InputError):
        generate_ioi_prompts(n)


@pytest.mark.parametrize("order", ["ABAB", "both", "", None])
def test_bad_order(order):
    with pytest.raises(InputError, match="order"):
        generate_ioi_prompts(4, order=order)


def test_order_is_case_insensitive():
    lower = generate_ioi_prompts(6, order="abba")
    assert _full(lower) == _full(generate_ioi_prompts(6, order="ABBA"))


@pytest.mark.parametrize(
    "templates",
    [
        [],
        [0],
        [16],
        [1, "x"],
        "1",
        ["[A] and [B] went home, [B] gave it to [A]"],  # ABBA-form, not BABA
        ["When [B] and [A] left, [B] waved at [A] happily"],  # doesn't end with the answer
        ["When [B] and [A] met [C], [B] gave it to [A]"],  # unknown placeholder
        ["When [B] and [A] left, [A] gave it to [A]"],  # wrong counts
    ],
)
def test_bad_templates(templates):
    with pytest.raises(InputError):
        generate_ioi_prompts(4, templates=templates)


# --- integration and scale -----------------------------------------------------------------------


def test_load_prompts_spec(gpt2_tok):
    prompts = load_prompts("ioi-baba:12", seed=4, tokenizer=gpt2_tok)
    assert len(prompts) == 12 and {p.meta["order"] for p in prompts} == {"BABA"}
    assert _full(prompts) == _full(generate_ioi_prompts(12, order="BABA", seed=4))
    assert Counter(p.meta["order"] for p in load_prompts("ioi:10")) == {"ABBA": 5, "BABA": 5}


def test_many_prompts():
    """20,000 prompts (how fast is for bench/, not for unit tests): all distinct draws, both orders."""
    prompts = generate_ioi_prompts(20000, seed=0)
    assert len(prompts) == 20000
    assert Counter(p.meta["order"] for p in prompts) == {"ABBA": 10000, "BABA": 10000}
    assert len({p.meta["template"] for p in prompts}) == 15
