"""Faithfulness, completeness and minimality of a circuit (Wang et al. 2022, §4), with intervals.

``F(X)`` is the mean logit difference of the clean prompts when every head *node* outside ``X`` is
knocked out: its ``z`` replaced by its mean over the reference distribution (the counterparts:
for IOI prompts the paper's ABC prompts), per template and position
(:class:`logitscope.methods.ablation.GroupMeans`; ``ablation="zero"`` or ``"resample"`` instead if
asked). A node is a head at the positions its class is kept at (every position, or named IOI
positions such as END or S2); ``M`` is every head at every position (the model itself, nothing
knocked out), ``∅`` no head (every head knocked out). Taking a head out of a set takes out all of
its nodes, and only them: ``M \\ K`` knocks out K's heads at their class's positions and leaves
them at every other position, as the paper's code does (``cobble_eval`` in redwoodresearch/
Easy-Transformer's ``completeness.py``: ``do_circuit_extraction(heads_to_remove=...)`` with each
head at its ``RELEVANT_TOKENS``).

- **faithfulness**: ``F(M)``, ``F(C)``, ``F(∅)``; the paper's ``|F(M) − F(C)|`` (0.46 for its circuit,
  13% of F(M)), ``F(C) / F(M)`` (87%), and ``(F(C) − F(∅)) / (F(M) − F(∅))``; also per template.
- **completeness**: for sets ``K ⊆ C``, the incompleteness ``|F(C \\ K) − F(M \\ K)|``, with K the
  empty set, each class of the circuit, random subsets (each head in with probability 1/2, drawn
  with the study's seed; distinct, and no more than exist), and, when asked, the sets the paper's greedy search finds
  (:func:`greedy_search`: K grown head by head to make the incompleteness as large as it can);
  :class:`Completeness` says how many of each.
- **minimality**: for each head v of C, ``|F(C \\ (K ∪ {v})) − F(C \\ K)|`` with the circuit's K for v
  (the paper's sets for the built-in circuit, else the other heads of v's class), also as a
  fraction of ``F(M)`` as the paper plots it.

Every F is a mean over prompts of per-prompt values, so each number's 95% interval comes from the
study's bootstrap resamples (same seed, same prompts drawn), each resample computing the statistic
from its own means.
"""

from __future__ import annotations

from typing import Callable

import warnings

import numpy as np
import torch

from logitscope.errors import InputError
from logitscope.inputs.circuits import ALL_POSITIONS, Circuit, is_gpt2_small
from logitscope.results.circuit import (ALL_BUT, CircuitResult, Completeness, Head, circuit_nodes, model_nodes,
                                       node_key, plan)

def completeness_sets(circuit: Circuit, random_k: int, seed: int) -> list[tuple[str, str, tuple[Head, ...]]]:
    """The fixed sets K of the completeness check, as ``(label, source, K)``: the empty set, each
    class, ``random_k`` random subsets (each head in with probability 1/2, drawn with ``seed``).

    The random sets are distinct from each other and from the empty set and the classes (a set
    drawn again is drawn anew), so ``random_k`` is capped at the number of subsets left, with a
    warning: a 2-head circuit has 4 subsets, not 100,000."""
    ks: list[tuple[str, str, tuple[Head, ...]]] = [("empty set", "empty", ())]
    ks += [(f"class {c.name}", "class", c.heads) for c in circuit.classes]
    heads = circuit.heads
    index = {h: i for i, h in enumerate(heads)}
    taken = {sum(1 << index[h] for h in k) for _, _, k in ks}
    left = 2 ** len(heads) - len(taken)
    if random_k > left:
        n = len(heads)
        warnings.warn(f"circuit_random={random_k}: the circuit has {2 ** n} subsets of its {n} head{'s' * (n != 1)}, "
                      f"{left} of them not the empty set or a class; drawing {left} random sets K, each once",
                      UserWarning, stacklevel=3)
    rng = np.random.default_rng(seed)
    for i, mask in enumerate(_distinct_masks(len(heads), min(random_k, left), taken, rng)):
        ks.append((f"random {i + 1}", "random", tuple(h for j, h in enumerate(heads) if mask >> j & 1)))
    return ks


