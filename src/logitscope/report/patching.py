"""The report's causal section: activation-patching grids and ablations, as plotly heatmaps with
TransformerLens's labels, each cell's interval on hover, and the single-head ablation grid beside
the direct-logit-attribution heatmap (direct effect and total effect side by side)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from logitscope.report.figures import FONT, base_layout, every_label

if TYPE_CHECKING:
    from logitscope.results.patching import PatchingData

TITLES = {
    "resid_pre": "Residual stream before each layer (resid_pre), by position",
    "resid_mid": "Residual stream between attention and MLP (resid_mid), by position",
    "attn_out": "Attention layer output (attn_out), by position",
    "mlp_out": "MLP output (mlp_out), by position",
    "attn_head_out_all_pos": "Each head's output (z), all positions",
    "attn_head_q_all_pos": "Each head's queries (q), all positions",
    "attn_head_k_all_pos": "Each key/value head's keys (k), all positions",
    "attn_head_v_all_pos": "Each key/value head's values (v), all positions",
    "attn_head_pattern_all_pos": "Each head's attention pattern, all positions",
    "attn_head_out_by_pos": "Each head's output (z) at each position: one layer × head panel per position",
}


MIN_PLOT_HEIGHT = 240  # px of plot area at the least, so a colour bar is never squashed (2-layer models)


def heatmap(z: np.ndarray, x: list, y: list, custom: list, title: str, x_title: str, y_title: str,
             colorbar: str, bound: float | None = None, cell: int | None = None) -> go.Figure:
    """A diverging heatmap at the card's width (no fixed width), every x and y label shown, rows
    ``cell`` px high (the plot at least :data:`MIN_PLOT_HEIGHT`)."""
    if bound is None:
        bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    bound = bound or 1.0
    n_y, n_x = z.shape
    cell = cell or int(np.clip(560 / max(n_x, n_y), 14, 48))
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=y, colorscale="RdBu", zmid=0.0, zmin=-bound, zmax=bound, customdata=custom,
        hovertemplate="%{customdata}<extra></extra>", xgap=1, ygap=1,
        colorbar=dict(title=dict(text=colorbar, side="top"), thickness=14, outlinewidth=0),
    ))
    layout = base_layout(title, x_title, y_title)
    bottom = every_label(layout["xaxis"], x)
    every_label(layout["yaxis"], y)
    layout["yaxis"].update(tickangle=0)
    layout["margin"]["b"] = bottom
    layout["height"] = min(1600, max(MIN_PLOT_HEIGHT, n_y * cell)) + layout["margin"]["t"] + bottom
    layout["font"] = dict(family=FONT, size=12, color="#1f2933")
    layout["xaxis"].update(showgrid=False, showline=False, ticks="")
    layout["yaxis"].update(autorange="reversed", showgrid=False, zeroline=False)
    fig.update_layout(**layout)
    return fig


def heads_by_position_figure(result: PatchingData, name: str) -> go.Figure:
    """A ``[layer, position, head]`` grid as one layer × head heatmap per position, side by side
    (wrapping after five), one shared colour scale of the normalised metric: a long strip of
    layers × heads by positions hides the layer structure and most of its labels."""
    from plotly.subplots import make_subplots

    values, norm = result.mean(name), result.normalised(name)
    lo, hi = result.grid_interval(name)
    nlo, nhi = result.grid_interval(name, "normalised_ci95")
    L, P, H = values.shape
    positions = _pos_ticks(result, result.positions.labels)
    cols = min(P, 5)
    rows = -(-P // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"@ {p}" for p in positions], shared_yaxes=True,
                        horizontal_spacing=0.04 if cols > 1 else 0.0, vertical_spacing=0.08 if rows > 1 else 0.0)
    layers, heads = [f"L{l}" for l in range(L)], [str(h) for h in range(H)]
    for k in range(P):
        custom = [[_hover(f"L{l}H{h} @ {positions[k]}", values[l, k, h], lo[l, k, h], hi[l, k, h], norm[l, k, h],
                          nlo[l, k, h], nhi[l, k, h], result.metric_label) for h in range(H)] for l in range(L)]
        fig.add_trace(go.Heatmap(z=norm[:, k, :], x=heads, y=layers, customdata=custom, coloraxis="coloraxis",
                                 hovertemplate="%{customdata}<extra></extra>", xgap=1, ygap=1),
                      row=k // cols + 1, col=k % cols + 1)
    cell = int(np.clip(560 / L, 14, 40))
    layout = base_layout(_title(name), "", "")
    panel = max(MIN_PLOT_HEIGHT, L * cell)
    layout["height"] = rows * panel + (rows - 1) * 60 + layout["margin"]["t"] + 40 + 64
    layout["margin"]["t"] += 24  # the panels' own titles
    layout.pop("xaxis"), layout.pop("yaxis")
    layout["coloraxis"] = dict(colorscale="RdBu", cmid=0.0, cmin=-1.0, cmax=1.0,
                               colorbar=dict(title=dict(text=_colorbar(result), side="top"), thickness=14, outlinewidth=0))
    fig.update_layout(**layout)
    fig.update_xaxes(type="category", tickmode="array", tickvals=heads, ticktext=heads, showgrid=False, ticks="",
                     title_text="Head")
    fig.update_yaxes(type="category", tickmode="array", tickvals=layers, ticktext=layers, autorange="reversed",
                     showgrid=False, zeroline=False, tickfont=dict(size=12 if L <= 40 else 10))
    fig.update_yaxes(title_text="Layer", col=1)
    return fig


def _colorbar(result: PatchingData) -> str:
    """The colour bar's title: the normalised metric, named where it is not the logit difference."""
    return "Normalised" if result.metric_key is None else f"Normalised {result.metric_label}"


