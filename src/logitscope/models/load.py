"""Load a causal LM and its tokenizer: a local folder as is, or a hub id (downloaded once, cached)."""

# Longer than ~400 lines on purpose: one entry for every way a model arrives (hub id, local folder, GGUF file, a loaded model), each with its network checks and its own clear errors.

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from logitscope.errors import ArgumentError, ModelLoadError
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
        raise ArgumentError("device", device, "not a device name: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("device", device, "CUDA is not available on this machine; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentError("device", device, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ArgumentError("device", device, "Apple MPS is not available on this machine; use auto or cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ArgumentError("dtype", dtype, f"use one of {', '.join(DTYPES)}") from None


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith(("./", "../", "/", "~"))


def load_model(
    name: str,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "float32",
    device_map: str | None = None,
    max_memory: dict[Any, Any] | None = None,
) -> LoadedModel:
    """Load ``name``: a local folder or ``.gguf`` file (loaded as is, never touching the network) or a hub id.

    ``max_memory`` (with ``device_map``) limits the devices ``accelerate`` spreads the model over, as
    in ``from_pretrained`` (a distributed rank's own share of the GPUs).

    TransformerLens aliases (``gpt2-small``, ``gpt2-medium``, ...) resolve to their hub ids. A hub
    id is downloaded by ``transformers`` on first use and read from its cache afterwards; gated
    models use the usual Hugging Face login (``HF_TOKEN`` or the cached token).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    if is_gguf_path(name):
        return _load_gguf(name, device=device, dtype=torch_dtype, device_map=device_map, max_memory=max_memory)
    local = _is_local(name)
    if local:
        path = Path(name).expanduser()
        _refuse_weights_file(path, name)
        if not path.is_dir():
            raise ModelLoadError(f"model folder not found: {name}")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{name} is not a model folder: it has no config.json")
        _check_weight_files(path)
        source, kwargs = str(path), {"local_files_only": True}
    else:
        source, cache = _hub_source(name)
        kwargs = {}
        if cache == "complete":
            kwargs = {"local_files_only": True}  # read the cache; no request to the hub
        else:  # not cached, or a download that did not finish: the hub must answer
            _check_hub_reachable(name, source, partly_cached=cache == "partial")
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
        model = _from_pretrained(AutoModelForCausalLM, source, dtype=torch_dtype, device_map=device_map,
                                 **_limits(max_memory), **kwargs)
    except Exception as e:
        corrupt = type(e).__name__ == "SafetensorError"  # safetensors' own class, not an OSError
        if not (corrupt or isinstance(e, (OSError, ValueError))):
            raise
        if corrupt and not local:
            raise ModelLoadError(
                f"a weights file of model {name!r} in the local Hugging Face cache is truncated or corrupt ({e}); "
                f"delete the model from the cache (hf cache delete) and download it again"
            ) from e
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


def _load_gguf(name: str, *, device: str | torch.device | None, dtype: torch.dtype, device_map: str | None,
               max_memory: dict[Any, Any] | None = None) -> LoadedModel:
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
        model = _from_pretrained(AutoModelForCausalLM, source, config=config, dtype=dtype, device_map=device_map,
                                 **_limits(max_memory), **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError, struct.error) as e:  # struct.error: a truncated file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load the GGUF file {name}: {first} (is the file complete?)") from e
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    model.eval()
    if dev is not None:
        model.to(dev)
    return wrap_model(model, tokenizer, name=name, adapter=adapter_for(model))


def _limits(max_memory: dict[Any, Any] | None) -> dict[str, Any]:
    return {} if max_memory is None else {"max_memory": max_memory}


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
    """Wrap an already-loaded ``transformers`` model and its tokenizer (the model is not changed:
    the study puts it in eval mode only while it runs)."""
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
            "weight resident on a device. Give it more GPU memory (more GPUs, dtype='bfloat16') or load it on one device"
        )
    device = next(model.parameters()).device
    name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
    return LoadedModel(model, tokenizer, adapter, model_shape(model, adapter), str(name), device)


def _refuse_weights_file(path: Path, name: str) -> None:
    """A weights file (``model.safetensors``) where the folder that holds it is meant. (A ``.gguf``
    file is a model of its own, not refused here.)"""
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise ModelLoadError(
            f"model {name!r} is a file; pass the folder that holds it with its config.json and tokenizer "
            f"({str(path.parent) or '.'})"
        )


def _check_weight_files(folder: Path) -> None:
    """Fail with the file's name when a weights file ``transformers`` would load from ``folder``
    (``model*.safetensors``, ``pytorch_model*.bin``, the shards an index lists) is truncated, corrupt
    or missing. Only safetensors' headers and zip directories are read, no weights."""
    import zipfile

    for index in sorted([*folder.glob("model*.index.json"), *folder.glob("pytorch_model*.index.json")]):
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ModelLoadError(f"{index}: not a readable weights index ({e}); save the model again") from None
        missing = [f for f in shards if not (folder / f).is_file()]
        if missing:
            raise ModelLoadError(f"{folder / missing[0]} is missing ({index.name} lists {len(shards)} weight files, "
                                 f"{len(missing)} are not there); copy or download the model again")
    for file in sorted(folder.glob("model*.safetensors")):
        from safetensors import safe_open

        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ModelLoadError(f"{file}: the weights file is truncated or corrupt ({e}); save or download it "
                                 "again") from None
    for file in sorted(folder.glob("pytorch_model*.bin")):
        if zipfile.is_zipfile(file) or _looks_like_a_zip(file):
            try:
                zipfile.ZipFile(file).close()
            except (zipfile.BadZipFile, OSError) as e:
                raise ModelLoadError(f"{file}: the weights file is truncated or corrupt ({e}); save or download it "
                                     "again") from None


def _looks_like_a_zip(file: Path) -> bool:
    """A zip archive by its first bytes (torch.save's format), even if its end was cut off."""
    with open(file, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "0"
    return bool(constants.HF_HUB_OFFLINE) or env.lower() not in ("0", "", "false", "no", "off")


def _hub_source(name: str) -> tuple[str, str]:
    """The hub id to load for ``name`` and how much of it the local cache holds: ``"complete"``
    (its config and weights), ``"partial"`` (its config, not all its weights: a download that did
    not finish) or ``"absent"``.

    Aliases resolve to their current hub ids; a cache made under the legacy id (``gpt2``) is used
    as is."""
    target = ALIASES.get(name, name)
    legacy = target.split("/", 1)[1] if target.startswith(("openai-community/", "distilbert/")) else None
    partial = None
    for candidate in dict.fromkeys(c for c in (name, target, legacy) if c):
        state = _cache_state(candidate)
        if state == "complete":
            return candidate, state
        if state == "partial" and partial is None:
            partial = candidate
    return (partial, "partial") if partial else (target, "absent")


def _cache_state(repo: str) -> str:
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> str | None:
        try:
            hit = try_to_load_from_cache(repo, filename)
        except Exception:  # malformed ids are reported by the real load
            return None
        return hit if isinstance(hit, str) else None

    if cached("config.json") is None:
        return "absent"
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if cached(single):
            return "complete"
        index_file = cached(index)
        if index_file:
            try:
                shards = set(json.loads(Path(index_file).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                continue
            if all(cached(f) for f in shards):
                return "complete"
    return "partial"


def hub_unreachable(source: str, timeout: float = 5.0) -> str | None:
    """Why the hub cannot be asked for ``source``, or ``None`` if it answers (with any status: a
    missing or gated repository is for ``transformers`` to report). The request goes the way
    ``transformers``' downloads go, through huggingface_hub (its ``HF_ENDPOINT``, the proxies in
    ``HTTPS_PROXY`` / ``HTTP_PROXY``, ``HF_HUB_OFFLINE``), once, without retries."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    try:
        get_hf_file_metadata(hf_hub_url(source, "config.json"), timeout=timeout)
    except HfHubHTTPError:
        return None
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set"
    except Exception as e:  # httpx's connect, proxy and timeout errors, OSError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {reason}" if reason else type(e).__name__
    return None


def _check_hub_reachable(name: str, source: str, *, partly_cached: bool = False) -> None:
    """Fail in seconds, not after a minute of retries, when a hub model is neither cached nor
    downloadable; a download that did not finish is named as such, not as a missing model."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    why = hub_unreachable(source)
    if why is None:
        return
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    if partly_cached:
        state = ("is only partly in the local Hugging Face cache (its config.json is there, not all its weights: "
                 "a download did not finish)")
        todo = "Connect to finish the download, or pass a local folder"
    else:
        state = "is not a local folder, not in the local Hugging Face cache"
        todo = "Connect once to download it, or pass a local folder"
    if why == "HF_HUB_OFFLINE is set":
        raise ModelLoadError(f"model {name!r} ({source}) {state}, and HF_HUB_OFFLINE is set; unset it to download, "
                             "or pass a local folder")
    raise ModelLoadError(f"model {name!r} ({source}) {state}, and the hub ({host}) cannot be reached: {why}. {todo}")
