"""The Python API is as careful as the command line: what a notebook passes is accepted or refused
with a clear message that speaks Python, before any model is loaded where it can be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import logitscope as ls

ROW = {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"}
OTHER = {"prompt": "The capital of France is", "correct": " Paris", "incorrect": " London"}


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir):
    return ls.load_model(str(tiny_gpt2_dir), device="cpu")


def _never_load(monkeypatch):
    import logitscope.engine.setup as setup

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr(setup, "load_model", refuse)


# ------------------------------------------------------------------------------------------ prompts
def test_prompts_as_a_path_dicts_or_tuples(lm, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(OTHER) + "\n")
    from_path = ls.run_study(path, lm)  # a pathlib.Path, not only a str
    from_dicts = ls.run_study([ROW, {**OTHER, "tag": "capital"}], lm)
    from_tuples = ls.run_study([tuple(ROW.values()), tuple(OTHER.values())], lm)
    from_prompts = ls.run_study([ls.Prompt(*ROW.values()), ls.Prompt(*OTHER.values())], lm)
    for other in (from_dicts, from_tuples, from_prompts):
        np.testing.assert_array_equal(other.logit_diff, from_path.logit_diff)
        assert [p.text for p in other.prompts] == [p.text for p in from_path.prompts]
    assert from_path.prompts[1].meta == {"line": 2}
    assert from_dicts.prompts[1].meta == {"tag": "capital"}  # extra keys are kept, as in JSONL


def test_answers_as_token_ids(lm, gpt2_tokenizer):
    """An answer may be a token id: used as given, shown as its token."""
    mary, john = gpt2_tokenizer.encode(" Mary"), gpt2_tokenizer.encode(" John")
    by_text = ls.run_study([ROW], lm)
    by_id = ls.run_study([(ROW["prompt"], mary[0], john[0])], lm)
    mixed = ls.run_study([{**ROW, "correct": mary[0]}], lm)
    for other in (by_id, mixed):
        np.testing.assert_array_equal(other.logit_diff, by_text.logit_diff)
        np.testing.assert_array_equal(other.correct_ids, by_text.correct_ids)
        assert (other.prompts[0].correct, other.prompts[0].incorrect) == (" Mary", " John")
    with pytest.raises(ls.InputError, match="answer id 99999 is not a token of this model"):
        ls.run_study([(ROW["prompt"], 99999, john[0])], lm)


@pytest.mark.parametrize("prompts,expected", [
    (5, "got int 5"),
    (b"seed", "got bytes"),
    (ROW, r"got dict .* \(a single row: pass a list of rows, \[row\]\)"),
    (ls.Prompt("a", " b", " c"), r"\(a single Prompt: pass a list"),
    ([ROW, 3.5], r"prompts\[1\]: expected a Prompt, a dict .* got float 3\.5"),
    ([("only", "two")], r"prompts\[0\]: .* got a tuple of 2 items"),
    (None, "got NoneType"),
])
def test_other_prompts_are_a_type_error_naming_what_was_given(prompts, expected, monkeypatch):
    _never_load(monkeypatch)
    with pytest.raises(TypeError, match=expected):
        ls.run_study(prompts, "no-such-org/no-such-model")


@pytest.mark.parametrize("prompts,expected", [
    ([{"prompt": "x", "correct": " a"}], r"prompts\[0\]: missing field 'incorrect'"),
    ([("x", " a", None)], r"prompts\[0\]: field 'incorrect' must be .* not NoneType None"),
    ([ls.Prompt("", " a", " b")], r"prompts\[0\]: field 'prompt' must be a non-empty string"),
    ([(ROW["prompt"], True, " b")], r"field 'correct' must be .* or a token id"),
    ([], "no prompts given"),
    ("ioi:0", "N must be at least 1"),
    ("ioi:lots", "N must be a whole number"),
    ("sed", "unknown prompt set 'sed'"),
])
def test_bad_prompts_are_refused_before_the_model_is_loaded(prompts, expected, monkeypatch):
    _never_load(monkeypatch)
    with pytest.raises(ls.InputError, match=expected):
        ls.run_study(prompts, "no-such-org/no-such-model")


@pytest.mark.parametrize("kwargs,expected", [
    ({"top_k": 0}, r"^top_k=0: must be at least 1$"),
    ({"top_k": 2.5}, r"^top_k=2\.5: must be a whole number$"),
    ({"seed": -1}, r"^seed=-1: must be 0 or more$"),
    ({"batch_size": 0}, r"^batch_size=0: must be at least 1$"),
    ({"attention_prompt": -1}, r"^attention_prompt=-1: must be 0 or more$"),
])
def test_bad_arguments_are_refused_before_the_model_is_loaded(kwargs, expected, monkeypatch):
    _never_load(monkeypatch)
    with pytest.raises(ls.InputError, match=expected):
        ls.run_study("seed", "no-such-org/no-such-model", **kwargs)


def test_run_study_signature_is_the_study_options():
    """The study's options are written once as a signature (run_study's, the documented one): the
    method takes a StudyOptions, whose fields are run_study's options with the same defaults."""
    import dataclasses
    import inspect

    from logitscope.methods.dla import StudyOptions

    loading = ("prompts", "model", "tokenizer", "device", "dtype", "device_map")
    documented = {k: p.default for k, p in inspect.signature(ls.run_study).parameters.items() if k not in loading}
    options = {f.name: f.default for f in dataclasses.fields(StudyOptions) if f.name != "task_metric_note"}
    assert documented == options and len(options) == 10


