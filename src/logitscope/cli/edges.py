"""``logitscope edges``: find the circuit. Edge attribution (EAP, EAP-IG, exact edge patching) and
MIB's faithfulness curves, written as results.json and the EAP-IG / MIB graph.json."""

from __future__ import annotations

import argparse

from logitscope.cli.options import checks, load, model_options, prompt_warnings, rare, verb_parser, wrote

EXAMPLES = """\
examples:
  logitscope edges --model gpt2-small --prompts ioi:256 --out runs/edges
      EAP-IG (5 steps on the input embeddings) of every edge, MIB's faithfulness
      curves, CPR and CMD, graph.json for EAP-IG and MIB's circuit track
  logitscope edges --model ./my-checkpoint --prompts seed --method eap \\
      --top-n 200 --exact-top 20 --out runs/e
      plain EAP, the circuit of the top 200 edges, and the exact effect of the
      top 20 beside their estimates
  logitscope edges --model gpt2-small --prompts ioi:256 \\
      --circuit runs/edges/graph.json --out runs/eval
      evaluate a circuit from a graph.json (ours, EAP-IG's or an MIB submission)
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = verb_parser(
        sub, "edges", help="find the circuit: edge attribution (EAP, EAP-IG) and MIB's faithfulness curves",
        description="Score every edge of the model's graph (input, a{L}.h{H} with <q> <k> <v>, "
        "m{L}, logits) by how much the metric changes when that edge alone carries the corrupted value; "
        "evaluate the top edges' circuits exactly at MIB's ten fractions (CPR, CMD). Writes DIR/results.json, "
        "DIR/graph.json (EAP-IG / MIB format), DIR/edges_per_prompt.npz and DIR/report.html (the circuit), "
        "atomically.",
        examples=EXAMPLES)
    own = p.add_argument_group("edges options")
    own.add_argument("--method", default="eap-ig-inputs", metavar="METHOD",
                     choices=["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "exact"],
                     help="how edges are scored: eap, eap-ig-inputs (default), eap-ig-activations, "
                     "clean-corrupted or exact (small models)")
    rare(own, "--steps", type=int, default=5, metavar="N", help="integrated-gradient steps (default 5)")
    own.add_argument("--intervention", default="patching", metavar="HOW",
                     choices=["patching", "mean", "mean-positional", "zero"],
                     help="a corrupted edge carries: patching (the counterpart's value; default), mean, "
                     "mean-positional or zero")
    rare(own, "--corrupt", default=None, choices=["abc", "flip"], help="the counterpart of IOI prompts (abc)")
    # engine/metrics.py's names, checked by checks() before the model loads (the short help keeps one screen)
    own.add_argument("--metric", default=None, metavar="METRIC", help="what a score changes: logit-diff, "
                     "logprob-diff, prob-diff, logprob, loss or kl (default: the task's own)")
    rare(own, "--by", default="edge", choices=["edge", "node"],
         help="circuits of the top n edges (default) or of the top n heads and MLPs, every edge among "
         "them (--top-n and the curves count nodes)")
    what = own.add_mutually_exclusive_group()
    what.add_argument("--top-n", type=int, default=None, metavar="N",
                      help="also evaluate the circuit of the top N edges")
    what.add_argument("--circuit", default=None, metavar="GRAPH_JSON",
                      help="evaluate a graph.json's circuit (in_graph) instead")
    own.add_argument("--no-curve", dest="curve", action="store_false",
                     help="skip MIB's faithfulness curves (ten exact evaluations)")
    rare(own, "--greedy", action="store_true", help="choose circuits by the EAP-IG library's greedy "
         "selection instead of top-n")
    own.add_argument("--exact-top", type=int, default=0, metavar="K",
                     help="the top K edges' exact effects beside the estimates")
    model_options(p, study=False)
    p.set_defaults(execute=execute, flags={"top_n": "--top-n", "exact_top": "--exact-top", "steps": "--steps",
                                        "by": "--by", "greedy": "--greedy"})


def execute(args: argparse.Namespace) -> int:
    from logitscope.api.edges import check_edge_options, edges
    from logitscope.results.edges import OUTPUT_FILES

    parsed = checks(args)
    options = dict(method=args.method, steps=args.steps, intervention=args.intervention, corrupt=args.corrupt,
                   metric=args.metric, top_n=args.top_n, exact_top=args.exact_top, circuit=args.circuit, by=args.by,
                   greedy=args.greedy)
    check_edge_options(batch_size=args.batch_size, **options)
    lm = load(args)
    with prompt_warnings(args):
        result = edges(parsed, lm, curve=args.curve, batch_size=args.batch_size,
                       prepend_bos=args.prepend_bos, seed=args.seed, progress=not args.quiet, **options)
    if result is None:
        return 0  # under torchrun, rank 0 writes
    out = result.save(args.out, report=not args.no_report, label="--out")  # report.html: the circuit view
    return wrote(result.summary(), out, OUTPUT_FILES)
