"""Reopen a saved run, a study or a patch run, from its folder: :func:`load_result`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from logitscope.results import serialize
from logitscope.results.edges import is_edges_folder, read_edges
from logitscope.api.patching_result import read_patching
from logitscope.api.results import StudyResult

__all__ = ["load_result"]


def load_result(folder: str | Path) -> Any:
    """Reopen a study from the folder ``save`` (or ``logitscope run``) wrote: the same fields,
    figures, report and tables, without recomputing anything; a folder ``logitscope patch`` (or
    ``PatchingResult.save``) wrote reopens as that :class:`~logitscope.api.patching.PatchingResult`,
    and one :func:`logitscope.edges` (or ``EdgeResult.save``) wrote, whose results.json says
    ``kind: "edges"``, as that :class:`~logitscope.results.edges.EdgeResult`.
    Raises :class:`~logitscope.errors.InputError` for a folder of another ``schema_version``."""
    path = Path(folder).expanduser()
    if is_edges_folder(path.parent if path.is_file() else path):
        return read_edges(path)
    if (path.parent if path.is_file() else path).joinpath("patching_per_prompt.npz").exists():
        return read_patching(path)
    return StudyResult(**serialize.read_study(folder))
