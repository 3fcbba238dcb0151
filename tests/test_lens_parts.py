"""The token logit lens, DLA by source position and DLA by neuron, against TransformerLens 3.9.

Each family's tiny random model (tests/oracle.py) is studied once, on prompts of different lengths
padded together in batches of 3, and every number is rebuilt from TL's own cache, one prompt at a
time (so TL's index -1 is the answer position):

- token lens: ``accumulated_resid(layer=-1, incl_mid=False, pos_slice=-1, apply_ln=True)`` (the
  final norm afresh at each point), ``@ W_U + b_U``, TL's soft-cap where the model has one,
  softmax, ``topk``; the prompt-averaged view is ``topk`` of the mean of those softmaxes.
- by source: ``hook_pattern[h, -1, s] · hook_v[s, kv(h)] @ W_O[h]`` (TL folds the value bias out of
  ``v`` as the study does), through a post norm with TL's cached scale (Gemma 2), projected as
  test_families projects a head (``apply_ln_to_stack`` then the logit-difference direction).
- by neuron: ``hook_post[-1, i] · W_out[i]``, projected the same way.

Tolerances: 1e-5 on probabilities (float32 softmax of logits of size ~10; both sides do the same
sums in another order) and test_families' 1e-4 on logits; the parts' sums are checked against the
study's own ``head_results`` / ``mlp_out`` at 1e-5: they come from a second pass whose attention is
computed explicitly (to expose the pattern) rather than by the model's kernel, a float32 rounding
difference of ~1e-6 on these models.
"""

from __future__ import annotations

import json

import einops
import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.cli import main
from oracle import make_hf_model, save_checkpoint, tl_default_flags, tl_model
from test_families import _post_norms
from test_parity import MIXED_PROMPTS, token_ids

ATOL = 1e-4
HEADS = "L0H1,L1H2,L1H3"  # 4 heads on 2 key-value heads in the GQA families: both groups
FAMILIES = ["gpt2", "qwen2", "gemma2"]  # LayerNorm; RMSNorm with a gated MLP and GQA; post norms and a soft-cap
_CACHE: dict = {}


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    def study(family: str):
        if family not in _CACHE:
            hf = make_hf_model(family, size="tiny", seed=3)
            path = save_checkpoint(hf, tmp_path_factory.mktemp(family))
            prompts = MIXED_PROMPTS + ls.builtin_prompts("arena")[:2]
            res = ls.run_study(prompts, str(path), device="cpu", batch_size=3, lens_top_k=4, dla_by_source=HEADS,
                               neurons=1)
            _CACHE[family] = hf, path, res
        return _CACHE[family]

    return study


