"""Attribution patching: the first-order estimate of every patching grid, checked three ways.

1. Against an independent computation: finite differences of TransformerLens 3.9's own hooked model
   (float64): f(t) = the metric with the cell's activation set to base + t·(source − base) at
   TransformerLens's hook point, and the estimate is f(0) + f'(0) by central differences. Both sides in
   float64 (ours through the Hugging Face model and our hook points, with the metric in float32 as
   always); the estimate's change must agree within 1e-4 of the grid's largest change.
2. Where the metric is linear in the activation, the estimate is the exact patch: with the final
   norm's scale frozen, the last layer's MLP output (and, in a parallel-attention family, its heads'
   z and v and its attention output) is read by nothing but that norm.
3. Agreement fields against numpy (Pearson, brute-force ranks), results.json, the CLI.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.patching import run_patching
from logitscope.patching.agreement import OFF_FRACTION, agreement, average_ranks, pearson, spearman
from oracle import gpt2_tokenizer, make_hf_model, save_checkpoint, tl_model

TL_POINT = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "attn_out": "hook_attn_out",
            "mlp_out": "hook_mlp_out", "z": "attn.hook_z", "q": "attn.hook_q", "k": "attn.hook_k",
            "v": "attn.hook_v", "pattern": "attn.hook_pattern"}


@pytest.fixture(scope="module")
def models64():
    made = {}

    def get(family):
        if family not in made:
            hf = make_hf_model(family, size="tiny", seed=5, n_ctx=64)
            tl = tl_model(hf, family)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tl = tl.to(torch.float64)
            made[family] = (hf.double(), tl)
        return made[family]

    return get


def tl_finite_differences(tl, res, names, direction: str, eps: float = 1e-4) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per prompt, each cell's f(0) + f'(0) (central differences) on TransformerLens, ``[*cells, N]``,
    and f(0) ``[N]`` (the base run's metric). The cells of one grid and layer run as one batch."""
    from logitscope.patching.grids import GRIDS

    prompts = res.study.prompts
    clean = tl.to_tokens([p.text for p in prompts])
    corrupted = tl.to_tokens(res.corrupted_prompts)
    correct = torch.tensor([tl.to_single_token(p.correct) for p in prompts])
    incorrect = torch.tensor([tl.to_single_token(p.incorrect) for p in prompts])
    N = len(prompts)
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, base = tl.run_with_cache(base_tokens)
        _, source = tl.run_with_cache(source_tokens)

    def metric(tokens, hooks):  # TransformerLens's blocks, final norm and unembedding rows, last position
        with torch.no_grad():
            resid = tl.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=tl.cfg.n_layers)
            x = tl.ln_final(resid)[:, -1]
            G = x.shape[0] // N
            c, i = correct.repeat(G), incorrect.repeat(G)
            return ((x * tl.W_U[:, c].T).sum(-1) + tl.b_U[c] - (x * tl.W_U[:, i].T).sum(-1) - tl.b_U[i]).numpy()

    f0 = metric(base_tokens, [])
    out = {}
    for name in names:
        spec = GRIDS[name]
        grid = res.grids[name + "_attribution"]
        est = np.full(grid.shape, np.nan)
        for layer in range(grid.shape[0]):
            cells = list(np.ndindex(grid.shape[1:-1]))
            wheres = []
            for cell in cells:
                rest = dict(zip(spec.axes[1:], cell))
                head, pos = rest.get("head", rest.get("kv_head")), rest.get("position")
                if spec.point == "pattern":
                    wheres.append((slice(None), head))
                elif pos is None:
                    wheres.append((slice(None), slice(None), head))
                else:
                    at = int(res.positions.at[pos][0])
                    wheres.append((slice(None), at) if head is None else (slice(None), at, head))
            hook_name = f"blocks.{layer}.{TL_POINT[spec.point]}"
            b, s = base[hook_name], source[hook_name]

            def hook(act, hook, wheres=wheres, b=b, s=s):  # rows: (cell, +eps / -eps, prompt)
                act = act.clone()
                for j, where in enumerate(wheres):
                    for k, t in enumerate((eps, -eps)):
                        block = act[(2 * j + k) * N : (2 * j + k + 1) * N]
                        block[where] = b[where] + t * (s[where] - b[where])
                return act

            f = metric(base_tokens.repeat(2 * len(cells), 1), [(hook_name, hook)]).reshape(len(cells), 2, N)
            for j, cell in enumerate(cells):
                est[(layer, *cell)] = f0 + (f[j, 0] - f[j, 1]) / (2 * eps)
        out[name] = est
    return out, f0


def _check_changes(res, ref, names, base):
    for name in names:
        ours = res.grids[name + "_attribution"] - base
        want = ref[name] - base
        scale = np.abs(want).max()
        assert scale > 1e-3, f"{name}: the estimate must change something"
        err = np.abs(ours - want).max()
        assert err <= 1e-4 * scale, f"{name}: {err:.2e} vs scale {scale:.2e}"


ALL_GRIDS = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "attn_head_out_all_pos", "attn_head_q_all_pos",
             "attn_head_k_all_pos", "attn_head_v_all_pos", "attn_head_pattern_all_pos", "attn_head_out_by_pos"]


def test_every_grid_equals_finite_differences_of_transformerlens(models64):
    hf, tl = models64("gpt2")
    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="all", positions="index", method="attribution")
    assert sorted(res.grids) == sorted(n + "_attribution" for n in ALL_GRIDS)
    ref, f0 = tl_finite_differences(tl, res, ALL_GRIDS, "denoise")
    base = res.corrupted_logit_diff
    np.testing.assert_allclose(base, f0, rtol=0, atol=1e-5)
    _check_changes(res, ref, ALL_GRIDS, base)
