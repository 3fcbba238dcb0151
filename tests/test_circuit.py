"""Circuits as data and their faithfulness, completeness and minimality.

- "All heads" is the model itself and "no heads" the model with every head mean-ablated, both
  exactly (bit for bit: the same runs as :mod:`logitscope.methods.ablation`'s).
- A circuit whose classes are kept at named IOI positions, every other head node mean-ablated per
  template over the ABC counterparts, equals a hand-written TransformerLens 3.9 knockout (ARENA
  1.4.1's ``add_mean_ablation_hook``) within 1e-4 (float32 through different arithmetic, as the
  patching tests), and the three measures are the stated functions of those numbers. ``M \\ K`` is
  the paper's (its code's ``cobble_eval``): K's heads mean-ablated at their nodes only.
- The greedy search for completeness sets K follows the paper's rule, step by step, on a
  synthetic score and on the tiny model's incompleteness recomputed from TransformerLens knockouts.
- Circuit files: the format, the built-in IOI circuit, and clear errors (line, problem, fix).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.inputs.circuits import IOI_HEAD_CLASSES, ioi_circuit, load_circuit, parse_circuit
from logitscope.api.patching import run_patching
from logitscope.methods.circuits import greedy_search
from logitscope.results.circuit import CircuitResult
from logitscope.inputs.ioi import generate_ioi_prompts
from oracle import gpt2_tokenizer, make_hf_model, save_checkpoint, tl_model

ATOL = 1e-4


@pytest.fixture(scope="module")
def gpt2():
    hf = make_hf_model("gpt2", size="tiny", seed=3)
    return hf, tl_model(hf, "gpt2")


def test_all_heads_is_the_model_and_no_heads_the_fully_ablated_model(gpt2):
    hf, _ = gpt2
    tok = gpt2_tokenizer()
    every = ",".join(f"L{l}H{h}" for l in range(2) for h in range(4))
    res = run_patching("ioi:12", hf, tokenizer=tok, what="none", circuit="L0 L1", ablate=every, ablation="mean",
                       seed=1, batch_size=5)
    c = res.circuit
    assert len(c.circuit.heads) == 8
    np.testing.assert_array_equal(c.model, res.clean_logit_diff)
    np.testing.assert_array_equal(c.circuit_logit_diff, c.model)  # F(all heads) = F(M)
    f = c.measures["faithfulness"]
    assert f["fraction"]["mean"] == 1.0 and f["gap"]["mean"] == 0.0 and f["normalised"]["mean"] == 1.0
    assert f["fraction"]["ci95_low"] == 1.0 == f["fraction"]["ci95_high"]
    np.testing.assert_array_equal(c.no_heads_logit_diff, res.ablated[every])  # F(∅) = every head mean-ablated
    assert np.abs(c.no_heads_logit_diff - c.model).max() > 1e-2
    # Completeness of the whole model: taking the same heads out of both changes nothing.
    assert all(r["incompleteness"]["mean"] == 0.0 for r in c.measures["completeness"])


def _named_positions(tl, prompt):
    toks = tl.to_tokens(prompt.text)[0]
    io, s = tl.to_single_token(prompt.correct), tl.to_single_token(prompt.incorrect)
    s1, s2 = torch.nonzero(toks == s)[:, 0].tolist()
    return {"IO": int(torch.nonzero(toks == io)[0, 0]), "S1": s1, "S1+1": s1 + 1, "S2": s2, "END": len(toks) - 1}


def tl_knockout(tl, pairs, keep: dict[tuple[int, int], tuple[str, ...]] | None,
                remove: dict[tuple[int, int], tuple[str, ...]] | None = None) -> np.ndarray:
    """Per-prompt logit difference with every head node outside ``keep`` replaced by its mean over
    the counterparts of the prompt's template, position by position (``None``: no knockout).

    ``remove`` instead: the IOI paper's ``M \\ K`` (its ``cobble_eval``: ``do_circuit_extraction(
    heads_to_remove=...)``): only those heads, only at those positions, replaced by the mean; every
    other head at every position, and those heads elsewhere, left as they are."""
    assert keep is None or remove is None
    out = np.empty(len(pairs))
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault((p.meta["template"], p.meta["order"]), []).append(i)
    L, H = tl.cfg.n_layers, tl.cfg.n_heads
    for idx in groups.values():
        group = [pairs[i] for i in idx]
        clean = tl.to_tokens([p.text for p in group])
        correct = torch.tensor([tl.to_single_token(p.correct) for p in group])
        incorrect = torch.tensor([tl.to_single_token(p.incorrect) for p in group])
        with torch.no_grad():
            _, cache = tl.run_with_cache(tl.to_tokens([p.corrupted for p in group]))
            masks = torch.full((L, len(group), clean.shape[1], H), remove is not None, dtype=torch.bool)
            for (layer, head), positions in (keep or remove or {}).items():
                for b, p in enumerate(group):
                    at = list(range(clean.shape[1])) if "all" in positions else [_named_positions(tl, p)[n] for n in positions]
                    masks[layer, b, at, head] = remove is None

            def hook(z, hook):
                mean = cache[hook.name].mean(0, keepdim=True).expand_as(z)
                return torch.where(masks[hook.layer()][..., None], z, mean)

            hooks = [] if keep is None and remove is None else [(f"blocks.{l}.attn.hook_z", hook) for l in range(L)]
            logits = tl.run_with_hooks(clean, fwd_hooks=hooks)[:, -1]
        rows = torch.arange(len(group))
        out[idx] = (logits[rows, correct] - logits[rows, incorrect]).numpy()
    return out


CIRCUIT = """\
# a small circuit of the tiny model
circuit: tiny-ioi
movers: L1H0 L1H2 @ END
induction: L0H1 @ S2
previous: 0.3 @ S1+1
minimality L1H2: none
"""


def test_circuit_measures_equal_a_transformerlens_knockout(gpt2, tmp_path):
    hf, tl = gpt2
    tok = gpt2_tokenizer()
    path = tmp_path / "tiny.circuit"
    path.write_text(CIRCUIT)
    prompts = generate_ioi_prompts(10, seed=4, tokenizer=tok, templates=[6, 14])
    res = run_patching(prompts, hf, tokenizer=tok, what="none", circuit=str(path), seed=4, batch_size=4)
    c = res.circuit
    assert c.circuit.name == "tiny-ioi" and [k.name for k in c.circuit.classes] == ["movers", "induction", "previous"]
    pairs = [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=x, meta=p.meta)
             for p, x in zip(res.study.prompts, res.corrupted_prompts)]
    assert len({len(tok.encode(p.text)) for p in pairs}) == 2  # two templates, two lengths
    keep = {(1, 0): ("END",), (1, 2): ("END",), (0, 1): ("S2",), (0, 3): ("S1+1",)}
    np.testing.assert_allclose(c.circuit_logit_diff, tl_knockout(tl, pairs, keep), atol=ATOL)
    assert np.abs(c.circuit_logit_diff - c.model).max() > 1e-2 and np.abs(c.circuit_logit_diff - c.no_heads_logit_diff).max() > 1e-2
    np.testing.assert_allclose(c.no_heads_logit_diff, tl_knockout(tl, pairs, {}), atol=ATOL)
    np.testing.assert_allclose(c.model, tl_knockout(tl, pairs, None), atol=ATOL)
    ms = c.measures
    # Completeness, K = each class: the circuit without it, and the model without K's nodes only (the
    # paper's M \\ K: K's heads mean-ablated at their class's positions, every other position kept).
    for name in ("movers", "induction", "previous"):
        (entry,) = [e for e in ms["completeness"] if e["k"] == f"class {name}"]
        k = [tuple(int(x) for x in label[1:].split("H")) for label in entry["heads"]]
        f_mk = tl_knockout(tl, pairs, None, remove={h: keep[h] for h in k}).mean()
        f_ck = tl_knockout(tl, pairs, {h: p for h, p in keep.items() if h not in k}).mean()
        assert entry["model_without_k"]["mean"] == pytest.approx(f_mk, abs=ATOL), name
        assert entry["circuit_without_k"]["mean"] == pytest.approx(f_ck, abs=ATOL), name
        assert entry["incompleteness"]["mean"] == pytest.approx(abs(f_ck - f_mk), abs=2 * ATOL), name
        # Not the reading that takes K's heads out at every position: for the layer-0 classes it differs
        # (the movers, in the last layer, reach the answer from END alone, so there both agree).
        everywhere = tl_knockout(tl, pairs, {(l, h): ("all",) for l in range(2) for h in range(4) if (l, h) not in k})
        # 0.195 for induction, 0.0033 for previous
        assert (abs(everywhere.mean() - f_mk) > 10 * ATOL) == (name != "movers"), name
    (entry,) = [e for e in ms["completeness"] if e["k"] == "class movers"]
    # Minimality: L1H2 with K given as none; L1H0 with the rest of its class (L1H2).
    by_head = {e["head"]: e for e in ms["minimality"]}
    assert by_head["L1H2"]["k"] == [] and by_head["L1H0"]["k"] == ["L1H2"] and by_head["L0H1"]["k"] == []
    f_c = c.circuit_logit_diff.mean()
    f_c_v = tl_knockout(tl, pairs, {k: v for k, v in keep.items() if k != (1, 2)}).mean()
    assert by_head["L1H2"]["score"]["mean"] == pytest.approx(abs(f_c - f_c_v), abs=2 * ATOL)
    assert by_head["L1H2"]["score_fraction"]["mean"] == pytest.approx(abs(f_c - f_c_v) / c.model.mean(), abs=1e-3)
    # Faithfulness and every interval, from the per-prompt values.
    m = c.model.mean()
    assert ms["faithfulness"]["gap"]["mean"] == pytest.approx(abs(m - f_c))
    assert ms["faithfulness"]["fraction"]["mean"] == pytest.approx(f_c / m)
    for s in (ms["model"], ms["circuit"], ms["faithfulness"]["gap"], entry["incompleteness"], by_head["L1H0"]["score"]):
        assert s["ci95_low"] <= s["mean"] + 1e-12 <= s["ci95_high"] + 2e-12
    assert ms["model"]["ci95_low"] == pytest.approx(res.to_dict()["clean_logit_diff"]["ci95_low"])  # the resamples
    assert [r["template"] for r in c.by_template()] and sum(r["n"] for r in c.by_template()) == 10
    doc = json.loads(json.dumps(res.results_document()))["patching"]["circuit"]
    assert doc["classes"][2] == {"name": "previous", "heads": ["L0H3"], "positions": ["S1+1"]}
    assert doc["faithfulness"]["fraction"]["mean"] == pytest.approx(f_c / m)


def test_greedy_search_follows_the_papers_rule():
    """Every step tries min(candidates, heads left) distinct heads outside K and adds the best one
    only if it raises the score; with every head tried, a search stops when none does."""
    heads = [(0, h) for h in range(6)]
    w = dict(zip(heads, [0.5, -0.2, 0.9, 0.1, -0.4, 0.3]))

    def score(k):  # not monotone: the best K has some heads, not all
        return abs(sum(w[h] for h in k)) - 0.12 * len(k) ** 2

    calls: list[list[tuple]] = []

    def traced(ks):
        calls.append(list(ks))
        return np.array([score(k) for k in ks])

    # Every head tried each step: one answer, the exhaustive greedy walk, found by each search alike.
    k, best = [], 0.0
    while len(k) < 6:
        rest = [h for h in heads if h not in k]
        top = max(rest, key=lambda h: score((*k, h)))
        if score((*k, top)) <= best:
            break
        k, best = [*k, top], score((*k, top))
    assert greedy_search(traced, heads, 0.0, searches=3, steps=10, candidates=10, seed=0) == [tuple(k)]
    assert len(k) == 2 and len(calls) == 3 * (len(k) + 1)  # each search stops after the step that adds nothing
    assert greedy_search(traced, heads, 0.0, searches=1, steps=1, candidates=10, seed=0) == [tuple(k[:1])]  # steps cap
    # Two heads drawn a step: replay the trace with the rule.
    calls.clear()
    found = greedy_search(traced, heads, 0.0, searches=4, steps=3, candidates=2, seed=5)
    assert len(calls) == 4 * 3  # never fewer than 3 heads left, so no search stops early
    replay = []
    for search in range(4):
        k, best = [], 0.0
        for ks in calls[3 * search:3 * search + 3]:
            tried = [c[-1] for c in ks]
            assert all(c[:-1] == tuple(k) for c in ks) and len(set(tried)) == 2 and not set(tried) & set(k)
            scores = [score(c) for c in ks]
            if max(scores) > best:
                k, best = [*k, tried[int(np.argmax(scores))]], max(scores)
        if set(k) not in [set(r) for r in replay]:
            replay.append(tuple(k))
    assert found == replay and len({frozenset(c[-1] for c in ks) for ks in calls}) > 1  # draws differ


def test_greedy_completeness_set_equals_the_greedy_rule_on_transformerlens_knockouts(gpt2, tmp_path):
    """The tiny model's greedy K, and its incompleteness, from F values of a TransformerLens knockout:
    each added head is the argmax over the heads left (4 heads: every one tried each step), each step
    raises |F(C \\ K) − F(M \\ K)|, and no head left raises it further."""
    hf, tl = gpt2
    tok = gpt2_tokenizer()
    prompts = generate_ioi_prompts(10, seed=4, tokenizer=tok, templates=[6, 14])
    (tmp_path / "tiny.circuit").write_text(CIRCUIT)
    res = run_patching(prompts, hf, tokenizer=tok, what="none", circuit=str(tmp_path / "tiny.circuit"), seed=4,
                       batch_size=5, circuit_random=0, circuit_greedy=2)
    entries = res.circuit.measures["completeness"]
    assert [e["source"] for e in entries] == ["empty", "class", "class", "class", "greedy"]  # one K: both searches alike
    greedy = [tuple(int(x) for x in h[1:].split("H")) for h in entries[-1]["heads"]]
    pairs = [ls.Prompt(p.text, p.correct, p.incorrect, corrupted=x, meta=p.meta)
             for p, x in zip(res.study.prompts, res.corrupted_prompts)]
    keep = {(1, 0): ("END",), (1, 2): ("END",), (0, 1): ("S2",), (0, 3): ("S1+1",)}

    def incompleteness(k):  # the paper's M \\ K: K's heads knocked out at their nodes only
        model = tl_knockout(tl, pairs, None, remove={h: keep[h] for h in k}) if k else tl_knockout(tl, pairs, None)
        return abs(tl_knockout(tl, pairs, {h: p for h, p in keep.items() if h not in k}).mean() - model.mean())

    k, best = [], incompleteness(())
    assert entries[0]["incompleteness"]["mean"] == pytest.approx(best, abs=2 * ATOL)
    for step in range(len(keep)):
        rest = [h for h in keep if h not in k]
        scores = {h: incompleteness((*k, h)) for h in rest}
        if step == len(greedy):  # the search stopped: no head left raises the score
            assert max(scores.values()) <= best + 4 * ATOL
            break
        chosen = greedy[step]
        assert chosen in rest and scores[chosen] >= max(scores.values()) - 4 * ATOL and scores[chosen] > best - 4 * ATOL
        k, best = [*k, chosen], scores[chosen]
    assert len(greedy) >= 1
    assert entries[-1]["incompleteness"]["mean"] == pytest.approx(best, abs=2 * ATOL)
    s = entries[-1]["incompleteness"]
    assert s["ci95_low"] <= s["mean"] + 1e-12 <= s["ci95_high"] + 2e-12
    doc = res.circuit.to_dict()
    assert doc["completeness_sets"] == {"random": 0, "greedy": 2, "greedy_steps": 10, "greedy_candidates": 10}
    # A results.json written before K had a source reopens with the source its label says.
    old = {**doc, "completeness": [{k: v for k, v in e.items() if k != "source"} for e in doc["completeness"]]}
    del old["completeness_sets"]
    again = CircuitResult.from_saved(old, res.circuit.per_prompt_arrays(), 2, 4, seed=4)
    assert again.measures["completeness"] == entries
    # One written before M \\ K took the paper's reading (no k_removed_at) says it took K out everywhere.
    older = CircuitResult.from_saved({k: v for k, v in doc.items() if k != "k_removed_at"},
                                     res.circuit.per_prompt_arrays(), 2, 4, seed=4)
    assert older.k_removed_at == "all positions" and "saved before" in older.setting


def test_random_completeness_sets_are_distinct_and_capped(gpt2):
    """Random sets K are distinct, none the empty set or a class again, and no more are drawn than
    exist (with a warning): a 2-head circuit of one class has 2 subsets left, not 100,000."""
    from logitscope.methods.circuits import completeness_sets

    five = parse_circuit("a: L0H0 L0H1 @ END; b: L1H0 L1H1 L1H2")
    for asked, seed in [(10, 0), (25, 1), (40, 2)]:
        if asked > 2 ** 5 - 3:
            with pytest.warns(UserWarning, match=rf"circuit_random={asked}: the circuit has 32 subsets of its 5 heads, "
                              "29 of them not the empty set or a class; drawing 29"):
                ks = completeness_sets(five, asked, seed)
        else:
            ks = completeness_sets(five, asked, seed)
        sets = [frozenset(k) for _, _, k in ks]
        assert len(set(sets)) == len(sets) == 3 + min(asked, 29)  # ∅, two classes, the random ones
    hf, _ = gpt2
    with pytest.warns(UserWarning, match=r"circuit_random=100000: the circuit has 4 subsets of its 2 heads, 2 of them"):
        res = run_patching("ioi:4", hf, tokenizer=gpt2_tokenizer(), what="none", circuit="L1H0,L1H2",
                           circuit_random=100000)
    doc = res.circuit.to_dict()
    assert [e["heads"] for e in doc["completeness"]] == [[], ["L1H0", "L1H2"], ["L1H0"], ["L1H2"]] or \
        [e["heads"] for e in doc["completeness"]] == [[], ["L1H0", "L1H2"], ["L1H2"], ["L1H0"]]
    assert doc["completeness_sets"]["random"] == 2 and doc["completeness_sets"]["random_requested"] == 100000
    assert "note: 2 random sets K, not 100000" in res.circuit.summary()
    # An unnamed circuit is "circuit", not "circuit circuit".
    assert res.circuit.summary().startswith("circuit (2 heads, mean-ablation elsewhere)")
    again = CircuitResult.from_saved(json.loads(json.dumps(doc)), res.circuit.per_prompt_arrays(), 2, 4, seed=0)
    assert again.to_dict()["completeness_sets"] == doc["completeness_sets"]


def test_prepend_bos_is_stated_in_the_patching_and_circuit_results(gpt2, tmp_path):
    """Whether BOS was prepended is in results.json's patching and circuit sections and in the report;
    for the IOI paper's circuit measured with BOS, the result says the paper did not and how to match it."""
    import dataclasses

    hf, _ = gpt2
    tok = gpt2_tokenizer()
    for bos in (True, False):
        res = run_patching("ioi:4", hf, tokenizer=tok, what="none", circuit="nm: L1H0 @ END", prepend_bos=bos,
                           circuit_random=0)
        doc = json.loads(json.dumps(res.results_document()))["patching"]
        assert doc["prepend_bos"] is bos and doc["circuit"]["prepend_bos"] is bos and "note" not in doc["circuit"]
        assert doc["circuit"]["k_removed_at"] == "class positions"
        assert len(res.study.prompts) == 4 and (res.circuit.prepend_bos is bos)
        html = res.write_report(tmp_path / f"r{bos}.html").read_text()
        said = "BOS prepended to every prompt" if bos else "No BOS prepended"
        assert said in html and f"BOS prepended to every prompt and counterpart: {'yes' if bos else 'no'}" in html
        again = ls.load_result(res.save(tmp_path / f"out{bos}", report=False))
        assert again.circuit.prepend_bos is bos
    paper = dataclasses.replace(res.circuit, circuit=ioi_circuit(), prepend_bos=True)
    assert "IOIDataset(..., prepend_bos=False)" in paper.to_dict()["note"] and "--no-prepend-bos" in paper.summary()
    assert "--no-prepend-bos" in paper.setting
    assert dataclasses.replace(paper, prepend_bos=False).bos_note is None


