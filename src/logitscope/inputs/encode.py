"""Prompts to token ids: tokenising (batched, fast tokenizer) and encoding a prompt set for a model,
with the checks every method relies on (single-token answers that are not special tokens, correct ≠
incorrect, the model's context)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from logitscope.errors import ArgumentError, InputError
from logitscope.inputs.lint import special_answer, warn_prompts
from logitscope.inputs.prompt import Prompt, is_token_id, members

if TYPE_CHECKING:
    from logitscope.models.load import LoadedModel

__all__ = ["Encoded", "encode_prompts", "line_of", "tokenize", "where"]


@dataclass
class Encoded:
    """Token ids for a prompt set: prompts (BOS prepended if asked) and single-token answers.

    ``correct`` / ``incorrect``: each prompt's answer id ``[N]`` (for an answer set, its first
    alternative's; for an answer of several tokens, its first token's); ``correct_set`` /
    ``incorrect_set``: where some answer is a set of several alternatives, every prompt's set
    ``[N, K]`` padded with ``-1`` (else ``None``); ``correct_tokens`` / ``incorrect_tokens``: where
    some answer is several tokens (``several``), every prompt's answer tokens in context (else ``None``)."""

    ids: list[list[int]]
    correct: np.ndarray
    incorrect: np.ndarray
    correct_set: np.ndarray | None = None
    incorrect_set: np.ndarray | None = None
    correct_tokens: list[tuple[int, ...]] | None = None  # where some answer is several tokens: each prompt's, in context
    incorrect_tokens: list[tuple[int, ...]] | None = None

    @property
    def several(self) -> bool:
        """Whether some answer is several tokens (scored by teacher forcing: :mod:`logitscope.inputs.answers`)."""
        return self.correct_tokens is not None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def _answers(p: Prompt) -> tuple:
    """Every alternative of the prompt's two answers."""
    return members(p.correct) + members(p.incorrect)


