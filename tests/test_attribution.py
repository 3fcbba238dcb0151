"""Attribution patching: the first-order estimate of every patching grid, checked three ways.

1. Against an independent computation: finite differences of TransformerLens 3.9's own hooked model
   (float64): f(t) = the metric with the cell's activation set to base + t·(source − base) at
   TransformerLens's hook point, and the estimate is f(0) + f'(0) by central differences. Both sides in
   float64 (ours through the Hugging Face model and our hook points, with the metric in float32 as
   always); the estimate's change must agree within 1e-4 of the grid's largest change.
2. Where the metric is linear in the activation, the estimate is the exact patch: with the final
   norm's scale frozen, the last layer's MLP output (and, in a parallel-attention family, its heads'
   z and v and its attention output) is read by nothing but that norm.
3. Agreement fields against numpy (Pearson, brute-force ranks), results.json, the CLI.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.api.patching import run_patching
from logitscope.results.agreement import OFF_FRACTION, agreement, average_ranks, pearson, spearman
from oracle import gpt2_tokenizer, make_hf_model, save_checkpoint, tl_model

TL_POINT = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "attn_out": "hook_attn_out",
            "mlp_out": "hook_mlp_out", "z": "attn.hook_z", "q": "attn.hook_q", "k": "attn.hook_k",
            "v": "attn.hook_v", "pattern": "attn.hook_pattern"}


@pytest.fixture(scope="module")
def models64():
    made = {}

    def get(family):
        if family not in made:
            hf = make_hf_model(family, size="tiny", seed=5, n_ctx=64)
            tl = tl_model(hf, family)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tl = tl.to(torch.float64)
            made[family] = (hf.double(), tl)
        return made[family]

    return get


def tl_finite_differences(tl, res, names, direction: str, eps: float = 1e-4) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per prompt, each cell's f(0) + f'(0) (central differences) on TransformerLens, ``[*cells, N]``,
    and f(0) ``[N]`` (the base run's metric). The cells of one grid and layer run as one batch."""
    from logitscope.methods.patching.grids import GRIDS

    prompts = res.study.prompts
    clean = tl.to_tokens([p.text for p in prompts])
    corrupted = tl.to_tokens(res.corrupted_prompts)
    correct = torch.tensor([tl.to_single_token(p.correct) for p in prompts])
    incorrect = torch.tensor([tl.to_single_token(p.incorrect) for p in prompts])
    N = len(prompts)
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, base = tl.run_with_cache(base_tokens)
        _, source = tl.run_with_cache(source_tokens)

    def metric(tokens, hooks):  # TransformerLens's blocks, final norm and unembedding rows, last position
        with torch.no_grad():
            resid = tl.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=tl.cfg.n_layers)
            x = tl.ln_final(resid)[:, -1]
            G = x.shape[0] // N
            c, i = correct.repeat(G), incorrect.repeat(G)
            return ((x * tl.W_U[:, c].T).sum(-1) + tl.b_U[c] - (x * tl.W_U[:, i].T).sum(-1) - tl.b_U[i]).numpy()

    f0 = metric(base_tokens, [])
    out = {}
    for name in names:
        spec = GRIDS[name]
        grid = res.grids[name + "_attribution"]
        est = np.full(grid.shape, np.nan)
        for layer in range(grid.shape[0]):
            cells = list(np.ndindex(grid.shape[1:-1]))
            wheres = []
            for cell in cells:
                rest = dict(zip(spec.axes[1:], cell))
                head, pos = rest.get("head", rest.get("kv_head")), rest.get("position")
                if spec.point == "pattern":
                    wheres.append((slice(None), head))
                elif pos is None:
                    wheres.append((slice(None), slice(None), head))
                else:
                    at = int(res.positions.at[pos][0])
                    wheres.append((slice(None), at) if head is None else (slice(None), at, head))
            hook_name = f"blocks.{layer}.{TL_POINT[spec.point]}"
            b, s = base[hook_name], source[hook_name]

            def hook(act, hook, wheres=wheres, b=b, s=s):  # rows: (cell, +eps / -eps, prompt)
                act = act.clone()
                for j, where in enumerate(wheres):
                    for k, t in enumerate((eps, -eps)):
                        block = act[(2 * j + k) * N : (2 * j + k + 1) * N]
                        block[where] = b[where] + t * (s[where] - b[where])
                return act

            f = metric(base_tokens.repeat(2 * len(cells), 1), [(hook_name, hook)]).reshape(len(cells), 2, N)
            for j, cell in enumerate(cells):
                est[(layer, *cell)] = f0 + (f[j, 0] - f[j, 1]) / (2 * eps)
        out[name] = est
    return out, f0