def test_bad_completeness_options_are_clear_errors(gpt2, tmp_path, capsys):
    from logitscope.cli import main

    hf, _ = gpt2
    tok = gpt2_tokenizer()
    for kwargs, message in [
        ({"circuit_greedy": -1}, r"circuit_greedy=-1: the number of greedy searches must be 0 or more"),
        ({"circuit_greedy_steps": 0}, r"circuit_greedy_steps=0: the number of steps of each greedy search must be 1"),
        ({"circuit_greedy_candidates": 0}, r"circuit_greedy_candidates=0: the number of heads tried a step must be 1"),
        ({"circuit_random": 2.5}, r"circuit_random=2.5: must be a whole number"),
        ({"circuit_greedy": True}, r"circuit_greedy=True: must be a whole number"),
    ]:
        with pytest.raises(ls.ArgumentError, match=message):
            run_patching("ioi:4", hf, tokenizer=tok, what="none", circuit="L1H0", **kwargs)
    with pytest.raises(ls.ArgumentError, match=r"circuit_greedy=3: sets a circuit's completeness check, and no circuit"):
        run_patching("ioi:4", hf, tokenizer=tok, what="heads", circuit_greedy=3)
    out = tmp_path / "out"
    assert main(["patch", "--model", str(tmp_path / "missing"), "--prompts", "ioi:4", "--out", str(out),
                 "--circuit", "L1H0", "--circuit-greedy-steps", "0"]) == 2
    assert "--circuit-greedy-steps 0: the number of steps of each greedy search must be 1 or more" in capsys.readouterr().err
    assert main(["patch", "--model", str(tmp_path / "missing"), "--prompts", "ioi:4", "--out", str(out),
                 "--circuit-random", "3"]) == 2
    assert "--circuit-random 3: sets a circuit's completeness check, and no circuit is given" in capsys.readouterr().err
    assert not out.exists()


