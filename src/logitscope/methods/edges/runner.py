"""Edge-level runs of a Hugging Face model, by module hooks: every node's output, every node's
input gradient, and runs in which chosen edges carry another value.

The graph's children read the residual stream *before* their norm, each attention head through
three inputs of its own (``<q>``, ``<k>``, ``<v>``), as TransformerLens's ``use_split_qkv_input``
draws it. The Hugging Face block computes one normed input for all heads; two ways make the heads'
inputs separate without changing the module tree:

- gradients (:meth:`EdgeRunner.gradient`): the model runs as it is; the gradient at each head's
  query (key, value) projection output, ``g_h``, is taken to the head's own residual input through
  the projection and the norm: ``J_norm(x)ᵀ (W_Q[h]ᵀ g_h)`` (the norm's vector-Jacobian product at
  the block's input ``x``, which every head's input equals in a run without edge interventions).
  An MLP's and the logits' input gradients are read on a copy of their residual input.
- interventions (:meth:`EdgeRunner.forward` with ``deltas``): the projection's output is replaced
  by each head's projection of ``norm(x + δ_h)``, with its own ``δ_h`` per q, k, v.

With grouped-query attention the keys and values are *ungrouped* inside these runs (each query head
gets its own copy of its group's key and value projection, Phi-3's fused ``qkv_proj`` included; the
attention modules' ``num_key_value_groups`` is 1 while attached, then restored; OLMo-2's key norm,
which spans all key heads, reads the ungrouped keys with its weight repeated), as TransformerLens's
``ungroup_grouped_query_attention``: a query head's ``<k>`` and ``<v>`` edges are its own.
"""

# Longer than ~400 lines on purpose: the edge graph's hooks on each family's Hugging Face modules (per-head q/k/v inputs, post-norms, parallel blocks) belong together.

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from logitscope.engine.nodes import QKV, NodeLayout as EdgeGraph  # the layout is all the runner reads
from logitscope.models.adapters import norm_eps

# (kind, layer) -> tensor: "qkv" [3, b, p, H, d]; "mlp", "logits" [b, p, d]
DeltaFn = Callable[[str, int], "torch.Tensor | None"]
# called with (kind, layer, letter or "", gradient [n, b, p, d], node-major) during backward
GradFn = Callable[[str, int, str, torch.Tensor], None]
# called with (first forward index, output [b, p, n, d]) as each group of nodes writes
RecordFn = Callable[[int, torch.Tensor], None]


@dataclass
class _Projection:
    """A module whose output holds some of a layer's q, k, v (``letters``), per head."""

    module: nn.Module
    letters: str
    split: Callable[[torch.Tensor], list[torch.Tensor]]  # output -> [b, p, heads, d_head] per letter
    join: Callable[[list[torch.Tensor]], torch.Tensor]
    weights: Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]  # W [heads, d_head, d_model], b [heads, d_head]


class _RepeatedNorm(nn.Module):
    """``norm`` over ungrouped heads: its own forward with its weight [n_kv d_head] repeated to
    [H d_head], each key head's slice once per query head of its group."""

    def __init__(self, norm: nn.Module, group: int, d_head: int):
        super().__init__()
        self.norm, self.group, self.d_head = norm, group, d_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.norm.weight
        w = w.view(-1, self.d_head).repeat_interleave(self.group, dim=0).reshape(-1)
        return torch.func.functional_call(self.norm, {"weight": w}, (x,))


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