def test_ioi_spec_typos_fail_before_the_model_is_loaded(tmp_path, capsys, monkeypatch):
    """A typo in ioi:N must not start a download: the spec is checked first."""
    import logitscope.models.load as load

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before --prompts was checked")

    monkeypatch.setattr(load, "load_model", refuse)
    from logitscope.cli import main

    for spec, expected in (("ioi:lots", "N must be a whole number"), ("ioi-abba:0", "N must be at least 1")):
        assert main(["run", "--model", "no-such-org/no-such-model", "--prompts", spec, "--out", str(tmp_path / "o")]) == 2
        assert expected in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ messages
def test_library_errors_speak_python_and_the_cli_speaks_flags(tiny_gpt2_dir, lm, tmp_path, capsys):
    from logitscope.cli import main

    result = ls.run_study([ROW], lm)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ls.InputError, match=rf"^out_dir='{a_file}': is a file, not a folder"):
        result.save(a_file)
    with pytest.raises(ls.InputError, match=r"^out_dir is empty: give the folder to write into \(e\.g\. out_dir='runs/first'\)"):
        result.save("")
    with pytest.raises(ls.InputError, match=r"^device='toaster': not a device name"):
        ls.load_model(str(tiny_gpt2_dir), device="toaster")
    with pytest.raises(ls.InputError, match=r"^dtype='float8': use one of float32"):
        ls.load_model(str(tiny_gpt2_dir), dtype="float8")
    with pytest.raises(ls.InputError, match=r"^top_k=9: this model has 8 heads; ask for at most 8$"):
        ls.run_study([ROW], lm, top_k=9)
    no_bos = ls.wrap_model(lm.model, _without_bos(lm.tokenizer))
    with pytest.raises(ls.InputError, match=r"^prepend_bos=True: the tokenizer has no BOS token, so none can be "
                       r"prepended; pass prepend_bos=False$"):
        ls.run_study([ROW], no_bos, prepend_bos=True)
    # The command line says the same with its flags.
    model = ["--model", str(tiny_gpt2_dir)]
    cases = [
        (["--prompts", "seed", "--out", str(a_file)], f"logitscope: error: --out {a_file}: is a file, not a folder"),
        (["--prompts", "seed", "--out", str(tmp_path / "o"), "--top-k", "9"],
         "logitscope: error: --top-k 9: this model has 8 heads; ask for at most 8"),
        (["--prompts", "seed", "--out", str(tmp_path / "o"), "--attention-prompt", "8"],
         "logitscope: error: --attention-prompt 8: must be between 0 and 7"),
        (["--prompts", "seed", "--out", str(tmp_path / "o"), "--device", "toaster"],
         "logitscope: error: --device toaster: not a device name"),
    ]
    for argv, expected in cases:
        assert main(["run", *model, *argv]) == 2
        assert expected in capsys.readouterr().err, argv