def _distinct_masks(n: int, count: int, taken: set[int], rng: np.random.Generator) -> list[int]:
    """``count`` distinct subsets of ``n`` heads (as bit masks) not in ``taken``, each drawn with every
    head in with probability 1/2 and drawn again when already had; when ``count`` is over half of
    what is left, a random order of all the subsets left instead (so drawing never stalls)."""
    left = 2 ** n - len(taken)
    if count > left // 2:
        order = (int(m) for m in rng.permutation(2 ** n))
        return [m for m in order if m not in taken][:count]
    out: list[int] = []
    seen = set(taken)
    while len(out) < count:
        mask = sum(1 << j for j, p in enumerate(rng.random(n) < 0.5) if p)
        if mask not in seen:
            seen.add(mask)
            out.append(mask)
    return out


def greedy_search(incompleteness: Callable[[list[tuple[Head, ...]]], np.ndarray], heads: list[Head],
                  start: float, *, searches: int, steps: int, candidates: int, seed: int) -> list[tuple[Head, ...]]:
    """Sets K of ``heads`` with a large incompleteness, found greedily as the IOI paper does.

    The paper's code (``greed_search_max_brok_cob_diff`` in redwoodresearch/Easy-Transformer's IOI
    completeness experiments, the paper's appendix on completeness): ``searches`` times (5), start
    from K = ∅ (score ``start``, the incompleteness of ∅) and take ``steps`` steps (10); at each step draw
    ``candidates`` heads (10) of C \\ K at random, compute ``incompleteness(K ∪ {v})`` for each
    (``incompleteness`` takes a list of sets, so that one step's sets run together), and add the
    head with the largest score to K if that score exceeds K's; otherwise K stays and the next step
    draws again. Ties go to the first head in circuit order among those drawn.

    Where this differs from the paper's code: (1) its candidates are (head, position) nodes, here a
    head with all its class's positions (the same thing for a circuit whose heads each have one
    class, as the paper's); (2) it
    keeps every set a search passes after its fifth step and re-measures them on a larger prompt
    set, here each search gives its last K (the largest incompleteness it reached, as a step only
    adds a head that raises the score), found and measured on the same prompts, so the score is
    the largest of many tries and its interval does not count that choice; (3) a step with fewer
    than ``candidates`` heads left tries them all, and when it then finds no better head the
    search stops (every later step would try the same heads). The candidates come from
    ``numpy.random.default_rng([seed, 1])``, a stream apart from the random subsets'. Returns
    each search's K, heads in the order added, searches that end at a set already found left out.
    """
    rng = np.random.default_rng([seed, 1])
    found: list[tuple[Head, ...]] = []
    for _ in range(searches):
        k: list[Head] = []
        best = start
        for _ in range(steps):
            rest = [h for h in heads if h not in k]
            if not rest:
                break
            n = min(candidates, len(rest))
            tried = [rest[i] for i in sorted(rng.choice(len(rest), size=n, replace=False))]
            scores = np.asarray(incompleteness([(*k, v) for v in tried]), dtype=np.float64)
            i = int(np.argmax(scores))
            if scores[i] > best:
                k.append(tried[i])
                best = float(scores[i])
            elif n == len(rest):
                break
        if frozenset(k) not in {frozenset(f) for f in found}:
            found.append(tuple(k))
    return found


def _mask(nodes: dict[Head, tuple[str, ...]], layer: int, n_heads: int, b, pairs) -> torch.Tensor:
    """``[B, T, H]``: True where a node of ``nodes`` in ``layer`` is kept, for the batch's prompts."""
    B, T = b.clean.shape
    keep = torch.zeros(B, T, n_heads, dtype=torch.bool)
    rows = torch.arange(B)
    for (l, h), positions in nodes.items():
        if l != layer:
            continue
        if ALL_POSITIONS in positions:
            keep[:, :, h] = True
            continue
        but = positions[0] == ALL_BUT  # kept everywhere except at these positions
        if but:
            keep[:, :, h] = True
        for p in positions[1:] if but else positions:
            at = pairs.lengths[b.rows] - 1 if p == "END" else pairs.positions[p][b.rows]
            keep[rows, torch.as_tensor(at), h] = not but
    return keep


