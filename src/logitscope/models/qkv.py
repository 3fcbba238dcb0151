"""Each family's query, key and value projections, per head: which modules write a layer's q, k and
v, how their output splits into heads (and joins back), and each head's weight and bias.

Three layouts exist among the supported families: one joined projection whose output is ``[q | k |
v]`` (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``, whose k and v have ``n_kv`` heads), one fused
projection whose output is ``[head, (q, k, v), d_head]`` (NeoX's ``query_key_value``), and three
separate ``Linear`` projections (every other family). An adapter names its layout
(``Adapter.qkv``); :class:`logitscope.models.modules.Modules` answers with these objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

LETTERS = "qkv"  # the order of the letters in a joined projection's output (results.edge_graph.QKV)


@dataclass
class QKVProjection:
    """A module whose output holds some of a layer's q, k, v (``letters``), per head."""

    module: nn.Module
    letters: str
    split: Callable[[torch.Tensor], list[torch.Tensor]]  # output -> [b, p, heads, d_head] per letter
    join: Callable[[list[torch.Tensor]], torch.Tensor]
    weights: Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]  # W [heads, d_head, d_model], b [heads, d_head]


QKVLayout = Callable[[nn.Module, int, int, int], list[QKVProjection]]  # (attention, d_model, n_heads, d_head)


def _linear_weights(module: nn.Linear, d_head: int):
    def weights(_: str):
        w = module.weight
        b = module.bias
        n = w.shape[0] // d_head
        return w.view(n, d_head, w.shape[1]), None if b is None else b.view(n, d_head)
    return weights


def _heads_view(d_head: int):
    return lambda out: [out.view(*out.shape[:-1], out.shape[-1] // d_head, d_head)]


def _flat(parts: list[torch.Tensor]) -> torch.Tensor:
    x = parts[0]
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def separate_qkv(attn: nn.Module, d_model: int, n_heads: int, d_head: int) -> list[QKVProjection]:
    """Three ``Linear`` projections ``q_proj``, ``k_proj``, ``v_proj`` on the attention module."""
    mods = {x: getattr(attn, f"{x}_proj") for x in LETTERS}
    return [QKVProjection(m, x, _heads_view(d_head), _flat, _linear_weights(m, d_head)) for x, m in mods.items()]


def gpt2_qkv(attn: nn.Module, d_model: int, n_heads: int, d_head: int) -> list[QKVProjection]:
    """GPT-2's ``c_attn``: a Conv1D (weight ``[d_model, 3 d_model]``), output ``[q | k | v]``."""
    conv = attn.c_attn

    def split(out):
        return [x.view(*x.shape[:-1], n_heads, d_head) for x in out.split(d_model, dim=-1)]

    def join(parts):
        return torch.cat([_flat([p]) for p in parts], dim=-1)

    def weights(letter):
        i = LETTERS.index(letter)
        w = conv.weight[:, i * d_model:(i + 1) * d_model].T.reshape(n_heads, d_head, d_model)
        return w, conv.bias[i * d_model:(i + 1) * d_model].view(n_heads, d_head)

    return [QKVProjection(conv, "qkv", split, join, weights)]


def neox_qkv(attn: nn.Module, d_model: int, n_heads: int, d_head: int) -> list[QKVProjection]:
    """NeoX's ``query_key_value``: output viewed ``[.., heads, 3 d_head]``, q, k, v per head."""
    fused = attn.query_key_value

    def split(out):
        x = out.view(*out.shape[:-1], n_heads, 3, d_head)
        return [x[..., i, :] for i in range(3)]

    def join(parts):
        x = torch.stack(parts, dim=-2)
        return x.reshape(*x.shape[:-3], n_heads * 3 * d_head)

    def weights(letter):
        i = LETTERS.index(letter)
        w = fused.weight.view(n_heads, 3, d_head, d_model)[:, i]
        return w, None if fused.bias is None else fused.bias.view(n_heads, 3, d_head)[:, i]

    return [QKVProjection(fused, "qkv", split, join, weights)]


def phi3_qkv(attn: nn.Module, d_model: int, n_heads: int, d_head: int) -> list[QKVProjection]:
    """Phi-3's ``qkv_proj``: rows ``[q (H d_head), k (n_kv d_head), v (n_kv d_head)]``, no bias
    (``n_kv`` = H once the edge runs ungroup the keys and values)."""
    fused = attn.qkv_proj
    q_rows = n_heads * d_head

    def sizes(width: int) -> list[int]:
        kv = (width - q_rows) // 2
        return [q_rows, kv, kv]

    def split(out):
        return [x.view(*x.shape[:-1], -1, d_head) for x in out.split(sizes(out.shape[-1]), dim=-1)]

    def join(parts):
        return torch.cat([_flat([p]) for p in parts], dim=-1)

    def weights(letter):
        i = LETTERS.index(letter)
        n = sizes(fused.weight.shape[0])
        rows = slice(sum(n[:i]), sum(n[:i + 1]))
        return fused.weight[rows].view(-1, d_head, d_model), None

    return [QKVProjection(fused, "qkv", split, join, weights)]
