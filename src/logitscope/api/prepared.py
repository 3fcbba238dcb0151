"""A model and a prompt set with its counterparts, encoded once: what every causal method starts
from, and the study of its clean prompts that a patching result carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from logitscope.engine import distributed
from logitscope.inputs.pairs import EncodedPairs, encode_pairs
from logitscope.inputs.prompt import Prompt

__all__ = ["Prepared", "default_metric", "prepare", "study_of"]


@dataclass(frozen=True)
class Prepared:
    """A model and a prompt set with its counterparts, encoded once: what every causal method starts
    from (:class:`logitscope.Experiment` keeps one)."""

    lm: Any
    prompts: list[Prompt]  # each with its ``corrupted`` counterpart
    pairs: EncodedPairs
    prepend_bos: bool


def prepare(prompts: list[Prompt], lm: Any, prepend_bos: bool | None) -> Prepared:
    """Encode ``prompts`` and their counterparts for ``lm`` with the study's checks, before any
    forward pass (``prepend_bos=None``: the family's TransformerLens habit)."""
    from logitscope.inputs.encode import encode_prompts, tokenize

    bos = lm.adapter.default_prepend_bos if prepend_bos is None else prepend_bos
    enc = encode_prompts(prompts, lm, prepend_bos=bos, sets=True)
    pairs = encode_pairs(prompts, enc.ids, enc.correct, enc.incorrect, lambda t: tokenize(lm.tokenizer, t),
                         lm.tokenizer.bos_token_id if bos else None)
    if enc.correct_set is not None:  # answer sets: every run measures the whole sets
        pairs.correct, pairs.incorrect = enc.correct_set, enc.incorrect_set
    return Prepared(lm, prompts, pairs, bos)


def default_metric(prompts: list[Prompt], metric: Any) -> Any:
    """``metric`` as given, or for ``None`` the prompts' own: the one every prompt's ``meta["metric"]``
    names (a task's: ``induction`` measures ``logprob``), else ``logit-diff``."""
    if metric is not None:
        return metric
    named = {p.meta.get("metric") for p in prompts}
    return named.pop() if len(named) == 1 and None not in named else "logit-diff"


def study_of(prep: Prepared, *, batch_size: int | None, top_k: int, attention_prompt: int, seed: int) -> Any:
    """The study of the clean prompts that a patching result carries: its report and results.json
    are built around it (one forward pass per prompt, so it is computed even when only a causal
    method was asked for; :class:`logitscope.Experiment` computes it once for all its methods). With
    answer sets it decomposes the sets' mean-logit difference, as the causal methods' ``logit-diff``."""
    from logitscope.api.results import StudyResult
    from logitscope.methods.dla import study as dla_study

    study = distributed.collective(dla_study)(prep.prompts, prep.lm, batch_size=batch_size, top_k=top_k,
                                              attention_prompt=attention_prompt, prepend_bos=prep.prepend_bos,
                                              seed=seed, progress=False, task_metric_note=False)
    return None if study is None else StudyResult.of(study)

