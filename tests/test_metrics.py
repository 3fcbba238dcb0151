"""Metrics and answer sets (issue 22 parts 1-2): every metric of :mod:`logitscope.engine.metrics`,
measured by every causal method, against TransformerLens 3.9 computing it from its own logits.

The oracle is ``transformer_lens.patching`` (grids) and ``run_with_hooks`` (ablation, circuits,
intervene) on a tiny random GPT-2 built offline (tests/oracle.py), with each metric written out here
from TL's logits at the last position (torch's softmax, not ours). Tolerance: 1e-4 absolute as
tests/test_patching.py (float32 on values of order 1; probabilities are smaller, so their checks are
stricter in relative terms); every test also checks that the patches move the metric by far more.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.api.patching import run_patching
from logitscope.errors import InputError
from oracle import gpt2_tokenizer, make_hf_model, save_checkpoint, tl_model

ATOL = 1e-4
# The tiny random model spreads its probability over 50,257 tokens (each ~2e-5), so probability
# differences are ~1e-4 and 1e-4 would check nothing: there float32's relative error (~1e-6 of each
# probability) bounds them, 1e-9 absolute and 1e-4 relative (the difference may cancel).
TOL = {"prob-diff": dict(rtol=1e-4, atol=1e-9)}


def close(ours, ref, metric, **kw):
    np.testing.assert_allclose(ours, ref, **{**dict(rtol=0, atol=ATOL), **TOL.get(metric, {}), **kw})


def moves(ref, base, metric) -> bool:
    """The patches change the metric by far more than the tolerance."""
    return float(np.abs(np.asarray(ref) - base).max()) > 100 * TOL.get(metric, {"atol": ATOL})["atol"]
GRIDS = ["resid_pre", "attn_head_out_all_pos"]
TL_GRIDS = {"resid_pre": "get_act_patch_resid_pre", "attn_head_out_all_pos": "get_act_patch_attn_head_out_all_pos"}


@pytest.fixture(scope="module")
def model():
    hf = make_hf_model("gpt2", size="tiny", seed=3, n_ctx=64)
    return hf, tl_model(hf, "gpt2")


def _ids(tl, answers) -> list[list[int]]:
    """Each prompt's answer set as token ids (a single answer: a set of one)."""
    return [[tl.to_single_token(a) for a in (x if isinstance(x, tuple) else (x,))] for x in answers]


def _set_logprob(logp: torch.Tensor, sets: list[list[int]]) -> torch.Tensor:
    """log Σ p over each row's set, written out: log of the sum of exp of the members' log-probs."""
    return torch.stack([torch.log(logp[n, s].exp().sum()) for n, s in enumerate(sets)])


def tl_metric(name: str, correct: list[list[int]], incorrect: list[list[int]], clean_last: torch.Tensor | None):
    """The metric as a TransformerLens user writes it: from the logits ``[B, T, vocab]`` at the last
    position, a mean over prompts (what ``transformer_lens.patching`` wants: a scalar)."""

    def per_prompt(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].double()
        logp = torch.log_softmax(last, -1)
        if name == "logit-diff":
            return torch.stack([last[n, c].mean() - last[n, i].mean() for n, (c, i) in enumerate(zip(correct, incorrect))])
        if name == "prob-diff":
            return _set_logprob(logp, correct).exp() - _set_logprob(logp, incorrect).exp()
        if name == "logprob-diff":
            return _set_logprob(logp, correct) - _set_logprob(logp, incorrect)
        if name == "logprob":
            return _set_logprob(logp, correct)
        if name == "loss":
            return -_set_logprob(logp, correct)
        if name == "kl":
            ref = torch.log_softmax(clean_last.double(), -1)
            return (ref.exp() * (ref - logp)).sum(-1)
        raise AssertionError(name)

    return lambda logits: per_prompt(logits).mean()


def tl_patch(tl, prompts, name: str, direction: str = "denoise"):
    """TL's grids, clean and corrupted means for ``prompts`` (one length) and the metric ``name``."""
    from transformer_lens import patching

    clean = tl.to_tokens([p.text for p in prompts])
    corrupted = tl.to_tokens([p.corrupted for p in prompts])
    with torch.no_grad():
        clean_last = tl(clean)[:, -1]
        metric = tl_metric(name, _ids(tl, [p.correct for p in prompts]), _ids(tl, [p.incorrect for p in prompts]),
                           clean_last)
        base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
        _, cache = tl.run_with_cache(source)
        out = {}
        for g in GRIDS:
            with contextlib.redirect_stderr(io.StringIO()):
                out[g] = getattr(patching, TL_GRIDS[g])(tl, base, cache, metric).numpy()
        return out, float(metric(tl(clean))), float(metric(tl(corrupted)))


