"""Path patching equals independent computations on hard random weights.

- One layer, direct paths (``freeze="all"``): sender → logits is linear in the sender's output, so
  it must equal the sender's direct-logit-attribution difference, (source − base) head results
  through TransformerLens's ``apply_ln_to_stack`` with the base run's cached final-norm scale.
- Two layers: every sender → logits and sender → receivers' q / k / v equals a hand-written
  TransformerLens 3.9 procedure (ARENA 1.4.1's steps on ``hook_z``, ``hook_mlp_out``, ``hook_q`` /
  ``hook_k`` / ``hook_v`` and ``ln_final.hook_scale``), in both freeze modes and both directions.

Tolerance 1e-4 absolute, as for activation patching (float32 through different arithmetic: TL's
processed weights against HF modules run from the patched layer on; observed ~1e-6); a path
patched at the wrong head, layer or input moves values by 1e-2 or more here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.api.patching import run_patching
from oracle import gpt2_tokenizer, make_hf_model, tl_model

ATOL = 1e-4


def _pairs(n: int = 4):
    arena = ls.builtin_prompts("arena")[:n]
    return [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=arena[i ^ 1].text) for i, p in enumerate(arena)]


def _tl_inputs(tl, pairs, direction):
    clean = tl.to_tokens([p.text for p in pairs], prepend_bos=tl.cfg.default_prepend_bos)
    corrupted = tl.to_tokens([p.corrupted for p in pairs], prepend_bos=tl.cfg.default_prepend_bos)
    correct = torch.tensor([tl.to_single_token(p.correct) for p in pairs])
    incorrect = torch.tensor([tl.to_single_token(p.incorrect) for p in pairs])
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return base, source, correct, incorrect


def _diff(logits, correct, incorrect):
    rows = torch.arange(len(correct))
    return (logits[rows, correct] - logits[rows, incorrect]).numpy()


def tl_path_patch(tl, base, source, correct, incorrect, senders, receiver, freeze, caches=None):
    """ARENA 1.4.1's path patching by hand on TransformerLens hooks: per-prompt logit differences
    (``caches``: the base and source runs' caches, if already made)."""
    L = tl.cfg.n_layers
    with torch.no_grad():
        base_cache, source_cache = caches or (tl.run_with_cache(base)[1], tl.run_with_cache(source)[1])

        def freeze_z(z, hook):
            z = base_cache[hook.name].clone()
            for layer, head in senders:
                if layer == hook.layer():
                    z[:, :, head] = source_cache[hook.name][:, :, head]
            return z

        hooks = [(f"blocks.{l}.attn.hook_z", freeze_z) for l in range(L)]
        if freeze == "all":
            hooks += [(f"blocks.{l}.hook_mlp_out", lambda x, hook: base_cache[hook.name]) for l in range(L)]
        if receiver == "logits":
            if freeze == "heads":
                return _diff(tl.run_with_hooks(base, fwd_hooks=hooks)[:, -1], correct, incorrect)
            final = f"blocks.{L - 1}.hook_resid_post"
            with tl.hooks(fwd_hooks=hooks):
                _, cache = tl.run_with_cache(base, names_filter=[final])
            x = cache[final][:, -1]
            if tl.cfg.normalization_type in ("LN", "LNPre"):
                x = x - x.mean(-1, keepdim=True)
            x = x / base_cache["ln_final.hook_scale"][:, -1]  # the scale frozen at the base run's
            if hasattr(tl.ln_final, "w"):  # not folded into W_U (post-norm families)
                x = x * tl.ln_final.w + getattr(tl.ln_final, "b", 0.0)
            logits = tl.unembed(x[:, None])[:, 0]
            cap = tl.cfg.output_logits_soft_cap
            if cap and cap > 0:
                logits = cap * torch.tanh(logits / cap)
            return _diff(logits, correct, incorrect)
        heads, point = receiver
        names = sorted({f"blocks.{l}.attn.hook_{point}" for l, _ in heads})
        with tl.hooks(fwd_hooks=hooks):
            _, step1 = tl.run_with_cache(base, names_filter=names)
        group = tl.cfg.n_heads // (tl.cfg.n_key_value_heads or tl.cfg.n_heads) if point != "q" else 1

        def put(act, hook):
            index = sorted({h // group for l, h in heads if l == hook.layer()})
            act = act.clone()
            act[:, :, index] = step1[hook.name][:, :, index]
            return act

        return _diff(tl.run_with_hooks(base, fwd_hooks=[(n, put) for n in names])[:, -1], correct, incorrect)


def _one_layer(family: str):
    hf = make_hf_model(family, size="tiny", seed=4)
    base = hf.base_model
    blocks = base.h if hasattr(base, "h") else base.layers
    del blocks[1:]
    hf.config.num_hidden_layers = 1
    if hasattr(hf.config, "n_layer"):
        hf.config.n_layer = 1
    if getattr(hf.config, "layer_types", None):
        hf.config.layer_types = hf.config.layer_types[:1]
    return hf


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_one_layer_path_to_the_logits_is_the_dla_difference(family):
    """Direct paths to the logits in a one-layer model: the patched minus the base logit difference
    is each sender head's DLA on the source run minus on the base run, both through the base run's
    final-norm scale, summed over the sender's heads."""
    hf = _one_layer(family)
    tl = tl_model(hf, family)
    pairs = _pairs()
    senders = ["L0H0", "L0H1", "L0H2", "L0H3", "L0H1+L0H3"]
    for direction in ("noise", "denoise"):
        res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="none", senders=senders, freeze="all",
                           direction=direction).paths
        base, source, correct, incorrect = _tl_inputs(tl, pairs, direction)
        with torch.no_grad():
            _, base_cache = tl.run_with_cache(base)
            _, source_cache = tl.run_with_cache(source)
            directions = tl.tokens_to_residual_directions(correct) - tl.tokens_to_residual_directions(incorrect)
            dla = {}
            for name, cache in (("base", base_cache), ("source", source_cache)):
                stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [heads, batch, d]
                stack = base_cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
                dla[name] = (stack * directions).sum(-1).numpy()  # [heads, batch]
        delta = dla["source"] - dla["base"]
        for i, label in enumerate(senders):
            heads = [int(h[-1]) for h in label.split("+")]
            want = res.base_logit_diff + delta[heads].sum(0)
            np.testing.assert_allclose(res.values[i, 0], want, rtol=0, atol=ATOL, err_msg=f"{direction} {label}")
        assert np.abs(delta).max() > 1e-2  # the patches do something
        np.testing.assert_allclose(res.change()[:, 0], delta[[0, 1, 2, 3]].mean(-1).tolist() + [delta[[1, 3]].sum(0).mean()],
                                   atol=ATOL)


RECEIVERS = ["logits", (((1, 0),), "q"), (((1, 1), (1, 3)), "k"), (((1, 2),), "v")]
RECEIVER_SPEC = "logits,L1H0:q,L1H1+L1H3:k,L1H2:v"


@pytest.mark.parametrize("family", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
@pytest.mark.parametrize("freeze", ["heads", "all"])
def test_paths_equal_a_transformerlens_procedure(family, freeze):
    hf = make_hf_model(family, size="tiny", seed=3)
    tl = tl_model(hf, family)
    pairs = _pairs()
    senders = ["all"]
    for direction in ("noise", "denoise") if freeze == "heads" else ("noise",):
        res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="none", senders=senders,
                           receivers=RECEIVER_SPEC, freeze=freeze, direction=direction).paths
        assert res.receivers == ("logits", "L1H0 q", "L1H1+L1H3 k", "L1H2 v")
        base, source, correct, incorrect = _tl_inputs(tl, pairs, direction)
        with torch.no_grad():
            caches = tl.run_with_cache(base)[1], tl.run_with_cache(source)[1]
        for i, label in enumerate(res.senders):
            sender = [(int(label[1]), int(label[3]))]
            for j, receiver in enumerate(RECEIVERS):
                got = res.values[i, j]
                if receiver != "logits" and sender[0][0] >= 1:
                    assert np.isnan(got).all()  # no path from a layer-1 head to a layer-1 input
                    continue
                want = tl_path_patch(tl, base, source, correct, incorrect, sender, receiver, freeze, caches)
                np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"{direction} {label} -> {receiver}")
        assert np.nanmax(np.abs(res.values - res.base_logit_diff)) > 1e-2


def test_a_sender_set_and_intervals(tmp_path):
    """A set of senders is patched together (one TL procedure with both heads); results.json holds
    the grid with its intervals, which bracket the means and use the study's resamples."""
    import json

    hf = make_hf_model("gpt2", size="tiny", seed=3)
    tl = tl_model(hf, "gpt2")
    pairs = _pairs()
    res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="none", senders="L0H1+L1H2,L0H3",
                       receivers="logits,L1H0:q", direction="noise", seed=7)
    base, source, correct, incorrect = _tl_inputs(tl, pairs, "noise")
    want = tl_path_patch(tl, base, source, correct, incorrect, [(0, 1), (1, 2)], "logits", "heads")
    np.testing.assert_allclose(res.paths.values[0, 0], want, atol=ATOL)
    want = tl_path_patch(tl, base, source, correct, incorrect, [(0, 1), (1, 2)], (((1, 0),), "q"), "heads")
    np.testing.assert_allclose(res.paths.values[0, 1], want, atol=ATOL)
    doc = json.loads(json.dumps(res.results_document()))
    paths = doc["patching"]["paths"]
    assert paths["senders"][0] == {"label": "L0H1+L1H2", "heads": ["L0H1", "L1H2"]}
    assert paths["receivers"] == ["logits", "L1H0 q"] and paths["base_run"] == "clean" and paths["freeze"] == "heads"
    for key in ("values", "change", "effect"):
        v = np.array(paths[key], dtype=float)
        prefix = "" if key == "values" else f"{key}_"
        lo, hi = (np.array(paths[f"{prefix}ci95_{s}"], dtype=float) for s in ("low", "high"))
        assert (lo <= v + 1e-9).all() and (v <= hi + 1e-9).all() and (hi > lo).all(), key
    assert paths["base_logit_diff"]["ci95_low"] == pytest.approx(doc["logit_diff"]["ci95_low"], abs=1e-5)
    gap = res.clean_logit_diff.mean() - res.corrupted_logit_diff.mean()
    np.testing.assert_allclose(paths["effect"], (res.paths.mean() - res.clean_logit_diff.mean()) / gap, atol=1e-9)


def test_bad_path_options_are_clear_errors():
    hf = make_hf_model("gpt2", size="tiny", seed=3)
    tok = gpt2_tokenizer()
    cases = [
        (dict(senders="L9H9"), r"ablate|senders='L9H9': L9H9 does not exist"),
        (dict(senders="L0H1,L1X"), r"senders='L0H1,L1X': 'L1X' is not a component"),
        (dict(senders="0_mlp_out"), r"path patching takes heads"),
        (dict(senders="L0H1", receivers="L1H0"), r"receivers='L1H0': 'L1H0': write logits, or heads and their input"),
        (dict(senders="L0H1", receivers="L1H0:z"), r"inputs q, k, v"),
        (dict(senders="L0H1", freeze="mlps"), r"freeze='mlps': use heads"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ls.ArgumentError, match=message):
            run_patching(_pairs(2), hf, tokenizer=tok, what="none", **kwargs)
