"""Checks that the test oracle (tests/oracle.py) is itself right: TL 3.9 reproduces HF exactly.

Tolerances (fp32 everywhere):

* Logits: max(LOGIT_ATOL = 1e-4, LOGIT_RTOL = 5e-6 * max|HF logit|). Tiny-model logits reach
  |28| (GPT-2-small-shaped ones |90|) and come from d_model-term dot products downstream of LN,
  attention and MLP blocks. TL computes an algebraically equal but differently ordered function
  (norm gains folded into W, writer weights and W_U centered, value biases moved into b_O, SVD
  refactoring, its own einsums), so each step carries ~1e-7 relative fp32 rounding, amplified by
  cancellation; the error therefore scales with the logit magnitude. Observed max |diff| over 5
  seeds: 4e-6 to 2e-5 for the tiny families (processed or not), 3.4e-5 for tiny GPT-2 with
  SEED_FLAGS, 7e-5 for GPT-2-small shape (1.9e-4 with SEED_FLAGS' SVD refactor). The bound leaves
  >= 2x (tiny: >= 5x) headroom, while every real convention error we tried (wrong rotary_dim /
  base / pairing, missing parallel residual, wrong eps, wrong local window, wrong attention scale)
  gives diffs of 3e-2 to 16.
* PATTERN_ATOL = 1e-5. Probabilities in [0, 1]; observed max |diff| <= 1.3e-6 (>= 7x headroom).
* RESID_ATOL = 1e-4 for residual-stream vectors and attention z (entries O(1)-O(10)); observed
  <= 4e-6.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from oracle import (
    ARCHITECTURES,
    BOS_ID,
    FAMILIES,
    NO_PROCESSING_FLAGS,
    NORM_WEIGHT_OFFSET,
    POST_NORM_FAMILIES,
    RMS_FAMILIES,
    SEED_FLAGS,
    SOFTCAP_FAMILIES,
    gpt2_tokenizer,
    make_hf_model,
    save_checkpoint,
    tl_config,
    tl_default_flags,
    tl_model,
)

LOGIT_ATOL = 1e-4
LOGIT_RTOL = 5e-6
PATTERN_ATOL = 1e-5
RESID_ATOL = 1e-4

BATCH, SEQ = 3, 32  # SEQ > the tiny GPT-Neo / Mistral window (64 // 8 = 8), so local masks bite

# Where each family keeps its blocks, attention output projection (its INPUT is the merged heads,
# head-major), and final norm; relative to the HF model.
HF_LAYERS = {
    "gpt2": "transformer.h", "gpt_neo": "transformer.h", "gptj": "transformer.h", "gpt_neox": "gpt_neox.layers",
    "llama": "model.layers", "mistral": "model.layers", "mixtral": "model.layers", "qwen2": "model.layers",
    "qwen3": "model.layers", "phi3": "model.layers", "olmo2": "model.layers", "gemma": "model.layers", "gemma2": "model.layers", "gemma3": "model.layers",
}
HF_OUT_PROJ = {
    "gpt2": "attn.c_proj", "gpt_neo": "attn.attention.out_proj", "gptj": "attn.out_proj", "gpt_neox": "attention.dense",
    "llama": "self_attn.o_proj", "mistral": "self_attn.o_proj", "mixtral": "self_attn.o_proj", "qwen2": "self_attn.o_proj",
    "qwen3": "self_attn.o_proj", "phi3": "self_attn.o_proj", "olmo2": "self_attn.o_proj", "gemma": "self_attn.o_proj", "gemma2": "self_attn.o_proj", "gemma3": "self_attn.o_proj",
}
HF_FINAL_NORM = {
    "gpt2": "transformer.ln_f", "gpt_neo": "transformer.ln_f", "gptj": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm",
    "llama": "model.norm", "mistral": "model.norm", "mixtral": "model.norm", "qwen2": "model.norm",
    "qwen3": "model.norm", "phi3": "model.norm", "olmo2": "model.norm", "gemma": "model.norm", "gemma2": "model.norm", "gemma3": "model.norm",
}
# Families without any bias parameter (value-bias folding is a no-op for them).
BIAS_FREE = ("llama", "mistral", "mixtral", "qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3")
TIED = ("gpt2", "gpt_neo", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")


@dataclass
class HFRun:
    """One family's HF model, a token batch, and what HF computed on it."""

    family: str
    model: transformers.PreTrainedModel
    tokens: torch.Tensor
    logits: torch.Tensor
    attentions: list[torch.Tensor]
    hidden_states: list[torch.Tensor]  # block inputs (index 0..n_layers-1)
    final_resid: torch.Tensor  # input of the final norm
    z: list[torch.Tensor]  # merged-head input of the attention output projection, [b, p, H, d_head]


