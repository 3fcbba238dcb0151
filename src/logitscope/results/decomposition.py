"""Attribution maths on per-prompt arrays (last axis = prompt): the logit lens, the layer stack,
the complete decomposition, and ranking heads.

Inputs are the study's per-prompt direct logit attributions, already divided by the final norm's
frozen scale: ``embed``, ``pos_embed`` (``None`` without learned positions), ``attn_out[layer]``,
``mlp_out[layer]``, ``head_results[layer, head]``, the biases, and ``direct`` (the final residual).
Every function is a reduction or a stacking of these; nothing here knows about models.
"""

from __future__ import annotations

import numpy as np


def _embeddings(embed: np.ndarray, pos_embed: np.ndarray | None) -> list[np.ndarray]:
    return [embed] + ([pos_embed] if pos_embed is not None else [])


def logit_lens(embed: np.ndarray, pos_embed: np.ndarray | None, attn_out: np.ndarray, mlp_out: np.ndarray,
               direct: np.ndarray, *, parallel_attn_mlp: bool) -> np.ndarray:
    """``accumulated_resid(incl_mid=True)`` projected with the final norm's frozen scale:
    ``[n_points, n_prompts]`` in :func:`logitscope.labels.logit_lens_labels` order. Each point is
    the sum of what came before it; ``final_post`` is the real final residual (``direct``)."""
    resid = sum(_embeddings(embed, pos_embed))
    rows = []
    for layer in range(attn_out.shape[0]):
        rows.append(resid)
        if parallel_attn_mlp:
            resid = resid + attn_out[layer] + mlp_out[layer]
        else:
            resid = resid + attn_out[layer]
            rows.append(resid)
            resid = resid + mlp_out[layer]
    rows.append(direct)
    return np.stack(rows)


def layer_stack(embed: np.ndarray, pos_embed: np.ndarray | None, attn_out: np.ndarray,
                mlp_out: np.ndarray) -> np.ndarray:
    """``decompose_resid``: ``[n_components, n_prompts]`` in :func:`logitscope.labels.layer_labels` order."""
    rows = _embeddings(embed, pos_embed)
    for layer in range(attn_out.shape[0]):
        rows += [attn_out[layer], mlp_out[layer]]
    return np.stack(rows)


def decomposition(embed: np.ndarray, pos_embed: np.ndarray | None, head_results: np.ndarray,
                  attn_bias: np.ndarray, mlp_out: np.ndarray, mlp_bias: np.ndarray,
                  final_norm_bias: np.ndarray) -> np.ndarray:
    """Every part of the logit difference, ``[n_parts, n_prompts]`` in
    :func:`logitscope.labels.decomposition_labels` order: embeddings, each head, each layer's
    attention bias (with every head's value bias), MLP neurons (``mlp_out`` less its bias), MLP
    biases, the final norm's bias. The rows add up to the logit difference per prompt."""
    n_layers, n_heads = head_results.shape[:2]
    rows = [e[None] for e in _embeddings(embed, pos_embed)]
    rows += [head_results.reshape(n_layers * n_heads, -1), attn_bias, mlp_out - mlp_bias, mlp_bias,
             final_norm_bias[None]]
    return np.concatenate(rows)


def decomposition_groups(embed: np.ndarray, pos_embed: np.ndarray | None, head_results: np.ndarray,
                         attn_bias: np.ndarray, mlp_out: np.ndarray, mlp_bias: np.ndarray,
                         final_norm_bias: np.ndarray) -> np.ndarray:
    """The complete decomposition summed by kind of part, ``[n_groups, n_prompts]`` in
    :func:`logitscope.labels.decomposition_group_labels` order."""
    rows = _embeddings(embed, pos_embed)
    rows += [head_results.sum((0, 1)), attn_bias.sum(0), (mlp_out - mlp_bias).sum(0), mlp_bias.sum(0), final_norm_bias]
    return np.stack([np.asarray(r, dtype=np.float64) for r in rows])


def rank_heads(head_attribution: np.ndarray, k: int, sign: int) -> list[tuple[int, int, float]]:
    """TransformerLens's ``topk_of_Nd_tensor(sign * head_attribution, k)``: the ``k`` heads with the
    largest (``sign=1``) or most negative (``sign=-1``) value, as ``(layer, head, value)``. Ties keep
    layer-major order. When fewer than ``k`` heads have that sign the list continues with the
    others, as ``topk`` does; :func:`count_signed` says how many do."""
    n_heads = head_attribution.shape[1]
    flat = head_attribution.reshape(-1)
    order = np.argsort(-flat * sign, kind="stable")[:k]
    return [(int(i) // n_heads, int(i) % n_heads, float(flat[i])) for i in order]


def count_signed(head_attribution: np.ndarray, sign: int) -> int:
    """How many heads have a mean of that sign (strictly: zero is neither)."""
    return int((np.asarray(head_attribution) * sign > 0).sum())


def signed_top_heads(head_attribution: np.ndarray, k: int, sign: int) -> list[tuple[int, int, float]]:
    """:func:`rank_heads`, keeping only the heads that have that sign: what the report lists and
    shows under "top positive" and "top negative" (at most ``k`` each)."""
    return [(l, h, v) for l, h, v in rank_heads(head_attribution, k, sign) if v * sign > 0]
