"""Activation patching and ablation equal TransformerLens 3.9's, on hard random weights.

The reference is ``transformer_lens.patching``'s ``get_act_patch_*`` functions (one full forward
pass per cell) with the clean answers' mean logit difference as the metric, and hooks on
``hook_z`` / ``hook_attn_out`` / ``hook_mlp_out`` for ablations, on the ``HookedTransformer``
TransformerLens builds from the same weights with its default processing (tests/oracle.py).

Tolerance 1e-4 absolute, as for the study: both sides compute in float32 through different
arithmetic (TL's processed weights and its own attention; HF modules, sdpa and our batched runs
from the patched layer on); observed differences are ~2e-6 on these weights, while a patch at the
wrong place, position or head moves cells by 1e-2 or more (patched values span ~0.3 logits here).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.api.patching import run_patching
from logitscope.inputs.ioi import generate_ioi_prompts
from oracle import FAMILIES, gpt2_tokenizer, make_hf_model, save_checkpoint, tl_model

ATOL = 1e-4

TL_GRIDS = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "attn_head_out_all_pos": "get_act_patch_attn_head_out_all_pos",
    "attn_head_q_all_pos": "get_act_patch_attn_head_q_all_pos",
    "attn_head_k_all_pos": "get_act_patch_attn_head_k_all_pos",
    "attn_head_v_all_pos": "get_act_patch_attn_head_v_all_pos",
    "attn_head_pattern_all_pos": "get_act_patch_attn_head_pattern_all_pos",
    "attn_head_out_by_pos": "get_act_patch_attn_head_out_by_pos",
}


def _tl_tokens(tl, texts):
    return tl.to_tokens(list(texts), prepend_bos=tl.cfg.default_prepend_bos)


def _metric(correct, incorrect):
    rows = torch.arange(len(correct))

    def metric(logits):
        last = logits[:, -1]
        return (last[rows, correct] - last[rows, incorrect]).mean()

    return metric


def _tl_grid(tl, name: str, base, cache, metric, positions) -> np.ndarray:
    """One TransformerLens grid; with ``positions``, a per-position grid only at those positions (the
    same ``get_act_patch_*`` function and cells, given TL's own ``index_df`` of the cells wanted)."""
    import pandas as pd
    from transformer_lens import patching

    fn = getattr(patching, TL_GRIDS[name])
    axes = fn.keywords["index_axis_names"]
    if positions is None or "pos" not in axes:
        return fn(tl, base, cache, metric).numpy()
    ranges = {"layer": range(tl.cfg.n_layers), "pos": [int(p) for p in positions], "head": range(tl.cfg.n_heads)}
    cells = pd.DataFrame(list(itertools.product(*(ranges[a] for a in axes))), columns=list(axes))
    flat = fn(tl, base, cache, metric, index_axis_names=None, index_df=cells)
    return flat.numpy().reshape([len(ranges[a]) for a in axes])


def tl_grids(tl, prompts, direction: str, names, positions=None) -> tuple[dict[str, np.ndarray], float, float]:
    """TransformerLens's grids for prompts of one length: ``(grids, clean mean, corrupted mean)``;
    per-position grids at every position, or only at ``positions`` (in that order) when given."""
    clean = _tl_tokens(tl, [p.text for p in prompts])
    corrupted = _tl_tokens(tl, [p.corrupted for p in prompts])
    correct = torch.tensor([tl.to_single_token(p.correct) for p in prompts])
    incorrect = torch.tensor([tl.to_single_token(p.incorrect) for p in prompts])
    metric = _metric(correct, incorrect)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, cache = tl.run_with_cache(source)
        out = {}
        for name in names:
            with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
                out[name] = _tl_grid(tl, name, base, cache, metric, positions)
        return out, float(metric(tl(clean))), float(metric(tl(corrupted)))


@pytest.fixture(scope="module")
def models():
    made = {}

    def get(family):
        if family not in made:
            hf = make_hf_model(family, size="tiny", seed=3, n_ctx=64)
            made[family] = (hf, tl_model(hf, family))
        return made[family]

    return get


# Every grid on four families whose hook points differ most (GPT-2: fused q/k/v, learned positions;
# GPT-Neo: attention outside the AttentionInterface; OLMo-2: q/k before a joint norm, post norms;
# Gemma 3: post norms, sliding and global layers, one kv head); the per-head and residual grids on
# every family. Each TransformerLens cell is a full forward pass, so the exhaustive runs are slow.
EVERY_GRID = [pytest.param("gpt2"), *(pytest.param(f, marks=pytest.mark.slow) for f in ("gpt_neo", "olmo2", "gemma3"))]
PER_FAMILY = ["attn_head_out_all_pos", "attn_head_q_all_pos", "attn_head_k_all_pos", "attn_head_v_all_pos",
              "attn_head_pattern_all_pos", "resid_pre"]


@pytest.mark.parametrize("family", EVERY_GRID)
def test_every_grid_equals_transformerlens_on_the_seed_pairs(family, models):
    hf, tl = models(family)
    # Beyond GPT-2, every grid but attn_head_out_by_pos: it patches the same hook point (z) as
    # attn_head_out_all_pos, and its L x T x H TransformerLens cells (each a full forward pass) would
    # be most of the suite's time for these families.
    what = "all" if family == "gpt2" else [n for n in TL_GRIDS if n != "attn_head_out_by_pos"]
    # Four of the seed's eight pairs (each with its name-swapped partner): TL's cost per cell is a
    # forward pass whose unembedding (50,257 tokens at every position) grows with the batch, and
    # the means of four pairs move by a fourth of any one pair's error (eight: an eighth).
    res = run_patching(ls.builtin_prompts("seed")[:4], hf, tokenizer=gpt2_tokenizer(), what=what, positions="index")
    names = [n for n in TL_GRIDS if not (n == "resid_mid" and res.study.parallel_attn_mlp)
             and (family == "gpt2" or n != "attn_head_out_by_pos")]
    assert sorted(res.grids) == sorted(names)
    ref, clean, corrupted = tl_grids(tl, res_prompts(res), "denoise", names)
    np.testing.assert_allclose(res.clean_logit_diff.mean(), clean, atol=ATOL)
    np.testing.assert_allclose(res.corrupted_logit_diff.mean(), corrupted, atol=ATOL)
    for name in names:
        assert res.mean(name).shape == ref[name].shape, name
        np.testing.assert_allclose(res.mean(name), ref[name], rtol=0, atol=ATOL, err_msg=name)
        assert np.abs(ref[name] - corrupted).max() > 1e-2, f"{name}: the patches must do something"
    # The normalised metric on means, as TransformerLens's demos compute it.
    want = (ref["attn_head_out_all_pos"] - corrupted) / (clean - corrupted)
    np.testing.assert_allclose(res.normalised("attn_head_out_all_pos"), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_and_residual_grids_equal_transformerlens(family, models):
    hf, tl = models(family)
    arena = ls.builtin_prompts("arena")[:4]
    pairs = [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=arena[i ^ 1].text) for i, p in enumerate(arena)]
    res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what=PER_FAMILY, positions="index")
    ref, clean, corrupted = tl_grids(tl, pairs, "denoise", PER_FAMILY)
    np.testing.assert_allclose(res.corrupted_logit_diff.mean(), corrupted, atol=ATOL)
    for name in PER_FAMILY:
        np.testing.assert_allclose(res.mean(name), ref[name], rtol=0, atol=ATOL, err_msg=name)
    if res.study.parallel_attn_mlp:
        assert "resid_mid" not in res.grids
        res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="resid")
        assert "no resid_mid" in " ".join(res.notes)


