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

from __future__ import annotations

from typing import Callable

import torch

from logitscope.engine.metrics import METRICS, MetricContext, MetricLike, resolve_metric
from logitscope.errors import ArgumentError, InputError
from logitscope.methods.edges.batches import Batch, EdgeData
from logitscope.methods.edges.circuit_runs import CircuitRuns
from logitscope.methods.edges.gradients import GradientScores
from logitscope.methods.edges.options import INTERVENTIONS, METHODS, PATCHING_ONLY, check_options
from logitscope.methods.edges.runner import EdgeRunner
from logitscope.methods.edges.sums import ExactSum
from logitscope.results.edge_graph import QKV, EdgeGraph

# Every name importable from this module before it was split into rooms (batches, options, runs,
# gradients, circuit_runs) still is.
__all__ = ["METRICS", "QKV", "ArgumentError", "Batch", "EdgeData", "EdgeEngine", "EdgeGraph", "EdgeRunner",
           "INTERVENTIONS", "InputError", "METHODS", "MetricContext", "MetricLike", "PATCHING_ONLY", "check_options",
           "edge_batch_size", "resolve_metric"]


# ---------------------------------------------------------------------- the engine
class EdgeEngine(GradientScores, CircuitRuns):
    """Edge scores and circuit runs of one model over one prompt set.

    ``ranks`` (:func:`logitscope.engine.distributed.current`): in a process group, each rank runs its
    share of the batches (the single process's batches, dealt out); scores and means are summed over
    ranks exactly (:class:`~logitscope.methods.edges.sums.ExactSum`) and per-prompt metrics put back
    in prompt order on every rank, so every rank holds the single process's numbers.
    ``progress(k)``: called with the number of prompts of each batch run.

    Its plain runs come from :class:`~logitscope.methods.edges.runs.EdgeRuns`, its gradient runs
    from :class:`~logitscope.methods.edges.gradients.GradientScores`, its circuit and exact runs
    from :class:`~logitscope.methods.edges.circuit_runs.CircuitRuns`."""

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
