"""A synthetic, IOI-shaped study result, to preview the report without a model.

The numbers are made up but shaped like GPT-2 small on the IOI task (ARENA's head and layer
values), and internally consistent: the parts add up to the logit difference. The README's
screenshot, ``docs/report.png``, is the top of this report::

    python -m logitscope.report.demo /tmp/demo/report.html
    chromium --headless --no-sandbox --hide-scrollbars --virtual-time-budget=10000 \
        --window-size=1200,2400 --screenshot=docs/report.png file:///tmp/demo/report.html
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from logitscope.results.study import AttentionView, StudyData
from logitscope.inputs.prompt import Prompt

_NAMES = ["Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Alice", "Bob", "Kate", "Paul"]
_PLACES = ["shops", "park", "store", "school", "garden", "office"]
_OBJECTS = ["bag", "ball", "drink", "ring", "book", "snack"]
_TEMPLATES = [
    "When {a} and {b} went to the {place}, {s} gave the {obj} to",
    "Then, {a} and {b} had a lot of fun at the {place}. {s} gave a {obj} to",
    "After {a} and {b} went to the {place}, {s} gave a {obj} to",
    "While {a} and {b} were working at the {place}, {s} gave a {obj} to",
]
# Mean direct effect of notable heads (ARENA / TransformerLens demo, 8 prompts).
_HEADS = {
    (9, 9): 2.985, (9, 6): 1.384, (10, 0): 0.561, (10, 10): 0.48, (8, 10): 0.29, (10, 6): 0.288, (7, 9): 0.183,
    (10, 1): 0.171, (7, 3): 0.135, (9, 0): 0.086, (10, 7): -1.899, (11, 10): -0.97, (11, 2): -0.388, (8, 6): -0.083,
    (11, 6): -0.081, (11, 9): -0.04,
}


def _prompts(n: int, rng: np.random.Generator) -> list[Prompt]:
    first = Prompt("When John and Mary went to the shops, John gave the bag to", " Mary", " John",
                   {"template": 1, "order": "BABA", "io": "Mary", "s": "John"})
    out = [first]
    for i in range(1, n):
        t = i % len(_TEMPLATES)
        io, s = (str(x) for x in rng.choice(_NAMES, size=2, replace=False))
        order = "ABBA" if i % 2 == 0 else "BABA"
        a, b = (io, s) if order == "ABBA" else (s, io)
        text = _TEMPLATES[t].format(a=a, b=b, s=s, place=rng.choice(_PLACES), obj=rng.choice(_OBJECTS))
        out.append(Prompt(text, " " + io, " " + s, {"template": t + 1, "order": order, "io": io, "s": s}))
    return out


def _attention(n_layers: int, n_heads: int, rng: np.random.Generator) -> AttentionView:
    tokens = ["<|endoftext|>", "When", " John", " and", " Mary", " went", " to", " the", " shops", ",", " John", " gave",
              " the", " bag", " to"]
    T = len(tokens)
    logits = rng.normal(0.0, 1.0, size=(n_layers, n_heads, T, T))
    logits[..., 0] += 2.5  # attention sink on BOS
    for (layer, head), v in _HEADS.items():
        if layer < n_layers and head < n_heads:
            logits[layer, head, -1, 4] += 4.0 + abs(v)  # END -> IO (" Mary")
    logits = np.where(np.tril(np.ones((T, T), dtype=bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return AttentionView.from_all_heads(0, tokens, (p / p.sum(-1, keepdims=True)).astype(np.float32))


def synthetic_result(
    n_prompts: int = 400,
    n_layers: int = 12,
    n_heads: int = 12,
    seed: int = 0,
    model: str = "gpt2 (synthetic demo data)",
) -> StudyData:
    """An IOI-shaped result for ``model`` with per-prompt noise; the parts sum to the logit difference."""
    rng = np.random.default_rng(seed)
    N, L, H = n_prompts, n_layers, n_heads
    mean = np.zeros((L, H))
    for (layer, head), v in _HEADS.items():
        if layer < L and head < H:
            mean[layer, head] = v
    prompt_scale = rng.lognormal(0.0, 0.25, size=N)
    noise = rng.normal(0.0, 0.02, size=(L, H, N)) + rng.normal(0.0, 0.15, size=(L, H, N)) * (mean[..., None] != 0)
    heads = mean[..., None] * prompt_scale + noise
    attn_bias = rng.normal(0.0, 0.01, size=(L, N))
    mlp_bias = rng.normal(0.0, 0.005, size=(L, N))
    mlp = mlp_bias + rng.normal(0.02, 0.05, size=(L, N)) * np.linspace(0.2, 1.0, L)[:, None]
    embed = rng.normal(0.0, 0.02, size=N)
    pos_embed = rng.normal(0.0, 0.01, size=N)
    final_bias = rng.normal(-0.05, 0.3, size=N)
    attn = heads.sum(1) + attn_bias
    logit_diff = embed + pos_embed + attn.sum(0) + mlp.sum(0) + final_bias + rng.normal(0, 1e-6, size=N)
    p_c = 1.0 / (1.0 + np.exp(-(logit_diff - 0.3)))
    return StudyData(
        model=model,
        family="gpt2",
        norm="LayerNorm",
        parallel_attn_mlp=False,
        device="cpu",
        dtype="float32",
        n_layers=L,
        n_heads=H,
        prompts=_prompts(N, rng),
        correct_ids=rng.integers(0, 50257, size=N),
        incorrect_ids=rng.integers(0, 50257, size=N),
        n_tokens=rng.integers(14, 22, size=N),
        logit_diff=logit_diff,
        prob_correct=p_c * 0.7,
        prob_incorrect=(1 - p_c) * 0.4,
        direct=logit_diff - final_bias,
        scale=rng.uniform(2.0, 4.0, size=N),
        embed=embed,
        pos_embed=pos_embed,
        attn_out=attn,
        mlp_out=mlp,
        head_results=heads,
        attn_bias=attn_bias,
        mlp_bias=mlp_bias,
        final_norm_bias=final_bias,
        attention=_attention(L, H, rng),
        top_k=3,
        seed=seed,
        version="0.1.0",
        created="2026-01-01T12:00:00+00:00",
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from logitscope.report import write_report

    parser = argparse.ArgumentParser(
        prog="python -m logitscope.report.demo",
        description="Write a report from synthetic, IOI-shaped demo numbers (no model needed) to REPORT.html.")
    parser.add_argument("target", metavar="REPORT.html", help="the HTML file to write (required: nothing is "
                        "overwritten unless named)")
    target = Path(parser.parse_args(argv).target)
    if target.is_dir():
        parser.error(f"{target} is a folder; name the HTML file to write, e.g. {target / 'report.html'}")
    print(write_report(synthetic_result(), target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
