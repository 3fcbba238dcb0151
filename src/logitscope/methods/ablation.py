"""Ablation: a component's output replaced, on the clean prompts, by zero, by its mean over the
reference (corrupted) distribution, or by its value on a reference prompt.

- ``zero``: the head's output (or the layer's ``attn_out`` / ``mlp_out``) set to 0 at every position.
  A head's output is counted, as in its direct logit attribution and TransformerLens's ``hook_z``
  after ``fold_value_biases``, without its value bias: the constant every head adds whatever it
  attends to stays in the layer's output bias.
- ``mean``: set to its mean over the counterpart prompts, position by position, per template as the
  IOI paper's knockouts do (prompts without a template are grouped by their number of tokens).
- ``resample``: set to its value on the prompt's counterpart, a draw from the reference
  distribution (for IOI's ABC counterparts, a prompt with three unrelated names): the same as
  noising activation patching of that component.

Components are written ``L9H9`` or ``9.9`` (one head), ``L9`` (every head of layer 9),
``9_attn_out`` / ``9_mlp_out`` (a whole layer's output), or the name of one of the IOI paper's head
classes in GPT-2 small (``name-mover``, ``negative-name-mover``, ``backup-name-mover``,
``s-inhibition``, ``induction``, ``duplicate-token``, ``previous-token``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from logitscope.inputs.circuits import IOI_HEAD_CLASSES
from logitscope.errors import ArgumentError, InputError

ABLATIONS = ("zero", "mean", "resample")
CLASS_NAMES = {name.lower().replace(" ", "-"): name for name in IOI_HEAD_CLASSES}


@dataclass(frozen=True)
class Component:
    point: str  # "z" (one head), "attn_out" or "mlp_out"
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.point == "z" else f"{self.layer}_{self.point}"


_HEAD = re.compile(r"^L(\d+)H(\d+)$|^(\d+)\.(\d+)$")
_LAYER = re.compile(r"^L(\d+)$")
_OUT = re.compile(r"^(\d+)_(attn_out|mlp_out)$")


def parse_components(spec: str | Sequence[str], n_layers: int, n_heads: int) -> list[Component]:
    """The components named in ``spec`` (a comma list or a list of names; see the module docstring)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ArgumentError("ablate", spec, "name at least one component, e.g. L9H9,L9H6")
    out: list[Component] = []
    for item in items:
        if item.lower() in CLASS_NAMES:
            out += [Component("z", layer, head) for layer, head in IOI_HEAD_CLASSES[CLASS_NAMES[item.lower()]]]
            continue
        if m := _HEAD.match(item):
            layer, head = (int(g) for g in (m.groups()[:2] if m.group(1) else m.groups()[2:]))
            out.append(Component("z", layer, head))
        elif m := _LAYER.match(item):
            out += [Component("z", int(m.group(1)), h) for h in range(n_heads)]
        elif m := _OUT.match(item):
            out.append(Component(m.group(2), int(m.group(1))))
        else:
            classes = ", ".join(CLASS_NAMES)
            raise ArgumentError(
                "ablate", spec, f"{item!r} is not a component: write L9H9 or 9.9 (a head), L9 (every head of layer 9), "
                f"9_attn_out or 9_mlp_out (a layer's output), or an IOI head class ({classes})"
            )
    for c in out:
        if not 0 <= c.layer < n_layers or (c.head is not None and not 0 <= c.head < n_heads):
            raise ArgumentError(
                "ablate", spec, f"{c.label} does not exist: this model has layers 0-{n_layers - 1} and heads 0-{n_heads - 1}"
            )
    return list(dict.fromkeys(out))


def group_keys(prompts, lengths: np.ndarray) -> list[tuple]:
    """The group each prompt's mean is taken over: its template (and order) if it has one, else its
    number of tokens."""
    keys = []
    for p, n in zip(prompts, lengths):
        if "template" in p.meta:
            keys.append(("template", str(p.meta["template"]), str(p.meta.get("order", ""))))
        else:
            keys.append(("tokens", int(n)))
    return keys


