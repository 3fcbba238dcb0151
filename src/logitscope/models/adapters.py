"""Per-family answers to the few questions the study asks of a Hugging Face model.

Where are the embeddings, the blocks, each block's attention output projection and MLP, the final
norm and the unembedding? Which kind of final norm is it? What constant does each head add through
its value bias? Which norm does the attention read through, where does the MLP read its input, how
are the q/k/v projections laid out? Each family answers in a few lines; everything else is
family-independent: nothing outside ``models/`` switches on a family's name, and the one module
resolver (:class:`logitscope.models.modules.Modules`) answers from these fields.

A few conventions go beyond GPT-2's and are answered the same way, as optional fields that default
to "absent": a norm weight offset (Gemma's RMSNorm multiplies by ``1 + weight``), norms on the
attention and MLP outputs before the residual add (Gemma 2/3, OLMo-2), a final logit
soft-cap (Gemma 2) and mixture-of-experts MLPs (Mixtral).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
from torch import nn

from logitscope.errors import ModelLoadError
from logitscope.models.qkv import QKVLayout, gpt2_qkv, neox_qkv, phi3_qkv, separate_qkv


def _absent(_: object) -> None:
    return None


def _input_layernorm(block: nn.Module) -> nn.Module:
    return block.input_layernorm


def _post_attention_layernorm(block: nn.Module) -> tuple[nn.Module, None]:
    return block.post_attention_layernorm, None


def kv_heads_in_config(cfg: object) -> int | None:
    """The number of key/value heads a config names (grouped-query or multi-query attention), or
    None where it names none (one per query head)."""
    for attr in ("num_key_value_heads", "n_kv_heads", "multi_query_group_num"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    return None


@dataclass(frozen=True)
class Adapter:
    """How one model family writes into its residual stream.

    ``out_proj(block)`` is the linear map whose *input* is the heads' mixed values concatenated
    head-major (``[.., n_heads * d_head]``, TransformerLens's ``hook_z``) and whose *output* is the
    attention layer's contribution to the residual stream (``attn_out``).
    ``value_bias(block)`` is the constant ``[n_heads * d_head]`` vector every head adds to its
    ``z`` whatever it attends to (value bias plus the first norm's bias through W_V): pattern rows
    sum to one. TransformerLens moves it out of the heads into the layer's output bias.
    """

    family: str
    architectures: tuple[str, ...]
    norm: str  # "LayerNorm" (centres, has a bias) or "RMSNorm"
    parallel_attn_mlp: Callable[[object], bool]  # from the config: attention and MLP read the same residual
    base: Callable[[nn.Module], nn.Module]
    blocks: Callable[[nn.Module], nn.ModuleList]
    embed: Callable[[nn.Module], nn.Embedding]
    pos_embed: Callable[[nn.Module], nn.Embedding | None]
    out_proj: Callable[[nn.Module], nn.Module]
    out_proj_weight: Callable[[nn.Module], torch.Tensor]  # [d_model, n_heads * d_head]
    mlp: Callable[[nn.Module], nn.Module]
    mlp_out_bias: Callable[[nn.Module], torch.Tensor | None]
    final_norm: Callable[[nn.Module], nn.Module]
    value_bias: Callable[[nn.Module, "ModelShape"], torch.Tensor | None]
    n_heads: Callable[[object], int]
    default_prepend_bos: bool = True  # TransformerLens's default_prepend_bos for the family
    # Every norm of the family multiplies by (norm_weight_offset + weight): Gemma's RMSNorm by 1 + w.
    norm_weight_offset: float = 0.0
    # An RMSNorm between the attention output projection (resp. the MLP) and the residual add, or
    # None: Gemma 2/3's post_attention_layernorm / post_feedforward_layernorm, OLMo-2's.
    attn_post_norm: Callable[[nn.Module], nn.Module | None] = _absent
    mlp_post_norm: Callable[[nn.Module], nn.Module | None] = _absent
    # From the config: the final logits are cap * tanh(linear_logits / cap) (Gemma 2), or None.
    logit_softcap: Callable[[object], float | None] = _absent
    # Mixture of experts: the block's experts module, which the model calls as
    # experts(hidden [tokens, d], top_k_index [tokens, k], top_k_weights [tokens, k]) and which
    # returns the routing-weighted sum of the chosen experts' outputs (transformers 5's fused MoE
    # experts, weights as 3D tensors); None for a dense MLP. n_experts from the config.
    experts: Callable[[nn.Module], nn.Module | None] = _absent
    n_experts: Callable[[object], int] = lambda cfg: 0
    # Hook points (logitscope.models.hooks). ``attention(block)``: the attention module, the ``module`` the
    # AttentionInterface receives. ``attention_points``: for families whose attention does not go
    # through the AttentionInterface, the modules whose outputs are q, k, v and the pattern.
    attention: Callable[[nn.Module], nn.Module] | None = None
    attention_points: Mapping[str, Callable[[nn.Module], nn.Module]] | None = None
    # The norm the attention reads the residual stream through (None: OLMo-2 reads it as it is).
    attn_norm: Callable[[nn.Module], nn.Module | None] = _input_layernorm
    # (module whose first input is the MLP's residual input, or the MLP itself; the norm to recompute
    # from the block's input when the MLP shares the attention's normed input: GPT-J's ln_1, else None).
    mlp_input: Callable[[nn.Module], tuple[nn.Module, nn.Module | None]] = _post_attention_layernorm
    # How the attention module's q/k/v projections are laid out (logitscope.models.qkv).
    qkv: QKVLayout = separate_qkv
    # From the config: the number of key/value heads, or None for one per query head.
    n_kv_heads: Callable[[object], int | None] = kv_heads_in_config
    # The attention module's attribute holding a key norm over all key heads together (OLMo-2's
    # k_norm), or None (no key norm, or one per head).
    key_norm_over_heads: str | None = None

    def unembed(self, model: nn.Module) -> nn.Linear:
        return model.get_output_embeddings()

    def final_norm_eps(self, model: nn.Module) -> float:
        return norm_eps(self.final_norm(model))

    def norm_weight(self, norm: nn.Module) -> torch.Tensor:
        """The vector a norm of this family multiplies its normalised input by."""
        return norm.weight + self.norm_weight_offset if self.norm_weight_offset else norm.weight

    def final_norm_weight_bias(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        norm = self.final_norm(model)
        return self.norm_weight(norm), getattr(norm, "bias", None)


def norm_eps(norm: nn.Module) -> float:
    """The epsilon of a LayerNorm or of a family's RMSNorm, whatever the attribute is called."""
    for attr in ("eps", "variance_epsilon", "epsilon"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    raise ModelLoadError(f"cannot find the epsilon of the norm {type(norm).__name__}")


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int


def _gpt2_value_bias(block: nn.Module, shape: ModelShape) -> torch.Tensor:
    d = shape.d_model
    w_v = block.attn.c_attn.weight[:, 2 * d : 3 * d]  # Conv1D: [in, out]
    b_v = block.attn.c_attn.bias[2 * d : 3 * d]
    return b_v + block.ln_1.bias @ w_v


def _linear_value_bias(v_proj: nn.Linear, norm: nn.Module | None, shape: ModelShape) -> torch.Tensor | None:
    """``b_V + β·W_V`` for a separate value projection (``norm``: the one it reads through, if
    any), repeated for grouped-query heads."""
    bias = v_proj.bias.detach().float() if v_proj.bias is not None else None
    beta = getattr(norm, "bias", None)
    if beta is not None:
        through = v_proj.weight.detach().float() @ beta.detach().float()  # Linear: [out, in]
        bias = through if bias is None else bias + through
    if bias is None:
        return None
    n_kv = bias.shape[0] // shape.d_head
    group = shape.n_heads // n_kv
    return bias.view(n_kv, shape.d_head).repeat_interleave(group, dim=0).reshape(-1)


def _neox_value_bias(block: nn.Module, shape: ModelShape) -> torch.Tensor:
    """``b_V + β·W_V`` for NeoX's fused projection (``attention_bias=False`` models have no b_V)."""
    # query_key_value's output is viewed as [n_heads, 3 * d_head]: per head q, then k, then v.
    qkv = block.attention.query_key_value
    dh = shape.d_head
    rows = torch.arange(shape.n_heads * 3 * dh, device=qkv.weight.device).view(shape.n_heads, 3, dh)[:, 2].reshape(-1)
    through = qkv.weight[rows].float() @ block.input_layernorm.bias.float()
    return through if qkv.bias is None else through + qkv.bias[rows].float()


def _never(cfg: object) -> bool:
    return False


GPT2 = Adapter(
    family="gpt2",
    architectures=("GPT2LMHeadModel",),
    norm="LayerNorm",
    parallel_attn_mlp=_never,
    base=lambda m: m.transformer,
    blocks=lambda m: m.transformer.h,
    embed=lambda m: m.transformer.wte,
    pos_embed=lambda m: m.transformer.wpe,
    out_proj=lambda b: b.attn.c_proj,
    out_proj_weight=lambda b: b.attn.c_proj.weight.T,  # Conv1D stores [in, out]
    mlp=lambda b: b.mlp,
    mlp_out_bias=lambda b: b.mlp.c_proj.bias,
    final_norm=lambda m: m.transformer.ln_f,
    value_bias=_gpt2_value_bias,
    n_heads=lambda cfg: cfg.n_head,
    attention=lambda b: b.attn,
    attn_norm=lambda b: b.ln_1,
    mlp_input=lambda b: (b.ln_2, None),
    qkv=gpt2_qkv,
)

# GPT-Neo keeps GPT-2's module tree (transformer.wte/wpe/h/ln_f, mlp.c_proj) and differs only in
# its attention block (separate Linear q/k/v/out projections, no value bias of its own).
GPT_NEO = replace(
    GPT2,
    family="gpt_neo",
    architectures=("GPTNeoForCausalLM",),
    out_proj=lambda b: b.attn.attention.out_proj,
    out_proj_weight=lambda b: b.attn.attention.out_proj.weight,
    value_bias=lambda b, s: _linear_value_bias(b.attn.attention.v_proj, b.ln_1, s),
    n_heads=lambda cfg: cfg.num_heads,
    attention=lambda b: b.attn.attention,
    qkv=separate_qkv,
    attention_points={  # GPT-Neo's attention has its own kernel, not the AttentionInterface
        "q": lambda b: b.attn.attention.q_proj,
        "k": lambda b: b.attn.attention.k_proj,
        "v": lambda b: b.attn.attention.v_proj,
        "pattern": lambda b: b.attn.attention.attn_dropout,  # receives the softmaxed pattern
    },
)

# GPT-J keeps GPT-2's module tree too (transformer.wte/h/ln_f) but has no learned positions
# (rotary on part of d_head, inside attention), separate bias-free q/k/v/out projections, attention
# and MLP reading the same ln_1 output in parallel, and an untied lm_head with a bias (in final_bias).
GPTJ = replace(
    GPT2,
    family="gptj",
    architectures=("GPTJForCausalLM",),
    parallel_attn_mlp=lambda cfg: True,
    pos_embed=lambda m: None,
    out_proj=lambda b: b.attn.out_proj,
    out_proj_weight=lambda b: b.attn.out_proj.weight,
    mlp_out_bias=lambda b: b.mlp.fc_out.bias,
    value_bias=lambda b, s: _linear_value_bias(b.attn.v_proj, b.ln_1, s),
    mlp_input=lambda b: (b.mlp, b.ln_1),  # the MLP reads ln_1's output, as the attention does
    qkv=separate_qkv,
)

GPT_NEOX = Adapter(
    family="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    norm="LayerNorm",
    parallel_attn_mlp=lambda cfg: bool(getattr(cfg, "use_parallel_residual", True)),
    base=lambda m: m.gpt_neox,
    blocks=lambda m: m.gpt_neox.layers,
    embed=lambda m: m.gpt_neox.embed_in,
    pos_embed=lambda m: None,
    out_proj=lambda b: b.attention.dense,
    out_proj_weight=lambda b: b.attention.dense.weight,
    mlp=lambda b: b.mlp,
    mlp_out_bias=lambda b: b.mlp.dense_4h_to_h.bias,
    final_norm=lambda m: m.gpt_neox.final_layer_norm,
    value_bias=_neox_value_bias,
    n_heads=lambda cfg: cfg.num_attention_heads,
    default_prepend_bos=False,  # as TransformerLens: Pythia was trained without a BOS habit
    attention=lambda b: b.attention,
    qkv=neox_qkv,
)


def _llama_like(family: str, *architectures: str, prepend_bos: bool = True) -> Adapter:
    return Adapter(
        family=family,
        architectures=architectures,
        norm="RMSNorm",
        parallel_attn_mlp=_never,
        base=lambda m: m.model,
        blocks=lambda m: m.model.layers,
        embed=lambda m: m.model.embed_tokens,
        pos_embed=lambda m: None,
        out_proj=lambda b: b.self_attn.o_proj,
        out_proj_weight=lambda b: b.self_attn.o_proj.weight,
        mlp=lambda b: b.mlp,
        mlp_out_bias=lambda b: b.mlp.down_proj.bias,
        final_norm=lambda m: m.model.norm,
        value_bias=lambda b, s: _linear_value_bias(b.self_attn.v_proj, b.input_layernorm, s),
        n_heads=lambda cfg: cfg.num_attention_heads,
        default_prepend_bos=prepend_bos,
        attention=lambda b: b.self_attn,
    )


LLAMA = _llama_like("llama", "LlamaForCausalLM")
MISTRAL = _llama_like("mistral", "MistralForCausalLM")
QWEN2 = _llama_like("qwen2", "Qwen2ForCausalLM", prepend_bos=False)  # TransformerLens's default
# q and k at the projections' outputs: before a family's q/k norm (and the rotary embedding), where
# TransformerLens's hook_q and hook_k sit. Replacing a whole head's vector there or after the norm
# patches the same thing; a first-order estimate (attribution patching) through the norm does not.
_QK_AT_PROJECTIONS = {"q": lambda b: b.self_attn.q_proj, "k": lambda b: b.self_attn.k_proj}

# Qwen3: Llama's tree; per-head q/k norms inside attention, before the rotary embedding.
QWEN3 = replace(_llama_like("qwen3", "Qwen3ForCausalLM", prepend_bos=False),  # TransformerLens's default
                attention_points=_QK_AT_PROJECTIONS)

# Mixtral: Mistral's tree with a sparse MoE block as the MLP (mlp.gate, the router; mlp.experts,
# every expert's gate_up_proj / down_proj as one 3D tensor each; no biases). The MLP's output is
# read as for any MLP; the experts module answers which expert wrote what.
MIXTRAL = replace(
    _llama_like("mixtral", "MixtralForCausalLM"),
    mlp_out_bias=lambda b: None,
    experts=lambda b: b.mlp.experts,
    n_experts=lambda cfg: cfg.num_local_experts,
)

# Phi-3: Llama's tree with fused projections (qkv_proj for queries, keys and values, gate_up_proj
# for the gated MLP); neither changes where the heads' z or the MLP output are read. transformers'
# qkv_proj has no bias and RMSNorm none to pass through W_V: no value bias.
PHI3 = replace(_llama_like("phi3", "Phi3ForCausalLM"), value_bias=lambda b, s: None, qkv=phi3_qkv)

# OLMo-2: Llama's tree without input norms. Each sublayer reads the residual stream as it is and its
# output passes through a norm (post_attention_layernorm, post_feedforward_layernorm) before the
# residual add; q/k norms over all heads act inside attention.
OLMO2 = replace(
    _llama_like("olmo2", "Olmo2ForCausalLM"),
    attn_post_norm=lambda b: b.post_attention_layernorm,
    mlp_post_norm=lambda b: b.post_feedforward_layernorm,
    value_bias=lambda b, s: _linear_value_bias(b.self_attn.v_proj, None, s),
    # q and k before OLMo-2's q/k norm, which normalises all heads together (TransformerLens's hook_q
    # and hook_k sit there too): replacing one head's q changes that norm's scale for every head.
    attention_points=_QK_AT_PROJECTIONS,
    attn_norm=_absent,
    mlp_input=lambda b: (b.mlp, None),
    key_norm_over_heads="k_norm",
)

# Gemma keeps Llama's module tree. Its RMSNorm multiplies by (1 + weight); its embeddings are
# scaled by sqrt(d_model) (inside the embedding module in transformers 5; the study reads the
# embedding as layer 0's resid_pre, so where the scaling sits does not matter).
GEMMA = replace(_llama_like("gemma", "GemmaForCausalLM"), norm_weight_offset=1.0)
# Gemma 2 adds a norm on the attention output and on the MLP output, before each residual add (the
# MLP reads pre_feedforward_layernorm, which has no bias and so needs no answer here), and
# soft-caps the final logits (30 in the released models; attention scores too, inside attention).
GEMMA2 = replace(
    GEMMA,
    family="gemma2",
    architectures=("Gemma2ForCausalLM",),
    attn_post_norm=lambda b: b.post_attention_layernorm,
    mlp_post_norm=lambda b: b.post_feedforward_layernorm,
    logit_softcap=lambda cfg: getattr(cfg, "final_logit_softcapping", None),
    mlp_input=lambda b: (b.pre_feedforward_layernorm, None),
)
# Gemma 3 keeps Gemma 2's tree and adds per-head q/k norms inside attention (q and k read before
# them, as TransformerLens); its config keeps the soft-cap fields (None in the released models).
GEMMA3 = replace(GEMMA2, family="gemma3", architectures=("Gemma3ForCausalLM",), attention_points=_QK_AT_PROJECTIONS)

ADAPTERS: tuple[Adapter, ...] = (GPT2, GPT_NEO, GPTJ, GPT_NEOX, LLAMA, MISTRAL, MIXTRAL, QWEN2, QWEN3, PHI3, OLMO2, GEMMA, GEMMA2, GEMMA3)


def supported_architectures() -> list[str]:
    return [a for ad in ADAPTERS for a in ad.architectures]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a loaded ``transformers`` causal LM, or a clear error listing what is supported."""
    archs = list(getattr(model.config, "architectures", None) or []) + [type(model).__name__]
    for adapter in ADAPTERS:
        if any(a in adapter.architectures for a in archs):
            if getattr(model.config, "use_bidirectional_attention", False):  # e.g. EmbeddingGemma
                raise ModelLoadError(
                    f"{archs[0]} with use_bidirectional_attention=True attends to later tokens too; logitscope "
                    "studies causal language models (each answer read at the last token of its prompt)"
                )
            return adapter
    raise ModelLoadError(unsupported_message(archs[0], getattr(model.config, "model_type", "?")))


def unsupported_message(architecture: str, model_type: str) -> str:
    families = ", ".join(f"{ad.family} ({'/'.join(ad.architectures)})" for ad in ADAPTERS)
    return f"unsupported architecture {architecture!r} (model_type {model_type!r}); logitscope supports: {families}"


def model_shape(model: nn.Module, adapter: Adapter) -> ModelShape:
    cfg = model.config
    n_layers = len(adapter.blocks(model))
    n_heads = adapter.n_heads(cfg)
    w = adapter.out_proj_weight(adapter.blocks(model)[0])
    return ModelShape(n_layers=n_layers, n_heads=n_heads, d_head=w.shape[1] // n_heads, d_model=w.shape[0])
