"""Names a result carries in its files and that the report reads: how an attribution grid is named
beside its exact one, and what path patching's ``freeze`` modes hold fixed."""

from __future__ import annotations

__all__ = ["FROZEN", "GRID_NAMES", "SUFFIX", "attribution_name", "exact_name"]

# TransformerLens's patching grids, as results.json names them (logitscope.methods.patching.grids
# defines each; tests/test_layout.py checks the two agree).
GRID_NAMES = ("resid_pre", "resid_mid", "attn_out", "mlp_out", "attn_head_out_all_pos", "attn_head_q_all_pos",
              "attn_head_k_all_pos", "attn_head_v_all_pos", "attn_head_pattern_all_pos", "attn_head_out_by_pos")

SUFFIX = "_attribution"  # results.json: an attribution grid sits beside its exact one as <grid>_attribution

FROZEN = {
    "heads": "every head that is not a sender, at its base-run value; MLPs and the final norm recomputed "
             "(the IOI paper's path patching)",
    "all": "every head that is not a sender and every MLP output, at their base-run values, and (to the logits) "
           "the final norm's scale: direct paths only",
}


def attribution_name(grid: str) -> str:
    return grid + SUFFIX


def exact_name(name: str) -> str | None:
    """The exact grid an attribution grid estimates (``None`` for an exact grid)."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else None


# The metrics' results.json keys in a few words, for axes, colour bars and hovers (logitscope.engine.metrics).
LABELS = {"logprob_diff": "log-prob diff", "prob_diff": "prob diff", "logprob": "log-prob", "loss": "loss", "kl": "KL"}


def metric_label(key: str | None) -> str:
    """A metric's results.json key in a few words (``None``: the logit difference)."""
    if key is None or key.startswith("logit_diff"):
        return "logit diff"
    return LABELS.get(key, key.removeprefix("metric_"))
