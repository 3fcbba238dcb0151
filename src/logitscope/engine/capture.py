"""One forward pass per batch; hooks keep only scalars at each prompt's answer position.

Direct logit attribution of a component ``c`` (a vector the model adds to the residual stream) on
the logit difference between tokens A and B is ``c · D / σ`` where

- ``D = γ_f ⊙ (W_U[A] − W_U[B])``, centred over ``d_model`` for LayerNorm (TransformerLens's
  ``tokens_to_residual_directions`` after ``fold_ln``: the final norm's weight is folded in and the
  direction is centred, which is the same as centring every component as ``apply_ln_to_stack``
  does), and
- ``σ`` is the final norm's scale from the real forward pass at that position (frozen).

Because ``D`` is known before the forward pass, each hook projects at once and keeps a few floats
per prompt; ``σ`` is applied afterwards. Heads are projected through their slice of the output
projection: ``head_h = (z_h − b_V_eff[h]) · (W_O[h] D)``, with the value-bias constant moved to the
layer's bias as TransformerLens's ``refactor_factored_attn_matrices`` / ``fold_value_biases`` do.

Beyond that (each an optional adapter answer):

- A norm on a sublayer's output before the residual add (Gemma 2/3, OLMo-2: RMSNorm with weight
  ``γ_p`` and scale ``σ_p``) is linear once its scale is frozen at the prompt's answer position, as
  the final norm's is: the sublayer's parts (heads, biases) are projected on ``γ_p ⊙ D`` and divided
  by that ``σ_p``, so they still add up to what the sublayer writes into the residual stream.
- A final logit soft-cap (Gemma 2) is not linear: the logit difference and its decomposition are
  those of the linear logits before the cap; the capped difference and the probabilities (from the
  model's own, capped, logits) are recorded beside them.
- Mixture-of-experts MLPs (Mixtral): at each answer position the chosen experts are run once more,
  one at a time, through the model's own experts module with their routing weights, so each
  expert's share of the MLP output is projected on ``D`` (zero for experts not routed to); the
  shares add up to the MLP's output.
"""

# Longer than ~400 lines on purpose: the Recorder is one class whose hooks share one batch's state (directions, answer positions, frozen post-norm scales), and tests/test_hot_loop.py reads its hooks as one hot loop; its docstring above is the method's derivation.

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from logitscope.engine.answer_sets import answer_rows, member_logits, set_mean, set_prob
from logitscope.engine.lens import TokenLens
from logitscope.errors import ModelLoadError
from logitscope.models.adapters import norm_eps
from logitscope.models.load import LoadedModel
from logitscope.models.modules import Modules


@dataclass
class BatchScalars:
    """Per-prompt attributions for one batch, unscaled components already divided by σ."""

    logit_diff: torch.Tensor  # [B]
    prob_correct: torch.Tensor  # [B]
    prob_incorrect: torch.Tensor  # [B]
    direct: torch.Tensor  # [B]
    scale: torch.Tensor  # [B]
    embed: torch.Tensor  # [B]
    pos_embed: torch.Tensor | None  # [B]
    attn: torch.Tensor  # [L, B]
    mlp: torch.Tensor  # [L, B]
    heads: torch.Tensor  # [L, H, B]
    attn_bias: torch.Tensor  # [L, B]
    mlp_bias: torch.Tensor  # [L, B]
    final_bias: torch.Tensor  # [B]
    lens_recomputed: torch.Tensor  # [n_lens, B]: each logit-lens point through the final norm afresh
    logit_diff_softcapped: torch.Tensor | None = None  # [B]: the model's capped logits' difference
    experts: torch.Tensor | None = None  # [L, E, B]: each expert's routing-weighted share of mlp
    expert_routing: torch.Tensor | None = None  # [L, E, B]: routing weight, 0 where not routed
    lens_top_ids: torch.Tensor | None = None  # [L + 1, k, B]: the token lens's top-k ids (engine/lens.py)
    lens_top_probs: torch.Tensor | None = None  # [L + 1, k, B]: and their probabilities