@torch.no_grad()
def _reference(tl, ids: list[list[int]], correct: np.ndarray, incorrect: np.ndarray, heads, layer: int, k: int):
    """Per prompt: lens probabilities [P, vocab], source parts {head: [T]}, neuron parts [d_mlp]."""
    unfolded = tl.cfg.normalization_type in ("RMS", "LN")
    cap = tl.cfg.output_logits_soft_cap
    out = []
    for x, c, i in zip(ids, correct, incorrect):
        tokens = torch.tensor([x])
        _, cache = tl.run_with_cache(tokens)
        acc = cache.accumulated_resid(layer=-1, incl_mid=False, pos_slice=-1, apply_ln=True)[:, 0]  # [P, d]
        logits = acc @ tl.W_U + tl.b_U
        if cap and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        raw = tl.tokens_to_residual_directions(torch.tensor([[c, i]]))
        ldd = raw[:, 0] - raw[:, 1]
        ldd = ldd * tl.ln_final.w if unfolded else ldd

        def project(stack: torch.Tensor) -> np.ndarray:  # [..., d] at the answer position
            scaled = cache.apply_ln_to_stack(stack[..., None, :], layer=-1, pos_slice=-1)[..., 0, :]
            return (scaled * ldd[0]).sum(-1).numpy()

        sources = {}
        for l, h in heads:
            pattern = cache["pattern", l][0, h, -1]  # [T]
            v = cache["v", l][0]  # [T, n_kv, d_head]
            vh = v[:, h // (tl.cfg.n_heads // v.shape[1])]
            vec = pattern[:, None] * (vh @ tl.W_O[l, h])  # [T, d]
            post, _ = _post_norms(tl, l)
            if post is not None:
                vec = vec * tl.get_submodule(post).w / cache[f"{post}.hook_scale"][0, -1]
            sources[(l, h)] = project(vec)
        per_neuron = cache["post", layer][0, -1][:, None] * tl.W_out[layer]  # [d_mlp, d]
        _, post = _post_norms(tl, layer)
        if post is not None:
            per_neuron = per_neuron * tl.get_submodule(post).w / cache[f"{post}.hook_scale"][0, -1]
        out.append((torch.softmax(logits, -1).numpy(), sources, project(per_neuron)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_token_lens_and_finer_parts_match_transformerlens(family, studied, gpt2_tokenizer):
    hf, _, res = studied(family)
    tl = tl_model(hf, family, **tl_default_flags(family))
    heads = res.source_heads
    assert heads == ((0, 1), (1, 2), (1, 3)) and len(set(res.n_tokens.tolist())) >= 3
    ref = _reference(tl, token_ids(res, gpt2_tokenizer), res.correct_ids, res.incorrect_ids, heads, 1, 4)
    probs = np.stack([r[0] for r in ref], -1)  # [P, vocab, N]
    assert res.token_lens_labels == tl.run_with_cache(torch.tensor([[1, 2]]))[1].accumulated_resid(
        layer=-1, incl_mid=False, return_labels=True)[1]
    top = np.argsort(-probs, axis=1, kind="stable")[:, :4]  # [P, 4, N]
    np.testing.assert_array_equal(res.lens_top_ids, top)
    np.testing.assert_allclose(res.lens_top_probs, np.take_along_axis(probs, top, 1), rtol=0, atol=1e-5)
    mean = probs.mean(-1)
    np.testing.assert_array_equal(res.lens_mean_ids, np.argsort(-mean, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(res.lens_mean_probs, np.sort(mean, axis=1)[:, ::-1][:, :4], rtol=0, atol=1e-5)
    assert res.lens_top_probs[-1].max() > res.lens_top_probs[0].min()  # the probabilities are not all equal
    for n, (_, sources, neurons) in enumerate(ref):
        T = res.n_tokens[n]
        for j, head in enumerate(heads):
            np.testing.assert_allclose(res.dla_by_source[j, :T, n], sources[head], rtol=1e-5, atol=ATOL, err_msg=str(head))
            assert not res.dla_by_source[j, T:, n].any()  # past the prompt: nothing
        np.testing.assert_allclose(res.neurons[:, n], neurons, rtol=1e-5, atol=ATOL)
    # Exact splits: the positions (and the named rows) add up to the head, the neurons and the
    # MLP's bias to the MLP.
    for j, (l, h) in enumerate(heads):
        np.testing.assert_allclose(res.dla_by_source[j].sum(0), res.head_results[l, h], rtol=0, atol=1e-5)
        np.testing.assert_allclose(res.source_by_role[j].sum(0), res.head_results[l, h], rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.neurons.sum(0) + res.mlp_bias[1], res.mlp_out[1], rtol=0, atol=1e-5)
    assert np.abs(res.dla_by_source).max() > 1e-2 and np.abs(res.neurons).max() > 1e-2


def test_value_bias_parts_and_the_output_bias_make_attn_bias(studied):
    """GPT-2's value biases are non-zero: the four heads' value-bias parts plus the output
    projection's bias, projected by hand (γ_f ⊙ (W_U[A] − W_U[B]), centred, over the final
    norm's scale), make the layer's ``attn_bias``."""
    hf, path, _ = studied("gpt2")
    res = ls.run_study(MIXED_PROMPTS, str(path), device="cpu", dla_by_source="L1H0,L1H1,L1H2,L1H3", lens_top_k=None)
    assert res.lens_top_ids is None and res.neurons is None and "token_lens" not in res.to_dict()
    W_U, gamma = hf.lm_head.weight.detach().double(), hf.transformer.ln_f.weight.detach().double()
    d = (W_U[np.array(res.correct_ids)] - W_U[np.array(res.incorrect_ids)]) * gamma
    d = d - d.mean(-1, keepdim=True)
    b_o = (d @ hf.transformer.h[1].attn.c_proj.bias.detach().double()).numpy() / res.scale
    assert np.abs(res.source_value_bias).max() > 1e-3
    np.testing.assert_allclose(res.source_value_bias.sum(0) + b_o, res.attn_bias[1], rtol=0, atol=1e-5)


def test_roles_of_ioi_prompts_and_saved_files_reopen(studied, tmp_path):
    _, path, _ = studied("gpt2")
    res = ls.run_study("ioi:10", str(path), device="cpu", dla_by_source="top:2", neurons=0, lens_top_k=3)
    assert res.source_roles == ("IO", "S1", "S1+1", "S2", "END", "other")
    top = [(l, h) for l, h, _ in sorted(res.top_heads(k=8), key=lambda x: -abs(x[2]))][:2]
    by_abs = np.argsort(-np.abs(res.head_attribution).ravel(), kind="stable")[:2]
    assert list(res.source_heads) == [(int(i) // 4, int(i) % 4) for i in by_abs] and len(top) == 2
    # Each named row is the part at that word's position, found here from the tokens themselves
    # (BOS first when prepended): an off-by-one in the roles would move every row.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    for n, p in enumerate(res.prompts):
        ids = ([tok.bos_token_id] if res.prepend_bos else []) + tok(p.text, add_special_tokens=False)["input_ids"]
        io_id, s_id = (tok(" " + p.meta[k], add_special_tokens=False)["input_ids"][0] for k in ("io", "s"))
        s_at = [i for i, t in enumerate(ids) if t == s_id]
        where = {"IO": ids.index(io_id), "S1": s_at[0], "S1+1": s_at[0] + 1, "S2": s_at[1], "END": len(ids) - 1}
        for j in range(len(res.source_heads)):
            for r, role in enumerate(res.source_roles[:5]):
                assert res.source_by_role[j, r, n] == res.dla_by_source[j, where[role], n], (n, role)
            others = res.dla_by_source[j, : len(ids), n].sum() - sum(res.dla_by_source[j, i, n] for i in where.values())
            assert abs(res.source_by_role[j, 5, n] - others) < 1e-5
    res.save(tmp_path / "out")
    back = ls.load_result(tmp_path / "out")
    for name in ("lens_top_ids", "lens_mean_ids", "source_by_role", "neurons"):
        np.testing.assert_allclose(getattr(back, name), getattr(res, name), rtol=0, atol=1e-6, err_msg=name)
    assert back.lens_top_ids.dtype == np.int64 and back.lens_tokens == res.lens_tokens
    assert back.source_heads == res.source_heads and back.neuron_layer == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["token_lens"]["labels"] == res.token_lens_labels and doc["token_lens"]["k"] == 3
    block = doc["dla_by_source"]
    np.testing.assert_allclose(np.sum(block["values"], 1), block["head_total"], rtol=0, atol=1e-6)
    assert all(lo <= v <= hi for row, l_, h_ in zip(block["values"], block["ci95_low"], block["ci95_high"])
               for v, lo, hi in zip(row, l_, h_))
    tops = doc["neuron_attribution"]["top"]
    assert [t["neuron"] for t in tops] == [i for i, _ in res.top_neurons(10)]
    assert abs(tops[0]["value"]) >= abs(tops[-1]["value"]) and tops[0]["ci95_low"] <= tops[0]["value"] <= tops[0]["ci95_high"]
    html = (tmp_path / "out" / "report.html").read_text()
    for anchor in ("token-lens", "dla-by-source", "neurons"):
        assert f'id="{anchor}"' in html, anchor


@pytest.mark.parametrize("flags,message", [
    (["--dla-by-source", "L7H0"], "--dla-by-source"),
    (["--dla-by-source", "top:0"], "--dla-by-source"),
    (["--neurons", "2"], "--neurons"),
    (["--lens-top-k", "0"], "--lens-top-k"),
])
def test_bad_options_exit_2_and_write_nothing(flags, message, studied, tmp_path, capsys):
    _, path, _ = studied("gpt2")
    out = tmp_path / "out"
    code = main(["run", "--model", str(path), "--prompts", "ioi:4", "--out", str(out), "--device", "cpu", "--quiet",
                 *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_token_lens_adds_no_host_syncs_to_the_hot_loop(studied):
    """test_hot_loop's guard with the token lens on (the study's default): a batch makes exactly the
    syncs of the model's own forward (softmax, topk and the running sum read nothing back)."""
    from test_hot_loop import SyncSpy

    from logitscope.engine.capture import Recorder
    from logitscope.inputs import encode

    _, path, _ = studied("gpt2")
    lm = ls.load_model(str(path), device="cpu")
    enc = encode.encode_prompts(ls.builtin_prompts("arena"), lm, prepend_bos=True)
    ids = torch.tensor(enc.ids)
    pos = torch.full((ids.shape[0],), ids.shape[1] - 1)
    with torch.inference_mode():
        with SyncSpy() as plain:
            lm.adapter.base(lm.model)(input_ids=ids, use_cache=False)
        with Recorder(lm, 5) as rec, SyncSpy() as ours:
            out = rec.run_batch(ids, pos, torch.from_numpy(enc.correct), torch.from_numpy(enc.incorrect))
    assert out.lens_top_ids.shape == (3, 5, ids.shape[0])
    assert sum(ours.syncs.values()) == sum(plain.syncs.values()), (ours.syncs, plain.syncs)


def test_notebook_view_and_summary_show_the_finer_views(studied):
    _, _, res = studied("gpt2")
    view = res._repr_html_()
    assert "Token logit lens" in view and "<script" not in view
    first = res.lens_tokens[int(res.lens_mean_ids[-1, 0])]
    assert repr(first).replace("'", "&#x27;") in view or repr(first) in view
    text = res.summary()
    assert "L0H1 by source position: END" in text and "top neurons of layer 1" in text


def test_values_that_round_to_zero_show_as_plain_zero(studied):
    """The per-position table of the report: a part of -4e-4 (or -0.0) shows as 0.000 in the neutral
    colour, not a red "-0.000"; +4e-4 as 0.000 too; a real negative stays red."""
    import dataclasses
    import re

    from logitscope.report.page import report_html

    _, _, res = studied("gpt2")
    i = res.attention.prompt_index
    parts = res.dla_by_source.copy()
    parts[0, :4, i] = [-4e-4, -0.0, 4e-4, -0.25]
    html = report_html(dataclasses.replace(res, dla_by_source=parts))
    block = html[html.index(f"Prompt #{i}, position by position"):]
    row = re.search(r"<tr><td><b>L0H1</b></td>(.*?)</tr>", block).group(1)
    cells = re.findall(r'<td class="([^"]*)">([^<]*)</td>', row)
    assert cells[:4] == [("num", "0.000"), ("num", "0.000"), ("num", "0.000"), ("num neg", "-0.250")], cells
    finer = "".join(html[html.index(f'id="{a}"'):].split("</section>")[0] for a in ("dla-by-source", "neurons"))
    assert "-0.000" not in finer and "-0.0%" not in finer


def test_whitespace_tokens_are_visible_in_the_token_lens():
    """A token that is only whitespace (a space, a newline) shows as a visible mark, its repr on hover;
    other tokens as they are, escaped."""
    from logitscope.report.finer import _tok

    assert _tok(" ") == '<span class="tok" title="&#x27; &#x27;">␣</span>'
    assert _tok("\n\n") == '<span class="tok" title="&#x27;\\n\\n&#x27;">⏎⏎</span>'
    assert _tok(" the") == '<span class="tok" title="&#x27; the&#x27;"> the</span>'
    assert _tok("<b>") == '<span class="tok" title="&#x27;&lt;b&gt;&#x27;">&lt;b&gt;</span>'


def test_token_lens_reuses_its_chunk_buffers_and_equals_a_fresh_computation():
    """The token lens writes every chunk's [rows, vocab] logits and probabilities into two buffers
    made once (fresh 32 MB blocks per chunk let glibc's heap grow with the number of batches:
    test_scale's 10,000 prompts peaked at 0.6-1.9 GB from run to run); the top-k and the summed
    probabilities are bit for bit those of the out-of-place computation, soft-cap and bias included."""
    import torch
    from logitscope.engine import lens as lens_module
    from logitscope.engine.lens import TokenLens

    g = torch.Generator().manual_seed(0)
    vocab, d = 3000, 16
    W_U, b_U = torch.randn(vocab, d, generator=g), torch.randn(vocab, generator=g)
    lens = TokenLens(3, centre=True, eps=1e-5, gamma=torch.rand(d, generator=g) + 0.5, beta=torch.randn(d, generator=g),
                     W_U=W_U, b_U=b_U, softcap=30.0)
    rows = max(1, lens_module.CHUNK_BYTES // (4 * vocab))
    batches = [torch.randn(rows + 7, d, generator=g), torch.randn(5, d, generator=g)]  # two chunks, then a short one
    seen, expected_sum = set(), 0
    for resid in batches:
        ids, probs = lens.top([resid])
        seen.add(tuple(b.data_ptr() for b in lens._buffers))
        parts = []
        for start in range(0, len(resid), rows):  # chunk by chunk, as a matmul's blocking depends on its rows
            x = resid[start:start + rows]
            x = x - x.mean(-1, keepdim=True)
            x = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * lens.gamma + lens.beta
            p = torch.softmax(30.0 * torch.tanh((x @ W_U.T + b_U) / 30.0), dim=-1)
            parts.append(p)
            expected_sum = expected_sum + p.sum(0, dtype=torch.float64)
        top = torch.topk(torch.cat(parts), 3, dim=-1)
        assert torch.equal(ids[0], top.indices.T) and torch.equal(probs[0], top.values.T)
    assert len(seen) == 1  # the same three buffers for every chunk of every batch
    assert torch.equal(lens.prob_sum[0], expected_sum)
