"""Direct logit attribution, the study: prompts to :class:`~logitscope.results.study.StudyData`
(tokenize, batch, capture, assemble). :func:`logitscope.run_study` is its public face."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import itertools
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from logitscope.version import __version__
from logitscope.engine import distributed
from logitscope.engine.capture import BatchScalars
from logitscope.engine.core import Engine
from logitscope.engine.parts import BatchParts, down_projection
from logitscope.engine.setup import as_loaded, auto_batch_size, progress_bar
from logitscope.errors import ArgumentError
from logitscope.inputs.encode import Encoded, encode_prompts
from logitscope.inputs.lint import lint_prompts, warn_prompts
from logitscope.inputs.prompt import Prompt, is_token_id
from logitscope.inputs.prompts import GeneratedSet, load_prompts, parse_prompts
from logitscope.labels import parse_heads
from logitscope.methods import dla_parts as parts
from logitscope.methods.dla_attention import attention_patterns, heads_to_keep
from logitscope.methods.dla_rows import answer_ids, fold_study, study_inputs
from logitscope.models.load import LoadedModel
from logitscope.models.modules import Modules
from logitscope.results.study import StudyData


# The token lens's default k: on for the report (a full-vocabulary softmax per layer: about +55% of
# the study's forward time on a GPT-2-small-shaped model on a CPU; docs/study.md has the measurement).
LENS_TOP_K = 5
# Per-prompt arrays of the passes that become StudyData fields under other names (below).
_NOT_FIELDS = ("lens_top_ids", "lens_top_probs", "source", "source_value_bias", "neurons")


@dataclass(frozen=True)
class StudyOptions:
    """The study's options besides its prompts and model, checked as far as they can be without the
    model when made (:func:`logitscope.run_study` documents each). ``task_metric_note``: warn where
    the prompts' task measures another metric than the logit difference the study decomposes (a
    patching result's study, whose result names its metric, does not)."""

    batch_size: int | None = None
    top_k: int = 3
    attention_prompt: int = 0
    attention_heads: Any = None
    prepend_bos: bool | None = None
    seed: int = 0
    progress: bool = False
    lens_top_k: int | None = LENS_TOP_K
    dla_by_source: Any = None
    neurons: int | None = None
    task_metric_note: bool = True

    def __post_init__(self) -> None:
        _check_whole("top_k", self.top_k, 1)
        parts.check_options(self.lens_top_k, self.dla_by_source, self.neurons)
        _check_whole("seed", self.seed, 0)
        _check_whole("attention_prompt", self.attention_prompt, 0)
        if self.batch_size is not None:
            _check_whole("batch_size", self.batch_size, 1)
        heads = self.attention_heads
        if heads is not None and not (isinstance(heads, str) and heads == "all"):
            try:
                parse_heads(heads)
            except ValueError as e:
                raise ArgumentError("attention_heads", heads, f"{e} (or 'all')") from None


