"""The causal verbs, one per method: ``patch`` (TransformerLens's patching grids), ``ablate``,
``paths`` (path patching) and ``circuit`` (faithfulness, completeness, minimality). Each runs the
study of the clean prompts too: the report and results.json are built around it."""

from __future__ import annotations

import argparse
import sys

from logitscope.cli.options import (checks, load, metric_option, model_options, prompt_warnings, rare,
                                      verb_parser, wrote)

PATCH_EXAMPLES = """\
examples:
  logitscope patch --model ./my-checkpoint --prompts seed --out runs/patch
      each head's output patched from each seed prompt into its partner
  logitscope patch --model gpt2-small --prompts ioi:500 \\
      --what heads,resid,ablation --out runs/ioi-patch
      the IOI paper's ABC counterparts; the residual stream by layer and named
      position (IO, S1, S1+1, S2, END); every head mean-ablated alone
  logitscope patch --model gpt2-small --prompts ioi:500 --what all \\
      --method both --out runs/atp
      each grid exact and by attribution patching (one gradient), compared
"""
ABLATE_EXAMPLES = """\
examples:
  logitscope ablate name-mover --model gpt2-small --prompts ioi:500 \\
      --out runs/nm
      the logit difference before and after mean-ablating the three name
      movers together
  logitscope ablate L9H9,L9H6 L10H0 --ablation zero --model ./my-checkpoint \\
      --prompts seed --out runs/ab
      two sets, each zero-ablated on its own
"""
PATHS_EXAMPLES = """\
examples:
  logitscope paths --senders all --receivers logits,name-mover:q \\
      --direction noise --model gpt2-small --prompts ioi:500 --out runs/paths
      the IOI paper's path patching: every head to the logits and to the name
      movers' queries
"""
CIRCUIT_EXAMPLES = """\
examples:
  logitscope circuit ioi --model gpt2-small --prompts ioi:500 \\
      --no-prepend-bos --out runs/circuit
      the IOI paper's circuit in its setting (no BOS): faithfulness,
      completeness, minimality
  logitscope circuit 'nm: L9H9 L9H6 @ END; si: L7H3 @ END' --greedy 5 \\
      --model gpt2-small --prompts ioi:500 --out runs/mine
      a circuit of your own, with 5 runs of the paper's greedy search for the
      worst K
"""
CSV = "also DIR/per_prompt.csv (the study's) and DIR/patching_per_prompt.csv (a row per pair)"
CORRUPT = dict(default=None, choices=["abc", "flip"], metavar="C",
               help="IOI prompts' counterpart: abc (the paper's three new names; default) or flip")
ABLATION = dict(default="mean", choices=["zero", "mean", "resample"],
                help="zero, mean (over the counterparts, per template; default) or resample (the counterpart's)")

# patch's flags for ablation, path patching and circuits, kept for one release: each now has its verb.
DEPRECATED = {"ablate": "ablate", "senders": "paths", "receivers": "paths", "freeze": "paths", "circuit": "circuit",
              "circuit_random": "circuit", "circuit_greedy": "circuit", "circuit_greedy_steps": "circuit",
              "circuit_greedy_candidates": "circuit"}


class _Verb:
    """A causal verb's parser: its own options first (added to ``.own``; ``rare`` ones listed by
    ``--help-all`` only), then the shared ones."""

    def __init__(self, sub, name: str, help: str, description: str, examples: str, usage: str = "") -> None:
        self.parser = verb_parser(sub, name, help=help, description=description + " Writes DIR/results.json, "
                                  "DIR/patching_per_prompt.npz, the study's other files and DIR/report.html, "
                                  "atomically.", examples=examples, usage=usage)
        self.own = self.parser.add_argument_group(f"{name} options")

    def add_argument(self, *args, **kwargs):
        return self.own.add_argument(*args, **kwargs)

    def rare(self, *args, **kwargs):
        return rare(self.own, *args, **kwargs)

    def done(self, **defaults) -> None:
        self.rare("--corrupt", **CORRUPT)
        metric_option(self.own)
        model_options(self.parser, csv=CSV)
        self.parser.set_defaults(**defaults)


