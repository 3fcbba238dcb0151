"""The EAP-IG library (hannamw/EAP-IG) on TransformerLens 3.9: EAP or EAP-IG-inputs on IOI pairs, on CPU.

    python bench/contenders/edges_eapig.py --eap-ig-src DIR --model DIR --prompts PAIRS.jsonl --result OUT.json \
        --method eap|eap-ig-inputs [--steps 5] [--batch-size 32] [--scores-out SCORES.json]

``--eap-ig-src`` is a folder holding the library's ``eap`` package (its ``src/``, or the clone's
root, whose ``src/`` is then used); nothing of it is copied into this repository. Two things are
patched at run time, in this process only, without changing the library's files:

- the library allocates its score matrices with ``device='cuda'``: ``torch.zeros`` is wrapped so
  that a ``'cuda'`` device becomes the model's device (here the CPU);
- its ``visualization`` module imports matplotlib (used only to draw graphs, not installed in
  logitscope's venv): a stub module stands in for it.

The model is ``HookedTransformer`` built offline from the checkpoint as ``tl_used_well.py`` builds
it (TransformerLens's own processing), with ``use_attn_result``, ``use_split_qkv_input`` and
``use_hook_mlp_in`` set as the library requires. The metric is the clean answers' logit difference
at each prompt's last token, *summed* over the batch (the library divides the scores by the number
of prompts), so its scores are logitscope's (see the edges README section).
"""

from __future__ import annotations

import _common  # noqa: I001  (first: starts the in-process clock before torch is imported)

import contextlib
import io
import json
import sys
import types
from pathlib import Path

phases = _common.Phases()

cpu = _common.CpuPhases(phases)


def _import_library(src: str):
    """Import ``eap`` from ``src`` with the two run-time patches (see the module docstring)."""
    import torch

    root = Path(src)
    if (root / "src" / "eap").is_dir():
        root = root / "src"
    if not (root / "eap").is_dir():
        raise SystemExit(f"--eap-ig-src {src}: no eap package there (expected {root}/eap/)")
    for name in ("matplotlib", "matplotlib.cm"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                stub = types.ModuleType(name)
                stub.cm = stub  # type: ignore[attr-defined]
                sys.modules[name] = stub
    zeros = torch.zeros

    def zeros_on_cpu(*a, **kw):
        if str(kw.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            kw["device"] = "cpu"
        return zeros(*a, **kw)

    torch.zeros = zeros_on_cpu
    sys.path.insert(0, str(root))
    from eap.attribute import attribute
    from eap.graph import Graph

    return attribute, Graph


def main() -> int:
    p = _common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--eap-ig-src", required=True)
    p.add_argument("--method", choices=["eap", "eap-ig-inputs"], required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--scores-out", default=None)
    args = p.parse_args()
    with phases("import"):
        import torch

        attribute, Graph = _import_library(args.eap_ig_src)
        from tl_used_well import load
    with phases("load"):
        model = load(args.model, args.device)
        model.set_use_attn_result(True)
        model.set_use_split_qkv_input(True)
        model.set_use_hook_mlp_in(True)
    with phases("tokenize"):
        rows = _common.read_prompts(args.prompts)
        label = torch.tensor([[model.to_single_token(r["correct"]), model.to_single_token(r["incorrect"])] for r in rows])
        batches = [([r["prompt"] for r in rows[s:s + args.batch_size]], [r["corrupted"] for r in rows[s:s + args.batch_size]],
                    label[s:s + args.batch_size]) for s in range(0, len(rows), args.batch_size)]
        graph = Graph.from_model(model)

    def logit_diff(logits, clean_logits, input_lengths, labels):
        last = logits[torch.arange(logits.shape[0]), input_lengths - 1]
        return (last.gather(1, labels[:, :1].to(last.device)) - last.gather(1, labels[:, 1:].to(last.device))).sum()

    with cpu("plain_forward"), torch.inference_mode():  # for reference: TransformerLens's plain forward
        tokens = model.to_tokens([r["prompt"] for r in rows], prepend_bos=True)
        for s in range(0, len(tokens), 64):
            model(tokens[s:s + 64])
    method = {"eap": "EAP", "eap-ig-inputs": "EAP-IG-inputs"}[args.method]
    with cpu("scores"), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        attribute(model, graph, batches, logit_diff, method=method, intervention="patching",
                  ig_steps=args.steps if method == "EAP-IG-inputs" else None, quiet=True)
    fwd, bwd = graph.forward_index, graph.backward_index
    scores = {}
    for name, e in graph.edges.items():
        kw = {"qkv": e.qkv} if getattr(e, "qkv", None) else {}
        scores[name] = float(graph.scores[fwd(e.parent, attn_slice=False), bwd(e.child, **kw, attn_slice=False)])
    if args.scores_out:
        with open(args.scores_out, "w", encoding="utf-8") as f:
            json.dump(scores, f)
    print(f"eap-ig {method}: {len(scores)} edges, sum |score| {sum(abs(v) for v in scores.values()):.6f}")
    _common.write_result(args.result, phases, args.device, n_prompts=len(rows), n_edges=len(scores), method=args.method,
                         batch_size=args.batch_size, cpu_phases_s=cpu.times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