def study(prompts: list[Prompt] | GeneratedSet, lm: LoadedModel, options: StudyOptions) -> StudyData | None:
    """The study of :func:`logitscope.run_study` of ``prompts`` (read, not yet generated or linted:
    :func:`~logitscope.inputs.prompts.parse_prompts`) on ``lm``, as plain data; ``None`` on ranks
    other than 0 of a process group."""
    o = options
    batch_size, top_k, attention_prompt, lens_top_k = o.batch_size, o.top_k, o.attention_prompt, o.lens_top_k
    dla_by_source, neurons, progress = o.dla_by_source, o.neurons, o.progress
    ranks = distributed.current()  # None: one process
    if isinstance(prompts, GeneratedSet):
        prompts = prompts.generate(seed=o.seed, tokenizer=lm.tokenizer,  # built clean: nothing to lint
                                   progress=progress and (ranks is None or ranks.is_root))
    else:
        for message in lint_prompts(prompts, tokenizer=lm.tokenizer):
            warn_prompts(message)  # attributed to the user's line, past run_study / run_patching
    if o.task_metric_note:
        _note_task_metric(prompts)
    n_heads = lm.shape.n_layers * lm.shape.n_heads
    if top_k > n_heads:
        raise ArgumentError("top_k", top_k, f"this model has {n_heads} heads; ask for at most {n_heads}")
    if attention_prompt >= len(prompts):
        raise ArgumentError("attention_prompt", attention_prompt, f"must be between 0 and {len(prompts) - 1} "
                            f"(there {'are' if len(prompts) != 1 else 'is'} {len(prompts)} prompt{'s' if len(prompts) != 1 else ''})")
    named_sources = parts.check_with_model(lens_top_k, dla_by_source, neurons, n_layers=lm.shape.n_layers,
                                           n_heads=lm.shape.n_heads, vocab=Modules.of(lm).unembed.weight.shape[0])
    if neurons is not None:
        down_projection(lm, neurons)  # a mixture-of-experts layer: said before the pass
    bos = lm.adapter.default_prepend_bos if o.prepend_bos is None else o.prepend_bos
    t_start = time.perf_counter()
    enc = encode_prompts(prompts, lm, prepend_bos=bos, sets=True, several=True)
    # answers of several tokens: one row per answer token (methods/dla_rows.py), else the prompts
    forced, run_ids, lengths, (correct, incorrect) = study_inputs(prompts, enc, lm.n_ctx, dla_by_source, neurons)
    prompts = _answers_as_text(prompts, enc, lm.tokenizer)
    t_encoded = time.perf_counter()
    if batch_size is None:
        batch_size = auto_batch_size(lm, int(lengths.max()))
        if ranks is not None:  # every rank runs the batches one process would
            batch_size = ranks.agree_min(batch_size, "the choice of batch size")

    # Sort by length so batches carry little padding; results go back to the prompts' order.
    order = np.argsort(lengths, kind="stable")
    rows = order if ranks is None else ranks.shard(order, batch_size)  # this rank's batches, in order
    engine = Engine(lm)
    in_dev = engine.in_device
    rec = engine.observe(lens_top_k)
    batches: list[BatchScalars] = []
    bar = progress_bar(len(rows), progress and (ranks is None or ranks.is_root))
    timing: dict[str, Any] = {"tokenize_s": t_encoded - t_start}
    # The hot loop makes the host wait for the device nowhere: each chunk's token ids, answer
    # positions and answer ids cross to the device in one asynchronous copy each (a 10,000-prompt
    # set is one chunk), batches are views into them, and every result stays on the device until
    # _assemble. tests/test_hot_loop.py checks the operators it dispatches and its source.
    with engine.session(kernels=False), bar or contextlib.nullcontext():  # eval mode; the model leaves as it came
        with rec, engine.session(kernels=True, eval_mode=False):  # hot loop: start
            for chunk in _chunks(run_ids, lengths, rows, batch_size):
                ids_dev = _to_device(chunk.ids, in_dev)
                pos_dev = _to_device(lengths[chunk.rows] - 1, in_dev)
                correct_dev = _to_device(correct[chunk.rows], rec.out_device)
                incorrect_dev = _to_device(incorrect[chunk.rows], rec.out_device)
                for b in chunk.batches:
                    batches.append(
                        rec.run_batch(
                            ids_dev[b.offset : b.offset + b.size * b.width].view(b.size, b.width),
                            pos_dev[b.start : b.stop],
                            correct_dev[b.start : b.stop],
                            incorrect_dev[b.start : b.stop],
                        )
                    )
                    if bar is not None:
                        bar.update(b.size)
                    if ranks is not None:
                        ranks.poll()  # another rank failed: stop now, not after this rank's share
                    # hot loop: end
        lens_sum = None if rec.token_lens is None else rec.token_lens.prob_sum
        if ranks is None:
            per = _assemble(batches, order)  # the one device-to-host copy (and so the one wait) per field
        else:
            t_gather = time.perf_counter()
            if lens_sum is not None:  # every rank adds its prompts' probabilities
                total = {"lens": lens_sum.clone()}  # a normal tensor: sum_tensors writes in place
                ranks.sum_tensors(total, "the sum of the token lens's probabilities")
                lens_sum = total["lens"]
            per = ranks.gather_columns(rows, _assemble(batches), len(run_ids), "the gather of the study's results")
            timing["gather_s"] = time.perf_counter() - t_gather
        per = per if forced is None or per is None else fold_study(per, forced)  # each prompt's rows summed
        t_assembled = time.perf_counter()
        sources = _agreed_sources(ranks, dla_by_source, named_sources, per)
        if sources or neurons is not None:
            finer = _finer_parts(engine, enc, rows, batch_size, sources or [], neurons, ranks)
            if ranks is not None:  # gathered to rank 0 as the main pass's arrays are
                finer = ranks.gather_columns(rows, finer, len(prompts), "the gather of the finer parts")
            if per is not None:
                per.update(finer)
            timing["parts_s"] = time.perf_counter() - t_assembled
        if per is None:
            return None  # rank 0 builds the result
        kept = heads_to_keep(o.attention_heads, per["heads"].mean(-1), top_k, lm.shape.n_layers, lm.shape.n_heads)
        attention = attention_patterns(lm, enc.ids[attention_prompt], attention_prompt, kept)
    timing["forward_s"] = t_assembled - t_encoded  # set-up, every batch, and the copy back (and gather)
    fields = dict(
        model=lm.name,
        family=lm.adapter.family,
        norm=lm.adapter.norm,
        parallel_attn_mlp=lm.adapter.parallel_attn_mlp(lm.model.config),
        device=str(lm.device),
        dtype=str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        n_layers=lm.shape.n_layers,
        n_heads=lm.shape.n_heads,
        prompts=prompts,
        correct_ids=enc.correct,
        incorrect_ids=enc.incorrect,
        n_tokens=enc.lengths,
        top_k=top_k,
        seed=o.seed,
        prepend_bos=bos,
        version=_version(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{_FIELD_NAMES.get(k, k): v for k, v in per.items() if k not in _NOT_FIELDS},
    )
    fields["attention"] = attention
    if lens_sum is not None:
        fields.update(_token_lens_fields(per, lens_sum, len(run_ids), lens_top_k, lm.tokenizer))  # mean over rows
    if sources:
        names, by_role = parts.role_sums(per["source"], prompts, enc.ids, enc.correct, enc.incorrect, enc.lengths)
        fields.update(source_heads=tuple(sources), dla_by_source=per["source"],
                      source_value_bias=per["source_value_bias"], source_roles=tuple(names), source_by_role=by_role)
    if neurons is not None:
        fields.update(neuron_layer=neurons, neurons=per["neurons"])
    timing["attention_s"] = time.perf_counter() - t_assembled
    timing["study_s"] = time.perf_counter() - t_start
    timing["prompts_per_s"] = len(prompts) / timing["study_s"]
    timing["world_size"] = 1 if ranks is None else ranks.world_size
    # what each rank ran: its prompts, or where answers are several tokens its teacher-forced rows
    timing["prompts_per_rank"] = [len(run_ids)] if ranks is None else ranks.shares(len(run_ids), batch_size)
    if forced is not None:
        timing["rows"] = len(run_ids)  # prompts_per_rank counts rows (they sum to this), not prompts
    return StudyData(**fields, timing=timing)


# BatchScalars' field names (capture.py) -> StudyData's (TransformerLens's hook names).
_FIELD_NAMES = {"attn": "attn_out", "mlp": "mlp_out", "heads": "head_results", "final_bias": "final_norm_bias"}


def _check_whole(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(name, value, "must be a whole number")
    if value < least:
        raise ArgumentError(name, value, f"must be at least {least}" if least else "must be 0 or more")


def _note_task_metric(prompts: list[Prompt]) -> None:
    """A task whose own metric is not the logit difference (induction's ``logprob``) is studied all the
    same: direct logit attribution decomposes the logit difference only (linear in the residual)."""
    named = sorted({str(p.meta["metric"]) for p in prompts if p.meta.get("metric") not in (None, "logit-diff")})
    if named:
        warn_prompts(f"these prompts' task measures {', '.join(named)}; the study (direct logit attribution) "
                     "decomposes the logit difference (correct − incorrect; answer sets: mean logits), the one "
                     "metric linear in the residual stream; patch, ablate, paths and circuit measure the task's")


def _answers_as_text(prompts: list[Prompt], enc: Encoded, tok: Any) -> list[Prompt]:
    """Answers given as token ids, written as the token's text (the ids stay in ``correct_ids``)."""
    def text(answer: str | int) -> str:
        return tok.decode([answer], clean_up_tokenization_spaces=False) if is_token_id(answer) else answer

    return [p if isinstance(p.correct, str) and isinstance(p.incorrect, str)
            else dataclasses.replace(p, correct=text(p.correct), incorrect=text(p.incorrect)) for p in prompts]


@torch.inference_mode()
def logit_diff_directions(prompts: Any, model: Any, *, tokenizer: Any = None) -> torch.Tensor:
    """The seed's ``logit_diff_directions``: ``[n_prompts, d_model]`` residual-stream directions
    whose dot product with the final residual, divided by the final norm's scale, is each prompt's
    direct logit difference — TransformerLens's ``tokens_to_residual_directions(correct) −
    tokens_to_residual_directions(incorrect)`` after ``fold_ln`` (the final norm's weight folded
    in; centred over ``d_model`` for LayerNorm models). float32, on the unembedding's device."""
    parsed = parse_prompts(prompts)
    lm = as_loaded(model, tokenizer, device="auto", dtype="float32", device_map=None)
    enc = encode_prompts(load_prompts(parsed, tokenizer=lm.tokenizer), lm, prepend_bos=lm.adapter.default_prepend_bos)
    rec = Engine(lm).observe()
    return rec.directions(torch.from_numpy(enc.correct).to(rec.out_device), torch.from_numpy(enc.incorrect).to(rec.out_device))


def _token_lens_fields(per: dict, prob_sum: torch.Tensor, n: int, k: int, tok: Any) -> dict[str, Any]:
    """StudyData's token-lens fields: per-prompt top-k, the top-k of the mean probabilities, and
    every id among them as text."""
    mean = torch.topk((prob_sum.cpu().double() / n).float(), k, dim=-1)  # float32: see TokenLens.prob_sum
    ids = per["lens_top_ids"].astype(np.int64)
    mean_ids = mean.indices.numpy().astype(np.int64)
    every = sorted(set(np.unique(ids).tolist()) | set(np.unique(mean_ids).tolist()))
    tokens = {i: tok.decode([i], clean_up_tokenization_spaces=False) for i in every}
    return dict(lens_top_ids=ids, lens_top_probs=per["lens_top_probs"], lens_mean_ids=mean_ids,
                lens_mean_probs=mean.values.numpy(), lens_tokens=tokens)


def _agreed_sources(ranks: distributed.Ranks | None, dla_by_source: Any, named: list[tuple[int, int]] | None,
                    per: dict[str, np.ndarray | None] | None) -> list[tuple[int, int]] | None:
    """The heads split by source (None: not asked). ``top:N`` ranks the heads by their mean over
    every prompt, which only rank 0 holds after the gather: it picks them, every rank gets its pick."""
    if dla_by_source is None or named is not None:
        return named
    pick = None if per is None else parts.source_heads(dla_by_source, None, per["heads"].mean(-1))
    if ranks is None:
        return pick
    return ranks.exchange(pick, "the choice of the top heads to split by source", combine=lambda picks: picks[0])


def _finer_parts(engine: Engine, enc: Encoded, rows: np.ndarray, batch_size: int, sources: list[tuple[int, int]],
                 neurons: int | None, ranks: distributed.Ranks | None) -> dict[str, np.ndarray | None]:
    """One more pass over the same batches of ``rows`` (this rank's, in batch order: re-cut in
    ``batch_size`` pieces they are the main pass's batches) for DLA by source position and by neuron
    (:mod:`logitscope.engine.parts`); per-prompt arrays in the order of ``rows``, or in one process
    (``ranks`` ``None``: ``rows`` is every prompt) in the prompts' order. In a process group it polls
    for a failed rank between batches, as the main pass does."""
    lengths, in_dev = enc.lengths, engine.in_device
    correct, incorrect = answer_ids(enc)
    rec = engine.observe_parts(sources, neurons, int(lengths.max()))  # every prompt's longest: the same on every rank
    out: list[BatchParts] = []
    with torch.inference_mode():
        for chunk in _chunks(enc.ids, lengths, rows, batch_size):
            ids_dev = _to_device(chunk.ids, in_dev)
            for b in chunk.batches:
                r = chunk.rows[b.start : b.stop]
                out.append(rec.run_batch(ids_dev[b.offset : b.offset + b.size * b.width].view(b.size, b.width),
                                         torch.from_numpy(lengths[r] - 1).to(in_dev), torch.from_numpy(correct[r]),
                                         torch.from_numpy(incorrect[r])))
                if ranks is not None:
                    ranks.poll()  # another rank failed: stop now, not at the gather after this rank's share
    return _assemble(out, rows if ranks is None else None)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` on ``device``; to a CUDA device from pinned memory, without making the host wait
    (PyTorch keeps the pinned buffer until the copy is done)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class _Batch:
    start: int  # first row within its chunk
    stop: int
    width: int  # padded length T
    offset: int  # where its [size, width] block starts in the chunk's flat id array

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class _Chunk:
    rows: np.ndarray  # prompt indices, in batch order
    ids: np.ndarray  # int64, every batch's right-padded [size, width] block, flattened one after another
    batches: list[_Batch]


def _chunks(ids: Sequence[Sequence[int]], lengths: np.ndarray, order: np.ndarray, batch_size: int, *,
            max_tokens: int = 1 << 22) -> Iterator["_Chunk"]:
    """Batches of ``batch_size`` prompts in ``order``, grouped into chunks of at most ``max_tokens``
    padded tokens (at least one batch each) so the ids cross to the device a chunk at a time and host
    memory for padded ids stays bounded. Padding is with 0 after each prompt's last token: a causal
    model's real tokens never attend to later positions, and 0 is a valid id in every vocabulary."""
    spans = [(s, min(s + batch_size, len(order))) for s in range(0, len(order), batch_size)]
    widths = [int(lengths[order[a:b]].max()) for a, b in spans]
    i = 0
    while i < len(spans):
        j, tokens = i, 0
        while j < len(spans) and (j == i or tokens + (spans[j][1] - spans[j][0]) * widths[j] <= max_tokens):
            tokens += (spans[j][1] - spans[j][0]) * widths[j]
            j += 1
        c0 = spans[i][0]
        rows = order[c0 : spans[j - 1][1]]
        flat = np.zeros(tokens, dtype=np.int64)
        batches, offset = [], 0
        for (a, b), w in zip(spans[i:j], widths[i:j]):
            r = order[a:b]
            block = flat[offset : offset + (b - a) * w].reshape(b - a, w)
            block[np.arange(w) < lengths[r][:, None]] = np.fromiter(
                itertools.chain.from_iterable(ids[k] for k in r), dtype=np.int64, count=int(lengths[r].sum())
            )
            batches.append(_Batch(a - c0, b - c0, w, offset))
            offset += (b - a) * w
        yield _Chunk(rows, flat, batches)
        i = j


def _assemble(batches: list[BatchScalars] | list[BatchParts], order: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """Concatenate per-batch scalars (one host transfer per field) and undo the length sort (with
    ``order``; without, the prompts stay in batch order, and no batches give no fields)."""
    out: dict[str, np.ndarray | None] = {}
    if not batches:
        return out
    for name in type(batches[0]).__dataclass_fields__:
        parts = [getattr(b, name) for b in batches]
        if parts[0] is None:
            out[name] = None
            continue
        out[name] = torch.cat(parts, dim=-1).cpu().double().numpy()  # float64 after the move: MPS has none
    if order is not None:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        out = {k: v if v is None else v[..., inverse] for k, v in out.items()}
    return out


def _version() -> str:
    return __version__