def _without_bos(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.bos_token = None
    assert tok.bos_token_id is None
    return tok


# ------------------------------------------------------------------------------------------ warnings
LINTED = [
    {**ROW, "prompt": "When Mary and  John went to the store, John gave a drink to"},
    {**ROW, "prompt": ROW["prompt"] + "\n"},
    {**ROW, "prompt": "<|endoftext|>" + ROW["prompt"]},
    OTHER,
]


def test_prompt_warnings_come_from_python_too_and_can_be_filtered(lm):
    import warnings

    with pytest.warns(ls.PromptWarning) as caught:
        ls.run_study(LINTED, lm)
    messages = [str(w.message) for w in caught]
    assert any("1 of 4 prompts contain a double space" in m and "[prompt 0]" in m for m in messages), messages
    assert any("1 of 4 prompts end in a newline" in m and "[prompt 1]" in m for m in messages), messages
    assert any("1 of 4 prompts contain the special token '<|endoftext|>' written as text" in m and "id 50256" in m
               and "[prompt 2]" in m for m in messages), messages
    assert all(w.filename == __file__ for w in caught)  # attributed to the caller's line
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=ls.PromptWarning)
        ls.run_study(LINTED, lm)
    assert not [w for w in quiet if issubclass(w.category, ls.PromptWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ls.PromptWarning)
        with pytest.raises(ls.PromptWarning):
            ls.run_study(LINTED, lm)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ls.PromptWarning)
        ls.run_study([ROW, OTHER], lm)  # clean prompts: no warning
        ls.run_study("ioi:10", lm)  # generated prompts are built clean


def test_the_cli_prints_the_same_warnings_before_an_error(tiny_gpt2_dir, tmp_path, capsys):
    from logitscope.cli import main

    path = tmp_path / "lint.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LINTED))
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", str(path), "--out", str(tmp_path / "o"),
                 "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "logitscope: warning: 1 of 4 prompts end in a newline" in err and "[line 2]" in err
    assert "logitscope: warning: 1 of 4 prompts contain the special token '<|endoftext|>'" in err
    bad = tmp_path / "bad.jsonl"
    # (an answer of several tokens is teacher-forced by run now: the error is correct = incorrect)
    bad.write_text(json.dumps(LINTED[1]) + "\n" + json.dumps({**ROW, "incorrect": ROW["correct"]}) + "\n")
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("logitscope: warning: 1 of 2 prompts end in a newline")
    assert lines[-1].startswith("logitscope: error: prompt") and "are the same token" in lines[-1]
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", str(path), "--out", str(tmp_path / "o"),
                 "--no-report", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ heads
def test_every_head_spelling_logitscope_prints_is_accepted(lm):
    result = ls.run_study("arena", lm)
    view = result.attention
    want = view.heads([(1, 3)])
    l, h, v = result.top_heads(1)[0]
    row = result.to_dict()["top_heads"]["positive"][0]
    spelled = ["L1H3", "l1h3", "1.3", "head:L1H3", (1, 3), [1, 3], (1, 3, 0.5), {"layer": 1, "head": 3},
               (np.int64(1), np.int64(3))]
    np.testing.assert_array_equal(view.heads(spelled), np.stack([want[0]] * len(spelled)))
    np.testing.assert_array_equal(view.heads("L1H3"), want)  # a single head
    np.testing.assert_array_equal(view.heads(result.top_heads(2)), view.heads([(l, h), result.top_heads(2)[1][:2]]))
    np.testing.assert_array_equal(view.heads([row]), view.heads([(row["layer"], row["head"])]))
    assert view.heads([]).shape == (0, *want.shape[1:])
    for bad in ("L1", "1-3", "L1H3H4", (1.0, 3), (True, 3), 13):
        with pytest.raises(ValueError, match="is not a head: write it as 'L9H6', '9.6'"):
            view.heads([bad])
    with pytest.raises(ValueError, match="no head L1H7: this model has layers 0-1 and heads 0-3"):
        view.heads("1.7")


def test_top_heads_checks_k_as_top_k_does(lm):
    result = ls.run_study("arena", lm)
    for k in (0, -1, 9, 2.0, True):
        with pytest.raises(ValueError, match=rf"^k={k!r}: must be a whole number from 1 to 8"):
            result.top_heads(k)
    assert len(result.top_heads(8)) == 8 and len(result.top_heads()) == result.top_k == 3


