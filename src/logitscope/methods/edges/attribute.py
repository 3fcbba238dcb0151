"""Edge scores: EAP, EAP-IG (inputs, activations), clean-corrupted and exact edge patching.

The score of an edge is the change of the metric when that edge alone carries the corrupted
value (exact), or its first-order estimate: the sum over positions and d_model of
``(corrupted − clean output of the parent) · ∂metric/∂(the child's input)``, averaged over prompts.
Conventions, as the EAP-IG library's (``hannamw/EAP-IG``):

- prompts are right-padded (BOS prepended by the caller, as the library's tokenizer call does);
- the metric is summed over a batch's prompts and the scores divided by the number of prompts, so
  they do not depend on the batch size (the library's ``mean=True`` metrics with batches of B give
  1/B of these);
- ``eap-ig-inputs``: gradients averaged over k = 0 … m−1 with the input embeddings at
  corrupted + (k/m)(clean − corrupted) (the corrupted end included, the clean end not);
- ``eap-ig-activations``: for each of the 2L + 1 node groups (``input``, each attention layer's
  heads together, each MLP) in turn, its output set to (k/m)·clean + (1 − k/m)·corrupted for
  k = 1 … m (a constant: no gradient flows through it); everything divided by m·(2L + 1);
- ``clean-corrupted``: the gradients at the clean and at the corrupted prompt, averaged;
- the sign is the change of the metric (the library is usually called with a loss, the negated
  metric, and MIB's published scores are its ``mean=True`` scores over batches of 20: −1/20 of ours).

Interventions (what "corrupted" means): ``patching`` (the counterpart prompt's outputs), ``mean``
(each node's output averaged over the counterparts' positions and prompts), ``mean-positional``
(averaged over the counterparts at each position) and ``zero``. ``eap-ig-inputs`` and
``clean-corrupted`` interpolate or run prompts and so take ``patching`` only, as in the library.
"""

# Longer than ~400 lines on purpose: the five scoring methods (eap, eap-ig-inputs, eap-ig-activations, clean-corrupted, exact), their metrics and interventions share one batch loop and one node-major buffer layout, which the gradient runs and the circuit runs both index.

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from logitscope.engine.metrics import METRICS, MetricContext, MetricLike, resolve_metric  # noqa: F401 (METRICS: the edges' names)
from logitscope.methods.edges.sums import ExactSum
from logitscope.results.edge_graph import QKV, EdgeGraph
from logitscope.methods.edges.runner import EdgeRunner
from logitscope.errors import ArgumentError, InputError

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "exact")
INTERVENTIONS = ("patching", "mean", "mean-positional", "zero")
PATCHING_ONLY = ("eap-ig-inputs", "clean-corrupted")


# ---------------------------------------------------------------------- prompts as token ids
@dataclass
class EdgeData:
    """Token ids of each prompt (BOS already prepended) and its counterpart (same length), and
    the clean answers' ids ``[N]`` or answer sets ``[N, K]`` padded with ``-1``."""

    clean: list[list[int]]
    corrupted: list[list[int]] | None
    correct: np.ndarray
    incorrect: np.ndarray
    pad_id: int = 0

    def __post_init__(self) -> None:
        self.correct = np.asarray(self.correct, dtype=np.int64)
        self.incorrect = np.asarray(self.incorrect, dtype=np.int64)
        if not len(self.correct) == len(self.incorrect) == len(self.clean):
            raise InputError(f"{len(self.clean)} prompts but {len(self.correct)} correct and {len(self.incorrect)} "
                             "incorrect answers: give one of each per prompt")
        if self.corrupted is not None:
            if len(self.corrupted) != len(self.clean):
                raise InputError(f"{len(self.corrupted)} counterparts for {len(self.clean)} prompts: give one each")
            for i, (c, x) in enumerate(zip(self.clean, self.corrupted)):
                if len(c) != len(x):
                    raise InputError(f"prompt {i}: its counterpart is {len(x)} tokens but the prompt is {len(c)}; "
                                     "a counterpart must have the same number of tokens so that positions align")

    @property
    def n(self) -> int:
        return len(self.clean)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.clean], dtype=np.int64)

    def order(self) -> np.ndarray:
        """The prompts longest first (stable): batches of similar lengths, the largest batch first
        (so that a batch size too large fails at once)."""
        return np.argsort(-self.lengths, kind="stable")

    def batches(self, batch_size: int, device: torch.device, ranks=None) -> Iterator["Batch"]:
        """Batches of ``batch_size`` prompts in :meth:`order`; with ``ranks``, only this rank's (each
        batch the one a single process would run)."""
        order = self.order()
        for i, start in enumerate(range(0, self.n, batch_size)):
            if ranks is None or ranks.mine(i):
                yield Batch.of(self, order[start:start + batch_size], device)


