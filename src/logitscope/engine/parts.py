"""Finer splits of the study's direct logit attribution, from one more pass per batch (opt-in).

- **By source position** (for named heads): a head's mixed value at the answer position ``q`` is
  ``z = Σ_s pattern[q, s] · v_s`` exactly, and ``Σ_s pattern[q, s] = 1``, so with the value bias
  ``b`` (what :class:`~logitscope.engine.capture.Recorder` moves into the layer's bias)
  ``z − b = Σ_s pattern[q, s] · (v_s − b)``. Each source's part is that term through the head's
  slice of the output projection, projected on the logit-difference direction like the head
  (through any post norm with its frozen scale, then divided by the final norm's frozen scale):
  the parts add up to the study's ``head_results`` for that head; ``b``'s own projection (the
  head's share of ``attn_bias``) is reported beside them. ``v`` and ``pattern`` are read at
  TransformerLens's ``hook_v`` / ``hook_pattern`` (:mod:`logitscope.models.hooks`; grouped-query
  heads read their key-value head's ``v``).
- **By neuron** (one layer): the MLP's output less its bias is ``W_out · a`` where ``a`` is the
  input of the down projection (TransformerLens's ``hook_post``: ``act(W_in x)``, or
  ``act(gate) · up`` for gated MLPs), so neuron ``i``'s part is ``a_i · (W_out[:, i] · D)``,
  scaled as the MLP's own attribution: the neurons and the MLP's bias add up to ``mlp_out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from logitscope.engine.capture import Recorder
from logitscope.errors import ArgumentError
from logitscope.models.hooks import HookPoints
from logitscope.models.load import LoadedModel
from logitscope.models.modules import Modules

# The MLP's down projection (its input is TransformerLens's hook_post), by attribute name per family.
_DOWN = ("down_proj", "c_proj", "fc_out", "dense_4h_to_h")


@dataclass
class BatchParts:
    """One batch's finer parts, all already divided by the final norm's frozen scale."""

    source: torch.Tensor | None  # [n_heads_named, T_max, B]: each source position's part (0 past the prompt)
    source_value_bias: torch.Tensor | None  # [n_heads_named, B]: the value bias's part (in attn_bias)
    neurons: torch.Tensor | None  # [d_mlp, B]


def down_projection(lm: LoadedModel, layer: int) -> tuple[nn.Module, torch.Tensor]:
    """Layer ``layer``'s MLP down projection and its weight as ``[d_model, d_mlp]``; a clear error
    for a mixture-of-experts MLP (its experts are split by the study's expert attribution)."""
    m = Modules.of(lm)
    if m.experts(layer) is not None:
        raise ArgumentError("neurons", layer, "this layer's MLP is a mixture of experts: its split is the study's "
                            "expert attribution (expert_attribution), not neurons")
    mlp = m.mlp(layer)
    for name in _DOWN:
        proj = getattr(mlp, name, None)
        if isinstance(proj, (nn.Linear, Conv1D)):
            return proj, (proj.weight.T if isinstance(proj, Conv1D) else proj.weight)
    raise ArgumentError("neurons", layer, f"cannot find the down projection of {type(mlp).__name__}")


def _through_post(post: tuple[torch.Tensor, float] | None, pre: torch.Tensor, D: torch.Tensor):
    """The direction and ``1/σ_p`` factor (or None) for a sublayer output ``pre`` that passes through
    an RMSNorm post norm ``(weight, eps)`` with its scale frozen (as the study's Recorder does)."""
    if post is None:
        return D, None
    weight, eps = post
    return D * weight.to(D.device), torch.rsqrt((pre * pre).mean(-1) + eps)


class PartsRecorder:
    """Hooks for :class:`BatchParts`: ``heads`` ``[(layer, head)]`` split by source position and
    the neurons of ``neuron_layer`` (or None)."""

    def __init__(self, lm: LoadedModel, heads: list[tuple[int, int]], neuron_layer: int | None, t_max: int):
        self.lm, self.heads, self.neuron_layer, self.t_max = lm, heads, neuron_layer, t_max
        self.rec = Recorder(lm)  # the study's constants: directions, value biases, post norms (no hooks)
        self.points = HookPoints(lm)
        self.modules = self.points.modules
        self.layers = sorted({l for l, _ in heads})
        self.group = lm.shape.n_heads // self.points.n_kv_heads

    def run_batch(self, input_ids: torch.Tensor, answer_pos: torch.Tensor, correct: torch.Tensor,
                  incorrect: torch.Tensor) -> BatchParts:
        rec, m = self.rec, self.modules
        B = input_ids.shape[0]
        rows = torch.arange(B, device=input_ids.device)
        pos = answer_pos.to(input_ids.device)
        seen: dict = {}

        def take(x: torch.Tensor) -> torch.Tensor:  # [B, T, ...] at each prompt's answer position
            return x[rows.to(x.device), pos.to(x.device)].float()

        def keep(key: tuple, fn=lambda x: x):
            def hook(*args) -> None:
                seen[key] = fn(args[-1] if not isinstance(args[-1], tuple) else args[-1][0])
            return hook

        hooks = {}
        for layer in self.layers:
            hooks[("v", layer)] = keep(("v", layer), lambda v: v.float())  # [B, T, n_kv, d_head]
            hooks[("pattern", layer)] = keep(  # [B, H, T, T] -> [B, H, T] at the answer rows
                ("pattern", layer), lambda p: p[rows.to(p.device), :, pos.to(p.device)].float())
        handles = [m.final_norm.register_forward_pre_hook(lambda mod, a: seen.__setitem__("final", take(a[0])))]
        for layer in self.layers:
            handles.append(m.out_proj(layer).register_forward_hook(keep(("attn", layer), take)))
        if self.neuron_layer is not None:
            down, _ = down_projection(self.lm, self.neuron_layer)
            handles.append(down.register_forward_pre_hook(lambda mod, a: seen.__setitem__("post", take(a[0]))))
            handles.append(m.mlp(self.neuron_layer).register_forward_hook(keep("mlp", take)))
        try:
            with self.points.attach(hooks):
                m.base(input_ids=input_ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        dev = rec.out_device
        D = rec.directions(correct.to(dev), incorrect.to(dev))
        inv_final = 1.0 / rec.norm_scale(seen["final"].to(dev))
        source = bias = neurons = None
        if self.heads:
            source, bias = self._sources(seen, D, inv_final, pos)
        if self.neuron_layer is not None:
            neurons = self._neurons(seen, D, inv_final)
        return BatchParts(source, bias, neurons)

    def _sources(self, seen: dict, D: torch.Tensor, inv_final: torch.Tensor, pos: torch.Tensor):
        rec, dh = self.rec, self.lm.shape.d_head
        parts, biases = [], []
        for layer, head in self.heads:
            v, pattern = seen[("v", layer)], seen[("pattern", layer)]
            dev = v.device
            Dl, inv = _through_post(rec.attn_post[layer], seen[("attn", layer)].to(dev), D.to(dev))
            w_o = self.modules.out_proj_weight(layer).float()[:, head * dh : (head + 1) * dh]  # [d, dh]
            w = Dl @ w_o  # [B, dh]
            vb = rec.value_bias[layer]
            vb = torch.zeros(dh, device=dev) if vb is None else vb[head * dh : (head + 1) * dh].to(dev)
            v_h = v[:, :, head // self.group] - vb  # [B, T, dh]
            part = pattern[:, head].to(dev) * (v_h * w[:, None]).sum(-1)  # [B, T]
            b = (vb * w).sum(-1)  # [B]
            scale = inv_final.to(dev) if inv is None else inv * inv_final.to(dev)
            part = part * scale[:, None]
            full = torch.zeros(part.shape[0], self.t_max, device=dev)
            full[:, : part.shape[1]] = part
            parts.append(full.T.to(rec.out_device))
            biases.append((b * scale).to(rec.out_device))
        return torch.stack(parts), torch.stack(biases)

    def _neurons(self, seen: dict, D: torch.Tensor, inv_final: torch.Tensor) -> torch.Tensor:
        rec, layer = self.rec, self.neuron_layer
        post = seen["post"]  # [B, d_mlp]
        dev = post.device
        _, W = down_projection(self.lm, layer)  # [d, d_mlp]
        Dl, inv = _through_post(rec.mlp_post[layer], seen["mlp"].to(dev), D.to(dev))
        per = post * (Dl @ W.float())  # [B, d_mlp]
        scale = inv_final.to(dev) if inv is None else inv * inv_final.to(dev)
        return (per * scale[:, None]).T.to(rec.out_device)
