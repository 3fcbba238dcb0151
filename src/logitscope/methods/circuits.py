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

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import warnings

import numpy as np
import torch

from logitscope.inputs.circuits import ALL_POSITIONS, Circuit, CircuitClass, is_gpt2_small
from logitscope.errors import ArgumentError, InputError
from logitscope.stats import bootstrap_means, percentile_interval

Head = tuple[int, int]
# A set of nodes kept: each head and the positions it is kept at; None is the whole model (M).
Nodes = "dict[Head, tuple[str, ...]] | None"
# Positions written (ALL_BUT, "END", ...): every position but those (a head of M \ K whose class is
# kept at named positions: knocked out there only).
ALL_BUT = "all but"
# Where M \ K knocks K's heads out: at their class's positions (the paper's code), or, in results
# saved before that was so, at every position.
AT_NODES, AT_ALL = "class positions", "all positions"


def _label(heads) -> list[str]:
    return [f"L{l}H{h}" for l, h in heads]


def circuit_nodes(circuit: Circuit, without: frozenset = frozenset()) -> dict[Head, tuple[str, ...]]:
    """``C \\ without``: each circuit head not in ``without``, at its class's positions."""
    return {h: c.positions for c in circuit.classes for h in c.heads if h not in without}


def model_nodes(circuit: Circuit, n_layers: int, n_heads: int, without: frozenset,
                k_removed_at: str = AT_NODES) -> dict[Head, tuple[str, ...]] | None:
    """``M \\ without``: every head at every position but ``without``'s nodes, each of its heads
    knocked out at its class's positions only (``None``, nothing knocked out, when ``without`` is
    empty). ``k_removed_at=AT_ALL`` knocks them out at every position (results saved before)."""
    if not without:
        return None
    nodes: dict[Head, tuple[str, ...]] = {(l, h): (ALL_POSITIONS,) for l in range(n_layers) for h in range(n_heads)}
    for head in without:
        at = circuit.class_of(head).positions
        if k_removed_at == AT_ALL or ALL_POSITIONS in at:
            del nodes[head]
        else:
            nodes[head] = (ALL_BUT, *at)
    return nodes


def _key(nodes) -> Any:
    return None if nodes is None else frozenset(nodes.items())


@dataclass(frozen=True)
class Plan:
    """Every node set to evaluate and what each number is made of."""

    sets: list  # distinct node sets, [0] = C, [1] = ∅ (M is the unablated run itself)
    # (label, source, K, index of C\K, of M\K or None = M)
    completeness: list[tuple[str, str, tuple[Head, ...], int, int | None]]
    minimality: list[tuple[Head, str, tuple[Head, ...], int, int]]  # (v, class, K, index of C\K, of C\(K∪v))


@dataclass(frozen=True)
class Completeness:
    """Which sets K the completeness check uses: the empty set and each class always, ``random``
    random subsets, and ``greedy`` runs of :func:`greedy_search` (0: none), each of at most
    ``steps`` steps trying ``candidates`` heads a step (the paper's code: 5 runs, 10, 10)."""

    random: int = 5
    greedy: int = 0
    steps: int = 10
    candidates: int = 10

    def check(self) -> "Completeness":
        """Itself, or an :class:`ArgumentError` naming :func:`logitscope.api.patching.run_patching`'s argument."""
        for name, value, least, what in (
                ("circuit_random", self.random, 0, "random subsets K"),
                ("circuit_greedy", self.greedy, 0, "greedy searches"),
                ("circuit_greedy_steps", self.steps, 1, "steps of each greedy search"),
                ("circuit_greedy_candidates", self.candidates, 1, "heads tried a step")):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ArgumentError(name, value, "must be a whole number")
            if value < least:
                raise ArgumentError(name, value, f"the number of {what} must be {least} or more")
        return self

    def to_dict(self) -> dict[str, int]:
        return {"random": int(self.random), "greedy": int(self.greedy), "greedy_steps": int(self.steps),
                "greedy_candidates": int(self.candidates)}


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


