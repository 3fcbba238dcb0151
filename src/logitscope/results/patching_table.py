"""``patching_per_prompt.csv``: a patch run's per-pair numbers as one table (``patch --csv``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from logitscope.labels import head_label


def per_pair_columns(result: Any) -> tuple[list[str], np.ndarray]:
    """Every per-pair number of ``result`` (a :class:`~logitscope.api.patching.PatchingResult`) as named
    columns, ``(names, [n_pairs, n_columns])``: ``clean_<metric>``, ``corrupted_<metric>`` (the
    patching metric's key: ``logit_diff``, or ``logit_diff_softcapped`` on soft-capped models), then
    each grid cell's patched logit difference as ``<grid>:<cell>`` (``attn_head_out_all_pos:L9H6``,
    ``resid_pre:L3 @ S2``), each ablated set's logit difference as ``ablated:<set>`` and each head
    ablated alone as ``ablated_head:L9H6``. Path patching's and the circuit's per-pair values are in
    ``patching_per_prompt.npz``, not here."""
    n = result.n_prompts
    names = [f"clean_{result.metric}", f"corrupted_{result.metric}"]
    blocks = [np.asarray(result.clean_logit_diff)[None], np.asarray(result.corrupted_logit_diff)[None]]
    for grid, values in result.grids.items():
        cells = values.reshape(-1, n)
        names += [f"{grid}:{result.cell_label(grid, k)}" for k in range(cells.shape[0])]
        blocks.append(cells)
    for name, values in result.ablated.items():
        names.append(f"ablated:{name}")
        blocks.append(np.asarray(values)[None])
    if result.ablated_heads is not None:
        L, H = result.ablated_heads.shape[:2]
        names += [f"ablated_head:{head_label(layer, head)}" for layer in range(L) for head in range(H)]
        blocks.append(result.ablated_heads.reshape(L * H, n))
    return names, np.ascontiguousarray(np.concatenate(blocks).T, dtype=np.float64)


def write_patching_csv(result: Any, path: str | Path) -> Path:
    """One row per pair (UTF-8, a header row): its index in results.json's ``prompts``, the prompt,
    its counterpart, both answers, then :func:`per_pair_columns` at full precision."""
    names, values = per_pair_columns(result)
    head = ["index", "prompt", "corrupted", "correct", "incorrect"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(head + names)
        for i, (p, corrupted, row) in enumerate(zip(result.study.prompts, result.corrupted_prompts, values.tolist())):
            w.writerow([i, p.text, corrupted, p.correct, p.incorrect] + row)
    return Path(path)
