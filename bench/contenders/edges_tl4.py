"""TransformerLens 4.3's own EAP (``attribution_patch``, edge granularity) on IOI pairs, on CPU.

    python bench/contenders/edges_tl4.py --model DIR --prompts PAIRS.jsonl --result OUT.json \
        [--batch-size 32] [--scores-out SCORES.json]

Runs in its own environment (``bench/envs/tl-4.3.txt``; ``bench/run.py``'s ``ensure_venv`` makes
it). TransformerLens 4.3 ships EAP as ``transformer_lens.tools.analysis.attribution_patching.
attribution_patch(model, clean, corrupt, metric_fn, EdgeAttributionConfig(granularity="edge"))``
on a ``TransformerBridge``; its EAP-IG (``ig_steps > 1``) raises ``NotImplementedError`` in 4.3,
so only EAP runs here. The bridge is booted from the local folder
(``TransformerBridge.boot_transformers(DIR)``, offline) without compatibility mode: the plain
Hugging Face weights, as logitscope reads them (folding and centring would not change the scores:
every reader of this graph reads through a layer norm).

What the tool computes, and how it is mapped onto logitscope's edges:

- each pair on its own (batch of one), a clean forward and a corrupted forward + backward; an
  edge ``(writer at position p, reader at position p)`` scores
  ``(clean − corrupted output of the writer) · ∂metric/∂(reader's input)`` with the gradient at the
  **corrupted** prompt (its "denoising" form), averaged over the pairs;
- its edges are per position: summing a (writer, reader) pair over positions gives the
  position-free edge (``input``/``a{l}.h{h}``/``m{l}`` -> ``a{l}.h{h}<q|k|v>``/``m{l}``/``logits``);
- ``--scores-out`` keeps *its* sign; ``bench/edges.py`` negates it (corrupted − clean, as
  logitscope) and compares it with logitscope's estimate at the corrupted prompt,
  2 × ``clean-corrupted`` − ``eap`` (logitscope's ``eap`` takes the gradient at the clean prompt).

The metric is the clean answers' logit difference at the last token of one example's logits. Phase
``scores`` is the tool's calls only, one per pair (the tool itself runs one pair at a time, and its
metric gets one example's logits without its index, so each pair's answers need their own call;
``--batch-size`` is recorded, not used); summing over positions and naming is phase ``collect``.
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bridge's docs: a local path plus offline mode

phases = _common.Phases()
with phases("import"):
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, Node, attribution_patch


def writer_name(node: Node) -> str:
    """logitscope's name of a TransformerLens 4 writer node (its position dropped)."""
    if node.kind == "embed":
        return "input"
    if node.kind == "attn_head_out":
        return f"a{node.layer}.h{node.head}"
    if node.kind == "mlp_out":
        return f"m{node.layer}"
    raise ValueError(f"not a writer node: {node}")


def reader_name(node: Node) -> str:
    """logitscope's name of a TransformerLens 4 reader node (its position dropped)."""
    if node.kind in ("q_input", "k_input", "v_input"):
        return f"a{node.layer}.h{node.head}<{node.kind[0]}>"
    if node.kind == "mlp_in":
        return f"m{node.layer}"
    if node.kind == "logits":
        return "logits"
    raise ValueError(f"not a reader node: {node}")


def by_name(edge_scores: dict[tuple[Node, Node], float], weight: float, into: dict[str, float]) -> None:
    """Add ``weight ×`` each per-position edge score into its position-free edge ``into[name]``."""
    for (w, r), s in edge_scores.items():
        name = f"{writer_name(w)}->{reader_name(r)}"
        into[name] = into.get(name, 0.0) + weight * s


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["eap"], default="eap", help="EAP only: TransformerLens 4.3 has no EAP-IG")
    p.add_argument("--steps", type=int, default=None, help="ignored (no EAP-IG in TransformerLens 4.3)")
    p.add_argument("--scores-out", default=None)
    args = p.parse_args()
    with phases("load"):
        model = TransformerBridge.boot_transformers(args.model, device=args.device).eval()
    with phases("tokenize"):
        rows = _common.read_prompts(args.prompts)
        clean = model.to_tokens([r["prompt"] for r in rows], prepend_bos=True)
        corrupted = model.to_tokens([r["corrupted"] for r in rows], prepend_bos=True)
        answers = torch.tensor([[model.to_single_token(r["correct"]), model.to_single_token(r["incorrect"])] for r in rows])
    with phases("plain_forward"), torch.inference_mode():  # for reference: the bridge's plain forward, batches of 64
        for s in range(0, len(clean), 64):
            model(clean[s:s + 64])
    n = len(rows)
    scores: dict[str, float] = {}
    n_position_edges = 0
    for i in range(n):  # one call per pair: its metric takes one example's logits, each pair its own answers
        a, b = int(answers[i, 0]), int(answers[i, 1])

        def logit_diff(logits: torch.Tensor, a: int = a, b: int = b) -> torch.Tensor:
            return logits[0, -1, a] - logits[0, -1, b]

        with phases("scores"):
            res = attribution_patch(model, clean[i:i + 1], corrupted[i:i + 1], logit_diff,
                                    EdgeAttributionConfig(granularity="edge"))
        with phases("collect"):
            by_name(res.edge_scores, 1.0 / n, scores)
            n_position_edges = len(res.edge_scores)
    if args.scores_out:
        with open(args.scores_out, "w", encoding="utf-8") as f:
            json.dump(scores, f)
    print(f"transformer-lens 4 EAP: {len(scores)} edges ({n_position_edges} per position), "
          f"sum |score| {sum(abs(v) for v in scores.values()):.6f}")
    _common.write_result(args.result, phases, args.device, n_prompts=n, n_edges=len(scores), method=args.method,
                         batch_size=args.batch_size, cpu_phases_s=phases.cpu, n_position_edges=n_position_edges)
    return 0


if __name__ == "__main__":
    sys.exit(main())
