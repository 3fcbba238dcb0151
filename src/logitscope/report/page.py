"""The report page: a header, one section per question, figures and tables, in one HTML string.

plotly.js and the circuitsvis bundle are inlined once, in ``<head>``; each figure and each
attention view then adds only its own data and one render call.
"""

# Longer than ~400 lines on purpose: the page's HTML, section by section, is one template read top to bottom; the figures live in figures.py, patching.py, circuit.py; the finer tables in finer.py.

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np

from logitscope.inputs.circuits import IOI_CLASS_ABBREV, IOI_HEAD_CLASSES, known_circuit
from logitscope.labels import head_name
from logitscope.report.assets import circuitsvis_js, plotly_js
from logitscope.report.attention import AttentionWidget, attention_widgets
from logitscope.report.finer import neuron_section, source_section, token_lens_section
from logitscope.report.figures import decomposition_group_intervals, decomposition_groups, make_figures
from logitscope.report.style import CSS
from logitscope.results.study import StudyData

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from logitscope.results.patching import PatchingData

MAX_PROMPT_ROWS = 200
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
META_HEADERS = {"template": "Template", "order": "Order", "io": "IO", "s": "S"}
NORM_KINDS = {"layernorm": "LayerNorm (centred)", "rmsnorm": "RMSNorm (no centring)"}
SIGNS = (("positive", 1), ("negative", -1))
SIGN_WORDS = {1: "positive", -1: "negative"}


# ---------------------------------------------------------------------------------------------- helpers
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float, digits: int = 3, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(lo: float, hi: float, digits: int = 3) -> str:
    return f"[{_num(lo, digits, True)}, {_num(hi, digits, True)}]"


def _share(value: float, whole: float) -> str:
    return f"{100 * value / whole:+.1f}%" if whole else "—"


def _tok(text: str) -> str:
    return f'<span class="tok">{_e(text)}</span>'


def _caption(what: str, how: str) -> str:
    """The two-line caption: what the figure shows, then how to read it."""
    return f'<p class="caption"><span>{what}</span><span>{how}</span></p>'


