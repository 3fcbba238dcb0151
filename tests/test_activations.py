"""``activations`` and ``intervene`` (logitscope.methods.hooks) against TransformerLens 3.9.

The oracle is the TransformerLens twin of each random-weight model built without weight processing
(``NO_PROCESSING_FLAGS``, i.e. ``from_pretrained_no_processing``): logitscope reads the Hugging Face
model as it is, and TransformerLens's processing centres the residual stream and moves the value
bias out of hook_z / hook_v (logitscope.models.names). TransformerLens runs each prompt alone, so
the right padding of logitscope's batches (batch_size=2, prompts of different lengths) is tested too.

Tolerances: activations are float32 computed in a different order (einsum vs. the Hugging Face
modules); the largest difference measured on these weights is 1.5e-6 of the activation's largest
magnitude (Qwen3), so 1e-5 of it is asserted. Logit differences (values up to ~10) use 1e-4, as the
patching tests do.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitscope import stats
from logitscope.engine.patched import Engine
from logitscope.errors import ArgumentError, InputError
from logitscope.inputs.encode import encode_prompts
from logitscope.inputs.prompt import Prompt
from logitscope.methods.hooks import activations, intervene
from logitscope.models.load import wrap_model
from logitscope.models.names import suffixes
from oracle import FAMILIES, NO_PROCESSING_FLAGS, gpt2_tokenizer, make_hf_model, tl_model

REL = 1e-5
ATOL = 1e-4
PROMPTS = [
    Prompt("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    Prompt("The cat sat on the", " mat", " dog"),
    Prompt("Alice and Bob talked; then Bob thanked", " Alice", " Bob"),
    Prompt("I went to", " Paris", " London"),
    Prompt("One, two, three, four,", " five", " six"),
]
TEXTS = [p.text for p in PROMPTS]


@pytest.fixture(scope="module")
def models():
    made = {}

    def get(family):
        if family not in made:
            hf = make_hf_model(family, size="tiny", seed=3, n_ctx=64)
            made[family] = (hf, tl_model(hf, family, **NO_PROCESSING_FLAGS), wrap_model(hf, gpt2_tokenizer()))
        return made[family]

    return get


def every_name(lm) -> list[str]:
    points = Engine(lm).points
    return [f"blocks.{layer}.{s}" for layer in range(points.n_layers) for s in suffixes(points)]


def tl_tokens(tl, text):
    return tl.to_tokens(text, prepend_bos=tl.cfg.default_prepend_bos)


def close(ours, ref, what):
    scale = max(1.0, ref.abs().max().item())
    assert ours.shape == ref.shape, f"{what}: {tuple(ours.shape)} vs TransformerLens's {tuple(ref.shape)}"
    err = (ours - ref).abs().max().item() / scale
    assert err <= REL, f"{what}: {err:.2e} of its largest value"


# ---------------------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("family", FAMILIES)
def test_every_supported_name_equals_run_with_cache(family, models):
    """Every supported name of both layers, every position, each prompt; 0 past each prompt's end.
    GPT-2 (fused q/k/v), Llama (grouped-query: k/v have 2 heads, q/z 4) and every other family."""
    _, tl, lm = models(family)
    names = every_name(lm)
    got = activations(lm, TEXTS, names, positions="all", batch_size=2)
    T = int(got.lengths.max())
    assert list(got) == names and got.positions == "all"
    for i, text in enumerate(TEXTS):
        toks = tl_tokens(tl, text)
        n = toks.shape[1]
        assert got.lengths[i] == n
        with torch.no_grad():
            _, cache = tl.run_with_cache(toks)
        for name in names:
            ours = got[name][i]
            if name.endswith("hook_pattern"):
                close(ours[:, :n, :n], cache[name][0], f"{name} prompt {i}")
                assert not ours[:, n:].any() and not ours[:, :, n:].any()
                assert ours.shape[1:] == (T, T)
            else:
                close(ours[:n], cache[name][0], f"{name} prompt {i}")
                assert not ours[n:].any() and ours.shape[0] == T


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_default_keeps_only_the_answer_position(family, models):
    """positions='answer' (the default): TransformerLens's shapes without the (query) position axis,
    each prompt's last token, so what is kept does not grow with the prompts' length."""
    _, tl, lm = models(family)
    names = ["blocks.1.attn.hook_z", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_v"]
    short = activations(lm, TEXTS, names, batch_size=2)
    full = activations(lm, TEXTS, names, positions="all", batch_size=2)
    n, T = len(TEXTS), int(short.lengths.max())
    H, kv = lm.shape.n_heads, Engine(lm).points.n_kv_heads
    assert kv == (2 if family == "llama" else 4)
    assert short["blocks.1.attn.hook_z"].shape == (n, H, lm.shape.d_head)
    assert short["blocks.0.hook_resid_pre"].shape == (n, lm.shape.d_model)
    assert short["blocks.1.attn.hook_pattern"].shape == (n, H, T)
    assert short["blocks.0.attn.hook_v"].shape == (n, kv, lm.shape.d_head)
    end = torch.as_tensor(short.lengths - 1)
    rows = torch.arange(n)
    for name in names:
        want = full[name][rows, :, end] if name.endswith("hook_pattern") else full[name][rows, end]
        torch.testing.assert_close(short[name], want, rtol=0, atol=0)
    with torch.no_grad():  # and directly against TransformerLens, for one prompt
        _, cache = tl.run_with_cache(tl_tokens(tl, TEXTS[0]))
    close(short["blocks.1.attn.hook_z"][0], cache["blocks.1.attn.hook_z"][0, -1], "hook_z at the answer")
    # Five times longer prompts: the same bytes kept for resid_pre.
    longer = activations(lm, [t * 5 for t in TEXTS[1:]], ["blocks.0.hook_resid_pre"], batch_size=2)
    assert longer["blocks.0.hook_resid_pre"].shape == (n - 1, lm.shape.d_model)


def test_keeping_every_position_is_bounded(models):
    _, _, lm = models("gpt2")
    names = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
    n, T = len(TEXTS), 15  # GPT-2 tokens of the longest prompt, with BOS
    need = n * (4 * T * T + T * 64) * 4  # float32: pattern [n, H, T, T] and resid [n, T, d_model]
    with pytest.raises(ArgumentError, match=r"max_bytes=1000: keeping 2 activation\(s\) at 'all' positions"):
        activations(lm, TEXTS, names, positions="all", max_bytes=1000)
    got = activations(lm, TEXTS, names, positions="all", max_bytes=need)
    assert sum(t.numel() * t.element_size() for t in got.values()) == need
    with pytest.raises(ArgumentError, match="max_bytes"):
        activations(lm, TEXTS, names, positions="all", max_bytes=need - 1)
    with pytest.raises(ArgumentError, match="positions='every': use one of 'answer', 'all'"):
        activations(lm, TEXTS, names, positions="every")


def test_prompts_as_prompts_strings_or_an_encoded_set_give_the_same(models):
    _, _, lm = models("llama")
    names = ["blocks.1.attn.hook_rot_k", "blocks.1.hook_mlp_out"]
    a = activations(lm, TEXTS, names, batch_size=3)
    b = activations(lm, PROMPTS, names, batch_size=3)
    c = activations(lm, encode_prompts(PROMPTS, lm, prepend_bos=True), names, batch_size=3)
    for name in names:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
        torch.testing.assert_close(a[name], c[name], rtol=0, atol=0)
    with pytest.raises(ArgumentError, match="already encoded"):
        activations(lm, encode_prompts(PROMPTS, lm), names, prepend_bos=False)
    with pytest.raises(ArgumentError, match="prompts='seed': give a non-empty list"):
        activations(lm, "seed", names)
    with pytest.raises(ArgumentError, match="all Prompt objects or all strings"):
        activations(lm, [PROMPTS[0], "text"], names)


# ---------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("family, name, message", [
    ("llama", "blocks.0.attn.hook_q", r"read after the rotary embedding: use blocks.0.attn.hook_rot_q"),
    ("gpt2", "blocks.0.attn.hook_rot_k", r"before any rotary embedding: use blocks.0.attn.hook_k"),
    ("gpt2", "blocks.2.hook_resid_pre", r"this model has layers 0-1"),
    ("gpt2", "hook_embed", r"not a per-layer TransformerLens hook name"),
    ("gpt2", "ln_final.hook_normalized", r"not a per-layer TransformerLens hook name"),
    ("gpt2", "blocks.0.attn.hook_attn_scores", r"no hook point that reads it"),
    ("gptj", "blocks.0.hook_resid_mid", r"gptj runs attention and MLP in parallel"),
    ("gpt2", "blocks.0.attn.hook_Z", r"no hook point that reads it"),
])
def test_bad_names_are_clear_errors_that_list_the_supported_ones(family, name, message, models):
    _, _, lm = models(family)
    for call in (lambda: activations(lm, TEXTS, [name]), lambda: intervene(lm, PROMPTS, {name: lambda x, h: None})):
        with pytest.raises(InputError, match=message) as err:
            call()
        text = str(err.value)
        assert text.startswith(f"hook name {name!r}: ")
        assert "supported names (L = 0-1): blocks.{L}.hook_resid_pre" in text
        assert ("blocks.{L}.attn.hook_rot_q" in text) == (family != "gpt2")


def test_supported_names_per_family(models):
    want = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z",
            "attn.hook_v", "attn.hook_pattern"}
    qk, rot = {"attn.hook_q", "attn.hook_k"}, {"attn.hook_rot_q", "attn.hook_rot_k"}
    assert set(suffixes(Engine(models("gpt2")[2]).points)) == want | qk
    assert set(suffixes(Engine(models("llama")[2]).points)) == want | rot
    assert set(suffixes(Engine(models("olmo2")[2]).points)) == want | qk  # q/k before its joint q/k norm
    assert set(suffixes(Engine(models("gptj")[2]).points)) == (want - {"hook_resid_mid"}) | rot


# ---------------------------------------------------------------------------------------------- intervene
def tl_logit_diff(tl, prompt, fwd_hooks=()):
    c, i = tl.to_single_token(prompt.correct), tl.to_single_token(prompt.incorrect)
    with torch.no_grad():
        logits = tl.run_with_hooks(tl_tokens(tl, prompt.text), fwd_hooks=list(fwd_hooks))
    return float(logits[0, -1, c] - logits[0, -1, i])


def zero_head(head):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    return hook


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_zero_ablating_a_heads_z_equals_run_with_hooks(family, models):
    """Gemma 2: the default metric's soft-capped logits, as TransformerLens caps them."""
    _, tl, lm = models(family)
    got = intervene(lm, PROMPTS, {"blocks.1.attn.hook_z": zero_head(2)}, batch_size=2)
    want = [tl_logit_diff(tl, p, [("blocks.1.attn.hook_z", zero_head(2))]) for p in PROMPTS]
    clean = [tl_logit_diff(tl, p) for p in PROMPTS]
    np.testing.assert_allclose(got.hooked, want, atol=ATOL)
    np.testing.assert_allclose(got.clean, clean, atol=ATOL)
    assert np.abs(got.effect).max() > 1e-2  # the head matters on these weights: the test can fail
    assert got.metric == "logit_diff" and got.hooks == ("blocks.1.attn.hook_z",)
    for key, values in (("hooked", got.hooked), ("clean", got.clean), ("effect", got.effect)):
        assert got.means[key] == pytest.approx(values.mean())
        low, high = stats.bootstrap_ci(values, seed=0)
        assert got.ci95[key] == (pytest.approx(low), pytest.approx(high)) and low <= values.mean() <= high


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adding_a_vector_to_resid_pre_equals_run_with_hooks(family, models):
    """Everywhere, and (through hook.batch.end) at the answer position only; in place or returned."""
    _, tl, lm = models(family)
    v = torch.randn(lm.shape.d_model, generator=torch.Generator().manual_seed(0))

    def add(resid, hook):
        return resid + v

    def add_at_answer(resid, hook):  # in place, returning None, as TransformerLens allows
        resid[torch.arange(resid.shape[0]), hook.batch.end] += v

    def tl_add_at_answer(resid, hook):
        resid[:, -1] += v

    got = intervene(lm, PROMPTS, {"blocks.1.hook_resid_pre": add}, batch_size=2)
    want = [tl_logit_diff(tl, p, [("blocks.1.hook_resid_pre", add)]) for p in PROMPTS]
    np.testing.assert_allclose(got.hooked, want, atol=ATOL)
    assert np.abs(got.effect).max() > 1e-2
    at = intervene(lm, PROMPTS, [("blocks.0.hook_resid_pre", add_at_answer)], batch_size=2)
    want = [tl_logit_diff(tl, p, [("blocks.0.hook_resid_pre", tl_add_at_answer)]) for p in PROMPTS]
    np.testing.assert_allclose(at.hooked, want, atol=ATOL)
    assert np.abs(at.effect).max() > 1e-2


