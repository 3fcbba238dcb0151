"""Test oracle: small random-weight Hugging Face checkpoints and their TransformerLens twins.

logitscope's numbers must equal TransformerLens 3.9's ``HookedTransformer``. This module builds

* ``make_hf_model``: a random-weight causal LM of one of ``FAMILIES`` (eager attention, fp32,
  eval mode), with every norm weight/bias and every linear bias set to non-trivial random values
  so that weight-processing conventions (fold_ln, value-bias folding, centering) are exercised;
* ``tl_model``: the ``HookedTransformer`` that ``HookedTransformer.from_pretrained`` would build
  from that model, constructed fully offline (no Hub access).

``tl_model`` follows ``HookedTransformer.from_pretrained`` step by step: the config comes from TL's
own ``loading_from_pretrained.get_pretrained_model_config`` (pointed at a temporary directory that
holds only the HF ``config.json``, which TL reads through ``AutoConfig`` without network access),
the weights from the family's ``convert_*_weights``, and processing from
``load_and_process_state_dict``. The GPT-2 tokenizer in ``tests/data/gpt2-tokenizer`` is attached
the way ``from_pretrained`` attaches a tokenizer (``cfg.tokenizer_name``), so TL's ``to_tokens``
works too.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

FAMILIES: tuple[str, ...] = ("gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3")

TOKENIZER_DIR: Path = Path(__file__).resolve().parent / "data" / "gpt2-tokenizer"
TOKENIZER_FILES: tuple[str, ...] = ("vocab.json", "merges.txt", "tokenizer_config.json")
BOS_ID: int = 50256  # GPT-2 "<|endoftext|>", used as BOS for every family in the tests

# HF architecture name that TL dispatches on, per family.
ARCHITECTURES: dict[str, str] = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neo": "GPTNeoForCausalLM",
    "gptj": "GPTJForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}

RMS_FAMILIES: frozenset[str] = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3"})
ROTARY_FAMILIES: frozenset[str] = frozenset({"gptj", "gpt_neox", "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3"})
# Families whose final logits are soft-capped (TL's from_pretrained sets center_unembed=False).
SOFTCAP_FAMILIES: frozenset[str] = frozenset({"gemma2"})
# Families whose RMSNorm multiplies by (1 + weight): their norm weights are drawn around 0.
NORM_WEIGHT_OFFSET: dict[str, float] = {"gemma": 1.0, "gemma2": 1.0, "gemma3": 1.0}
# Families TL 3.9 configures by official model name only (convert_hf_model_config's name-based
# branches): tl_config routes them through that name's config with the random model's own sizes.
# Post-norm architectures (TL's POST_NORM_ARCHITECTURES): from_pretrained turns fold_ln and
# center_writing_weights off for them.
POST_NORM_FAMILIES: frozenset[str] = frozenset({"olmo2"})
TL_OFFICIAL_NAME: dict[str, str] = {"olmo2": "allenai/OLMo-2-0425-1B", "gemma": "google/gemma-2b", "gemma2": "google/gemma-2-2b", "gemma3": "google/gemma-3-270m"}

# The seed notebook's GPT-2 flags (TL's IOI / Exploratory-Analysis demo).
SEED_FLAGS: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": True,
}

# Every flag False: TL computes exactly what HF computes (logits included).
NO_PROCESSING_FLAGS: dict[str, bool] = {
    "fold_ln": False,
    "center_writing_weights": False,
    "center_unembed": False,
    "fold_value_biases": False,
    "refactor_factored_attn_matrices": False,
}

# Shapes: (n_layers, d_model, n_heads, n_kv_heads for GQA families, d_mlp).
# GPT-2 / GPT-Neo ignore d_mlp here: TL hard-codes d_mlp = 4 * d_model for them.
_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (2, 64, 4, 2, 128),
    "small": (12, 768, 12, 4, 2048),
}


def _family_config(
    family: str, size: str, vocab_size: int, n_ctx: int
) -> transformers.PretrainedConfig:
    """The HF config of a ``size``-shaped member of ``family``, with the family's real choices."""
    if size not in _SHAPES:
        raise ValueError(f"size must be one of {sorted(_SHAPES)}, got {size!r}")
    n_layers, d_model, n_heads, n_kv, d_mlp_gated = _SHAPES[size]
    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": BOS_ID, "eos_token_id": BOS_ID}
    if family == "gpt2":
        # Real GPT-2 configs carry the legacy key n_ctx, which TL 3.9 reads (``hf_config.n_ctx``);
        # transformers 5's GPT2Config no longer defines it, so without it TL's config code fails.
        return transformers.GPT2Config(
            n_positions=n_ctx, n_ctx=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
            n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, **common,
        )
    if family == "gpt_neo":
        # Alternating global/local layers as in every GPT-Neo checkpoint. The window (256 in the
        # real models) is shrunk to n_ctx // 8 so that local attention masks something in tests.
        return transformers.GPTNeoConfig(
            max_position_embeddings=n_ctx, hidden_size=d_model, num_layers=n_layers,
            num_heads=n_heads, attention_types=[[["global", "local"], n_layers // 2]],
            window_size=max(2, min(256, n_ctx // 8)), intermediate_size=None,
            activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_dropout=0.0,
            embed_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=True, **common,
        )
    if family == "gptj":
        # GPT-J 6B's choices, shrunk: parallel attention and MLP from one ln_1; rotary on a quarter
        # of d_head (64 of 256 there, 4 of 16 here), adjacent pairs; MLP biases; untied lm_head
        # with a bias. TL 3.9 hard-codes eps 1e-5 and d_mlp = 4 * d_model, as GPT-J's are.
        return transformers.GPTJConfig(
            n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads, rotary_dim=4,
            n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, **common,
        )
    if family == "gpt_neox":
        # Pythia style: parallel residual, partial rotary (25% of d_head), biased attention, untied.
        return transformers.GPTNeoXConfig(
            hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
            intermediate_size=4 * d_model, hidden_act="gelu", max_position_embeddings=n_ctx,
            layer_norm_eps=1e-5, use_parallel_residual=True, attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 0.25},
            attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False, **common,
        )
    if family == "llama":
        # Llama-3 style rope_theta; no biases anywhere (as in real Llama); untied.
        return transformers.LlamaConfig(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, hidden_act="silu",
            max_position_embeddings=n_ctx, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            attention_bias=False, mlp_bias=False, tie_word_embeddings=False, **common,
        )
    if family == "mistral":
        # Mistral-7B-v0.1 style sliding-window attention on every layer (window 4096 there, shrunk
        # to n_ctx // 8 so that it masks something in tests); rope_theta 1e6; untied.
        return transformers.MistralConfig(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=d_model // n_heads,
            hidden_act="silu", max_position_embeddings=n_ctx, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            sliding_window=max(2, min(4096, n_ctx // 8)), tie_word_embeddings=False, **common,
        )
    if family == "mixtral":
        # Mixtral 8x7B's choices, shrunk: a sparse MoE MLP (4 experts here, 2 chosen per token,
        # top-k weights renormalised as in transformers); grouped-query attention; rope_theta 1e6;
        # a sliding window (None in the released 8x7B, which TL 3.9 also handles; n_ctx // 8 here
        # so it masks something); untied.
        return transformers.MixtralConfig(
            hidden_size=d_model, intermediate_size=d_mlp_gated // 2, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, hidden_act="silu",
            max_position_embeddings=n_ctx, rms_norm_eps=1e-5, num_local_experts=4, num_experts_per_tok=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            sliding_window=max(2, n_ctx // 8), router_jitter_noise=0.0, tie_word_embeddings=False, **common,
        )
    if family == "qwen2":
        # Qwen2/2.5-0.5B style: q/k/v biases, no sliding window, rope_theta 1e6, tied embeddings.
        return transformers.Qwen2Config(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, hidden_act="silu",
            max_position_embeddings=n_ctx, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            use_sliding_window=False, max_window_layers=n_layers, tie_word_embeddings=True,
            **common,
        )
    if family == "qwen3":
        # Qwen3-0.6B's choices, shrunk: q/k norms; d_head (32) * n_heads != d_model; grouped-query
        # attention; rope_theta 1e6; no biases; tied embeddings; no sliding window.
        return transformers.Qwen3Config(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=32, hidden_act="silu",
            max_position_embeddings=n_ctx, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, attention_bias=False,
            use_sliding_window=False, tie_word_embeddings=True, **common,
        )
    if family == "phi3":
        # Phi-3's choices, shrunk: fused qkv_proj and gate_up_proj; grouped-query attention (as
        # Phi-3-medium); sliding window on every layer (2047 in Phi-3-mini-4k, shrunk to n_ctx // 8
        # so it masks something); full rotary (TL 3.9 reads no partial_rotary_factor); untied.
        return transformers.Phi3Config(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, hidden_act="silu",
            max_position_embeddings=n_ctx, original_max_position_embeddings=n_ctx, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
            sliding_window=max(2, n_ctx // 8), resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
            tie_word_embeddings=False, pad_token_id=0, **common,
        )
    if family == "olmo2":
        # OLMo-2 1B's choices, shrunk: no input norms, norms on each sublayer's output; q/k norms
        # over all heads; rope_theta 5e5; untied. Multi-head attention: TL 3.9's converter
        # reshapes k/v with n_heads (the released OLMo-2 models have as many key/value heads).
        return transformers.Olmo2Config(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_heads, hidden_act="silu",
            max_position_embeddings=n_ctx, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, attention_bias=False,
            tie_word_embeddings=False, pad_token_id=0, **common,
        )
    if family == "gemma":
        # Gemma 2B's choices, shrunk: one key/value head (multi-query); d_head (32) * n_heads !=
        # d_model; tanh GELU (transformers reads the checkpoints' legacy "gelu" as it); tied.
        return transformers.GemmaConfig(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=1, head_dim=32,
            hidden_act="gelu_pytorch_tanh", max_position_embeddings=n_ctx, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=False,
            tie_word_embeddings=True, pad_token_id=0, **common,
        )
    if family == "gemma2":
        # Gemma 2 2B's choices, shrunk: grouped-query attention; d_head (32) * n_heads != d_model;
        # query_pre_attn_scalar (48) != d_head (as Gemma 2 27B's); sliding (even) and full (odd)
        # layers, window n_ctx // 8; both soft-caps, shrunk from 30 / 50 so that they bite on these
        # weights (logit differences reach ~10, attention scores a few units); tied.
        return transformers.Gemma2Config(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=32,
            query_pre_attn_scalar=48, hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=n_ctx, rms_norm_eps=1e-6, sliding_window=max(2, n_ctx // 8),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            final_logit_softcapping=8.0, attn_logit_softcapping=3.0, attention_bias=False,
            tie_word_embeddings=True, pad_token_id=0, **common,
        )
    if family == "gemma3":
        # Gemma 3 270M's choices, shrunk: one key/value head; d_head (32) * n_heads != d_model;
        # query_pre_attn_scalar (48) != d_head, so the attention scale is not 1/sqrt(d_head);
        # sliding and full layers (every 6th is full in the real models, every 2nd in 2 layers)
        # with the window shrunk to n_ctx // 8 so it masks something; distinct local/global rope
        # bases; q/k norms; tied embeddings; no soft-caps (as released).
        n_layer_types = min(6, n_layers)
        return transformers.Gemma3TextConfig(
            hidden_size=d_model, intermediate_size=d_mlp_gated, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=1, head_dim=32,
            query_pre_attn_scalar=48, hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=n_ctx, rms_norm_eps=1e-6, sliding_window=max(2, n_ctx // 8),
            layer_types=["full_attention" if (i + 1) % n_layer_types == 0 else "sliding_attention"
                         for i in range(n_layers)],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
            attention_bias=False, final_logit_softcapping=None, attn_logit_softcapping=None,
            tie_word_embeddings=True, pad_token_id=0, **common,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _is_norm(module: torch.nn.Module) -> bool:
    """True for LayerNorm and the families' RMSNorm classes."""
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or name.endswith("RMSNorm")


@torch.no_grad()
def _randomize(model: PreTrainedModel, seed: int, norm_offset: float = 0.0) -> None:
    """Overwrite every parameter with seeded, well-scaled, non-trivial random values.

    Matrices get std 1/sqrt(fan_in) (unit-scale activations, non-uniform attention); embeddings
    std 0.5 (token) / 0.2 (position); norm weights 1 + 0.3 N(0,1) as the norm applies them (drawn
    around ``1 - norm_offset`` for norms that add ``norm_offset``, Gemma's 1 + weight); norm and
    linear biases 0.2 N(0,1). Tied parameters are visited once.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    seen: set[int] = set()
    for _, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if _is_norm(module):
                value = 1.0 - norm_offset + 0.3 * randn(param.shape) if pname == "weight" else 0.2 * randn(param.shape)
            elif pname == "bias":
                value = 0.2 * randn(param.shape)
            elif isinstance(module, torch.nn.Embedding):
                is_position = module.num_embeddings != model.config.vocab_size
                value = (0.2 if is_position else 0.5) * randn(param.shape)
            elif isinstance(module, Conv1D):  # GPT-2: weight stored [in, out]
                value = randn(param.shape) / param.shape[0] ** 0.5
            elif isinstance(module, torch.nn.Linear):  # weight stored [out, in]
                value = randn(param.shape) / param.shape[1] ** 0.5
            elif type(module).__name__.endswith(("Experts", "TopKRouter")):  # MoE: [(experts,) out, in]
                value = randn(param.shape) / param.shape[-1] ** 0.5
            else:
                raise TypeError(f"unexpected parameter {pname} of {type(module).__name__}")
            param.copy_(value)


def make_hf_model(
    family: str,
    *,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int = 50257,
    n_ctx: int = 64,
) -> PreTrainedModel:
    """A random-weight causal LM of ``family``: fp32, eager attention, eval mode, deterministic.

    ``size="tiny"``: 2 layers, d_model 64, 4 heads (2 kv heads for llama/mistral/qwen2), d_head 16.
    ``size="small"``: GPT-2 small's shape (12 layers, 768, 12 heads, d_mlp 3072 for gpt2).
    """
    config = _family_config(family, size, vocab_size, n_ctx)
    config.architectures = [ARCHITECTURES[family]]
    torch.manual_seed(seed)  # the constructor's default init; everything is overwritten below
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    assert model.config._attn_implementation == "eager"
    _randomize(model, seed, NORM_WEIGHT_OFFSET.get(family, 0.0))
    if family == "gpt_neo":
        # GPT-Neo does not divide scores by sqrt(d_head); shrink W_Q and W_K by d_head**-0.25 each
        # so its scores have the same scale as the other families' (keeps softmax well-conditioned).
        d_head = config.hidden_size // config.num_heads
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.attention.q_proj.weight.mul_(d_head**-0.25)
                block.attn.attention.k_proj.weight.mul_(d_head**-0.25)
    return model.float().eval()


def gpt2_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The GPT-2 tokenizer from ``tests/data/gpt2-tokenizer`` (offline)."""
    return transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def save_checkpoint(model: PreTrainedModel, directory: str | Path) -> Path:
    """Save ``model`` plus the GPT-2 tokenizer so ``Auto*.from_pretrained(directory)`` works offline.

    Besides the three GPT-2 files, writes ``tokenizer.json`` (the same tokenizer, serialised by the
    ``tokenizers`` library): transformers 5 maps ``model_type`` "mistral" to a backend that can only
    be built from ``tokenizer.json``. Caveat: for "qwen2" checkpoints transformers 5 ignores the
    declared ``GPT2Tokenizer`` and builds ``Qwen2Tokenizer`` (GPT-2 vocab/merges, Qwen's
    pre-tokenizer regex: digits split one by one, different newline handling); ids are identical for
    plain words and punctuation but differ for numbers and newlines.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, path / name)
    gpt2_tokenizer().backend_tokenizer.save(str(path / "tokenizer.json"))
    return path


def tl_default_flags(family: str) -> dict[str, bool]:
    """The processing TL 3.9's ``HookedTransformer.from_pretrained`` effectively applies by default.

    ``from_pretrained``'s defaults are fold_ln, center_writing_weights, center_unembed,
    fold_value_biases = True and refactor_factored_attn_matrices = False for every family here;
    it overrides them for shortformer models, for post-norm architectures (OLMo-2: fold_ln and
    center_writing_weights off) and for models with a final logit soft-cap (Gemma 2:
    center_unembed off, since the cap is not invariant to a shift of the logits). Inside
    ``ProcessWeights.process_weights`` center_writing_weights is a silent no-op for RMSNorm models,
    so it is reported as False for them (passing True gives identical weights). Refactoring is off
    by default and would assert for rotary models.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return {
        "fold_ln": family not in POST_NORM_FAMILIES,
        "center_writing_weights": family not in RMS_FAMILIES | POST_NORM_FAMILIES,
        "center_unembed": family not in SOFTCAP_FAMILIES,  # from_pretrained turns it off for them
        "fold_value_biases": True,
        "refactor_factored_attn_matrices": False,
    }


def _converter(family: str) -> Callable[[PreTrainedModel, Any], dict[str, torch.Tensor]]:
    """The family's ``transformer_lens.pretrained.weight_conversions.convert_*_weights``."""
    from transformer_lens.pretrained import weight_conversions as wc

    return {
        "gpt2": wc.convert_gpt2_weights,
        "gpt_neo": wc.convert_neo_weights,
        "gptj": wc.convert_gptj_weights,
        "gpt_neox": wc.convert_neox_weights,
        "llama": wc.convert_llama_weights,
        "mistral": wc.convert_mistral_weights,
        "mixtral": wc.convert_mixtral_weights,
        "qwen2": wc.convert_qwen2_weights,
        "qwen3": wc.convert_qwen3_weights,
        "phi3": wc.convert_phi3_weights,
        "olmo2": wc.convert_olmo2_weights,
        "gemma": wc.convert_gemma_weights,
        "gemma2": wc.convert_gemma_weights,
        "gemma3": wc.convert_gemma_weights,
    }[family]


def _neutral_tempdir() -> Path:
    """A temp dir whose path TL's name sniffing ("llama", "gemma" substrings) cannot misread."""
    while True:
        path = Path(tempfile.mkdtemp(prefix="tlcfg_"))
        if not any(word in str(path).lower() for word in ("llama", "gemma")):
            return path
        shutil.rmtree(path)


# Keys tl_size_overrides may add to an official name's config dict: TL sets them for other members
# of the same family (Gemma 2 27B's attn_scale, Gemma 2's soft-caps).
_TL_KEYS_OF_THE_FAMILY: frozenset[str] = frozenset({"attn_scale", "attn_scores_soft_cap", "output_logits_soft_cap"})


def tl_size_overrides(hf_config: transformers.PretrainedConfig, family: str, official: dict[str, Any]) -> dict[str, Any]:
    """The entries of TL's config dict for ``TL_OFFICIAL_NAME[family]`` (``official``) that the
    model at hand (random or real) sets differently: sizes and hyper-parameters, read from its HF
    config as the TL branch for an architecture-dispatched family would read them."""
    c = hf_config
    if family == "olmo2":
        if c.rope_parameters.get("rope_type", "default") != "default":
            raise ValueError(f"olmo2: rope_type {c.rope_parameters['rope_type']!r} is not routed to TL here")
        if c.num_key_value_heads != c.num_attention_heads:
            raise ValueError("olmo2: TL 3.9's converter needs as many key/value heads as heads")
        return {
            "d_model": c.hidden_size, "d_head": c.hidden_size // c.num_attention_heads,
            "n_heads": c.num_attention_heads, "d_mlp": c.intermediate_size, "n_layers": c.num_hidden_layers,
            "n_ctx": min(c.max_position_embeddings, official["n_ctx"]), "eps": c.rms_norm_eps,
            "d_vocab": c.vocab_size, "act_fn": c.hidden_act, "rotary_base": c.rope_parameters["rope_theta"],
            "attn_types": ["global"] * c.num_hidden_layers,
        }
    if family == "gemma":
        if c.rope_parameters.get("rope_type", "default") != "default":
            raise ValueError(f"gemma: rope_type {c.rope_parameters['rope_type']!r} is not routed to TL here")
        return {
            "d_model": c.hidden_size, "d_head": c.head_dim, "n_heads": c.num_attention_heads,
            "d_mlp": c.intermediate_size, "n_layers": c.num_hidden_layers,
            "n_ctx": min(c.max_position_embeddings, official["n_ctx"]), "eps": c.rms_norm_eps,
            "d_vocab": c.vocab_size, "n_key_value_heads": c.num_key_value_heads,
            "rotary_base": c.rope_parameters["rope_theta"], "rotary_dim": c.head_dim,
            # TL's gemma-2b/7b configs say "gelu" (exact); transformers computes the tanh
            # approximation for every Gemma checkpoint (GemmaConfig rewrites their legacy "gelu").
            "act_fn": c.hidden_act,
        }
    if family not in ("gemma2", "gemma3"):
        raise ValueError(f"no official-name route for {family!r}")
    # Gemma 3 has a rope per layer type (local and global bases), Gemma 2 one for all layers.
    rope = c.rope_parameters if family == "gemma3" else {"sliding_attention": c.rope_parameters,
                                                          "full_attention": c.rope_parameters}
    for kind in ("sliding_attention", "full_attention"):
        if rope[kind].get("rope_type", "default") != "default":
            raise ValueError(f"{family}: rope_type {rope[kind]['rope_type']!r} for {kind} is not routed to TL here")
    out: dict[str, Any] = {
        "d_model": c.hidden_size, "d_head": c.head_dim, "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size, "n_layers": c.num_hidden_layers,
        "n_ctx": min(c.max_position_embeddings, official["n_ctx"]),  # TL caps n_ctx (8192)
        "eps": c.rms_norm_eps, "d_vocab": c.vocab_size, "act_fn": c.hidden_activation,
        "n_key_value_heads": c.num_key_value_heads, "window_size": c.sliding_window,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in c.layer_types],
        "rotary_base": rope["full_attention"]["rope_theta"],
        # HF scales scores by query_pre_attn_scalar ** -0.5; TL divides by attn_scale (its
        # default sqrt(d_head) equals it in the released models, where both are 256).
        "attn_scale": float(c.query_pre_attn_scalar) ** 0.5,
    }
    if family == "gemma3":
        out["rotary_base_local"] = rope["sliding_attention"]["rope_theta"]
    if c.final_logit_softcapping is not None:
        out["output_logits_soft_cap"] = float(c.final_logit_softcapping)
    if c.attn_logit_softcapping is not None:
        out["attn_scores_soft_cap"] = float(c.attn_logit_softcapping)
    return out


def _tl_config_by_official_name(hf_config: transformers.PretrainedConfig, family: str, *, fold_ln: bool) -> Any:
    """TL's config for a family TL 3.9 configures by official model name only.

    ``convert_hf_model_config`` picks Gemma's and OLMo-2's configs by the name
    (``google/gemma-3-270m``, ``allenai/OLMo-2-0425-1B``: sizes hard-coded; for OLMo-2 it also
    fetches the name's HF config, here answered with the model's own); a local folder of such a
    model falls through to NotImplementedError. So TL's own ``get_pretrained_model_config`` is run for the official name
    with ``convert_hf_model_config`` wrapped to put the model's own sizes into its dict
    (``tl_size_overrides``). Every family flag TL sets (use_normalization_before_and_after,
    use_qk_norm, final_rms, gated_mlp, positional_embedding_type, ...) stays TL's, and every later
    step (fold_ln's RMSPre, default_prepend_bos, d_vocab from the HF config) is TL's own; the
    override may only replace keys TL's dict has or TL sets for the family (_TL_KEYS_OF_THE_FAMILY).
    """
    from unittest import mock

    from transformer_lens import loading_from_pretrained as loading

    original = loading.convert_hf_model_config
    official_name = TL_OFFICIAL_NAME[family]

    class OwnConfig:  # OLMo-2's branch reads AutoConfig for the name (only the architecture is used)
        @staticmethod
        def from_pretrained(name: str, **kwargs: Any) -> transformers.PretrainedConfig:
            if name != official_name:
                raise ValueError(f"unexpected config request for {name!r}")
            return copy.deepcopy(hf_config)

    def convert(name: str, **kwargs: Any) -> dict[str, Any]:
        cfg_dict = original(name, **kwargs)
        overrides = tl_size_overrides(hf_config, family, cfg_dict)
        foreign = set(overrides) - set(cfg_dict) - _TL_KEYS_OF_THE_FAMILY
        if foreign:
            raise ValueError(f"{family}: TL's {name} config has no {sorted(foreign)}")
        return {**cfg_dict, **overrides}

    with mock.patch.object(loading, "convert_hf_model_config", convert), mock.patch.object(loading, "AutoConfig", OwnConfig):
        return loading.get_pretrained_model_config(
            official_name, hf_cfg=hf_config.to_dict(), fold_ln=fold_ln, device="cpu", dtype=torch.float32,
        )


def tl_config(hf_model: PreTrainedModel, family: str, *, fold_ln: bool = True) -> Any:
    """The ``HookedTransformerConfig`` that ``from_pretrained`` derives for ``hf_model``.

    Runs TL's own ``get_pretrained_model_config`` on a local directory holding only the model's
    ``config.json`` (read via ``AutoConfig``, no network); device cpu, dtype float32, and TL's
    per-family ``default_prepend_bos``. ``fold_ln`` selects LNPre/RMSPre, as in from_pretrained.
    Families TL configures by official name only (``TL_OFFICIAL_NAME``) go through that name's
    config with the model's own sizes (``_tl_config_by_official_name``).
    """
    from transformer_lens import loading_from_pretrained as loading

    hf_config = copy.deepcopy(hf_model.config)
    hf_config.architectures = [ARCHITECTURES[family]]
    if family in TL_OFFICIAL_NAME:
        cfg = _tl_config_by_official_name(hf_config, family, fold_ln=fold_ln)
    else:
        tmp = _neutral_tempdir()
        try:
            local = tmp / "checkpoint"
            hf_config.save_pretrained(local)
            cfg = loading.get_pretrained_model_config(
                str(local), hf_cfg=hf_config.to_dict(), fold_ln=fold_ln, device="cpu",
                dtype=torch.float32,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if cfg.original_architecture != ARCHITECTURES[family]:
        raise ValueError(f"{family}: TL saw {cfg.original_architecture}")
    cfg.model_name = f"random-{family}"
    cfg.tokenizer_name = str(TOKENIZER_DIR)  # from_pretrained loads the tokenizer from this name
    return cfg


def tl_model(
    hf_model: PreTrainedModel,
    family: str,
    *,
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
    **flags: bool,
) -> Any:
    """TL 3.9's ``HookedTransformer`` for ``hf_model``, built as ``from_pretrained`` would, offline.

    ``flags`` are load_and_process_state_dict's flags; unspecified ones default to
    ``tl_default_flags(family)`` (i.e. from_pretrained's defaults, refactor off, also for gpt2;
    pass ``**SEED_FLAGS`` for the seed notebook's GPT-2 model). ``tokenizer``: attach this one
    (e.g. ``AutoTokenizer.from_pretrained(checkpoint_dir)``, whose folder must still exist);
    by default TL loads the GPT-2 tokenizer from ``tests/data/gpt2-tokenizer`` itself.
    """
    from transformer_lens import HookedTransformer

    unknown = set(flags) - set(NO_PROCESSING_FLAGS)
    if unknown:
        raise TypeError(f"unknown flags {sorted(unknown)}")
    resolved = {**tl_default_flags(family), **flags}
    cfg = tl_config(hf_model, family, fold_ln=resolved["fold_ln"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "HookedTransformer is deprecated"
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    with torch.no_grad():
        state_dict = _converter(family)(hf_model, cfg)
        state_dict = {k: v.detach().clone() for k, v in state_dict.items()}
        model.load_and_process_state_dict(state_dict, **resolved)
    model.move_model_modules_to_device()
    return model.eval()
