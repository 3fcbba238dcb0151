"""How a result shows itself in Jupyter: a light display by default, the whole report on request.

A saved notebook keeps every output. The full report inlines plotly.js and circuitsvis's bundle
(about 6.3 MB), so showing it in every cell that displays a result made a notebook grow by ~7 MB
a display. :func:`notebook_html` (what ``result`` shows) is plain HTML with no script: the
summary, the head heatmap as coloured cells, the top heads and the per-template table, tens of
kilobytes. :func:`report_frame_html` (``result.report_view()``) is the full interactive report in
an ``<iframe srcdoc>``, on purpose, once.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np

from logitscope.inputs.circuits import IOI_CLASS_ABBREV, known_circuit
from logitscope.labels import head_label
from logitscope.report.page import report_html
from logitscope.report.summary import summary_text
from logitscope.results.study import StudyData

_BOX = "font:12px/1.4 Inter,'Segoe UI',Helvetica,Arial,sans-serif;color:#1f2933"
_PRE = "font-size:12px;line-height:1.4;margin:0 0 8px;white-space:pre-wrap"
_CELL = "width:22px;height:18px;padding:0;border:1px solid #fff;font-size:8px;text-align:center;color:#1f2933"
_TH = "padding:2px 6px;text-align:right;font-weight:600;color:#5f6b7a"
_TD = "padding:2px 6px;text-align:right;font-variant-numeric:tabular-nums"


def _rdbu(x: float) -> str:
    """A diverging colour for ``x`` in [-1, 1]: red (negative), white, blue (positive)."""
    x = float(np.clip(x, -1.0, 1.0))
    end = (33, 102, 172) if x > 0 else (178, 24, 43)
    rgb = (round(255 + (c - 255) * abs(x)) for c in end)
    return "#" + "".join(f"{c:02x}" for c in rgb)


def heatmap(result: StudyData) -> str:
    values = result.head_attribution
    lo, hi = result.intervals["head_attribution"]
    bound = float(np.abs(values).max()) or 1.0
    circuit = known_circuit(result) or {}
    head = "".join(f'<th style="{_TH}">{h}</th>' for h in range(result.n_heads))
    rows = []
    for layer in range(result.n_layers):
        cells = []
        for h in range(result.n_heads):
            v = float(values[layer, h])
            tag = IOI_CLASS_ABBREV.get(circuit.get((layer, h), ""), "")
            tip = f"{head_label(layer, h)}: {v:+.3f}, 95% CI [{lo[layer, h]:+.3f}, {hi[layer, h]:+.3f}]"
            cells.append(f'<td title="{html.escape(tip)}" style="{_CELL};background:{_rdbu(v / bound)}">{tag}</td>')
        rows.append(f'<tr><th style="{_TH}">{layer}</th>{"".join(cells)}</tr>')
    return (f'<table style="border-collapse:collapse"><tr><th style="{_TH}">layer \\ head</th>{head}</tr>'
            f'{"".join(rows)}</table><div style="color:#5f6b7a">Mean direct logit attribution per head (blue: towards '
            f'the correct answer, red: the incorrect one; ±{bound:.3f} at full colour); hover a cell.</div>')


def _top_heads(result: StudyData) -> str:
    lo, hi = result.intervals["head_attribution"]
    parts = []
    for sign, word in ((1, "positive"), (-1, "negative")):
        heads = result.signed_top_heads(sign)
        rows = "".join(
            f'<tr><td style="{_TD};text-align:left"><b>{head_label(l, h)}</b></td><td style="{_TD}">{v:+.3f}</td>'
            f'<td style="{_TD}">[{lo[l, h]:+.3f}, {hi[l, h]:+.3f}]</td></tr>'
            for l, h, v in heads
        ) or f'<tr><td style="{_TD}" colspan="3">no head has a {word} mean</td></tr>'
        parts.append(f'<div style="margin-right:24px"><b>Top {word} heads</b><table style="border-collapse:collapse">'
                     f'<tr><th style="{_TH}">head</th><th style="{_TH}">mean</th><th style="{_TH}">95% CI</th></tr>'
                     f"{rows}</table></div>")
    return f'<div style="display:flex;flex-wrap:wrap;margin-top:10px">{"".join(parts)}</div>'


def _by_template(result: StudyData) -> str:
    groups = result.by_template()
    if not groups:
        return ""
    rows = "".join(
        f'<tr><td style="{_TD}">{html.escape(str(g["template"]))}</td><td style="{_TD}">{html.escape(str(g["order"]))}</td>'
        f'<td style="{_TD}">{g["n"]:,}</td><td style="{_TD}">{g["logit_diff_mean"]:+.3f}</td>'
        f'<td style="{_TD}">[{g["ci95_low"]:+.3f}, {g["ci95_high"]:+.3f}]</td></tr>'
        for g in groups
    )
    head = "".join(f'<th style="{_TH}">{h}</th>' for h in ("template", "order", "prompts", "mean logit diff", "95% CI"))
    return (f'<details style="margin-top:10px"><summary>Mean logit difference by template ({len(groups)} groups)</summary>'
            f'<table style="border-collapse:collapse"><tr>{head}</tr>{rows}</table></details>')


def _token_lens(result: StudyData) -> str:
    """The token lens's prompt-averaged view: each point's top tokens with their mean probability."""
    if result.lens_mean_ids is None:
        return ""
    tok = result.lens_tokens
    rows = "".join(
        f'<tr><td style="{_TD};text-align:left"><code>{html.escape(label)}</code></td>'
        + "".join(f'<td style="{_TD};text-align:left">{html.escape(repr(tok[int(i)]))} {p:.2f}</td>' for i, p in zip(ids, probs))
        + "</tr>"
        for label, ids, probs in zip(result.token_lens_labels, result.lens_mean_ids, result.lens_mean_probs)
    )
    return (f'<details style="margin-top:10px"><summary>Token logit lens: top {result.lens_mean_ids.shape[1]} tokens '
            f'per layer, probability averaged over prompts</summary><table style="border-collapse:collapse">{rows}'
            "</table></details>")


def notebook_html(result: StudyData) -> str:
    """The light notebook display (``StudyResult._repr_html_``): plain HTML, no script, tens of KB."""
    note = ("Interactive figures and attention views: <code>result.report_view()</code> (the whole report inline; "
            "a saved notebook grows by about 7 MB per call) or <code>result.save(folder)</code> and open its "
            "report.html; plotly figures alone: <code>result.figures()</code>.")
    return (
        f'<div class="logitscope-result" style="{_BOX}">'
        f'<pre style="{_PRE}">{html.escape(summary_text(result))}</pre>'
        f"{heatmap(result)}{_top_heads(result)}{_token_lens(result)}{_by_template(result)}"
        f'<div style="margin-top:10px;color:#5f6b7a">{note}</div></div>'
    )


def report_frame_html(result: StudyData, height: int = 900, patching: Any = None) -> str:
    """A short text summary, then the full report in a scrolling ``<iframe srcdoc>`` of ``height``
    pixels: it renders offline, and its scripts cannot clash with the notebook's (e.g. require.js).
    Non-ASCII characters are written as character references, so the frame reads the same whatever
    encoding the notebook page declares."""
    summary = html.escape(summary_text(result) if patching is None else patching.summary())
    doc = html.escape(report_html(result, patching), quote=True).encode("ascii", "xmlcharrefreplace").decode("ascii")
    return (
        '<div class="logitscope-result">'
        f'<pre style="{_PRE}">{summary}</pre>'
        f'<iframe srcdoc="{doc}" title="logitscope report" '
        f'style="width:100%;height:{int(height)}px;border:1px solid #e3e7ed;border-radius:8px;background:#f6f7f9"></iframe>'
        "</div>"
    )


@dataclass(frozen=True, eq=False)
class ReportView:
    """What ``result.report_view()`` returns: displayed by Jupyter as the whole interactive report."""

    result: StudyData
    height: int = 900
    patching: Any = None  # a PatchingData whose causal section the report adds

    def _repr_html_(self) -> str:
        return report_frame_html(self.result, self.height, self.patching)

    def __repr__(self) -> str:
        return f"<ReportView of {self.result!r}: display it in a notebook>"