def _hover(label: str, value: float, lo: float, hi: float, norm: float, nlo: float, nhi: float,
           metric: str = "logit diff") -> str:
    return (f"<b>{html.escape(label)}</b><br>patched {html.escape(metric)} {value:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            f"<br>normalised {norm:+.3f} [{nlo:+.3f}, {nhi:+.3f}]")


def grid_figure(result: PatchingData, name: str) -> go.Figure:
    """One grid as a heatmap of TransformerLens's normalised metric (hover: the patched logit
    difference and both intervals)."""
    axes = result.grid_axes[name]
    values, norm = result.mean(name), result.normalised(name)
    lo, hi = result.grid_interval(name)
    nlo, nhi = result.grid_interval(name, "normalised_ci95")
    L = values.shape[0]
    if axes == ("layer", "position", "head"):  # one layer x head heatmap per position
        return heads_by_position_figure(result, name)
    if axes[1] == "position":
        positions = result.positions.labels
        custom = [[_hover(f"L{l} {name} @ {positions[k]}", values[l, k], lo[l, k], hi[l, k], norm[l, k], nlo[l, k],
                          nhi[l, k], result.metric_label) for k in range(len(positions))] for l in range(L)]
        return heatmap(norm, _pos_ticks(result, positions), [f"L{l}" for l in range(L)], custom, _title(name),
                        "Position", "Layer", _colorbar(result), bound=1.0)
    heads = values.shape[1]
    letter = "KV" if axes[1] == "kv_head" else "H"
    custom = [[_hover(f"L{l}{letter}{h}", values[l, h], lo[l, h], hi[l, h], norm[l, h], nlo[l, h], nhi[l, h],
                      result.metric_label) for h in range(heads)] for l in range(L)]
    return heatmap(norm, [str(h) for h in range(heads)], [f"L{l}" for l in range(L)], custom, _title(name),
                    "KV head" if letter == "KV" else "Head", "Layer", _colorbar(result), bound=1.0)


def _title(name: str) -> str:
    from logitscope.results.names import exact_name

    base = exact_name(name)
    return TITLES[name] if base is None else f"{TITLES[base]}: attribution patching (first-order estimate)"


def _pos_ticks(result: PatchingData, labels: list[str]) -> list[str]:
    if result.positions is not None and result.positions.mode == "index" and result.position_tokens:
        return [f"{i} {t!r}" for i, t in zip(labels, result.position_tokens)]
    return list(labels)


def ablation_figure(result: PatchingData) -> go.Figure:
    """Change in the mean logit difference when each head alone is ablated (total effect)."""
    after = result.ablated_heads.mean(-1)
    iv = result.intervals["ablated_heads"]
    lo, hi = iv["ci95_low"].reshape(after.shape), iv["ci95_high"].reshape(after.shape)
    before = float(result.clean_logit_diff.mean())
    change = after - before
    L, H = after.shape
    m = html.escape(result.metric_label)
    custom = [[f"<b>L{l}H{h}</b><br>{m} {before:+.3f} → {after[l, h]:+.3f} [{lo[l, h]:+.3f}, {hi[l, h]:+.3f}]"
               f"<br>change {change[l, h]:+.3f}" for h in range(H)] for l in range(L)]
    title = f"Total effect: change in {result.metric_label} when each head is {result.ablation_kind}-ablated"
    return heatmap(change, [str(h) for h in range(H)], [f"L{l}" for l in range(L)], custom, title, "Head", "Layer",
                    "Change" if result.metric_key is None else f"Change in {result.metric_label}")


def patching_figures(result: PatchingData) -> dict[str, go.Figure]:
    figs = {f"patch_{name}": grid_figure(result, name) for name in result.grids}
    if result.ablated_heads is not None:
        figs["ablation_heads"] = ablation_figure(result)
    if result.agreement:
        from logitscope.report.attribution import attribution_figures

        figs.update(attribution_figures(result))
    return figs


_CAPPED = (", of the model's soft-capped logits, as TransformerLens's (results.json: logit_diff_softcapped; the study "
           "above shows the linear logits' difference)")


def patching_section(result: PatchingData, figure_html, table_html, caption_html) -> tuple[str, str, str]:
    """``(anchor, title, body)`` of the report's causal section, drawn with the page's own helpers."""
    iv = result.intervals
    c, x = float(result.clean_logit_diff.mean()), float(result.corrupted_logit_diff.mean())
    direction = ("clean activations patched into the corrupted run (denoising)" if result.direction == "denoise"
                 else "corrupted activations patched into the clean run (noising)")
    metric = ("the clean answers' logit difference at each prompt's last token"
              + (_CAPPED if result.metric == "logit_diff_softcapped" else "") if result.metric_key is None
              else f"{html.escape(result.metric_description or result.metric_label)} (results.json: {result.metric})")
    parts = [caption_html(
        f"Activation patching, {direction}, on {result.n_prompts:,} prompt pairs; the metric is {metric}. Cells show "
        "TransformerLens's normalised metric, "
        "(patched − corrupted) / (clean − corrupted): 1 where the patch restores the clean run, 0 where it changes nothing.",
        f"Hover a cell for the patched {'logit difference' if result.metric_key is None else html.escape(result.metric_label)} "
        "and its 95% interval (the study's bootstrap resamples).",
    )]
    rows = [["clean prompts", f"{c:+.4f}", _ci(iv["clean"])], ["corrupted prompts", f"{x:+.4f}", _ci(iv["corrupted"])]]
    parts.append(table_html([("Run", False), (f"Mean {html.escape(result.metric_label)}", True), ("95% CI", True)], rows))
    parts.append(f'<p class="note">BOS prepended to every prompt and counterpart: '
                 f'{"yes" if result.study.prepend_bos else "no"}.</p>')
    figs = patching_figures(result)
    if result.method != "exact":
        from logitscope.report.attribution import EXPLAIN, agreement_html

        parts.append(f'<p class="note">{html.escape(EXPLAIN)}</p>')
    for name in result.grids:
        parts.append(grid_html(result, name, figs, figure_html))
        exact = name.removesuffix("_attribution")
        if exact != name and exact in result.agreement:  # the estimate, after its exact grid, and how they agree
            parts.append(agreement_html(result, exact, figure_html, table_html, figs))
    if result.ablation_kind is not None:
        parts.append(f"<h3>Ablation ({html.escape(result.ablation_kind)})</h3>")
        if result.ablated:
            before = float(result.clean_logit_diff.mean())
            ab_rows = []
            for name, values in result.ablated.items():
                comps = ", ".join(result.ablation_sets[name])
                ab_rows.append([html.escape(comps), f"{before:+.4f}", f"{values.mean():+.4f}", _ci(iv[f"ablated:{name}"]),
                                f"{values.mean() - before:+.4f}"])
            parts.append(table_html([("Ablated", False), ("Before", True), ("After", True), ("95% CI", True),
                                     ("Change", True)], ab_rows))
        if "ablation_heads" in figs:
            parts.append('<p class="note">Direct effect (the head attribution above) beside total effect (the change '
                         'when the head alone is ablated): a head with a large direct effect and a small total effect '
                         'is compensated for by others (backup heads).</p>')
            parts.append(figure_html(figs["ablation_heads"], "ablation_heads"))
    for note in result.notes:
        parts.append(f'<p class="note">Note: {html.escape(note)}</p>')
    title = "Causal checks: activation patching and ablation"
    if result.method != "exact":
        title = "Causal checks: activation patching, attribution patching and ablation"
    return "patching", title, "".join(parts)


def undefined_note(what: str) -> str:
    """What the report shows instead of a figure whose every cell is undefined (NaN)."""
    return (f'<p class="note undefined">{html.escape(what)}: not drawn. Every normalised value is undefined: the '
            "clean and corrupted runs give the same logit difference (clean − corrupted = 0; a pair whose corrupted "
            "prompt is the clean one?), so (patched − corrupted) / (clean − corrupted) has no value. The patched "
            "logit differences are in results.json.</p>")


def grid_html(result: PatchingData, name: str, figs: dict[str, go.Figure], figure_html) -> str:
    """One grid's figure, or, where every normalised cell is NaN, a sentence saying why instead of
    an empty heatmap."""
    if not np.isfinite(result.normalised(name)).any():
        return undefined_note(_title(name))
    return figure_html(figs[f"patch_{name}"], f"patch_{name}")


def _ci(entry: dict[str, Any]) -> str:
    return f"[{float(entry['ci95_low'][0]):+.4f}, {float(entry['ci95_high'][0]):+.4f}]"