def seed_pairs(res) -> list[ls.Prompt]:
    return [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=c) for p, c in zip(res.study.prompts, res.corrupted_prompts)]


@pytest.mark.parametrize("metric", ["logprob-diff", "prob-diff", "logprob", "loss", "kl"])
def test_each_metric_patches_as_transformerlens(metric, model):
    """resid_pre (layer × position) and every head's output, each metric, against
    ``transformer_lens.patching`` given that metric; the normalised grid as TL's demos compute it."""
    hf, tl = model
    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what=GRIDS, positions="index", metric=metric)
    ref, clean, corrupted = tl_patch(tl, seed_pairs(res), metric)
    close(res.clean_logit_diff.mean(), clean, metric)
    close(res.corrupted_logit_diff.mean(), corrupted, metric)
    for g in GRIDS:
        close(res.mean(g), ref[g], metric, err_msg=g)
        assert moves(ref[g], corrupted, metric), f"{g}: the patches must move {metric}"
    want = (ref["resid_pre"] - corrupted) / (clean - corrupted)
    np.testing.assert_allclose(res.normalised("resid_pre"), want, rtol=1e-3, atol=1e-3)
    doc = res.to_dict()
    key = metric.replace("-", "_")
    assert doc["metric"] == key and f"clean_{key}" in doc and f"corrupted_{key}" in doc
    lo, hi = res.grid_interval("resid_pre")
    assert np.all(lo <= res.mean("resid_pre") + 1e-9) and np.all(res.mean("resid_pre") <= hi + 1e-9)
    if metric == "kl":
        assert np.abs(res.clean_logit_diff).max() < 1e-6  # the clean run against itself


def test_noising_with_kl_and_a_function_metric(model):
    """Noising (the base run is the clean one) with kl, and a Python function of the logits: what
    it receives (logits at the answer position, the answer ids) gives TL's prob-diff."""
    hf, tl = model

    def my_prob_diff(logits, ctx):
        p = torch.softmax(logits, -1)
        rows = torch.arange(len(p))
        return p[rows, ctx.correct] - p[rows, ctx.incorrect]

    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what=GRIDS, positions="index", direction="noise",
                       metric="kl")
    ref, _, _ = tl_patch(tl, seed_pairs(res), "kl", "noise")
    for g in GRIDS:
        np.testing.assert_allclose(res.mean(g), ref[g], rtol=0, atol=ATOL, err_msg=g)
    mine = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what=GRIDS, positions="index", metric=my_prob_diff)
    ref, clean, _ = tl_patch(tl, seed_pairs(res), "prob-diff")
    for g in GRIDS:
        close(mine.mean(g), ref[g], "prob-diff", err_msg=g)
    assert mine.to_dict()["metric"] == "metric_my_prob_diff"


def test_attribution_patching_takes_the_metrics_gradient(model):
    """Attribution patching of resid_pre with prob-diff: (clean − corrupted) · ∂prob-diff/∂resid_pre
    at the corrupted run, the gradient taken here with TL's hooks."""
    hf, tl = model
    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="resid_pre", positions="index",
                       metric="prob-diff", method="attribution")
    prompts = seed_pairs(res)
    clean = tl.to_tokens([p.text for p in prompts])
    corrupted = tl.to_tokens([p.corrupted for p in prompts])
    metric = tl_metric("prob-diff", _ids(tl, [p.correct for p in prompts]), _ids(tl, [p.incorrect for p in prompts]), None)
    _, clean_cache = tl.run_with_cache(clean)
    acts, grads = {}, {}

    def keep(x, hook):
        x.retain_grad()
        acts[hook.name] = x
        return x

    names = [f"blocks.{l}.hook_resid_pre" for l in range(tl.cfg.n_layers)]
    with torch.enable_grad():
        out = tl.run_with_hooks(corrupted, fwd_hooks=[(n, keep) for n in names])
        (metric(out) * len(prompts)).backward()  # per prompt: the sum's gradient, then the mean below
    for n in names:
        grads[n] = acts[n].grad
    delta = np.stack([((clean_cache[n] - acts[n].detach()) * grads[n]).sum(-1).mean(0).numpy() for n in names])
    base = float(metric(out.detach()))  # the estimate of the patched value: the corrupted run's plus the change
    close(res.mean("resid_pre_attribution"), base + delta, "prob-diff")
    assert moves(delta, 0.0, "prob-diff")