def res_prompts(res):
    return [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=c) for p, c in zip(res.study.prompts, res.corrupted_prompts)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_noising_equals_transformerlens(family, models):
    hf, tl = models(family)
    names = ["resid_pre", "attn_head_out_all_pos", "attn_head_pattern_all_pos", "attn_head_out_by_pos"]
    res = run_patching(ls.builtin_prompts("arena")[:4], hf, tokenizer=gpt2_tokenizer(), what=names, direction="noise",
                       positions="index")  # four pairs, as test_every_grid_equals_transformerlens_on_the_seed_pairs
    ref, clean, corrupted = tl_grids(tl, res_prompts(res), "noise", names)
    for name in names:
        np.testing.assert_allclose(res.mean(name), ref[name], rtol=0, atol=ATOL, err_msg=name)
    assert res.to_dict()["direction"] == "noise"


def _by_group(prompts):
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((p.meta["template"], p.meta["order"]), []).append(i)
    return groups


@pytest.mark.parametrize("family", FAMILIES)
def test_abc_pairs_equal_transformerlens_on_every_family(family, models):
    """The IOI paper's ABC counterparts (not only name swaps), every family: each head's patch at
    every position, against TransformerLens per template (one template: one length)."""
    hf, tl = models(family)
    tok = gpt2_tokenizer()
    res = run_patching(generate_ioi_prompts(4, seed=7, tokenizer=tok, templates=[6]), hf, tokenizer=tok,
                       what=["attn_head_out_all_pos"], corrupt="abc", seed=7)
    pairs = res_prompts(res)
    total = 0.0
    for idx in _by_group(res.study.prompts).values():
        ref, _, corrupted = tl_grids(tl, [pairs[i] for i in idx], "denoise", ["attn_head_out_all_pos"])
        assert np.abs(ref["attn_head_out_all_pos"] - corrupted).max() > 1e-3, "the patches must do something"
        total = total + len(idx) / res.n_prompts * ref["attn_head_out_all_pos"]
    np.testing.assert_allclose(res.mean("attn_head_out_all_pos"), total, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_abc_pairs_by_named_position_equal_transformerlens(family, models):
    """IOI prompts of several templates (so several lengths) with the IOI paper's ABC counterparts;
    per-position grids by named position (IO, S1, S1+1, S2, END). TransformerLens runs each
    template's prompts (one length, fixed positions) separately, its per-position grids only at that
    template's five named positions (the cells compared; each a full forward pass); the overall mean
    weights them."""
    hf, tl = models(family)
    tok = gpt2_tokenizer()
    prompts = generate_ioi_prompts(8, seed=5, tokenizer=tok, templates=[6, 14])
    names = ["attn_head_out_all_pos", "resid_pre", "attn_head_out_by_pos"]
    res = run_patching(prompts, hf, tokenizer=tok, what=names, corrupt="abc", seed=5, batch_size=5)
    assert res.positions.labels == ["IO", "S1", "S1+1", "S2", "END"]
    assert len(set(res.study.n_tokens.tolist())) >= 2
    pairs = res_prompts(res)
    total = {n: 0.0 for n in names}
    for (template, order), idx in _by_group(res.study.prompts).items():
        group = [pairs[i] for i in idx]
        at = res.positions.at[:, idx[0]]
        assert (res.positions.at[:, idx] == at[:, None]).all()  # one template: the same positions
        ref, _, _ = tl_grids(tl, group, "denoise", names, positions=at)
        w = len(idx) / res.n_prompts
        for name in names:
            total[name] = total[name] + w * ref[name]
    for name in names:
        np.testing.assert_allclose(res.mean(name), total[name], rtol=0, atol=ATOL, err_msg=name)


def test_abc_counterparts_are_the_papers():
    tok = gpt2_tokenizer()
    prompts = generate_ioi_prompts(40, seed=2, tokenizer=tok)
    from logitscope.inputs.counterparts import with_counterparts
    from logitscope.inputs.ioi import ioi_word_lists

    abc = with_counterparts(prompts, "abc", seed=2, tokenizer=tok)
    flip = with_counterparts(prompts, "flip", seed=2, tokenizer=tok)
    names = set(ioi_word_lists(tok)["names"])
    for p, a, f in zip(prompts, abc, flip):
        io, s = p.meta["io"], p.meta["s"]
        words = [w.strip(".,") for w in a.corrupted.split()]
        used = [w for w in words if w in names]
        assert len(used) == 3 and len(set(used)) == 3 and io not in used and s not in used, a.corrupted
        # Everything but the three names is the prompt's own text.
        assert [w for w in words if w not in names] == [w.strip(".,") for w in p.text.split() if w.strip(".,") not in (io, s)]
        count = lambda name, text: len(re.findall(rf"(?<!\w){name}(?!\w)", text))  # noqa: E731
        assert count(io, f.corrupted) == 2 and count(s, f.corrupted) == 1
        head, _, tail = p.text.rpartition(s)  # flip: the second subject becomes the indirect object
        assert f.corrupted == head + io + tail
    assert with_counterparts(prompts, "abc", seed=2, tokenizer=tok) == abc  # deterministic for a seed


# ---------------------------------------------------------------------------------------------- ablation
def _tl_ablated(tl, prompts, hooks_for):
    clean = _tl_tokens(tl, [p.text for p in prompts])
    correct = torch.tensor([tl.to_single_token(p.correct) for p in prompts])
    incorrect = torch.tensor([tl.to_single_token(p.incorrect) for p in prompts])
    with torch.no_grad():
        return float(_metric(correct, incorrect)(tl.run_with_hooks(clean, fwd_hooks=hooks_for(prompts))))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gemma2"])
@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablation_equals_transformerlens_hooks(family, kind, models):
    """A named set (heads of two layers and a layer's MLP output) and the single-head grid, on the
    seed pairs, against hooks on TransformerLens's hook_z / hook_mlp_out: zero, the mean over the
    counterparts (the seed's prompts share a length: one group), and the counterpart's value."""
    hf, tl = models(family)
    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="ablation", ablate="L0H1,L1H2,L1H3,0_mlp_out",
                       ablation=kind)
    prompts = res_prompts(res)
    corrupted = _tl_tokens(tl, [p.corrupted for p in prompts])
    with torch.no_grad():
        _, cache = tl.run_with_cache(corrupted)

    def value(name):
        act = cache[name]
        if kind == "zero":
            return torch.zeros_like(act)
        if kind == "mean":
            return act.mean(0, keepdim=True).expand_as(act)
        return act

    def heads_hook(heads):
        def hook(z, hook):
            z = z.clone()
            z[:, :, heads] = value(hook.name)[:, :, heads]
            return z
        return hook

    def out_hook(act, hook):
        return value(hook.name)

    def set_hooks(_):
        return [("blocks.0.attn.hook_z", heads_hook([1])), ("blocks.1.attn.hook_z", heads_hook([2, 3])),
                ("blocks.0.hook_mlp_out", out_hook)]

    (name,) = res.ablated
    np.testing.assert_allclose(res.ablated[name].mean(), _tl_ablated(tl, prompts, set_hooks), atol=ATOL)
    assert res.ablation_sets[name] == ("L0H1", "L1H2", "L1H3", "0_mlp_out")
    grid = res.ablated_heads.mean(-1)
    for layer in range(2):
        for head in range(4):
            want = _tl_ablated(tl, prompts, lambda _: [(f"blocks.{layer}.attn.hook_z", heads_hook([head]))])
            np.testing.assert_allclose(grid[layer, head], want, atol=ATOL, err_msg=f"L{layer}H{head}")
    assert np.abs(grid - res.clean_logit_diff.mean()).max() > 1e-2
    if kind == "resample":  # resampling from the counterpart is noising patching
        noised = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="heads", direction="noise")
        np.testing.assert_allclose(grid, noised.mean("attn_head_out_all_pos"), atol=1e-5)


