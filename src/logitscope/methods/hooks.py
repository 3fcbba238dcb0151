"""The escape hatch: activations under TransformerLens's hook names, and any function at any hook point.

- :func:`activations` reads activations as ``HookedTransformer.run_with_cache`` caches them (same
  names, same layouts; :mod:`logitscope.models.names` lists the names a model supports), batch by
  batch. By default it keeps only each prompt's answer position (its last token), so what it
  returns grows with the number of prompts, not with their length; ``positions="all"`` keeps every
  position, right-padded, under a memory bound the caller can raise.
- :func:`intervene` runs the prompts with functions at hook points, as ``run_with_hooks``'s
  ``fwd_hooks`` do, and returns a metric per prompt with and without the hooks, with means and 95%
  bootstrap intervals (:mod:`logitscope.stats`).

Both run the model through the engine's hook points (:class:`~logitscope.models.hooks.HookPoints`,
the same ones every patching method uses), one forward pass per batch, in eval mode; the model is
left as it was, hooks removed, even when a function raises.

Prompts are a list of :class:`~logitscope.inputs.prompt.Prompt` (encoded with the study's checks:
single-token answers, the model's context), a list of plain strings (no answers: activations, or
``intervene`` with a metric of your own), or an :class:`~logitscope.inputs.encode.Encoded` set
(already encoded; then ``prepend_bos`` is not given). Prompts keep their order in every output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch

from logitscope import stats
from logitscope.engine.core import Engine
from logitscope.engine.setup import auto_batch_size
from logitscope.errors import ArgumentError, InputError
from logitscope.inputs.encode import Encoded, encode_prompts, tokenize
from logitscope.inputs.prompt import Prompt
from logitscope.models.hooks import Hook
from logitscope.models.load import LoadedModel
from logitscope.models.names import HookName, parse_hook_name

__all__ = ["Activations", "Batch", "HookContext", "Intervention", "activations", "encode", "intervene"]

POSITIONS = ("answer", "all")
MAX_BYTES = 2**30  # what activations(positions=...) may return before it refuses: 1 GiB

Prompts = Union[Sequence[Prompt], Sequence[str], Encoded]


@dataclass(frozen=True)
class Batch:
    """One batch of prompts, as hook functions and metrics see it (tensors on the model's device)."""

    rows: np.ndarray  # [B]: each row's index in the prompt set
    ids: torch.Tensor  # [B, T]: token ids, right-padded with 0 (pads never reach a real position)
    lengths: torch.Tensor  # [B]: tokens of each prompt (BOS included)
    correct: torch.Tensor | None  # [B]: the correct answer's token id (None for plain strings); [B, K] for answer sets, -1 pads
    incorrect: torch.Tensor | None  # [B] (or [B, K])

    @property
    def end(self) -> torch.Tensor:
        """Each prompt's answer position: its last token, ``lengths - 1``."""
        return self.lengths - 1


@dataclass(frozen=True)
class HookContext:
    """What a hook function gets beside the activation, in place of TransformerLens's ``HookPoint``:
    ``hook.name`` and ``hook.layer()`` as there (so functions written for ``run_with_hooks`` run
    unchanged), and the batch (``hook.batch.end``: each row's answer position)."""

    name: str
    layer_index: int
    batch: Batch

    def layer(self) -> int:
        """The block's index (a method, as TransformerLens's ``HookPoint.layer()``)."""
        return self.layer_index


HookFn = Callable[[torch.Tensor, HookContext], "torch.Tensor | None"]
Metric = Callable[[torch.Tensor, Batch], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Activations(Mapping):
    """Activations by TransformerLens hook name (CPU tensors in the model's dtype), prompts in order.

    ``positions="answer"``: TransformerLens's shapes with the (query) position axis taken at each
    prompt's last token: resid ``[n_prompts, d_model]``, z / q ``[n_prompts, head_index, d_head]``,
    k / v ``[n_prompts, n_kv_heads, d_head]``, pattern ``[n_prompts, head_index, key_pos]`` (key_pos
    = the longest prompt; 0 past a prompt's end). ``positions="all"``: TransformerLens's shapes,
    ``pos`` = the longest prompt, right-padded with 0 past each prompt's ``lengths``.
    """

    by_name: dict[str, torch.Tensor]
    lengths: np.ndarray  # [n_prompts]: tokens of each prompt, BOS included
    positions: str

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)


@dataclass(frozen=True, eq=False)
class Intervention:
    """A metric per prompt with the hooks (``hooked``) and without (``clean``), and the change."""

    metric: str  # "logit_diff" or the metric function's name
    hooks: tuple[str, ...]
    hooked: np.ndarray  # [n_prompts]
    clean: np.ndarray  # [n_prompts]
    means: dict[str, float]  # "hooked", "clean", "effect" (hooked - clean)
    ci95: dict[str, tuple[float, float]]  # the same keys: percentile bootstrap, shared resamples
    seed: int

    @property
    def effect(self) -> np.ndarray:
        return self.hooked - self.clean


# ---------------------------------------------------------------------------------------------- activations
def activations(lm: LoadedModel, prompts: Prompts, names: Sequence[str], *, batch_size: int | None = None,
                prepend_bos: bool | None = None, positions: str = "answer", max_bytes: int = MAX_BYTES) -> Activations:
    """The activations ``names`` (TransformerLens's hook names) of ``prompts``; see :class:`Activations`.

    ``prepend_bos``: the family's TransformerLens default where ``None``. ``max_bytes`` bounds what is
    returned (checked before any forward pass); raise it to keep more."""
    engine = Engine(lm)
    if isinstance(names, str):
        names = [names]
    hooks = list({h.name: h for h in (parse_hook_name(n, engine.points) for n in names)}.values())
    if not hooks:
        raise ArgumentError("names", names, "name at least one hook, e.g. ['blocks.0.attn.hook_z']")
    if positions not in POSITIONS:
        raise ArgumentError("positions", positions, f"use one of {', '.join(map(repr, POSITIONS))}")
    enc = encode(lm, prompts, prepend_bos)
    lengths = enc.lengths
    _check_size(lm, engine, hooks, len(enc.ids), int(lengths.max()), positions, max_bytes)
    out: dict[str, torch.Tensor] = {}
    with engine.session(kernels=False), torch.no_grad():
        for b in _batches(enc, _batch_size(lm, batch_size, lengths), engine.in_device):
            keep = {h.key: _keeper(h.name, out, b, len(enc.ids), int(lengths.max()), positions) for h in hooks}
            engine.forward(b.ids, keep)
    return Activations({h.name: out[h.name] for h in hooks}, lengths, positions)


def _trailing(point: str, engine: Engine) -> tuple[int, ...]:
    p = engine.points
    if point in ("z", "q"):
        return p.n_heads, p.d_head
    if point in ("k", "v"):
        return p.n_kv_heads, p.d_head
    return (engine.lm.shape.d_model,)


def _check_size(lm: LoadedModel, engine: Engine, hooks: list[HookName], n: int, T: int, positions: str,
                max_bytes: int) -> None:
    """Refuse, before any forward pass, to return more than ``max_bytes``."""
    itemsize = engine.modules.embed.weight.element_size()
    H = engine.points.n_heads
    per_pos = 1 if positions == "answer" else T
    total = 0
    for h in hooks:
        shape = (H, per_pos, T) if h.point == "pattern" else (per_pos, *_trailing(h.point, engine))
        total += n * prod(shape) * itemsize
    if total > max_bytes:
        raise ArgumentError(
            "max_bytes", max_bytes,
            f"keeping {len(hooks)} activation(s) at {positions!r} positions of {n} prompts (up to {T} tokens) takes "
            f"{_size(total)}; keep positions='answer', fewer names or prompts, or raise max_bytes",
            fix=int(total),
        )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _keeper(name: str, out: dict[str, torch.Tensor], b: Batch, n: int, T: int, positions: str) -> Hook:
    """A hook that copies the batch's activation (its answer positions, or all) into ``out[name]``
    (``[n_prompts, ...]`` on the CPU, made at the first batch) and changes nothing."""
    rows = torch.as_tensor(b.rows)
    lengths = b.lengths.cpu()
    pattern = name.endswith("hook_pattern")

    def hook(x: torch.Tensor) -> None:
        B, Tb = x.shape[0], x.shape[-1] if pattern else x.shape[1]
        at = torch.arange(B, device=x.device)
        if positions == "answer":
            part = x[at, :, b.end.to(x.device)] if pattern else x[at, b.end.to(x.device)]
            shape = (n, part.shape[1], T) if pattern else (n, *part.shape[1:])
        else:
            part = x
            shape = (n, x.shape[1], T, T) if pattern else (n, T, *x.shape[2:])
        if name not in out:
            out[name] = torch.zeros(shape, dtype=x.dtype)
        dest = out[name]
        part = part.detach().to("cpu", dest.dtype)
        if positions == "answer":
            if pattern:
                dest[rows, :, :Tb] = part
            else:
                dest[rows] = part
            return None
        if pattern:
            dest[rows, :, :Tb, :Tb] = part
        else:
            dest[rows, :Tb] = part
        for r, length in zip(b.rows.tolist(), lengths.tolist()):  # padded positions: 0
            if pattern:
                dest[r, :, length:] = 0
                dest[r, :, :, length:] = 0
            else:
                dest[r, length:] = 0
        return None

    return hook


# ---------------------------------------------------------------------------------------------- intervene
def intervene(lm: LoadedModel, prompts: Prompts, hooks: Mapping[str, HookFn] | Sequence[tuple[str, HookFn]], *,
              metric: Metric | None = None, batch_size: int | None = None, prepend_bos: bool | None = None,
              seed: int = 0) -> Intervention:
    """Run ``prompts`` with ``hooks`` (TransformerLens hook name -> function, or ``(name, function)``
    pairs, several per name run in order) and without, and measure ``metric`` on both.

    A function is called as ``fn(activation, hook)`` with the activation in TransformerLens's layout
    (``[batch, pos, head_index, d_head]`` for hook_z) and a :class:`HookContext`; it returns a tensor of
    the same shape to replace the activation, or ``None`` to keep it (changed in place or not).

    ``metric``: by default the clean answers' logit difference at each prompt's answer position
    (from the final norm and the two unembedding rows in float32, each logit soft-capped where the
    family caps, as every logitscope method computes it). Or a metric's name (``prob-diff``,
    ``logprob-diff``, ``logprob``, ``loss``, ``kl``: :mod:`logitscope.engine.metrics`, defined as
    for every causal method; ``kl`` compares the hooked run with the unhooked one). Or a function ``metric(logits, batch)`` of
    the model's own logits at the answer positions (``[B, d_vocab]`` float32, soft-capped where the
    family caps) and the :class:`Batch`, returning ``[B]`` numbers.

    Means and 95% intervals use :mod:`logitscope.stats`'s resamples for ``seed``, shared by the
    hooked, clean and effect numbers (and by any other result over the same prompts and seed)."""
    named = metric if isinstance(metric, str) else None
    engine = Engine(lm, named)
    metric = None if named is not None else metric
    fns = _hook_functions(hooks, engine)
    enc = encode(lm, prompts, prepend_bos)
    if metric is None and enc.correct is None:
        raise ArgumentError("metric", None, "prompts given as plain strings have no answers to take a logit "
                            "difference of; pass Prompt objects, or a metric(logits, batch) of your own")
    if metric is not None and not callable(metric):
        raise ArgumentError("metric", metric, "must be a metric's name (logit-diff, prob-diff, ...), a function "
                            "metric(logits, batch) -> [batch] numbers, or None")
    n = len(enc.ids)
    clean, hooked = np.full(n, np.nan), np.full(n, np.nan)
    with engine.session(kernels=False), torch.no_grad():
        for b in _batches(enc, _batch_size(lm, batch_size, enc.lengths), engine.in_device):
            reference: dict[str, torch.Tensor] = {}
            clean[b.rows] = _measure(engine, b, {}, metric, reference)
            user = {h.key: _user_hook(h, chain, b) for h, chain in fns}
            hooked[b.rows] = _measure(engine, b, user, metric, reference)
    parts = {"hooked": hooked, "clean": clean, "effect": hooked - clean}
    ci = stats.shared_intervals(parts, seed=seed)
    return Intervention(
        metric=(engine.metric.key if metric is None else getattr(metric, "__name__", type(metric).__name__)),
        hooks=tuple(h.name for h, _ in fns), hooked=hooked, clean=clean,
        means={k: float(v.mean()) for k, v in parts.items()},
        ci95={k: (float(lo), float(hi)) for k, (lo, hi) in ci.items()}, seed=seed,
    )


def _hook_functions(hooks, engine: Engine) -> list[tuple[HookName, list[HookFn]]]:
    """The hooks as ``(name, functions in order)``, names checked, functions callable."""
    items = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks or [])
    if not items:
        raise ArgumentError("hooks", hooks, "give at least one, e.g. {'blocks.0.attn.hook_z': fn}")
    by_name: dict[str, tuple[HookName, list[HookFn]]] = {}
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ArgumentError("hooks", item, "each hook is a (name, function) pair, or pass a dict name -> function")
        name, fn = item
        parsed = parse_hook_name(name, engine.points)
        if not callable(fn):
            raise InputError(f"hook {name!r}: {fn!r} is not a function fn(activation, hook)")
        by_name.setdefault(parsed.name, (parsed, []))[1].append(fn)
    return list(by_name.values())


