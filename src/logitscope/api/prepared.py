"""A model and a prompt set with its counterparts, encoded once: what every causal method starts
from, and the study of its clean prompts that a patching result carries."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from logitscope.engine import distributed
from logitscope.engine.metrics import check_several
from logitscope.inputs.answers import SEVERAL_METRICS, AnswerRows, answer_rows
from logitscope.inputs.pairs import EncodedPairs, encode_pairs
from logitscope.inputs.positions import PositionAxis, position_axis
from logitscope.inputs.prompt import Prompt
from logitscope.methods.dla import LENS_TOP_K

__all__ = ["STUDY_OF_FIXED", "Prepared", "default_metric", "fold_rows", "prepare", "row_axis", "row_prompts",
           "rows_note", "same_but_counterparts", "study_of", "study_on"]


@dataclass(frozen=True)
class Prepared:
    """A model and a prompt set with its counterparts, encoded once: what every causal method starts
    from (:class:`logitscope.Experiment` keeps one)."""

    lm: Any
    prompts: list[Prompt]  # each with its ``corrupted`` counterpart
    pairs: EncodedPairs  # what the runners run: the prompts' pairs, or (``rows``) one pair per answer token
    prepend_bos: bool
    rows: AnswerRows | None = None  # where some answer is several tokens (teacher-forced rows)
    prompt_pairs: EncodedPairs | None = None  # with ``rows``: the prompts' own pairs (their positions)

    def check_metric(self, metric: Any) -> None:
        """A clear error for a metric not defined on answers of several tokens, where some are."""
        if self.rows is not None:
            check_several(metric, SEVERAL_METRICS)


def prepare(prompts: list[Prompt], lm: Any, prepend_bos: bool | None) -> Prepared:
    """Encode ``prompts`` and their counterparts for ``lm`` with the study's checks, before any
    forward pass (``prepend_bos=None``: the family's TransformerLens habit)."""
    from logitscope.inputs.encode import encode_prompts, tokenize

    bos = lm.adapter.default_prepend_bos if prepend_bos is None else prepend_bos
    enc = encode_prompts(prompts, lm, prepend_bos=bos, sets=True, several=True)
    pairs = encode_pairs(prompts, enc.ids, enc.correct, enc.incorrect, lambda t: tokenize(lm.tokenizer, t),
                         lm.tokenizer.bos_token_id if bos else None)
    if enc.correct_set is not None:  # answer sets: every run measures the whole sets
        pairs.correct, pairs.incorrect = enc.correct_set, enc.incorrect_set
    if not enc.several:
        return Prepared(lm, prompts, pairs, bos)
    rows = answer_rows(prompts, pairs, enc.correct_tokens, enc.incorrect_tokens, pairs.correct, pairs.incorrect,
                       lm.n_ctx)
    return Prepared(lm, prompts, rows.pairs, bos, rows, pairs)


def row_prompts(prep: Prepared) -> list[Prompt]:
    """The prompt of each row the runners run (the prompts themselves without ``rows``)."""
    return prep.prompts if prep.rows is None else prep.rows.row_prompts


def row_axis(prep: Prepared, positions: str) -> tuple[PositionAxis, PositionAxis]:
    """``(the prompts' position axis, the same for each row)``: a row is patched at its prompt's
    positions (grids cover the prompt's positions, never the answer tokens appended to a row)."""
    if prep.rows is None:
        axis = position_axis(prep.pairs, positions)
        return axis, axis
    axis = position_axis(prep.prompt_pairs, positions)
    return axis, replace(axis, at=axis.at[:, prep.rows.prompt_of])


def fold_rows(prep: Prepared, result: dict[str, Any], metric: str) -> dict[str, Any]:
    """The per-row arrays of a patching, path or circuit result summed into per-prompt ones (each
    prompt's teacher-forced value: :class:`~logitscope.inputs.answers.AnswerRows`); unchanged
    without ``rows``."""
    if prep.rows is None:
        return result
    fold = lambda a: None if a is None else prep.rows.fold(a, metric)  # noqa: E731
    out = dict(result)
    for key in ("clean_logit_diff", "corrupted_logit_diff", "ablated_heads"):
        if key in out:
            out[key] = fold(out[key])
    for key in ("grids", "ablated"):
        if key in out:
            out[key] = {k: fold(v) for k, v in out[key].items()}
    if "paths" in out:
        p = out["paths"]
        out["paths"] = replace(p, values=fold(p.values), base_logit_diff=fold(p.base_logit_diff),
                               clean_logit_diff=fold(p.clean_logit_diff), corrupted_logit_diff=fold(p.corrupted_logit_diff))
    if "circuit" in out:
        c = out["circuit"]
        out["circuit"] = replace(c, model=fold(c.model), values=fold(c.values),
                                 templates=tuple(c.templates[: prep.rows.n_prompts]))
    return out


def rows_note(prep: Prepared) -> str | None:
    """What a result says where some answer is several tokens."""
    if prep.rows is None:
        return None
    n = int((prep.rows.correct_length > 1).sum())
    return (f"answers of several tokens (teacher-forced: {len(prep.rows.prompt_of)} rows for {prep.rows.n_prompts} "
            "prompts, one per answer token, summed by prompt; counterparts take the clean answer's tokens; grids "
            f"cover the prompts' positions; {n} correct answers of several tokens); the study (direct logit "
            "attribution) decomposes their logit difference row by row, summed by prompt")


def default_metric(prompts: list[Prompt], metric: Any) -> Any:
    """``metric`` as given, or for ``None`` the prompts' own: the one every prompt's ``meta["metric"]``
    names (a task's: ``induction`` measures ``logprob``), else ``logit-diff``."""
    if metric is not None:
        return metric
    named = {p.meta.get("metric") for p in prompts}
    return named.pop() if len(named) == 1 and None not in named else "logit-diff"


# The study options study_of fixes (the rest, top_k and attention_prompt, are its caller's): a study
# of the same prompts with these and the same top_k and attention_prompt is this very study
# (:class:`logitscope.Experiment` shares one between ``study()`` and the causal methods).
STUDY_OF_FIXED: dict[str, Any] = {"attention_heads": None, "lens_top_k": LENS_TOP_K, "dla_by_source": None, "neurons": None}


def study_of(prep: Prepared, *, batch_size: int | None, top_k: int, attention_prompt: int, seed: int) -> Any:
    """The study of the clean prompts that a patching result carries: its report and results.json
    are built around it (one forward pass per prompt, so it is computed even when only a causal
    method was asked for; :class:`logitscope.Experiment` computes it once for all its methods). With
    answer sets it decomposes the sets' mean-logit difference, as the causal methods' ``logit-diff``."""
    from logitscope.api.results import StudyResult
    from logitscope.methods.dla import StudyOptions, study as dla_study

    options = StudyOptions(batch_size=batch_size, top_k=top_k, attention_prompt=attention_prompt,
                           prepend_bos=prep.prepend_bos, seed=seed, progress=False, task_metric_note=False,
                           **STUDY_OF_FIXED)
    study = distributed.collective(dla_study)(list(prep.prompts), prep.lm, options)
    return None if study is None else StudyResult.of(study)


def same_but_counterparts(a: list[Prompt], b: list[Prompt]) -> bool:
    """Whether ``a`` and ``b`` are the same prompts but for their ``corrupted`` counterparts (text,
    answers of the same types, metadata): then a study of one is, number for number, the study of the
    other (nothing in the study reads a counterpart), once it carries the other's prompts (:func:`study_on`)."""
    return len(a) == len(b) and all(
        (p.text, p.correct, p.incorrect, type(p.correct), type(p.incorrect), p.meta)
        == (q.text, q.correct, q.incorrect, type(q.correct), type(q.incorrect), q.meta) for p, q in zip(a, b))


def study_on(study: Any, prompts: list[Prompt]) -> Any:
    """``study`` (a :class:`~logitscope.api.results.StudyResult`) carrying ``prompts``' counterparts:
    what a study of ``prompts`` holds, where ``prompts`` are :func:`same_but_counterparts` as those it
    was made of (its prompts keep their answers as the study wrote them; only ``corrupted`` changes)."""
    return replace(study, prompts=[replace(p, corrupted=q.corrupted) for p, q in zip(study.prompts, prompts)])