def test_the_ioi_minimality_sets_are_the_papers_code():
    """The sets K of the built-in circuit, rebuilt here from the rule of the paper's released
    minimality.py: its K[v] holds v; a name mover's is the prefix of its name-mover order up to v,
    9.0's and 11.9's every name mover and both negative ones, 5.8's and 5.9's the negative name
    movers plus v, every other head's its whole class. logitscope stores K without v."""
    order = [(9, 9), (10, 0), (9, 6), (10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)]
    negative = [(10, 7), (11, 10)]
    classes = {"name mover": order, "negative": negative, "s2 inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)],
               "induction": [(5, 5), (5, 8), (5, 9), (6, 9)], "duplicate token": [(0, 1), (0, 10), (3, 0)],
               "previous token": [(2, 2), (4, 11)]}
    paper = {v: set(heads) for heads in classes.values() for v in heads}
    paper.update({v: set(order[:i + 1]) for i, v in enumerate(order)})
    paper.update({v: set(order + negative) for v in [(9, 0), (11, 9)]})
    paper.update({v: {(11, 10), (10, 7), v} for v in [(5, 8), (5, 9)]})
    c = ioi_circuit()
    assert set(paper) == set(c.heads)
    for v in c.heads:
        assert set(c.k_set(v)) == paper[v] - {v} and len(c.k_set(v)) == len(paper[v]) - 1, v
    # A backup name mover's K is in the paper's order (its prefix), e.g. 10.10 after the three name movers.
    assert c.k_set((10, 10)) == ((9, 9), (10, 0), (9, 6)) and c.k_set((9, 7))[-1] == (11, 2)


