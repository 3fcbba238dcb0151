"""TransformerLens's names for what the study measures, and reading head names back.

Heads are ``L9H6`` (``stack_head_results``'s labels) or ``9.6`` (circuitsvis's head names, as the
seed notebook shows them); the logit lens runs ``0_pre``, ``0_mid``, ..., ``final_post``
(``accumulated_resid``); layers are ``embed``, ``pos_embed``, ``0_attn_out``, ``0_mlp_out``, ...
(``decompose_resid``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

# The complete decomposition summed by kind of part (results.json's decomposition.groups).
PART_GROUPS = ("attention heads", "attention biases", "MLP neurons", "MLP biases", "final norm bias")

HEAD_SPELLINGS = "'L9H6', '9.6', 'head:L9H6', (9, 6), a top_heads() triple (9, 6, value) or {'layer': 9, 'head': 6}"


def head_label(layer: int, head: int) -> str:
    """``L9H6``: TransformerLens's label of a head."""
    return f"L{layer}H{head}"


def head_name(layer: int, head: int) -> str:
    """``9.6``: circuitsvis's head name, as in the seed notebook."""
    return f"{layer}.{head}"


def head_labels(n_layers: int, n_heads: int) -> list[str]:
    return [head_label(layer, head) for layer in range(n_layers) for head in range(n_heads)]


def logit_lens_labels(n_layers: int, parallel_attn_mlp: bool) -> list[str]:
    """``accumulated_resid(incl_mid=True)``'s labels; parallel attention and MLP have no ``_mid``."""
    labels = []
    for layer in range(n_layers):
        labels.append(f"{layer}_pre")
        if not parallel_attn_mlp:
            labels.append(f"{layer}_mid")
    return labels + ["final_post"]


def layer_labels(n_layers: int, has_pos_embed: bool) -> list[str]:
    """``decompose_resid``'s labels."""
    labels = ["embed"] + (["pos_embed"] if has_pos_embed else [])
    for layer in range(n_layers):
        labels += [f"{layer}_attn_out", f"{layer}_mlp_out"]
    return labels


def decomposition_labels(n_layers: int, n_heads: int, has_pos_embed: bool) -> list[str]:
    """Every part of the complete decomposition, in :func:`logitscope.results.decomposition.decomposition`'s order."""
    labels = ["embed"] + (["pos_embed"] if has_pos_embed else [])
    labels += head_labels(n_layers, n_heads)
    labels += [f"{layer}_attn_bias" for layer in range(n_layers)]
    labels += [f"{layer}_mlp_neurons" for layer in range(n_layers)]
    labels += [f"{layer}_mlp_bias" for layer in range(n_layers)]
    return labels + ["final_norm_bias"]


def decomposition_group_labels(has_pos_embed: bool) -> list[str]:
    return ["embed"] + (["pos_embed"] if has_pos_embed else []) + list(PART_GROUPS)


_LABEL = re.compile(r"(?:head:)?L(\d+)H(\d+)", re.IGNORECASE)
_NAME = re.compile(r"(\d+)\.(\d+)")


def parse_head(spec: Any, n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, int]:
    """``(layer, head)`` from any spelling logitscope prints: ``"L9H6"``, ``"9.6"``,
    ``"head:L9H6"`` (a CSV column), ``(9, 6)``, a :meth:`top_heads` triple ``(9, 6, value)``, or a
    results.json ``top_heads`` row ``{"layer": 9, "head": 6, ...}``. With ``n_layers`` and
    ``n_heads``, also checks that the model has that head. Raises ``ValueError`` otherwise."""
    layer = head = None
    if isinstance(spec, str):
        m = _LABEL.fullmatch(spec.strip()) or _NAME.fullmatch(spec.strip())
        if m:
            layer, head = int(m.group(1)), int(m.group(2))
    elif isinstance(spec, Mapping):
        layer, head = _whole(spec.get("layer")), _whole(spec.get("head"))
    elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        layer, head = _whole(spec[0]), _whole(spec[1])
    if layer is None or head is None:
        raise ValueError(f"{spec!r} is not a head: write it as {HEAD_SPELLINGS}")
    if n_layers is not None and n_heads is not None and not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(
            f"no head {head_label(layer, head)}: this model has layers 0-{n_layers - 1} and heads 0-{n_heads - 1}"
        )
    return layer, head


def parse_heads(specs: Any, n_layers: int | None = None, n_heads: int | None = None) -> list[tuple[int, int]]:
    """:func:`parse_head` of each item of ``specs``; a single head (``"L9H6"``, ``(9, 6)``) is a list of one."""
    try:
        return [parse_head(specs, n_layers, n_heads)]
    except ValueError as single:
        if isinstance(specs, (str, Mapping)) or not hasattr(specs, "__iter__"):
            raise single from None
    return [parse_head(s, n_layers, n_heads) for s in specs]


def _whole(x: Any) -> int | None:
    """``x`` as an int if it is a whole number (Python or numpy), else ``None``."""
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    return None


def counted(n: int, noun: str) -> str:
    """``1 pair``, ``3,000 pairs``: a count with its noun in the right number (summary lines)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def rate(n: int, seconds: float, noun: str) -> str:
    """How fast ``n`` ``noun``s went in ``seconds``, at three significant figures: ``58.3 prompts/s``,
    ``1,234 prompts/s``, or below one a second ``2.41 s a prompt`` (never ``0 prompts/s``)."""
    if n <= 0 or seconds <= 0:
        return f"{noun}s/s: n/a"
    per_s = n / seconds
    if per_s >= 1000:
        return f"{per_s:,.0f} {noun}s/s"
    if per_s >= 1:
        return f"{float(f'{per_s:.3g}'):g} {noun}s/s"
    return f"{float(f'{1 / per_s:.3g}'):,g} s a {noun}"
