"""Activation patching's result as data: per-prompt patched logit differences with labels, their
means, TransformerLens's normalised metric and bootstrap intervals on the study's resamples, and
results.json's ``patching`` object. :class:`logitscope.PatchingResult` adds its files, report and
summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from logitscope.results.names import metric_label
from logitscope.results.numbers import json_nested as _nested, json_number as _num
from logitscope.inputs.positions import PositionAxis
from logitscope.stats import bootstrap_means, percentile_interval

def _output_files() -> tuple[str, ...]:
    from logitscope.results.serialize import OUTPUT_FILES as STUDY_FILES

    return (*STUDY_FILES, "patching_per_prompt.npz", "patching_per_prompt.csv")


OUTPUT_FILES = _output_files()
METRIC = "logit difference of the clean prompt's answers (correct − incorrect) at each prompt's last token"
# Where the model soft-caps its final logits (Gemma 2), patching measures the difference of the
# model's own, capped, logits: TransformerLens's logits are capped, so the metric its users compute
# is. The study's ``logit_diff`` is the linear one (what its parts add up to); results.json keeps the
# two under two keys, and ``patching.metric`` names the one the patched values are in.
METRICS = {"logit_diff": METRIC,
           "logit_diff_softcapped": METRIC + ", from the model's soft-capped logits (cap · tanh(logit / cap)), "
                                    "as TransformerLens's logits"}


@dataclass(frozen=True)
class PatchingData:
    """Activation patching and ablation of a prompt set, beside the study of its clean prompts.

    Per-prompt arrays have the prompt as their last axis: ``grids[name]`` is ``[*grid_axes[name], N]``
    (the patched run's clean-answer logit difference), ``ablated[set]`` is ``[N]``,
    ``ablated_heads`` ``[layer, head, N]``.
    """

    study: Any  # logitscope.StudyResult of the clean prompts
    direction: str  # "denoise" (clean into corrupted) or "noise" (corrupted into clean)
    corrupted_prompts: list[str]
    # In the patching metric (:attr:`metric`: soft-capped where the model caps its logits, as every
    # grid, ablation and path value here): the clean prompts' and the counterparts' [N].
    clean_logit_diff: np.ndarray  # [N]
    corrupted_logit_diff: np.ndarray  # [N], the clean answers' logit difference on the counterparts
    grids: dict[str, np.ndarray]
    grid_axes: dict[str, tuple[str, ...]]
    positions: PositionAxis | None
    position_tokens: list[str] | None
    ablation_kind: str | None
    ablation_sets: dict[str, tuple[str, ...]]
    ablated: dict[str, np.ndarray]
    ablated_heads: np.ndarray | None
    notes: tuple[str, ...] = ()
    seed: int = 0
    timing: dict[str, float] = field(default_factory=dict)
    method: str = "exact"  # "exact", "attribution" (grids named <grid>_attribution) or "both"
    paths: Any = None  # logitscope.results.paths.PathPatchingResult, when senders were given
    circuit: Any = None  # logitscope.results.circuit.CircuitResult, when a circuit was given
    # A metric other than the logit difference (logitscope.engine.metrics): its results.json key
    # (``prob_diff``, ``kl``, ``metric_<function>``) and description; every value here is in it.
    metric_key: str | None = None
    metric_description: str | None = None

    @property
    def n_prompts(self) -> int:
        return int(self.clean_logit_diff.shape[0])

    @property
    def metric(self) -> str:
        """The results.json key whose quantity every patched value is: the chosen metric's key
        (``prob_diff``, ``kl``, ...), or for the logit difference ``"logit_diff_softcapped"``
        where the model soft-caps its final logits (Gemma 2: the model's own logits, as
        TransformerLens's), else ``"logit_diff"`` (the two are then the same)."""
        if self.metric_key is not None:
            return self.metric_key
        return "logit_diff_softcapped" if self.study.logit_diff_softcapped is not None else "logit_diff"

    @property
    def metric_label(self) -> str:
        """The metric in a few words, for axes, colour bars and hovers: ``logit diff``, ``prob diff``, ..."""
        return metric_label(self.metric_key)

    def grid(self, name: str) -> np.ndarray:
        """A grid's per-prompt values ``[*grid_axes[name], N]``, or a clear error naming the grids
        this run has."""
        if name not in self.grids:
            from logitscope.errors import ArgumentError
            from logitscope.results.names import GRID_NAMES

            have = ", ".join(self.grids) or "none (no grid was asked for)"
            hint = f"; run_patching(..., what={name!r}) computes it" if name in GRID_NAMES else ""
            raise ArgumentError("name", name, f"this run has no such grid; its grids: {have}{hint}")
        return self.grids[name]

    def mean(self, name: str) -> np.ndarray:
        """A grid's mean patched logit difference over prompts (TransformerLens's metric's value)."""
        return self.grid(name).mean(-1)

    def normalised(self, name: str) -> np.ndarray:
        """TransformerLens's normalised metric on means: (patched − corrupted) / (clean − corrupted):
        0 where the patch changes nothing in a denoising run, 1 where it restores the clean result."""
        c, x = self.clean_logit_diff.mean(), self.corrupted_logit_diff.mean()
        if self.normalised_undefined:  # 0 / 0 or ±inf: no number (NaN, results.json's null)
            return np.full(self.grids[name].shape[:-1], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.mean(name) - x) / (c - x)

    @property
    def normalised_undefined(self) -> bool:
        """True where clean − corrupted = 0 (every counterpart its own prompt): the normalised metric
        has no value, and :meth:`normalised` is NaN throughout."""
        return bool(self.clean_logit_diff.mean() == self.corrupted_logit_diff.mean())

    def position_labels(self, name: str) -> list[str] | None:
        return list(self.positions.labels) if "position" in self.grid_axes[name] and self.positions else None

    # ------------------------------------------------------------------ intervals
    @cached_property
    def intervals(self) -> dict[str, dict[str, np.ndarray]]:
        """95% bootstrap intervals (the study's resamples: same seed, same prompts drawn) of every mean
        and of every normalised value (each resample's own normalisation)."""
        rows = {"clean": self.clean_logit_diff[None], "corrupted": self.corrupted_logit_diff[None]}
        for name, values in self.grids.items():
            rows[f"grid:{name}"] = values.reshape(-1, self.n_prompts)
        for name, values in self.ablated.items():
            rows[f"ablated:{name}"] = values[None]
        if self.ablated_heads is not None:
            rows["ablated_heads"] = self.ablated_heads.reshape(-1, self.n_prompts)
        means = bootstrap_means(np.concatenate(list(rows.values())), seed=self.seed)
        out: dict[str, dict[str, np.ndarray]] = {}
        start = 0
        clean_r, corrupted_r = means[0], means[1]
        for key, arr in rows.items():
            stop = start + arr.shape[0]
            block = means[start:stop]
            lo, hi = percentile_interval(block)
            entry = {"ci95_low": lo, "ci95_high": hi}
            if key.startswith("grid:"):
                with np.errstate(divide="ignore", invalid="ignore"):
                    nlo, nhi = percentile_interval((block - corrupted_r) / (clean_r - corrupted_r))
                entry.update(normalised_ci95_low=nlo, normalised_ci95_high=nhi)
            out[key] = entry
            start = stop
        return out

    def grid_interval(self, name: str, which: str = "ci95") -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of a grid's means (``which="ci95"``) or normalised values (``"normalised_ci95"``)."""
        shape = self.grid(name).shape[:-1]
        iv = self.intervals[f"grid:{name}"]
        return iv[f"{which}_low"].reshape(shape), iv[f"{which}_high"].reshape(shape)

    @cached_property
    def agreement(self) -> dict[str, dict[str, Any]]:
        """For each grid computed both ways, how the attribution estimate agrees with the exact
        grid (:func:`logitscope.results.agreement.agreement`), by the exact grid's name."""
        from logitscope.results.agreement import agreement
        from logitscope.results.names import exact_name

        c, x = float(self.clean_logit_diff.mean()), float(self.corrupted_logit_diff.mean())
        return {base: agreement(self.mean(base), self.mean(name), c, x, lambda k, g=base: self.cell_label(g, k))
                for name in self.grids if (base := exact_name(name)) in self.grids}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """results.json's ``patching`` object."""
        iv = self.intervals

        def scalar(key: str, values: np.ndarray) -> dict[str, Any]:
            lo, hi = iv[key]["ci95_low"], iv[key]["ci95_high"]
            return {"mean": _num(values.mean()), "ci95_low": _num(lo[0]), "ci95_high": _num(hi[0]),
                    "per_prompt": _nested(values)}

        m = self.metric
        doc: dict[str, Any] = {
            "direction": self.direction,
            "method": self.method,
            "metric": m,  # the top-level key whose quantity every value here is
            "metric_description": self.metric_description or METRICS[m],
            "n_pairs": self.n_prompts,
            "prepend_bos": bool(self.study.prepend_bos),
            f"clean_{m}": scalar("clean", self.clean_logit_diff),
            f"corrupted_{m}": scalar("corrupted", self.corrupted_logit_diff),
            "normalised_defined": not self.normalised_undefined,  # false: clean − corrupted = 0
        }
        if self.positions is not None:
            doc["positions"] = {"mode": self.positions.mode, "labels": list(self.positions.labels),
                                **({"tokens": self.position_tokens} if self.position_tokens else {}),
                                **({"note": self.positions.note} if self.positions.note else {})}
        for name in self.grids:
            lo, hi = self.grid_interval(name)
            nlo, nhi = self.grid_interval(name, "normalised_ci95")
            entry = {"axes": list(self.grid_axes[name]), "values": _nested(self.mean(name)),
                     "normalised": _nested(self.normalised(name)), "ci95_low": _nested(lo), "ci95_high": _nested(hi),
                     "normalised_ci95_low": _nested(nlo), "normalised_ci95_high": _nested(nhi)}
            labels = self.position_labels(name)
            if labels:
                entry["position_labels"] = labels
            doc[name] = entry
        if self.agreement:
            doc["agreement"] = self.agreement
        if self.ablation_kind is not None:
            ab: dict[str, Any] = {"kind": self.ablation_kind, "before": scalar("clean", self.clean_logit_diff)}
            ab["sets"] = [
                {"name": name, "components": list(self.ablation_sets[name]), "after": scalar(f"ablated:{name}", values)}
                for name, values in self.ablated.items()
            ]
            if self.ablated_heads is not None:
                shape = self.ablated_heads.shape[:-1]
                ab["heads"] = {"axes": ["layer", "head"], "values": _nested(self.ablated_heads.mean(-1)),
                               "ci95_low": _nested(iv["ablated_heads"]["ci95_low"].reshape(shape)),
                               "ci95_high": _nested(iv["ablated_heads"]["ci95_high"].reshape(shape))}
            doc["ablation"] = ab
        if self.paths is not None:
            doc["paths"] = self.paths.to_dict()
        if self.circuit is not None:
            doc["circuit"] = self.circuit.to_dict()
        if self.notes:
            doc["notes"] = list(self.notes)
        if self.timing:
            doc["timing"] = dict(self.timing)
        return doc

    def results_document(self) -> dict[str, Any]:
        """The whole results.json: the study of the clean prompts, each prompt row with its
        counterpart, and ``patching``. A key means one thing wherever it appears: ``logit_diff`` the
        linear logits' difference, ``logit_diff_softcapped`` the capped logits' (soft-capped models),
        ``corrupted_<metric>`` the counterpart's in the patching metric."""
        from logitscope.results.serialize import results_document

        doc = results_document(self.study)
        m = self.metric
        capped = self.study.logit_diff_softcapped
        for i, (row, text, c) in enumerate(zip(doc["prompts"], self.corrupted_prompts, self.corrupted_logit_diff)):
            if capped is not None:
                row["logit_diff_softcapped"] = float(capped[i])
            row["corrupted"] = text
            row[f"corrupted_{m}"] = float(c)
        doc["patching"] = self.to_dict()
        return doc

    def per_prompt_arrays(self) -> dict[str, np.ndarray]:
        """Every per-prompt array, as ``patching_per_prompt.npz`` holds them (float32)."""
        m = self.metric  # named as in results.json: clean_logit_diff_softcapped on soft-capped models
        arrays = {f"clean_{m}": self.clean_logit_diff, f"corrupted_{m}": self.corrupted_logit_diff}
        if self.positions is not None:
            arrays["positions_at"] = self.positions.at
        arrays.update({f"grid_{k}": v for k, v in self.grids.items()})
        arrays.update({f"ablated_{i}": v for i, v in enumerate(self.ablated.values())})
        if self.ablated_heads is not None:
            arrays["ablated_heads"] = self.ablated_heads
        if self.paths is not None:
            arrays.update(self.paths.per_prompt_arrays())
        if self.circuit is not None:
            arrays.update(self.circuit.per_prompt_arrays())
        # Every patched run is computed in float32, so float32 files lose nothing (reopening is exact).
        return {k: np.asarray(v, dtype=np.int64 if k in ("positions_at", "circuit_group") else np.float32) for k, v in arrays.items()}

    def cell_label(self, name: str, flat_index: int) -> str:
        """A grid cell in TransformerLens's words: ``L9H6``, ``L9 @ S2``, ``L9H6 @ END``."""
        axes = self.grid_axes[name]
        idx = np.unravel_index(flat_index, self.grids[name].shape[:-1])
        parts = dict(zip(axes, (int(i) for i in idx)))
        head = parts.get("head", parts.get("kv_head"))
        where = f"L{parts['layer']}" + (f"H{head}" if head is not None else "")
        if "position" in parts and self.positions is not None:
            where += f" @ {self.positions.labels[parts['position']]}"
        return where

# What results_document adds to each prompt row (never the prompt's own metadata), old files' included.
ROW_KEYS = ("corrupted", "corrupted_logit_diff", "corrupted_logit_diff_softcapped", "logit_diff_softcapped",
            *(f"corrupted_{m}" for m in ("logprob_diff", "prob_diff", "logprob", "loss", "kl")))


def is_row_key(key: str) -> bool:
    """Whether results_document added ``key`` to a prompt row (a function metric's too)."""
    return key in ROW_KEYS or key.startswith("corrupted_metric_")


