"""One result type per causal method, as :class:`logitscope.Experiment` returns them and
:func:`logitscope.load_result` reopens them: :class:`GridsResult` (``patch``),
:class:`AblationResult` (``ablate``), :class:`PathsResult` (``paths``) and
:class:`CircuitPatchingResult` (``circuit``).

Each is a :class:`~logitscope.api.patching_result.PatchingResult` (so ``isinstance`` checks and
the shared fields keep working, and its files are the ones ``run_patching`` writes, byte for byte),
holding only its method's part: reading another method's part (``grids`` on an ablation) raises an
:class:`AttributeError` that names the method computing it, instead of an empty value. The files,
the report and the summary are made from the whole :class:`PatchingResult` the method built.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

from logitscope.api.patching_result import PatchingResult
from logitscope.results.patching import PatchingData

__all__ = ["AblationResult", "CircuitPatchingResult", "GridsResult", "MethodResult", "PathsResult", "as_method_result",
           "kind_of_patching"]

# Each method's own fields of PatchingData, and the call that computes them (for the message).
_PARTS: dict[str, tuple[tuple[str, ...], str]] = {
    "patch": (("grids", "grid_axes", "positions", "position_tokens", "method", "ablated_heads"),
              'exp.patch(...) computes grids; exp.patch("ablation") each head ablated alone'),
    "ablate": (("ablation_sets", "ablated"), "exp.ablate(...) ablates component sets"),
    "paths": (("paths",), "exp.paths(...) runs path patching"),
    "circuit": (("circuit",), "exp.circuit(...) checks a circuit"),
}
# ``ablation_kind`` is the ablation of ``ablated`` (ablate) and of ``ablated_heads`` (patch "ablation").
_SHARED_BY = {"ablation_kind": ("patch", "ablate")}


class _Absent:
    """Another method's field on a per-method result: reading it raises a clear AttributeError; the
    dataclass's ``__init__`` still stores its value (in the instance's ``__dict__``), from which the
    whole :class:`PatchingResult` is rebuilt for the files, the report and the summary."""

    def __init__(self, name: str, hint: str) -> None:
        self.name, self.hint = name, hint

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        kind = type(obj).__name__
        article = "an" if kind[0] in "AEIOU" else "a"
        raise AttributeError(f"{article} {kind} has no {self.name}: {self.hint}")

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


class MethodResult(PatchingResult):
    """What the four method types share: a :class:`PatchingResult` holding one method's part. What
    every method has (``study``, ``direction``, ``corrupted_prompts``, ``clean_logit_diff``,
    ``corrupted_logit_diff``, ``metric``, ``n_prompts``, ``notes``, ``timing``, ``intervals``) reads
    as there; another method's part raises :class:`AttributeError` naming the call that computes it.
    ``kind`` is the method (``patch``, ``ablate``, ``paths``, ``circuit``)."""

    kind: ClassVar[str] = ""

    @classmethod
    def of(cls, whole: PatchingResult | None) -> Any:
        """This method's view of ``whole`` (the same values, not copied); ``None`` stays ``None``
        (another rank's result in a process group)."""
        if whole is None:
            return None
        return cls(**{f.name: whole.__dict__[f.name] for f in fields(PatchingData)})

    def whole(self) -> PatchingResult:
        """The same values as a plain :class:`PatchingResult` (every field readable, empty where the
        method computes nothing): what the files, the report and the summary are made from."""
        cached = self.__dict__.get("_whole")
        if cached is None:
            cached = PatchingResult(**{f.name: self.__dict__[f.name] for f in fields(PatchingData)})
            self.__dict__["_whole"] = cached  # frozen: not a field, only a cache
        return cached

    @property
    def intervals(self) -> dict[str, Any]:  # type: ignore[override]
        return self.whole().intervals

    intervals.__doc__ = PatchingData.intervals.__doc__

    def to_dict(self) -> dict[str, Any]:
        return self.whole().to_dict()

    def results_document(self) -> dict[str, Any]:
        return self.whole().results_document()

    def per_prompt_arrays(self) -> dict[str, Any]:
        return self.whole().per_prompt_arrays()

    def save(self, out_dir: str | Path, *, report: bool = True, csv: bool = False, label: str = "out_dir") -> Path:
        """Write the same files as :meth:`PatchingResult.save` (results.json, the per-prompt arrays,
        report.html), atomically; ``load_result`` reopens them as this type."""
        return self.whole().save(out_dir, report=report, csv=csv, label=label)

    def write_report(self, path: str | Path) -> Path:
        return self.whole().write_report(path)

    def figures(self) -> dict[str, Any]:
        """This method's report section's plotly figures, by name."""
        return self.whole().figures()

    def summary(self) -> str:
        """The study's summary, the clean and corrupted values, and this method's lines."""
        return self.whole().summary()

    def report_view(self, height: int = 900) -> Any:
        """The whole interactive report, for a notebook cell to display."""
        return self.whole().report_view(height)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.whole() == other.whole()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # as the dataclass's (its arrays are unhashable)

    def __repr__(self) -> str:
        from logitscope.labels import counted

        return f"<{type(self).__name__} {self.study.model}: {counted(self.n_prompts, 'pair')}, {self._what()}>"

    def _what(self) -> str:
        return self.direction


class GridsResult(MethodResult):
    """Activation-patching grids (``exp.patch``), exact or by attribution patching.

    Attributes:
        grids: ``{grid name: [*grid_axes[name], N]}``, the patched run's metric per cell and prompt
            (``grid``, ``mean``, ``normalised``, ``grid_interval``, ``cell_label`` read it).
        grid_axes: each grid's axes (``("layer", "head")``, ``("layer", "position")``, ...).
        positions: the position axis of per-position grids (``None`` without one).
        position_tokens: each named position's token on the first pair.
        method: ``exact``, ``attribution`` (grids named ``<grid>_attribution``) or ``both``.
        agreement: for ``method="both"``, how each estimate agrees with its exact grid.
        ablated_heads: ``[layer, head, N]``, each head ablated alone (``patch("ablation")``), by
            ``ablation_kind``; else ``None``.
        direction: ``denoise`` or ``noise``.
        clean_logit_diff: the clean prompts' metric ``[N]`` (``corrupted_logit_diff`` the counterparts').
    """

    kind = "patch"

    def _what(self) -> str:
        return f"{self.direction}, grids {', '.join(self.grids) or '-'}"


class AblationResult(MethodResult):
    """The metric with component sets ablated (``exp.ablate``).

    Attributes:
        ablated: ``{set name: [N]}``, the metric with the set ablated (its mean and interval:
            ``ablated[name].mean()``, ``intervals["ablated:" + name]``).
        ablation_sets: each set's components (``("L9H9", "L9H6")``).
        ablation_kind: ``zero``, ``mean`` or ``resample``.
        clean_logit_diff: the metric before ablation ``[N]``.
    """

    kind = "ablate"

    def _what(self) -> str:
        return f"{self.ablation_kind} ablation of {', '.join(self.ablation_sets) or '-'}"


class PathsResult(MethodResult):
    """Path patching from senders to receivers (``exp.paths``).

    Attributes:
        paths: a :class:`logitscope.results.paths.PathPatchingResult`: ``values[sender, receiver, N]``,
            ``mean()``, ``change()``, its senders, receivers and intervals.
        direction: ``denoise`` or ``noise`` (the IOI paper's).
    """

    kind = "paths"

    def _what(self) -> str:
        from logitscope.labels import counted

        return f"{self.direction}, {counted(len(self.paths.senders), 'sender')} × " \
               f"{counted(len(self.paths.receivers), 'receiver')}"


class CircuitPatchingResult(MethodResult):
    """A circuit's faithfulness, completeness and minimality (``exp.circuit``). Named so beside
    :class:`logitscope.results.circuit.CircuitResult`, the circuit check's data, which is its
    ``circuit`` field.

    Attributes:
        circuit: a :class:`logitscope.results.circuit.CircuitResult`: F(M), F(C), F(∅), the
            faithfulness, completeness and minimality tables, with intervals.
    """

    kind = "circuit"

    def _what(self) -> str:
        return self.circuit.title


_TYPES: dict[str, type[MethodResult]] = {t.kind: t for t in (GridsResult, AblationResult, PathsResult,
                                                            CircuitPatchingResult)}
for _kind, _cls in _TYPES.items():
    for _other, (_names, _hint) in _PARTS.items():
        if _other != _kind:
            for _name in _names:
                setattr(_cls, _name, _Absent(_name, _hint))
    for _name, _owners in _SHARED_BY.items():
        if _kind not in _owners:
            setattr(_cls, _name, _Absent(_name, _PARTS[_owners[-1]][1]))


def kind_of_patching(doc: dict[str, Any]) -> str | None:
    """Which one method wrote results.json's ``patching`` object ``doc``, read from the sections
    present (``patch``: grids or each head ablated alone; ``ablate``: ablated sets; ``paths``;
    ``circuit``), or ``None`` for several (a ``run_patching`` of several methods) or none."""
    from logitscope.results.names import GRID_NAMES, exact_name

    ablation = doc.get("ablation") or {}
    grids = any((exact_name(k) or k) in GRID_NAMES for k, v in doc.items() if isinstance(v, dict))
    present = {
        "patch": grids or "heads" in ablation,
        "ablate": bool(ablation.get("sets")),
        "paths": "paths" in doc,
        "circuit": "circuit" in doc,
    }
    kinds = [k for k, there in present.items() if there]
    return kinds[0] if len(kinds) == 1 else None


def as_method_result(result: PatchingResult, kind: str | None) -> PatchingResult:
    """``result`` as ``kind``'s type (``patch``, ``ablate``, ``paths``, ``circuit``); itself for ``None``."""
    return result if kind is None else _TYPES[kind].of(result)
