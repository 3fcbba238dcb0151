"""Options that change how the study runs but must not change what it means: dtype, device_map,
BOS, an already-loaded model, batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import logitscope as ls
from oracle import SEED_FLAGS, make_hf_model, save_checkpoint, tl_model
from test_parity import assert_matches, tl_reference, token_ids


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_attribute_in_float32(tiny_gpt2_dir, dtype):
    full = ls.run_study("arena", str(tiny_gpt2_dir), device="cpu")
    half = ls.run_study("arena", str(tiny_gpt2_dir), device="cpu", dtype=dtype)
    assert half.dtype == dtype and full.dtype == "float32"
    for name in ("logit_diff", "direct", "heads", "attn", "mlp", "final_bias"):
        arr = getattr(half, name)
        assert arr.dtype == np.float64 and np.isfinite(arr).all(), name
    # Half-precision forward passes differ from float32 by their rounding (~1e-2 on these logit
    # scales); attribution arithmetic itself is float32, so the parts still add up to the whole
    # within that rounding, and match the float32 run to the same order.
    scale = np.abs(full.logit_diff).max()
    np.testing.assert_allclose(half.logit_diff, full.logit_diff, rtol=0, atol=0.05 * scale)
    np.testing.assert_allclose(half.heads, full.heads, rtol=0, atol=0.05 * scale)
    np.testing.assert_allclose(half.decomposition_per_prompt.sum(0), half.logit_diff, rtol=0, atol=0.05 * scale)


def test_device_map_auto_loads_and_gives_the_same_numbers(tiny_gpt2_dir):
    pytest.importorskip("accelerate")
    plain = ls.run_study("arena", str(tiny_gpt2_dir), device="cpu")
    mapped = ls.run_study("arena", str(tiny_gpt2_dir), device_map="auto")
    for name in ("logit_diff", "heads", "attn", "mlp", "direct"):
        np.testing.assert_allclose(getattr(mapped, name), getattr(plain, name), rtol=0, atol=1e-6, err_msg=name)


def test_no_prepend_bos_matches_transformerlens_without_bos(gpt2_tokenizer, tmp_path):
    hf = make_hf_model("gpt2", size="tiny", seed=5)
    path = save_checkpoint(hf, tmp_path / "m")
    with_bos = ls.run_study("arena", str(path), device="cpu")
    without = ls.run_study("arena", str(path), device="cpu", prepend_bos=False)
    assert with_bos.prepend_bos and not without.prepend_bos
    np.testing.assert_array_equal(with_bos.n_tokens, without.n_tokens + 1)
    assert without.attention.str_tokens[0] == "When"
    ref = tl_reference(tl_model(hf, "gpt2", **SEED_FLAGS), token_ids(without, gpt2_tokenizer),
                       without.correct_ids, without.incorrect_ids)
    assert_matches(without, ref)
    assert np.abs(with_bos.logit_diff - without.logit_diff).max() > 1e-3  # BOS matters


def test_already_loaded_model_and_tokenizer(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2_dir))
    attn_before = model.config._attn_implementation
    from_obj = ls.run_study(ls.builtin_prompts("seed"), model, tokenizer=tok)
    from_dir = ls.run_study("seed", str(tiny_gpt2_dir), device="cpu")
    np.testing.assert_allclose(from_obj.heads, from_dir.heads, rtol=0, atol=1e-6)
    assert model.config._attn_implementation == attn_before  # the pattern pass restores it
    with pytest.raises(ls.InputError, match="tokenizer"):
        ls.run_study("seed", model)


def test_batch_size_does_not_change_numbers(tiny_gpt2_dir):
    a = ls.run_study("ioi:40", str(tiny_gpt2_dir), device="cpu", batch_size=1)
    b = ls.run_study("ioi:40", str(tiny_gpt2_dir), device="cpu", batch_size=16)
    c = ls.run_study("ioi:40", str(tiny_gpt2_dir), device="cpu")
    assert [p.text for p in a.prompts] == [p.text for p in b.prompts] == [p.text for p in c.prompts]
    for other in (b, c):
        np.testing.assert_allclose(other.heads, a.heads, rtol=0, atol=1e-5)
        np.testing.assert_allclose(other.logit_diff, a.logit_diff, rtol=0, atol=1e-5)
