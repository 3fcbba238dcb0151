"""Path patching: the effect of a sender (a head, or a set of heads) through one path only.

As the IOI paper defines it (Wang et al. 2022, App. B; ARENA 1.4.1's
``get_path_patch_head_to_final_resid_post`` and ``get_path_patch_head_to_heads``), with a *base*
run and a *source* run of each pair (``noise``, the paper's setting: base = the clean prompt,
source = its counterpart; ``denoise``: the other way round):

- **sender → logits**: the base run with the sender's ``z`` (at every position) taken from the
  source run and every other head's ``z`` frozen at its base value. The result is that run's
  logit difference.
- **sender → receivers' q, k or v**: (1) that same run, reading the receivers' ``q`` / ``k`` / ``v``;
  (2) the base run again with only the receivers' ``q`` / ``k`` / ``v`` replaced by what (1) read,
  nothing frozen: the sender's effect reaches the logits through the receivers' input alone. A
  sender with no head below a receiver's layer has no path to it (``NaN``).

``freeze`` says what "every other" is, on the way from the senders to the receivers:

- ``heads`` (default; the paper and ARENA): every head that is not a sender is frozen; the MLPs are
  recomputed, so paths through the MLPs after the sender count; to the logits, the final norm is
  recomputed too.
- ``all``: direct paths only. Every other head and every MLP output is frozen at its base value,
  and to the logits the final norm's scale is frozen at the base run's as well (LayerNorm still
  centres), so the change in the logit difference is linear in the sender's output: exactly the
  change of the sender's direct logit attribution, (z_source − z_base) · W_O · D / σ_base, with
  σ_base the base run's final-norm scale at the prompt's last token.

In both, a norm on the attention output before the residual add (Gemma 2/3, OLMo-2) is recomputed
as part of the sender's layer. Grouped-query models share keys and values between heads: a
receiver's ``k`` / ``v`` is its key/value head's (TransformerLens's ``hook_k`` / ``hook_v``), so
every head of its group receives the patch.

Senders are written as :func:`logitscope.methods.ablation.parse_components` writes heads, one per
comma item, ``+`` joining a set (``L9H9,L9H6+L10H0,name-mover``; ``L9`` is layer 9's heads as one
set; ``all`` is every head, one at a time). Receivers are ``logits`` or ``HEADS:q|k|v``
(``L9H9:q,name-mover:q``), a set patched together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from logitscope.errors import ArgumentError
from logitscope.methods.ablation import parse_components
from logitscope.models.modules import Modules
from logitscope.results.paths import PathPatchingResult

FREEZE = ("heads", "all")
INPUTS = ("q", "k", "v")


@dataclass(frozen=True)
class Sender:
    label: str
    heads: tuple[tuple[int, int], ...]

    @property
    def first_layer(self) -> int:
        return min(l for l, _ in self.heads)


@dataclass(frozen=True)
class Receiver:
    label: str
    point: str  # "logits", "q", "k" or "v"
    heads: tuple[tuple[int, int], ...] = ()

    @property
    def layers(self) -> list[int]:
        return sorted({l for l, _ in self.heads})


def _heads(spec: str, argument: str, whole: str, n_layers: int, n_heads: int,
           expand_layers: bool = True) -> tuple[tuple[int, int], ...]:
    parts = [p for p in spec.split("+") if expand_layers or not re.fullmatch(r"\s*L\d+\s*", p)]
    if not parts:
        return ((0, 0),)  # a syntax check of layers alone
    try:
        comps = parse_components(parts, n_layers, n_heads)
    except ArgumentError as e:
        raise ArgumentError(argument, whole, e.problem) from None
    if any(c.point != "z" for c in comps):
        raise ArgumentError(argument, whole, f"{spec!r}: path patching takes heads (L9H9, 9.9, L9, an IOI class), "
                            "not a layer's attn_out or mlp_out")
    return tuple((c.layer, c.head) for c in comps)


def parse_senders(spec: str | Sequence[str], n_layers: int, n_heads: int, *, whole: str | None = None,
                  expand_layers: bool = True) -> list[Sender]:
    """Senders from ``spec``: ``all`` (every head alone) or comma items, each a head or a ``+`` set."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ArgumentError("senders", spec, "name at least one sender, e.g. L9H9,L9H6 or all")
    if [i.lower() for i in items] == ["all"]:
        return [Sender(f"L{l}H{h}", ((l, h),)) for l in range(n_layers) for h in range(n_heads)]
    whole = whole or (spec if isinstance(spec, str) else ",".join(items))
    out = [Sender(item, _heads(item, "senders", whole, n_layers, n_heads, expand_layers)) for item in items]
    return list({s.label: s for s in out}.values())


