"""The causal methods' batch loop over a prompt set's pairs: every grid (exact, attribution
estimate or both) and ablation batch by batch, alternating the engine's recorded runs and each
method's patched runs (:func:`patch_batches`), then path patching and a circuit's measures
(:func:`paths_and_circuit`); :func:`run_methods` runs them all and hands back per-prompt arrays, so
the API calls the methods once. The arithmetic lives in the runners
(:mod:`logitscope.methods.patching.run`, :mod:`logitscope.methods.ablation`,
:mod:`logitscope.methods.attribution`, :mod:`logitscope.methods.paths`,
:mod:`logitscope.methods.circuits`)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np

from logitscope.engine import distributed
from logitscope.engine.core import Engine
from logitscope.engine.setup import auto_batch_size, progress_bar
from logitscope.inputs.circuits import load_circuit
from logitscope.inputs.pairs import EncodedPairs
from logitscope.methods.ablation import AblationRunner, GroupMeans, group_keys
from logitscope.methods.attribution import SUFFIX, AttributionRunner
from logitscope.methods import circuits as circuit_method  # by module: tests replace run_circuit there
from logitscope.methods.patching.grids import GRIDS
from logitscope.methods.patching.options import PatchOptions, RunSettings
from logitscope.methods.patching.run import GridRunner, pair_batches
from logitscope.methods.paths import parse_receivers, parse_senders, run_paths

__all__ = ["patch_batches", "paths_and_circuit", "run_methods"]


def run_methods(lm, prompts, pairs: EncodedPairs, axis, grids: list[str], sets: dict, options: PatchOptions,
                settings: RunSettings, prepend_bos: bool | None = None) -> dict[str, Any] | None:
    """Every method ``options`` asks for on ``pairs`` (``prompts``: each row's prompt; ``axis``: each
    row's position axis, None without per-position grids; ``grids`` and ``sets``: for this model;
    ``options.metric``: resolved), in one call: per-row arrays as :func:`patch_batches` and
    :func:`paths_and_circuit` give them, with ``timing`` (``patching_s``, the process split,
    ``paths_s``, ``circuit_s``). None on a rank other than 0 (rank 0 gathers)."""
    # Every run in eval mode (no dropout on a model handed over in training mode), the model's
    # training flags and hooks put back afterwards; each run still takes its own kernels.
    with Engine(lm).session(kernels=False):
        t = time.perf_counter()
        result = patch_batches(lm, prompts, pairs, axis, grids, sets, options, settings)
        if result is None:
            return None
        timing = {"patching_s": time.perf_counter() - t, **result.pop("split")}
        result.update(paths_and_circuit(lm, prompts, pairs, options, settings, timing, prepend_bos))
    result["timing"] = timing
    return result


def patch_batches(lm, prompts, pairs: EncodedPairs, axis, grids: list[str], sets: dict, options: PatchOptions,
                  settings: RunSettings) -> dict[str, Any] | None:
    """Every grid (exact, attribution estimate or both) and ablation, batch by batch; per-prompt arrays."""
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
        means.record(engine, pair_batches(pairs, axis_for_batches, B, device, select=mine), ablations.points(), step,
                     ranks)
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


def paths_and_circuit(lm, prompts, pairs: EncodedPairs, options: PatchOptions, settings: RunSettings, timing: dict,
                      prepend_bos: bool | None = None) -> dict[str, Any]:
    """Path patching and the circuit's measures, when asked for (``paths``, ``circuit``), each with
    its progress bar (in prompt-runs) when ``settings.progress`` (``options.metric``: resolved)."""
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
            out["circuit"] = circuit_method.run_circuit(lm, prompts, pairs, load_circuit(circuit), ablation=ablation, batch_size=B,
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
