"""nnsight 0.8 used well for all-heads activation patching, on the unmodified HF model.

    python bench/contenders/patch_nnsight.py --model DIR --prompts PAIRS.jsonl --result OUT.json [--batch-size 64]

Runs in bench/envs/nnsight-0.8.txt's environment. What a competent nnsight user writes for
TransformerLens's ``get_act_patch_attn_head_out_all_pos`` (denoising): per batch of pairs, one
trace of the clean prompts saving every layer's merged heads entering ``attn.c_proj`` (``z``);
then, per layer, one trace whose invokes are the layer's heads (nnsight batches invokes into one
forward pass: the 12 patched copies of the batch run together), each replacing its head's slice of
the corrupted run's ``c_proj`` input with the clean one and saving the answer logits at the last
position (``logits_to_keep=1``). The metric is the clean answers' mean logit difference; the grid
over all pairs is the batches' means weighted by their sizes. ``plain_forward`` times one plain
trace of the corrupted prompts, for reference.
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


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    args = p.parse_args()
    with phases("load"):
        model = TransformersModel(args.model, task="text-generation", dispatch=True)
        L, H, d = model.config.n_layer, model.config.n_head, model.config.n_embd
        dh = d // H
    with phases("tokenize"):
        tok = model.tokenizer
        rows = _common.read_prompts(args.prompts)
        enc = lambda texts: torch.tensor([[tok.bos_token_id] + x for x in tok(texts, add_special_tokens=False)["input_ids"]])  # noqa: E731
        clean, corrupted = enc([r["prompt"] for r in rows]), enc([r["corrupted"] for r in rows])
        answers = tok([a for r in rows for a in (r["correct"], r["incorrect"])], add_special_tokens=False)["input_ids"]
        answers = torch.tensor([a[0] for a in answers]).view(-1, 2)
    N = clean.shape[0]
    with phases("plain_forward"), torch.inference_mode():
        for s in range(0, N, args.batch_size):
            with model.trace(corrupted[s : s + args.batch_size], logits_to_keep=1):
                model.lm_head.output.save()
    grid = torch.zeros(L, H)
    with phases("patching"), torch.inference_mode():
        for s in range(0, N, args.batch_size):
            x, c, ans = corrupted[s : s + args.batch_size], clean[s : s + args.batch_size], answers[s : s + args.batch_size]
            B = x.shape[0]
            z = []
            with model.trace(c, logits_to_keep=1):
                for block in model.transformer.h:
                    z.append(block.attn.c_proj.input.save())
            for layer in range(L):
                out = []
                with model.trace(logits_to_keep=1) as tracer:
                    for head in range(H):
                        with tracer.invoke(x):
                            cut = slice(head * dh, (head + 1) * dh)
                            model.transformer.h[layer].attn.c_proj.input[:, :, cut] = z[layer][:, :, cut]
                            out.append(model.lm_head.output[:, -1].save())
                for head, logits in enumerate(out):
                    diff = logits.gather(1, ans[:, :1]) - logits.gather(1, ans[:, 1:])
                    grid[layer, head] += diff.sum()
        grid = grid / N
    print(f"nnsight patching: grid mean {float(grid.mean()):.6f}")
    _common.write_result(args.result, phases, args.device, grid=grid.tolist(), n_prompts=N, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
