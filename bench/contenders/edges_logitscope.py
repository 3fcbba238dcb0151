"""logitscope's edge attribution (EAP or EAP-IG-inputs) on IOI pairs, and optionally MIB's faithfulness curve.

    python bench/contenders/edges_logitscope.py --model DIR --prompts PAIRS.jsonl --result OUT.json \
        --method eap|eap-ig-inputs [--steps 5] [--batch-size 32] [--curve] [--scores-out SCORES.json]

Loads the checkpoint with ``logitscope.models.load_model`` (CPU, fp32), encodes the pairs as
``logitscope edges`` does (BOS prepended, the JSONL ``corrupted`` field as the counterpart), and
times a plain forward pass over the clean prompts in batches of 64 (phase ``plain_forward``, the unit),
``EdgeEngine.scores`` (phase ``scores``) and, with ``--curve``, the faithfulness curve by
|score| at MIB's ten fractions (phase ``curve``: eleven circuit evaluations, the empty circuit
included, plus the clean runs), each in wall and in CPU seconds (``cpu_phases_s``). ``--scores-out`` gets every edge's score by name, for the
agreement check against the EAP-IG library.
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import json
import sys

phases = _common.Phases()

cpu = _common.CpuPhases(phases)
with phases("import"):
    import torch

    from logitscope.methods.edges import EdgeData, EdgeEngine, faithfulness_curve
    from logitscope.models import load_model


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["eap", "eap-ig-inputs", "clean-corrupted"], required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--curve", action="store_true")
    p.add_argument("--scores-out", default=None)
    args = p.parse_args()
    with phases("load"):
        lm = load_model(args.model, device=args.device)
    with phases("tokenize"):
        rows = _common.read_prompts(args.prompts)
        tok = lm.tokenizer
        bos = [tok.bos_token_id]
        clean = [bos + tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
        corrupted = [bos + tok(r["corrupted"], add_special_tokens=False)["input_ids"] for r in rows]
        answers = [[tok(r[k], add_special_tokens=False)["input_ids"][0] for k in ("correct", "incorrect")] for r in rows]
        data = EdgeData(clean, corrupted, [a[0] for a in answers], [a[1] for a in answers], tok.eos_token_id)
        engine = EdgeEngine(lm, data, intervention="patching", metric="logit-diff", batch_size=args.batch_size)
    with cpu("plain_forward"), torch.inference_mode():  # the unit, in this process: the clean prompts, batches of 64
        ids = torch.tensor(clean)  # equal lengths (bench/prompts.py)
        for s in range(0, len(ids), 64):
            lm.model(input_ids=ids[s:s + 64], use_cache=False)
    steps = args.steps if args.method == "eap-ig-inputs" else None
    with cpu("scores"):
        scores = engine.scores(args.method, steps=steps)
    curve = None
    if args.curve:
        with cpu("curve"):
            curve = faithfulness_curve(engine, scores, absolute=True).to_dict()
    g = engine.graph
    vec = g.edge_vector(scores)
    if args.scores_out:
        with open(args.scores_out, "w", encoding="utf-8") as f:
            json.dump(dict(zip(g.edge_names, vec.tolist())), f)
    print(f"logitscope {args.method}: {g.n_edges} edges, sum |score| {float(vec.abs().sum()):.6f}")
    _common.write_result(args.result, phases, args.device, n_prompts=data.n, n_edges=g.n_edges, method=args.method,
                         steps=steps, batch_size=args.batch_size, curve=curve, cpu_phases_s=cpu.times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
