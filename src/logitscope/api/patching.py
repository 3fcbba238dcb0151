"""Does the answer depend on a component? Exact activation patching and ablation.

:func:`run_patching` runs the study of the clean prompts (direct logit attribution) and, on the same
hook points, TransformerLens's activation-patching grids and ablations, with per-prompt values and
bootstrap intervals that use the study's resamples. See :mod:`logitscope.methods.patching.grids` for the
grids, :mod:`logitscope.methods.ablation` for ablations, :mod:`logitscope.engine.patched` for how
patched runs reuse the unpatched run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any, Sequence

from logitscope.engine import distributed
from logitscope.errors import ArgumentError
from logitscope.methods.ablation import ABLATIONS
from logitscope.methods.attribution import METHODS
from logitscope.engine.metrics import METRICS, resolve_metric
from logitscope.methods.patching.grids import GRIDS, WHAT
from logitscope.inputs.pairs import UNDEFINED, EncodedPairs
from logitscope.methods.paths import FREEZE
from logitscope.inputs.positions import POSITION_MODES
from logitscope.api.patching_result import PatchingResult
from logitscope.api.prepared import (Prepared, default_metric, fold_rows, prepare, row_axis,  # noqa: F401
                                       row_prompts, rows_note, study_of)
from logitscope.methods.patching.loop import run_methods
from logitscope.methods.patching.options import PatchOptions, RunSettings, patch_options
from logitscope.methods.patching.run import DIRECTIONS
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
    is asked: the report and results.json are built around it (one forward pass per prompt; with
    ``progress``, a line on stderr says so once); :class:`logitscope.Experiment` computes it once
    for all of its methods.
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
                 attention_prompt: int = 0, t0: float | None = None, study_made: bool = False) -> PatchingResult | None:
    """:func:`run_patching` on a prepared prompt set with checked ``options``, with the study of its
    clean prompts when given (``study_made``: made already, even where ``study`` is None, as on the
    ranks other than 0 of a process group; else computed here, with ``top_k`` and ``attention_prompt``)."""
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
    computed = not study_made and study is None
    if computed:
        study = study_of(prep, batch_size=settings.batch_size, top_k=top_k, attention_prompt=attention_prompt,
                         seed=seed)
    t_study = time.perf_counter()
    spec = resolve_metric(default_metric(prompts, metric))
    options = replace(options, metric=spec)
    if rows_note(prep):
        notes.append(rows_note(prep))
    result = run_methods(lm, row_prompts(prep), pairs, axis_of_rows, grids, sets, options, settings, prep.prepend_bos)
    if result is None:
        return None  # another rank's: rank 0 builds the result
    timing = {"study_s": t_study - t0, **result.pop("timing")}
    result = fold_rows(prep, result, spec.name)
    direction, ablation, method = options.direction, options.ablation, options.grids.method
    if computed and settings.progress:
        say_study_ran(len(prompts))
    return PatchingResult(
        study=study, direction=direction, corrupted_prompts=[p.corrupted for p in prompts], positions=axis,
        position_tokens=_position_tokens(lm, pairs, axis), notes=tuple(notes), seed=seed, timing=timing,
        ablation_kind=ablation if (sets or options.grids.head_ablation) else None,
        ablation_sets={k: tuple(c.label for c in v) for k, v in sets.items()}, method=method,
        metric_key=None if spec.is_logit_diff else spec.key,
        metric_description=None if spec.is_logit_diff else spec.description, **result,
    )


def say_study_ran(n_prompts: int) -> None:
    """Say once, on stderr beside the progress bars (never in the results), that the study of the
    clean prompts ran though no one asked for it: the report and results.json are built around it."""
    print(f"logitscope: the report's DLA study ran too ({n_prompts:,} clean prompt{'s' if n_prompts != 1 else ''}; "
          "a patching result is built around it)", file=sys.stderr)


def _position_tokens(lm, pairs: EncodedPairs, axis) -> list[str] | None:
    if axis is None or axis.mode != "index":
        return None
    return [lm.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in pairs.clean[0]]
