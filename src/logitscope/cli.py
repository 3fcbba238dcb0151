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


PATCH_EXAMPLES = """\
examples:
  logitscope patch --model ./my-checkpoint --prompts seed --out runs/patch
      each head's output patched from each seed prompt into its name-swapped partner (denoising)
  logitscope patch --model gpt2-small --prompts ioi:500 --what heads,resid,ablation --out runs/ioi-patch
      the IOI paper's ABC counterparts; the residual stream by layer and named position (IO, S1, S1+1,
      S2, END); every head mean-ablated alone
  logitscope patch --model gpt2-small --prompts ioi:500 --what none --ablate name-mover --out runs/nm
      the logit difference before and after mean-ablating the three name movers together
  logitscope patch --model ./my-checkpoint --prompts pairs.jsonl --what all --out runs/all
      JSONL rows with a "corrupted" prompt: every TransformerLens patching grid
  logitscope patch --model gpt2-small --prompts ioi:500 --what all --method both --out runs/atp
      attribution patching (one gradient) beside each exact grid, with their agreement
  logitscope patch --model gpt2-small --prompts ioi:500 --what none --direction noise --senders all \
      --receivers logits,name-mover:q --circuit ioi --out runs/circuit
      the IOI paper's path patching (every head to the logits and to the name movers' queries) and its
      circuit's faithfulness, completeness and minimality (mean ablation over the ABC prompts)
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
        "DIR/results.json, DIR/per_prompt_heads.npy, DIR/per_prompt.npz (every other per-prompt array), "
        "DIR/attention.npy (the attention patterns shown) and DIR/report.html (with --csv also DIR/per_prompt.csv), "
        "atomically: a failed run leaves earlier files in DIR untouched, and a file of an earlier run that this "
        "one does not write is removed. Then print a summary.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _study_options(run)
    patch = sub.add_parser(
        "patch",
        help="activation patching and ablation (and the study of the clean prompts)",
        description="Run the study of the clean prompts, then activation patching of each prompt against its "
        "counterpart ('corrupted': a JSONL field, the seed/arena partner, or an IOI counterpart) with "
        "TransformerLens's grids and names, and ablations; write DIR/results.json (the study plus a 'patching' "
        "object), DIR/patching_per_prompt.npz, the study's other files and DIR/report.html (with --csv also "
        "DIR/per_prompt.csv and DIR/patching_per_prompt.csv), atomically.",
        epilog=PATCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _study_options(patch, csv="also write per_prompt.csv (the clean prompts' study, as run --csv) and "
                   "patching_per_prompt.csv: one row per pair, its clean and corrupted logit differences, every grid "
                   "cell's patched logit difference (attn_head_out_all_pos:L9H6, resid_pre:L3 @ S2) and every "
                   "ablation's as a column")
    patch.add_argument("--what", default="heads", metavar="GRIDS",
                       help="comma list of heads (default: each head's output at all positions), heads_by_pos, "
                       "resid (resid_pre, resid_mid by layer x position), layers (attn_out, mlp_out by layer x "
                       "position), qkv (q, k, v, pattern of each head), ablation (each head ablated alone), all, "
                       "none, or grid names such as attn_head_out_all_pos")
    patch.add_argument("--direction", default="denoise", choices=["denoise", "noise"],
                       help="denoise: clean activations into the corrupted run (default); noise: corrupted into clean")
    patch.add_argument("--corrupt", default=None, choices=["abc", "flip"],
                       help="the counterpart of IOI prompts: abc (the IOI paper's three new names; default) or flip "
                       "(the second subject replaced by the indirect object)")
    patch.add_argument("--positions", default="auto", choices=["auto", "index", "named", "end"],
                       help="position axis of per-position grids: auto (named IOI positions IO, S1, S1+1, S2, END for "
                       "IOI prompts, else indices for prompts of one length, else END), index, named, end")
    patch.add_argument("--ablate", default=None, metavar="SET",
                       help="components to ablate together, e.g. L9H9,L9H6,L10H0 or 9.9 (heads), L9 (a layer's "
                       "heads), 9_attn_out, 9_mlp_out, or an IOI class (name-mover, s-inhibition, ...)")
    patch.add_argument("--ablation", default="mean", choices=["zero", "mean", "resample"],
                       help="what an ablated component becomes: zero, its mean over the counterparts per template "
                       "(default), or its value on the prompt's counterpart")
    patch.add_argument("--method", default="exact", choices=["exact", "attribution", "both"],
                       help="exact: patched runs (default); attribution: each grid's first-order estimate from one "
                       "forward and one backward pass, as <grid>_attribution (for models where exact patching is "
                       "too costly); both: the estimate beside the exact grid, with their agreement")
    patch.add_argument("--senders", default=None, metavar="HEADS",
                       help="path patching from these senders: all (every head alone), or comma items, each a head "
                       "(L9H9, 9.9), a + set (L9H9+L9H6), a layer's heads (L9) or an IOI class (name-mover)")
    patch.add_argument("--receivers", default="logits", metavar="PATHS",
                       help="where the senders' paths end: logits (default) and/or heads' inputs, e.g. "
                       "logits,L9H9:q,name-mover:k (q, k or v; a + set is patched together)")
    patch.add_argument("--freeze", default="heads", choices=["heads", "all"],
                       help="path patching: heads freezes every other head (the IOI paper; MLPs recomputed); all "
                       "also freezes every MLP and the final norm's scale (direct paths only)")
    patch.add_argument("--circuit", default=None, metavar="CIRCUIT",
                       help="faithfulness, completeness and minimality of a circuit: ioi (the IOI paper's, GPT-2 "
                       "small), a circuit file (one 'class: heads @ position' a line), or inline heads, e.g. "
                       "'nm: L9H9 L9H6 @ END; si: L7H3 @ END'; other heads knocked out with --ablation")
    patch.add_argument("--circuit-random", type=int, default=5, metavar="N",
                       help="completeness: how many random subsets K of the circuit (default 5)")
    patch.add_argument("--circuit-greedy", type=int, default=0, metavar="N",
                       help="completeness: also N runs of the IOI paper's greedy search for the K with the largest "
                       "incompleteness (the paper: 5; default 0, none; each step is 2 knocked-out runs per head tried)")
    patch.add_argument("--circuit-greedy-steps", type=int, default=10, metavar="N",
                       help="steps of each greedy search, one head added at most per step (default 10, the paper's)")
    patch.add_argument("--circuit-greedy-candidates", type=int, default=10, metavar="N",
                       help="heads drawn at random and tried at each greedy step (default 10, the paper's)")
    return parser


RUN_CSV = ("also write per_prompt.csv: one row per prompt, every logit-lens point, layer, head and decomposition "
           "group as a column (TransformerLens labels)")


def _study_options(p: argparse.ArgumentParser, csv: str = RUN_CSV) -> None:
    p.add_argument(
        "--model", required=True,
        help="hub id or TransformerLens alias (gpt2-small, ...), a local folder, or a .gguf file (needs the gguf package)",
    )
    p.add_argument(
        "--prompts",
        required=True,
        help="seed | arena | ioi:N | ioi-abba:N | ioi-baba:N | a .jsonl file of {prompt, correct, incorrect}",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
                     help="weights' dtype (attributions are computed in float32 whatever this is)")
    p.add_argument("--device-map", default=None, metavar="MAP",
                     help="e.g. auto: shard a large model over the available GPUs (needs accelerate)")
    p.add_argument("--top-k", type=int, default=3, help="how many top positive and negative heads (default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per forward pass (default: from memory)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated prompts and bootstrap intervals")
    p.add_argument("--attention-prompt", type=int, default=0, metavar="I",
                     help="index of the prompt whose attention patterns are shown (default 0, the first)")
    bos = p.add_mutually_exclusive_group()
    bos.add_argument("--prepend-bos", dest="prepend_bos", action="store_true", default=None,
                     help="prepend the BOS token to every prompt (default: the family's TransformerLens habit)")
    bos.add_argument("--no-prepend-bos", dest="prepend_bos", action="store_false")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--csv", action="store_true", help=csv)
    p.add_argument("--quiet", action="store_true", help="no progress bar or warnings")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--dist-timeout", type=float, default=900.0, metavar="S",
                   help="under torchrun: how long a rank waits for the others at each exchange before the run "
                   "fails (default 900 seconds; more than 0)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    launched = _under_torchrun()
    if launched and os.environ.get("RANK") != "0":
        args.quiet = True  # rank 0 speaks for every rank
    try:
        try:
            if not launched:
                return _patch(args) if args.command == "patch" else _run(args)
            from logitscope.engine.distributed import launch

            with launch(args.dist_timeout):  # every rank runs the command as one step
                return _patch(args) if args.command == "patch" else _run(args)
        except BaseException:
            _erase_progress_bars()  # no half-drawn bar before the error or the interruption
            raise
    except LogitscopeError as e:
        if launched:
            return _rank_failed(e, args)
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
         "device": "--device", "dtype": "--dtype", "device_map": "--device-map", "prepend_bos": "--prepend-bos",
         "what": "--what", "direction": "--direction", "corrupt": "--corrupt", "positions": "--positions",
         "ablate": "--ablate", "ablation": "--ablation", "method": "--method", "senders": "--senders",
         "receivers": "--receivers", "freeze": "--freeze", "circuit": "--circuit", "circuit_random": "--circuit-random",
         "circuit_greedy": "--circuit-greedy", "circuit_greedy_steps": "--circuit-greedy-steps",
         "circuit_greedy_candidates": "--circuit-greedy-candidates", "dist_timeout": "--dist-timeout"}
FIX_FLAGS = {("prepend_bos", False): "--no-prepend-bos", ("prepend_bos", True): "--prepend-bos"}


def _erase_progress_bars() -> None:
    if "logitscope.methods.dla" in sys.modules:  # a bar can exist only once the study module is loaded
        from logitscope.engine.setup import close_progress_bars

        close_progress_bars()


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _rank_failed(e: LogitscopeError, args: argparse.Namespace) -> int:
    """Under torchrun, the error every rank raised: rank 0 says it (and a rank that lost rank 0), then
    every rank waits for the others before leaving."""
    from logitscope.engine.distributed import RankFailure, current

    if args.debug:
        traceback.print_exc()
    failure = e if isinstance(e, RankFailure) else None
    rank = os.environ.get("RANK")
    ranks = current() if failure is not None else None
    lost_rank_0 = failure is not None and failure.broken and 0 in failure.culprits
    if rank == "0" or (lost_rank_0 and ranks is not None and not ranks.reported()):
        text = failure.describe(_cause_in_flags) if failure is not None else _in_flags(e)
        print(f"logitscope: error: {text}{'' if rank == '0' else f' (said by rank {rank})'}", file=sys.stderr)
        sys.stderr.flush()
        if ranks is not None:
            ranks.reported(mark=True)
    if failure is None:
        return 2
    if not failure.broken and ranks is not None:
        ranks.farewell()
    return 2 if failure.user_error else 1


def _cause_in_flags(cause: BaseException) -> str:
    from logitscope.engine.distributed import describe_error

    return _in_flags(cause) if isinstance(cause, LogitscopeError) else describe_error(cause)


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


def _checks(args: argparse.Namespace):
    """Everything that can be checked without the model, so that a typo costs no load; returns the
    parsed prompts (a file read and checked, or an ioi:N spec checked)."""
    from logitscope.results.io import check_out_dir
    from logitscope.models.load import resolve_device
    from logitscope.inputs.prompts import parse_prompts

    if os.environ.get("RANK", "0") == "0" or not _under_torchrun():  # only rank 0 writes
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
    if not args.dist_timeout > 0 or args.dist_timeout == float("inf"):  # also without torchrun: a typo is a typo
        raise InputError(f"--dist-timeout {args.dist_timeout:g}: must be a number of seconds above 0 (default 900)")
    parsed = parse_prompts(args.prompts)
    if _under_torchrun():  # every rank's checks passed before any rank loads the model
        from logitscope.engine.distributed import current

        current().exchange(None, "the end of the checks")
    return parsed


def _run(args: argparse.Namespace) -> int:
    parsed = _checks(args)
    _quiet_libraries()
    from logitscope.models.load import load_model
    from logitscope.api.study import run_study

    lm = load_model(args.model, dtype=args.dtype, **_placement(args))
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
    if result is None:
        return 0  # under torchrun, rank 0 writes
    from logitscope.results.serialize import OUTPUT_FILES, save_study

    out = save_study(result, args.out, csv=args.csv, label="--out",
                     also=None if args.no_report else (lambda tmp: result.write_report(tmp / "report.html")))
    print(result.summary())
    written = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    print(f"wrote {', '.join(str(w) for w in written)}")
    return 0


def _patch(args: argparse.Namespace) -> int:
    from logitscope.api.patching import check_options

    parsed = _checks(args)
    check_options(what=args.what, ablate=args.ablate, method=args.method, senders=args.senders,
                  receivers=args.receivers, freeze=args.freeze, circuit=args.circuit, **_completeness(args))
    # (all of them before the model is loaded)
    _quiet_libraries()
    from logitscope.models.load import load_model
    from logitscope.api.patching import run_patching
    from logitscope.api.patching_result import OUTPUT_FILES

    lm = load_model(args.model, dtype=args.dtype, **_placement(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if args.quiet else "always", PromptWarning)
        warnings.showwarning = _printer(warnings.showwarning)
        result = run_patching(
            parsed, lm, what=args.what, direction=args.direction, corrupt=args.corrupt, positions=args.positions,
            ablate=args.ablate, ablation=args.ablation, method=args.method, batch_size=args.batch_size, top_k=args.top_k,
            attention_prompt=args.attention_prompt, prepend_bos=args.prepend_bos, seed=args.seed,
            progress=not args.quiet, senders=args.senders, receivers=args.receivers, freeze=args.freeze,
            circuit=args.circuit, **_completeness(args),
        )
    if result is None:
        return 0  # under torchrun, rank 0 writes
    out = result.save(args.out, report=not args.no_report, csv=args.csv, label="--out")
    print(result.summary())
    written = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    print(f"wrote {', '.join(str(w) for w in written)}")
    return 0


def _placement(args: argparse.Namespace) -> dict:
    """load_model's device arguments; under torchrun this rank's own device (or share of the GPUs)."""
    from logitscope.engine.distributed import current, placement

    return placement(args.device, args.device_map, current())


def _completeness(args: argparse.Namespace) -> dict[str, int]:
    """``patch``'s completeness flags as :func:`logitscope.api.patching.run_patching`'s arguments."""
    return {"circuit_random": args.circuit_random, "circuit_greedy": args.circuit_greedy,
            "circuit_greedy_steps": args.circuit_greedy_steps, "circuit_greedy_candidates": args.circuit_greedy_candidates}


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
