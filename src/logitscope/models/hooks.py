"""Hook points: where each of TransformerLens's activations lives in a Hugging Face model, to read
or replace it.

One layer answers, for every supported family, "where is ``resid_pre`` / ``resid_mid`` /
``resid_post`` / ``attn_out`` / ``mlp_out`` / ``z`` / ``q`` / ``k`` / ``v`` / ``pattern`` of layer
L", and presents each activation in TransformerLens's layout:

- ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``: ``[batch, pos, d_model]``
- ``z``, ``q``: ``[batch, pos, n_heads, d_head]``; ``k``, ``v``: ``[batch, pos, n_kv_heads, d_head]``
- ``pattern``: ``[batch, n_heads, query_pos, key_pos]``

A hook is a function of the activation that returns ``None`` (observe) or a tensor of the same shape
(replace). The plain Hugging Face modules are never modified: hooks are PyTorch module hooks
(removed on exit, beside any the user registered), and ``q`` / ``k`` / ``v`` / ``pattern`` are reached
through transformers' own ``AttentionInterface``: within :meth:`HookPoints.attach` the model's
attention implementation is switched to a registered function that applies the hooks and otherwise
calls the model's own implementation, and it is switched back on exit.

Two differences from TransformerLens, both without effect on patching: in rotary families without
q/k norms ``q`` and ``k`` are seen after the rotary embedding (TransformerLens's ``hook_rot_q`` /
``hook_rot_k``; a position's rotation is fixed and orthogonal, so replacing a head's whole vector at
aligned positions, or a first-order estimate, is the same either way), and ``z`` / ``v`` include the
value bias that TransformerLens's ``fold_value_biases`` moves out (the same constant in every run,
so replacing them has the same effect either way). In families with q/k norms (Qwen3, Gemma 3,
OLMo-2) ``q`` and ``k`` are the projections' outputs, before the norm and the rotary embedding,
exactly TransformerLens's ``hook_q`` / ``hook_k``: the norm is not linear, so a gradient taken after
it estimates a different thing (``Adapter.attention_points``).

:meth:`HookPoints.attach` can also run blocks on a *suffix* of the positions (``kv_prefix``): each
attention layer then attends from the given positions to the unchanged keys and values of a base
run for earlier positions, which is what makes patches at late positions cheap.
"""

from __future__ import annotations

import sys
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from logitscope.errors import InputError
from logitscope.models.load import LoadedModel
from logitscope.models.modules import Modules

Hook = Callable[[torch.Tensor], "torch.Tensor | None"]

RESIDUAL_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_POINTS = ("z", "q", "k", "v", "pattern")
POINTS = RESIDUAL_POINTS + HEAD_POINTS
ATTENTION_POINTS = ("q", "k", "v", "pattern")  # inside the attention computation
# The keys and values exactly as the attention kernel receives them (after any rotary embedding and
# q/k norm), ``[batch, n_kv_heads, pos, d_head]``, to observe: what a run on a suffix of the positions
# attends to (logitscope.engine.patched). Not TransformerLens hook points.
KERNEL_POINTS = ("kernel_k", "kernel_v")


@dataclass
class _AttentionState:
    """What the registered attention function does for one attention module."""

    original: Callable
    layer: int
    hooks: dict[str, Hook] = field(default_factory=dict)
    prefix: tuple[torch.Tensor, torch.Tensor, int] | None = None  # base keys, values [B, n_kv, T, d], start
    taken: list | None = None  # set by HookPoints.keys_values: keep the keys and values, stop the block
    skip: bool = False  # set by HookPoints.skip_attention: return zeros, compute nothing


class KeysValuesTaken(Exception):
    """Raised inside an attention layer once :meth:`HookPoints.keys_values` has its keys and values:
    the rest of the block is not run."""


# Attention modules currently attached, and what to do in each. Entries exist only inside
# HookPoints.attach; a module not in it (another model) runs its own implementation untouched.
_ACTIVE: "weakref.WeakKeyDictionary[nn.Module, _AttentionState]" = weakref.WeakKeyDictionary()
_REGISTERED: set[str] = set()


