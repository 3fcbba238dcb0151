"""The result of edge attribution: scores of every edge, optionally the faithfulness curves and
the exact effect of the top edges beside their estimates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logitscope.methods.edges.evaluate import Curve
from logitscope.methods.edges.graph import EdgeGraph, top_n
from logitscope.methods.edges.graph_file import write_graph_json


@dataclass
class EdgeResult:
    """Edge scores (``[n_forward, n_backward]``, the change of the metric) and what was measured."""

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

    def circuit(self, n: int, *, absolute: bool = True) -> torch.Tensor:
        """The pruned circuit of the top ``n`` edges."""
        return top_n(self.graph, self.scores, n, absolute=absolute)

    def write_graph(self, path: str | Path, n: int | None = None, *, absolute: bool = True) -> Path:
        """``graph.json`` (EAP-IG/MIB format) with every score, and the top-``n`` circuit in it."""
        in_graph = None if n is None else self.circuit(n, absolute=absolute)
        return write_graph_json(path, self.graph, self.scores, in_graph, self.graph.node_scores(self.scores))

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method, "steps": self.steps, "intervention": self.intervention, "metric": self.metric,
            "n_prompts": self.n_prompts, "graph": self.graph.cfg, "n_edges": self.graph.n_edges,
            "top_edges": [{"edge": n, "score": s, **({"exact": self.exact_top[n]} if n in self.exact_top else {})}
                          for n, s in self.top_edges(top)],
        }
        if self.curve is not None:
            out["curve"] = self.curve.to_dict()
        if self.curve_signed is not None:
            out["curve_signed"] = self.curve_signed.to_dict()
        agreement = self.agreement()
        if agreement is not None:
            out["agreement"] = agreement
        return out

    def view_data(self, model: str = "") -> dict[str, Any]:
        """The plain data the report's circuit view reads (:mod:`logitscope.report.edges`): every
        edge's name and score, the shape, the curves, the exact effects and the run's options."""
        out: dict[str, Any] = {
            "edges": self.graph.edge_names, "scores": self.graph.edge_vector(self.scores).tolist(),
            "n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads, "model": model, "method": self.method,
            "steps": self.steps, "intervention": self.intervention, "metric": self.metric,
            "n_prompts": self.n_prompts, "exact": dict(self.exact_top),
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
            lines.append(f"curve (|score|): CPR {c.cpr:.3f} [{c.cpr_interval[0]:.3f}, {c.cpr_interval[1]:.3f}]  "
                         f"CMD {c.cmd:.3f} [{c.cmd_interval[0]:.3f}, {c.cmd_interval[1]:.3f}]")
        if self.curve_signed is not None:
            c = self.curve_signed
            lines.append(f"curve (signed): CPR {c.cpr:.3f} [{c.cpr_interval[0]:.3f}, {c.cpr_interval[1]:.3f}]")
        return "\n".join(lines)
