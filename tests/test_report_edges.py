"""The report's interactive circuit view of edge attribution (logitscope.report.edges, issue 21 item 6).

Structural tests check the view's circuits against the method's own ``top_n`` (pruned), its
errors on bad data, and that the page asks for nothing from the network; the browser tests open it
in headless Chromium with the network cut, move the slider, hover an edge and read back what the
page did (a probe script appended to a copy of the page writes it into the DOM).
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from logitscope.methods.edges.evaluate import FRACTIONS
from logitscope.results.edge_graph import EdgeGraph, top_n
from logitscope.report.edges import MAX_DRAWN, edges_section, view_payload, write_edges_report


def synthetic(L: int, H: int, seed: int = 0, curve: bool = True) -> dict:
    """Scores on an ``L`` x ``H`` graph with a planted circuit (a few nodes whose edges among each
    other score high), so that pruned top-n circuits are not empty; a made-up curve."""
    g = EdgeGraph(L, H)
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(g.n_edges) * 0.01
    planted = {"input", "logits"} | {f"a{l}.h{h}" for l in range(L) for h in rng.choice(H, 2, replace=False)}
    for i, name in enumerate(g.edge_names):
        p, c = name.split("->")
        if p in planted and c.split("<")[0] in planted:
            s[i] = rng.choice([-1, 1]) * (1 + rng.random())
    data = {"edges": g.edge_names, "scores": s.tolist(), "n_layers": L, "n_heads": H, "model": f"synthetic {L}x{H}",
            "method": "eap", "intervention": "patching", "metric": "logit-diff", "n_prompts": 8}
    if curve:
        f = np.linspace(0.1, 1.0, 10)
        ns = [int(math.floor(fr * g.n_edges + 1e-9)) for fr in FRACTIONS]
        data["curve"] = {"fractions": list(FRACTIONS), "n_requested": ns, "n_edges": ns, "faithfulness": f.tolist(),
                         "low": (f - 0.05).tolist(), "high": (f + 0.05).tolist(), "cpr": 0.5, "cpr_interval": [0.4, 0.6],
                         "cmd": 0.5, "cmd_interval": [0.4, 0.6]}
    top = int(np.argmax(np.abs(s)))
    data["exact"] = {g.edge_names[top]: 0.123456}
    data["intervals"] = {g.edge_names[top]: [-0.5, 0.75]}
    return data


# ------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("absolute", [True, False])
def test_each_step_is_the_methods_pruned_top_n(absolute: bool):
    """The view's circuit at each fraction is ``methods.edges.top_n`` (top n, then pruned) of the
    same scores, edge for edge (drawing cap lifted)."""
    data = synthetic(3, 4, seed=1)
    g = EdgeGraph(3, 4)
    data["curve_signed"] = data["curve"]
    payload = view_payload(data, max_drawn=10**6)
    scores = g.matrix(torch.tensor(data["scores"], dtype=torch.float64))
    names = g.edge_names
    steps = payload["steps"]["abs" if absolute else "signed"]
    assert [s["n"] for s in steps] == [int(math.floor(f * g.n_edges + 1e-9)) for f in FRACTIONS]
    nonempty = 0
    for step in steps:
        want = g.edge_vector(top_n(g, scores, step["n"], absolute=absolute))
        want_names = {names[i] for i in np.flatnonzero(want.numpy())}
        e = payload["edges"]
        got = {f"{e[j][0]}->{e[j][1]}" + (f"<{e[j][2]}>" if e[j][2] else "") for j in step["drawn"]}
        assert step["kept"] == len(want_names)
        assert got == want_names
        nonempty += bool(want_names)
    assert 0 < nonempty < len(steps)  # some circuits are pruned to nothing, others are not: the check can fail


def test_draws_at_most_max_drawn_edges_and_counts_the_rest():
    data = synthetic(12, 12, curve=False)
    assert len(data["edges"]) == 32491  # GPT-2 small's graph
    payload = view_payload(data)
    last = payload["steps"]["abs"][-1]
    assert last["kept"] == 32491 and len(last["drawn"]) == MAX_DRAWN  # at 100% every edge is in the circuit
    scores = np.abs(np.asarray(data["scores"]))
    drawn = [abs(payload["edges"][j][3]) for j in last["drawn"]]
    assert sorted(drawn) == sorted(np.sort(scores)[-MAX_DRAWN:].tolist())  # the 300 of highest |score|
    assert drawn == sorted(drawn, reverse=True)  # the strongest first
    assert len(payload["edges"]) < 2000  # only the drawn edges travel to the page, not all 32,491


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(scores=d["scores"][:-1]), "edge names but"),
    (lambda d: d.update(edges=["a0.h1->zz"] + d["edges"][1:]), "not a node name"),
    (lambda d: d.update(edges=["a0.h9->logits"] + d["edges"][1:]), "does not fit a model of 2 layers x 4 heads"),
    (lambda d: d.update(edges=["a0.h1 logits"] + d["edges"][1:]), "not an edge name"),
    (lambda d: d.pop("n_heads"), "no 'n_heads'"),
    (lambda d: d.update(scores=[float("nan")] + d["scores"][1:]), "must be finite"),
])
def test_bad_data_is_a_clear_error_and_nothing_is_written(change, message, tmp_path: Path):
    data = synthetic(2, 4)
    change(data)
    with pytest.raises(ValueError, match=message):
        write_edges_report(data, tmp_path / "edges.html")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_earlier_page_and_leaves_no_temporary_file(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """The page is written as write_report writes (results/io.py write_text_atomic): renamed into place, or not at all."""
    import os

    out = write_edges_report(synthetic(2, 4), tmp_path / "edges.html")
    before = out.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_edges_report(synthetic(2, 4, seed=1), out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["edges.html"]


def test_page_asks_nothing_from_the_network(tmp_path: Path):
    page = write_edges_report(synthetic(2, 4), tmp_path / "e.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    urls = set(re.findall(r"https?://[^\s'\"<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace: a name, never fetched
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", page)
    assert "plotly" not in page.lower()  # the view draws its own SVG


def test_section_is_a_card_with_the_facts_and_the_top_table():
    data = synthetic(2, 4)
    section = edges_section(data, anchor="edges")
    assert section.startswith('<section class="card" id="edges">')
    assert "Top 20 edges by |score|" in section and "+0.1235" in section  # the exact effect beside its estimate
    assert "CPR" in section and "CMD" in section


def test_view_data_of_a_real_result():
    """``EdgeResult.view_data()`` of a tiny GPT-2 run gives what the view reads: every edge and its
    score, the exact effects, both curves."""
    import oracle
    from logitscope.inputs import Prompt
    from logitscope.methods.edges import attribute
    from logitscope.models import wrap_model

    lm = wrap_model(oracle.make_hf_model("gpt2", size="tiny", seed=1), oracle.gpt2_tokenizer())
    prompts = [Prompt("When Mary and John went to the store, John gave a drink to", " Mary", " John",
                      corrupted="When Alice and Bob went to the store, Bob gave a drink to")]
    res = attribute(lm, prompts, method="eap", curve=True, exact_top=3)
    data = res.view_data(model="tiny gpt2")
    assert data["edges"] == res.graph.edge_names and len(data["scores"]) == res.graph.n_edges
    assert dict(zip(data["edges"], data["scores"])) == pytest.approx(res.edge_scores())
    assert set(data["exact"]) == {n for n, _ in res.top_edges(3)}
    payload = view_payload(data)
    assert payload["curves"]["abs"]["f"][-1] == pytest.approx(1.0, abs=1e-6)
    assert [s["kept"] for s in payload["steps"]["abs"]] == res.curve.n_edges  # the view's circuits are the curve's
    assert [s["kept"] for s in payload["steps"]["signed"]] == res.curve_signed.n_edges
    json.dumps(payload)  # plain data all the way


# ------------------------------------------------------------------------------------------ browser
ERRORS = ("<script>window.__errs=[];window.addEventListener('error',function(e){window.__errs.push(String(e.message))});"
          "</script>")
PROBE = """<script>
(function(){
  var out = {errors: window.__errs, counts: [], markers: [], statuses: []};
  var root = document.querySelector('.ev-root'), slider = root.querySelector('input[type=range]');
  out.initial = root.querySelectorAll('path.ev-edge').length;
  for (var i = 0; i <= +slider.max; i++) {
    slider.value = i; slider.dispatchEvent(new Event('input'));
    out.counts.push(root.querySelectorAll('path.ev-edge').length);
    var m = root.querySelector('circle.ev-marker'); out.markers.push(m ? +m.getAttribute('cx') : null);
    out.statuses.push(root.querySelector('.ev-status').textContent);
  }
  var ps = root.querySelectorAll('path.ev-edge'), p = ps[ps.length - 1], tip = root.querySelector('.ev-tip');
  out.tipBefore = tip.style.display;
  p.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: 200, clientY: 300}));
  out.tip = tip.textContent; out.tipAfter = tip.style.display;
  out.hovered = +p.getAttribute('data-edge');
  out.resources = performance.getEntriesByType('resource').map(function(r){ return r.name; });
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def _probe(data: dict, tmp_path: Path) -> tuple[dict, dict, str]:
    from test_report import render_dom

    page = write_edges_report(data, tmp_path / "edges.html")
    text = page.read_text(encoding="utf-8").replace("<head>", "<head>" + ERRORS, 1)
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom, log = render_dom(probed, tmp_path)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, f"the probe did not run:\n{log[-2000:]}"
    return json.loads(html.unescape(m.group(1))), view_payload(data), log


