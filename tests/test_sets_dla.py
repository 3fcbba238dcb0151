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

import json

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


@torch.no_grad()
def _hf_last_logits(hf, prompts, tok) -> torch.Tensor:
    """The model's own logits at each prompt's last token (BOS prepended, GPT-2's TL habit)."""
    rows = [hf(torch.tensor([[tok.bos_token_id] + tok.encode(p.text)])).logits[0, -1] for p in prompts]
    return torch.stack(rows).double()


def test_patch_takes_the_tasks_metric_unless_one_is_given(tmp_path, capsys, gpt2_tokenizer):
    """``patch --prompts induction:6`` measures induction's ``logprob`` (log P(correct), checked against
    the model's own softmax); an explicit ``--metric`` wins; ``run`` on the task still decomposes the
    logit difference and says so; on a set task (sva) the patch result's study is the whole sets'
    mean-logit difference, the same number its clean runs measure."""
    from logitscope.cli import main

    hf = make_hf_model("gpt2", size="tiny", seed=1, n_ctx=64)
    ckpt = save_checkpoint(hf, tmp_path / "tiny")
    common = ["--model", str(ckpt), "--quiet", "--what", "heads", "--no-report"]
    assert main(["patch", "--prompts", "induction:6", "--out", str(tmp_path / "own"), *common]) == 0
    doc = json.loads((tmp_path / "own" / "results.json").read_text())
    assert doc["patching"]["metric"] == "logprob"
    own = np.load(tmp_path / "own" / "patching_per_prompt.npz")
    texts = [ls.Prompt(p["prompt"], p["correct"], p["incorrect"]) for p in doc["prompts"]]
    logits = _hf_last_logits(hf, texts, gpt2_tokenizer)
    correct = [_ids(gpt2_tokenizer, p.correct)[0] for p in texts]
    incorrect = [_ids(gpt2_tokenizer, p.incorrect)[0] for p in texts]
    want = torch.log_softmax(logits, -1)[torch.arange(len(texts)), correct].numpy()
    _close(own["clean_logprob"], want, "induction's default metric: log P(correct)")

    assert main(["patch", "--prompts", "induction:6", "--metric", "logit-diff", "--out", str(tmp_path / "given"),
                 *common]) == 0
    doc = json.loads((tmp_path / "given" / "results.json").read_text())
    assert doc["patching"]["metric"] == "logit_diff"
    given = np.load(tmp_path / "given" / "patching_per_prompt.npz")
    rows = torch.arange(len(texts))
    _close(given["clean_logit_diff"], (logits[rows, correct] - logits[rows, incorrect]).numpy(), "--metric logit-diff")

    capsys.readouterr()
    assert main(["run", "--prompts", "induction:6", "--model", str(ckpt), "--out", str(tmp_path / "run"),
                 "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "task measures logprob" in err and "decomposes the logit difference" in err, err
    ran = json.loads((tmp_path / "run" / "results.json").read_text())
    _close([p["logit_diff"] for p in ran["prompts"]], given["clean_logit_diff"], "run: the logit difference")

    assert main(["patch", "--prompts", "sva:6", "--out", str(tmp_path / "sva"), *common]) == 0
    doc = json.loads((tmp_path / "sva" / "results.json").read_text())
    assert doc["patching"]["metric"] == "logit_diff" and not any("first" in n for n in doc["patching"].get("notes", []))
    sva = np.load(tmp_path / "sva" / "patching_per_prompt.npz")
    assert any(isinstance(p["correct"], list) and len(p["correct"]) > 1 for p in doc["prompts"])
    _close([p["logit_diff"] for p in doc["prompts"]], sva["clean_logit_diff"], "the study's sets = the clean runs'")