def _projections(family: str, block: nn.Module, attn: nn.Module, d_model: int, n_heads: int, d_head: int) -> list[_Projection]:
    if family == "gpt2":
        conv = attn.c_attn  # Conv1D, weight [d_model, 3 d_model]

        def split(out):
            return [x.view(*x.shape[:-1], n_heads, d_head) for x in out.split(d_model, dim=-1)]

        def join(parts):
            return torch.cat([_flat([p]) for p in parts], dim=-1)

        def weights(letter):
            i = QKV.index(letter)
            w = conv.weight[:, i * d_model:(i + 1) * d_model].T.reshape(n_heads, d_head, d_model)
            return w, conv.bias[i * d_model:(i + 1) * d_model].view(n_heads, d_head)

        return [_Projection(conv, "qkv", split, join, weights)]
    if family == "gpt_neox":
        fused = attn.query_key_value  # output viewed [.., heads, 3 d_head]: q, k, v per head

        def split(out):
            x = out.view(*out.shape[:-1], n_heads, 3, d_head)
            return [x[..., i, :] for i in range(3)]

        def join(parts):
            x = torch.stack(parts, dim=-2)
            return x.reshape(*x.shape[:-3], n_heads * 3 * d_head)

        def weights(letter):
            i = QKV.index(letter)
            w = fused.weight.view(n_heads, 3, d_head, d_model)[:, i]
            return w, None if fused.bias is None else fused.bias.view(n_heads, 3, d_head)[:, i]

        return [_Projection(fused, "qkv", split, join, weights)]
    if family == "phi3":
        fused = attn.qkv_proj  # rows [q (H d_head), k (n_kv d_head), v (n_kv d_head)]; n_kv = H once ungrouped
        q_rows = n_heads * d_head

        def sizes(width: int) -> list[int]:
            kv = (width - q_rows) // 2
            return [q_rows, kv, kv]

        def split(out):
            return [x.view(*x.shape[:-1], -1, d_head) for x in out.split(sizes(out.shape[-1]), dim=-1)]

        def join(parts):
            return torch.cat([_flat([p]) for p in parts], dim=-1)

        def weights(letter):
            i = QKV.index(letter)
            n = sizes(fused.weight.shape[0])
            rows = slice(sum(n[:i]), sum(n[:i + 1]))
            return fused.weight[rows].view(-1, d_head, d_model), None

        return [_Projection(fused, "qkv", split, join, weights)]
    mods = {x: getattr(attn, f"{x}_proj") for x in QKV}
    return [_Projection(m, x, _heads_view(d_head), _flat, _linear_weights(m, d_head)) for x, m in mods.items()]


def _attention_module(family: str, block: nn.Module) -> nn.Module:
    if family == "gpt_neo":
        return block.attn.attention
    if family in ("gpt2", "gptj"):
        return block.attn
    if family == "gpt_neox":
        return block.attention
    return block.self_attn


def _attn_norm(family: str, block: nn.Module) -> nn.Module | None:
    if family in ("gpt2", "gpt_neo", "gptj"):
        return block.ln_1
    if family == "olmo2":
        return None
    return block.input_layernorm


