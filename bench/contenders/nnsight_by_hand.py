"""nnsight 0.8 used well: the seed's study on the unmodified HF model, conventions written by hand.

    python bench/contenders/nnsight_by_hand.py --model DIR --prompts FILE.jsonl --result OUT.json \
        [--device cpu] [--batch-size 64]

Runs in its own environment (``bench/envs/nnsight-0.8.txt``; ``bench/run.py`` makes it). What a
competent nnsight user writes for the seed's study: ``TransformersModel(DIR,
task="text-generation", dispatch=True)`` (nnsight's name for a causal LM since 0.8; the default
attention, sdpa, as logitscope's study and the floor use), one ``model.trace(tokens,
logits_to_keep=1)`` per batch of ``--batch-size`` under ``torch.inference_mode``, saving only the
last position (every prompt's answer position) of what the study reads: the token and position
embeddings, each block's input (``resid_pre``), the merged heads entering ``attn.c_proj`` (``z``)
and its output (``attn_out``), each MLP's output, the final norm's input, and the answer logits
(the LM head computes the last position only).

Then TransformerLens's conventions for the seed's processed model, by hand (the ~40 lines of
``study_batch``): the direction ``D = γ_f ⊙ (W_U[correct] − W_U[incorrect])`` centred over
``d_model`` (``fold_ln`` + ``center_writing_weights``; ``center_unembed`` cancels in a difference);
each component projected on ``D`` and divided by the final norm's frozen scale ``σ``; each head
``(z_h − b_V_eff[h]) · (W_O[h] D) / σ`` with ``b_V_eff = b_V + β₁ W_V`` (the value bias and the
first norm's bias through ``W_V``: ``fold_value_biases``). The logit lens adds the attention
output to ``resid_pre`` for ``resid_mid``. The top heads' patterns on prompt 0 are computed from
their layers' queries and keys (one more trace; sdpa returns no weights).
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

phases = _common.Phases()
with phases("import"):
    import torch
    from nnsight import TransformersModel


def conventions(model: TransformersModel) -> dict[str, torch.Tensor]:
    """The constants of the conventions: the final norm, the unembedding, every layer's effective
    value bias ``b_V + β₁ W_V`` and output projection ``W_O`` (HF ``Conv1D``: ``y = x W + b``)."""
    t, d = model.transformer, model.config.n_embd
    b_v, w_o = [], []
    for block in t.h:
        w_v = block.attn.c_attn.weight[:, 2 * d :]  # [d, H*d_head]
        b_v.append(block.attn.c_attn.bias[2 * d :] + block.ln_1.bias @ w_v)
        w_o.append(block.attn.c_proj.weight)  # [H*d_head, d]
    return {
        "gamma": t.ln_f.weight, "beta": t.ln_f.bias, "eps": torch.tensor(t.ln_f.eps),
        "W_U": model.lm_head.weight, "b_V": torch.stack(b_v), "W_O": torch.stack(w_o),
    }


def trace_batch(model: TransformersModel, x: torch.Tensor) -> dict[str, object]:
    """One forward, keeping the last position of everything the study reads."""
    blocks: list[tuple[object, ...]] = []
    with model.trace(x, logits_to_keep=1):
        t = model.transformer
        embed = t.wte.output[:, -1].save()
        pos = t.wpe.output[:, -1].save()
        for block in t.h:
            pre = block.input[:, -1].save()
            z = block.attn.c_proj.input[:, -1].save()
            attn = block.attn.c_proj.output[:, -1].save()
            mlp = block.mlp.output[:, -1].save()
            blocks.append((pre, z, attn, mlp))
        final = t.ln_f.input[:, -1].save()
        logits = model.lm_head.output[:, -1].save()
    return {"embed": embed, "pos": pos, "blocks": blocks, "final": final, "logits": logits}


def study_batch(c: dict[str, torch.Tensor], acts: dict[str, object], ans: torch.Tensor, H: int) -> dict[str, torch.Tensor]:
    """The seed's study for one batch, summed over its prompts."""
    D = (c["W_U"][ans[:, 0]] - c["W_U"][ans[:, 1]]) * c["gamma"]
    D = D - D.mean(-1, keepdim=True)  # [B, d]
    r = acts["final"]
    rc = r - r.mean(-1, keepdim=True)
    inv = 1.0 / torch.sqrt((rc * rc).mean(-1) + c["eps"])  # the final norm's frozen 1/σ, [B]

    def proj(v: torch.Tensor) -> torch.Tensor:  # [..., B, d] -> [...]: the summed attribution
        return ((v * D).sum(-1) * inv).sum(-1)

    lens, layers, heads = [], [proj(acts["embed"]), proj(acts["pos"])], []
    for layer, (pre, z, attn, mlp) in enumerate(acts["blocks"]):
        lens += [proj(pre), proj(pre + attn)]
        layers += [proj(attn), proj(mlp)]
        per_dim = (z - c["b_V"][layer]) * (D @ c["W_O"][layer].T)  # [B, H*d_head]
        heads.append(((per_dim.view(z.shape[0], H, -1).sum(-1)) * inv[:, None]).sum(0))
    lens.append(proj(r))
    logits = acts["logits"]
    return {
        "logit_diff": (logits.gather(1, ans[:, :1]) - logits.gather(1, ans[:, 1:])).sum(),
        "direct": proj(r),
        "logit_lens": torch.stack(lens),
        "layer_attribution": torch.stack(layers),
        "head_attribution": torch.stack(heads),
    }