def test_mean_ablation_is_per_template(models):
    """On ABC pairs of two templates, each prompt's head is replaced by its own template's mean over
    the counterparts (the IOI paper's knockouts), computed here by hand with TransformerLens."""
    hf, tl = models("gpt2")
    tok = gpt2_tokenizer()
    prompts = generate_ioi_prompts(10, seed=1, tokenizer=tok, templates=[2, 9])
    res = run_patching(prompts, hf, tokenizer=tok, what="none", ablate="L1H0", ablation="mean", seed=1, batch_size=3)
    pairs = res_prompts(res)
    total = 0.0
    for idx in _by_group(res.study.prompts).values():
        group = [pairs[i] for i in idx]
        with torch.no_grad():
            _, cache = tl.run_with_cache(_tl_tokens(tl, [p.corrupted for p in group]))
        mean = cache["blocks.1.attn.hook_z"].mean(0, keepdim=True)

        def hooks(_, mean=mean):
            def hook(z, hook):
                z = z.clone()
                z[:, :, 0] = mean[:, :, 0]
                return z
            return [("blocks.1.attn.hook_z", hook)]

        total += len(idx) / res.n_prompts * _tl_ablated(tl, group, hooks)
    np.testing.assert_allclose(res.ablated["L1H0"].mean(), total, atol=ATOL)


