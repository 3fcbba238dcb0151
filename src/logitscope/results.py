"""The study's result: per-prompt scalars with TransformerLens's labels, and what follows from them.

Everything is kept per prompt (``[..., n_prompts]``), so means, intervals, per-template views and
any regrouping a researcher wants are a reduction away. Memory grows by a few hundred floats per
prompt, never by the model's width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from logitscope.stats import bootstrap_ci
from logitscope.tasks.prompts import Prompt

RESULTS_SCHEMA_VERSION = 1
OUTPUT_FILES = ("results.json", "per_prompt_heads.npy", "per_prompt.csv", "report.html")


@dataclass
class AttentionView:
    """All heads' attention patterns on one prompt (``patterns[layer, head, query, key]``)."""

    prompt_index: int
    str_tokens: list[str]
    patterns: np.ndarray  # [n_layers, n_heads, n_tokens, n_tokens], float32

    def heads(self, heads: list[tuple[int, int]]) -> np.ndarray:
        """Patterns of the given ``(layer, head)`` pairs, stacked: ``[len(heads), T, T]``."""
        L, H = self.patterns.shape[:2]
        for layer, head in heads:
            if not (0 <= layer < L and 0 <= head < H):
                raise ValueError(f"no head L{layer}H{head}: this model has layers 0-{L - 1} and heads 0-{H - 1}")
        return np.stack([self.patterns[layer, head] for layer, head in heads])


