"""The study's numbers as plain labelled data: per-prompt arrays named after TransformerLens's hooks.

:class:`StudyData` holds what the study measured, per prompt (``[..., n_prompts]``), and is
frozen: its arrays are read-only, so the means and intervals derived from them (computed once, on
first use, by :mod:`logitscope.results.decomposition`, :mod:`logitscope.stats` and
:mod:`logitscope.results.grouping`) always describe the data beside them. Memory grows by a few hundred
floats per prompt, never by the model's width. :class:`logitscope.api.results.StudyResult` adds
figures, the report, tables and files on top.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np

from logitscope import labels

from logitscope.results import decomposition as attribution
from logitscope.results.grouping import by_template
from logitscope.stats import shared_intervals
from logitscope.inputs.prompt import Prompt


@dataclass(frozen=True, eq=False, repr=False)
class AttentionView:
    """Attention patterns of some heads on one prompt: ``patterns[i]`` is head ``kept[i]``'s
    ``[query, key]`` pattern (TransformerLens's ``hook_pattern``), float32."""

    prompt_index: int
    str_tokens: tuple[str, ...]
    patterns: np.ndarray  # [len(kept), n_tokens, n_tokens]
    kept: tuple[tuple[int, int], ...]  # (layer, head) of each row of patterns
    n_layers: int
    n_heads: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "str_tokens", tuple(self.str_tokens))
        object.__setattr__(self, "kept", tuple((int(l), int(h)) for l, h in self.kept))
        object.__setattr__(self, "patterns", _read_only(np.asarray(self.patterns)))
        if self.patterns.shape[0] != len(self.kept):
            raise ValueError(f"{len(self.kept)} heads kept but {self.patterns.shape[0]} patterns")

    def __repr__(self) -> str:
        heads = ", ".join(labels.head_label(*h) for h in self.kept[:6]) + (", ..." if len(self.kept) > 6 else "")
        return f"<AttentionView of prompt {self.prompt_index} ({len(self.str_tokens)} tokens): {heads}>"

    @classmethod
    def from_all_heads(cls, prompt_index: int, str_tokens: list[str], patterns: np.ndarray) -> "AttentionView":
        """A view of every head, from ``patterns[layer, head, query, key]``."""
        L, H = patterns.shape[:2]
        kept = tuple((layer, head) for layer in range(L) for head in range(H))
        return cls(prompt_index, tuple(str_tokens), patterns.reshape(L * H, *patterns.shape[2:]), kept, L, H)

    def heads(self, heads: Any) -> np.ndarray:
        """Patterns of ``heads``, stacked: ``[len(heads), T, T]``. A head may be written any way
        logitscope prints one: ``"L9H9"``, ``"9.9"``, ``(9, 9)``, a :meth:`StudyData.top_heads`
        triple, a results.json ``top_heads`` row; a single head gives ``[1, T, T]``."""
        wanted = labels.parse_heads(heads, self.n_layers, self.n_heads)
        rows = {h: i for i, h in enumerate(self.kept)}
        missing = [h for h in wanted if h not in rows]
        if missing:
            shown = ", ".join(labels.head_label(*h) for h in self.kept[:12]) + (", ..." if len(self.kept) > 12 else "")
            raise ValueError(
                f"the pattern of {labels.head_label(*missing[0])} was not kept: this study kept {shown}. "
                "To keep other heads, pass attention_heads=[...] (or 'all') to run_study"
            )
        T = self.patterns.shape[-1]
        if not wanted:
            return np.zeros((0, T, T), dtype=self.patterns.dtype)
        return np.stack([self.patterns[rows[h]] for h in wanted])


