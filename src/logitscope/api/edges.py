"""Find the circuit: edge attribution (EAP, EAP-IG, exact edge patching) and MIB's faithfulness
curves of a prompt set on a model, as :func:`edges`; the result (:class:`EdgeResult`) saves with
its circuit view (:meth:`EdgeResult.save`) and reopens (:func:`logitscope.load_result`).

>>> res = ls.edges("ioi:256", "gpt2", corrupt="abc")          # EAP-IG (inputs), 5 steps
>>> print(res.summary()); res.save("runs/ioi-edges")          # results.json, graph.json, report.html
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from logitscope.engine import distributed
from logitscope.errors import ArgumentError
from logitscope.inputs.prompt import Prompt
from logitscope.api.prepared import default_metric
from logitscope.engine.metrics import resolve_metric
from logitscope.methods.edges import EdgeOptions, attribute, check_by, check_counts, check_options
from logitscope.results import edges as edge_results

__all__ = ["EdgeResult", "check_edge_options", "edges", "read_edges"]


class EdgeResult(edge_results.EdgeResult):
    """Edge attribution's result as a notebook uses it: the data of
    :class:`logitscope.results.edges.EdgeResult` (scores, curves, circuits) whose :meth:`save` also
    writes the interactive circuit view, ``report.html`` (the results layer never imports the report)."""

    @classmethod
    def of(cls, data: edge_results.EdgeResult) -> "EdgeResult":
        """``data`` with this class's report."""
        return cls(**{f.name: getattr(data, f.name) for f in fields(data) if f.init})

    def save(self, out_dir: str | Path, *, report: Any = True, label: str = "out_dir") -> Path:
        """Write results.json, graph.json, edges_per_prompt.npz and (``report=True``, the default)
        report.html, the circuit view, into ``out_dir``, atomically: a failure, the report's included,
        leaves the folder as it was. ``report=False``: no report.html (an earlier one there is removed);
        a function ``(result, path)``: that writer instead. ``label`` names ``out_dir`` in errors."""
        writer = _write_report if report is True else (report or None)
        return super().save(out_dir, report=writer, label=label)

    def write_report(self, path: str | Path) -> Path:
        """The circuit view alone, one self-contained page (atomically)."""
        return _write_report(self, Path(path))


def _write_report(result: edge_results.EdgeResult, path: Path) -> Path:
    from logitscope.report.edges import write_edges_report

    return write_edges_report(result.view_data(result.model), path)


def read_edges(folder: str | Path) -> EdgeResult:
    """The :class:`EdgeResult` saved in ``folder`` (:func:`logitscope.results.edges.read_edges`), every number equal."""
    return EdgeResult.of(edge_results.read_edges(folder))


def check_edge_options(*, method: str = "eap-ig-inputs", steps: int = 5, intervention: str = "patching",
                       corrupt: str | None = None, metric: Any = None, top_n: int | None = None,
                       exact_top: int = 0, batch_size: int | None = None, circuit: Any = None, by: str = "edge",
                       greedy: bool = False) -> None:
    """:func:`edges`' options' errors without a model (the CLI calls it before loading one)."""
    from logitscope.inputs.counterparts import CORRUPTIONS
    from logitscope.results.graph_json import read_graph_json

    check_options(method, steps, intervention)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ArgumentError("steps", steps, "must be a whole number, at least 1")
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ArgumentError("corrupt", corrupt, f"use one of {', '.join(CORRUPTIONS)}")
    resolve_metric(metric)  # a name of engine/metrics.py's METRICS, a callable, or None (the task's own)
    check_counts(batch_size, exact_top, top_n)
    check_by(by, greedy)
    if circuit is not None and top_n is not None:
        raise ArgumentError("top_n", top_n, "a circuit is given to evaluate; give either top_n or circuit")
    if isinstance(circuit, (str, Path)):
        read_graph_json(circuit)  # the file's syntax; its shape once the model is loaded