def _user_hook(h: HookName, fns: list[HookFn], b: Batch) -> Hook:
    """The hook point's function: each of ``fns`` in turn, their replacements checked."""
    ctx = HookContext(h.name, h.layer, b)

    def hook(x: torch.Tensor) -> torch.Tensor | None:
        replaced = None
        for fn in fns:
            new = fn(x if replaced is None else replaced, ctx)
            if new is None:
                continue
            if not isinstance(new, torch.Tensor) or tuple(new.shape) != tuple(x.shape):
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise InputError(f"hook {h.name!r}: the function returned {got} for an activation of shape "
                                 f"{tuple(x.shape)}; return a tensor of the same shape, or None to keep it")
            replaced = new.to(device=x.device, dtype=x.dtype)
        return replaced

    return hook


def _measure(engine: Engine, b: Batch, hooks: dict[tuple[str, int], Hook], metric: Metric | None,
             reference: dict[str, torch.Tensor]) -> np.ndarray:
    """One forward pass with ``hooks``; the metric at each prompt's answer position, ``[B]``. A named
    metric that compares with the clean run (``kl``) keeps the first (unhooked) run's logits in
    ``reference``."""
    resid = engine.answer_resid(b.ids, b.end, hooks)  # the residual stream the final norm reads
    if metric is None:
        dev = engine.W_U.device
        if engine.metric.is_logit_diff:
            return engine.logit_diff(resid, b.correct.to(dev), b.incorrect.to(dev)).cpu().double().numpy()
        normed = engine.final_norm(resid.to(dev)).float()
        if "logits" not in reference:
            reference["logits"] = engine.logits_of_normed(normed)
        values = engine.measure_normed(normed, b.correct, b.incorrect, reference["logits"])
        return values.cpu().double().numpy()
    logits = engine.logits_of_normed(engine.final_norm(resid.to(engine.W_U.device)))  # the norm's output as it comes, as ever
    values = torch.as_tensor(metric(logits, b)).detach()
    if values.shape != (len(b.rows),):
        raise InputError(f"metric {getattr(metric, '__name__', metric)!r} returned shape {tuple(values.shape)}; "
                         f"it must return one number per prompt of the batch, shape ({len(b.rows)},)")
    return values.cpu().double().numpy()


