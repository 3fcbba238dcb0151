"""The study's hot loop: how prompts are laid out for the device, and that it adds no host syncs.

On a GPU the loop's speed depends on never making the host wait for the device between batches.
That cannot be timed here (no GPU, and unit tests time nothing), but what makes the host wait can
be seen on the CPU too: an operator that must read a device value on the host (``.item()``,
``bool(t)``, ``nonzero``, ...). ``SyncSpy`` records every such operator dispatched while it is on.
"""

from __future__ import annotations

import collections
import re
import functools

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import logitscope as ls
import logitscope.inputs.encode as encode
import logitscope.methods.dla as study
from logitscope.engine.capture import Recorder

# ATen operators whose result depends on device data read back by the host: each is a host-device
# synchronisation on CUDA (``_local_scalar_dense`` is behind .item(), bool(), int(), float()).
SYNCING_OPS = frozenset({
    "aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.nonzero", "aten.nonzero_static",
    "aten.masked_select", "aten.equal", "aten._unique", "aten._unique2", "aten.unique_dim",
    "aten.unique_consecutive", "aten.repeat_interleave", "aten.bincount", "aten.histc",
})


class SyncSpy(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.syncs: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in SYNCING_OPS:
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))


def test_the_spy_sees_a_sync():
    with SyncSpy() as spy:
        x = torch.arange(5.0)
        (x > 2).any().item()
        torch.nonzero(x)
    assert spy.syncs["aten._local_scalar_dense"] == 1 and spy.syncs["aten.nonzero"] == 1


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_hot_loop_adds_no_host_syncs(family, tmp_path):
    """Every batch of the study (hooks, projections, both answers' logits, the vocabulary's
    log-sum-exp) makes exactly the syncs the model's own forward makes, no more. (transformers'
    mask preparation reads one small tensor per forward; with thousands of prompts a batch on a
    GPU that is a handful per run.)"""
    from oracle import make_hf_model, save_checkpoint

    lm = ls.load_model(str(save_checkpoint(make_hf_model(family, size="tiny", seed=3), tmp_path)), device="cpu")
    enc = encode.encode_prompts(ls.builtin_prompts("arena"), lm, prepend_bos=True)
    ids = torch.tensor(enc.ids)
    pos = torch.full((ids.shape[0],), ids.shape[1] - 1)
    c, i = torch.from_numpy(enc.correct), torch.from_numpy(enc.incorrect)
    with torch.inference_mode():
        with SyncSpy() as plain:
            lm.adapter.base(lm.model)(input_ids=ids, use_cache=False)
        with Recorder(lm) as rec, SyncSpy() as ours:
            rec.run_batch(ids, pos, c, i)
    assert sum(ours.syncs.values()) == sum(plain.syncs.values()), (ours.syncs, plain.syncs)


@pytest.mark.parametrize("batch_size,max_tokens", [(1, 1), (3, 20), (4, 1 << 22), (7, 60), (100, 10)])
def test_chunks_lay_out_every_prompt(batch_size, max_tokens):
    rng = np.random.default_rng(batch_size)
    ids = [list(rng.integers(1, 1000, size=int(n))) for n in rng.integers(1, 12, size=23)]
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")
    seen = []
    for chunk in study._chunks(ids, lengths, order, batch_size, max_tokens=max_tokens):
        assert chunk.ids.dtype == np.int64
        assert chunk.ids.size <= max_tokens or len(chunk.batches) == 1  # bounded, one batch at least
        assert chunk.batches[0].start == 0 and chunk.batches[-1].stop == len(chunk.rows)
        for b in chunk.batches:
            assert 1 <= b.size <= batch_size
            block = chunk.ids[b.offset : b.offset + b.size * b.width].reshape(b.size, b.width)
            rows = chunk.rows[b.start : b.stop]
            assert b.width == lengths[rows].max()
            for r, k in zip(block, rows):
                assert r[: lengths[k]].tolist() == ids[k]
                assert not r[lengths[k] :].any()  # right padding with 0
        assert chunk.batches[-1].offset + chunk.batches[-1].size * chunk.batches[-1].width == chunk.ids.size
        seen.extend(chunk.rows.tolist())
    assert seen == order.tolist()


def test_many_small_chunks_give_the_same_numbers(tiny_gpt2_dir, monkeypatch):
    whole = ls.run_study("ioi:30", str(tiny_gpt2_dir), device="cpu", batch_size=4)
    monkeypatch.setattr(study, "_chunks", functools.partial(study._chunks, max_tokens=50))
    small = ls.run_study("ioi:30", str(tiny_gpt2_dir), device="cpu", batch_size=4)
    assert len(set(whole.n_tokens.tolist())) > 1  # prompts of different lengths, padded together
    for name in ("logit_diff", "head_results", "mlp_out", "lens_recomputed", "prob_correct"):
        np.testing.assert_array_equal(getattr(small, name), getattr(whole, name), err_msg=name)


