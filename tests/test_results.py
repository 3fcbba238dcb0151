"""The result layer: frozen labelled data, the modules beside it, old names, files that reopen."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import logitscope as ls
from logitscope.report.demo import synthetic_result
from logitscope.results import StudyResult


def as_result(data) -> StudyResult:
    return StudyResult(**{f.name: getattr(data, f.name) for f in dataclasses.fields(data)})


@pytest.fixture(scope="module")
def demo() -> StudyResult:
    return as_result(synthetic_result(n_prompts=60, n_layers=3, n_heads=4, model="demo"))


def test_result_is_frozen_and_its_arrays_read_only(demo):
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.logit_diff = np.zeros(3)
    with pytest.raises(ValueError, match="read-only"):
        demo.head_results[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        demo.logit_lens_per_prompt[0, 0] = 1.0  # derived arrays too: they are cached
    assert isinstance(demo.prompts, tuple)
    # A changed copy is a new result, with its own derived numbers.
    other = dataclasses.replace(demo, seed=1)
    assert other.intervals["logit_diff"] != demo.intervals["logit_diff"]


@pytest.mark.parametrize("old,new", [("attn", "attn_out"), ("mlp", "mlp_out"), ("heads", "head_results"),
                                     ("final_bias", "final_norm_bias")])
def test_old_field_names_still_read_with_a_deprecation_warning(demo, old, new):
    with pytest.warns(DeprecationWarning, match=rf"\.{old} is now \.{new}"):
        value = getattr(demo, old)
    assert value is getattr(demo, new)


def test_fields_are_named_after_transformerlens_hooks(demo):
    names = {f.name for f in dataclasses.fields(StudyResult)}
    assert {"embed", "pos_embed", "attn_out", "mlp_out", "head_results", "final_norm_bias"} <= names
    assert not {"attn", "mlp", "heads", "final_bias"} & names
    np.testing.assert_allclose(demo.head_results.sum(1) + demo.attn_bias, demo.attn_out, atol=1e-12)


def test_the_documented_api_delegates(demo, tmp_path):
    assert demo.figures().keys() >= {"logit_lens", "head_attribution"}
    assert "mean logit diff" in demo.summary()
    assert len(demo.to_records()) == demo.n_prompts
    assert demo.write_csv(tmp_path / "t.csv").exists()
    assert demo.to_dict()["n_prompts"] == 60
    assert demo._repr_html_().startswith("<div")
    assert repr(demo).startswith("<StudyResult demo: 60 prompts")
    assert demo.top_heads(2, sign=1) == ls.StudyResult.top_heads(demo, 2, 1)


# ------------------------------------------------------------------------------------------ reopening
def _same(a, b) -> None:
    """Field by field: arrays bit for bit, prompts with their metadata, everything else equal."""
    for f in dataclasses.fields(StudyResult):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or x is None:
            if x is None:
                assert y is None, f.name
            else:
                assert y.shape == x.shape, f.name
                np.testing.assert_array_equal(y, x, err_msg=f.name)
        elif f.name == "prompts":
            assert [(p.text, p.correct, p.incorrect, p.meta) for p in y] == [(p.text, p.correct, p.incorrect, p.meta) for p in x]
        elif f.name == "attention":
            assert (y.prompt_index, y.str_tokens, y.kept, y.n_layers, y.n_heads) == (
                x.prompt_index, x.str_tokens, x.kept, x.n_layers, x.n_heads)
            np.testing.assert_array_equal(y.patterns, x.patterns)
        else:
            assert y == x, f.name


def test_a_saved_study_reopens_as_the_same_result(tiny_gpt2_dir, tmp_path):
    """load_result gives back every field bit for bit (the study computes in float32, and the files
    keep float32), so the same results.json, report, figures and tables, without the model."""
    import json

    from logitscope.report import report_html

    result = ls.run_study("ioi:30", str(tiny_gpt2_dir), device="cpu", seed=4)
    result.save(tmp_path / "run", csv=True)
    again = ls.load_result(tmp_path / "run")
    assert isinstance(again, StudyResult)
    _same(result, again)
    assert json.loads(json.dumps(again.to_dict())) == json.loads((tmp_path / "run" / "results.json").read_text())
    assert report_html(again) == report_html(result)
    assert again.to_records() == result.to_records()
    assert again.figures()["head_attribution"].to_json() == result.figures()["head_attribution"].to_json()
    assert again.summary() == result.summary()
    # results.json itself can be named, and a reopened study saves the same files again.
    _same(result, ls.load_result(tmp_path / "run" / "results.json"))
    again.save(tmp_path / "copy", report=False)
    assert (tmp_path / "copy" / "results.json").read_bytes() == (tmp_path / "run" / "results.json").read_bytes()


def test_a_jsonl_study_with_odd_metadata_reopens(tiny_gpt2_dir, tmp_path):
    import json

    rows = [{"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary",
             "incorrect": " John", "template": ["a", 1], "correct_id": "mine", "note": None},
            {"prompt": "The capital of France is", "correct": " Paris", "incorrect": " London"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = ls.run_study(str(path), str(tiny_gpt2_dir), device="cpu", prepend_bos=False)
    result.save(tmp_path / "run", report=False)
    again = ls.load_result(tmp_path / "run")
    _same(result, again)
    assert again.prompts[0].meta == {"template": ["a", 1], "correct_id": "mine", "note": None, "line": 1}


def test_reopening_says_what_is_wrong(tiny_gpt2_dir, tmp_path):
    import json

    result = ls.run_study("arena", str(tiny_gpt2_dir), device="cpu")
    run = result.save(tmp_path / "run", report=False)
    with pytest.raises(ls.InputError, match="has no results.json"):
        ls.load_result(tmp_path)
    with pytest.raises(ls.InputError, match="no such folder"):
        ls.load_result(tmp_path / "nope")
    doc = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**doc, "schema_version": 1}))
    with pytest.raises(ls.InputError, match=r"schema_version 1, written by logitscope 0\.1\.0; this logitscope reads version 2"):
        ls.load_result(run)
    (run / "results.json").write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(ls.InputError, match="schema_version 99"):
        ls.load_result(run)
    (run / "results.json").write_text("{not json")
    with pytest.raises(ls.InputError, match="not readable JSON"):
        ls.load_result(run)
    (run / "results.json").write_text(json.dumps(doc))
    (run / "per_prompt.npz").unlink()
    with pytest.raises(ls.InputError, match=r"per_prompt\.npz is missing"):
        ls.load_result(run)


def test_a_study_saved_over_a_patch_run_reopens_as_a_study(tiny_gpt2_dir, tmp_path):
    """A study written into a folder a patch run wrote: the patch run's patching_per_prompt.npz is
    removed (a folder holds one run's files), and reopening reads the kind from results.json, not
    from which files are there (a stray npz beside a study's results.json still reopens a study)."""
    from logitscope.io import RUN_FILES
    from logitscope.patching import run_patching
    from logitscope.patching.result import OUTPUT_FILES as PATCH_FILES
    from logitscope.serialize import OUTPUT_FILES as STUDY_FILES

    assert set(STUDY_FILES) | set(PATCH_FILES) <= set(RUN_FILES)  # every file a run writes is one it owns
    folder = tmp_path / "run"
    patched = run_patching("seed", str(tiny_gpt2_dir), what="attn_head_out_all_pos", device="cpu")
    patched.save(folder, report=False)
    assert isinstance(ls.load_result(folder), type(patched))
    stray = (folder / "patching_per_prompt.npz").read_bytes()
    study = ls.run_study("seed", str(tiny_gpt2_dir), device="cpu")
    study.save(folder, report=False)
    assert not (folder / "patching_per_prompt.npz").exists()
    _same(study, ls.load_result(folder))
    (folder / "patching_per_prompt.npz").write_bytes(stray)  # e.g. copied in by hand
    _same(study, ls.load_result(folder))
    patched.save(folder, report=False)  # and back: the patch run reopens as one
    assert isinstance(ls.load_result(folder), type(patched))