# ---------------------------------------------------------------------------------------------- sanity
@pytest.mark.filterwarnings("ignore:every corrupted prompt is its clean prompt:logitscope.PromptWarning")
def test_patching_a_prompt_into_itself_changes_nothing(tmp_path, models):
    hf, _ = models("llama")
    rows = [{"prompt": p.text, "correct": p.correct, "incorrect": p.incorrect, "corrupted": p.text}
            for p in ls.builtin_prompts("arena")[:4]]
    path = tmp_path / "same.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_patching(str(path), hf, tokenizer=gpt2_tokenizer(), what="all", ablate="L0H0", ablation="resample")
    clean = res.clean_logit_diff
    np.testing.assert_allclose(res.corrupted_logit_diff, clean, atol=1e-5)
    for name, values in res.grids.items():
        np.testing.assert_allclose(values, np.broadcast_to(clean, values.shape), atol=1e-5, err_msg=name)
    np.testing.assert_allclose(res.ablated["L0H0"], clean, atol=1e-5)


def test_resid_pre_of_the_only_differing_token_restores_the_clean_run(models):
    """The seed's pairs differ in one token (the second subject). Patching resid_pre of layer 0 at
    that position makes the corrupted run the clean one (normalised 1); at any other position of
    layer 0 it changes nothing (normalised 0)."""
    hf, _ = models("gpt2")
    tok = gpt2_tokenizer()
    res = run_patching("seed", hf, tokenizer=tok, what="resid_pre")
    assert res.positions.mode == "index"
    for i, p in enumerate(res.study.prompts):
        clean, corrupted = (tok.encode(t) for t in (p.text, res.corrupted_prompts[i]))
        assert [j + 1 for j, (a, b) in enumerate(zip(clean, corrupted)) if a != b] == [11]  # BOS first
    norm = res.normalised("resid_pre")
    np.testing.assert_allclose(norm[0, 11], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(norm[0], 11), 0.0, atol=1e-5)
    np.testing.assert_allclose(res.grids["resid_pre"][0, 11], res.clean_logit_diff, atol=1e-5)
    assert np.abs(norm[1] - norm[1].mean()).max() > 1e-2  # later layers: the position matters less sharply