def encode_prompts(prompts: Sequence[Prompt], lm: LoadedModel, *, prepend_bos: bool = True,
                   sets: bool = False, several: bool = False) -> Encoded:
    """Tokenize (batched, fast tokenizer) and validate: each answer (each alternative of an answer
    set) exactly one token, correct ≠ incorrect (no token in both sets; an answer of several tokens
    is compared whole, so it may face a set holding its first token), every prompt within the
    model's context. Errors name the prompt and what to do. ``sets``: whether the caller measures
    answer sets (the study, the causal methods and edges); else a set of several alternatives is an
    error (``logit_diff_directions``: one unembedding direction per answer). ``several``: whether an
    answer of several tokens is measured (teacher-forced, by the study and the causal methods), else
    an error (edges, intervene)."""
    if not sets:
        p = next((p for p in prompts if len(members(p.correct)) > 1 or len(members(p.incorrect)) > 1), None)
        if p is not None:
            raise InputError(f"{where(prompts, prompt=p)}: answer sets ({list(members(p.correct))} / "
                             f"{list(members(p.incorrect))}) are measured by run, patch, ablate, paths, circuit and "
                             "edges; this one takes one token per answer (one direction each): give one")
    tok = lm.tokenizer
    ids = tokenize(tok, [p.text for p in prompts])
    if prepend_bos:
        bos = tok.bos_token_id
        if bos is None:
            raise ArgumentError("prepend_bos", True, "the tokenizer has no BOS token, so none can be prepended",
                                fix=False)
        ids = [[bos] + x for x in ids]
    given = {a for p in prompts for a in _answers(p) if is_token_id(a)}
    vocab = lm.adapter.unembed(lm.model).weight.shape[0]
    for a in sorted(given):
        if a >= vocab:
            p = next(p for p in prompts if a in _answers(p))
            raise InputError(f"{where(prompts, prompt=p)}: answer id {a} is not a token of this model "
                             f"(its vocabulary has {vocab} tokens, ids 0-{vocab - 1})")
    answers = sorted({a for p in prompts for a in _answers(p) if not is_token_id(a)})
    answer_ids: dict[str | int, list[int]] = {a: [a] for a in given}
    if answers:
        answer_ids.update(zip(answers, tokenize(tok, answers)))
    bad = []
    long: set = set()  # answers of several tokens (with ``several``)
    for a, toks in answer_ids.items():
        if len(toks) != 1:
            in_context = _next_token_in_context(tok, [p for p in prompts if a in _answers(p)], a)
            if in_context is not None:  # e.g. SentencePiece: " Mary" alone is ['▁', '▁Mary']
                answer_ids[a] = [in_context]
            elif several and toks:
                long.add(a)
            else:
                bad.append(a)
    if bad:  # name the first in file order, count the others, so one run finds them all
        first_at = {a: next(i for i, p in enumerate(prompts) if a in _answers(p)) for a in bad}
        bad.sort(key=first_at.__getitem__)
        a, toks = bad[0], answer_ids[bad[0]]
        pieces = [tok.decode([t]) for t in toks]
        hint = "" if a.startswith(" ") or not a else f" (did you mean {' ' + a!r}, with a leading space?)"
        others = ""
        if len(bad) > 1:
            shown = ", ".join(f"{b!r}{line_of(prompts[first_at[b]])}" for b in bad[1:6])
            others = f"; {len(bad) - 1} other answer{'s' if len(bad) > 2 else ''} too: {shown}{', ...' if len(bad) > 6 else ''}"
        measured = "" if not toks or several else (
            " (answers of several tokens are measured, teacher-forced, by run, patch, ablate, paths and circuit; "
            "edges and intervene take one token per answer)")
        raise InputError(
            f"{where(prompts, a)}: answer {a!r} is {len(toks)} tokens {pieces} for this model's tokenizer, "
            f"not one; choose an answer that is a single token{hint}{others}{measured}"
        )
    correct = np.array([answer_ids[members(p.correct)[0]][0] for p in prompts], dtype=np.int64)
    incorrect = np.array([answer_ids[members(p.incorrect)[0]][0] for p in prompts], dtype=np.int64)
    sequences = None
    if long:
        sequences = _several(prompts, tok, long, answer_ids)
        correct = np.array([s[0] for s in sequences[0]], dtype=np.int64)
        incorrect = np.array([s[0] for s in sequences[1]], dtype=np.int64)
    special = special_answer(prompts, correct, incorrect, tok)
    if special is not None:
        i, a, t = special
        raise InputError(
            f"{where(prompts, prompt=prompts[i])}: answer {a!r} is the tokenizer's special token "
            f"{tok.convert_ids_to_tokens(t)!r} (id {t}), not text the model writes after the prompt; "
            "choose an answer that is an ordinary single token (' Mary')"
        )
    correct_set = incorrect_set = None
    if any(len(members(p.correct)) > 1 or len(members(p.incorrect)) > 1 for p in prompts):
        correct_set, incorrect_set = _set_matrices(prompts, answer_ids, tok, long)
        if sequences is not None:  # an answer of several tokens: its first token in context
            for i, p in enumerate(prompts):
                for m, answer, seq in ((correct_set, p.correct, sequences[0][i]),
                                       (incorrect_set, p.incorrect, sequences[1][i])):
                    if members(answer)[0] in long:
                        m[i] = -1
                        m[i, 0] = seq[0]
        same = np.array([i for i, p in enumerate(prompts) if sequences is not None and members(p.correct)[0] in long
                         and members(p.incorrect)[0] in long and sequences[0][i] == sequences[1][i]], dtype=np.int64)
    else:
        same = np.nonzero(correct == incorrect)[0]
        if sequences is not None:  # answers of several tokens may share their first tokens, not all of them
            same = np.array([i for i in same if sequences[0][i] == sequences[1][i]], dtype=np.int64)
    if same.size:
        p = prompts[int(same[0])]
        what = "token" if sequences is None or len(sequences[0][int(same[0])]) == 1 else "tokens"
        raise InputError(
            f"{where(prompts, prompt=p)}: correct and incorrect answers are the same {what} ({p.correct!r}); "
            "the logit difference would be zero"
        )
    empty = [i for i, x in enumerate(ids) if len(x) == 0]
    if empty:
        raise InputError(f"{where(prompts, prompt=prompts[empty[0]])}: the prompt is empty")
    n_ctx = lm.n_ctx
    if n_ctx is not None:
        long = [i for i, x in enumerate(ids) if len(x) > n_ctx]
        if long:
            i = long[0]
            raise InputError(
                f"{where(prompts, prompt=prompts[i])}: the prompt is {len(ids[i])} tokens"
                f"{' with BOS' if prepend_bos else ''}, longer than the model's context of {n_ctx}; shorten it"
            )
    return Encoded(ids, correct, incorrect, correct_set, incorrect_set,
                   *(sequences if sequences is not None else (None, None)))