def plan(circuit: Circuit, n_layers: int, n_heads: int, ks: list[tuple[str, str, tuple[Head, ...]]],
         k_removed_at: str = AT_NODES) -> Plan:
    """Every distinct node set that faithfulness, completeness (with the sets ``ks``: ``(label,
    source, K)``; ``M \\ K`` as :func:`model_nodes` with ``k_removed_at``) and minimality need."""
    sets: list = []
    index: dict = {}

    def add(nodes) -> int | None:
        if nodes is None:
            return None
        key = _key(nodes)
        if key not in index:
            index[key] = len(sets)
            sets.append(nodes)
        return index[key]

    add(circuit_nodes(circuit))
    add({})
    completeness = []
    for label, source, k in ks:
        k_set = frozenset(k)
        completeness.append((label, source, k, add(circuit_nodes(circuit, k_set)),
                             add(model_nodes(circuit, n_layers, n_heads, k_set, k_removed_at))))
    minimality = []
    for c in circuit.classes:
        for v in c.heads:
            k = circuit.k_set(v)
            minimality.append((v, c.name, k, add(circuit_nodes(circuit, frozenset(k))),
                               add(circuit_nodes(circuit, frozenset(k) | {v}))))
    return Plan(sets, completeness, minimality)


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
                prepend_bos: bool | None = None) -> "CircuitResult":
    """F of every node set the circuit's three measures need, over the pairs' clean prompts
    (``completeness``: which sets K, default 5 random ones and no greedy search; ``progress``: a
    tqdm bar, or None; ``prepend_bos``: whether the prompts were encoded with BOS, said in the result)."""
    from logitscope.methods.ablation import AblationRunner, GroupMeans, group_keys
    from logitscope.engine.patched import Engine
    from logitscope.inputs.positions import PositionAxis
    from logitscope.methods.patching.run import pair_batches

    sets_k = (completeness or Completeness()).check()
    circuit = check_circuit(circuit, lm, pairs)
    engine = Engine(lm)
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
        for b in pair_batches(pairs, axis, batch_size, device):
            run = engine.record(b.corrupted, b.end, b.correct, b.incorrect, acts=points)
            for key in points:
                means.add(key, b.rows, run.acts[key])
            step(len(b.rows))
    model = np.full(pairs.n, np.nan)

    def knock_out(sets: list, alone: int = 0) -> np.ndarray:
        """``[len(sets), N]``: F per prompt of each node set; the first ``alone`` sets run one by one,
        the rest in groups of as many as the memory budget allows."""
        values = np.full((len(sets), pairs.n), np.nan)
        first = min(alone, len(sets))
        for b in pair_batches(pairs, axis, batch_size, device):
            clean = engine.record(b.clean, b.end, b.correct, b.incorrect)
            corrupted = engine.record(b.corrupted, b.end, b.correct, b.incorrect,
                                      acts=points if ablation == "resample" else ())
            model[b.rows] = clean.logit_diff.cpu().double().numpy()
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
    known: dict = {}  # each node set's per-prompt F, by _key (None: M, the model itself)
    for nodes, v in zip(the_plan.sets, knock_out(the_plan.sets, alone=2)):
        known[_key(nodes)] = v
    known[None] = model
    ks = list(fixed)
    if sets_k.greedy:
        def incompleteness(candidates: list[tuple[Head, ...]]) -> np.ndarray:
            both = [(circuit_nodes(circuit, frozenset(k)), model_nodes(circuit, L, H, frozenset(k)))
                    for k in candidates]
            todo = list({_key(n): n for pair in both for n in pair if _key(n) not in known}.values())
            if todo:
                if progress is not None:
                    progress.total += pairs.n * len(todo)
                    progress.refresh()
                for nodes, v in zip(todo, knock_out(todo)):
                    known[_key(nodes)] = v
            return np.array([abs(known[_key(c)].mean() - known[_key(m)].mean()) for c, m in both])

        start = float(incompleteness([()])[0])
        found = greedy_search(incompleteness, circuit.heads, start, searches=sets_k.greedy, steps=sets_k.steps,
                              candidates=sets_k.candidates, seed=seed)
        ks += [(f"greedy {i + 1}", "greedy", k) for i, k in enumerate(found)]
        the_plan = plan(circuit, L, H, ks)
    values = np.stack([known[_key(nodes)] for nodes in the_plan.sets])
    templates = [" ".join(str(x) for x in k[1:]) if k[0] == "template" else f"{k[1]} tokens" for k in keys]
    return CircuitResult(circuit=circuit, ablation=ablation, model=model, values=values, plan=the_plan,
                         templates=tuple(templates), seed=seed, completeness_sets=sets_k,
                         random_requested=requested, prepend_bos=prepend_bos)


