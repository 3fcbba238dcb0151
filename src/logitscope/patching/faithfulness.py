"""Faithfulness, completeness and minimality of a circuit (Wang et al. 2022, §4), with intervals.

``F(X)`` is the mean logit difference of the clean prompts when every head *node* outside ``X`` is
knocked out: its ``z`` replaced by its mean over the reference distribution (the counterparts:
for IOI prompts the paper's ABC prompts), per template and position
(:class:`logitscope.patching.ablation.GroupMeans`; ``ablation="zero"`` or ``"resample"`` instead if
asked). A node is a head at the positions its class is kept at (every position, or named IOI
positions such as END or S2); ``M`` is every head at every position (the model itself, nothing
knocked out), ``∅`` no head (every head knocked out). Taking a head out of a set takes out all of
its nodes.

- **faithfulness**: ``F(M)``, ``F(C)``, ``F(∅)``; the paper's ``|F(M) − F(C)|`` (0.46 for its circuit,
  13% of F(M)), ``F(C) / F(M)`` (87%), and ``(F(C) − F(∅)) / (F(M) − F(∅))``; also per template.
- **completeness**: for sets ``K ⊆ C``, the incompleteness ``|F(C \\ K) − F(M \\ K)|``, with K the
  empty set, each class of the circuit, and ``random_k`` random subsets (each head in with
  probability 1/2, drawn with the study's seed). The paper also searches K greedily; not done here.
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

import numpy as np
import torch

from logitscope.circuits import ALL_POSITIONS, Circuit, CircuitClass, is_gpt2_small
from logitscope.errors import InputError
from logitscope.stats import bootstrap_means, percentile_interval

Head = tuple[int, int]
# A set of nodes kept: each head and the positions it is kept at; None is the whole model (M).
Nodes = "dict[Head, tuple[str, ...]] | None"


def _label(heads) -> list[str]:
    return [f"L{l}H{h}" for l, h in heads]


def circuit_nodes(circuit: Circuit, without: frozenset = frozenset()) -> dict[Head, tuple[str, ...]]:
    """``C \\ without``: each circuit head not in ``without``, at its class's positions."""
    return {h: c.positions for c in circuit.classes for h in c.heads if h not in without}


def model_nodes(n_layers: int, n_heads: int, without: frozenset) -> dict[Head, tuple[str, ...]] | None:
    """``M \\ without`` (``None``, nothing knocked out, when ``without`` is empty)."""
    if not without:
        return None
    return {(l, h): (ALL_POSITIONS,) for l in range(n_layers) for h in range(n_heads) if (l, h) not in without}


def _key(nodes) -> Any:
    return None if nodes is None else frozenset(nodes.items())


@dataclass(frozen=True)
class Plan:
    """Every node set to evaluate and what each number is made of."""

    sets: list  # distinct node sets, [0] = C, [1] = ∅ (M is the unablated run itself)
    completeness: list[tuple[str, tuple[Head, ...], int, int | None]]  # (label, K, index of C\K, of M\K or None = M)
    minimality: list[tuple[Head, str, tuple[Head, ...], int, int]]  # (v, class, K, index of C\K, of C\(K∪v))


def completeness_sets(circuit: Circuit, random_k: int, seed: int) -> list[tuple[str, tuple[Head, ...]]]:
    """The sets K of the completeness check: the empty set, each class, ``random_k`` random subsets
    (each head in with probability 1/2, drawn with ``seed``)."""
    ks: list[tuple[str, tuple[Head, ...]]] = [("empty set", ())]
    ks += [(f"class {c.name}", c.heads) for c in circuit.classes]
    rng = np.random.default_rng(seed)
    heads = circuit.heads
    for i in range(random_k):
        pick = rng.random(len(heads)) < 0.5
        ks.append((f"random {i + 1}", tuple(h for h, p in zip(heads, pick) if p)))
    return ks


