"""The result of activation patching as a notebook uses it: :class:`PatchingResult`, the data of
:class:`~logitscope.results.patching.PatchingData` with its files, report and summary, and
:func:`read_patching`, which reopens it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from logitscope.inputs.positions import PositionAxis
from logitscope.results.names import LABELS
from logitscope.results.patching import OUTPUT_FILES, PatchingData, is_row_key

__all__ = ["OUTPUT_FILES", "PatchingResult", "read_patching"]


class PatchingResult(PatchingData):
    __doc__ = PatchingData.__doc__

    def save(self, out_dir: str | Path, *, report: bool = True, csv: bool = False, label: str = "out_dir") -> Path:
        """Write the study's files (results.json with its ``patching`` object, per_prompt_heads.npy,
        per_prompt.npz, attention.npy), patching_per_prompt.npz and (by default) report.html into
        ``out_dir``, atomically: a failure leaves earlier files untouched. ``csv``: also the clean
        prompts' per_prompt.csv and patching_per_prompt.csv (one row per pair:
        :func:`logitscope.results.patching_table.per_pair_columns`). ``label`` names ``out_dir`` in error
        messages."""
        from logitscope.results.io import atomic_output_dir, json_text
        from logitscope.results.serialize import write_study

        with atomic_output_dir(out_dir, owned=OUTPUT_FILES, label=label) as tmp:
            write_study(self.study, tmp, csv=csv)
            if csv:
                from logitscope.results.patching_table import write_patching_csv

                write_patching_csv(self, tmp / "patching_per_prompt.csv")
            (tmp / "results.json").write_text(json_text(self.results_document()), encoding="utf-8")
            np.savez(tmp / "patching_per_prompt.npz", **self.per_prompt_arrays())
            if report:
                self.write_report(tmp / "report.html")
        return Path(out_dir)

    def write_report(self, path: str | Path) -> Path:
        from logitscope.report import write_report

        return write_report(self.study, path, patching=self)

    def figures(self) -> dict[str, Any]:
        """The patching and circuit sections' plotly figures, by name."""
        from logitscope.report.circuit import circuit_figures
        from logitscope.report.patching import patching_figures

        return {**patching_figures(self), **circuit_figures(self)}

    def summary(self) -> str:
        from logitscope.labels import counted
        from logitscope.results.numbers import metric_format

        iv = self.intervals
        c, x = self.clean_logit_diff.mean(), self.corrupted_logit_diff.mean()
        f = metric_format(self.metric)  # as many decimals as the logit difference; probabilities: significant digits
        named = "" if self.metric_key is None else f", {self.metric_label}"
        lines = [
            self.study.summary(),
            f"patching ({self.direction}, {counted(self.n_prompts, 'pair')}{_METRIC_NOTE.get(self.metric, '')}{named}): "
            f"clean {c:{f}} [{iv['clean']['ci95_low'][0]:{f}}, "
            f"{iv['clean']['ci95_high'][0]:{f}}], corrupted {x:{f}} [{iv['corrupted']['ci95_low'][0]:{f}}, "
            f"{iv['corrupted']['ci95_high'][0]:{f}}]",
        ]
        for name in self.grids:
            if self.normalised_undefined:
                lines.append(f"  {name}: normalised effect undefined (clean − corrupted = 0)")
                continue
            norm = self.normalised(name)
            flat = np.nan_to_num(norm.reshape(-1), nan=-np.inf)
            k = int(np.argmax(flat))
            lines.append(f"  {name}: largest normalised effect {norm.reshape(-1)[k]:+.3f} at {self.cell_label(name, k)}")
        for name, ag in self.agreement.items():
            lines.append(f"  {name}: attribution vs exact: {_agreement_line(ag)}")
        for name, values in self.ablated.items():
            lo, hi = iv[f"ablated:{name}"]["ci95_low"][0], iv[f"ablated:{name}"]["ci95_high"][0]
            lines.append(f"  ablating {name} ({self.ablation_kind}): {self.metric_label} {c:{f}} -> {values.mean():{f}} "
                         f"[{lo:{f}}, {hi:{f}}]")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [part.summary() for part in (self.paths, self.circuit) if part is not None]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The study's light notebook display, then this summary's patching lines (no script)."""
        import html as _html

        lines = self.summary().split(self.study.summary(), 1)[-1].strip("\n")
        return self.study._repr_html_() + f'<pre style="font-size:12px">{_html.escape(lines)}</pre>'

    def report_view(self, height: int = 900) -> Any:
        """The whole interactive report, patching section included, for a notebook cell to display
        (it inlines plotly.js and circuitsvis: about 7 MB in a saved notebook)."""
        from logitscope.report.notebook import ReportView

        return ReportView(self.study, height, self)

    def __repr__(self) -> str:
        from logitscope.labels import counted

        return (f"<PatchingResult {self.study.model}: {counted(self.n_prompts, 'pair')}, {self.direction}, "
                f"grids {', '.join(self.grids) or '-'}>")


def read_patching(folder: str | Path) -> PatchingResult:
    """A :class:`PatchingResult` from the folder ``save`` (or ``logitscope patch``) wrote:
    results.json (its ``patching`` object and the study), patching_per_prompt.npz and the study's
    files. Everything is read back as it was computed (float32 values in float32 files)."""
    import json

    from logitscope.errors import InputError
    from logitscope.results.circuit import CircuitResult
    from logitscope.results.paths import PathPatchingResult
    from logitscope.api.results import StudyResult
    from logitscope.results.serialize import read_study

    folder = Path(folder).expanduser()
    if folder.is_file():
        folder = folder.parent
    fields = read_study(folder)
    doc = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    pt = doc.get("patching")
    if not isinstance(pt, dict):
        raise InputError(f"cannot reopen patching results in {folder}: results.json has no 'patching' (a study, "
                         "not a patch run: logitscope.load_result reads it)")
    try:
        with np.load(folder / "patching_per_prompt.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot reopen patching results in {folder}: patching_per_prompt.npz is missing or "
                         f"unreadable ({e})") from None
    rows = doc["prompts"]
    corrupted = [r.get("corrupted") for r in rows]
    fields["prompts"] = tuple(
        type(p)(p.text, p.correct, p.incorrect, {k: v for k, v in p.meta.items() if not is_row_key(k)}, c)
        for p, c in zip(fields["prompts"], corrupted)
    )
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    # Files before the metric was named hold clean_logit_diff / corrupted_logit_diff whatever it was.
    m = "logit_diff_softcapped" if fields.get("logit_diff_softcapped") is not None else "logit_diff"
    chosen = pt.get("metric")  # a key; in files before the metric was named, a description
    other = chosen if isinstance(chosen, str) and (chosen in LABELS or chosen.startswith("metric_")) else None
    m = other or m
    clean, corrupted_ld = (arrays[f"{side}_{m}"] if f"{side}_{m}" in arrays else arrays[f"{side}_logit_diff"]
                           for side in ("clean", "corrupted"))
    grids = {k[len("grid_"):]: f64(v) for k, v in arrays.items() if k.startswith("grid_")}
    positions = None
    if "positions" in pt:
        p = pt["positions"]
        positions = PositionAxis(p["mode"], list(p["labels"]), arrays["positions_at"], p.get("note", ""))
    ab = pt.get("ablation") or {}
    sets = ab.get("sets", [])
    return PatchingResult(
        study=StudyResult(**fields), direction=pt["direction"], corrupted_prompts=corrupted,
        clean_logit_diff=f64(clean), corrupted_logit_diff=f64(corrupted_ld),
        grids=grids, grid_axes={k: tuple(pt[k]["axes"]) for k in grids}, positions=positions,
        position_tokens=(pt.get("positions") or {}).get("tokens"), ablation_kind=ab.get("kind"),
        ablation_sets={s_["name"]: tuple(s_["components"]) for s_ in sets},
        ablated={s_["name"]: f64(arrays[f"ablated_{i}"]) for i, s_ in enumerate(sets)},
        ablated_heads=f64(arrays["ablated_heads"]) if "ablated_heads" in arrays else None,
        notes=tuple(pt.get("notes", ())), seed=fields["seed"], timing=dict(pt.get("timing", {})),
        method=pt.get("method", "exact"), metric_key=other,
        metric_description=pt.get("metric_description") if other else None,
        paths=PathPatchingResult.from_saved(pt["paths"], arrays, fields["seed"]) if "paths" in pt else None,
        circuit=CircuitResult.from_saved(pt["circuit"], arrays, fields["n_layers"], fields["n_heads"], fields["seed"])
        if "circuit" in pt else None,
    )


_METRIC_NOTE = {"logit_diff_softcapped": "; logit diff of the soft-capped logits, as TransformerLens's"}


def _agreement_line(ag: dict[str, Any]) -> str:
    r = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    off = ag["off"]
    cells = ", ".join(o["cell"] for o in off[:5]) + (", ..." if len(off) > 5 else "")
    return (f"Pearson {r(ag['pearson'])}, Spearman {r(ag['spearman'])}, largest error {ag['max_abs_error']:.4f} at "
            f"{ag['max_abs_error_at']}; {len(off)} of {ag['n_cells']} cells off by more than "
            f"{ag['off_fraction']:.0%} of clean − corrupted" + (f" ({cells})" if off else ""))
