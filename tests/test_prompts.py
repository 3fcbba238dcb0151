"""Built-in prompt sets and the JSONL reader, against the real GPT-2 tokenizer."""

import json

import pytest

from logitscope import InputError, builtin_prompts, load_jsonl

# From tests/data/gpt2-tokenizer/SOURCE.md (checked against OpenAI's vocabulary).
IDS = {" Mary": 5335, " John": 1757, " Tom": 4186, " James": 3700, " Dan": 6035, " Sid": 15686, " Martin": 5780, " Amy": 14235}


def test_seed_prompts_are_the_seeds_byte_for_byte(gpt2_tokenizer):
    prompts = builtin_prompts("seed")
    assert len(prompts) == 8
    # The seed's format string has a double space: "shops, {}" with " John" formatted in.
    assert prompts[0].text == "When John and Mary went to the shops,  John gave the bag to"
    assert prompts[1].text == "When John and Mary went to the shops,  Mary gave the bag to"
    assert [(p.correct, p.incorrect) for p in prompts[:2]] == [(" Mary", " John"), (" John", " Mary")]
    lengths = {1 + len(gpt2_tokenizer.encode(p.text)) for p in prompts}
    assert lengths == {16}  # the seed prints a residual of [8, 16, 768]
    answer_ids = [[gpt2_tokenizer.encode(a) for a in (p.correct, p.incorrect)] for p in prompts]
    assert answer_ids[:2] == [[[5335], [1757]], [[1757], [5335]]]
    for p in prompts:
        assert gpt2_tokenizer.encode(p.correct) == [IDS[p.correct]]
        assert gpt2_tokenizer.encode(p.incorrect) == [IDS[p.incorrect]]


def test_arena_prompts_match_the_demo(gpt2_tokenizer):
    prompts = builtin_prompts("arena")
    assert prompts[0].text == "When John and Mary went to the shops, John gave the bag to"
    assert gpt2_tokenizer.encode(prompts[0].text) == [2215, 1757, 290, 5335, 1816, 284, 262, 12437, 11, 1757, 2921, 262, 6131, 284]
    assert {1 + len(gpt2_tokenizer.encode(p.text)) for p in prompts} == {15}
    assert [p.correct for p in prompts] == [" Mary", " John", " Tom", " James", " Dan", " Sid", " Martin", " Amy"]


def test_jsonl_rows_and_errors(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(
        json.dumps({"prompt": "A", "correct": " x", "incorrect": " y", "tag": 1}) + "\n\n"
        + json.dumps({"prompt": "B", "correct": " y", "incorrect": " x"}) + "\n"
    )
    rows = load_jsonl(good)
    assert [r.text for r in rows] == ["A", "B"]
    assert rows[0].meta == {"tag": 1, "line": 1} and rows[1].meta == {"line": 3}

    cases = {
        "missing.jsonl": None,
        "empty.jsonl": "\n\n",
        "notjson.jsonl": '{"prompt": "A", "correct": " x", "incorrect": " y"}\n{oops\n',
        "nofield.jsonl": '{"prompt": "A", "correct": " x"}\n',
        "notobj.jsonl": '["A", " x", " y"]\n',
        "notstr.jsonl": '{"prompt": "A", "correct": 3.5, "incorrect": " y"}\n',
    }
    expected = {
        "missing.jsonl": "not found",
        "empty.jsonl": "is empty",
        "notjson.jsonl": "notjson.jsonl:2: not valid JSON",
        "nofield.jsonl": "nofield.jsonl:1: missing field 'incorrect'",
        "notobj.jsonl": "notobj.jsonl:1: expected a JSON object",
        "notstr.jsonl": "notstr.jsonl:1: field 'correct' must be a non-empty string",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(InputError, match=expected[name].replace("(", r"\(")):
            load_jsonl(path)


# ---------------------------------------------------------------------------------------------- counterparts
def _swapped(p):
    """The partner written out independently: the subject's last mention replaced by the other name."""
    subject, other = p.incorrect.strip(), p.correct.strip()
    head, _, tail = p.text.rpartition(subject)
    return head + other + tail


@pytest.mark.parametrize("name", ["seed", "arena"])
def test_builtin_counterparts_pair_by_identity_not_position(name):
    import random
    from dataclasses import replace

    from logitscope.inputs.counterparts import with_counterparts

    full = builtin_prompts(name)
    for subset in (full, full[1:5], full[::-1], full[3:4], [p for p in full if p.correct != " Tom"],
                   random.Random(7).sample(full, len(full))):
        for p in with_counterparts(subset):
            assert p.corrupted == _swapped(p), p.text
            assert p.corrupted != p.text
    # a prompt that claims the set but is not one of its prompts: an error, never a guessed partner
    edited = replace(full[0], text=full[0].text.replace("bag", "box"))
    with pytest.raises(InputError, match=rf"prompt 1 .*says it is from the {name} set .*not one of its prompts"):
        with_counterparts([full[1], edited])


# ---------------------------------------------------------------------------------------------- ioi:N at scale
def test_ioi_prompts_are_made_lazily_and_match_the_list():
    import itertools
    import time

    from logitscope.inputs.ioi import generate_ioi_prompts, iter_ioi_prompts

    t = time.perf_counter()
    lazy = iter_ioi_prompts(50_000_000, seed=3)  # nothing is made until taken
    first = list(itertools.islice(lazy, 20))
    assert time.perf_counter() - t < 5
    listed = generate_ioi_prompts(20, seed=3)
    assert first == listed and [p.meta for p in first] == [p.meta for p in listed]
    with pytest.raises(InputError, match="IOI order must be one of"):
        iter_ioi_prompts(10, order="ABAB")  # arguments are checked at the call, not at the first prompt


def test_a_generated_set_that_looks_like_a_typo_warns_and_shows_progress(monkeypatch, capsys):
    import logitscope.inputs.prompts as prompts_module
    from logitscope import PromptWarning
    from logitscope.inputs.prompts import parse_prompts

    monkeypatch.setattr(prompts_module, "LARGE_SET", 30)  # the real threshold is 1,000,000
    monkeypatch.setattr(prompts_module, "PROGRESS_FROM", 25)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptWarning)
        assert len(parse_prompts("ioi:30").generate(progress=True)) == 30  # at the threshold: no warning
    with pytest.warns(PromptWarning, match=r"ioi:31 asks for 31 prompts: the study holds every one.*a typo") as caught:
        made = parse_prompts("ioi:31").generate(progress=True)
    assert caught[0].filename == __file__
    from logitscope.inputs.ioi import generate_ioi_prompts

    assert len(made) == 31 and made == generate_ioi_prompts(31)
    assert "generating ioi:31" in capsys.readouterr().err
    parse_prompts("ioi:24").generate(progress=True)
    assert "generating" not in capsys.readouterr().err  # small sets: no bar
