"""The causal methods' options: one small frozen object per method, each checked when made, so a
bad option is a clear error before any model is loaded and every function past the public
wrappers takes the few objects it uses instead of a long list of keywords.

:class:`PatchOptions` holds what the methods share (``direction``, ``ablation``, ``metric``) and
each method's own: :class:`GridOptions` (activation-patching grids), :class:`AblationOptions`
(component sets), :class:`PathOptions` (path patching), :class:`CircuitOptions` (a circuit's
measures). :func:`patch_options` builds it from :func:`logitscope.run_patching`'s flat option
names; the defaults live here, in the objects' fields, once. :class:`RunSettings` is how a run
goes (batch size, seed, progress), never what it computes.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, fields
from typing import Any

from logitscope.engine import distributed
from logitscope.engine.metrics import resolve_metric
from logitscope.errors import ArgumentError
from logitscope.inputs.circuits import load_circuit
from logitscope.inputs.positions import POSITION_MODES
from logitscope.methods.ablation import ABLATIONS, parse_components
from logitscope.methods.attribution import METHODS
from logitscope.methods.circuits import Completeness
from logitscope.methods.patching.grids import WHAT, resolve_what
from logitscope.methods.patching.run import DIRECTIONS
from logitscope.methods.paths import check_paths

__all__ = ["AblationOptions", "CircuitOptions", "GridOptions", "PatchOptions", "PathOptions", "RunSettings",
           "patch_options"]


@dataclass(frozen=True)
class GridOptions:
    """Activation-patching grids: ``what`` (grids or groups, resolved into ``grids`` and whether the
    single-head ablation grid, ``head_ablation``, is asked for), their ``positions`` axis and
    ``method`` (``exact``, ``attribution`` or ``both``)."""

    what: Any = "heads"
    positions: str = "auto"
    method: str = "exact"
    grids: tuple[str, ...] = field(init=False)
    head_ablation: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.positions not in POSITION_MODES:
            raise ArgumentError("positions", self.positions, f"use one of {', '.join(POSITION_MODES)}")
        if self.method not in METHODS:
            raise ArgumentError("method", self.method, "use exact (patched runs), attribution (the first-order "
                                "estimate from one gradient) or both (each estimate beside its exact grid, with their "
                                "agreement)")
        grids, head_ablation = resolve_what(self.what)
        if self.method != "exact" and not grids:
            raise ArgumentError("method", self.method, f"attribution patching estimates patching grids and "
                                f"what={self.what!r} names none; name grids (heads, heads_by_pos, resid, layers, qkv, "
                                "all or grid names)")
        object.__setattr__(self, "grids", tuple(grids))
        object.__setattr__(self, "head_ablation", head_ablation)


@dataclass(frozen=True)
class AblationOptions:
    """Component sets to ablate: ``ablate`` (``"L9H9,L9H6"``, a list, or ``{name: spec}``)."""

    ablate: Any = None

    def __post_init__(self) -> None:
        if self.ablate is not None:
            self.sets(10**6, 10**6)  # the spelling; the model's sizes are checked once it is loaded

    def sets(self, n_layers: int, n_heads: int) -> dict:
        """``{label: components}`` of a model with ``n_layers`` layers of ``n_heads`` heads."""
        if self.ablate is None:
            return {}
        if isinstance(self.ablate, dict):
            return {name: parse_components(spec, n_layers, n_heads) for name, spec in self.ablate.items()}
        label = self.ablate if isinstance(self.ablate, str) else ",".join(self.ablate)
        return {label: parse_components(self.ablate, n_layers, n_heads)}


@dataclass(frozen=True)
class PathOptions:
    """Path patching from ``senders`` (None: none) to ``receivers``, with ``freeze``."""

    senders: Any = None
    receivers: Any = "logits"
    freeze: str = "heads"

    def __post_init__(self) -> None:
        check_paths(self.senders, self.receivers, self.freeze)


# run_patching's names of Completeness's fields
_COMPLETENESS = {"circuit_random": "random", "circuit_greedy": "greedy", "circuit_greedy_steps": "steps",
                 "circuit_greedy_candidates": "candidates"}


@dataclass(frozen=True)
class CircuitOptions:
    """A circuit (None: none) whose faithfulness, completeness (its sets K: ``completeness``) and
    minimality are measured."""

    circuit: Any = None
    completeness: Completeness = Completeness()

    def __post_init__(self) -> None:
        self.completeness.check()
        if self.circuit is not None:
            load_circuit(self.circuit)  # a file's syntax, before any model is loaded
            return
        for name, value, default in zip(_COMPLETENESS, astuple(self.completeness), astuple(Completeness())):
            if value != default:
                raise ArgumentError(name, value, "sets a circuit's completeness check, and no circuit is given; "
                                    "give a circuit too, or leave this out")


@dataclass(frozen=True)
class PatchOptions:
    """Every causal method's options: what they share (``direction`` of grids and paths, the
    ``ablation`` of head ablation, sets and circuits, the ``metric`` every run measures) and each
    method's own. Made only when there is something to compute."""

    grids: GridOptions = GridOptions()
    ablations: AblationOptions = AblationOptions()
    paths: PathOptions = PathOptions()
    circuit: CircuitOptions = CircuitOptions()
    direction: str = "denoise"
    ablation: str = "mean"
    metric: Any = None

    def __post_init__(self) -> None:
        _check_direction_and_ablation(self.direction, self.ablation)
        resolve_metric(self.metric)
        g = self.grids
        if (not g.grids and not g.head_ablation and self.ablations.ablate is None and self.paths.senders is None
                and self.circuit.circuit is None):
            raise ArgumentError("what", g.what, f"nothing to compute; name a grid or group ({', '.join(WHAT)}), or "
                                "give ablate, senders or circuit")
        one_process_only(senders=self.paths.senders, circuit=self.circuit.circuit)