def add(sub: argparse._SubParsersAction) -> None:
    p = _Verb(sub, "patch", "activation patching: TransformerLens's grids (exact or attribution patching)",
              "Activation patching of each prompt against its counterpart ('corrupted': a JSONL field, the "
              "seed/arena partner, or an IOI counterpart) with TransformerLens's grids and names.", PATCH_EXAMPLES)
    p.add_argument("--what", default="heads", metavar="GRIDS",
                   help="comma list of heads (default: each head's output at all positions), heads_by_pos, resid, "
                   "layers, qkv, ablation (each head ablated alone), all, none, or grid names")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"], metavar="WAY",
                   help="denoise (clean into the corrupted run; default) or noise (corrupted into clean)")
    p.rare("--positions", default="auto", choices=["auto", "index", "named", "end"], metavar="AXIS",
           help="per-position grids' axis: auto (IOI names, else indices, else END), index, named, end")
    p.add_argument("--method", default="exact", choices=["exact", "attribution", "both"], metavar="M",
                   help="exact (default), attribution (first-order estimates: <grid>_attribution), or both")
    p.add_argument("--ablation", **ABLATION, metavar="HOW")
    old = p.parser.add_argument_group("deprecated (one more release; each has its verb now)")
    rare(old, "--ablate", default=None, metavar="SETS", help="use: logitscope ablate SET ...")
    rare(old, "--senders", default=None, metavar="HEADS", help="use: logitscope paths --senders HEADS")
    rare(old, "--receivers", default="logits", metavar="PATHS", help="use: logitscope paths --receivers PATHS")
    rare(old, "--freeze", default="heads", choices=["heads", "all"], metavar="F",
         help="use: logitscope paths --freeze F")
    rare(old, "--circuit", default=None, metavar="CIRCUIT", help="use: logitscope circuit CIRCUIT")
    rare(old, "--circuit-random", type=int, default=5, metavar="N", help="use: logitscope circuit --random N")
    rare(old, "--circuit-greedy", type=int, default=0, metavar="N", help="use: logitscope circuit --greedy N")
    rare(old, "--circuit-greedy-steps", type=int, default=10, metavar="N",
         help="use: logitscope circuit --greedy-steps N")
    rare(old, "--circuit-greedy-candidates", type=int, default=10, metavar="N",
         help="use: logitscope circuit --greedy-candidates N")
    p.done(execute=_patch)

    p = _Verb(sub, "ablate", "the logit difference with components ablated",
              "The clean prompts' logit difference before and after ablating each set of components.",
              ABLATE_EXAMPLES, usage="SET [SET ...]")
    p.add_argument("sets", nargs="+", metavar="SET",
                   help="components to ablate together, e.g. L9H9,L9H6 or 9.9 (heads), L9 (a layer's heads), "
                   "9_attn_out, 9_mlp_out, or an IOI class (name-mover, ...); several SETs, each on its own")
    p.add_argument("--ablation", **ABLATION, metavar="HOW")
    p.done(execute=_ablate, flags={"ablate": "SET"})

    p = _Verb(sub, "paths", "path patching from senders to receivers",
              "Path patching: each sender's effect through each receiver only (the IOI paper's).", PATHS_EXAMPLES,
              usage="--senders HEADS")
    p.add_argument("--senders", required=True, metavar="HEADS",
                   help="all (every head alone), or comma items: a head (L9H9, 9.9), a + set (L9H9+L9H6), a layer's "
                   "heads (L9) or an IOI class (name-mover)")
    p.add_argument("--receivers", default="logits", metavar="PATHS",
                   help="logits (default) and/or heads' inputs, e.g. logits,L9H9:q,name-mover:k")
    p.add_argument("--freeze", default="heads", choices=["heads", "all"], metavar="F",
                   help="heads: every other head frozen (the IOI paper; MLPs recomputed); all: every MLP and the "
                   "final norm's scale too (direct paths only)")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"], metavar="WAY",
                   help="denoise (default) or noise (the IOI paper's: the counterpart's activations into the clean run)")
    p.done(execute=_paths)

    p = _Verb(sub, "circuit", "a circuit's faithfulness, completeness and minimality",
              "Faithfulness, completeness and minimality of a circuit (the IOI paper's measures), every head "
              "outside the circuit knocked out by --ablation.", CIRCUIT_EXAMPLES, usage="CIRCUIT")
    p.add_argument("circuit", metavar="CIRCUIT",
                   help="ioi (the IOI paper's, GPT-2 small), a circuit file (one 'class: heads @ position' a line), "
                   "or inline, e.g. 'nm: L9H9 L9H6 @ END; si: L7H3 @ END'")
    p.add_argument("--ablation", **ABLATION, metavar="HOW")
    p.add_argument("--random", type=int, default=5, metavar="N", help="completeness: N random subsets K (default 5)")
    p.add_argument("--greedy", type=int, default=0, metavar="N",
                   help="completeness: N runs of the paper's greedy search for the worst K (the paper: 5; default 0)")
    p.rare("--greedy-steps", type=int, default=10, metavar="N", help="steps of each search (default 10)")
    p.rare("--greedy-candidates", type=int, default=10, metavar="N", help="heads tried a step (default 10)")
    p.done(execute=_circuit, flags={"circuit_random": "--random", "circuit_greedy": "--greedy",
                                            "circuit_greedy_steps": "--greedy-steps",
                                            "circuit_greedy_candidates": "--greedy-candidates",
                                            "circuit": "CIRCUIT"})


