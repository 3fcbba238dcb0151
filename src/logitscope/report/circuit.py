"""The report's circuit section: path patching's sender × receiver grid, and a circuit's
faithfulness, completeness and minimality (the IOI paper's Fig. 6, 7), each number with its
95% interval."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from logitscope.report.figures import ACCENT, FONT, base_layout, every_label
from logitscope.report.patching import heatmap
from logitscope.results.names import metric_label

if TYPE_CHECKING:
    from logitscope.results.patching import PatchingData
    from logitscope.results.circuit import CircuitResult
    from logitscope.results.paths import PathPatchingResult


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _ci(s: dict[str, Any], digits: int = 3, percent: bool = False) -> str:
    lo, hi = s["ci95_low"], s["ci95_high"]
    if lo is None or hi is None:
        return "—"
    if percent:
        return f"[{100 * lo:.1f}%, {100 * hi:.1f}%]"
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _gap(a: float | None, b: float | None) -> float | None:
    """``a − b``, or ``None`` (no bar) where either is not a number (a fraction of F(M) = 0: F in kl,
    which is 0 on the whole model)."""
    return None if a is None or b is None else a - b


def _v(s: dict[str, Any], digits: int = 3, percent: bool = False) -> str:
    x = s["mean"]
    if x is None:
        return "—"
    return f"{100 * x:.1f}%" if percent else f"{x:+.{digits}f}"


def paths_figure(paths: PathPatchingResult) -> go.Figure:
    """The sender × receiver grid of effects: the change in logit difference when only the path from
    the sender to the receiver is patched, as a fraction of the clean − corrupted gap."""
    eff, mean, change = paths.effect(), paths.mean(), paths.change()
    iv = paths.intervals
    base = float(paths.base_logit_diff.mean())
    S, R = eff.shape
    custom = []
    for i in range(S):
        row = []
        for j in range(R):
            if np.isnan(mean[i, j]):
                row.append(f"<b>{_e(paths.senders[i])} → {_e(paths.receivers[j])}</b><br>no path (the sender is not "
                           "below the receiver)")
                continue
            row.append(
                f"<b>{_e(paths.senders[i])} → {_e(paths.receivers[j])}</b><br>{_e(metric_label(paths.metric))} {base:+.3f} → {mean[i, j]:+.3f} "
                f"[{iv['values_ci95_low'][i, j]:+.3f}, {iv['values_ci95_high'][i, j]:+.3f}]"
                f"<br>change {change[i, j]:+.3f} [{iv['change_ci95_low'][i, j]:+.3f}, {iv['change_ci95_high'][i, j]:+.3f}]"
                f"<br>effect {eff[i, j]:+.3f} [{iv['effect_ci95_low'][i, j]:+.3f}, {iv['effect_ci95_high'][i, j]:+.3f}]"
            )
        custom.append(row)
    title = (f"Path patching ({'noising' if paths.direction == 'noise' else 'denoising'}, freeze {paths.freeze}): "
             "effect of each sender through each receiver")
    bound = float(np.nanmax(np.abs(eff))) if np.isfinite(eff).any() else 1.0
    return heatmap(eff, list(paths.receivers), list(paths.senders), custom, title, "Receiver", "Sender", "Effect",
                    bound=max(bound, 1e-9), cell=int(np.clip(560 / max(S, R), 12, 48)))


# How each source of completeness sets K is drawn and named in the legend.
# Colours far apart in hue as well as symbols (∅ was a dark slate beside the classes' blue).
K_MARKERS = {"empty": ("K = ∅", "#1b9e77", "square"), "class": ("a class", ACCENT, "circle"),
             "random": ("random subset", "#e7298a", "diamond"), "greedy": ("greedy search", "#d95f02", "star")}


def listed_completeness(circuit: CircuitResult) -> tuple[list[dict[str, Any]], int]:
    """The completeness rows the report lists and draws, and how many it leaves out: a random K
    that is the empty set is the row ``K = ∅`` again (same heads, same numbers), so it is not
    listed twice (results.json keeps every row)."""
    rows = circuit.measures["completeness"]
    kept = [r for r in rows if not (r["source"] == "random" and not r["heads"])]
    return kept, len(rows) - len(kept)


def completeness_figure(circuit: CircuitResult) -> go.Figure:
    """F(C \\ K) against F(M \\ K) for each K, with intervals, one trace per source of K (the empty
    set, the classes, random subsets, the greedy search); a complete circuit sits on y = x."""
    rows, _ = listed_completeness(circuit)
    x = [r["model_without_k"]["mean"] for r in rows]
    y = [r["circuit_without_k"]["mean"] for r in rows]
    lo = min(min(x), min(y)) - 0.2
    hi = max(max(x), max(y)) + 0.2
    traces = [go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="#9aa3b2", dash="dot"),
                         hoverinfo="skip", showlegend=False)]
    for source, (name, colour, symbol) in K_MARKERS.items():
        sel = [r for r in rows if r["source"] == source]
        if not sel:
            continue
        mk, ck = [r["model_without_k"] for r in sel], [r["circuit_without_k"] for r in sel]
        which = [": " + _e(", ".join(r["heads"])) if r["heads"] else "" for r in sel]
        text = [f"<b>K = {_e(r['k'])}</b> ({len(r['heads'])} heads{w})"
                f"<br>F(M\\K) {_v(r['model_without_k'])} {_ci(r['model_without_k'])}<br>F(C\\K) "
                f"{_v(r['circuit_without_k'])} {_ci(r['circuit_without_k'])}<br>incompleteness "
                f"{_v(r['incompleteness'])} {_ci(r['incompleteness'])}" for r, w in zip(sel, which)]
        traces.append(go.Scatter(
            x=[s["mean"] for s in mk], y=[s["mean"] for s in ck], mode="markers", name=name, text=text,
            marker=dict(size=11 if source == "greedy" else 9, color=colour, symbol=symbol),
            hovertemplate="%{text}<extra></extra>",
            error_x=dict(type="data", array=[s["ci95_high"] - s["mean"] for s in mk],
                         arrayminus=[s["mean"] - s["ci95_low"] for s in mk], color="#9aa3b2", thickness=1),
            error_y=dict(type="data", array=[s["ci95_high"] - s["mean"] for s in ck],
                         arrayminus=[s["mean"] - s["ci95_low"] for s in ck], color="#9aa3b2", thickness=1)))
    fig = go.Figure(traces)
    layout = base_layout("Completeness: the circuit and the model with the same heads K knocked out",
                          f"F(M \\ K), {metric_label(circuit.metric)}", f"F(C \\ K), {metric_label(circuit.metric)}",
                          height=460)
    layout.update(showlegend=True, legend=dict(orientation="h", y=-0.2))
    fig.update_layout(**layout)
    return fig


def minimality_figure(circuit: CircuitResult) -> go.Figure:
    """Each head's minimality score as a fraction of F(M), with intervals, coloured by class."""
    rows = circuit.measures["minimality"]
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    classes = list(dict.fromkeys(r["class"] for r in rows))
    fig = go.Figure()
    for k, name in enumerate(classes):
        sel = [r for r in rows if r["class"] == name]
        s = [r["score_fraction"] for r in sel]
        fig.add_trace(go.Bar(
            x=[r["head"] for r in sel], y=[v["mean"] for v in s], name=name,
            marker_color=palette[k % len(palette)],
            error_y=dict(type="data", array=[_gap(v["ci95_high"], v["mean"]) for v in s],
                         arrayminus=[_gap(v["mean"], v["ci95_low"]) for v in s], color="#4a5361", thickness=1),
            text=[f"<b>{r['head']}</b> ({_e(name)})<br>K = {_e(', '.join(r['k']) or '∅')}<br>F(C\\K) "
                  f"{_v(r['without_k'])}, F(C\\(K∪v)) {_v(r['without_k_and_head'])}<br>score {_v(r['score'])} "
                  f"{_ci(r['score'])} = {_v(r['score_fraction'], percent=True)} of F(M)" for r in sel],
            hovertemplate="%{text}<extra></extra>", textposition="none",
        ))
    layout = base_layout("Minimality: |F(C \\ (K ∪ {v})) − F(C \\ K)| for each head v, as a fraction of F(M)",
                          "Head", "Score / F(M)", height=380)
    layout.update(showlegend=True, legend=dict(orientation="h", y=-0.25), bargap=0.15)
    layout["yaxis"]["tickformat"] = ".0%"
    layout["margin"]["b"] = every_label(layout["xaxis"], list(dict.fromkeys(r["head"] for r in rows))) + 40
    layout["font"] = dict(family=FONT, size=12, color="#1f2933")
    fig.update_layout(**layout)
    return fig


