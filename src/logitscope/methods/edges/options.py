"""The edge methods' and interventions' names, and their options' checks before any forward pass."""

from __future__ import annotations

from logitscope.errors import ArgumentError

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "exact")
INTERVENTIONS = ("patching", "mean", "mean-positional", "zero")
PATCHING_ONLY = ("eap-ig-inputs", "clean-corrupted")


def check_options(method: str, steps: int | None, intervention: str) -> int:
    """The options' errors before any forward pass; returns the number of steps used."""
    if method not in METHODS:
        raise ArgumentError("method", method, f"unknown method; use one of {', '.join(METHODS)}")
    if intervention not in INTERVENTIONS:
        raise ArgumentError("intervention", intervention, f"unknown intervention; use one of {', '.join(INTERVENTIONS)}")
    if method in PATCHING_ONLY and intervention != "patching":
        raise ArgumentError("intervention", intervention, f"{method} runs the counterpart prompts, so it takes "
                            "intervention='patching' only", fix="patching")
    if method in ("eap-ig-inputs", "eap-ig-activations"):
        steps = 5 if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ArgumentError("steps", steps, "must be a whole number, at least 1")
        return steps
    return 1
