"""The patching grids: TransformerLens's ``get_act_patch_*`` functions, one patched run per cell,
computed many cells at a time.

Each grid is named after the TransformerLens function without ``get_act_patch_``; its cells patch
one activation of the base run with the source run's value (denoising: clean into corrupted;
noising: corrupted into clean):

- ``resid_pre``, ``resid_mid``, ``attn_out``, ``mlp_out``: ``[layer][position]``, the whole vector
  at one position;
- ``attn_head_out_all_pos`` (``z``), ``attn_head_q_all_pos``, ``attn_head_k_all_pos``,
  ``attn_head_v_all_pos`` (``[layer][kv_head]`` for k and v, as TransformerLens), and
  ``attn_head_pattern_all_pos``: ``[layer][head]``, one head at every position;
- ``attn_head_out_by_pos``: ``[layer][position][head]``, one head at one position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from logitscope.errors import ArgumentError


@dataclass(frozen=True)
class GridSpec:
    name: str  # results.json key: TransformerLens's function name without get_act_patch_
    point: str  # hook point patched
    axes: tuple[str, ...]  # "layer", "position", "head" (or "kv_head")

    @property
    def by_position(self) -> bool:
        return "position" in self.axes


GRIDS: dict[str, GridSpec] = {
    spec.name: spec
    for spec in (
        GridSpec("resid_pre", "resid_pre", ("layer", "position")),
        GridSpec("resid_mid", "resid_mid", ("layer", "position")),
        GridSpec("attn_out", "attn_out", ("layer", "position")),
        GridSpec("mlp_out", "mlp_out", ("layer", "position")),
        GridSpec("attn_head_out_all_pos", "z", ("layer", "head")),
        GridSpec("attn_head_q_all_pos", "q", ("layer", "head")),
        GridSpec("attn_head_k_all_pos", "k", ("layer", "kv_head")),
        GridSpec("attn_head_v_all_pos", "v", ("layer", "kv_head")),
        GridSpec("attn_head_pattern_all_pos", "pattern", ("layer", "head")),
        GridSpec("attn_head_out_by_pos", "z", ("layer", "position", "head")),
    )
}

# --what: groups of grids by the question they answer.
WHAT: dict[str, tuple[str, ...]] = {
    "heads": ("attn_head_out_all_pos",),
    "heads_by_pos": ("attn_head_out_by_pos",),
    "resid": ("resid_pre", "resid_mid"),
    "layers": ("attn_out", "mlp_out"),
    "qkv": ("attn_head_q_all_pos", "attn_head_k_all_pos", "attn_head_v_all_pos", "attn_head_pattern_all_pos"),
    "ablation": (),  # the single-head ablation grid (see logitscope.methods.ablation)
}
WHAT["all"] = tuple(GRIDS)


def resolve_what(what: str | list[str] | tuple[str, ...]) -> tuple[list[str], bool]:
    """``(grid names, whether the single-head ablation grid is asked for)`` from ``--what``: a comma
    list of groups (heads, heads_by_pos, resid, layers, qkv, ablation, all) or grid names, or
    ``none`` (only the sets given to ``--ablate``)."""
    items = [w.strip() for w in (what.split(",") if isinstance(what, str) else what) if w.strip()]
    names: list[str] = []
    if items == ["none"]:  # only the ablations asked for with --ablate
        return names, False
    ablation = False
    for item in items:
        if item in WHAT:
            names += WHAT[item]
            ablation |= item in ("ablation", "all")
        elif item in GRIDS:
            names.append(item)
        else:
            raise ArgumentError("what", item, f"use {', '.join(WHAT)}, none, or grid names: {', '.join(GRIDS)}")
    return list(dict.fromkeys(names)), ablation


Cell = tuple["int | list[int] | None", "torch.Tensor | None"]


def replace_fn(point: str, source: torch.Tensor, cells: list[Cell], start: int, batch: int
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A hook (or residual-input edit) that, in group ``g`` of a patched run, replaces the
    activation by ``source`` where ``cells[g] = (head, positions)`` says: ``head`` (one or a list;
    ``None``: the whole vector) at each row's ``positions[b]`` (``None``: every position). Activations arrive for
    positions ``start:`` only; ``source`` covers every position (``[B, T, ...]``, or ``[B, H, T, T]``
    for the pattern)."""
    B = batch
    rows = torch.arange(B, device=source.device)

    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        for g, (head, pos) in enumerate(cells):
            block = slice(g * B, (g + 1) * B)
            if point == "pattern":  # [B, H, query, key]; only whole heads here
                out[block, head] = source[:, head, start:].to(out.dtype)
            elif pos is None:
                if head is None:
                    out[block] = source[:, start:].to(out.dtype)
                else:
                    out[block, :, head] = source[:, start:, head].to(out.dtype)
            else:
                at = pos.to(source.device)
                if head is None:
                    out[g * B + rows, at - start] = source[rows, at].to(out.dtype)
                else:
                    out[g * B + rows, at - start, head] = source[rows, at, head].to(out.dtype)
        return out

    return fn