def _one_positive_head():
    import dataclasses

    from logitscope.report.demo import synthetic_result
    from logitscope.api.results import StudyResult

    data = synthetic_result(n_prompts=30, n_layers=2, n_heads=3, model="tiny")
    heads = -np.abs(data.head_results) - 0.1
    heads[1, 2] = 1.0  # one head with a positive mean, five negative
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    fields.update(head_results=heads, attn_out=heads.sum(1) + data.attn_bias, top_k=3)
    return StudyResult(**fields)


def test_no_head_is_listed_under_a_sign_it_does_not_have_without_saying_so():
    from logitscope.report import report_html

    result = _one_positive_head()
    assert result.top_heads(sign=1)[0][:2] == (1, 2) and result.top_heads(sign=1)[1][2] < 0  # TL's topk semantics
    assert result.signed_top_heads(1) == result.top_heads(1, sign=1) and result.n_signed_heads(1) == 1
    line = next(x for x in result.summary().splitlines() if x.startswith("top positive heads"))
    assert line.startswith("top positive heads: L1H2 +1.000 (only 1 head is positive; next: L")
    doc = result.to_dict()["top_heads"]
    assert (doc["n_positive"], doc["n_negative"]) == (1, 5)
    assert [r["value"] > 0 for r in doc["positive"]] == [True, False, False]
    page = report_html(result)
    top = page[page.index('id="top-heads"'):page.index('id="attention"')]
    assert "Only 1 head of 6 has a positive mean attribution." in top
    assert top.count("<tr>") == 1 + 1 + 1 + 3  # positive: header + 1 row; negative: header + 3 rows
    attention = page[page.index('id="attention"'):]
    assert '"attentionHeadNames":["1.2"]' in attention  # the positive views show the one positive head


