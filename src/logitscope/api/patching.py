"""Does the answer depend on a component? Exact activation patching and ablation.

:func:`run_patching` runs the study of the clean prompts (direct logit attribution) and, on the same
hook points, TransformerLens's activation-patching grids and ablations, with per-prompt values and
bootstrap intervals that use the study's resamples. See :mod:`logitscope.methods.patching.grids` for the
grids, :mod:`logitscope.methods.ablation` for ablations, :mod:`logitscope.engine.patched` for how
patched runs reuse the unpatched run.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from logitscope.engine import distributed
from logitscope.errors import ArgumentError
from logitscope.methods.ablation import ABLATIONS, AblationRunner, GroupMeans, group_keys
from logitscope.methods.attribution import METHODS, SUFFIX, AttributionRunner
from logitscope.engine.metrics import METRICS, resolve_metric
from logitscope.engine.patched import Engine
from logitscope.methods.patching.grids import GRIDS, WHAT
from logitscope.inputs.circuits import load_circuit
from logitscope.inputs.pairs import UNDEFINED, EncodedPairs
from logitscope.methods.paths import FREEZE
from logitscope.inputs.positions import POSITION_MODES
from logitscope.api.patching_result import PatchingResult
from logitscope.api.prepared import (Prepared, default_metric, fold_rows, prepare, row_axis,  # noqa: F401
                                       row_prompts, rows_note, study_of)
from logitscope.methods.patching.options import PatchOptions, RunSettings, patch_options
from logitscope.methods.patching.options import one_process_only as _one_process_only  # noqa: F401 (tests)
from logitscope.methods.patching.run import DIRECTIONS, GridRunner, pair_batches
from logitscope.inputs.counterparts import with_counterparts
from logitscope.inputs.prompt import Prompt

__all__ = ["ABLATIONS", "DIRECTIONS", "FREEZE", "GRIDS", "METHODS", "METRICS", "POSITION_MODES", "PatchingResult", "WHAT",
           "PatchOptions", "RunSettings",
           "check_options", "checked_options", "patch_options", "run_patching"]


def check_options(*, corrupt: str | None = None, **options: Any) -> tuple[list[str], bool]:
    """Check :func:`run_patching`'s options (``corrupt`` and :func:`patch_options`'s names) without a
    model (the CLI calls it before loading one); returns ``(grid names, whether the single-head
    ablation grid is asked for)``."""
    grids = checked_options(corrupt, **options).grids
    return list(grids.grids), grids.head_ablation


def checked_options(corrupt: str | None, **options: Any) -> PatchOptions:
    """``corrupt`` checked, and the :class:`PatchOptions` of ``options`` (each checked when made)."""
    from logitscope.inputs.counterparts import CORRUPTIONS

    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ArgumentError("corrupt", corrupt, f"use one of {', '.join(CORRUPTIONS)}")
    return patch_options(**options)


@distributed.collective
def run_patching(
    prompts: Sequence[Prompt] | str,
    model: Any,
    *,
    tokenizer: Any = None,
    what: str | Sequence[str] = "heads",
    direction: str = "denoise",
    corrupt: str | None = None,
    positions: str = "auto",
    ablate: str | Sequence[str] | dict[str, Any] | None = None,
    ablation: str = "mean",
    method: str = "exact",
    device: Any = "auto",
    dtype: Any = "float32",
    device_map: str | None = None,
    batch_size: int | None = None,
    top_k: int = 3,
    attention_prompt: int = 0,
    prepend_bos: bool | None = None,
    seed: int = 0,
    progress: bool = False,
    senders: str | Sequence[str] | None = None,
    receivers: str | Sequence[str] = "logits",
    freeze: str = "heads",
    circuit: Any = None,
    circuit_random: int = 5,
    circuit_greedy: int = 0,
    circuit_greedy_steps: int = 10,
    circuit_greedy_candidates: int = 10,
    metric: Any = None,
) -> PatchingResult:
    """Activation patching and ablation of ``prompts`` (each with a ``corrupted`` counterpart, or a
    set that has them: ``seed``, ``arena``, ``ioi:N``) on ``model``.

    ``what``: grids or groups of grids (``heads`` (default), ``heads_by_pos``, ``resid``, ``layers``,
    ``qkv``, ``ablation``, ``all``, or names such as ``attn_head_out_all_pos``). ``direction``:
    ``denoise`` (clean activations into the corrupted run) or ``noise`` (corrupted into clean).
    ``corrupt``: the counterpart of IOI prompts, ``abc`` (default) or ``flip``. ``positions``: the
    position axis of per-position grids (``auto``, ``index``, ``named``, ``end``). ``ablate``: a
    component set to ablate (``"L9H9,L9H6"``; a list; or ``{name: spec}`` for several sets), with
    ``ablation`` = ``zero``, ``mean`` or ``resample``. ``method``: ``exact`` (patched runs; default),
    ``attribution`` (each grid's first-order estimate from one gradient, as ``<grid>_attribution``;
    see :mod:`logitscope.methods.attribution`) or ``both`` (with their agreement). ``metric``: what
    every run measures, the same for grids, ablations, paths and circuits: ``None`` (default) for the
    prompts' own (a task's ``meta["metric"]``, the same on every prompt; else ``logit-diff``), ``logit-diff``,
    ``logprob-diff``, ``prob-diff``, ``logprob``, ``loss``, ``kl`` or a function ``fn(logits, ctx)``
    (:mod:`logitscope.engine.metrics`). ``senders`` / ``receivers`` / ``freeze``: path
    patching (:mod:`logitscope.methods.paths`; senders such as ``"L9H9,L9H6+L10H0"`` or ``"all"``,
    receivers ``"logits,L9H9:q"``), in ``direction`` (the IOI paper's is ``noise``). ``circuit``:
    ``"ioi"`` (GPT-2 small), a circuit file, inline heads or a :class:`logitscope.inputs.circuits.Circuit`,
    whose faithfulness, completeness and minimality are measured with ``ablation``
    (:mod:`logitscope.methods.circuits`); its completeness check takes K = ∅, each class,
    ``circuit_random`` random subsets, and the sets of ``circuit_greedy`` runs of the paper's greedy
    search (0: none; each of ``circuit_greedy_steps`` steps trying ``circuit_greedy_candidates``
    heads; the paper's code: 5, 10, 10; see :func:`logitscope.methods.circuits.greedy_search`).
    The other arguments are :func:`logitscope.run_study`'s. In a process group of several ranks, as
    :func:`logitscope.run_study`: rank 0 gets the result, the others ``None`` (path patching and
    circuits run in one process only). The study of the clean prompts is computed as well, whatever
    is asked: the report and results.json are built around it (one forward pass per prompt);
    :class:`logitscope.Experiment` computes it once for all of its methods.
    """
    from logitscope.engine.setup import as_loaded
    from logitscope.inputs.prompts import GeneratedSet, parse_prompts

    t0 = time.perf_counter()
    options = checked_options(corrupt, what=what, direction=direction, positions=positions, ablate=ablate,
                              ablation=ablation, method=method, senders=senders, receivers=receivers, freeze=freeze,
                              circuit=circuit, circuit_random=circuit_random, circuit_greedy=circuit_greedy,
                              circuit_greedy_steps=circuit_greedy_steps,
                              circuit_greedy_candidates=circuit_greedy_candidates, metric=metric)
    parsed = parse_prompts(prompts)  # a typo in a file or a spec costs no model load
    lm = as_loaded(model, tokenizer, device=device, dtype=dtype, device_map=device_map, ranks=distributed.current())
    prompts = parsed.generate(seed=seed, tokenizer=lm.tokenizer) if isinstance(parsed, GeneratedSet) else parsed
    prep = prepare(with_counterparts(list(prompts), corrupt, seed=seed, tokenizer=lm.tokenizer), lm, prepend_bos)
    return run_prepared(prep, None, options, RunSettings(batch_size, seed, progress), top_k=top_k,
                        attention_prompt=attention_prompt, t0=t0)


def run_prepared(prep: Prepared, study: Any, options: PatchOptions, settings: RunSettings, *, top_k: int = 3,
                 attention_prompt: int = 0, t0: float | None = None) -> PatchingResult | None:
    """:func:`run_patching` on a prepared prompt set with checked ``options``, with the study of its
    clean prompts when given (else computed here, with ``top_k`` and ``attention_prompt``)."""
    t0 = time.perf_counter() if t0 is None else t0
    lm, prompts, pairs = prep.lm, prep.prompts, prep.pairs
    metric, seed = options.metric, settings.seed
    prep.check_metric(default_metric(prompts, metric))  # answers of several tokens: the metrics defined on them
    L, H = lm.shape.n_layers, lm.shape.n_heads
    sets = options.ablations.sets(L, H)
    grids = list(options.grids.grids)
    notes: list[str] = []
    if "resid_mid" in grids and lm.adapter.parallel_attn_mlp(lm.model.config):
        grids.remove("resid_mid")
        notes.append(f"resid_mid: not computed; {lm.adapter.family} runs attention and MLP in parallel, so there is "
                     "no resid_mid (TransformerLens has no hook_resid_mid for it either)")
    if pairs.identical.all():
        notes.append(UNDEFINED)
    positions = options.grids.positions
    axis, axis_of_rows = row_axis(prep, positions) if any(GRIDS[g].by_position for g in grids) else (None, None)
    if axis is not None and axis.note:
        notes.append(axis.note)
    if study is None:
        study = study_of(prep, batch_size=settings.batch_size, top_k=top_k, attention_prompt=attention_prompt,
                         seed=seed)
    t_study = time.perf_counter()
    spec = resolve_metric(default_metric(prompts, metric))
    options = replace(options, metric=spec)
    if rows_note(prep):
        notes.append(rows_note(prep))
    result = _patch(lm, row_prompts(prep), pairs, axis_of_rows, grids, sets, options, settings)
    if result is None:
        return None  # another rank's: rank 0 builds the result
    timing = {"study_s": t_study - t0, "patching_s": time.perf_counter() - t_study, **result.pop("split")}
    result = fold_rows(prep, result, spec.name)
    result.update(fold_rows(prep, _paths_and_circuit(lm, row_prompts(prep), pairs, options, settings, timing,
                                                     prep.prepend_bos), spec.name))
    direction, ablation, method = options.direction, options.ablation, options.grids.method
    return PatchingResult(
        study=study, direction=direction, corrupted_prompts=[p.corrupted for p in prompts], positions=axis,
        position_tokens=_position_tokens(lm, pairs, axis), notes=tuple(notes), seed=seed, timing=timing,
        ablation_kind=ablation if (sets or options.grids.head_ablation) else None,
        ablation_sets={k: tuple(c.label for c in v) for k, v in sets.items()}, method=method,
        metric_key=None if spec.is_logit_diff else spec.key,
        metric_description=None if spec.is_logit_diff else spec.description, **result,
    )


def _paths_and_circuit(lm, prompts, pairs: EncodedPairs, options: PatchOptions, settings: RunSettings, timing: dict,
                       prepend_bos: bool | None = None) -> dict[str, Any]:
    """Path patching and the circuit's measures, when asked for (``paths``, ``circuit``), each with
    its progress bar (in prompt-runs) when ``settings.progress`` (``options.metric``: resolved)."""
    from logitscope.methods.circuits import run_circuit
    from contextlib import nullcontext

    from logitscope.methods.paths import parse_receivers, parse_senders, run_paths
    from logitscope.engine.setup import progress_bar, auto_batch_size

    senders, receivers, freeze = options.paths.senders, options.paths.receivers, options.paths.freeze
    circuit, completeness = options.circuit.circuit, options.circuit.completeness
    direction, ablation, metric = options.direction, options.ablation, options.metric
    batch_size, seed, progress = settings.batch_size, settings.seed, settings.progress
    out: dict[str, Any] = {}
    B = batch_size or auto_batch_size(lm, int(pairs.lengths.max()))
    L, H = lm.shape.n_layers, lm.shape.n_heads
    if senders is not None:
        t = time.perf_counter()
        the_senders, the_receivers = parse_senders(senders, L, H), parse_receivers(receivers, L, H)
        inputs = sum(r.point != "logits" for r in the_receivers)
        bar = progress_bar(pairs.n * len(the_senders) * (1 + inputs), progress, desc=f"path patching {_pairs(pairs.n)}",
                        unit="runs")
        with bar if bar is not None else nullcontext():
            out["paths"] = run_paths(lm, pairs, the_senders, the_receivers, direction=direction, freeze=freeze,
                                     batch_size=B, seed=seed, progress=bar.update if bar is not None else None,
                                     metric=metric)
            _finish(bar)
        timing["paths_s"] = time.perf_counter() - t
    if circuit is not None:
        t = time.perf_counter()
        bar = progress_bar(None, progress, desc=f"circuit {_pairs(pairs.n)}", unit="runs")  # run_circuit sets the total
        with bar if bar is not None else nullcontext():
            out["circuit"] = run_circuit(lm, prompts, pairs, load_circuit(circuit), ablation=ablation, batch_size=B,
                                         seed=seed, completeness=completeness, progress=bar, prepend_bos=prepend_bos,
                                         metric=metric)
            _finish(bar)
        timing["circuit_s"] = time.perf_counter() - t
    return out


def _pairs(n: int) -> str:
    """``1 pair``, ``3,000 pairs``: a bar's description (its unit, runs, counts one prompt's patched,
    ablated or mean-recording forward pass: a pair takes one per grid cell, set or sender)."""
    return f"{n:,} pair{'s' if n != 1 else ''}"


def _finish(bar) -> None:
    """Close a progress bar at 100% (runs with no path or nothing knocked out are skipped, not run)."""
    if bar is not None:
        bar.n = bar.total
        bar.refresh()
        bar.close()


def _position_tokens(lm, pairs: EncodedPairs, axis) -> list[str] | None:
    if axis is None or axis.mode != "index":
        return None
    return [lm.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in pairs.clean[0]]


def _patch(lm, prompts, pairs: EncodedPairs, axis, grids: list[str], sets: dict, options: PatchOptions,
           settings: RunSettings) -> dict[str, Any]:
    """Every grid (exact, attribution estimate or both) and ablation, batch by batch; per-prompt arrays."""
    from logitscope.engine.setup import auto_batch_size, progress_bar

    direction, kind, metric = options.direction, options.ablation, options.metric
    head_ablation, method = options.grids.head_ablation, options.grids.method
    batch_size, progress = settings.batch_size, settings.progress

    ranks = distributed.current()  # None: one process
    engine = Engine(lm, metric)
    T = int(pairs.lengths.max())
    B = batch_size or auto_batch_size(lm, T)
    if batch_size is None and ranks is not None:  # every rank runs the batches one process would
        B = ranks.agree_min(B, "the choice of patching batch size")
    mine = None if ranks is None else ranks.mine  # which of the global batches this rank runs
    budget = 4 * B * T
    n = pairs.n
    share = n if ranks is None else ranks.shares(n, B)[ranks.rank]
    bar = progress_bar(None, progress and bool(grids or sets or head_ablation) and (ranks is None or ranks.is_root),
                    desc=f"patching {_pairs(n)}", unit="runs")
    step = (lambda k: bar.update(k)) if bar is not None else None
    runner = GridRunner(engine, grids if method != "attribution" else [], direction, axis, n, budget, step)
    attribution = AttributionRunner(engine, grids, direction, axis, n, step) if method != "exact" else None
    means = None
    if kind == "mean" and (sets or head_ablation):
        means = GroupMeans(group_keys(prompts, pairs.lengths), pairs.lengths)
    ablations = AblationRunner(engine, kind, sets, head_ablation, means, n, budget, step) if (sets or head_ablation) else None
    if bar is not None:
        head_cells = engine.n_layers * engine.points.n_heads if head_ablation else 0
        bar.total = (share * (runner.n_cells + len(sets) + head_cells + (attribution is not None))
                     + (share if means is not None else 0))
        bar.refresh()
    device = engine.in_device
    axis_for_batches = axis if axis is not None else _no_axis(pairs)
    if means is not None:  # the reference distribution's means, before any ablated run
        for b in pair_batches(pairs, axis_for_batches, B, device, select=mine):
            run = engine.record(b.corrupted, b.end, b.correct, b.incorrect, acts=ablations.points())
            for key in ablations.points():
                means.add(key, b.rows, run.acts[key])
            if step is not None:
                step(len(b.rows))
            if ranks is not None:
                ranks.poll()
        if ranks is not None:
            ranks.sum_tensors(means.sums, "the sum of mean ablation's per-template activations")
    needs = [runner.needs()] + ([ablations.needs()] if ablations is not None else [])
    needs += [attribution.needs()] if attribution is not None else []
    # Attribution alone: its gradient run is the base run, so only the source run is recorded.
    # (kl compares with the clean run, so that is recorded whatever is asked.)
    skip = (attribution.base_side if attribution is not None and not runner.specs and ablations is None
            and not engine.metric.needs_reference else None)
    clean_acts = sorted({a for nd in needs for a in nd["clean_acts"]})
    corrupted_acts = sorted({a for nd in needs for a in nd["corrupted_acts"]})
    clean_kv = any(nd["clean_kv"] for nd in needs)
    corrupted_kv = any(nd["corrupted_kv"] for nd in needs)
    done = []  # the rows this rank ran
    for b in pair_batches(pairs, axis_for_batches, B, device, select=mine):
        done.append(b.rows)
        clean = corrupted = None
        if skip != "clean":
            clean = engine.record(b.clean, b.end, b.correct, b.incorrect, acts=clean_acts, keep_kv=clean_kv)
        if skip != "corrupted":
            corrupted = engine.record(b.corrupted, b.end, b.correct, b.incorrect, acts=corrupted_acts, keep_kv=corrupted_kv,
                                      reference=clean)
        if skip is None:
            runner.run_batch(b, clean, corrupted)
        if ablations is not None:
            ablations.run_batch(b, clean, corrupted)
        if attribution is not None:
            attribution.run_batch(b, clean, corrupted)
        if ranks is not None:
            ranks.poll()  # another rank failed: stop now, not after this rank's share
    if bar is not None:
        bar.close()
    if ranks is not None:
        per_prompt = [runner.clean, runner.corrupted, *runner.values.values()]
        if attribution is not None:
            per_prompt += [attribution.clean, attribution.corrupted, *attribution.values.values()]
        if ablations is not None:
            per_prompt += [*ablations.after.values()] + ([ablations.heads] if ablations.heads is not None else [])
        rows = np.concatenate(done) if done else np.zeros(0, dtype=np.int64)
        if not ranks.gather_into(rows, per_prompt, "the gather of the patching results"):
            return None
    grids_out = _beside(runner.values, attribution.values if attribution is not None else {})
    return {
        "split": {"world_size": 1 if ranks is None else ranks.world_size,
                  "pairs_per_rank": [n] if ranks is None else ranks.shares(n, B)},
        "clean_logit_diff": runner.clean if skip is None else attribution.clean,
        "corrupted_logit_diff": runner.corrupted if skip is None else attribution.corrupted,
        "grids": grids_out,
        "grid_axes": {name: GRIDS[name.removesuffix(SUFFIX)].axes for name in grids_out},
        "ablated": ablations.after if ablations is not None else {},
        "ablated_heads": ablations.heads if ablations is not None else None,
    }


def _beside(exact: dict, estimates: dict) -> dict:
    """Each attribution grid right after its exact one (results.json's order)."""
    out = {}
    for name in dict.fromkeys([*exact, *(k.removesuffix(SUFFIX) for k in estimates)]):
        for key in (name, name + SUFFIX):
            if key in exact or key in estimates:
                out[key] = exact.get(key, estimates.get(key))
    return out


def _no_axis(pairs: EncodedPairs):
    from logitscope.inputs.positions import PositionAxis

    return PositionAxis("end", ["END"], (pairs.lengths - 1)[None].copy())