def _tl_hooked(tl, prompts, name, hooks):
    clean = tl.to_tokens([p.text for p in prompts])
    with torch.no_grad():
        metric = tl_metric(name, _ids(tl, [p.correct for p in prompts]), _ids(tl, [p.incorrect for p in prompts]),
                           tl(clean)[:, -1])
        return float(metric(tl.run_with_hooks(clean, fwd_hooks=hooks)))


def test_ablation_and_circuit_faithfulness_with_prob_diff(model):
    """Resample ablation of a head set, and a circuit's F(C) (every head outside it knocked out, its
    heads kept at END only), measured in prob-diff, against TL hooks replacing hook_z by the
    counterpart's."""
    hf, tl = model
    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="none", ablate="L0H1,L1H2", ablation="resample",
                       metric="prob-diff", circuit="nm: L1H0 @ END; s: L0H1 @ END", circuit_random=1)
    prompts = seed_pairs(res)
    with torch.no_grad():
        _, cache = tl.run_with_cache(tl.to_tokens([p.corrupted for p in prompts]))

    def heads(which):
        def hook(z, hook):
            z = z.clone()
            z[:, :, which] = cache[hook.name][:, :, which]
            return z
        return hook

    want = _tl_hooked(tl, prompts, "prob-diff", [("blocks.0.attn.hook_z", heads([1])), ("blocks.1.attn.hook_z", heads([2]))])
    (name,) = res.ablated
    close(res.ablated[name].mean(), want, "prob-diff")
    assert moves(want, res.clean_logit_diff.mean(), "prob-diff")

    def knock_out_but(keep):
        def hook(z, hook):
            layer = int(hook.name.split(".")[1])
            out = cache[hook.name].clone()
            for l, h in keep:
                if l == layer:
                    out[:, -1, h] = z[:, -1, h]  # kept at END only
            return out
        return hook

    f_c = _tl_hooked(tl, prompts, "prob-diff", [(f"blocks.{l}.attn.hook_z", knock_out_but([(1, 0), (0, 1)]))
                                                 for l in range(tl.cfg.n_layers)])
    f_m = _tl_hooked(tl, prompts, "prob-diff", [])
    circuit = res.circuit
    close(circuit.values[0].mean(), f_c, "prob-diff")
    close(circuit.model.mean(), f_m, "prob-diff")
    assert moves(f_c, f_m, "prob-diff")
    doc = circuit.to_dict()
    assert doc["metric_key"] == "prob_diff" and "P(correct answers)" in doc["metric"]


def set_pairs(res) -> list[ls.Prompt]:
    """The seed pairs with answer sets: each answer and a second alternative that no other set has."""
    return [ls.Prompt(p.text, (p.correct, " the"), (p.incorrect, " a", " of"), corrupted=p.corrupted)
            for p in seed_pairs(res)]


@pytest.mark.parametrize("metric", ["logit-diff", "prob-diff"])
def test_answer_sets_equal_a_hand_computation_and_transformerlens(metric, model):
    """Answer sets: the clean values per prompt by hand from TL's logits (mean logit of each set;
    summed probability), and the grids against TL patching with the set metric."""
    hf, tl = model
    base = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="none", ablate="L0H0")
    pairs = set_pairs(base)
    res = run_patching(pairs, hf, tokenizer=gpt2_tokenizer(), what=GRIDS, positions="index", metric=metric)
    with torch.no_grad():
        last = tl(tl.to_tokens([p.text for p in pairs]))[:, -1].double()
    ids = {a: tl.to_single_token(a) for a in (" the", " a", " of")}
    for n, p in enumerate(pairs):
        c = [tl.to_single_token(p.correct[0]), ids[" the"]]
        i = [tl.to_single_token(p.incorrect[0]), ids[" a"], ids[" of"]]
        if metric == "logit-diff":
            hand = (last[n, c[0]] + last[n, c[1]]) / 2 - (last[n, i[0]] + last[n, i[1]] + last[n, i[2]]) / 3
        else:
            prob = torch.softmax(last[n], -1)
            hand = prob[c].sum() - prob[i].sum()
        close(res.clean_logit_diff[n], float(hand), metric)
    ref, clean, corrupted = tl_patch(tl, pairs, metric)
    for g in GRIDS:
        close(res.mean(g), ref[g], metric, err_msg=g)
        assert moves(ref[g], corrupted, metric)
    if metric == "logit-diff":  # the mean logits move; the random model gives the extra tokens ~1e-9 probability
        assert moves(res.clean_logit_diff, base.clean_logit_diff, metric)
    assert not any("answer sets" in n for n in res.notes)  # the study decomposes the whole sets now
    if metric == "logit-diff":  # the study's (DLA's) mean-logit difference is the clean runs'
        close(res.study.logit_diff, res.clean_logit_diff, metric)


