"""The report page: header, one section per question, figures and tables, all in one HTML string.

plotly.js and the circuitsvis bundle are inlined once, in ``<head>``; each figure and each
attention view then adds only its own data and one render call.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np

from logitscope.circuits import IOI_CLASS_ABBREV, IOI_HEAD_CLASSES, known_circuit
from logitscope.report.assets import circuitsvis_js, plotly_js
from logitscope.report.attention import AttentionWidget, attention_widgets, head_name
from logitscope.report.figures import decomposition_group_intervals, decomposition_groups, make_figures

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from logitscope.results import StudyResult

MAX_PROMPT_ROWS = 200
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
META_HEADERS = {"template": "Template", "order": "Order", "io": "IO", "s": "S"}
NORM_KINDS = {"layernorm": "LayerNorm (centred)", "rmsnorm": "RMSNorm (no centring)"}

CSS = """
:root { --ink:#1f2933; --muted:#5f6b7a; --faint:#8a94a6; --line:#e3e7ed; --bg:#f6f7f9; --card:#fff;
        --accent:#2f5fb3; --neg:#b83227; --pos:#1f5fa8; }
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--ink); font: 14px/1.5 Inter, "Segoe UI", "Helvetica Neue", Helvetica, Arial,
       "Liberation Sans", sans-serif; -webkit-font-smoothing: antialiased; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 28px 56px; }
h1 { font-size: 24px; font-weight: 650; margin: 0 0 2px; letter-spacing: -0.01em; }
h2 { font-size: 18px; font-weight: 620; margin: 0 0 4px; }
h3 { font-size: 14px; font-weight: 620; margin: 18px 0 6px; color: var(--ink); }
.subtitle { color: var(--muted); margin: 0 0 18px; }
header.card { padding: 22px 26px 18px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 20px 24px;
        margin: 0 0 18px; box-shadow: 0 1px 2px rgba(16,24,40,.04); }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 12px 28px; margin: 0; }
