"""Answers of several tokens (issue 22 part 1), teacher-forced, for the causal methods and the study.

The oracle is TransformerLens 3.9 on a tiny random GPT-2 (tests/oracle.py), used by hand as a
TransformerLens user scores an answer of several tokens: ``run_with_cache`` / ``run_with_hooks`` on
prompt+answer, ``log_softmax``, gathered at the answer's positions, summed (``loss``: TL's own
``loss_fn(per_token=True)`` averaged over the answer's positions). Each row (the prompt or its
counterpart, plus the clean answer's tokens before the one predicted) is patched by hand and the
rows are summed by prompt; the study's decomposition is TL's ``decompose_resid`` /
``stack_head_results`` of each row projected on its own token's direction, summed. Tolerance 1e-4
absolute, as tests/test_metrics.py (float32 on values of order 1-40: a sum of up to four
log-probabilities of ~-11 each keeps float32's error near 1e-5; the study adds 1e-5 relative, as
tests/test_sets_dla.py).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.api.patching import run_patching
from logitscope.errors import ArgumentError, InputError
from oracle import gpt2_tokenizer, make_hf_model, save_checkpoint, tl_model

ATOL = 1e-4
# Mixed answers: several tokens on both sides, on one side only, and one token each.
ANSWERS = [(" Mary Smith", " John Brown"), (" Mary", " John of Arc"), (" Tom Jones", " James"), (" James", " Tom"),
           (" Dan Brown", " Sid Vicious"), (" Sid", " Dan"), (" Martin Luther King", " Amy"), (" Amy Winehouse", " Martin")]


@pytest.fixture(scope="module")
def model():
    hf = make_hf_model("gpt2", size="tiny", seed=3, n_ctx=64)
    return hf, tl_model(hf, "gpt2")


def several_pairs() -> list[ls.Prompt]:
    """The arena prompts (one length) with their name-swapped counterparts and the answers above."""
    seed = ls.builtin_prompts("arena")
    by_text = {p.text: p for p in seed}
    pairs = []
    for p, (c, i) in zip(seed, ANSWERS):
        other = next(q.text for q in seed if q is not p and q.correct == p.incorrect and q.incorrect == p.correct)
        assert other in by_text
        pairs.append(ls.Prompt(p.text, c, i, corrupted=other))
    return pairs


def answer_tokens(tl, text: str, answer: str) -> list[int]:
    """The answer's tokens in context, as TL tokenises prompt+answer."""
    base, full = tl.to_tokens(text)[0].tolist(), tl.to_tokens(text + answer)[0].tolist()
    assert full[: len(base)] == base
    return full[len(base):]


def tl_logprob(tl, tokens: list[int], answer: list[int], hooks=()) -> float:
    """Σ_k log P(a_k | tokens, a_<k) from TL's logits on ``tokens + answer[:-1]`` (with ``hooks``)."""
    seq = torch.tensor([tokens + answer[:-1]])
    with torch.no_grad():
        logits = tl.run_with_hooks(seq, fwd_hooks=list(hooks))[0].double()
    logp = torch.log_softmax(logits, -1)
    at = range(len(tokens) - 1, len(tokens) - 1 + len(answer))
    return float(sum(logp[t, a] for t, a in zip(at, answer)))


