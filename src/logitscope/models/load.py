"""Load a causal LM and its tokenizer: a local folder as is, or a hub id (downloaded once, cached)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from logitscope.errors import LogitscopeError, ModelLoadError
from logitscope.models.adapters import Adapter, ModelShape, adapter_for, model_shape

# TransformerLens's names for models users know by them.
ALIASES = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "distillgpt2": "distilbert/distilgpt2",
}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class LoadedModel:
    """A model ready for the study: the HF module, its tokenizer and its family adapter."""

    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    shape: ModelShape
    name: str
    device: torch.device

    @property
    def n_ctx(self) -> int | None:
        cfg = self.model.config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if getattr(cfg, attr, None):
                return int(getattr(cfg, attr))
        return None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU, as the seed does."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LogitscopeError(f"--device {device!r} is not a device name: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LogitscopeError(f"--device {device}: CUDA is not available on this machine (try --device auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LogitscopeError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise LogitscopeError(f"--device {device}: Apple MPS is not available on this machine (try --device auto or cpu)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise LogitscopeError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}") from None


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith(("./", "../", "/", "~"))


def load_model(
    name: str,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "float32",
    device_map: str | None = None,
) -> LoadedModel:
    """Load ``name``: a local folder or ``.gguf`` file (loaded as is, never touching the network) or a hub id.

    TransformerLens aliases (``gpt2-small``, ``gpt2-medium``, ...) resolve to their hub ids. A hub
    id is downloaded by ``transformers`` on first use and read from its cache afterwards; gated
    models use the usual Hugging Face login (``HF_TOKEN`` or the cached token).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    if is_gguf_path(name):
        return _load_gguf(name, device=device, dtype=torch_dtype, device_map=device_map)
    local = _is_local(name)
    if local:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model folder not found: {name}")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{name} is not a model folder: it has no config.json")
        source, kwargs = str(path), {"local_files_only": True}
    else:
        source, cached = _hub_source(name)
        kwargs = {}
        if not cached:
            _check_hub_reachable(name, source)
        if cached:
            kwargs = {"local_files_only": True}  # read the cache; no request to the hub
    dev = None if device_map else resolve_device(device)
    try:
        _check_architecture(source, kwargs)  # before any weights are read or downloaded
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if not tokenizer("a", add_special_tokens=False)["input_ids"]:  # built empty: its files are missing
            raise ModelLoadError(
                f"model {name!r} has no tokenizer: {'the folder' if local else 'the repository'} lacks the tokenizer's "
                "files (tokenizer.json, or vocab.json and merges.txt, or tokenizer.model); save them beside the "
                "weights with tokenizer.save_pretrained(folder)"
            )
        model = _from_pretrained(AutoModelForCausalLM, source, dtype=torch_dtype, device_map=device_map, **kwargs)
    except (OSError, ValueError) as e:
        where = "that folder" if local else "the hub or the local cache"
        hint = "" if local else (
            " Check the id, your network, and for a gated model your Hugging Face login (HF_TOKEN);"
            " offline, pass a local folder instead."
        )
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load model {name!r} from {where}: {first}.{hint}") from e
    model.eval()
    if dev is not None:
        model.to(dev)
    adapter = adapter_for(model)
    return wrap_model(model, tokenizer, name=name, adapter=adapter)


def is_gguf_path(name: str) -> bool:
    """A name ending in ``.gguf`` is a GGUF file (llama.cpp's format), never a hub id or a folder."""
    path = Path(name).expanduser()
    return path.suffix.lower() == ".gguf" and not path.is_dir()


GGUF_MAGIC = b"GGUF"


