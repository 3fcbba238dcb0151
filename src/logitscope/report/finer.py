"""The report's finer views, each a table: the token logit lens, DLA by source position, DLA by
neuron. Each returns ``(anchor, title, body)`` or ``None`` when the study did not record it; the
page's own helpers (``table``, ``caption``) are passed in, as for the patching section."""

from __future__ import annotations

import html
from typing import Callable

import numpy as np

from logitscope.results.study import StudyData

Section = tuple[str, str, str]
TOP_NEURONS = 10


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _tok(text: str) -> str:
    """A token as a chip; whitespace made visible (a space-only or newline token would be a blank chip)."""
    shown = text.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")
    if not shown.strip():
        shown = "␣" * len(shown) if shown else "∅"
    return f'<span class="tok" title="{_e(repr(text))}">{_e(shown)}</span>'


def _signed(x: float, digits: int = 3) -> str:
    """``x`` with its sign; one that rounds to zero is plain ``0.000``: a "-0.000" would be shown red,
    as a negative number, by the page's table."""
    text = f"{x:+.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def _ci(lo: float, hi: float) -> str:
    return f"[{_signed(lo)}, {_signed(hi)}]"


def token_lens_section(result: StudyData, table: Callable, caption: Callable) -> Section | None:
    """Per lens point, the top tokens of the probabilities averaged over prompts (and, folded,
    those of the prompt shown in the attention section)."""
    if result.lens_top_ids is None:
        return None
    tok, k = result.lens_tokens, result.lens_top_ids.shape[1]
    headers = [("Point", False)] + [(f"#{i + 1}", False) for i in range(k)]

    def rows(ids: np.ndarray, probs: np.ndarray) -> list[list[str]]:
        return [[f"<code>{_e(label)}</code>"] + [f"{_tok(tok[int(i)])} {p:.2f}" for i, p in zip(ids[n], probs[n])]
                for n, label in enumerate(result.token_lens_labels)]

    text = caption(
        f"The {k} tokens the residual stream predicts at the answer position before each layer (<code>N_pre</code>) "
        "and at the end (<code>final_post</code>), with their probability averaged over prompts: the final norm is "
        "applied afresh to each point (its own scale, TransformerLens's <code>accumulated_resid(apply_ln=True)</code>), "
        "then the unembedding and any soft-cap.",
        "Read it top to bottom: the row where the correct answer first leads is where the model has settled on it; "
        "the last row is the model's own prediction. The logit-lens curve above is the logit difference of the same points.",
    )
    body = text + f'<div class="scroll">{table(headers, rows(result.lens_mean_ids, result.lens_mean_probs))}</div>'
    i = 0 if result.attention is None else result.attention.prompt_index
    body += (f"<details><summary>Prompt #{i} alone</summary><p class=\"note\">{_e(result.prompts[i].text)}</p>"
             f'<div class="scroll">{table(headers, rows(result.lens_top_ids[..., i], result.lens_top_probs[..., i]))}</div>'
             "</details>")
    return "token-lens", "Token logit lens", body


def source_section(result: StudyData, table: Callable, caption: Callable) -> Section | None:
    """Each named head's attribution by source position (named rows, with intervals), and the
    prompt of the attention section position by position."""
    if result.source_by_role is None:
        return None
    lo, hi = result.intervals["dla_by_source"]
    mean = result.source_by_role.mean(-1)
    bias = result.source_value_bias.mean(-1)
    headers = [("Head", False), ("Position", False), ("Mean DLA", True), ("95% CI", True)]
    rows = []
    for j, name in enumerate(result.source_head_labels):
        l, h = result.source_heads[j]
        for r, role in enumerate(result.source_roles):
            rows.append([f"<b>{name}</b>" if r == 0 else "", _e(role), _signed(mean[j, r]), _ci(lo[j, r], hi[j, r])])
        rows.append(["", "<i>head total</i>", _signed(result.head_results[l, h].mean()), ""])
        rows.append(["", "<i>value bias (in attn_bias)</i>", _signed(bias[j]), ""])
    text = caption(
        "Each head's direct logit attribution split over the source positions it attends to from the answer position: "
        "pattern × (value − value bias), through the head's output weights, projected as the head is. The positions "
        "add up to the head's attribution; its value bias, the same whatever it attends to, is listed apart.",
        "A head that moves a name shows its attribution at that name's position (IO, S1, S2 for IOI prompts; END, "
        "END-1, ... counted from each prompt's last token otherwise).",
    )
    body = text + f'<div class="narrow">{table(headers, rows)}</div>'
    view = result.attention
    if view is not None:
        i, T = view.prompt_index, int(result.n_tokens[view.prompt_index])
        cells = [("Head", False)] + [(_tok(t), True) for t in view.str_tokens[:T]]
        per = [[f"<b>{name}</b>"] + [_signed(x) for x in result.dla_by_source[j, :T, i]]
               for j, name in enumerate(result.source_head_labels)]
        body += (f"<details><summary>Prompt #{i}, position by position</summary>"
                 f'<div class="scroll">{table(cells, per)}</div></details>')
    return "dla-by-source", "DLA by source position", body


def neuron_section(result: StudyData, table: Callable, caption: Callable) -> Section | None:
    """The top neurons of the chosen MLP layer by |mean| attribution, with intervals."""
    if result.neurons is None:
        return None
    layer = result.neuron_layer
    lo, hi = result.intervals["neuron_attribution"]
    whole = float(result.mlp_out[layer].mean())
    headers = [("#", True), ("Neuron", False), ("Mean DLA", True), ("95% CI", True), ("Share of MLP", True)]
    rows = [[str(r), f"<b>L{layer}N{i}</b>", _signed(v), _ci(lo[i], hi[i]), f"{_signed(100 * v / whole, 1)}%" if whole else "—"]
            for r, (i, v) in enumerate(result.top_neurons(TOP_NEURONS), start=1)]
    n = result.neurons.shape[0]
    text = caption(
        f"The {min(TOP_NEURONS, n)} of layer {layer}'s {n:,} MLP neurons with the largest mean |direct logit "
        f"attribution|: each neuron's activation (TransformerLens's <code>hook_post</code>) times its output weights, "
        f"projected as the MLP is. All neurons plus the MLP's bias add up to <code>{layer}_mlp_out</code> "
        f"(mean {whole:+.3f}; bias {float(result.mlp_bias[layer].mean()):+.3f}).",
        "Share is the neuron's mean over the layer's; a few neurons with most of it are candidates for a closer look.",
    )
    return "neurons", f"DLA by neuron (layer {layer})", text + f'<div class="narrow">{table(headers, rows)}</div>'
