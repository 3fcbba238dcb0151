"""Models: loading (hub id or local folder) and the per-family adapters."""

from logitscope.models.adapters import ADAPTERS, Adapter, ModelShape, adapter_for, supported_architectures
from logitscope.models.load import ALIASES, LoadedModel, load_model, resolve_device, wrap_model

__all__ = [
    "ADAPTERS",
    "ALIASES",
    "Adapter",
    "LoadedModel",
    "ModelShape",
    "adapter_for",
    "load_model",
    "resolve_device",
    "supported_architectures",
    "wrap_model",
]
