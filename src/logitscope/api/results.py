"""The study's result as a notebook uses it: :class:`StudyResult` (:func:`logitscope.load_result` reopens it).

A :class:`StudyResult` is the frozen, labelled data of :class:`~logitscope.results.study.StudyData`
(per-prompt arrays, their means, intervals and labels) plus thin methods that hand it to the
modules that do each job: :mod:`logitscope.report` (figures, report, notebook display),
:mod:`logitscope.results.tables` (per-prompt rows, CSV, DataFrame) and :mod:`logitscope.results.serialize`
(the output files, and reading them back).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from logitscope import report

from logitscope.results import serialize

from logitscope.results import tables
from logitscope.results.serialize import OUTPUT_FILES, RESULTS_SCHEMA_VERSION
from logitscope.results.study import AttentionView, StudyData

__all__ = ["OUTPUT_FILES", "RESULTS_SCHEMA_VERSION", "AttentionView", "StudyResult"]


@dataclass(frozen=True, eq=False, repr=False)
class StudyResult(StudyData):
    __doc__ = StudyData.__doc__

    @classmethod
    def of(cls, data: StudyData) -> "StudyResult":
        """``data`` with this class's files, tables and report."""
        return cls(**{f.name: getattr(data, f.name) for f in fields(data) if f.init})

    # ------------------------------------------------------------------ tables
    def prompt_rows(self) -> list[dict[str, Any]]:
        """One dict per prompt, as in ``results.json``'s ``prompts`` (:func:`logitscope.results.tables.prompt_rows`)."""
        return tables.prompt_rows(self)

    def per_prompt_columns(self) -> tuple[list[str], Any]:
        """Every per-prompt attribution as named columns (:func:`logitscope.results.tables.per_prompt_columns`)."""
        return tables.per_prompt_columns(self)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per prompt: what ``per_prompt.csv`` holds (:func:`logitscope.results.tables.to_records`)."""
        return tables.to_records(self)

    def to_dataframe(self) -> Any:
        """:meth:`to_records` as a ``pandas.DataFrame`` (needs pandas)."""
        return tables.to_dataframe(self)

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_records` as CSV (:func:`logitscope.results.tables.write_csv`)."""
        return tables.write_csv(self, path)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` document (:func:`logitscope.results.serialize.results_document`)."""
        return serialize.results_document(self)

    def save(self, out_dir: str | Path, *, report: bool = True, csv: bool = False) -> Path:
        """Write ``results.json``, ``per_prompt_heads.npy``, ``per_prompt.npz``, ``attention.npy``,
        (by default) ``report.html`` and (if asked) ``per_prompt.csv`` into ``out_dir``, atomically:
        a failure leaves earlier files untouched. :func:`load_result` reads the folder back."""
        also = (lambda tmp: self.write_report(tmp / "report.html")) if report else None
        return serialize.save_study(self, out_dir, csv=csv, also=also)

    # ------------------------------------------------------------------ presentation
    def write_report(self, path: str | Path) -> Path:
        """Write the self-contained HTML report (works offline)."""
        return report.write_report(self, path)

    def figures(self) -> dict[str, Any]:
        """The report's plotly figures, by name, for restyling in a notebook."""
        return report.make_figures(self)

    def summary(self) -> str:
        """A few lines for a terminal: mean logit difference, the DLA check, top heads."""
        return report.summary_text(self)

    def _repr_html_(self) -> str:
        """The light notebook display: summary, head heatmap, top heads; no script, tens of KB."""
        return report.notebook_html(self)

    def report_view(self, height: int = 900) -> report.ReportView:
        """The whole interactive report, for a notebook cell to display (it inlines plotly.js and
        circuitsvis: a saved notebook grows by about 7 MB per display)."""
        return report.ReportView(self, height)
