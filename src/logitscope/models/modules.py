"""One resolver: which module of a loaded model is each thing the engine and the methods hook or read.

Every forward machinery (the study's :class:`~logitscope.engine.capture.Recorder`, the hook points of
:mod:`logitscope.models.hooks`, the edge runs, the path readout) asks :class:`Modules` where the
embeddings, a layer's attention, its input norm, q/k/v projections, output projection, MLP and post
norms, the final norm and the unembedding are. :class:`Modules` asks the family's
:class:`~logitscope.models.adapters.Adapter`, so a family's module tree is written in one place and
no caller switches on a family's name.

Nothing is cached: each answer is an attribute lookup on the model as it is now (a user may swap a
module between two studies), and callers that run per batch resolve once, when they are built.
"""

from __future__ import annotations

import torch
from torch import nn

from logitscope.models.adapters import Adapter
from logitscope.models.load import LoadedModel
from logitscope.models.qkv import QKVProjection


class Modules:
    """The modules of one loaded model, by TransformerLens's names where it has them."""

    def __init__(self, lm: LoadedModel):
        ad, model = lm.adapter, lm.model
        self.adapter: Adapter = ad
        self.model = model
        self.shape = lm.shape
        self.blocks: list[nn.Module] = list(ad.blocks(model))
        self.n_layers = len(self.blocks)
        self.n_heads, self.d_head, self.d_model = lm.shape.n_heads, lm.shape.d_head, lm.shape.d_model
        self.parallel: bool = ad.parallel_attn_mlp(model.config)  # attention and MLP read one residual
        self.n_kv_heads: int = ad.n_kv_heads(model.config) or self.n_heads
        self.softcap: float | None = ad.logit_softcap(model.config)  # the final logits' cap, or None
        self.centre = ad.norm == "LayerNorm"  # the family's norms centre (LayerNorm) or not (RMSNorm)
        self.key_norm_over_heads: str | None = ad.key_norm_over_heads

    @classmethod
    def of(cls, lm: LoadedModel) -> "Modules":
        return cls(lm)

    # ------------------------------------------------------------------ the model's ends
    @property
    def base(self) -> nn.Module:
        """The model without its unembedding (its forward returns the final normed residual)."""
        return self.adapter.base(self.model)

    @property
    def embed(self) -> nn.Embedding:
        return self.adapter.embed(self.model)

    @property
    def pos_embed(self) -> nn.Embedding | None:
        return self.adapter.pos_embed(self.model)

    @property
    def final_norm(self) -> nn.Module:
        return self.adapter.final_norm(self.model)

    @property
    def unembed(self) -> nn.Linear:
        return self.adapter.unembed(self.model)

    def final_norm_eps(self) -> float:
        return self.adapter.final_norm_eps(self.model)

    def final_norm_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.adapter.final_norm_weight_bias(self.model)

    def norm_weight(self, norm: nn.Module) -> torch.Tensor:
        """The vector a norm of this family multiplies its normalised input by (offset included)."""
        return self.adapter.norm_weight(norm)

    # ------------------------------------------------------------------ attention
    def attention(self, layer: int) -> nn.Module:
        """The attention module (the ``module`` the AttentionInterface receives)."""
        return self.adapter.attention(self.blocks[layer])

    def attn_norm(self, layer: int) -> nn.Module | None:
        """The norm the attention reads the residual stream through (TransformerLens's ``ln1``), or None."""
        return self.adapter.attn_norm(self.blocks[layer])

    def qkv(self, layer: int) -> list[QKVProjection]:
        """The modules whose outputs are the layer's q, k and v, with their per-head split and weights."""
        return self.adapter.qkv(self.attention(layer), self.d_model, self.n_heads, self.d_head)

    def out_proj(self, layer: int) -> nn.Module:
        """The output projection: its input is ``hook_z`` (heads concatenated), its output ``attn_out``
        before any post norm."""
        return self.adapter.out_proj(self.blocks[layer])

    def out_proj_weight(self, layer: int) -> torch.Tensor:
        """``W_O`` as ``[d_model, n_heads * d_head]``."""
        return self.adapter.out_proj_weight(self.blocks[layer])

    def value_bias(self, layer: int) -> torch.Tensor | None:
        """The constant ``[n_heads * d_head]`` every head adds to its z (see ``Adapter``)."""
        return self.adapter.value_bias(self.blocks[layer], self.shape)

    def attn_post_norm(self, layer: int) -> nn.Module | None:
        return self.adapter.attn_post_norm(self.blocks[layer])

    def attn_out(self, layer: int) -> nn.Module:
        """The module whose output is the attention's contribution to the residual stream: the
        output projection, or the norm after it (Gemma 2/3, OLMo-2)."""
        return self.attn_post_norm(layer) or self.out_proj(layer)

    # ------------------------------------------------------------------ MLP
    def mlp(self, layer: int) -> nn.Module:
        return self.adapter.mlp(self.blocks[layer])

    def mlp_out_bias(self, layer: int) -> torch.Tensor | None:
        return self.adapter.mlp_out_bias(self.blocks[layer])

    def mlp_input(self, layer: int) -> tuple[nn.Module, nn.Module | None]:
        """(module whose first input is the MLP's residual input, or the MLP itself; the norm to
        recompute from the block's input when the MLP shares the attention's normed input: GPT-J)."""
        return self.adapter.mlp_input(self.blocks[layer])

    def mlp_post_norm(self, layer: int) -> nn.Module | None:
        return self.adapter.mlp_post_norm(self.blocks[layer])

    def mlp_out(self, layer: int) -> nn.Module:
        """The module whose output is the MLP's contribution to the residual stream."""
        return self.mlp_post_norm(layer) or self.mlp(layer)

    def experts(self, layer: int) -> nn.Module | None:
        """A mixture-of-experts MLP's experts module (see ``Adapter.experts``), or None."""
        return self.adapter.experts(self.blocks[layer])

    @property
    def n_experts(self) -> int:
        return self.adapter.n_experts(self.model.config)