# ---------------------------------------------------------------------------------------------- result
@dataclass(frozen=True)
class CircuitResult:
    """Per-prompt logit differences of the model (``model``) and of each node set of ``plan``
    (``values[i]``; ``values[0]`` the circuit, ``values[1]`` no heads), and the measures made of them."""

    circuit: Circuit
    ablation: str
    model: np.ndarray  # [N]: F(M) per prompt
    values: np.ndarray  # [n_sets, N]
    plan: Plan
    templates: tuple[str, ...]  # each prompt's group for the means
    seed: int = 0
    timing: dict[str, float] = field(default_factory=dict)
    completeness_sets: Completeness = Completeness()  # ``random``: the random sets drawn
    random_requested: int | None = None  # the random sets asked for, when more than exist
    prepend_bos: bool | None = None  # whether the prompts began with BOS (None: not known)
    k_removed_at: str = AT_NODES  # M \ K: K's heads knocked out at their class's positions (AT_ALL: saved before)

    @property
    def title(self) -> str:
        """``circuit NAME``, or ``circuit`` for one with no name of its own."""
        return "circuit" if self.circuit.name == "circuit" else f"circuit {self.circuit.name}"

    @property
    def setting(self) -> str:
        """One line for the report: BOS or not (and the paper's setting), and which reading of M \\ K."""
        bos = {None: "", True: "BOS prepended to every prompt. ", False: "No BOS prepended. "}[self.prepend_bos]
        m = ("M \\ K: K's heads knocked out at their class's positions only, as the IOI paper's code"
             if self.k_removed_at == AT_NODES else "M \\ K: K's heads knocked out at every position (saved before "
             "logitscope took the paper's reading, at their class's positions only)")
        return bos + m + "." + (f" Note: {self.bos_note}." if self.bos_note else "")

    @property
    def bos_note(self) -> str | None:
        """For the IOI paper's circuit measured with BOS prepended: that the paper did not, and how to match it."""
        if self.circuit.source == "built-in" and self.prepend_bos:
            return ("BOS was prepended to every prompt; the IOI paper (IOIDataset(..., prepend_bos=False)) and ARENA "
                    "do not: run with --no-prepend-bos (prepend_bos=False) to measure the paper's setting")
        return None

    @property
    def n_prompts(self) -> int:
        return int(self.model.shape[0])

    @property
    def circuit_logit_diff(self) -> np.ndarray:
        return self.values[0]

    @property
    def no_heads_logit_diff(self) -> np.ndarray:
        return self.values[1]

    def _f(self, index: int | None) -> np.ndarray:
        return self.model if index is None else self.values[index]

    @cached_property
    def _resampled(self) -> np.ndarray:
        """``[1 + n_sets, n_resamples]``: each resample's F(M), then each set's F."""
        return bootstrap_means(np.concatenate([self.model[None], self.values]), seed=self.seed)

    def _stat(self, point: float, resampled: np.ndarray) -> dict[str, float | None]:
        from logitscope.results.numbers import json_number as _num

        with np.errstate(divide="ignore", invalid="ignore"):
            lo, hi = percentile_interval(resampled)
        return {"mean": _num(point), "ci95_low": _num(lo), "ci95_high": _num(hi)}

    def _f_stat(self, index: int | None) -> dict[str, float | None]:
        r = self._resampled
        return self._stat(self._f(index).mean(), r[0] if index is None else r[1 + index])

    @cached_property
    def measures(self) -> dict[str, Any]:
        """Every measure with its interval (results.json's ``patching.circuit`` without the labels)."""
        r = self._resampled
        rm, rc, rn = r[0], r[1], r[2]
        m, c, n = self.model.mean(), self.values[0].mean(), self.values[1].mean()
        with np.errstate(divide="ignore", invalid="ignore"):
            faith = {
                "gap": self._stat(abs(m - c), np.abs(rm - rc)),
                "fraction": self._stat(c / m, rc / rm),
                "normalised": self._stat((c - n) / (m - n), (rc - rn) / (rm - rn)),
            }
            completeness = []
            for label, source, k, ci, mi in self.plan.completeness:
                fc, fm = self._f(ci).mean(), self._f(mi).mean()
                rfc, rfm = r[1 + ci], r[0] if mi is None else r[1 + mi]
                completeness.append({"k": label, "source": source, "heads": _label(k),
                                     "circuit_without_k": self._f_stat(ci),
                                     "model_without_k": self._f_stat(mi),
                                     "incompleteness": self._stat(abs(fc - fm), np.abs(rfc - rfm))})
            minimality = []
            for v, cls, k, wk, wkv in self.plan.minimality:
                a, b = self._f(wk).mean(), self._f(wkv).mean()
                ra, rb = r[1 + wk], r[1 + wkv]
                minimality.append({"head": f"L{v[0]}H{v[1]}", "class": cls, "k": _label(k),
                                   "without_k": self._f_stat(wk), "without_k_and_head": self._f_stat(wkv),
                                   "score": self._stat(abs(a - b), np.abs(ra - rb)),
                                   "score_fraction": self._stat(abs(a - b) / m, np.abs(ra - rb) / rm)})
        return {"model": self._f_stat(None), "circuit": self._f_stat(0), "no_heads": self._f_stat(1),
                "faithfulness": faith, "completeness": completeness, "minimality": minimality}

    def by_template(self) -> list[dict[str, Any]]:
        """F(M), F(C) and F(∅) per group of the means (template, or number of tokens)."""
        from logitscope.results.numbers import json_number as _num

        names = np.array(self.templates)
        out = []
        for name in dict.fromkeys(self.templates):
            sel = names == name
            m, c, n = self.model[sel].mean(), self.values[0][sel].mean(), self.values[1][sel].mean()
            out.append({"template": name, "n": int(sel.sum()), "model": _num(m), "circuit": _num(c),
                        "no_heads": _num(n), "fraction": _num(c / m) if m else None})
        return out

    def to_dict(self) -> dict[str, Any]:
        """results.json's ``patching.circuit``."""
        doc = self.circuit.to_dict()
        doc.update({
            "ablation": self.ablation,
            "reference": "each knocked-out head's z is its mean over the counterpart prompts, per template and position"
                         if self.ablation == "mean" else f"each knocked-out head's z is {self.ablation}-ablated",
            "metric": "F(X): mean logit difference of the clean prompts with every head node outside X knocked out",
            "n_prompts": self.n_prompts,
            "k_removed_at": self.k_removed_at,
            "completeness_sets": {**self.completeness_sets.to_dict(),
                                  **({"random_requested": self.random_requested} if self.random_requested else {})},
            **self.measures,
            "by_template": self.by_template(),
        })
        if self.prepend_bos is not None:
            doc["prepend_bos"] = bool(self.prepend_bos)
        if self.bos_note:
            doc["note"] = self.bos_note
        if self.timing:
            doc["timing"] = dict(self.timing)
        return doc

    def per_prompt_arrays(self) -> dict[str, np.ndarray]:
        """patching_per_prompt.npz's ``circuit_*`` arrays: the readable stacks, and ``circuit_sets``
        (every node set's values, what :meth:`from_saved` reads) with ``circuit_group`` (each prompt's
        index into ``by_template``)."""
        p = self.plan
        names = list(dict.fromkeys(self.templates))
        return {
            "circuit_sets": self.values,
            "circuit_group": np.array([names.index(t) for t in self.templates]),
            "circuit_model": self.model,
            "circuit_circuit": self.values[0],
            "circuit_no_heads": self.values[1],
            "circuit_completeness_circuit_without_k": np.stack([self._f(ci) for *_, ci, _ in p.completeness]),
            "circuit_completeness_model_without_k": np.stack([self._f(mi) for *_, mi in p.completeness]),
            "circuit_minimality_without_k": np.stack([self._f(wk) for *_, wk, _ in p.minimality]),
            "circuit_minimality_without_k_and_head": np.stack([self._f(wkv) for *_, wkv in p.minimality]),
        }

    @classmethod
    def from_saved(cls, doc: dict[str, Any], arrays: dict[str, np.ndarray], n_layers: int, n_heads: int,
                   seed: int) -> "CircuitResult":
        """The result again from results.json's ``patching.circuit`` and the npz arrays
        (:meth:`per_prompt_arrays`): the same node sets, values and so the same measures."""
        def heads(labels) -> tuple[Head, ...]:
            return tuple((int(l), int(h)) for l, h in (x[1:].split("H") for x in labels))

        classes = tuple(CircuitClass(c["name"], heads(c["heads"]), tuple(c["positions"])) for c in doc["classes"])
        k = {heads([m["head"]])[0]: heads(m["k"]) for m in doc["minimality"]}
        circuit = Circuit(doc["name"], classes, k, doc["source"])
        # Results saved before the greedy search have no source and no completeness_sets: the label says.
        ks = [(e["k"], e.get("source") or e["k"].split()[0], heads(e["heads"])) for e in doc["completeness"]]
        sets = doc.get("completeness_sets") or {"random": sum(s == "random" for _, s, _ in ks), "greedy": 0,
                                                "greedy_steps": 10, "greedy_candidates": 10}
        names = [r["template"] for r in doc["by_template"]]
        at = doc.get("k_removed_at", AT_ALL)  # saved before M \ K kept K's heads outside their positions
        return cls(circuit=circuit, ablation=doc["ablation"], model=np.asarray(arrays["circuit_model"], np.float64),
                   values=np.asarray(arrays["circuit_sets"], np.float64), plan=plan(circuit, n_layers, n_heads, ks, at),
                   templates=tuple(names[int(i)] for i in arrays["circuit_group"]), seed=seed,
                   timing=dict(doc.get("timing", {})),
                   completeness_sets=Completeness(sets["random"], sets["greedy"], sets["greedy_steps"],
                                                  sets["greedy_candidates"]),
                   random_requested=sets.get("random_requested"), prepend_bos=doc.get("prepend_bos"), k_removed_at=at)

    def summary(self) -> str:
        ms = self.measures
        f = ms["faithfulness"]

        def ci(s):
            return f"[{s['ci95_low']:.4f}, {s['ci95_high']:.4f}]"

        lines = [
            f"{self.title} ({len(self.circuit.heads)} heads, {self.ablation}-ablation elsewhere): "
            f"F(M) {ms['model']['mean']:.4f} {ci(ms['model'])}, F(C) {ms['circuit']['mean']:.4f} {ci(ms['circuit'])}, "
            f"F(no heads) {ms['no_heads']['mean']:.4f}",
            f"  faithfulness |F(M) - F(C)| {f['gap']['mean']:.4f} {ci(f['gap'])}; F(C)/F(M) "
            f"{100 * f['fraction']['mean']:.1f}% [{100 * f['fraction']['ci95_low']:.1f}%, "
            f"{100 * f['fraction']['ci95_high']:.1f}%]",
        ]
        worst = max(ms["completeness"], key=lambda e: e["incompleteness"]["mean"])
        lines.append(f"  completeness: largest incompleteness {worst['incompleteness']['mean']:.4f} "
                     f"{ci(worst['incompleteness'])} (K = {worst['k']})")
        low = min(ms["minimality"], key=lambda e: e["score"]["mean"])
        lines.append(f"  minimality: smallest score {low['score']['mean']:.4f} {ci(low['score'])} ({low['head']})")
        if self.random_requested:
            lines.append(f"  note: {self.completeness_sets.random} random sets K, not {self.random_requested}: "
                         "no more distinct subsets exist beside the empty set and the classes")
        if self.bos_note:
            lines.append(f"  note: {self.bos_note}")
        return "\n".join(lines)
