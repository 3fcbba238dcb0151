"""The study from prompts to a :class:`StudyResult`: tokenize, batch, capture, assemble."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import itertools
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from logitscope import distributed
from logitscope.capture import BatchScalars, Recorder
from logitscope.errors import ArgumentError, InputError
from logitscope.attribution import signed_top_heads
from logitscope.labels import parse_heads
from logitscope.models.kernels import equivalent_kernels
from logitscope.models.state import attention_implementation, study_mode
from logitscope.models.load import LoadedModel, load_model, wrap_model
from logitscope.results import AttentionView, StudyResult
from logitscope.tasks.lint import lint_prompts, special_answer, warn_prompts
from logitscope.tasks.prompt import Prompt, is_token_id
from logitscope.tasks.prompts import GeneratedSet, load_prompts, parse_prompts


@dataclass
class Encoded:
    """Token ids for a prompt set: prompts (BOS prepended if asked) and single-token answers."""

    ids: list[list[int]]
    correct: np.ndarray
    incorrect: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def encode_prompts(prompts: Sequence[Prompt], lm: LoadedModel, *, prepend_bos: bool = True) -> Encoded:
    """Tokenize (batched, fast tokenizer) and validate: each answer exactly one token, correct ≠
    incorrect, every prompt within the model's context. Errors name the prompt and what to do."""
    tok = lm.tokenizer
    ids = tokenize(tok, [p.text for p in prompts])
    if prepend_bos:
        bos = tok.bos_token_id
        if bos is None:
            raise ArgumentError("prepend_bos", True, "the tokenizer has no BOS token, so none can be prepended",
                                fix=False)
        ids = [[bos] + x for x in ids]
    given = {a for p in prompts for a in (p.correct, p.incorrect) if is_token_id(a)}
    vocab = lm.adapter.unembed(lm.model).weight.shape[0]
    for a in sorted(given):
        if a >= vocab:
            p = next(p for p in prompts if a in (p.correct, p.incorrect))
            raise InputError(f"{_where(prompts, prompt=p)}: answer id {a} is not a token of this model "
                             f"(its vocabulary has {vocab} tokens, ids 0-{vocab - 1})")
    answers = sorted({a for p in prompts for a in (p.correct, p.incorrect) if not is_token_id(a)})
    answer_ids: dict[str | int, list[int]] = {a: [a] for a in given}
    if answers:
        answer_ids.update(zip(answers, tokenize(tok, answers)))
    bad = []
    for a, toks in answer_ids.items():
        if len(toks) != 1:
            in_context = _next_token_in_context(tok, [p for p in prompts if a in (p.correct, p.incorrect)], a)
            if in_context is not None:  # e.g. SentencePiece: " Mary" alone is ['▁', '▁Mary']
                answer_ids[a] = [in_context]
            else:
                bad.append(a)
    if bad:  # name the first in file order, count the others, so one run finds them all
        first_at = {a: next(i for i, p in enumerate(prompts) if a in (p.correct, p.incorrect)) for a in bad}
        bad.sort(key=first_at.__getitem__)
        a, toks = bad[0], answer_ids[bad[0]]
        pieces = [tok.decode([t]) for t in toks]
        hint = "" if a.startswith(" ") or not a else f" (did you mean {' ' + a!r}, with a leading space?)"
        others = ""
        if len(bad) > 1:
            shown = ", ".join(f"{b!r}{_line_of(prompts[first_at[b]])}" for b in bad[1:6])
            others = f"; {len(bad) - 1} other answer{'s' if len(bad) > 2 else ''} too: {shown}{', ...' if len(bad) > 6 else ''}"
        raise InputError(
            f"{_where(prompts, a)}: answer {a!r} is {len(toks)} tokens {pieces} for this model's tokenizer, "
            f"not one; choose an answer that is a single token{hint}{others}"
        )
    correct = np.array([answer_ids[p.correct][0] for p in prompts], dtype=np.int64)
    incorrect = np.array([answer_ids[p.incorrect][0] for p in prompts], dtype=np.int64)
    special = special_answer(prompts, correct, incorrect, tok)
    if special is not None:
        i, a, t = special
        raise InputError(
            f"{_where(prompts, prompt=prompts[i])}: answer {a!r} is the tokenizer's special token "
            f"{tok.convert_ids_to_tokens(t)!r} (id {t}), not text the model writes after the prompt; "
            "choose an answer that is an ordinary single token (' Mary')"
        )
    same = np.nonzero(correct == incorrect)[0]
    if same.size:
        p = prompts[int(same[0])]
        raise InputError(
            f"{_where(prompts, prompt=p)}: correct and incorrect answers are the same token ({p.correct!r}); "
            "the logit difference would be zero"
        )
    empty = [i for i, x in enumerate(ids) if len(x) == 0]
    if empty:
        raise InputError(f"{_where(prompts, prompt=prompts[empty[0]])}: the prompt is empty")
    n_ctx = lm.n_ctx
    if n_ctx is not None:
        long = [i for i, x in enumerate(ids) if len(x) > n_ctx]
        if long:
            i = long[0]
            raise InputError(
                f"{_where(prompts, prompt=prompts[i])}: the prompt is {len(ids[i])} tokens"
                f"{' with BOS' if prepend_bos else ''}, longer than the model's context of {n_ctx}; shorten it"
            )
    return Encoded(ids, correct, incorrect)