def patterns(model: TransformersModel, x: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """The chosen heads' attention patterns on ``x`` (one prompt), from their queries and keys."""
    d, H = model.config.n_embd, model.config.n_head
    layers = sorted({layer for layer, _ in heads})
    qkv: dict[int, object] = {}
    with model.trace(x, logits_to_keep=1):
        for layer in layers:
            qkv[layer] = model.transformer.h[layer].attn.c_attn.output[0].save()  # [T, 3d]
    T, out = x.shape[-1], []
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer, head in heads:
        q, k = qkv[layer][:, :d].view(T, H, -1)[:, head], qkv[layer][:, d : 2 * d].view(T, H, -1)[:, head]
        scores = (q @ k.T) / q.shape[-1] ** 0.5
        out.append(scores.masked_fill(~causal, float("-inf")).softmax(-1))
    return torch.stack(out)


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--top-k", type=int, default=3)
    args = p.parse_args()

    with phases("load"):
        placement = {} if args.device == "cpu" else {"device_map": args.device}  # device_map needs accelerate
        model = TransformersModel(args.model, task="text-generation", dispatch=True, **placement)
        H = model.config.n_head

    with phases("tokenize"):
        tok = model.tokenizer
        rows = _common.read_prompts(args.prompts)
        ids = tok([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
        tokens = torch.tensor([[tok.bos_token_id] + x for x in ids], device=args.device)  # equal lengths
        answers = tok([a for r in rows for a in (r["correct"], r["incorrect"])], add_special_tokens=False)["input_ids"]
        answers = torch.tensor([a[0] for a in answers], device=args.device).view(-1, 2)

    N = tokens.shape[0]
    with phases("study"), torch.inference_mode():
        c = conventions(model)
        sums: dict[str, torch.Tensor] = {}
        for start in range(0, N, args.batch_size):
            s = slice(start, start + args.batch_size)
            for key, value in study_batch(c, trace_batch(model, tokens[s]), answers[s], H).items():
                sums[key] = value if key not in sums else sums[key] + value
        means = {k: (v / N).cpu() for k, v in sums.items()}
        flat = means["head_attribution"].flatten()
        k = min(args.top_k, flat.numel())
        top = [divmod(int(i), H) for i in torch.topk(flat, k).indices]
        bottom = [divmod(int(i), H) for i in torch.topk(-flat, k).indices]

    with phases("attention"), torch.inference_mode():
        pats = patterns(model, tokens[:1], top + bottom)

    L = model.config.n_layer
    mean = float(means["logit_diff"])
    print(f"nnsight: mean logit diff {mean:.6f}; top heads {top}; most negative {bottom}")
    _common.write_result(
        args.result, phases, args.device,
        mean_logit_diff=mean, n_prompts=N, batch_size=args.batch_size,
        direct=float(means["direct"]),
        logit_lens=means["logit_lens"].tolist(),
        logit_lens_labels=[f"{layer}_{kind}" for layer in range(L) for kind in ("pre", "mid")] + ["final_post"],
        layer_attribution=means["layer_attribution"].tolist(),
        layer_attribution_labels=["embed", "pos_embed"] + [f"{layer}_{kind}_out" for layer in range(L) for kind in ("attn", "mlp")],
        head_attribution=means["head_attribution"].tolist(),
        top_heads=top, bottom_heads=bottom, attention_shape=list(pats.shape),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