def _own_eager(module: nn.Module) -> Callable:
    """The ``eager_attention_forward`` of the module's own modelling file (each family has one)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:  # pragma: no cover - every AttentionInterface family defines one
        raise InputError(f"{type(module).__name__} has no eager attention function to call")
    return fn


def _implementation(name: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def _registered_name(original: str) -> str:
    """Register (once) an attention implementation that wraps ``original``, with ``original``'s
    mask function, so the masks the model builds are the ones its own kernel expects."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = f"logitscope_{original}"
    if name not in _REGISTERED:
        AttentionInterface.register(name, _attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
        _REGISTERED.add(name)
    return name


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
               **kwargs):
    """The attention function the model calls while attached: hooks on q/k/v (in TransformerLens's
    ``[batch, pos, head, d_head]`` layout), then the model's own kernel, or the explicit computation
    when the pattern is hooked or only a suffix of the positions is run."""
    state = _ACTIVE.get(module)
    if state is None:  # pragma: no cover - a module of another model, mid-switch
        raise RuntimeError("logitscope attention called outside HookPoints.attach")
    if state.skip:
        return torch.zeros_like(query).transpose(1, 2), None
    hooks = state.hooks
    query = _apply(hooks.get("q"), query)
    key = _apply(hooks.get("k"), key)
    value = _apply(hooks.get("v"), value)
    for name, x in (("kernel_k", key), ("kernel_v", value)):
        if name in hooks:
            hooks[name](x)
    if state.taken is not None:
        state.taken.append((key, value))
        raise KeysValuesTaken
    if state.prefix is None and "pattern" not in hooks:
        return state.original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if state.prefix is not None:
        base_k, base_v, start = state.prefix
        key = torch.cat([base_k[:, :, :start].to(key.dtype), key], dim=2)
        value = torch.cat([base_v[:, :, :start].to(value.dtype), value], dim=2)
    if kwargs.get("s_aux") is not None:
        raise InputError(f"{type(module).__name__}: attention sinks are not supported for pattern hooks or suffix runs")
    return _attend(module, query, key, value, attention_mask, scaling, kwargs, hooks.get("pattern"))


def _apply(hook: Hook | None, x: torch.Tensor) -> torch.Tensor:
    """Run a hook on an interface tensor ``[batch, head, pos, d]`` shown as ``[batch, pos, head, d]``."""
    if hook is None:
        return x
    out = hook(x.transpose(1, 2))
    return x if out is None else out.transpose(1, 2)


def _attend(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: torch.Tensor | None, scaling: float | None, kwargs: dict, pattern_hook: Hook | None):
    """Attention written out (as every family's eager function computes it): scores, soft-cap, mask,
    softmax in float32, the pattern hook, then the mixed values. Queries are the last
    ``query.shape[2]`` of the ``key.shape[2]`` positions."""
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = scores.shape[-2:]
    if mask is not None and mask.dim() == 4:
        mask = mask[..., -q_len:, -k_len:]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    else:  # causal (the kernel's own is_causal), with the layer's sliding window if it has one
        q_pos = torch.arange(k_len - q_len, k_len, device=scores.device)[:, None]
        k_pos = torch.arange(k_len, device=scores.device)[None, :]
        allowed = k_pos <= q_pos
        window = kwargs.get("sliding_window")
        if window:
            allowed &= k_pos > q_pos - window
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if pattern_hook is not None:
        replaced = pattern_hook(pattern)
        pattern = pattern if replaced is None else replaced
    out = torch.matmul(pattern, value)
    return out.transpose(1, 2).contiguous(), pattern


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def first_output(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new: torch.Tensor):
    return (new, *out[1:]) if isinstance(out, tuple) else new