def tokenize(tok: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added: ``tok(texts, add_special_tokens=False)``.

    A fast tokenizer is asked directly (its Rust ``encode_batch_fast``: parallel, no offsets) when
    nothing ``transformers``' wrapper does per call would change the result: the class does not
    override how it encodes, no truncation or padding is set on the backend, and the backend's
    special-token splitting is what the wrapper would set. Even then the first texts are encoded
    both ways and must agree. The ids are the same, in about half the time for 10,000 prompts."""
    if texts and _backend_is_faithful(tok):
        ids = [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        probe = texts[:8]
        if tok(probe, add_special_tokens=False)["input_ids"] == ids[: len(probe)]:
            return ids
    return tok(texts, add_special_tokens=False)["input_ids"]


def _backend_is_faithful(tok: Any) -> bool:
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - other transformers layouts: always take the wrapper
        return False
    backend = getattr(tok, "backend_tokenizer", None)
    cls = type(tok)
    return (
        isinstance(tok, TokenizersBackend)
        and all(getattr(cls, name) is getattr(TokenizersBackend, name) for name in ("__call__", "_encode_plus"))
        and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tok, "split_special_tokens", False))
    )


def _next_token_in_context(tok: Any, prompts: Sequence[Prompt], answer: str) -> int | None:
    """The one token that ``answer`` adds after every prompt it follows, or ``None``.

    Tokenizers that add a word-boundary marker of their own (SentencePiece's ``▁``) split a
    space-led answer on its own into two tokens, yet continue a prompt with one; what the model is
    asked to predict is that continuation."""
    base = tokenize(tok, [p.text for p in prompts])
    full = tokenize(tok, [p.text + answer for p in prompts])
    found = {f[-1] for b, f in zip(base, full) if len(f) == len(b) + 1 and f[: len(b)] == b}
    ok = all(len(f) == len(b) + 1 and f[: len(b)] == b for b, f in zip(base, full))
    return found.pop() if ok and len(found) == 1 else None


def _line_of(prompt: Prompt) -> str:
    line = prompt.meta.get("line")
    return f" (line {line})" if line is not None else ""


def _where(prompts: Sequence[Prompt], answer: str | None = None, prompt: Prompt | None = None) -> str:
    if prompt is None:
        prompt = next(p for p in prompts if answer in (p.correct, p.incorrect))
    text = prompt.text if len(prompt.text) <= 60 else prompt.text[:57] + "..."
    return f"prompt {text!r}{_line_of(prompt)}"


def auto_batch_size(lm: LoadedModel, max_len: int) -> int:
    """A batch size whose activations fit comfortably: on CUDA from free memory, elsewhere a fixed
    token budget that keeps per-batch overhead small without thrashing caches."""
    s = lm.shape
    # Rough bytes per token of live activations in one block (attention scores for eager are not
    # materialised with sdpa) plus the final hidden state; generous factor for temporaries.
    per_token = 4 * (12 * s.d_model + 4 * s.n_heads * max_len) * 2
    if lm.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(lm.device)
        budget = 0.5 * free
        return int(max(1, min(4096, budget // (per_token * max_len))))
    # CPU: ~2k tokens a batch keeps the MLP's activations near the last-level cache; measured on
    # GPT-2 small (bench/), 128 prompts of 16 tokens ran faster and with a third less peak memory
    # than one batch of 512.
    budget_tokens = 2048 if lm.device.type == "cpu" else 65536
    available = _available_host_memory()
    if lm.device.type == "cpu" and available:  # and never more than a quarter of free memory
        budget_tokens = min(budget_tokens, int(0.25 * available // per_token))
    return int(max(1, min(1024, budget_tokens // max_len)))


def _available_host_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux; ``None`` where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
) -> StudyResult:
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
    rank 0 gets the whole result, the other ranks ``None`` (:mod:`logitscope.distributed`).
    """
    _check_whole("top_k", top_k, 1)
    _check_whole("seed", seed, 0)
    _check_whole("attention_prompt", attention_prompt, 0)
    if batch_size is not None:
        _check_whole("batch_size", batch_size, 1)
    if attention_heads is not None and not (isinstance(attention_heads, str) and attention_heads == "all"):
        try:
            parse_heads(attention_heads)
        except ValueError as e:
            raise ArgumentError("attention_heads", attention_heads, f"{e} (or 'all')") from None
    parsed = parse_prompts(prompts)  # a typo in a file or a spec costs no model load
    ranks = distributed.current()  # None: one process
    lm = _as_loaded(model, tokenizer, device=device, dtype=dtype, device_map=device_map, ranks=ranks)
    if isinstance(parsed, GeneratedSet):
        prompts = parsed.generate(seed=seed, tokenizer=lm.tokenizer,  # built clean: nothing to lint
                                  progress=progress and (ranks is None or ranks.is_root))
    else:
        prompts = parsed
        for message in lint_prompts(prompts, tokenizer=lm.tokenizer):
            warn_prompts(message)  # attributed to the user's line, past run_study / run_patching
    n_heads = lm.shape.n_layers * lm.shape.n_heads
    if top_k > n_heads:
        raise ArgumentError("top_k", top_k, f"this model has {n_heads} heads; ask for at most {n_heads}")
    if attention_prompt >= len(prompts):
        raise ArgumentError("attention_prompt", attention_prompt, f"must be between 0 and {len(prompts) - 1} "
                            f"(there {'are' if len(prompts) != 1 else 'is'} {len(prompts)} prompt{'s' if len(prompts) != 1 else ''})")
    bos = lm.adapter.default_prepend_bos if prepend_bos is None else prepend_bos
    t_start = time.perf_counter()
    enc = encode_prompts(prompts, lm, prepend_bos=bos)
    prompts = _answers_as_text(prompts, enc, lm.tokenizer)
    t_encoded = time.perf_counter()
    lengths = enc.lengths
    if batch_size is None:
        batch_size = auto_batch_size(lm, int(lengths.max()))
        if ranks is not None:  # every rank runs the batches one process would
            batch_size = ranks.agree_min(batch_size, "the choice of batch size")

    # Sort by length so batches carry little padding; results go back to the prompts' order.
    order = np.argsort(lengths, kind="stable")
    rows = order if ranks is None else ranks.shard(order, batch_size)  # this rank's batches, in order
    in_dev = lm.adapter.embed(lm.model).weight.device
    rec = Recorder(lm)
    batches: list[BatchScalars] = []
    bar = _progress(len(rows), progress and (ranks is None or ranks.is_root))
    timing: dict[str, Any] = {"tokenize_s": t_encoded - t_start}
    # The hot loop makes the host wait for the device nowhere: each chunk's token ids, answer
    # positions and answer ids cross to the device in one asynchronous copy each (a 10,000-prompt
    # set is one chunk), batches are views into them, and every result stays on the device until
    # _assemble. tests/test_hot_loop.py checks the operators it dispatches and its source.
    with study_mode(lm.model), bar or contextlib.nullcontext():  # the model leaves as it came
        with rec, equivalent_kernels(lm.model):  # hot loop: start
            for chunk in _chunks(enc.ids, lengths, rows, batch_size):
                ids_dev = _to_device(chunk.ids, in_dev)
                pos_dev = _to_device(lengths[chunk.rows] - 1, in_dev)
                correct_dev = _to_device(enc.correct[chunk.rows], rec.out_device)
                incorrect_dev = _to_device(enc.incorrect[chunk.rows], rec.out_device)
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
        if ranks is None:
            per = _assemble(batches, order)  # the one device-to-host copy (and so the one wait) per field
        else:
            t_gather = time.perf_counter()
            per = ranks.gather_columns(rows, _assemble(batches), len(prompts), "the gather of the study's results")
            if per is None:
                return None  # rank 0 builds the result
            timing["gather_s"] = time.perf_counter() - t_gather
        t_assembled = time.perf_counter()
        kept = _heads_to_keep(attention_heads, per["heads"].mean(-1), top_k, lm.shape.n_layers, lm.shape.n_heads)
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
        n_tokens=lengths,
        top_k=top_k,
        seed=seed,
        prepend_bos=bos,
        version=_version(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{_FIELD_NAMES.get(k, k): v for k, v in per.items()},
    )
    fields["attention"] = attention
    timing["attention_s"] = time.perf_counter() - t_assembled
    timing["study_s"] = time.perf_counter() - t_start
    timing["prompts_per_s"] = len(prompts) / timing["study_s"]
    timing["world_size"] = 1 if ranks is None else ranks.world_size
    timing["prompts_per_rank"] = [len(prompts)] if ranks is None else ranks.shares(len(prompts), batch_size)
    return StudyResult(**fields, timing=timing)


# BatchScalars' field names (capture.py) -> StudyResult's (TransformerLens's hook names).
_FIELD_NAMES = {"attn": "attn_out", "mlp": "mlp_out", "heads": "head_results", "final_bias": "final_norm_bias"}


def _check_whole(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(name, value, "must be a whole number")
    if value < least:
        raise ArgumentError(name, value, f"must be at least {least}" if least else "must be 0 or more")


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
    lm = _as_loaded(model, tokenizer, device="auto", dtype="float32", device_map=None)
    enc = encode_prompts(load_prompts(parsed, tokenizer=lm.tokenizer), lm, prepend_bos=lm.adapter.default_prepend_bos)
    rec = Recorder(lm)
    return rec.directions(torch.from_numpy(enc.correct).to(rec.out_device), torch.from_numpy(enc.incorrect).to(rec.out_device))


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


def _assemble(batches: list[BatchScalars], order: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """Concatenate per-batch scalars (one host transfer per field) and undo the length sort (with
    ``order``; without, the prompts stay in batch order, and no batches give no fields)."""
    out: dict[str, np.ndarray | None] = {}
    if not batches:
        return out
    for name in BatchScalars.__dataclass_fields__:
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


def _heads_to_keep(attention_heads: Any, head_attribution: np.ndarray, top_k: int, n_layers: int,
                   n_heads: int) -> list[tuple[int, int]]:
    """The heads whose patterns the study keeps: by default those the report shows (the top
    ``top_k`` of each sign that have it), ``"all"``, or the heads named."""
    if attention_heads is None:
        shown = [signed_top_heads(head_attribution, top_k, sign) for sign in (1, -1)]
        return list(dict.fromkeys((l, h) for heads in shown for l, h, _ in heads))
    if isinstance(attention_heads, str) and attention_heads == "all":
        return [(l, h) for l in range(n_layers) for h in range(n_heads)]
    try:
        return list(dict.fromkeys(parse_heads(attention_heads, n_layers, n_heads)))
    except ValueError as e:
        raise ArgumentError("attention_heads", attention_heads, f"{e} (or 'all')") from None


@torch.inference_mode()
def attention_patterns(lm: LoadedModel, ids: list[int], prompt_index: int,
                       heads: Sequence[tuple[int, int]] | None = None) -> AttentionView:
    """The attention patterns of ``heads`` (default: every head) on one prompt, from a pass with
    eager attention (the kernel that returns them); only those heads' ``[T, T]`` are kept."""
    model = lm.model
    n_layers, n_heads = lm.shape.n_layers, lm.shape.n_heads
    kept = [(l, h) for l in range(n_layers) for h in range(n_heads)] if heads is None else list(heads)
    in_dev = lm.adapter.embed(model).weight.device
    with attention_implementation(model, "eager"):
        out = lm.adapter.base(model)(
            input_ids=torch.tensor([ids], device=in_dev), output_attentions=True, use_cache=False
        )
    T = len(ids)
    patterns = np.empty((len(kept), T, T), dtype=np.float32)
    for i, (layer, head) in enumerate(kept):
        patterns[i] = out.attentions[layer][0, head].float().cpu().numpy()
    del out
    str_tokens = [lm.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in ids]
    return AttentionView(prompt_index, tuple(str_tokens), patterns, tuple(kept), n_layers, n_heads)


def _as_loaded(model: Any, tokenizer: Any, *, device: Any, dtype: Any, device_map: Any,
               ranks: distributed.Ranks | None = None) -> LoadedModel:
    """``model`` as a :class:`LoadedModel`: loaded by name (in a process group, on this rank's own
    device), or wrapped as given."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str,)) or hasattr(model, "__fspath__"):
        return load_model(str(model), dtype=dtype, **distributed.placement(device, device_map, ranks))
    _check_model(model)
    if tokenizer is None:
        raise InputError("pass the model's tokenizer with an already-loaded model: run_study(..., tokenizer=tok)")
    return wrap_model(model, tokenizer)


MODELS_TAKEN = ("a hub id or alias ('gpt2'), a local folder, a .gguf file, a LoadedModel, or a Hugging Face "
                "transformers causal LM with its tokenizer=")


def _check_model(model: Any) -> None:
    """Refuse what is not a model logitscope can wrap, saying what it takes (``None``; a
    TransformerLens ``HookedTransformer``, whose modules are not the Hugging Face ones it hooks)."""
    if model is None:
        raise InputError(f"no model given (model=None): pass the model to study, {MODELS_TAKEN}")
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return
    kind = type(model).__name__
    if kind == "HookedTransformer" or (hasattr(model, "cfg") and hasattr(model, "run_with_hooks")):
        raise InputError(
            f"model is a TransformerLens {kind}; logitscope hooks the Hugging Face model itself: pass the "
            "transformers model it was built from (with tokenizer=) or its name, e.g. run_study(prompts, 'gpt2')"
        )
    raise InputError(f"model: expected {MODELS_TAKEN}; got {kind}")


def _progress(total: int | None, enabled: bool, *, desc: str = "study", unit: str = "prompts"):
    """A progress bar on stderr counting ``total`` ``unit`` (plural: "12/2000 prompts"), or None
    when not ``enabled``. Used as a context manager, a bar whose run fails or is interrupted
    (Ctrl-C) erases itself, so no half-drawn bar precedes the error; a finished one stays.
    :func:`close_progress_bars` erases any still open (the command line, before an error)."""
    if not enabled:
        return None
    return _bar_class()(total=total, desc=desc, unit=f" {unit}", file=sys.stderr,
                        dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} "
                        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


_BAR: list[type] = []  # the bar class, made on first use (tqdm is imported only when a bar is shown)


def _bar_class() -> type:
    if not _BAR:
        import weakref

        from tqdm.auto import tqdm  # the terminal's bar, or a notebook's widget

        class Bar(tqdm):
            open_bars: "weakref.WeakSet[Bar]" = weakref.WeakSet()

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                Bar.open_bars.add(self)

            def __exit__(self, kind, value, traceback):
                if kind is not None:
                    self.leave = False  # close() then clears its line instead of leaving it
                return super().__exit__(kind, value, traceback)

        _BAR.append(Bar)
    return _BAR[0]


def close_progress_bars() -> None:
    """Erase every progress bar still open (a run that stopped on an error or Ctrl-C), so that
    what is printed next starts on a clean line."""
    for bar in list(_BAR[0].open_bars) if _BAR else []:
        bar.leave = False
        bar.close()


def _version() -> str:
    from logitscope import __version__

    return __version__
