"""Prompts with a correct and an incorrect next token."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitscope.errors import InputError


@dataclass(frozen=True)
class Prompt:
    """One prompt and its two candidate answers (each must be a single token).

    ``meta`` carries provenance that results keep beside the prompt, e.g. ``{"template": 3,
    "order": "ABBA"}`` for generated IOI prompts or ``{"line": 12}`` for a JSONL row.
    ``corrupted``: the prompt's counterpart for activation patching (same number of tokens, the
    answer changed), or ``None``.
    """

    text: str
    correct: str
    incorrect: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    corrupted: str | None = None


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
            f"unknown prompt set {name!r}: use one of {', '.join(sorted(BUILTIN_SETS))}, "
            "ioi:N, ioi-abba:N, ioi-baba:N, or a path to a .jsonl file"
        ) from None


_FIELDS = ("prompt", "correct", "incorrect")
_OPTIONAL = ("corrupted",)  # the counterpart prompt for activation patching


def load_jsonl(path: str | Path) -> list[Prompt]:
    """Read ``{"prompt", "correct", "incorrect"}`` rows (and optionally ``"corrupted"``, the
    counterpart prompt for activation patching), one JSON object per line.

    Blank lines are skipped. Any other problem raises :class:`InputError` naming the file and line.
    Extra keys are kept in ``Prompt.meta``.
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
        missing = [k for k in _FIELDS if k not in row]
        if missing:
            raise InputError(f"{path}:{lineno}: missing field {', '.join(repr(m) for m in missing)}")
        bad = [k for k in (*_FIELDS, *_OPTIONAL) if k in row and (not isinstance(row[k], str) or not row[k])]
        if bad:
            raise InputError(f"{path}:{lineno}: field {bad[0]!r} must be a non-empty string")
        meta = {k: v for k, v in row.items() if k not in _FIELDS and k not in _OPTIONAL}
        meta["line"] = lineno
        prompts.append(Prompt(row["prompt"], row["correct"], row["incorrect"], meta, row.get("corrupted")))
    if not prompts:
        raise InputError(f"prompts file is empty: {path}")
    return prompts


def load_prompts(spec: str, *, seed: int = 0, tokenizer: Any = None) -> list[Prompt]:
    """Resolve a ``--prompts`` value: a built-in set, ``ioi:N`` / ``ioi-abba:N`` / ``ioi-baba:N``,
    or a JSONL path."""
    if spec in BUILTIN_SETS:
        return builtin_prompts(spec)
    head, sep, tail = spec.partition(":")
    if sep and head in ("ioi", "ioi-abba", "ioi-baba"):
        from logitscope.tasks.ioi import generate_ioi_prompts

        try:
            n = int(tail)
        except ValueError:
            raise InputError(f"prompt set {spec!r}: N must be a whole number, e.g. ioi:500") from None
        if n <= 0:
            raise InputError(f"prompt set {spec!r}: N must be at least 1")
        order = {"ioi": "mixed", "ioi-abba": "ABBA", "ioi-baba": "BABA"}[head]
        return generate_ioi_prompts(n, order=order, seed=seed, tokenizer=tokenizer)
    if spec.endswith(".jsonl") or Path(spec).exists() or "/" in spec:
        return load_jsonl(spec)
    return builtin_prompts(spec)
