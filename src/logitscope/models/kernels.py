"""Faster kernels that compute the same function, swapped in only for the study's forward passes.

GPT-2 and GPT-Neo use ``gelu_new``, which transformers evaluates as five elementwise PyTorch ops
in Python (``NewGELUActivation``); ``F.gelu(approximate="tanh")`` is the same formula in one fused
kernel (transformers ships it as ``gelu_pytorch_tanh`` and documents the equivalence). Outputs agree
to float32 rounding (a few 1e-7); the parity tests run through this swap.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


def _fused_gelu_tanh() -> nn.Module:
    from transformers.activations import GELUTanh

    return GELUTanh()


@contextmanager
def equivalent_kernels(model: nn.Module) -> Iterator[None]:
    """Within the block, run ``model`` with fused equivalents of slow Python activations."""
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - older/newer transformers without the class
        yield
        return
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                swapped.append((parent, name, child))
                setattr(parent, name, _fused_gelu_tanh())
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
