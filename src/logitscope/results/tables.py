"""Per-prompt tables of a study: one row per prompt, as dicts, CSV or a pandas DataFrame."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from logitscope.results.study import StudyData

# The computed fields of a prompt row, in order; a prompt's own key that collides with one is
# written as meta_<key>.
ROW_FIELDS = ("prompt", "correct", "incorrect", "correct_id", "incorrect_id", "n_tokens", "logit_diff", "direct",
              "prob_correct", "prob_incorrect")


def prompt_rows(data: StudyData) -> list[dict[str, Any]]:
    """One dict per prompt, as in ``results.json``'s ``prompts``: the text, answers and their
    ids, the token count, logit difference, direct term, both answers' probabilities, then the
    prompt's own metadata (IOI: template, order, names, ...; JSONL: the line, extra keys)."""
    columns = zip(data.correct_ids.tolist(), data.incorrect_ids.tolist(), data.n_tokens.tolist(),
                  data.logit_diff.tolist(), data.direct.tolist(), data.prob_correct.tolist(), data.prob_incorrect.tolist())
    rows = []
    for p, values in zip(data.prompts, columns):
        row = dict(zip(ROW_FIELDS, (p.text, p.correct, p.incorrect, *values)))
        row.update({(f"meta_{k}" if k in row else k): v for k, v in p.meta.items()})
        rows.append(row)
    return rows


def meta_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The prompt's own metadata from a :func:`prompt_rows` row (``meta_<key>`` back to ``<key>``
    where ``<key>`` is a computed field)."""
    meta = {}
    for k, v in row.items():
        if k in ROW_FIELDS:
            continue
        if k.startswith("meta_") and k[5:] in ROW_FIELDS:
            k = k[5:]
        meta[k] = v
    return meta


def per_prompt_columns(data: StudyData) -> tuple[list[str], np.ndarray]:
    """Every per-prompt attribution as named columns: ``(names, [n_prompts, n_columns])``.
    Names are TransformerLens labels, prefixed by what they are: ``lens:0_pre`` …
    ``lens:final_post`` (the logit lens, frozen scale), ``layer:embed`` … ``layer:11_mlp_out``,
    ``head:L0H0`` … (``stack_head_results``), ``part:...`` (the complete decomposition's groups)."""
    group_names, groups = data.decomposition_groups_per_prompt
    names = ([f"lens:{x}" for x in data.logit_lens_labels] + [f"layer:{x}" for x in data.layer_labels]
             + [f"head:{x}" for x in data.head_labels] + [f"part:{x}" for x in group_names])
    values = np.concatenate([data.logit_lens_per_prompt, data.layer_attribution_per_prompt,
                             data.head_results.reshape(data.n_layers * data.n_heads, -1), groups])
    return names, np.ascontiguousarray(values.T, dtype=np.float64)


def to_records(data: StudyData) -> list[dict[str, Any]]:
    """One flat dict per prompt: :func:`prompt_rows` and :func:`per_prompt_columns` together
    (what ``per_prompt.csv`` holds, and what ``pandas.DataFrame(records)`` takes)."""
    names, values = per_prompt_columns(data)
    return [{**row, **dict(zip(names, v))} for row, v in zip(prompt_rows(data), values.tolist())]


def to_dataframe(data: StudyData) -> Any:
    """:func:`to_records` as a ``pandas.DataFrame`` (needs pandas, which logitscope itself does
    not: ``pip install pandas``)."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is in the test environment
        raise ImportError("to_dataframe() needs pandas: pip install pandas "
                          "(to_records() gives the same rows as plain dicts)") from exc
    return pd.DataFrame(to_records(data))


def write_csv(data: StudyData, path: str | Path) -> Path:
    """Write :func:`to_records` as CSV (UTF-8, a header row; columns in the order of the first
    prompt's row, then any metadata key later prompts add; an absent value is an empty cell)."""
    names, values = per_prompt_columns(data)
    rows = prompt_rows(data)
    head = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(head + names)
        for row, v in zip(rows, values.tolist()):
            w.writerow([_cell(row.get(k, "")) for k in head] + v)
    return Path(path)


def _cell(v: Any) -> Any:
    """A metadata value as one CSV cell: text and numbers as they are, anything else as JSON."""
    return v if isinstance(v, (str, int, float)) else json.dumps(v)
