"""The one engine's modes and lifecycle (engine/core.py): what each mode runs and leaves.

Numbers are checked elsewhere (the golden files, test_engine.py, test_attribution.py, test_api.py);
these tests check the shape of the engine: that the study's observed passes come from the engine,
that its session does what each caller asks of it and no more, and that the final residual it reads
is the one the model's final norm receives.
"""

from __future__ import annotations

import pytest
import torch

from oracle import gpt2_tokenizer, make_hf_model

import logitscope as ls
from logitscope.engine.capture import Recorder
from logitscope.engine import core
from logitscope.engine.core import Engine
from logitscope.engine import patched
from logitscope.methods import attribution
from logitscope.models.load import wrap_model


def _engine(family: str = "gpt2") -> Engine:
    return Engine(wrap_model(make_hf_model(family, size="tiny", seed=3, n_ctx=64), gpt2_tokenizer()))


def _gelus(model: torch.nn.Module) -> int:
    return sum(type(m).__name__ == "NewGELUActivation" for m in model.modules())


def test_the_old_names_are_the_engine():
    """engine.patched.Engine is the same class (tests monkeypatch it); gradient_run is the gradient mode."""
    assert patched.Engine is Engine and patched.Run is core.Run
    assert attribution.gradient_run is Engine.gradient


@pytest.mark.parametrize("kernels,eval_mode", [(True, True), (False, True), (True, False), (False, False)])
def test_the_session_does_what_is_asked_and_leaves_the_model_as_it_came(kernels, eval_mode):
    engine = _engine()
    model = engine.lm.model
    model.train()
    model.transformer.h[1].eval()
    n_gelu = _gelus(model)
    assert n_gelu > 0
    flags = [m.training for m in model.modules()]
    with engine.session(kernels=kernels, eval_mode=eval_mode):
        assert model.training is (not eval_mode)
        assert model.transformer.h[0].training is (not eval_mode)
        assert _gelus(model) == (0 if kernels else n_gelu)  # swapped for the fused kernel, or not
        model.transformer.h[0].register_forward_hook(lambda m, a, o: None)  # left behind by a run
    assert [m.training for m in model.modules()] == flags
    assert _gelus(model) == n_gelu
    assert bool(model.transformer.h[0]._forward_hooks) is (not eval_mode)  # eval_mode restores the hooks too


def test_the_session_restores_the_model_when_a_run_fails():
    engine = _engine()
    model = engine.lm.model
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        with engine.session(kernels=True):
            raise RuntimeError("boom")
    assert model.training and all(m.training for m in model.modules()) and _gelus(model) > 0


def test_answer_resid_is_what_the_final_norm_reads():
    """Independent read: a pre-hook on the model's final norm, at each row's answer position; a hook
    that replaces the last block's output is seen in both."""
    engine = _engine("llama")
    ids = torch.randint(1, 1000, (3, 9), generator=torch.Generator().manual_seed(1))
    end = torch.tensor([8, 4, 6])
    seen = {}
    norm = engine.lm.adapter.final_norm(engine.lm.model)
    handle = norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    try:
        with torch.no_grad():
            resid = engine.answer_resid(ids, end, {})
            assert torch.equal(resid, seen["x"][torch.arange(3), end])
            doubled = engine.answer_resid(ids, end, {("resid_post", engine.n_layers - 1): lambda x: 2 * x})
            assert torch.equal(doubled, seen["x"][torch.arange(3), end])
            assert torch.equal(doubled, 2 * resid)
    finally:
        handle.remove()


def test_the_study_observes_through_the_engine(tiny_gpt2_dir, monkeypatch):
    """The study builds its Recorder with Engine.observe (once, with the token lens's k), inside
    the engine's session: the model in eval mode during its batches."""
    calls = []
    observe = Engine.observe

    def spy(self, lens_top_k=None):
        rec = observe(self, lens_top_k)
        calls.append((lens_top_k, type(rec)))
        return rec

    modes = []
    run_batch = Recorder.run_batch

    def batch(self, *args):
        modes.append(self.lm.model.training)
        return run_batch(self, *args)

    monkeypatch.setattr(Engine, "observe", spy)
    monkeypatch.setattr(Recorder, "run_batch", batch)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir))
    model.train()
    ls.run_study("ioi:6", model, tokenizer=AutoTokenizer.from_pretrained(str(tiny_gpt2_dir)), batch_size=4)
    assert calls == [(5, Recorder)]
    assert modes == [False, False] and model.training


def test_the_edge_methods_run_through_the_engines_split_qkv_mode(monkeypatch):
    """EdgeEngine's runner is the one the engine's split_qkv mode makes (not one built on the side),
    over the whole edge graph's layout."""
    from logitscope.engine.split_qkv import EdgeRunner
    from logitscope.methods.edges.attribute import EdgeData, EdgeEngine

    made = []
    original = Engine.split_qkv

    def spy(self, layout=None):
        runner = original(self, layout)
        made.append(runner)
        return runner

    monkeypatch.setattr(Engine, "split_qkv", spy)
    lm = _engine().lm
    ids = [[1, 2, 3, 4], [5, 6, 7, 8]]
    data = EdgeData(clean=ids, corrupted=[[1, 2, 9, 4], [5, 6, 9, 8]], correct=[10, 11], incorrect=[12, 13])
    eng = EdgeEngine(lm, data)
    assert made and eng.runner is made[0] and isinstance(eng.runner, EdgeRunner)
    assert eng.runner.graph is eng.graph and type(eng.graph).__name__ == "EdgeGraph" and eng.graph.n_edges > 0
