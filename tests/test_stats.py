"""Bootstrap intervals: the resampling itself, checked against direct computation and theory."""

from __future__ import annotations

import numpy as np
import pytest

import logitscope.stats as stats


def test_resampled_means_are_means_of_resampled_prompts():
    """Recompute each resampled mean directly from the indices the seeded generator draws."""
    v = np.random.default_rng(1).normal(size=(4, 57))
    means = stats.bootstrap_means(v, n_resamples=30, seed=5)
    idx = np.random.default_rng(5).integers(0, 57, size=(30, 57))
    np.testing.assert_allclose(means, v[:, idx].mean(-1), rtol=0, atol=1e-13)
    one = stats.bootstrap_means(v[2], n_resamples=30, seed=5)  # one row: the gather path
    np.testing.assert_allclose(one, means[2], rtol=0, atol=1e-13)


def test_parts_and_whole_share_resamples(monkeypatch):
    v = np.random.default_rng(2).normal(size=(3, 500))
    means = stats.bootstrap_means(np.vstack([v, v.sum(0, keepdims=True)]), seed=0)
    np.testing.assert_allclose(means[:3].sum(0), means[3], rtol=0, atol=1e-12)
    # The memory budget splits the counts into blocks without changing a single resample.
    monkeypatch.setattr(stats, "_COUNTS_BUDGET", 8 * 500 * 7)
    np.testing.assert_allclose(stats.bootstrap_means(v, seed=0), means[:3], rtol=0, atol=1e-13)


def test_interval_matches_normal_theory_and_is_seeded():
    """For 4,000 normal values the bootstrap interval of the mean is mean ± 1.96·s/√n, up to the
    percentile bootstrap's Monte-Carlo error: with 1,000 resamples the 2.5% quantile's standard
    deviation is √(0.025·0.975/1000)/φ(1.96) ≈ 0.085·se, so 0.3·se is 3.5 standard deviations (a
    correct implementation fails this about once in 2,000 seeds; a wrong width, e.g. ±1·se or
    ±2.5·se, fails it always)."""
    x = np.random.default_rng(3).normal(loc=2.0, scale=3.0, size=4000)
    lo, hi = stats.bootstrap_ci(x, seed=9)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.3 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.3 * se)
    assert stats.bootstrap_ci(x, seed=9) == (lo, hi)
    assert stats.bootstrap_ci(x, seed=10) != (lo, hi)


def test_json_text_is_the_same_document():
    import json
    import math

    from logitscope.results.io import json_text

    doc = {"a": 1, "prompts": [{"prompt": "x \u00e9\n", "v": 0.1}, {"prompt": "y", "v": [1, 2]}],
           "block": {"values": [[1.5, -2.0], [3.0, 4e-9]], "labels": ["L0", "L1"], "empty": {}, "none": None},
           "empty_list": [], "mixed": [{"a": 1}, 2], "nan": float("nan"), 3: "int key",
           "keys": {True: 1, None: 2, 1.5: 3, float("inf"): 4}}
    text = json_text(doc)
    assert text.endswith("\n")
    expected = json.loads(json.dumps(doc))
    back = json.loads(text)
    assert math.isnan(back.pop("nan")) and math.isnan(expected.pop("nan"))  # NaN as json.dumps writes it
    assert back == expected
    assert '  {"prompt": "x \\u00e9\\n", "v": 0.1},\n' in text  # one prompt per line
