"""The seed notebook's study written against TransformerLens's ``ActivationCache`` API.

Shared by ``tl_used_well.py`` (TransformerLens 3.9, ``HookedTransformer``) and ``tl_bridge.py``
(TransformerLens 4.3, ``TransformerBridge``): both caches offer the same methods, so the same
lines run on either. Only TransformerLens and torch are imported; each contender runs in the
environment that has its version.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Study = dict[str, Any]


def needed_hooks(n_layers: int) -> list[str]:
    """Every hook the study's cache methods read, and nothing else (legacy names)."""
    names = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", f"blocks.{n_layers - 1}.hook_resid_post"}
    for layer in range(n_layers):
        names |= {
            f"blocks.{layer}.hook_resid_pre",  # accumulated_resid
            f"blocks.{layer}.hook_resid_mid",  # accumulated_resid(incl_mid=True)
            f"blocks.{layer}.hook_attn_out",  # decompose_resid
            f"blocks.{layer}.hook_mlp_out",  # decompose_resid
            f"blocks.{layer}.attn.hook_z",  # stack_head_results (via compute_head_results)
        }
    return sorted(names)


class Sums:
    """Per-batch sums of the study's tensors (divided by N at the end) and their labels."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.labels: dict[str, list[str]] = {}

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = value if key not in self.sums else self.sums[key] + value

    def means(self, n: int) -> dict[str, torch.Tensor]:
        return {k: (v / n).cpu() for k, v in self.sums.items()}


def seed_batch(model: Any, sums: Sums, x: torch.Tensor, ans: torch.Tensor, cache_kwargs: dict[str, Any]) -> None:
    """One batch of the seed's study, exactly as the seed writes it, added to ``sums``: the logit
    difference from the logits; the DLA check (final residual through ``apply_ln_to_stack``); the
    logit lens (``accumulated_resid(incl_mid=True)``); the per-layer attribution
    (``decompose_resid``); the per-head attribution (``stack_head_results``)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    answer_dirs = model.tokens_to_residual_directions(ans)  # [B, 2, d_model]
    dirs = answer_dirs[:, 0] - answer_dirs[:, 1]
    logits, cache = model.run_with_cache(x, **cache_kwargs)
    final = logits[:, -1, :]
    sums.add("logit_diff", (final.gather(1, ans[:, :1]) - final.gather(1, ans[:, 1:])).sum())

    def to_logit_diff(stack: torch.Tensor) -> torch.Tensor:  # the seed's residual_stack_to_logit_diff, summed
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        return torch.einsum("...bd,bd->...", scaled, dirs)

    sums.add("direct", to_logit_diff(cache["resid_post", -1][:, -1, :]))
    lens, sums.labels["logit_lens"] = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    sums.add("logit_lens", to_logit_diff(lens))
    layers, sums.labels["layer_attribution"] = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    sums.add("layer_attribution", to_logit_diff(layers))
    heads = cache.stack_head_results(layer=-1, pos_slice=-1)
    sums.add("head_attribution", to_logit_diff(heads).view(L, H))


def top_heads(head_means: torch.Tensor, k: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The ``k`` largest and ``k`` most negative heads, as ``(layer, head)``."""
    H = head_means.shape[1]
    flat = head_means.flatten()
    k = min(k, flat.numel())
    top = [divmod(int(i), H) for i in torch.topk(flat, k).indices]
    bottom = [divmod(int(i), H) for i in torch.topk(-flat, k).indices]
    return top, bottom


def patterns(model: Any, tokens: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """The seed's attention view: the chosen heads' patterns on prompt 0, from one more
    ``run_with_cache`` on that prompt with only the pattern hooks."""
    wanted = sorted({f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads})
    _, cache = model.run_with_cache(tokens[:1], names_filter=wanted)
    return torch.stack([cache["pattern", layer][0, head] for layer, head in heads]).cpu()


def result_fields(means: dict[str, torch.Tensor], labels: dict[str, list[str]], top: list, bottom: list) -> Study:
    """The fields ``bench/run.py`` compares with logitscope's results."""
    return {
        "mean_logit_diff": float(means["logit_diff"]),
        "direct": float(means["direct"]),
        "logit_lens": means["logit_lens"].tolist(),
        "logit_lens_labels": labels["logit_lens"],
        "layer_attribution": means["layer_attribution"].tolist(),
        "layer_attribution_labels": labels["layer_attribution"],
        "head_attribution": means["head_attribution"].tolist(),
        "top_heads": top,
        "bottom_heads": bottom,
    }


def batched(n: int, batch_size: int) -> list[slice]:
    return [slice(start, start + batch_size) for start in range(0, n, batch_size)]


def run_seed_study(
    model: Any,
    tokens: torch.Tensor,
    answer_tokens: torch.Tensor,
    *,
    batch_size: int,
    cache_kwargs: dict[str, Any],
    top_k: int,
    phases: Callable[[str], Any],
) -> Study:
    """The whole study: batches of ``batch_size``, per-batch sums, means, top heads, patterns."""
    sums = Sums()
    with phases("study"), torch.no_grad():
        for s in batched(tokens.shape[0], batch_size):
            seed_batch(model, sums, tokens[s], answer_tokens[s], cache_kwargs)
        means = sums.means(tokens.shape[0])
        top, bottom = top_heads(means["head_attribution"], top_k)
    with phases("attention"), torch.no_grad():
        pats = patterns(model, tokens, top + bottom)
    return {**result_fields(means, sums.labels, top, bottom), "attention_shape": list(pats.shape)}
