"""The patched-run engine's savings change no number.

The last block of a patched run runs its queries, output and MLP on the answer positions only
(``Engine._last_block``). Checked on every family against two oracles: the unpatched forward pass
itself (a run that patches nothing must give its logit difference) and the same patched run with the
saving turned off (the whole last block, as before). Rows have different lengths (answers at 19, 15
and 12, right-padded), so the answer positions are not one column, and runs start at position 0 and
on a suffix. Tolerance 1e-5: float32 noise on these tiny random models is ~1e-6 (the saving runs the
same matmuls on fewer rows and the attention written out rather than the family's kernel); a
missing key, a wrong mask row or a wrong position gives errors of order 0.1 here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oracle import FAMILIES, gpt2_tokenizer, make_hf_model

from logitscope.engine.patched import Engine
from logitscope.models.load import wrap_model

B, T, START = 3, 20, 5
END = torch.tensor([19, 15, 12])


def _engine(family: str) -> Engine:
    return Engine(wrap_model(make_hf_model(family, size="tiny", seed=3, n_ctx=64), gpt2_tokenizer()))


def _pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 5000, (B, T), generator=g)
    corrupted = torch.randint(0, 5000, (B, T), generator=g)
    corrupted[:, :START] = clean[:, :START]  # equal before START: runs on the suffix START: are exact
    for b, e in enumerate(END.tolist()):
        clean[b, e + 1 :] = corrupted[b, e + 1 :] = 0  # right padding
    return clean, corrupted, torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])


def _replace_heads(src: torch.Tensor, heads: list[int], start: int):
    """Replace head ``heads[g]`` of group ``g``'s rows with ``src`` (positions ``start:``)."""

    def hook(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        for g, h in enumerate(heads):
            z[g * B : (g + 1) * B, :, h] = src[:, start:, h]
        return z

    return hook


def _mlp_positions(engine: Engine) -> tuple[list[int], object]:
    """The positions the last block's MLP receives, call by call."""
    seen: list[int] = []
    mlp = engine.lm.adapter.mlp(engine.blocks[-1])
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-2]))
    return seen, handle


@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_block_on_the_answer_positions_changes_nothing(family, monkeypatch):
    engine = _engine(family)
    clean, corrupted, c, i = _pairs()
    a = engine.record(clean, END, c, i, acts=[("z", 0)])
    base = engine.record(corrupted, END, c, i, keep_kv=True)
    assert np.abs(a.value.numpy() - base.value.numpy()).max() > 1e-2  # the patch has an effect
    z = a.acts[("z", 0)]
    # GPT-Neo's attention is not reached through the AttentionInterface: no suffix runs, and the
    # whole last block runs there.
    neo = family == "gpt_neo"
    starts = (0,) if neo else (0, START)
    assert base.suffix_ok != neo

    def runs() -> dict[tuple[str, int], np.ndarray]:
        out = {}
        for start in starts:
            out[("nothing", start)] = engine.patched(base, 0, groups=2, hooks={}, end=END, correct=c,
                                                     incorrect=i, start=start).numpy()
            out[("heads", start)] = engine.patched(base, 0, groups=2, hooks={("z", 0): _replace_heads(z, [0, 3], start)},
                                                   end=END, correct=c, incorrect=i, start=start).numpy()
        return out

    seen, handle = _mlp_positions(engine)
    try:
        narrowed = runs()
    finally:
        handle.remove()
    assert seen == ([T] * 2 if neo else [T - int(END.min())] * 4), seen
    monkeypatch.setattr(Engine, "_answers_from", lambda self, *args: None)  # the whole last block
    whole = runs()
    for key, value in narrowed.items():
        np.testing.assert_allclose(value, whole[key], atol=1e-5, err_msg=str(key))
    for start in starts:  # patching nothing reproduces the unpatched run
        np.testing.assert_allclose(narrowed[("nothing", start)], base.value.repeat(2).numpy(), atol=1e-5)
    assert np.abs(narrowed[("heads", 0)] - base.value.repeat(2).numpy()).max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_a_hook_on_the_last_block_sees_every_position(family):
    """Where the last block is the patched one, or carries a hook, it runs whole."""
    engine = _engine(family)
    clean, corrupted, c, i = _pairs()
    base = engine.record(corrupted, END, c, i, keep_kv=True)
    seen: list[int] = []
    hooks = {("resid_post", 1): lambda x: seen.append(x.shape[1])}
    engine.patched(base, 0, groups=1, hooks=hooks, end=END, correct=c, incorrect=i, start=START)
    engine.patched(base, 1, groups=1, hooks={("z", 1): lambda z: seen.append(z.shape[1])}, end=END, correct=c,
                   incorrect=i, start=START)
    assert seen == [T - START, T - START]


def test_the_model_is_left_as_it_was():
    """No hook, no swapped module, the attention implementation back, after runs that narrow the
    last block and swap GPT-2's gelu_new for the fused kernel."""
    engine = _engine("gpt2")
    model = engine.lm.model
    before = {name: type(m) for name, m in model.named_modules()}
    impl = model.config._attn_implementation
    clean, corrupted, c, i = _pairs()
    base = engine.record(corrupted, END, c, i, keep_kv=True)
    engine.patched(base, 0, groups=2, hooks={("z", 0): lambda z: z * 0}, end=END, correct=c, incorrect=i, start=START)
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert model.config._attn_implementation == impl
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks), m


@pytest.mark.parametrize("family", FAMILIES)
def test_the_patched_layers_attention_replaced_by_the_base_runs_z_changes_nothing(family, monkeypatch):
    """Where heads' z are replaced at the run's first layer, that layer's attention is not computed
    (its output is the output projection of the base run's z with those heads replaced): equal to
    the run that computes it, at the first layer and at the last, from position 0 and on a suffix.
    Oracle: the same runs with the saving turned off."""
    engine = _engine(family)
    clean, corrupted, c, i = _pairs()
    a = engine.record(clean, END, c, i, acts=[("z", 0), ("z", 1)])
    base = engine.record(corrupted, END, c, i, acts=[("z", 0), ("z", 1)], keep_kv=True)
    neo = family == "gpt_neo"  # outside the AttentionInterface: the layer runs whole
    starts = (0,) if neo else (0, START)
    calls: list[int] = []  # the positions the first layer's output projection receives, call by call
    handle = engine.lm.adapter.out_proj(engine.blocks[0]).register_forward_pre_hook(
        lambda m, args: calls.append(args[0].shape[1]))

    def runs() -> dict[tuple[int, int], np.ndarray]:
        out = {}
        for layer in (0, 1):
            for start in starts:
                hook = _replace_heads(a.acts[("z", layer)], [1, 2], start)
                out[(layer, start)] = engine.patched(base, layer, groups=2, hooks={("z", layer): hook}, end=END,
                                                     correct=c, incorrect=i, start=start).numpy()
        return out

    try:
        skipped = runs()
        n_skipped = list(calls)
        calls.clear()
        monkeypatch.setattr(Engine, "_z_only", lambda self, *args: None)  # the attention computed
        whole = runs()
    finally:
        handle.remove()
    for key, value in skipped.items():
        np.testing.assert_allclose(value, whole[key], atol=1e-5, err_msg=str(key))
        assert np.abs(value - base.value.repeat(2).numpy()).max() > 1e-3, key  # the patch has an effect
    assert n_skipped == ([T] if neo else [T, 1, T - START, 1]), n_skipped  # the projection of z, then the module's, on one position
    assert calls == ([T] if neo else [T, T - START])
