"""The report's attribution-patching parts: for each grid estimated by attribution patching, a
scatter of estimate against exact patching (one point per cell, the diagonal where they agree) and
the agreement table, with the cells where the estimate is off named, not hidden."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Callable

import numpy as np
import plotly.graph_objects as go

from logitscope.report.figures import base_layout

if TYPE_CHECKING:
    from logitscope.results.patching import PatchingData

EXPLAIN = (
    "Attribution patching estimates every cell from one gradient: patched ≈ base + (source − base) · "
    "∂metric/∂activation at the base run, summed over what the cell replaces (Nanda 2023; AtP). It costs two "
    "forward passes and one backward pass for the whole grid, and it is a first-order estimate: exact where the "
    "metric is linear in the activation, wrong where it is not, above all through saturated attention (a "
    "softmax near 0 or 1 has a flat gradient, while a whole patch moves it far: queries, keys and patterns)."
)


def scatter_figure(result: PatchingData, grid: str) -> go.Figure:
    """Estimate against exact, in TransformerLens's normalised metric; cells off by more than the
    agreement's fraction in red."""
    from logitscope.results.names import attribution_name

    exact, estimate = result.normalised(grid).reshape(-1), result.normalised(attribution_name(grid)).reshape(-1)
    ag = result.agreement[grid]
    off = {o["cell"] for o in ag["off"]}
    labels = [result.cell_label(grid, k) for k in range(exact.size)]
    bad = np.array([label in off for label in labels])
    fig = go.Figure()
    finite = np.isfinite(exact) & np.isfinite(estimate)
    lo = float(min(exact[finite].min(), estimate[finite].min(), 0.0)) if finite.any() else 0.0
    hi = float(max(exact[finite].max(), estimate[finite].max(), 1.0)) if finite.any() else 1.0
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="#9aa5b1", dash="dot", width=1),
                             hoverinfo="skip", showlegend=False))
    for mask, name, color in ((~bad, "within the fraction", "#2b6cb0"), (bad, f"off by > {ag['off_fraction']:.0%}", "#c53030")):
        if not mask.any():
            continue
        fig.add_trace(go.Scatter(
            x=exact[mask], y=estimate[mask], mode="markers", name=name, marker=dict(color=color, size=7, opacity=0.8),
            text=[html.escape(t) for t, m in zip(labels, mask) if m],
            hovertemplate="<b>%{text}</b><br>exact %{x:+.3f}<br>attribution %{y:+.3f}<extra></extra>",
        ))
    layout = base_layout(f"Attribution patching against exact patching: {grid}", "Exact (normalised)",
                          "Attribution estimate (normalised)", height=460)
    layout.update(showlegend=True, legend=dict(orientation="h", y=-0.22))
    layout["margin"]["b"] = 96
    fig.update_layout(**layout)
    return fig


def attribution_figures(result: PatchingData) -> dict[str, go.Figure]:
    return {f"atp_scatter_{grid}": scatter_figure(result, grid) for grid in result.agreement}


def agreement_html(result: PatchingData, grid: str, figure_html: Callable, table_html: Callable,
                   figs: dict[str, go.Figure]) -> str:
    """The scatter and the agreement table of one grid, and the cells where the estimate is off."""
    ag = result.agreement[grid]

    def r(v):
        return "n/a" if v is None else f"{v:+.3f}"

    rows = [[html.escape(grid), r(ag["pearson"]), r(ag["spearman"]), f"{ag['max_abs_error']:.4f}",
             html.escape(ag["max_abs_error_at"] or ""), f"{len(ag['off'])} of {ag['n_cells']}"]]
    parts = [table_html([("Grid", False), ("Pearson", True), ("Spearman", True), ("Largest |error|", True),
                         ("at", False), (f"Cells off by > {ag['off_fraction']:.0%}", True)], rows)]
    parts.append(f'<p class="note">Off: the estimate differs from the exact patched logit difference by more than '
                 f"{ag['off_fraction']:.0%} of |clean − corrupted| ({ag['off_threshold']:.4f} here).</p>")
    if ag["off"]:
        shown = ag["off"][:20]
        parts.append(table_html(
            [("Cell", False), ("Exact", True), ("Attribution", True), ("Error", True), ("Error ÷ |clean − corrupted|", True)],
            [[html.escape(o["cell"]), f"{o['exact']:+.4f}", f"{o['attribution']:+.4f}", f"{o['error']:+.4f}",
              f"{o['error_fraction']:+.3f}"] for o in shown]))
        if len(ag["off"]) > len(shown):
            parts.append(f'<p class="note">… and {len(ag["off"]) - len(shown)} more (results.json '
                         f"patching.agreement.{html.escape(grid)}.off).</p>")
    if np.isfinite(result.normalised(grid)).any():
        parts.append(figure_html(figs[f"atp_scatter_{grid}"], f"atp_scatter_{grid}"))
    return "".join(parts)