@dataclass
class Batch:
    """Right-padded ids of some prompts, their mask, lengths and answers."""

    index: np.ndarray
    clean: torch.Tensor
    corrupted: torch.Tensor | None
    mask: torch.Tensor
    lengths: torch.Tensor
    correct: torch.Tensor
    incorrect: torch.Tensor

    @classmethod
    def of(cls, data: EdgeData, index: Sequence[int], device: torch.device) -> "Batch":
        index = np.asarray(list(index))
        lengths = [len(data.clean[i]) for i in index]
        width = max(lengths)

        def pad(rows):
            return torch.tensor([r + [data.pad_id] * (width - len(r)) for r in rows], dtype=torch.long, device=device)

        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], dtype=torch.long, device=device)
        return cls(index, pad([data.clean[i] for i in index]),
                   None if data.corrupted is None else pad([data.corrupted[i] for i in index]), mask,
                   torch.tensor(lengths, device=device), torch.as_tensor(data.correct[index], device=device),
                   torch.as_tensor(data.incorrect[index], device=device))

    @property
    def size(self) -> int:
        return len(self.index)


# ---------------------------------------------------------------------- metrics
# The metrics are engine/metrics.py's, one definition for every method: a metric reads the logits
# at each prompt's answer position (``[b, d_vocab]`` float32) with the answers (ids or sets) and the
# clean run's logits there (``MetricContext.reference``, what ``kl`` compares with).


def check_options(method: str, steps: int | None, intervention: str) -> int:
    """The options' errors before any forward pass; returns the number of steps used."""
    if method not in METHODS:
        raise ArgumentError("method", method, f"unknown method; use one of {', '.join(METHODS)}")
    if intervention not in INTERVENTIONS:
        raise ArgumentError("intervention", intervention, f"unknown intervention; use one of {', '.join(INTERVENTIONS)}")
    if method in PATCHING_ONLY and intervention != "patching":
        raise ArgumentError("intervention", intervention, f"{method} runs the counterpart prompts, so it takes "
                            "intervention='patching' only", fix="patching")
    if method in ("eap-ig-inputs", "eap-ig-activations"):
        steps = 5 if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ArgumentError("steps", steps, "must be a whole number, at least 1")
        return steps
    return 1


