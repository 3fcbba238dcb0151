"""The study's attention view: which heads' patterns it keeps, and their ``[T, T]`` patterns on one
prompt from a pass with eager attention (the kernel that returns them)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from logitscope.errors import ArgumentError
from logitscope.labels import parse_heads
from logitscope.models.load import LoadedModel
from logitscope.models.modules import Modules
from logitscope.models.state import attention_implementation
from logitscope.results.decomposition import signed_top_heads
from logitscope.results.study import AttentionView


def heads_to_keep(attention_heads: Any, head_attribution: np.ndarray, top_k: int, n_layers: int,
                   n_heads: int) -> list[tuple[int, int]]:
    """The heads whose patterns the study keeps: by default those the report shows (the top
    ``top_k`` of each sign that have it), ``"all"``, or the heads named."""
    if attention_heads is None:
        shown = [signed_top_heads(head_attribution, top_k, sign) for sign in (1, -1)]
        return list(dict.fromkeys((l, h) for heads in shown for l, h, _ in heads))
    if isinstance(attention_heads, str) and attention_heads == "all":
        return [(l, h) for l in range(n_layers) for h in range(n_heads)]
    try:
        return list(dict.fromkeys(parse_heads(attention_heads, n_layers, n_heads)))
    except ValueError as e:
        raise ArgumentError("attention_heads", attention_heads, f"{e} (or 'all')") from None


@torch.inference_mode()
def attention_patterns(lm: LoadedModel, ids: list[int], prompt_index: int,
                       heads: Sequence[tuple[int, int]] | None = None) -> AttentionView:
    """The attention patterns of ``heads`` (default: every head) on one prompt, from a pass with
    eager attention (the kernel that returns them); only those heads' ``[T, T]`` are kept."""
    model = lm.model
    n_layers, n_heads = lm.shape.n_layers, lm.shape.n_heads
    kept = [(l, h) for l in range(n_layers) for h in range(n_heads)] if heads is None else list(heads)
    m = Modules.of(lm)
    in_dev = m.embed.weight.device
    with attention_implementation(model, "eager"):
        out = m.base(
            input_ids=torch.tensor([ids], device=in_dev), output_attentions=True, use_cache=False
        )
    T = len(ids)
    patterns = np.empty((len(kept), T, T), dtype=np.float32)
    for i, (layer, head) in enumerate(kept):
        patterns[i] = out.attentions[layer][0, head].float().cpu().numpy()
    del out
    str_tokens = [lm.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in ids]
    return AttentionView(prompt_index, tuple(str_tokens), patterns, tuple(kept), n_layers, n_heads)
