"""circuitsvis attention views of the top heads, rendered from the bundle the report inlines once.

Each view is an empty ``<div>`` plus one ``CircuitsVis.render(id, CircuitsVis.<Component>, props)``
call with JSON props, named as circuitsvis's own Python wrappers name them (camelCase). This is what
``circuitsvis.utils.render.render_local`` does, without repeating the 1.3 MB bundle per view and
without the CDN variant that ``str()`` and ``_repr_html_`` may return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from logitscope.labels import head_name
from logitscope.report.assets import json_for_script
from logitscope.results.study import AttentionView


@dataclass(frozen=True)
class AttentionWidget:
    """One circuitsvis view: the container's id, the React component, its props."""

    element_id: str
    component: str
    props: dict[str, Any]

    def html(self) -> str:
        """The container and its render call (the bundle must already be loaded)."""
        return (
            f'<div class="cv-view" id="{self.element_id}" data-cv-component="{self.component}"></div>\n'
            f'<script>CircuitsVis.render("{self.element_id}", CircuitsVis.{self.component}, '
            f"{json_for_script(self.props)});</script>"
        )


def _patterns(view: AttentionView, heads: list[tuple[int, int]]) -> list:
    """``[len(heads), T, T]`` as nested lists, 4 decimals (keeps the file small), NaN as 0."""
    arr = np.nan_to_num(view.heads(heads).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.round(arr, 4).tolist()


def attention_widgets(view: AttentionView, heads: list[tuple[int, int]], key: str) -> list[AttentionWidget]:
    """The seed's two views of ``heads`` on ``view``'s prompt: ``AttentionHeads`` (thumbnails named
    ``9.9``; click one to enlarge) and ``AttentionPatterns`` (hover a token to see its attention)."""
    if not heads:
        return []
    attention = _patterns(view, heads)
    tokens = [str(t) for t in view.str_tokens]
    return [
        AttentionWidget(
            f"cv-heads-{key}",
            "AttentionHeads",
            {
                "attention": attention,
                "tokens": tokens,
                "attentionHeadNames": [head_name(l, h) for l, h in heads],
            },
        ),
        AttentionWidget(f"cv-patterns-{key}", "AttentionPatterns", {"tokens": tokens, "attention": attention}),
    ]
