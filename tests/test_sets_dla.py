"""The study (direct logit attribution) on answer sets, against TransformerLens 3.9.

With answer sets the study decomposes the mean-logit difference, mean ℓ over the correct set − mean
ℓ over the incorrect set (engine/metrics.py's ``logit-diff``): it is linear in the final residual,
with direction the mean of the correct members' unembedding rows minus the incorrect ones'. Each
number is rebuilt from TL's own run, one prompt at a time (TL's index -1 is the answer position):

- the logit difference from TL's logits (soft-capped where the family caps: the study's
  ``logit_diff_softcapped``; its linear ``logit_diff`` from ``ln_final.hook_normalized @ W_U + b_U``);
- each set's probability mass from TL's softmax;
- layers and heads from ``cache.decompose_resid`` / ``cache.stack_head_results`` (a head through
  Gemma 2's attention post norm with TL's cached scale, as test_lens_parts does) with
  ``apply_ln_to_stack``, projected on the mean direction (built from TL's
  ``tokens_to_residual_directions`` of each member, times the final norm's weight where TL did
  not fold it).

Tolerance: test_parity's 1e-4 plus 1e-5 relative (float32 sums in another order on logits of ~10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import logitscope as ls
from oracle import make_hf_model, save_checkpoint, tl_default_flags, tl_model
from test_families import _post_norms
from test_parity import token_ids

ATOL = 1e-4
# Sets of different sizes (padded together), one answer alone, and a prompt with single answers.
SET_PROMPTS = [
    ls.Prompt("When Mary and John went to the store, John gave a drink to", (" Mary", " Paris", " the"), (" John",)),
    ls.Prompt("The capital of France is", " Paris", (" London", " Berlin")),
    ls.Prompt("Then, John and Mary had a long argument, and afterwards John said to", (" Mary", " her"),
              (" John", " him", " the")),
    ls.Prompt("Friends Dan and Sid found a ring at the school. Sid gave it to", " Dan", " Sid"),
]
FAMILIES = ["gpt2", "gemma2"]  # LayerNorm with biases; RMSNorm with post norms and a final soft-cap


def _close(a, b, what: str) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=ATOL, err_msg=what)


def _ids(tok, answer) -> list[int]:
    members = answer if isinstance(answer, tuple) else (answer,)
    out = [tok.encode(a) for a in members]
    assert all(len(x) == 1 for x in out)
    return [x[0] for x in out]


@torch.no_grad()
def _tl_set_reference(tl, ids: list[list[int]], prompts, tok) -> dict[str, np.ndarray]:
    unfolded = tl.cfg.normalization_type in ("RMS", "LN")
    L = tl.cfg.n_layers
    out: dict[str, list] = {k: [] for k in ("ld", "ld_linear", "pc", "pi", "layers", "heads")}
    for x, p in zip(ids, prompts):
        c, i = _ids(tok, p.correct), _ids(tok, p.incorrect)
        logits, cache = tl.run_with_cache(torch.tensor([x]))
        final = logits[0, -1]
        out["ld"].append(float(final[c].mean() - final[i].mean()))
        linear = cache["ln_final.hook_normalized"][0, -1] @ tl.W_U + tl.b_U
        out["ld_linear"].append(float(linear[c].mean() - linear[i].mean()))
        probs = torch.softmax(final, -1)
        out["pc"].append(float(probs[c].sum()))
        out["pi"].append(float(probs[i].sum()))
        D = (tl.tokens_to_residual_directions(torch.tensor(c)).reshape(len(c), -1).mean(0)
             - tl.tokens_to_residual_directions(torch.tensor(i)).reshape(len(i), -1).mean(0))
        D = D * tl.ln_final.w if unfolded else D

        def project(stack: torch.Tensor) -> np.ndarray:
            return (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * D).sum(-1)[..., 0].numpy()

        out["layers"].append(project(cache.decompose_resid(layer=-1, pos_slice=-1)))
        heads = cache.stack_head_results(layer=-1, pos_slice=-1).reshape(L, -1, 1, D.shape[0])  # [L, H, 1, d]
        for layer in range(L):  # Gemma 2: through the attention post norm, its scale from TL's cache
            post, _ = _post_norms(tl, layer)
            if post is not None:
                heads[layer] = heads[layer] * tl.get_submodule(post).w / cache[f"{post}.hook_scale"][0, -1]
        out["heads"].append(project(heads))
    return {k: np.stack(v, -1) for k, v in out.items()}


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    cache: dict = {}

    def study(family: str):
        if family not in cache:
            hf = make_hf_model(family, size="tiny", seed=5)
            path = save_checkpoint(hf, tmp_path_factory.mktemp(family))
            cache[family] = hf, path, ls.run_study(SET_PROMPTS, str(path), device="cpu", batch_size=3,
                                                   lens_top_k=None)
        return cache[family]

    return study


@pytest.mark.parametrize("family", FAMILIES)
def test_study_on_answer_sets_matches_transformerlens(family, studied, gpt2_tokenizer):
    hf, _, res = studied(family)
    tl = tl_model(hf, family, **tl_default_flags(family))
    ids = token_ids(res, gpt2_tokenizer)
    ref = _tl_set_reference(tl, ids, SET_PROMPTS, gpt2_tokenizer)
    capped = res.logit_diff_softcapped is not None
    assert capped == (family == "gemma2")
    _close(res.logit_diff, ref["ld_linear"], "mean-logit difference (linear logits)")
    _close(res.logit_diff_softcapped if capped else res.logit_diff, ref["ld"], "mean-logit difference, TL's logits")
    _close(res.prob_correct, ref["pc"], "probability mass of the correct set")
    _close(res.prob_incorrect, ref["pi"], "probability mass of the incorrect set")
    _close(res.layer_attribution_per_prompt, ref["layers"], "layer decomposition")
    _close(res.head_results, ref["heads"], "head decomposition")
    _close(res.decomposition_per_prompt.sum(0), ref["ld_linear"], "the decomposition adds up to the difference")
    # Not the first alternative's difference: the sets change the number on prompts 0-2.
    first = [ls.Prompt(p.text, p.correct if isinstance(p.correct, str) else p.correct[0],
                       p.incorrect if isinstance(p.incorrect, str) else p.incorrect[0]) for p in SET_PROMPTS]
    single = _tl_set_reference(tl, ids, first, gpt2_tokenizer)
    assert np.abs(single["ld_linear"][:3] - ref["ld_linear"][:3]).min() > 1e-2
    _close(res.logit_diff[3], single["ld_linear"][3], "single answers within a set batch")
