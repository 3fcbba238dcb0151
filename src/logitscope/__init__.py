"""logitscope: which parts of a language model write the answer?

Logit difference, logit lens, layer and head attribution (TransformerLens's conventions and
labels) on Hugging Face models, with one forward pass per batch, and an offline report.
"""

__version__ = "0.1.0"

from logitscope.errors import InputError, LogitscopeError, ModelLoadError
from logitscope.models import LoadedModel, load_model, wrap_model
from logitscope.results import AttentionView, StudyResult
from logitscope.study import logit_diff_directions, run_study
from logitscope.patching import PatchingResult, run_patching
from logitscope.tasks import Prompt, builtin_prompts, load_jsonl, load_prompts

__all__ = [
    "AttentionView",
    "InputError",
    "LoadedModel",
    "LogitscopeError",
    "ModelLoadError",
    "PatchingResult",
    "Prompt",
    "StudyResult",
    "__version__",
    "builtin_prompts",
    "load_jsonl",
    "load_model",
    "load_prompts",
    "logit_diff_directions",
    "run_patching",
    "run_study",
    "wrap_model",
]
