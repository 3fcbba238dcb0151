"""The report's interactive circuit view of edge attribution (issue 21, item 6).

The view reads plain data, one ``dict`` (so it works whatever module holds the edge result;
``EdgeResult.view_data()`` builds it):

- ``edges``: every edge's name (``a0.h1->a2.h3<q>``, ``m0->m1``, ``input->logits``), and
  ``scores``: its score, in the same order (the change of the metric; sign kept);
- ``n_layers``, ``n_heads``: the model's shape (the graph is drawn from them);
- optional: ``exact`` (``{edge: exact effect}``, where computed), ``intervals``
  (``{edge: [low, high]}``, the score's 95% interval, where computed), ``curve`` and
  ``curve_signed`` (a faithfulness curve's ``to_dict()``: ``fractions``, ``n_requested``,
  ``n_edges``, ``faithfulness``, ``low``, ``high``, ``cpr``, ``cpr_interval``, ``cmd``,
  ``cmd_interval``), ``agreement`` (``spearman``, ``sign_agreement``, ``n``), and the run's
  ``model``, ``method``, ``steps``, ``intervention``, ``metric``, ``n_prompts``, and ``by``
  (``"node"``: the slider's circuits are the top n heads and MLPs by node score, the sum of a
  node's outgoing edges' scores, with every edge among them, n = ⌊fraction × L·(H + 1)⌋).

The view: the graph in layers (``input`` at the bottom, then each layer's heads ``a{L}.h{H}`` and
its MLP ``m{L}``, ``logits`` at the top), a slider over MIB's ten fractions of the edges, and for
the chosen fraction the circuit (top n = ⌊fraction × edges⌋ by |score| or by signed score, pruned
to the edges on a path from ``input`` to ``logits``, as the faithfulness curve takes it) with its
edges coloured by score on a diverging scale (blue raises the metric, red lowers it); the
fraction's point is marked on the faithfulness curve. At most :data:`MAX_DRAWN` edges are drawn,
those of highest |score|; the view says how many more the circuit has. Hovering an edge shows its
score, rank, exact effect and interval. Everything is inline (SVG and plain JavaScript): no
network, no plotly needed.

- :func:`edges_section` returns the view as an HTML section for the report page;
- :func:`write_edges_report` writes it as its own self-contained page (atomically).
"""

# Longer than ~400 lines on purpose: the view's data checks, its SVG layout and its inline script are
# one self-contained page; split, the script's contract with the data would be read in three places.

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from logitscope.report.assets import json_for_script
from logitscope.report.style import CSS
from logitscope.results.io import write_text_atomic

FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # MIB's
MAX_DRAWN = 300  # edges drawn per circuit (those of highest |score|); the rest are counted, not drawn
TOP_TABLE = 20
COLOUR_RANK = 20  # the colour scale saturates at the |score| of the 20th edge, so one outlier does not wash out the rest

_NODE = re.compile(r"^(input|logits|m(\d+)|a(\d+)\.h(\d+))$")
_EDGE = re.compile(r"^(?P<parent>[^<>-]+)->(?P<child>[^<>-]+?)(?:<(?P<slot>[qkv])>)?$")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------------------------------- data
def _parse_node(name: str, n_layers: int, n_heads: int, what: str) -> tuple[int, int]:
    """``(row, column)`` of a node: row 0 ``input``, 2L+1 ``a{L}``, 2L+2 ``m{L}``, 2·n_layers+1
    ``logits``; column the head (−1: the row's single node)."""
    m = _NODE.match(name)
    if m is None:
        raise ValueError(f"edge view: {what} {name!r} is not a node name (input, a{{L}}.h{{H}}, m{{L}}, logits)")
    if name == "input":
        return 0, -1
    if name == "logits":
        return 2 * n_layers + 1, -1
    layer = int(m.group(2) if m.group(2) is not None else m.group(3))
    head = -1 if m.group(4) is None else int(m.group(4))
    if layer >= n_layers or head >= n_heads:
        raise ValueError(f"edge view: {what} {name!r} does not fit a model of {n_layers} layers x {n_heads} heads")
    return (2 * layer + 1, head) if head >= 0 else (2 * layer + 2, -1)


