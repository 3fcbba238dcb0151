"""Circuits by node (``by="node"``): the top n heads and MLPs by node score, every edge among them
(``input`` and ``logits`` always kept), pruned as edge circuits are; evaluated exactly and checked
against TransformerLens 3.9 hooks that corrupt every other edge (``TLEdges`` of test_edges.py); the
node curve at MIB's fractions of the L·(H + 1) heads and MLPs; graph.json's ``in_graph`` marks; the
API-level result whose ``save`` writes the circuit view; bad input.

Tolerances: per-prompt metrics of the HF batch run against TL one prompt at a time, float32 on
unit-scale random weights: atol 1e-4 (as test_edges.py's hand-built circuit; observed ~1e-6).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.api.edges import EdgeResult as ApiEdgeResult
from logitscope.errors import ArgumentError
from logitscope.methods.edges import EdgeEngine, encode_edge_data, faithfulness
from logitscope.methods.edges.evaluate import FRACTIONS
from logitscope.report.edges import view_payload
from logitscope.results.edge_graph import EdgeGraph, prune_edges, top_n_nodes
from logitscope.results.graph_json import read_graph_json
from test_edges import TLEdges, _data, _models

OPTS = dict(device="cpu", seed=2, batch_size=3)
NO_MODEL = "/nonexistent/model-folder"


def _by_hand(graph: EdgeGraph, scores: torch.Tensor, n: int, absolute: bool) -> set[str]:
    """The node circuit from edge names alone: a node's score is the sum of the scores of the edges
    it sends; the top n heads and MLPs (ties to the earlier node) with input and logits; every edge
    whose parent and child (its q/k/v slot stripped) are kept."""
    v = graph.edge_vector(scores).tolist()
    node_score: dict[str, float] = {}
    for name, s in zip(graph.edge_names, v):
        parent = name.split("->")[0]
        node_score[parent] = node_score.get(parent, 0.0) + s
    ranked = [f"a{l}.h{h}" if h < graph.n_heads else f"m{l}" for l in range(graph.n_layers)
              for h in range(graph.n_heads + 1)]
    ranked = sorted(ranked, key=lambda x: -(abs(node_score.get(x, 0.0)) if absolute else node_score.get(x, 0.0)))
    kept = set(ranked[:n]) | {"input", "logits"}
    return {name for name in graph.edge_names
            if name.split("->")[0] in kept and name.split("->")[1].split("<")[0] in kept}


def _names(graph: EdgeGraph, circuit: torch.Tensor) -> set[str]:
    flags = graph.edge_vector(circuit).tolist()
    return {n for n, f in zip(graph.edge_names, flags) if f}


@pytest.mark.parametrize("parallel", [False, True])
def test_a_node_circuit_is_every_edge_among_the_top_nodes(parallel):
    g = EdgeGraph(3, 3, parallel)
    scores = g.matrix(torch.as_tensor(np.random.default_rng(4).normal(size=g.n_edges)))
    assert g.n_scored_nodes == 12
    for n in (0, 1, 2, 5, 12):
        for absolute in (True, False):
            circuit = top_n_nodes(g, scores, n, absolute=absolute)
            assert _names(g, circuit) == _by_hand(g, scores, n, absolute), (n, absolute)
            # every kept node sends to logits and gets input: pruning removes nothing
            assert torch.equal(circuit, top_n_nodes(g, scores, n, absolute=absolute, prune=False))
            assert torch.equal(circuit, prune_edges(g, circuit))
    assert _names(g, top_n_nodes(g, scores, 0)) == {"input->logits"}
    assert torch.equal(top_n_nodes(g, scores, 12), g.real)
    with pytest.raises(ValueError, match="12 heads and MLPs"):
        top_n_nodes(g, scores, 13)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_node_circuit_equals_transformerlens_corrupting_the_other_edges(family):
    lm, tl = _models(family)
    data = _data()
    eng = EdgeEngine(lm, data, batch_size=2)
    g = eng.graph
    scores = eng.scores("eap")
    ref = TLEdges(tl, g, data)
    circuits = [top_n_nodes(g, scores, 3), top_n_nodes(g, scores, 5, absolute=False)]
    values, _ = eng.evaluate(circuits)
    for k, circuit in enumerate(circuits):
        assert _names(g, circuit) == _by_hand(g, scores, (3, 5)[k], k == 0)
        expected = [ref.circuit_metric(i, g.real & ~circuit) for i in range(data.n)]
        np.testing.assert_allclose(values[k], expected, atol=1e-4)


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir):
    return ls.load_model(str(tiny_gpt2_dir), device="cpu")


@pytest.fixture(scope="module")
def nodes(lm):
    return ls.edges("ioi:8", lm, method="eap", corrupt="abc", by="node", top_n=4, **OPTS)


def test_node_circuits_curve_and_files(lm, nodes, tmp_path):
    g = nodes.graph
    assert isinstance(nodes, ApiEdgeResult) and nodes.by == "node"
    data = encode_edge_data(lm, ls.Experiment(lm, "ioi:8", corrupt="abc", seed=2).pairs, seed=2)
    engine = EdgeEngine(lm, data, batch_size=3)  # the same batches as OPTS: f to float32 noise of one summation order
    # the evaluated circuit: the top 4 nodes, its f recomputed from an independent run
    hand = _by_hand(g, nodes.scores, 4, True)
    c = nodes.circuit_eval
    assert (c.order, c.n_requested, c.n_edges) == ("node-abs", 4, len(hand))
    f, *_ = faithfulness(engine, g.matrix(torch.tensor([n in hand for n in g.edge_names])))
    assert c.faithfulness == pytest.approx(f, rel=1e-6)
    # the curves: n = floor(fraction × L(H+1)) nodes, the circuits among them, f(100 %) = 1
    for curve, absolute in ((nodes.curve, True), (nodes.curve_signed, False)):
        assert curve.order == ("node-abs" if absolute else "node-signed")
        assert curve.n_requested == [math.floor(fr * g.n_scored_nodes + 1e-9) for fr in FRACTIONS]
        assert curve.n_edges == [len(_by_hand(g, nodes.scores, n, absolute)) for n in curve.n_requested]
        assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-9)
    # graph.json: the kept nodes and the edges among them in_graph; reopened as the same result
    out = nodes.save(tmp_path / "run")
    doc = json.loads((out / "graph.json").read_text())
    kept_nodes = {n.split("->")[0] for n in hand}
    assert {k for k, v in doc["nodes"].items() if v["in_graph"]} == kept_nodes | {"logits"}
    assert {k for k, v in doc["edges"].items() if v["in_graph"]} == hand
    e = json.loads((out / "results.json").read_text())["edges"]
    assert (e["by"], e["n_nodes"], e["circuit"]["order"]) == ("node", g.n_scored_nodes, "node-abs")
    back = ls.load_result(out)
    assert isinstance(back, ApiEdgeResult) and back.by == "node"
    assert torch.equal(back.circuit_eval.edges, nodes.circuit_eval.edges)
    assert back.summary() == nodes.summary()


def test_the_view_draws_the_node_circuits(nodes):
    payload = view_payload(nodes.view_data())
    assert payload["unit"] == "nodes"
    for order, absolute in (("abs", True), ("signed", False)):
        curve = nodes.curve if absolute else nodes.curve_signed
        assert [s["kept"] for s in payload["steps"][order]] == curve.n_edges


def test_experiment_edges_by_node_equals_logitscope_edges(lm, nodes):
    exp = ls.Experiment(lm, "ioi:8", corrupt="abc", seed=2, batch_size=3)
    ours = exp.edges(method="eap", by="node", top_n=4)
    assert ours.by == "node" and torch.equal(ours.scores, nodes.scores)
    np.testing.assert_array_equal(ours.curve.faithfulness, nodes.curve.faithfulness)
    assert ours.circuit_eval.faithfulness == nodes.circuit_eval.faithfulness


def test_save_writes_the_circuit_view_and_load_result_keeps_it(lm, nodes, tmp_path):
    out = nodes.save(tmp_path / "with")
    assert sorted(p.name for p in out.iterdir()) == ["edges_per_prompt.npz", "graph.json", "report.html",
                                                     "results.json"]
    page = (out / "report.html").read_text()
    assert "Circuit: edge attribution" in page and "a0.h0" in page and "<script src" not in page
    again = ls.load_result(out).save(tmp_path / "again")
    assert (again / "report.html").read_text() == page  # the reopened result writes the same view
    nodes.save(out, report=False)
    assert not (out / "report.html").exists()


@pytest.mark.parametrize("options,name", [({"by": "nodes"}, "by"), ({"by": "node", "greedy": True}, "greedy")])
def test_bad_by_is_a_clear_error_before_the_model_loads(options, name):
    with pytest.raises(ArgumentError) as err:
        ls.edges("ioi:4", NO_MODEL, **options)
    assert err.value.argument == name


def test_top_n_beyond_the_nodes_is_refused(lm):
    with pytest.raises(ArgumentError, match="heads and MLPs") as err:
        ls.edges("ioi:4", lm, method="eap", corrupt="abc", by="node", top_n=lm.shape.n_layers * (lm.shape.n_heads + 1)
                 + 1, curve=False, device="cpu")
    assert err.value.argument == "top_n"


def test_cli_by_node_and_its_errors(tiny_gpt2_dir, tmp_path):
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "logitscope", "edges", "--model", str(tiny_gpt2_dir), "--prompts",
                               "ioi:4", "--method", "eap", "--quiet", *extra], capture_output=True, text=True)

    bad = run("--by", "node", "--greedy", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--greedy" in bad.stderr and "no node form" in bad.stderr
    assert not (tmp_path / "bad").exists()
    ok = run("--by", "node", "--top-n", "3", "--no-curve", "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    assert "circuit (node-abs, top 3 nodes" in ok.stdout
    assert json.loads((tmp_path / "ok" / "results.json").read_text())["edges"]["by"] == "node"
    _, _, in_graph, _ = read_graph_json(tmp_path / "ok" / "graph.json")
    res = ls.load_result(tmp_path / "ok")
    assert torch.equal(in_graph, res.node_circuit(3))


@pytest.mark.browser
def test_the_node_view_in_chromium(tmp_path):
    """The page's script draws each step's node circuit and says it counts heads and MLPs."""
    from test_report_edges import _probe, synthetic

    data = {**synthetic(2, 4), "by": "node"}
    out, payload, log = _probe(data, tmp_path)
    assert out["errors"] == [] and "Uncaught" not in log, (out["errors"], log[-2000:])
    assert payload["unit"] == "nodes" and out["resources"] == []
    assert out["counts"] == [len(s["drawn"]) for s in payload["steps"]["abs"]]
    assert all("heads and MLPs by |score|" in s for s in out["statuses"])
