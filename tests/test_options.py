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
    for name in ("logit_diff", "direct", "head_results", "attn_out", "mlp_out", "final_norm_bias"):
        arr = getattr(half, name)
        assert arr.dtype == np.float64 and np.isfinite(arr).all(), name
    # Half-precision forward passes differ from float32 by their rounding (~1e-2 on these logit
    # scales); attribution arithmetic itself is float32, so the parts still add up to the whole
    # within that rounding, and match the float32 run to the same order.
    scale = np.abs(full.logit_diff).max()
    np.testing.assert_allclose(half.logit_diff, full.logit_diff, rtol=0, atol=0.05 * scale)
    np.testing.assert_allclose(half.head_results, full.head_results, rtol=0, atol=0.05 * scale)
    np.testing.assert_allclose(half.decomposition_per_prompt.sum(0), half.logit_diff, rtol=0, atol=0.05 * scale)


def test_device_map_auto_loads_and_gives_the_same_numbers(tiny_gpt2_dir):
    pytest.importorskip("accelerate")
    plain = ls.run_study("arena", str(tiny_gpt2_dir), device="cpu")
    mapped = ls.run_study("arena", str(tiny_gpt2_dir), device_map="auto")
    for name in ("logit_diff", "head_results", "attn_out", "mlp_out", "direct"):
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
    np.testing.assert_allclose(from_obj.head_results, from_dir.head_results, rtol=0, atol=1e-6)
    assert model.config._attn_implementation == attn_before  # the pattern pass restores it
    with pytest.raises(ls.InputError, match="tokenizer"):
        ls.run_study("seed", model)


def test_batch_size_does_not_change_numbers(tiny_gpt2_dir):
    a = ls.run_study("ioi:40", str(tiny_gpt2_dir), device="cpu", batch_size=1)
    b = ls.run_study("ioi:40", str(tiny_gpt2_dir), device="cpu", batch_size=16)
    c = ls.run_study("ioi:40", str(tiny_gpt2_dir), device="cpu")
    assert [p.text for p in a.prompts] == [p.text for p in b.prompts] == [p.text for p in c.prompts]
    for other in (b, c):
        np.testing.assert_allclose(other.head_results, a.head_results, rtol=0, atol=1e-5)
        np.testing.assert_allclose(other.logit_diff, a.logit_diff, rtol=0, atol=1e-5)