def _table(headers: list[tuple[str, bool]], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """A table of pre-escaped cells; ``headers`` are ``(label, numeric)``; negative numbers in red."""
    head = "".join(f'<th class="num">{h}</th>' if num else f"<th>{h}</th>" for h, num in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for cell, (_, num) in zip(row, headers):
            if num:
                neg = " neg" if cell.startswith("-") else ""
                cells.append(f'<td class="num{neg}">{cell}</td>')
            else:
                cells.append(f"<td>{cell}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(fig: go.Figure, name: str, center: bool = False) -> str:
    """The figure's div and its ``Plotly.newPlot`` call (plotly.js itself is in ``<head>``)."""
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", config=PLOTLY_CONFIG)
    return f'<div class="figure{" center" if center else ""}" data-figure="{name}">{div}</div>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section class="card" id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def norm_kind(norm: str) -> str:
    """``LayerNorm (centred)`` or ``RMSNorm (no centring)`` (other names as given)."""
    return NORM_KINDS.get(norm.replace(" ", "").lower(), norm or "unknown")


# ---------------------------------------------------------------------------------------------- header
def _softcap_note(result: StudyData) -> str:
    """For soft-capped models (Gemma 2): which logits the difference is taken from."""
    if result.logit_diff_softcapped is None:
        return ""
    capped = float(result.logit_diff_softcapped.mean())
    return f"<br><small>linear logits, before the final soft-cap (capped: {_num(capped, 4)})</small>"


def _header(result: StudyData, extra_toc: list[tuple[str, str]] = ()) -> str:
    lo, hi = result.intervals["logit_diff"]
    ld = result.mean_logit_diff
    direct = float(result.direct.mean())
    err = float(np.abs(result.decomposition_error).max())
    wins = 100 * float((result.logit_diff > 0).mean())
    bos = "yes" if result.prepend_bos else "no"
    facts = [
        ("Model", f"{_e(result.model)}<br><small>{_e(result.family)} · {result.n_layers} layers × {result.n_heads} heads</small>"),
        ("Device · dtype", f"{_e(result.device)} · {_e(result.dtype)}"),
        ("Prompts", f'<span class="big">{result.n_prompts:,}</span><br><small>BOS prepended: {bos}</small>'),
        ("Mean logit difference", f'<span class="big">{_num(ld)}</span><br><small>95% CI {_ci(lo, hi)} · correct wins {wins:.1f}%</small>'
         + _softcap_note(result)),
        (
            "DLA check",
            f"direct {_num(direct, 4)} vs logit diff {_num(ld, 4)}<br><small>gap {_num(ld - direct, 4, True)} = "
            f"final norm bias term {_num(float(result.final_norm_bias.mean()), 4, True)}</small>",
        ),
        ("Final norm", f"{_e(norm_kind(result.norm))}<br><small>frozen scale from the forward pass</small>"),
        ("Residual error", f"{err:.2e}<br><small>max |logit diff − sum of all parts|</small>"),
        (
            "Created · logitscope",
            f"{_e(result.created or '—')}<br><small>logitscope {_e(result.version or '—')} · seed {result.seed}</small>",
        ),
    ]
    grid = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    toc = [
        ("logit-lens", "Logit lens"),
        *([("token-lens", "Token logit lens")] if result.lens_top_ids is not None else []),
        ("layers", "Layer attribution"),
        ("heads", "Head attribution"),
        *([("experts", "Expert attribution")] if result.experts is not None else []),
        ("top-heads", "Top heads"),
        *extra_toc,
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
def _lines(figs: dict[str, go.Figure], token_lens: str = "") -> str:
    lens = _caption(
        "Logit difference read off the residual stream accumulated before each layer (<code>N_pre</code>), after its "
        "attention (<code>N_mid</code>) and at the end (<code>final_post</code>), all divided by the final norm's frozen scale.",
        "Read it left to right: the curve rises where the model starts to prefer the correct answer; "
        "error bars are 95% intervals over prompts. The dashed line, where shown, applies the final norm afresh "
        "to each point (its own scale, as TransformerLens's <code>accumulated_resid(apply_ln=True)</code>).",
    )
    layers = _caption(
        "Direct contribution of the embeddings and of each attention (<code>N_attn_out</code>) and MLP "
        "(<code>N_mlp_out</code>) layer; the points sum to the final logit difference.",
        "Positive points push towards the correct answer, negative ones towards the incorrect one; "
        "each point is the step between neighbouring points of the logit lens.",
    )
    return _section("logit-lens", "Logit lens", lens + _figure(figs["logit_lens"], "logit_lens")) + token_lens + _section(
        "layers", "Layer attribution", layers + _figure(figs["layer_attribution"], "layer_attribution")
    )


def _circuit_legend(result: StudyData) -> str:
    """The IOI paper's head classes with their tags and summed attribution (GPT-2 small only)."""
    ha = result.head_attribution
    rows = [
        [
            f"<b>{IOI_CLASS_ABBREV[cls]}</b>",
            _e(cls),
            ", ".join(head_name(l, h) for l, h in heads),
            _num(float(sum(ha[l, h] for l, h in heads)), 3, True),
        ]
        for cls, heads in IOI_HEAD_CLASSES.items()
    ]
    headers = [("Tag", False), ("Class", False), ("Heads (layer.head)", False), ("Sum of mean DLA", True)]
    return (
        "<h3>Known circuit: the IOI paper's head classes in GPT-2 small</h3>"
        + _table(headers, rows)
        + '<p class="note">Wang et al. 2022, "Interpretability in the Wild" (arXiv 2211.00593); name movers split '
        "from backup name movers as in ARENA 1.4.1. Tags in the heatmap cells mark these heads.</p>"
    )


def _heads(result: StudyData, figs: dict[str, go.Figure]) -> str:
    circuit = known_circuit(result)
    how = (
        "Blue heads push towards the correct answer, red heads towards the incorrect one, white ones do neither; "
        "hover a cell for the head (<code>L9H6</code>), its value and 95% interval."
    )
    if circuit:
        how += " Tags mark the IOI paper's head classes."
    caption = _caption(
        "Mean direct logit attribution of every attention head, layers down and heads across (value biases excluded, "
        "as in TransformerLens's <code>stack_head_results</code>).",
        how,
    )
    legend = _circuit_legend(result) if circuit else ""
    return _section("heads", "Head attribution", caption + _figure(figs["head_attribution"], "head_attribution", True) + legend)


def _top_heads(result: StudyData) -> str:
    circuit = known_circuit(result)
    lo, hi = result.intervals["head_attribution"]
    ld = result.mean_logit_diff
    headers = [("#", True), ("Head", False), ("Mean DLA", True), ("95% CI", True), ("Share", True)]
    if circuit is not None:
        headers.append(("IOI class", False))

    def table(sign: int) -> str:
        rows = []
        for rank, (l, h, v) in enumerate(result.signed_top_heads(sign), start=1):
            row = [str(rank), f"<b>L{l}H{h}</b>", _num(v, 3, True), _ci(lo[l, h], hi[l, h]), _share(v, ld)]
            if circuit is not None:
                cls = circuit.get((l, h))
                tag = IOI_CLASS_ABBREV[cls].lower() if cls else ""
                row.append(f'<span class="pill {tag}">{_e(cls)}</span>' if cls else '<span class="note">—</span>')
            rows.append(row)
        heads = result.signed_top_heads(sign)
        note = ""
        if len(heads) < k:
            n = len(heads)
            note = (f'<p class="note">Only {n} head{"s" if n != 1 else ""} of {result.n_layers * result.n_heads} '
                    f'{"have" if n != 1 else "has"} a {SIGN_WORDS[sign]} mean attribution.</p>')
        return (_table(headers, rows) if rows else "") + note

    k = result.top_k
    caption = _caption(
        f"The {k} heads with the largest positive and the {k} with the most negative mean direct logit attribution.",
        "Share is the head's mean over the mean logit difference; a narrow 95% interval means the head's effect is "
        "stable across prompts.",
    )
    tables = "".join(f"<div><h3>Top {k} {key}</h3>{table(sign)}</div>" for key, sign in SIGNS)
    return _section("top-heads", "Top heads", caption + f'<div class="row">{tables}</div>')


def _viewed_heads(result: StudyData, sign: int) -> list[tuple[int, int, float]]:
    """The top heads of that sign whose patterns the study kept (all of them, by default)."""
    kept = set(result.attention.kept) if result.attention is not None else set()
    return [(l, h, v) for l, h, v in result.signed_top_heads(sign) if (l, h) in kept]


def attention_views(result: StudyData) -> dict[str, list[AttentionWidget]]:
    """The report's circuitsvis views, ``{"positive": [...], "negative": [...]}``: AttentionHeads and
    AttentionPatterns of the top heads of each sign on ``result.attention``'s prompt (empty without it)."""
    if result.attention is None:
        return {}
    return {key: attention_widgets(result.attention, [(l, h) for l, h, _ in _viewed_heads(result, sign)], key)
            for key, sign in SIGNS}


def _attention(result: StudyData, views: dict[str, list[AttentionWidget]]) -> str:
    title = "Attention of the top heads"
    view = result.attention
    if view is None or not any(views.values()):
        return _section("attention", title, '<p class="note">No attention patterns were recorded for this study.</p>')
    i = view.prompt_index
    answer = ""
    if 0 <= i < result.n_prompts:
        p = result.prompts[i]
        answer = f" → correct {_tok(p.correct)}, incorrect {_tok(p.incorrect)}, logit diff {_num(float(result.logit_diff[i]))}"
    caption = _caption(
        "Attention patterns of the top positive and top negative heads on one prompt: rows are destination (query) "
        "tokens, columns are source (key) tokens.",
        "Attribution is read at the last token, so look at the bottom row: which earlier tokens does the head copy "
        "from? Hover a thumbnail to enlarge it (click to lock); in the token view hover a token.",
    )
    tokens = "".join(_tok(t) for t in view.str_tokens)
    prompt = f'<p class="prompt-text">Prompt #{i} · {len(view.str_tokens)} tokens{answer}<br>{tokens}</p>'
    columns = []
    for key, sign in SIGNS:
        heads = _viewed_heads(result, sign)
        if not heads:
            columns.append(f'<div class="attn-group"><h3>No {key} head to show</h3></div>')
            continue
        names = ", ".join(f"{head_name(l, h)} ({v:+.2f})" for l, h, v in heads)
        order = ", ".join(f"Head {j} = {head_name(l, h)}" for j, (l, h, _) in enumerate(heads))
        group = [f'<div class="attn-group"><h3>Top {len(heads)} {key} heads: {names}</h3>']
        for w in views.get(key, []):
            if w.component == "AttentionHeads":
                label = "Head grid (circuitsvis <code>attention_heads</code>)"
            else:
                label = f"Patterns by token (circuitsvis <code>attention_patterns</code>; {order})"
            group.append(f'<p class="note">{label}</p>{w.html()}')
        columns.append("".join(group) + "</div>")
    return _section("attention", title, caption + prompt + f'<div class="row attn">{"".join(columns)}</div>')


def _by_template(result: StudyData) -> str:
    groups = result.by_template()
    if not groups:
        return ""
    rows = [
        [
            _e(g["template"]),
            _e(g["order"]),
            f'{g["n"]:,}',
            _num(g["logit_diff_mean"], 3, True),
            _ci(g["ci95_low"], g["ci95_high"]),
            f'{100 * g["frac_correct"]:.1f}%',
        ]
        for g in groups
    ]
    headers = [("Template", False), ("Order", False), ("Prompts", True), ("Mean logit diff", True), ("95% CI", True),
               ("Correct wins", True)]
    return f'<h3>By template</h3><div class="scroll">{_table(headers, rows)}</div>'


def _prompts(result: StudyData, figs: dict[str, go.Figure]) -> str:
    n = result.n_prompts
    shown = min(n, MAX_PROMPT_ROWS)
    meta_keys = [k for k in META_HEADERS if any(k in p.meta for p in result.prompts[:shown])]
    headers = [("#", True), ("Prompt", False), ("Correct", False), ("Incorrect", False), ("Logit diff", True),
               ("P(correct)", True), ("P(incorrect)", True)] + [(META_HEADERS[k], False) for k in meta_keys]
    highlight = result.attention.prompt_index if result.attention is not None else -1
    rows, classes = [], []
    for i, p in enumerate(result.prompts[:shown]):
        rows.append(
            [str(i), _e(p.text), _tok(p.correct), _tok(p.incorrect), _num(float(result.logit_diff[i]), 3, True),
             _num(float(result.prob_correct[i])), _num(float(result.prob_incorrect[i]))]
            + [_e(p.meta.get(k, "")) for k in meta_keys]
        )
        classes.append("highlight" if i == highlight else "")
    if shown == n:
        count = f"All {n:,} prompts."
    else:
        count = f"Showing the first {shown:,} of {n:,} prompts (every prompt is in results.json)."
    if 0 <= highlight < shown:
        count += f" The highlighted row (#{highlight}) is the prompt shown in the attention section."
    caption = _caption(
        "How the logit difference varies across prompts: its distribution, its mean per prompt template, and every "
        "prompt with its answers.",
        "Prompts left of the dashed zero line prefer the incorrect answer; a template whose interval sits apart from "
        "the others behaves differently.",
    )
    table = f'<h3>Prompts</h3><div class="scroll">{_table(headers, rows, classes)}</div><p class="note">{count}</p>'
    body = caption + _figure(figs["logit_diff_hist"], "logit_diff_hist") + _by_template(result) + table
    return _section("prompts", "Per-prompt logit difference", body)


def _decomposition(result: StudyData, figs: dict[str, go.Figure]) -> str:
    groups = decomposition_groups(result)
    glo, ghi = decomposition_group_intervals(result)
    ld = result.mean_logit_diff
    rows = [
        [_e(name), _num(float(v.mean()), 4, True), _ci(float(glo[i]), float(ghi[i]), 4), _share(float(v.mean()), ld)]
        for i, (name, v) in enumerate(groups)
    ]
    total = float(sum(v.mean() for _, v in groups))
    rows += [
        ["<b>sum of parts</b>", f"<b>{_num(total, 4, True)}</b>", "", _share(total, ld)],
        ["<b>logit difference</b>", f"<b>{_num(ld, 4, True)}</b>", _ci(*result.intervals["logit_diff"], 4), _share(ld, ld)],
        ["residual error (max |·| over prompts)", f"{float(np.abs(result.decomposition_error).max()):.2e}", "", ""],
    ]
    summary = _table([("Part", False), ("Mean", True), ("95% CI", True), ("Share", True)], rows)

    labels = result.decomposition_labels
    means = result.decomposition_per_prompt.mean(-1)
    lo, hi = result.intervals["decomposition"]
    every = [
        [f"<code>{_e(lab)}</code>", _num(float(m), 4, True), _ci(float(a), float(b), 4)]
        for lab, m, a, b in zip(labels, means, lo, hi)
    ]
    full = _table([("Component", False), ("Mean", True), ("95% CI", True)], every)
    caption = _caption(
        "Every part of the logit difference: embeddings, heads, attention output biases (with every head's value "
        "bias), MLP neurons, MLP output biases, and the final norm's bias through the unembedding.",
        "The bars add up to the logit difference (dotted line); the residual error is what the parts miss on any "
        "prompt and should be at floating-point level.",
    )
    details = (
        f"<details><summary>All {len(labels):,} components (<code>decomposition_labels</code>)</summary>"
        f'<div class="scroll">{full}</div></details>'
    )
    body = caption + _figure(figs["decomposition"], "decomposition") + f'<div class="narrow">{summary}</div>' + details
    return _section("decomposition", "Complete decomposition", body)


def _experts(result: StudyData, figs: dict[str, go.Figure]) -> str:
    """Mixture-of-experts models only: which experts write the answer."""
    if "expert_attribution" not in figs:
        return ""
    caption = _caption(
        "Mean direct logit attribution of every expert of each MoE layer, its routing weight included: the experts "
        "of a layer add up to its MLP's attribution; an expert the router did not choose at a prompt's answer "
        "position counts zero there.",
        "Blue experts push towards the correct answer, red ones towards the incorrect one; hover a cell for how "
        "often the router chose it and its mean routing weight.",
    )
    return _section("experts", "Expert attribution", caption + _figure(figs["expert_attribution"], "expert_attribution", True))


# ---------------------------------------------------------------------------------------------- page
def report_html(result: StudyData, patching: PatchingData | None = None) -> str:
    """The whole self-contained report as one HTML string (no network needed to render it); with
    ``patching``, also its causal section (activation patching and ablation)."""
    figs = make_figures(result)
    causal, toc = "", []
    finer = {}
    for make in (token_lens_section, source_section, neuron_section):
        made = make(result, _table, _caption)
        if made is not None:
            finer[made[0]] = _section(*made)
            if made[0] != "token-lens":
                toc.append((made[0], made[1]))
    if patching is not None:
        from logitscope.report.patching import patching_section

        anchor, title, body = patching_section(patching, _figure, _table, _caption)
        causal, toc = _section(anchor, title, body), [*toc, (anchor, "Patching")]
        if patching.paths is not None or patching.circuit is not None:
            from logitscope.report.circuit import circuit_section

            anchor, title, body = circuit_section(patching, _figure, _table, _caption)
            causal, toc = causal + _section(anchor, title, body), [*toc, (anchor, "Circuit")]
    views = attention_views(result)
    scripts = [f'<script type="text/javascript">{plotly_js()}</script>']
    if any(views.values()):
        scripts.append(f'<script type="text/javascript">{circuitsvis_js()}</script>')
    body = "".join(
        [
            _header(result, toc),
            _lines(figs, finer.get("token-lens", "")),
            _heads(result, figs),
            _experts(result, figs),
            _top_heads(result),
            finer.get("dla-by-source", ""),
            finer.get("neurons", ""),
            causal,
            _attention(result, views),
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