def test_intervene_takes_a_metric_name(model):
    hf, tl = model
    prompts = ls.builtin_prompts("seed")[:4]
    from logitscope.methods.hooks import intervene

    def halve(x, hook):  # (not a head's z: TL's folds its value bias out)
        return x * 0.5

    out = intervene(ls.wrap_model(hf, gpt2_tokenizer()), prompts, {"blocks.1.hook_resid_pre": halve}, metric="loss")
    want = _tl_hooked(tl, prompts, "loss", [("blocks.1.hook_resid_pre", halve)])
    np.testing.assert_allclose(out.means["hooked"], want, atol=ATOL)
    np.testing.assert_allclose(out.means["clean"], _tl_hooked(tl, prompts, "loss", []), atol=ATOL)
    assert moves(out.means["hooked"], out.means["clean"], "loss")
    assert out.metric == "loss"


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_answer_sets_are_clear_errors(model):
    hf, _ = model
    from logitscope.inputs.prompt import check_prompt, prompt_from_row

    with pytest.raises(InputError, match=r"^line 3: field 'correct' is an empty set"):
        check_prompt(ls.Prompt("When Mary and John went", (), " John"), "line 3")
    with pytest.raises(InputError, match=r"^line 4: field 'incorrect', alternative 1 must be"):
        prompt_from_row({"prompt": "x y", "correct": [" a"], "incorrect": [" b", None]}, "line 4")
    assert prompt_from_row({"prompt": "x y", "correct": [" a", " c"], "incorrect": " b"}, "l").correct == (" a", " c")
    shared = [ls.Prompt("When Mary and John went to the store, John gave a drink to", (" Mary", " the"),
                        (" John", " the"), corrupted="When Mary and John went to the store, Mary gave a drink to")]
    with pytest.raises(InputError, match=r"the token ' the' \(id \d+\) is in both the correct and the incorrect"):
        run_patching(shared, hf, tokenizer=gpt2_tokenizer(), what="heads", metric="prob-diff")
    multi = [ls.Prompt(shared[0].text, (" Mary", " Marianne Smith"), " John", corrupted=shared[0].corrupted)]
    with pytest.raises(InputError, match=r"answer ' Marianne Smith' is \d tokens"):
        run_patching(multi, hf, tokenizer=gpt2_tokenizer(), what="heads")
    sets = [ls.Prompt(shared[0].text, (" Mary", " Bob"), " John", corrupted=shared[0].corrupted)]
    with pytest.raises(InputError, match=r"answer sets .* are measured by run, patch, .* and edges; this one takes"):
        ls.logit_diff_directions(sets, hf, tokenizer=gpt2_tokenizer())
    assert ls.run_study(sets, hf, tokenizer=gpt2_tokenizer()).n_prompts == 1  # the study takes sets (test_sets_dla)


def test_bad_metrics_are_clear_errors(model):
    hf, _ = model
    with pytest.raises(ls.errors.ArgumentError, match=r"metric='accuracy': unknown metric; use one of logit-diff"):
        run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="heads", metric="accuracy")

    def wrong_shape(logits, ctx):
        return logits[:, :2]

    with pytest.raises(InputError, match=r"metric 'wrong_shape' returned \(\d+, 2\) for logits of shape"):
        run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="heads", metric=wrong_shape)
    exp = ls.Experiment(hf, "seed", tokenizer=gpt2_tokenizer())
    with pytest.raises(ls.errors.ArgumentError, match=r"study \(direct logit attribution\) decomposes the logit "
                       r"difference only.*pass metric='logit-diff'"):
        exp.study(metric="prob-diff")
    assert exp.ablate("L0H1", metric="loss").metric == "loss"


