"""The floor: a plain Hugging Face forward pass per batch, keeping only the two answer logits.

    python bench/contenders/floor.py --model DIR --prompts FILE.jsonl --result OUT.json \
        [--device cpu] [--batch-size 64] [--lean]

Loads ``AutoModelForCausalLM.from_pretrained(DIR)`` (the default attention, SDPA), tokenizes with
BOS prepended (as logitscope and TransformerLens do for GPT-2), and for each batch of equal-length
prompts runs ``model(input_ids=..., use_cache=False)`` under ``torch.inference_mode`` and gathers
``logits[:, -1, correct] - logits[:, -1, incorrect]``; the sum stays on the device until the end
(one host sync). Nothing else is computed: this is the cost of the forward pass itself.

``--lean`` is a stricter floor, reported for information: it runs the base transformer only
(``model.transformer``) and dots the last position's final hidden state with the two answers'
unembedding rows, so the ``[B, T, vocab]`` logits are never formed.
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import sys

phases = _common.Phases()
with phases("import"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--lean", action="store_true", help="base model + two unembedding rows (no full logits)")
    args = p.parse_args()
    device = torch.device(args.device)

    with phases("load"):
        tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True).to(device).eval()

    with phases("tokenize"):
        rows = _common.read_prompts(args.prompts)
        ids = tok([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
        tokens = torch.tensor([[tok.bos_token_id] + x for x in ids], device=device)  # equal lengths
        answers = tok([a for r in rows for a in (r["correct"], r["incorrect"])], add_special_tokens=False)["input_ids"]
        answers = torch.tensor([a[0] for a in answers], device=device).view(-1, 2)  # [N, 2]

    with phases("forward"), torch.inference_mode():
        total = torch.zeros((), device=device)
        W_U = model.get_output_embeddings().weight  # [vocab, d]
        for start in range(0, tokens.shape[0], args.batch_size):
            x, ans = tokens[start : start + args.batch_size], answers[start : start + args.batch_size]
            if args.lean:
                h = model.transformer(input_ids=x, use_cache=False).last_hidden_state[:, -1]  # after ln_f
                total += (h * (W_U[ans[:, 0]] - W_U[ans[:, 1]])).sum()
            else:
                last = model(input_ids=x, use_cache=False).logits[:, -1]  # [B, vocab]
                two = last.gather(1, ans)
                total += (two[:, 0] - two[:, 1]).sum()
        mean = float(total) / tokens.shape[0]

    print(f"floor{' (lean)' if args.lean else ''}: mean logit diff {mean:.6f}")
    _common.write_result(args.result, phases, args.device, mean_logit_diff=mean, n_prompts=int(tokens.shape[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