def test_teacher_forced_logprobs_equal_transformerlens(model):
    """Clean and corrupted logprob, logprob-diff and loss of answers of several tokens equal TL's
    ``run_with_cache`` on prompt+answer (log_softmax gathered at the answer positions, summed; loss
    as TL's per-token ``loss_fn`` averaged over the answer); counterparts score the clean answer."""
    hf, tl = model
    pairs = several_pairs()
    got = {m: run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="none", ablate="L0H0", metric=m)
           for m in ("logprob", "logprob-diff", "loss")}
    for n, p in enumerate(pairs):
        clean, corrupted = tl.to_tokens(p.text)[0].tolist(), tl.to_tokens(p.corrupted)[0].tolist()
        c, i = answer_tokens(tl, p.text, p.correct), answer_tokens(tl, p.text, p.incorrect)
        with torch.no_grad():
            logits, _ = tl.run_with_cache(torch.tensor([clean + c]))
        logp = torch.log_softmax(logits[0].double(), -1)
        by_hand = float(sum(logp[len(clean) - 1 + k, t] for k, t in enumerate(c)))  # gathered at the answer
        np.testing.assert_allclose(got["logprob"].clean_logit_diff[n], by_hand, rtol=0, atol=ATOL)
        np.testing.assert_allclose(got["logprob"].corrupted_logit_diff[n], tl_logprob(tl, corrupted, c), rtol=0, atol=ATOL)
        diff = by_hand - tl_logprob(tl, clean, i)
        np.testing.assert_allclose(got["logprob-diff"].clean_logit_diff[n], diff, rtol=0, atol=ATOL)
        seq = torch.tensor([clean + c])
        with torch.no_grad():
            per_token = tl.loss_fn(tl(seq), seq, per_token=True)[0]
        tl_loss = float(per_token[len(clean) - 1:].mean())  # TL's loss over the answer's positions
        np.testing.assert_allclose(got["loss"].clean_logit_diff[n], tl_loss, rtol=0, atol=ATOL)
    assert any("answers of several tokens" in note for note in got["logprob"].notes)


def _z_from(cache, heads=None):
    """A hook_z hook putting ``cache``'s z (the source row's) in, for ``heads`` (None: every head)."""
    def hook(z, hook):
        z = z.clone()
        sel = slice(None) if heads is None else heads
        z[:, :, sel] = cache[hook.name][:, :, sel]
        return z
    return hook


def _resid_at(cache, pos):
    def hook(x, hook):
        x = x.clone()
        x[:, pos] = cache[hook.name][:, pos]
        return x
    return hook


def _rows(tl, p):
    """Each row of a pair as (clean tokens, corrupted tokens, target, sign) for logprob-diff."""
    clean, corrupted = tl.to_tokens(p.text)[0].tolist(), tl.to_tokens(p.corrupted)[0].tolist()
    out = []
    for sign, answer in ((1.0, p.correct), (-1.0, p.incorrect)):
        toks = answer_tokens(tl, p.text, answer)
        for k, t in enumerate(toks):
            out.append((clean + toks[:k], corrupted + toks[:k], t, sign))
    return out


def tl_patched(tl, pairs, hooks_of, caches: dict) -> np.ndarray:
    """Per prompt, logprob-diff of the corrupted rows with ``hooks_of(clean_cache)`` (denoising),
    every row patched by hand and the rows summed. ``caches`` keeps each clean row's
    ``run_with_cache`` (it does not depend on the hooks) across calls of one test."""
    out = []
    for p in pairs:
        total = 0.0
        for clean, corrupted, target, sign in _rows(tl, p):
            with torch.no_grad():
                if tuple(clean) not in caches:
                    caches[tuple(clean)] = tl.run_with_cache(torch.tensor([clean]))[1]
                cache = caches[tuple(clean)]
                logits = tl.run_with_hooks(torch.tensor([corrupted]), fwd_hooks=hooks_of(cache))[0, -1].double()
            total += sign * float(torch.log_softmax(logits, -1)[target])
        out.append(total)
    return np.array(out)