def _knockout(replacement: torch.Tensor, keep: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """z of one layer: kept where ``keep`` ``[G*B, T, H]`` says, else ``replacement`` ``[B, T, H, d]``."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        G = act.shape[0] // replacement.shape[0]
        other = replacement.to(act.dtype).repeat(G, 1, 1, 1)
        return torch.where(keep.to(act.device)[..., None], act, other)

    return fn


def check_circuit(circuit: Circuit, lm, pairs) -> Circuit:
    """The circuit resolved for this model and checked against the prompts' positions."""
    shape = lm.shape
    if circuit.source == "built-in" and not is_gpt2_small(
            {"model": lm.name, "family": lm.adapter.family, "n_layers": shape.n_layers, "n_heads": shape.n_heads}):
        raise InputError(f"circuit ioi is the IOI paper's circuit of GPT-2 small; this model ({lm.name}, "
                         f"{lm.adapter.family}, {shape.n_layers} layers x {shape.n_heads} heads) is not GPT-2 small: "
                         "give a circuit file or heads such as 'L9H9,L9H6'")
    resolved = circuit.resolve(shape.n_layers, shape.n_heads)
    named = resolved.positions_used - {"END"}
    if named and pairs.positions is None:
        classes = [c.name for c in resolved.classes if set(c.positions) & named]
        raise InputError(f"circuit {resolved.source}: class {classes[0]!r} is kept at {', '.join(sorted(named))}, named "
                         "positions that exist only for IOI prompts (their names single tokens found once and twice); "
                         "keep it at END or all, or use IOI prompts")
    return resolved


def run_circuit(lm, prompts, pairs, circuit: Circuit, *, ablation: str, batch_size: int, seed: int,
                completeness: Completeness | None = None, progress=None,
                prepend_bos: bool | None = None, metric=None) -> "CircuitResult":
    """F of every node set the circuit's three measures need, over the pairs' clean prompts
    (``completeness``: which sets K, default 5 random ones and no greedy search; ``progress``: a
    tqdm bar, or None; ``prepend_bos``: whether the prompts were encoded with BOS, said in the result;
    ``metric``: F's metric, :mod:`logitscope.engine.metrics`, the logit difference by default)."""
    from logitscope.methods.ablation import AblationRunner, GroupMeans, group_keys
    from logitscope.engine.patched import Engine
    from logitscope.inputs.positions import PositionAxis
    from logitscope.methods.patching.run import pair_batches

    sets_k = (completeness or Completeness()).check()
    circuit = check_circuit(circuit, lm, pairs)
    engine = Engine(lm, metric)
    L, H = engine.n_layers, engine.points.n_heads
    fixed = completeness_sets(circuit, sets_k.random, seed)
    drawn = sum(source == "random" for _, source, _ in fixed)
    requested = sets_k.random if drawn < sets_k.random else None
    sets_k = Completeness(drawn, sets_k.greedy, sets_k.steps, sets_k.candidates)
    the_plan = plan(circuit, L, H, fixed)
    points = [("z", l) for l in range(L)]
    keys = group_keys(prompts, pairs.lengths)
    means = GroupMeans(keys, pairs.lengths) if ablation == "mean" else None
    if progress is not None:  # a tqdm bar: its total is known once the plan is (a greedy search adds to it)
        progress.total = pairs.n * (len(the_plan.sets) + (ablation == "mean"))
        progress.refresh()
    step = progress.update if progress is not None else (lambda n: None)
    T = int(pairs.lengths.max())
    runner = AblationRunner(engine, ablation, {}, False, means, pairs.n, 4 * batch_size * T)
    axis = PositionAxis("end", ["END"], (pairs.lengths - 1)[None].copy())
    device = engine.in_device
    if means is not None:  # the reference distribution's means, before any knocked-out run
        means.record(engine, pair_batches(pairs, axis, batch_size, device), points, step)
    model = np.full(pairs.n, np.nan)

    def knock_out(sets: list, alone: int = 0) -> np.ndarray:
        """``[len(sets), N]``: F per prompt of each node set; the first ``alone`` sets run one by one,
        the rest in groups of as many as the memory budget allows."""
        values = np.full((len(sets), pairs.n), np.nan)
        first = min(alone, len(sets))
        for b in pair_batches(pairs, axis, batch_size, device):
            clean = engine.record(b.clean, b.end, b.correct, b.incorrect)
            corrupted = engine.record(b.corrupted, b.end, b.correct, b.incorrect,
                                      acts=points if ablation == "resample" else (), reference=clean)
            model[b.rows] = clean.value.cpu().double().numpy()
            replacement = [runner.replacement(("z", l), b, clean, corrupted) for l in range(L)]
            B = clean.batch
            size = max(1, runner.budget // max(1, B * clean.length))
            starts = [*range(first), *range(first, len(sets), size)]
            for s, stop in zip(starts, [*starts[1:], len(sets)]):
                chunk = sets[s:stop]
                masks = [torch.cat([_mask(nodes, l, H, b, pairs) for nodes in chunk]) for l in range(L)]
                ablated = [l for l in range(L) if not bool(masks[l].all())]
                if not ablated:  # every head kept at every position: the model itself, F(M)
                    values[s:stop, b.rows] = model[b.rows]
                    continue
                hooks = {("z", l): _knockout(replacement[l], masks[l]) for l in ablated}
                out = engine.patched(clean, ablated[0], groups=len(chunk), hooks=hooks, end=b.end,
                                     correct=b.correct, incorrect=b.incorrect)
                values[s:stop, b.rows] = out.view(len(chunk), B).cpu().double().numpy()
                step(len(chunk) * B)
        return values

    # The circuit and the no-heads set run alone, as a single ablation of the same heads does
    # (logitscope.methods.ablation), so F(∅) is that run's number exactly; the rest in groups.
    known: dict = {}  # each node set's per-prompt F, by node_key (None: M, the model itself)
    for nodes, v in zip(the_plan.sets, knock_out(the_plan.sets, alone=2)):
        known[node_key(nodes)] = v
    known[None] = model
    ks = list(fixed)
    if sets_k.greedy:
        def incompleteness(candidates: list[tuple[Head, ...]]) -> np.ndarray:
            both = [(circuit_nodes(circuit, frozenset(k)), model_nodes(circuit, L, H, frozenset(k)))
                    for k in candidates]
            todo = list({node_key(n): n for pair in both for n in pair if node_key(n) not in known}.values())
            if todo:
                if progress is not None:
                    progress.total += pairs.n * len(todo)
                    progress.refresh()
                for nodes, v in zip(todo, knock_out(todo)):
                    known[node_key(nodes)] = v
            return np.array([abs(known[node_key(c)].mean() - known[node_key(m)].mean()) for c, m in both])

        start = float(incompleteness([()])[0])
        found = greedy_search(incompleteness, circuit.heads, start, searches=sets_k.greedy, steps=sets_k.steps,
                              candidates=sets_k.candidates, seed=seed)
        ks += [(f"greedy {i + 1}", "greedy", k) for i, k in enumerate(found)]
        the_plan = plan(circuit, L, H, ks)
    values = np.stack([known[node_key(nodes)] for nodes in the_plan.sets])
    templates = [" ".join(str(x) for x in k[1:]) if k[0] == "template" else f"{k[1]} tokens" for k in keys]
    return CircuitResult(circuit=circuit, ablation=ablation, model=model, values=values, plan=the_plan,
                         templates=tuple(templates), seed=seed, completeness_sets=sets_k,
                         random_requested=requested, prepend_bos=prepend_bos, metric=engine.metric.key,
                         metric_description=None if engine.metric.is_logit_diff else engine.metric.description)


