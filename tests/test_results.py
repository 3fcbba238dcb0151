"""The result layer: frozen labelled data, the modules beside it, old names, files that reopen."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import logitscope as ls
from logitscope.report.demo import synthetic_result
from logitscope.api.results import StudyResult


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


# ------------------------------------------------------------------------------------------ patching: one key, one meaning
def _tl_logit_diffs(tl, texts, correct, incorrect) -> tuple[np.ndarray, np.ndarray]:
    """TransformerLens 3.9's ``(linear, soft-capped)`` logit differences at the last token: its own
    (capped) logits, and the final norm's output through W_U and b_U before the cap."""
    import torch

    tokens = tl.to_tokens(list(texts), prepend_bos=tl.cfg.default_prepend_bos)
    rows = torch.arange(len(texts))
    with torch.no_grad():
        logits, cache = tl.run_with_cache(tokens)
        linear = cache["ln_final.hook_normalized"][:, -1] @ tl.W_U + tl.b_U
    diff = lambda x: (x[rows, correct] - x[rows, incorrect]).numpy().astype(np.float64)  # noqa: E731
    return diff(linear), diff(logits[:, -1])


def test_soft_capped_patching_names_its_metric_and_every_key_has_one_meaning(tmp_path):
    """Gemma 2 soft-caps its final logits: the study's logit_diff is the linear difference, patching
    the capped one (TransformerLens's logits are capped). Each key of results.json (prompt rows, top
    level, ``patching``) holds one of the two, whichever model and file: checked against
    TransformerLens computing both. Tolerance 1e-4: float32 on both sides (~1e-6 observed), while the
    cap moves these differences by ~0.1 or more."""
    import json

    import torch

    from logitscope.api.patching import run_patching
    from oracle import gpt2_tokenizer, make_hf_model, tl_model

    hf = make_hf_model("gemma2", size="tiny", seed=3, n_ctx=64)
    assert hf.config.final_logit_softcapping
    tl = tl_model(hf, "gemma2")
    res = run_patching("arena", hf, tokenizer=gpt2_tokenizer(), what=["attn_head_out_all_pos"], positions="index")
    prompts = res.study.prompts
    correct = torch.tensor([tl.to_single_token(p.correct) for p in prompts])
    incorrect = torch.tensor([tl.to_single_token(p.incorrect) for p in prompts])
    linear, capped = _tl_logit_diffs(tl, [p.text for p in prompts], correct, incorrect)
    c_linear, c_capped = _tl_logit_diffs(tl, res.corrupted_prompts, correct, incorrect)
    assert np.abs(linear - capped).max() > 0.05 and np.abs(c_linear - c_capped).max() > 0.05, "the cap must matter"
    meaning = {"logit_diff": linear, "logit_diff_softcapped": capped, "clean_logit_diff": linear,
               "clean_logit_diff_softcapped": capped, "corrupted_logit_diff": c_linear,
               "corrupted_logit_diff_softcapped": c_capped}

    def check(doc: dict) -> None:
        seen = set()
        rows = doc["prompts"]
        for key, want in meaning.items():
            if key in rows[0]:
                seen.add(key)
                np.testing.assert_allclose([r[key] for r in rows], want, rtol=0, atol=1e-4, err_msg=f"row {key}")
            for where, block in (("top-level", doc), ("patching", doc["patching"])):
                if key in block:
                    seen.add(key)
                    np.testing.assert_allclose(block[key]["per_prompt"], want, rtol=0, atol=1e-4, err_msg=f"{where} {key}")
                    assert block[key]["mean"] == pytest.approx(float(want.mean()), abs=1e-4), f"{where} {key}"
        pt = doc["patching"]
        assert pt["metric"] == "logit_diff_softcapped" and "soft-capped" in pt["metric_description"]
        assert {"logit_diff", "logit_diff_softcapped", "corrupted_logit_diff_softcapped",
                "clean_logit_diff_softcapped"} <= seen
        assert "clean_logit_diff" not in pt and "corrupted_logit_diff" not in rows[0]  # never the capped one
        # Every patched value is in the named metric: the normalised grid from its clean and corrupted.
        c, x = pt["clean_logit_diff_softcapped"]["mean"], pt["corrupted_logit_diff_softcapped"]["mean"]
        grid = np.array(pt["attn_head_out_all_pos"]["values"])
        np.testing.assert_allclose(pt["attn_head_out_all_pos"]["normalised"], (grid - x) / (c - x), atol=1e-5)

    check(res.results_document())
    assert res.metric == "logit_diff_softcapped" and "soft-capped logits" in res.summary()
    from logitscope.report.page import report_html

    assert "the metric is the clean answers' logit difference at each prompt's last token, of the model's soft-capped" \
        in report_html(res.study, res)
    res.save(tmp_path / "new", report=False)
    check(json.loads((tmp_path / "new" / "results.json").read_text()))
    again = ls.load_result(tmp_path / "new")
    assert again.metric == "logit_diff_softcapped"
    np.testing.assert_array_equal(again.clean_logit_diff, np.float32(res.clean_logit_diff))
    np.testing.assert_array_equal(again.corrupted_logit_diff, np.float32(res.corrupted_logit_diff))
    assert again.study.prompts[0].meta == res.study.prompts[0].meta
    check(again.results_document())

    # A file written before the metric was named (capped values under clean_/corrupted_logit_diff)
    # reopens with the same values, and saves under the new keys.
    old = tmp_path / "old"
    res.save(old, report=False)
    doc = json.loads((old / "results.json").read_text())
    pt = doc["patching"]
    pt["metric"] = pt.pop("metric_description")
    pt["clean_logit_diff"], pt["corrupted_logit_diff"] = pt.pop("clean_logit_diff_softcapped"), pt.pop("corrupted_logit_diff_softcapped")
    for row in doc["prompts"]:
        del row["logit_diff_softcapped"]
        row["corrupted_logit_diff"] = row.pop("corrupted_logit_diff_softcapped")
    (old / "results.json").write_text(json.dumps(doc))
    with np.load(old / "patching_per_prompt.npz") as npz:
        arrays = {k.replace("_softcapped", ""): npz[k] for k in npz.files}
    np.savez(old / "patching_per_prompt.npz", **arrays)
    reopened = ls.load_result(old)
    assert reopened.metric == "logit_diff_softcapped"
    np.testing.assert_array_equal(reopened.clean_logit_diff, again.clean_logit_diff)
    np.testing.assert_array_equal(reopened.corrupted_logit_diff, again.corrupted_logit_diff)
    assert reopened.study.prompts[0].meta == res.study.prompts[0].meta
    check(reopened.results_document())