def test_added_pad_token_outside_the_embedding(tiny_gpt2_dir):
    """A tokenizer whose pad id is past the embedding (an added [PAD]) must not matter: padding
    is never read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2_dir))
    tok.add_special_tokens({"pad_token": "[PAD]"})
    assert tok.pad_token_id >= model.get_input_embeddings().weight.shape[0]
    prompts = [ls.Prompt("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
               ls.Prompt("The capital of France is", " Paris", " London")]
    with_pad = ls.run_study(prompts, model, tokenizer=tok, batch_size=2)
    alone = ls.run_study(prompts, model, tokenizer=tok, batch_size=1)
    np.testing.assert_allclose(with_pad.head_results, alone.head_results, rtol=0, atol=1e-5)


def test_neox_without_attention_biases(tmp_path, gpt2_tokenizer):
    """``attention_bias=False`` NeoX checkpoints (TransformerLens 3.9's converter cannot read
    them, so the check is against the model's own logits and the decomposition's identities)."""
    import transformers

    hf = make_hf_model("gpt_neox", size="tiny", seed=6)
    cfg = hf.config
    cfg.attention_bias = False
    bare = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    bare.load_state_dict(hf.state_dict(), strict=False)  # everything but the attention biases
    assert bare.gpt_neox.layers[0].attention.query_key_value.bias is None
    path = save_checkpoint(bare, tmp_path / "neox")
    result = ls.run_study("arena", str(path), device="cpu")
    ids = torch.tensor(token_ids(result, gpt2_tokenizer))  # NeoX: no BOS by default
    with torch.no_grad():
        logits = bare(ids).logits[:, -1].double().numpy()
    rows = np.arange(len(ids))
    want = logits[rows, result.correct_ids] - logits[rows, result.incorrect_ids]
    np.testing.assert_allclose(result.logit_diff, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(result.decomposition_per_prompt.sum(0), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(result.head_results.sum(1) + result.attn_bias, result.attn_out, rtol=0, atol=1e-4)
    assert np.abs(result.attn_bias).max() > 1e-3  # the first norm's bias through W_V is still there


def test_intervals_and_per_template_means_are_right(tiny_gpt2_dir):
    result = ls.run_study("ioi:120", str(tiny_gpt2_dir), device="cpu", seed=3)
    doc = result.to_dict()
    for key in ("logit_lens", "layer_attribution", "head_attribution", "decomposition"):
        v, lo, hi = (np.array(doc[key][k]) for k in ("values", "ci95_low", "ci95_high"))
        assert (lo <= v + 1e-12).all() and (v <= hi + 1e-12).all(), key
        assert (hi - lo).max() > 0, key
    ld = doc["logit_diff"]
    assert ld["ci95_low"] < ld["mean"] < ld["ci95_high"]
    # Independent check of the interval's width: a normal-theory 95% interval of the mean.
    se = result.logit_diff.std(ddof=1) / np.sqrt(result.n_prompts)
    assert (ld["ci95_high"] - ld["ci95_low"]) == pytest.approx(2 * 1.96 * se, rel=0.25)
    # Per-template means, recomputed by hand from the per-prompt rows.
    groups: dict[tuple, list[float]] = {}
    for row in doc["prompts"]:
        groups.setdefault((row["template"], row["order"]), []).append(row["logit_diff"])
    assert len(doc["by_template"]) == len(groups)
    for row in doc["by_template"]:
        values = groups[(row["template"], row["order"])]
        assert row["n"] == len(values)
        assert row["logit_diff_mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert row["frac_correct"] == pytest.approx(np.mean(np.array(values) > 0))
    templates = [row["template"] for row in doc["by_template"]]
    assert templates == sorted(templates)  # numeric order, 1, 2, ..., 15


def test_weights_offloaded_by_accelerate_are_a_clear_error(tiny_gpt2_dir, tmp_path):
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir), device_map="auto", max_memory={"cpu": "300KB"},
                                                 offload_folder=str(tmp_path / "offload"))
    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2_dir))
    with pytest.raises(ls.ModelLoadError, match="offloaded to CPU or disk"):
        ls.run_study("arena", model, tokenizer=tok)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_numbers(tiny_gpt2_dir):
    cpu = ls.run_study("ioi:64", str(tiny_gpt2_dir), device="cpu")
    gpu = ls.run_study("ioi:64", str(tiny_gpt2_dir), device="cuda")
    assert gpu.device.startswith("cuda")
    for name in ("logit_diff", "direct", "head_results", "attn_out", "mlp_out", "final_norm_bias"):
        np.testing.assert_allclose(getattr(gpu, name), getattr(cpu, name), rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(gpu.attention.patterns, cpu.attention.patterns, rtol=0, atol=1e-5)


def test_cpu_batch_size_follows_the_token_budget_and_available_memory(tiny_gpt2_dir, monkeypatch):
    import logitscope.engine.setup as setup

    lm = ls.load_model(str(tiny_gpt2_dir), device="cpu")
    assert setup.auto_batch_size(lm, 16) == 2048 // 16  # ~2k tokens a batch (bench/: cache-friendly)
    assert setup.auto_batch_size(lm, 60) == 2048 // 60
    monkeypatch.setattr(setup, "available_host_memory", lambda: 4 * 1024 * 1024)  # 4 MiB free
    assert 1 <= setup.auto_batch_size(lm, 16) < 2048 // 16


def test_recomputed_logit_lens_in_results_and_report(tiny_gpt2_dir):
    result = ls.run_study("arena", str(tiny_gpt2_dir), device="cpu")
    lens = result.figures()["logit_lens"]
    assert len(lens.data) == 2 and lens.data[1].line.dash == "dash"
    np.testing.assert_allclose(lens.data[1].y, result.logit_lens_recomputed_per_prompt.mean(-1))
    # Both lenses end on the real final residual; before it they differ (different scales).
    np.testing.assert_allclose(result.logit_lens_recomputed_per_prompt[-1], result.logit_lens_per_prompt[-1], atol=1e-6)
    assert np.abs(result.logit_lens_recomputed_per_prompt[:-1] - result.logit_lens_per_prompt[:-1]).max() > 1e-3
    doc = result.to_dict()
    assert doc["logit_lens_recomputed"]["labels"] == doc["logit_lens"]["labels"]


def test_decomposition_groups_in_results_add_up(tiny_gpt2_dir):
    """The report's waterfall groups, written to results.json: each group is the sum of its rows of
    the complete decomposition, and the groups add up to the mean logit difference."""
    result = ls.run_study("ioi:50", str(tiny_gpt2_dir), device="cpu")
    doc = result.to_dict()
    g = doc["decomposition"]["groups"]
    assert g["labels"] == ["embed", "pos_embed", "attention heads", "attention biases", "MLP neurons",
                           "MLP biases", "final norm bias"]
    labels, values = doc["decomposition"]["labels"], np.array(doc["decomposition"]["values"])

    def rows(pred):
        return values[[i for i, lab in enumerate(labels) if pred(lab)]].sum()

    expected = [rows(lambda s: s == "embed"), rows(lambda s: s == "pos_embed"),
                rows(lambda s: s.startswith("L") and "H" in s), rows(lambda s: s.endswith("_attn_bias")),
                rows(lambda s: s.endswith("_mlp_neurons")), rows(lambda s: s.endswith("_mlp_bias")),
                rows(lambda s: s == "final_norm_bias")]
    np.testing.assert_allclose(g["values"], expected, rtol=0, atol=1e-9)
    assert sum(g["values"]) == pytest.approx(doc["logit_diff"]["mean"], abs=1e-5)
    lo, hi, v = np.array(g["ci95_low"]), np.array(g["ci95_high"]), np.array(g["values"])
    assert (lo <= v + 1e-12).all() and (v <= hi + 1e-12).all() and (hi > lo).all()


def test_api_misuse_is_a_clear_error(tiny_gpt2_dir):
    result = ls.run_study("arena", str(tiny_gpt2_dir), device="cpu")
    with pytest.raises(ValueError, match="no head L1H7: this model has layers 0-1 and heads 0-3"):
        result.attention.heads([(1, 7)])
    with pytest.raises(ValueError, match="sign=0"):
        result.top_heads(3, sign=0)
    assert result.attention.heads([(1, 3)]).shape[0] == 1
    # Argument errors name the Python argument (the command line names its flag instead).
    with pytest.raises(ls.InputError, match=r"^top_k=0: must be at least 1$"):
        ls.run_study("arena", str(tiny_gpt2_dir), device="cpu", top_k=0)
    with pytest.raises(ls.InputError, match=r"^attention_prompt=8: must be between 0 and 7"):
        ls.run_study("arena", str(tiny_gpt2_dir), device="cpu", attention_prompt=8)
    with pytest.raises(ls.InputError, match="prompt set 'ioi:0': N must be at least 1"):
        ls.run_study("ioi:0", str(tiny_gpt2_dir), device="cpu")


def test_patching_options_are_checked_when_made_with_run_patchings_messages():
    """Each method's option object refuses a bad option when made, with the message run_patching
    gives (no model needed), and patch_options splits run_patching's flat names among them."""
    from logitscope.methods.patching.options import (AblationOptions, CircuitOptions, GridOptions, PatchOptions,
                                                     PathOptions, patch_options)
    from logitscope.results.circuit import Completeness

    with pytest.raises(ls.ArgumentError, match=r"positions='left': use one of"):
        GridOptions(positions="left")
    with pytest.raises(ls.ArgumentError, match=r"method='both': attribution patching estimates patching grids"):
        GridOptions(what="ablation", method="both")
    with pytest.raises(ls.ArgumentError, match=r"ablate='L9X': 'L9X' is not a component"):
        AblationOptions("L9X")
    with pytest.raises(ls.ArgumentError, match="freeze"):
        PathOptions("L0H0", freeze="some")
    with pytest.raises(ls.ArgumentError, match=r"circuit_greedy=2: sets a circuit's completeness check, and no circuit"):
        CircuitOptions(completeness=Completeness(greedy=2))
    with pytest.raises(ls.ArgumentError, match=r"what='none': nothing to compute"):
        PatchOptions(GridOptions("none"))
    with pytest.raises(ls.ArgumentError, match=r"ablation='half': use one of zero, mean, resample"):
        patch_options(ablation="half")
    got = patch_options(what="heads,ablation", ablate="L0H0", senders="L0H1", freeze="all", circuit="L1H0",
                        circuit_random=1, direction="noise", ablation="zero", metric="kl")
    assert got.grids.head_ablation and got.grids.grids == ("attn_head_out_all_pos",)
    assert got.ablations.sets(2, 4)["L0H0"][0].label == "L0H0"
    assert (got.paths.senders, got.paths.freeze, got.circuit.completeness.random) == ("L0H1", "all", 1)
    assert (got.direction, got.ablation, got.metric) == ("noise", "zero", "kl")


