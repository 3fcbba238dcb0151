"""Activation patching over a prompt set: batches of pairs, grids of patched runs, per-prompt results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from logitscope.engine.patched import Engine, Run
from logitscope.methods.patching.grids import GRIDS, GridSpec, replace_fn
from logitscope.inputs.pairs import EncodedPairs
from logitscope.inputs.positions import PositionAxis

DIRECTIONS = ("denoise", "noise")


@dataclass
class PairBatch:
    rows: np.ndarray  # indices of the batch's pairs in the prompt set
    clean: torch.Tensor  # [B, T] right-padded
    corrupted: torch.Tensor
    end: torch.Tensor  # [B]
    correct: torch.Tensor
    incorrect: torch.Tensor
    at: torch.Tensor  # [n_positions, B]: the position axis for these pairs
    same_until: int  # every pair's two prompts have the same tokens before this position


def pair_batches(pairs: EncodedPairs, axis: PositionAxis, batch_size: int, device: torch.device,
                 select: Callable[[int], bool] | None = None) -> Iterator[PairBatch]:
    """Pairs in batches of ``batch_size``, sorted by length so batches carry little padding; with
    ``select``, only the batches ``i`` (counted over all of them) that ``select(i)`` keeps."""
    order = np.argsort(pairs.lengths, kind="stable")
    for i, s in enumerate(range(0, len(order), batch_size)):
        if select is not None and not select(i):
            continue
        rows = order[s : s + batch_size]
        T = int(pairs.lengths[rows].max())
        clean = np.zeros((len(rows), T), dtype=np.int64)  # pads: a valid id, never attended by real tokens
        corrupted = np.zeros_like(clean)
        for j, r in enumerate(rows):
            clean[j, : pairs.lengths[r]] = pairs.clean[r]
            corrupted[j, : pairs.lengths[r]] = pairs.corrupted[r]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        end = pairs.lengths[rows] - 1
        differ = clean != corrupted
        first = np.where(differ.any(1), differ.argmax(1), end)  # a pair of equal prompts: only END counts
        yield PairBatch(rows, t(clean), t(corrupted), t(end), t(pairs.correct[rows]), t(pairs.incorrect[rows]),
                        t(axis.at[:, rows]), int(min(first.min(), end.min())))


def grid_shape(spec: GridSpec, n_layers: int, n_heads: int, n_kv_heads: int, n_positions: int) -> tuple[int, ...]:
    size = {"layer": n_layers, "head": n_heads, "kv_head": n_kv_heads, "position": n_positions}
    return tuple(size[a] for a in spec.axes)


class GridRunner:
    """Fills each grid's per-prompt patched logit differences, batch by batch."""

    def __init__(self, engine: Engine, grids: list[str], direction: str, axis: PositionAxis, n_prompts: int,
                 token_budget: int, progress: Callable[[int], None] | None = None):
        self.engine, self.direction, self.axis = engine, direction, axis
        self.specs = [GRIDS[g] for g in grids]
        p = engine.points
        self.n_heads, self.n_kv = p.n_heads, p.n_kv_heads
        self.L = engine.n_layers
        self.budget = token_budget
        self.progress = progress or (lambda n: None)
        self.values = {
            s.name: np.full(grid_shape(s, self.L, self.n_heads, self.n_kv, len(axis) if axis is not None else 0) + (n_prompts,), np.nan)
            for s in self.specs
        }
        self.clean = np.full(n_prompts, np.nan)
        self.corrupted = np.full(n_prompts, np.nan)

    @property
    def n_cells(self) -> int:
        return sum(int(np.prod(v.shape[:-1])) for v in self.values.values())

    def needs(self) -> dict[str, object]:
        """What the clean and corrupted runs must keep for these grids (keys and values, for runs
        on a suffix of the positions, from the run that is patched)."""
        acts = sorted({(s.point, layer) for s in self.specs if s.point != "resid_pre" for layer in range(self.L)})
        # The patched run's own z: where heads' z are replaced, the patched layer's attention is not
        # recomputed (Engine.patched), its output projection takes this z with the heads replaced.
        own = sorted({("z", layer) for s in self.specs if s.point == "z" for layer in range(self.L)})
        denoise = self.direction == "denoise"
        return {"clean_acts": acts if denoise else own, "corrupted_acts": own if denoise else acts,
                "clean_kv": bool(self.specs) and not denoise, "corrupted_kv": bool(self.specs) and denoise}

    def run_batch(self, b: PairBatch, clean: Run, corrupted: Run) -> None:
        self.clean[b.rows] = clean.value.cpu().double().numpy()
        self.corrupted[b.rows] = corrupted.value.cpu().double().numpy()
        base, source = (corrupted, clean) if self.direction == "denoise" else (clean, corrupted)
        for spec in self.specs:
            for layer in range(self.L):
                if spec.by_position:
                    self._positions(spec, layer, base, source, b)
                else:
                    self._heads(spec, layer, base, source, b)

    def _source(self, spec: GridSpec, layer: int, source: Run) -> torch.Tensor:
        return source.resid_pre[layer] if spec.point == "resid_pre" else source.acts[(spec.point, layer)]

    def _patched(self, spec: GridSpec, layer: int, base: Run, b: PairBatch, cells, start: int, src: torch.Tensor):
        fn = replace_fn(spec.point, src, cells, start, base.batch)
        kw = {"edit_input": fn, "hooks": {}} if spec.point == "resid_pre" else {"hooks": {(spec.point, layer): fn}}
        out = self.engine.patched(base, layer, groups=len(cells), end=b.end, correct=b.correct,
                                  incorrect=b.incorrect, start=start, **kw)
        self.progress(len(cells) * base.batch)
        return out.view(len(cells), base.batch).cpu().double().numpy()

    def _groups(self, n: int, tokens_per_group: int) -> Iterator[range]:
        size = max(1, min(n, self.budget // max(1, tokens_per_group)))
        for s in range(0, n, size):
            yield range(s, min(n, s + size))

    def _heads(self, spec: GridSpec, layer: int, base: Run, source: Run, b: PairBatch) -> None:
        n = self.n_kv if spec.axes[1] == "kv_head" else self.n_heads
        src = self._source(spec, layer, source)
        # Before the pair's first differing token both runs are the same, so is what is patched in:
        # only the positions from there on are run (exact; the skipped positions equal the base run's).
        start = b.same_until if base.suffix_ok else 0
        for heads in self._groups(n, base.batch * (base.length - start)):
            out = self._patched(spec, layer, base, b, [(h, None) for h in heads], start, src)
            self.values[spec.name][layer, heads.start : heads.stop][..., b.rows] = out

    def _start(self, base: Run, at: torch.Tensor) -> int:
        return int(at.min()) if base.suffix_ok else 0

    def _positions(self, spec: GridSpec, layer: int, base: Run, source: Run, b: PairBatch) -> None:
        src = self._source(spec, layer, source)
        starts = [self._start(base, b.at[k]) for k in range(len(self.axis))]
        grid = self.values[spec.name]
        if spec.axes[-1] == "head":  # one run per position, heads in groups
            for k, start in enumerate(starts):
                for heads in self._groups(self.n_heads, base.batch * (base.length - start)):
                    out = self._patched(spec, layer, base, b, [(h, b.at[k]) for h in heads], start, src)
                    grid[layer, k, heads.start : heads.stop][..., b.rows] = out
            return
        for pack in _packs(starts, base.length, base.batch, self.budget):
            start = min(starts[k] for k in pack)
            out = self._patched(spec, layer, base, b, [(None, b.at[k]) for k in pack], start, src)
            for g, k in enumerate(pack):
                grid[layer, k][b.rows] = out[g]


def _packs(starts: list[int], length: int, batch: int, budget: int, slack: float = 1.3) -> list[list[int]]:
    """Group positions into runs that share a start: each run costs ``len(pack) * (length - start)``
    positions per row, kept within ``slack`` times what separate runs would cost and within the
    token budget."""
    order = sorted(range(len(starts)), key=lambda k: starts[k])
    packs: list[list[int]] = []
    for k in order:
        if packs:
            pack = packs[-1] + [k]
            s0 = starts[pack[0]]
            cost = len(pack) * (length - s0)
            ideal = sum(length - starts[j] for j in pack)
            if cost <= slack * ideal and cost * batch <= budget:
                packs[-1] = pack
                continue
        packs.append([k])
    return packs