# ------------------------------------------------------------------------------------------ the model
def _state(model) -> dict:
    """Everything a study could leave changed on a model: which module sits where, every hook on
    it, its training flag, the attention implementation."""
    return {
        "modules": [(name, id(m)) for name, m in model.named_modules()],
        "hooks": [(name, list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()],
        "training": [(name, m.training) for name, m in model.named_modules()],
        "attn": model.config._attn_implementation,
    }


@pytest.fixture
def user_model(tiny_gpt2_dir):
    """A model as a user holds it: sdpa attention, in training mode but for one block, with hooks
    of their own on a GELU module (which the study would swap for a fused one) and elsewhere."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir), attn_implementation="sdpa")
    model.train()
    model.transformer.h[1].eval()
    calls = {"gelu": 0, "attn": 0, "pre": 0}
    gelu = model.transformer.h[0].mlp.act
    assert type(gelu).__name__ == "NewGELUActivation"
    gelu.register_forward_hook(lambda m, a, o: calls.__setitem__("gelu", calls["gelu"] + 1))
    model.transformer.h[1].attn.register_forward_hook(lambda m, a, o: calls.__setitem__("attn", calls["attn"] + 1))
    model.transformer.ln_f.register_forward_pre_hook(lambda m, a: calls.__setitem__("pre", calls["pre"] + 1))
    return model, AutoTokenizer.from_pretrained(str(tiny_gpt2_dir)), calls


def test_the_study_leaves_the_users_model_as_it_was(user_model, tiny_gpt2_dir):
    model, tok, calls = user_model
    before = _state(model)
    result = ls.run_study("ioi:12", model, tokenizer=tok, batch_size=5)
    assert _state(model) == before
    assert calls["gelu"] >= 3 and calls["attn"] >= 3 and calls["pre"] >= 3  # the user's hooks ran in the study too
    assert model.training and not model.transformer.h[1].training
    # and the numbers are those of the same model loaded afresh (eval mode, no hooks).
    plain = ls.run_study("ioi:12", str(tiny_gpt2_dir), device="cpu", batch_size=5)
    np.testing.assert_allclose(result.head_results, plain.head_results, rtol=0, atol=1e-5)


@pytest.mark.parametrize("where", ["batch", "attention pass"])
def test_a_study_that_fails_leaves_the_model_as_it_was(user_model, where):
    """A failure in the second batch, or in the attention pass (after the switch to eager
    attention): the model is left as it came all the same."""
    model, tok, calls = user_model

    def boom(module, args, out):
        if where == "batch" and calls["attn"] >= 2:
            raise RuntimeError("failed in a batch")
        if where == "attention pass" and model.config._attn_implementation == "eager":
            raise RuntimeError("failed in the attention pass")

    handle = model.transformer.h[0].attn.register_forward_hook(boom)
    before = _state(model)
    with pytest.raises(RuntimeError, match=f"failed in {'a batch' if where == 'batch' else 'the attention pass'}"):
        ls.run_study("ioi:12", model, tokenizer=tok, batch_size=5)
    assert _state(model) == before
    handle.remove()


def test_the_model_still_gives_attentions_after_a_study(user_model):
    """transformers installs output-capturing hooks the first time a model is asked for its
    attention; the study removes them with their mark, so a later request installs them again."""
    import torch

    model, tok, _ = user_model
    ls.run_study("arena", model, tokenizer=tok)
    model.set_attn_implementation("eager")  # sdpa returns no attention weights
    with torch.no_grad():
        out = model(torch.tensor([[50256, 1757, 290]]), output_attentions=True)
    assert len(out.attentions) == 2 and all(a is not None and a.shape[-1] == 3 for a in out.attentions)


def test_only_the_heads_shown_are_kept(lm):
    result = ls.run_study("ioi:20", lm, top_k=2)
    shown = [(l, h) for sign in (1, -1) for l, h, _ in result.signed_top_heads(sign)]
    view = result.attention
    assert list(view.kept) == shown and view.patterns.shape == (len(shown), *view.patterns.shape[1:])
    everything = ls.run_study("ioi:20", lm, top_k=2, attention_heads="all")
    assert everything.attention.patterns.shape[0] == 8
    np.testing.assert_array_equal(view.heads(shown), everything.attention.heads(shown))
    hidden = next(h for h in everything.attention.kept if h not in shown)
    with pytest.raises(ValueError, match=r"was not kept: this study kept .* pass attention_heads=\[\.\.\.\] \(or 'all'\)"):
        view.heads([hidden])
    chosen = ls.run_study("ioi:20", lm, attention_heads=["L0H1", (1, 2)])
    assert chosen.attention.kept == ((0, 1), (1, 2))
    with pytest.raises(ls.InputError, match="attention_heads=.*is not a head"):
        ls.run_study("ioi:20", lm, attention_heads=["nine"])


# ------------------------------------------------------------------------------------------ what a fresh notebook passes
class _FrameLike:
    """A DataFrame as logitscope sees one without pandas: iterating it gives its column names."""

    columns = ["prompt", "correct", "incorrect"]

    def __iter__(self):
        return iter(self.columns)

    def to_dict(self, orient="dict"):
        return [ROW] if orient == "records" else {}


def test_a_dataframe_is_pointed_at_to_dict_records(monkeypatch):
    _never_load(monkeypatch)
    frames = [_FrameLike()]
    try:
        import pandas as pd

        frames.append(pd.DataFrame([ROW, OTHER]))
    except ImportError:  # the duck-typed frame still tests the message
        pass
    for frame in frames:
        with pytest.raises(TypeError, match=r"got \w+ .*a DataFrame.*pass df\.to_dict\('records'\)") as e:
            ls.run_study(frame, "no-such-org/no-such-model")
        assert "got str 'prompt'" not in str(e.value)


def test_a_model_logitscope_cannot_take_says_what_it_takes(tiny_gpt2_dir, monkeypatch):
    from oracle import make_hf_model, tl_model

    _never_load(monkeypatch)
    with pytest.raises(ls.InputError, match=r"no model given \(model=None\): .*a hub id .*a \.gguf file") as e:
        ls.run_study("seed", None)
    assert "tokenizer" not in str(e.value).split("a Hugging Face")[0]  # not "pass a tokenizer"
    tl = tl_model(make_hf_model("gpt2", size="tiny", seed=1), "gpt2")
    for kwargs in ({}, {"tokenizer": tl.tokenizer}):
        with pytest.raises(ls.InputError, match=r"TransformerLens HookedTransformer.*the transformers model it was built "
                           r"from .*or its name"):
            ls.run_study("seed", tl, **kwargs)
    with pytest.raises(ls.InputError, match=r"model: expected a hub id .*got dict"):
        ls.run_study("seed", {"weights": 1}, tokenizer=tl.tokenizer)


@pytest.mark.parametrize("prompts,expected", [
    ([{**ROW, "prompt": "  \n\t"}], r"prompts\[0\]: field 'prompt' is only whitespace"),
    ([{**ROW, "corrupted": "   "}], r"prompts\[0\]: field 'corrupted' must be a non-empty string \(not only whitespace\)"),
])
def test_a_whitespace_only_prompt_is_an_error(prompts, expected, monkeypatch):
    _never_load(monkeypatch)
    with pytest.raises(ls.InputError, match=expected):
        ls.run_study(prompts, "no-such-org/no-such-model")


@pytest.mark.filterwarnings("ignore::logitscope.PromptWarning")  # "no leading space": not what is tested
def test_a_special_token_as_an_answer_is_an_error(lm):
    for correct in ("<|endoftext|>", 50256):
        with pytest.raises(ls.InputError, match=r"answer .* is the tokenizer's special token '<\|endoftext\|>' \(id 50256\)"):
            ls.run_study([ROW, {**OTHER, "correct": correct}], lm)
        with pytest.raises(ls.InputError, match=r"special token '<\|endoftext\|>'"):
            ls.run_study([ROW, {**OTHER, "incorrect": correct}], lm)


def test_patching_warnings_point_at_the_users_line(lm):
    import warnings

    rows = [{**ROW, "prompt": ROW["prompt"].replace("and John", "and  John"),
             "corrupted": ROW["prompt"].replace("and John", "and  John").replace("John gave", "Mary gave")}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ls.run_patching(rows, lm, what="layers")
    ours = [w for w in caught if issubclass(w.category, ls.PromptWarning)]
    assert ours and all(w.filename == __file__ for w in ours), [(w.filename, w.lineno) for w in ours]


def test_causal_methods_run_a_training_mode_model_in_eval_mode(user_model, tiny_gpt2_dir):
    """A model handed over in training mode (dropout on): the patched, ablated, path and circuit
    runs and attribution patching run without dropout — the numbers of the same model in eval mode,
    the same on every call — and the model leaves in training mode with its hooks as they were.
    (Before, only the study switched to eval mode: two identical calls gave different grids.)"""
    import torch

    model, tok, _ = user_model
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5  # the tiny config's rate may be 0: make dropout visible whatever it is
    before = _state(model)
    kw = dict(tokenizer=tok, what="heads", method="both", ablate="L1H0,L0H1", senders="L0H1",
              receivers="logits", circuit="L1H0,L0H1", circuit_random=1, batch_size=4)
    trained = ls.run_patching("ioi:8", model, **kw)
    assert _state(model) == before and model.training
    model.eval()
    plain = ls.run_patching("ioi:8", model, **kw)
    for name in ("attn_head_out_all_pos", "attn_head_out_all_pos_attribution"):
        np.testing.assert_array_equal(trained.grids[name], plain.grids[name])
    for (k, a), (_, b) in zip(sorted(trained.ablated.items()), sorted(plain.ablated.items())):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(trained.paths.values, plain.paths.values)
    assert trained.circuit.measures == plain.circuit.measures


def test_edges_leave_a_mixed_mode_model_as_it_was_and_run_without_dropout(user_model):
    """The edge runner (engine/split_qkv.py) on a model in training mode but for one block: every
    module's own training flag comes back (model.train() used to switch the eval block on too), its
    hooks are left alone, and the scores are those of the model in eval mode (no dropout)."""
    import torch

    model, tok, _ = user_model
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    before = _state(model)
    kw = dict(tokenizer=tok, method="eap", curve=False, top_n=5, batch_size=4)
    trained = ls.edges("ioi:8", model, **kw)
    assert _state(model) == before
    assert model.training and not model.transformer.h[1].training
    model.eval()
    plain = ls.edges("ioi:8", model, **kw)
    np.testing.assert_array_equal(trained.scores, plain.scores)