def _check_changes(res, ref, names, base):
    for name in names:
        ours = res.grids[name + "_attribution"] - base
        want = ref[name] - base
        scale = np.abs(want).max()
        assert scale > 1e-3, f"{name}: the estimate must change something"
        err = np.abs(ours - want).max()
        assert err <= 1e-4 * scale, f"{name}: {err:.2e} vs scale {scale:.2e}"


ALL_GRIDS = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "attn_head_out_all_pos", "attn_head_q_all_pos",
             "attn_head_k_all_pos", "attn_head_v_all_pos", "attn_head_pattern_all_pos", "attn_head_out_by_pos"]


def test_every_grid_equals_finite_differences_of_transformerlens(models64):
    hf, tl = models64("gpt2")
    res = run_patching("arena", hf, tokenizer=gpt2_tokenizer(), what="all", positions="index", method="attribution")
    assert sorted(res.grids) == sorted(n + "_attribution" for n in ALL_GRIDS)
    ref, f0 = tl_finite_differences(tl, res, ALL_GRIDS, "denoise")
    base = res.corrupted_logit_diff
    np.testing.assert_allclose(base, f0, rtol=0, atol=1e-5)
    _check_changes(res, ref, ALL_GRIDS, base)


@pytest.mark.parametrize("family,direction", [("llama", "noise"), pytest.param("gpt_neo", "denoise", marks=pytest.mark.slow),
                                              pytest.param("olmo2", "denoise", marks=pytest.mark.slow)])
def test_head_and_residual_grids_equal_finite_differences(family, direction, models64):
    """Llama: rotary (TransformerLens's hook_q / hook_k are before it, ours after: the same first-order
    term), grouped kv heads, RMSNorm; noising. GPT-Neo and OLMo-2 read q/k/v at modules."""
    hf, tl = models64(family)
    names = [n for n in ALL_GRIDS if n != "attn_head_out_by_pos"]
    res = run_patching("arena", hf, tokenizer=gpt2_tokenizer(), what=names, positions="index", method="attribution",
                       direction=direction)
    ref, f0 = tl_finite_differences(tl, res, names, direction)
    base = res.corrupted_logit_diff if direction == "denoise" else res.clean_logit_diff
    np.testing.assert_allclose(base, f0, rtol=0, atol=1e-5)
    _check_changes(res, ref, names, base)


# Every family with q/k norms: TransformerLens's hook_q / hook_k are the projections' outputs, before
# the norm (per head in Qwen3 and Gemma 3, over all heads in OLMo-2) and before the rotary embedding.
# The norm is not linear, so the first-order estimate depends on where q and k are read: after the
# norm, Qwen3's q and Gemma 3's k estimates are off by as much as the effect itself.
QK_NORM_FAMILIES = ["qwen3", "gemma3", "olmo2"]


@pytest.mark.parametrize("family", QK_NORM_FAMILIES)
def test_q_and_k_estimates_are_taken_where_transformerlens_hooks_them(family, models64):
    from logitscope.models.adapters import adapter_for

    hf, tl = models64(family)
    attn = adapter_for(hf).attention(adapter_for(hf).blocks(hf)[0])
    assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm"), f"{family}: a family with q/k norms"
    names = ["attn_head_q_all_pos", "attn_head_k_all_pos"]
    res = run_patching("arena", hf, tokenizer=gpt2_tokenizer(), what=names, positions="index", method="attribution")
    ref, f0 = tl_finite_differences(tl, res, names, "denoise")
    np.testing.assert_allclose(res.corrupted_logit_diff, f0, rtol=0, atol=1e-5)
    _check_changes(res, ref, names, res.corrupted_logit_diff)


