"""The offline HTML report of a study: one self-contained ``report.html``.

- :func:`write_report` writes it (atomically);
- :func:`report_html` returns it as a string;
- :func:`notebook_html` is the light notebook display (``StudyResult._repr_html_``: no script),
  :func:`report_frame_html` the whole report for a notebook (``StudyResult.report_view()``);
- :func:`logitscope.report.figures.make_figures` gives the plotly figures alone;
- :func:`logitscope.report.summary.summary_text` gives the terminal's few lines.

Everything here reads a :class:`~logitscope.results.study.StudyData` and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from logitscope.report.figures import make_figures
from logitscope.report.notebook import ReportView, notebook_html, report_frame_html
from logitscope.report.page import report_html
from logitscope.report.summary import summary_text
from logitscope.results.io import write_text_atomic
from logitscope.results.study import StudyData

if TYPE_CHECKING:
    from logitscope.results.patching import PatchingData

__all__ = ["ReportView", "make_figures", "notebook_html", "report_frame_html", "report_html", "summary_text",
           "write_report"]


def write_report(result: StudyData, path: str | Path, patching: PatchingData | None = None) -> Path:
    """Write the report to ``path`` (with ``patching``, its causal section too): a temporary file in
    the same folder, then ``os.replace``, so a reader never sees half a file and a failure leaves any
    earlier report in place."""
    return write_text_atomic(path, report_html(result, patching))
