"""Each causal method's own result type (logitscope.api.method_results): Experiment.patch / ablate /
paths / circuit return GridsResult / AblationResult / PathsResult / CircuitPatchingResult, each a
PatchingResult whose files are the whole result's byte for byte, which load_result reopens as the
same type, and which names the method to call when another method's part is read."""

from __future__ import annotations

import json

import numpy as np
import pytest

import logitscope as ls
from logitscope.api.method_results import kind_of_patching

TYPES = {"patch": ls.GridsResult, "ablate": ls.AblationResult, "paths": ls.PathsResult,
         "circuit": ls.CircuitPatchingResult}


@pytest.fixture(scope="module")
def exp(tiny_gpt2_dir):
    return ls.Experiment(str(tiny_gpt2_dir), "ioi:8", device="cpu", seed=2, batch_size=4)


@pytest.fixture(scope="module")
def results(exp):
    """One result of each method, computed once."""
    return {"patch": exp.patch("heads"), "ablate": exp.ablate("L1H0,L0H1", ablation="zero"),
            "paths": exp.paths("L0H1", "logits"), "circuit": exp.circuit("L1H0,L1H1", random_k=1)}


@pytest.mark.parametrize("kind", TYPES)
def test_each_method_returns_its_own_type_still_a_patching_result(results, kind):
    r = results[kind]
    assert type(r) is TYPES[kind]
    assert isinstance(r, ls.PatchingResult)
    assert r.n_prompts == 8 and r.study is results["patch"].study  # the shared part reads as before
    assert repr(r).startswith(f"<{TYPES[kind].__name__} ") and "1 senders" not in repr(r)


def test_own_fields_read_as_the_whole_result_holds_them(results):
    g, a, p, c = (results[k] for k in TYPES)
    assert set(g.grids) == {"attn_head_out_all_pos"} and g.grid("attn_head_out_all_pos").shape == (2, 4, 8)
    assert g.grids is g.whole().grids  # a view: nothing copied
    assert a.ablation_kind == "zero" and a.ablation_sets == {"L1H0,L0H1": ("L1H0", "L0H1")}
    assert a.ablated["L1H0,L0H1"].shape == (8,)
    assert p.paths.senders == ("L0H1",) and p.paths.values.shape == (1, 1, 8)
    assert c.circuit.title == "circuit" and c.circuit is c.whole().circuit


@pytest.mark.parametrize("kind, name, message", [
    ("ablate", "grids", "an AblationResult has no grids: exp.patch(...)"),
    ("paths", "ablated", "a PathsResult has no ablated: exp.ablate(...)"),
    ("circuit", "paths", "a CircuitPatchingResult has no paths: exp.paths(...)"),
    ("patch", "circuit", "a GridsResult has no circuit: exp.circuit(...)"),
    ("patch", "ablation_sets", "a GridsResult has no ablation_sets: exp.ablate(...)"),
    ("circuit", "ablation_kind", "a CircuitPatchingResult has no ablation_kind: exp.ablate(...)"),
    ("ablate", "ablated_heads", 'exp.patch("ablation")'),
])
def test_another_methods_part_is_a_clear_attribute_error(results, kind, name, message):
    r = results[kind]
    with pytest.raises(AttributeError) as e:
        getattr(r, name)
    assert message in str(e.value)
    assert not hasattr(r, name)
    assert getattr(r.whole(), name) in (None, {})  # the whole result holds it, empty, for the files


def test_a_method_on_another_methods_part_names_the_method(results):
    with pytest.raises(AttributeError, match="an AblationResult has no grids: exp.patch"):
        results["ablate"].normalised("attn_head_out_all_pos")


