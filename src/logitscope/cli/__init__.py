"""The ``logitscope`` command: one verb per method, each with the shared model and prompt options and
its own: ``run`` (the study), ``patch`` (grids), ``ablate``, ``paths``, ``circuit``, ``edges``.
Prompts and a model in; results.json, its arrays and report.html out."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from logitscope.version import __version__
from logitscope.cli import causal, edges, study
from logitscope.cli.options import under_torchrun
from logitscope.errors import ArgumentError, LogitscopeError

VERBS = (study, causal, edges)  # each adds its sub-commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logitscope",
        description="Which parts of a language model write the answer, and does the answer depend on them? "
        "Direct logit attribution (TransformerLens's conventions), activation patching, ablation, path "
        "patching, circuit checks and edge-level circuit discovery, each with a self-contained report.",
        epilog=study.EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"logitscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb in VERBS:
        verb.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    launched = under_torchrun()
    if launched and os.environ.get("RANK") != "0":
        args.quiet = True  # rank 0 speaks for every rank
    try:
        try:
            if not launched:
                return args.execute(args)
            from logitscope.engine.distributed import launch

            with launch(args.dist_timeout):  # every rank runs the command as one step
                return args.execute(args)
        except BaseException:
            _erase_progress_bars()  # no half-drawn bar before the error or the interruption
            raise
    except LogitscopeError as e:
        if launched:
            return _rank_failed(e, args)
        if args.debug:
            traceback.print_exc()
        print(f"logitscope: error: {_in_flags(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("logitscope: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: say so plainly, traceback with --debug
        if args.debug:
            raise
        print(f"logitscope: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


# The library's arguments -> the flags that set them (a verb's own spelling in its parser's `flags`) (the library's messages name the arguments).
FLAGS = {"top_k": "--top-k", "batch_size": "--batch-size", "seed": "--seed", "attention_prompt": "--attention-prompt",
         "device": "--device", "dtype": "--dtype", "device_map": "--device-map", "prepend_bos": "--prepend-bos",
         "what": "--what", "direction": "--direction", "corrupt": "--corrupt", "positions": "--positions",
         "ablate": "--ablate", "ablation": "--ablation", "method": "--method", "senders": "--senders",
         "receivers": "--receivers", "freeze": "--freeze", "circuit": "--circuit", "circuit_random": "--circuit-random",
         "circuit_greedy": "--circuit-greedy", "circuit_greedy_steps": "--circuit-greedy-steps",
         "circuit_greedy_candidates": "--circuit-greedy-candidates", "dist_timeout": "--dist-timeout",
         "metric": "--metric"}
FIX_FLAGS = {("prepend_bos", False): "--no-prepend-bos", ("prepend_bos", True): "--prepend-bos"}


def _erase_progress_bars() -> None:
    if "logitscope.engine.setup" in sys.modules:  # a bar can exist only once that module is loaded
        from logitscope.engine.setup import close_progress_bars

        close_progress_bars()


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
        text = failure.describe(lambda c: _cause_in_flags(c, args)) if failure is not None else _in_flags(e, args)
        print(f"logitscope: error: {text}{'' if rank == '0' else f' (said by rank {rank})'}", file=sys.stderr)
        sys.stderr.flush()
        if ranks is not None:
            ranks.reported(mark=True)
    if failure is None:
        return 2
    if not failure.broken and ranks is not None:
        ranks.farewell()
    return 2 if failure.user_error else 1


def _cause_in_flags(cause: BaseException, args: argparse.Namespace | None = None) -> str:
    from logitscope.engine.distributed import describe_error

    return _in_flags(cause, args) if isinstance(cause, LogitscopeError) else describe_error(cause)


def _in_flags(e: LogitscopeError, args: argparse.Namespace | None = None) -> str:
    """The error's message, with the command-line flag where the library names an argument."""
    flags = {**FLAGS, **(getattr(args, "flags", None) or {})}
    if isinstance(e, ArgumentError) and e.argument in flags:
        return e.for_flag(flags[e.argument], FIX_FLAGS.get((e.argument, e.fix)))
    return str(e)


def entry() -> None:
    """Console-script entry: run, flush, and leave without interpreter teardown (about 0.8 s once
    torch and transformers are loaded). Every output is already closed and renamed into place."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
