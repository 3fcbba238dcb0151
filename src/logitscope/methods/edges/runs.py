"""Plain runs of the edge engine: the batches, the logits at the answer and the metric there, each
node's output, the counterparts' means and what each node outputs under the intervention.

:class:`EdgeRuns` is the base of :class:`~logitscope.methods.edges.attribute.EdgeEngine`; its
gradient runs (:mod:`~logitscope.methods.edges.gradients`) and circuit runs
(:mod:`~logitscope.methods.edges.circuit_runs`) read the node-major buffers made here.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from logitscope.engine.metrics import MetricContext, MetricLike, resolve_metric
from logitscope.errors import ArgumentError, InputError
from logitscope.methods.edges.batches import Batch, EdgeData
from logitscope.methods.edges.options import INTERVENTIONS
from logitscope.engine.core import Engine
from logitscope.methods.edges.sums import ExactSum
from logitscope.results.edge_graph import EdgeGraph

# The metrics are engine/metrics.py's, one definition for every method: a metric reads the logits
# at each prompt's answer position (``[b, d_vocab]`` float32) with the answers (ids or sets) and the
# clean run's logits there (``MetricContext.reference``, what ``kl`` compares with).


class EdgeRuns:
    """The plain runs of one model over one prompt set (see :class:`~logitscope.methods.edges.attribute.EdgeEngine`)."""

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
        self.runner = Engine(lm).split_qkv(graph or EdgeGraph.from_model(lm))  # the runner alone would hold a NodeLayout
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
