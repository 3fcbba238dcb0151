"""Reopen a saved run, a study or a patch run, from its folder: :func:`load_result`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from logitscope.results import serialize
from logitscope.results.edges import is_edges_folder
from logitscope.api.edges import read_edges
from logitscope.api.method_results import as_method_result, kind_of_patching
from logitscope.api.patching_result import read_patching
from logitscope.api.results import StudyResult

__all__ = ["load_result"]


def load_result(folder: str | Path) -> Any:
    """Reopen a study from the folder ``save`` (or ``logitscope run``) wrote: the same fields,
    figures, report and tables, without recomputing anything; a folder ``logitscope patch`` (or
    ``PatchingResult.save``) wrote reopens as that :class:`~logitscope.api.patching_result.PatchingResult`:
    one method's run (the sections its ``patching`` object holds: grids, ablated sets, ``paths`` or
    ``circuit``) as that method's type (:class:`~logitscope.api.method_results.GridsResult`,
    ``AblationResult``, ``PathsResult``, ``CircuitPatchingResult``), several methods' as a
    ``PatchingResult``; and one :func:`logitscope.edges` (or ``EdgeResult.save``) wrote, whose results.json says
    ``kind: "edges"``, as that :class:`~logitscope.api.edges.EdgeResult` (whose ``save`` writes the circuit view too). The kind is read from
    results.json (``kind``, a ``patching`` object), never from which files sit beside it. Raises
    :class:`~logitscope.errors.InputError` for a folder of another ``schema_version``."""
    path = Path(folder).expanduser()
    if is_edges_folder(path.parent if path.is_file() else path):
        return read_edges(path)
    fields = serialize.read_study(folder)  # checks the folder, results.json and its schema_version
    results = path if path.is_file() else path / "results.json"
    patching = _patching_object(results)
    if patching is not None:
        return as_method_result(read_patching(path), kind_of_patching(patching))
    return StudyResult(**fields)


def _patching_object(results: Path) -> dict[str, Any] | None:
    """results.json's (already read once, so readable) ``patching`` object: a patch run's; else ``None``."""
    doc = json.loads(results.read_text(encoding="utf-8"))
    patching = doc.get("patching") if isinstance(doc, dict) else None
    return patching if isinstance(patching, dict) else None
