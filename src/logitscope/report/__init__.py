"""The offline HTML report of a study: one self-contained ``report.html``.

- :func:`write_report` writes it (atomically);
- :func:`report_html` returns it as a string;
- :func:`notebook_html` wraps it for Jupyter (``StudyData._repr_html_``);
- :func:`logitscope.report.figures.make_figures` gives the plotly figures alone;
- :func:`logitscope.report.summary.summary_text` gives the terminal's few lines.

Everything here reads a :class:`~logitscope.study_data.StudyData` and nothing else.
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from logitscope.report.figures import make_figures
from logitscope.report.page import report_html
from logitscope.report.summary import summary_text
from logitscope.study_data import StudyData

__all__ = ["make_figures", "notebook_html", "report_html", "summary_text", "write_report"]


def write_report(result: StudyData, path: str | Path) -> Path:
    """Write the report to ``path``: a temporary file in the same folder, then ``os.replace``, so a
    reader never sees half a file and a failure leaves any earlier report in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = report_html(result)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def notebook_html(result: StudyData, height: int = 900) -> str:
    """A short text summary, then the full report in a scrolling ``<iframe srcdoc>`` of ``height``
    pixels: it renders offline, and its scripts cannot clash with the notebook's (e.g. require.js).
    Non-ASCII characters are written as character references, so the frame reads the same whatever
    encoding the notebook page declares."""
    summary = html.escape(summary_text(result))
    doc = html.escape(report_html(result), quote=True).encode("ascii", "xmlcharrefreplace").decode("ascii")
    return (
        '<div class="logitscope-result">'
        f'<pre style="font-size:12px;line-height:1.4;margin:0 0 8px;white-space:pre-wrap">{summary}</pre>'
        f'<iframe srcdoc="{doc}" title="logitscope report" '
        f'style="width:100%;height:{int(height)}px;border:1px solid #e3e7ed;border-radius:8px;background:#f6f7f9"></iframe>'
        "</div>"
    )
