"""Write a random-weight, GPT-2-small-shaped checkpoint for the benchmark (reused if present).

    python bench/make_checkpoint.py [--out bench/.cache/gpt2-small-random] [--seed 0] [--force]

The model is ``GPT2LMHeadModel(GPT2Config())``: the config's defaults are GPT-2 small's shape
(12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257, 1024 positions), fp32, saved as
safetensors, with the GPT-2 tokenizer files from ``tests/data/gpt2-tokenizer`` beside it, so
``AutoModelForCausalLM.from_pretrained(DIR)`` / ``AutoTokenizer.from_pretrained(DIR)`` work
offline. Speed and memory do not depend on the weights' values; they are random but not
degenerate (norm weights 1 + 0.1 N(0,1), norm and linear biases 0.05 N(0,1), everything else as
``transformers`` initialises it, seeded), so that the contenders' logit differences are O(1) and
their agreement check means something (norm and bias conventions are exercised).

The legacy ``n_ctx`` key is written too: TransformerLens 3.9 reads it from GPT-2 configs.
A ``bench-checkpoint.json`` stamp records what was built; a folder with a matching stamp is reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_DIR = BENCH / ".cache" / "gpt2-small-random"
TOKENIZER_DIR = REPO / "tests" / "data" / "gpt2-tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
STAMP = "bench-checkpoint.json"
STAMP_VERSION = 1


def _stamp(seed: int) -> dict[str, object]:
    return {"stamp_version": STAMP_VERSION, "shape": "gpt2-small (GPT2Config defaults)", "seed": seed}


def make_checkpoint(out: str | Path = DEFAULT_DIR, *, seed: int = 0, force: bool = False) -> Path:
    """Build the checkpoint in ``out`` unless a matching one is already there; return its path."""
    path = Path(out)
    stamp_file = path / STAMP
    if not force and stamp_file.exists():
        try:
            if json.loads(stamp_file.read_text()) == _stamp(seed) and (path / "config.json").exists():
                return path
        except json.JSONDecodeError:
            pass

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_ctx=1024)  # defaults = GPT-2 small; n_ctx for TransformerLens
    config.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = ".ln_" in name or name.startswith("transformer.ln_f")
            if is_norm and leaf == "weight":
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif leaf == "bias":
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, tmp / name)
    (tmp / STAMP).write_text(json.dumps(_stamp(seed)) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="checkpoint folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching checkpoint exists")
    args = parser.parse_args(argv)
    print(make_checkpoint(args.out, seed=args.seed, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