def _parse_edges(names: Sequence[str], n_layers: int, n_heads: int) -> tuple[list[str], list[str], list[str]]:
    parents, children, slots = [], [], []
    for i, name in enumerate(names):
        m = _EDGE.match(name)
        if m is None:
            raise ValueError(f"edge view: edge {i} {name!r} is not an edge name like 'a0.h1->a2.h3<q>' or 'm0->logits'")
        _parse_node(m["parent"], n_layers, n_heads, f"edge {i}'s parent")
        _parse_node(m["child"], n_layers, n_heads, f"edge {i}'s child")
        parents.append(m["parent"])
        children.append(m["child"])
        slots.append(m["slot"] or "")
    return parents, children, slots


def prune(parents: np.ndarray, children: np.ndarray, keep: np.ndarray, n_nodes: int, input_id: int,
          logits_id: int) -> np.ndarray:
    """Only the kept edges on a path from ``input`` to ``logits`` (node ids per edge): repeatedly
    drop nodes without an outgoing edge (``logits`` needs none) or without an incoming one
    (``input`` needs none), and their edges."""
    keep = keep.copy()
    while True:
        out_deg = np.bincount(parents[keep], minlength=n_nodes)
        in_deg = np.bincount(children[keep], minlength=n_nodes)
        alive = (out_deg > 0) & (in_deg > 0)
        alive[input_id] = out_deg[input_id] > 0
        alive[logits_id] = in_deg[logits_id] > 0
        new = keep & alive[parents] & alive[children]
        if np.array_equal(new, keep):
            return keep
        keep = new


def _top_edges(scores: np.ndarray, absolute: bool) -> Any:
    """``n -> [edges]`` bool: the top n edges."""
    order = np.argsort(-(np.abs(scores) if absolute else scores), kind="stable")

    def keep(n: int) -> np.ndarray:
        out = np.zeros(len(scores), dtype=bool)
        out[order[:n]] = True
        return out
    return keep


def _top_nodes(scores: np.ndarray, parents: np.ndarray, children: np.ndarray, n_nodes: int, input_id: int,
               logits_id: int, absolute: bool) -> Any:
    """``n -> [edges]`` bool: every edge among the top n heads and MLPs by node score (the sum of a
    node's outgoing edges' scores), ``input`` and ``logits`` always kept."""
    node = np.bincount(parents, weights=scores, minlength=n_nodes)
    ranked = np.array([i for i in range(n_nodes) if i not in (input_id, logits_id)])
    key = np.abs(node[ranked]) if absolute else node[ranked]
    order = ranked[np.argsort(-key, kind="stable")]

    def keep(n: int) -> np.ndarray:
        nodes = np.zeros(n_nodes, dtype=bool)
        nodes[[input_id, logits_id]] = True
        nodes[order[:n]] = True
        return nodes[parents] & nodes[children]
    return keep


def _steps(scores: np.ndarray, parents: np.ndarray, children: np.ndarray, n_nodes: int, input_id: int,
           logits_id: int, absolute: bool, ns: Sequence[int], max_drawn: int, by: str = "edge") -> list[dict[str, Any]]:
    """For each n: how many edges the pruned circuit of the top n edges (``by="node"``: among the top
    n heads and MLPs) keeps and the ones drawn (by |score|)."""
    select = _top_nodes(scores, parents, children, n_nodes, input_id, logits_id, absolute) if by == "node" else \
        _top_edges(scores, absolute)
    by_abs = np.argsort(-np.abs(scores), kind="stable")
    out = []
    for n in ns:
        kept = prune(parents, children, select(n), n_nodes, input_id, logits_id)
        drawn = by_abs[kept[by_abs]][:max_drawn]
        out.append({"n": int(n), "kept": int(kept.sum()), "drawn": drawn.tolist()})
    return out


