"""A user's model is left as it was: what the study changes for its own forward passes is put back.

The study runs the model in eval mode, may switch its attention implementation for the pass that
returns attention patterns, and swaps slow activations for fused equivalents
(:mod:`logitscope.models.kernels`, which puts them back itself). :func:`study_mode` records every
module's training flag, the attention implementation and the hooks on each module first, and
restores them when the study returns or fails. (The study's own hooks are removed by
:class:`~logitscope.engine.capture.Recorder`; those ``transformers`` installs on a model the first time it
is asked for its attention patterns are removed here, with the mark that says they are there.)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


def attn_implementation(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def set_attn_implementation(model: nn.Module, implementation: str | None) -> None:
    """Switch ``model`` (and its sub-configs) to ``implementation`` if it is not already using it."""
    if implementation is not None and attn_implementation(model) != implementation and hasattr(
            model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)


# transformers 5 marks a model whose output-capturing hooks (for output_attentions) it installed.
_CAPTURE_MARK = "_output_capturing_hooks_installed"


@contextmanager
def study_mode(model: nn.Module) -> Iterator[None]:
    """Within the block ``model`` is in eval mode; afterwards (return or exception) each module's
    ``training`` flag, the attention implementation and the set of hooks on each module are what
    they were before."""
    modules = list(model.modules())
    training = [m.training for m in modules]
    hooks = [(set(m._forward_hooks), set(m._forward_pre_hooks), _CAPTURE_MARK in vars(m)) for m in modules]
    implementation = attn_implementation(model)
    model.eval()
    try:
        yield
    finally:
        for module, flag, (forward, pre, marked) in zip(modules, training, hooks):
            module.training = flag
            _remove_hooks(module, set(module._forward_hooks) - forward, set(module._forward_pre_hooks) - pre)
            if not marked:
                vars(module).pop(_CAPTURE_MARK, None)
        set_attn_implementation(model, implementation)


def _remove_hooks(module: nn.Module, forward: set[int], pre: set[int]) -> None:
    """Remove hooks by id, as their ``RemovableHandle.remove()`` would."""
    for key in forward:
        for table in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(module, table, {}).pop(key, None)
    for key in pre:
        for table in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):
            getattr(module, table, {}).pop(key, None)


@contextmanager
def attention_implementation(model: nn.Module, implementation: str) -> Iterator[None]:
    """Within the block ``model`` uses ``implementation`` (e.g. ``eager``, the kernel that returns
    attention patterns); afterwards, whatever it used before."""
    previous = attn_implementation(model)
    try:
        set_attn_implementation(model, implementation)
        yield
    finally:
        set_attn_implementation(model, previous)
