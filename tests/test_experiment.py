"""ls.Experiment: one model and prompt set, one method per call, the same numbers and files as the
wrappers (run_study, run_patching) given the same options."""

from __future__ import annotations

import json

import numpy as np
import pytest

import logitscope as ls


def _doc(result) -> dict:
    """results.json's document without what differs between two runs of the same study."""
    doc = json.loads(json.dumps(result.results_document() if hasattr(result, "results_document") else result.to_dict()))
    for d in (doc, doc.get("patching") or {}):
        d.pop("timing", None)
    doc.pop("created", None)
    return doc


@pytest.fixture(scope="module")
def exp(tiny_gpt2_dir):
    return ls.Experiment(str(tiny_gpt2_dir), "ioi:12", device="cpu", seed=3, batch_size=5)


def test_the_model_and_prompts_are_prepared_once(exp):
    pairs = exp.pairs
    assert exp.pairs is pairs and len(pairs) == 12 and all(p.corrupted for p in pairs)
    assert [p.text for p in pairs] == [p.text for p in exp.prompts]
    assert "12 prompts" in repr(exp)


def test_study_equals_run_study(exp, tiny_gpt2_dir):
    ours = exp.study(top_k=2)
    theirs = ls.run_study("ioi:12", exp.lm, seed=3, batch_size=5, top_k=2)
    assert isinstance(ours, ls.StudyResult)
    np.testing.assert_array_equal(ours.head_results, theirs.head_results)
    assert _doc(ours) == _doc(theirs)


def test_patch_ablate_paths_and_circuit_equal_run_patching(exp):
    cases = [
        (exp.patch("heads", direction="noise"), dict(what="heads", direction="noise")),
        (exp.ablate("L1H0,L0H1", ablation="zero"), dict(what="none", ablate="L1H0,L0H1", ablation="zero")),
        (exp.paths("L0H1", "logits,L1H0:q"), dict(what="none", senders="L0H1", receivers="logits,L1H0:q")),
        (exp.circuit("L1H0,L1H1", random_k=2), dict(what="none", circuit="L1H0,L1H1", circuit_random=2)),
    ]
    assert len({id(ours.study) for ours, _ in cases}) == 1  # the clean prompts' study is made once
    assert cases[0][0].study.prompts[0].corrupted  # on the prepared pairs
    for ours, options in cases:
        theirs = ls.run_patching("ioi:12", exp.lm, seed=3, batch_size=5, **options)
        assert isinstance(ours, ls.PatchingResult)
        assert _doc(ours) == _doc(theirs), options


def test_patch_takes_the_ablation_of_the_head_ablation_grid(exp):
    """``patch(..., ablation=...)`` as the CLI's ``patch --what ablation --ablation zero``: the
    single-head ablation grid by zero ablation, equal to run_patching's, and not the default (mean)."""
    zero = exp.patch(["heads", "ablation"], ablation="zero")
    theirs = ls.run_patching("ioi:12", exp.lm, seed=3, batch_size=5, what=["heads", "ablation"], ablation="zero")
    assert zero.ablation_kind == "zero" and _doc(zero) == _doc(theirs)
    np.testing.assert_array_equal(zero.ablated_heads, theirs.ablated_heads)
    mean = exp.patch(["heads", "ablation"])
    assert mean.ablation_kind == "mean" and not np.array_equal(mean.ablated_heads, zero.ablated_heads)
    with pytest.raises(ls.ArgumentError, match="ablation"):
        exp.patch("ablation", ablation="half")


def test_the_study_nobody_asked_for_is_said_once_on_stderr(exp, capsys):
    """run_patching computes the clean prompts' study for its report: with progress bars on, one
    line on stderr says so (not in the results); Experiment says it once, on the call that makes it."""
    line = "logitscope: the report's DLA study ran too (12 clean prompts; a patching result is built around it)"
    quiet = ls.run_patching("ioi:12", exp.lm, seed=3, batch_size=5, what="none", ablate="L1H0")
    assert line not in capsys.readouterr().err
    shown = ls.run_patching("ioi:12", exp.lm, seed=3, batch_size=5, what="none", ablate="L1H0", progress=True)
    assert capsys.readouterr().err.count(line) == 1
    assert _doc(shown) == _doc(quiet)  # said, not stored
    talky = ls.Experiment(exp.lm, "ioi:12", seed=3, batch_size=5, progress=True)
    talky.ablate("L1H0")
    talky.paths("L0H1")
    assert capsys.readouterr().err.count(line) == 1


