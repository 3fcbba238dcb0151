"""The classic (nostalgebraist) logit lens: the tokens each layer's residual stream predicts.

Each point of the residual stream at the answer position (``resid_pre`` of every block and the
final ``resid_post``: TransformerLens's ``accumulated_resid(incl_mid=False)``) goes through the
final norm *with its own scale* (TransformerLens's ``accumulated_resid(apply_ln=True)``, i.e.
``apply_ln_to_stack(recompute_ln=True)``: LayerNorm centres, divides by its own σ and applies the
weight and bias; RMSNorm divides by its own root mean square and applies the weight), then through
the unembedding (its bias too) and the family's final soft-cap, and a softmax over the whole
vocabulary. The final point is the model's own output distribution.
"""

from __future__ import annotations

import torch

# The bytes of one chunk's [rows, vocab] float32 probabilities: 32 MB is 160 rows of GPT-2's
# vocabulary, 32 of Gemma's. The lens keeps four times that for the study (logits, probabilities
# and their float64 copy for the sum), made once: 128 MB, what each chunk used to allocate afresh.
CHUNK_BYTES = 32 * 2**20


class TokenLens:
    """Top-k tokens and the running sum of probabilities of each lens point, one batch at a time.

    ``gamma`` / ``beta``: the final norm's weight (offset included) and bias, ``[d]`` float32;
    ``W_U`` ``[vocab, d]`` in the model's dtype and ``b_U`` (or None); ``softcap`` or None.
    """

    def __init__(self, k: int, *, centre: bool, eps: float, gamma: torch.Tensor, beta: torch.Tensor | None,
                 W_U: torch.Tensor, b_U: torch.Tensor | None, softcap: float | None) -> None:
        self.k, self.centre, self.eps = k, centre, eps
        self.gamma, self.beta, self.W_U, self.b_U, self.softcap = gamma, beta, W_U, b_U, softcap
        # [n_points, vocab], summed over prompts in float64 (float32 on MPS, which has none), so that
        # the mean, rounded to float32, does not depend on how batches were split between ranks.
        self.prob_sum: torch.Tensor | None = None
        # [rows, vocab] logits and probabilities, allocated once and reused by every chunk of every
        # batch: a fresh ~32 MB pair per chunk let glibc's heap grow with the number of batches
        # (its mmap threshold rises to the freed size; small per-batch results kept between the big
        # blocks then pin the heap): 10,000 prompts peaked at 0.6-1.9 GB from run to run.
        self._buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._W_U_float: torch.Tensor | None = None

    def normed(self, resid: torch.Tensor) -> torch.Tensor:
        """The final norm applied afresh to residual vectors ``[..., d]`` (float32)."""
        x = resid.float()
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.gamma
        return x if self.beta is None else x + self.beta

    def logits(self, resid: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The lens's logits ``[rows, vocab]`` float32 (soft-capped where the model caps), written
        into ``out`` where given (the same operations in the same order, in place)."""
        if out is None:
            out = torch.empty(resid.shape[0], self.W_U.shape[0], device=self.W_U.device, dtype=torch.float32)
        torch.matmul(self.normed(resid), self._W_U32().T, out=out)
        if self.b_U is not None:
            out.add_(self.b_U.float())
        if self.softcap is not None:
            out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out

    def _W_U32(self) -> torch.Tensor:
        """The unembedding in float32, converted once (``W_U`` itself for a float32 model): a fresh
        copy per chunk of a half-precision model's ``[vocab, d]`` grew the heap as the buffers did."""
        if self._W_U_float is None:
            self._W_U_float = self.W_U.float()
        return self._W_U_float

    def _chunk_buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The logits' and probabilities' ``[rows, vocab]`` float32 buffers, and the probabilities'
        float64 copy that their sum reads (``p.sum(0, dtype=float64)`` made that copy afresh each
        time; summing the kept copy gives the same bits). On MPS, which has no float64, the sum is
        float32 and the third buffer is the second."""
        if self._buffers is None or self._buffers[0].shape[0] < rows:
            shape, dev = (rows, self.W_U.shape[0]), self.W_U.device
            logits, probs = (torch.empty(shape, device=dev, dtype=torch.float32) for _ in range(2))
            wide = probs if dev.type == "mps" else torch.empty(shape, device=dev, dtype=torch.float64)
            self._buffers = (logits, probs, wide)
        return self._buffers

    def top(self, points: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, probs)``, each ``[n_points, k, B]``, for residual points ``[B, d]`` each; adds
        every point's probabilities to :attr:`prob_sum`. One point and at most :data:`CHUNK_BYTES`
        of ``[rows, vocab]`` float32 at a time: the study's batch is sized for its forward pass, and
        thousands of rows times the whole vocabulary would not be bounded by it."""
        vocab = self.W_U.shape[0]
        rows = max(1, CHUNK_BYTES // (4 * vocab))
        ids, probs, sums = [], [], []
        for resid in points:
            resid = resid.to(self.W_U.device)
            i_parts, p_parts = [], []
            total = None
            logits_buf, probs_buf, wide_buf = self._chunk_buffers(min(rows, resid.shape[0]))
            for start in range(0, resid.shape[0], rows):
                chunk = resid[start:start + rows]
                n = chunk.shape[0]
                p = torch.softmax(self.logits(chunk, logits_buf[:n]), dim=-1, out=probs_buf[:n])  # [rows, vocab]
                top = torch.topk(p, self.k, dim=-1)
                i_parts.append(top.indices)
                p_parts.append(top.values)
                part = wide_buf[:n].copy_(p).sum(0) if wide_buf is not probs_buf else p.sum(0)
                total = part if total is None else total + part
                del p
            ids.append(torch.cat(i_parts).T)
            probs.append(torch.cat(p_parts).T)
            sums.append(total)
        stacked = torch.stack(sums)
        self.prob_sum = stacked if self.prob_sum is None else self.prob_sum + stacked
        return torch.stack(ids), torch.stack(probs)