def circuit_figures(result: PatchingData) -> dict[str, go.Figure]:
    figs: dict[str, go.Figure] = {}
    if result.paths is not None:
        figs["paths"] = paths_figure(result.paths)
    if result.circuit is not None:
        figs["completeness"] = completeness_figure(result.circuit)
        figs["minimality"] = minimality_figure(result.circuit)
    return figs


def circuit_section(result: PatchingData, figure_html, table_html, caption_html) -> tuple[str, str, str]:
    """``(anchor, title, body)`` of the report's section on paths and circuits."""
    figs = circuit_figures(result)
    parts: list[str] = []
    paths = result.paths
    if paths is not None:
        from logitscope.results.names import FROZEN

        base = "clean prompts' run" if paths.direction == "noise" else "counterparts' run"
        parts.append("<h3>Path patching</h3>")
        parts.append(caption_html(
            f"Each sender's output (all positions) taken from the other prompt of its pair and put into the {base}, "
            f"reaching the logits only through the receiver; frozen: {_e(FROZEN[paths.freeze])}. Cells show the change "
            f"in {_metric_words(paths.metric)} as a fraction of the clean − corrupted gap "
            f"({paths.n_prompts:,} pairs).",
            "Hover a cell for the patched logit difference, the change and the effect, each with its 95% interval "
            "(the study's bootstrap resamples); a blank cell has no path (the sender is not below the receiver).",
        ))
        if np.isfinite(paths.effect()).any():
            parts.append(figure_html(figs["paths"], "paths"))
        else:
            from logitscope.report.patching import undefined_note

            parts.append(undefined_note("Path patching's effects"))
        parts += [f'<p class="note">Note: {_e(n)}</p>' for n in paths.notes]
    circuit = result.circuit
    if circuit is not None:
        parts.append(_circuit_tables(circuit, table_html, caption_html))
        parts.append(figure_html(figs["completeness"], "completeness"))
        parts.append(figure_html(figs["minimality"], "minimality"))
    return "circuit", "Circuit: paths, faithfulness, completeness, minimality", "".join(parts)