def test_patched_grids_with_several_tokens_equal_transformerlens_rows(model):
    """resid_pre (layer × prompt position) and every head's z at all positions, denoising, in
    logprob-diff on answers of several tokens (mixed with single-token ones): TL hooks patching each
    row by hand, rows summed by prompt, equal ours per prompt."""
    hf, tl = model
    pairs = several_pairs()
    res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what=["resid_pre", "attn_head_out_all_pos"],
                       positions="index", metric="logprob-diff")
    L, H = tl.cfg.n_layers, tl.cfg.n_heads
    T = len(tl.to_tokens(pairs[0].text)[0])
    caches: dict = {}  # the clean rows' run_with_cache, shared by every cell below
    assert res.grids["resid_pre"].shape == (L, T, len(pairs))  # the prompts' positions only
    for layer in range(L):
        for pos in (0, 5, T - 1):
            want = tl_patched(tl, pairs, lambda c: [(f"blocks.{layer}.hook_resid_pre", _resid_at(c, pos))], caches)
            np.testing.assert_allclose(res.grids["resid_pre"][layer, pos], want, rtol=0, atol=ATOL, err_msg=f"L{layer} {pos}")
        for h in range(H):
            want = tl_patched(tl, pairs, lambda c: [(f"blocks.{layer}.attn.hook_z", _z_from(c, [h]))], caches)
            np.testing.assert_allclose(res.grids["attn_head_out_all_pos"][layer, h], want, rtol=0, atol=ATOL,
                                       err_msg=f"L{layer}H{h}")
    corrupted = tl_patched(tl, pairs, lambda c: [], caches)
    np.testing.assert_allclose(res.corrupted_logit_diff, corrupted, rtol=0, atol=ATOL)
    assert np.abs(res.grids["attn_head_out_all_pos"] - corrupted).max() > 100 * ATOL  # the patches move it
    # patching the whole residual stream at layer 0, every prompt position, restores the clean value
    lo, hi = res.normalised("resid_pre").min(), res.normalised("resid_pre").max()
    assert np.isfinite(lo) and np.isfinite(hi)


def test_ablation_with_loss_on_several_tokens_equals_transformerlens(model):
    """Resample ablation of L0H1 and L1H2 (z from each row's counterpart: the corrupted prompt with
    the clean answer's tokens) measured in loss, the mean per-token cross-entropy of the correct
    answer: TL hooks on every row by hand, −Σ log P / m."""
    hf, tl = model
    pairs = several_pairs()
    res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="none", ablate="L0H1,L1H2",
                       ablation="resample", metric="loss")
    (name,) = res.ablated
    for n, p in enumerate(pairs):
        clean, corrupted = tl.to_tokens(p.text)[0].tolist(), tl.to_tokens(p.corrupted)[0].tolist()
        c = answer_tokens(tl, p.text, p.correct)
        with torch.no_grad():
            _, cache = tl.run_with_cache(torch.tensor([corrupted + c[:-1]]))
        hooks = [("blocks.0.attn.hook_z", _z_from(cache, [1])), ("blocks.1.attn.hook_z", _z_from(cache, [2]))]
        want = -tl_logprob(tl, clean, c, hooks) / len(c)
        np.testing.assert_allclose(res.ablated[name][n], want, rtol=0, atol=ATOL, err_msg=p.correct)
        np.testing.assert_allclose(res.clean_logit_diff[n], -tl_logprob(tl, clean, c) / len(c), rtol=0, atol=ATOL)
    assert np.abs(res.ablated[name] - res.clean_logit_diff).max() > 100 * ATOL


def test_one_token_rows_are_the_ordinary_prompts(model):
    """A set whose answers are all one token but for one prompt: the one-token prompts' values are
    those of the same prompts measured alone (a one-token answer is one row, unchanged)."""
    hf, _ = model
    pairs = several_pairs()
    single = [i for i, (c, w) in enumerate(ANSWERS) if len(c.split()) == 1 and len(w.split()) == 1]
    mixed = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="heads", metric="logit-diff")
    alone = run_patching([pairs[i] for i in single], hf, tokenizer=gpt2_tokenizer(), what="heads", metric="logit-diff")
    np.testing.assert_allclose(mixed.grids["attn_head_out_all_pos"][..., single], alone.grids["attn_head_out_all_pos"],
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed.clean_logit_diff[single], alone.clean_logit_diff, rtol=0, atol=1e-5)


