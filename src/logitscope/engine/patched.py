"""Exact patched runs, many at once, each computed from the patched layer on.

A patch at layer L leaves everything below L as it was in the run being patched (the *base* run),
and a patch at position p leaves every earlier position as it was. So one unpatched forward pass
over a batch (:meth:`Engine.record`) keeps what each block received; a patched run
(:meth:`Engine.patched`) then starts at block L with the base run's residual stream, runs only the
positions from ``start`` on (attending to the base run's keys and values for earlier ones), and
carries ``groups`` differently patched copies of the batch at once (rows ``g * B + b``). Its
result is the clean answers' logit difference at each prompt's last position, from the model's
own final norm and unembedding rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch

from logitscope.models.hooks import Hook, HookPoints, first_output
from logitscope.models.load import LoadedModel

# Keyword arguments a block receives that run along the positions, and the axis they do: sliced
# for suffix runs. (The attention mask is passed whole: the attention takes its last rows.)
_SEQUENCE_KWARGS = {"position_ids": -1, "cache_position": 0, "position_embeddings": -2}
_WHOLE_KWARGS = {"attention_mask"}


@dataclass
class Run:
    """What an unpatched forward pass over one batch leaves for patched runs."""

    batch: int
    length: int
    inputs: list[tuple[tuple, dict]]  # per block: its positional arguments after the hidden states, its kwargs
    resid_pre: list[torch.Tensor]  # per block: [B, T, d_model]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per block: keys, values as the kernel got them
    acts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # TransformerLens layouts
    logit_diff: torch.Tensor | None = None  # [B]
    suffix_ok: bool = False  # whether runs on a suffix of the positions are possible


class Engine:
    """Unpatched and patched forward passes of one model (see the module docstring)."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.points = HookPoints(lm)
        ad, model = lm.adapter, lm.model
        self.blocks = self.points.blocks
        self.n_layers = len(self.blocks)
        self.final_norm = ad.final_norm(model)
        unembed = ad.unembed(model)
        self.W_U, self.b_U = unembed.weight, getattr(unembed, "bias", None)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.in_device = ad.embed(model).weight.device

    def value_bias(self, layer: int) -> torch.Tensor | None:
        """The constant ``[n_heads, d_head]`` each head adds to its ``z`` whatever it attends to (value
        bias plus the first norm's bias through W_V), or ``None``: what a head's DLA leaves out."""
        block = self.blocks[layer]
        bias = self.lm.adapter.value_bias(block, self.lm.shape)
        if bias is None:
            return None
        return bias.detach().to(self.lm.adapter.out_proj_weight(block).dtype).view(self.points.n_heads, self.points.d_head)

    def logit_diff(self, resid: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        """logit(correct) − logit(incorrect) from final residual vectors ``[N, d]``: the model's final
        norm, its two unembedding rows (and bias, and soft-cap where it has them), in float32."""
        return self.logit_diff_of_normed(self.final_norm(resid.to(self.W_U.device)).float(), correct, incorrect)

    def logit_diff_of_normed(self, normed: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        """The same from vectors already through a final norm ``[N, d]`` (float32)."""
        lc = (normed * self.W_U[correct].float()).sum(-1)
        li = (normed * self.W_U[incorrect].float()).sum(-1)
        if self.b_U is not None:
            lc, li = lc + self.b_U[correct].float(), li + self.b_U[incorrect].float()
        if self.softcap:
            lc, li = (torch.tanh(x / self.softcap) * self.softcap for x in (lc, li))
        return lc - li

    @torch.inference_mode()
    def record(self, ids: torch.Tensor, end: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor, *,
               acts: Iterable[tuple[str, int]] = (), keep_kv: bool = False) -> Run:
        """One unpatched forward pass of ``ids`` ``[B, T]`` (right-padded; ``end`` the last real
        position of each row), keeping each block's inputs and residual stream, the activations
        ``acts`` asks for, and (``keep_kv``) every layer's keys and values."""
        B, T = ids.shape
        L = self.n_layers
        run = Run(B, T, [None] * L, [None] * L, [None] * L if keep_kv else None)  # type: ignore[list-item]
        hooks: dict[tuple[str, int], Hook] = {}
        for key in acts:
            hooks[key] = _store(run.acts, key)
        if keep_kv and self.points.via_interface:
            for layer in range(L):
                hooks[("kernel_k", layer)] = _store_kv(run.kv, layer, 0)
                hooks[("kernel_v", layer)] = _store_kv(run.kv, layer, 1)
        final: dict[str, torch.Tensor] = {}
        hooks[("resid_post", L - 1)] = _chain(hooks.get(("resid_post", L - 1)), lambda x: final.__setitem__("x", x))
        handles = [b.register_forward_pre_hook(_keep_inputs(run, i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        try:
            with self.points.attach(hooks):
                self.lm.adapter.base(self.lm.model)(input_ids=ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        rows = torch.arange(B, device=final["x"].device)
        run.logit_diff = self.logit_diff(final["x"][rows, end.to(rows.device)], correct, incorrect)
        run.suffix_ok = keep_kv and self.points.via_interface and all(
            name in _SEQUENCE_KWARGS or name in _WHOLE_KWARGS or not _has_tensor(value)
            for args, kwargs in run.inputs for name, value in kwargs.items()
        ) and not any(_has_tensor(a) for args, _ in run.inputs for a in args)
        return run

    @torch.inference_mode()
    def patched(self, base: Run, layer: int, *, groups: int, hooks: Mapping[tuple[str, int], Hook],
                end: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor, start: int = 0,
                edit_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``groups`` patched copies of ``base``'s batch run from block ``layer`` on, positions
        ``start:`` only; ``hooks`` replace activations (rows ``g * B + b``), ``edit_input`` the
        residual stream entering ``layer``. Returns the clean answers' logit difference ``[G * B]``."""
        B, G = base.batch, groups
        if start and not base.suffix_ok:
            raise ValueError("this run kept no keys and values: start must be 0")
        hidden = base.resid_pre[layer][:, start:]
        hidden = hidden.repeat(G, *([1] * (hidden.dim() - 1)))
        if edit_input is not None:
            hidden = edit_input(hidden)
        kv_prefix = None
        if start:
            kv_prefix = {j: (_expand(base.kv[j][0], G, B), _expand(base.kv[j][1], G, B), start)
                         for j in range(layer, self.n_layers)}
        with self.points.attach(hooks, kv_prefix=kv_prefix):
            for j in range(layer, self.n_layers):
                args, kwargs = base.inputs[j]
                kwargs = {k: _prepare(v, G, B, start, k) for k, v in kwargs.items()}
                args = tuple(_prepare(a, G, B, 0) for a in args)
                hidden = first_output(self.blocks[j](hidden, *args, **kwargs))
        rows = torch.arange(G * B, device=hidden.device)
        at = (end.to(hidden.device) - start).repeat(G)
        return self.logit_diff(hidden[rows, at], correct.repeat(G), incorrect.repeat(G))


def _store(acts: dict, key: tuple[str, int]) -> Hook:
    def hook(x: torch.Tensor) -> None:
        acts[key] = x

    return hook


def _store_kv(kv: list, layer: int, which: int) -> Hook:
    def hook(x: torch.Tensor) -> None:  # the kernel's [batch, head, pos, d_head]
        pair = list(kv[layer] or (None, None))
        pair[which] = x
        kv[layer] = tuple(pair)

    return hook


def _chain(first: Hook | None, then: Callable[[torch.Tensor], object]) -> Hook:
    def hook(x: torch.Tensor) -> None:
        if first is not None:
            first(x)
        then(x)

    return hook


def _keep_inputs(run: Run, layer: int):
    def hook(module, args, kwargs):
        run.resid_pre[layer] = args[0] if args else kwargs["hidden_states"]
        rest = args[1:] if args else ()
        run.inputs[layer] = (rest, {k: v for k, v in kwargs.items() if k != "hidden_states"})

    return hook


def _has_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    return False


def _expand(x: torch.Tensor, G: int, B: int) -> torch.Tensor:
    """Repeat a per-row tensor (leading axis ``B``) for ``G`` groups of the batch; tensors shared by
    every row (leading axis 1, e.g. rotary tables) broadcast as they are."""
    if G == 1 or x.dim() < 2 or x.shape[0] != B:
        return x
    return x.repeat(G, *([1] * (x.dim() - 1)))


def _prepare(value, G: int, B: int, start: int, name: str | None = None):
    """A block's argument for ``G`` groups of the batch, positions ``start:``."""
    if isinstance(value, (tuple, list)):
        return type(value)(_prepare(v, G, B, start, name) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if start and name in _SEQUENCE_KWARGS:
        axis = _SEQUENCE_KWARGS[name]
        value = value.narrow(axis, start, value.shape[axis] - start)
    return _expand(value, G, B)
