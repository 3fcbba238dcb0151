"""A circuit check's result: per-prompt logit differences of the model and of each node set, the
node sets themselves (:func:`plan`), and the faithfulness, completeness and minimality made of
them, with intervals (:mod:`logitscope.methods.circuits` computes it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from logitscope.errors import ArgumentError
from logitscope.labels import counted
from logitscope.inputs.circuits import ALL_POSITIONS, Circuit, CircuitClass
from logitscope.stats import bootstrap_means, percentile_interval

__all__ = ["ALL_BUT", "AT_ALL", "AT_NODES", "CircuitResult", "Completeness", "Head", "Plan", "circuit_nodes", "model_nodes",
           "node_key", "plan"]


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


def node_key(nodes) -> Any:
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


def plan(circuit: Circuit, n_layers: int, n_heads: int, ks: list[tuple[str, str, tuple[Head, ...]]],
         k_removed_at: str = AT_NODES) -> Plan:
    """Every distinct node set that faithfulness, completeness (with the sets ``ks``: ``(label,
    source, K)``; ``M \\ K`` as :func:`model_nodes` with ``k_removed_at``) and minimality need."""
    sets: list = []
    index: dict = {}

    def add(nodes) -> int | None:
        if nodes is None:
            return None
        key = node_key(nodes)
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
    metric: str = "logit_diff"  # F's metric: its results.json key (logitscope.engine.metrics)
    metric_description: str | None = None  # what it is, for a metric other than the logit difference

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
            "metric": "F(X): mean logit difference of the clean prompts with every head node outside X knocked out"
                      if self.metric == "logit_diff" else f"F(X): mean {self.metric_description or self.metric} of the "
                      "clean prompts with every head node outside X knocked out",
            **({} if self.metric == "logit_diff" else {"metric_key": self.metric}),
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
                   random_requested=sets.get("random_requested"), prepend_bos=doc.get("prepend_bos"), k_removed_at=at,
                   metric=doc.get("metric_key", "logit_diff"),
                   metric_description=_description(doc.get("metric_key")))

    def summary(self) -> str:
        ms = self.measures
        f = ms["faithfulness"]

        def ci(s):
            return f"[{s['ci95_low']:.4f}, {s['ci95_high']:.4f}]"

        def pct(x):  # a fraction of F(M); none where F(M) = 0 (kl: 0 on the whole model)
            return "n/a" if x is None else f"{100 * x:.1f}%"

        lines = [
            f"{self.title} ({counted(len(self.circuit.heads), 'head')}, {self.ablation}-ablation elsewhere): "
            f"F(M) {ms['model']['mean']:.4f} {ci(ms['model'])}, F(C) {ms['circuit']['mean']:.4f} {ci(ms['circuit'])}, "
            f"F(no heads) {ms['no_heads']['mean']:.4f}",
            f"  faithfulness |F(M) - F(C)| {f['gap']['mean']:.4f} {ci(f['gap'])}; F(C)/F(M) "
            f"{pct(f['fraction']['mean'])} [{pct(f['fraction']['ci95_low'])}, {pct(f['fraction']['ci95_high'])}]",
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


def _description(key: str | None) -> str | None:
    """A saved metric key's description (``None``: the logit difference, or a function's key)."""
    from logitscope.engine.metrics import METRICS

    return next((d for k, d in METRICS.values() if k == key and key != "logit_diff"), None)