def test_intervals_bracket_the_means_and_use_the_study_resamples(models):
    hf, _ = models("gpt2")
    tok = gpt2_tokenizer()
    res = run_patching("ioi:40", hf, tokenizer=tok, what="heads,layers", ablate="L1", seed=3)
    doc = json.loads(json.dumps(res.results_document()))
    pt = doc["patching"]
    for name in ("attn_head_out_all_pos", "attn_out", "mlp_out"):
        v, lo, hi = (np.array(pt[name][k], dtype=float) for k in ("values", "ci95_low", "ci95_high"))
        assert (lo <= v + 1e-12).all() and (v <= hi + 1e-12).all() and (hi - lo > 0).all(), name
        nv, nlo, nhi = (np.array(pt[name][k], dtype=float) for k in ("normalised", "normalised_ci95_low", "normalised_ci95_high"))
        assert (nlo <= nv + 1e-9).all() and (nv <= nhi + 1e-9).all(), name
    # The clean logit difference's interval is the study's own (same seed, same resamples).
    assert pt["clean_logit_diff"]["ci95_low"] == pytest.approx(doc["logit_diff"]["ci95_low"], abs=1e-5)
    assert pt["clean_logit_diff"]["ci95_high"] == pytest.approx(doc["logit_diff"]["ci95_high"], abs=1e-5)
    assert pt["positions"]["labels"] == ["IO", "S1", "S1+1", "S2", "END"]
    assert pt["attn_out"]["position_labels"] == ["IO", "S1", "S1+1", "S2", "END"]
    (ab,) = pt["ablation"]["sets"]
    assert ab["components"] == [f"L1H{h}" for h in range(4)] and ab["after"]["ci95_low"] <= ab["after"]["mean"]
    assert all(row["corrupted"] for row in doc["prompts"])