def test_each_method_takes_only_its_own_options(exp):
    with pytest.raises(TypeError):
        exp.ablate("L1H0", senders="L0H1")  # a path-patching option is not ablation's
    with pytest.raises(ls.ArgumentError, match="corrupt"):
        ls.Experiment(exp.lm, "ioi:4", corrupt="swap")


def test_activations_and_intervene_equal_the_functions(exp):
    from logitscope.methods.hooks import activations, intervene

    names = ["blocks.1.attn.hook_z", "blocks.0.hook_resid_post"]
    ours, theirs = exp.activations(names), activations(exp.lm, exp.prompts, names, batch_size=5)
    for name in names:
        assert ours[name].shape[0] == 12
        assert bool((ours[name] == theirs[name]).all())

    def zero_l1h0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    ours = exp.intervene({"blocks.1.attn.hook_z": zero_l1h0})
    theirs = intervene(exp.lm, exp.prompts, {"blocks.1.attn.hook_z": zero_l1h0}, batch_size=5, seed=3)
    np.testing.assert_array_equal(ours.hooked, theirs.hooked)
    assert not np.array_equal(ours.hooked, ours.clean)  # the hook did something


def test_patch_options_defaults_are_the_public_ones():
    """Experiment and run_patching take their patching defaults from one place (the option objects
    of methods/patching/options.py): each flat name patch_options takes is one of run_patching's
    keywords, at the default its public signature documents; a bad option still fails with its name."""
    import inspect

    from logitscope.errors import ArgumentError
    from logitscope.methods.patching.options import PatchOptions, patch_options
    from logitscope.results.circuit import Completeness

    public = inspect.signature(ls.run_patching).parameters
    got = patch_options(what="heads")
    assert got == PatchOptions()
    flat = {"what": got.grids.what, "positions": got.grids.positions, "method": got.grids.method,
            "ablate": got.ablations.ablate, "senders": got.paths.senders, "receivers": got.paths.receivers,
            "freeze": got.paths.freeze, "circuit": got.circuit.circuit, "direction": got.direction,
            "ablation": got.ablation, "metric": got.metric,
            "circuit_random": got.circuit.completeness.random, "circuit_greedy": got.circuit.completeness.greedy,
            "circuit_greedy_steps": got.circuit.completeness.steps,
            "circuit_greedy_candidates": got.circuit.completeness.candidates}
    for name, value in flat.items():
        assert value == public[name].default, name
    patch_options(**flat)  # every flat name is one patch_options takes
    given = patch_options(what="none", circuit="L0H0", circuit_random=2, circuit_greedy=1, direction="noise")
    assert given.circuit.completeness == Completeness(2, 1, 10, 10) and given.direction == "noise"
    assert given.grids.grids == () and given.circuit.circuit == "L0H0"
    with pytest.raises(ArgumentError, match="direction"):
        patch_options(direction="sideways")
    with pytest.raises(TypeError, match="sender"):
        patch_options(sender="L0H0")


def _counted(monkeypatch, module, name):
    """Replace ``module.name`` with the same function that counts its calls."""
    real, calls = getattr(module, name), []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


@pytest.mark.parametrize("study_first", [True, False])
def test_study_and_the_causal_methods_share_one_study(exp, monkeypatch, study_first):
    """study() at its defaults is the study every patching result carries: one DLA study for
    study() + patch() + ablate() in either order, and a repeated study() recomputes nothing; each
    equals a fresh run_study / run_patching (results.json and arrays), the study() one without the
    counterparts, the patching results' with them."""
    from dataclasses import fields

    from logitscope.methods import dla

    theirs_study = ls.run_study("ioi:12", exp.lm, seed=3, batch_size=5)
    theirs_patch = ls.run_patching("ioi:12", exp.lm, seed=3, batch_size=5, what="heads")
    theirs_ablate = ls.run_patching("ioi:12", exp.lm, seed=3, batch_size=5, what="none", ablate="L1H0")
    calls = _counted(monkeypatch, dla, "study")
    fresh = ls.Experiment(exp.lm, "ioi:12", seed=3, batch_size=5)
    if study_first:
        ours_study = fresh.study()
        ours_patch, ours_ablate = fresh.patch("heads"), fresh.ablate("L1H0")
    else:
        ours_patch, ours_ablate = fresh.patch("heads"), fresh.ablate("L1H0")
        ours_study = fresh.study()
    assert fresh.study() is ours_study
    assert len(calls) == 1
    assert not any(p.corrupted for p in ours_study.prompts) and all(p.corrupted for p in ours_patch.study.prompts)
    assert ours_study.prompts == theirs_study.prompts and ours_patch.study.prompts == theirs_patch.study.prompts
    assert _doc(ours_study) == _doc(theirs_study)
    assert _doc(ours_patch) == _doc(theirs_patch) and _doc(ours_ablate) == _doc(theirs_ablate)
    arrays = [f.name for f in fields(theirs_study) if isinstance(getattr(theirs_study, f.name), np.ndarray)]
    assert "head_results" in arrays and "logit_diff" in arrays
    for name in arrays:
        assert np.array_equal(getattr(ours_study, name), getattr(theirs_study, name)), name
        assert np.array_equal(getattr(ours_patch.study, name), getattr(theirs_patch.study, name)), name
    assert np.array_equal(ours_study.attention.patterns, theirs_study.attention.patterns)
    np.testing.assert_array_equal(ours_patch.grids["attn_head_out_all_pos"], theirs_patch.grids["attn_head_out_all_pos"])
    fresh.study(top_k=2)  # other options: a study of their own
    assert len(calls) == 2


