"""``logitscope.methods.edges`` and ``Experiment.edges``: the result's files (results.json's ``edges``
section, graph.json, edges_per_prompt.npz), reopening with every number equal, atomic outputs, bad
options before the model loads, the automatic batch size, exact sums, and torchrun with 2 ranks
equal to one process. The scores themselves are checked against TransformerLens in test_edges.py;
here every number is checked against an independent computation from the engine's per-prompt runs."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.errors import ArgumentError, InputError
from logitscope.methods.edges import EdgeData, EdgeEngine, encode_edge_data, faithfulness
from logitscope.methods.edges.evaluate import FRACTIONS, areas
from logitscope.methods.edges.sums import ExactSum
from logitscope.results.edges import EdgeResult
from logitscope.results.graph_json import read_graph_json, write_graph_json

HERE = Path(__file__).parent
OPTS = dict(device="cpu", seed=2, batch_size=3)


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir):
    return ls.load_model(str(tiny_gpt2_dir), device="cpu")


@pytest.fixture(scope="module")
def result(lm):
    return ls.edges("ioi:8", lm, method="eap-ig-inputs", steps=2, corrupt="abc", top_n=20, exact_top=5, **OPTS)


def _doc(res: EdgeResult) -> dict:
    doc = json.loads(json.dumps(res.results_document()))
    doc.pop("timing"), doc.pop("created")
    return doc


def _assert_equal(a: EdgeResult, b: EdgeResult) -> None:
    """Every number of two results equal (bit for bit)."""
    assert torch.equal(a.scores, b.scores)
    assert a.graph == b.graph and a.exact_top == b.exact_top
    assert sorted(a.per_prompt) == sorted(b.per_prompt)
    for k in a.per_prompt:
        np.testing.assert_array_equal(a.per_prompt[k], b.per_prompt[k], err_msg=k)
    for name in ("curve", "curve_signed", "circuit_eval"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            for key, value in vars(x).items():
                np.testing.assert_array_equal(np.asarray(value), np.asarray(getattr(y, key)), err_msg=f"{name}.{key}")
    assert _doc(a) == _doc(b)


# ------------------------------------------------------------------------------------ the numbers
def test_the_result_is_the_engines_numbers(lm, result):
    """Scores equal the engine's on the same pairs; the curve is its circuits' metrics; the top-n
    circuit's faithfulness and the exact effects are recomputed here from plain evaluations."""
    data = encode_edge_data(lm, ls.Experiment(lm, "ioi:8", corrupt="abc", seed=2).pairs, seed=2)
    eng = EdgeEngine(lm, data, batch_size=3)  # the same batches: the same numbers, bit for bit
    assert torch.equal(result.scores, eng.scores("eap-ig-inputs", steps=2))
    c = result.curve
    assert c.fractions == FRACTIONS and c.faithfulness[-1] == pytest.approx(1.0, abs=1e-9)  # every edge: the model
    cpr, cmd = areas(FRACTIONS, c.faithfulness)
    assert (c.cpr, c.cmd) == (pytest.approx(float(cpr)), pytest.approx(float(cmd)))
    pp = result.per_prompt
    m = lambda a: a.mean(-1)  # noqa: E731
    f_by_hand = (m(pp["curve"]) - m(pp["empty"])) / (m(pp["clean"]) - m(pp["empty"]))
    np.testing.assert_allclose(c.faithfulness, f_by_hand, rtol=1e-12)
    f, mc, _, _ = faithfulness(eng, result.circuit(20))
    assert result.circuit_eval.faithfulness == pytest.approx(f, rel=1e-6, abs=1e-9)
    assert result.circuit_eval.low <= result.circuit_eval.faithfulness <= result.circuit_eval.high
    exact = eng.scores("exact")
    lookup, (src, dst) = result.graph.edge_lookup(), result.graph.edge_index
    assert list(result.exact_top) == [n for n, _ in result.top_edges(5)]
    for name, value in result.exact_top.items():
        e = lookup[name]
        assert value == pytest.approx(float(exact[src[e], dst[e]]), rel=1e-5, abs=1e-6)
    assert result.model and result.family == "gpt2" and result.dtype == "float32"
    assert result.timing["world_size"] == 1 and result.timing["batch_size"] == 3


