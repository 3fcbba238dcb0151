"""Path patching's result: per-prompt path-patched logit differences for each sender and receiver,
with the normalised metric and intervals (:mod:`logitscope.methods.paths` computes it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from logitscope.labels import counted
from logitscope.results.names import FROZEN
from logitscope.stats import bootstrap_means, percentile_interval

__all__ = ["PathPatchingResult"]


# ---------------------------------------------------------------------------------------------- result
@dataclass(frozen=True)
class PathPatchingResult:
    """Per-prompt path-patched logit differences ``values[sender, receiver, prompt]`` (``NaN``
    where a sender has no path to a receiver), the base run's and both runs' logit differences.
    With another ``metric`` (its results.json key), every ``*_logit_diff`` array holds that metric."""

    direction: str
    freeze: str
    senders: tuple[str, ...]
    sender_heads: tuple[tuple[str, ...], ...]
    receivers: tuple[str, ...]
    values: np.ndarray  # [S, R, N]
    base_logit_diff: np.ndarray  # [N]: the run every patch is put into
    clean_logit_diff: np.ndarray
    corrupted_logit_diff: np.ndarray
    notes: tuple[str, ...] = ()
    seed: int = 0
    timing: dict[str, float] = field(default_factory=dict)
    metric: str = "logit_diff"  # logitscope.engine.metrics' key of the metric every value here is in

    @property
    def n_prompts(self) -> int:
        return int(self.base_logit_diff.shape[0])

    def mean(self) -> np.ndarray:
        """``[sender, receiver]`` mean patched logit difference."""
        return self.values.mean(-1)

    def change(self) -> np.ndarray:
        """Mean patched minus mean base logit difference, ``[sender, receiver]``."""
        return self.mean() - self.base_logit_diff.mean()

    def effect(self) -> np.ndarray:
        """The change as a fraction of the clean − corrupted gap (ARENA's path-patching metric): in
        noising −1 where the path alone turns the clean run into the corrupted one; in denoising +1
        where it restores the clean run."""
        gap = self.clean_logit_diff.mean() - self.corrupted_logit_diff.mean()
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.change() / gap

    @cached_property
    def intervals(self) -> dict[str, np.ndarray]:
        """95% bootstrap intervals (the study's resamples) of the means, changes and effects."""
        S, R, N = self.values.shape
        rows = np.concatenate([self.values.reshape(-1, N), self.base_logit_diff[None], self.clean_logit_diff[None],
                               self.corrupted_logit_diff[None]])
        means = bootstrap_means(np.nan_to_num(rows), seed=self.seed)
        patched, base, clean, corrupted = means[:-3], means[-3], means[-2], means[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            effect = (patched - base) / (clean - corrupted)
        out = {}
        for name, block in (("values", patched), ("change", patched - base), ("effect", effect)):
            lo, hi = percentile_interval(block)
            missing = np.isnan(self.values[..., 0]).reshape(-1)
            lo[missing], hi[missing] = np.nan, np.nan
            out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = lo.reshape(S, R), hi.reshape(S, R)
        for name, block in (("base", base), ("clean", clean), ("corrupted", corrupted)):
            lo, hi = percentile_interval(block)
            out[f"{name}_ci95"] = np.array([lo, hi])
        return out

    def to_dict(self) -> dict[str, Any]:
        """results.json's ``patching.paths``."""
        from logitscope.results.numbers import json_nested as _nested, json_number as _num

        iv = self.intervals
        doc: dict[str, Any] = {
            "direction": self.direction,
            "base_run": "corrupted" if self.direction == "denoise" else "clean",
            "freeze": self.freeze,
            "frozen": FROZEN[self.freeze],
            "senders": [{"label": s, "heads": list(h)} for s, h in zip(self.senders, self.sender_heads)],
            "receivers": list(self.receivers),
            **({} if self.metric == "logit_diff" else {"metric": self.metric}),
            "axes": ["sender", "receiver"],
            "base_logit_diff": {"mean": _num(self.base_logit_diff.mean()), "ci95_low": _num(iv["base_ci95"][0]),
                                "ci95_high": _num(iv["base_ci95"][1])},
            "values": _nested(self.mean()),
            "ci95_low": _nested(iv["values_ci95_low"]),
            "ci95_high": _nested(iv["values_ci95_high"]),
            "change": _nested(self.change()),
            "change_ci95_low": _nested(iv["change_ci95_low"]),
            "change_ci95_high": _nested(iv["change_ci95_high"]),
            "effect": _nested(self.effect()),
            "effect_ci95_low": _nested(iv["effect_ci95_low"]),
            "effect_ci95_high": _nested(iv["effect_ci95_high"]),
        }
        if self.notes:
            doc["notes"] = list(self.notes)
        if self.timing:
            doc["timing"] = dict(self.timing)
        return doc

    def per_prompt_arrays(self) -> dict[str, np.ndarray]:
        """patching_per_prompt.npz's ``paths*`` arrays (``paths``: ``[sender, receiver, prompt]``)."""
        return {"paths": self.values, "paths_base_logit_diff": self.base_logit_diff,
                "paths_clean_logit_diff": self.clean_logit_diff, "paths_corrupted_logit_diff": self.corrupted_logit_diff}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], arrays: dict[str, np.ndarray], seed: int) -> "PathPatchingResult":
        """The result again from results.json's ``patching.paths`` and the npz arrays."""
        f64 = lambda k: np.asarray(arrays[k], dtype=np.float64)  # noqa: E731
        return cls(direction=doc["direction"], freeze=doc["freeze"], senders=tuple(s["label"] for s in doc["senders"]),
                   sender_heads=tuple(tuple(s["heads"]) for s in doc["senders"]), receivers=tuple(doc["receivers"]),
                   values=f64("paths"), base_logit_diff=f64("paths_base_logit_diff"),
                   clean_logit_diff=f64("paths_clean_logit_diff"), corrupted_logit_diff=f64("paths_corrupted_logit_diff"),
                   notes=tuple(doc.get("notes", ())), seed=seed, timing=dict(doc.get("timing", {})),
                   metric=doc.get("metric", "logit_diff"))

    def summary(self) -> str:
        eff = self.effect()
        lines = [f"path patching ({self.direction}, freeze {self.freeze}): {counted(len(self.senders), 'sender')} x "
                 f"{counted(len(self.receivers), 'receiver')}"]
        iv = self.intervals
        for j, r in enumerate(self.receivers):
            col = np.nan_to_num(np.abs(eff[:, j]), nan=-1.0)
            if col.max() < 0:
                lines.append(f"  -> {r}: no sender has a path to it")
                continue
            i = int(np.argmax(col))
            lines.append(f"  -> {r}: largest effect {eff[i, j]:+.3f} [{iv['effect_ci95_low'][i, j]:+.3f}, "
                         f"{iv['effect_ci95_high'][i, j]:+.3f}] from {self.senders[i]} ({self.metric.replace('_', ' ')} "
                         f"{self.base_logit_diff.mean():.4f} -> {self.mean()[i, j]:.4f})")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])