def test_several_tokens_bad_input_is_a_clear_error(model):
    hf, _ = model
    pairs = several_pairs()
    for metric in ("prob-diff", "kl"):
        with pytest.raises(ArgumentError, match=rf"metric='{metric}': not defined for answers of several tokens"):
            run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="heads", metric=metric)
    with pytest.raises(ArgumentError, match=r"not defined for answers of several tokens"):
        run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="heads", metric=lambda logits, ctx: logits[:, 0])
    alts = [ls.Prompt(pairs[0].text, (" Mary Smith", " Mary Jones"), " John", corrupted=pairs[0].corrupted)]
    with pytest.raises(InputError, match=r"answer ' Mary Smith' is 2 tokens .* in a set of alternatives.*not supported"):
        run_patching(alts, hf, tokenizer=gpt2_tokenizer(), what="heads")
    glued = [ls.Prompt(pairs[0].text, "Maryanne", " John", corrupted=pairs[0].corrupted)]  # measured, with a hint
    with pytest.warns(ls.PromptWarning, match=r"answer 'Maryanne' has no leading space.*did you mean ' Maryanne'"):
        run_patching(glued, hf, tokenizer=gpt2_tokenizer(), what="heads", metric="logprob")
    with pytest.raises(ArgumentError, match=r"neurons=0: DLA by source position and by neuron take one token"):
        ls.run_study(pairs, hf, tokenizer=gpt2_tokenizer(), neurons=0)


