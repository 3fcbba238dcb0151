"""Prompt sets: built-in, from a JSONL file, generated (IOI and the tasks of :mod:`logitscope.inputs.tasks`),
or whatever a notebook passes.

:func:`parse_prompts` reads everything that needs no model (a built-in set, a JSONL file, a list
of prompts, dicts or tuples; an ``ioi:N`` spec is checked, not yet generated), so a typo fails
before any model is loaded; :func:`load_prompts` also generates IOI prompts, which need the
model's tokenizer.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.ioi import iter_ioi_prompts
from logitscope.inputs.lint import warn_prompts
from logitscope.inputs.prompt import FIELDS, Prompt, check_prompt, prompt_from_row
from logitscope.inputs.tasks import TASKS
from logitscope.inputs.tasks.factual import read_facts

__all__ = ["BUILTIN_SETS", "GeneratedSet", "Prompt", "builtin_prompts", "load_jsonl", "load_prompts", "parse_prompts"]


# The seed notebook's four formats and name pairs, byte for byte. Note the double space before
# "{}": the seed writes "shops, {} gave" and formats " John" into it, so its prompts contain
# "shops,  John" and tokenize to 16 tokens with BOS (the seed prints a residual of [8, 16, 768]).
_SEED_FORMATS = [
    "When John and Mary went to the shops, {} gave the bag to",
    "When Tom and James went to the park, {} gave the ball to",
    "When Dan and Sid went to the shops, {} gave an apple to",
    "After Martin and Amy went to the park, {} gave a drink to",
]
# ARENA and the TransformerLens demo write the same formats without the extra space (15 tokens).
_ARENA_FORMATS = [f.replace(", {}", ",{}") for f in _SEED_FORMATS]
_NAME_PAIRS = [(" Mary", " John"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")]


def _ioi_demo_prompts(formats: list[str], source: str) -> list[Prompt]:
    # Same order as the seed: for each format, first the prompt whose subject is the second name
    # (answer: the first name), then the swapped one.
    out = []
    for fmt, names in zip(formats, _NAME_PAIRS):
        for i, subject in enumerate(names[::-1]):
            correct, incorrect = names[:: 1 if i == 0 else -1]
            out.append(Prompt(fmt.format(subject), correct, incorrect, {"source": source}))
    return out


BUILTIN_SETS = {
    "seed": lambda: _ioi_demo_prompts(_SEED_FORMATS, "seed"),
    "arena": lambda: _ioi_demo_prompts(_ARENA_FORMATS, "arena"),
}


def builtin_prompts(name: str) -> list[Prompt]:
    """The built-in prompt set ``name`` (``seed`` or ``arena``)."""
    try:
        return BUILTIN_SETS[name]()
    except KeyError:
        raise InputError(
            f"unknown prompt set {name!r}{_did_you_mean(name)}: use one of {', '.join(sorted(BUILTIN_SETS))}, "
            f"{', '.join(f'{t}:{TASKS[t].argument}' for t in TASKS)}, ioi:N, ioi-abba:N, ioi-baba:N, or a path to a "
            ".jsonl file"
        ) from None


def _did_you_mean(spec: str) -> str:
    """`` (did you mean 'greater-than:200'?)`` for a spec whose name is a typo of a known one."""
    head, sep, tail = spec.partition(":")
    known = [*BUILTIN_SETS, *_GENERATED, *TASKS]
    close = difflib.get_close_matches(head, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0] + sep + tail!r}?)" if close and close[0] != head else ""


def load_jsonl(path: str | Path) -> list[Prompt]:
    """Read ``{"prompt", "correct", "incorrect"}`` rows, one JSON object per line.

    Blank lines are skipped. Any other problem raises :class:`InputError` naming the file and line.
    Extra keys are kept in ``Prompt.meta``, with the line number as ``meta["line"]``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"prompts file not found: {path}")
    if path.is_dir():
        raise InputError(f"prompts path is a directory, not a JSONL file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not content
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise InputError(
                f"{path}:{lineno}: expected a JSON object like "
                '{"prompt": "...", "correct": " Mary", "incorrect": " John"}'
            )
        prompts.append(prompt_from_row(row, f"{path}:{lineno}", line=lineno))
    if not prompts:
        raise InputError(f"prompts file is empty: {path}")
    return prompts


@dataclass(frozen=True)
class GeneratedSet:
    """A checked ``ioi:N`` / ``ioi-abba:N`` / ``ioi-baba:N`` spec, or a built-in task's
    (``greater-than:N``, ``factual-recall:FILE``, ...: :data:`~logitscope.inputs.tasks.TASKS`),
    generated once the tokenizer is known."""

    spec: str
    n: int  # prompts to make (for a FILE task, the file's rows)
    order: str = "mixed"  # IOI's: "mixed", "ABBA" or "BABA"
    task: str | None = None  # a name in TASKS, or None for IOI
    path: str | None = None  # a FILE task's file

    def generate(self, *, seed: int = 0, tokenizer: Any = None, progress: bool = False) -> list[Prompt]:
        """The prompts, made one at a time (:func:`iter_ioi_prompts`); with ``progress``, a bar for
        sets of :data:`PROGRESS_FROM` or more. Above :data:`LARGE_SET`, first a
        :class:`~logitscope.errors.PromptWarning`: such a size is more often a typo than a plan, and
        the whole set is held in memory by the study."""
        prompts = self._iterate(seed, tokenizer)  # checks now
        if self.n > LARGE_SET:
            warn_prompts(f"{self.spec} asks for {self.n:,} prompts: the study holds every one, about "
                         f"{self.n * BYTES_PER_PROMPT / 1e9:.0f} GB of memory before its first forward pass; "
                         f"was it a typo? (published circuit studies measure on a few hundred; interrupt with "
                         f"Ctrl-C)")
        if not (progress and self.n >= PROGRESS_FROM):
            return list(prompts)
        from tqdm.auto import tqdm

        out: list[Prompt] = []
        with tqdm(total=self.n, unit="prompt", desc=f"generating {self.spec}", file=sys.stderr, dynamic_ncols=True,
                  mininterval=0.5) as bar:
            for start in range(0, self.n, 10_000):
                out.extend(itertools.islice(prompts, 10_000))
                bar.update(len(out) - start)
        return out

    def _iterate(self, seed: int, tokenizer: Any) -> Iterator[Prompt]:
        if self.task is None:
            return iter_ioi_prompts(self.n, order=self.order, seed=seed, tokenizer=tokenizer)
        return TASKS[self.task].generate(self.path if self.path is not None else self.n, seed=seed, tokenizer=tokenizer)


LARGE_SET = 1_000_000  # a generated set above this warns (ioi:50000000 for ioi:500)
PROGRESS_FROM = 100_000  # generated sets from this size show a progress bar (about a second of generation)
# Measured on the tiny checkpoint (ioi:2000 against ioi:200000, 1 thread): peak memory of `run --no-report`
# grows by about this much per generated prompt (prompt, its token ids, per-prompt results).
BYTES_PER_PROMPT = 4_000


_GENERATED = {"ioi": "mixed", "ioi-abba": "ABBA", "ioi-baba": "BABA"}
EXPECTED = (
    "a prompt-set name ('seed', 'arena', 'ioi:N', 'ioi-abba:N', 'ioi-baba:N', a task such as 'greater-than:N'), a path to a JSONL file, or a list of "
    "Prompt, of dicts with 'prompt', 'correct' and 'incorrect', or of (prompt, correct, incorrect) tuples"
)


def _parse_spec(spec: str) -> list[Prompt] | GeneratedSet:
    if spec in BUILTIN_SETS:
        return builtin_prompts(spec)
    head, sep, tail = spec.partition(":")
    if sep and head in _GENERATED:
        return GeneratedSet(spec, _count(spec, tail, "ioi:500"), _GENERATED[head])
    if sep and head in TASKS:
        return _task_set(spec, head, tail)
    if spec.endswith(".jsonl") or Path(spec).exists() or "/" in spec:
        return load_jsonl(spec)
    return builtin_prompts(spec)


def _task_set(spec: str, name: str, tail: str) -> GeneratedSet:
    """A checked ``name:N`` (or ``name:FILE``) spec of a built-in task: the same rules and errors as ``ioi:N``."""
    if TASKS[name].argument == "FILE":
        if not tail:
            raise InputError(f"prompt set {spec!r}: give the file after the colon, e.g. {name}:facts.jsonl")
        return GeneratedSet(spec, len(read_facts(tail)), task=name, path=tail)  # a bad file fails now
    return GeneratedSet(spec, _count(spec, tail, f"{name}:200"), task=name)


def _count(spec: str, tail: str, example: str) -> int:
    """The N of a ``name:N`` spec: a whole number, at least 1 (the errors name the spec and ``example``)."""
    try:
        n = int(tail)
    except ValueError:
        raise InputError(f"prompt set {spec!r}: N must be a whole number, e.g. {example}") from None
    if n <= 0:
        raise InputError(f"prompt set {spec!r}: N must be at least 1")
    return n


def parse_prompts(prompts: Any) -> list[Prompt] | GeneratedSet:
    """What a ``--prompts`` value or ``run_study``'s ``prompts`` names, as far as it can be read
    without the model: a list of :class:`Prompt`, or a :class:`GeneratedSet` still to generate.

    Accepts a spec (``"seed"``, ``"arena"``, ``"ioi:N"``, ...), a path (``str`` or
    ``pathlib.Path``) to a JSONL file, or an iterable of :class:`Prompt`, of dicts with the JSONL
    keys (extra keys become ``meta``), or of ``(prompt, correct, incorrect)`` tuples. Bad
    contents raise :class:`InputError` naming the item; anything else raises ``TypeError``
    naming what it got."""
    if isinstance(prompts, str):
        return _parse_spec(prompts)
    if isinstance(prompts, os.PathLike):
        return load_jsonl(Path(prompts))
    if isinstance(prompts, GeneratedSet):
        return prompts
    if _is_dataframe(prompts) or isinstance(prompts, (bytes, bytearray, Mapping, Prompt)) \
            or not isinstance(prompts, Iterable):
        raise TypeError(f"prompts: expected {EXPECTED}; got {_what(prompts)}{_hint(prompts)}")
    out = [_one_prompt(item, i) for i, item in enumerate(prompts)]
    if not out:
        raise InputError("no prompts given: the list is empty")
    return out


def _one_prompt(item: Any, i: int) -> Prompt:
    where = f"prompts[{i}]"
    if isinstance(item, Prompt):
        return check_prompt(item, where)
    if isinstance(item, Mapping):
        return prompt_from_row(dict(item), where)
    if isinstance(item, (tuple, list)) and len(item) == 3:
        return check_prompt(Prompt(*item), where)
    raise TypeError(
        f"{where}: expected a Prompt, a dict with {', '.join(repr(k) for k in FIELDS)}, or a (prompt, correct, "
        f"incorrect) tuple; got {_what(item)}"
    )


def _what(value: Any) -> str:
    text = repr(value)
    kind = type(value).__name__
    if isinstance(value, (tuple, list)):
        kind = f"a {kind} of {len(value)} item{'s' if len(value) != 1 else ''}"
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _hint(value: Any) -> str:
    if isinstance(value, Prompt):
        return " (a single Prompt: pass a list, [prompt])"
    if isinstance(value, Mapping):
        return " (a single row: pass a list of rows, [row])"
    if _is_dataframe(value):
        return " (a DataFrame, whose rows are not what iterating it gives: pass df.to_dict('records'))"
    return ""


def _is_dataframe(value: Any) -> bool:
    """A pandas (or pandas-like) DataFrame, recognised without importing pandas: iterating one gives
    its column names, not its rows."""
    return hasattr(value, "to_dict") and hasattr(value, "columns") and not isinstance(value, Mapping)


def load_prompts(spec: Any, *, seed: int = 0, tokenizer: Any = None) -> list[Prompt]:
    """Resolve a ``--prompts`` value (or anything :func:`parse_prompts` takes) to prompts: a
    built-in set, ``ioi:N`` / ``ioi-abba:N`` / ``ioi-baba:N`` (generated with ``seed``, keeping
    words that are single tokens for ``tokenizer``), a JSONL path, or a list."""
    parsed = parse_prompts(spec)
    if isinstance(parsed, GeneratedSet):
        return parsed.generate(seed=seed, tokenizer=tokenizer)
    return parsed