def _circuit_tables(circuit: CircuitResult, table_html, caption_html) -> str:
    ms = circuit.measures
    f = ms["faithfulness"]
    c = circuit.circuit
    greedy = any(r["source"] == "greedy" for r in ms["completeness"])
    out = [f"<h3>{_e(circuit.title[0].upper() + circuit.title[1:])} ({len(c.heads)} heads)</h3>"]
    what = ("its mean over the counterpart prompts of the same template, position by position"
            if circuit.ablation == "mean" else f"{circuit.ablation}-ablated")
    out.append(caption_html(
        f"F(X): the clean prompts' mean {_e(circuit.metric_description or 'logit difference')} when every head outside X (a head at the positions its class "
        f"is kept at) is knocked out, its output replaced by {what}. M is the whole model, C the circuit.",
        "Faithfulness as in the IOI paper: |F(M) − F(C)| (its circuit: 0.46, 13% of F(M)) and F(C) / F(M); "
        "normalised: (F(C) − F(∅)) / (F(M) − F(∅)). Intervals: 95%, the study's bootstrap resamples.",
    ))
    rows = [
        ["F(M): the model", _v(ms["model"]), _ci(ms["model"])],
        ["F(C): the circuit alone", _v(ms["circuit"]), _ci(ms["circuit"])],
        ["F(∅): every head knocked out", _v(ms["no_heads"]), _ci(ms["no_heads"])],
        ["|F(M) − F(C)|", _v(f["gap"]), _ci(f["gap"])],
        ["F(C) / F(M)", _v(f["fraction"], percent=True), _ci(f["fraction"], percent=True)],
        ["(F(C) − F(∅)) / (F(M) − F(∅))", _v(f["normalised"], percent=True), _ci(f["normalised"], percent=True)],
    ]
    out.append(table_html([("Faithfulness", False), ("Value", True), ("95% CI", True)], rows))
    out.append(f'<p class="note">{_e(circuit.setting)}</p>')
    out.append(table_html([("Class", False), ("Heads", False), ("Kept at", False)],
                          [[_e(k.name), _e(", ".join(f"L{l}H{h}" for l, h in k.heads)), _e(", ".join(k.positions))]
                           for k in c.classes]))
    by = circuit.by_template()
    if len(by) > 1:
        out.append("<details><summary>Per template</summary>" + table_html(
            [("Template", False), ("Prompts", True), ("F(M)", True), ("F(C)", True), ("F(∅)", True), ("F(C)/F(M)", True)],
            [[_e(r["template"]), str(r["n"]), f"{r['model']:+.3f}", f"{r['circuit']:+.3f}", f"{r['no_heads']:+.3f}",
              "—" if r["fraction"] is None else f"{100 * r['fraction']:.1f}%"] for r in by]) + "</details>")
    out.append(caption_html(
        "Completeness: for sets K of circuit heads (none, each class, random halves"
        + (", and the sets of the IOI paper's greedy search for the largest incompleteness" if greedy else "")
        + "), the circuit and the model with K knocked out; incompleteness |F(C \\ K) − F(M \\ K)|. Minimality: for "
        "each head v and its set K, |F(C \\ (K ∪ {v})) − F(C \\ K)|.",
        "A complete circuit's points lie on the dotted line; a minimal circuit has no head with a score near zero."
        + (" A greedy set is chosen for its score on these same prompts, so its interval does not count that choice."
           if greedy else ""),
    ))
    listed, dropped = listed_completeness(circuit)
    rows = [[_e(r["k"]), _e(r["source"]), f"{len(r['heads'])}: {_e(', '.join(r['heads']))}"
             if r["source"] in ("random", "greedy") and r["heads"] else str(len(r["heads"])),
             _v(r["circuit_without_k"]), _v(r["model_without_k"]),
             _v(r["incompleteness"]), _ci(r["incompleteness"])] for r in listed]
    out.append(table_html([("K", False), ("From", False), ("Heads", False), ("F(C\\K)", True), ("F(M\\K)", True),
                           ("Incompleteness", True), ("95% CI", True)], rows))
    if dropped:
        out.append(f'<p class="note">{dropped} random K equal to ∅ not listed again (the row K = ∅ is the same '
                   "set; results.json keeps every row).</p>")
    return "".join(out)


def _metric_words(key: str) -> str:
    """The metric in a caption: the clean answers' logit difference, or the chosen metric's label."""
    return "the clean answers' logit difference" if key == "logit_diff" else f"the {_e(metric_label(key))} (results.json: {key})"