def _patch(args: argparse.Namespace) -> int:
    defaults = {"ablate": None, "senders": None, "receivers": "logits", "freeze": "heads", "circuit": None,
                "circuit_random": 5, "circuit_greedy": 0, "circuit_greedy_steps": 10, "circuit_greedy_candidates": 10}
    used = [name for name, default in defaults.items() if getattr(args, name) != default]
    for verb in dict.fromkeys(DEPRECATED[name] for name in used):
        flags = ["--" + n.replace("_", "-") for n in used if DEPRECATED[n] == verb]
        print(f"logitscope: warning: patch {_deprecated(flags)} in the next release; use "
              f"`logitscope {verb}` (logitscope {verb} --help)", file=sys.stderr)
    return _run(args, what=args.what, direction=args.direction, positions=args.positions, method=args.method,
                ablation=args.ablation, metric=args.metric, **{name: getattr(args, name) for name in defaults})


def _deprecated(flags: list[str]) -> str:
    """'--a is deprecated and goes', '--a and --b are deprecated and go', '--a, --b and --c are ...'."""
    if len(flags) == 1:
        return f"{flags[0]} is deprecated and goes"
    return f"{', '.join(flags[:-1])} and {flags[-1]} are deprecated and go"


def _ablate(args: argparse.Namespace) -> int:
    sets = args.sets[0] if len(args.sets) == 1 else {s: s for s in args.sets}
    return _run(args, what="none", ablate=sets, ablation=args.ablation, metric=args.metric)


def _paths(args: argparse.Namespace) -> int:
    return _run(args, what="none", senders=args.senders, receivers=args.receivers, freeze=args.freeze,
                direction=args.direction, metric=args.metric)


def _circuit(args: argparse.Namespace) -> int:
    return _run(args, what="none", circuit=args.circuit, ablation=args.ablation, circuit_random=args.random,
                circuit_greedy=args.greedy, circuit_greedy_steps=args.greedy_steps,
                circuit_greedy_candidates=args.greedy_candidates, metric=args.metric)


def _run(args: argparse.Namespace, **options) -> int:
    """run_patching with ``options`` (the verb's own) and the shared ones; every option is checked
    before the model is loaded."""
    from logitscope.api.patching import check_options, run_patching
    from logitscope.api.patching_result import OUTPUT_FILES

    parsed = checks(args)
    check_options(corrupt=args.corrupt, **options)
    lm = load(args)
    with prompt_warnings(args):
        result = run_patching(parsed, lm, corrupt=args.corrupt, batch_size=args.batch_size, top_k=args.top_k,
                              attention_prompt=args.attention_prompt, prepend_bos=args.prepend_bos, seed=args.seed,
                              progress=not args.quiet, **options)
    if result is None:
        return 0  # under torchrun, rank 0 writes
    out = result.save(args.out, report=not args.no_report, csv=args.csv, label="--out")
    return wrote(result.summary(), out, OUTPUT_FILES)