def _tokens(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50257, (BATCH, SEQ), generator=gen)
    tokens[:, 0] = BOS_ID  # BOS-like first token, as TL's to_tokens would prepend
    return tokens


@torch.no_grad()
def _run_hf(family: str) -> HFRun:
    model = make_hf_model(family, seed=1)
    tokens = _tokens(seed=2)
    n_heads = model.config.num_attention_heads
    captured: dict[str, torch.Tensor] = {}
    handles = []
    layers = model.get_submodule(HF_LAYERS[family])
    for i, layer in enumerate(layers):
        proj = layer.get_submodule(HF_OUT_PROJ[family])
        handles.append(proj.register_forward_pre_hook(
            lambda _m, args, i=i: captured.__setitem__(f"z{i}", args[0].detach().clone())))
    final_norm = model.get_submodule(HF_FINAL_NORM[family])
    handles.append(final_norm.register_forward_pre_hook(
        lambda _m, args: captured.__setitem__("final", args[0].detach().clone())))
    try:
        out = model(tokens, output_attentions=True, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    z = [captured[f"z{i}"].unflatten(-1, (n_heads, -1)) for i in range(len(layers))]
    return HFRun(
        family=family, model=model, tokens=tokens, logits=out.logits,
        attentions=list(out.attentions), hidden_states=list(out.hidden_states[:-1]),
        final_resid=captured["final"], z=z,
    )


@pytest.fixture(scope="module", params=FAMILIES)
def hf_run(request: pytest.FixtureRequest) -> HFRun:
    return _run_hf(request.param)


def _center(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _logit_tol(reference: torch.Tensor) -> float:
    return max(LOGIT_ATOL, LOGIT_RTOL * reference.abs().max().item())


@torch.no_grad()
def test_default_processing_matches_hf(hf_run: HFRun) -> None:
    """from_pretrained-default TL: logits = HF - vocab mean; patterns, residuals, final scale equal."""
    family = hf_run.family
    flags = tl_default_flags(family)
    model = tl_model(hf_run.model, family)
    logits, cache = model.run_with_cache(hf_run.tokens)

    expected = _center(hf_run.logits) if flags["center_unembed"] else hf_run.logits
    assert _max_diff(logits, expected) < _logit_tol(expected)

    for layer, hf_pattern in enumerate(hf_run.attentions):
        assert _max_diff(cache["pattern", layer], hf_pattern) < PATTERN_ATOL

    # Residual stream: C(HF) under center_writing_weights (LN families), HF itself for RMS.
    shift = _center if flags["center_writing_weights"] else (lambda x: x)
    for layer, h in enumerate(hf_run.hidden_states):
        assert _max_diff(cache["resid_pre", layer], shift(h)) < RESID_ATOL
    n_layers = model.cfg.n_layers
    assert _max_diff(cache["resid_post", n_layers - 1], shift(hf_run.final_resid)) < RESID_ATOL

    # ln_final.hook_scale = sqrt(mean(C(r)^2) + eps) (LN) or sqrt(mean(r^2) + eps) (RMS).
    r = hf_run.final_resid if family in RMS_FAMILIES else _center(hf_run.final_resid)
    sigma = (r.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    assert _max_diff(cache["ln_final.hook_scale"], sigma) < 1e-5 * sigma.max().item()


@torch.no_grad()
def test_value_bias_folding(hf_run: HFRun) -> None:
    """TL hook_z = HF merged heads - b_V_eff, with b_V_eff = b_V + beta_1 W_V (LN) / b_V (RMS).

    Holds for rotary models too (values are not rotated); for GQA b_V_eff is repeated per group.
    """
    family = hf_run.family
    raw = tl_model(hf_run.model, family, **NO_PROCESSING_FLAGS)
    model = tl_model(hf_run.model, family)
    _, cache = model.run_with_cache(hf_run.tokens, names_filter=lambda n: n.endswith("hook_z"))
    largest = 0.0
    for layer, block in enumerate(raw.blocks):
        b_v = block.attn.b_V  # for GQA, TL's b_V / W_V properties repeat each kv head per group
        if family not in RMS_FAMILIES:
            b_v = b_v + torch.einsum("d,hdk->hk", block.ln1.b, block.attn.W_V)
        assert b_v.shape == (model.cfg.n_heads, model.cfg.d_head)
        assert _max_diff(cache["z", layer], hf_run.z[layer] - b_v) < RESID_ATOL
        assert torch.count_nonzero(model.blocks[layer].attn.b_V) == 0
        largest = max(largest, b_v.abs().max().item())
    # Non-trivial everywhere except the bias-free families (where folding is a no-op).
    assert (largest > 0.05) == (family not in BIAS_FREE)


@torch.no_grad()
def test_unprocessed_matches_hf_exactly(hf_run: HFRun) -> None:
    """With every processing flag off, TL logits and patterns are HF's own."""
    model = tl_model(hf_run.model, hf_run.family, **NO_PROCESSING_FLAGS)
    logits, cache = model.run_with_cache(
        hf_run.tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert _max_diff(logits, hf_run.logits) < _logit_tol(hf_run.logits)
    for layer, hf_pattern in enumerate(hf_run.attentions):
        assert _max_diff(cache["pattern", layer], hf_pattern) < PATTERN_ATOL


@torch.no_grad()
def test_gpt2_seed_flags_match_hf() -> None:
    """The seed notebook's GPT-2 flags (refactor on) still give centered logits, same patterns."""
    run = _run_hf("gpt2")
    model = tl_model(run.model, "gpt2", **SEED_FLAGS)
    logits, cache = model.run_with_cache(run.tokens)
    assert _max_diff(logits, _center(run.logits)) < _logit_tol(_center(run.logits))
    for layer, hf_pattern in enumerate(run.attentions):
        assert _max_diff(cache["pattern", layer], hf_pattern) < PATTERN_ATOL


@pytest.mark.parametrize("family", sorted(RMS_FAMILIES))
def test_center_writing_weights_is_noop_for_rms(family: str) -> None:
    """Why tl_default_flags reports center_writing_weights=False for RMSNorm families."""
    hf = make_hf_model(family)
    off = tl_model(hf, family, center_writing_weights=False).state_dict()
    on = tl_model(hf, family, center_writing_weights=True).state_dict()
    assert off.keys() == on.keys()
    assert all(torch.equal(off[k], on[k]) for k in off)


def test_default_flags_follow_from_pretrained() -> None:
    from transformer_lens import HookedTransformer

    params = inspect.signature(HookedTransformer.from_pretrained).parameters
    for family in FAMILIES:
        for name, value in tl_default_flags(family).items():
            if name == "center_writing_weights" and family in RMS_FAMILIES:
                assert value is False
            elif name == "center_unembed" and family in SOFTCAP_FAMILIES:
                assert value is False  # from_pretrained's softcap override
            elif name in ("fold_ln", "center_writing_weights") and family in POST_NORM_FAMILIES:
                assert value is False  # from_pretrained's post-norm override
            else:
                assert value is params[name].default, (family, name)
    assert SEED_FLAGS["refactor_factored_attn_matrices"] is True


def test_tl_config_facts() -> None:
    """The family config choices that matter reached TL's config."""
    facts: dict[str, dict[str, Any]] = {
        "gpt2": {"default_prepend_bos": True, "act_fn": "gelu_new", "n_ctx": 64},
        "gpt_neo": {"default_prepend_bos": True, "use_attn_scale": False, "use_local_attn": True,
                    "attn_types": ["global", "local"], "window_size": 8},
        "gptj": {"default_prepend_bos": True, "parallel_attn_mlp": True, "rotary_dim": 4,
                 "rotary_adjacent_pairs": True, "positional_embedding_type": "rotary", "act_fn": "gelu_new",
                 "normalization_type": "LNPre"},
        "gpt_neox": {"default_prepend_bos": False, "parallel_attn_mlp": True, "rotary_dim": 4,
                     "positional_embedding_type": "rotary", "act_fn": "gelu"},
        "llama": {"default_prepend_bos": True, "n_key_value_heads": 2, "rotary_base": 500000.0,
                  "final_rms": True, "gated_mlp": True, "normalization_type": "RMSPre"},
        "mistral": {"default_prepend_bos": True, "n_key_value_heads": 2, "rotary_base": 1e6,
                    "use_local_attn": True, "window_size": 8, "normalization_type": "RMSPre"},
        "qwen2": {"default_prepend_bos": False, "n_key_value_heads": 2, "rotary_base": 1e6,
                  "eps": 1e-6, "rotary_adjacent_pairs": False, "normalization_type": "RMSPre"},
        "mixtral": {"default_prepend_bos": True, "n_key_value_heads": 2, "num_experts": 4,
                    "experts_per_token": 2, "norm_topk_prob": True, "use_local_attn": True,
                    "window_size": 8, "dtype": torch.float32, "normalization_type": "RMSPre"},
        "qwen3": {"default_prepend_bos": False, "n_key_value_heads": 2, "d_head": 32, "rotary_dim": 32,
                  "rotary_base": 1e6, "use_qk_norm": True, "eps": 1e-6, "normalization_type": "RMSPre"},
        "phi3": {"default_prepend_bos": True, "n_key_value_heads": 2, "d_head": 16, "rotary_dim": 16,
                 "use_local_attn": True, "attn_types": ["local", "local"], "window_size": 8,
                 "gated_mlp": True, "normalization_type": "RMSPre"},
        # Routed through allenai/OLMo-2-0425-1B's config; post-norm: fold_ln is forced off.
        "olmo2": {"default_prepend_bos": True, "n_key_value_heads": None, "d_head": 16, "rotary_dim": 16,
                  "rotary_base": 500000.0, "normalization_type": "RMS", "gated_mlp": True,
                  "original_architecture": "Olmo2ForCausalLM", "d_vocab": 50257, "n_layers": 2},
        # Routed through google/gemma-2b's config with the random model's sizes.
        "gemma": {"default_prepend_bos": True, "n_key_value_heads": 1, "d_head": 32, "n_heads": 4,
                  "d_model": 64, "rotary_dim": 32, "rotary_base": 10000.0, "act_fn": "gelu_pytorch_tanh",
                  "use_normalization_before_and_after": False, "use_qk_norm": False,
                  "normalization_type": "RMSPre", "final_rms": True, "gated_mlp": True},
        # Routed through google/gemma-2-2b's config with the random model's sizes.
        "gemma2": {"default_prepend_bos": True, "n_key_value_heads": 2, "d_head": 32, "attn_scale": 48**0.5,
                   "attn_types": ["local", "global"], "window_size": 8, "use_local_attn": True,
                   "attn_scores_soft_cap": 3.0, "output_logits_soft_cap": 8.0, "use_qk_norm": False,
                   "use_normalization_before_and_after": True, "normalization_type": "RMSPre",
                   "rotary_base": 10000.0, "rotary_base_local": None},
        # Routed through google/gemma-3-270m's config with the random model's sizes.
        "gemma3": {"default_prepend_bos": True, "n_key_value_heads": 1, "d_head": 32, "n_heads": 4,
                   "d_model": 64, "n_layers": 2, "d_vocab": 50257, "attn_scale": 48**0.5,
                   "rotary_base": 1e6, "rotary_base_local": 10000.0, "use_local_attn": True,
                   "attn_types": ["local", "global"], "window_size": 8, "use_qk_norm": True,
                   "use_normalization_before_and_after": True, "normalization_type": "RMSPre",
                   "act_fn": "gelu_pytorch_tanh", "eps": 1e-6, "output_logits_soft_cap": -1.0},
    }
    for family, expected in facts.items():
        cfg = tl_config(make_hf_model(family), family)
        for name, value in expected.items():
            assert getattr(cfg, name) == value, (family, name, getattr(cfg, name))


@pytest.mark.parametrize("family", ["gpt_neo", "mistral", "mixtral", "phi3", "gemma2", "gemma3"])
def test_local_attention_is_exercised(family: str) -> None:
    """Local/sliding-window layers mask keys older than the window at SEQ > window."""
    run = _run_hf(family)
    window = 8
    local_layers = {"gpt_neo": [1], "mistral": [0, 1], "mixtral": [0, 1], "phi3": [0, 1], "gemma2": [0], "gemma3": [0]}[family]
    for layer in local_layers:
        pattern = run.attentions[layer]
        assert pattern[..., SEQ - 1, : SEQ - window].abs().max() == 0
        assert pattern[..., SEQ - 1, SEQ - window:].min() > 0
    if family in ("gpt_neo", "gemma2", "gemma3"):  # the other layer is global
        assert run.attentions[1 - local_layers[0]][..., SEQ - 1, 0].min() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_nontrivial_and_deterministic(family: str) -> None:
    model = make_hf_model(family, seed=3)
    again = make_hf_model(family, seed=3)
    other = make_hf_model(family, seed=4)
    assert model.config._attn_implementation == "eager"
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    sd, sd_again, sd_other = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd_again[k]) for k in sd)
    assert not torch.equal(sd[next(iter(sd))], sd_other[next(iter(sd_other))])
    n_biases = 0
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            n_biases += 1
            assert param.std() > 0.1, name
        elif "norm" in name or ".ln_" in name:  # as applied: Gemma's norms multiply by 1 + weight
            assert (param + NORM_WEIGHT_OFFSET.get(family, 0.0) - 1).abs().mean() > 0.1, name
            assert (param + NORM_WEIGHT_OFFSET.get(family, 0.0)).abs().mean() > 0.5, name
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (family in TIED)
    assert (n_biases == 0) == (family in BIAS_FREE)


PLAIN_TEXT = "When John and Mary went to the shops, John gave the bag to"
TRICKY_TEXT = "It's 2023!!  naïve café\n\nx 12345"


@pytest.mark.parametrize("family", FAMILIES)
def test_save_checkpoint_roundtrip(family: str, tmp_path: Path) -> None:
    model = make_hf_model(family)
    path = save_checkpoint(model, tmp_path / family)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    reference = gpt2_tokenizer()
    assert tokenizer(PLAIN_TEXT)["input_ids"] == [
        2215, 1757, 290, 5335, 1816, 284, 262, 12437, 11, 1757, 2921, 262, 6131, 284]
    assert tokenizer.bos_token_id == BOS_ID and len(tokenizer) == 50257
    # transformers 5 swaps in Qwen2Tokenizer (Qwen's pre-tokenizer regex) for qwen2 checkpoints.
    same = tokenizer(TRICKY_TEXT)["input_ids"] == reference(TRICKY_TEXT)["input_ids"]
    assert same == (family != "qwen2")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    tokens = _tokens(seed=5)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(tokens).logits, model(tokens).logits)
    # TL can share the checkpoint's tokenizer; to_tokens prepends BOS per its default_prepend_bos.
    tl = tl_model(model, family, tokenizer=tokenizer)
    ids = tokenizer(TRICKY_TEXT)["input_ids"]
    expected = [BOS_ID] + ids if tl.cfg.default_prepend_bos else ids
    assert tl.to_tokens(TRICKY_TEXT)[0].tolist() == expected


@pytest.mark.slow
@torch.no_grad()
def test_gpt2_small_shape_matches_hf() -> None:
    """GPT-2-small-shaped random model, from_pretrained-default flags.

    (SEED_FLAGS also match, max diff 1.9e-4 at |logit| 88, but TL's SVD refactor of 12x12 heads
    costs 8-30 s on 2 CPU cores; refactor is covered by test_gpt2_seed_flags_match_hf.)
    """
    model = make_hf_model("gpt2", size="small", n_ctx=128)
    tokens = _tokens(seed=6)
    hf_logits = model(tokens).logits
    tl_logits = tl_model(model, "gpt2")(tokens)
    assert _max_diff(tl_logits, _center(hf_logits)) < _logit_tol(_center(hf_logits))


# The released models' HF configs (the values that reach TL), to check the official-name route.
RELEASED_CONFIGS: dict[str, tuple[str, Any]] = {
    "gemma": ("google/gemma-2b", lambda: transformers.GemmaConfig(
        hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, vocab_size=256000, max_position_embeddings=8192,
        rms_norm_eps=1e-6, hidden_act="gelu")),
    "gemma2": ("google/gemma-2-2b", lambda: transformers.Gemma2Config(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000, max_position_embeddings=8192,
        rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=4096,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0)),
    "gemma3": ("google/gemma-3-270m", lambda: transformers.Gemma3TextConfig(
        hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, vocab_size=262144, max_position_embeddings=32768,
        rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=512)),
    "olmo2": ("allenai/OLMo-2-0425-1B", lambda: transformers.Olmo2Config(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=100352, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
}


@pytest.mark.parametrize("family", sorted(RELEASED_CONFIGS))
def test_official_name_route_gives_tl_its_own_config_for_the_released_model(family: str) -> None:
    """On a released model's config, routing through the official name with the model's sizes
    (tl_config) gives exactly the config TL builds for that name itself, every field: the route
    changes nothing but sizes. The one exception is documented: TL's Gemma 1 configs say exact
    "gelu" where transformers computes the tanh approximation, and the route keeps the model's."""
    from unittest import mock

    from transformer_lens import loading_from_pretrained as loading

    official, make_config = RELEASED_CONFIGS[family]
    config = make_config()
    config.architectures = [ARCHITECTURES[family]]
    fold_ln = tl_default_flags(family)["fold_ln"]
    routed = tl_config(type("Model", (), {"config": config})(), family, fold_ln=fold_ln)

    class Hub:  # what AutoConfig would fetch for the name (OLMo-2's branch reads it)
        @staticmethod
        def from_pretrained(name: str, **kwargs: Any) -> transformers.PretrainedConfig:
            assert name == official
            return config

    with mock.patch.object(loading, "AutoConfig", Hub):
        own = loading.get_pretrained_model_config(official, fold_ln=fold_ln, device="cpu", dtype=torch.float32)
    expected = {"act_fn": ("gelu_pytorch_tanh", "gelu")} if family == "gemma" else {}
    ignore = {"model_name", "tokenizer_name"}  # set to the test's own tokenizer by tl_config
    differ = {k: (v, own.__dict__[k]) for k, v in routed.__dict__.items() if k not in ignore and v != own.__dict__[k]}
    assert differ == expected
