"""mkdocs hook: the docstrings use Sphinx roles (:class:`Prompt`, :func:`logitscope.run_study`);
mkdocstrings renders them as the role's name before a code span. Keep the code span, drop the role."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("", html)