class FrozenScaleNorm(torch.nn.Module):
    """A LayerNorm whose scale is frozen at ``scale``: ``(x − mean(x)) · scale · w + b``, linear in x."""

    def __init__(self, norm: torch.nn.Module, scale: float):
        super().__init__()
        self.weight, self.bias, self.eps, self.scale = norm.weight, norm.bias, norm.eps, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(-1, keepdim=True)) * self.scale * self.weight + self.bias


# The last layer's components that nothing but the final norm reads: its MLP output (at every
# position: later positions never read the last layer), and in a parallel-attention family (GPT-NeoX:
# the MLP reads resid_pre, not the attention's output) also its heads' z and v and its attention output.
LINEAR = {"gpt2": ["mlp_out"],
          "gpt_neox": ["mlp_out", "attn_out", "attn_head_out_all_pos", "attn_head_v_all_pos", "attn_head_out_by_pos"]}


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_the_estimate_is_exact_where_the_metric_is_linear(family):
    from logitscope.models.adapters import adapter_for

    hf = make_hf_model(family, size="tiny", seed=2, n_ctx=64)
    what = "layers,heads,attn_head_v_all_pos,heads_by_pos"
    real = run_patching("arena", hf, tokenizer=gpt2_tokenizer(), what=what, positions="index", method="both")
    norm = adapter_for(hf).final_norm(hf)
    parent, attr = next((p, n) for p in hf.modules() for n, c in p.named_children() if c is norm)
    setattr(parent, attr, FrozenScaleNorm(norm, 0.7))
    try:
        frozen = run_patching("arena", hf, tokenizer=gpt2_tokenizer(), what=what, positions="index", method="both")
    finally:
        setattr(parent, attr, norm)
    for name in LINEAR[family]:
        exact, estimate = frozen.grids[name][-1], frozen.grids[name + "_attribution"][-1]
        assert np.abs(exact - frozen.corrupted_logit_diff).max() > 0.1, f"{name}: the patches must do something"
        np.testing.assert_allclose(estimate, exact, rtol=0, atol=1e-5, err_msg=name)  # float32 noise ~1e-6
        # Not exact with the real norm (its scale depends on the patched vector), nor in the first layer.
        assert np.abs(real.grids[name + "_attribution"][-1] - real.grids[name][-1]).max() > 1e-3, name
        assert np.abs(frozen.grids[name + "_attribution"][0] - frozen.grids[name][0]).max() > 1e-2, name