@dataclass
class StudyResult:
    """Direct logit attribution of the logit difference (correct − incorrect) for a set of prompts.

    Per-prompt arrays (last axis = prompt), all in logits:

    - ``logit_diff``: from the model's own logits at each prompt's answer position.
    - ``direct``: the final residual stream, scaled by the final norm's frozen scale, projected on
      the logit-difference direction (the seed's check; equals ``logit_diff`` minus the final norm's
      bias and unembedding bias terms).
    - ``embed``, ``pos_embed`` (``None`` without learned positions), ``attn[layer]``,
      ``mlp[layer]``: TransformerLens's ``decompose_resid`` rows.
    - ``heads[layer, head]``: TransformerLens's ``stack_head_results`` rows (value biases excluded,
      as after ``refactor_factored_attn_matrices`` / ``fold_value_biases``).
    - ``attn_bias[layer]``: the attention output bias including every head's value bias, so that
      ``attn = heads.sum(1) + attn_bias``; ``mlp_bias[layer]``: the MLP output bias (inside ``mlp``).
    - ``final_bias``: the final norm's bias (and any unembedding bias) through the unembedding.
    - ``logit_diff_softcapped`` (``None`` unless the family soft-caps its final logits, Gemma 2):
      the difference of the model's own, capped, logits. ``logit_diff`` is then that of the linear
      logits before the cap, which the parts add up to; probabilities are the model's (capped).
    - ``experts[layer, expert]`` (``None`` unless the MLPs are mixtures of experts, Mixtral): each
      expert's share of ``mlp[layer]``, its routing weight included (zero where the router did not
      choose it at that prompt's answer position); ``experts.sum(1) == mlp``.
      ``expert_routing[layer, expert]``: that routing weight (zero where not chosen).
    """

    model: str
    family: str
    norm: str
    parallel_attn_mlp: bool
    device: str
    dtype: str
    n_layers: int
    n_heads: int
    prompts: list[Prompt]
    correct_ids: np.ndarray
    incorrect_ids: np.ndarray
    n_tokens: np.ndarray
    logit_diff: np.ndarray
    prob_correct: np.ndarray
    prob_incorrect: np.ndarray
    direct: np.ndarray
    scale: np.ndarray
    embed: np.ndarray
    pos_embed: np.ndarray | None
    attn: np.ndarray
    mlp: np.ndarray
    heads: np.ndarray
    attn_bias: np.ndarray
    mlp_bias: np.ndarray
    final_bias: np.ndarray
    attention: AttentionView | None = None
    lens_recomputed: np.ndarray | None = None  # [n_lens, N]: see logit_lens_recomputed_per_prompt
    logit_diff_softcapped: np.ndarray | None = None  # [N]: see the class docstring
    experts: np.ndarray | None = None  # [L, E, N]: see the class docstring
    expert_routing: np.ndarray | None = None  # [L, E, N]
    top_k: int = 3
    seed: int = 0
    prepend_bos: bool = True
    version: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Wall-clock seconds of run_study's phases and prompts_per_s = n_prompts / study_s; measured,
    # not computed from the model. tokenize_s: token ids and checks; forward_s: batch set-up, every
    # forward pass and attribution, the copy back to the host; attention_s: the attention-pattern
    # pass; study_s: all of run_study from tokenization on.
    timing: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes and labels
    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def head_labels(self) -> list[str]:
        return [f"L{layer}H{head}" for layer in range(self.n_layers) for head in range(self.n_heads)]

    @property
    def logit_lens_labels(self) -> list[str]:
        labels = []
        for layer in range(self.n_layers):
            labels.append(f"{layer}_pre")
            if not self.parallel_attn_mlp:
                labels.append(f"{layer}_mid")
        return labels + ["final_post"]

    @property
    def layer_labels(self) -> list[str]:
        labels = ["embed"] + (["pos_embed"] if self.pos_embed is not None else [])
        for layer in range(self.n_layers):
            labels += [f"{layer}_attn_out", f"{layer}_mlp_out"]
        return labels

    # ------------------------------------------------------------------ per-prompt stacks
    @cached_property
    def logit_lens_per_prompt(self) -> np.ndarray:
        """``accumulated_resid(incl_mid=True)`` projected with the final norm's frozen scale:
        ``[len(logit_lens_labels), n_prompts]``. ``final_post`` is the real final residual."""
        resid = self.embed + (self.pos_embed if self.pos_embed is not None else 0.0)
        rows = []
        for layer in range(self.n_layers):
            rows.append(resid)
            if self.parallel_attn_mlp:
                resid = resid + self.attn[layer] + self.mlp[layer]
            else:
                resid = resid + self.attn[layer]
                rows.append(resid)
                resid = resid + self.mlp[layer]
        rows.append(self.direct)
        return np.stack(rows)

    @cached_property
    def logit_lens_recomputed_per_prompt(self) -> np.ndarray | None:
        """The logit lens with the final norm applied afresh to each accumulated residual (its own
        scale, as TransformerLens's ``accumulated_resid(apply_ln=True)`` since 2.18), rather than
        the final position's frozen scale the seed uses. ``None`` if it was not recorded."""
        return self.lens_recomputed

    @cached_property
    def layer_attribution_per_prompt(self) -> np.ndarray:
        rows = [self.embed] + ([self.pos_embed] if self.pos_embed is not None else [])
        for layer in range(self.n_layers):
            rows += [self.attn[layer], self.mlp[layer]]
        return np.stack(rows)

    @property
    def decomposition_labels(self) -> list[str]:
        labels = ["embed"] + (["pos_embed"] if self.pos_embed is not None else [])
        labels += self.head_labels
        labels += [f"{layer}_attn_bias" for layer in range(self.n_layers)]
        labels += [f"{layer}_mlp_neurons" for layer in range(self.n_layers)]
        labels += [f"{layer}_mlp_bias" for layer in range(self.n_layers)]
        return labels + ["final_norm_bias"]

    @cached_property
    def decomposition_per_prompt(self) -> np.ndarray:
        """Every part of the logit difference, per prompt; the rows add up to ``logit_diff`` up to
        ``decomposition_error``."""
        rows = [self.embed[None]]
        if self.pos_embed is not None:
            rows.append(self.pos_embed[None])
        rows += [
            self.heads.reshape(self.n_layers * self.n_heads, -1),
            self.attn_bias,
            self.mlp - self.mlp_bias,
            self.mlp_bias,
            self.final_bias[None],
        ]
        return np.concatenate(rows)

    @cached_property
    def decomposition_groups_per_prompt(self) -> tuple[list[str], np.ndarray]:
        """The complete decomposition summed by kind of part: ``(names, [n_groups, n_prompts])``;
        the groups add up to the logit difference up to ``decomposition_error``."""
        names = ["embed"] + (["pos_embed"] if self.pos_embed is not None else [])
        rows = [self.embed] + ([self.pos_embed] if self.pos_embed is not None else [])
        names += ["attention heads", "attention biases", "MLP neurons", "MLP biases", "final norm bias"]
        rows += [self.heads.sum((0, 1)), self.attn_bias.sum(0), (self.mlp - self.mlp_bias).sum(0),
                 self.mlp_bias.sum(0), self.final_bias]
        return names, np.stack([np.asarray(r, dtype=np.float64) for r in rows])

    @property
    def decomposition_error(self) -> np.ndarray:
        """``logit_diff`` minus the sum of all parts, per prompt."""
        return self.logit_diff - self.decomposition_per_prompt.sum(0)

    # ------------------------------------------------------------------ means
    @property
    def mean_logit_diff(self) -> float:
        return float(self.logit_diff.mean())

    @property
    def logit_lens(self) -> np.ndarray:
        return self.logit_lens_per_prompt.mean(-1)

    @property
    def layer_attribution(self) -> np.ndarray:
        return self.layer_attribution_per_prompt.mean(-1)

    @property
    def head_attribution(self) -> np.ndarray:
        """``[n_layers, n_heads]``, mean over prompts (the seed's ``per_head_logit_diffs``)."""
        return self.heads.mean(-1)

    def top_heads(self, k: int | None = None, sign: int = 1) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest (``sign=1``) or most negative (``sign=-1``) mean
        attribution, in order, as ``(layer, head, value)``."""
        if sign not in (1, -1):
            raise ValueError(f"sign={sign!r}: use 1 (largest) or -1 (most negative)")
        k = self.top_k if k is None else k
        flat = self.head_attribution.reshape(-1) * sign
        order = np.argsort(-flat, kind="stable")[: min(k, flat.size)]
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(self.head_attribution.reshape(-1)[i])) for i in order]

    def _top_head_rows(self, sign: int) -> list[dict[str, Any]]:
        from logitscope.circuits import known_circuit

        circuit = known_circuit(self) or {}
        lo, hi = self.intervals["head_attribution"]
        rows = []
        for layer, head, value in self.top_heads(sign=sign):
            row = {"layer": layer, "head": head, "name": f"L{layer}H{head}", "value": value,
                   "ci95_low": float(lo[layer, head]), "ci95_high": float(hi[layer, head])}
            if circuit:
                row["ioi_class"] = circuit.get((layer, head))
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ statistics
    @cached_property
    def intervals(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Seeded 95% bootstrap intervals (over prompts) of each mean, keyed by results.json key
        (``decomposition_groups``: the decomposition summed by kind of part)."""
        # One stack, one set of resamples: intervals of a whole and of its parts are consistent.
        parts = {
            "logit_diff": self.logit_diff[None],
            "logit_lens": self.logit_lens_per_prompt,
            "layer_attribution": self.layer_attribution_per_prompt,
            "head_attribution": self.heads.reshape(self.n_layers * self.n_heads, -1),
            "decomposition": self.decomposition_per_prompt,
            "decomposition_groups": self.decomposition_groups_per_prompt[1],
        }
        if self.logit_lens_recomputed_per_prompt is not None:
            parts["logit_lens_recomputed"] = self.logit_lens_recomputed_per_prompt
        stacked = np.concatenate(list(parts.values()))
        low, high = bootstrap_ci(stacked, seed=self.seed)
        out, start = {}, 0
        for key, arr in parts.items():
            stop = start + arr.shape[0]
            lo, hi = low[start:stop], high[start:stop]
            if key == "head_attribution":
                lo, hi = lo.reshape(self.n_layers, self.n_heads), hi.reshape(self.n_layers, self.n_heads)
            if key == "logit_diff":
                lo, hi = lo[0], hi[0]
            out[key] = (lo, hi)
            start = stop
        return out

    @cached_property
    def _by_template(self) -> list[dict[str, Any]]:
        """Mean logit difference per (template, order) group (computed once; see by_template)."""
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(self.prompts):
            if "template" in p.meta:
                key = tuple(v if isinstance(v, (str, int, float, bool)) else json.dumps(v)
                            for v in (p.meta["template"], p.meta.get("order", "")))
                groups.setdefault(key, []).append(i)

        def order_key(key: tuple) -> tuple:  # numbers in numeric order, then text
            return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in key)

        rows = []
        for (template, order), idx in sorted(groups.items(), key=lambda kv: order_key(kv[0])):
            ld = self.logit_diff[idx]
            lo, hi = bootstrap_ci(ld[None], seed=self.seed)
            rows.append(
                {
                    "template": template,
                    "order": order,
                    "n": len(idx),
                    "logit_diff_mean": float(ld.mean()),
                    "ci95_low": float(lo[0]),
                    "ci95_high": float(hi[0]),
                    "frac_correct": float((ld > 0).mean()),
                }
            )
        return rows

    def by_template(self) -> list[dict[str, Any]]:
        """Mean logit difference per (template, order) group, for prompts that carry them, with
        seeded 95% intervals and the fraction of prompts where the correct answer wins."""
        return [dict(row) for row in self._by_template]

    # ------------------------------------------------------------------ per-prompt tables
    def prompt_rows(self) -> list[dict[str, Any]]:
        """One dict per prompt, as in ``results.json``'s ``prompts``: the text, answers and their
        ids, the token count, logit difference, direct term, both answers' probabilities, then the
        prompt's own metadata (IOI: template, order, names, ...)."""
        rows = []
        for i, p in enumerate(self.prompts):
            row = {
                "prompt": p.text,
                "correct": p.correct,
                "incorrect": p.incorrect,
                "correct_id": int(self.correct_ids[i]),
                "incorrect_id": int(self.incorrect_ids[i]),
                "n_tokens": int(self.n_tokens[i]),
                "logit_diff": float(self.logit_diff[i]),
                "direct": float(self.direct[i]),
                "prob_correct": float(self.prob_correct[i]),
                "prob_incorrect": float(self.prob_incorrect[i]),
            }
            # The prompt's own keys follow; one that names a computed field is kept as meta_<key>.
            row.update({(f"meta_{k}" if k in row else k): v for k, v in p.meta.items()})
            rows.append(row)
        return rows

    def per_prompt_columns(self) -> tuple[list[str], np.ndarray]:
        """Every per-prompt attribution as named columns: ``(names, [n_prompts, n_columns])``.
        Names are TransformerLens labels, prefixed by what they are: ``lens:0_pre`` …
        ``lens:final_post`` (the logit lens, frozen scale), ``layer:embed`` … ``layer:11_mlp_out``,
        ``head:L0H0`` … (``stack_head_results``), ``part:...`` (the complete decomposition's
        groups)."""
        names = ([f"lens:{x}" for x in self.logit_lens_labels] + [f"layer:{x}" for x in self.layer_labels]
                 + [f"head:{x}" for x in self.head_labels]
                 + [f"part:{x}" for x in self.decomposition_groups_per_prompt[0]])
        values = np.concatenate([self.logit_lens_per_prompt, self.layer_attribution_per_prompt,
                                 self.heads.reshape(self.n_layers * self.n_heads, -1),
                                 self.decomposition_groups_per_prompt[1]])
        return names, np.ascontiguousarray(values.T, dtype=np.float64)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per prompt: :meth:`prompt_rows` and :meth:`per_prompt_columns` together
        (what ``per_prompt.csv`` holds, and what ``pandas.DataFrame(result.to_records())`` takes)."""
        names, values = self.per_prompt_columns()
        return [{**row, **dict(zip(names, v))} for row, v in zip(self.prompt_rows(), values.tolist())]

    def to_dataframe(self) -> Any:
        """:meth:`to_records` as a ``pandas.DataFrame`` (needs pandas, which logitscope itself does
        not: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is in the test environment
            raise ImportError("to_dataframe() needs pandas: pip install pandas "
                              "(to_records() gives the same rows as plain dicts)") from exc
        return pd.DataFrame(self.to_records())

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_records` as CSV (UTF-8, a header row; columns in the order of the first
        prompt's row, then any metadata key later prompts add; an absent value is an empty cell)."""
        import csv

        names, values = self.per_prompt_columns()
        rows = self.prompt_rows()
        head = list(dict.fromkeys(k for row in rows for k in row))
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(head + names)
            for row, v in zip(rows, values.tolist()):
                w.writerow([_cell(row.get(k, "")) for k in head] + v)
        return Path(path)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` document (means over prompts, divided by the number of prompts as
        the seed does, with 95% bootstrap intervals)."""
        ci = self.intervals

        def block(values: np.ndarray, key: str, **extra: Any) -> dict[str, Any]:
            lo, hi = ci[key]
            return {**extra, "values": _tolist(values), "ci95_low": _tolist(lo), "ci95_high": _tolist(hi)}

        prompts = self.prompt_rows()
        lo, hi = ci["logit_diff"]
        doc: dict[str, Any] = {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "logitscope_version": self.version,
            "created": self.created,
            "model": self.model,
            "family": self.family,
            "norm": self.norm,
            "device": self.device,
            "dtype": self.dtype,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_prompts": self.n_prompts,
            "prepend_bos": self.prepend_bos,
            "seed": self.seed,
            "prompts": prompts,
            "logit_diff": {
                "mean": self.mean_logit_diff,
                "ci95_low": float(lo),
                "ci95_high": float(hi),
                "per_prompt": _tolist(self.logit_diff),
                "frac_correct": float((self.logit_diff > 0).mean()),
            },
            "dla_check": {"direct": float(self.direct.mean()), "logit_diff": self.mean_logit_diff},
            "logit_lens": block(self.logit_lens, "logit_lens", labels=self.logit_lens_labels),
            "layer_attribution": block(self.layer_attribution, "layer_attribution", labels=self.layer_labels),
            **(
                {"logit_lens_recomputed": block(self.logit_lens_recomputed_per_prompt.mean(-1), "logit_lens_recomputed",
                                                labels=self.logit_lens_labels)}
                if self.logit_lens_recomputed_per_prompt is not None else {}
            ),
            "head_attribution": block(self.head_attribution, "head_attribution"),
            "top_heads": {key: self._top_head_rows(sign) for key, sign in (("positive", 1), ("negative", -1))},
            "decomposition": block(
                self.decomposition_per_prompt.mean(-1),
                "decomposition",
                labels=self.decomposition_labels,
                max_abs_error=float(np.abs(self.decomposition_error).max()),
                groups=block(self.decomposition_groups_per_prompt[1].mean(-1), "decomposition_groups",
                             labels=self.decomposition_groups_per_prompt[0]),
            ),
            "by_template": self.by_template(),
        }
        if self.logit_diff_softcapped is not None:  # results.json key logit_diff_softcapped
            doc["logit_diff_softcapped"] = {
                "mean": float(self.logit_diff_softcapped.mean()),
                "per_prompt": _tolist(self.logit_diff_softcapped),
                "frac_correct": float((self.logit_diff_softcapped > 0).mean()),
            }
        if self.experts is not None:
            doc["expert_attribution"] = self._expert_block()
        if self.attention is not None:
            doc["attention"] = {
                "prompt_index": self.attention.prompt_index,
                "str_tokens": self.attention.str_tokens,
            }
        if self.timing:
            doc["timing"] = dict(self.timing)
        doc.update(self.extra)
        return doc

    def top_experts(self, k: int | None = None, sign: int = 1) -> list[tuple[int, int, float]]:
        """The ``k`` (layer, expert) pairs with the largest (``sign=1``) or most negative mean
        attribution over prompts, as ``(layer, expert, value)``; [] without experts."""
        if self.experts is None:
            return []
        mean = self.experts.mean(-1)
        flat = mean.reshape(-1) * sign
        order = np.argsort(-flat, kind="stable")[: min(self.top_k if k is None else k, flat.size)]
        E = mean.shape[1]
        return [(int(i) // E, int(i) % E, float(mean.reshape(-1)[i])) for i in order]

    def _expert_block(self) -> dict[str, Any]:
        """results.json ``expert_attribution``: per [layer][expert], the mean attribution over
        prompts (``values``) with seeded 95% bootstrap intervals, the mean routing weight and the
        fraction of prompts routed to it at the answer position, and the top experts."""
        L, E, n = self.experts.shape
        lo, hi = bootstrap_ci(self.experts.reshape(L * E, n), seed=self.seed)
        rows = lambda sign: [{"layer": l, "expert": e, "name": f"L{l}E{e}", "value": v}  # noqa: E731
                             for l, e, v in self.top_experts(sign=sign)]
        return {
            "values": _tolist(self.experts.mean(-1)),
            "ci95_low": _tolist(lo.reshape(L, E)),
            "ci95_high": _tolist(hi.reshape(L, E)),
            "routing_weight": _tolist(self.expert_routing.mean(-1)),
            "frac_routed": _tolist((self.expert_routing > 0).mean(-1)),
            "top": {"positive": rows(1), "negative": rows(-1)},
        }

    def save(self, out_dir: str | Path, *, report: bool = True, csv: bool = False) -> Path:
        """Write ``results.json``, ``per_prompt_heads.npy``, (by default) ``report.html`` and (if
        asked) ``per_prompt.csv`` into ``out_dir``. Everything is written to a temporary folder
        beside it and moved in only when complete, so a failure leaves earlier files untouched."""
        from logitscope.io import atomic_output_dir, json_text

        with atomic_output_dir(out_dir, owned=OUTPUT_FILES) as tmp:
            (tmp / "results.json").write_text(json_text(self.to_dict()), encoding="utf-8")
            # [n_prompts, n_layers, n_heads] float32, prompts in results.json order.
            np.save(tmp / "per_prompt_heads.npy", np.ascontiguousarray(np.moveaxis(self.heads, -1, 0), dtype=np.float32))
            if csv:  # ~4.6 KB a prompt for GPT-2 small (200 columns at full float64 precision)
                self.write_csv(tmp / "per_prompt.csv")
            if report:
                self.write_report(tmp / "report.html")
        return Path(out_dir)

    def write_report(self, path: str | Path) -> Path:
        """Write the self-contained HTML report (works offline)."""
        from logitscope.report import write_report

        return write_report(self, path)

    def figures(self) -> dict[str, Any]:
        """The report's plotly figures, by name, for restyling in a notebook."""
        from logitscope.report.figures import make_figures

        return make_figures(self)

    def summary(self) -> str:
        """A few lines for a terminal: mean logit difference, the DLA check, top heads."""
        lo, hi = self.intervals["logit_diff"]
        pos = ", ".join(f"L{l}H{h} {v:+.3f}" for l, h, v in self.top_heads(sign=1))
        neg = ", ".join(f"L{l}H{h} {v:+.3f}" for l, h, v in self.top_heads(sign=-1))
        return "\n".join(
            [
                f"model {self.model} ({self.family}, {self.n_layers} layers x {self.n_heads} heads) on {self.device}",
                f"prompts {self.n_prompts}   mean logit diff {self.mean_logit_diff:.4f}  95% CI [{lo:.4f}, {hi:.4f}]"
                f"   correct > incorrect in {100 * (self.logit_diff > 0).mean():.1f}%",
                f"DLA check: final residual / frozen scale . direction = {self.direct.mean():.4f}"
                f"  (logit diff {self.mean_logit_diff:.4f}; the gap is the final norm bias term {self.final_bias.mean():+.4f})",
                f"top positive heads: {pos}",
                f"top negative heads: {neg}",
            ]
            + ([f"logit diff of the linear logits, before the final soft-cap; the model's capped logits differ by "
                f"{self.logit_diff_softcapped.mean():.4f} on average"] if self.logit_diff_softcapped is not None else [])
            + ([f"top experts: {', '.join(f'L{l}E{e} {v:+.3f}' for l, e, v in self.top_experts())}"]
               if self.experts is not None else [])
            + ([self._timing_line()] if self.timing else [])
        )

    def _timing_line(self) -> str:
        t = self.timing
        return (f"study {self.n_prompts} prompts in {t['study_s']:.2f} s ({t['prompts_per_s']:,.0f} prompts/s; "
                f"tokenize {t['tokenize_s']:.2f} s, forward {t['forward_s']:.2f} s, attention {t['attention_s']:.2f} s)")

    def _repr_html_(self) -> str:
        from logitscope.report import notebook_html

        return notebook_html(self)

    def __repr__(self) -> str:
        return f"<StudyResult {self.model}: {self.n_prompts} prompts, mean logit diff {self.mean_logit_diff:.4f}>"


def _cell(v: Any) -> Any:
    """A metadata value as one CSV cell: text and numbers as they are, anything else as JSON."""
    return v if isinstance(v, (str, int, float)) else json.dumps(v)


def _tolist(a: Any) -> Any:
    return np.asarray(a, dtype=np.float64).tolist()
