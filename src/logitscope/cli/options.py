"""What every verb shares: its parser (``--help`` on one 80x50 screen, ``--help-all`` with every
option), the model and prompt options, the checks made before any model is loaded, loading on this
rank's device, and printing what was written."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from logitscope.errors import InputError, PromptWarning


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


DOCS = "docs/cli.md#logitscope-{name}"  # the verb's section of the Command line page


class HelpFormatter(argparse.HelpFormatter):
    """The description and options wrapped to the terminal; the examples (the epilog, which starts
    with ``examples:``) as written, each line already short enough for 80 columns."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:  # argparse's hook, as its Raw* formatters use
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class HelpAll(argparse.Action):
    """``--help-all``: the help with every option (those ``rare`` hides from ``--help`` too), the
    verb's full usage and the docs line as the last; then exit, as ``--help`` does."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, *, epilog: str,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)
        self.epilog = epilog

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any,
                 option_string: str | None = None) -> None:
        sys.stdout.write(full_help(parser, self.epilog))
        parser.exit()


def full_help(parser: argparse.ArgumentParser, epilog: str) -> str:
    """``parser``'s help with every hidden option shown, its usage in full and ``epilog``; the
    parser is left as it was."""
    hidden = [a for a in parser._actions if hasattr(a, "full_help")]
    kept = parser.usage, parser.epilog
    try:
        for action in hidden:
            action.help = action.full_help
        parser.usage, parser.epilog = None, epilog
        return parser.format_help()
    finally:
        for action in hidden:
            action.help = argparse.SUPPRESS
        parser.usage, parser.epilog = kept


def rare(group: Any, *flags: str, help: str, **kwargs: Any) -> argparse.Action:
    """An option of ``group`` (a parser, argument group or mutually exclusive group) that only
    ``--help-all`` lists: it parses as any other; ``--help`` stays on one screen without it."""
    action = group.add_argument(*flags, help=argparse.SUPPRESS, **kwargs)
    action.full_help = help
    return action


def short_usage(prog: str, own: list[str], width: int = 78) -> str:
    """The usage line of ``--help`` (the verb's own required arguments, the shared ones, then
    ``[options]``), broken between arguments to stay within ``width`` with ``usage: `` before it."""
    lines = [f"usage: {prog}"]
    indent = " " * len(lines[0])
    for part in [*own, "--model M", "--prompts P", "--out DIR", "[options]"]:
        if len(f"{lines[-1]} {part}") > width:
            lines.append(indent)
        lines[-1] += f" {part}"
    return "\n".join(lines).removeprefix("usage: ")  # argparse writes "usage: " itself


def verb_parser(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
                examples: str, usage: str = "") -> argparse.ArgumentParser:
    """A verb's parser: its one-line ``help`` (the top-level list), ``description`` (wrapped) and
    ``examples`` (the epilog, printed as written), with ``--help-all``. ``usage``: the verb's own
    required arguments, shown before the shared ones in the short usage line (``--help-all``
    shows argparse's full one)."""
    docs = DOCS.format(name=name)
    p = sub.add_parser(name, help=help, description=description,
                       usage=short_usage(f"logitscope {name}", [usage] if usage else []),
                       epilog=f"{examples}\nevery option: --help-all; docs: {docs}",
                       formatter_class=HelpFormatter)
    p.add_argument("--help-all", action=HelpAll, epilog=f"{examples}\ndocs: {docs}",
                   help="every option: --device, --dtype, --batch-size, --seed, --no-prepend-bos, ...")
    return p


def model_options(p: argparse.ArgumentParser, *, csv: str | None = None, study: bool = True) -> None:
    """The options every verb takes, in two groups after the verb's own: the model, prompts and
    output; how to run (``--help-all`` only). With ``study``, the study's own (the report's top
    heads, attention prompt; ``--help-all`` only)."""
    g = p.add_argument_group("model, prompts, output (every verb)")
    g.add_argument("--model", required=True, metavar="M", help="hub id or alias (gpt2-small), folder, .gguf file")
    g.add_argument("--prompts", required=True, metavar="P",
                   help="seed, arena, ioi:N, a task (greater-than:N, sva:N, induction:N, docstring:N, "
                   "factual-recall:FILE) or FILE.jsonl")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    g.add_argument("--no-report", action="store_true", help="skip report.html")
    if csv is not None:
        g.add_argument("--csv", action="store_true", help=csv)
    if study:
        rare(g, "--top-k", type=int, default=3, metavar="K", help="top positive and negative heads shown (3)")
        rare(g, "--attention-prompt", type=int, default=0, metavar="I",
             help="the prompt whose attention patterns are shown (0)")
    r = p.add_argument_group("running (every verb)")
    rare(r, "--device", default="auto", metavar="D", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N, mps")
    rare(r, "--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
         metavar="T", help="weights' dtype: float32 (default), float16, bfloat16, float64")
    rare(r, "--device-map", default=None, metavar="MAP", help="auto: shard over the GPUs (accelerate)")
    rare(r, "--batch-size", type=int, default=None, metavar="N", help="prompts a pass (default: from memory)")
    rare(r, "--seed", type=int, default=0, metavar="S", help="generated prompts' and intervals' seed (0)")
    bos = r.add_mutually_exclusive_group()
    rare(bos, "--prepend-bos", dest="prepend_bos", action="store_true", default=None,
         help="BOS before each prompt (default: the family's TransformerLens habit)")
    rare(bos, "--no-prepend-bos", dest="prepend_bos", action="store_false", help="no BOS")
    rare(r, "--quiet", action="store_true", help="no progress bar or warnings")
    rare(r, "--debug", action="store_true", help="show tracebacks")
    rare(r, "--dist-timeout", type=float, default=900.0, metavar="S",
         help="under torchrun: seconds a rank waits for the others (900)")


METRIC_HELP = ("logit-diff, logprob-diff, prob-diff, logprob, loss or kl at the answer (default: the task's, "
               "else logit-diff)")


def metric_option(p: Any, *, decomposable: bool = False) -> None:
    """``--metric`` on a verb's parser or group; ``decomposable``: the verb (``run``, direct logit
    attribution) takes the logit difference only, and says so for any other."""
    if decomposable:  # one value: nothing to choose, so --help-all only
        rare(p, "--metric", default=None, metavar="METRIC", help="logit-diff only: the metric DLA decomposes")
    else:
        p.add_argument("--metric", default=None, metavar="METRIC", help=METRIC_HELP)
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
