"""Edge-level circuit discovery (logitscope.methods.edges) against an independent reference on
TransformerLens 3.9 hooks.

The reference (``TLEdges``) runs each prompt alone (no padding) on the HookedTransformer twin with
``use_split_qkv_input``, ``use_attn_result``, ``use_hook_mlp_in`` (and
``ungroup_grouped_query_attention`` for grouped-query models), as the EAP-IG library configures it:
node outputs are ``hook_embed``, ``attn.hook_result``, ``hook_mlp_out``; child inputs are
``hook_{q,k,v}_input``, ``hook_mlp_in`` and the last ``hook_resid_post``. logitscope runs the
Hugging Face model in right-padded batches, so every comparison also checks that padding and the
batch size change nothing.

Tolerances: float32 on unit-scale random weights; scores are sums of ~10^3 products, compared with
rtol 1e-4 / atol 1e-5 (observed differences ~1e-6).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers

import oracle
from logitscope.methods.edges.attribute import EdgeData, EdgeEngine
from logitscope.results.edge_graph import EdgeGraph, greedy, prune_edges, top_n
from logitscope.models import wrap_model

VOCAB = 100
ATOL, RTOL = 1e-5, 1e-4


def _data(seed: int = 0, lengths=(6, 8, 7)) -> EdgeData:
    rng = np.random.default_rng(seed)
    clean = [[5] + [int(t) for t in rng.integers(1, VOCAB, n)] for n in lengths]
    corr = [[5] + [int(t) for t in rng.integers(1, VOCAB, len(c) - 1)] for c in clean]
    n = len(lengths)
    return EdgeData(clean, corr, [1 + i % 3 for i in range(n)], [4 + i % 3 for i in range(n)])


_MODELS: dict = {}


def _models(family: str):
    if family not in _MODELS:
        hf = oracle.make_hf_model(family, vocab_size=VOCAB)
        tl = oracle.tl_model(hf, family, **oracle.NO_PROCESSING_FLAGS)
        tl.set_use_split_qkv_input(True)
        tl.set_use_attn_result(True)
        tl.set_use_hook_mlp_in(True)
        if tl.cfg.n_key_value_heads is not None:
            tl.set_ungroup_grouped_query_attention(True)
        _MODELS[family] = (wrap_model(hf, oracle.gpt2_tokenizer()), tl)
    return _MODELS[family]


class TLEdges:
    """Edge attribution written out on TransformerLens hooks, one prompt at a time."""

    def __init__(self, tl, graph: EdgeGraph, data: EdgeData, intervention: str = "patching"):
        self.tl, self.g, self.data, self.intervention = tl, graph, data, intervention
        self.L, self.H = tl.cfg.n_layers, tl.cfg.n_heads

    # node outputs as [pos, n_forward, d]
    def outputs(self, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        names = ["hook_embed"] + [f"blocks.{l}.{n}" for l in range(self.L) for n in ("attn.hook_result", "hook_mlp_out")]
        with torch.no_grad():
            logits, cache = self.tl.run_with_cache(torch.tensor([tokens]), names_filter=lambda n: n in names)
        parts = [cache["hook_embed"][0][:, None]]
        for l in range(self.L):
            parts += [self._head_out(cache, l), cache[f"blocks.{l}.hook_mlp_out"][0][:, None]]
        return torch.cat(parts, dim=1), logits[0]

    def _head_out(self, cache, l):
        return cache[f"blocks.{l}.attn.hook_result"][0]

    def means(self) -> torch.Tensor:
        outs = [self.outputs(c)[0] for c in self.data.corrupted]
        if self.intervention == "mean":
            return torch.cat(outs).mean(0)
        width = max(o.shape[0] for o in outs)
        return torch.stack([torch.stack([o[p] for o in outs if o.shape[0] > p]).mean(0) for p in range(width)])

    def corrupted(self, i: int, clean_outs: torch.Tensor) -> torch.Tensor:
        if self.intervention == "patching":
            return self.outputs(self.data.corrupted[i])[0]
        if self.intervention == "zero":
            return torch.zeros_like(clean_outs)
        m = self.means()
        return m.expand_as(clean_outs) if self.intervention == "mean" else m[: clean_outs.shape[0]]

    def metric(self, logits, i):
        return logits[-1, self.data.correct[i]] - logits[-1, self.data.incorrect[i]]

    def child_hooks(self):
        """(hook name, backward slots it carries, prev)."""
        g = self.g
        out = []
        for l in range(self.L):
            for x in "qkv":
                out.append((f"blocks.{l}.hook_{x}_input", g.qkv_index(l, x), g.attn_prev(l)))
            out.append((f"blocks.{l}.hook_mlp_in", g.mlp_in_index(l), g.mlp_prev(l)))
        out.append((f"blocks.{self.L - 1}.hook_resid_post", g.logits_index, g.logits_prev))
        return out

    def gradients(self, tokens, i, replace=None) -> dict[str, torch.Tensor]:
        """Gradient of the metric at each child input hook; ``replace``: {hook name: constant}."""
        kept: dict[str, torch.Tensor] = {}

        def keep(x, hook):
            x.retain_grad()
            kept[hook.name] = x

        def put(value):
            def fn(x, hook):
                v = value.detach().clone().reshape(x.shape)
                return v.requires_grad_(True) if hook.name == "hook_embed" else v
            return fn

        hooks = [(name, keep) for name, _, _ in self.child_hooks()]
        hooks += [(name, put(v)) for name, v in (replace or {}).items()]
        with torch.enable_grad():
            logits = self.tl.run_with_hooks(torch.tensor([tokens]), fwd_hooks=hooks)
            self.metric(logits[0], i).backward()
        self.tl.zero_grad(set_to_none=True)
        return {n: (t.grad[0] if t.grad is not None else torch.zeros_like(t[0])) for n, t in kept.items()}

    def accumulate(self, scores, diff, grads, weight=1.0):
        for name, b0, prev in self.child_hooks():
            g = grads[name]
            if g.dim() == 2:
                g = g[:, None]
            scores[:prev, b0:b0 + g.shape[1]] += weight * torch.einsum("pfd,pnd->fn", diff[:, :prev].double(), g.double())

    def scores(self, method: str, steps: int = 3) -> torch.Tensor:
        g = self.g
        scores = torch.zeros(g.n_forward, g.n_backward, dtype=torch.float64)
        for i, tokens in enumerate(self.data.clean):
            clean, _ = self.outputs(tokens)
            corr = self.corrupted(i, clean)
            diff = corr - clean
            if method == "eap":
                self.accumulate(scores, diff, self.gradients(tokens, i))
            elif method == "clean-corrupted":
                self.accumulate(scores, diff, self.gradients(tokens, i), 0.5)
                self.accumulate(scores, diff, self.gradients(self.data.corrupted[i], i), 0.5)
            elif method == "eap-ig-inputs":
                for k in range(steps):
                    x = corr[:, 0] + k / steps * (clean[:, 0] - corr[:, 0])
                    self.accumulate(scores, diff, self.gradients(tokens, i, {"hook_embed": x}), 1 / steps)
            elif method == "eap-ig-activations":
                groups = [("hook_embed", slice(0, 1))]
                for l in range(self.L):
                    groups.append((f"blocks.{l}.attn.hook_result", slice(g.head_index(l), g.head_index(l) + self.H)))
                    groups.append((f"blocks.{l}.hook_mlp_out", slice(g.mlp_index(l), g.mlp_index(l) + 1)))
                for name, sl in groups:
                    for k in range(1, steps + 1):
                        a = k / steps
                        v = a * clean[:, sl] + (1 - a) * corr[:, sl]
                        self.accumulate(scores, diff, self.gradients(tokens, i, {name: v[None]}),
                                        1 / (steps * (2 * self.L + 1)))
        return scores / len(self.data.clean)

    def circuit_metric(self, i: int, ablate: torch.Tensor) -> float:
        """The metric with each edge of ``ablate`` carrying the parent's corrupted output: a child's
        input gets (corrupted − this run's output) of each ablated parent."""
        tokens = self.data.clean[i]
        clean, _ = self.outputs(tokens)
        corr = self.corrupted(i, clean)
        actual: dict[int, torch.Tensor] = {}
        g = self.g

        def rec(f0):
            def fn(x, hook):
                out = x[0] if x.dim() == 4 else x[0][:, None]
                for j in range(out.shape[1]):
                    actual[f0 + j] = out[:, j]
            return fn

        def add(b0, prev):
            def fn(x, hook):
                x = x.clone()
                for f in range(prev):
                    for j in range(x.shape[2] if x.dim() == 4 else 1):
                        if ablate[f, b0 + j]:
                            d = corr[:, f] - actual[f]
                            if x.dim() == 4:
                                x[0, :, j] += d
                            else:
                                x[0] += d
                return x
            return fn

        hooks = [("hook_embed", rec(0))]
        for l in range(self.L):
            hooks += [(f"blocks.{l}.attn.hook_result", rec(g.head_index(l))), (f"blocks.{l}.hook_mlp_out", rec(g.mlp_index(l)))]
        hooks += [(name, add(b0, prev)) for name, b0, prev in self.child_hooks()]
        with torch.no_grad():
            logits = self.tl.run_with_hooks(torch.tensor([tokens]), fwd_hooks=hooks)
        return float(self.metric(logits[0], i))


# ---------------------------------------------------------------------- graph
def test_graph_counts_and_names_match_the_library():
    g = EdgeGraph(12, 12)  # GPT-2 small: MIB's 32,491 edges
    assert (g.n_forward, g.n_backward, g.n_edges) == (157, 445, 32491)
    names = g.edge_names
    assert names[:4] == ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->a0.h1<q>"]
    assert names[-1] == "m11->logits" and "a0.h1->a2.h3<q>" in g.edge_lookup() and "m0->m1" in g.edge_lookup()
    assert "input->logits" in g.edge_lookup() and "m1->m0" not in g.edge_lookup()
    assert int(g.real.sum()) == g.n_edges
    # parallel attention and MLP: the MLP of layer L does not receive layer L's heads
    p = EdgeGraph(2, 2, parallel_attn_mlp=True)
    assert "a0.h0->m0" not in p.edge_lookup() and "input->m0" in p.edge_lookup() and "a0.h0->m1" in p.edge_lookup()
    assert p.n_edges == EdgeGraph(2, 2).n_edges - 2 * 2


def test_prune_keeps_only_paths_from_input_to_logits():
    g = EdgeGraph(2, 2)
    lk = g.edge_lookup()
    src, dst = g.edge_index
    keep = torch.zeros(g.n_forward, g.n_backward, dtype=torch.bool)
    for name in ("input->a0.h0<v>", "a0.h0->logits", "a0.h1->m1", "input->m0"):
        e = lk[name]
        keep[src[e], dst[e]] = True
    pruned = prune_edges(g, keep)
    kept = {n for n, e in lk.items() if pruned[src[e], dst[e]]}
    # a0.h1 has no input; m0 reaches nothing; m1 has no path to logits
    assert kept == {"input->a0.h0<v>", "a0.h0->logits"}


def test_top_n_and_greedy_pick_the_best_scores():
    g = EdgeGraph(2, 2)
    rng = np.random.default_rng(1)
    scores = g.matrix(torch.as_tensor(rng.normal(size=g.n_edges)))
    v = g.edge_vector(scores)
    top = top_n(g, scores, 5, prune=False)
    best = set(torch.argsort(v.abs(), descending=True)[:5].tolist())
    assert set(torch.nonzero(g.edge_vector(top)).flatten().tolist()) == best
    signed = top_n(g, scores, 5, absolute=False, prune=False)
    assert set(torch.nonzero(g.edge_vector(signed)).flatten().tolist()) == set(torch.argsort(v, descending=True)[:5].tolist())
    gr = greedy(g, scores, 6, prune=False)
    assert int(gr.sum()) == 6
    chosen = torch.nonzero(g.edge_vector(gr)).flatten().tolist()
    # the first greedy edge is the best edge into logits
    into_logits = [e for e in range(g.n_edges) if g.edge_index[1][e] == g.logits_index]
    assert max(into_logits, key=lambda e: abs(float(v[e]))) in chosen


# ---------------------------------------------------------------------- scores vs the reference
CASES = [("gpt2", "eap", "patching"), ("gpt2", "eap", "mean"), ("gpt2", "eap", "mean-positional"),
         ("gpt2", "eap", "zero"), ("gpt2", "clean-corrupted", "patching"), ("gpt2", "eap-ig-inputs", "patching"),
         ("gpt2", "eap-ig-activations", "patching"), ("gpt2", "eap-ig-activations", "zero"),
         ("llama", "eap", "patching"), ("llama", "eap", "mean"), ("llama", "eap-ig-inputs", "patching"),
         ("llama", "clean-corrupted", "patching"), ("llama", "eap-ig-activations", "mean-positional")]


@pytest.mark.parametrize("family,method,intervention", CASES)
def test_scores_equal_the_transformerlens_reference(family, method, intervention):
    lm, tl = _models(family)
    data = _data()
    eng = EdgeEngine(lm, data, intervention=intervention, batch_size=2)
    ours = eng.scores(method, steps=3)
    ref = TLEdges(tl, eng.graph, data, intervention).scores(method, steps=3)
    assert ours.abs().max() > 1e-2  # not trivially zero
    torch.testing.assert_close(ours, ref, atol=ATOL * 10, rtol=RTOL)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_exact_equals_corrupting_each_edge_by_hand(family):
    lm, tl = _models(family)
    data = _data(lengths=(5, 7))
    eng = EdgeEngine(lm, data, batch_size=2)
    ours = eng.scores("exact")
    ref = TLEdges(tl, eng.graph, data)
    g = eng.graph
    src, dst = g.edge_index
    rng = np.random.default_rng(0)
    for e in rng.choice(g.n_edges, size=12, replace=False):
        ab = torch.zeros(g.n_forward, g.n_backward, dtype=torch.bool)
        ab[src[e], dst[e]] = True
        expected = np.mean([ref.circuit_metric(i, ab) - ref.circuit_metric(i, ab & False) for i in range(data.n)])
        assert float(ours[src[e], dst[e]]) == pytest.approx(expected, abs=1e-4)


def test_scores_do_not_depend_on_the_batch_size():
    lm, _ = _models("gpt2")
    data = _data(lengths=(6, 8, 7, 4))
    a = EdgeEngine(lm, data, batch_size=1).scores("eap")
    b = EdgeEngine(lm, data, batch_size=4).scores("eap")
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_eap_equals_exact_where_the_metric_is_linear_in_the_edge():
    """With the final norm frozen (its scale fixed at the clean run's), the logit difference is
    linear in the logits' input, so an edge into ``logits`` changes it by exactly diff · gradient:
    EAP equals exact on every edge into logits (and differs elsewhere: the check can fail)."""
    lm, _ = _models("gpt2")
    data = _data()
    eng = EdgeEngine(lm, data, batch_size=3)
    norm = lm.adapter.final_norm(lm.model)
    frozen: dict = {}

    def freeze(module, args, out):  # LayerNorm with the clean run's mean and scale, per position
        x = args[0]
        key = tuple(x.shape)
        if key not in frozen:
            frozen[key] = (x.mean(-1, keepdim=True).detach(), torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps).detach())
        mu, inv = frozen[key]
        return (x - mu) * inv * norm.weight + norm.bias

    def freeze_at_clean() -> None:  # the clean runs' statistics, whichever run the engine makes first
        frozen.clear()
        with torch.no_grad():
            for batch in data.batches(3, torch.device("cpu")):
                lm.model(input_ids=batch.clean, attention_mask=batch.mask, use_cache=False)

    h = norm.register_forward_hook(freeze)
    try:
        freeze_at_clean()
        exact = eng.scores("exact")
        freeze_at_clean()
        eap = eng.scores("eap")
    finally:
        h.remove()
    li = eng.graph.logits_index
    torch.testing.assert_close(eap[:, li], exact[:, li], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(eap, exact, atol=1e-3)  # elsewhere the estimate is not exact


# ---------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_full_and_empty_circuits_and_a_hand_built_one(family):
    lm, tl = _models(family)
    data = _data()
    eng = EdgeEngine(lm, data, batch_size=2)
    g = eng.graph
    full, empty = g.real.clone(), torch.zeros_like(g.real)
    lk, (src, dst) = g.edge_lookup(), g.edge_index
    hand = torch.zeros_like(g.real)
    for name in ("input->a0.h0<q>", "input->a0.h1<v>", "a0.h1->a1.h2<k>", "a0.h0->m0", "m0->logits",
                 "a1.h2->logits", "input->logits", "input->m1", "m1->logits"):
        hand[src[lk[name]], dst[lk[name]]] = True
    values, clean = eng.evaluate([full, empty, hand])
    np.testing.assert_allclose(values[0], clean, atol=1e-5)
    # every edge corrupted is the corrupted run
    ref = TLEdges(tl, g, data)
    corr_metric = [float(ref.metric(ref.outputs(c)[1], i)) for i, c in enumerate(data.corrupted)]
    np.testing.assert_allclose(values[1], corr_metric, atol=1e-4)
    expected = [ref.circuit_metric(i, g.real & ~hand) for i in range(data.n)]
    np.testing.assert_allclose(values[2], expected, atol=1e-4)


def test_curve_fractions_areas_and_bounds():
    from logitscope.methods.edges.evaluate import FRACTIONS, areas, faithfulness_curve

    f = np.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.0])
    cpr, cmd = areas(FRACTIONS, f)
    # trapezoids written out on MIB's linear scale
    want = sum((FRACTIONS[i + 1] - FRACTIONS[i]) * (f[i] + f[i + 1]) / 2 for i in range(9))
    assert cpr == pytest.approx(want) and cmd == pytest.approx(sum(
        (FRACTIONS[i + 1] - FRACTIONS[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(9)))
    lm, _ = _models("gpt2")
    data = _data()
    eng = EdgeEngine(lm, data, batch_size=3)
    scores = eng.scores("eap")
    curve = faithfulness_curve(eng, scores, n_resamples=50)
    g = eng.graph
    assert curve.n_requested == [int(fr * g.n_edges) for fr in FRACTIONS]
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-6)  # all edges: f = 1
    assert all(lo <= v + 1e-9 and v <= hi + 1e-9 for lo, v, hi in zip(curve.low, curve.faithfulness, curve.high))
    # each point is the pruned top-n circuit evaluated exactly
    n = curve.n_requested[6]
    c = top_n(g, scores, n)
    values, clean = eng.evaluate([c, torch.zeros_like(g.real)])
    f6 = (values[0].mean() - values[1].mean()) / (clean.mean() - values[1].mean())
    assert curve.faithfulness[6] == pytest.approx(f6)
    assert curve.n_edges[6] == int(c.sum()) <= n


def test_graph_json_round_trip_and_a_file_in_the_library_layout(tmp_path):
    from logitscope.methods.edges import read_graph_json, write_graph_json
    from logitscope.errors import InputError

    g = EdgeGraph(2, 2, d_model=8)
    rng = np.random.default_rng(3)
    scores = g.matrix(torch.as_tensor(rng.normal(size=g.n_edges)))
    circuit = top_n(g, scores, 10)
    path = write_graph_json(tmp_path / "graph.json", g, scores, circuit, g.node_scores(scores))
    g2, s2, c2, n2 = read_graph_json(path, expected=g)
    assert g2 == g and torch.equal(c2, circuit)
    torch.testing.assert_close(s2, scores.double())
    torch.testing.assert_close(n2, g.node_scores(scores).double())
    d = json.loads(path.read_text())
    assert list(d["edges"])[:3] == ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>"]
    assert d["nodes"]["logits"] == {"in_graph": True}
    # a file as the library's Graph.to_json lays it out (no node scores), written by hand
    names = g.edge_names
    lib = {"cfg": {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8, "d_vocab": 100},
           "nodes": {n: {"in_graph": n in ("input", "a1.h0")} for n in g.forward_names} | {"logits": {"in_graph": True}},
           "edges": {n: {"score": float(i) / 10, "in_graph": n in ("input->a1.h0<v>", "a1.h0->logits")}
                     for i, n in enumerate(names)}}
    (tmp_path / "lib.json").write_text(json.dumps(lib))
    g3, s3, c3, n3 = read_graph_json(tmp_path / "lib.json", expected=g)
    assert n3 is None and int(c3.sum()) == 2 and float(g3.edge_vector(s3)[5]) == pytest.approx(0.5)
    with pytest.raises(InputError, match="another model"):
        read_graph_json(tmp_path / "lib.json", expected=EdgeGraph(3, 2))
    (tmp_path / "bad.json").write_text(json.dumps({"cfg": {}}))
    with pytest.raises(InputError, match="no nodes, edges"):
        read_graph_json(tmp_path / "bad.json")


def test_a_loaded_graph_file_evaluates():
    from logitscope.methods.edges import faithfulness, read_graph_json, write_graph_json

    lm, tl = _models("gpt2")
    data = _data()
    eng = EdgeEngine(lm, data, batch_size=3)
    g = eng.graph
    scores = eng.scores("eap")
    import tempfile, pathlib
    with tempfile.TemporaryDirectory() as d:
        p = write_graph_json(pathlib.Path(d) / "graph.json", g, scores, top_n(g, scores, 30))
        _, _, circuit, _ = read_graph_json(p, expected=g)
    f, m_c, m_e, m_n = faithfulness(eng, circuit)
    ref = TLEdges(tl, g, data)
    np.testing.assert_allclose(m_c, [ref.circuit_metric(i, g.real & ~circuit) for i in range(data.n)], atol=1e-4)
    assert f == pytest.approx((m_c.mean() - m_e.mean()) / (m_n.mean() - m_e.mean()))


def test_bad_options_are_clear_errors_before_any_run():
    from logitscope.methods.edges import attribute
    from logitscope.errors import ArgumentError, InputError

    lm, _ = _models("gpt2")
    data = _data()
    with pytest.raises(ArgumentError, match="unknown method"):
        attribute(lm, data, method="eap-ig")
    with pytest.raises(ArgumentError, match="steps=0"):
        attribute(lm, data, method="eap-ig-inputs", steps=0)
    with pytest.raises(ArgumentError, match="patching"):
        attribute(lm, data, method="clean-corrupted", intervention="mean")
    with pytest.raises(ArgumentError, match="unknown intervention"):
        attribute(lm, data, method="eap", intervention="resample")
    with pytest.raises(InputError, match="same number of tokens"):
        EdgeData([[5, 1, 2]], [[5, 1]], [1], [2])


def test_attribute_on_prompts_with_counterparts_and_a_callable_metric():
    from logitscope.methods.edges import attribute, encode_edge_data
    from logitscope.inputs import Prompt

    hf = oracle.make_hf_model("gpt2")  # the GPT-2 tokenizer's vocabulary
    lm = wrap_model(hf, oracle.gpt2_tokenizer())
    prompts = [Prompt("When Mary and John went to the store, John gave a drink to", " Mary", " John",
                      corrupted="When Alice and Bob went to the store, Bob gave a drink to"),
               Prompt("Then, Anna and Tom had a long argument. Afterwards Tom said to", " Anna", " Tom",
                      corrupted="Then, Lisa and Paul had a long argument. Afterwards Paul said to")]
    res = attribute(lm, prompts, method="eap", curve=True, exact_top=3)
    data = encode_edge_data(lm, prompts)
    assert data.clean[0][0] == oracle.BOS_ID  # BOS prepended
    direct = EdgeEngine(lm, data).scores("eap")
    torch.testing.assert_close(res.scores, direct)
    d = res.to_dict()
    assert d["method"] == "eap" and len(d["top_edges"]) == 20 and "exact" in d["top_edges"][0]
    assert d["curve"]["faithfulness"][-1] == pytest.approx(1.0, abs=1e-6) and "cpr" in d["curve_signed"]
    assert "CPR" in res.summary()
    # a callable metric: twice the logit difference doubles every score
    # (logits [b, d_vocab] at the answer position, as every method's callable metric)
    twice = attribute(lm, prompts, method="eap", metric=lambda logits, ctx: 2 * (
        logits.gather(1, ctx.correct[:, None])[:, 0] - logits.gather(1, ctx.incorrect[:, None])[:, 0]))
    torch.testing.assert_close(twice.scores, 2 * direct)


class TLSets(TLEdges):
    """The reference measuring log P(correct set) − log P(incorrect set) at the last token, P of a
    set the sum of its members' probabilities (sets ``[N, K]`` padded with ``-1``), written out here
    independently of engine/metrics.py."""

    def metric(self, logits, i):
        logp = torch.log_softmax(logits[-1].float(), dim=-1)

        def log_p(ids):
            return torch.logsumexp(logp[[int(t) for t in ids if t >= 0]], dim=0)

        return log_p(self.data.correct[i]) - log_p(self.data.incorrect[i])


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs"])
def test_logprob_diff_on_answer_sets_equals_the_reference(method):
    """Edges measure engine/metrics.py's metrics, answer sets whole: EAP and EAP-IG scores with
    ``logprob-diff`` on SVA's four-verb sets equal the TransformerLens reference given that metric
    (tolerances as the other score comparisons), and differ from the first verbs' alone (so the
    sets are read)."""
    from logitscope.methods.edges import attribute, encode_edge_data

    hf = oracle.make_hf_model("gpt2", size="tiny", seed=1)  # the GPT-2 tokenizer's vocabulary
    lm = wrap_model(hf, oracle.gpt2_tokenizer())
    tl = oracle.tl_model(hf, "gpt2", **oracle.NO_PROCESSING_FLAGS)
    tl.set_use_split_qkv_input(True)
    tl.set_use_attn_result(True)
    tl.set_use_hook_mlp_in(True)
    data = encode_edge_data(lm, "sva:4")
    assert data.correct.shape == data.incorrect.shape == (4, 4)  # four verbs each, no padding needed
    eng = EdgeEngine(lm, data, metric="logprob-diff", batch_size=3)
    ours = eng.scores(method, steps=2)
    ref = TLSets(tl, eng.graph, data).scores(method, steps=2)
    assert ours.abs().max() > 1e-2
    torch.testing.assert_close(ours, ref, atol=ATOL * 10, rtol=RTOL)
    via_attribute = attribute(lm, "sva:4", method=method, steps=2, metric="logprob-diff", batch_size=3)
    torch.testing.assert_close(via_attribute.scores, ours)
    assert via_attribute.metric == "logprob-diff"
    first = EdgeData(data.clean, data.corrupted, data.correct[:, 0], data.incorrect[:, 0])
    alone = EdgeEngine(lm, first, metric="logprob-diff", batch_size=3).scores(method, steps=2)
    assert (alone - ours).abs().max() > 1e-3


def test_every_metric_name_scores_and_a_task_s_own_is_the_default(tiny_gpt2_dir):
    """Every name of engine/metrics.py's METRICS scores edges: ``loss`` = −``logprob`` exactly,
    ``kl`` is 0 and flat at the clean run (EAP scores 0 to float noise), the others are not zero
    (prob-diff's are small: the random model spreads its probability over 50k tokens);
    ``logitscope.edges`` without a metric takes the task's (greater-than: ``prob-diff``, the same
    scores as asked for by name)."""
    import logitscope as ls
    from logitscope.engine.metrics import METRICS
    from logitscope.methods.edges import encode_edge_data

    lm = ls.load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_edge_data(lm, "sva:4")
    scores = {name: EdgeEngine(lm, data, metric=name, batch_size=4).scores("eap") for name in METRICS}
    torch.testing.assert_close(scores["loss"], -scores["logprob"], rtol=0, atol=0)
    assert float(scores["kl"].abs().max()) < 1e-6
    for name in ("logit-diff", "logprob-diff", "prob-diff", "logprob"):
        assert float(scores[name].abs().max()) > 0, name
    assert not torch.allclose(scores["logprob-diff"], scores["logit-diff"])
    opts = dict(method="eap", curve=False, device="cpu", batch_size=4)
    own = ls.edges("greater-than:4", lm, **opts)
    named = ls.edges("greater-than:4", lm, metric="prob-diff", **opts)
    assert own.metric == "prob-diff"
    torch.testing.assert_close(own.scores, named.scores, rtol=0, atol=0)


class TLPostNorm(TLEdges):
    """Gemma 2 / OLMo-2: a head's output is its ``hook_result`` through the layer's post-norm
    factor ``w / rms`` of the same run (TransformerLens's ``ln1_post.hook_scale`` is the rms)."""

    def outputs(self, tokens):
        names = ["hook_embed"] + [f"blocks.{l}.{n}" for l in range(self.L)
                                  for n in ("attn.hook_result", "hook_mlp_out", "ln1_post.hook_scale")]
        with torch.no_grad():
            logits, cache = self.tl.run_with_cache(torch.tensor([tokens]), names_filter=lambda n: n in names)
        parts = [cache["hook_embed"][0][:, None]]
        for l in range(self.L):
            w = self.tl.blocks[l].ln1_post.w
            head = cache[f"blocks.{l}.attn.hook_result"][0] / cache[f"blocks.{l}.ln1_post.hook_scale"][0][:, None] * w
            parts += [head, cache[f"blocks.{l}.hook_mlp_out"][0][:, None]]
        return torch.cat(parts, dim=1), logits[0]


@pytest.mark.parametrize("method,intervention", [("eap", "patching"), ("eap-ig-inputs", "patching"), ("eap", "mean")])
def test_scores_with_sublayer_post_norms_equal_the_reference(method, intervention):
    lm, tl = _models("gemma2")
    data = _data()
    eng = EdgeEngine(lm, data, intervention=intervention, batch_size=2)
    ours = eng.scores(method, steps=2)
    ref = TLPostNorm(tl, eng.graph, data, intervention).scores(method, steps=2)
    assert ours.abs().max() > 1e-2
    torch.testing.assert_close(ours, ref, atol=ATOL * 10, rtol=RTOL)
    # the heads' outputs add up to what the layer writes: every edge corrupted is the corrupted run
    values, clean = eng.evaluate([torch.zeros_like(eng.graph.real), eng.graph.real])
    np.testing.assert_allclose(values[1], clean, atol=1e-5)
    if intervention != "patching":
        return
    r = TLPostNorm(tl, eng.graph, data)
    np.testing.assert_allclose(values[0], [float(r.metric(r.outputs(c)[1], i)) for i, c in enumerate(data.corrupted)],
                               atol=1e-4)


FAST_FAMILIES = ["gptj", "gpt_neox", "olmo2", "qwen3"]  # parallel, fused q/k/v, no input norm, q/k norms
OTHER_FAMILIES = ["gpt_neo", "mistral", "mixtral", "qwen2", "gemma", "gemma3"]


def _derivative_check(family: str, hf=None) -> None:
    """On any family: every edge corrupted is the corrupted run, none is the clean run (the node
    outputs add up to the residual stream), and an edge's EAP score is the derivative of the metric
    along that edge's corruption, (m(+ε) − m(−ε)) / 2ε with the child's input moved by ε·(corrupted −
    clean) of the parent (central difference, ε = 1e-2: error ~1e-4 at these scales)."""
    hf = hf if hf is not None else oracle.make_hf_model(family, vocab_size=VOCAB)
    lm = wrap_model(hf, oracle.gpt2_tokenizer())
    data = _data(lengths=(6, 8))
    eng = EdgeEngine(lm, data, batch_size=2)
    g = eng.graph
    values, clean = eng.evaluate([g.real, torch.zeros_like(g.real)])
    np.testing.assert_allclose(values[0], clean, atol=1e-5)
    with torch.no_grad():
        corr = []
        for i, c in enumerate(data.corrupted):
            lg = hf(torch.tensor([c])).logits[0, -1]
            corr.append(float(lg[data.correct[i]] - lg[data.incorrect[i]]))
    np.testing.assert_allclose(values[1], corr, atol=1e-4)
    scores = eng.scores("eap")
    batch = next(data.batches(2, torch.device("cpu")))
    keep = eng._answer_keep(batch)  # the logits at the answer positions only, as the engine runs them
    assert keep is not None
    with torch.no_grad():
        clean_logits = eng._forward(batch.clean, batch.mask, keep)
    corr_outs = eng.corrupted_outputs(batch)
    ctx = eng._context(batch, clean_logits, keep)
    nothing = torch.zeros(g.n_forward, g.n_backward, dtype=torch.bool)  # evaluate() does not run this one
    torch.testing.assert_close(eng._circuit_logits(batch, corr_outs, nothing, keep), clean_logits, atol=1e-5, rtol=1e-5)
    src, dst = g.edge_index
    lk = g.edge_lookup()
    for name in ("input->a0.h1<q>", "input->a0.h0<k>", "input->a1.h3<v>", "a0.h2->a1.h1<k>", "input->m0",
                 "a0.h0->m1", "m0->logits", "a1.h1->logits"):
        e = lk[name]
        m = []
        for eps in (1e-2, -1e-2):
            ab = torch.zeros(g.n_forward, g.n_backward)
            ab[src[e], dst[e]] = eps
            m.append(float(eng._measure(eng._circuit_logits(batch, corr_outs, ab, keep), batch, ctx, keep)
                           .double().mean()))
        assert float(scores[src[e], dst[e]]) == pytest.approx((m[0] - m[1]) / 2e-2, abs=2e-3, rel=2e-3), name


@pytest.mark.parametrize("family", FAST_FAMILIES)
def test_every_family_adds_up_and_eap_is_the_derivative(family):
    _derivative_check(family)


@pytest.mark.slow
@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_every_family_adds_up_and_eap_is_the_derivative_more(family):
    _derivative_check(family)


def _gqa_model(family: str):
    """A tiny random ``family`` model with 2 key/value heads for its 4 query heads (the oracle's
    tiny Phi-3 has them; its tiny OLMo-2 has none, TL 3.9 converting OLMo-2 only without them)."""
    if family == "phi3":
        hf = oracle.make_hf_model("phi3", vocab_size=VOCAB)
    else:
        config = oracle._family_config(family, "tiny", VOCAB, 64)
        config.num_key_value_heads = 2
        config.architectures = [oracle.ARCHITECTURES[family]]
        hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        oracle._randomize(hf, 0)
        hf = hf.float().eval()
    assert (hf.config.num_attention_heads, hf.config.num_key_value_heads) == (4, 2)
    return hf


def _ungrouped_twin(hf):
    """The same function as a model with one key/value head per query head: each key/value head's
    rows (and OLMo-2's key-norm weight) repeated for the query heads of its group. Its edge graph
    is the one EAP-IG and MIB draw for the grouped model (``<k>``, ``<v>`` per query head)."""
    cfg = hf.config
    n, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n
    twin_cfg = copy.deepcopy(cfg)
    twin_cfg.num_key_value_heads = n
    twin = transformers.AutoModelForCausalLM.from_config(twin_cfg, attn_implementation="eager", dtype=torch.float32)

    def rep(w):  # [kv d_head, ...] -> [n d_head, ...]
        return w.reshape(kv, d_head, *w.shape[1:]).repeat_interleave(n // kv, dim=0).reshape(n * d_head, *w.shape[1:])

    state = {}
    for name, w in hf.state_dict().items():
        if name.endswith("qkv_proj.weight"):
            q, k, v = w.split([n * d_head, kv * d_head, kv * d_head])
            w = torch.cat([q, rep(k), rep(v)])
        elif name.endswith(("k_proj.weight", "v_proj.weight", "k_norm.weight")):
            w = rep(w)
        state[name] = w
    twin.load_state_dict(state)
    twin.eval()
    tokens = torch.tensor([_data().clean[1]])
    with torch.no_grad():  # the twin is the same function
        torch.testing.assert_close(twin(tokens).logits, hf(tokens).logits, atol=1e-5, rtol=1e-5)
    return twin


@pytest.mark.parametrize("family", ["phi3", "olmo2"])
def test_grouped_query_attention_edges_are_per_query_head(family):
    """Phi-3 (fused q/k/v) and OLMo-2 (a key norm over all key heads) with grouped-query attention:
    the scores and a circuit's metric equal those of the ungrouped twin, each of whose query heads
    has its own key and value projection (the twin's graph has the same nodes and edges); and every
    edge adds up and has its derivative as on any family."""
    hf = _gqa_model(family)
    attn = [layer.self_attn for layer in hf.model.layers]
    before = [(a.num_key_value_groups, getattr(a, "num_key_value_heads", None), getattr(a, "k_norm", None)) for a in attn]
    data = _data(lengths=(6, 8))
    eng = EdgeEngine(wrap_model(hf, oracle.gpt2_tokenizer()), data, batch_size=2)
    twin = EdgeEngine(wrap_model(_ungrouped_twin(hf), oracle.gpt2_tokenizer()), data, batch_size=2)
    assert eng.graph.edge_names == twin.graph.edge_names
    ours, ref = eng.scores("eap"), twin.scores("eap")
    assert ours.abs().max() > 1e-2
    lk = eng.graph.edge_lookup()
    src, dst = eng.graph.edge_index
    # query heads 0 and 1 share a key head, and still have their own <k> edges
    e0, e1 = lk["input->a1.h0<k>"], lk["input->a1.h1<k>"]
    assert float(ours[src[e0], dst[e0]]) != pytest.approx(float(ours[src[e1], dst[e1]]), abs=1e-4)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)
    circuit = torch.rand(eng.graph.real.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    circuit &= eng.graph.real
    np.testing.assert_allclose(eng.evaluate([circuit])[0], twin.evaluate([circuit])[0], atol=1e-5)
    _derivative_check(family, hf)
    # the model is left as it was: grouped again, its own key norm, no hooks
    assert [(a.num_key_value_groups, getattr(a, "num_key_value_heads", None), getattr(a, "k_norm", None)) for a in attn] == before
    assert before[0][0] == 2
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in hf.modules())


def test_the_model_is_left_as_it_was():
    lm, _ = _models("llama")
    model = lm.model
    model.train()
    groups = [layer.self_attn.num_key_value_groups for layer in model.model.layers]
    try:
        eng = EdgeEngine(lm, _data(lengths=(5,)), batch_size=1)
        eng.scores("eap-ig-activations", steps=1)
        eng.evaluate([eng.graph.real])
        assert model.training
        assert [layer.self_attn.num_key_value_groups for layer in model.model.layers] == groups and groups[0] == 2
        for m in model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
