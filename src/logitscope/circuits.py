"""Known circuits: the IOI paper's head classes in GPT-2 small.

Wang et al. 2022 (arXiv 2211.00593), §3 and Fig. 2, with name movers split from backup name
movers as ARENA 1.4.1's ``CIRCUIT`` does (26 heads). The report marks these heads on the head
heatmap and in the top-heads table, so a reader can see at a glance which of the paper's heads
the attribution recovers.
"""

from __future__ import annotations

import re
from typing import Any

# (layer, head) of each class, in the paper's order of importance within the class.
IOI_HEAD_CLASSES: dict[str, tuple[tuple[int, int], ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "negative name mover": ((10, 7), (11, 10)),
    "backup name mover": ((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "S-inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}

# Short tags for heatmap cells.
IOI_CLASS_ABBREV: dict[str, str] = {
    "name mover": "NM",
    "negative name mover": "NNM",
    "backup name mover": "BNM",
    "S-inhibition": "SI",
    "induction": "Ind",
    "duplicate token": "DT",
    "previous token": "PT",
}

GPT2_SMALL_NAMES = frozenset({"gpt2", "gpt2-small", "openai-community/gpt2"})

_HEAD_TO_CLASS: dict[tuple[int, int], str] = {
    head: name for name, heads in IOI_HEAD_CLASSES.items() for head in heads
}


def _info(result_or_model_info: Any) -> tuple[str, str, int, int]:
    """``(model, family, n_layers, n_heads)`` from a result-like object or a mapping."""
    src = result_or_model_info
    get = src.get if isinstance(src, dict) else lambda k, d=None: getattr(src, k, d)
    model, family = str(get("model", "") or ""), str(get("family", "") or "")
    return model, family, int(get("n_layers", 0) or 0), int(get("n_heads", 0) or 0)


def is_gpt2_small(result_or_model_info: Any) -> bool:
    """True for GPT-2 small itself: a 12 × 12 ``gpt2``-family model named ``gpt2`` (or an alias, or a
    local folder of that name). Other checkpoints of the same shape (random, fine-tuned) are not
    GPT-2 small, and the paper's head classes say nothing about them."""
    model, family, n_layers, n_heads = _info(result_or_model_info)
    name = re.sub(r"\s*\(.*\)$", "", model.strip()).rstrip("/")  # "gpt2 (synthetic demo data)" -> "gpt2"
    named = name in GPT2_SMALL_NAMES or name.rsplit("/", 1)[-1] in GPT2_SMALL_NAMES
    return named and family in ("gpt2", "") and (n_layers, n_heads) == (12, 12)


def ioi_head_class(result_or_model_info: Any, layer: int, head: int) -> str | None:
    """The IOI paper's class of head ``layer.head`` in GPT-2 small, or ``None`` (also for other models)."""
    if not is_gpt2_small(result_or_model_info):
        return None
    return _HEAD_TO_CLASS.get((int(layer), int(head)))


def known_circuit(result_or_model_info: Any) -> dict[tuple[int, int], str] | None:
    """Every classified head, ``{(layer, head): class}``, when the model is GPT-2 small; else ``None``."""
    if not is_gpt2_small(result_or_model_info):
        return None
    return dict(_HEAD_TO_CLASS)