def test_edges_with_several_tokens_exits_2_and_writes_nothing(tmp_path, capsys):
    from logitscope.cli import main

    ckpt = save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path / "tiny")
    rows = tmp_path / "several.jsonl"
    rows.write_text("\n".join(json.dumps({"prompt": p.text, "correct": p.correct, "incorrect": p.incorrect,
                                          "corrupted": p.corrupted}) for p in several_pairs()) + "\n")
    out = tmp_path / "edges"
    capsys.readouterr()
    assert main(["edges", "--model", str(ckpt), "--prompts", str(rows), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "answer ' John Brown' is 2 tokens" in err and "edges and intervene take one token per answer" in err, err
    assert not out.exists() or not any(out.iterdir())
    kl = tmp_path / "kl"  # a metric not defined on several tokens: exit 2, nothing written
    assert main(["patch", "--model", str(ckpt), "--prompts", str(rows), "--out", str(kl), "--quiet", "--metric", "kl"]) == 2
    err = capsys.readouterr().err
    assert "--metric kl: not defined for answers of several tokens" in err, err
    assert not kl.exists() or not any(kl.iterdir())
    # the same file through `patch` works, and its results say how the answers were scored
    done = tmp_path / "patch"
    assert main(["patch", "--model", str(ckpt), "--prompts", str(rows), "--out", str(done), "--quiet", "--no-report",
                 "--metric", "logprob-diff"]) == 0
    doc = json.loads((done / "results.json").read_text())
    assert any("answers of several tokens" in n for n in doc["patching"]["notes"]), doc["patching"].get("notes")
    first = doc["prompts"][0]  # the whole answers, their first tokens' ids
    assert (first["correct"], first["incorrect"], first["correct_id"]) == (" Mary Smith", " John Brown", 5335)


def test_paths_and_circuit_sum_the_rows(model):
    """Path patching L1H0 → logits (the last layer: its only path is the direct one) equals the
    TL-checked heads grid's cell for L1H0, prompt by prompt; a circuit's F(M) is the clean value of
    every prompt and its mean ablation (rows grouped by template and answer token) runs per prompt."""
    hf, _ = model
    pairs = several_pairs()
    res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="heads", metric="logprob-diff", senders="L1H0",
                       circuit="nm: L1H0 @ END; s: L0H1 @ END", circuit_random=1)
    np.testing.assert_allclose(res.paths.values[0, 0], res.grids["attn_head_out_all_pos"][1, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.paths.clean_logit_diff, res.clean_logit_diff, rtol=0, atol=1e-5)
    assert res.paths.values.shape[-1] == len(pairs)
    np.testing.assert_allclose(res.circuit.model, res.clean_logit_diff, rtol=0, atol=1e-5)
    assert res.circuit.values.shape[-1] == len(pairs) and len(res.circuit.templates) == len(pairs)
    assert np.isfinite(res.circuit.values).all()


def test_factual_recall_objects_of_several_tokens_patch_in_the_tasks_metric(tmp_path, model):
    """The factual-recall loader's objects of several tokens: `patch` measures the task's own metric,
    logprob, teacher-forced (its values those of run_patching with logprob, checked above against TL)."""
    from logitscope.cli import main

    hf, _ = model
    ckpt = save_checkpoint(hf, tmp_path / "tiny")
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps({"prompt": p.text, "correct": p.correct, "incorrect": p.incorrect,
                                           "corrupted": p.corrupted}) for p in several_pairs()) + "\n")
    out = tmp_path / "out"
    assert main(["patch", "--model", str(ckpt), "--prompts", f"factual-recall:{facts}", "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["patching"]["metric"] == "logprob"
    want = run_patching(several_pairs(), hf, tokenizer=gpt2_tokenizer(), what="heads", metric="logprob")
    arrays = np.load(out / "patching_per_prompt.npz")
    np.testing.assert_allclose(arrays["clean_logprob"], want.clean_logit_diff, rtol=0, atol=1e-5)


def test_identical_answers_are_an_error_and_a_shared_first_token_is_not(model):
    hf, _ = model
    p = several_pairs()[0]
    with pytest.raises(InputError, match=r"correct and incorrect answers are the same tokens \(' Mary Smith'\)"):
        run_patching([ls.Prompt(p.text, " Mary Smith", " Mary Smith", corrupted=p.corrupted)], hf,
                     tokenizer=gpt2_tokenizer(), what="heads")
    # answers that share their first token differ in the rows after it: measured, and studied
    res = run_patching([ls.Prompt(p.text, " Mary Smith", " Mary Jones", corrupted=p.corrupted)], hf,
                       tokenizer=gpt2_tokenizer(), what="heads", metric="logit-diff")
    np.testing.assert_allclose(res.study.logit_diff, res.clean_logit_diff, rtol=0, atol=1e-4)
    assert abs(res.clean_logit_diff[0]) > 1e-3


@torch.no_grad()
def _tl_study_rows(tl, p) -> dict[str, np.ndarray]:
    """The study of one prompt with answers of several tokens, from TL row by row: each row's own
    token's linear logit (``ln_final.hook_normalized @ W_U + b_U``), and its layers and heads
    (``decompose_resid`` / ``stack_head_results`` with ``apply_ln_to_stack``) projected on that
    token's residual direction (``tokens_to_residual_directions``; minus for the incorrect answer),
    summed; each answer's probability the product of its rows' softmax."""
    tokens = tl.to_tokens(p.text)[0].tolist()
    c, i = answer_tokens(tl, p.text, p.correct), answer_tokens(tl, p.text, p.incorrect)
    rows = [(tokens, [(c[0], 1.0), (i[0], -1.0)])]
    rows += [(tokens + c[:k], [(c[k], 1.0)]) for k in range(1, len(c))]
    rows += [(tokens + i[:k], [(i[k], -1.0)]) for k in range(1, len(i))]
    L = tl.cfg.n_layers
    out = {"ld": 0.0, "layers": 0.0, "heads": 0.0, "logp_c": 0.0, "logp_i": 0.0}
    for seq, targets in rows:
        logits, cache = tl.run_with_cache(torch.tensor([seq]))
        linear = cache["ln_final.hook_normalized"][0, -1] @ tl.W_U + tl.b_U
        logp = torch.log_softmax(logits[0, -1].double(), -1)
        D = sum(sign * tl.tokens_to_residual_directions(torch.tensor([t])).reshape(-1) for t, sign in targets)
        out["ld"] += float(sum(sign * linear[t] for t, sign in targets))
        out["logp_c"] += sum(float(logp[t]) for t, sign in targets if sign > 0)
        out["logp_i"] += sum(float(logp[t]) for t, sign in targets if sign < 0)
        project = lambda stack: (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * D).sum(-1)[..., 0].numpy()  # noqa: E731
        out["layers"] = out["layers"] + project(cache.decompose_resid(layer=-1, pos_slice=-1))
        heads = cache.stack_head_results(layer=-1, pos_slice=-1)
        out["heads"] = out["heads"] + project(heads).reshape(L, -1)
    return out


def test_run_decomposes_the_teacher_forced_logit_difference_as_transformerlens(model):
    """`run` (the study) on answers of several tokens, mixed with one-token ones: the logit
    difference Σ_k ℓ(c_k) − Σ_k ℓ(i_k), its layers and heads (each row's own token's logit decomposed,
    summed by prompt) and each answer's teacher-forced probability equal TL row by row; the parts add
    up to the difference; a patching result's study is the same number as its clean logit-diff runs."""
    from oracle import tl_default_flags

    hf, _ = model
    # Logits at different rows are summed, so their per-position offset no longer cancels as in one
    # position's difference: TL's default center_unembed=True shifts each row's logits by their mean
    # over the vocabulary (measured: up to 0.035 on this model); logitscope sums the model's own.
    tl = tl_model(hf, "gpt2", **{**tl_default_flags("gpt2"), "center_unembed": False})
    pairs = several_pairs()
    res = ls.run_study(pairs, hf, tokenizer=gpt2_tokenizer(), batch_size=3)
    refs = [_tl_study_rows(tl, p) for p in pairs]
    np.testing.assert_allclose(res.logit_diff, [r["ld"] for r in refs], rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(res.head_results, np.stack([r["heads"] for r in refs], -1), rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(res.layer_attribution_per_prompt, np.stack([r["layers"] for r in refs], -1), rtol=1e-5,
                               atol=ATOL)
    np.testing.assert_allclose(res.decomposition_per_prompt.sum(0), res.logit_diff, rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(np.log(res.prob_correct), [r["logp_c"] for r in refs], rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(np.log(res.prob_incorrect), [r["logp_i"] for r in refs], rtol=1e-5, atol=ATOL)
    assert [p.correct for p in res.prompts] == [c for c, _ in ANSWERS]
    patched = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="heads", metric="logit-diff")
    np.testing.assert_allclose(patched.study.logit_diff, patched.clean_logit_diff, rtol=0, atol=ATOL)


def test_an_answer_of_several_tokens_faces_a_set_holding_its_first_token(model):
    """Correct " New York" ([' New', ' York'] for GPT-2) against the incorrect set [" New", " Boston"]:
    different answers, once refused as "a token in both sets". Scored as both definitions compose:
    the long answer teacher-forced, the set by its mean logit (logit-diff) or its probability mass
    (logprob-diff), on TL's logits by hand: ℓ(New) + ℓ(York | New) − (ℓ(New) + ℓ(Boston)) / 2 and
    log P(New) + log P(York | New) − log(P(New) + P(Boston)). Two answers of several tokens sharing
    their first token beside a set are measured too; identical ones stay an error."""
    from oracle import tl_default_flags

    hf, tl = model
    p, q = several_pairs()[:2]
    pairs = [ls.Prompt(p.text, " New York", (" New", " Boston"), corrupted=p.corrupted),
             ls.Prompt(q.text, " Mary Smith", " Mary Jones", corrupted=q.corrupted)]
    tok = gpt2_tokenizer()
    new, york, boston = (tok(w)["input_ids"] for w in (" New", " York", " Boston"))
    assert tok(" New York")["input_ids"] == new + york and len(new) == len(boston) == 1
    got = run_patching(pairs, hf, tokenizer=tok, what="none", ablate="L0H0", metric="logprob-diff").clean_logit_diff
    flat = tl_model(hf, "gpt2", **{**tl_default_flags("gpt2"), "center_unembed": False})
    study = ls.run_study(pairs, hf, tokenizer=tok).logit_diff
    clean = tl.to_tokens(p.text)[0].tolist()
    c = answer_tokens(tl, p.text, " New York")
    assert c == new + york
    with torch.no_grad():
        logp = torch.log_softmax(tl(torch.tensor([clean]))[0, -1].double(), -1)
        flat_first = flat(torch.tensor([clean]))[0, -1].double()
        flat_second = flat(torch.tensor([clean + c[:1]]))[0, -1].double()
    by_hand = tl_logprob(tl, clean, c) - float(torch.logsumexp(logp[[new[0], boston[0]]], 0))
    np.testing.assert_allclose(got[0], by_hand, rtol=0, atol=ATOL)
    ld = float(flat_first[new[0]] + flat_second[york[0]] - (flat_first[new[0]] + flat_first[boston[0]]) / 2)
    np.testing.assert_allclose(study[0], ld, rtol=1e-5, atol=ATOL)
    clean_q = tl.to_tokens(q.text)[0].tolist()
    mary = tl_logprob(tl, clean_q, answer_tokens(tl, q.text, " Mary Smith"))
    np.testing.assert_allclose(got[1], mary - tl_logprob(tl, clean_q, answer_tokens(tl, q.text, " Mary Jones")),
                               rtol=0, atol=ATOL)
    same = [pairs[0], ls.Prompt(q.text, " Mary Smith", " Mary Smith", corrupted=q.corrupted)]
    with pytest.raises(InputError, match=r"correct and incorrect answers are the same tokens \(' Mary Smith'\)"):
        run_patching(same, hf, tokenizer=tok, what="heads")


def test_summary_prints_log_probability_metrics_with_the_logit_differences_digits(model):
    """The terminal line ``clean m [lo, hi], corrupted m [lo, hi]`` shows four decimals for every
    metric on the logit / log-probability scale (logit-diff, logprob-diff, logprob, loss: values of
    order 1-40 here, where four significant digits dropped to two decimals); probabilities keep four
    significant digits (they may be ~1e-5). Each printed number is the result's own, rounded."""
    hf, _ = model
    pairs = several_pairs()
    number = r"(-?\d+\.\d+)"
    line = re.compile(rf"clean {number} \[{number}, {number}\], corrupted {number} \[{number}, {number}\]")
    for metric in ("logit-diff", "logprob-diff", "logprob", "loss"):
        res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what="none", ablate="L0H0", metric=metric)
        got = line.search(res.summary())
        assert got is not None, res.summary()
        iv = res.intervals
        want = [res.clean_logit_diff.mean(), iv["clean"]["ci95_low"][0], iv["clean"]["ci95_high"][0],
                res.corrupted_logit_diff.mean(), iv["corrupted"]["ci95_low"][0], iv["corrupted"]["ci95_high"][0]]
        assert list(got.groups()) == [f"{v:.4f}" for v in want], metric
    res = run_patching([ls.Prompt(p.text, " Mary", " John", corrupted=p.corrupted) for p in pairs[:2]], hf,
                       tokenizer=gpt2_tokenizer(), what="none", ablate="L0H0", metric="prob-diff")
    got = re.search(r"clean (\S+) \[", res.summary())
    assert got is not None and got.group(1) == f"{res.clean_logit_diff.mean():.4g}", res.summary()


def test_timing_counts_the_teacher_forced_rows_each_rank_ran(model):
    """``timing.prompts_per_rank`` is what each rank ran: with answers of several tokens the
    teacher-forced rows (one per prompt, plus one per answer token after the first: counted here from
    TL's tokens), which ``timing.rows`` names; the terminal line of a split run says rows."""
    hf, tl = model
    pairs = several_pairs()
    rows = len(pairs) + sum(len(answer_tokens(tl, p.text, a)) - 1 for p in pairs for a in (p.correct, p.incorrect))
    assert rows > len(pairs)
    res = ls.run_study(pairs, hf, tokenizer=gpt2_tokenizer(), batch_size=3)
    assert (res.timing["prompts_per_rank"], res.timing["rows"]) == ([rows], rows)
    res.timing.update(world_size=2, prompts_per_rank=[rows - 5, 5], gather_s=0.01)
    assert f"on 2 ranks ({rows - 5} and 5 teacher-forced rows; gather 0.01 s)" in res.summary()
    one = ls.run_study([ls.Prompt(p.text, " Mary", " John") for p in pairs], hf, tokenizer=gpt2_tokenizer())
    assert one.timing["prompts_per_rank"] == [len(pairs)] and "rows" not in one.timing