def _check_gguf_file(name: str) -> Path:
    """The GGUF file ``name`` exists, is GGUF, and the ``gguf`` package that reads it is installed."""
    import importlib.util

    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {name}")
    with open(path, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{name} is not a GGUF file: it does not start with the GGUF magic bytes {GGUF_MAGIC!r} (it starts "
            f"with {magic!r}); pass a .gguf file written by llama.cpp's tools, or a model folder"
        )
    missing = [pkg for pkg in ("gguf", "accelerate") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise ModelLoadError(
            f"{name} is a GGUF file, and transformers reads one only with the {' and '.join(missing)} "
            f"package{'s' if len(missing) > 1 else ''}, not installed here: pip install 'logitscope[gguf]' "
            f"(or pip install {' '.join(missing)})"
        )
    return path


def _gguf_architecture(config: Any) -> str:
    """The ``transformers`` class a GGUF file's config loads as (GGUF configs carry no ``architectures``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = list(getattr(config, "architectures", None) or [])
    return archs[0] if archs else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, config.model_type)


def _load_gguf(name: str, *, device: str | torch.device | None, dtype: torch.dtype, device_map: str | None) -> LoadedModel:
    """Load a GGUF file through ``transformers``' GGUF support: its weights are dequantized to
    ``dtype`` (a float model from then on) and its tokenizer is rebuilt from the file's vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from logitscope.models.adapters import ADAPTERS, unsupported_message

    path = _check_gguf_file(name)
    source, kwargs = str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    dev = None if device_map else resolve_device(device)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)  # the file's metadata only
        architecture = _gguf_architecture(config)
        if not any(architecture in ad.architectures for ad in ADAPTERS):  # before the weights are read
            raise ModelLoadError(unsupported_message(architecture, getattr(config, "model_type", "?")))
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = _from_pretrained(AutoModelForCausalLM, source, config=config, dtype=dtype, device_map=device_map, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load the GGUF file {name}: {first}") from e
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    model.eval()
    if dev is not None:
        model.to(dev)
    return wrap_model(model, tokenizer, name=name, adapter=adapter_for(model))


def _check_architecture(source: str, kwargs: dict[str, Any]) -> None:
    from transformers import AutoConfig

    from logitscope.models.adapters import ADAPTERS, unsupported_message

    config = AutoConfig.from_pretrained(source, **kwargs)
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a in ad.architectures for ad in ADAPTERS for a in archs):
        raise ModelLoadError(unsupported_message(archs[0], getattr(config, "model_type", "?")))


def _from_pretrained(auto_cls: Any, source: str, **kwargs: Any) -> nn.Module:
    """PyTorch's fused attention (sdpa: exact, and the fastest kernel for what we capture, which is
    never the attention weights); families without it (GPT-Neo) fall back to eager."""
    try:
        return auto_cls.from_pretrained(source, attn_implementation="sdpa", **kwargs)
    except ValueError as e:
        if "scaled_dot_product_attention" not in str(e):
            raise
        return auto_cls.from_pretrained(source, attn_implementation="eager", **kwargs)


def wrap_model(model: nn.Module, tokenizer: Any, *, name: str | None = None, adapter: Adapter | None = None) -> LoadedModel:
    """Wrap an already-loaded ``transformers`` model and its tokenizer."""
    adapter = adapter or adapter_for(model)
    placements = {str(v) for v in (getattr(model, "hf_device_map", None) or {}).values()}
    offloaded = (
        any(p.device.type == "meta" for p in model.parameters())
        or "disk" in placements
        or ("cpu" in placements and len(placements) > 1)  # accelerate's CPU offload
    )
    if offloaded:
        raise ModelLoadError(
            "the model is partly offloaded to CPU or disk by accelerate (device_map); logitscope needs every "
            "weight resident on a device. Give it more GPU memory (more GPUs, --dtype bfloat16) or load it on one device"
        )
    model.eval()
    device = next(model.parameters()).device
    name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
    return LoadedModel(model, tokenizer, adapter, model_shape(model, adapter), str(name), device)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def _hub_source(name: str) -> tuple[str, bool]:
    """The hub id to load for ``name`` and whether it is already in the local cache.

    Aliases resolve to their current hub ids; a cache made under the legacy id (``gpt2``) is used
    as is."""
    from huggingface_hub import try_to_load_from_cache

    target = ALIASES.get(name, name)
    legacy = target.split("/", 1)[1] if target.startswith(("openai-community/", "distilbert/")) else None
    for candidate in dict.fromkeys(c for c in (name, target, legacy) if c):
        try:
            hit = try_to_load_from_cache(candidate, "config.json")
        except Exception:  # malformed ids are reported by the real load
            hit = None
        if isinstance(hit, str):
            return candidate, True
    return target, False


def _check_hub_reachable(name: str, source: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after a minute of retries, when a hub model is neither cached nor
    downloadable."""
    import socket
    from urllib.parse import urlparse

    if hub_offline():
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "unset it to download once, or pass a local folder"
        )
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ModelLoadError(
            f"model {name!r} ({source}) is not a local folder, not in the local Hugging Face cache, and the hub "
            f"({host}) cannot be reached: {e.strerror or e}. Connect once to download it, or pass a local folder"
        ) from None