def test_cli_metric_and_its_errors(tmp_path, capsys):
    from logitscope.cli import main

    ckpt = save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path / "tiny")
    out = tmp_path / "out"
    assert main(["ablate", "L1H0", "--model", str(ckpt), "--prompts", "ioi:8", "--out", str(out), "--quiet",
                 "--no-report", "--metric", "logprob-diff"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["patching"]["metric"] == "logprob_diff" and "log P(correct answers)" in doc["patching"]["metric_description"]
    assert "corrupted_logprob_diff" in doc["prompts"][0]
    arrays = np.load(out / "patching_per_prompt.npz")
    assert "clean_logprob_diff" in arrays.files
    again = ls.load_result(out)
    assert again.metric == "logprob_diff"
    np.testing.assert_allclose(again.ablated["L1H0"], arrays["ablated_0"], rtol=0, atol=0)
    report = tmp_path / "report"
    assert main(["patch", "--what", "heads,ablation", "--model", str(ckpt), "--prompts", "ioi:8", "--out", str(report),
                 "--quiet", "--metric", "kl"]) == 0
    html = (report / "report.html").read_text()
    assert "Normalised KL" in html and "patched KL" in html and "Change in KL" in html and "KL(clean" in html
    capsys.readouterr()
    for argv, says in ((["run", "--metric", "kl"], "--metric kl: run (direct logit attribution) decomposes the logit "
                                                    "difference only"),
                       (["patch", "--metric", "accuracy"], "--metric accuracy: unknown metric")):
        dest = tmp_path / argv[0]
        assert main([*argv, "--model", str(ckpt), "--prompts", "ioi:4", "--out", str(dest), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert says in err, err
        assert not dest.exists() or not any(dest.iterdir())


def test_a_circuit_in_kl_has_no_fraction_of_f_m(model):
    """In kl, F(M) (the model against itself) is 0, so F(C)/F(M) and minimality's fractions have no
    value: the summary and the report say n/a / draw no bar, instead of failing (they did)."""
    from logitscope.report.page import report_html

    hf, _ = model
    res = run_patching("seed", hf, tokenizer=gpt2_tokenizer(), what="none", metric="kl",
                       circuit="nm: L1H0 @ END; s: L0H1 @ END", circuit_random=1)
    assert np.all(res.circuit.model == 0.0) and res.circuit.values[0].mean() > 1e-3
    assert "F(C)/F(M) n/a" in res.summary()
    assert "K), KL" in report_html(res.study, res)  # the completeness axes


@pytest.mark.parametrize("task", ["greater-than", "sva", "induction", "docstring"])
def test_each_tasks_own_metric_on_its_prompts_patches_as_transformerlens(task, model):
    """The task generators' prompts with each task's own metric (the default when none is given):
    resid_pre and every head's output against ``transformer_lens.patching`` with that metric written
    out from TL's logits (answer sets as a mean logit or a summed probability). TL's grids take
    prompts of one length, so the largest group of equal-length prompts (with their counterparts)."""
    from collections import defaultdict

    from logitscope.inputs.prompts import load_prompts
    from logitscope.inputs.tasks import TASKS

    hf, tl = model
    tok = gpt2_tokenizer()
    groups = defaultdict(list)
    for p in load_prompts(f"{task}:24", seed=0, tokenizer=tok):
        groups[len(tok(p.text)["input_ids"])].append(p)
    pairs = max(groups.values(), key=len)[:6]
    assert len(pairs) >= 2, task
    metric = TASKS[task].metric
    res = run_patching(pairs, hf, tokenizer=tok, what=GRIDS, positions="index")
    assert res.metric == metric.replace("-", "_")  # the task's metric, with none given
    ref, clean, corrupted = tl_patch(tl, pairs, metric)
    close(res.clean_logit_diff.mean(), clean, metric)
    close(res.corrupted_logit_diff.mean(), corrupted, metric)
    for g in GRIDS:
        close(res.mean(g), ref[g], metric, err_msg=f"{task} {g}")
        assert moves(ref[g], corrupted, metric), f"{task} {g}: the patches must move {metric}"
