"""The report's plotly figures, built from a :class:`~logitscope.results.study.StudyData`.

Every figure is a plain ``plotly.graph_objects.Figure`` so a notebook user can restyle it
(``result.figures()["head_attribution"].update_layout(...)``) before showing or saving it.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from logitscope.inputs.circuits import IOI_CLASS_ABBREV, known_circuit
from logitscope.results.study import StudyData

FONT = "Inter, 'Segoe UI', 'Helvetica Neue', Helvetica, Arial, 'Liberation Sans', sans-serif"
ACCENT = "#2f5fb3"
MUTED = "#8a94a6"
NEGATIVE = "#c0392b"


def _base_layout(title: str, x_title: str, y_title: str, height: int = 350) -> dict:
    """Shared look: white background, light grid, compact margins."""
    return dict(
        template="plotly_white",
        title=dict(text=title, x=0, xanchor="left", font=dict(size=15)),
        font=dict(family=FONT, size=12, color="#1f2933"),
        height=height,
        margin=dict(l=64, r=24, t=48, b=64),
        xaxis=dict(title=x_title, showline=True, linecolor="#c9ced6", ticks="outside", tickcolor="#c9ced6"),
        yaxis=dict(title=y_title, zeroline=True, zerolinecolor="#9aa3b2", zerolinewidth=1),
        hoverlabel=dict(font=dict(family=FONT)),
        showlegend=False,
    )


def _line_with_ci(labels: list[str], values: np.ndarray, ci: tuple[np.ndarray, np.ndarray], *, name: str) -> go.Scatter:
    """A line over categorical labels, with 95% interval error bars."""
    values = np.asarray(values, dtype=float)
    lo, hi = (np.asarray(a, dtype=float) for a in ci)
    return go.Scatter(
        x=labels,
        y=values,
        mode="lines+markers",
        name=name,
        line=dict(color=ACCENT, width=2),
        marker=dict(size=6, color=ACCENT),
        error_y=dict(
            type="data", symmetric=False, array=hi - values, arrayminus=values - lo, color=MUTED, thickness=1.2, width=3
        ),
        customdata=np.stack([lo, hi], axis=-1),
        hovertemplate="%{x}: %{y:+.3f}<br>95% CI [%{customdata[0]:+.3f}, %{customdata[1]:+.3f}]<extra></extra>",
    )


def logit_lens_figure(result: StudyData) -> go.Figure:
    """Logit difference read from the accumulated residual stream before each layer (frozen final-norm scale)."""
    trace = _line_with_ci(result.logit_lens_labels, result.logit_lens, result.intervals["logit_lens"], name="logit lens")
    fig = go.Figure(trace)
    recomputed = result.logit_lens_recomputed_per_prompt
    if recomputed is not None:
        again = _line_with_ci(result.logit_lens_labels, recomputed.mean(-1), result.intervals["logit_lens_recomputed"],
                              name="norm recomputed per point")
        again.line.dash, again.line.color, again.marker.color = "dash", MUTED, MUTED
        fig.add_trace(again)
    fig.update_layout(**_base_layout("Logit difference from the accumulated residual stream", "Residual stream", "Logit diff"))
    fig.update_layout(hovermode="x unified")
    return fig


def layer_attribution_figure(result: StudyData) -> go.Figure:
    """Direct contribution of the embeddings and of each attention and MLP layer."""
    trace = _line_with_ci(result.layer_labels, result.layer_attribution, result.intervals["layer_attribution"], name="layer")
    fig = go.Figure(trace)
    fig.update_layout(**_base_layout("Logit difference from each layer", "Component", "Logit diff"))
    fig.update_layout(hovermode="x unified")
    return fig


def head_attribution_figure(result: StudyData) -> go.Figure:
    """Layers × heads heatmap of mean direct logit attribution (RdBu, centred on zero); GPT-2 small's
    IOI head classes are tagged in their cells."""
    values = np.asarray(result.head_attribution, dtype=float)
    lo, hi = (np.asarray(a, dtype=float) for a in result.intervals["head_attribution"])
    n_layers, n_heads = values.shape
    circuit = known_circuit(result) or {}
    labels = [[f"L{l}H{h}" for h in range(n_heads)] for l in range(n_layers)]
    classes = [[circuit.get((l, h), "") for h in range(n_heads)] for l in range(n_layers)]
    tags = [[IOI_CLASS_ABBREV.get(c, "") for c in row] for row in classes]
    custom = [
        [[labels[l][h], float(lo[l, h]), float(hi[l, h]), f"<br>IOI class: {c}" if c else ""] for h, c in enumerate(classes[l])]
        for l in range(n_layers)
    ]
    bound = float(np.abs(values).max()) or 1.0
    heatmap = go.Heatmap(
        z=values,
        x=list(range(n_heads)),
        y=list(range(n_layers)),
        colorscale="RdBu",
        zmid=0.0,
        zmin=-bound,
        zmax=bound,
        customdata=custom,
        hovertemplate=(
            "<b>%{customdata[0]}</b>: %{z:+.3f}<br>95% CI [%{customdata[1]:+.3f}, %{customdata[2]:+.3f}]"
            "%{customdata[3]}<extra></extra>"
        ),
        colorbar=dict(title=dict(text="Logit diff", side="right"), thickness=14, outlinewidth=0),
        xgap=1,
        ygap=1,
    )
    if circuit:
        heatmap.update(text=tags, texttemplate="%{text}", textfont=dict(size=9))
    cell = int(np.clip(560 / max(n_heads, n_layers), 12, 60))
    layout = _base_layout("Logit difference from each head", "Head", "Layer", height=n_layers * cell + 110)
    layout["margin"] = dict(l=64, r=24, t=48, b=56)
    layout["width"] = max(n_heads * cell + 170, 480)
    layout["xaxis"].update(dtick=1 if n_heads <= 16 else None, showgrid=False, showline=False, ticks="", constrain="domain")
    layout["yaxis"].update(
        dtick=1 if n_layers <= 16 else None, autorange="reversed", showgrid=False, zeroline=False, scaleanchor="x",
        constrain="domain",
    )
    fig = go.Figure(heatmap)
    fig.update_layout(**layout)
    return fig


def logit_diff_histogram(result: StudyData) -> go.Figure:
    """Distribution of per-prompt logit differences, with zero and the mean marked."""
    ld = np.asarray(result.logit_diff, dtype=float)
    nbins = int(np.clip(np.sqrt(ld.size) * 2, 10, 60))
    fig = go.Figure(
        go.Histogram(
            x=ld,
            nbinsx=nbins,
            marker=dict(color=ACCENT, line=dict(color="white", width=1)),
            opacity=0.85,
            hovertemplate="logit diff %{x}<br>%{y} prompts<extra></extra>",
        )
    )
    fig.update_layout(**_base_layout("Per-prompt logit difference", "Logit diff (correct − incorrect)", "Prompts", height=320))
    fig.update_layout(bargap=0.02)
    fig.add_vline(x=0.0, line=dict(color=NEGATIVE, width=1.5, dash="dash"))
    fig.add_vline(
        x=result.mean_logit_diff,
        line=dict(color="#1f2933", width=1.5),
        annotation_text=f"mean {result.mean_logit_diff:.3f}",
        annotation_position="top right",
        annotation_font=dict(size=11),
    )
    return fig


def decomposition_groups(result: StudyData) -> list[tuple[str, np.ndarray]]:
    """The complete decomposition summed by kind of part: ``(name, per-prompt values)``."""
    names, rows = result.decomposition_groups_per_prompt
    return list(zip(names, rows))


def decomposition_group_intervals(result: StudyData) -> tuple[np.ndarray, np.ndarray]:
    """95% bootstrap intervals of each group's mean (the study's resamples: see StudyData.intervals)."""
    return result.intervals["decomposition_groups"]


def decomposition_figure(result: StudyData) -> go.Figure:
    """Waterfall of the mean logit difference, part by part, ending at the sum of all parts."""
    groups = decomposition_groups(result)
    names = [n for n, _ in groups] + ["sum of parts"]
    means = [float(v.mean()) for _, v in groups]
    fig = go.Figure(
        go.Waterfall(
            x=names,
            y=means + [0.0],
            measure=["relative"] * len(means) + ["total"],
            increasing=dict(marker=dict(color="#4a7fd1")),
            decreasing=dict(marker=dict(color="#d1605a")),
            totals=dict(marker=dict(color="#1f2933")),
            connector=dict(line=dict(color="#c9ced6", width=1)),
            text=[f"{m:+.3f}" for m in means] + [f"{sum(means):.3f}"],
            textposition="outside",
            hovertemplate="%{x}: %{y:+.4f}<extra></extra>",
        )
    )
    fig.update_layout(**_base_layout("Complete decomposition of the mean logit difference", "Part", "Logit diff", height=360))
    fig.add_hline(y=result.mean_logit_diff, line=dict(color=MUTED, width=1, dash="dot"))
    return fig


def expert_attribution_figure(result: StudyData) -> go.Figure:
    """Mixture-of-experts models: layers × experts heatmap of each expert's mean share of the MLP's
    attribution (routing weight included; zero on prompts not routed to it), with how often the
    router chose it at the answer position."""
    values = result.experts.mean(-1)
    routed = (result.expert_routing > 0).mean(-1)
    weight = result.expert_routing.mean(-1)
    n_layers, n_experts = values.shape
    custom = [[[f"L{l}E{e}", float(routed[l, e]) * 100, float(weight[l, e])] for e in range(n_experts)] for l in range(n_layers)]
    bound = float(np.abs(values).max()) or 1.0
    heatmap = go.Heatmap(
        z=values, x=list(range(n_experts)), y=list(range(n_layers)), colorscale="RdBu", zmid=0.0, zmin=-bound,
        zmax=bound, customdata=custom, xgap=1, ygap=1,
        hovertemplate="<b>%{customdata[0]}</b>: %{z:+.3f}<br>routed to on %{customdata[1]:.0f}% of prompts, "
                      "mean routing weight %{customdata[2]:.2f}<extra></extra>",
        colorbar=dict(title=dict(text="Logit diff", side="right"), thickness=14, outlinewidth=0),
    )
    cell = int(np.clip(560 / max(n_experts, n_layers), 12, 60))
    layout = _base_layout("Logit difference from each expert", "Expert", "Layer", height=n_layers * cell + 110)
    layout["width"] = max(n_experts * cell + 170, 480)
    layout["xaxis"].update(dtick=1, showgrid=False, showline=False, ticks="", constrain="domain")
    layout["yaxis"].update(dtick=1 if n_layers <= 16 else None, autorange="reversed", showgrid=False, zeroline=False,
                           scaleanchor="x", constrain="domain")
    fig = go.Figure(heatmap)
    fig.update_layout(**layout)
    return fig


def make_figures(result: StudyData) -> dict[str, go.Figure]:
    """All figures of the report, by name, in report order (``expert_attribution`` only for
    mixture-of-experts models)."""
    figs = {
        "logit_lens": logit_lens_figure(result),
        "layer_attribution": layer_attribution_figure(result),
        "head_attribution": head_attribution_figure(result),
        "logit_diff_hist": logit_diff_histogram(result),
        "decomposition": decomposition_figure(result),
    }
    if result.experts is not None:
        figs["expert_attribution"] = expert_attribution_figure(result)
    return figs