def _on(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if x is None else x.detach().to(device=device, dtype=torch.float32)


class Recorder:
    """Installs the study's hooks on a model and turns one batch into :class:`BatchScalars`."""

    def __init__(self, lm: LoadedModel, lens_top_k: int | None = None):
        self.lm = lm
        self.modules = m = Modules.of(lm)
        shape = lm.shape
        self.blocks = m.blocks
        self.centre = m.centre
        self.parallel = m.parallel
        self.eps = m.final_norm_eps()
        gamma, beta = m.final_norm_weight_bias()
        unembed = m.unembed
        self.W_U = unembed.weight  # [V, d] (rows are tokens), native dtype
        self.b_U = getattr(unembed, "bias", None)
        self.out_device = self.W_U.device
        self.gamma = _on(gamma, self.out_device)
        self.beta = _on(beta, self.out_device)
        self.H, self.d_head = shape.n_heads, shape.d_head
        self.softcap = m.softcap
        # Layer 0's resid_pre is the embedding as the model adds it (scaled, for Gemma) wherever a
        # family applies the scale; with learned positions it also holds pos_embed, so those
        # families keep a hook on the token embedding.
        self.embed_from_resid = m.pos_embed is None
        # Constant parts of each attention layer and MLP, as [d_model] float32 vectors on the
        # block's device, and each block's post norms as (weight, eps) or None.
        self.value_bias: list[torch.Tensor | None] = []
        self.attn_bias_vec: list[torch.Tensor] = []
        self.mlp_bias_vec: list[torch.Tensor] = []
        self.attn_post: list[tuple[torch.Tensor, float] | None] = []
        self.mlp_post: list[tuple[torch.Tensor, float] | None] = []
        self.experts = [m.experts(layer) for layer in range(m.n_layers)]
        self.n_experts = m.n_experts if any(e is not None for e in self.experts) else 0
        for layer in range(m.n_layers):
            proj = m.out_proj(layer)
            w_o = m.out_proj_weight(layer)  # [d, H*d_head]
            dev = w_o.device
            bv = m.value_bias(layer)
            bv = _on(bv, dev)
            self.value_bias.append(bv)
            b = _on(getattr(proj, "bias", None), dev)
            total = torch.zeros(shape.d_model, device=dev) if b is None else b.clone()
            if bv is not None:
                total = total + w_o.detach().float() @ bv
            self.attn_bias_vec.append(total)
            mb = _on(m.mlp_out_bias(layer), dev)
            self.mlp_bias_vec.append(torch.zeros(shape.d_model, device=dev) if mb is None else mb)
            self.attn_post.append(self._post_norm(m.attn_post_norm(layer)))
            self.mlp_post.append(self._post_norm(m.mlp_post_norm(layer)))
        self._state: dict[str, object] = {}
        self._handles: list = []
        self._sweep_buffer: torch.Tensor | None = None  # answer_logits's vocabulary chunks, reused
        self.token_lens = None if not lens_top_k else TokenLens(
            lens_top_k, centre=self.centre, eps=self.eps, gamma=self.gamma, beta=self.beta, W_U=self.W_U,
            b_U=self.b_U, softcap=self.softcap)

    def _post_norm(self, norm: nn.Module | None) -> tuple[torch.Tensor, float] | None:
        """A post norm's weight (offset included) and epsilon; only RMSNorm (no centring, no bias)."""
        if norm is None:
            return None
        if isinstance(norm, nn.LayerNorm) or getattr(norm, "bias", None) is not None:
            raise ModelLoadError(f"post norm {type(norm).__name__}: only RMSNorm post norms (no bias) are supported")
        return _on(self.modules.norm_weight(norm), norm.weight.device), norm_eps(norm)

    # -------------------------------------------------------------- directions
    def directions(self, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        """The logit-difference direction ``D`` for each prompt: ``[B, d_model]`` float32. Answers are
        ids ``[B]`` or sets ``[B, K]`` (``-1`` pads): a set's direction is the mean of its members'
        unembedding rows, so ``D`` is that of the mean-logit difference (exact: it is linear)."""
        diff = answer_rows(correct, self.W_U) - answer_rows(incorrect, self.W_U)
        d = diff * self.gamma
        if self.centre:
            d = d - d.mean(-1, keepdim=True)
        return d

    def final_bias_term(self, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        """The final norm's bias and the unembedding bias on the logit difference (each set's mean)."""
        diff = answer_rows(correct, self.W_U) - answer_rows(incorrect, self.W_U)
        term = torch.zeros(diff.shape[0], device=diff.device)
        if self.beta is not None:
            term = term + diff @ self.beta
        if self.b_U is not None:
            term = term + (answer_rows(correct, self.b_U) - answer_rows(incorrect, self.b_U))
        return term

    def answer_logits(
        self, normed: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor, chunk: int = 16384
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two answers' linear logits (before any soft-cap) and the log-sum-exp of the model's
        own logits over the vocabulary (soft-capped where the family caps), in float32, from the
        final normed residual ``[B, d]``. The vocabulary is swept in chunks so neither a float32
        copy of the unembedding nor a ``[B, vocab]`` tensor larger than a chunk is ever held.
        For answer sets (``[B, K]``) the logits are each member's ``[B, K]`` (pads: any value)."""

        def logits(rows: slice) -> torch.Tensor:  # the same operations as capped(normed @ W.T + b), in place
            w = self.W_U[rows]
            out = torch.matmul(normed, w.float().T, out=self._sweep(normed.shape[0], w.shape[0]))
            if self.b_U is not None:
                out.add_(self.b_U[rows].float())
            return out if self.softcap is None else out.div_(self.softcap).tanh_().mul_(self.softcap)

        lc, li = member_logits(normed, correct, self.W_U, self.b_U), member_logits(normed, incorrect, self.W_U, self.b_U)
        def logsumexp(rows: slice) -> torch.Tensor:
            # torch.logsumexp's own steps (max, guarded against ±inf; exp of the difference; sum; log;
            # plus the max), in place in the chunk's buffer: the same bits, no [B, chunk] temporaries
            x = logits(rows)
            m = x.amax(-1, keepdim=True)
            m.masked_fill_(m.abs() == torch.inf, 0)
            return x.sub_(m).exp_().sum(-1).log_().add_(m.squeeze(-1))

        parts = [logsumexp(slice(i, i + chunk)) for i in range(0, self.W_U.shape[0], chunk)]
        return lc, li, torch.logsumexp(torch.stack(parts), dim=0)

    def _sweep(self, rows: int, cols: int) -> torch.Tensor:
        """A ``[rows, cols]`` float32 view of one buffer kept for the study: the vocabulary sweep's
        chunks reuse it batch after batch (fresh blocks of this size let the heap grow with the
        number of batches, as the token lens's did)."""
        need = rows * cols
        if self._sweep_buffer is None or self._sweep_buffer.numel() < need:
            self._sweep_buffer = torch.empty(need, device=self.W_U.device, dtype=torch.float32)
        return self._sweep_buffer[:need].view(rows, cols)

    def capped(self, logits: torch.Tensor) -> torch.Tensor:
        """The family's final soft-cap ``c·tanh(logits / c)``, or ``logits`` where there is none."""
        return logits if self.softcap is None else self.softcap * torch.tanh(logits / self.softcap)

    # -------------------------------------------------------------- hooks
    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x[b, pos_b]`` for each prompt b: [B, T, ...] -> [B, ...] float32."""
        return self._take(x).float()

    def _take(self, x: torch.Tensor) -> torch.Tensor:
        """``x[b, pos_b]`` for each prompt b, in ``x``'s own dtype."""
        rows, pos = self._state["rows"], self._state["pos"]
        if x.shape[0] == 1 and rows.shape[0] > 1:  # e.g. position embeddings broadcast over batch
            return x[0, pos.to(x.device)]
        return x[rows.to(x.device), pos.to(x.device)]

    def _take_flat(self, x: torch.Tensor) -> torch.Tensor:
        """As ``_take`` for tokens flattened to ``[B * T, ...]`` (as MoE layers see them)."""
        return self._take(x.view(self._state["rows"].shape[0], self._state["T"], *x.shape[1:]))

    @staticmethod
    def _through_post_norm(post: tuple[torch.Tensor, float] | None, pre: torch.Tensor, D: torch.Tensor):
        """The direction a sublayer's parts are projected on, and the factor (``1/σ_p`` per prompt,
        or None) they are scaled by, when the sublayer's output ``pre`` ``[B, d]`` passes through a
        post norm with weight ``γ_p``: ``norm(pre)·D = (pre·(γ_p ⊙ D)) / σ_p`` with ``σ_p`` frozen."""
        if post is None:
            return D, None
        weight, eps = post
        return D * weight.to(D.device), torch.rsqrt((pre * pre).mean(-1) + eps)

    @staticmethod
    def _scaled(x: torch.Tensor, inv: torch.Tensor | None) -> torch.Tensor:
        return x if inv is None else x * inv

    def _dir(self, device: torch.device) -> torch.Tensor:
        cache = self._state.setdefault("dir_on", {})
        if device not in cache:
            cache[device] = self._state["dir"].to(device)
        return cache[device]

    def __enter__(self) -> "Recorder":
        m = self.modules
        if not self.embed_from_resid:
            self._handles.append(m.embed.register_forward_hook(self._embed_hook("embed")))
            self._handles.append(m.pos_embed.register_forward_hook(self._embed_hook("pos_embed")))
        for layer, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._block_hook(layer), with_kwargs=True))
            # The output projection sees each head's z; with a post norm, the norm's output is
            # what the layer adds to the residual stream (attn_out), so that is hooked too.
            self._handles.append(m.out_proj(layer).register_forward_hook(self._attn_hook(layer)))
            if self.attn_post[layer] is not None:
                post = m.attn_post_norm(layer)
                self._handles.append(post.register_forward_hook(self._attn_out_hook(layer)))
            self._handles.append(m.mlp(layer).register_forward_hook(self._mlp_hook(layer)))
            if self.mlp_post[layer] is not None:
                post = m.mlp_post_norm(layer)
                self._handles.append(post.register_forward_hook(self._mlp_out_hook(layer)))
            if self.experts[layer] is not None:
                self._handles.append(
                    self.experts[layer].register_forward_hook(self._experts_hook(layer), with_kwargs=True)
                )
        self._handles.append(m.final_norm.register_forward_hook(self._final_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _embed_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            v = self._gather(out)
            self._state[name] = (v * self._dir(v.device)).sum(-1)

        return hook

    def norm_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm's scale σ of residual vectors ``[B, d]`` (centred for LayerNorm)."""
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return torch.sqrt((x * x).mean(-1) + self.eps)

    def _lens_point(self, resid: torch.Tensor) -> None:
        """Project one accumulated residual ``[B, d]`` through the final norm with its own scale."""
        value = (resid * self._dir(resid.device)).sum(-1) / self.norm_scale(resid)
        self._state["lens_recomputed"].append(value.to(self.out_device))

    def _block_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            resid = self._gather(args[0] if args else kwargs["hidden_states"])  # resid_pre
            self._state["resid_pre"] = resid
            if layer == 0 and self.embed_from_resid:
                self._state["embed"] = (resid * self._dir(resid.device)).sum(-1)
            self._lens_point(resid)
            if self.token_lens is not None:
                self._state["lens_points"].append(resid)

        return hook

    def _attn_hook(self, layer: int):
        """On the output projection: each head's share and the layer's bias term (through the
        frozen post norm where there is one); without a post norm, also attn_out itself."""
        w_fn = self.modules.out_proj_weight

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            z = self._gather(args[0])  # [B, H*d_head]
            a = self._gather(out if isinstance(out, torch.Tensor) else out[0])  # [B, d]
            D, inv = self._through_post_norm(self.attn_post[layer], a, self._dir(z.device))
            bv = self.value_bias[layer]
            if bv is not None:
                z = z - bv
            per_dim = z * (D @ w_fn(layer).float())  # [B, H*d_head]
            heads = self._scaled(per_dim.view(z.shape[0], self.H, self.d_head).sum(-1).T, inv)
            self._state["heads"][layer] = heads.to(self.out_device)
            bias = self._scaled((self.attn_bias_vec[layer] * D).sum(-1), inv)
            self._state["attn_bias"][layer] = bias.to(self.out_device)
            if self.attn_post[layer] is None:
                self._attn_out(layer, a)

        return hook

    def _attn_out_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:  # on the post norm
            self._attn_out(layer, self._gather(out))

        return hook

    def _attn_out(self, layer: int, a: torch.Tensor) -> None:
        """What the attention layer adds to the residual stream, ``a`` ``[B, d]``."""
        self._state["attn"][layer] = (a * self._dir(a.device)).sum(-1).to(self.out_device)
        if not self.parallel:  # resid_mid = resid_pre + attn_out
            self._lens_point(self._state.pop("resid_pre").to(a.device) + a)

    def _mlp_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            m = self._gather(out if isinstance(out, torch.Tensor) else out[0])
            D, inv = self._through_post_norm(self.mlp_post[layer], m, self._dir(m.device))
            self._state["mlp_bias"][layer] = self._scaled((self.mlp_bias_vec[layer] * D).sum(-1), inv).to(self.out_device)
            if self.mlp_post[layer] is None:
                self._state["mlp"][layer] = (m * D).sum(-1).to(self.out_device)

        return hook

    def _mlp_out_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:  # on the post norm
            m = self._gather(out)
            self._state["mlp"][layer] = (m * self._dir(m.device)).sum(-1).to(self.out_device)

        return hook

    def _experts_hook(self, layer: int):
        """On a MoE experts module: rerun each chosen expert alone, at the answer positions only,
        through the module's own forward (whatever experts implementation the model uses; calling
        ``forward`` directly does not re-enter this hook), and project its weighted output."""
        experts = self.experts[layer]

        def hook(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
            names = ("hidden_states", "top_k_index", "top_k_weights")
            x, index, weights = (args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names))
            x, index, weights = (self._take_flat(t) for t in (x, index, weights))  # [B, d], [B, k], [B, k]
            D = self._dir(x.device)
            shares = torch.zeros(x.shape[0], self.n_experts, device=x.device)
            for j in range(index.shape[1]):
                y = experts.forward(x, index[:, j : j + 1], weights[:, j : j + 1])  # routing weight included
                shares.scatter_add_(1, index[:, j : j + 1], (y.float() * D).sum(-1, keepdim=True))
            routing = torch.zeros_like(shares).scatter_add_(1, index, weights.float())
            self._state["experts"][layer] = shares.T.to(self.out_device)
            self._state["expert_routing"][layer] = routing.T.to(self.out_device)

        return hook

    def _final_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self._state["resid_final"] = self._gather(args[0])
        self._state["normed_final"] = self._gather(out)

    def _per_expert(self, name: str, B: int) -> torch.Tensor:
        """``[L, E, B]`` from the experts hooks' rows (zero for a layer without experts)."""
        zero = torch.zeros(self.n_experts, B, device=self.out_device)
        return torch.stack([zero if x is None else x for x in self._state[name]])

    # -------------------------------------------------------------- one batch
    @torch.inference_mode()
    def run_batch(
        self, input_ids: torch.Tensor, answer_pos: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor
    ) -> BatchScalars:
        """Forward ``input_ids`` ([B, T], right-padded) and attribute at ``answer_pos`` ([B])."""
        B, L = input_ids.shape[0], len(self.blocks)
        dev = self.out_device
        correct, incorrect = correct.to(dev), incorrect.to(dev)
        D = self.directions(correct, incorrect)
        self._state = {
            "rows": torch.arange(B, device=input_ids.device),
            "pos": answer_pos.to(input_ids.device),
            "T": input_ids.shape[1],
            "dir": D,
            "heads": [None] * L,
            "attn": [None] * L,
            "mlp": [None] * L,
            "attn_bias": [None] * L,
            "mlp_bias": [None] * L,
            "experts": [None] * L,
            "expert_routing": [None] * L,
            "lens_recomputed": [],
            "lens_points": [],
        }
        # Right padding needs no attention mask: a causal model's real tokens never see later pads.
        self.modules.base(input_ids=input_ids, use_cache=False)
        st = self._state
        r = st["resid_final"].to(dev)
        scale = self.norm_scale(r)  # the final norm's σ at the answer position
        lc, li, lse = self.answer_logits(st["normed_final"].to(dev), correct, incorrect)
        capped_c, capped_i = self.capped(lc), self.capped(li)  # the model's own logits
        mean_c, mean_i = set_mean(lc, correct), set_mean(li, incorrect)
        inv = 1.0 / scale
        top = (None, None) if self.token_lens is None else self.token_lens.top(st["lens_points"] + [r])
        out = BatchScalars(
            logit_diff=mean_c - mean_i,  # linear logits: the decomposition below adds up to this
            prob_correct=set_prob(capped_c, lse, correct),  # an answer set's: its probability mass
            prob_incorrect=set_prob(capped_i, lse, incorrect),
            direct=(r * D).sum(-1) * inv,
            scale=scale,
            embed=st["embed"].to(dev) * inv,
            pos_embed=st["pos_embed"].to(dev) * inv if "pos_embed" in st else None,
            attn=torch.stack(st["attn"]) * inv,
            mlp=torch.stack(st["mlp"]) * inv,
            heads=torch.stack(st["heads"]) * inv,
            attn_bias=torch.stack(st["attn_bias"]) * inv,
            mlp_bias=torch.stack(st["mlp_bias"]) * inv,
            final_bias=self.final_bias_term(correct, incorrect),
            lens_recomputed=torch.stack(st["lens_recomputed"] + [(r * D).sum(-1) * inv]),
            logit_diff_softcapped=None if self.softcap is None else (
                set_mean(capped_c, correct) - set_mean(capped_i, incorrect)),
            experts=None if not self.n_experts else self._per_expert("experts", B) * inv,
            expert_routing=None if not self.n_experts else self._per_expert("expert_routing", B),
            lens_top_ids=top[0],
            lens_top_probs=top[1],
        )
        self._state = {}
        return out