def test_study_is_not_shared_where_the_prompts_name_their_own_metric(tiny_gpt2_dir, monkeypatch):
    """study() warns that it decomposes the logit difference where a task measures another metric
    (the causal methods' study does not warn): after patch(), study() runs its own study."""
    from logitscope.methods import dla

    prompts = [ls.Prompt(p.text, p.correct, p.incorrect, meta={**p.meta, "metric": "logprob"})
               for p in ls.builtin_prompts("seed")[:4]]
    exp = ls.Experiment(str(tiny_gpt2_dir), prompts, device="cpu", seed=3, batch_size=5)
    calls = _counted(monkeypatch, dla, "study")
    exp.ablate("L1H0")
    with pytest.warns(UserWarning, match="logprob"):
        exp.study()
    assert len(calls) == 2


def test_activations_and_intervene_encode_the_prompts_once(exp, monkeypatch):
    from logitscope.methods import hooks
    from logitscope.methods.hooks import activations, intervene

    fresh = ls.Experiment(exp.lm, "ioi:12", seed=3, batch_size=5)
    calls = _counted(monkeypatch, hooks, "encode_prompts")
    names = ["blocks.1.attn.hook_z"]
    ours = fresh.activations(names)
    clean = fresh.intervene({"blocks.1.attn.hook_z": lambda z, hook: None})
    assert len(calls) == 1
    theirs = activations(exp.lm, exp.prompts, names, batch_size=5)
    assert bool((ours[names[0]] == theirs[names[0]]).all())
    theirs = intervene(exp.lm, exp.prompts, {"blocks.1.attn.hook_z": lambda z, hook: None}, batch_size=5, seed=3)
    np.testing.assert_array_equal(clean.hooked, theirs.hooked)
    np.testing.assert_array_equal(clean.clean, theirs.clean)
    fresh.activations(names, prompts=exp.prompts[:2])  # other prompts: encoded as given
    assert len(calls) == 4


def test_same_but_counterparts_compares_all_but_the_counterpart():
    """The guard of the shared study: equal prompts but for ``corrupted`` share; a changed text,
    answer (or its type: an id is not its text), metadata or length does not."""
    from dataclasses import replace

    from logitscope.api.prepared import same_but_counterparts

    a = [ls.Prompt("When Mary and John went, John gave it to", " Mary", " John", meta={"template": 1})]
    assert same_but_counterparts(a, [replace(a[0], corrupted="When Anna and Bob went, Carl gave it to")])
    for other in (replace(a[0], text=a[0].text + " her"), replace(a[0], correct=" Anna"),
                  replace(a[0], correct=5335), replace(a[0], meta={"template": 2})):
        assert not same_but_counterparts(a, [other])
    assert not same_but_counterparts(a, a + a)


def test_what_the_experiment_made_once_cannot_be_changed_under_it(tiny_gpt2_dir):
    """The prompts and the shared options are read-only: the pairs, the encodings and the study are
    made once from them, so a changed batch size or seed would leave a stale study behind."""
    exp = ls.Experiment(str(tiny_gpt2_dir), "ioi:4", device="cpu", batch_size=2, seed=1)
    for name, value in (("prompts", []), ("batch_size", 3), ("seed", 2), ("prepend_bos", False), ("corrupt", "flip")):
        with pytest.raises(AttributeError):
            setattr(exp, name, value)
    assert (exp.batch_size, exp.seed, len(exp.prompts)) == (2, 1, 4)
    exp.progress = False  # progress bars only