def plan(circuit: Circuit, n_layers: int, n_heads: int, ks: list[tuple[str, tuple[Head, ...]]]) -> Plan:
    """Every distinct node set that faithfulness, completeness (with the sets ``ks``) and minimality need."""
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
    for label, k in ks:
        k_set = frozenset(k)
        completeness.append((label, k, add(circuit_nodes(circuit, k_set)), add(model_nodes(n_layers, n_heads, k_set))))
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
        for p in positions:
            at = pairs.lengths[b.rows] - 1 if p == "END" else pairs.positions[p][b.rows]
            keep[rows, torch.as_tensor(at), h] = True
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
                random_k: int = 5, progress=None) -> "CircuitResult":
    """F of every node set the circuit's three measures need, over the pairs' clean prompts
    (``progress``: a tqdm bar, or None)."""
    from logitscope.patching.ablation import AblationRunner, GroupMeans, group_keys
    from logitscope.patching.engine import Engine
    from logitscope.patching.positions import PositionAxis
    from logitscope.patching.run import pair_batches

    circuit = check_circuit(circuit, lm, pairs)
    engine = Engine(lm)
    L, H = engine.n_layers, engine.points.n_heads
    the_plan = plan(circuit, L, H, completeness_sets(circuit, random_k, seed))
    points = [("z", l) for l in range(L)]
    keys = group_keys(prompts, pairs.lengths)
    means = GroupMeans(keys, pairs.lengths) if ablation == "mean" else None
    if progress is not None:  # a tqdm bar: its total is known once the plan is
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
    values = np.full((len(the_plan.sets), pairs.n), np.nan)
    model = np.full(pairs.n, np.nan)
    for b in pair_batches(pairs, axis, batch_size, device):
        clean = engine.record(b.clean, b.end, b.correct, b.incorrect)
        corrupted = engine.record(b.corrupted, b.end, b.correct, b.incorrect,
                                  acts=points if ablation == "resample" else ())
        model[b.rows] = clean.logit_diff.cpu().double().numpy()
        replacement = [runner.replacement(("z", l), b, clean, corrupted) for l in range(L)]
        B = clean.batch
        size = max(1, runner.budget // max(1, B * clean.length))
        # The circuit and the no-heads set run alone, as a single ablation of the same heads does
        # (logitscope.patching.ablation), so F(∅) is that run's number exactly; the rest in groups.
        starts = [0, 1, *range(2, len(the_plan.sets), size)]
        for s, stop in zip(starts, [*starts[1:], len(the_plan.sets)]):
            chunk = the_plan.sets[s:stop]
            masks = [torch.cat([_mask(nodes, l, H, b, pairs) for nodes in chunk]) for l in range(L)]
            ablated = [l for l in range(L) if not bool(masks[l].all())]
            if not ablated:  # every head kept at every position: the model itself, F(M)
                values[s:stop, b.rows] = model[b.rows]
                continue
            hooks = {("z", l): _knockout(replacement[l], masks[l]) for l in ablated}
            out = engine.patched(clean, ablated[0], groups=len(chunk), hooks=hooks, end=b.end, correct=b.correct,
                                 incorrect=b.incorrect)
            values[s:stop, b.rows] = out.view(len(chunk), B).cpu().double().numpy()
            step(len(chunk) * B)
    templates = [" ".join(str(x) for x in k[1:]) if k[0] == "template" else f"{k[1]} tokens" for k in keys]
    return CircuitResult(circuit=circuit, ablation=ablation, model=model, values=values, plan=the_plan,
                         templates=tuple(templates), seed=seed)


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
        from logitscope.patching.numbers import json_number as _num

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
            for label, k, ci, mi in self.plan.completeness:
                fc, fm = self._f(ci).mean(), self._f(mi).mean()
                rfc, rfm = r[1 + ci], r[0] if mi is None else r[1 + mi]
                completeness.append({"k": label, "heads": _label(k), "circuit_without_k": self._f_stat(ci),
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
        from logitscope.patching.numbers import json_number as _num

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
            **self.measures,
            "by_template": self.by_template(),
        })
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
            "circuit_completeness_circuit_without_k": np.stack([self._f(ci) for _, _, ci, _ in p.completeness]),
            "circuit_completeness_model_without_k": np.stack([self._f(mi) for _, _, _, mi in p.completeness]),
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
        ks = [(e["k"], heads(e["heads"])) for e in doc["completeness"]]
        names = [r["template"] for r in doc["by_template"]]
        return cls(circuit=circuit, ablation=doc["ablation"], model=np.asarray(arrays["circuit_model"], np.float64),
                   values=np.asarray(arrays["circuit_sets"], np.float64), plan=plan(circuit, n_layers, n_heads, ks),
                   templates=tuple(names[int(i)] for i in arrays["circuit_group"]), seed=seed,
                   timing=dict(doc.get("timing", {})))

    def summary(self) -> str:
        ms = self.measures
        f = ms["faithfulness"]

        def ci(s):
            return f"[{s['ci95_low']:.4f}, {s['ci95_high']:.4f}]"

        lines = [
            f"circuit {self.circuit.name} ({len(self.circuit.heads)} heads, {self.ablation}-ablation elsewhere): "
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
        return "\n".join(lines)