def test_several_hooks_and_a_metric_of_ones_own(models):
    """Two functions on one name (in order) and one on another; the metric is the correct answer's
    log-probability, from the logits TransformerLens returns."""
    _, tl, lm = models("llama")
    scale = lambda x, hook: x * (0.5 + hook.layer())  # noqa: E731  (TransformerLens's HookPoint.layer())
    shift = lambda x, hook: x + 1.0  # noqa: E731
    hooks = [("blocks.0.hook_attn_out", scale), ("blocks.1.attn.hook_v", zero_head(1)),
             ("blocks.0.hook_attn_out", shift)]

    def log_prob(logits, batch):
        return torch.log_softmax(logits, -1)[torch.arange(logits.shape[0]), batch.correct]

    got = intervene(lm, PROMPTS, hooks, metric=log_prob, batch_size=2)
    want = []
    for p in PROMPTS:
        with torch.no_grad():
            logits = tl.run_with_hooks(tl_tokens(tl, p.text), fwd_hooks=hooks)
        want.append(float(torch.log_softmax(logits[0, -1], -1)[tl.to_single_token(p.correct)]))
    np.testing.assert_allclose(got.hooked, want, atol=ATOL)
    assert got.metric == "log_prob" and got.hooks == ("blocks.0.hook_attn_out", "blocks.1.attn.hook_v")
    with pytest.raises(InputError, match=r"metric 'bad' returned shape \(\); it must return one number per prompt"):
        intervene(lm, PROMPTS, hooks, metric=_named("bad", lambda logits, batch: logits.sum()))
    with pytest.raises(ArgumentError, match="plain strings have no answers"):
        intervene(lm, TEXTS, hooks)
    texts = intervene(lm, TEXTS, hooks, metric=lambda logits, batch: logits[:, 0], batch_size=2)
    assert texts.hooked.shape == (len(TEXTS),) and np.isfinite(texts.hooked).all()