def test_a_model_without_a_cap_keeps_one_logit_diff(tiny_gpt2_dir, tmp_path):
    from logitscope.api.patching import run_patching

    res = run_patching("arena", str(tiny_gpt2_dir), what="heads", device="cpu")
    doc = res.results_document()
    pt = doc["patching"]
    assert res.metric == pt["metric"] == "logit_diff" and "logit_diff_softcapped" not in doc
    np.testing.assert_allclose(pt["clean_logit_diff"]["per_prompt"], doc["logit_diff"]["per_prompt"], atol=1e-5)
    assert all("corrupted_logit_diff" in r and "logit_diff_softcapped" not in r for r in doc["prompts"])


def test_mean_of_a_grid_the_run_lacks_names_the_grids_it_has(tiny_gpt2_dir):
    from logitscope.api.patching import run_patching

    res = run_patching("arena", str(tiny_gpt2_dir), what="heads,layers", device="cpu")
    for call in (res.mean, res.normalised, res.grid_interval):
        with pytest.raises(ls.ArgumentError, match=r"name='resid_pre': this run has no such grid; its grids: "
                                                   r"attn_head_out_all_pos, attn_out, mlp_out; "
                                                   r"run_patching\(\.\.\., what='resid_pre'\) computes it"):
            call("resid_pre")
    with pytest.raises(ls.ArgumentError, match=r"name='heads': this run has no such grid; its grids: attn_head_out_all_pos, "
                                               r"attn_out, mlp_out$"):
        res.mean("heads")


def test_a_study_saved_over_a_patch_run_reopens_as_a_study(tiny_gpt2_dir, tmp_path):
    """A study written into a folder a patch run wrote: the patch run's patching_per_prompt.npz is
    removed (a folder holds one run's files), and reopening reads the kind from results.json, not
    from which files are there (a stray npz beside a study's results.json still reopens a study)."""
    from logitscope.results.io import RUN_FILES
    from logitscope.api.patching import run_patching
    from logitscope.api.patching_result import OUTPUT_FILES as PATCH_FILES
    from logitscope.results.serialize import OUTPUT_FILES as STUDY_FILES

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
