"""The one module resolver (logitscope.models.modules): for every tiny family the suite builds, each
answer is the very module object (``is``) the engine, the hook points and the edge runs used before
they shared it, written out here as its path in the Hugging Face module tree (checked against the
edge runner's old family-string helpers before they were deleted). The same objects mean the same
hooks and the same numbers, bit for bit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import oracle
from logitscope.models.adapters import kv_heads_in_config
from logitscope.models.load import wrap_model
from logitscope.models.modules import Modules

SRC = Path(__file__).resolve().parents[1] / "src" / "logitscope"


def _llama_tree(**changes) -> dict:
    at = "model.layers.{L}."
    tree = {
        "embed": "model.embed_tokens", "pos_embed": None, "final_norm": "model.norm", "unembed": "lm_head",
        "attention": at + "self_attn", "attn_norm": at + "input_layernorm",
        "qkv": [(at + f"self_attn.{x}_proj", x) for x in "qkv"],
        "out_proj": at + "self_attn.o_proj", "attn_post_norm": None, "attn_out": at + "self_attn.o_proj",
        "mlp": at + "mlp", "mlp_input": (at + "post_attention_layernorm", None), "mlp_post_norm": None,
        "mlp_out": at + "mlp", "experts": None,
        "n_kv_heads": 4, "softcap": None, "key_norm_over_heads": None, "parallel": False,
    }
    return {**tree, **changes}


def _gpt2_tree(**changes) -> dict:
    at = "transformer.h.{L}."
    tree = _llama_tree(
        embed="transformer.wte", pos_embed="transformer.wpe", final_norm="transformer.ln_f",
        attention=at + "attn", attn_norm=at + "ln_1", qkv=[(at + "attn.c_attn", "qkv")],
        out_proj=at + "attn.c_proj", attn_out=at + "attn.c_proj",
        mlp=at + "mlp", mlp_input=(at + "ln_2", None), mlp_out=at + "mlp",
    )
    return {**tree, **changes}


_L = "model.layers.{L}."
_NEO, _J, _X = "transformer.h.{L}.attn.attention.", "transformer.h.{L}.", "gpt_neox.layers.{L}."
_GEMMA2 = dict(attn_post_norm=_L + "post_attention_layernorm", attn_out=_L + "post_attention_layernorm",
               mlp_input=(_L + "pre_feedforward_layernorm", None), mlp_post_norm=_L + "post_feedforward_layernorm",
               mlp_out=_L + "post_feedforward_layernorm", n_kv_heads=2)

EXPECTED: dict[str, dict] = {
    "gpt2": _gpt2_tree(),
    "gpt_neo": _gpt2_tree(attention=_NEO[:-1], qkv=[(_NEO + f"{x}_proj", x) for x in "qkv"],
                          out_proj=_NEO + "out_proj", attn_out=_NEO + "out_proj"),
    "gptj": _gpt2_tree(pos_embed=None, qkv=[(_J + f"attn.{x}_proj", x) for x in "qkv"], out_proj=_J + "attn.out_proj",
                       attn_out=_J + "attn.out_proj", mlp_input=(_J + "mlp", _J + "ln_1"), parallel=True),
    "gpt_neox": _llama_tree(
        embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm", attention=_X + "attention",
        attn_norm=_X + "input_layernorm", qkv=[(_X + "attention.query_key_value", "qkv")],
        out_proj=_X + "attention.dense", attn_out=_X + "attention.dense", mlp=_X + "mlp",
        mlp_input=(_X + "post_attention_layernorm", None), mlp_out=_X + "mlp", parallel=True),
    "llama": _llama_tree(n_kv_heads=2),
    "mistral": _llama_tree(n_kv_heads=2),
    "mixtral": _llama_tree(n_kv_heads=2, experts=_L + "mlp.experts"),
    "qwen2": _llama_tree(n_kv_heads=2),
    "qwen3": _llama_tree(n_kv_heads=2),
    "phi3": _llama_tree(n_kv_heads=2, qkv=[(_L + "self_attn.qkv_proj", "qkv")]),
    "olmo2": _llama_tree(attn_norm=None, attn_post_norm=_L + "post_attention_layernorm",
                         attn_out=_L + "post_attention_layernorm", mlp_input=(_L + "mlp", None),
                         mlp_post_norm=_L + "post_feedforward_layernorm", mlp_out=_L + "post_feedforward_layernorm",
                         key_norm_over_heads="k_norm"),
    "gemma": _llama_tree(n_kv_heads=1),
    "gemma2": _llama_tree(**_GEMMA2, softcap=8.0),
    "gemma3": _llama_tree(**{**_GEMMA2, "n_kv_heads": 1}),
}
LAYER_ANSWERS = ("attention", "attn_norm", "out_proj", "attn_post_norm", "attn_out", "mlp", "mlp_post_norm",
                 "mlp_out", "experts")
MODEL_ANSWERS = ("embed", "pos_embed", "final_norm", "unembed")
VALUES = ("n_kv_heads", "softcap", "key_norm_over_heads", "parallel")

_LOADED: dict = {}


def _loaded(family: str):
    if family not in _LOADED:
        _LOADED[family] = wrap_model(oracle.make_hf_model(family, vocab_size=100), oracle.gpt2_tokenizer())
    return _LOADED[family]


def _at(model: torch.nn.Module, path: str | None, layer: int) -> torch.nn.Module | None:
    return None if path is None else model.get_submodule(path.format(L=layer))


def test_every_family_the_oracle_builds_is_covered():
    assert sorted(EXPECTED) == sorted(oracle.ARCHITECTURES)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_the_resolver_returns_the_very_modules(family):
    lm = _loaded(family)
    model, want, m = lm.model, EXPECTED[family], Modules.of(lm)
    assert m.blocks == list(lm.adapter.blocks(model)) and m.n_layers == 2
    for name in MODEL_ANSWERS:
        assert getattr(m, name) is _at(model, want[name], 0), name
    for name in VALUES:
        assert getattr(m, name) == want[name], name
    for layer in range(m.n_layers):
        for name in LAYER_ANSWERS:
            assert getattr(m, name)(layer) is _at(model, want[name], layer), (name, layer)
        module, shared = m.mlp_input(layer)
        assert module is _at(model, want["mlp_input"][0], layer) and shared is _at(model, want["mlp_input"][1], layer)
        got = [(p.module, p.letters) for p in m.qkv(layer)]
        assert got == [(_at(model, path, layer), letters) for path, letters in want["qkv"]]
        assert all(a is b for (a, _), (b, _) in zip(got, [(_at(model, p, layer), x) for p, x in want["qkv"]]))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "phi3", "llama", "gptj"])
def test_each_head_s_qkv_weights_give_the_projection_s_output(family):
    """Per head, ``x W_hᵀ + b_h`` equals that head's slice of the projection's output (an independent
    matmul, float32: 1e-5), and splitting then joining the output gives it back exactly."""
    lm = _loaded(family)
    m = Modules.of(lm)
    torch.manual_seed(0)
    x = torch.randn(2, 3, m.d_model)
    for proj in m.qkv(1):
        with torch.no_grad():
            out = proj.module(x)
            parts = proj.split(out)
            assert torch.equal(proj.join(parts), out)
            for letter, part in zip(proj.letters, parts):
                w, b = proj.weights(letter)
                mine = torch.einsum("bpd,hed->bphe", x, w) + (0 if b is None else b)
                assert part.shape == mine.shape
                torch.testing.assert_close(part, mine, atol=1e-5, rtol=0)
                heads = m.n_heads if letter == "q" else m.n_kv_heads
                assert part.shape[2] == heads


def test_key_value_heads_are_read_from_any_config_name():
    """One answer for the number of key/value heads (the hook points and the edge runs disagreed
    on ChatGLM's ``multi_query_group_num``)."""
    class Cfg:
        pass

    cfg = Cfg()
    assert kv_heads_in_config(cfg) is None
    for attr in ("num_key_value_heads", "n_kv_heads", "multi_query_group_num"):
        one = Cfg()
        setattr(one, attr, 3)
        assert kv_heads_in_config(one) == 3


_FAMILY_NAMES = "|".join(re.escape(f) for f in EXPECTED)


def test_no_family_switch_outside_models():
    """Families answer through their adapter: engine/ and methods/ never compare a family's name."""
    named = rf"[\"']({_FAMILY_NAMES})[\"']"
    pattern = re.compile(rf"family\s*(==|!=|\bin\b)|(==|!=)\s*{named}|\bin\s*[(\[{{]\s*{named}")
    hits = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
            for folder in ("engine", "methods") for p in sorted((SRC / folder).rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)