def test_save_writes_the_documented_files_and_load_result_reopens_every_number(result, tmp_path):
    out = result.save(tmp_path / "run", report=False)
    assert sorted(p.name for p in out.iterdir()) == ["edges_per_prompt.npz", "graph.json", "results.json"]
    doc = json.loads((out / "results.json").read_text())
    assert doc["kind"] == "edges" and doc["schema_version"] == 1
    e = doc["edges"]
    assert (e["method"], e["steps"], e["intervention"], e["metric"]) == ("eap-ig-inputs", 2, "patching", "logit-diff")
    assert set(e) >= {"curve", "curve_signed", "circuit", "top_edges", "agreement", "n_edges", "graph"}
    assert set(e["curve"]) >= {"cpr", "cmd", "cpr_interval", "cmd_interval", "faithfulness", "low", "high"}
    assert [r["edge"] for r in e["top_edges"] if "exact" in r] == list(result.exact_top)
    g, scores, in_graph, node_scores = read_graph_json(out / "graph.json", expected=result.graph)
    assert torch.equal(scores, result.scores) and torch.equal(in_graph, result.circuit(20))
    back = ls.load_result(out)
    assert isinstance(back, EdgeResult)
    _assert_equal(result, back)
    assert back.summary() == result.summary()


def test_outputs_are_atomic_and_replace_an_earlier_run(result, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("report.html", "per_prompt_heads.npy", "patching_per_prompt.npz", "notes.txt"):
        (out / name).write_text("earlier")

    def failing(res, path):
        Path(path).write_text("half")
        raise RuntimeError("the report failed")

    with pytest.raises(RuntimeError, match="the report failed"):
        result.save(out, report=failing)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "patching_per_prompt.npz", "per_prompt_heads.npy",
                                                     "report.html"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp")]
    result.save(out, report=lambda res, path: Path(path).write_text(res.method))
    assert sorted(p.name for p in out.iterdir()) == ["edges_per_prompt.npz", "graph.json", "notes.txt", "report.html",
                                                     "results.json"]  # the user's own file stays
    assert (out / "report.html").read_text() == "eap-ig-inputs"


def test_experiment_edges_equals_logitscope_edges(lm):
    exp = ls.Experiment(lm, "ioi:8", corrupt="abc", seed=2, batch_size=3)
    ours = exp.edges(method="eap", intervention="mean", top_n=10, exact_top=3)
    theirs = ls.edges("ioi:8", lm, method="eap", intervention="mean", corrupt="abc", top_n=10, exact_top=3, **OPTS)
    _assert_equal(ours, theirs)
    zero = exp.edges(method="eap", intervention="zero", curve=False)
    assert zero.curve is None and zero.intervention == "zero" and zero.per_prompt == {}


# ------------------------------------------------------------------------------------ bad input
NO_MODEL = "/nonexistent/model-folder"  # a load would fail: each error must come first


@pytest.mark.parametrize("options,name", [
    ({"method": "eap-gi"}, "method"), ({"steps": 0}, "steps"), ({"intervention": "resample"}, "intervention"),
    ({"metric": "accuracy"}, "metric"), ({"top_n": 0}, "top_n"), ({"exact_top": -1}, "exact_top"),
    ({"batch_size": 0}, "batch_size"), ({"corrupt": "swap"}, "corrupt"),
    ({"method": "eap-ig-inputs", "intervention": "mean"}, "intervention"),
])
def test_bad_options_are_clear_errors_before_the_model_loads(options, name, tmp_path):
    with pytest.raises(ArgumentError) as err:
        ls.edges("ioi:4", NO_MODEL, **options)
    assert err.value.argument == name


def test_a_graph_file_of_another_shape_or_unreadable_is_refused(lm, tmp_path):
    from logitscope.results.edge_graph import EdgeGraph

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read a graph file"):
        ls.edges("ioi:4", NO_MODEL, circuit=bad)  # before the model loads
    other = EdgeGraph(3, 4)
    write_graph_json(tmp_path / "other.json", other, torch.zeros(other.n_forward, other.n_backward))
    with pytest.raises(InputError, match="made for another model"):
        ls.edges("ioi:4", lm, circuit=tmp_path / "other.json", device="cpu", curve=False)


def test_a_graph_file_evaluates_its_circuit(lm, result, tmp_path):
    path = result.write_graph(tmp_path / "graph.json", 15)
    res = ls.edges("ioi:8", lm, method="eap", corrupt="abc", circuit=path, curve=False, **OPTS)
    data = encode_edge_data(lm, ls.Experiment(lm, "ioi:8", corrupt="abc", seed=2).pairs, seed=2)
    f, *_ = faithfulness(EdgeEngine(lm, data, batch_size=3), result.circuit(15))  # the same batches as OPTS
    assert res.circuit_eval.order == "given" and res.circuit_eval.n_edges == int(result.circuit(15).sum())
    assert res.circuit_eval.faithfulness == pytest.approx(f, rel=1e-6)


def test_a_given_circuit_is_the_one_graph_json_marks(lm, result, tmp_path):
    """A circuit read from a graph file (here the top 15 by signed score, not this run's top 15 by
    |score|) is the one the new graph.json marks in_graph, and the one reopened."""
    from logitscope.results.graph_json import read_graph_json

    given = result.circuit(15, absolute=False)
    assert not bool((given == result.circuit(int(given.sum()))).all())  # not what a top-n would rebuild
    path = tmp_path / "given.json"
    from logitscope.results.graph_json import write_graph_json

    write_graph_json(path, result.graph, result.scores, given)
    res = ls.edges("ioi:8", lm, method="eap", corrupt="abc", circuit=path, curve=False, **OPTS)
    res.save(tmp_path / "out")
    _, _, marked, _ = read_graph_json(tmp_path / "out" / "graph.json")
    assert bool((marked == (given & result.graph.real)).all())
    again = ls.load_result(tmp_path / "out")
    assert bool((again.circuit_eval.edges == marked).all())


def test_counterparts_of_another_token_length_are_a_clear_error(lm, tmp_path):
    rows = [{"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary",
             "incorrect": " John", "corrupted": "When Mary and John went to the big store, John gave a drink to"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(InputError, match="same number of tokens"):
        ls.edges(str(path), lm, device="cpu", curve=False)


# ------------------------------------------------------------------------------------ scale
def test_the_batch_size_comes_from_free_memory(lm, monkeypatch):
    import logitscope.engine.setup as setup
    from logitscope.methods.edges import edge_batch_size
    from logitscope.results.edge_graph import EdgeGraph

    g = EdgeGraph.from_model(lm)
    roomy = edge_batch_size(lm, g, 16)
    monkeypatch.setattr(setup, "available_host_memory", lambda: 4 * 16 * 2 * g.n_forward * 64 * 4 * 10)
    tight = edge_batch_size(lm, g, 16)
    assert 1 <= tight < roomy
    # the two node-output buffers of a batch fit a quarter of what is available
    assert tight * 16 * 2 * g.n_forward * 64 * 4 <= 0.25 * setup.available_host_memory()


def test_exact_sums_do_not_depend_on_order_or_split():
    rng = np.random.default_rng(0)
    terms = [torch.from_numpy((rng.standard_normal((7, 5)) * 10.0 ** rng.integers(-6, 6, (7, 5))).astype(np.float32))
             for _ in range(60)]
    fsum = np.array([[math.fsum(float(t[i, j]) for t in terms) for j in range(5)] for i in range(7)])

    def total(order, split):
        parts = [ExactSum((7, 5)) for _ in range(split)]
        for k, i in enumerate(order):
            parts[k % split].add(terms[i])
        for p in parts[1:]:
            parts[0].merge(p)
        return parts[0].value().numpy()

    for seed, split in ((1, 1), (2, 2), (3, 3)):
        np.testing.assert_array_equal(total(np.random.default_rng(seed).permutation(60), split), fsum)


def test_progress_bars(lm, capsys):
    """One bar per phase, named from the start: no bar drawn as "study: 0%" first (a stray line
    above every phase's bar on a terminal), none left unfinished."""
    ls.edges("ioi:4", lm, method="eap", corrupt="abc", top_n=5, exact_top=2, progress=True, **OPTS)
    err = capsys.readouterr().err
    assert "edges: scores" in err and "edges: circuits" in err and "edges: exact" in err
    assert "study" not in err and ": :" not in err
    for phase in ("scores", "circuits", "exact"):
        last = err.split(f"edges: {phase}:")[-1]
        assert "100%" in last.split("edges:")[0], phase  # each bar's last draw is complete


_WORKER = """
import os, sys, torch
import logitscope as ls
torch.distributed.init_process_group("gloo")
out, model = sys.argv[1], sys.argv[2]
runs = {
    "ig": dict(method="eap-ig-inputs", steps=2, corrupt="abc", top_n=15, exact_top=4),
    "mean": dict(method="eap", intervention="mean-positional", corrupt="abc", exact_top=3),
}
for name, kw in runs.items():
    res = ls.edges("ioi:9", model, device="cpu", seed=1, batch_size=2, **kw)
    assert (res is None) == (torch.distributed.get_rank() != 0)
    if res is not None:
        res.save(os.path.join(out, name))
torch.distributed.barrier()  # rank 1 would tear gloo down while rank 0 still writes: both leave together
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~40 s: two torchrun ranks each import torch and transformers
def test_torchrun_with_two_ranks_equals_one_process(tiny_gpt2_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(_free_port()), str(script), str(tmp_path / "many"), str(tiny_gpt2_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kw = {"ig": dict(method="eap-ig-inputs", steps=2, corrupt="abc", top_n=15, exact_top=4),
          "mean": dict(method="eap", intervention="mean-positional", corrupt="abc", exact_top=3)}
    for name, options in kw.items():
        one = ls.edges("ioi:9", str(tiny_gpt2_dir), device="cpu", seed=1, batch_size=2, **options)
        many = ls.load_result(tmp_path / "many" / name)
        assert many.timing["world_size"] == 2 and sum(many.timing["prompts_per_rank"]) == 9
        assert min(many.timing["prompts_per_rank"]) > 0
        _assert_equal(one, many)


def test_cli_takes_every_metric_name_and_refuses_others(tiny_gpt2_dir, tmp_path):
    """``logitscope edges --metric``: engine/metrics.py's names (here ``logprob-diff`` on SVA's answer
    sets, the scores those of the Python call), and an unknown name exits 2 before the model loads,
    naming the flag and the choices, with nothing written."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "logitscope", "edges", *a], capture_output=True,
                                    text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    bad = run("--model", NO_MODEL, "--prompts", "sva:4", "--metric", "accuracy", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--metric accuracy" in bad.stderr and "logprob-diff" in bad.stderr
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "ok"
    ok = run("--model", str(tiny_gpt2_dir), "--prompts", "sva:4", "--metric", "logprob-diff", "--method", "eap",
             "--no-curve", "--no-report", "--device", "cpu", "--batch-size", "4", "--quiet", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["edges"]["metric"] == "logprob-diff"
    lm = ls.load_model(str(tiny_gpt2_dir), device="cpu")
    direct = ls.edges("sva:4", lm, method="eap", metric="logprob-diff", curve=False, device="cpu", batch_size=4)
    np.testing.assert_allclose(np.load(out / "edges_per_prompt.npz")["scores"],
                               direct.graph.edge_vector(direct.scores).numpy(), rtol=0, atol=0)