def _named(name, fn):
    fn.__name__ = name
    return fn


# ---------------------------------------------------------------------------------------------- the model
def _state(hf):
    def own(d):  # transformers' own output-capturing hooks aside (installed for output_attentions)
        return [h for h in d.values() if "output_capuring_hook" not in getattr(h, "__qualname__", "")]

    hooks = {name: (own(m._forward_hooks), own(m._forward_pre_hooks)) for name, m in hf.named_modules()}
    return hooks, hf.config._attn_implementation, [m.training for m in hf.modules()]


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_the_model_is_left_as_it_was_even_when_a_hook_fails(family, models):
    hf, _, lm = models(family)
    hf.train()  # a user's model in training mode stays in it
    try:
        before = _state(hf)
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            hf.eval()
            out = hf(ids).logits
            hf.train()

        def boom(x, hook):
            raise RuntimeError("boom")

        names = ["blocks.1.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.1.hook_resid_mid"]
        activations(lm, TEXTS, names, positions="all")
        assert _state(hf) == before
        intervene(lm, PROMPTS, {n: (lambda x, hook: x * 0.9) for n in names})
        assert _state(hf) == before
        with pytest.raises(RuntimeError, match="boom"):
            intervene(lm, PROMPTS, {"blocks.0.attn.hook_v": lambda x, h: None, "blocks.1.attn.hook_pattern": boom})
        assert _state(hf) == before
        with pytest.raises(InputError, match=r"hook 'blocks.0.attn.hook_z': the function returned \(2, 3\)"):
            intervene(lm, PROMPTS, {"blocks.0.attn.hook_z": lambda x, h: torch.zeros(2, 3)})
        assert _state(hf) == before
        with torch.no_grad():
            hf.eval()
            torch.testing.assert_close(hf(ids).logits, out, rtol=0, atol=0)
    finally:
        hf.eval()