def parse_receivers(spec: str | Sequence[str], n_layers: int, n_heads: int, *, whole: str | None = None,
                    expand_layers: bool = True) -> list[Receiver]:
    """Receivers from ``spec``: comma items, ``logits`` or ``HEADS:q|k|v``."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ArgumentError("receivers", spec, "name at least one receiver: logits, or heads with an input such as L9H9:q")
    whole = whole or (spec if isinstance(spec, str) else ",".join(items))
    out = []
    for item in items:
        if item.lower() == "logits":
            out.append(Receiver("logits", "logits"))
            continue
        heads, colon, point = item.rpartition(":")
        if not colon or point.lower() not in INPUTS or not heads:
            raise ArgumentError("receivers", whole, f"{item!r}: write logits, or heads and their input, e.g. L9H9:q, "
                                "L9H9+L9H6:k, name-mover:q (inputs q, k, v)")
        out.append(Receiver(f"{heads} {point.lower()}", point.lower(),
                            _heads(heads, "receivers", whole, n_layers, n_heads, expand_layers)))
    return list({r.label: r for r in out}.values())


def check_paths(senders: Any, receivers: Any, freeze: str) -> None:
    """The spelling of path-patching options, before a model is loaded."""
    if freeze not in FREEZE:
        raise ArgumentError("freeze", freeze, "use heads (the IOI paper: other heads frozen, MLPs recomputed) or all "
                            "(direct paths only)")
    if senders is None:
        return
    # Sizes are checked once the model is loaded; here a layer's heads (L9) are not expanded.
    for argument, spec in (("senders", senders), ("receivers", receivers)):
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        if argument == "senders" and [i.lower() for i in items] == ["all"]:
            continue
        whole = spec if isinstance(spec, str) else ",".join(items)
        parse = parse_senders if argument == "senders" else parse_receivers
        parse(items, 10**6, 10**6, whole=whole, expand_layers=False)


# ---------------------------------------------------------------------------------------------- runs
def _freeze_z(base_z: torch.Tensor, source_z: torch.Tensor | None, heads_by_group: list[list[int]], start: int,
              B: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """z of one layer: the base run's everywhere, but the source run's for group g's sender heads."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        G = act.shape[0] // B
        out = base_z[:, start:].to(act.dtype).repeat(G, 1, 1, 1)
        for g, heads in enumerate(heads_by_group):
            if heads:
                out[g * B : (g + 1) * B, :, heads] = source_z[:, start:, heads].to(act.dtype)
        return out

    return fn


