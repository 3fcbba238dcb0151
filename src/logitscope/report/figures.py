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


# The report's figures are drawn at the card's width (``main`` 1,120 px less the paddings); a
# title is wrapped to it and sits below plotly's toolbar (the mode bar, ~30 px at the top right).
CARD_WIDTH = 1000
TITLE_TOP = 34
TITLE_LINE = 20


def wrap_title(title: str, width: int = CARD_WIDTH, font_px: int = 15) -> str:
    """``title`` broken into lines (``<br>``) of what fits ``width`` pixels at ``font_px``
    (about 0.55 em a character), at spaces: plotly does not wrap titles and cuts them off."""
    limit = max(20, int(width / (0.55 * font_px)))
    lines: list[str] = []
    for word in title.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= limit:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def base_layout(title: str, x_title: str, y_title: str, height: int = 350) -> dict:
    """Shared look: white background, light grid, compact margins; the title wrapped to the card
    and placed below the mode bar, the top margin grown to fit it; no fixed width (the figure
    fills its card: the page's config is responsive)."""
    text = wrap_title(title)
    top = TITLE_TOP + TITLE_LINE * (text.count("<br>") + 1) + 12
    return dict(
        template="plotly_white",
        title=dict(text=text, x=0, xanchor="left", xref="paper", y=1, yref="container", yanchor="top",
                   pad=dict(t=TITLE_TOP), font=dict(size=15)),
        font=dict(family=FONT, size=12, color="#1f2933"),
        height=height + top - 48,
        margin=dict(l=64, r=24, t=top, b=64),
        xaxis=dict(title=x_title, showline=True, linecolor="#c9ced6", ticks="outside", tickcolor="#c9ced6"),
        yaxis=dict(title=y_title, zeroline=True, zerolinecolor="#9aa3b2", zerolinewidth=1),
        hoverlabel=dict(font=dict(family=FONT)),
        showlegend=False,
    )


def every_label(axis: dict, labels: list[str], width: int = CARD_WIDTH) -> int:
    """Show every category of ``axis`` (plotly otherwise thins them, hiding e.g. the peak's name):
    ticks at each label, turned upright when they would not fit side by side, smaller past 40.
    Returns the bottom margin the labels need."""
    labels = [str(x) for x in labels]
    size = 12 if len(labels) <= 40 else 10
    longest = max((len(x) for x in labels), default=1)
    fits = len(labels) * (0.6 * size * longest + 8) <= width - 90
    angle = 0 if fits else -90
    axis.update(type="category", tickmode="array", tickvals=labels, ticktext=labels, tickangle=angle,
                tickfont=dict(size=size), automargin=True)
    return 64 if fits else int(0.6 * size * longest) + 56


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


def _every_x_label(layout: dict, labels: list[str]) -> None:
    """Every x label shown; the figure grows by the room upright labels take."""
    bottom = every_label(layout["xaxis"], labels)
    layout["height"] += bottom - layout["margin"]["b"]
    layout["margin"]["b"] = bottom


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
    layout = base_layout("Logit difference from the accumulated residual stream", "Residual stream", "Logit diff")
    _every_x_label(layout, result.logit_lens_labels)
    fig.update_layout(**layout)
    fig.update_layout(hovermode="x unified")
    return fig


def layer_attribution_figure(result: StudyData) -> go.Figure:
    """Direct contribution of the embeddings and of each attention and MLP layer."""
    trace = _line_with_ci(result.layer_labels, result.layer_attribution, result.intervals["layer_attribution"], name="layer")
    fig = go.Figure(trace)
    layout = base_layout("Logit difference from each layer", "Component", "Logit diff")
    _every_x_label(layout, result.layer_labels)
    fig.update_layout(**layout)
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
        colorbar=dict(title=dict(text="Logit diff", side="top"), thickness=14, outlinewidth=0),
        xgap=1,
        ygap=1,
    )
    if circuit:
        heatmap.update(text=tags, texttemplate="%{text}", textfont=dict(size=9))
    # Cells big enough that the plot is at least 240 px high (a colour bar on a 2-layer model is
    # otherwise a sliver), small enough that 12 layers or heads stay within the card.
    cell = int(np.clip(max(560 / max(n_heads, n_layers), 240 / n_layers), 12, 120))
    layout = base_layout("Logit difference from each head", "Head", "Layer", height=n_layers * cell + 110)
    layout["margin"]["b"] = 56
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
    """Distribution of per-prompt logit differences, with zero and the mean marked. The prompts are
    counted into bins here (at most 60), so the figure holds the bins, not one number per prompt:
    its size and the memory to build it do not grow with the number of prompts."""
    ld = np.asarray(result.logit_diff, dtype=float)
    finite = ld[np.isfinite(ld)]
    nbins = int(np.clip(np.sqrt(finite.size) * 2, 10, 60))
    counts, edges = np.histogram(finite, bins=nbins) if finite.size else (np.zeros(1, int), np.array([0.0, 1.0]))
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=counts,
            width=widths,
            customdata=np.stack([edges[:-1], edges[1:]], axis=-1),
            marker=dict(color=ACCENT, line=dict(color="white", width=1)),
            opacity=0.85,
            hovertemplate="logit diff %{customdata[0]:+.3f} to %{customdata[1]:+.3f}<br>%{y} prompts<extra></extra>",
        )
    )
    fig.update_layout(**base_layout("Per-prompt logit difference", "Logit diff (correct − incorrect)", "Prompts", height=320))
    fig.update_layout(bargap=0)
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
    fig.update_layout(**base_layout("Complete decomposition of the mean logit difference", "Part", "Logit diff", height=360))
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
        colorbar=dict(title=dict(text="Logit diff", side="top"), thickness=14, outlinewidth=0),
    )
    cell = int(np.clip(560 / max(n_experts, n_layers), 12, 60))
    layout = base_layout("Logit difference from each expert", "Expert", "Layer", height=n_layers * cell + 110)
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