@distributed.collective
def edges(
    prompts: Sequence[Prompt] | str,
    model: Any,
    *,
    tokenizer: Any = None,
    method: str = "eap-ig-inputs",
    steps: int = 5,
    intervention: str = "patching",
    corrupt: str | None = None,
    metric: str | Callable[..., Any] | None = None,
    top_n: int | None = None,
    curve: bool = True,
    greedy: bool = False,
    by: str = "edge",
    exact_top: int = 0,
    circuit: Any = None,
    batch_size: int | None = None,
    prepend_bos: bool | None = None,
    seed: int = 0,
    progress: bool = False,
    device: Any = "auto",
    dtype: Any = "float32",
    device_map: str | None = None,
) -> EdgeResult:
    """Score every edge of ``model``'s computational graph on ``prompts`` and measure the circuits
    they give (:mod:`logitscope.methods.edges`; docs/edges.md, "Finding a circuit").

    ``method``: ``eap``, ``eap-ig-inputs`` (default), ``eap-ig-activations``, ``clean-corrupted`` or
    ``exact``; ``steps``: integrated-gradient steps. ``intervention``: ``patching`` (each prompt's
    counterpart: JSONL ``corrupted``, or ``corrupt="abc"|"flip"`` for IOI), ``mean``,
    ``mean-positional`` or ``zero``. ``metric``: ``logit-diff``, ``logprob-diff``, ``prob-diff``,
    ``logprob``, ``loss``, ``kl`` or a callable ``fn(logits [b, d_vocab], ctx) -> [b]``
    (:mod:`logitscope.engine.metrics`, as every method's); None: the task's own (as ``patch``'s),
    else ``logit-diff``. Answer sets are measured whole.
    ``curve``: MIB's faithfulness curves (by |score| and signed) with CPR, CMD and 95% intervals.
    ``top_n``: the faithfulness of the top-``top_n`` circuit, marked in graph.json; ``circuit``: a
    graph file (EAP-IG/MIB) whose ``in_graph`` circuit is evaluated instead. ``greedy``: circuits by
    the library's greedy selection. ``by="node"``: circuits of the top n heads and MLPs by node
    score instead of the top n edges (``top_n`` counts nodes; the curves take MIB's fractions of the
    L·(H + 1) nodes; ``input`` and ``logits`` always kept). ``exact_top``: the exact effect of the top that many edges
    beside their estimates. ``batch_size``: default from free memory. Every option is checked
    before the model loads. Under torchrun each rank scores its share; rank 0 gets the result (equal
    to one process's), the other ranks ``None``. The other arguments are :func:`logitscope.run_study`'s.
    """
    from logitscope.version import __version__
    from logitscope.engine.setup import as_loaded, progress_bar
    from logitscope.inputs.prompts import GeneratedSet, parse_prompts

    check_edge_options(method=method, steps=steps, intervention=intervention, corrupt=corrupt, metric=metric,
                       top_n=top_n, exact_top=exact_top, batch_size=batch_size, circuit=circuit, by=by,
                       greedy=greedy)
    parsed = parse_prompts(prompts)  # a typo in a file or a spec costs no model load
    ranks = distributed.current()
    lm = as_loaded(model, tokenizer, device=device, dtype=dtype, device_map=device_map, ranks=ranks)
    prompts = parsed.generate(seed=seed, tokenizer=lm.tokenizer) if isinstance(parsed, GeneratedSet) else list(parsed)
    metric = default_metric(prompts, metric)
    bars: list[Any] = []

    def phase(name: str, total: int):
        # named when made: a bar draws itself at once, so a later set_description left a stray
        # "study: 0%" line above each phase's bar on a terminal
        for done in bars:  # one bar at a time: the finished phase's bar stays as its own line
            done.close()
        bar = progress_bar(total, progress and (ranks is None or ranks.is_root), desc=f"edges: {name}")
        if bar is None:
            return None
        bars.append(bar)
        return bar.update

    try:
        options = EdgeOptions(method=method, steps=steps, intervention=intervention, metric=metric, corrupt=corrupt,
                              batch_size=batch_size, curve=curve, top_n=top_n, greedy=greedy, exact_top=exact_top,
                              circuit=circuit, prepend_bos=prepend_bos, seed=seed, by=by)
        result = attribute(lm, prompts, options, progress=phase)
    finally:
        for bar in bars:
            bar.close()
    return replace(EdgeResult.of(result), model=lm.name, family=lm.adapter.family, device=str(lm.device),
                   dtype=str(next(lm.model.parameters()).dtype).removeprefix("torch."), version=__version__,
                   created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
