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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from logitscope.models.load import LoadedModel


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


def _on(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if x is None else x.detach().to(device=device, dtype=torch.float32)


class Recorder:
    """Installs the study's hooks on a model and turns one batch into :class:`BatchScalars`."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        ad, model, shape = lm.adapter, lm.model, lm.shape
        self.blocks = list(ad.blocks(model))
        self.centre = ad.norm == "LayerNorm"
        self.parallel = ad.parallel_attn_mlp(model.config)
        self.eps = ad.final_norm_eps(model)
        gamma, beta = ad.final_norm_weight_bias(model)
        unembed = ad.unembed(model)
        self.W_U = unembed.weight  # [V, d] (rows are tokens), native dtype
        self.b_U = getattr(unembed, "bias", None)
        self.out_device = self.W_U.device
        self.gamma = _on(gamma, self.out_device)
        self.beta = _on(beta, self.out_device)
        self.H, self.d_head = shape.n_heads, shape.d_head
        # Constant parts of each attention layer and MLP, as [L, d_model] float32 vectors.
        self.value_bias: list[torch.Tensor | None] = []
        attn_bias, mlp_bias = [], []
        for block in self.blocks:
            proj = ad.out_proj(block)
            w_o = ad.out_proj_weight(block)  # [d, H*d_head]
            dev = w_o.device
            bv = ad.value_bias(block, shape)
            bv = _on(bv, dev)
            self.value_bias.append(bv)
            b = _on(getattr(proj, "bias", None), dev)
            total = torch.zeros(shape.d_model, device=dev) if b is None else b.clone()
            if bv is not None:
                total = total + w_o.detach().float() @ bv
            attn_bias.append(total.to(self.out_device))
            mb = _on(ad.mlp_out_bias(block), self.out_device)
            mlp_bias.append(torch.zeros(shape.d_model, device=self.out_device) if mb is None else mb)
        self.attn_bias_vec = torch.stack(attn_bias)
        self.mlp_bias_vec = torch.stack(mlp_bias)
        self._state: dict[str, object] = {}
        self._handles: list = []

    # -------------------------------------------------------------- directions
    def directions(self, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        """The logit-difference direction ``D`` for each prompt: ``[B, d_model]`` float32."""
        diff = (self.W_U[correct].float() - self.W_U[incorrect].float())
        d = diff * self.gamma
        if self.centre:
            d = d - d.mean(-1, keepdim=True)
        return d

    def final_bias_term(self, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
        diff = self.W_U[correct].float() - self.W_U[incorrect].float()
        term = torch.zeros(diff.shape[0], device=diff.device)
        if self.beta is not None:
            term = term + diff @ self.beta
        if self.b_U is not None:
            term = term + (self.b_U[correct].float() - self.b_U[incorrect].float())
        return term

    def answer_logits(
        self, normed: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor, chunk: int = 16384
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two answers' logits and the log-sum-exp over the vocabulary, in float32, from the
        final normed residual ``[B, d]``. The vocabulary is swept in chunks so neither a float32
        copy of the unembedding nor a ``[B, vocab]`` tensor larger than a chunk is ever held."""

        def logits(rows: torch.Tensor | slice) -> torch.Tensor:
            out = normed @ self.W_U[rows].float().T
            return out if self.b_U is None else out + self.b_U[rows].float()

        lc = (normed * self.W_U[correct].float()).sum(-1)
        li = (normed * self.W_U[incorrect].float()).sum(-1)
        if self.b_U is not None:
            lc, li = lc + self.b_U[correct].float(), li + self.b_U[incorrect].float()
        parts = [torch.logsumexp(logits(slice(i, i + chunk)), dim=-1) for i in range(0, self.W_U.shape[0], chunk)]
        return lc, li, torch.logsumexp(torch.stack(parts), dim=0)

    # -------------------------------------------------------------- hooks
    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x[b, pos_b]`` for each prompt b: [B, T, ...] -> [B, ...] float32."""
        rows, pos = self._state["rows"], self._state["pos"]
        if x.shape[0] == 1 and rows.shape[0] > 1:  # e.g. position embeddings broadcast over batch
            return x[0, pos.to(x.device)].float()
        return x[rows.to(x.device), pos.to(x.device)].float()

    def _dir(self, device: torch.device) -> torch.Tensor:
        cache = self._state.setdefault("dir_on", {})
        if device not in cache:
            cache[device] = self._state["dir"].to(device)
        return cache[device]

    def __enter__(self) -> "Recorder":
        ad, model = self.lm.adapter, self.lm.model
        self._handles.append(ad.embed(model).register_forward_hook(self._embed_hook("embed")))
        pos = ad.pos_embed(model)
        if pos is not None:
            self._handles.append(pos.register_forward_hook(self._embed_hook("pos_embed")))
        for layer, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._block_hook(layer), with_kwargs=True))
            self._handles.append(ad.out_proj(block).register_forward_hook(self._attn_hook(layer)))
            self._handles.append(ad.mlp(block).register_forward_hook(self._mlp_hook(layer)))
        self._handles.append(ad.final_norm(model).register_forward_hook(self._final_hook))
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
            self._lens_point(resid)

        return hook

    def _attn_hook(self, layer: int):
        w_fn = self.lm.adapter.out_proj_weight
        block = self.blocks[layer]

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            z = self._gather(args[0])  # [B, H*d_head]
            a = self._gather(out if isinstance(out, torch.Tensor) else out[0])  # [B, d]
            D = self._dir(z.device)
            bv = self.value_bias[layer]
            if bv is not None:
                z = z - bv
            per_dim = z * (D @ w_fn(block).float())  # [B, H*d_head]
            self._state["heads"][layer] = per_dim.view(z.shape[0], self.H, self.d_head).sum(-1).T.to(self.out_device)
            self._state["attn"][layer] = (a * D).sum(-1).to(self.out_device)
            if not self.parallel:  # resid_mid = resid_pre + attn_out
                self._lens_point(self._state.pop("resid_pre").to(a.device) + a)

        return hook

    def _mlp_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            m = self._gather(out if isinstance(out, torch.Tensor) else out[0])
            self._state["mlp"][layer] = (m * self._dir(m.device)).sum(-1).to(self.out_device)

        return hook

    def _final_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self._state["resid_final"] = self._gather(args[0])
        self._state["normed_final"] = self._gather(out)

    # -------------------------------------------------------------- one batch
    @torch.inference_mode()
    def run_batch(
        self, input_ids: torch.Tensor, answer_pos: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor
    ) -> BatchScalars:
        """Forward ``input_ids`` ([B, T], right-padded) and attribute at ``answer_pos`` ([B])."""
        B, L, H = input_ids.shape[0], len(self.blocks), self.H
        dev = self.out_device
        correct, incorrect = correct.to(dev), incorrect.to(dev)
        D = self.directions(correct, incorrect)
        self._state = {
            "rows": torch.arange(B, device=input_ids.device),
            "pos": answer_pos.to(input_ids.device),
            "dir": D,
            "heads": [None] * L,
            "attn": [None] * L,
            "mlp": [None] * L,
            "lens_recomputed": [],
        }
        # Right padding needs no attention mask: a causal model's real tokens never see later pads.
        self.lm.adapter.base(self.lm.model)(input_ids=input_ids, use_cache=False)
        st = self._state
        r = st["resid_final"].to(dev)
        scale = self.norm_scale(r)  # the final norm's σ at the answer position
        lc, li, lse = self.answer_logits(st["normed_final"].to(dev), correct, incorrect)
        inv = 1.0 / scale
        out = BatchScalars(
            logit_diff=lc - li,
            prob_correct=(lc - lse).exp(),
            prob_incorrect=(li - lse).exp(),
            direct=(r * D).sum(-1) * inv,
            scale=scale,
            embed=st["embed"].to(dev) * inv,
            pos_embed=st["pos_embed"].to(dev) * inv if "pos_embed" in st else None,
            attn=torch.stack(st["attn"]) * inv,
            mlp=torch.stack(st["mlp"]) * inv,
            heads=torch.stack(st["heads"]) * inv,
            attn_bias=(self.attn_bias_vec @ D.T) * inv,
            mlp_bias=(self.mlp_bias_vec @ D.T) * inv,
            final_bias=self.final_bias_term(correct, incorrect),
            lens_recomputed=torch.stack(st["lens_recomputed"] + [(r * D).sum(-1) * inv]),
        )
        self._state = {}
        return out
