"""TransformerLens 4.3 used well: ``TransformerBridge`` on the local checkpoint, the seed's study.

    python bench/contenders/tl_bridge.py --model DIR --prompts FILE.jsonl --result OUT.json \
        [--device cpu] [--batch-size 64] [--route cache|tool]

Runs in its own environment (``bench/envs/tl-4.3.txt``; ``bench/run.py`` makes it): TransformerLens
4.3 no longer has ``HookedTransformer``, only ``TransformerBridge``, which wraps the unmodified
Hugging Face model. The bridge is booted from the local folder as its docs advise for offline use
(``TransformerBridge.boot_transformers(DIR)`` with ``HF_HUB_OFFLINE=1``; it forces eager
attention, so that hooks see the patterns) and put into compatibility mode with the seed's flags
(``enable_compatibility_mode(fold_ln=True, center_writing_weights=True, center_unembed=True,
fold_value_biases=True, refactor_factored_attn_matrices=True)``), which its docs call required
for logit lens and direct logit attribution. Then, under ``torch.no_grad``, in batches of
``--batch-size`` (default 64):

- ``--route cache`` (default): the seed's study exactly as ``tl_used_well.py`` runs it on
  TransformerLens 3.9 (``_tl_study.py``: ``tokens_to_residual_directions``, ``apply_ln_to_stack``,
  ``accumulated_resid``, ``decompose_resid``, ``stack_head_results``), with
  ``run_with_cache(names_filter=<the hooks the study reads>, pos_slice=slice(-1, None))``: the
  cache keeps only those hooks, and of them only the answer position (every prompt's last; the
  bridge's ``run_with_cache`` slices as it stores);
- ``--route tool``: TransformerLens's own tool, ``transformer_lens.tools.analysis.
  direct_logit_attribution``, as its docs show it (``answer_tokens=``, ``incorrect_tokens=``,
  ``unit=``): one ``run_with_cache`` per batch (every hook, as the tool's own run caches), its
  logits for the logit difference, then the tool on that cache (its ``cache=`` argument) for
  ``unit="component"`` (the per-layer attribution), ``"layer"`` (the logit lens; its last entry
  is the DLA check) and ``"head"`` (per head, plus a remainder that is left out). Called with the
  prompts instead, the tool would run the model once per unit.

Both routes end as the seed does: the top heads, and their patterns on prompt 0 from one more
``run_with_cache`` with only the pattern hooks.
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bridge's docs: a local path plus offline mode

phases = _common.Phases()
with phases("import"):
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.tools.analysis import direct_logit_attribution

    import _tl_study

SEED_FLAGS = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": True,
}


def load(model_dir: str, device: str) -> TransformerBridge:
    bridge = TransformerBridge.boot_transformers(model_dir, device=device)
    bridge.enable_compatibility_mode(disable_warnings=True, **SEED_FLAGS)
    return bridge.eval()


def tool_study(model: TransformerBridge, tokens: torch.Tensor, answers: torch.Tensor, batch_size: int) -> _tl_study.Sums:
    """Per-batch sums of the study through ``direct_logit_attribution``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sums = _tl_study.Sums()
    for s in _tl_study.batched(tokens.shape[0], batch_size):
        x, ans = tokens[s], answers[s]
        logits, cache = model.run_with_cache(x)
        final = logits[:, -1, :]
        sums.add("logit_diff", (final.gather(1, ans[:, :1]) - final.gather(1, ans[:, 1:])).sum())

        def dla(unit: str):
            return direct_logit_attribution(
                model, answer_tokens=ans[:, 0], incorrect_tokens=ans[:, 1], unit=unit, cache=cache
            )

        layers, lens, heads = dla("component"), dla("layer"), dla("head")
        sums.labels["layer_attribution"], sums.labels["logit_lens"] = layers.labels, lens.labels
        sums.add("layer_attribution", layers.attribution.sum(-1))
        sums.add("logit_lens", lens.attribution.sum(-1))
        sums.add("direct", lens.attribution[-1].sum())  # "final_post": the final residual
        assert heads.labels[-1] == "remainder", heads.labels[-1]
        sums.add("head_attribution", heads.attribution[:-1].sum(-1).view(L, H))
    return sums


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--route", choices=("cache", "tool"), default="cache")
    p.add_argument("--top-k", type=int, default=3)
    args = p.parse_args()

    with phases("load"):
        model = load(args.model, args.device)

    with phases("tokenize"):
        rows = _common.read_prompts(args.prompts)
        tokens = model.to_tokens([r["prompt"] for r in rows], prepend_bos=True)  # [N, T], equal lengths
        answers = torch.tensor(
            [[model.to_single_token(r["correct"]), model.to_single_token(r["incorrect"])] for r in rows],
            device=tokens.device,
        )

    if args.route == "cache":
        cache_kwargs = {"names_filter": _tl_study.needed_hooks(model.cfg.n_layers), "pos_slice": slice(-1, None)}
        study = _tl_study.run_seed_study(
            model, tokens, answers, batch_size=args.batch_size, cache_kwargs=cache_kwargs, top_k=args.top_k, phases=phases
        )
    else:
        with phases("study"), torch.no_grad():
            sums = tool_study(model, tokens, answers, args.batch_size)
            means = sums.means(tokens.shape[0])
            top, bottom = _tl_study.top_heads(means["head_attribution"], args.top_k)
        with phases("attention"), torch.no_grad():
            pats = _tl_study.patterns(model, tokens, top + bottom)
        study = {**_tl_study.result_fields(means, sums.labels, top, bottom), "attention_shape": list(pats.shape)}

    print(f"tl_bridge ({args.route}): mean logit diff {study['mean_logit_diff']:.6f}; top heads "
          f"{study['top_heads']}; most negative {study['bottom_heads']}")
    _common.write_result(
        args.result, phases, args.device, n_prompts=int(tokens.shape[0]), batch_size=args.batch_size,
        route=args.route, **study,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