def test_the_model_is_left_as_it_was(models):
    hf, _ = models("qwen2")
    calls = []
    handle = hf.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))

    def hooks():  # every hook but transformers' own output capturing (installed for output_attentions)
        def own(d):
            return [h for h in d.values() if "output_capuring_hook" not in getattr(h, "__qualname__", "")]
        return {name: (own(m._forward_hooks), own(m._forward_pre_hooks)) for name, m in hf.named_modules()}

    before, impl, config, training = hooks(), hf.config._attn_implementation, hf.config.to_dict(), hf.training
    run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="qkv,heads_by_pos,resid", ablate="L0H1")
    assert hf.config._attn_implementation == impl and hf.config.to_dict() == config and hf.training == training
    assert hooks() == before  # the user's hook is still there, and none of ours is left
    n = len(calls)
    hf(torch.tensor([[1, 2, 3]]))
    assert len(calls) == n + 1
    handle.remove()


# ---------------------------------------------------------------------------------------------- bad pairings
def test_bad_pairings_are_clear_errors(tmp_path, models):
    hf, _ = models("gpt2")
    tok = gpt2_tokenizer()
    p = ls.Prompt("When Mary and John went to the store, John gave a drink to", " Mary", " John")
    with pytest.raises(ls.InputError, match=r"prompt 0 .*has no counterpart for patching.*\"corrupted\""):
        run_patching([p], hf, tokenizer=tok)
    longer = ls.Prompt(p.text, p.correct, p.incorrect, corrupted="When Mary and John went to the big store, Mary gave a drink to")
    with pytest.raises(ls.InputError, match=r"the corrupted prompt .* is 16 tokens \(with BOS\) but the prompt .* is 15"):
        run_patching([longer], hf, tokenizer=tok)
    mixed = [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=p.text.replace("John gave", "Mary gave")),
             ls.Prompt("The capital of France is", " Paris", " London", corrupted="The capital of Italy is")]
    with pytest.raises(ls.InputError, match="an index is not the same position in every prompt"):
        run_patching(mixed, hf, tokenizer=tok, what="resid", positions="index")
    with pytest.raises(ls.InputError, match="named positions .* exist only for IOI prompts"):
        run_patching(mixed, hf, tokenizer=tok, what="resid", positions="named")
    res = run_patching(mixed, hf, tokenizer=tok, what="resid")  # mixed lengths, no names: END only, said
    assert res.positions.labels == ["END"] and "differ in length" in res.notes[0]
    with pytest.raises(ls.InputError, match="is for IOI prompts"):
        run_patching("seed", hf, tokenizer=tok, corrupt="abc")
    with pytest.raises(ls.ArgumentError, match=r"what='everything': use heads, heads_by_pos"):
        run_patching("seed", hf, tokenizer=tok, what="everything")
    with pytest.raises(ls.ArgumentError, match=r"ablate='L7H0': L7H0 does not exist"):
        run_patching("seed", hf, tokenizer=tok, ablate="L7H0")
    with pytest.raises(ls.ArgumentError, match=r"ablate='L9X': 'L9X' is not a component"):
        run_patching("seed", hf, tokenizer=tok, ablate="L9X")
    rows = tmp_path / "bad.jsonl"
    rows.write_text(json.dumps({"prompt": p.text, "correct": " Mary", "incorrect": " John", "corrupted": 3}) + "\n")
    with pytest.raises(ls.InputError, match=r"bad.jsonl:1: field 'corrupted' must be a non-empty string"):
        run_patching(str(rows), hf, tokenizer=tok)


def test_everything_at_resid_pre_of_layer_0_reproduces_the_clean_run(models):
    from logitscope.models.load import wrap_model
    from logitscope.engine.patched import Engine

    hf, _ = models("mistral")
    engine = Engine(wrap_model(hf, gpt2_tokenizer()))
    clean, corrupted = torch.randint(0, 5000, (3, 20)), torch.randint(0, 5000, (3, 20))
    end, c, i = torch.full((3,), 19), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    a = engine.record(clean, end, c, i)
    b = engine.record(corrupted, end, c, i, keep_kv=True)
    out = engine.patched(b, 0, groups=1, hooks={}, end=end, correct=c, incorrect=i, edit_input=lambda h: a.resid_pre[0])
    np.testing.assert_allclose(out.numpy(), a.value.numpy(), atol=1e-5)
    assert np.abs(a.value.numpy() - b.value.numpy()).max() > 1e-2
    # Running only a suffix of the positions, on the base run's keys and values, changes nothing either.
    for layer in range(2):
        again = engine.patched(b, layer, groups=2, hooks={}, end=end, correct=c, incorrect=i, start=9)
        np.testing.assert_allclose(again.numpy(), b.value.repeat(2).numpy(), atol=1e-5)


