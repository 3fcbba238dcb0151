"""Model families beyond GPT-2 / Neo / NeoX / Llama / Mistral / Qwen2, each against TransformerLens 3.9.

The reference is ``tests/test_parity.py``'s (the seed's own calls on TL's cache: ``run_with_cache``,
``accumulated_resid``, ``decompose_resid``, ``apply_ln_to_stack``, ``tokens_to_residual_directions``),
widened where a family's convention needs it, each widening built from TL's own activations:

- Post norms (Gemma 2/3 ``ln1_post`` / ``ln2_post``, OLMo-2's post-norm ``ln1`` / ``ln2``): TL's
  ``stack_head_results`` is each head's ``z @ W_O`` *before* the norm, so it does not add up to
  ``attn_out``. The reference head is that vector through the norm with TL's cached scale at the
  answer position: ``(z_h W_O[h]) ⊙ w / hook_scale`` (what logitscope reports).
- Final logit soft-cap (Gemma 2): TL's logits are capped; the reference logit difference is that
  of the linear logits ``ln_final(resid) @ W_U + b_U``, and the capped one is checked beside it.
- Mixture of experts (Mixtral): each expert's share at the answer position is TL's own expert
  module applied to TL's MoE input there (``ln2.hook_normalized``), times TL's routing weight
  (``hook_expert_weights`` at ``hook_expert_indices``, renormalised over the chosen experts as
  TL's ``norm_topk_prob`` does); the shares are checked to add up to TL's ``mlp_out``.
- Unfolded final norm (TL forces fold_ln off for OLMo-2): ``apply_ln_to_stack`` then divides by
  the scale only, so the reference direction is ``ln_final.w ⊙ (W_U[A] - W_U[B])`` (what fold_ln
  would put into W_U).

Tolerances are test_parity's (1e-4 on logits, 1e-5 on patterns) and for the same reasons.
"""

from __future__ import annotations

import json

import einops
import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.cli import main
from oracle import make_hf_model, save_checkpoint, tl_default_flags, tl_model
from test_parity import MIXED_PROMPTS, Reference, assert_matches, token_ids

ATOL = 1e-4

NEW_FAMILIES = ["gemma", "gemma2", "gemma3", "qwen3", "phi3", "olmo2", "gptj", "mixtral"]