def test_the_ioi_circuit_is_the_papers():
    c = ioi_circuit()
    assert len(c.heads) == 26 and len(set(c.heads)) == 26
    assert {k.name: k.heads for k in c.classes} == IOI_HEAD_CLASSES
    at = {k.name: k.positions for k in c.classes}
    assert at["name mover"] == at["S-inhibition"] == at["backup name mover"] == at["negative name mover"] == ("END",)
    assert at["induction"] == at["duplicate token"] == ("S2",) and at["previous token"] == ("S1+1",)
    # The paper's minimality sets (App. K): name movers in order, the rest of a class otherwise.
    assert c.k_set((9, 9)) == () and c.k_set((9, 6)) == ((9, 9), (10, 0))
    assert set(c.k_set((7, 3))) == {(7, 9), (8, 10), (8, 6)} and c.k_set((5, 8)) == ((11, 10), (10, 7))
    for head in c.heads:
        assert head not in c.k_set(head) and set(c.k_set(head)) <= set(c.heads)
    assert load_circuit("ioi") == c and load_circuit("IOI").name == "ioi"


def test_bad_circuits_are_clear_errors(gpt2, tmp_path):
    bad = {
        "nm L9H9\n": r"c.txt, line 1: 'nm L9H9' has no 'CLASS:' before its heads; write e.g. 'name mover: L9H9",
        "# fine\nnm: L9X\n": r"c.txt, line 2: 'L9X' is not a head: write L9H9 or 9.9",
        "nm: L9H9 @ S3\n": r"line 1: position 'S3' is not one of END, IO, S1, S1\+1, S2, all",
        "nm: L9H9\n\nsi: 9.9\n": r"line 3: L9H9 is also on line 1: a head belongs to one class",
        "nm: L9H9\nnm: L9H6\n": r"line 2: class 'nm' is written twice",
        "nm:\n": r"line 1: class 'nm' has no heads",
        "# nothing\n": r"c.txt: no heads in it\nA circuit file has one class",
        "nm: L1H1\nminimality L1H1: L1H1 L1X\n": r"line 2: 'L1X' is not a head",
    }
    for text, message in bad.items():
        path = tmp_path / "c.txt"
        path.write_text(text)
        with pytest.raises(ls.InputError, match=message):
            load_circuit(str(path))
    with pytest.raises(ls.InputError, match=r"circuit file nowhere.txt: no such file"):
        load_circuit("nowhere.txt")
    with pytest.raises(ls.InputError, match=r"circuit inline, part 2: 'L1Y' is not a head"):
        parse_circuit("nm: L1H1; si: L1Y")
    # Against the model and the prompts, before any knocked-out run.
    hf, _ = gpt2
    tok = gpt2_tokenizer()
    for spec, message in [
        ("nm: L1H1\nsi: L2H0\n", r"c.txt, line 2: layer 2 does not exist: this model has layers 0-1"),
        ("nm: L1H7\n", r"c.txt, line 1: L1H7 does not exist: this model has heads 0-3"),
        ("nm: L1H1\nminimality L1H1: L0H0\n", r"line 2: minimality L1H1: L0H0 is not in the circuit"),
    ]:
        (tmp_path / "c.txt").write_text(spec)
        with pytest.raises(ls.InputError, match=message):
            run_patching("ioi:4", hf, tokenizer=tok, what="none", circuit=str(tmp_path / "c.txt"))
    with pytest.raises(ls.InputError, match=r"class 'nm' is kept at S2, named positions that exist only for IOI prompts"):
        run_patching("arena", hf, tokenizer=tok, what="none", circuit="nm: L1H1 @ S2")
    with pytest.raises(ls.InputError, match=r"circuit ioi is the IOI paper's circuit of GPT-2 small; this model .* is not"):
        run_patching("ioi:4", hf, tokenizer=tok, what="none", circuit="ioi")


