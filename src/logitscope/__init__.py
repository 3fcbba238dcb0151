"""logitscope: which parts of a language model write the answer?

Logit difference, logit lens, layer and head attribution (TransformerLens's conventions and
labels) on Hugging Face models, with one forward pass per batch, and an offline report.

The names below are imported on first use, so ``import logitscope`` (and ``logitscope --help``)
does not import torch or transformers until something needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from logitscope.version import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "AblationResult": "logitscope.api.method_results",
    "ArgumentError": "logitscope.errors",
    "CircuitPatchingResult": "logitscope.api.method_results",
    "Experiment": "logitscope.api.experiment",
    "AttentionView": "logitscope.api.results",
    "InputError": "logitscope.errors",
    "LoadedModel": "logitscope.models.load",
    "LogitscopeError": "logitscope.errors",
    "ModelLoadError": "logitscope.errors",
    "PatchingResult": "logitscope.api.patching",
    "PathsResult": "logitscope.api.method_results",
    "Prompt": "logitscope.inputs.prompt",
    "PromptWarning": "logitscope.errors",
    "StudyResult": "logitscope.api.results",
    "builtin_prompts": "logitscope.inputs.prompts",
    "edges": "logitscope.api.edges",
    "GridsResult": "logitscope.api.method_results",
    "load_jsonl": "logitscope.inputs.prompts",
    "load_result": "logitscope.api.reopen",
    "load_model": "logitscope.models.load",
    "load_prompts": "logitscope.inputs",
    "logit_diff_directions": "logitscope.methods.dla",
    "run_patching": "logitscope.api.patching",
    "run_study": "logitscope.api.study",
    "wrap_model": "logitscope.models.load",
}

__all__ = [
    "AblationResult",
    "ArgumentError",
    "AttentionView",
    "CircuitPatchingResult",
    "Experiment",
    "GridsResult",
    "InputError",
    "LoadedModel",
    "LogitscopeError",
    "ModelLoadError",
    "PatchingResult",
    "PathsResult",
    "Prompt",
    "PromptWarning",
    "StudyResult",
    "__version__",
    "builtin_prompts",
    "edges",
    "load_jsonl",
    "load_model",
    "load_prompts",
    "load_result",
    "logit_diff_directions",
    "run_patching",
    "run_study",
    "wrap_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'logitscope' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from logitscope.errors import ArgumentError, InputError, LogitscopeError, ModelLoadError, PromptWarning
    from logitscope.models.load import LoadedModel, load_model, wrap_model
    from logitscope.api.patching import PatchingResult, run_patching
    from logitscope.api.reopen import load_result
    from logitscope.api.results import AttentionView, StudyResult
    from logitscope.api.edges import edges
    from logitscope.api.experiment import Experiment
    from logitscope.api.method_results import AblationResult, CircuitPatchingResult, GridsResult, PathsResult
    from logitscope.api.study import run_study
    from logitscope.methods.dla import logit_diff_directions
    from logitscope.inputs import load_prompts
    from logitscope.inputs.prompt import Prompt
    from logitscope.inputs.prompts import builtin_prompts, load_jsonl