def test_patch_command_end_to_end(tmp_path, capsys):
    from logitscope.cli import main

    model = save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path / "tiny")
    out = tmp_path / "out"
    assert main(["patch", "--model", str(model), "--prompts", "ioi:24", "--out", str(out), "--quiet",
                 "--what", "heads,layers,ablation", "--ablate", "L1H0,L1H2"]) == 0
    text = capsys.readouterr().out
    assert "patching (denoise, 24 pairs)" in text and "ablating L1H0,L1H2 (mean)" in text
    doc = json.loads((out / "results.json").read_text())
    pt = doc["patching"]
    assert np.array(pt["attn_head_out_all_pos"]["values"]).shape == (2, 4)
    assert np.array(pt["attn_out"]["values"]).shape == (2, 5) and pt["attn_out"]["position_labels"][-1] == "END"
    assert np.array(pt["ablation"]["heads"]["values"]).shape == (2, 4)
    arrays = np.load(out / "patching_per_prompt.npz")
    np.testing.assert_allclose(arrays["grid_attn_head_out_all_pos"].mean(-1), pt["attn_head_out_all_pos"]["values"], atol=1e-5)
    np.testing.assert_allclose(arrays["clean_logit_diff"], [p["logit_diff"] for p in doc["prompts"]], atol=1e-4)
    html = (out / "report.html").read_text()
    assert 'id="patching"' in html and 'data-figure="patch_attn_head_out_all_pos"' in html
    assert 'data-figure="ablation_heads"' in html


