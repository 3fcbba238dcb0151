"""Reopen a saved run, a study or a patch run, from its folder: :func:`load_result`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from logitscope.results import serialize
from logitscope.results.edges import is_edges_folder
from logitscope.api.edges import read_edges
from logitscope.api.patching_result import read_patching
from logitscope.api.results import StudyResult

__all__ = ["load_result"]


def load_result(folder: str | Path) -> Any:
    """Reopen a study from the folder ``save`` (or ``logitscope run``) wrote: the same fields,
    figures, report and tables, without recomputing anything; a folder ``logitscope patch`` (or
    ``PatchingResult.save``) wrote reopens as that :class:`~logitscope.api.patching_result.PatchingResult`,
    and one :func:`logitscope.edges` (or ``EdgeResult.save``) wrote, whose results.json says
    ``kind: "edges"``, as that :class:`~logitscope.api.edges.EdgeResult` (whose ``save`` writes the circuit view too). The kind is read from
    results.json (``kind``, a ``patching`` object), never from which files sit beside it. Raises
    :class:`~logitscope.errors.InputError` for a folder of another ``schema_version``."""
    path = Path(folder).expanduser()
    if is_edges_folder(path.parent if path.is_file() else path):
        return read_edges(path)
    fields = serialize.read_study(folder)  # checks the folder, results.json and its schema_version
    results = path if path.is_file() else path / "results.json"
    if _is_patch_run(results):
        return read_patching(path)
    return StudyResult(**fields)


def _is_patch_run(results: Path) -> bool:
    """Whether results.json (already read once, so readable) holds a patch run's ``patching`` object."""
    doc = json.loads(results.read_text(encoding="utf-8"))
    return isinstance(doc, dict) and isinstance(doc.get("patching"), dict)
