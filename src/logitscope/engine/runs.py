"""What a recorded run keeps for patched runs (:class:`Run`), and the hooks and block arguments of
recorded and patched suffix runs (:mod:`logitscope.engine.core`): each block's inputs kept, activations
and keys and values stored, a block's arguments repeated for groups of the batch and cut to a suffix
of the positions."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from logitscope.models.hooks import Hook

# Keyword arguments a block receives that run along the positions, and the axis they do: sliced
# for suffix runs. (The attention mask is passed whole: the attention takes its last rows.)
SEQUENCE_KWARGS = {"position_ids": -1, "cache_position": 0, "position_embeddings": -2}
WHOLE_KWARGS = {"attention_mask"}


@dataclass
class Run:
    """What an unpatched forward pass over one batch leaves for patched runs."""

    batch: int
    length: int
    inputs: list[tuple[tuple, dict]]  # per block: its positional arguments after the hidden states, its kwargs
    resid_pre: list[torch.Tensor]  # per block: [B, T, d_model]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per block: keys, values as the kernel got them
    acts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # TransformerLens layouts
    value: torch.Tensor | None = None  # [B]: the engine's metric (the clean answers' logit difference by default)
    reference: torch.Tensor | None = None  # [B, d_vocab]: the clean run's answer logits, for metrics that read them (kl)
    suffix_ok: bool = False  # whether runs on a suffix of the positions are possible
    narrow_ok: bool = False  # whether blocks can run on fewer positions than the run's (suffix_ok less the keys and values)


def positional_names(block: torch.nn.Module) -> list[str]:
    """The names of a block's positional parameters after the hidden states."""
    names = []
    for p in list(inspect.signature(block.forward).parameters.values())[1:]:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    return names


def one_position(module, args, kwargs):
    """An attention module's inputs cut to their last position (its kernel is skipped)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    n = hidden.shape[1]
    cut = {k: prepare(v, 1, 0, n - 1, k) if k in SEQUENCE_KWARGS else v for k, v in kwargs.items()}
    if args:
        return (hidden[:, -1:], *args[1:]), cut
    return args, {**cut, "hidden_states": hidden[:, -1:]}


def with_first(out, first: torch.Tensor):
    return (first, *out[1:]) if isinstance(out, tuple) else first


def store(acts: dict, key: tuple[str, int]) -> Hook:
    def hook(x: torch.Tensor) -> None:
        acts[key] = x

    return hook


def store_kv(kv: list, layer: int, which: int) -> Hook:
    def hook(x: torch.Tensor) -> None:  # the kernel's [batch, head, pos, d_head]
        pair = list(kv[layer] or (None, None))
        pair[which] = x
        kv[layer] = tuple(pair)

    return hook


def keep_final(first: Hook | None, final: dict[str, torch.Tensor]) -> Hook:
    """``first`` (if any), then what it leaves (its replacement, else the activation) kept in ``final``."""
    def hook(x: torch.Tensor) -> torch.Tensor | None:
        new = None if first is None else first(x)
        final["x"] = x if new is None else new
        return new

    return hook


def keep_inputs(run: Run, layer: int):
    def hook(module, args, kwargs):
        run.resid_pre[layer] = args[0] if args else kwargs["hidden_states"]
        rest = args[1:] if args else ()
        run.inputs[layer] = (rest, {k: v for k, v in kwargs.items() if k != "hidden_states"})

    return hook


def has_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(has_tensor(v) for v in value)
    return False


def groups(x: torch.Tensor, G: int) -> torch.Tensor:
    """A per-row tensor ``[B, ...]`` repeated for ``G`` groups of the batch (rows ``g * B + b``)."""
    return x.repeat(G, *([1] * (x.dim() - 1)))


def expand(x: torch.Tensor, G: int, B: int) -> torch.Tensor:
    """Repeat a per-row tensor (leading axis ``B``) for ``G`` groups of the batch; tensors shared by
    every row (leading axis 1, e.g. rotary tables) broadcast as they are."""
    if G == 1 or x.dim() < 2 or x.shape[0] != B:
        return x
    return x.repeat(G, *([1] * (x.dim() - 1)))


def prepare(value, G: int, B: int, start: int, name: str | None = None):
    """A block's argument for ``G`` groups of the batch, positions ``start:``."""
    if isinstance(value, (tuple, list)):
        return type(value)(prepare(v, G, B, start, name) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if start and name in SEQUENCE_KWARGS:
        axis = SEQUENCE_KWARGS[name]
        value = value.narrow(axis, start, value.shape[axis] - start)
    return expand(value, G, B)
