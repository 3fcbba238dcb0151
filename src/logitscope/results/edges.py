"""The result of edge attribution and its files: every edge's score, MIB's faithfulness curves, the
exact effect of the top edges beside their estimates, and what was measured.

An output folder (:meth:`EdgeResult.save`) holds

- ``results.json``: ``kind: "edges"``, the model and run settings, and the ``edges`` section (method,
  steps, intervention, metric, the curves with CPR/CMD and their intervals, the evaluated circuit,
  the top edges with their exact effect where computed, the agreement of estimate and exact effect);
- ``graph.json``: every edge's score in the EAP-IG / MIB format (:mod:`logitscope.results.graph_json`),
  the evaluated circuit (if any) marked ``in_graph``;
- ``edges_per_prompt.npz``: the scores as a float64 vector in the graph's edge order and the per-prompt
  metric of every evaluated run (float64), from which :func:`read_edges` rebuilds the result exactly.

Nothing here runs a model: the computation is :mod:`logitscope.methods.edges`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from logitscope.errors import InputError
from logitscope.results.edge_graph import EdgeGraph, select
from logitscope.results.graph_json import graph_dict, write_graph_json
from logitscope.results.io import atomic_output_dir, json_text
from logitscope.results.numbers import json_nested, json_number
from logitscope.results.serialize import OUTPUT_FILES as STUDY_FILES

KIND = "edges"
EDGES_SCHEMA_VERSION = 1
PER_PROMPT_FILE = "edges_per_prompt.npz"
# Every file an output folder of any kind may hold: those this run does not write are removed, so
# that no earlier run's files sit beside these results.
OUTPUT_FILES = (*STUDY_FILES, "patching_per_prompt.npz", "graph.json", PER_PROMPT_FILE)
TOP_EDGES = 20  # results.json lists at least this many top edges (more where exact effects were computed)


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _interval(pair: Any) -> tuple[float, float]:
    return (_nan(pair[0]), _nan(pair[1]))


@dataclass(frozen=True, eq=False)
class Curve:
    """A faithfulness curve: per fraction, the edges asked for and kept after pruning, f and its 95%
    interval; CPR and CMD with theirs; the mean metric of the whole model and of the empty circuit."""

    # "abs" (top-n edges by |score|), "signed", "greedy-abs" / "greedy-signed", or "node-abs" /
    # "node-signed" (top-n heads and MLPs by node score; n_requested counts nodes)
    order: str
    fractions: tuple[float, ...]
    n_requested: list[int]
    n_edges: list[int]
    faithfulness: np.ndarray
    low: np.ndarray
    high: np.ndarray
    cpr: float
    cpr_interval: tuple[float, float]
    cmd: float
    cmd_interval: tuple[float, float]
    m_full: float
    m_empty: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": self.order, "fractions": list(self.fractions), "n_requested": list(self.n_requested),
            "n_edges": list(self.n_edges), "faithfulness": json_nested(self.faithfulness),
            "low": json_nested(self.low), "high": json_nested(self.high), "cpr": json_number(self.cpr),
            "cpr_interval": [json_number(x) for x in self.cpr_interval], "cmd": json_number(self.cmd),
            "cmd_interval": [json_number(x) for x in self.cmd_interval], "m_full": json_number(self.m_full),
            "m_empty": json_number(self.m_empty),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Curve":
        arr = lambda k: np.array([_nan(v) for v in d[k]], dtype=np.float64)  # noqa: E731
        return cls(d["order"], tuple(float(x) for x in d["fractions"]), [int(x) for x in d["n_requested"]],
                   [int(x) for x in d["n_edges"]], arr("faithfulness"), arr("low"), arr("high"), _nan(d["cpr"]),
                   _interval(d["cpr_interval"]), _nan(d["cmd"]), _interval(d["cmd_interval"]), _nan(d["m_full"]),
                   _nan(d["m_empty"]))


@dataclass(frozen=True, eq=False)
class CircuitEval:
    """One circuit's faithfulness (the top ``n_requested`` edges, or nodes for the ``node-`` orders,
    pruned to ``n_edges`` edges), with its 95% interval over prompts and the mean metrics it is made of."""

    order: str
    n_requested: int
    n_edges: int
    faithfulness: float
    low: float
    high: float
    m_circuit: float
    m_full: float
    m_empty: float
    # The circuit itself ([n_forward, n_backward] bool): graph.json's in_graph, where it is kept
    # (results.json holds the numbers only).
    edges: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "n_requested": self.n_requested, "n_edges": self.n_edges,
                **{k: json_number(getattr(self, k)) for k in ("faithfulness", "low", "high", "m_circuit", "m_full",
                                                              "m_empty")}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CircuitEval":
        return cls(d["order"], int(d["n_requested"]), int(d["n_edges"]), *(_nan(d[k]) for k in (
            "faithfulness", "low", "high", "m_circuit", "m_full", "m_empty")))


@dataclass(frozen=True, eq=False)
class EdgeResult:
    """Edge scores (``[n_forward, n_backward]`` float64, the change of the metric; 0 where no edge)
    and what was measured.

    ``per_prompt``: the metric of each prompt in each evaluated run (float64): ``clean`` ``[n]`` (the
    whole model), ``empty`` ``[n]`` (every edge corrupted), ``curve`` / ``curve_signed``
    ``[n_fractions, n]``, ``circuit`` ``[n]`` (the circuit of :attr:`circuit_eval`)."""

    graph: EdgeGraph
    scores: torch.Tensor
    method: str
    steps: int
    intervention: str
    metric: str
    n_prompts: int
    curve: Curve | None = None  # top-n by |score|: MIB's CMD
    curve_signed: Curve | None = None  # top-n by signed score: MIB's CPR
    exact_top: dict[str, float] = field(default_factory=dict)  # edge -> exact effect, for the top edges
    circuit_eval: CircuitEval | None = None  # the circuit asked for (top_n), evaluated
    greedy: bool = False  # circuits by the library's greedy selection instead of top-n
    by: str = "edge"  # circuits of the top-n edges ("edge") or of the top-n heads and MLPs ("node")
    model: str = ""
    family: str = ""
    dtype: str = ""
    device: str = ""
    prepend_bos: bool | None = None
    seed: int = 0
    per_prompt: dict[str, np.ndarray] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    created: str = ""

    # ------------------------------------------------------------------ the scores
    def edge_scores(self) -> dict[str, float]:
        v = self.graph.edge_vector(self.scores)
        return dict(zip(self.graph.edge_names, v.tolist()))

    def node_scores(self) -> dict[str, float]:
        return dict(zip(self.graph.forward_names, self.graph.node_scores(self.scores).tolist()))

    def top_edges(self, k: int = 20, *, absolute: bool = True) -> list[tuple[str, float]]:
        v = self.graph.edge_vector(self.scores)
        key = v.abs() if absolute else v
        order = torch.argsort(key, descending=True, stable=True)[:k]
        names = self.graph.edge_names
        return [(names[i], float(v[i])) for i in order.tolist()]

    def agreement(self) -> dict[str, float] | None:
        """Where exact effects of the top edges were computed: Spearman rank correlation of the
        estimates with them, and the share with the same sign."""
        if len(self.exact_top) < 2:
            return None
        est = self.edge_scores()
        names = list(self.exact_top)
        a = np.array([est[n] for n in names])
        b = np.array([self.exact_top[n] for n in names])
        ra, rb = a.argsort().argsort(), b.argsort().argsort()
        rho = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")
        return {"spearman": rho, "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))), "n": len(names)}

    def circuit(self, n: int, *, absolute: bool = True, greedy: bool | None = None, by: str | None = None
                ) -> torch.Tensor:
        """The pruned circuit of the top ``n`` edges (``greedy``: the library's greedy selection;
        ``by="node"``: of the top ``n`` heads and MLPs, every edge among them; default: as this
        result's circuits were chosen)."""
        return select(self.graph, self.scores, n, absolute=absolute, by=self.by if by is None else by,
                      use_greedy=self.greedy if greedy is None else greedy)

    def node_circuit(self, n: int, *, absolute: bool = True) -> torch.Tensor:
        """The circuit of the top ``n`` heads and MLPs by node score (``input`` and ``logits`` kept)."""
        return self.circuit(n, absolute=absolute, greedy=False, by="node")

    def _in_graph(self) -> torch.Tensor | None:
        c = self.circuit_eval
        if c is None:
            return None
        if c.edges is not None:  # the circuit evaluated (a given one is not this run's top n)
            return c.edges
        return self.circuit(c.n_requested, absolute=c.order.endswith("abs"), greedy=c.order.startswith("greedy"),
                            by="node" if c.order.startswith("node") else "edge")

    def write_graph(self, path: str | Path, n: int | None = None, *, absolute: bool = True) -> Path:
        """``graph.json`` (EAP-IG/MIB format) with every score, and the top-``n`` circuit in it
        (default: the evaluated circuit, if any)."""
        in_graph = self._in_graph() if n is None else self.circuit(n, absolute=absolute)
        return write_graph_json(path, self.graph, self.scores, in_graph, self.graph.node_scores(self.scores))

    # ------------------------------------------------------------------ results.json
    def to_dict(self, top: int = TOP_EDGES) -> dict[str, Any]:
        """results.json's ``edges`` section (docs/edges.md lists it key by key)."""
        top = max(top, len(self.exact_top))
        out: dict[str, Any] = {
            "method": self.method, "steps": self.steps, "intervention": self.intervention, "metric": self.metric,
            "greedy": self.greedy, "by": self.by, "n_prompts": self.n_prompts, "graph": self.graph.cfg,
            "n_edges": self.graph.n_edges, "n_nodes": self.graph.n_scored_nodes,
            "top_edges": [{"edge": n, "score": s, **({"exact": self.exact_top[n]} if n in self.exact_top else {})}
                          for n, s in self.top_edges(top)],
        }
        if self.curve is not None:
            out["curve"] = self.curve.to_dict()
        if self.curve_signed is not None:
            out["curve_signed"] = self.curve_signed.to_dict()
        if self.circuit_eval is not None:
            out["circuit"] = self.circuit_eval.to_dict()
        agreement = self.agreement()
        if agreement is not None:
            out["agreement"] = {k: json_number(v) if isinstance(v, float) else v for k, v in agreement.items()}
        return out

    def results_document(self) -> dict[str, Any]:
        """The whole results.json."""
        g = self.graph
        return {
            "schema_version": EDGES_SCHEMA_VERSION, "kind": KIND, "logitscope_version": self.version,
            "created": self.created, "model": self.model, "family": self.family, "dtype": self.dtype,
            "device": self.device, "n_layers": g.n_layers, "n_heads": g.n_heads, "d_model": g.d_model,
            "parallel_attn_mlp": g.parallel_attn_mlp, "n_prompts": self.n_prompts, "prepend_bos": self.prepend_bos,
            "seed": self.seed, "edges": self.to_dict(), "timing": dict(self.timing),
        }

    def per_prompt_arrays(self) -> dict[str, np.ndarray]:
        """``edges_per_prompt.npz``'s arrays: ``scores`` (float64, edge order) and the per-prompt metrics."""
        arrays = {"scores": self.graph.edge_vector(self.scores).double().numpy()}
        arrays.update({k: np.asarray(v, dtype=np.float64) for k, v in self.per_prompt.items()})
        return arrays

    def save(self, out_dir: str | Path, *, report: Callable[["EdgeResult", Path], Any] | None = None,
             label: str = "out_dir") -> Path:
        """Write results.json, graph.json and edges_per_prompt.npz into ``out_dir``, atomically: a
        failure leaves the folder as it was, and files of an earlier run there that this one does not
        write (a study's, a patch run's, an old report) are removed. ``report``: a function
        ``(result, path)`` that writes ``report.html`` into the same atomic write (the circuit view).
        ``label`` names ``out_dir`` in error messages (``--out`` for the CLI)."""
        with atomic_output_dir(out_dir, owned=OUTPUT_FILES, label=label) as tmp:
            write_edges(self, tmp)
            if report is not None:
                report(self, tmp / "report.html")
        return Path(out_dir)

    # ------------------------------------------------------------------ display
    def view_data(self, model: str = "") -> dict[str, Any]:
        """The plain data the report's circuit view reads (:mod:`logitscope.report.edges`): every
        edge's name and score, the shape, the curves, the exact effects and the run's options."""
        out: dict[str, Any] = {
            "edges": self.graph.edge_names, "scores": self.graph.edge_vector(self.scores).tolist(),
            "n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads, "model": model, "method": self.method,
            "steps": self.steps, "intervention": self.intervention, "metric": self.metric,
            "n_prompts": self.n_prompts, "exact": dict(self.exact_top), "by": self.by,
        }
        if self.curve is not None:
            out["curve"] = self.curve.to_dict()
        if self.curve_signed is not None:
            out["curve_signed"] = self.curve_signed.to_dict()
        agreement = self.agreement()
        if agreement is not None:
            out["agreement"] = agreement
        return out

    def summary(self, top: int = 10) -> str:
        lines = [f"edges: {self.method}"
                 f"{f' ({self.steps} steps)' if self.method.startswith('eap-ig') else ''}, intervention "
                 f"{self.intervention}, metric {self.metric}, {self.n_prompts} prompts, {self.graph.n_edges} edges"]
        for name, s in self.top_edges(top):
            ex = f"  exact {self.exact_top[name]:+.4f}" if name in self.exact_top else ""
            lines.append(f"  {name:<28} {s:+.4f}{ex}")
        if self.curve is not None:
            c = self.curve
            lines.append(f"curve ({self._unit()}|score|): CPR {c.cpr:.3f} [{c.cpr_interval[0]:.3f}, {c.cpr_interval[1]:.3f}]  "
                         f"CMD {c.cmd:.3f} [{c.cmd_interval[0]:.3f}, {c.cmd_interval[1]:.3f}]")
        if self.curve_signed is not None:
            c = self.curve_signed
            lines.append(f"curve ({self._unit()}signed): CPR {c.cpr:.3f} [{c.cpr_interval[0]:.3f}, {c.cpr_interval[1]:.3f}]")
        if self.circuit_eval is not None:
            c = self.circuit_eval
            lines.append(f"circuit ({c.order}, top {c.n_requested}{' nodes' if c.order.startswith('node') else ''}, "
                         f"{c.n_edges} edges after pruning): faithfulness "
                         f"{c.faithfulness:.3f} [{c.low:.3f}, {c.high:.3f}]")
        agreement = self.agreement()
        if agreement is not None:
            lines.append(f"estimate vs exact, top {agreement['n']}: Spearman {agreement['spearman']:.3f}, same sign "
                         f"{agreement['sign_agreement']:.0%}")
        return "\n".join(lines)

    def _unit(self) -> str:
        return "by node, " if self.by == "node" else ""

    def __repr__(self) -> str:
        return (f"<EdgeResult {self.model or 'model'}: {self.method}, {self.n_prompts} prompts, "
                f"{self.graph.n_edges} edges>")


# -------------------------------------------------------------------------------------------- files
def write_edges(result: EdgeResult, folder: Path) -> None:
    """results.json, graph.json and edges_per_prompt.npz into ``folder`` (no atomicity: see :meth:`EdgeResult.save`)."""
    folder = Path(folder)
    (folder / "results.json").write_text(json_text(result.results_document()), encoding="utf-8")
    g = result.graph
    doc = graph_dict(g, result.scores, result._in_graph(), g.node_scores(result.scores))
    (folder / "graph.json").write_text(json.dumps(doc), encoding="utf-8")
    np.savez(folder / PER_PROMPT_FILE, **result.per_prompt_arrays())


def is_edges_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds an edge-attribution run (its results.json says ``kind: "edges"``)."""
    path = Path(folder).expanduser()
    try:
        doc = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == KIND


def read_edges(folder: str | Path) -> EdgeResult:
    """The :class:`EdgeResult` that :meth:`EdgeResult.save` wrote into ``folder``, every number equal."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        folder = folder.parent
    try:
        doc = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        with np.load(folder / PER_PROMPT_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot reopen edge results in {folder}: results.json or {PER_PROMPT_FILE} is missing or "
                         f"unreadable ({e})") from None
    if doc.get("kind") != KIND:
        raise InputError(f"cannot reopen edge results in {folder}: its results.json is not an edges run")
    if doc.get("schema_version") != EDGES_SCHEMA_VERSION:
        raise InputError(f"cannot reopen edge results in {folder}: results.json has schema_version "
                         f"{doc.get('schema_version')!r}; this logitscope reads version {EDGES_SCHEMA_VERSION}")
    e = doc["edges"]
    cfg = e["graph"]
    graph = EdgeGraph(int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg["parallel_attn_mlp"]), int(cfg["d_model"]))
    scores = graph.matrix(torch.from_numpy(arrays.pop("scores")))
    exact = {row["edge"]: float(row["exact"]) for row in e["top_edges"] if "exact" in row}
    return EdgeResult(
        graph, scores, e["method"], int(e["steps"]), e["intervention"], e["metric"], int(e["n_prompts"]),
        curve=Curve.from_dict(e["curve"]) if "curve" in e else None,
        curve_signed=Curve.from_dict(e["curve_signed"]) if "curve_signed" in e else None,
        exact_top=exact, circuit_eval=_circuit_eval(e, folder),
        greedy=bool(e.get("greedy", False)), by=str(e.get("by", "edge")), model=doc.get("model", ""), family=doc.get("family", ""),
        dtype=doc.get("dtype", ""), device=doc.get("device", ""), prepend_bos=doc.get("prepend_bos"),
        seed=int(doc.get("seed", 0)), per_prompt=arrays, timing=dict(doc.get("timing", {})),
        version=doc.get("logitscope_version", ""), created=doc.get("created", ""),
    )


def _circuit_eval(e: dict[str, Any], folder: Path) -> CircuitEval | None:
    """results.json's evaluated circuit, with its edges from graph.json's in_graph."""
    if "circuit" not in e:
        return None
    from dataclasses import replace

    from logitscope.results.graph_json import read_graph_json

    _, _, in_graph, _ = read_graph_json(folder / "graph.json")
    return replace(CircuitEval.from_dict(e["circuit"]), edges=in_graph)