def _several(prompts: Sequence[Prompt], tok: Any, long: set, answer_ids: dict
             ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Each prompt's correct and incorrect answer tokens, those of several tokens (``long``) in the
    prompt's context; an error for an alternative of several tokens in a set, or an answer that
    merges with its prompt's last token."""
    from logitscope.inputs.answers import tokens_in_context

    in_context: dict[tuple[int, str], tuple[int, ...]] = {}
    for a in long:  # one batched tokenisation per answer, over the prompts it follows
        at = [i for i, p in enumerate(prompts) if a in _answers(p)]
        got = tokens_in_context(tok, [prompts[i].text for i in at], a, lambda t: tokenize(tok, t))
        if got is not None:
            in_context.update({(i, a): tuple(g) for i, g in zip(at, got)})
    out: tuple[list[tuple[int, ...]], list[tuple[int, ...]]] = ([], [])
    for n, p in enumerate(prompts):
        for side, answer in enumerate((p.correct, p.incorrect)):
            alts = members(answer)
            a = alts[0]
            if len(alts) > 1 and any(x in long for x in alts):
                x = next(x for x in alts if x in long)
                pieces = [tok.decode([t]) for t in tokenize(tok, [x])[0]]
                raise InputError(f"{where(prompts, prompt=p)}: answer {x!r} is {len(pieces)} tokens {pieces} in a set of "
                                 "alternatives; a set's alternatives must be one token each (sets of alternatives of "
                                 "several tokens are not supported: give one answer of several tokens, or single-token "
                                 "alternatives)")
            if a not in long:
                out[side].append((answer_ids[a][0],))
                continue
            got = in_context.get((n, a)) or tokens_in_context(tok, [p.text], a, lambda t: tokenize(tok, t))
            if got is None:
                raise InputError(f"{where(prompts, prompt=p)}: answer {a!r} changes the prompt's own tokens when "
                                 "appended to it (it merges with the prompt's last token), so it cannot be "
                                 "teacher-forced after the prompt; start the answer with a space or end the prompt "
                                 "before it")
            got = tuple(got[0]) if isinstance(got, list) else got
            if isinstance(a, str) and not a[0].isspace() and not p.text[-1].isspace():
                warn_prompts(f"{where(prompts, prompt=p)}: answer {a!r} has no leading space, so it is teacher-forced "
                             f"as {len(got)} tokens {[tok.decode([t]) for t in got]} glued to the prompt's last word; "
                             f"did you mean {' ' + a!r}?")
            out[side].append(got)
    return out


def _set_matrices(prompts: Sequence[Prompt], answer_ids: dict, tok: Any, long: set
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's correct and incorrect sets as token ids ``[N, K]`` padded with ``-1`` (a token
    given twice in one set counts once); an error for a token in both sets, or a special token.

    An answer of several tokens (in ``long``) is one answer, not its first token: it may face a set
    holding that token (" New York" against [" New", " Boston"]); the caller compares it whole."""
    rows: list[tuple[list[int], list[int]]] = []
    for p in prompts:
        c = list(dict.fromkeys(answer_ids[a][0] for a in members(p.correct)))
        i = list(dict.fromkeys(answer_ids[a][0] for a in members(p.incorrect)))
        whole = members(p.correct)[0] in long or members(p.incorrect)[0] in long
        shared = [] if whole else [t for t in c if t in i]
        if shared:
            text = tok.decode([shared[0]])
            raise InputError(f"{where(prompts, prompt=p)}: the token {text!r} (id {shared[0]}) is in both the correct "
                             "and the incorrect answer set; an alternative belongs to one set only")
        special = set(getattr(tok, "all_special_ids", None) or ()) & set(c + i)
        if special:
            t = min(special)
            raise InputError(f"{where(prompts, prompt=p)}: answer set member {tok.convert_ids_to_tokens(t)!r} (id {t}) "
                             "is the tokenizer's special token, not text the model writes; remove it from the set")
        rows.append((c, i))
    out = []
    for side in (0, 1):
        width = max(len(r[side]) for r in rows)
        m = np.full((len(rows), width), -1, dtype=np.int64)
        for n, r in enumerate(rows):
            m[n, : len(r[side])] = r[side]
        out.append(m)
    return out[0], out[1]


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


def line_of(prompt: Prompt) -> str:
    line = prompt.meta.get("line")
    return f" (line {line})" if line is not None else ""


def where(prompts: Sequence[Prompt], answer: str | None = None, prompt: Prompt | None = None) -> str:
    if prompt is None:
        prompt = next(p for p in prompts if answer in _answers(p))
    text = prompt.text if len(prompt.text) <= 60 else prompt.text[:57] + "..."
    return f"prompt {text!r}{line_of(prompt)}"
