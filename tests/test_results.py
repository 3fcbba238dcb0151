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