def _post_norms(tl, layer: int) -> tuple[str | None, str | None]:
    """Hook prefixes of the norms on layer ``layer``'s attention and MLP outputs, if any."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    if tl.cfg.use_normalization_before_and_after:
        return f"blocks.{layer}.ln1_post", f"blocks.{layer}.ln2_post"
    if tl.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        return f"blocks.{layer}.ln1", f"blocks.{layer}.ln2"
    return None, None


@torch.no_grad()
def family_reference(tl, ids: list[list[int]], correct: np.ndarray, incorrect: np.ndarray, *,
                     incl_mid: bool = True) -> tuple[Reference, dict[str, np.ndarray]]:
    """test_parity's reference, widened as the module docstring says; prompts batched by length so
    index -1 is each prompt's last token. Also returns extras: ``capped`` (the logit difference of
    TL's own logits), ``prenorm_heads`` (TL's stack_head_results as it is, before any post norm),
    for MoE models ``experts`` and ``expert_routing`` ([L, E, N])."""
    n, L = len(ids), tl.cfg.n_layers
    keys = ("ld", "capped", "pc", "pi", "direct", "lens", "lens_ln", "layers", "heads", "prenorm", "bu", "experts", "routing")
    out: dict[str, list] = {k: [None] * n for k in keys}
    labels: dict[str, list[str]] = {}
    pattern0 = None
    unfolded = tl.cfg.normalization_type in ("RMS", "LN")
    assert tl.cfg.normalization_type in ("RMS", "RMSPre", "LNPre"), tl.cfg.normalization_type
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    for idx in by_len.values():
        tokens = torch.tensor([ids[i] for i in idx])
        answers = torch.tensor([[correct[i], incorrect[i]] for i in idx])
        logits, cache = tl.run_with_cache(tokens)
        final = logits[:, -1, :]
        pair = final.gather(-1, answers)
        probs = torch.softmax(final, -1).gather(-1, answers)
        linear = tl.ln_final(cache["resid_post", -1])[:, -1] @ tl.W_U + tl.b_U  # before any soft-cap
        lin_pair = linear.gather(-1, answers)
        raw_dirs = tl.tokens_to_residual_directions(answers)
        raw_ldd = raw_dirs[:, 0] - raw_dirs[:, 1]
        ldd = raw_ldd * tl.ln_final.w if unfolded else raw_ldd  # the direction fold_ln would give

        def project(stack):
            scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
            return einops.einsum(scaled, ldd, "... batch d_model, batch d_model -> ... batch")

        direct = project(cache["resid_post", -1][:, -1, :])
        acc, labels["lens"] = cache.accumulated_resid(layer=-1, incl_mid=incl_mid, pos_slice=-1, return_labels=True)
        acc_ln = cache.accumulated_resid(layer=-1, incl_mid=incl_mid, pos_slice=-1, apply_ln=True)  # ln_final itself
        lens_ln = einops.einsum(acc_ln, raw_ldd, "... batch d_model, batch d_model -> ... batch")
        per_layer, labels["layers"] = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
        prenorm = einops.rearrange(cache.stack_head_results(layer=-1, pos_slice=-1), "(l h) b d -> l h b d", l=L)
        through = prenorm.clone()
        for layer in range(L):
            attn_post, _ = _post_norms(tl, layer)
            if attn_post is not None:
                w = tl.get_submodule(attn_post).w
                scale = cache[f"{attn_post}.hook_scale"][:, -1]  # [batch, 1]
                through[layer] = prenorm[layer] * w / scale
        lens, layers, heads, prenorm_heads = project(acc), project(per_layer), project(through), project(prenorm)
        experts, routing = _tl_experts(tl, cache, tokens.shape) if tl.cfg.num_experts else (None, None)
        if experts is not None:
            E = tl.cfg.num_experts
            experts = project(experts.flatten(0, 1)).unflatten(0, (L, E))  # [L, E, batch]
        b_u = tl.b_U[answers[:, 0]] - tl.b_U[answers[:, 1]]
        for j, i in enumerate(idx):
            out["ld"][i], out["capped"][i] = float(lin_pair[j, 0] - lin_pair[j, 1]), float(pair[j, 0] - pair[j, 1])
            out["pc"][i], out["pi"][i], out["direct"][i] = float(probs[j, 0]), float(probs[j, 1]), float(direct[j])
            out["lens"][i], out["layers"][i] = lens[:, j].numpy(), layers[:, j].numpy()
            out["lens_ln"][i] = lens_ln[:, j].numpy()
            out["heads"][i], out["prenorm"][i] = heads[:, :, j].numpy(), prenorm_heads[:, :, j].numpy()
            out["bu"][i] = float(b_u[j])
            if experts is not None:
                out["experts"][i], out["routing"][i] = experts[:, :, j].numpy(), routing[:, :, j].numpy()
            if i == 0:
                pattern0 = torch.stack([cache["pattern", layer][j] for layer in range(L)]).numpy()
    ref = Reference(
        logit_diff=np.array(out["ld"]),
        prob_correct=np.array(out["pc"]),
        prob_incorrect=np.array(out["pi"]),
        direct=np.array(out["direct"]),
        logit_lens=np.stack(out["lens"], -1),
        logit_lens_recomputed=np.stack(out["lens_ln"], -1),
        lens_labels=labels["lens"],
        layers=np.stack(out["layers"], -1),
        layer_labels=labels["layers"],
        heads=np.stack(out["heads"], -1),
        bias_b_u=np.array(out["bu"]),
        pattern0=pattern0,
    )
    extra = {"capped": np.array(out["capped"]), "prenorm_heads": np.stack(out["prenorm"], -1)}
    if tl.cfg.num_experts:
        extra["experts"], extra["expert_routing"] = np.stack(out["experts"], -1), np.stack(out["routing"], -1)
    return ref, extra


def _tl_experts(tl, cache, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's routing-weighted output at the last position, ``[L, E, batch, d_model]``, and
    its routing weight ``[L, E, batch]`` (zero where not chosen), from TL's modules and hooks."""
    batch, T = shape
    L, E, k = tl.cfg.n_layers, tl.cfg.num_experts, tl.cfg.experts_per_token
    shares = torch.zeros(L, E, batch, tl.cfg.d_model)
    routing = torch.zeros(L, E, batch)
    for layer in range(L):
        moe = tl.blocks[layer].mlp
        x = cache[f"blocks.{layer}.ln2.hook_normalized"][:, -1]  # the MoE's input
        probs = cache[f"blocks.{layer}.mlp.hook_expert_weights"].view(batch, T, E)[:, -1]
        chosen = cache[f"blocks.{layer}.mlp.hook_expert_indices"].view(batch, T, k)[:, -1]
        weights = probs.gather(-1, chosen)
        assert tl.cfg.norm_topk_prob
        weights = weights / weights.sum(-1, keepdim=True)
        for b in range(batch):
            for slot in range(k):
                e = int(chosen[b, slot])
                shares[layer, e, b] = moe.experts[e](x[b : b + 1])[0] * weights[b, slot]
                routing[layer, e, b] = weights[b, slot]
        torch.testing.assert_close(shares[layer].sum(0), cache["mlp_out", layer][:, -1], rtol=0, atol=1e-5)
    return shares, routing


