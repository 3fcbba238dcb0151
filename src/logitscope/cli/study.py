"""``logitscope run``: the direct-logit-attribution study."""

from __future__ import annotations

import argparse

from logitscope.cli.options import checks, load, metric_option, model_options, prompt_warnings, rare, verb_parser, wrote

EXAMPLES = """\
examples:
  logitscope run --model gpt2-small --prompts seed --out runs/seed
      the seed notebook's IOI study on GPT-2 small (downloaded once, cached)
  logitscope run --model ./my-checkpoint --prompts prompts.jsonl --out runs/mine
      a local folder (never touches the network) and your own prompts, one JSON
      object a line, e.g. {"prompt": "When John and Mary went to the shops, John
      gave the bag to", "correct": " Mary", "incorrect": " John"}
  logitscope run --model gpt2-small --prompts ioi:2000 --seed 1 --out runs/ioi
      2,000 prompts from the IOI paper's templates, with 95% bootstrap intervals
  logitscope run --model SmolLM2-135M-Instruct.Q4_1.gguf --prompts ioi:1000 \\
      --out runs/smollm2
      a GGUF file (llama.cpp's format), dequantized to float32 on load
"""

CSV = ("also write per_prompt.csv: one row per prompt, every logit-lens point, layer, head and decomposition "
       "group as a column (TransformerLens labels)")


def add(sub: argparse._SubParsersAction) -> None:
    p = verb_parser(
        sub, "run", help="the study: logit difference, logit lens, layer and head attribution, attention",
        description="Run the direct-logit-attribution study on a model and a prompt set; write "
        "DIR/results.json, DIR/per_prompt_heads.npy, DIR/per_prompt.npz (every other per-prompt array), "
        "DIR/attention.npy (the attention patterns shown) and DIR/report.html (with --csv also DIR/per_prompt.csv), "
        "atomically: a failed run leaves earlier files in DIR untouched, and a file of an earlier run that this "
        "one does not write is removed. Then print a summary.",
        examples=EXAMPLES)
    model_options(p, csv=CSV)
    g = p.add_argument_group("finer views")
    rare(g, "--lens-top-k", type=int, default=5, metavar="K",
         help="top tokens of the token logit lens at each layer (5); the final norm applied afresh")
    rare(g, "--no-token-lens", action="store_true", help="skip the token logit lens")
    g.add_argument("--dla-by-source", default=None, metavar="HEADS",
                   help="split heads' DLA over source positions: L9H9,L9H6 or top:N")
    g.add_argument("--neurons", type=int, default=None, metavar="L",
                   help="split MLP layer L's DLA over its neurons")
    metric_option(p, decomposable=True)  # logit-diff only: said before any model load
    p.set_defaults(execute=execute, flags={"lens_top_k": "--lens-top-k", "dla_by_source": "--dla-by-source",
                                          "neurons": "--neurons"})


def execute(args: argparse.Namespace) -> int:
    parsed = checks(args)
    from logitscope.methods.dla_parts import check_options

    lens_top_k = None if args.no_token_lens else args.lens_top_k
    check_options(lens_top_k, args.dla_by_source, args.neurons)  # before the model is loaded
    from logitscope.api.study import run_study
    from logitscope.results.serialize import OUTPUT_FILES, save_study

    lm = load(args)
    with prompt_warnings(args):  # the study's prompt warnings, printed as ours (after it, the error)
        result = run_study(parsed, lm, batch_size=args.batch_size, top_k=args.top_k,
                           attention_prompt=args.attention_prompt, prepend_bos=args.prepend_bos, seed=args.seed,
                           progress=not args.quiet, lens_top_k=lens_top_k, dla_by_source=args.dla_by_source,
                           neurons=args.neurons)
    if result is None:
        return 0  # under torchrun, rank 0 writes
    out = save_study(result, args.out, csv=args.csv, label="--out",
                     also=None if args.no_report else (lambda tmp: result.write_report(tmp / "report.html")))
    return wrote(result.summary(), out, OUTPUT_FILES)