def _frozen(base: torch.Tensor, start: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(act: torch.Tensor) -> torch.Tensor:
        G = act.shape[0] // base.shape[0]
        return base[:, start:].to(act.dtype).repeat(G, *([1] * (base.dim() - 1)))

    return fn


def _keep(store: dict, key: Any) -> Callable[[torch.Tensor], None]:
    def fn(act: torch.Tensor) -> None:
        store[key] = act.clone()

    return fn


def _put(captured: torch.Tensor, index: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        out[:, :, index] = captured[:, :, index].to(act.dtype)
        return out

    return fn


class FrozenScaleReadout:
    """The clean answers' logit difference of final residuals ``x`` through the model's final norm
    with the scale of base residuals ``x0`` (at each prompt's last token): ``norm(x0) + γ ⊙ c(x −
    x0) / σ(x0)``, ``c`` the centring of LayerNorm (none for RMSNorm), then the unembedding rows,
    bias and soft-cap as :meth:`Engine.logit_diff` applies them (the engine's metric of those normed
    vectors: :meth:`Engine.measure_normed`). Equal to it where ``x = x0``."""

    def __init__(self, engine):
        m = Modules.of(engine.lm)
        gamma, _ = m.final_norm_weight_bias()
        self.engine = engine
        self.gamma = gamma.detach().float()
        self.eps = m.final_norm_eps()
        self.centre = m.centre

    @torch.inference_mode()
    def __call__(self, x0: torch.Tensor, x: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor,
                 reference: torch.Tensor | None = None) -> torch.Tensor:
        eng = self.engine
        dev = eng.W_U.device
        x0, x = x0.to(dev), x.to(dev)
        delta, c0 = (x.float() - x0.float()), x0.float()
        if self.centre:
            delta, c0 = delta - delta.mean(-1, keepdim=True), c0 - c0.mean(-1, keepdim=True)
        sigma = torch.sqrt((c0 * c0).mean(-1, keepdim=True) + self.eps)
        normed = eng.final_norm(x0).float() + delta / sigma * self.gamma.to(dev)
        return eng.measure_normed(normed, correct, incorrect, reference)


class PathRunner:
    """Per-prompt patched logit differences ``[sender, receiver, prompt]``, batch by batch."""

    def __init__(self, engine, senders: list[Sender], receivers: list[Receiver], direction: str, freeze: str,
                 n_prompts: int, token_budget: int, progress: Callable[[int], None] | None = None):
        if freeze not in FREEZE:
            raise ArgumentError("freeze", freeze, "use heads or all")
        self.engine, self.senders, self.receivers = engine, senders, receivers
        self.direction, self.freeze = direction, freeze
        self.L = engine.n_layers
        self.budget = token_budget
        self.progress = progress or (lambda n: None)
        self.values = np.full((len(senders), len(receivers), n_prompts), np.nan)
        self.base = np.full(n_prompts, np.nan)
        self.clean = np.full(n_prompts, np.nan)
        self.corrupted = np.full(n_prompts, np.nan)
        self.readout = FrozenScaleReadout(engine) if freeze == "all" else None
        self.group = engine.points.n_heads // engine.points.n_kv_heads

    @property
    def n_runs(self) -> int:
        """Patched runs per prompt (for a progress bar)."""
        inputs = [r for r in self.receivers if r.point != "logits"]
        return len(self.senders) * (1 + len(inputs))

    def acts(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """What the base and source runs must keep: ``(base acts, source acts)``."""
        layers = range(self.L)
        base = [("z", l) for l in layers]
        if self.freeze == "all":
            base += [("mlp_out", l) for l in layers] + [("resid_post", self.L - 1)]
        source = sorted({("z", l) for s in self.senders for l, _ in s.heads})
        return base, source

    def run_batch(self, b, clean, corrupted) -> None:
        """Fill the batch's prompts ``b.rows`` from its clean and corrupted runs (``Engine.record``
        with :meth:`acts`; the base run with its keys and values for runs on a suffix)."""
        self.clean[b.rows] = clean.value.cpu().double().numpy()
        self.corrupted[b.rows] = corrupted.value.cpu().double().numpy()
        base, source = (corrupted, clean) if self.direction == "denoise" else (clean, corrupted)
        self.base[b.rows] = base.value.cpu().double().numpy()
        B = base.batch
        # Before the pair's first differing token both runs are the same, so is every frozen and
        # patched value: only the positions from there on are run (exact).
        start = b.same_until if base.suffix_ok else 0
        size = max(1, self.budget // max(1, B * (base.length - start)))
        order = sorted(range(len(self.senders)), key=lambda i: self.senders[i].first_layer)
        for c in range(0, len(order), size):
            self._chunk(order[c : c + size], b, base, source, start)

    def _chunk(self, idx: list[int], b, base, source, start: int) -> None:
        eng, B, L = self.engine, base.batch, self.L
        senders = [self.senders[i] for i in idx]
        G = len(senders)
        first = min(s.first_layer for s in senders)
        hooks: dict[tuple[str, int], Callable] = {}
        for layer in range(first, L):
            by_group = [[h for l, h in s.heads if l == layer] for s in senders]
            src = source.acts[("z", layer)] if any(by_group) else None
            hooks[("z", layer)] = _freeze_z(base.acts[("z", layer)], src, by_group, start, B)
            if self.freeze == "all":
                hooks[("mlp_out", layer)] = _frozen(base.acts[("mlp_out", layer)], start)
        captured: dict[tuple[str, int], torch.Tensor] = {}
        for r in self.receivers:
            for layer in r.layers:
                if layer > first:
                    hooks.setdefault((r.point, layer), _keep(captured, (r.point, layer)))
        final: dict[str, torch.Tensor] = {}
        rows = torch.arange(G * B)
        at = (b.end.cpu() - start).repeat(G)
        if self.readout is not None:
            hooks[("resid_post", L - 1)] = lambda x: final.__setitem__("x", x[rows.to(x.device), at.to(x.device)])
        to_logits = eng.patched(base, first, groups=G, hooks=hooks, end=b.end, correct=b.correct,
                                incorrect=b.incorrect, start=start)
        self.progress(G * B)
        if self.readout is not None:
            x0 = base.acts[("resid_post", L - 1)][torch.arange(B), b.end.to(base.acts[("resid_post", L - 1)].device)]
            rep = lambda t: None if t is None else t.repeat(G, *([1] * (t.dim() - 1)))  # noqa: E731
            to_logits = self.readout(x0.repeat(G, 1), final["x"], rep(b.correct), rep(b.incorrect), rep(base.reference))
        to_logits = to_logits.view(G, B).cpu().double().numpy()
        for j, r in enumerate(self.receivers):
            if r.point == "logits":
                for g in range(G):
                    self.values[idx[g], j, b.rows] = to_logits[g]
                continue
            reach = [g for g, s in enumerate(senders) if s.first_layer < max(r.layers)]
            if not reach:
                continue
            put = {}
            for layer in r.layers:
                if (r.point, layer) not in captured:
                    continue  # below every sender of the chunk: no sender reaches it
                index = sorted({h if r.point == "q" else h // self.group for l, h in r.heads if l == layer})
                put[(r.point, layer)] = _put(captured[(r.point, layer)], index)
            out = eng.patched(base, min(l for _, l in put), groups=G, hooks=put, end=b.end, correct=b.correct,
                              incorrect=b.incorrect, start=start)
            self.progress(G * B)
            out = out.view(G, B).cpu().double().numpy()
            for g in reach:
                self.values[idx[g], j, b.rows] = out[g]


def run_paths(lm, pairs, senders: list[Sender], receivers: list[Receiver], *, direction: str, freeze: str,
              batch_size: int, seed: int, progress=None, metric=None) -> "PathPatchingResult":
    """Path patching of every sender to every receiver over the pairs, batch by batch, measuring
    ``metric`` (:mod:`logitscope.engine.metrics`; the logit difference by default)."""
    from logitscope.engine.patched import Engine
    from logitscope.inputs.positions import PositionAxis
    from logitscope.methods.patching.run import pair_batches

    engine = Engine(lm, metric)
    T = int(pairs.lengths.max())
    runner = PathRunner(engine, senders, receivers, direction, freeze, pairs.n, 4 * batch_size * T, progress)
    base_acts, source_acts = runner.acts()
    axis = PositionAxis("end", ["END"], (pairs.lengths - 1)[None].copy())
    denoise = direction == "denoise"
    for b in pair_batches(pairs, axis, batch_size, engine.in_device):
        clean = engine.record(b.clean, b.end, b.correct, b.incorrect, acts=source_acts if denoise else base_acts,
                              keep_kv=not denoise)
        corrupted = engine.record(b.corrupted, b.end, b.correct, b.incorrect, acts=base_acts if denoise else source_acts,
                                  keep_kv=denoise, reference=clean)
        runner.run_batch(b, clean, corrupted)
    notes = []
    if engine.points.n_kv_heads < engine.points.n_heads and any(r.point in ("k", "v") for r in receivers):
        notes.append(f"{engine.points.n_kv_heads} key/value heads for {engine.points.n_heads} query heads: a receiver's k "
                     "or v is its key/value head's, shared by its group")
    return PathPatchingResult(
        direction=direction, freeze=freeze, senders=tuple(s.label for s in senders),
        sender_heads=tuple(tuple(f"L{l}H{h}" for l, h in s.heads) for s in senders),
        receivers=tuple(r.label for r in receivers), values=runner.values, base_logit_diff=runner.base,
        clean_logit_diff=runner.clean, corrupted_logit_diff=runner.corrupted, notes=tuple(notes), seed=seed,
        metric=engine.metric.key,
    )


