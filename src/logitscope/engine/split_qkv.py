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

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from logitscope.engine.nodes import QKV, NodeLayout  # the layout is all the runner reads
from logitscope.models.adapters import norm_eps
from logitscope.models.modules import Modules
from logitscope.models.qkv import QKVProjection
from logitscope.models.state import study_mode

# (kind, layer) -> tensor: "qkv" [3, b, p, H, d]; "mlp", "logits" [b, p, d]
DeltaFn = Callable[[str, int], "torch.Tensor | None"]
# called with (kind, layer, letter or "", gradient [n, b, p, d], node-major) during backward
GradFn = Callable[[str, int, str, torch.Tensor], None]
# called with (first forward index, output [b, p, n, d]) as each group of nodes writes
RecordFn = Callable[[int, torch.Tensor], None]


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


class EdgeRunner:
    """Hooks of one loaded model for edge attribution (see the module docstring)."""

    def __init__(self, lm, graph: NodeLayout | None = None):
        self.lm = lm
        self.graph = graph or NodeLayout.from_model(lm)
        self.modules = m = Modules.of(lm)
        self.blocks = m.blocks
        self.H, self.dh, self.d = lm.shape.n_heads, lm.shape.d_head, lm.shape.d_model
        layers = range(m.n_layers)
        self.attn = [m.attention(layer) for layer in layers]
        self.n_kv = m.n_kv_heads
        self.proj = [m.qkv(layer) for layer in layers]
        self.attn_norm = [m.attn_norm(layer) for layer in layers]
        self.mlp_in = [m.mlp_input(layer) for layer in layers]
        self.final_norm = m.final_norm
        self.embed = m.embed

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
        layer_norm = self.modules.centre
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
        ungroup = self.n_kv != self.H
        group = self.H // self.n_kv
        with ExitStack() as stack:
            # Dropout off while attached; afterwards every module's own training flag as it was
            # (model.train() would have switched on modules the user had in eval mode).
            stack.enter_context(study_mode(self.lm.model))

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
        name = self.modules.key_norm_over_heads
        if name is not None:
            norm = getattr(attn, name)
            stack.callback(setattr, attn, name, norm)
            setattr(attn, name, _RepeatedNorm(norm, group, self.dh))

    def _attach_layer(self, hook, layer, block, state, record, replace, deltas, grads, ungroup, group):
        m = self.modules
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
        out_proj = m.out_proj(layer)
        post = m.attn_post_norm(layer)
        w_o = m.out_proj_weight(layer)  # [d_model, H d_head]

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

        mlp_out = m.mlp_out(layer)

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

    def _projection_hook(self, layer, proj: QKVProjection, state, grads, ungroup, group):

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
