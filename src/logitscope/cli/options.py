"""What every verb shares: the model and prompt options, the checks made before any model is
loaded, loading on this rank's device, and printing what was written."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from logitscope.errors import InputError, PromptWarning


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def verb_parser(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
                examples: str) -> argparse.ArgumentParser:
    """A verb's parser: its one-line ``help`` (the top-level list), ``description`` and ``examples``
    (the epilog, printed as written)."""
    return sub.add_parser(name, help=help, description=description, epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def model_options(p: argparse.ArgumentParser, *, csv: str | None = None, study: bool = True) -> None:
    """The options every verb takes, in two groups after the verb's own: the model, prompts and
    output; how to run. With ``study``, the study's own (the report's top heads, attention prompt)."""
    g = p.add_argument_group("model, prompts, output (every verb)")
    g.add_argument("--model", required=True, metavar="M", help="hub id or alias (gpt2-small), a local folder, a .gguf file")
    g.add_argument("--prompts", required=True, metavar="P",
                   help="seed, arena, ioi:N, a task (greater-than:N, sva:N, induction:N, docstring:N, "
                   "factual-recall:FILE) or FILE.jsonl")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    g.add_argument("--no-report", action="store_true", help="skip report.html")
    if csv is not None:
        g.add_argument("--csv", action="store_true", help=csv)
    if study:
        g.add_argument("--top-k", type=int, default=3, metavar="K", help="top positive and negative heads shown (3)")
        g.add_argument("--attention-prompt", type=int, default=0, metavar="I",
                       help="the prompt whose attention patterns are shown (0)")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", metavar="D", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N, mps")
    r.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
                   metavar="T", help="weights' dtype: float32 (default), float16, bfloat16, float64")
    r.add_argument("--device-map", default=None, metavar="MAP", help="auto: shard over the GPUs (accelerate)")
    r.add_argument("--batch-size", type=int, default=None, metavar="N", help="prompts a pass (default: from memory)")
    r.add_argument("--seed", type=int, default=0, metavar="S", help="generated prompts' and intervals' seed (0)")
    bos = r.add_mutually_exclusive_group()
    bos.add_argument("--prepend-bos", dest="prepend_bos", action="store_true", default=None,
                     help="BOS before each prompt (default: the family's TransformerLens habit)")
    bos.add_argument("--no-prepend-bos", dest="prepend_bos", action="store_false", help="no BOS")
    r.add_argument("--quiet", action="store_true", help="no progress bar or warnings")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    r.add_argument("--dist-timeout", type=float, default=900.0, metavar="S",
                   help="under torchrun: seconds a rank waits for the others (900)")


METRIC_HELP = ("what every run measures at the answer: logit-diff, logprob-diff, prob-diff, logprob, loss, kl "
               "(docs: Metrics); default: the task's own, else logit-diff")


def metric_option(p: Any, *, decomposable: bool = False) -> None:
    """``--metric`` on a verb's parser or group; ``decomposable``: the verb (``run``, direct logit
    attribution) takes the logit difference only, and says so for any other."""
    p.add_argument("--metric", default=None, metavar="METRIC",
                   help="logit-diff only: the metric DLA decomposes" if decomposable else METRIC_HELP)
    p.set_defaults(metric_decomposable_only=decomposable)


def check_metric(args: argparse.Namespace) -> None:
    """``--metric``'s value, before any model is loaded (an error names the flag)."""
    from logitscope.engine.metrics import check_decomposable, resolve_metric
    from logitscope.errors import ArgumentError

    if getattr(args, "metric", None) is None:
        return
    try:
        if getattr(args, "metric_decomposable_only", False):
            check_decomposable(args.metric, "run")
        else:
            resolve_metric(args.metric)
    except ArgumentError as e:
        raise InputError(e.for_flag("--metric")) from None


def checks(args: argparse.Namespace) -> Any:
    """Everything that can be checked without the model, so that a typo costs no load; returns the
    parsed prompts (a file read and checked, or an ioi:N spec checked)."""
    from logitscope.inputs.prompts import parse_prompts
    from logitscope.models.load import resolve_device
    from logitscope.results.io import check_out_dir

    if os.environ.get("RANK", "0") == "0" or not under_torchrun():  # only rank 0 writes
        check_out_dir(args.out, label="--out")
    for flag, value in (("--top-k", getattr(args, "top_k", None)), ("--batch-size", args.batch_size)):
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
    check_metric(args)
    parsed = parse_prompts(args.prompts)
    if under_torchrun():  # every rank's checks passed before any rank loads the model
        from logitscope.engine.distributed import current

        current().exchange(None, "the end of the checks")
    return parsed


def load(args: argparse.Namespace) -> Any:
    """The model, on this rank's own device (or share of the GPUs) under torchrun."""
    quiet_libraries()
    from logitscope.engine.distributed import current, placement
    from logitscope.models.load import load_model

    return load_model(args.model, dtype=args.dtype, **placement(args.device, args.device_map, current()))


def prompt_warnings(args: argparse.Namespace) -> Any:
    """A context in which the library's prompt warnings print as one line of ours (or not at all
    with ``--quiet``)."""
    import warnings

    class Printed(warnings.catch_warnings):
        def __enter__(self) -> Any:
            out = super().__enter__()
            warnings.simplefilter("ignore" if args.quiet else "always", PromptWarning)
            default = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, PromptWarning):
                    print(f"logitscope: warning: {message}", file=sys.stderr)
                else:
                    default(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            return out

    return Printed()


def wrote(summary: str, out: Path, names: Iterable[str]) -> int:
    """Print the result's summary and the files written; the command's exit code."""
    print(summary)
    written = [out / name for name in names if (out / name).exists()]
    print(f"wrote {', '.join(str(w) for w in written)}")
    return 0


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - logging tweaks are best-effort
        pass