def _mlp_input(family: str, block: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(module whose first input is the MLP's residual input, or the MLP itself; the norm to
    recompute from the block's input when the MLP shares the attention's normed input (GPT-J))."""
    if family in ("gpt2", "gpt_neo"):
        return block.ln_2, None
    if family == "gptj":
        return block.mlp, block.ln_1
    if family == "olmo2":
        return block.mlp, None
    if family in ("gemma2", "gemma3"):
        return block.pre_feedforward_layernorm, None
    return block.post_attention_layernorm, None


class EdgeRunner:
    """Hooks of one loaded model for edge attribution (see the module docstring)."""

    def __init__(self, lm, graph: EdgeGraph | None = None):
        self.lm = lm
        self.graph = graph or EdgeGraph.from_model(lm)
        ad, model = lm.adapter, lm.model
        self.family = ad.family
        self.blocks = list(ad.blocks(model))
        self.H, self.dh, self.d = lm.shape.n_heads, lm.shape.d_head, lm.shape.d_model
        self.attn = [_attention_module(self.family, b) for b in self.blocks]
        self.n_kv = self._n_kv()
        self.proj = [_projections(self.family, b, a, self.d, self.H, self.dh) for b, a in zip(self.blocks, self.attn)]
        self.attn_norm = [_attn_norm(self.family, b) for b in self.blocks]
        self.mlp_in = [_mlp_input(self.family, b) for b in self.blocks]
        self.final_norm = ad.final_norm(model)
        self.embed = ad.embed(model)

    def _n_kv(self) -> int:
        cfg = self.lm.model.config
        for attr in ("num_key_value_heads", "n_kv_heads"):
            v = getattr(cfg, attr, None)
            if v:
                return int(v)
        return self.H

    # ------------------------------------------------------------------ norms
    def _head_input_grads(self, layer: int, x: torch.Tensor, gp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Each head's residual-input gradient ``J_norm(x)ᵀ (W_hᵀ g_h)``, head-major ``[H, b, p, d]``,
        for the norm before layer ``layer``'s attention; ``x`` [b, p, d] (the block's input),
        ``gp`` [b, p, H, d_head] (the gradient at the projection's output), ``w`` [H, d_head, d].

        One batched product per head and two in-place passes: the norm's scale ``1/σ`` is applied
        to ``g_h`` (d_head wide) and its weight to ``W``, and the Jacobian's projections
        (``− mean``, ``− x̂ · mean(· x̂)``) are subtracted from the product in place."""
        b, p, H, e = gp.shape
        g = gp.float().permute(2, 0, 1, 3).reshape(H, b * p, e)
        w = w.float()
        norm = self.attn_norm[layer]
        if norm is None:
            return torch.bmm(g, w).view(H, b, p, -1).to(gp.dtype)
        w = w * self.lm.adapter.norm_weight(norm).float()
        xf = x.float().reshape(b * p, -1)
        layer_norm = self.lm.adapter.norm == "LayerNorm"
        xc = xf - xf.mean(-1, keepdim=True) if layer_norm else xf
        inv = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + norm_eps(norm))  # [bp, 1]
        xh = xc * inv
        v = torch.bmm(g * inv, w)  # [H, bp, d]: (1/σ)·(w ⊙ W_hᵀ g_h)
        c = torch.einsum("hkd,kd->hk", v, xh) / xf.shape[-1]  # mean(v · x̂)
        if layer_norm:
            v.sub_(v.mean(-1, keepdim=True))
        v.addcmul_(c.unsqueeze(-1), xh.unsqueeze(0), value=-1.0)
        return v.view(H, b, p, -1).to(gp.dtype)

    def _post_factor(self, norm: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """The per-position, per-dimension factor by which a sublayer post-norm (RMSNorm, no bias)
        multiplies its input ``y``: ``weight / rms(y)``."""
        inv = torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + norm_eps(norm))
        return (inv * self.lm.adapter.norm_weight(norm).float()).to(y.dtype)

    # ------------------------------------------------------------------ the run
    @contextmanager
    def attach(self, *, record: RecordFn | None = None, replace: dict | None = None,
               deltas: DeltaFn | None = None, grads: GradFn | None = None,
               input_leaf: bool = False) -> Iterator[dict]:
        """Hooks for one or more forward passes.

        ``record(f0, out)``: each group of nodes' outputs as they are written (``input`` [b,p,1,d],
        a layer's heads [b,p,H,d], an MLP [b,p,1,d]), detached. ``replace``: ``{"input": t}``,
        ``{("attn", L): t}`` (the sum of the layer's head outputs), ``{("mlp", L): t}``: that group's
        output becomes ``t`` (a constant: no gradient flows through the replaced group).
        ``deltas(kind, L)``: what each child input receives beside the residual stream.
        ``grads(kind, L, letter, g)``: each child input's gradient ``[n, b, p, d]`` during backward.
        ``input_leaf``: the embeddings become a leaf that requires grad (the returned dict's
        ``"leaf"``), so that a backward needs no parameter gradients.
        """
        replace = replace or {}
        state: dict = {}
        ad = self.lm.adapter
        ungroup = self.n_kv != self.H
        group = self.H // self.n_kv
        with ExitStack() as stack:
            if self.lm.model.training:  # dropout off while attached, the user's mode restored after
                self.lm.model.eval()
                stack.callback(self.lm.model.train)

            def hook(module, fn, pre=False, kwargs=False):
                if pre:
                    h = module.register_forward_pre_hook(fn, with_kwargs=kwargs)
                else:
                    h = module.register_forward_hook(fn)
                stack.callback(h.remove)

            def on_embed(module, args, out):
                new = out
                if "input" in replace:
                    new = replace["input"].to(out.dtype).detach()
                if input_leaf:
                    new = new.detach().requires_grad_(True)
                    state["leaf"] = new
                if record is not None:
                    record(0, new.detach()[:, :, None])
                return new

            hook(self.embed, on_embed)
            for layer, block in enumerate(self.blocks):
                self._attach_layer(hook, layer, block, state, record, replace, deltas, grads, ungroup, group)

            def on_final(module, args):
                x = args[0]
                if deltas is not None:
                    dx = deltas("logits", 0)
                    if dx is not None:
                        x = x + dx.to(x.dtype)
                if grads is not None and x.requires_grad:
                    x = x.clone()
                    x.register_hook(lambda g: grads("logits", 0, "", g[None]))
                return (x, *args[1:])

            hook(self.final_norm, on_final, pre=True)
            if ungroup:
                for a in self.attn:
                    self._ungroup(stack, a, group)
            yield state

    def _ungroup(self, stack: ExitStack, attn: nn.Module, group: int) -> None:
        """Make ``attn`` read one key and value head per query head while attached (restored on exit):
        ``num_key_value_groups`` 1; ``num_key_value_heads`` H where the module slices its fused
        q/k/v output with it (Phi-3); a key norm over all key heads (OLMo-2) applied to the
        ungrouped keys with its weight repeated per query head, so that the ungrouped attention is
        the same function (the mean square of a vector whose heads are repeated is unchanged)."""
        for name, value in (("num_key_value_groups", 1), ("num_key_value_heads", self.H)):
            if hasattr(attn, name):
                stack.callback(setattr, attn, name, getattr(attn, name))
                setattr(attn, name, value)
        if self.family == "olmo2":
            norm = attn.k_norm
            stack.callback(setattr, attn, "k_norm", norm)
            attn.k_norm = _RepeatedNorm(norm, group, self.dh)

    def _attach_layer(self, hook, layer, block, state, record, replace, deltas, grads, ungroup, group):
        ad = self.lm.adapter
        g = self.graph

        def on_block(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            state["resid_pre"] = hidden
            state["delta_qkv"] = deltas("qkv", layer) if deltas is not None else None
            return None

        hook(block, on_block, pre=True, kwargs=True)

        for proj in self.proj[layer]:
            hook(proj.module, self._projection_hook(layer, proj, state, grads, ungroup, group))

        # the MLP's input
        module, shared_norm = self.mlp_in[layer]

        def on_mlp_in(mod, args):
            x = args[0]
            if shared_norm is not None:
                x = state["resid_pre"]
            dx = deltas("mlp", layer) if deltas is not None else None
            if dx is not None:
                x = x + dx.to(x.dtype)
            if grads is not None and x.requires_grad:
                x = x.clone()
                x.register_hook(lambda gr: grads("mlp", layer, "", gr[None]))
            if shared_norm is not None:
                x = shared_norm(x)
            return (x, *args[1:])

        hook(module, on_mlp_in, pre=True)

        # the heads' outputs
        out_proj = ad.out_proj(block)
        post = ad.attn_post_norm(block)
        w_o = ad.out_proj_weight(block)  # [d_model, H d_head]

        def head_results(z: torch.Tensor) -> torch.Tensor:
            zh = z.detach().view(*z.shape[:-1], self.H, self.dh)
            with torch.no_grad():  # read as constants only: no autograd graph for them
                return torch.einsum("bphe,dhe->bphd", zh, w_o.view(self.d, self.H, self.dh))

        def finish_attn(out: torch.Tensor, results: Callable[[], torch.Tensor]) -> torch.Tensor:
            """``results()``: the heads' outputs [b, p, H, d], computed only when recorded or replaced."""
            key = ("attn", layer)
            if key in replace:
                out = (out - results().sum(dim=2)).detach() + replace[key].to(out.dtype).detach()
            elif record is not None:
                # a replaced layer's heads are not recorded (their outputs are no longer defined)
                record(g.head_index(layer), results())
            return out

        if post is None:
            def on_out_proj(mod, args, out):
                return finish_attn(out, lambda: head_results(args[0]))

            hook(out_proj, on_out_proj)
        else:
            def keep_z(mod, args, out):
                state["z"] = args[0]

            def on_post(mod, args, out):
                return finish_attn(out, lambda: head_results(state["z"]) * self._post_factor(mod, args[0]).detach()[:, :, None, :])

            hook(out_proj, keep_z)
            hook(post, on_post)

        mlp_out = ad.mlp_post_norm(block) or ad.mlp(block)

        def on_mlp_out(mod, args, out):
            first = out[0] if isinstance(out, tuple) else out
            key = ("mlp", layer)
            new = first
            if key in replace:
                new = replace[key].to(first.dtype).detach()
            if record is not None:
                record(g.mlp_index(layer), new.detach()[:, :, None])
            if new is first:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new

        hook(mlp_out, on_mlp_out)

    def _projection_hook(self, layer, proj: _Projection, state, grads, ungroup, group):
        H = self.H

        def expand(w: torch.Tensor | None, letter: str) -> torch.Tensor | None:
            if w is None or letter == "q" or not ungroup:
                return w
            return w.repeat_interleave(group, dim=0)

        def hook(module, args, out):
            parts = proj.split(out)
            delta = state.get("delta_qkv")
            new_parts = []
            for letter, part in zip(proj.letters, parts):
                w, b = proj.weights(letter)
                w, b = expand(w, letter), expand(b, letter)
                if delta is not None:
                    x = state["resid_pre"][:, :, None, :] + delta[QKV.index(letter)].to(out.dtype)
                    norm = self.attn_norm[layer]
                    xn = norm(x) if norm is not None else x
                    part = torch.einsum("bphd,hed->bphe", xn, w)
                    if b is not None:
                        part = part + b
                elif ungroup and letter != "q":
                    part = part.repeat_interleave(group, dim=2)
                new_parts.append(part)
            new = proj.join(new_parts) if (delta is not None or ungroup) else out
            if grads is not None and new.requires_grad:
                if new is out:
                    new = out.clone()
                x_in = state["resid_pre"].detach()

                def on_grad(gout: torch.Tensor) -> None:
                    for letter, gp in zip(proj.letters, proj.split(gout)):
                        w, _ = proj.weights(letter)
                        w = expand(w, letter).detach()
                        grads("qkv", layer, letter, self._head_input_grads(layer, x_in, gp, w))

                new.register_hook(on_grad)
            return None if new is out else new

        return hook