def test_patch_command_bad_pairing_writes_nothing(tmp_path, capsys):
    from logitscope.cli import main

    model = save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path / "tiny")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("earlier")
    capsys.readouterr()  # transformers' own "Writing model shards" bar from save_checkpoint, when its bars are on
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"prompt": "When Mary and John went to the store, John gave a drink to",
                                "correct": " Mary", "incorrect": " John",
                                "corrupted": "When Mary and John went to the big store, Mary gave a drink to"}) + "\n")
    assert main(["patch", "--model", str(model), "--prompts", str(rows), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("logitscope: error: line 1: the corrupted prompt") and "same number of tokens" in err
    assert (out / "results.json").read_text() == "earlier" and sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert main(["patch", "--model", str(model), "--prompts", "seed", "--out", str(out), "--what", "heads,oops"]) == 2
    assert "--what oops: use heads" in capsys.readouterr().err


@pytest.mark.browser
def test_patching_report_renders_offline_in_chromium(tmp_path, models):
    from test_report import FIGURES, VIEWS, render_dom, rendering_failures

    hf, _ = models("gpt2")
    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="heads,heads_by_pos,resid,ablation",
                       ablate="L0H1,L1H2", positions="index")
    page = res.write_report(tmp_path / "report.html")
    dom, log = render_dom(page, tmp_path)
    assert "Uncaught" not in log, log[-2000:]
    patch_figures = [f"patch_{name}" for name in res.grids] + ["ablation_heads"]
    assert rendering_failures(dom, FIGURES + patch_figures, VIEWS) == []
    assert "Causal checks: activation patching and ablation" in dom and "L0H1, L1H2" in dom


def test_a_saved_patch_run_reopens_as_the_same_result(tmp_path, models):
    """load_result on a patch folder gives back the PatchingResult: every per-prompt array as it was
    computed, the same results.json, summary and report."""
    from logitscope.report.page import report_html

    hf, _ = models("gpt2")
    res = run_patching("ioi:20", hf, tokenizer=gpt2_tokenizer(), what="heads,resid,ablation", ablate="L1H0", seed=2,
                       method="both")
    assert res.agreement  # attribution estimates beside the exact grids reopen too
    res.save(tmp_path / "run")
    again = ls.load_result(tmp_path / "run")
    assert isinstance(again, ls.PatchingResult) and again.method == "both"
    for name, values in res.grids.items():
        np.testing.assert_array_equal(again.grids[name], values, err_msg=name)
    np.testing.assert_array_equal(again.ablated_heads, res.ablated_heads)
    np.testing.assert_array_equal(again.clean_logit_diff, res.clean_logit_diff)
    assert [p.corrupted for p in again.study.prompts] == res.corrupted_prompts
    assert json.loads(json.dumps(again.results_document())) == json.loads((tmp_path / "run" / "results.json").read_text())
    assert again.summary() == res.summary()
    assert report_html(again.study, again) == report_html(res.study, res)
    assert isinstance(ls.load_result(tmp_path / "run" / "results.json"), ls.PatchingResult)


# ---------------------------------------------------------------------------------------------- counterparts by identity
def test_a_shuffled_or_sliced_builtin_set_keeps_each_prompts_partner(models):
    """Each seed/arena prompt's counterpart is its own name-swapped partner wherever it sits in the
    list: the per-prompt grids of a shuffle (and a slice) are the whole set's, re-ordered. Batches
    hold other prompts, so float32 sums differ by ~1e-6; a wrong partner moves cells by >1e-2."""
    import random

    hf, _ = models("gpt2")
    tok = gpt2_tokenizer()
    full = ls.builtin_prompts("arena")
    base = run_patching(full, hf, tokenizer=tok, what="heads")
    perm = random.Random(5).sample(range(len(full)), len(full))
    for rows in (perm, [1, 2, 3, 4]):
        res = run_patching([full[i] for i in rows], hf, tokenizer=tok, what="heads")
        assert res.corrupted_prompts == [base.corrupted_prompts[i] for i in rows]
        np.testing.assert_allclose(res.corrupted_logit_diff, base.corrupted_logit_diff[rows], atol=1e-5)
        for name, values in base.grids.items():
            np.testing.assert_allclose(res.grids[name], values[..., rows], rtol=0, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------------------- a pair that is its own counterpart
def test_counterparts_equal_to_their_prompts_warn_and_never_print_inf(tmp_path, models):
    hf, _ = models("gpt2")
    tok = gpt2_tokenizer()
    arena = ls.builtin_prompts("arena")[:4]
    same = [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=p.text) for p in arena]
    with pytest.warns(ls.PromptWarning, match=r"every corrupted prompt is its clean prompt.*clean − corrupted = 0.*"
                      r"normalised metric .* is undefined") as caught:
        res = run_patching(same, hf, tokenizer=tok, what="heads")
    assert all(w.filename == __file__ for w in caught)  # the user's line, not the library's
    assert res.normalised_undefined
    assert np.isnan(res.normalised("attn_head_out_all_pos")).all()
    summary = res.summary()
    assert not re.search(r"\binf\b", summary) and "attn_head_out_all_pos: normalised effect undefined (clean − corrupted = 0)" in summary
    assert any("normalised metric" in n and "undefined" in n for n in res.notes)
    doc = res.to_dict()
    assert doc["normalised_defined"] is False and any("undefined" in n for n in doc["notes"])
    assert {v for row in doc["attn_head_out_all_pos"]["normalised"] for v in row} == {None}
    res.save(tmp_path / "same", report=False)
    assert "Infinity" not in (tmp_path / "same" / "results.json").read_text()
    # One such pair among others: a warning that names it; the metric stays defined.
    mixed = [same[0], *(ls.Prompt(p.text, p.correct, p.incorrect, corrupted=arena[i ^ 1].text)
                        for i, p in enumerate(arena) if i)]
    with pytest.warns(ls.PromptWarning, match=r"1 of 4 pairs have a corrupted prompt equal to the clean one.*\[prompt 0\]"):
        res = run_patching(mixed, hf, tokenizer=tok, what="heads")
    assert not res.normalised_undefined and res.to_dict()["normalised_defined"] is True
    assert np.isfinite(res.normalised("attn_head_out_all_pos")).all()