def _curve(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if c is None:
        return None
    f = [None if v is None or not np.isfinite(v) else float(v) for v in c["faithfulness"]]
    lo = [None if v is None or not np.isfinite(v) else float(v) for v in c.get("low", f)]
    hi = [None if v is None or not np.isfinite(v) else float(v) for v in c.get("high", f)]
    return {"fractions": [float(x) for x in c["fractions"]], "f": f, "lo": lo, "hi": hi,
            "n_requested": [int(x) for x in c.get("n_requested", [])], "n_edges": [int(x) for x in c.get("n_edges", [])],
            "cpr": _finite(c.get("cpr")), "cpr_interval": [_finite(x) for x in c.get("cpr_interval", (None, None))],
            "cmd": _finite(c.get("cmd")), "cmd_interval": [_finite(x) for x in c.get("cmd_interval", (None, None))]}


def _finite(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def view_payload(data: Mapping[str, Any], *, max_drawn: int = MAX_DRAWN) -> dict[str, Any]:
    """What the page's script reads: the drawn edges (the union over the slider's steps), each
    step's counts and drawn edges, the curves. Checks ``data`` and says what is wrong."""
    for key in ("edges", "scores", "n_layers", "n_heads"):
        if key not in data:
            raise ValueError(f"edge view: the data has no {key!r} (give edges, scores, n_layers, n_heads)")
    names = list(data["edges"])
    scores = np.asarray(data["scores"], dtype=np.float64).reshape(-1)
    L, H = int(data["n_layers"]), int(data["n_heads"])
    if len(names) != len(scores):
        raise ValueError(f"edge view: {len(names)} edge names but {len(scores)} scores: give one score per edge")
    if not len(names):
        raise ValueError("edge view: no edges")
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"edge view: the score of edge {names[bad]!r} is {scores[bad]}; scores must be finite")
    parents, children, slots = _parse_edges(names, L, H)
    node_names = ["input"] + [n for layer in range(L) for n in [f"a{layer}.h{h}" for h in range(H)] + [f"m{layer}"]]
    node_names.append("logits")
    ids = {n: i for i, n in enumerate(node_names)}
    p_ids, c_ids = np.array([ids[p] for p in parents]), np.array([ids[c] for c in children])
    curves = {"abs": _curve(data.get("curve")), "signed": _curve(data.get("curve_signed"))}
    E = len(names)
    by = "node" if data.get("by") == "node" else "edge"
    total = L * (H + 1) if by == "node" else E  # what the fractions count: heads and MLPs, or edges
    fractions = next((c["fractions"] for c in curves.values() if c), list(FRACTIONS))
    orders = ["abs"] + (["signed"] if curves["signed"] is not None else [])
    steps = {}
    for order in orders:
        c = curves[order]
        ns = c["n_requested"] if c and len(c["n_requested"]) == len(fractions) else \
            [int(math.floor(f * total + 1e-9)) for f in fractions]
        steps[order] = _steps(scores, p_ids, c_ids, len(node_names), ids["input"], ids["logits"], order == "abs", ns,
                              max_drawn, by)
    used = sorted({i for order in steps.values() for s in order for i in s["drawn"]})
    remap = {old: new for new, old in enumerate(used)}
    for order in steps.values():
        for s in order:
            s["drawn"] = [remap[i] for i in s["drawn"]]
    exact = {str(k): _finite(v) for k, v in (data.get("exact") or {}).items()}
    intervals = {str(k): [_finite(v[0]), _finite(v[1])] for k, v in (data.get("intervals") or {}).items()}
    rank = np.empty(E, dtype=np.int64)
    rank[np.argsort(-np.abs(scores), kind="stable")] = np.arange(1, E + 1)
    edges = []
    for i in used:
        name = names[i]
        iv = intervals.get(name)
        edges.append([parents[i], children[i], slots[i], float(scores[i]), exact.get(name),
                      iv if iv and None not in iv else None,
                      int(rank[i])])
    top_abs = np.sort(np.abs(scores))[::-1]
    scale = float(top_abs[min(COLOUR_RANK, E) - 1]) or float(top_abs[0]) or 1.0
    return {"n_layers": L, "n_heads": H, "n_edges": E, "max_abs": float(top_abs[0]), "scale": scale,
            "max_drawn": max_drawn, "fractions": [float(f) for f in fractions], "edges": edges, "steps": steps,
            "unit": "nodes" if by == "node" else "edges",
            "curves": {k: v for k, v in curves.items() if v is not None}}


# ---------------------------------------------------------------------------------------------- HTML
def _num(x: float | None, digits: int = 4, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _facts(data: Mapping[str, Any], payload: dict[str, Any]) -> str:
    method = str(data.get("method", "—"))
    if method.startswith("eap-ig") and data.get("steps"):
        method += f" ({data['steps']} steps)"
    facts = [("Method", _e(method)), ("Intervention", _e(data.get("intervention", "—"))),
             ("Metric", _e(data.get("metric", "—"))),
             ("Prompts", f"{int(data['n_prompts']):,}" if data.get("n_prompts") is not None else "—"),
             ("Edges", f"{payload['n_edges']:,}<br><small>{payload['n_layers']} layers × {payload['n_heads']} heads"
                       "</small>")]
    for order, label in (("abs", "by |score|"), ("signed", "by signed score")):
        c = payload["curves"].get(order)
        if c:
            lo, hi = c["cpr_interval"]
            text = f"CPR {_num(c['cpr'], 3, False)} <small>[{_num(lo, 3, False)}, {_num(hi, 3, False)}]</small>"
            if order == "abs":
                mlo, mhi = c["cmd_interval"]
                text += f"<br>CMD {_num(c['cmd'], 3, False)} <small>[{_num(mlo, 3, False)}, {_num(mhi, 3, False)}]</small>"
            facts.append((f"Curve {label}", text))
    ag = data.get("agreement")
    if ag:
        facts.append(("Estimate vs exact", f"Spearman {_num(ag.get('spearman'), 3, False)}<br><small>same sign "
                      f"{100 * float(ag.get('sign_agreement', float('nan'))):.0f}% of {int(ag.get('n', 0))} edges"
                      "</small>"))
    return '<dl class="facts">' + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts) + "</dl>"


def _top_table(data: Mapping[str, Any]) -> str:
    names = list(data["edges"])
    scores = np.asarray(data["scores"], dtype=np.float64)
    exact = data.get("exact") or {}
    intervals = data.get("intervals") or {}
    rows = []
    for r, i in enumerate(np.argsort(-np.abs(scores), kind="stable")[:TOP_TABLE], start=1):
        name = names[i]
        iv = intervals.get(name)
        cells = [f'<td class="num">{r}</td>', f"<td><code>{_e(name)}</code></td>"]
        for v in (float(scores[i]), exact.get(name)):
            neg = " neg" if v is not None and v < 0 else ""
            cells.append(f'<td class="num{neg}">{_num(v)}</td>')
        cells.append(f'<td class="num">{"—" if iv is None else f"[{_num(iv[0])}, {_num(iv[1])}]"}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = ('<tr><th class="num">#</th><th>Edge</th><th class="num">Score</th><th class="num">Exact effect</th>'
            '<th class="num">95% CI</th></tr>')
    return (f"<h3>Top {min(TOP_TABLE, len(names))} edges by |score|</h3><div class=\"scroll\"><table><thead>{head}"
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>")


_VIEW_CSS = """
.ev-controls { display:flex; flex-wrap:wrap; align-items:center; gap:8px 22px; margin:4px 0 10px; font-size:13px; }
.ev-controls input[type=range] { width:300px; vertical-align:middle; }
.ev-controls .ev-step { font-variant-numeric:tabular-nums; font-weight:600; }
.ev-status { color:var(--muted); font-size:12.5px; margin:0 0 6px; }
.ev-row { display:flex; flex-wrap:wrap; gap:12px 24px; align-items:flex-start; }
.ev-facts { flex:1 1 480px; min-width:0; }
.ev-facts svg { max-width:360px; margin-top:10px; }
.ev-graph { position:relative; margin-top:4px; }
.ev-side { flex:0 1 340px; min-width:280px; }
.ev-graph svg, .ev-side svg { display:block; width:100%; height:auto; }
.ev-edge { fill:none; stroke-linecap:round; cursor:pointer; }
.ev-edge:hover { stroke-opacity:1 !important; }
.ev-tip { position:absolute; pointer-events:none; background:#fff; border:1px solid #c9d0da; border-radius:6px;
          padding:6px 9px; font-size:12px; line-height:1.45; box-shadow:0 2px 8px rgba(16,24,40,.12);
          white-space:nowrap; z-index:5; font-variant-numeric:tabular-nums; }
.ev-tip b { font-family:"DejaVu Sans Mono", Menlo, Consolas, monospace; font-weight:600; }
"""

_VIEW_JS = r"""
(function(){
var root = document.getElementById(ROOT_ID), D = JSON.parse(root.querySelector('script.ev-data').textContent);
var NS = 'http://www.w3.org/2000/svg', L = D.n_layers, H = D.n_heads, W = 1000;
var rows = 2 * L + 2, rowH = Math.max(26, Math.min(64, 680 / rows)), top = 26, left = 64, right = 16;
var GH = top + rowH * (rows - 1) + 30;
function el(tag, attrs, parent) { var e = document.createElementNS(NS, tag);
  for (var k in attrs) e.setAttribute(k, attrs[k]); if (parent) parent.appendChild(e); return e; }
function rowOf(name) { if (name === 'input') return 0; if (name === 'logits') return rows - 1;
  var m = /^m(\d+)$/.exec(name); if (m) return 2 * (+m[1]) + 2; m = /^a(\d+)\.h(\d+)$/.exec(name); return 2 * (+m[1]) + 1; }
function yOf(row) { return top + rowH * (rows - 1 - row); }
// heads in columns 0 .. H-1, each MLP in a column of its own at the right, input and logits centred
function xOf(name) { var m = /^a\d+\.h(\d+)$/.exec(name), span = W - left - right;
  if (m) return left + span * ((+m[1]) + 0.5) / (H + 1);
  return /^m\d+$/.test(name) ? left + span * (H + 0.5) / (H + 1) : left + span / 2; }
var SLOT = {q: -1, k: 0, v: 1, '': 0};
function colour(s) { var t = Math.max(-1, Math.min(1, s / D.scale)), a = Math.abs(t);
  var to = t >= 0 ? [31, 95, 168] : [184, 50, 39], from = [214, 219, 226];
  var c = from.map(function(f, i) { return Math.round(f + (to[i] - f) * Math.pow(a, 0.6)); });
  return 'rgb(' + c.join(',') + ')'; }
function fmt(x, d) { return (x === null || x === undefined) ? '—' : (x >= 0 ? '+' : '') + x.toFixed(d === undefined ? 4 : d); }
// the graph
var gsvg = el('svg', {viewBox: '0 0 ' + W + ' ' + GH, role: 'img', 'aria-label': 'circuit graph'}, root.querySelector('.ev-graph'));
for (var r = 0; r < rows; r++) {
  var y = yOf(r), label = r === 0 ? 'input' : r === rows - 1 ? 'logits' : (r % 2 ? 'a' : 'm') + Math.floor((r - 1) / 2);
  el('line', {x1: left - 6, x2: W - right, y1: y, y2: y, stroke: '#eef1f5'}, gsvg);
  var t = el('text', {x: 4, y: y + 4, 'font-size': 11, fill: '#5f6b7a'}, gsvg); t.textContent = label;
}
var edgeLayer = el('g', {}, gsvg), nodeLayer = el('g', {}, gsvg), nodes = {};
function addNode(name) { var n = el('circle', {cx: xOf(name), cy: yOf(rowOf(name)), r: name.indexOf('.') < 0 ? 5 : 3.2,
    fill: '#fff', stroke: '#b7bfcb', 'stroke-width': 1}, nodeLayer);
  var tt = el('title', {}, n); tt.textContent = name; nodes[name] = n; }
addNode('input'); addNode('logits');
for (var l = 0; l < L; l++) { for (var h = 0; h < H; h++) addNode('a' + l + '.h' + h); addNode('m' + l); }
var labelLayer = el('g', {}, gsvg);
// the curve
var CW = 330, CH = 250, cl = 44, cr = 12, ct = 14, cb = 40, csvg = null, marker = null, mline = null;
function cx(f) { var a = Math.log10(D.fractions[0]), b = Math.log10(D.fractions[D.fractions.length - 1]);
  return cl + (CW - cl - cr) * (Math.log10(f) - a) / (b - a); }
var ylo = 0, yhi = 1;
Object.keys(D.curves).forEach(function(k) { var c = D.curves[k];
  c.lo.concat(c.hi, c.f).forEach(function(v) { if (v !== null) { ylo = Math.min(ylo, v); yhi = Math.max(yhi, v); } }); });
ylo = Math.floor(ylo * 10) / 10; yhi = Math.ceil(yhi * 10) / 10;
function cy(v) { return ct + (CH - ct - cb) * (yhi - v) / (yhi - ylo); }
var side = root.querySelector('.ev-curve');
if (Object.keys(D.curves).length) {
  csvg = el('svg', {viewBox: '0 0 ' + CW + ' ' + CH, role: 'img', 'aria-label': 'faithfulness curve'}, side);
  [ylo, 0, 0.5, 1, yhi].filter(function(v, i, a) { return a.indexOf(v) === i && v >= ylo && v <= yhi; }).forEach(function(v) {
    el('line', {x1: cl, x2: CW - cr, y1: cy(v), y2: cy(v), stroke: v === 1 || v === 0 ? '#c9d0da' : '#eef1f5',
      'stroke-dasharray': v === 1 ? '4 3' : ''}, csvg);
    var t = el('text', {x: cl - 5, y: cy(v) + 4, 'font-size': 10, 'text-anchor': 'end', fill: '#5f6b7a'}, csvg); t.textContent = v.toFixed(1); });
  D.fractions.forEach(function(f, i) { if (i % 3 && i !== D.fractions.length - 1) return;
    var t = el('text', {x: cx(f), y: CH - cb + 14, 'font-size': 10, 'text-anchor': 'middle', fill: '#5f6b7a'}, csvg);
    t.textContent = (100 * f) + '%'; });
  var xt = el('text', {x: (cl + CW - cr) / 2, y: CH - 6, 'font-size': 11, 'text-anchor': 'middle', fill: '#1f2933'}, csvg);
  xt.textContent = 'fraction of ' + D.unit + ' (log scale)';
  var yt = el('text', {x: 11, y: (ct + CH - cb) / 2, 'font-size': 11, 'text-anchor': 'middle', fill: '#1f2933',
    transform: 'rotate(-90 11 ' + ((ct + CH - cb) / 2) + ')'}, csvg); yt.textContent = 'faithfulness f';
  var COL = {abs: '#2f5fb3', signed: '#d95f02'};
  Object.keys(D.curves).forEach(function(k) { var c = D.curves[k], d = '';
    c.f.forEach(function(v, i) { if (v === null) return; d += (d ? 'L' : 'M') + cx(c.fractions[i]) + ' ' + cy(v); });
    el('path', {d: d, fill: 'none', stroke: COL[k], 'stroke-width': 1.6, 'class': 'ev-curve-' + k}, csvg);
    c.f.forEach(function(v, i) { if (v === null) return; var x = cx(c.fractions[i]);
      if (c.lo[i] !== null && c.hi[i] !== null) el('line', {x1: x, x2: x, y1: cy(c.lo[i]), y2: cy(c.hi[i]), stroke: COL[k], 'stroke-opacity': 0.45}, csvg);
      var p = el('circle', {cx: x, cy: cy(v), r: 2.6, fill: COL[k]}, csvg);
      var tt = el('title', {}, p); tt.textContent = (k === 'abs' ? 'by |score|' : 'signed') + ': ' + (100 * c.fractions[i]) + '% of ' + D.unit + ', f ' + fmt(v, 3) + ' [' + fmt(c.lo[i], 3) + ', ' + fmt(c.hi[i], 3) + ']'; }); });
  mline = el('line', {y1: ct, y2: CH - cb, stroke: '#1f2933', 'stroke-opacity': 0.25}, csvg);
  marker = el('circle', {r: 6, fill: 'none', stroke: '#1f2933', 'stroke-width': 2, 'class': 'ev-marker'}, csvg);
} else { side.innerHTML = '<p class="note">No faithfulness curve was computed (ask for the curve to see one).</p>'; }
// the slider, the order, the tooltip
var slider = root.querySelector('input[type=range]'), stepOut = root.querySelector('.ev-step'),
    status = root.querySelector('.ev-status'), pointOut = root.querySelector('.ev-point'), tip = root.querySelector('.ev-tip');
var order = 'abs';
root.querySelectorAll('input[name=' + ROOT_ID + '-order]').forEach(function(r) { r.addEventListener('change', function() { order = r.value; draw(); }); });
function draw() {
  var i = +slider.value, s = D.steps[order][i], f = D.fractions[i], c = D.curves[order];
  while (edgeLayer.firstChild) edgeLayer.removeChild(edgeLayer.firstChild);
  while (labelLayer.firstChild) labelLayer.removeChild(labelLayer.firstChild);
  var used = {};
  s.drawn.slice().reverse().forEach(function(j) { var e = D.edges[j], x1 = xOf(e[0]), y1 = yOf(rowOf(e[0])),
      x2 = xOf(e[1]) + 4 * SLOT[e[2]], y2 = yOf(rowOf(e[1])) + 3, my = (y1 + y2) / 2, a = Math.min(1, Math.abs(e[3]) / D.scale);
    // an edge that would run straight up through the nodes between its ends bows to the side
    var span = rowOf(e[1]) - rowOf(e[0]), dx = (Math.abs(x2 - x1) < 10 && span > 1) ? 10 + 5 * span : 0;
    var p = el('path', {d: 'M' + x1 + ' ' + y1 + 'C' + (x1 + dx) + ' ' + my + ' ' + (x2 + dx) + ' ' + my + ' ' + x2 + ' ' + y2,
      stroke: colour(e[3]), 'stroke-width': (0.8 + 3.2 * Math.sqrt(a)).toFixed(2), 'stroke-opacity': (0.35 + 0.6 * a).toFixed(2),
      'class': 'ev-edge', 'data-edge': j}, edgeLayer);
    used[e[0]] = used[e[1]] = true; });
  Object.keys(nodes).forEach(function(n) { var on = !!used[n];
    nodes[n].setAttribute('fill', on ? '#1f2933' : '#fff'); nodes[n].setAttribute('stroke', on ? '#1f2933' : '#c9d0da');
    if (on && n.indexOf('.') > 0 && H <= 16) { var t = el('text', {x: xOf(n), y: yOf(rowOf(n)) - 6, 'font-size': 9,
      'text-anchor': 'middle', fill: '#1f2933'}, labelLayer); t.textContent = 'h' + n.split('.h')[1]; } });
  stepOut.textContent = (100 * f) + '% of ' + D.unit + ': n = ' + s.n.toLocaleString();
  var hidden = s.kept - s.drawn.length;
  status.textContent = 'Circuit: ' + s.kept.toLocaleString() + ' of ' + D.n_edges.toLocaleString() + ' edges after pruning (top ' +
    s.n.toLocaleString() + (D.unit === 'nodes' ? ' heads and MLPs' : '') + ' by ' + (order === 'abs' ? '|score|' : 'signed score') + '). ' + (hidden > 0 ? 'Drawn: the ' +
    s.drawn.length.toLocaleString() + ' of highest |score|; ' + hidden.toLocaleString() + ' hidden.' : 'All drawn.');
  root.setAttribute('data-drawn', s.drawn.length); root.setAttribute('data-hidden', Math.max(0, hidden));
  if (marker && c) { var v = c.f[i], x = cx(f); mline.setAttribute('x1', x); mline.setAttribute('x2', x);
    marker.setAttribute('cx', x); marker.setAttribute('cy', v === null ? -99 : cy(v));
    marker.setAttribute('stroke', order === 'abs' ? '#2f5fb3' : '#d95f02');
    pointOut.textContent = 'f = ' + fmt(v, 3) + '  [' + fmt(c.lo[i], 3) + ', ' + fmt(c.hi[i], 3) + ']'; }
  else if (pointOut) pointOut.textContent = 'f not computed';
}
gsvg.addEventListener('mouseover', function(ev) { var j = ev.target.getAttribute && ev.target.getAttribute('data-edge');
  if (j === null || j === undefined) return; var e = D.edges[+j];
  var name = e[0] + '->' + e[1] + (e[2] ? '<' + e[2] + '>' : '');
  tip.innerHTML = ''; var b = document.createElement('b'); b.textContent = name; tip.appendChild(b);
  [['score', fmt(e[3]) + '  (rank ' + e[6].toLocaleString() + ' by |score|)'], ['exact effect', e[4] === null ? 'not computed' : fmt(e[4])],
   ['95% interval', e[5] ? '[' + fmt(e[5][0]) + ', ' + fmt(e[5][1]) + ']' : 'not computed']].forEach(function(kv) {
    var d = document.createElement('div'); d.textContent = kv[0] + ': ' + kv[1]; tip.appendChild(d); });
  var box = root.querySelector('.ev-graph').getBoundingClientRect();
  tip.style.left = Math.min(box.width - 240, Math.max(0, (ev.clientX || box.left + 20) - box.left + 12)) + 'px';
  tip.style.top = ((ev.clientY || box.top + 20) - box.top + 12) + 'px'; tip.style.display = 'block'; });
gsvg.addEventListener('mouseout', function(ev) { if (ev.target.getAttribute && ev.target.getAttribute('data-edge') !== null) tip.style.display = 'none'; });
slider.addEventListener('input', draw);
draw();
})();
"""


def _legend(scale: float) -> str:
    stops = "".join(f'<stop offset="{o}" stop-color="{c}"/>' for o, c in
                    ((0, "#b83227"), (0.5, "#d6dbe2"), (1, "#1f5fa8")))
    return (f'<svg viewBox="0 0 330 46" role="img" aria-label="colour scale"><defs><linearGradient id="ev-grad">{stops}'
            '</linearGradient></defs><rect x="10" y="6" width="310" height="10" rx="3" fill="url(#ev-grad)"/>'
            f'<text x="10" y="30" font-size="10" fill="#5f6b7a">≤ {-scale:+.3g}</text>'
            '<text x="165" y="30" font-size="10" fill="#5f6b7a" text-anchor="middle">0</text>'
            f'<text x="320" y="30" font-size="10" fill="#5f6b7a" text-anchor="end">≥ {scale:+.3g}</text>'
            '<text x="165" y="43" font-size="10" fill="#1f2933" text-anchor="middle">edge score: red lowers the metric, '
            'blue raises it</text></svg>')


def edges_section(data: Mapping[str, Any], *, anchor: str = "edges", max_drawn: int = MAX_DRAWN) -> str:
    """The circuit view as one ``<section class="card">`` of the report page (see the module for
    ``data``). Needs no other script on the page."""
    payload = view_payload(data, max_drawn=max_drawn)
    root = f"ev-{re.sub(r'[^A-Za-z0-9_-]', '-', anchor)}"
    last = len(payload["fractions"]) - 1
    kept = [s["kept"] for s in payload["steps"]["abs"]]
    # start at 1% of the edges, or at the first fraction whose pruned circuit is not empty
    start = next((i for i in range(min(3, last), last + 1) if kept[i] > 0), min(3, last))
    orders = ""
    if "signed" in payload["steps"]:
        orders = ("<span>Rank by <label><input type=\"radio\" name=\"{r}-order\" value=\"abs\" checked> |score| (CMD)"
                  "</label> <label><input type=\"radio\" name=\"{r}-order\" value=\"signed\"> signed score (CPR)</label>"
                  "</span>").format(r=root)
    caption = (
        '<p class="caption"><span>The circuit of the top edges, drawn on the model\'s graph: <code>input</code> at the '
        "bottom, each layer's heads (<code>a{L}.h{H}</code>) and then its MLP (<code>m{L}</code>, right), <code>logits</code> "
        "at the top; "
        "each edge ends at its head's <code>&lt;q&gt;</code>, <code>&lt;k&gt;</code> or <code>&lt;v&gt;</code> input "
        "(left, middle, right of the node).</span><span>Move the slider over MIB's ten fractions of the edges: the "
        "circuit is redrawn and its point is marked on the faithfulness curve. Blue edges raise the metric, red ones "
        "lower it; hover an edge for its score, exact effect and interval.</span></p>")
    controls = (f'<div class="ev-controls"><label>Edges <input type="range" min="0" max="{last}" step="1" '
                f'value="{start}" aria-label="fraction of edges"></label><span class="ev-step"></span>'
                f'<span class="ev-point"></span>{orders}</div><p class="ev-status"></p>')
    side = (f'<div class="ev-row"><div class="ev-facts">{_facts(data, payload)}{_legend(payload["scale"])}</div>'
            '<div class="ev-side"><div class="ev-curve"></div></div></div>')
    body = (f'<div id="{root}" class="ev-root">{side}{controls}<div class="ev-graph">'
            '<div class="ev-tip" style="display:none"></div></div>'
            f'<script type="application/json" class="ev-data">{json_for_script(payload)}</script>'
            f'<script>{_VIEW_JS.replace("ROOT_ID", repr(root))}</script></div>')
    title = "Circuit: edge attribution"
    return (f'<section class="card" id="{_e(anchor)}"><style>{_VIEW_CSS}</style><h2>{title}</h2>{caption}'
            f"{body}{_top_table(data)}</section>")


def edges_page(data: Mapping[str, Any], *, max_drawn: int = MAX_DRAWN) -> str:
    """The view as its own self-contained page."""
    model = str(data.get("model") or "model")
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>logitscope · edges · {_e(model)}</title><style>{CSS}</style></head>\n"
            f'<body><main><header class="card"><h1>Edge attribution · {_e(model)}</h1>'
            '<p class="subtitle">Which edges of the computational graph carry the behaviour: each edge\'s score is the '
            "estimated change of the metric when that edge alone carries the corrupted value.</p></header>"
            f"{edges_section(data, max_drawn=max_drawn)}<footer>logitscope · renders offline</footer></main></body></html>\n")


def write_edges_report(data: Mapping[str, Any], path: str | Path, *, max_drawn: int = MAX_DRAWN) -> Path:
    """Write :func:`edges_page` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``); the data is checked before anything is written."""
    return write_text_atomic(path, edges_page(data, max_drawn=max_drawn))
