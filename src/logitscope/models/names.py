"""TransformerLens's hook names (``blocks.9.attn.hook_z``) for logitscope's hook points.

A name is supported where the activation logitscope reads at that point is the one TransformerLens
3.9 caches under the name (``HookedTransformer.from_pretrained_no_processing``; see below for the
processed model), in TransformerLens's layout:

- ``blocks.{L}.hook_resid_pre``, ``hook_resid_mid``, ``hook_resid_post``, ``hook_attn_out``,
  ``hook_mlp_out``: ``[batch, pos, d_model]`` (no ``hook_resid_mid`` where attention and MLP run in
  parallel: GPT-J, Pythia; TransformerLens has none there either);
- ``blocks.{L}.attn.hook_z``: ``[batch, pos, head_index, d_head]``;
- ``blocks.{L}.attn.hook_v``: ``[batch, pos, n_kv_heads, d_head]`` (``n_kv_heads`` = ``n_heads``
  without grouped-query attention);
- queries and keys where logitscope sees them: ``blocks.{L}.attn.hook_q`` /
  ``hook_k`` (``[batch, pos, n_heads | n_kv_heads, d_head]``) in families without rotary
  embeddings and where the family's q/k are read at their projections (GPT-Neo, OLMo-2);
  ``blocks.{L}.attn.hook_rot_q`` / ``hook_rot_k`` (after the rotary embedding and any q/k norm,
  as the attention kernel receives them) in the other rotary families;
- ``blocks.{L}.attn.hook_pattern``: ``[batch, head_index, query_pos, key_pos]``.

Not supported (no logitscope hook point reads them): ``hook_embed``, ``hook_pos_embed``,
``ln*.hook_scale`` / ``hook_normalized`` (TransformerLens's are the norm's input over its scale,
before its weight, which no Hugging Face module outputs), ``hook_attn_scores``,
``hook_result``, ``mlp.hook_pre`` / ``hook_post``, and the other of each q/k pair above.

TransformerLens's default weight processing changes some of these values, not what they do:
``center_writing_weights`` centres the residual stream and every output written into it,
``fold_value_biases`` moves the value bias out of ``hook_v`` / ``hook_z``. logitscope reads the
model as it is, so its values equal the unprocessed model's; patterns, queries and keys are the
same either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from logitscope.errors import InputError
from logitscope.models.hooks import HookPoints

RESIDUAL_NAMES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
}
ATTENTION_NAMES = {"hook_z": "z", "hook_v": "v", "hook_pattern": "pattern"}
QK_BEFORE_ROTARY = {"hook_q": "q", "hook_k": "k"}
QK_AFTER_ROTARY = {"hook_rot_q": "q", "hook_rot_k": "k"}

_NAME = re.compile(r"^blocks\.(\d+)\.((?:attn\.)?hook_\w+)$")


@dataclass(frozen=True)
class HookName:
    """One TransformerLens hook name and the logitscope hook point it is read at."""

    name: str  # blocks.9.attn.hook_z
    point: str  # z (logitscope.models.hooks.POINTS)
    layer: int

    @property
    def key(self) -> tuple[str, int]:
        """The ``(point, layer)`` key of :meth:`HookPoints.attach`."""
        return self.point, self.layer


def suffixes(points: HookPoints) -> dict[str, str]:
    """This model's supported name suffixes (``hook_resid_pre``, ``attn.hook_z``, ...) and the
    logitscope point each is read at."""
    out = {k: v for k, v in RESIDUAL_NAMES.items() if not (v == "resid_mid" and points.parallel)}
    qk = QK_AFTER_ROTARY if _qk_after_rotary(points) else QK_BEFORE_ROTARY
    for k, v in {**ATTENTION_NAMES, **qk}.items():
        out[f"attn.{k}"] = v
    return out


def _qk_after_rotary(points: HookPoints) -> bool:
    """Whether logitscope's q and k are TransformerLens's ``hook_rot_q`` / ``hook_rot_k``: in a family
    without learned positions (every such supported family is rotary) whose q and k are read where
    the attention kernel receives them, not at their projections (GPT-Neo, OLMo-2)."""
    lm = points.lm
    return lm.adapter.pos_embed(lm.model) is None and "q" not in points.module_points


def supported_names(points: HookPoints) -> list[str]:
    """The supported names as templates, ``blocks.{L}.attn.hook_z``, for messages and docs."""
    return [f"blocks.{{L}}.{s}" for s in suffixes(points)]


def parse_hook_name(name: object, points: HookPoints) -> HookName:
    """``name`` (TransformerLens's spelling) as a :class:`HookName`, or an :class:`InputError` that
    says what is wrong and lists the names this model supports."""
    L = points.n_layers
    listed = f"supported names (L = 0-{L - 1}): {', '.join(supported_names(points))}"
    if not isinstance(name, str):
        raise InputError(f"hook name {name!r}: must be a string such as 'blocks.0.attn.hook_z'; {listed}")
    m = _NAME.match(name)
    table = suffixes(points)
    if m is None or m.group(2) not in table:
        raise InputError(f"hook name {name!r}: {_why(name, m, points)}; {listed}")
    layer = int(m.group(1))
    if not 0 <= layer < L:
        raise InputError(f"hook name {name!r}: this model has layers 0-{L - 1}; {listed}")
    return HookName(name, table[m.group(2)], layer)


def _why(name: str, m: re.Match | None, points: HookPoints) -> str:
    """Why a well-spelt name is not supported, or that it is not a per-layer hook name."""
    if m is None:
        return "not a per-layer TransformerLens hook name of the form blocks.{L}.<hook>"
    suffix = m.group(2)
    tail = suffix.removeprefix("attn.")
    if suffix == "hook_resid_mid":
        return f"{points.lm.adapter.family} runs attention and MLP in parallel: there is no resid_mid"
    if tail in QK_BEFORE_ROTARY and suffix.startswith("attn."):
        return ("this family's queries and keys are read after the rotary embedding: use "
                f"blocks.{m.group(1)}.attn.hook_rot_{tail[-1]}")
    if tail in QK_AFTER_ROTARY and suffix.startswith("attn."):
        return ("this family's queries and keys are read before any rotary embedding: use "
                f"blocks.{m.group(1)}.attn.hook_{tail[-1]}")
    return "logitscope has no hook point that reads it as TransformerLens does"
