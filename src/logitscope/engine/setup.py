"""What a run needs before its first batch: the model, loaded on this rank's own device (or a clear
error saying what logitscope takes); a batch size that fits; a progress bar that erases itself when
the run fails."""

from __future__ import annotations

import sys
from typing import Any

import torch

from logitscope.engine import distributed
from logitscope.errors import InputError
from logitscope.models.load import LoadedModel, load_model, wrap_model

__all__ = ["MODELS_TAKEN", "as_loaded", "auto_batch_size", "close_progress_bars", "progress_bar"]


def auto_batch_size(lm: LoadedModel, max_len: int) -> int:
    """A batch size whose activations fit comfortably: on CUDA from free memory, elsewhere a fixed
    token budget that keeps per-batch overhead small without thrashing caches."""
    s = lm.shape
    # Rough bytes per token of live activations in one block (attention scores for eager are not
    # materialised with sdpa) plus the final hidden state; generous factor for temporaries.
    per_token = 4 * (12 * s.d_model + 4 * s.n_heads * max_len) * 2
    if lm.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(lm.device)
        budget = 0.5 * free
        return int(max(1, min(4096, budget // (per_token * max_len))))
    # CPU: ~2k tokens a batch keeps the MLP's activations near the last-level cache; measured on
    # GPT-2 small (bench/), 128 prompts of 16 tokens ran faster and with a third less peak memory
    # than one batch of 512.
    budget_tokens = 2048 if lm.device.type == "cpu" else 65536
    available = available_host_memory()
    if lm.device.type == "cpu" and available:  # and never more than a quarter of free memory
        budget_tokens = min(budget_tokens, int(0.25 * available // per_token))
    return int(max(1, min(1024, budget_tokens // max_len)))


def available_host_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux; ``None`` where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def as_loaded(model: Any, tokenizer: Any, *, device: Any, dtype: Any, device_map: Any,
               ranks: distributed.Ranks | None = None) -> LoadedModel:
    """``model`` as a :class:`LoadedModel`: loaded by name (in a process group, on this rank's own
    device), or wrapped as given."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str,)) or hasattr(model, "__fspath__"):
        return load_model(str(model), dtype=dtype, **distributed.placement(device, device_map, ranks))
    _check_model(model)
    if tokenizer is None:
        raise InputError("pass the model's tokenizer with an already-loaded model: run_study(..., tokenizer=tok)")
    return wrap_model(model, tokenizer)


MODELS_TAKEN = ("a hub id or alias ('gpt2'), a local folder, a .gguf file, a LoadedModel, or a Hugging Face "
                "transformers causal LM with its tokenizer=")


def _check_model(model: Any) -> None:
    """Refuse what is not a model logitscope can wrap, saying what it takes (``None``; a
    TransformerLens ``HookedTransformer``, whose modules are not the Hugging Face ones it hooks)."""
    if model is None:
        raise InputError(f"no model given (model=None): pass the model to study, {MODELS_TAKEN}")
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return
    kind = type(model).__name__
    if kind == "HookedTransformer" or (hasattr(model, "cfg") and hasattr(model, "run_with_hooks")):
        raise InputError(
            f"model is a TransformerLens {kind}; logitscope hooks the Hugging Face model itself: pass the "
            "transformers model it was built from (with tokenizer=) or its name, e.g. run_study(prompts, 'gpt2')"
        )
    raise InputError(f"model: expected {MODELS_TAKEN}; got {kind}")


def progress_bar(total: int | None, enabled: bool, *, desc: str = "study", unit: str = "prompts"):
    """A progress bar on stderr counting ``total`` ``unit`` (plural: "12/2000 prompts"), or None
    when not ``enabled``. Used as a context manager, a bar whose run fails or is interrupted
    (Ctrl-C) erases itself, so no half-drawn bar precedes the error; a finished one stays.
    :func:`close_progress_bars` erases any still open (the command line, before an error)."""
    if not enabled:
        return None
    return _bar_class()(total=total, desc=desc, unit=f" {unit}", file=sys.stderr,
                        dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} "
                        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


_BAR: list[type] = []  # the bar class, made on first use (tqdm is imported only when a bar is shown)


def _bar_class() -> type:
    if not _BAR:
        import weakref

        from tqdm.auto import tqdm  # the terminal's bar, or a notebook's widget

        class Bar(tqdm):
            open_bars: "weakref.WeakSet[Bar]" = weakref.WeakSet()

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                Bar.open_bars.add(self)

            def __exit__(self, kind, value, traceback):
                if kind is not None:
                    self.leave = False  # close() then clears its line instead of leaving it
                return super().__exit__(kind, value, traceback)

        _BAR.append(Bar)
    return _BAR[0]


def close_progress_bars() -> None:
    """Erase every progress bar still open (a run that stopped on an error or Ctrl-C), so that
    what is printed next starts on a clean line."""
    for bar in list(_BAR[0].open_bars) if _BAR else []:
        bar.leave = False
        bar.close()