# ---------------------------------------------------------------------------------------------- prompts
def encode(lm: LoadedModel, prompts: Prompts, prepend_bos: bool | None = None) -> Encoded:
    """Token ids (and answers, for Prompts) of ``prompts``, as :func:`activations` and :func:`intervene`
    encode them (see the module docstring): passed back to them as ``prompts`` (with ``prepend_bos``
    left ``None``), the same prompts are encoded once for many calls (:class:`logitscope.Experiment`)."""
    if isinstance(prompts, Encoded):
        if prepend_bos is not None:
            raise ArgumentError("prepend_bos", prepend_bos, "the prompts are already encoded (with or without "
                                "BOS); leave prepend_bos=None", fix=None)
        if not prompts.ids:
            raise ArgumentError("prompts", prompts, "no prompts")
        return prompts
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ArgumentError("prompts", prompts, "give a non-empty list of Prompt objects or strings, or an Encoded "
                            "set (a built-in set: logitscope.builtin_prompts('seed'))")
    bos = lm.adapter.default_prepend_bos if prepend_bos is None else bool(prepend_bos)
    if all(isinstance(p, Prompt) for p in prompts):
        return encode_prompts(list(prompts), lm, prepend_bos=bos, sets=True)
    if not all(isinstance(p, str) for p in prompts):
        kinds = sorted({type(p).__name__ for p in prompts})
        raise ArgumentError("prompts", f"[{', '.join(kinds)}, ...]", "give all Prompt objects or all strings")
    return _encode_texts(lm, list(prompts), bos)