@pytest.mark.parametrize("kind", TYPES)
def test_files_are_the_whole_results_and_reopen_as_the_same_type(results, kind, tmp_path):
    r = results[kind]
    r.save(tmp_path / "ours", report=False)
    r.whole().save(tmp_path / "whole", report=False)
    assert (tmp_path / "ours/results.json").read_bytes() == (tmp_path / "whole/results.json").read_bytes()
    with np.load(tmp_path / "ours/patching_per_prompt.npz") as a, np.load(tmp_path / "whole/patching_per_prompt.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    again = ls.load_result(tmp_path / "ours")
    assert type(again) is TYPES[kind]
    doc = json.loads((tmp_path / "ours/results.json").read_text(encoding="utf-8"))
    assert kind_of_patching(doc["patching"]) == kind
    assert again.summary() == r.summary()  # float32 in the files, float32 computed: read back exactly


def test_the_single_head_ablation_grid_is_patchs(exp, tmp_path):
    r = exp.patch("ablation")
    assert type(r) is ls.GridsResult and r.ablated_heads.shape == (2, 4, 8) and r.ablation_kind == "mean"
    with pytest.raises(AttributeError, match="has no ablated: exp.ablate"):
        r.ablated
    r.save(tmp_path, report=False)
    assert type(ls.load_result(tmp_path)) is ls.GridsResult


def test_several_methods_stay_one_patching_result(exp, tmp_path):
    r = ls.run_patching(exp.prompts, exp.lm, what="heads", ablate="L1H0", seed=2, batch_size=4)
    assert type(r) is ls.PatchingResult  # run_patching's type, whatever it computes
    r.save(tmp_path, report=False)
    again = ls.load_result(tmp_path)
    assert type(again) is ls.PatchingResult and set(again.grids) == set(r.grids) and list(again.ablated) == ["L1H0"]


@pytest.mark.parametrize("kind, line, others", [
    ("patch", "attn_head_out_all_pos: largest normalised effect", ("ablating", "path patching", "faithfulness")),
    ("ablate", "ablating L1H0,L0H1 (zero)", ("largest normalised effect",)),
])
def test_summary_has_its_methods_lines_only(results, kind, line, others):
    s = results[kind].summary()
    assert s.startswith(results[kind].study.summary()) and line in s
    assert not any(o in s for o in others)


def test_paths_and_circuit_summaries_are_their_parts(results):
    for kind, part in (("paths", "paths"), ("circuit", "circuit")):
        s = results[kind].summary()
        assert s.endswith(getattr(results[kind], part).summary())
        assert "largest normalised effect" not in s and "ablating" not in s


@pytest.mark.parametrize("doc, kind", [
    ({"attn_head_out_all_pos": {}, "clean_logit_diff": {}}, "patch"),
    ({"resid_pre_attribution": {}}, "patch"),
    ({"ablation": {"kind": "mean", "sets": [], "heads": {}}}, "patch"),
    ({"ablation": {"kind": "mean", "sets": [{"name": "a"}]}}, "ablate"),
    ({"paths": {}}, "paths"),
    ({"circuit": {}, "positions": {}}, "circuit"),
    ({"paths": {}, "circuit": {}}, None),
    ({"resid_pre": {}, "ablation": {"sets": [{"name": "a"}]}}, None),
    ({"clean_logit_diff": {}}, None),
])
def test_the_kind_is_read_from_the_sections_present(doc, kind):
    assert kind_of_patching(doc) == kind


def test_report_and_notebook_display_are_the_whole_results(results, tmp_path):
    """The report section and the light display are made from the whole result, so they are the
    ones run_patching's result gives (the report reads every part, present or empty)."""
    a = results["ablate"]
    ours = a.write_report(tmp_path / "ours.html").read_text(encoding="utf-8")
    assert ours == a.whole().write_report(tmp_path / "whole.html").read_text(encoding="utf-8")
    assert 'id="patching"' in ours and "Ablation (zero)" in ours and "L1H0, L0H1" in ours
    shown = a._repr_html_()
    assert "ablating L1H0,L0H1 (zero)" in shown and "largest normalised effect" not in shown
    assert set(results["patch"].figures()) == set(results["patch"].whole().figures()) != set()
