"""TransformerLens 3.9 "used well": the seed notebook's study in batches, with a filtered cache.

    python bench/contenders/tl_used_well.py --model DIR --prompts FILE.jsonl --result OUT.json \
        [--device cpu] [--batch-size 64] [--all-hooks]

Builds the ``HookedTransformer`` that ``HookedTransformer.from_pretrained("gpt2", ...)`` would
build, offline, from the same checkpoint: the HF model is loaded with ``AutoModelForCausalLM``,
a ``HookedTransformerConfig`` is written out with the fields TL derives for GPT-2, the weights are
converted by ``transformer_lens.pretrained.weight_conversions.convert_gpt2_weights`` and loaded by
``load_and_process_state_dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
fold_value_biases=True, refactor_factored_attn_matrices=True)`` (the seed's flags).

Then, under ``torch.no_grad``, for each batch of ``--batch-size`` prompts (default 64; all prompts
have the same length, so ``pos_slice=-1`` is every prompt's last token) it runs
``run_with_cache(tokens, names_filter=<only the hooks the study reads>)`` and computes the seed's
study exactly as the seed writes it (``_tl_study.py``, shared with ``tl_bridge.py``): the logit
difference from the logits; the logit-difference directions from
``tokens_to_residual_directions``; the DLA check (final residual through ``apply_ln_to_stack``);
the logit lens (``accumulated_resid(incl_mid=True)``); the per-layer attribution
(``decompose_resid``); the per-head attribution (``stack_head_results``). Per-batch sums are
accumulated and divided by N at the end (the mean over all prompts). The top heads are the
largest and most negative per-head means, and their attention patterns on prompt 0 come from one
more ``run_with_cache`` on that prompt with only the pattern hooks.

``--all-hooks`` drops the names filter; ``--batch-size N`` with ``--all-hooks`` is the seed's
naive way (one ``run_with_cache`` over every prompt), which ``bench/run.py --naive`` runs.
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import sys
import warnings

phases = _common.Phases()
with phases("import"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    import _tl_study

SEED_FLAGS = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": True,
}


def load(model_dir: str, device: str) -> HookedTransformer:
    """``HookedTransformer.from_pretrained``'s GPT-2 path, offline, from a local HF checkpoint."""
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=4 * c.n_embd,
        n_layers=c.n_layer,
        n_ctx=c.n_positions,
        eps=c.layer_norm_epsilon,
        d_vocab=c.vocab_size,
        act_fn=c.activation_function,
        use_attn_scale=True,
        use_local_attn=False,
        scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
        normalization_type="LNPre",  # what from_pretrained(fold_ln=True) asks for
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
        tokenizer_prepends_bos=False,
        model_name="gpt2-small-random",
        device=device,
        dtype=torch.float32,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "HookedTransformer is deprecated"
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    with torch.no_grad():
        state_dict = convert_gpt2_weights(hf, cfg)
        del hf
        model.load_and_process_state_dict(state_dict, **SEED_FLAGS)
    model.move_model_modules_to_device()
    return model.eval()


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--all-hooks", action="store_true", help="cache every hook (no names_filter), as the seed does")
    p.add_argument("--top-k", type=int, default=3)
    args = p.parse_args()

    with phases("load"):
        model = load(args.model, args.device)

    with phases("tokenize"):
        rows = _common.read_prompts(args.prompts)
        tokens = model.to_tokens([r["prompt"] for r in rows], prepend_bos=True)  # [N, T], equal lengths
        answer_tokens = torch.tensor(
            [[model.to_single_token(r["correct"]), model.to_single_token(r["incorrect"])] for r in rows],
            device=model.cfg.device,
        )

    names = set(_tl_study.needed_hooks(model.cfg.n_layers))
    cache_kwargs = {} if args.all_hooks else {"names_filter": lambda name: name in names}
    study = _tl_study.run_seed_study(
        model, tokens, answer_tokens, batch_size=args.batch_size, cache_kwargs=cache_kwargs, top_k=args.top_k, phases=phases
    )
    print(f"transformer_lens: mean logit diff {study['mean_logit_diff']:.6f}; top heads {study['top_heads']}; "
          f"most negative {study['bottom_heads']}")
    _common.write_result(
        args.result, phases, args.device, n_prompts=int(tokens.shape[0]), batch_size=args.batch_size,
        names_filter=not args.all_hooks, **study,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