class _Renamed:
    """An old field name, kept for one release: reads the new field and says so."""

    def __init__(self, new: str) -> None:
        self.new = new

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        warnings.warn(
            f"{type(obj).__name__}.{self.old} is now .{self.new} (TransformerLens's name); "
            f".{self.old} will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(obj, self.new)


@dataclass(frozen=True, eq=False, repr=False)
class StudyData:
    """Direct logit attribution of the logit difference (correct − incorrect) for a set of prompts.

    Per-prompt arrays (last axis = prompt), all in logits, each divided by the final norm's frozen
    scale, named after the TransformerLens hook whose output they project:

    - ``logit_diff``: from the model's own logits at each prompt's answer position;
      ``prob_correct``, ``prob_incorrect``: both answers' probabilities there.
    - ``direct``: the final residual stream (``final_post``) projected on the logit-difference
      direction (the seed's check; ``logit_diff`` minus ``final_norm_bias``).
    - ``scale``: the final norm's scale σ (``ln_final.hook_scale``) at the answer position.
    - ``embed``, ``pos_embed`` (``None`` without learned positions), ``attn_out[layer]``,
      ``mlp_out[layer]``: TransformerLens's ``decompose_resid`` rows.
    - ``head_results[layer, head]``: ``stack_head_results`` rows (each head's ``hook_result``;
      value biases excluded, as after ``refactor_factored_attn_matrices`` / ``fold_value_biases``).
    - ``attn_bias[layer]``: the attention output bias including every head's value bias, so that
      ``attn_out = head_results.sum(1) + attn_bias``; ``mlp_bias[layer]``: the MLP output bias
      (inside ``mlp_out``); ``final_norm_bias``: the final norm's bias (and any unembedding bias)
      through the unembedding.
    - ``lens_recomputed[point]``: the logit lens with the final norm applied afresh at each point.
    - ``logit_diff_softcapped`` (``None`` unless the family soft-caps its final logits, Gemma 2):
      the difference of the model's own, capped, logits. ``logit_diff`` is then that of the linear
      logits before the cap, which the parts add up to; probabilities are the model's (capped).
    - ``experts[layer, expert]`` (``None`` unless the MLPs are mixtures of experts, Mixtral): each
      expert's share of ``mlp_out[layer]``, its routing weight included (zero where the router did
      not choose it at that prompt's answer position); ``experts.sum(1) == mlp_out``.
      ``expert_routing[layer, expert]``: that routing weight (zero where not chosen).

    - ``lens_top_ids[point, i]``, ``lens_top_probs[point, i]`` (``None`` unless asked,
      ``lens_top_k``): the classic (token) logit lens, the ``i``-th most probable token at each of
      :attr:`token_lens_labels` (``resid_pre`` of each block, ``final_post``), the final norm
      applied afresh to each point (``accumulated_resid(apply_ln=True)``), then the unembedding
      and any soft-cap; ``lens_mean_ids`` / ``lens_mean_probs``: the top tokens of the
      probabilities averaged over prompts; ``lens_tokens``: those ids as text.
    - ``dla_by_source[i, s]`` (for ``source_heads[i]``): that head's part of ``head_results``
      coming through source position ``s`` (``pattern[answer, s] · (v_s − b_V)`` projected; zero
      past a prompt's end); the positions add up to the head's ``head_results``.
      ``source_value_bias[i]``: the value bias's part (inside ``attn_bias``). ``source_by_role``:
      the same parts summed by named position (:attr:`source_roles`: IOI word positions, or END,
      END-1, ... and the rest), which also add up to ``head_results``.
    - ``neurons[i]`` (for MLP layer ``neuron_layer``): neuron ``i``'s part of ``mlp_out``
      (``hook_post`` times its ``W_out`` row, projected); the neurons and ``mlp_bias`` add up to
      ``mlp_out[neuron_layer]``.

    ``attn``, ``mlp``, ``heads`` and ``final_bias`` are the old names of ``attn_out``, ``mlp_out``,
    ``head_results`` and ``final_norm_bias`` (deprecated; removed in the next release).
    """

    model: str
    family: str
    norm: str
    parallel_attn_mlp: bool
    device: str
    dtype: str
    n_layers: int
    n_heads: int
    prompts: tuple[Prompt, ...]
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
    attn_out: np.ndarray
    mlp_out: np.ndarray
    head_results: np.ndarray
    attn_bias: np.ndarray
    mlp_bias: np.ndarray
    final_norm_bias: np.ndarray
    attention: AttentionView | None = None
    lens_recomputed: np.ndarray | None = None  # [n_lens, N]: see logit_lens_recomputed_per_prompt
    logit_diff_softcapped: np.ndarray | None = None  # [N]: see the class docstring
    experts: np.ndarray | None = None  # [L, E, N]: see the class docstring
    expert_routing: np.ndarray | None = None  # [L, E, N]
    lens_top_ids: np.ndarray | None = None  # [L + 1, k, N] int: see the class docstring
    lens_top_probs: np.ndarray | None = None  # [L + 1, k, N]
    lens_mean_ids: np.ndarray | None = None  # [L + 1, k] int (not per prompt)
    lens_mean_probs: np.ndarray | None = None  # [L + 1, k]
    lens_tokens: dict[int, str] = field(default_factory=dict)  # every id above, as text
    source_heads: tuple[tuple[int, int], ...] = ()
    dla_by_source: np.ndarray | None = None  # [len(source_heads), T_max, N]
    source_value_bias: np.ndarray | None = None  # [len(source_heads), N]
    source_roles: tuple[str, ...] = ()
    source_by_role: np.ndarray | None = None  # [len(source_heads), len(source_roles), N]
    neuron_layer: int | None = None
    neurons: np.ndarray | None = None  # [d_mlp, N]
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
    timing: dict[str, Any] = field(default_factory=dict)  # seconds, rates, and world_size / prompts_per_rank

    attn = _Renamed("attn_out")
    mlp = _Renamed("mlp_out")
    heads = _Renamed("head_results")
    final_bias = _Renamed("final_norm_bias")

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "source_heads", tuple((int(l), int(h)) for l, h in self.source_heads))
        object.__setattr__(self, "source_roles", tuple(self.source_roles))
        object.__setattr__(self, "lens_tokens", {int(k): v for k, v in self.lens_tokens.items()})
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                object.__setattr__(self, f.name, _read_only(value))

    # ------------------------------------------------------------------ sizes and labels
    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def head_labels(self) -> list[str]:
        return labels.head_labels(self.n_layers, self.n_heads)

    @property
    def logit_lens_labels(self) -> list[str]:
        return labels.logit_lens_labels(self.n_layers, self.parallel_attn_mlp)

    @property
    def token_lens_labels(self) -> list[str]:
        """The token lens's points: ``accumulated_resid(incl_mid=False)``'s labels."""
        return labels.logit_lens_labels(self.n_layers, True)

    @property
    def source_head_labels(self) -> list[str]:
        return [labels.head_label(l, h) for l, h in self.source_heads]

    @property
    def layer_labels(self) -> list[str]:
        return labels.layer_labels(self.n_layers, self.pos_embed is not None)

    @property
    def decomposition_labels(self) -> list[str]:
        return labels.decomposition_labels(self.n_layers, self.n_heads, self.pos_embed is not None)

    # ------------------------------------------------------------------ per-prompt stacks
    @cached_property
    def logit_lens_per_prompt(self) -> np.ndarray:
        """``accumulated_resid(incl_mid=True)`` with the final norm's frozen scale:
        ``[len(logit_lens_labels), n_prompts]``. ``final_post`` is the real final residual."""
        return _read_only(attribution.logit_lens(self.embed, self.pos_embed, self.attn_out, self.mlp_out, self.direct,
                                                 parallel_attn_mlp=self.parallel_attn_mlp))

    @property
    def logit_lens_recomputed_per_prompt(self) -> np.ndarray | None:
        """The logit lens with the final norm applied afresh to each accumulated residual (its own
        scale, as TransformerLens's ``accumulated_resid(apply_ln=True)`` since 2.18), rather than
        the final position's frozen scale the seed uses. ``None`` if it was not recorded."""
        return self.lens_recomputed

    @cached_property
    def layer_attribution_per_prompt(self) -> np.ndarray:
        """``decompose_resid``: ``[len(layer_labels), n_prompts]``."""
        return _read_only(attribution.layer_stack(self.embed, self.pos_embed, self.attn_out, self.mlp_out))

    def _parts(self) -> tuple:
        return (self.embed, self.pos_embed, self.head_results, self.attn_bias, self.mlp_out, self.mlp_bias,
                self.final_norm_bias)

    @cached_property
    def decomposition_per_prompt(self) -> np.ndarray:
        """Every part of the logit difference, ``[len(decomposition_labels), n_prompts]``; the
        rows add up to ``logit_diff`` up to ``decomposition_error``."""
        return _read_only(attribution.decomposition(*self._parts()))

    @cached_property
    def decomposition_groups_per_prompt(self) -> tuple[list[str], np.ndarray]:
        """The complete decomposition summed by kind of part: ``(names, [n_groups, n_prompts])``;
        the groups add up to the logit difference up to ``decomposition_error``."""
        names = labels.decomposition_group_labels(self.pos_embed is not None)
        return names, _read_only(attribution.decomposition_groups(*self._parts()))

    @cached_property
    def decomposition_error(self) -> np.ndarray:
        """``logit_diff`` minus the sum of all parts, per prompt."""
        return _read_only(self.logit_diff - self.decomposition_per_prompt.sum(0))

    # ------------------------------------------------------------------ means
    @property
    def mean_logit_diff(self) -> float:
        return float(self.logit_diff.mean())

    @cached_property
    def logit_lens(self) -> np.ndarray:
        return _read_only(self.logit_lens_per_prompt.mean(-1))

    @cached_property
    def layer_attribution(self) -> np.ndarray:
        return _read_only(self.layer_attribution_per_prompt.mean(-1))

    @cached_property
    def head_attribution(self) -> np.ndarray:
        """``[n_layers, n_heads]``, mean over prompts (the seed's ``per_head_logit_diffs``)."""
        return _read_only(self.head_results.mean(-1))

    def top_heads(self, k: int | None = None, sign: int = 1) -> list[tuple[int, int, float]]:
        """The ``k`` heads (default ``top_k``) with the largest (``sign=1``) or most negative
        (``sign=-1``) mean attribution, in order, as ``(layer, head, value)``: TransformerLens's
        ``topk_of_Nd_tensor(sign * per_head_logit_diffs, k)``. When fewer than ``k`` heads have
        that sign, the list goes on with the others, as ``topk`` does (:meth:`n_signed_heads`
        says how many have it). ``k`` must be between 1 and the number of heads."""
        if sign not in (1, -1):
            raise ValueError(f"sign={sign!r}: use 1 (largest) or -1 (most negative)")
        k = self.top_k if k is None else k
        n = self.n_layers * self.n_heads
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(f"k={k!r}: must be a whole number from 1 to {n} (this model's number of heads)")
        return attribution.rank_heads(self.head_attribution, int(k), sign)

    def signed_top_heads(self, sign: int = 1) -> list[tuple[int, int, float]]:
        """:meth:`top_heads` (``top_k`` of them) that have that sign: the heads the report and the
        summary list under "top positive" / "top negative" (fewer than ``top_k`` when fewer heads
        have that sign), and whose attention patterns the study keeps."""
        self.top_heads(sign=sign)  # validates sign and top_k
        return attribution.signed_top_heads(self.head_attribution, self.top_k, sign)

    def top_experts(self, k: int | None = None, sign: int = 1) -> list[tuple[int, int, float]]:
        """The ``k`` (default ``top_k``) ``(layer, expert, value)`` with the largest (``sign=1``) or
        most negative mean attribution over prompts; ``[]`` for a model without experts."""
        if self.experts is None:
            return []
        mean = self.experts.mean(-1)
        k = min(self.top_k if k is None else k, mean.size)
        return attribution.rank_heads(mean, int(k), sign)

    def top_neurons(self, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` neurons of ``neuron_layer`` with the largest ``|mean|`` attribution over prompts,
        as ``(neuron, mean)``; ``[]`` when no neurons were split."""
        if self.neurons is None:
            return []
        mean = self.neurons.mean(-1)
        order = np.argsort(-np.abs(mean), kind="stable")[:k]
        return [(int(i), float(mean[i])) for i in order]

    def n_signed_heads(self, sign: int) -> int:
        """How many heads have a positive (``sign=1``) or negative (``sign=-1``) mean attribution."""
        return attribution.count_signed(self.head_attribution, sign)

    # ------------------------------------------------------------------ statistics
    @cached_property
    def intervals(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Seeded 95% bootstrap intervals (over prompts) of each mean, keyed by results.json key
        (``decomposition_groups``: the decomposition summed by kind of part). One set of resamples
        for all (:func:`logitscope.stats.shared_intervals`): intervals of a whole and of its parts
        are consistent."""
        parts = {
            "logit_diff": self.logit_diff,
            "logit_lens": self.logit_lens_per_prompt,
            "layer_attribution": self.layer_attribution_per_prompt,
            "head_attribution": self.head_results,
            "decomposition": self.decomposition_per_prompt,
            "decomposition_groups": self.decomposition_groups_per_prompt[1],
        }
        if self.lens_recomputed is not None:
            parts["logit_lens_recomputed"] = self.lens_recomputed
        if self.experts is not None:
            parts["expert_attribution"] = self.experts
        if self.source_by_role is not None:
            parts["dla_by_source"] = self.source_by_role
            parts["source_value_bias"] = self.source_value_bias
        if self.neurons is not None:
            parts["neuron_attribution"] = self.neurons
        return shared_intervals(parts, seed=self.seed)

    @cached_property
    def _by_template(self) -> list[dict[str, Any]]:
        return by_template(self.prompts, self.logit_diff, seed=self.seed)

    def by_template(self) -> list[dict[str, Any]]:
        """Mean logit difference per (template, order) group, for prompts that carry them, with
        seeded 95% intervals and the fraction of prompts where the correct answer wins
        (:func:`logitscope.results.grouping.by_template`)."""
        return [dict(row) for row in self._by_template]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model}: {self.n_prompts} prompts, mean logit diff {self.mean_logit_diff:.4f}>"


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (``a`` itself stays writable for whoever else holds it)."""
    view = a.view()
    view.flags.writeable = False
    return view
