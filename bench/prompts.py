"""N equal-length IOI prompts for the benchmark, as JSONL, so every contender reads the same ones.

    python bench/prompts.py --n 512 [--seed 0] [--out bench/.cache/ioi-512.jsonl]

Prompts come from ``logitscope.inputs.ioi.generate_ioi_prompts`` (the IOI paper's 15 templates,
ABBA and BABA alternating, names/places/objects restricted to single GPT-2 tokens). The same
prompts tokenize to different lengths by template; we keep only the prompts whose GPT-2 token
length (without BOS) is the most common one among the generated prompts, in generation order,
and take the first N. With the GPT-2 tokenizer and seed 0 that length is 15 tokens (16 with BOS),
which is templates 1, 5, 9, 10, 14 and 15, in both orders. Equal lengths are needed because the
seed's TransformerLens study reads position -1 of every row (``pos_slice=-1``) with no padding.

Each line is ``{"prompt", "correct", "incorrect"}`` plus the generator's metadata
(``template``, ``order``, ...), the format ``logitscope run --prompts FILE.jsonl`` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TOKENIZER_DIR = BENCH.parent / "tests" / "data" / "gpt2-tokenizer"


def equal_length_ioi(n: int, *, seed: int = 0, tokenizer: Any = None) -> tuple[list[dict[str, Any]], int]:
    """``n`` IOI prompt rows of one token length (the most common one) and that length (no BOS)."""
    from logitscope.inputs.ioi import generate_ioi_prompts

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    pool = 4 * n
    while True:
        prompts = generate_ioi_prompts(pool, seed=seed, tokenizer=tokenizer)
        lengths = [len(x) for x in tokenizer([p.text for p in prompts], add_special_tokens=False)["input_ids"]]
        length = Counter(lengths).most_common(1)[0][0]
        kept = [p for p, k in zip(prompts, lengths) if k == length]
        if len(kept) >= n:
            break
        pool *= 2
    rows = [
        {"prompt": p.text, "correct": p.correct, "incorrect": p.incorrect, **p.meta} for p in kept[:n]
    ]
    return rows, length


def write_prompts(path: str | Path, n: int, *, seed: int = 0) -> tuple[Path, int]:
    """Write ``n`` equal-length IOI prompts to ``path`` (JSONL); return the path and token length."""
    rows, length = equal_length_ioi(n, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, length


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default: bench/.cache/ioi-N.jsonl")
    args = parser.parse_args(argv)
    out = args.out or BENCH / ".cache" / f"ioi-{args.n}.jsonl"
    path, length = write_prompts(out, args.n, seed=args.seed)
    print(f"{path}: {args.n} prompts of {length} tokens (+ BOS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