def test_timing_is_recorded_and_written(tiny_gpt2_dir, tmp_path):
    res = ls.run_study("ioi:20", str(tiny_gpt2_dir), device="cpu")
    t = dict(res.timing)
    assert set(t) == {"tokenize_s", "forward_s", "attention_s", "study_s", "prompts_per_s", "world_size", "prompts_per_rank"}
    assert (t.pop("world_size"), t.pop("prompts_per_rank")) == (1, [20])  # one process (tests/test_distributed.py: more)
    assert all(v > 0 for v in t.values())
    assert t["tokenize_s"] + t["forward_s"] + t["attention_s"] <= t["study_s"]
    assert t["prompts_per_s"] == pytest.approx(20 / t["study_s"])
    import json

    res.save(tmp_path / "out", report=False)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["timing"] == {**t, "world_size": 1, "prompts_per_rank": [20]}
    assert f"study 20 prompts in {t['study_s']:.2f} s" in res.summary()


TEXTS = [
    "When John and Mary went to the shops, John gave the bag to",
    " Mary", "Mary", "  double  space", "<|endoftext|>When", "naïve café — 東京", "", "\n\ttabs\n", "a" * 300,
]


def test_tokenize_equals_the_tokenizer_call(gpt2_tokenizer):
    texts = TEXTS + [p.text for p in ls.builtin_prompts("seed")]
    assert encode._backend_is_faithful(gpt2_tokenizer)  # the fast path is the one taken
    assert encode.tokenize(gpt2_tokenizer, texts) == gpt2_tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_tokenize_leaves_a_truncating_tokenizer_to_transformers(gpt2_tokenizer):
    """A backend with truncation switched on would cut long texts: the fast path must not be taken."""
    import copy

    tok = copy.deepcopy(gpt2_tokenizer)
    tok.backend_tokenizer.enable_truncation(max_length=5)
    assert encode.tokenize(tok, TEXTS) == gpt2_tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    assert max(len(x) for x in encode.tokenize(tok, TEXTS)) > 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_hot_loop_adds_no_synchronisation(tiny_gpt2_dir):
    """On a GPU, CUDA's own sync debugging counts what makes the host wait: a batch of the study
    makes no more of those than the model's plain forward pass does."""
    import warnings

    lm = ls.load_model(str(tiny_gpt2_dir), device="cuda")
    enc = encode.encode_prompts(ls.builtin_prompts("arena"), lm, prepend_bos=True)
    ids = torch.tensor(enc.ids, device="cuda")
    pos = torch.full((ids.shape[0],), ids.shape[1] - 1, device="cuda")
    c, i = torch.from_numpy(enc.correct).cuda(), torch.from_numpy(enc.incorrect).cuda()

    def syncs(fn) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    with torch.inference_mode(), Recorder(lm) as rec:
        rec.run_batch(ids, pos, c, i)  # warm-up: first calls may allocate
        ours = syncs(lambda: rec.run_batch(ids, pos, c, i))
    with torch.inference_mode():
        plain = syncs(lambda: lm.adapter.base(lm.model)(input_ids=ids, use_cache=False))
    assert ours <= plain, (ours, plain)


def test_tokenize_follows_split_special_tokens(gpt2_tokenizer):
    """transformers sets the backend's special-token splitting on every call; the fast path must
    give what the call gives whatever an earlier call left on the backend."""
    import copy

    texts = ["<|endoftext|>When Mary", "x"] * 10
    tok = copy.deepcopy(gpt2_tokenizer)
    tok("x", split_special_tokens=True)  # leaves the backend splitting special tokens
    assert encode.tokenize(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]
    assert encode.tokenize(tok, texts)[0][0] == 50256
    tok.split_special_tokens = True
    assert encode.tokenize(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]
    assert encode.tokenize(tok, texts)[0][0] != 50256


HOST_READS = re.compile(r"\.(cpu|item|tolist|numpy)\(|(?<![.\w])(float|int|bool|print)\(|\.to\([^)]*\bcpu\b")


def _source_of_hot_path() -> str:
    import inspect

    loop = inspect.getsource(study.study)
    loop = loop[loop.index("# hot loop: start") : loop.index("# hot loop: end")]
    hooks = [Recorder.run_batch, Recorder._gather, Recorder._dir, Recorder._embed_hook, Recorder._block_hook,
             Recorder._attn_hook, Recorder._mlp_hook, Recorder._final_hook, Recorder._lens_point,
             Recorder.norm_scale, Recorder.answer_logits, Recorder.directions, Recorder.final_bias_term,
             Recorder._take, Recorder._through_post_norm, Recorder._scaled, Recorder.capped,
             Recorder._attn_out_hook, Recorder._attn_out, Recorder._mlp_out_hook, Recorder._experts_hook,
             Recorder._take_flat, Recorder._per_expert]
    return loop + "".join(inspect.getsource(f) for f in [study._to_device, *hooks])


def test_hot_path_source_reads_nothing_back_to_the_host():
    """What the CPU cannot show (a copy to the host is free there): no ``.cpu()``, ``.item()``,
    ``.tolist()``, ``.numpy()``, ``float()``/``int()``/``bool()`` of a tensor, no print, in the loop
    of run_study or in anything the hooks run. (On a GPU, test_cuda_hot_loop_adds_no_synchronisation
    checks the real thing.)"""
    source = _source_of_hot_path()
    assert "rec.run_batch(" in source and "def _attn_hook" in source
    assert HOST_READS.findall(source) == []
    assert HOST_READS.search("x = t.cpu()") and HOST_READS.search("v = float(t.sum())")  # the check can fail
