"""Attribution patching: a first-order estimate of every patching grid from one gradient.

Exact patching runs the model once per cell. Attribution patching (Nanda 2023, "Attribution
patching"; Kramár et al. 2024, AtP) estimates every cell at once from the base run's gradient:
with ``m`` the clean answers' logit difference at each prompt's last token and ``a`` a patched
activation,

    patched  ≈  m(base) + (a_source − a_base) · ∂m/∂a |_base

summed over the components the cell replaces (a head's ``d_head`` values at every position, one
position's ``d_model`` vector, ...). Denoising: base = corrupted run, source = clean run; noising
the mirror image. Cost per batch: the source run's activations (an unpatched forward pass), one
forward pass of the base run with gradients and one backward pass, whatever the number of cells.

The estimate is exact where the metric is linear in the activation (for instance the last layer's
heads and MLP with the final norm's scale held fixed) and can be badly wrong where it is not: a
saturated softmax (attention patterns, the queries and keys feeding them) flattens the gradient
while a whole patch moves the pattern far. The report shows the error against exact patching.

Gradients are taken on the model as it is, with respect to the activations only: each observed
activation ``x`` is passed on as ``x + δ`` with ``δ`` a zero tensor that requires grad, and
``torch.autograd.grad`` differentiates with respect to the ``δ``; the model's parameters, their
``requires_grad`` flags and ``.grad`` are never touched. ``q`` and ``k`` are estimated at
TransformerLens's ``hook_q`` / ``hook_k``. In rotary families without q/k norms they are observed
after the rotary embedding (:mod:`logitscope.models.hooks`); a position's rotation ``R`` is orthogonal and
fixed, so ``(R q_s − R q_b) · ∂m/∂(R q) = (q_s − q_b) · ∂m/∂q``: the estimate is the same as before
it. In families with q/k norms (Qwen3, Gemma 3, OLMo-2) they are observed at the projections'
outputs, before the norm: the norm is not linear, so an estimate taken after it would differ (on
tiny random Qwen3 weights, by more than half the effect).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from logitscope.engine.core import Engine, Run
from logitscope.methods.patching.grids import GRIDS, GridSpec
from logitscope.inputs.positions import PositionAxis
from logitscope.methods.patching.run import PairBatch, grid_shape
from logitscope.results.names import SUFFIX, attribution_name  # noqa: F401 (SUFFIX: the methods' name, imported from here)

METHODS = ("exact", "attribution", "both")


# Attribution's gradient run is the engine's gradient mode (the name kept for callers and tests).
gradient_run = Engine.gradient


class AttributionRunner:
    """Fills each grid's per-prompt attribution estimate (``<grid>_attribution``), batch by batch."""

    def __init__(self, engine: Engine, grids: list[str], direction: str, axis: PositionAxis | None,
                 n_prompts: int, progress: Callable[[int], None] | None = None):
        self.engine, self.direction, self.axis = engine, direction, axis
        self.specs = [GRIDS[g] for g in grids]
        p = engine.points
        self.L = engine.n_layers
        n_pos = len(axis) if axis is not None else 0
        self.values = {attribution_name(s.name): np.full(grid_shape(s, self.L, p.n_heads, p.n_kv_heads, n_pos)
                                                         + (n_prompts,), np.nan) for s in self.specs}
        self.clean = np.full(n_prompts, np.nan)
        self.corrupted = np.full(n_prompts, np.nan)
        self.progress = progress or (lambda n: None)

    @property
    def base_side(self) -> str:
        """The run whose gradient is taken: the corrupted one when denoising, the clean one when noising."""
        return "corrupted" if self.direction == "denoise" else "clean"

    def points(self) -> list[tuple[str, int]]:
        return sorted({(s.point, layer) for s in self.specs for layer in range(self.L)})

    def needs(self) -> dict[str, object]:
        """What the unpatched source run must keep (the base run is this runner's own)."""
        acts = [k for k in self.points() if k[0] != "resid_pre"]  # a Run keeps every block's resid_pre
        denoise = self.direction == "denoise"
        return {"clean_acts": acts if denoise else [], "corrupted_acts": [] if denoise else acts,
                "clean_kv": False, "corrupted_kv": False}

    def run_batch(self, b: PairBatch, clean: Run | None, corrupted: Run | None) -> None:
        """``clean`` / ``corrupted``: the batch's unpatched runs (the source run is needed; the base
        run is not: its gradient run is done here)."""
        denoise = self.direction == "denoise"
        source = clean if denoise else corrupted
        base_ids = b.corrupted if denoise else b.clean
        ref = clean.reference if clean is not None else None  # kl: the clean run's logits
        base_diff, acts, grads = self.engine.gradient(base_ids, b.end, b.correct, b.incorrect, self.points(), ref)
        base_np = base_diff.cpu().double().numpy()
        source_np = source.value.cpu().double().numpy()
        self.clean[b.rows], self.corrupted[b.rows] = (source_np, base_np) if denoise else (base_np, source_np)
        with torch.inference_mode():
            for spec in self.specs:
                grid = self.values[attribution_name(spec.name)]
                for layer in range(self.L):
                    key = (spec.point, layer)
                    src = source.resid_pre[layer] if spec.point == "resid_pre" else source.acts[key]
                    change = _first_order(src, acts[key], grads[key])
                    grid[layer][..., b.rows] = self._cells(spec, change, b, base_diff)
        self.progress(len(b.rows))

    def _cells(self, spec: GridSpec, change: torch.Tensor, b: PairBatch, base: torch.Tensor) -> np.ndarray:
        """One layer's cells ``[*cell axes, B]``: the base run's logit difference plus the
        per-component first-order change, added in the model's precision (as exact patched values
        are, so results files hold them without loss)."""
        rows = torch.arange(change.shape[0], device=change.device)
        if spec.point == "pattern":  # [B, H, query, key]: a head's whole pattern
            out = change.sum((2, 3)).T
        elif not spec.by_position:  # z / q / k / v of a head at every position: [B, T, heads, d_head]
            out = change.sum((1, 3)).T
        else:
            per_pos = change.sum(-1)  # [B, T] (a whole vector) or [B, T, H] (a head's z)
            at = b.at.to(change.device)  # [n_positions, B]
            out = torch.stack([per_pos[rows, at[k]] for k in range(at.shape[0])])  # [n_positions, B(, H)]
            if out.dim() == 3:
                out = out.permute(0, 2, 1)  # [n_positions, H, B]
        return (out + base.to(out.device, out.dtype)).cpu().double().numpy()


def _first_order(source: torch.Tensor, base: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``(source − base) * grad`` per component, in float32 (float64 for a float64 model)."""
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return (source.to(grad.device, dtype) - base.to(dtype)) * grad.to(dtype)