class GroupMeans:
    """Running sums of activations per group and position, then their means (float64)."""

    def __init__(self, keys: list[tuple], lengths: np.ndarray):
        self.keys = keys
        self.index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        self.group_of = np.array([self.index[k] for k in keys])
        self.lengths = lengths
        for k, g in self.index.items():
            n = set(lengths[self.group_of == g].tolist())
            if len(n) > 1:
                raise InputError(
                    f"mean ablation: prompts of {_key_text(k)} have {min(n)} to {max(n)} tokens, so their positions do "
                    "not align; use --ablation zero or resample"
                )
        self.sums: dict[tuple[str, int], torch.Tensor] = {}
        self.counts = np.bincount(self.group_of, minlength=len(self.index))

    def add(self, key: tuple[str, int], rows: np.ndarray, act: torch.Tensor) -> None:
        """Add ``act`` ``[B, T, ...]`` of the prompts ``rows`` (each up to its own length)."""
        G, T = len(self.index), int(self.lengths.max())
        if key not in self.sums:
            self.sums[key] = torch.zeros((G, T, *act.shape[2:]), dtype=torch.float64, device=act.device)
        s = self.sums[key]
        groups = torch.as_tensor(self.group_of[rows], device=act.device)
        width = act.shape[1]
        s[:, :width].index_add_(0, groups, act.double())

    def record(self, engine: Any, batches: Iterable[Any], points: list[tuple[str, int]],
               step: Callable[[int], None] | None = None, ranks: Any = None) -> None:
        """Sum ``points``' activations over the reference (corrupted) runs of ``batches`` (pair
        batches, :func:`logitscope.methods.patching.run.pair_batches`), before any ablated run; in a
        process group (``ranks``) each rank its own batches, then summed over the ranks."""
        for b in batches:
            run = engine.record(b.corrupted, b.end, b.correct, b.incorrect, acts=points)
            for key in points:
                self.add(key, b.rows, run.acts[key])
            if step is not None:
                step(len(b.rows))
            if ranks is not None:
                ranks.poll()
        if ranks is not None:
            ranks.sum_tensors(self.sums, "the sum of mean ablation's per-template activations")

    def mean(self, key: tuple[str, int], rows: np.ndarray, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The group mean of each prompt in ``rows``, ``[B, width, ...]``."""
        s = self.sums[key]
        counts = torch.as_tensor(self.counts, dtype=torch.float64, device=s.device)
        m = s / counts.view(-1, *([1] * (s.dim() - 1)))
        return m[torch.as_tensor(self.group_of[rows], device=s.device), :width].to(dtype)


def _key_text(key: tuple) -> str:
    if key[0] != "template":
        return f"length {key[1]}"
    return f"template {key[1]} ({key[2]})" if key[2] else f"template {key[1]}"  # IOI's order, where there is one


class AblationRunner:
    """Per-prompt logit differences after ablating each named set (all its components at once) and,
    if asked, each head alone (a ``[layer, head]`` grid), batch by batch on the clean prompts."""

    def __init__(self, engine, kind: str, sets: dict[str, list[Component]], head_grid: bool,
                 means: GroupMeans | None, n_prompts: int, token_budget: int, progress=None):
        from logitscope.methods.patching.grids import replace_fn

        if kind not in ABLATIONS:
            raise ArgumentError("ablation", kind, f"use one of {', '.join(ABLATIONS)}")
        self.engine, self.kind, self.sets, self.means = engine, kind, sets, means
        self.head_grid = head_grid
        self.L, self.H = engine.n_layers, engine.points.n_heads
        self.budget = token_budget
        self.progress = progress or (lambda n: None)
        self._replace = replace_fn
        self.after = {name: np.full(n_prompts, np.nan) for name in sets}
        self.heads = np.full((self.L, self.H, n_prompts), np.nan) if head_grid else None

    def points(self) -> list[tuple[str, int]]:
        """Every ``(point, layer)`` whose replacement value is needed."""
        pts = {(c.point, c.layer) for comps in self.sets.values() for c in comps}
        if self.head_grid:
            pts |= {("z", layer) for layer in range(self.L)}
        return sorted(pts)

    def needs(self) -> dict[str, object]:
        return {"clean_acts": [], "corrupted_acts": self.points() if self.kind == "resample" else [],
                "clean_kv": False, "corrupted_kv": False}

    def replacement(self, key: tuple[str, int], b, clean, corrupted) -> torch.Tensor:
        """What ``key``'s activation becomes, ``[B, T, ...]``."""
        if self.kind == "resample":
            return corrupted.acts[key]
        shape = (clean.batch, clean.length) + self._trailing(key[0])
        if self.kind == "zero":
            zero = torch.zeros(shape, dtype=clean.resid_pre[0].dtype, device=clean.resid_pre[0].device)
            bias = self.engine.value_bias(key[1]) if key[0] == "z" else None
            # A head's output without its value bias, as its attribution counts it (TransformerLens's
            # hook_z after fold_value_biases): zeroing the head leaves that constant in place.
            return zero if bias is None else zero + bias.to(zero.device, zero.dtype)
        return self.means.mean(key, b.rows, clean.length, clean.resid_pre[0].dtype)

    def _trailing(self, point: str) -> tuple[int, ...]:
        p = self.engine.points
        return (p.n_heads, p.d_head) if point == "z" else (self.engine.lm.shape.d_model,)

    def run_batch(self, b, clean, corrupted) -> None:
        eng = self.engine
        for name, comps in self.sets.items():
            hooks = {}
            for point, layer in sorted({(c.point, c.layer) for c in comps}):
                heads = [c.head for c in comps if (c.point, c.layer) == (point, layer) and c.head is not None]
                cells = [(heads, None)] if point == "z" else [(None, None)]
                src = self.replacement((point, layer), b, clean, corrupted)
                hooks[(point, layer)] = self._replace(point, src, cells, 0, clean.batch)
            first = min(layer for _, layer in hooks)
            out = eng.patched(clean, first, groups=1, hooks=hooks, end=b.end, correct=b.correct, incorrect=b.incorrect)
            self.after[name][b.rows] = out.cpu().double().numpy()
            self.progress(clean.batch)
        if self.heads is None:
            return
        for layer in range(self.L):
            src = self.replacement(("z", layer), b, clean, corrupted)
            size = max(1, min(self.H, self.budget // max(1, clean.batch * clean.length)))
            for s in range(0, self.H, size):
                heads = range(s, min(self.H, s + size))
                fn = self._replace("z", src, [(h, None) for h in heads], 0, clean.batch)
                out = eng.patched(clean, layer, groups=len(heads), hooks={("z", layer): fn}, end=b.end,
                                  correct=b.correct, incorrect=b.incorrect)
                self.heads[layer, heads.start : heads.stop][..., b.rows] = out.view(len(heads), -1).cpu().double().numpy()
                self.progress(len(heads) * clean.batch)