# ---------------------------------------------------------------------- the engine
class EdgeEngine:
    """Edge scores and circuit runs of one model over one prompt set.

    ``ranks`` (:func:`logitscope.engine.distributed.current`): in a process group, each rank runs its
    share of the batches (the single process's batches, dealt out); scores and means are summed over
    ranks exactly (:class:`~logitscope.methods.edges.sums.ExactSum`) and per-prompt metrics put back
    in prompt order on every rank, so every rank holds the single process's numbers.
    ``progress(k)``: called with the number of prompts of each batch run."""

    def __init__(self, lm, data: EdgeData, *, intervention: str = "patching", metric: MetricLike = None,
                 batch_size: int = 8, graph: EdgeGraph | None = None, ranks=None,
                 progress: Callable[[int], None] | None = None):
        if intervention not in INTERVENTIONS:
            raise ArgumentError("intervention", intervention, f"unknown intervention; use one of {', '.join(INTERVENTIONS)}")
        if data.corrupted is None and intervention != "zero":
            raise InputError(f"intervention={intervention!r} needs each prompt's counterpart (a 'corrupted' field, "
                             "or corrupt='abc'/'flip' for IOI prompts); intervention='zero' needs none")
        self.lm, self.data, self.intervention = lm, data, intervention
        self.metric = resolve_metric(metric)
        self.batch_size = batch_size
        self.ranks = ranks
        self.progress = progress
        self.runner = EdgeRunner(lm, graph)
        self.graph = self.runner.graph
        self.device = next(lm.model.parameters()).device
        self._means: torch.Tensor | None = None

    def _prepare(self) -> None:
        """The means, before any batch (every rank takes part in their sum, whether it has batches or not)."""
        if self.intervention in ("mean", "mean-positional"):
            self.means()

    def _batches(self) -> Iterator[Batch]:
        for batch in self.data.batches(self.batch_size, self.device, self.ranks):
            yield batch
            if self.progress is not None:
                self.progress(batch.size)
            if self.ranks is not None:
                self.ranks.poll()  # another rank failed: stop now, not after this rank's share

    # ------------------------------------------------------------ plain runs
    # Node outputs are kept node-major, ``[n_forward, b, pos, d]``: a child's share of them is then
    # one contiguous ``[prev, b·pos·d]`` matrix, and each gradient's scores or each circuit run's
    # deltas are one matrix product, with no copy of the buffer per child.
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | int | None = None) -> torch.Tensor:
        """The logits; with ``keep``, only at those positions where the model can (Hugging Face's
        ``logits_to_keep``: an int keeps the last positions, a ``[b, k]`` tensor those of each
        prompt): the unembedding of the other positions is skipped."""
        if keep is not None and self._keeps_logits:
            logits = self.lm.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
            want = keep if isinstance(keep, int) else keep.shape[1]
            if logits.shape[1] == want:
                return logits
            raise RuntimeError(f"the model returned logits at {logits.shape[1]} positions for logits_to_keep={want}")
        return self.lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    @property
    def _keeps_logits(self) -> bool:
        """Whether the model's forward takes ``logits_to_keep`` (every causal LM of transformers 5)."""
        if not hasattr(self, "_keeps"):
            import inspect

            self._keeps = "logits_to_keep" in inspect.signature(self.lm.model.forward).parameters
        return self._keeps

    def _answer_keep(self, batch: Batch) -> torch.Tensor | None:
        """``logits_to_keep`` for a metric run: each prompt's answer position (every metric, a
        callable's too, reads the logits only there); None (every position) where the model cannot."""
        return (batch.lengths - 1)[:, None] if self._keeps_logits else None

    @staticmethod
    def _at_answer(logits: torch.Tensor, batch: Batch, keep: torch.Tensor | None) -> torch.Tensor:
        """The logits at each prompt's answer position, ``[b, d_vocab]`` float32 (with ``keep``, the
        only position the run kept)."""
        if keep is not None:
            return logits[:, 0].float()
        return logits[torch.arange(logits.shape[0], device=logits.device), batch.lengths - 1].float()

    def _context(self, batch: Batch, clean_logits: torch.Tensor, keep: torch.Tensor | None) -> MetricContext:
        """The metric's context: the batch's answers and the clean run's logits at the answer."""
        return MetricContext(batch.correct, batch.incorrect, reference=self._at_answer(clean_logits, batch, keep))

    def _measure(self, logits: torch.Tensor, batch: Batch, ctx: MetricContext, keep: torch.Tensor | None
                 ) -> torch.Tensor:
        """The metric of each prompt of ``batch`` ``[b]`` from a run's logits (``keep`` as that run's)."""
        return self.metric(self._at_answer(logits, batch, keep), ctx)

    def _buffer(self, batch: Batch) -> torch.Tensor:
        return torch.empty(self.graph.n_forward, *batch.clean.shape, self.runner.d, dtype=self._dtype(),
                           device=self.device)

    @torch.no_grad()
    def _record(self, batch: Batch, ids: torch.Tensor, keep: torch.Tensor | int | None = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node's output ``[n_forward, b, pos, d]`` and the logits (at ``keep``: by default the
        last position only, for runs whose logits are not read) of a plain run."""
        outs = self._buffer(batch)

        def record(f0: int, out: torch.Tensor) -> None:
            outs[f0:f0 + out.shape[2]] = out.permute(2, 0, 1, 3)

        with self.runner.attach(record=record):
            logits = self._forward(ids, batch.mask, keep)
        return outs, logits

    def _dtype(self) -> torch.dtype:
        return next(self.lm.model.parameters()).dtype

    def means(self) -> torch.Tensor:
        """The counterparts' mean output of each node: ``[n_forward, d]`` (``mean``) or
        ``[pos, n_forward, d]`` (``mean-positional``, over the counterparts that have the position);
        over every rank's counterparts, the same on every rank."""
        if self._means is None:
            g, d = self.graph, self.runner.d
            width = int(self.data.lengths.max())
            positional = self.intervention == "mean-positional"
            total = ExactSum((width, g.n_forward, d) if positional else (g.n_forward, d))
            count = np.zeros(width, dtype=np.int64)
            for batch in self.data.batches(self.batch_size, self.device, self.ranks):
                outs, _ = self._record(batch, batch.corrupted)
                masked = outs * batch.mask.to(outs.dtype)[None, :, :, None]
                p = outs.shape[2]
                if positional:
                    total.add(masked.sum(1).transpose(0, 1), (slice(0, p),))
                else:
                    total.add(masked.sum((1, 2)))
                count[:p] += batch.mask.sum(0).cpu().numpy()
                if self.ranks is not None:
                    self.ranks.poll()
            total.across(self.ranks, "the sum of the counterparts' node outputs")
            if self.ranks is not None:
                count = self.ranks.exchange(count, "the count of the counterparts' positions", combine=sum)
            counts = torch.as_tensor(count, dtype=torch.float64)
            if positional:
                means = total.value() / counts.clamp(min=1)[:, None, None]
            else:
                means = total.value() / counts.sum()
            self._means = means.to(device=self.device, dtype=self._dtype())
        return self._means

    def corrupted_outputs(self, batch: Batch) -> torch.Tensor:
        """What each node's output is under the intervention: ``[n_forward, b, pos, d]`` (a new tensor)."""
        if self.intervention == "patching":
            return self._record(batch, batch.corrupted)[0]
        out = self._buffer(batch)
        if self.intervention == "zero":
            return out.zero_()
        means = self.means()
        if self.intervention == "mean":
            out.copy_(means[:, None, None, :])
        else:
            out.copy_(means[: out.shape[2]].transpose(0, 1)[:, None])
        return out

    # ------------------------------------------------------------ gradients
    def _gradient(self, batch: Batch, diff: torch.Tensor, scores: ExactSum, ctx: MetricContext | None,
                  keep: torch.Tensor | None, *, ids: torch.Tensor | None = None, replace: dict | None = None,
                  record=None) -> None:
        """One forward and backward; adds ``diff · ∂Σmetric/∂(child input)`` to ``scores``.

        ``diff`` ``[n_forward, b, pos, d]``: corrupted − clean outputs, complete by the backward
        (``record``, called with this run's node outputs, may finish it during the forward).
        ``ctx`` None: the metric's clean logits are this run's own."""
        g = self.graph
        flat = diff.view(g.n_forward, -1)
        flat = flat if flat.dtype == torch.float32 else None
        parts = {"flat": flat}

        def on_grad(kind: str, layer: int, letter: str, grad: torch.Tensor) -> None:
            if kind == "qkv":
                prev, b0 = g.attn_prev(layer), g.qkv_index(layer, letter)
            elif kind == "mlp":
                prev, b0 = g.mlp_prev(layer), g.mlp_in_index(layer)
            else:
                prev, b0 = g.logits_prev, g.logits_index
            if parts["flat"] is None:  # a half-precision model: the products in float32, converted once
                parts["flat"] = diff.view(g.n_forward, -1).float()
            n = grad.shape[0]
            s = parts["flat"][:prev] @ grad.float().reshape(n, -1).T
            scores.add(s, (slice(0, prev), slice(b0, b0 + n)))

        with torch.enable_grad(), self.runner.attach(grads=on_grad, replace=replace, input_leaf=True,
                                                     record=record) as state:
            logits = self._forward(batch.clean if ids is None else ids, batch.mask, keep)
            if ctx is None:
                ctx = self._context(batch, logits.detach(), keep)
            value = self._measure(logits, batch, ctx, keep).sum()
            torch.autograd.grad(value, [state["leaf"]], allow_unused=True)

    def scores(self, method: str = "eap", steps: int | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """``[n_forward, n_backward]`` float64 scores of every edge (0 where there is no edge).

        Memory: one batch's node outputs at a time (``[n_forward, b, pos, d]``, the batch's own
        length; two such buffers at most), whatever the number of prompts or of IG steps."""
        steps = check_options(method, steps, self.intervention)
        if progress is not None:
            self.progress = progress
        g = self.graph
        self._prepare()
        if method == "exact":
            return self._exact()
        total = ExactSum((g.n_forward, g.n_backward))
        for batch in self._batches():
            self._score_batch(method, steps, batch, total)
        total.across(self.ranks, "the sum of the edge scores")
        divisor = {"eap": 1, "clean-corrupted": 2, "eap-ig-inputs": steps,
                   "eap-ig-activations": steps * (2 * g.n_layers + 1)}[method]
        return total.value() / (divisor * self.data.n) * g.real

    @staticmethod
    def _into(diff: torch.Tensor, sign: float):
        """A record function that adds ``sign ×`` each node output to ``diff`` (in place)."""
        def record(f0: int, out: torch.Tensor) -> None:
            diff[f0:f0 + out.shape[2]].add_(out.permute(2, 0, 1, 3), alpha=sign)
        return record

    def _score_batch(self, method: str, steps: int, batch: Batch, total: ExactSum) -> None:
        """One batch's scores. The clean (or, for IG, corrupted) outputs are recorded in the first
        gradient run itself, so that EAP costs one recording run and one gradient run."""
        keep = self._answer_keep(batch)
        if method == "eap":  # diff = corrupted, minus the clean outputs as the gradient run makes them
            diff = self.corrupted_outputs(batch)
            self._gradient(batch, diff, total, None, keep, record=self._into(diff, -1.0))
            return
        clean_outs, clean_logits = self._record(batch, batch.clean, keep)
        ctx = self._context(batch, clean_logits, keep)
        if method == "eap-ig-activations":
            diff = self.corrupted_outputs(batch).sub_(clean_outs)
            for key, sl in self._node_groups():
                c, dx = clean_outs[sl], diff[sl]
                for k in range(1, steps + 1):
                    value = c + (1 - k / steps) * dx  # (k/m)·clean + (1 − k/m)·corrupted
                    value = value.sum(0) if key != "input" and key[0] == "attn" else value[0]
                    self._gradient(batch, diff, total, ctx, keep, replace={key: value})
            return
        diff = clean_outs.neg_()  # − clean; the corrupted outputs are added by the first gradient run
        if method == "clean-corrupted":
            self._gradient(batch, diff, total, ctx, keep, ids=batch.corrupted, record=self._into(diff, 1.0))
            self._gradient(batch, diff, total, ctx, keep)
        elif method == "eap-ig-inputs":  # corrupted + (k/m)(clean − corrupted); k = 0 is the corrupted run
            with torch.no_grad():
                e_corr = self.runner.embed(batch.corrupted)
            for k in range(steps):
                value = e_corr if k == 0 else e_corr - (k / steps) * diff[0]
                self._gradient(batch, diff, total, ctx, keep, replace={"input": value},
                               record=self._into(diff, 1.0) if k == 0 else None)

    def _node_groups(self) -> list[tuple]:
        g = self.graph
        out: list[tuple] = [("input", slice(0, 1))]
        for layer in range(g.n_layers):
            out.append((("attn", layer), slice(g.head_index(layer), g.head_index(layer) + g.n_heads)))
            out.append((("mlp", layer), slice(g.mlp_index(layer), g.mlp_index(layer) + 1)))
        return out

    # ------------------------------------------------------------ runs with edges corrupted
    @torch.no_grad()
    def _circuit_logits(self, batch: Batch, corr: torch.Tensor, ablate: torch.Tensor,
                        keep: torch.Tensor | None) -> torch.Tensor:
        """Logits of the clean prompts with every edge in ``ablate`` (``[n_forward, n_backward]``)
        carrying its parent's corrupted output (``corr`` ``[n_forward, b, pos, d]``): a child's input
        is the residual stream plus, for each ablated edge, (corrupted − this run's output of the parent).

        The sum runs over the fewer of the child's ablated and kept parents: with most parents
        ablated (a small circuit), it is the sum over every parent so far (kept as the run goes)
        minus the kept ones' terms; only the parents with a term are read."""
        g = self.graph
        diff = torch.empty_like(corr)  # every parent is written before a child reads it
        flat = diff.view(g.n_forward, -1)
        total = torch.zeros(corr.shape[1:], dtype=corr.dtype, device=corr.device)  # Σ diff of the parents so far
        done = [0]
        binary = ablate.dtype == torch.bool
        ab = ablate.to(device=self.device, dtype=corr.dtype)

        def record(f0: int, out: torch.Tensor) -> None:
            n = out.shape[2]
            torch.sub(corr[f0:f0 + n], out.permute(2, 0, 1, 3), out=diff[f0:f0 + n])
            total.add_(diff[f0:f0 + n].sum(0))
            done[0] = f0 + n

        def weighted(m: torch.Tensor, prev: int) -> torch.Tensor:
            """``Σ_f m[f, i] diff[f]`` for each child i: ``[n, b·pos·d]``, reading only the rows with a term."""
            rows = m.any(1).nonzero().squeeze(1)
            if len(rows) == prev:
                return m.T @ flat[:prev]
            return m[rows].T @ flat.index_select(0, rows)

        def deltas(kind: str, layer: int) -> torch.Tensor | None:
            if kind == "qkv":
                prev, b0, n = g.attn_prev(layer), g.qkv_index(layer, "q"), 3 * g.n_heads
            elif kind == "mlp":
                prev, b0, n = g.mlp_prev(layer), g.mlp_in_index(layer), 1
            else:
                prev, b0, n = g.logits_prev, g.logits_index, 1
            m = ab[:prev, b0:b0 + n]
            count = int(torch.count_nonzero(m))
            if count == 0:
                return None
            shape = (n, *diff.shape[1:])
            if binary and done[0] == prev and 2 * count > m.numel():  # mostly ablated: all minus the kept
                kept = 1 - m
                d = total.expand(shape) if not bool(kept.any()) else total - weighted(kept, prev).view(shape)
            else:
                d = weighted(m, prev).view(shape)  # [n, b, pos, d]
            if kind == "qkv":
                return d.reshape(3, g.n_heads, *d.shape[1:]).permute(0, 2, 3, 1, 4)
            return d[0]

        with self.runner.attach(record=record, deltas=deltas):
            return self._forward(batch.clean, batch.mask, keep)

    def evaluate(self, circuits: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt, the metric with each circuit's complement corrupted (``[n_circuits, n]``),
        and the clean metric (``[n]``). A circuit is a ``[n_forward, n_backward]`` bool matrix.
        In a process group, every rank gets every prompt's values.

        A circuit with every edge (nothing corrupted) is the clean run: its values are the clean
        run's, not run again (the circuit run with no edge corrupted is the same computation)."""
        self._prepare()
        real = self.graph.real
        ablates = [real & ~c.bool() for c in circuits]
        out = np.zeros((len(ablates), self.data.n))
        clean = np.zeros(self.data.n)
        rows = []
        for batch in self._batches():
            rows.append(batch.index)
            keep = self._answer_keep(batch)
            with torch.no_grad():
                clean_logits = self._forward(batch.clean, batch.mask, keep)
            corr = self.corrupted_outputs(batch)
            ctx = self._context(batch, clean_logits, keep)
            clean[batch.index] = self._measure(clean_logits, batch, ctx, keep).double().cpu().numpy()
            for i, ab in enumerate(ablates):
                if not bool(ab.any()):
                    out[i, batch.index] = clean[batch.index]
                    continue
                logits = self._circuit_logits(batch, corr, ab, keep)
                out[i, batch.index] = self._measure(logits, batch, ctx, keep).double().cpu().numpy()
        if self.ranks is not None:
            out, clean = self._everyone(rows, out, clean)
        return out, clean

    def _everyone(self, rows: list[np.ndarray], *arrays: np.ndarray) -> list[np.ndarray]:
        """Per-prompt arrays (prompt axis last) with every rank's rows filled in, on every rank."""
        mine = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)

        def stitch(parts):
            full = [a.copy() for a in arrays]
            for r, cols in parts:
                for a, c in zip(full, cols):
                    a[..., r] = c
            return full

        return self.ranks.exchange((mine, [a[..., mine] for a in arrays]), "the gather of the circuits' metrics",
                                   combine=stitch)

    def _exact(self) -> torch.Tensor:
        """Each edge corrupted alone: the mean change of the metric."""
        g = self.graph
        src, dst = g.edge_index
        total = ExactSum((g.n_edges,))
        for batch in self._batches():
            keep = self._answer_keep(batch)
            with torch.no_grad():
                clean_logits = self._forward(batch.clean, batch.mask, keep)
            corr = self.corrupted_outputs(batch)
            ctx = self._context(batch, clean_logits, keep)
            base = self._measure(clean_logits, batch, ctx, keep).double()
            changes = torch.zeros(g.n_edges, dtype=torch.float64)
            for e in range(g.n_edges):
                ab = torch.zeros(g.n_forward, g.n_backward, dtype=torch.bool)
                ab[src[e], dst[e]] = True
                logits = self._circuit_logits(batch, corr, ab, keep)
                changes[e] = (self._measure(logits, batch, ctx, keep).double() - base).sum().cpu()
            total.add(changes)
        total.across(self.ranks, "the sum of the exact edge effects")
        return g.matrix(total.value() / self.data.n)


def edge_batch_size(lm, graph: EdgeGraph, max_len: int, method: str = "eap") -> int:
    """A batch size whose buffers fit: two ``[b, max_len, n_forward, d_model]`` node-output buffers
    (the clean outputs and corrupted − clean) plus what a forward and backward pass keeps per token,
    within half the free memory on CUDA, or on the CPU within a quarter of the available memory (at
    most 1 GiB) and the study's token budget (:func:`logitscope.engine.setup.auto_batch_size`)."""
    from logitscope.engine.setup import available_host_memory, auto_batch_size

    s = lm.shape
    item = torch.empty((), dtype=next(lm.model.parameters()).dtype).element_size()
    buffers = 2 * graph.n_forward * s.d_model * item
    # a backward pass keeps each layer's inputs and intermediates (≈ 16 d_model per token, and the
    # attention pattern), in float32
    saved = s.n_layers * (16 * s.d_model + 2 * s.n_heads * max_len) * 4
    per_prompt = max_len * (buffers + saved)
    device = lm.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.5 * free
        cap = 4096
    else:
        available = available_host_memory()
        budget = min(2**30, 0.25 * available) if available else 2**30
        cap = auto_batch_size(lm, max_len)
    return int(max(1, min(cap, budget // per_prompt)))