def test_patch_command_paths_and_circuit_end_to_end(tmp_path, capsys):
    """One command: activation patching with its attribution estimate and their agreement, path
    patching from chosen senders and a circuit file's faithfulness, all in results.json (with intervals), patching_per_prompt.npz and the report;
    a bad circuit file is a clear error (exit 2) before the model loads, and nothing is written."""
    from logitscope.cli import main

    model = save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path / "tiny")
    circuit = tmp_path / "mine.circuit"
    circuit.write_text(CIRCUIT)
    out = tmp_path / "out"
    assert main(["patch", "--model", str(model), "--prompts", "ioi:12", "--out", str(out), "--quiet", "--what", "heads",
                 "--direction", "noise", "--senders", "L0H1,L0H3+L1H0", "--receivers", "logits,L1H2:q",
                 "--circuit", str(circuit), "--circuit-random", "2", "--circuit-greedy", "2", "--method", "both"]) == 0
    text = capsys.readouterr().out
    assert "path patching (noise, freeze heads): 2 senders x 2 receivers" in text
    assert "circuit tiny-ioi (4 heads, mean-ablation elsewhere)" in text and "faithfulness |F(M) - F(C)|" in text
    doc = json.loads((out / "results.json").read_text())["patching"]
    assert np.array(doc["paths"]["values"]).shape == (2, 2) and np.array(doc["paths"]["effect_ci95_low"]).shape == (2, 2)
    assert doc["circuit"]["name"] == "tiny-ioi" and doc["circuit"]["faithfulness"]["gap"]["ci95_high"] is not None
    sources = [e["source"] for e in doc["circuit"]["completeness"]]
    assert sources[:6] == ["empty", "class", "class", "class", "random", "random"] and set(sources[6:]) == {"greedy"}
    assert doc["circuit"]["completeness_sets"]["greedy"] == 2
    assert doc["attn_head_out_all_pos"]["axes"] == doc["attn_head_out_all_pos_attribution"]["axes"] == ["layer", "head"]
    assert {"pearson", "spearman", "max_abs_error"} <= set(doc["agreement"]["attn_head_out_all_pos"])
    arrays = np.load(out / "patching_per_prompt.npz")
    np.testing.assert_allclose(arrays["paths"].mean(-1), doc["paths"]["values"], atol=1e-5)
    np.testing.assert_allclose(arrays["circuit_circuit"].mean(), doc["circuit"]["circuit"]["mean"], atol=1e-5)
    html = (out / "report.html").read_text()
    assert 'id="circuit"' in html and 'href="#circuit"' in html and "greedy search" in html
    for name in ("paths", "completeness", "minimality", "patch_attn_head_out_all_pos", "atp_scatter_attn_head_out_all_pos"):
        assert f'data-figure="{name}"' in html
    # Reopened, the run is the same result: results.json, summary and report.
    from logitscope.report.page import report_html

    again = ls.load_result(out)
    assert json.loads(json.dumps(again.results_document())) == json.loads((out / "results.json").read_text())
    assert again.summary() in text
    assert report_html(again.study, again) == html
    before = sorted(p.name for p in out.iterdir())
    circuit.write_text("movers: L1H0 L1H2 @ END\nmore: L1H0\n")
    assert main(["patch", "--model", str(tmp_path / "missing"), "--prompts", "ioi:12", "--out", str(out),
                 "--circuit", str(circuit)]) == 2
    err = capsys.readouterr().err
    assert f"circuit {circuit}, line 2: L1H0 is also on line 1" in err
    assert main(["patch", "--model", str(model), "--prompts", "ioi:12", "--out", str(out), "--senders", "L0H1",
                 "--receivers", "L1H0:x"]) == 2
    assert "--receivers L1H0:x: 'L1H0:x': write logits" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.browser
def test_circuit_report_renders_offline_in_chromium(gpt2, tmp_path):
    """The path-patching grid and the circuit figures draw in a browser with no network."""
    from test_report import render_dom, rendering_failures

    hf, _ = gpt2
    res = run_patching("ioi:8", hf, tokenizer=gpt2_tokenizer(), what="none", direction="noise", senders="all",
                       receivers="logits,L1H0:q,L1H1:v", circuit="nm: L1H0 L1H2 @ END; prev: L0H3", seed=2)
    page = res.write_report(tmp_path / "report.html")
    dom, log = render_dom(page, tmp_path)
    assert "Uncaught" not in log, log[-2000:]
    assert rendering_failures(dom, ["paths", "completeness", "minimality"], []) == []
    assert "Circuit (3 heads)" in dom and "Circuit circuit" not in dom and ">L1H0 q<" in dom and ">L0H3<" in dom  # drawn axis ticks
