"""The two JavaScript bundles the report inlines (once each), and safe inlining of script content.

Both come from the installed wheels, so the report renders with no network: plotly ships
``plotly.min.js`` (``plotly.offline.get_plotlyjs()``) and circuitsvis ships its browser bundle at
``circuitsvis/dist/cdn/iife.js``, which defines the global ``CircuitsVis`` with ``render``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any

_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)


def script_safe(js: str) -> str:
    """JavaScript that can sit inside ``<script>…</script>``: ``</script`` becomes ``<\\/script``
    (the same string in JS string, regex and template literals), and source-map links, which would
    point at files that are not there, are dropped."""
    return _SOURCE_MAP.sub("", _SCRIPT_END.sub(r"<\\/\1", js))


def json_for_script(value: Any) -> str:
    """``value`` as JSON that is inert inside a ``<script>`` element (``<``, ``>``, ``&`` escaped)."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js from the installed plotly package (about 4.8 MB)."""
    from plotly.offline import get_plotlyjs

    return script_safe(get_plotlyjs())


@lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """circuitsvis's browser bundle from the installed package (about 1.3 MB); defines ``CircuitsVis``."""
    bundle = resources.files("circuitsvis").joinpath("dist", "cdn", "iife.js")
    return script_safe(bundle.read_text(encoding="utf-8"))


def circuitsvis_version() -> str:
    """Version of the installed circuitsvis package."""
    from importlib.metadata import version

    return version("circuitsvis")
