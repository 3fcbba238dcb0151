"""The ``logitscope`` command: prompts and a model in, results.json and report.html out."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from logitscope import __version__
from logitscope.errors import ArgumentError, InputError, LogitscopeError, PromptWarning

EXAMPLES = """\
examples:
  logitscope run --model gpt2-small --prompts seed --out runs/seed
      the seed notebook's IOI study on GPT-2 small (downloaded once, then cached)
  logitscope run --model ./my-checkpoint --prompts prompts.jsonl --out runs/mine
      a local folder (never touches the network) and your own prompts, one JSON object a line:
      {"prompt": "When John and Mary went to the shops, John gave the bag to",
       "correct": " Mary", "incorrect": " John"}
  logitscope run --model gpt2-small --prompts ioi:2000 --seed 1 --out runs/ioi
      2,000 prompts from the IOI paper's templates, with 95% bootstrap intervals
  logitscope run --model SmolLM2-135M-Instruct.Q4_1.gguf --prompts ioi:1000 --out runs/smollm2
      a GGUF file (llama.cpp's format), dequantized to float32 on load
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logitscope",
        description="Which parts of a language model write the answer? Logit difference, logit lens, "
        "layer and head attribution (TransformerLens's conventions), attention of the top heads, "
        "and a self-contained report.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"logitscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the study and write results.json and report.html",
        description="Run the direct-logit-attribution study on a model and a prompt set; write "
        "DIR/results.json, DIR/per_prompt_heads.npy and DIR/report.html (with --csv also DIR/per_prompt.csv; atomically: a failed run "
        "leaves earlier files in DIR untouched), and print a summary.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--model", required=True,
        help="hub id or TransformerLens alias (gpt2-small, ...), a local folder, or a .gguf file (needs the gguf package)",
    )
    run.add_argument(
        "--prompts",
        required=True,
        help="seed | arena | ioi:N | ioi-abba:N | ioi-baba:N | a .jsonl file of {prompt, correct, incorrect}",
    )
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    run.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N, mps")
    run.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
                     help="weights' dtype (attributions are computed in float32 whatever this is)")
    run.add_argument("--device-map", default=None, metavar="MAP",
                     help="e.g. auto: shard a large model over the available GPUs (needs accelerate)")
    run.add_argument("--top-k", type=int, default=3, help="how many top positive and negative heads (default 3)")
    run.add_argument("--batch-size", type=int, default=None, help="prompts per forward pass (default: from memory)")
    run.add_argument("--seed", type=int, default=0, help="seed for generated prompts and bootstrap intervals")
    run.add_argument("--attention-prompt", type=int, default=0, metavar="I",
                     help="index of the prompt whose attention patterns are shown (default 0, the first)")
    bos = run.add_mutually_exclusive_group()
    bos.add_argument("--prepend-bos", dest="prepend_bos", action="store_true", default=None,
                     help="prepend the BOS token to every prompt (default: the family's TransformerLens habit)")
    bos.add_argument("--no-prepend-bos", dest="prepend_bos", action="store_false")
    run.add_argument("--no-report", action="store_true", help="skip report.html")
    run.add_argument("--csv", action="store_true",
                     help="also write per_prompt.csv: one row per prompt, every logit-lens point, layer, head and "
                     "decomposition group as a column (TransformerLens labels)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or warnings")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _run(args)
    except LogitscopeError as e:
        if args.debug:
            traceback.print_exc()
        print(f"logitscope: error: {_in_flags(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("logitscope: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: say so plainly, traceback with --debug
        if args.debug:
            raise
        print(f"logitscope: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


# run_study's arguments -> the flags that set them (the library's messages name the arguments).
FLAGS = {"top_k": "--top-k", "batch_size": "--batch-size", "seed": "--seed", "attention_prompt": "--attention-prompt",
         "device": "--device", "dtype": "--dtype", "device_map": "--device-map", "prepend_bos": "--prepend-bos"}
FIX_FLAGS = {("prepend_bos", False): "--no-prepend-bos", ("prepend_bos", True): "--prepend-bos"}


def _in_flags(e: LogitscopeError) -> str:
    """The error's message, with the command-line flag where the library names an argument."""
    if isinstance(e, ArgumentError) and e.argument in FLAGS:
        return e.for_flag(FLAGS[e.argument], FIX_FLAGS.get((e.argument, e.fix)))
    return str(e)


def _printer(default):
    """A ``warnings.showwarning`` that prints a :class:`PromptWarning` as one line of ours."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PromptWarning):
            print(f"logitscope: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _run(args: argparse.Namespace) -> int:
    from logitscope.io import check_out_dir
    from logitscope.models.load import resolve_device
    from logitscope.tasks.prompts import parse_prompts

    # Everything that can be checked without the model is checked first, so a typo costs no load.
    check_out_dir(args.out, label="--out")
    for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    if args.device_map is None:
        resolve_device(args.device)
    elif args.device != "auto":
        raise InputError(f"--device {args.device} and --device-map {args.device_map}: give one or the other")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be 0 or more")
    parsed = parse_prompts(args.prompts)  # a file read and checked, or an ioi:N spec checked

    _quiet_libraries()
    from logitscope.models.load import load_model
    from logitscope.study import run_study

    lm = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    with warnings.catch_warnings():  # the study's prompt warnings, printed as ours (after it, the error)
        warnings.simplefilter("ignore" if args.quiet else "always", PromptWarning)
        warnings.showwarning = _printer(warnings.showwarning)
        result = run_study(
            parsed,
            lm,
            batch_size=args.batch_size,
            top_k=args.top_k,
            attention_prompt=args.attention_prompt,
            prepend_bos=args.prepend_bos,
            seed=args.seed,
            progress=not args.quiet,
        )
    from logitscope.serialize import OUTPUT_FILES, save_study

    out = save_study(result, args.out, report=not args.no_report, csv=args.csv, label="--out")
    print(result.summary())
    written = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    print(f"wrote {', '.join(str(w) for w in written)}")
    return 0


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - logging tweaks are best-effort
        pass


def entry() -> None:
    """Console-script entry: run, flush, and leave without interpreter teardown (about 0.8 s once
    torch and transformers are loaded). Every output is already closed and renamed into place."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