# ---------------------------------------------------------------------------------------------- batches, the model
def test_mixed_length_batches_give_each_prompt_its_own_estimate():
    """Right padding: every prompt's metric is at its own last token, so a padded batch gives what
    the prompt alone gives (IOI prompts of several lengths, named positions)."""
    hf = make_hf_model("llama", size="tiny", seed=4, n_ctx=64)
    tok = gpt2_tokenizer()
    together = run_patching("ioi:10", hf, tokenizer=tok, what="all", method="attribution", batch_size=10)
    lengths = {len(tok.encode(p.text)) for p in together.study.prompts}
    assert len(lengths) > 1 and together.positions.mode == "named"
    alone = run_patching("ioi:10", hf, tokenizer=tok, what="all", method="attribution", batch_size=1)
    for name, values in together.grids.items():
        np.testing.assert_allclose(values, alone.grids[name], rtol=0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(together.corrupted_logit_diff, alone.corrupted_logit_diff, atol=1e-5)


def test_the_model_is_left_as_it_was():
    hf = make_hf_model("qwen2", size="tiny", seed=1, n_ctx=64)
    tok = gpt2_tokenizer()
    calls = []
    handle = hf.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))

    def hooks():
        def own(d):
            return [h for h in d.values() if "output_capuring_hook" not in getattr(h, "__qualname__", "")]
        return {name: (own(m._forward_hooks), own(m._forward_pre_hooks), list(m._backward_hooks.values()))
                for name, m in hf.named_modules()}

    params = dict(hf.named_parameters())
    assert all(p.requires_grad and p.grad is None for p in params.values())
    weights = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    before, impl, config, training = hooks(), hf.config._attn_implementation, hf.config.to_dict(), hf.training
    res = run_patching("arena", hf, tokenizer=tok, what="all", method="both")
    assert all(p.requires_grad and p.grad is None for p in params.values())  # no gradient reached a parameter
    assert all(torch.equal(v, weights[k]) for k, v in hf.state_dict().items())
    assert hf.config._attn_implementation == impl and hf.config.to_dict() == config and hf.training == training
    assert hooks() == before and torch.is_grad_enabled()
    n = len(calls)
    hf(torch.tensor([[1, 2, 3]]))
    assert len(calls) == n + 1
    handle.remove()
    # Frozen parameters, and a caller inside torch.inference_mode(): the same estimates, flags untouched.
    for p in params.values():
        p.requires_grad_(False)
    with torch.inference_mode():
        frozen = run_patching("arena", hf, tokenizer=tok, what="all", method="attribution")
    assert not any(p.requires_grad for p in params.values())
    for name, values in frozen.grids.items():
        np.testing.assert_allclose(values, res.grids[name], rtol=0, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------- agreement, results
def _brute_ranks(x):
    """rank_i = 1 + #{j: x_j < x_i} + (#{j: x_j = x_i} − 1) / 2: the average rank, by definition."""
    x = np.asarray(x)
    return np.array([1 + (x < v).sum() + ((x == v).sum() - 1) / 2 for v in x])


def test_agreement_statistics_equal_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + 0.3 * rng.normal(size=40)
    y[:6] = y[0]  # ties
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    np.testing.assert_array_equal(average_ranks(y), _brute_ranks(y))
    assert spearman(x, y) == pytest.approx(np.corrcoef(_brute_ranks(x), _brute_ranks(y))[0, 1], abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0) and spearman(x, -x**3) == pytest.approx(-1.0)
    assert pearson(x, np.ones(40)) is None and spearman(np.ones(3), x[:3]) is None
    exact = np.array([[0.0, 1.0], [2.0, np.nan]])
    est = np.array([[0.05, 1.5], [1.9, 3.0]])
    ag = agreement(exact, est, clean=2.0, corrupted=0.0, label=lambda k: f"cell{k}")
    assert ag["n_cells"] == 3 and ag["max_abs_error"] == pytest.approx(0.5) and ag["max_abs_error_at"] == "cell1"
    assert ag["off_threshold"] == pytest.approx(OFF_FRACTION * 2.0)
    assert [o["cell"] for o in ag["off"]] == ["cell1"] and ag["off"][0]["error_fraction"] == pytest.approx(0.25)
    assert ag["pearson"] == pytest.approx(np.corrcoef([0, 1, 2], [0.05, 1.5, 1.9])[0, 1])


def test_results_json_holds_each_estimate_beside_its_grid_with_agreement(tmp_path):
    from logitscope.stats import bootstrap_means, percentile_interval

    hf = make_hf_model("gpt2", size="tiny", seed=1, n_ctx=64)
    res = run_patching("ioi:24", hf, tokenizer=gpt2_tokenizer(), what="heads,layers", method="both", seed=3)
    res.save(tmp_path / "out", report=False)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())["patching"]
    npz = np.load(tmp_path / "out" / "patching_per_prompt.npz")
    assert doc["method"] == "both"
    keys = [k for k in doc if k.startswith(("attn_", "mlp_"))]
    assert keys == ["attn_head_out_all_pos", "attn_head_out_all_pos_attribution", "attn_out", "attn_out_attribution",
                    "mlp_out", "mlp_out_attribution"]
    gap = abs(np.mean(doc["clean_logit_diff"]["per_prompt"]) - np.mean(doc["corrupted_logit_diff"]["per_prompt"]))
    for name in ("attn_head_out_all_pos", "attn_out", "mlp_out"):
        exact, est = doc[name], doc[name + "_attribution"]
        assert sorted(est) == sorted(exact) and est["axes"] == exact["axes"]
        a, b = np.array(exact["values"], dtype=float), np.array(est["values"], dtype=float)
        assert a.shape == b.shape
        per_prompt = npz[f"grid_{name}_attribution"].astype(np.float64)
        np.testing.assert_allclose(per_prompt.mean(-1), b, atol=1e-5)
        lo, hi = percentile_interval(bootstrap_means(per_prompt, seed=3))  # the study's resamples
        np.testing.assert_allclose(np.array(est["ci95_low"]), lo, atol=1e-5)
        np.testing.assert_allclose(np.array(est["ci95_high"]), hi, atol=1e-5)
        ag = doc["agreement"][name]
        a, b = a.reshape(-1), b.reshape(-1)
        assert ag["pearson"] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9)
        assert ag["spearman"] == pytest.approx(np.corrcoef(_brute_ranks(a), _brute_ranks(b))[0, 1], abs=1e-9)
        assert ag["max_abs_error"] == pytest.approx(np.abs(a - b).max(), abs=1e-12)
        off = np.nonzero(np.abs(a - b) > OFF_FRACTION * gap)[0]
        assert sorted(o["cell"] for o in ag["off"]) == sorted(res.cell_label(name, int(k)) for k in off)
    assert any(doc["agreement"][n]["off"] for n in doc["agreement"])  # the estimate's failures are shown
    assert "attribution vs exact: Pearson" in res.summary()


