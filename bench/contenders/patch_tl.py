"""TransformerLens 3.9 "used well" for all-heads activation patching.

    python bench/contenders/patch_tl.py --model DIR --prompts PAIRS.jsonl --result OUT.json [--batch-size 64]

The ``HookedTransformer`` is built offline from the checkpoint as ``tl_used_well.py`` builds it
(the seed's processing). For each batch of ``--batch-size`` pairs (equal lengths): one
``run_with_cache`` of the clean prompts filtered to the ``hook_z`` hooks the grid reads, then
``transformer_lens.patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache,
metric)`` with the clean answers' mean logit difference of the batch as the metric; the grid over
all pairs is the batches' means weighted by their sizes. ``plain_forward`` times one plain
``model(corrupted)`` over every batch, for reference.
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import contextlib
import io
import sys

phases = _common.Phases()
with phases("import"):
    import torch
    from transformer_lens import patching
    from tl_used_well import load


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    args = p.parse_args()
    with phases("load"):
        model = load(args.model, args.device)
    with phases("tokenize"):
        rows = _common.read_prompts(args.prompts)
        clean = model.to_tokens([r["prompt"] for r in rows], prepend_bos=True)
        corrupted = model.to_tokens([r["corrupted"] for r in rows], prepend_bos=True)
        answers = torch.tensor([[model.to_single_token(r["correct"]), model.to_single_token(r["incorrect"])] for r in rows],
                               device=model.cfg.device)
    N, L = clean.shape[0], model.cfg.n_layers
    wanted = {f"blocks.{layer}.attn.hook_z" for layer in range(L)}
    with phases("plain_forward"), torch.no_grad():
        for s in range(0, N, args.batch_size):
            model(corrupted[s : s + args.batch_size])
    grid = torch.zeros(L, model.cfg.n_heads, device=model.cfg.device)
    with phases("patching"), torch.no_grad():
        for s in range(0, N, args.batch_size):
            x, c, ans = corrupted[s : s + args.batch_size], clean[s : s + args.batch_size], answers[s : s + args.batch_size]
            rows_ = torch.arange(x.shape[0], device=x.device)

            def metric(logits, ans=ans, rows_=rows_):
                last = logits[:, -1]
                return (last[rows_, ans[:, 0]] - last[rows_, ans[:, 1]]).mean()

            _, cache = model.run_with_cache(c, names_filter=lambda name: name in wanted)
            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                grid += patching.get_act_patch_attn_head_out_all_pos(model, x, cache, metric) * x.shape[0]
            del cache
        grid = (grid / N).cpu()
    print(f"transformer_lens patching: grid mean {float(grid.mean()):.6f}")
    _common.write_result(args.result, phases, args.device, grid=grid.tolist(), n_prompts=N, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