.facts div { min-width: 0; }
.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: var(--faint); margin: 0; }
.facts dd { margin: 1px 0 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.facts dd .big { font-size: 20px; font-weight: 650; }
.facts dd small { color: var(--muted); }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 16px 0 0; padding-top: 12px;
          border-top: 1px solid var(--line); font-size: 13px; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
.caption { color: var(--muted); margin: 0 0 12px; font-size: 13px; }
.caption span { display: block; }
.figure { margin: 6px 0 4px; }
.figure.center > div { margin: 0 auto; }
.row { display: flex; flex-wrap: wrap; gap: 18px 28px; align-items: flex-start; }
.row > div { flex: 1 1 320px; min-width: 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; background: #fafbfc; border-bottom: 1px solid #d5dae1;
     position: sticky; top: 0; }
td.num, th.num { text-align: right; white-space: nowrap; }
tbody tr:hover { background: #f3f6fb; }
tr.highlight td { background: #fff8e6; }
td.neg { color: var(--neg); }
code, .tok { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.tok { white-space: pre; background: #f1f3f6; border-radius: 4px; padding: 0 4px; }
.scroll { max-height: 560px; overflow: auto; border: 1px solid var(--line); border-radius: 8px; }
.scroll table th { box-shadow: 0 1px 0 #d5dae1; }
.note { color: var(--muted); font-size: 12.5px; margin: 8px 0 0; }
.pill { display: inline-block; font-size: 11px; padding: 0 7px; border-radius: 9px; background: #eef1f6;
        color: var(--ink); white-space: nowrap; }
.pill.nm { background: #dbe7fb; } .pill.nnm { background: #fbe0dd; } .pill.bnm { background: #e6eefc; }
details { margin-top: 12px; }
details summary { cursor: pointer; color: var(--accent); font-size: 13px; }
.prompt-text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; background: #f6f7f9;
               border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; overflow-wrap: anywhere; }
.cv-view { margin: 8px 0 14px; min-height: 40px; }
.attn-group { border-top: 1px solid var(--line); margin-top: 10px; padding-top: 2px; }
.row.attn > div { flex: 1 1 440px; }
.cv-view h3, .cv-view h4 { font-size: 13px; }
.narrow { max-width: 760px; margin: 8px 0 0; }
footer { color: var(--faint); font-size: 12px; text-align: center; margin-top: 24px; }
"""


# ---------------------------------------------------------------------------------------------- helpers
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float, digits: int = 3, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(lo: float, hi: float, digits: int = 3) -> str:
    return f"[{_num(lo, digits, True)}, {_num(hi, digits, True)}]"


def _tok(text: str) -> str:
    return f'<span class="tok">{_e(text)}</span>'


def _caption(what: str, how: str) -> str:
    """The two-line caption: what the figure shows, then how to read it."""
    return f'<p class="caption"><span>{what}</span><span>{how}</span></p>'


def _table(headers: list[tuple[str, bool]], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """A table from pre-escaped cells; ``headers`` are ``(label, numeric)``."""
    head = "".join(f'<th class="num">{h}</th>' if num else f"<th>{h}</th>" for h, num in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="num{" neg" if cell.startswith("−") or cell.startswith("-") else ""}">{cell}</td>' if num else f"<td>{cell}</td>"
            for cell, (_, num) in zip(row, headers)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(fig: go.Figure, name: str, center: bool = False) -> str:
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", config=PLOTLY_CONFIG)
    return f'<div class="figure{" center" if center else ""}" data-figure="{name}">{div}</div>'


def norm_kind(norm: str) -> str:
    """``LayerNorm (centred)`` or ``RMSNorm (no centring)`` (other names as given)."""
    return NORM_KINDS.get(norm.replace(" ", "").lower(), norm or "unknown")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section class="card" id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


# ---------------------------------------------------------------------------------------------- header
def _header(result: StudyResult) -> str:
    lo, hi = result.intervals["logit_diff"]
    direct = float(result.direct.mean())
    ld = result.mean_logit_diff
    err = float(np.abs(result.decomposition_error).max()) if result.n_prompts else float("nan")
    frac = 100 * float((result.logit_diff > 0).mean())
    facts = [
        ("Model", f"{_e(result.model)}<br><small>{_e(result.family)} · {result.n_layers} layers × {result.n_heads} heads</small>"),
        ("Device · dtype", f"{_e(result.device)} · {_e(result.dtype)}"),
        ("Prompts", f'<span class="big">{result.n_prompts:,}</span><br><small>BOS prepended: {"yes" if result.prepend_bos else "no"}</small>'),
        (
            "Mean logit difference",
            f'<span class="big">{_num(ld)}</span><br><small>95% CI {_ci(lo, hi)} · correct wins {frac:.1f}%</small>',
        ),
        (
            "DLA check",
            f"direct {_num(direct, 4)} vs logit diff {_num(ld, 4)}<br>"
            f"<small>gap {_num(ld - direct, 4, True)} = final norm bias term {_num(float(result.final_bias.mean()), 4, True)}</small>",
        ),
        ("Final norm", f"{_e(norm_kind(result.norm))}<br><small>frozen scale from the forward pass</small>"),
        ("Residual error", f"{err:.2e}<br><small>max |logit diff − sum of all parts|</small>"),
        ("Created · logitscope", f"{_e(result.created or '—')}<br><small>logitscope {_e(result.version or '—')} · seed {result.seed}</small>"),
    ]
    grid = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    toc = [
        ("logit-lens", "Logit lens"),
        ("layers", "Layer attribution"),
        ("heads", "Head attribution"),
        ("top-heads", "Top heads"),
        ("attention", "Attention"),
        ("prompts", "Per-prompt logit difference"),
        ("decomposition", "Complete decomposition"),
    ]
    links = "".join(f'<a href="#{a}">{t}</a>' for a, t in toc)
    return (
        '<header class="card">'
        f"<h1>Direct logit attribution · {_e(result.model)}</h1>"
        '<p class="subtitle">Which components write the logit difference, logit(correct) − logit(incorrect), '
        "at each prompt's answer position. Means over prompts with 95% bootstrap intervals.</p>"
        f'<dl class="facts">{grid}</dl><nav class="toc">{links}</nav></header>'
    )


# ---------------------------------------------------------------------------------------------- sections
def _lines(result: StudyResult, figs: dict[str, go.Figure]) -> str:
    lens = _section(
        "logit-lens",
        "Logit lens",
        _caption(
            "Logit difference read off the residual stream accumulated before each layer (<code>N_pre</code>), "
            "after its attention (<code>N_mid</code>) and at the end (<code>final_post</code>), all divided by the final norm's frozen scale.",
            "Read it left to right: the curve rises where the model starts to prefer the correct answer; error bars are 95% intervals over prompts.",
        )
        + _figure(figs["logit_lens"], "logit_lens"),
    )
    layers = _section(
        "layers",
        "Layer attribution",
        _caption(
            "Direct contribution of the embeddings and of each attention (<code>N_attn_out</code>) and MLP (<code>N_mlp_out</code>) "
            "layer to the logit difference; the points sum to the final logit difference.",
            "Positive points push towards the correct answer, negative ones towards the incorrect one; each point is the step between "
            "neighbouring points of the logit lens.",
        )
        + _figure(figs["layer_attribution"], "layer_attribution"),
    )
    return lens + layers


def _heads(result: StudyResult, figs: dict[str, go.Figure]) -> str:
    circuit = known_circuit(result)
    legend = ""
    if circuit:
        ha = result.head_attribution
        rows = []
        for cls, heads in IOI_HEAD_CLASSES.items():
            total = float(sum(ha[l, h] for l, h in heads))
            rows.append(
                [
                    f"<b>{IOI_CLASS_ABBREV[cls]}</b>",
                    _e(cls),
                    ", ".join(head_name(l, h) for l, h in heads),
                    _num(total, 3, True),
                ]
            )
        legend = (
            "<h3>Known circuit: the IOI paper's head classes in GPT-2 small</h3>"
            + _table([("Tag", False), ("Class", False), ("Heads (layer.head)", False), ("Sum of mean DLA", True)], rows)
            + '<p class="note">Wang et al. 2022, "Interpretability in the Wild" (arXiv 2211.00593); name movers split from backup '
            "name movers as in ARENA 1.4.1. Tags in the heatmap cells mark these heads.</p>"
        )
    how = "Blue heads push towards the correct answer, red heads towards the incorrect one; white is no direct effect. Hover a cell for the head (<code>L9H6</code>), its value and 95% interval."
    if circuit:
        how += " Tags mark the IOI paper's head classes."
    body = (
        _caption(
            "Mean direct logit attribution of every attention head (value biases excluded, as TransformerLens's <code>stack_head_results</code>), layers down, heads across.",
            how,
        )
        + _figure(figs["head_attribution"], "head_attribution", center=True)
        + legend
    )
    return _section("heads", "Head attribution", body)


def _top_heads(result: StudyResult) -> str:
    circuit = known_circuit(result)
    lo, hi = result.intervals["head_attribution"]
    ld = result.mean_logit_diff
    headers = [("#", True), ("Head", False), ("Mean DLA", True), ("95% CI", True), ("Share", True)]
    if circuit is not None:
        headers.append(("IOI class", False))

    def table(sign: int) -> str:
        rows = []
        for rank, (l, h, v) in enumerate(result.top_heads(sign=sign), start=1):
            row = [str(rank), f"<b>L{l}H{h}</b>", _num(v, 3, True), _ci(lo[l, h], hi[l, h]),
                   f"{100 * v / ld:+.1f}%" if ld else "—"]
            if circuit is not None:
                cls = circuit.get((l, h))
                row.append(f'<span class="pill {IOI_CLASS_ABBREV[cls].lower()}">{_e(cls)}</span>' if cls else '<span class="note">—</span>')
            rows.append(row)
        return _table(headers, rows)

    k = result.top_k
    body = (
        _caption(
            f"The {k} heads with the largest positive and the {k} with the most negative mean direct logit attribution.",
            "Share is the head's mean over the mean logit difference; a narrow 95% interval means the head's effect is stable across prompts.",
        )
        + f'<div class="row"><div><h3>Top {k} positive</h3>{table(1)}</div><div><h3>Top {k} negative</h3>{table(-1)}</div></div>'
    )
    return _section("top-heads", "Top heads", body)


def attention_widget_list(result: StudyResult) -> list[AttentionWidget]:
    """The report's circuitsvis views: AttentionHeads and AttentionPatterns of the top positive and
    the top negative heads, on the prompt ``result.attention`` holds."""
    if result.attention is None:
        return []
    out = []
    for key, sign in (("positive", 1), ("negative", -1)):
        heads = [(l, h) for l, h, _ in result.top_heads(sign=sign)]
        out += attention_widgets(result.attention, heads, key)
    return out


def _attention(result: StudyResult, widgets: list[AttentionWidget]) -> str:
    view = result.attention
    if view is None or not widgets:
        return _section("attention", "Attention of the top heads", '<p class="note">No attention patterns were recorded for this study.</p>')
    i = view.prompt_index
    prompt = result.prompts[i] if 0 <= i < result.n_prompts else None
    answer = (
        f" → correct {_tok(prompt.correct)}, incorrect {_tok(prompt.incorrect)}, logit diff {_num(float(result.logit_diff[i]))}"
        if prompt is not None
        else ""
    )
    parts = [
        _caption(
            "Attention patterns of the top positive and top negative heads on one prompt: rows are destination (query) tokens, columns are source (key) tokens.",
            "Direct logit attribution is read at the last token, so look at the bottom row: which earlier tokens does the head copy from? "
            "In the head grid hover a thumbnail to enlarge it (click to lock); in the token view hover a token to see where it attends.",
        ),
        f'<p class="prompt-text">Prompt #{i} · {len(view.str_tokens)} tokens{answer}<br>{"".join(_tok(t) for t in view.str_tokens)}</p>',
    ]
    by_key: dict[str, list[AttentionWidget]] = {}
    for w in widgets:
        by_key.setdefault(w.element_id.rsplit("-", 1)[-1], []).append(w)
    columns = []
    for key, sign in (("positive", 1), ("negative", -1)):
        heads = result.top_heads(sign=sign)
        names = ", ".join(f"{head_name(l, h)} ({v:+.2f})" for l, h, v in heads)
        order = ", ".join(f"Head {j} = {head_name(l, h)}" for j, (l, h, _) in enumerate(heads))
        group = [f'<div class="attn-group"><h3>Top {len(heads)} {key} heads: {names}</h3>']
        for w in by_key.get(key, []):
            if w.component == "AttentionHeads":
                label = "Head grid (circuitsvis <code>attention_heads</code>)"
            else:
                label = f"Patterns by token (circuitsvis <code>attention_patterns</code>; {order})"
            group.append(f'<p class="note">{label}</p>{w.html()}')
        group.append("</div>")
        columns.append("".join(group))
    parts.append(f'<div class="row attn">{"".join(columns)}</div>')
    return _section("attention", "Attention of the top heads", "".join(parts))


def _prompts(result: StudyResult, figs: dict[str, go.Figure]) -> str:
    n = result.n_prompts
    shown = min(n, MAX_PROMPT_ROWS)
    meta_keys = [k for k in ("template", "order", "io", "s") if any(k in p.meta for p in result.prompts[:shown])]
    headers = [("#", True), ("Prompt", False), ("Correct", False), ("Incorrect", False), ("Logit diff", True),
               ("P(correct)", True), ("P(incorrect)", True)] + [(META_HEADERS[k], False) for k in meta_keys]
    attn = result.attention.prompt_index if result.attention is not None else -1
    rows, classes = [], []
    for i in range(shown):
        p = result.prompts[i]
        rows.append(
            [str(i), _e(p.text), _tok(p.correct), _tok(p.incorrect), _num(float(result.logit_diff[i]), 3, True),
             _num(float(result.prob_correct[i])), _num(float(result.prob_incorrect[i]))]
            + [_e(p.meta.get(k, "")) for k in meta_keys]
        )
        classes.append("highlight" if i == attn else "")
    count = f"All {n:,} prompts." if shown == n else f"Showing the first {shown:,} of {n:,} prompts (every prompt is in results.json)."
    if 0 <= attn < shown:
        count += f" The highlighted row (#{attn}) is the prompt shown in the attention section."
    by_template = ""
    groups = result.by_template()
    if groups:
        trows = [
            [_e(g["template"]), _e(g["order"]), f'{g["n"]:,}', _num(g["logit_diff_mean"], 3, True),
             _ci(g["ci95_low"], g["ci95_high"]), f'{100 * g["frac_correct"]:.1f}%']
            for g in groups
        ]
        by_template = "<h3>By template</h3>" + '<div class="scroll">' + _table(
            [("Template", False), ("Order", False), ("Prompts", True), ("Mean logit diff", True), ("95% CI", True), ("Correct wins", True)], trows
        ) + "</div>"
    body = (
        _caption(
            "How the logit difference varies across prompts: its distribution, its mean per prompt template, and every prompt with its answers.",
            "Prompts left of the dashed zero line prefer the incorrect answer; a template whose interval sits far from the others behaves differently.",
        )
        + _figure(figs["logit_diff_hist"], "logit_diff_hist")
        + by_template
        + f"<h3>Prompts</h3><div class=\"scroll\">{_table(headers, rows, classes)}</div><p class=\"note\">{count}</p>"
    )
    return _section("prompts", "Per-prompt logit difference", body)


def _decomposition(result: StudyResult, figs: dict[str, go.Figure]) -> str:
    groups = decomposition_groups(result)
    glo, ghi = decomposition_group_intervals(result)
    ld = result.mean_logit_diff
    err = result.decomposition_error
    rows = [
        [_e(name), _num(float(v.mean()), 4, True), _ci(float(glo[i]), float(ghi[i]), 4), f"{100 * v.mean() / ld:+.1f}%" if ld else "—"]
        for i, (name, v) in enumerate(groups)
    ]
    total = float(sum(v.mean() for _, v in groups))
    rows.append(["<b>sum of parts</b>", f"<b>{_num(total, 4, True)}</b>", "", f"{100 * total / ld:+.1f}%" if ld else "—"])
    rows.append(["<b>logit difference</b>", f"<b>{_num(ld, 4, True)}</b>", _ci(*result.intervals["logit_diff"], 4), "100.0%" if ld else "—"])
    rows.append(["residual error (max |·| over prompts)", f"{float(np.abs(err).max()):.2e}", "", ""])
    summary = _table([("Part", False), ("Mean", True), ("95% CI", True), ("Share", True)], rows)

    labels = result.decomposition_labels
    means = result.decomposition_per_prompt.mean(-1)
    lo, hi = result.intervals["decomposition"]
    full = _table(
        [("Component", False), ("Mean", True), ("95% CI", True)],
        [[f"<code>{_e(lab)}</code>", _num(float(m), 4, True), _ci(float(a), float(b), 4)] for lab, m, a, b in zip(labels, means, lo, hi)],
    )
    body = (
        _caption(
            "Every part of the logit difference: embeddings, each head (as above), the attention output biases (with every head's value bias), "
            "MLP neurons, MLP output biases and the final norm's bias through the unembedding.",
            "The bars add up to the logit difference (dotted line); the residual error is what the parts miss, per prompt, and should be at "
            "floating-point level.",
        )
        + _figure(figs["decomposition"], "decomposition")
        + f'<div class="narrow">{summary}</div>'
        + f'<details><summary>All {len(labels):,} components (<code>decomposition_labels</code>)</summary><div class="scroll">{full}</div></details>'
    )
    return _section("decomposition", "Complete decomposition", body)


# ---------------------------------------------------------------------------------------------- page
def report_html(result: StudyResult) -> str:
    """The whole self-contained report as one HTML string (no network needed to render it)."""
    figs = make_figures(result)
    widgets = attention_widget_list(result)
    scripts = [f'<script type="text/javascript">{plotly_js()}</script>']
    if widgets:
        scripts.append(f'<script type="text/javascript">{circuitsvis_js()}</script>')
    body = "".join(
        [
            _header(result),
            _lines(result, figs),
            _heads(result, figs),
            _top_heads(result),
            _attention(result, widgets),
            _prompts(result, figs),
            _decomposition(result, figs),
        ]
    )
    footer = f"<footer>logitscope {_e(result.version or '')} · {_e(result.created or '')} · renders offline</footer>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>logitscope · {_e(result.model)}</title>"
        f"<style>{CSS}</style>\n" + "\n".join(scripts) + "\n</head>\n"
        f"<body><main>{body}{footer}</main></body></html>\n"
    )