def test_patch_command_attribution_alone_both_and_bad_method(tmp_path, capsys):
    from logitscope.cli import main

    model = save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path / "tiny")
    out = tmp_path / "alone"
    assert main(["patch", "--model", str(model), "--prompts", "ioi:12", "--out", str(out), "--quiet",
                 "--what", "heads,layers", "--method", "attribution"]) == 0
    doc = json.loads((out / "results.json").read_text())["patching"]
    assert doc["method"] == "attribution" and "agreement" not in doc
    assert "attn_head_out_all_pos" not in doc and np.array(doc["attn_head_out_all_pos_attribution"]["values"]).shape == (2, 4)
    html = (out / "report.html").read_text()
    assert 'data-figure="patch_attn_head_out_all_pos_attribution"' in html and "first-order estimate" in html
    out = tmp_path / "both"
    assert main(["patch", "--model", str(model), "--prompts", "ioi:12", "--out", str(out), "--quiet",
                 "--what", "heads", "--method", "both"]) == 0
    assert "attn_head_out_all_pos: attribution vs exact: Pearson" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())["patching"]
    assert set(doc["agreement"]["attn_head_out_all_pos"]) >= {"pearson", "spearman", "max_abs_error", "off"}
    html = (out / "report.html").read_text()
    assert 'data-figure="atp_scatter_attn_head_out_all_pos"' in html and "Largest |error|" in html
    with pytest.raises(SystemExit) as e:
        main(["patch", "--model", str(model), "--prompts", "ioi:12", "--out", str(tmp_path / "x"), "--method", "fast"])
    assert e.value.code == 2 and "--method: invalid choice: 'fast'" in capsys.readouterr().err
    assert main(["patch", "--model", str(model), "--prompts", "ioi:12", "--out", str(tmp_path / "x"),
                 "--what", "none", "--ablate", "L0H0", "--method", "attribution"]) == 2
    assert "--method attribution: attribution patching estimates patching grids" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ls.ArgumentError, match=r"method='fast': use exact"):
        run_patching("ioi:4", model, method="fast")
