"""A small random-weight GPT-2 checkpoint, built offline, to try logitscope without downloading a model.

    python -m logitscope.demo_checkpoint runs/tiny-gpt2
    logitscope run --model runs/tiny-gpt2 --prompts seed --out runs/first

The weights are random (``transformers``' own initialisation, seeded), so the numbers mean nothing;
everything else (loading, prompts, the study, results.json, the report) runs as it would on a real
model. The tokenizer is a byte-level BPE, like GPT-2's, trained here in a second on IOI sentences,
so that the seed's names and the IOI generator's words are single tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BOS = "<|endoftext|>"


def _corpus() -> list[str]:
    from logitscope.inputs.ioi import generate_ioi_prompts
    from logitscope.inputs.prompts import BUILTIN_SETS

    prompts = generate_ioi_prompts(4000, seed=0)
    for make in BUILTIN_SETS.values():
        prompts += make() * 50
    return [p.text + p.correct for p in prompts] + [p.text + p.incorrect for p in prompts]


def demo_tokenizer(vocab_size: int = 2000):
    """A GPT-2-style byte-level BPE tokenizer (``<|endoftext|>`` as BOS) trained on IOI sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, unk_token=BOS)


def make_demo_checkpoint(folder: str | Path, *, seed: int = 0, n_layers: int = 2, d_model: int = 64,
                         n_heads: int = 4) -> Path:
    """Write a random-weight GPT-2 (``n_layers`` x ``n_heads``, ``d_model``) and its tokenizer into
    ``folder``, as ``save_pretrained`` does; return the folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    tokenizer = demo_tokenizer()
    bos = tokenizer.convert_tokens_to_ids(BOS)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                        bos_token_id=bos, eos_token_id=bos)
    config.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m logitscope.demo_checkpoint",
        description="Write a small random-weight GPT-2 checkpoint and its tokenizer into DIR (offline, a few "
        "seconds), to try logitscope without downloading a model: logitscope run --model DIR --prompts seed --out runs/x")
    parser.add_argument("folder", metavar="DIR", help="the folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--layers", type=int, default=2, help="number of layers (default 2)")
    parser.add_argument("--heads", type=int, default=4, help="heads per layer (default 4)")
    parser.add_argument("--d-model", type=int, default=64, help="residual width, a multiple of --heads (default 64)")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.heads < 1 or args.d_model < 1 or args.d_model % args.heads:
        parser.error("--layers and --heads must be at least 1, and --d-model a positive multiple of --heads")
    folder = Path(args.folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        parser.error(f"{folder} exists and is not an empty folder; choose a new one")
    print(make_demo_checkpoint(folder, seed=args.seed, n_layers=args.layers, d_model=args.d_model, n_heads=args.heads))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