class HookPoints:
    """The hook points of one loaded model (see the module docstring for names and layouts)."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.modules = m = Modules.of(lm)
        self.blocks = m.blocks
        self.n_layers = m.n_layers
        self.n_heads, self.d_head = lm.shape.n_heads, lm.shape.d_head
        self.parallel = m.parallel
        self.attention_modules = [m.attention(layer) for layer in range(self.n_layers)]
        self.n_kv_heads = m.n_kv_heads
        # Attention points some family reads at a module (GPT-Neo: all four, its attention has its own
        # kernel; Qwen3, Gemma 3, OLMo-2: q and k before their q/k norms, where TransformerLens reads them).
        self.module_points = dict(lm.adapter.attention_points or {})
        self.via_interface = "pattern" not in self.module_points

    # ------------------------------------------------------------------ where things are
    def attn_out_module(self, layer: int) -> nn.Module:
        """The module whose output is the attention layer's contribution to the residual stream: the
        output projection, or the norm after it (Gemma 2/3, OLMo-2)."""
        return self.modules.attn_out(layer)

    def mlp_out_module(self, layer: int) -> nn.Module:
        return self.modules.mlp_out(layer)

    def check(self, name: str, layer: int) -> None:
        if name not in POINTS and name not in KERNEL_POINTS:
            raise InputError(f"unknown hook point {name!r}: use one of {', '.join(POINTS)}")
        if not 0 <= layer < self.n_layers:
            raise InputError(f"{name} of layer {layer}: this model has layers 0-{self.n_layers - 1}")
        if name == "resid_mid" and self.parallel:
            raise InputError(
                f"{self.lm.adapter.family} runs attention and MLP in parallel: there is no resid_mid "
                "(TransformerLens has no hook_resid_mid for it either)"
            )

    # ------------------------------------------------------------------ attaching hooks
    @contextmanager
    def attach(
        self,
        hooks: Mapping[tuple[str, int], Hook],
        *,
        kv_prefix: Mapping[int, tuple[torch.Tensor, torch.Tensor, int]] | None = None,
        interface: bool = False,
    ) -> Iterator[None]:
        """Within the block, every ``(name, layer)`` hook runs on that activation.

        ``kv_prefix[layer] = (keys, values, start)``: the blocks are run (by the caller) on positions
        ``start:`` only; that layer's attention prepends the base run's ``keys[:, :, :start]`` and
        ``values`` (``[batch, n_kv_heads, pos, d_head]``, as the attention kernel receives them).
        ``interface``: switch to the AttentionInterface even without such hooks, so that
        :meth:`keys_values` and :meth:`set_prefix` can be used within the block.
        """
        for name, layer in hooks:
            self.check(name, layer)
        by_layer: dict[int, dict[str, Hook]] = {}
        for (name, layer), fn in hooks.items():
            by_layer.setdefault(layer, {})[name] = fn
        interface_points = [n for n, _ in hooks if n in KERNEL_POINTS or (n in ATTENTION_POINTS and n not in self.module_points)]
        if (kv_prefix or interface) and not self.via_interface:
            raise InputError(f"{self.lm.adapter.family}: suffix runs need the AttentionInterface")
        with ExitStack() as stack:
            for layer, fns in by_layer.items():
                self._attach_layer(stack, layer, fns)
            self._attach_attention_modules(stack, by_layer)
            if kv_prefix or interface_points or interface:
                stack.enter_context(self._interface(by_layer, kv_prefix or {}))
            yield

    def keys_values(self, layer: int, run: Callable[[], object]) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values layer ``layer``'s attention kernel receives while ``run()`` runs that
        block (after the block's k / v hooks; ``[batch, n_kv_heads, pos, d_head]``, the run's own
        positions only), stopping the block there: its output projection and MLP are not run.
        Within :meth:`attach` on the AttentionInterface only."""
        state = _ACTIVE[self.attention_modules[layer]]
        state.taken = []
        try:
            run()
        except KeysValuesTaken:
            return state.taken[0]
        finally:
            state.taken = None
        raise RuntimeError(f"block {layer} returned without calling its attention")  # pragma: no cover

    def skip_attention(self, layer: int, skip: bool = True) -> None:
        """Within :meth:`attach`, layer ``layer``'s attention kernel returns zeros (``[batch, pos,
        head, d_head]``) without computing anything: for a caller that replaces the attention's output."""
        _ACTIVE[self.attention_modules[layer]].skip = skip

    def set_prefix(self, layer: int, prefix: tuple[torch.Tensor, torch.Tensor, int] | None) -> None:
        """Change layer ``layer``'s ``kv_prefix`` (see :meth:`attach`) within :meth:`attach`."""
        _ACTIVE[self.attention_modules[layer]].prefix = prefix

    def _attach_layer(self, stack: ExitStack, layer: int, fns: dict[str, Hook]) -> None:
        block = self.blocks[layer]
        handles = []
        if "resid_pre" in fns or "resid_mid" in fns:
            pre, mid = fns.get("resid_pre"), fns.get("resid_mid")
            seen: dict[str, torch.Tensor] = {}

            def block_pre(module, args, kwargs):
                hidden = _hidden_of(args, kwargs)
                if pre is not None:
                    new = pre(hidden)
                    if new is not None:
                        hidden = new
                        args, kwargs = _with_hidden(args, kwargs, new)
                seen["resid_pre"] = hidden
                return args, kwargs

            handles.append(block.register_forward_pre_hook(block_pre, with_kwargs=True))
            if mid is not None:  # resid_mid = resid_pre + attn_out: change attn_out by what mid changes

                def attn_out_for_mid(module, args, out):
                    a = first_output(out)
                    resid_mid = seen["resid_pre"] + a
                    new = mid(resid_mid)
                    return None if new is None else _replace_first(out, a + (new - resid_mid))

                handles.append(self.attn_out_module(layer).register_forward_hook(attn_out_for_mid))
        if "attn_out" in fns:
            handles.append(self.attn_out_module(layer).register_forward_hook(_output_hook(fns["attn_out"])))
        if "mlp_out" in fns:
            handles.append(self.mlp_out_module(layer).register_forward_hook(_output_hook(fns["mlp_out"])))
        if "resid_post" in fns:
            handles.append(block.register_forward_hook(_output_hook(fns["resid_post"])))
        if "z" in fns:
            handles.append(self.modules.out_proj(layer).register_forward_pre_hook(self._z_hook(fns["z"])))
        for h in handles:
            stack.callback(h.remove)

    def _z_hook(self, fn: Hook):
        H, d = self.n_heads, self.d_head

        def hook(module, args):
            z = args[0]
            new = fn(z.view(*z.shape[:-1], H, d))
            return None if new is None else (new.reshape(z.shape), *args[1:])

        return hook

    @contextmanager
    def _interface(self, by_layer: dict[int, dict[str, Hook]], kv_prefix) -> Iterator[None]:
        model = self.lm.model
        previous = model.config._attn_implementation
        original = _implementation(previous) if previous != "eager" else None
        for layer, module in enumerate(self.attention_modules):
            fns = {k: v for k, v in by_layer.get(layer, {}).items()
                   if k in KERNEL_POINTS or (k in ATTENTION_POINTS and k not in self.module_points)}
            _ACTIVE[module] = _AttentionState(original or _own_eager(module), layer, fns, kv_prefix.get(layer))
        try:
            model.set_attn_implementation(_registered_name(previous))
            yield
        finally:
            model.set_attn_implementation(previous)
            for module in self.attention_modules:
                _ACTIVE.pop(module, None)

    def _attach_attention_modules(self, stack: ExitStack, by_layer: dict[int, dict[str, Hook]]) -> None:
        """Attention points a family reads at a module: q, k and v at their projections' outputs, the
        pattern at the module that receives it (GPT-Neo's attention dropout)."""
        points = self.module_points
        for layer, fns in by_layer.items():
            block = self.blocks[layer]
            for name in ("q", "k", "v"):
                if name in fns and name in points:
                    heads = self.n_heads if name == "q" else self.n_kv_heads
                    h = points[name](block).register_forward_hook(_split_heads_hook(fns[name], heads, self.d_head))
                    stack.callback(h.remove)
            if "pattern" in fns and "pattern" in points:
                h = points["pattern"](block).register_forward_hook(_output_hook(fns["pattern"]))
                stack.callback(h.remove)


def _output_hook(fn: Hook):
    def hook(module, args, out):
        new = fn(first_output(out))
        return None if new is None else _replace_first(out, new)

    return hook


def _split_heads_hook(fn: Hook, n_heads: int, d_head: int):
    def hook(module, args, out):
        new = fn(out.view(*out.shape[:-1], n_heads, d_head))
        return None if new is None else new.reshape(out.shape)

    return hook

