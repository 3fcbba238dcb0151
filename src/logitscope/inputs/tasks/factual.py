"""Factual recall from the user's file: CounterFact-style rows whose objects may be several tokens.

Meng et al. 2022 ("Locating and Editing Factual Associations in GPT", ROME; the CounterFact data
set) locate facts with prompts such as "{} plays the sport of" filled with a subject ("LeBron
James") and the true object ("basketball") as the answer; ``target_new`` is the counterfactual
object. Objects are often several tokens: the metric over one is its teacher-forced log-probability
(issue 22, part 1), so this loader only makes the prompts. Each JSONL line is one of

- a CounterFact record: ``{"requested_rewrite": {"prompt": "{} plays the sport of", "subject":
  "LeBron James", "target_true": {"str": "basketball"}, "target_new": {"str": "football"}}, ...}``;
- the same, flat: ``{"prompt": "{} plays the sport of", "subject": "LeBron James", "target_true":
  "basketball", "target_new": "football"}`` (objects as strings or ``{"str": ...}``);
- a plain row: ``{"prompt": "The Eiffel Tower is in", "correct": " Paris", "incorrect": " Rome"}``.

An object without a leading space gets one (the prompt ends in a word). Counterpart: a row's own
``"corrupted"`` text if it has one; else, for a template row, the same template filled with the
subject of another row of that template whose true object differs (drawn with the seed among
those with the same number of tokens, given the tokenizer): the subject-swap counterpart, which
changes the fact and nothing else. A row with no such partner has none, and patching says so.
Metric: ``logprob`` of the true object, the probability ROME's causal tracing restores.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitscope.errors import InputError
from logitscope.inputs.prompt import Prompt
from logitscope.inputs.tasks.base import Task, check_seed, encode

__all__ = ["Fact", "TASK", "iter_factual", "read_facts"]


@dataclass(frozen=True)
class Fact:
    """One row of the file: the prompt's template (``{}`` where the subject goes) and subject, or a
    plain prompt (``template`` ``None``); the true and the counterfactual object; its line."""

    template: str | None
    subject: str | None
    text: str
    true: str
    new: str
    line: int
    corrupted: str | None = None


def _object(value: Any, where: str, field: str) -> str:
    if isinstance(value, dict) and "str" in value:
        value = value["str"]
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {field!r} must be a non-empty string (or {{\"str\": ...}}), not {value!r}")
    return value


def _spaced(answer: str, text: str) -> str:
    return answer if answer.startswith(" ") or text.endswith((" ", "\n")) else " " + answer


def _fact(row: dict[str, Any], where: str, line: int) -> Fact:
    corrupted = row.get("corrupted")
    if corrupted is not None and (not isinstance(corrupted, str) or not corrupted.strip()):
        raise InputError(f"{where}: field 'corrupted' must be a non-empty string, not {corrupted!r}")
    if "correct" in row or "incorrect" in row:
        missing = [k for k in ("prompt", "correct", "incorrect") if k not in row]
        if missing:
            raise InputError(f"{where}: a plain row needs 'prompt', 'correct' and 'incorrect'; missing "
                             f"{', '.join(map(repr, missing))}")
        text = row["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: field 'prompt' must be a non-empty string, not {text!r}")
        return Fact(None, None, text, _object(row["correct"], where, "correct"),
                    _object(row["incorrect"], where, "incorrect"), line, corrupted)
    rec = row.get("requested_rewrite", row)
    if isinstance(rec, list) and rec:
        rec = rec[0]  # some CounterFact variants list several rewrites; the first is the case's own
    missing = [k for k in ("prompt", "subject", "target_true", "target_new") if not isinstance(rec, dict) or k not in rec]
    if missing:
        raise InputError(f"{where}: missing field {', '.join(map(repr, missing))}: a row is a CounterFact record "
                         '({"prompt": "{} plays the sport of", "subject": "LeBron James", "target_true": '
                         '"basketball", "target_new": "football"}) or a plain row ({"prompt", "correct", "incorrect"})')
    template, subject = rec["prompt"], rec["subject"]
    if not isinstance(subject, str) or not subject.strip():
        raise InputError(f"{where}: field 'subject' must be a non-empty string, not {subject!r}")
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InputError(f"{where}: field 'prompt' must be a string with one '{{}}' where the subject goes, "
                         f"not {template!r}")
    text = template.replace("{}", subject)
    return Fact(template, subject, text, _object(rec["target_true"], where, "target_true"),
                _object(rec["target_new"], where, "target_new"), line, corrupted)


def read_facts(path: str | Path) -> list[Fact]:
    """The rows of a JSONL file (blank lines skipped), or an :class:`InputError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"factual-recall file not found: {path}" if not path.exists()
                         else f"factual-recall path is not a file: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    facts = []
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object (a CounterFact record or a plain row)")
        facts.append(_fact(row, where, lineno))
    if not facts:
        raise InputError(f"factual-recall file is empty: {path}")
    return facts


def _partners(facts: list[Fact], seed: int, tokenizer: Any) -> list[str | None]:
    """Each template row's subject-swap counterpart (see the module's docstring), or ``None``."""
    rng = random.Random(seed)
    length = (lambda t: len(encode(tokenizer, t))) if tokenizer is not None else (lambda t: 0)
    out: list[str | None] = []
    for f in facts:
        if f.corrupted is not None or f.template is None:
            out.append(f.corrupted)
            continue
        n = length(f.text)
        pool = sorted({g.subject for g in facts if g.template == f.template and g.subject != f.subject
                       and g.true.strip() != f.true.strip() and length(f.template.replace("{}", g.subject)) == n})
        out.append(f.template.replace("{}", rng.choice(pool)) if pool else None)
    return out


def iter_factual(path: str | Path, *, seed: int = 0, tokenizer: Any = None) -> Iterator[Prompt]:
    """The file's rows as prompts (:func:`read_facts`): ``correct`` the true object, ``incorrect`` the
    counterfactual one (each with a leading space), the counterpart as the module's docstring says.
    ``meta``: ``task``, ``metric``, ``line`` and, for template rows, ``subject`` and ``template``."""
    check_seed(seed)
    facts = read_facts(path)  # read and checked now, before the first prompt is taken
    return _prompts(facts, _partners(facts, seed, tokenizer))


def _prompts(facts: list[Fact], partners: list[str | None]) -> Iterator[Prompt]:
    for f, corrupted in zip(facts, partners):
        meta: dict[str, Any] = {"task": TASK.name, "metric": TASK.metric, "line": f.line}
        if f.template is not None:
            meta.update(subject=f.subject, template=f.template)
        yield Prompt(f.text, _spaced(f.true, f.text), _spaced(f.new, f.text), meta, corrupted=corrupted)


TASK = Task(
    name="factual-recall",
    generate=iter_factual,
    metric="logprob",
    counterpart="the row's own 'corrupted', else the same template with another row's subject (another object)",
    source="Meng et al. 2022, Locating and Editing Factual Associations in GPT (ROME; CounterFact data set)",
    argument="FILE",
)