def _encode_texts(lm: LoadedModel, texts: list[str], bos: bool) -> Encoded:
    ids = tokenize(lm.tokenizer, texts)
    if bos:
        if lm.tokenizer.bos_token_id is None:
            raise ArgumentError("prepend_bos", True, "the tokenizer has no BOS token", fix=False)
        ids = [[lm.tokenizer.bos_token_id] + x for x in ids]
    for i, x in enumerate(ids):
        if not x:
            raise InputError(f"prompts[{i}]: the prompt is empty")
        if lm.n_ctx is not None and len(x) > lm.n_ctx:
            raise InputError(f"prompts[{i}]: {len(x)} tokens, longer than the model's context of {lm.n_ctx}; "
                             "shorten it")
    return Encoded(ids, None, None)  # type: ignore[arg-type]  # no answers


def _batch_size(lm: LoadedModel, batch_size: int | None, lengths: np.ndarray) -> int:
    if batch_size is None:
        return auto_batch_size(lm, int(lengths.max()))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError("batch_size", batch_size, "must be a whole number, 1 or more (or None: automatic)")
    return batch_size


def _batches(enc: Encoded, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Prompts in batches sorted by length (little padding), right-padded with id 0."""
    lengths = enc.lengths
    order = np.argsort(lengths, kind="stable")
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        ids = np.zeros((len(rows), int(lengths[rows].max())), dtype=np.int64)
        for j, r in enumerate(rows):
            ids[j, : lengths[r]] = enc.ids[r]
        sides = (enc.correct, enc.incorrect) if enc.correct_set is None else (enc.correct_set, enc.incorrect_set)
        answers = [None if a is None else torch.as_tensor(a[rows], device=device) for a in sides]
        yield Batch(rows, torch.from_numpy(ids).to(device), torch.as_tensor(lengths[rows], device=device), *answers)