@pytest.mark.browser
@pytest.mark.parametrize("shape", [(2, 4), (12, 12)])
def test_view_in_chromium_offline_slider_and_hover(shape, tmp_path: Path):
    data = synthetic(*shape)
    out, payload, log = _probe(data, tmp_path)
    assert out["errors"] == [] and "Uncaught" not in log, (out["errors"], log[-2000:])
    assert out["resources"] == []  # nothing fetched, from anywhere
    steps = payload["steps"]["abs"]
    assert out["counts"] == [len(s["drawn"]) for s in steps]  # each step draws its circuit
    assert len(set(out["counts"])) > 2  # the slider changes the number of drawn edges
    assert out["markers"] == sorted(out["markers"]) and len(set(out["markers"])) == len(steps)  # the marker moves along
    last = steps[-1]
    hidden = last["kept"] - len(last["drawn"])
    assert (f"{hidden:,} hidden" in out["statuses"][-1]) if hidden > 0 else ("All drawn" in out["statuses"][-1])
    # hovering the strongest edge (drawn last, on top; at 100% every edge is in) shows its name, score, rank,
    # exact effect and interval
    assert out["tipBefore"] == "none" and out["tipAfter"] == "block"
    e = payload["edges"][out["hovered"]]
    name = f"{e[0]}->{e[1]}" + (f"<{e[2]}>" if e[2] else "")
    assert name == max(zip(data["edges"], data["scores"]), key=lambda t: abs(t[1]))[0]
    assert name in out["tip"] and f"score: {e[3]:+.4f}  (rank 1 by |score|)" in out["tip"]
    assert "exact effect: +0.1235" in out["tip"] and "95% interval: [-0.5000, +0.7500]" in out["tip"]


@pytest.mark.browser
def test_hover_says_what_was_not_computed(tmp_path: Path):
    data = synthetic(2, 4, curve=False)
    del data["exact"], data["intervals"]
    out, payload, log = _probe(data, tmp_path)
    assert out["errors"] == [] and out["resources"] == []
    assert "exact effect: not computed" in out["tip"] and "95% interval: not computed" in out["tip"]
    assert out["markers"] == [None] * len(payload["fractions"])  # no curve, no marker; the graph still redraws
    assert len(set(out["counts"])) > 2


def test_an_undefined_exact_effect_or_interval_shows_as_not_computed():
    """A NaN exact effect (or interval end) travels as null, not as invalid JSON."""
    data = synthetic(2, 4)
    name = next(iter(data["exact"]))
    data["exact"][name] = float("nan")
    data["intervals"][name] = [float("nan"), 1.0]
    payload = view_payload(data)
    e = next(e for e in payload["edges"] if e[6] == 1)
    assert e[4] is None and e[5] is None
    assert "NaN" not in edges_section(data)