def test_edge_options_are_checked_when_made_and_equal_attributes_names(tiny_gpt2_dir):
    """methods.edges.attribute takes an EdgeOptions or its fields by name, with the same numbers;
    a bad option is refused when the options are made, before any forward pass."""
    import torch

    from logitscope.methods.edges import EdgeOptions, attribute

    with pytest.raises(ls.ArgumentError, match="unknown method"):
        EdgeOptions(method="eap-ig")
    with pytest.raises(ls.ArgumentError, match="top_n=0"):
        EdgeOptions(top_n=0)
    assert EdgeOptions(method="eap-ig-inputs").used_steps == 5 and EdgeOptions().spec.name == "logit-diff"
    lm = ls.load_model(str(tiny_gpt2_dir), device="cpu")
    named = attribute(lm, "ioi:4", method="eap", corrupt="abc", top_n=3, seed=2)
    whole = attribute(lm, "ioi:4", EdgeOptions(method="eap", corrupt="abc", top_n=3, seed=2))
    torch.testing.assert_close(whole.scores, named.scores, rtol=0, atol=0)
    doc = lambda r: {k: v for k, v in r.to_dict().items() if k not in ("timing", "created")}  # noqa: E731
    assert doc(whole) == doc(named) and doc(whole)["circuit"]
    with pytest.raises(TypeError, match="not both"):
        attribute(lm, "ioi:4", EdgeOptions(), method="eap")


def test_direction_and_ablation_are_checked_before_each_methods_own_options():
    """Of several bad options, run_patching reports the direction (then the ablation) first, as it
    always has, before a grid name or a circuit file is read."""
    from logitscope.errors import ArgumentError
    from logitscope.methods.patching.options import patch_options

    with pytest.raises(ArgumentError, match="direction"):
        patch_options(direction="sideways", what="no-such-grid", circuit="/no/such/file.circuit")
    with pytest.raises(ArgumentError, match="ablation"):
        patch_options(ablation="melt", what="no-such-grid")
