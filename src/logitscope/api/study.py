"""The study's public face: :func:`run_study` returns a :class:`~logitscope.api.results.StudyResult`
(the data of :mod:`logitscope.methods.dla`, with its files and report)."""

from __future__ import annotations

from typing import Any

import torch

from logitscope.api.results import StudyResult
from logitscope.engine import distributed
from logitscope.engine.setup import as_loaded
from logitscope.inputs.prompts import parse_prompts
from logitscope.methods import dla

__all__ = ["run_study"]


@distributed.collective
def run_study(
    prompts: Any,
    model: Any,
    *,
    tokenizer: Any = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "float32",
    device_map: str | None = None,
    batch_size: int | None = None,
    top_k: int = 3,
    attention_prompt: int = 0,
    attention_heads: Any = None,
    prepend_bos: bool | None = None,
    seed: int = 0,
    progress: bool = False,
    lens_top_k: int | None = dla.LENS_TOP_K,
    dla_by_source: Any = None,
    neurons: int | None = None,
) -> StudyResult | None:
    """Run the whole direct-logit-attribution study.

    ``prompts``: a spec (``"seed"``, ``"arena"``, ``"ioi:N"``), a path (``str`` or
    ``pathlib.Path``) to a JSONL file, or a list of :class:`Prompt`, of dicts with the JSONL keys,
    or of ``(prompt, correct, incorrect)`` tuples; an answer is text that is one token (``" Mary"``)
    or a token id (``5335``). ``model``: a hub id or alias, a local folder, a :class:`LoadedModel`,
    or an already-loaded ``transformers`` causal LM (then pass its ``tokenizer``). Everything that
    can be checked without the model is checked before it is loaded.

    Attention patterns are recorded on prompt ``attention_prompt`` for ``attention_heads``: by
    default the heads the report shows (the top ``top_k`` of each sign), or ``"all"``, or a list
    of heads (``["L9H9", (9, 6)]``). The model is left as it came: every module's training flag,
    its attention implementation, its modules and the hooks on them.

    In a ``torch.distributed`` process group of several ranks (``torchrun``), every rank calls this
    alike and runs its share of the batches on its own device (``device="auto"``: ``cuda:LOCAL_RANK``);
    rank 0 gets the whole result, the other ranks ``None`` (:mod:`logitscope.engine.distributed`).

    ``lens_top_k``: the token logit lens's k (the top tokens each layer's residual stream predicts,
    the final norm applied afresh; ``None``: off). ``dla_by_source``: heads whose attribution is split
    over the source positions they attend to (``"L9H9,L9H6"``, a list, or ``"top:N"``: the N heads of
    largest ``|mean|``). ``neurons``: an MLP layer whose attribution is split over its neurons. The
    last two cost one more forward pass (one process only).
    """
    options = dla.StudyOptions(batch_size=batch_size, top_k=top_k, attention_prompt=attention_prompt,
                               attention_heads=attention_heads, prepend_bos=prepend_bos, seed=seed,
                               progress=progress, lens_top_k=lens_top_k, dla_by_source=dla_by_source,
                               neurons=neurons)  # checked here: a bad option costs no model load
    parsed = parse_prompts(prompts)  # nor does a typo in a file or a spec
    lm = as_loaded(model, tokenizer, device=device, dtype=dtype, device_map=device_map, ranks=distributed.current())
    data = dla.study(parsed, lm, options)
    return None if data is None else StudyResult.of(data)