_STUDIES: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """``studied(family)``: the family's tiny random model (seed 3), its saved folder and the study
    of prompts of different lengths padded together in batches of 3; built once per module."""

    def study(family: str):
        if family not in _STUDIES:
            hf = make_hf_model(family, size="tiny", seed=3)
            path = save_checkpoint(hf, tmp_path_factory.mktemp(family))
            prompts = MIXED_PROMPTS + ls.builtin_prompts("arena")[:2]
            _STUDIES[family] = hf, path, ls.run_study(prompts, str(path), device="cpu", batch_size=3)
        return _STUDIES[family]

    yield study
    _STUDIES.clear()


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_family_matches_transformerlens(family, studied, gpt2_tokenizer):
    hf, _, result = studied(family)
    assert result.family == family and len(set(result.n_tokens.tolist())) >= 3
    tl = tl_model(hf, family, **tl_default_flags(family))
    ref, extra = family_reference(tl, token_ids(result, gpt2_tokenizer), result.correct_ids, result.incorrect_ids,
                                  incl_mid=not result.parallel_attn_mlp)
    assert_matches(result, ref)
    assert result.prepend_bos == tl.cfg.default_prepend_bos
    np.testing.assert_allclose(result.decomposition_per_prompt.sum(0), result.logit_diff, rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.head_results.sum(1) + result.attn_bias, result.attn_out, rtol=0, atol=ATOL)
    assert np.abs(result.head_results).max() > 1e-2
    if result.logit_diff_softcapped is None:  # no cap: the linear logits are the model's own
        np.testing.assert_allclose(extra["capped"], ref.logit_diff, rtol=0, atol=ATOL)
    else:
        np.testing.assert_allclose(result.logit_diff_softcapped, extra["capped"], rtol=0, atol=ATOL)
    if tl.cfg.num_experts:
        np.testing.assert_allclose(result.experts, extra["experts"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(result.expert_routing, extra["expert_routing"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.experts.sum(1), result.mlp_out, rtol=0, atol=ATOL)
    else:
        assert result.experts is None
    if tl.cfg.use_normalization_before_and_after or family == "olmo2":
        # The post norm is visible: TL's own (pre-norm) stack_head_results is a different number.
        assert np.abs(result.head_results - extra["prenorm_heads"]).max() > 1e-1


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_gemma_conventions_are_exercised(family, studied):
    """On these weights each Gemma convention moves the numbers: the (1 + w) norms, the scaled
    embedding, few key/value heads, d_head * n_heads != d_model; for Gemma 2/3 also the post norms'
    scales, the attention scale and the sliding window (prompts longer than it); for Gemma 2 both
    soft-caps."""
    hf, path, result = studied(family)
    cfg = hf.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads and cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size
    lm = ls.load_model(str(path), device="cpu")
    from logitscope.engine.capture import Recorder

    rec = Recorder(lm)
    w = hf.model.norm.weight.detach()
    np.testing.assert_allclose(rec.gamma.numpy(), (1 + w).numpy())
    assert (w.abs() > 0.1).float().mean() > 0.5  # 1 + w is far from w and from 1
    # The embedding enters scaled by sqrt(d_model): the embed row is that of the scaled vector.
    assert abs(float(hf.model.embed_tokens.embed_scale) - cfg.hidden_size**0.5) < 1e-6
    if family == "gemma":
        assert all(p is None for p in rec.attn_post + rec.mlp_post)
        return
    assert result.n_tokens.max() > cfg.sliding_window
    assert cfg.query_pre_attn_scalar != cfg.head_dim
    post = rec.attn_post + rec.mlp_post
    assert all(p is not None for p in post) and all((p[0] - 1).abs().mean() > 0.1 for p in post)
    # The post norms' scales differ from 1 and from one position to the next, so freezing each at
    # its prompt's answer position matters.
    with torch.no_grad():
        seen = []
        h = hf.model.layers[0].post_attention_layernorm.register_forward_hook(
            lambda m, a, o: seen.append(a[0].pow(2).mean(-1).add(m.eps).sqrt()))
        hf(torch.tensor([[50256, 2215, 1757, 290, 5335]]))
        h.remove()
    assert (seen[0] - 1).abs().max() > 0.3 and seen[0].max() - seen[0].min() > 0.2
    if family == "gemma2":
        assert np.abs(result.logit_diff_softcapped - result.logit_diff).max() > 0.3  # the final cap bites
        uncapped = ls.run_study(MIXED_PROMPTS[:1], ls.wrap_model(_without_attn_softcap(hf), lm.tokenizer), device="cpu",
                                attention_heads="all")
        capped = ls.run_study(MIXED_PROMPTS[:1], lm, device="cpu", attention_heads="all")
        assert np.abs(uncapped.attention.patterns - capped.attention.patterns).max() > 1e-2  # so does the scores'
    else:
        assert result.logit_diff_softcapped is None


def _without_attn_softcap(hf):
    import copy

    other = copy.deepcopy(hf)
    for layer in other.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    return other


def test_gptj_conventions_are_exercised(studied):
    """GPT-J: parallel attention and MLP (no resid_mid, so no _mid lens points), an lm_head bias
    (final_bias, which TL's b_U carries), ln_1's bias through W_V (the value bias in attn_bias) and
    the MLP biases, each non-trivial on these weights; rotary on a quarter of d_head."""
    hf, _, result = studied("gptj")
    assert result.parallel_attn_mlp and not any(x.endswith("_mid") for x in result.logit_lens_labels)
    assert hf.config.rotary_dim < hf.config.n_embd // hf.config.n_head
    assert hf.lm_head.bias is not None
    for name in ("final_norm_bias", "attn_bias", "mlp_bias"):
        assert np.abs(getattr(result, name)).max() > 1e-2, name


def test_mixtral_experts_follow_the_routing(studied):
    """Per layer and prompt exactly k experts are routed to, with weights adding up to one; an
    expert not routed to writes nothing; routing differs between prompts and experts matter; and
    the numbers do not depend on which experts implementation transformers runs (the study calls
    the model's own)."""
    hf, path, result = studied("mixtral")
    k, E = hf.config.num_experts_per_tok, hf.config.num_local_experts
    routed = result.expert_routing > 0
    assert result.experts.shape == (result.n_layers, E, result.n_prompts)
    assert (routed.sum(1) == k).all()
    np.testing.assert_allclose(result.expert_routing.sum(1), 1.0, rtol=0, atol=1e-6)
    assert (result.experts[~routed] == 0).all() and np.abs(result.experts[routed]).min() > 0
    assert len({tuple(np.flatnonzero(routed[0, :, i])) for i in range(result.n_prompts)}) > 1
    assert np.abs(result.experts).max() > 1e-2
    lm = ls.load_model(str(path), device="cpu")
    assert lm.model.config._experts_implementation == "grouped_mm"  # transformers' default here
    for implementation in ("eager", "batched_mm"):
        lm.model.set_experts_implementation(implementation)
        other = ls.run_study(MIXED_PROMPTS + ls.builtin_prompts("arena")[:2], lm, batch_size=3)
        np.testing.assert_allclose(other.experts, result.experts, rtol=0, atol=1e-5, err_msg=implementation)
    doc = json.loads(json.dumps(result.to_dict()))
    block = doc["expert_attribution"]
    np.testing.assert_allclose(block["values"], result.experts.mean(-1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(block["frac_routed"], routed.mean(-1))
    assert np.all(np.array(block["ci95_low"]) <= np.array(block["values"]) + 1e-12)
    top = block["top"]["positive"][0]
    assert top["value"] == pytest.approx(result.experts.mean(-1).max()) and top["name"] == f"L{top['layer']}E{top['expert']}"
    assert "top experts: " + top["name"] in result.summary()


def test_mixtral_extra_host_syncs_are_the_experts_own(tmp_path):
    """Rerunning the chosen experts at the answer positions (k calls of the model's own experts
    module per layer) adds only the host syncs those calls make themselves: with transformers'
    default grouped_mm, one per call, as its own forward makes one per layer."""
    from logitscope.inputs import encode
    from logitscope.engine.capture import Recorder
    from test_hot_loop import SyncSpy

    hf = make_hf_model("mixtral", size="tiny", seed=3)
    lm = ls.load_model(str(save_checkpoint(hf, tmp_path)), device="cpu")
    enc = encode.encode_prompts(ls.builtin_prompts("arena"), lm, prepend_bos=True)
    ids = torch.tensor(enc.ids)
    pos = torch.full((ids.shape[0],), ids.shape[1] - 1)
    c, i = torch.from_numpy(enc.correct), torch.from_numpy(enc.incorrect)
    with torch.inference_mode():
        with SyncSpy() as plain:
            lm.adapter.base(lm.model)(input_ids=ids, use_cache=False)
        with Recorder(lm) as rec, SyncSpy() as ours:
            rec.run_batch(ids, pos, c, i)
    per_call = plain.syncs["aten.histc"] / hf.config.num_hidden_layers
    assert per_call == 1
    extra = hf.config.num_hidden_layers * hf.config.num_experts_per_tok * per_call
    assert sum(ours.syncs.values()) == sum(plain.syncs.values()) + extra, (ours.syncs, plain.syncs)


def test_bidirectional_gemma_is_refused(gpt2_tokenizer):
    """A Gemma 3 config with use_bidirectional_attention (EmbeddingGemma) attends to later tokens:
    the answer position and right padding would mean nothing, so it is a clear error."""
    hf = make_hf_model("gemma3", size="tiny", seed=1)
    hf.config.use_bidirectional_attention = True
    with pytest.raises(ls.ModelLoadError, match="use_bidirectional_attention=True attends to later tokens"):
        ls.run_study("arena", hf, tokenizer=gpt2_tokenizer)


def test_post_norm_with_biases_adds_up(tmp_path):
    """With attention biases (Gemma 3's attention_bias=True, which TL's converter drops), the
    output bias and value biases pass through the frozen post norm too: parts still add up."""
    hf = make_hf_model("gemma3", size="tiny", seed=5)
    hf.config.attention_bias = True
    biased = type(hf)(hf.config).eval()
    state = hf.state_dict()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in biased.named_parameters():
            param.copy_(state[name] if name in state else 0.5 * torch.randn(param.shape, generator=gen))
    path = save_checkpoint(biased, tmp_path / "biased")
    result = ls.run_study("ioi:24", str(path), device="cpu", batch_size=5)
    np.testing.assert_allclose(result.decomposition_per_prompt.sum(0), result.logit_diff, rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.head_results.sum(1) + result.attn_bias, result.attn_out, rtol=0, atol=ATOL)
    assert np.abs(result.attn_bias).max() > 1e-2
    # The bias term differs per prompt only through the post norm's per-prompt scale.
    assert np.ptp(result.attn_bias[0]) > 1e-3


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_cli_runs_on_a_local_checkpoint(family, tmp_path, capsys):
    path = save_checkpoint(make_hf_model(family, size="tiny", seed=4), tmp_path / family)
    out = tmp_path / "out"
    assert main(["run", "--model", str(path), "--prompts", "ioi:20", "--out", str(out), "--quiet", "--csv"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["family"] == family and doc["n_prompts"] == 20
    assert doc["norm"] == ("LayerNorm" if family == "gptj" else "RMSNorm")
    assert "pos_embed" not in doc["layer_attribution"]["labels"]
    assert doc["decomposition"]["max_abs_error"] < 1e-4
    html = (out / "report.html").read_text()
    assert ("RMSNorm (no centring)" in html) == (doc["norm"] == "RMSNorm") and f"{doc['n_prompts']}" in html
    assert ("expert_attribution" in doc) == (family == "mixtral")
    assert ('data-figure="expert_attribution"' in html) == (family == "mixtral")
    capped = family == "gemma2"
    assert ("logit_diff_softcapped" in doc) == capped and ("before the final soft-cap" in html) == capped
    if capped:
        assert len(doc["logit_diff_softcapped"]["per_prompt"]) == 20
    assert (out / "per_prompt.csv").read_text().count("\n") == 21


@pytest.mark.browser
def test_mixtral_report_renders_the_expert_heatmap_offline(studied, tmp_path):
    from test_report import FIGURES, VIEWS, render_dom, rendering_failures

    _, _, result = studied("mixtral")
    page = result.write_report(tmp_path / "report.html")
    dom, log = render_dom(page, tmp_path)
    assert "Uncaught" not in log, log[-2000:]
    assert rendering_failures(dom, FIGURES + ["expert_attribution"], VIEWS) == []


@pytest.mark.parametrize("family", ["gemma2", "mixtral"])
def test_soft_cap_and_experts_reopen(family, studied, tmp_path):
    """A saved Gemma 2 study (capped logit difference) and Mixtral study (per-expert attribution)
    reopen with those arrays, the same results.json and report."""
    from logitscope.report import report_html
    from test_results import _same

    _, _, result = studied(family)
    result.save(tmp_path / "run")
    again = ls.load_result(tmp_path / "run")
    _same(result, again)
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert json.loads(json.dumps(again.to_dict())) == doc
    assert report_html(again) == report_html(result)
    if family == "gemma2":
        assert again.logit_diff_softcapped is not None and "logit_diff_softcapped" in doc
    else:
        assert again.experts.shape == result.experts.shape and "expert_attribution" in doc
        assert again.top_experts() == result.top_experts()