@dataclass(frozen=True)
class RunSettings:
    """How a causal run goes, not what it computes: ``batch_size`` (None: from free memory),
    ``seed`` (resampling, random sets K), ``progress`` bars."""

    batch_size: int | None = None
    seed: int = 0
    progress: bool = False


_PARTS: dict[str, type] = {"grids": GridOptions, "ablations": AblationOptions, "paths": PathOptions}
_SHARED = ("direction", "ablation", "metric")


def patch_options(**given: Any) -> PatchOptions:
    """:class:`PatchOptions` from :func:`logitscope.run_patching`'s flat option names (``what``,
    ``positions``, ``method``, ``ablate``, ``senders``, ``receivers``, ``freeze``, ``circuit``,
    ``circuit_random`` ..., ``direction``, ``ablation``, ``metric``), each not given at its default."""
    names = {cls: [f.name for f in fields(cls) if f.init] for cls in _PARTS.values()}
    known = {n for ns in names.values() for n in ns} | {"circuit", *_COMPLETENESS, *_SHARED}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"unexpected patching option(s): {', '.join(unknown)}")
    # direction and ablation first, as run_patching always checked them (the first of several bad
    # options is the one reported); PatchOptions checks them again when made
    _check_direction_and_ablation(given.get("direction", "denoise"), given.get("ablation", "mean"))
    parts = {part: cls(**{n: given[n] for n in names[cls] if n in given}) for part, cls in _PARTS.items()}
    completeness = Completeness(**{f: given[n] for n, f in _COMPLETENESS.items() if n in given})
    parts["circuit"] = CircuitOptions(given.get("circuit"), completeness)
    return PatchOptions(**parts, **{n: given[n] for n in _SHARED if n in given})


def _check_direction_and_ablation(direction: str, ablation: str) -> None:
    if direction not in DIRECTIONS:
        raise ArgumentError("direction", direction, "use denoise or noise")
    if ablation not in ABLATIONS:
        raise ArgumentError("ablation", ablation, f"use one of {', '.join(ABLATIONS)}")


def one_process_only(**options: Any) -> None:
    """Path patching and circuit checks are not split over ranks: in a process group, say so before
    any model load rather than run them on rank 0 while the other ranks wait on the timeout."""
    asked = [(name, value) for name, value in options.items() if value is not None]
    if asked and distributed.current() is not None:
        name, value = asked[0]
        raise ArgumentError(name, value, "path patching and circuit checks run in one process only, not data-parallel; "
                            "run this without torchrun (the grids and ablations do run data-parallel)")
